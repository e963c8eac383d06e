"""`geovlm caption` and `geovlm detect`: a raster's tiles asked in bulk, into a GeoPackage that is also the
ledger (core/ledger.py), through rasterio windows; a progress bar, Ctrl-C a clean stop, resume by rerunning."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..core.client import MAX_RETRY_WINDOW_S
from ..core.tiling import DEFAULT_MAX_TILES, PlanOptions
from . import CliError, check_text_argument
from .parse_cmd import add_profile_overrides
from .serve_cmds import add_engine_args, add_request_timeout_arg, request_timeout, retry_window

# Each runs in a clone's root, against the local demo model (tests/test_cli_help.py runs them).
BULK_EXAMPLES = {
    "caption": """examples (in a clone, from its root):
  geovlm caption sample/aerial.tif --tile 256 --family geochat --max-new-tokens 8 --out captions.gpkg
  geovlm caption sample/aerial.tif --extent '128.657,128.659,37.668,37.669 [EPSG:4326]' --tile 256 \\
      --family geochat --max-new-tokens 8 --out part.gpkg""",
    "detect": """examples (in a clone, from its root):
  geovlm detect sample/aerial.tif --extent '14322000,14322200,4532600,4532800' --tile 256 --family skysensegpt \\
      --max-new-tokens 16 --out objects.gpkg""",
}


def register(sub) -> None:
    for name, kind, text in (("caption", "caption", "caption every tile of a raster into a GeoPackage"),
                             ("detect", "detect", "find objects and relations in every tile of a raster")):
        p = sub.add_parser(name, help=text, description=text + ". Rerun with the same --out to resume: only "
                           "missing or failed tiles are asked again. Without --engine or --model it asks the demo "
                           "model, a random stand-in.", epilog=BULK_EXAMPLES[kind])
        p.add_argument("raster")
        p.add_argument("--out", required=True, help="OUT.gpkg: the result and the ledger of the run")
        p.add_argument("--tile", type=int, default=512, help="tile side in pixels (default: 512)")
        p.add_argument("--overlap", type=int, default=64 if kind == "detect" else 0,
                       help="pixels shared by neighbouring tiles")
        p.add_argument("--extent", dash_value=True, metavar="'XMIN,XMAX,YMIN,YMAX [CRS]'",
                       help="ask only the part of the raster covering this rectangle, written as QGIS writes an "
                       "extent (the bulk algorithms' EXTENT in qgis_process; not gdal_translate -projwin's ulx "
                       "uly lrx lry): in the raster's CRS, or in the CRS in brackets, e.g. '128.657,128.659,"
                       "37.668,37.669 [EPSG:4326]'; rerun with the same extent to resume")
        p.add_argument("--max-tiles", type=int, default=DEFAULT_MAX_TILES, metavar="N",
                       help=f"refuse a plan of more than N tiles before any engine starts (default: "
                       f"{DEFAULT_MAX_TILES:,}, about a 160,000 px square raster in 512 px tiles)")
        p.add_argument("--edge", choices=("shift", "partial", "drop"), default="shift",
                       help="edge tiles: moved back inside (default), smaller, or left out")
        p.add_argument("--question", dash_value=True,
                       help="the question (default: the family's caption or scene-graph prompt)")
        p.add_argument("--task", help="the family's task word to add (default: caption; detect: scene_graph "
                       "or grounding)")
        p.add_argument("--keep-nodata", action="store_true", help="ask about nodata-only tiles too")
        p.add_argument("--bands", dash_value=True, help="three 1-based bands as red,green,blue (default 1,2,3; "
                       "band 1 as grey where the raster has one or two)")
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--overwrite", action="store_true", help="replace an output made by another plan")
        p.add_argument("--retry-window", type=float, default=None, metavar="S",
                       help="seconds a tile's request is retried while no engine answers (default: 120; 0 to "
                       f"{MAX_RETRY_WINDOW_S:g}); after that the run stops, to be resumed")
        add_request_timeout_arg(p)
        if kind == "detect":
            p.add_argument("--merge-overlap", type=float, default=0.5,
                           help="same-label objects overlapping more than this (of the smaller) are merged")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_engine_args(p)
        add_profile_overrides(p)
        p.set_defaults(func=cmd_bulk, kind=kind)


# How the refusal of a plan too large (core.tiling.too_many_tiles) names the ways on, on the command line.
CLI_PLAN_OPTIONS = PlanOptions("--extent 'xmin,xmax,ymin,ymax [CRS]'", "--tile", "--max-tiles")


class RasterTiles:
    """Reads plan tiles of a raster through rasterio windows, in the calling thread, as `ArraySource`s: the
    client fits each to the model's input (core.client.prepare_image) and sends exactly those pixels. `bands`:
    three 1-based bands as red, green, blue, or None (1,2,3, or grey); `models.imagery.ImageryError` in one line
    when the raster lacks one of them. `offset` (col, row) is where the plan's pixel (0, 0) lies in the raster
    (a plan over part of it: --extent)."""

    def __init__(self, path, bands, skip_nodata: bool, offset=(0, 0)):
        from ..models.imagery import ImageryError, check_bands, import_rasterio, not_georeferenced_ok

        self.rasterio = import_rasterio()
        self.path = path
        self.bands = bands
        self.skip_nodata = skip_nodata
        self.offset = tuple(offset)
        with not_georeferenced_ok(self.rasterio):  # open_frame has said in one line what that means
            self.ds = self.rasterio.open(path)
        try:
            check_bands(bands, self.ds.count)
        except ImageryError:
            self.ds.close()
            raise

    def __call__(self, tile):
        import numpy as np
        from rasterio.windows import Window

        from ..models.imagery import ImageryError, NoDataError, decimated_shape, read_failure, read_rgb
        from ..models.preprocess import ArraySource

        def nodata():  # skipped, or sent black
            return None if self.skip_nodata else ArraySource(np.zeros((*decimated_shape(
                tile.width, tile.height)[::-1], 3), np.uint8))

        window = (tile.col_off + self.offset[0], tile.row_off + self.offset[1], tile.width, tile.height)
        try:
            if not self.ds.dataset_mask(window=Window(*window)).any():
                return nodata()
            rgb = read_rgb(self.path, window, self.bands)
        except NoDataError:  # NaN or infinite values only, which the mask does not show: nodata all the same
            return nodata()
        except ImageryError as exc:
            raise ValueError(str(exc)) from None
        except self.rasterio.errors.RasterioError as exc:  # the mask of a damaged window
            raise ValueError(f"cannot read raster {self.path}: {read_failure(exc)}") from None
        return ArraySource(rgb)

    def pixel_digest(self) -> str:
        """`core.raster_identity.pixel_digest` of the whole raster (a GeoTIFF's stored blocks, else every band's
        values): what QGIS's `GdalTiles.pixel_digest` gives for the same file."""
        from rasterio.windows import Window

        from ..core.raster_identity import geotiff_block_reader, pixel_digest

        ds = self.ds

        def values(window):
            try:
                data = ds.read(window=Window(*window))
            except self.rasterio.errors.RasterioError as exc:
                raise ValueError(str(exc)) from None
            return data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()

        height, width = ds.block_shapes[0]
        stored = geotiff_block_reader(str(self.path), ds.driver, ds.width, ds.height, ds.count, (width, height),
                                      lambda name, band: ds.get_tag_item(name, "TIFF", bidx=band))
        return pixel_digest(ds.width, ds.height, stored or values)

    def close(self):
        self.ds.close()


