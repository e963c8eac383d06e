"""`geovlm eval`: the published scores reproduced on real result files, and each metric's rule on answers
built for it."""
import json
import math
import warnings

import pytest

from geovlm.cli import main
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile
from geovlm.evaluation import accuracy, detection, scene_graph, text_metrics, wordnet

# EarthDial's own scripts on the shared files (../shared/data/SOURCES.md).
PUBLISHED_DETECTION = {
    "earthdial_refer_nwpu_vhr10.jsonl": dict(small=0.1167, medium=0.1422, large=0.2312, single=0.2538,
                                             multiple=0.0892),
    "earthdial_refer_ship.jsonl": dict(small=0.1047, medium=0.2245, large=0.4667, single=0.2411, multiple=0.0619),
}
PUBLISHED_REGION_CAPTION = dict(rouge1_precision=0.9011, rouge1_recall=0.6089, rouge1_f1=0.7214,
                                rougeL_precision=0.9011, rougeL_recall=0.6089, rougeL_f1=0.7214, meteor=0.5990)


def run_json(capsys, *argv):
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(PUBLISHED_DETECTION))
def test_detection_reproduces_earthdials_published_precision(capsys, data_dir, name):
    scores = run_json(capsys, "detection", str(data_dir / "answers" / name), "--family", "earthdial")
    for key, published in PUBLISHED_DETECTION[name].items():
        assert scores[key] == pytest.approx(published, abs=1e-3), key
    assert set(detection.KEYS) <= set(scores)
    # overall: correct over all predictions, between the single and multiple values it is made of
    assert min(scores["single"], scores["multiple"]) <= scores["overall"] <= max(scores["single"], scores["multiple"])


def test_region_caption_reproduces_earthdials_published_scores(capsys, data_dir):
    scores = run_json(capsys, "region-caption", str(data_dir / "answers" / "earthdial_identify_nwpu_vhr10.jsonl"))
    for key, published in PUBLISHED_REGION_CAPTION.items():
        assert scores[key] == pytest.approx(published, abs=1e-3), key
    assert scores["answers"] == 985
    assert 0 < scores["bleu4"] < scores["bleu1"] < 1 and scores["cider"] > 0


def test_caption_uses_every_reference_caption(capsys, data_dir):
    path = data_dir / "answers" / "earthdial_caption_ucm.jsonl"
    five = run_json(capsys, "caption", str(path))
    one = run_json(capsys, "caption", str(path), "--reference-field", "caption0")
    assert five["answers"] == one["answers"] == 210
    # more references can only help METEOR (it keeps the best) and BLEU (clipped counts over all references)
    assert five["meteor"] > one["meteor"] and five["bleu4"] > one["bleu4"]
    assert all(0 < five[k] <= 1 for k in text_metrics.CAPTION_KEYS if k != "cider")


def test_turned_corners_follow_earthdials_rotation():
    # x' = x cos a + y sin a, y' = -x sin a + y cos a about the centre: a quarter turn of a 4x2 box about (2, 1)
    corners = detection.turned_corners(0, 0, 4, 2, 90)
    expected = [(1, 3), (1, -1), (3, -1), (3, 3)]
    assert all(math.isclose(x, ex, abs_tol=1e-9) and math.isclose(y, ey, abs_tol=1e-9)
               for (x, y), (ex, ey) in zip(corners, expected))
    # a box turned by 90 covers the same ground as the box with width and height swapped
    swapped = detection.turned_corners(1, -1, 3, 3, 0)
    assert detection.polygon_iou(corners, swapped) == pytest.approx(1.0)
    # EarthDial's ship file writes angle 0: as written, [[7, 80, 11, 91, 0]] and its reference overlap well
    assert detection.polygon_iou(detection.turned_corners(7, 80, 11, 91, 0),
                                 detection.turned_corners(7, 80, 11, 88, 0)) == pytest.approx(32 / 44)


def test_precision_counts_each_prediction_once_and_degenerate_boxes_as_misses():
    profile = get_profile("earthdial")
    records = [
        # one prediction overlapping both references counts once; the second prediction misses
        ("[[10, 10, 20, 20, 0]][[60, 60, 70, 70, 0]]", "[[10, 10, 20, 20, 0]][[11, 10, 21, 20, 0]]", "small"),
        # a zero-width prediction is a prediction that hits nothing (EarthDial: invalid polygon, IoU 0)
        ("[[30, 30, 30, 40, 0]]", "[[30, 30, 31, 40, 0]]", "large"),
        # a 90-degree turn of a square is the same square
        ("[[40, 40, 50, 50, 90]]", "[[40, 40, 50, 50, 0]]", "large"),
        # no box in the answer: no prediction, nothing counted
        ("I cannot find it.", "[[1, 1, 5, 5, 0]]", "medium"),
    ]
    scores = detection.precision_at_iou(records, profile)
    assert scores["small"] == pytest.approx(1 / 2)
    assert scores["large"] == pytest.approx(1 / 2)
    assert scores["medium"] == 0.0
    assert scores["multiple"] == pytest.approx(1 / 2) and scores["single"] == pytest.approx(1 / 2)
    assert scores["overall"] == pytest.approx(2 / 4) and scores["predicted_boxes"] == 4
    assert scores["questions"] == 4


def test_earthdial_boxes_are_read_as_earthdials_script_reads_them():
    profile = get_profile("earthdial")
    # A line of EarthDial's own GeoChat result file (src/earthdial/eval/rs_detection/results/GeoChat.jsonl): its
    # script takes no box from a list with a negative number, so the question has no reference ("multiple")
    line = ("[[77, 0, 89, 11, 61]]", "[[77, -2, 90, 10, 56]]", "medium")
    scores = detection.precision_at_iou([line], profile)
    assert scores["multiple"] == 0.0 and scores["medium"] == 0.0 and scores["predicted_boxes"] == 1
    assert detection.box_polygons("[[10.5, 20, 30, 40, 0]][[1, 2, 3, 4]]", profile)[0] is None
    assert len(detection.box_polygons("[[10.5, 20, 30, 40, 0]][[1, 2, 3, 4]]", profile)) == 1
    # a four-number box is a prediction that matches nothing
    four = detection.precision_at_iou([("[[1, 2, 30, 40]]", "[[1, 2, 30, 40, 0]]", "small")], profile)
    assert four["predicted_boxes"] == 1 and four["overall"] == 0.0


