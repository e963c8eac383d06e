"""Parsing and georeferencing throughput on the shared real answers and on adversarial long answers.

Prints a table: answers/s and objects/s for each file, and the time for 40,000-character hostile answers; then
`geovlm parse` of one long Florence-2 line of `<loc_>` bins (75, 150 and 300 KB): parse time, peak memory of the
parse (tracemalloc), time to write the GeoPackage and its size, which should all grow linearly.
"""
import contextlib
import io
import json
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

from geovlm.core.georef import GeoTransform, ImageFrame
from geovlm.core.parsing import parse_answer
from geovlm.core.profiles import get_profile

SHARED = Path(os.environ.get("GEOVLM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FILES = ["earthdial_refer_nwpu_vhr10.jsonl", "earthdial_grounding_ucas_aod.jsonl", "earthdial_caption_ucm.jsonl"]
FRAME = ImageFrame(800, 800, GeoTransform(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0), "EPSG:32616")


def best_of(fn, *args, repeats=5):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def parse_all(texts, profile):
    objects = 0
    for text in texts:
        answer = parse_answer(text, profile, (FRAME.width, FRAME.height))
        for obj in answer.objects:
            FRAME.to_map(obj.polygon)
        objects += len(answer.objects)
    return objects


def main():
    profile = get_profile("earthdial")
    print("| input | answers | objects | ms | answers/s | objects/s |")
    print("|---|---|---|---|---|---|")
    for name in FILES:
        with open(SHARED / "data" / "answers" / name, encoding="utf-8") as fh:
            texts = [json.loads(line)["answer"] for line in fh]
        seconds, objects = best_of(parse_all, texts, profile)
        print(f"| {name} | {len(texts)} | {objects} | {seconds * 1000:.1f} | {len(texts) / seconds:,.0f} | "
              f"{objects / seconds:,.0f} |")
    hostile = {
        "qwen2vl": "<|box_start|>" + "(1,2) " * 6000,
        "skysensegpt": "<rel>" * 8000,
        "geochat": "{<1><2><3>" * 4000,
        "florence2": "word " * 8000,
        "qwen25vl": "{" + '"bbox_2d", ' * 3636,  # a JSON-object scan by regex was quadratic on this
    }
    for family, text in hostile.items():
        seconds, answer = best_of(parse_answer, text, get_profile(family), (512, 512), repeats=3)
        print(f"| hostile {family}, {len(text):,} chars | 1 | {len(answer.objects)} | {seconds * 1000:.1f} | "
              f"{1 / seconds:,.0f} | - |")
    florence_long_lines()


def florence_long_lines():
    """`geovlm parse` of one Florence-2 line of N bytes of <loc_> bins: time, memory and output size."""
    from geovlm.cli import main as geovlm

    print("\n| Florence-2 line | boxes | parse ms | parse peak MB | geovlm parse s | GeoPackage MB |")
    print("|---|---|---|---|---|---|")
    profile = get_profile("florence2")
    for kb in (1, 75, 150, 300):  # the first, tiny, run pays the imports (geopandas, pyogrio) and is not shown
        box = "<loc_123><loc_456><loc_789><loc_987>"
        text = "car" + box * (kb * 1000 // len(box))
        parse_s, answer = best_of(parse_answer, text, profile, (768, 768), repeats=3)
        tracemalloc.start()  # a separate run: tracing slows it down
        parse_answer(text, profile, (768, 768))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        with tempfile.TemporaryDirectory() as folder:
            src, out = Path(folder) / "a.txt", Path(folder) / "a.gpkg"
            src.write_text(text + "\n")
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                geovlm(["parse", str(src), "--family", "florence2", "--image-size", "768x768", "--out", str(out)])
            cli_s = time.perf_counter() - start
            size = out.stat().st_size
        if kb > 1:
            print(f"| {len(text) / 1000:.0f} KB | {len(answer.objects):,} | {parse_s * 1000:.0f} | "
                  f"{peak / 2**20:.1f} | {cli_s:.2f} | {size / 2**20:.1f} |")


if __name__ == "__main__":
    main()
