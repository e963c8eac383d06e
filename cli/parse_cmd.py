"""`geovlm parse`: saved model answers -> georeferenced `objects` and `relations` layers."""
from __future__ import annotations

import sys
from pathlib import Path

from ..core.answer_files import MAX_BAD_LINES, read_answers
from ..core.georef import PIXEL_CRS_WKT, GeoTransform, ImageFrame, parse_image_size, pixel_frame
from ..core.parsing import parse_answer, referred_phrase
from ..core.profiles import family_names, get_profile, parse_overrides
from . import CliError, input_file


def register(sub) -> None:
    p = sub.add_parser(
        "parse",
        help="turn saved answers into GIS layers",
        description="Parse saved answers (JSON lines or one answer a line) into `objects` and `relations` "
        "layers. Without --raster or --geotransform, coordinates stay in the pixel space of --image-size.",
        epilog="""examples (in a clone, from its root):
  geovlm parse sample/earthdial_refer.jsonl --family earthdial --image-size 800x800 --out refer_pixels.gpkg
  geovlm parse sample/earthdial_refer.jsonl --family earthdial --image-size 800x800 \\
      --geotransform 0.5,0,500000,0,-0.5,4100000 --crs EPSG:32616 --to-crs EPSG:4326 --out refer_wgs84.gpkg""",
    )
    p.add_argument("input", help="JSON lines (answer in --field) or plain text, one answer a line")
    p.add_argument("--family", required=True, help=f"model family: {', '.join(family_names())}")
    p.add_argument("--field", default="answer", help="JSON field holding the answer (default: answer)")
    p.add_argument("--question-field", default="question",
                   help="JSON field holding the question; its <ref>/<p> phrase names unnamed boxes")
    p.add_argument("--raster", help="the raster the answers are about (its size, geotransform and CRS)")
    p.add_argument("--window", dash_value=True, help="with --raster: the window col,row,width,height that was sent")
    p.add_argument("--geotransform", dash_value=True, help="a,b,c,d,e,f (x = a*col + b*row + c; y = d*col + e*row + f)")
    p.add_argument("--crs", help="CRS of --geotransform (EPSG:xxxx, WKT, PROJ string)")
    p.add_argument("--to-crs", help="reproject the output to this CRS (EPSG:xxxx, WKT, PROJ string)")
    p.add_argument("--image-size", default="100x100", dash_value=True,
                   help="WxH of the image that was sent (default 100x100)")
    add_profile_overrides(p)
    p.add_argument("--out", required=True, help="OUT.gpkg or OUT.geojson")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output (never a GeoPackage with "
                   "other layers)")
    p.set_defaults(func=run)


def add_profile_overrides(parser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field (repeatable), e.g. --family earthdial --set angle_mode=offset "
                        "--set upright_angle=90: only a written angle of 90 is upright, 0 a quarter turn (by default "
                        "both are upright: the nearest axis)")


def profile_overrides(args) -> dict:
    try:
        return parse_overrides(args.set)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def frame_from_args(args) -> ImageFrame:
    if args.raster and args.geotransform:
        raise CliError("give --raster or --geotransform, not both")
    if args.window and not args.raster:  # it was ignored: the boxes were placed on the whole image instead
        raise CliError("--window needs --raster: it is the window of that raster that was sent (without a raster, "
                       "--image-size gives the size of the image)")
    if args.raster:
        from .rasters import open_frame, parse_window

        return open_frame(args.raster, parse_window(args.window))
    try:
        width, height = parse_image_size(args.image_size)
    except ValueError as exc:
        raise CliError(f"--image-size: {exc}") from None
    if args.geotransform:
        try:
            gt = GeoTransform.parse(args.geotransform)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        return ImageFrame(width, height, gt, _crs_arg(args.crs))
    if args.crs:
        raise CliError("--crs needs --geotransform")
    return pixel_frame(width, height)


def _crs_arg(text):
    """--crs as given (any form pyproj reads: EPSG:32616, WKT, PROJ JSON), after checking that pyproj reads it;
    None when not given. CliError in one line otherwise."""
    if not text:
        return None
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_user_input(text)
    except CRSError as exc:
        raise CliError(f"--crs: not a CRS that PROJ knows: {text!r} ({' '.join(str(exc).split())})") from None
    return text


def space_of(frame: ImageFrame, args) -> str:
    """One line saying in which space the written coordinates are."""
    if frame.crs == PIXEL_CRS_WKT:
        return (f"pixels of a {frame.width}x{frame.height} image (x = column, y = -row, a local engineering CRS; "
                "give --raster or --geotransform to place them on the map)")
    if args.to_crs:
        return f"map coordinates in {args.to_crs}"
    if frame.crs:
        return f"map coordinates in {frame.crs if len(frame.crs) < 40 else 'the raster CRS'}"
    return "map coordinates of the raster's geotransform (the raster has no CRS)"


def run(args) -> int:
    from .layers_io import ParsedRecord, check_output, write_layers

    path = input_file(args.input)
    try:
        profile = get_profile(args.family, **profile_overrides(args))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    check_output(args.out, args.overwrite)
    frame = frame_from_args(args)
    pixel_space = frame.crs == PIXEL_CRS_WKT
    if pixel_space and args.to_crs:
        raise CliError("--to-crs needs --raster or --geotransform with --crs: pixel-space boxes have no place on "
                       "the Earth")
    if pixel_space and Path(args.out).suffix.lower() != ".gpkg":
        print("note: GeoJSON cannot carry the local pixel CRS, so GIS software may take these pixels for degrees: "
              "write .gpkg to open them upright in pixel units", file=sys.stderr)
    records, bad = [], []
    try:
        for number, text, question in read_answers(path, args.field, args.question_field, bad):
            answer = parse_answer(text, profile, (frame.width, frame.height), default_label=referred_phrase(question))
            records.append(ParsedRecord(number, profile.name, answer, frame))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    report_bad_lines(bad)
    if bad and not records:
        print(f"geovlm parse: no line of {path} could be read: nothing written", file=sys.stderr)
        return 1
    result = write_layers(records, args.out, to_crs=args.to_crs, overwrite=args.overwrite)
    skipped = sum(len(r.answer.skipped) for r in records)
    warned = sum(1 for r in records if r.answer.warnings)
    print(
        f"{len(records)} answers, {result['objects']} objects, {result['relations']} relations, "
        f"{skipped} skipped fragments, {warned} answers with warnings"
        + (f", {len(bad)} bad {'line' if len(bad) == 1 else 'lines'} left out" if bad else "") + f" -> {args.out}"
    )
    print(f"coordinates: {space_of(frame, args)}")
    if not records:
        print(f"note: {path} holds no answers (it is empty, or blank lines only): the layers are empty",
              file=sys.stderr)
    if records and result["objects"] == 0 and not any(r.answer.objects for r in records):
        print(f"note: no box found in {len(records)} answers: check that --family {profile.name} is the family "
              "that wrote them", file=sys.stderr)
    return 1 if bad else 0


def report_bad_lines(bad) -> None:
    """Each unreadable input line on stderr, one line each ("geovlm parse: FILE:N: why"), the first
    `MAX_BAD_LINES` of them and then how many more; `run` writes the good lines, counts the bad ones in its
    summary and exits 1."""
    for message in bad[:MAX_BAD_LINES]:
        print(f"geovlm parse: {message}", file=sys.stderr)
    if len(bad) > MAX_BAD_LINES:
        print(f"geovlm parse: ... and {len(bad) - MAX_BAD_LINES} more bad lines", file=sys.stderr)