def test_an_answer_saved_as_parsed_json_is_read_as_the_reference_is(tmp_path, capsys):
    """A Qwen2.5-VL answer saved parsed (a JSON array, not a string) was read as Python's repr of the list, with
    single quotes: no box, precision 0, while the same array as the reference was read."""
    boxes = [{"bbox_2d": [10, 20, 110, 220], "label": "car"}]
    path = tmp_path / "qwen.jsonl"
    path.write_text(json.dumps({"answer": boxes, "gt_bbox": boxes}) + "\n", encoding="utf-8")
    scores = run_json(capsys, "detection", str(path), "--family", "qwen25vl")
    assert scores["predicted_boxes"] == 1 and scores["overall"] == 1.0


def test_detection_reference_may_be_a_json_array(tmp_path, capsys):
    path = tmp_path / "refer.jsonl"
    rows = [{"answer": "[[10, 10, 20, 20, 0]]", "gt_bbox": [[10, 10, 20, 20, 0]], "size_group": "small"},
            {"answer": "[[10, 10, 20, 20, 0]]", "gt_bbox": "[[50, 50, 60, 60, 0]]", "size_group": "small"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert run_json(capsys, "detection", str(path), "--family", "earthdial")["small"] == 0.5


def test_detection_reads_other_families_with_their_own_grammar():
    scores = detection.precision_at_iou([("{<10><10><20><20>|<0>}", "{<10><10><20><20>|<0>}", None),
                                         ("{<50><50><60><60>|<0>}", "{<10><10><20><20>|<0>}", None)],
                                        get_profile("geochat"))
    assert scores["overall"] == pytest.approx(0.5) and scores["single"] == pytest.approx(0.5)


def test_vqa_and_classification_accuracy_follow_earthdial():
    assert accuracy.answer_score("yes", "Yes.") == 1.0
    assert accuracy.answer_score("dense residential", "Dense Residential") == 1.0
    assert accuracy.answer_score("no", "yes") == 0.0
    vqa = accuracy.vqa_accuracy([("yes", "yes", "presence"), ("no", "yes", "presence"),
                                 ("rural", "rural", "rural_urban"), ("more than 10", "more than 10", "comp")])
    assert vqa["accuracy_presence"] == 0.5 and vqa["accuracy_rural_urban"] == 1.0 and vqa["accuracy_comp"] == 1.0
    assert vqa["average_accuracy"] == pytest.approx(2.5 / 3) and vqa["overall_accuracy"] == pytest.approx(3 / 4)
    assert accuracy.classification_accuracy([("forest", "forest"), ("river", "beach")])["accuracy"] == 0.5


def test_vqa_and_classification_through_the_command(tmp_path, capsys):
    path = tmp_path / "vqa.jsonl"
    rows = [{"question": "Is there a road?", "answer": "Yes", "annotation": "yes", "vqa_type": "presence"},
            {"question": "Is it rural or urban?", "answer": "urban", "annotation": "rural", "vqa_type": "rural_urban"}]
    path.write_text("\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")  # with a BOM
    scores = run_json(capsys, "vqa", str(path))
    assert scores == {"accuracy_presence": 1.0, "accuracy_rural_urban": 0.0, "average_accuracy": 0.5,
                      "overall_accuracy": 0.5, "answers": 2}
    assert run_json(capsys, "classification", str(path))["accuracy"] == 0.5


def test_vqav2_lists_of_annotators_answers_score_by_consensus():
    ten = ["yes"] * 2 + ["no"] * 8  # VQAv2: min(1, matches among the other nine / 3), over each one left out
    assert accuracy.consensus_score(ten, "yes") == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    assert accuracy.consensus_score(ten, "no") == 1.0 and accuracy.consensus_score(ten, "maybe") == 0.0
    assert accuracy.vqa_score(["Yes"], "yes.") == 1.0 and accuracy.vqa_score("no", "yes") == 0.0


def write_jsonl(tmp_path, rows):
    path = tmp_path / "short.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_vqa_references_listed_by_annotators_through_the_command(tmp_path, capsys):
    path = write_jsonl(tmp_path, [{"answer": "yes", "annotation": ["yes", "yes", "no"]},
                                  {"answer": 3, "annotation": "3"},  # a count written as a JSON number
                                  {"answer": "river", "annotation": ["river"]}])
    scores = run_json(capsys, "vqa", str(path))
    # "yes" among (yes, yes, no): each "yes" left out leaves 1 match (1/3), "no" left out leaves 2 (2/3)
    assert scores["overall_accuracy"] == pytest.approx((4 / 9 + 1 + 1) / 3) and scores["answers"] == 3


def test_vqav2_answers_are_normalised_before_the_consensus_through_the_command(tmp_path, capsys):
    # VQAv2's layout: ten annotators' answers a question, its question_type; scored as the official evaluation
    # does after its answer normalisation (evaluation.vqa_normalisation)
    path = write_jsonl(tmp_path, [
        {"question_type": "how many", "answer": "Two.", "annotation": ["2", "two", "2", "3", "3", "3", "3", "3",
                                                                          "3", "3"]},
        {"question_type": "how many", "answer": "1,000", "annotation": ["1000", "1,000", "1000", "many"]},
        {"question_type": "what is", "answer": "The tennis court", "annotation": ["tennis court", "a tennis court",
                                                                                    "court", "court"]},
        {"question_type": "is this", "answer": "yes!", "annotation": ["yes", "Yes.", "no"]},
        {"question_type": "is this", "answer": "Yes", "annotation": ["yes", "yes", "yes"]},  # unanimous: as written
    ])
    scores = run_json(capsys, "vqa", str(path))
    two = (3 * 2 / 3 + 7 * 1) / 10  # "Two." is "2", as are three annotators: min(1, 2/3) or 1 left out
    thousand = (3 * 2 / 3 + 1) / 4
    court = (2 * 1 / 3 + 2 * 2 / 3) / 4
    yes = (2 * 1 / 3 + 2 / 3) / 3
    assert scores["accuracy_how many"] == pytest.approx((two + thousand) / 2)
    assert scores["accuracy_what is"] == pytest.approx(court)
    assert scores["accuracy_is this"] == pytest.approx((yes + 0.0) / 2)
    assert scores["overall_accuracy"] == pytest.approx((two + thousand + court + yes) / 5) and scores["answers"] == 5


@pytest.mark.parametrize("task, row, message", [
    ("vqa", {"answer": None, "annotation": "yes"}, "answer field 'answer' is null, not a text"),
    ("vqa", {"answer": ["yes"], "annotation": "yes"}, "answer field 'answer' is a list, not a text"),
    ("vqa", {"answer": "yes", "annotation": None}, "reference field 'annotation' is null, not a text"),
    ("vqa", {"answer": "yes", "annotation": {"a": 1}}, "reference field 'annotation' is an object"),
    ("vqa", {"answer": "yes", "annotation": []}, "reference field 'annotation' is an empty list"),
    ("vqa", {"answer": "yes", "annotation": ["yes", None]}, "an answer in reference field 'annotation' is null"),
    ("vqa", {"answer": 0.5, "annotation": "yes"}, "answer field 'answer' is a number"),
    ("classification", {"answer": "forest", "ground_truth": None}, "reference field 'ground_truth' is null"),
    ("classification", {"answer": "forest", "label": ["forest", "park"]}, "2 references; classification"),
    ("classification", {"answer": True, "label": "forest"}, "answer field 'answer' is true/false"),
])
def test_short_answers_that_are_not_texts_are_named_by_line(tmp_path, capsys, task, row, message):
    path = write_jsonl(tmp_path, [{"answer": "yes", "annotation": "yes", "label": "yes"}, row])
    assert main(["eval", task, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}:2: {message}" in err and "\n" not in err, err


@pytest.mark.parametrize("task, row, message", [
    ("detection", {"answer": "[[1,2,30,40,0]]", "gt_bbox": None}, "reference field 'gt_bbox' is null, not a text"),
    ("detection", {"answer": None, "gt_bbox": "[[1,2,30,40,0]]"}, "answer field 'answer' is null, not a text"),
    ("scene-graph", {"answer": None, "ground_truth": "[[1,2,30,40,0]]"}, "answer field 'answer' is null"),
    ("scene-graph", {"answer": "[[1,2,30,40,0]]", "ground_truth": None}, "reference field 'ground_truth' is null"),
])
def test_box_answers_or_references_that_are_null_are_named_by_line(tmp_path, capsys, task, row, message):
    # A null reference was scored as no box (0.5 over these two lines, exit 0), as was a null answer.
    first = {"answer": "[[1,2,30,40,0]]", "gt_bbox": "[[1,2,30,40,0]]", "ground_truth": "[[1,2,30,40,0]]"}
    path = write_jsonl(tmp_path, [first, row])
    assert main(["eval", task, str(path), "--family", "earthdial"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}:2: {message}" in err and "\n" not in err, err


SKY = get_profile("skysensegpt")
CARS = ("<ref>cars</ref><rbox>({<20.00><30.00><4.00><2.00>|<90>}, {<26.00><30.00><4.00><2.00>|<90>})</rbox> "
        "<rel>parked alongside with</rel> <ref>car_parking</ref><rbox>({<40.00><40.00><30.00><20.00>|<90>})</rbox>.")
TRUCK = ("<ref>truck</ref><rbox>({<70.00><70.00><6.00><3.00>|<90>})</rbox> <rel>drive toward</rel> "
         "<ref>toll_gate</ref><rbox>({<80.00><80.00><8.00><8.00>|<90>})</rbox>.")


def test_scene_graph_recall_matches_labels_predicates_and_both_boxes():
    reference = CARS + " " + TRUCK  # three triplets: two cars -> car_parking, truck -> toll_gate
    assert scene_graph.triplet_recall([(reference, reference)], SKY)["recall"] == 1.0
    one_car = ("<ref>car</ref><rbox>({<20.20><30.00><4.00><2.00>|<90>})</rbox> <rel>parked alongside with</rel> "
               "<ref>car_parking</ref><rbox>({<40.00><41.00><30.00><20.00>|<90>})</rbox>.")
    scores = scene_graph.triplet_recall([(one_car, reference)], SKY)
    assert scores["recall"] == pytest.approx(1 / 3) and scores["precision"] == 1.0
    # per predicate: parked alongside with 1/2, drive toward 0/1
    assert scores["mean_recall"] == pytest.approx(0.25)
    wrong_predicate = TRUCK.replace("drive toward", "drive off")
    moved_box = TRUCK.replace("<70.00><70.00>", "<60.00><60.00>")
    for answer in (wrong_predicate, moved_box, TRUCK.replace("truck", "boat")):
        assert scene_graph.triplet_recall([(answer, TRUCK)], SKY)["recall"] == 0.0
    assert scene_graph.triplet_recall([(TRUCK, TRUCK)], SKY, threshold=0.5)["answer_triplets"] == 1


def test_region_scene_graph_target_matches_itself():
    reference = ("A small car on the top part of the image. 1 car<rbox>({<20.00><30.00><4.00><2.00>|<90>})</rbox> "
                 "is <rel>parked alongside with</rel> it. It is <rel>parked alongside with</rel> "
                 "<ref>truck</ref><rbox>({<70.00><70.00><5.00><3.00>|<90>})</rbox>.")
    triplets = scene_graph.triplets_of(parse_answer(reference, SKY))
    assert [(t.subject, t.predicate, t.object) for t in triplets] == [
        ("car", "parked alongside with", scene_graph.TARGET), (scene_graph.TARGET, "parked alongside with", "truck")]
    half = reference.split(" It is ")[0] + "."
    assert scene_graph.triplet_recall([(half, reference)], SKY)["recall"] == 0.5


def test_scene_graph_command_reads_ground_truth(tmp_path, capsys):
    path = tmp_path / "sgg.jsonl"
    path.write_text(json.dumps({"answer": CARS, "ground_truth": CARS + " " + TRUCK}) + "\n", encoding="utf-8")
    scores = run_json(capsys, "scene-graph", str(path), "--family", "skysensegpt")
    assert scores["recall"] == pytest.approx(2 / 3) and scores["reference_triplets"] == 3


def test_identical_caption_scores_full_marks():
    text = "many buildings and some green trees are around a playground"
    scores = text_metrics.caption_scores([(text, [text]), (text + " .", [text])], text_metrics.IMAGE_CAPTION)
    for key in ("rouge1_f1", "rougeL_f1", "bleu1", "bleu4"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6), key
    assert scores["meteor"] > 0.99


def test_wordnet_comes_from_the_system_with_a_generated_lexnames(monkeypatch, tmp_path):
    lines = wordnet.lexnames_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    assert lines[3] == "03\tnoun.Tops\t1" and lines[29] == "29\tverb.body\t2"
    reader = wordnet.load_wordnet()
    assert reader.get_version() == "3.0" and reader.synsets("harbour")
    monkeypatch.setenv(wordnet.ENV_DIR, str(tmp_path))
    wordnet.load_wordnet.cache_clear()
    try:
        with pytest.raises(wordnet.WordNetMissing, match="wordnet-base"):
            wordnet.load_wordnet()
    finally:
        wordnet.load_wordnet.cache_clear()


@pytest.mark.parametrize("argv, message", [
    (["detection", "{path}"], "give --family"),
    (["region-caption", "{path}", "--field", "text"], "no field 'text'"),
    (["vqa", "{path}", "--reference-field", "truth"], "no field 'truth'"),
    (["detection", "{path}", "--family", "earthdial", "--iou", "0"], "--iou"),
])
def test_bad_input_gets_one_clear_line(tmp_path, capsys, argv, message):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"answer": "[[1, 2, 3, 4, 0]]", "annotation": "x"}) + "\n", encoding="utf-8")
    assert main(["eval", *[a.format(path=path) for a in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


@pytest.mark.parametrize("task, family, what", [("detection", "geochat", "box"), ("detection", "qwen25vl", "box"),
                                                ("scene-graph", "skysensegpt", "triplet")])
def test_references_no_box_of_which_reads_in_the_family_are_one_line_not_zero_scores(data_dir, capsys, task,
                                                                                       family, what):
    # EarthDial's real referring answers scored as another family's: nothing reads, answers nor references, so
    # every precision would be 0 by construction and look like a model that found nothing
    path = data_dir / "answers" / "earthdial_refer_ship.jsonl"
    field = ["--reference-field", "gt_bbox"] if task == "scene-graph" else []
    assert main(["eval", task, str(path), "--family", family, *field]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err
    assert f"no reference {what} in {path} could be read with --family {family}: check --family" in err
    # read in their own family, the same references count
    assert run_json(capsys, "detection", str(path), "--family", "earthdial")["reference_boxes"] == 464


@pytest.mark.parametrize("task", ["region-caption", "caption"])
def test_references_without_a_word_are_one_clear_line(tmp_path, capsys, task):
    # every reference empty (a wrong field filled by a script, say): it ended in "max() arg is an empty sequence"
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"answer": "a plane", "annotation": ""}) + "\n"
                    + json.dumps({"answer": "a ship", "annotation": " . "}) + "\n", encoding="utf-8")
    assert main(["eval", task, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geovlm eval: no reference text has a word") and "\n" not in err
    # one empty reference among others is scored, as EarthDial's scripts score it
    path.write_text(json.dumps({"answer": "a plane", "annotation": ""}) + "\n"
                    + json.dumps({"answer": "a ship", "annotation": "a ship"}) + "\n", encoding="utf-8")
    assert run_json(capsys, task, str(path))["answers"] == 2


def test_a_line_that_is_not_json_is_named(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_text('{"answer": "yes", "annotation": "yes"}\nnot json\n', encoding="utf-8")
    assert main(["eval", "vqa", str(path)]) == 2
    assert f"{path}:2" in capsys.readouterr().err


# ---------------------------------------------------------------- GeoVLM's own layers, matched by location

GT = "0.5,0,500000,0,-0.5,4100000"  # 0.5 m pixels, EPSG:32616


def utm_box(col0, row0, col1, row1):
    """A box given in pixels of the 100x100 image, in EPSG:32616 map coordinates of GT."""
    from shapely.geometry import box

    return box(500000 + 0.5 * col0, 4100000 - 0.5 * row1, 500000 + 0.5 * col1, 4100000 - 0.5 * row0)


def write_layer(path, columns, geometries, crs="EPSG:32616", to_crs=None, layer="refs"):
    import geopandas as gpd

    frame = gpd.GeoDataFrame(columns, geometry=geometries, crs=crs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided")  # pixel-space layers, on purpose
        (frame.to_crs(to_crs) if to_crs else frame).to_file(path, layer=layer, engine="pyogrio")
    return path


def test_detection_scores_parsed_answers_against_reference_boxes_in_another_crs(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    # square boxes: the same ground whatever the family's upright angle
    answers.write_text(json.dumps({"answer": "[[10, 10, 30, 30, 90]][[60, 60, 70, 70, 90]]"}) + "\n"
                       + json.dumps({"answer": "[[40, 40, 50, 50, 0]]"}) + "\n", encoding="utf-8")
    gpkg = tmp_path / "answers.gpkg"
    assert main(["parse", str(answers), "--family", "earthdial", "--geotransform", GT, "--crs", "EPSG:32616",
                 "--out", str(gpkg)]) == 0
    capsys.readouterr()
    # references in WGS 84: one on the first box (IoU 0.90), one on the third, one where no answer is
    refs = write_layer(tmp_path / "refs.gpkg", {"label": ["field", "pond", "road"]},
                       [utm_box(11, 11, 30, 30), utm_box(40, 40, 50, 50), utm_box(80, 0, 99, 10)],
                       to_crs="EPSG:4326")
    scores = run_json(capsys, "detection", str(gpkg), "--reference", str(refs))
    assert scores["overall"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["predicted_boxes"] == 3 and scores["reference_boxes"] == 3
    strict = run_json(capsys, "detection", str(gpkg), "--reference", str(refs), "--iou", "0.95")
    assert strict["overall"] == pytest.approx(1 / 3)


def test_captions_are_paired_with_the_answer_that_overlaps_most(tmp_path, capsys):
    answers = write_layer(tmp_path / "captions.gpkg",
                          {"answer": ["a pond beside a road", "a big green field", "two white airplanes"]},
                          [utm_box(0, 0, 50, 50), utm_box(5, 5, 50, 50), utm_box(60, 60, 90, 90)],
                          layer="captions")
    refs = write_layer(tmp_path / "refs.gpkg", {"caption": ["a big green field", "a parking lot"]},
                       [utm_box(5, 5, 50, 50), utm_box(0, 90, 10, 100)])
    scores = run_json(capsys, "region-caption", str(answers), "--reference", str(refs))
    # the field is paired with the answer on exactly its ground (IoU 1), not the larger one (IoU 0.81)
    assert scores["answers"] == 1 and scores["unmatched_references"] == 1
    assert scores["rouge1_f1"] == pytest.approx(1.0) and scores["meteor"] > 0.99
    labels = write_layer(tmp_path / "classes.gpkg", {"annotation": ["farmland", "two white airplanes"]},
                         [utm_box(5, 5, 50, 50), utm_box(60, 60, 90, 90)])
    scores = run_json(capsys, "classification", str(answers), "--reference", str(labels))
    assert scores["accuracy"] == 0.5 and scores["answers"] == 2


def test_references_without_a_geometry_are_left_out_before_reprojecting(tmp_path, capsys):
    """A reference layer in another CRS holding a null and an empty geometry (a hand-made layer): they were taken
    for features the answers' CRS cannot show ("1 of 4 features have no coordinates there"), the layer refused,
    after a multi-line geopandas UserWarning on stderr. They are left out; the rest is scored."""
    from shapely.geometry import Polygon

    answers = write_layer(tmp_path / "answers.gpkg", {"label": ["a", "b"]},
                          [utm_box(10, 10, 30, 30), utm_box(40, 40, 50, 50)], layer="objects")
    refs = write_layer(tmp_path / "refs.gpkg", {"label": ["a", "none", "empty", "c"]},
                       [utm_box(11, 11, 30, 30), None, Polygon(), utm_box(80, 0, 99, 10)], to_crs="EPSG:4326")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # geopandas' UserWarning about notna() on empty geometries
        scores = run_json(capsys, "detection", str(answers), "--reference", str(refs))
    assert scores["reference_boxes"] == 2 and scores["overall"] == 0.5 and scores["recall"] == 0.5


@pytest.mark.parametrize("argv, message", [
    (["scene-graph", "{a}", "--reference", "{r}"], "JSON lines"),
    (["caption", "{a}", "--reference", "{r}", "--field", "text"], "no field 'text'"),
    (["caption", "{a}", "--reference", "{p}"], "only"),
    (["detection", "{a}", "--reference", "{r}", "--layer", "nope"], "no layer 'nope'"),
    (["detection", "{a}"], "--reference"),
])
def test_bad_layers_get_one_clear_line(tmp_path, capsys, argv, message):
    a = write_layer(tmp_path / "a.gpkg", {"answer": ["x"]}, [utm_box(0, 0, 10, 10)], layer="captions")
    r = write_layer(tmp_path / "r.gpkg", {"caption": ["x"]}, [utm_box(0, 0, 10, 10)])
    p = write_layer(tmp_path / "p.gpkg", {"caption": ["x"]}, [utm_box(0, 0, 10, 10)], crs=None)
    assert main(["eval", *[x.format(a=a, r=r, p=p) for x in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_json_lines_given_to_reference_say_what_reference_takes(tmp_path, capsys):
    """Answers and references in two JSON-lines files (a researcher's layout): GDAL's "not recognized as being in a
    supported file format ... prefixing the file path with '<DRIVER>:', e.g. 'CSV:path'" was all that was said."""
    answers, refs = tmp_path / "answers.jsonl", tmp_path / "refs.jsonl"
    answers.write_text('{"question_id": 1, "answer": "yes"}\n', encoding="utf-8")
    refs.write_text('{"question_id": 1, "annotation": "yes"}\n', encoding="utf-8")
    assert main(["eval", "vqa", str(answers), "--reference", str(refs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"geovlm eval: cannot open {answers} as a layer (") and "\n" not in err
    assert "CSV:path" not in err and "scored without --reference" in err
    layer = write_layer(tmp_path / "a.gpkg", {"label": ["x"]}, [utm_box(0, 0, 10, 10)], layer="objects")
    assert main(["eval", "detection", str(layer), "--reference", str(tmp_path / "nope.gpkg")]) == 2
    assert capsys.readouterr().err.strip() == f"geovlm eval: cannot open {tmp_path / 'nope.gpkg'}: no such file"


@pytest.mark.parametrize("task, answers, references, message", [
    ("vqa", ["yes", None], ["yes", "no"], "{a}|layername=captions feature 2: answer field 'answer' is null"),
    ("vqa", [1.0, 0.5], ["1", "no"], "{a}|layername=captions feature 2: answer field 'answer' is a number, not a text"),
    ("vqa", ["yes", "no"], ["yes", None], "{r}|layername=refs feature 2: reference field 'annotation' is null"),
    ("classification", ["yes", "no"], [True, False], "{r}|layername=refs feature 1: reference field 'annotation' is "
                                                      "true/false, not a text"),
])
def test_layer_values_that_are_not_texts_are_named_by_feature(tmp_path, capsys, task, answers, references, message):
    a = write_layer(tmp_path / "a.gpkg", {"answer": answers}, [utm_box(0, 0, 10, 10), utm_box(20, 20, 30, 30)],
                    layer="captions")
    r = write_layer(tmp_path / "r.gpkg", {"annotation": references}, [utm_box(0, 0, 10, 10), utm_box(20, 20, 30, 30)])
    assert main(["eval", task, str(a), "--reference", str(r)]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(a=a, r=r) in err and "\n" not in err, err


def test_layer_counts_are_read_as_their_digits(tmp_path, capsys):
    # an integer field, and whole numbers in a real field (how pandas reads an integer field that has nulls)
    a = write_layer(tmp_path / "a.gpkg", {"answer": [3, 5]}, [utm_box(0, 0, 10, 10), utm_box(20, 20, 30, 30)],
                    layer="captions")
    r = write_layer(tmp_path / "r.gpkg", {"annotation": [3.0, 4.0]}, [utm_box(0, 0, 10, 10), utm_box(20, 20, 30, 30)])
    assert run_json(capsys, "vqa", str(a), "--reference", str(r))["overall_accuracy"] == 0.5


def test_a_bulk_caption_run_is_scored_against_reference_captions(tmp_path, capsys):
    from geovlm.core.georef import GeoTransform
    from geovlm.core.ledger import FAILED, OK, Ledger, RunPlan, TileResult
    from geovlm.core.tiling import TilePlan

    gt = GeoTransform(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0)
    plan = RunPlan("caption", TilePlan(200, 100, 100, 0), gt, "Describe the image.", "caption", "geochat", "m")
    out = tmp_path / "captions.gpkg"
    tiles = list(plan.tiles.tiles())
    with Ledger(str(out), plan, epsg=32616) as ledger:
        ledger.record(TileResult(tiles[0], OK, caption="a harbor with two ships", answer="raw"), "q", "m", "geochat")
        ledger.record(TileResult(tiles[1], FAILED, error="timeout"), "q", "m", "geochat")
    # references: one per tile footprint (pixels 0-100 and 100-200 of row 0..100)
    refs = write_layer(tmp_path / "refs.gpkg", {"caption": ["a harbor with two ships", "a beach"]},
                       [utm_box(0, 0, 100, 100), utm_box(100, 0, 200, 100)])
    scores = run_json(capsys, "caption", str(out), "--reference", str(refs))
    # the failed tile holds no caption: its reference stays unmatched instead of scoring an empty answer
    assert scores["answers"] == 1 and scores["unmatched_references"] == 1
    assert scores["rouge1_f1"] == pytest.approx(1.0) and scores["bleu1"] == pytest.approx(1.0)


HUGE = ["9" * 400, "inf", "nan", "-" + "9" * 1000, "1e999", "0." + "0" * 500 + "1"]
FUZZ = {
    "earthdial": ("detection", "[[{v}, 2, 30, 40, {v}]][[{v}, {v}, {v}, {v}, 0]][[1, 2, 30, 40, 0]]",
                  "[[1, 2, 30, 40, 0]]"),
    "geochat": ("detection", "{{<{v}><2><30><40>|<{v}>}}{{<1><2><30><40>|<0>}}", "{{<1><2><30><40>|<0>}}"),
    "skysensegpt": ("scene-graph", "<ref>car</ref><rbox>({{<{v}><30.00><4.00><2.00>|<{v}>}})</rbox> <rel>parked "
                    "alongside with</rel> <ref>car_parking</ref><rbox>({{<40.00><40.00><30.00><20.00>|<90>}})</rbox>.",
                    "<ref>car</ref><rbox>({{<20.00><30.00><4.00><2.00>|<90>}})</rbox> <rel>parked alongside with"
                    "</rel> <ref>car_parking</ref><rbox>({{<40.00><40.00><30.00><20.00>|<90>}})</rbox>."),
}


@pytest.mark.parametrize("family", sorted(FUZZ))
def test_huge_infinite_and_nan_numbers_score_without_error(tmp_path, capsys, family):
    task, answer, reference = FUZZ[family]
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps({"answer": answer.format(v=v), "gt_bbox": reference,
                                        "ground_truth": reference, "size_group": "small"}) + "\n" for v in HUGE),
                    encoding="utf-8")
    scores = run_json(capsys, task, str(path), "--family", family)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in scores.values())
    if task == "detection":  # the readable box of each answer hits its reference
        assert scores["overall"] > 0


def test_a_folder_and_a_binary_file_get_one_clear_line(data_dir, tmp_path, capsys):
    assert main(["eval", "detection", str(tmp_path), "--family", "earthdial"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"geovlm eval: input {tmp_path} is a folder: give a file"
    raster = data_dir / "rasters" / "cogeo.tif"
    assert main(["eval", "detection", str(raster), "--family", "earthdial"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{raster} is not text" in err and "\n" not in err and "codec" not in err


def test_answers_in_pixels_against_references_on_the_map_get_one_clear_line(data_dir, tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"answer": "[[10, 10, 30, 30, 0]]"}) + "\n", encoding="utf-8")
    gpkg = tmp_path / "pixels.gpkg"  # no raster: GeoVLM's pixel CRS, which no transformation relates to a map
    assert main(["parse", str(answers), "--family", "earthdial", "--out", str(gpkg)]) == 0
    capsys.readouterr()
    refs = data_dir / "rasters" / "geotiff_labels.geojson"  # real footprints in EPSG:32616
    assert main(["eval", "detection", str(gpkg), "--reference", str(refs)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{gpkg} is in image pixels and {refs} in map coordinates" in err


def parsed_layers(tmp_path, capsys, *names_and_geotransforms):
    """{name: GeoPackage} of one EarthDial answer parsed with each geotransform (EPSG:32616; None: no raster, so
    in GeoVLM's pixel CRS), as `geovlm parse a.txt --geotransform ... --out NAME.gpkg` writes them."""
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"answer": "[[10, 10, 30, 30, 0]]"}) + "\n", encoding="utf-8")
    out = {}
    for name, geotransform in names_and_geotransforms:
        out[name] = tmp_path / f"{name}.gpkg"
        place = ["--geotransform", geotransform, "--crs", "EPSG:32616"] if geotransform else []
        assert main(["parse", str(answers), "--family", "earthdial", *place, "--out", str(out[name])]) == 0
    capsys.readouterr()
    return out


def test_detection_layers_that_do_not_overlap_at_all_are_one_line_not_a_zero_score(tmp_path, capsys):
    # 100 km apart: scored 0 with exit 0, which reads as a model that found nothing
    made = parsed_layers(tmp_path, capsys, ("utm", GT), ("far", GT.replace("500000", "600000")))
    assert main(["eval", "detection", str(made["utm"]), "--reference", str(made["far"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geovlm eval: the answers' and the references' extents do not overlap: are both layers "
                          f"of the same place? ({made['utm']}|layername=objects spans ") and "\n" not in err, err
    assert run_json(capsys, "detection", str(made["utm"]), "--reference", str(made["utm"]))["overall"] == 1.0


def test_detection_answers_that_miss_every_reference_of_their_place_score_zero(tmp_path, capsys):
    # the same place, no box on a reference: a model that found nothing, scored 0 (not refused as another place)
    answers = write_layer(tmp_path / "answers.gpkg", {"label": ["car", "car"]},
                          [utm_box(0, 0, 10, 10), utm_box(80, 80, 90, 90)], layer="objects")
    refs = write_layer(tmp_path / "refs.gpkg", {"label": ["car"]}, [utm_box(40, 40, 50, 50)])
    scores = run_json(capsys, "detection", str(answers), "--reference", str(refs))
    assert scores["overall"] == 0.0 and scores["recall"] == 0.0 and scores["predicted_boxes"] == 2


def test_references_in_pixels_against_answers_on_the_map_get_the_pixel_hint(tmp_path, capsys):
    # said "cannot bring ... Error creating Transformer from CRS."; answers in pixels got the hint already
    made = parsed_layers(tmp_path, capsys, ("utm", GT), ("px", None))
    assert main(["eval", "detection", str(made["utm"]), "--reference", str(made["px"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"geovlm eval: {made['px']} is in image pixels and {made['utm']} in map coordinates: place the "
                   "references on the map first (geovlm parse --raster or --geotransform), or give answers in pixels")


@pytest.mark.parametrize("name", ["ref.json", "ref.geojson", "ref.gpkg"])
def test_a_layer_given_as_file_without_reference_says_how_layers_are_scored(tmp_path, capsys, name):
    # a GeoJSON file named .json said "ref.json:1: no field 'answer'"
    import shutil

    made = parsed_layers(tmp_path, capsys, ("utm", GT))
    layer = tmp_path / name
    if name == "ref.gpkg":
        shutil.copy(made["utm"], layer)
    else:
        assert main(["parse", str(tmp_path / "a.jsonl"), "--family", "earthdial", "--geotransform", GT, "--crs",
                     "EPSG:32616", "--out", str(tmp_path / "ref.geojson")]) == 0
        if name == "ref.json":
            (tmp_path / "ref.geojson").rename(layer)
        capsys.readouterr()
    assert main(["eval", "detection", str(layer), "--family", "earthdial"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"geovlm eval: {name} is a layer: score a layer of answers against a layer of references with "
                   "--reference LAYER (matched by location); answers with their references in JSON lines need none")


def test_a_bulk_runs_tiles_are_not_scored_as_boxes(tmp_path, capsys):
    ledger = write_layer(tmp_path / "captions.gpkg", {"caption": ["a field"]}, [utm_box(0, 0, 50, 50)], layer="tiles")
    refs = write_layer(tmp_path / "refs.gpkg", {"label": ["field"]}, [utm_box(0, 0, 50, 50)])
    assert main(["eval", "detection", str(ledger), "--reference", str(refs)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no objects layer, only the tiles of a bulk run" in err and "\n" not in err
    scores = run_json(capsys, "detection", str(ledger), "--reference", str(refs), "--layer", "tiles")  # on purpose
    assert scores["overall"] == 1.0


def test_a_pretty_printed_json_array_of_answers_scores_as_its_json_lines(capsys, data_dir, tmp_path):
    """A results file written as one JSON array over many lines (json.dump(results, f, indent=2)) stopped at its
    first line ("not a JSON object"); its objects are scored as the same JSON lines are, and an element that is not
    an object is named by its number."""
    src = data_dir / "answers" / "earthdial_refer_ship.jsonl"
    records = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    array = tmp_path / "refer_ship.json"
    array.write_text(json.dumps(records, indent=2), encoding="utf-8")
    expected = run_json(capsys, "detection", str(src), "--family", "earthdial")
    assert run_json(capsys, "detection", str(array), "--family", "earthdial") == expected
    assert expected["small"] == pytest.approx(PUBLISHED_DETECTION["earthdial_refer_ship.jsonl"]["small"], abs=1e-3)
    array.write_text(json.dumps(records[:2] + [[1, 2]], indent=2), encoding="utf-8")
    assert main(["eval", "detection", str(array), "--family", "earthdial"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"geovlm eval: {array}: element 3: not a JSON object (expected an array of objects)")


@pytest.mark.parametrize("shape", ["results", "index", "results one line"])
def test_results_saved_as_one_object_around_the_records_score_as_their_json_lines(capsys, tmp_path, shape):
    # {"results": [...]} and pandas' to_json(orient="index") were read as one record: "no field 'answer'
    # (choose it with --field)", advice that could not help; parse reads them alike
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "sample" / "earthdial_refer.jsonl"
    rows = [json.loads(line) for line in sample.read_text(encoding="utf-8").splitlines()]
    value = {"model": "EarthDial-4B", "results": rows} if shape.startswith("results") else {
        str(i): row for i, row in enumerate(rows)}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(value, indent=None if shape.endswith("one line") else 2), encoding="utf-8")
    assert run_json(capsys, "detection", str(path), "--family", "earthdial") == run_json(
        capsys, "detection", str(sample), "--family", "earthdial")
    assert main(["parse", str(path), "--family", "earthdial", "--out", str(tmp_path / "p.gpkg")]) == 0
    assert capsys.readouterr().out.startswith("60 answers, 94 objects")


def test_references_over_the_antimeridian_are_reprojected_as_parse_reprojects(tmp_path, capsys,
                                                                            antimeridian_raster):
    """The reference layer is taken to the answers' CRS by `parse --to-crs`'s code (cli/reprojection.py), not
    plain `to_crs`: a reference box in UTM zone 60S across 180 degrees stays one box beside the answer box that
    `parse --to-crs EPSG:4326` kept whole there; plain `to_crs` tore it across the world (IoU ~0: 0 correct)."""
    from shapely.geometry import Polygon

    raster = antimeridian_raster  # 400 m x 200 m over Fiji, across 180 degrees
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"answer": "[[0, 0, 100, 100, 0]]"}) + "\n", encoding="utf-8")
    gpkg = tmp_path / "answers.gpkg"
    assert main(["parse", str(answers), "--family", "earthdial", "--raster", str(raster), "--to-crs", "EPSG:4326",
                 "--out", str(gpkg)]) == 0
    capsys.readouterr()
    whole = Polygon([(819300, 8118100), (819700, 8118100), (819700, 8117900), (819300, 8117900)])
    refs = write_layer(tmp_path / "refs.gpkg", {"label": ["island"]}, [whole], crs="EPSG:32760")
    scores = run_json(capsys, "detection", str(gpkg), "--reference", str(refs), "--iou", "0.99")
    assert scores["overall"] == 1.0 and scores["recall"] == 1.0


def test_reference_layers_of_holes_multipolygons_and_points_are_reprojected(tmp_path):
    """A user's reference layer is not only boxes: a polygon with a hole, a multipolygon and a point come
    through `read_features(to_crs=...)` with their kind and parts, where PROJ puts their vertices."""
    import geopandas as gpd
    from shapely.geometry import MultiPolygon, Point, Polygon

    from geovlm.evaluation.layers import read_features

    ring = [(500000, 4100000), (500040, 4100000), (500040, 4100040), (500000, 4100040)]
    holed = Polygon(ring, [[(500010, 4100010), (500020, 4100010), (500020, 4100020), (500010, 4100020)]])
    parts = MultiPolygon([Polygon(ring), Polygon([(x + 100, y) for x, y in ring])])
    refs = write_layer(tmp_path / "refs.gpkg", {"label": ["a", "b", "c"]}, [holed, parts, Point(500005, 4100005)])
    got = read_features(refs, to_crs="EPSG:4326").geometries
    plain = list(gpd.GeoSeries([holed, parts, Point(500005, 4100005)], crs="EPSG:32616").to_crs("EPSG:4326"))
    assert [g.geom_type for g in got] == ["Polygon", "MultiPolygon", "Point"]
    assert len(got[0].interiors) == 1 and len(got[1].geoms) == 2
    for mine, theirs in zip(got, plain):
        assert mine.hausdorff_distance(theirs) < 1e-9  # degrees: small shapes, whose edges stay straight


@pytest.mark.parametrize("north, warned", [(88.5, True), (45.5, False)])
def test_references_taken_past_the_answers_crs_area_of_use_are_warned_as_parse_warns(tmp_path, capsys, north, warned):
    """Answers in EPSG:3857 (85.06 S to 85.06 N), references in EPSG:4326 at 87.5-88.5 N: taken to EPSG:3857 they
    were scored there without a word (y = 2.1e7-2.4e7 m); now the line `parse --to-crs` gives, naming the layer,
    and the scores all the same."""
    from shapely.geometry import box

    lat = [box(9.0, north - 1, 9.5, north), box(9.5, north - 1, 10.0, north)]
    answers = write_layer(tmp_path / "answers.gpkg", {"label": ["a", "b"]}, lat, crs="EPSG:4326",
                          to_crs="EPSG:3857", layer="objects")
    refs = write_layer(tmp_path / "refs.gpkg", {"label": ["a"]}, lat[:1], crs="EPSG:4326")
    assert main(["eval", "detection", str(answers), "--reference", str(refs), "--json"]) == 0
    captured = capsys.readouterr()
    scores = json.loads(captured.out)
    assert scores["recall"] == 1.0 and scores["overall"] == 0.5
    said = [line for line in captured.err.splitlines() if "warning" in line]
    if warned:
        assert said == [f"geovlm eval: warning: {refs}|layername=refs taken to the answers' CRS: 1 of 1 features "
                        "reach latitudes outside EPSG:3857's area of use (-85.06 to 85.06 degrees), where its "
                        "coordinates are stretched beyond use; choose a CRS that covers them (EPSG:4326, or a polar "
                        "one such as EPSG:3413 or EPSG:3031); the layers are compared in the answers' CRS, which "
                        "geovlm parse --to-crs chooses"]
    else:
        assert said == []
