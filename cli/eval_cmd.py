"""`geovlm eval`: score saved answers against references with the published benchmark definitions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..core.profiles import family_names, get_profile
from . import CliError, input_file

TASKS = ("detection", "region-caption", "caption", "vqa", "classification", "scene-graph")
# Fields holding the reference, first found wins (EarthDial's result files, then GeoChat/SkySenseGPT names).
REFERENCE_FIELDS = {
    "detection": ("gt_bbox", "ground_truth", "reference"),
    "region-caption": ("annotation", "ground_truth", "reference", "caption"),
    "caption": ("annotation", "ground_truth", "references", "reference", "caption"),
    "vqa": ("annotation", "ground_truth", "gt", "reference"),
    "classification": ("annotation", "ground_truth", "gt", "reference", "class", "label"),
    "scene-graph": ("ground_truth", "annotation", "reference"),
}
QUESTION_TYPE_FIELDS = ("vqa_type", "type", "question_type")
BOX_TASKS = ("detection", "scene-graph")
SHORT_ANSWER_TASKS = ("vqa", "classification")  # answers and references must be texts (or whole numbers)
LAYER_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score saved answers against references (published benchmark metrics)",
        description="Score answers against references. FILE is JSON lines holding each answer with its "
        "reference (as the models' evaluation scripts write them), or, with --reference, a layer of answers "
        "(what `geovlm parse`/`ask` write) scored against a layer of references matched by location.",
        epilog="""examples (in a clone, from its root):
  geovlm eval detection sample/earthdial_refer.jsonl --family earthdial
  geovlm eval detection sample/earthdial_refer.jsonl --family earthdial --iou 0.3 --json""",
    )
    p.add_argument("task", choices=TASKS, help="what to score")
    p.add_argument("file", help="answers: JSON lines, or a GeoPackage/GeoJSON layer with --reference")
    p.add_argument("--family", help=f"model family of the answers (needed for boxes): {', '.join(family_names())}")
    p.add_argument("--json", action="store_true", help="print one JSON object, metric name to value")
    p.add_argument("--field", default=None, help="field holding the answer (default: answer; in a layer, caption "
                   "when it has one, as `geovlm caption` writes, else answer)")
    p.add_argument("--reference-field", action="append", default=[], metavar="NAME",
                   help="field(s) holding the reference (default: the task's usual field, e.g. gt_bbox, "
                   "annotation, caption0..caption4)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU a box must reach to count (default 0.5)")
    p.add_argument("--reference", metavar="LAYER", help="a layer of reference boxes or captions: score FILE's "
                   "features against it, matched by location")
    p.add_argument("--layer", help="layer of FILE (default: objects for boxes, tiles for texts, else the first)")
    p.add_argument("--reference-layer", help="layer of --reference (default: its first layer)")
    p.set_defaults(func=run)


def run(args) -> int:
    path = input_file(args.file)
    if not 0.0 < args.iou <= 1.0:
        raise CliError(f"--iou must be in (0, 1], not {args.iou}")
    if args.reference:
        scores = score_layers(args)
    else:
        if path.suffix.lower() in LAYER_SUFFIXES and path.suffix.lower() != ".json":
            raise CliError(layer_without_reference(path))
        scores = score_records(args, path)
    print_scores(scores, args.json)
    return 0


GEOJSON_TYPES = ("FeatureCollection", "Feature")  # a record of this "type" is GeoJSON (RFC 7946), not an answer


def layer_without_reference(path: Path) -> str:
    """The one line for a layer (a GeoPackage, or GeoJSON: also when named .json) given as FILE without
    --reference, which JSON lines alone do not need."""
    return (f"{path.name} is a layer: score a layer of answers against a layer of references with --reference LAYER "
            "(matched by location); answers with their references in JSON lines need none")


def profile_of(args):
    if not args.family:
        raise CliError(f"{args.task} reads boxes: give --family ({', '.join(family_names())})")
    try:
        return get_profile(args.family)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def score_records(args, path: Path) -> dict:
    """The task's scores for a JSON-lines file of answers with references."""
    from ..evaluation.records import RecordError, read_records, reference_texts, text_of

    task = args.task
    answer_field = args.field or "answer"
    ref_fields = args.reference_field or None
    profile = profile_of(args) if task in BOX_TASKS else None
    items = []
    try:
        for number, record in read_records(path, answer_field):
            if answer_field not in record and record.get("type") in GEOJSON_TYPES:
                raise CliError(layer_without_reference(path))
            if answer_field not in record:
                raise RecordError(f"{path}:{number}: no field {answer_field!r} (choose it with --field)")
            if task in SHORT_ANSWER_TASKS:  # EarthDial's scorer reads strings: anything else is named, not scored
                where = f"{path}:{number}"
                answer, refs = short_item(task, record[answer_field], answer_field, where, record, ref_fields, where)
            elif task in BOX_TASKS:  # one string of boxes; a JSON array of boxes is read as written
                names = [f for f in ref_fields or REFERENCE_FIELDS[task] if f in record][:1]
                null = next((f"{kind} field {name!r}" for kind, name in [("answer", answer_field)]
                             + [("reference", n) for n in names] if record[name] is None), None)
                if null:  # scored as no box it would read as a miss: a missing answer or reference is named
                    raise RecordError(f"{path}:{number}: {null} is null, not a text")
                answer = text_of(record[answer_field])
                refs = [v if isinstance(v, str) else json.dumps(v) for v in (record[n] for n in names)] or None
            else:
                answer = text_of(record[answer_field])
                refs = reference_texts(record, ref_fields, REFERENCE_FIELDS[task])
            if refs is None:
                wanted = " or ".join(repr(f) for f in ref_fields or REFERENCE_FIELDS[task])
                raise RecordError(f"{path}:{number}: no field {wanted} (choose it with --reference-field)")
            items.append((answer, refs, record))
    except RecordError as exc:
        raise CliError(str(exc)) from None
    if not items:
        raise CliError(f"{path}: no answers")
    scores = score_items(task, items, profile, args.iou)
    if scores.get("reference_boxes", scores.get("reference_triplets")) == 0:
        # every score would be 0 by construction, which reads as a model that found nothing
        what = "box" if task == "detection" else "triplet"
        raise CliError(f"no reference {what} in {path} could be read with --family {args.family}: check --family "
                       "(references are read in the answers' syntax) or --reference-field")
    return scores


