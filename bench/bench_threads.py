"""Decoding when the engine shares its cores: threading layers and wait policies, quiet and beside busy processes.

An engine rarely has the machine to itself: QGIS renders beside it, a second engine or a bulk run shares the cores.
torch's CPU kernels run on OpenMP; at the end of each parallel region a thread that is done waits for the others.
libgomp's default wait spins (GOMP_SPINCOUNT, libgomp manual "GOMP_SPINCOUNT"): a spinning thread holds a core the
thread it waits for may need, and when another process has taken a core, every product of a decode step waits for
the scheduler. `OMP_WAIT_POLICY=PASSIVE` (OpenMP 5.2 specification, "OMP_WAIT_POLICY") makes waiting threads
sleep instead, at the cost of a wake-up for each region. The compiled decode step (models/cpu_decode_step.py)
runs its ~60 regions a step on numba's TBB layer where the `tbb` wheel is installed: TBB's workers spin briefly,
then sleep. The rows compare that with the step on numba's OpenMP layer (NUMBA_THREADING_LAYER=omp).

Each cell is the decode rate of GeoVLM's pipeline (the `bench_engine.py` model: ViT-B/16 + 768x12 Llama, fp32,
one 256 px tile, 64 greedy tokens) in a fresh process started with those settings (read once, at load),
while 0, 1 or 2 other processes spin on the CPU; policies alternate (A B C, C B A, ...), medians of the rounds.

    python bench/bench_threads.py [--rounds 3] [--tokens 64] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess  # nosec B404  # runs this same file, and busy loops, in fresh processes
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import QUESTION, RASTER, build_model, load_text, med  # noqa: E402

from geovlm.engine.cpu_threads import WAIT_VARIABLES  # noqa: E402

POLICIES = {
    "GeoVLM's default: steps on TBB, torch OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "steps on OpenMP, OMP_WAIT_POLICY=PASSIVE (the default before TBB)": {
        "OMP_WAIT_POLICY": "PASSIVE", "NUMBA_THREADING_LAYER": "omp"},
    "steps on OpenMP, libgomp's default (GOMP_SPINCOUNT=300000: spin, then sleep)": {
        "GOMP_SPINCOUNT": "300000", "NUMBA_THREADING_LAYER": "omp"},
    "steps on TBB, torch spinning (GOMP_SPINCOUNT=300000)": {"GOMP_SPINCOUNT": "300000"},
}
BUSY = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end:\n    pass\n"


def child(model_dir: str, tokens: int) -> None:
    """In a fresh process: load GeoVLM's pipeline, answer the question once as warm-up, then once timed; print
    the decode rate as JSON."""
    from geovlm.models.imagery import read_rgb
    from geovlm.models.language import DecodeSettings
    from geovlm.models.pipeline import VlmPipeline

    pipe = VlmPipeline.load(model_dir, providers=["CPUExecutionProvider"])
    image = read_rgb(RASTER, (0, 0, 256, 256))
    prompt = pipe.prompt_ids([("user", QUESTION)])
    rates = []
    for _ in range(2):
        feats = pipe.encode([image])
        decoding = pipe.lm.decoding([prompt], list(feats), [DecodeSettings(max_new_tokens=tokens)])
        steps = iter(decoding)
        next(steps)
        start = time.perf_counter()
        for _ in steps:
            pass
        rates.append((len(decoding.results[0].token_ids) - 1) / (time.perf_counter() - start))
    print(json.dumps({"tok_s": rates[-1]}))


def decode_rate(model_dir: Path, tokens: int, policy: dict) -> float:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES and k != "NUMBA_THREADING_LAYER"}
    env.update(policy)
    out = subprocess.run(  # nosec B603  # this interpreter and this file, no shell
        [sys.executable, __file__, "--child", str(model_dir), "--tokens", str(tokens)],
        check=True, capture_output=True, text=True, env=env, timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["tok_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round, 3 tokens: checks the script")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tokens)
        return
    if args.smoke:
        args.rounds, args.tokens = 1, 3
    busy_counts = (0, 1) if args.smoke else (0, 1, 2)
    print(f"CPU, {os.cpu_count()} cores; {load_text()}")
    print(f"\n{'SMOKE RUN, tiny shapes: no figures. ' if args.smoke else ''}Decode tokens/s of GeoVLM, batch 1, "
          f"{args.tokens} greedy tokens, fresh process per cell, medians of {args.rounds} alternated rounds.\n")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), smoke=args.smoke)
        names = list(POLICIES)
        table = {(name, n): [] for name in names for n in busy_counts}
        for n in busy_counts:
            hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]  # nosec B603  # fixed code
            try:
                for r in range(args.rounds):
                    for name in names if r % 2 == 0 else names[::-1]:
                        table[(name, n)].append(decode_rate(model_dir, args.tokens, POLICIES[name]))
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    header = " | ".join(f"{n} busy process{'es' if n != 1 else ''}" for n in busy_counts)
    print(f"| decode step threads, OpenMP wait | {header} |\n|---|{'---|' * len(busy_counts)}")
    for name in names:
        cells = " | ".join(f"{med(table[(name, n)]):.1f} tok/s" for n in busy_counts)
        print(f"| {name} | {cells} |")
    print(f"| (machine at the end: {load_text()}) |{' |' * len(busy_counts)}")


if __name__ == "__main__":
    main()