def served_model(client):
    """(id, "geovlm" details) of the model the engines serve: the one asked for (`--model`) or the first listed
    (one model per run); the details (family, random_stand_in...) are {} for an engine that gives none."""
    entries = client.models().get("data") or []
    if not entries:
        raise CliError("the engine serves no model")
    model = client.model or entries[0]["id"]
    entry = next((e for e in entries if e.get("id") == model), entries[0])
    return model, entry.get("geovlm") or {}


def cmd_bulk(args) -> int:
    """`geovlm caption` / `geovlm detect` (`args.kind`): ask the engine about each tile of the raster's plan
    (`core.tiling.TilePlan`, pixels) and write each answer to --out, a GeoPackage that is also the ledger a rerun
    resumes from (`core.ledger.Ledger`). 0 when every tile is answered, 1 when some failed or the run halted
    (resume with the same command), 130 for Ctrl-C; CliError (one line) for bad input, before any engine is
    contacted or the output touched."""
    from ..core.bulk import (
        DEFAULT_CAPTION_QUESTION,
        DEFAULT_GRAPH_QUESTION,
        EndpointRecorder,
        ProgressLog,
        counted,
        default_task,
        eta_text,
        graph_rows,
        run_tiles,
    )
    from ..core.client import EngineError
    from ..core.ledger import Ledger, LedgerError, RunPlan, output_problem
    from ..core.profiles import get_profile
    from ..core.tiling import TilePlan, max_tiles_problem, plan_area, too_many_tiles
    from ..core.transport import CancelToken
    from ..models.imagery import ImageryError
    from .engine_cmds import STAND_IN_NOTE, _bands, warn_other_family
    from .parse_cmd import profile_overrides
    from .rasters import extent_window, open_frame, parse_extent

    if args.question is not None and not args.question.strip():
        raise CliError("--question is empty: leave it out to ask the family's default prompt")
    if args.question is not None:  # before any raster is read or engine asked; the ledger could not store it
        check_text_argument(args.question, "--question")
    if not str(args.out).lower().endswith(".gpkg"):
        raise CliError("--out must be a .gpkg (it is the ledger that lets a run resume)")
    problem = output_problem(args.out)  # before an engine starts, not after
    if problem:
        raise CliError(problem)
    if args.max_new_tokens < 1:  # every tile would fail at the engine (400), the run then "to be resumed"
        raise CliError("--max-new-tokens must be at least 1")
    if not 0.0 <= getattr(args, "merge_overlap", 0.5) <= 1.0:
        raise CliError(f"--merge-overlap is a share of the smaller object, from 0 to 1, not {args.merge_overlap}")
    request_timeout(args)
    retry_window(args)
    problem = max_tiles_problem(args.max_tiles, CLI_PLAN_OPTIONS)
    if problem:
        raise CliError(problem)
    extent = parse_extent(args.extent)
    frame = open_frame(args.raster)
    col0, row0, width, height = extent_window(frame, extent) if extent else (0, 0, frame.width, frame.height)
    area = plan_area(width, height, bool(extent))
    gt = frame.geotransform.window(col0, row0) if extent else frame.geotransform  # where the plan's pixel (0, 0) is
    try:
        tiles = TilePlan(width, height, args.tile, args.overlap, args.edge)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not len(tiles):  # --edge drop on a raster smaller than a tile: an empty run would "succeed"
        raise CliError(f"no tile to ask: {area} is smaller than one {args.tile} px tile, and --edge drop leaves "
                       "partial tiles out; give a smaller --tile or another --edge")
    problem = too_many_tiles(tiles, area, args.max_tiles, CLI_PLAN_OPTIONS)
    if problem:  # a mosaic of a country: refused before an engine starts, not left running
        raise CliError(problem)
    try:  # the bands are checked before an engine is contacted or the output touched
        reader = RasterTiles(args.raster, _bands(args.bands), not args.keep_nodata, (col0, row0))
    except ImageryError as exc:
        raise CliError(f"--bands: {exc}") from None
    client = None
    try:
        client = _client(args)
        client.transport = EndpointRecorder(client.transport)
        try:
            family = args.family or client.profile().name
            profile = get_profile(family, **profile_overrides(args))
            task = args.task or default_task(profile, args.kind)
            profile.question(task, "")  # an unknown task fails here, clearly
            model, details = served_model(client)
        except (EngineError, ValueError) as exc:
            raise CliError(str(exc)) from None
        if args.family:
            warn_other_family(details, profile.name)
        question = args.question or (DEFAULT_CAPTION_QUESTION if args.kind == "caption" else DEFAULT_GRAPH_QUESTION)
        wkt, epsg, crs_name = _crs(frame.crs)
        plan = RunPlan(args.kind, tiles, gt, question, task, profile.name, model, crs=crs_name,
                       pixels=reader.pixel_digest(), bands=reader.bands, keep_nodata=bool(args.keep_nodata))
        try:
            ledger = Ledger(args.out, plan, wkt, epsg, overwrite=args.overwrite,
                            merge_threshold=getattr(args, "merge_overlap", 0.5), overwrite_flag="--overwrite")
        except LedgerError as exc:
            raise CliError(str(exc)) from None
        graph = (lambda tile, answer: graph_rows(tile, answer, gt)) if args.kind == "detect" else None
        cancel = CancelToken()

        def progress(stats):
            finished = stats.done + stats.failed
            if bar is not None:
                bar.n = finished
                left = eta_text(stats, time.monotonic() - started)
                bar.set_postfix_str(f"failed {stats.failed}" + (f", {left}" if left else ""), refresh=False)
                bar.refresh()
            elif lines is not None and lines.due(finished):
                left = eta_text(stats, time.monotonic() - started)
                print(f"geovlm {args.kind}: {finished}/{counted(stats.total, 'tiles')}, failed {stats.failed}"
                      + (f", {left}" if left else ""), file=sys.stderr, flush=True)

        if details.get("random_stand_in"):
            print(STAND_IN_NOTE, file=sys.stderr)
        part = f" over pixels {col0},{row0} to {col0 + width},{row0 + height} of the raster (--extent)"
        print(f"geovlm {args.kind}: {counted(len(tiles), 'tiles')} of {tiles.tile} px (overlap {tiles.overlap})"
              f"{part if extent else ''}, "
              f"{profile.name} '{model}' on {', '.join(e.url for e in client.endpoints)}; plan "
              f"{plan.fingerprint}{' (resuming)' if ledger.resumed else ''}", file=sys.stderr)
        bar = _progress(args, len(tiles))
        lines = None if bar is not None or args.no_progress else ProgressLog(len(tiles), every_s=LOG_EVERY_S)
        started = time.monotonic()
        try:
            stats = run_tiles(client, ledger, tiles, reader, question, task, profile, model,
                              graph=graph, cancel=cancel, on_progress=progress, max_tokens=args.max_new_tokens)
        except KeyboardInterrupt:
            cancel.cancel()
            if bar is not None:
                bar.close()
            counts = ledger.counts()
            ledger.close()
            print(f"geovlm {args.kind}: stopped; {counted(counts.get('ok', 0), 'tiles')} answered so far are in "
                  f"{args.out}. Resume with the same command.", file=sys.stderr)
            return 130
        if bar is not None:
            bar.close()
        ledger.close()
    except KeyboardInterrupt:  # before the first tile was asked (the local engine starting, most often)
        kept = (f"the tiles answered by earlier runs stay in {args.out}" if Path(args.out).exists()
                else "nothing was written")
        print(f"\ngeovlm {args.kind}: stopped before any tile was asked; {kept}. Resume with the same command.",
              file=sys.stderr)
        return 130
    finally:
        reader.close()
        if getattr(client, "local_engine", None) is not None:
            client.local_engine.stop()
    print(f"geovlm {args.kind}: {stats.summary()}; wrote {args.out}")
    for error, count in sorted(stats.errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  failed {count}x: {error}", file=sys.stderr)
    if stats.unreadable:
        print(f"geovlm {args.kind}: {stats.unreadable_note()}", file=sys.stderr)
    again = stats.total - stats.done - len(stats.unreadable)  # failed at the engine, or not reached
    if again and (stats.engine_failed or stats.halted or stats.cancelled):
        print(f"geovlm {args.kind}: {counted(again, 'tiles')} failed or missing: rerun the same command to ask "
              "again", file=sys.stderr)
    return 1 if stats.failed or stats.halted else 0


def _client(args):
    from .serve_cmds import engine_for

    return engine_for(args)


def _crs(wkt):
    """(WKT1 as GeoPackage 1.3 wants it, EPSG code or None, `core.raster_identity.crs_identity`) of the
    raster's CRS."""
    from ..core.raster_identity import crs_identity

    if not wkt:
        return None, None, crs_identity(None, None)
    from ..models.imagery import import_rasterio

    crs = import_rasterio().crs.CRS.from_wkt(wkt)
    exact = crs.to_epsg(confidence_threshold=100)  # as QGIS's authid(): see crs_identity
    return (crs.to_wkt(version="WKT1_GDAL"), crs.to_epsg(),
            crs_identity(exact, None if exact else crs.to_proj4()))


LOG_EVERY_S = 60.0  # a progress line at least this often when stderr is a log file, besides every 10 %


def _progress(args, total):
    """A tqdm bar on stderr when it is a terminal; None with --no-progress, or when stderr is a file or a pipe
    (a log): there a bar redrawn at every callback (4 a second) would write hundreds of lines, so `cmd_bulk`
    prints a line every 10 % of the tiles and every `LOG_EVERY_S` seconds instead (core.bulk.ProgressLog)."""
    if args.no_progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", dynamic_ncols=True, file=sys.stderr)