def short_item(task: str, answer, answer_field: str, answer_where: str, record: dict, ref_fields,
               reference_where: str):
    """(answer text, reference texts or None) of one VQA/classification answer, its reference fields in `record`.
    Raises RecordError naming `answer_where`/`reference_where` (a file's "path:line", a layer's feature) for a
    value that is not a text (evaluation.records.short_text) and for a classification with several references."""
    from ..evaluation.records import RecordError, short_references, short_text

    answer = short_text(answer, answer_where, f"answer field {answer_field!r}")
    refs = short_references(record, ref_fields, REFERENCE_FIELDS[task], reference_where)
    if task == "classification" and refs is not None and len(refs) != 1:
        raise RecordError(f"{reference_where}: {len(refs)} references; classification scores one label an answer")
    return answer, refs


def score_items(task: str, items, profile, iou: float) -> dict:
    """Scores of (answer, reference texts, record) items for `task`."""
    if task == "detection":
        from ..evaluation.detection import precision_at_iou

        return precision_at_iou(((a, " ".join(refs), rec.get("size_group")) for a, refs, rec in items), profile, iou)
    if task == "scene-graph":
        from ..evaluation.scene_graph import triplet_recall

        return triplet_recall(((a, " ".join(refs)) for a, refs, _ in items), profile, iou)
    if task in ("region-caption", "caption"):
        from ..evaluation import text_metrics
        from ..evaluation.wordnet import WordNetMissing

        style = text_metrics.REGION_CAPTION if task == "region-caption" else text_metrics.IMAGE_CAPTION
        try:
            return text_metrics.caption_scores(((a, refs) for a, refs, _ in items), style)
        except (WordNetMissing, ValueError) as exc:
            raise CliError(str(exc)) from None
    from ..evaluation.accuracy import classification_accuracy, vqa_accuracy

    if task == "classification":
        return classification_accuracy((refs[0] if refs else "", a) for a, refs, _ in items)
    return vqa_accuracy((refs if refs else "", a, _question_type(rec)) for a, refs, rec in items)


def score_layers(args) -> dict:
    """The task's scores for a layer of answers against a layer of references, matched by location
    (evaluation.layers states the rules)."""
    import math

    from ..evaluation import layers
    from ..evaluation.records import RecordError, reference_texts, text_of

    task = args.task
    if task == "scene-graph":
        raise CliError("scene-graph is scored from JSON lines (answers with their ground_truth), not from layers")
    try:
        answers = layers.read_features(args.file, args.layer, "objects" if task == "detection" else "tiles")
        refs = layers.read_features(args.reference, args.reference_layer, None, to_crs=answers.crs)
    except layers.LayerError as exc:
        raise CliError(str(exc)) from None
    except RuntimeError as exc:  # pyproj's ProjError: no transformation between the two CRSs
        try:  # read again as it is, for its CRS: a layer in pixels gets the hint
            reference_crs = layers.read_features(args.reference, args.reference_layer, None).crs
        except layers.LayerError:
            reference_crs = None
        raise CliError(_no_transform(args.file, args.reference, answers.crs, reference_crs, exc)) from None
    if task == "detection" and args.layer is None and answers.path.endswith("|layername=tiles"):
        # no `objects` layer, so the first one was taken: a bulk run's tile footprints, which are not boxes
        raise CliError(f"{args.file} has no objects layer, only the tiles of a bulk run (their footprints are not "
                       "boxes): score the output of `geovlm detect` or `geovlm parse`, or name a layer with --layer")
    if refs.beyond:  # as `parse --to-crs` warns: the references taken where the answers' CRS stretches them
        print(f"geovlm eval: warning: {refs.path} taken to the answers' CRS: {refs.beyond}; the layers are "
              "compared in the answers' CRS, which geovlm parse --to-crs chooses", file=sys.stderr)
    if (answers.crs is None) != (refs.crs is None):
        with_crs = answers.path if answers.crs is not None else refs.path
        raise CliError(f"only {with_crs} has a CRS: both layers must be in map coordinates, or both in pixels")
    if not refs.geometries:
        raise CliError(f"{refs.path} has no features")
    if task == "detection":
        if answers.geometries and not _spans_meet(answers, refs):  # another place; a model whose boxes all
            # miss references of its own place scores 0
            raise CliError("the answers' and the references' extents do not overlap: are both layers of the same "
                           f"place? ({answers.path} spans {_span(answers)}, {refs.path} {_span(refs)})")
        return layers.box_scores(answers.geometries, refs.geometries, args.iou)
    answers = layers.answered(answers)
    answer_field = args.field or ("caption" if "caption" in answers.table.columns else "answer")
    if answer_field not in answers.table.columns:
        fields = ", ".join(c for c in answers.table.columns if c != "geometry")
        raise CliError(f"{answers.path} has no field {answer_field!r} (it has {fields}; choose with --field)")
    pairs = layers.match_one_to_one(answers.geometries, refs.geometries, args.iou)
    if not pairs:
        raise CliError(f"no answer overlaps a reference at IoU >= {args.iou}: are both layers of the same place?")
    items = []
    for i, j in pairs:
        row, value = refs.table.iloc[j], answers.table.iloc[i][answer_field]
        if task in SHORT_ANSWER_TASKS:  # as for JSON lines: a value that is not a text is named, not scored
            record = {k: layers.cell_value(v) for k, v in row.items() if k != "geometry"}
            try:
                answer, texts = short_item(task, layers.cell_value(value), answer_field,
                                           f"{answers.path} feature {answers.table.index[i]}", record,
                                           args.reference_field or None, f"{refs.path} feature {refs.table.index[j]}")
            except RecordError as exc:
                raise CliError(str(exc)) from None
        else:
            record = {k: v for k, v in row.items() if k != "geometry" and not (isinstance(v, float) and math.isnan(v))}
            answer = text_of(value)
            texts = reference_texts(record, args.reference_field or None, REFERENCE_FIELDS[task])
        if texts is None:
            wanted = " or ".join(repr(f) for f in args.reference_field or REFERENCE_FIELDS[task])
            raise CliError(f"{refs.path}: no field {wanted} (choose it with --reference-field)")
        items.append((answer, texts, record))
    scores = score_items(task, items, None, args.iou)
    scores["unmatched_references"] = len(refs.geometries) - len(pairs)
    return scores


def _spans_meet(answers, refs) -> bool:
    """Whether the extents (bounding rectangles, in the answers' CRS) of two layers' geometries intersect."""
    import shapely

    ax0, ay0, ax1, ay1 = shapely.total_bounds(answers.geometries)
    rx0, ry0, rx1, ry1 = shapely.total_bounds(refs.geometries)
    return ax0 <= rx1 and rx0 <= ax1 and ay0 <= ry1 and ry0 <= ay1


def _span(features) -> str:
    """A layer's extent as "xmin..xmax, ymin..ymax" in its CRS (the answers' CRS once read), for the one line
    that says two layers are not of the same place."""
    import shapely

    x0, y0, x1, y1 = shapely.total_bounds(features.geometries)
    return f"{x0:.10g}..{x1:.10g}, {y0:.10g}..{y1:.10g}"


def _no_transform(answers_path, reference_path, answers_crs, reference_crs, exc) -> str:
    """One line for references that cannot be brought into the answers' CRS. The usual case: answers (or
    references) parsed without a raster are in GeoVLM's pixel CRS (core.georef.PIXEL_CRS_WKT, an engineering
    CRS), which nothing relates to a map CRS."""
    if getattr(answers_crs, "is_engineering", False):
        return (f"{answers_path} is in image pixels and {reference_path} in map coordinates: place the answers "
                "on the map first (geovlm parse --raster or --geotransform), or give references in pixels")
    if getattr(reference_crs, "is_engineering", False):
        return (f"{reference_path} is in image pixels and {answers_path} in map coordinates: place the references "
                "on the map first (geovlm parse --raster or --geotransform), or give answers in pixels")
    name = getattr(answers_crs, "name", answers_crs)
    return f"cannot bring {reference_path} into the CRS of {answers_path} ({name}): {' '.join(str(exc).split())}"


def _question_type(record: dict):
    name = next((f for f in QUESTION_TYPE_FIELDS if f in record), None)
    return None if name is None or record[name] is None else str(record[name])


def print_scores(scores: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(scores, sort_keys=False))
        return
    width = max(len(k) for k in scores)
    for key, value in scores.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
