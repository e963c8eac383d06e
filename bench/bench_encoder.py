"""CPU benchmark of the vision encoder's precisions: int8 (onnxruntime dynamic quantisation) against fp32
onnxruntime and torch eager, and whether the answers' boxes move.

On bench_engine's random checkpoint (a ViT-B/16 CLIP tower at 224 px, 196 image tokens, and a 768-wide 12-layer
Llama; nothing downloaded), in one process:

- ms/image at batch 1 and 8 of the three encoders, run alternately (A B C, C B A, ...), medians, load printed;
- the int8 features against fp32 on real tiles of the shared rasters (`../shared/data/rasters`): worst and mean
  per-token cosine, relative error ||int8 - fp32||_F / ||fp32||_F, max abs difference (the gate's measures);
- greedy answers of the same language model on each tile with fp32 vs int8 features: how many are token for
  token identical, and the largest shift in pixels of a parsed box between the two answers (boxes paired in
  order where both answers give the same number of them); then, teacher-forced on the fp32 answers, at how many
  steps int8 picks the same token and how far ahead of its runner-up fp32's token was where it does not;
- in-process, alternated: each encoder with and without pre-packed weights (session.disable_prepacking);
- in fresh processes (3 each, alternated, medians): anonymous (RssAnon) and file-backed memory and encode ms of
  the encoder alone (weights inline as exported before, weights in a memory-mapped file, each pre-packed or not)
  and of one whole ask (bench_engine's) with the fp32 encoder before / now and the int8 one.

    python bench/bench_encoder.py [--threads N] [--rounds 5] [--tiles 12] [--tokens 48] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess  # nosec B404  # runs this same file in fresh processes for the memory rows
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import QUESTION, alternate, build_model, load_text, med, memory_status  # noqa: E402

RASTERS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rasters"
# (file, window col,row,width,height) of real imagery: an aerial photo, a Landsat scene, a panchromatic VHR
# scene and a 16-bit 4-band one, windows of several shapes
TILES = [("cogeo.tif", (90 * i, 70 * i, 224 + 40 * (i % 3), 224 + 30 * (i % 2))) for i in range(6)] + [
    ("RGB.byte.tif", (100, 100, 400, 300)), ("RGB.byte.tif", (300, 250, 256, 256)),
    ("sample_geotiff.tif", (0, 0, 450, 450)), ("sample_geotiff.tif", (400, 300, 300, 500)),
    ("RGBA.uint16.tif", (0, 0, 634, 411)), ("RGBA.uint16.tif", (200, 100, 224, 224)),
]


def tiles(n: int):
    from geovlm.models.imagery import read_rgb

    return [read_rgb(RASTERS / name, window) for name, window in (TILES * (1 + n // len(TILES)))[:n]]


def size_mb(path: Path) -> float:
    """MB of an encoder graph and its weights file."""
    from geovlm.models.encoder_export import weights_path

    return (path.stat().st_size + weights_path(path).stat().st_size) / 1e6


def speed(fn) -> float:
    """ms that fn() takes."""
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def speed_runs(encoders: dict, torch_module, pixels):
    """{name: run returning ms/image} for the onnxruntime encoders and torch eager on `pixels`."""
    import torch

    tensor = torch.from_numpy(pixels)

    def timed(fn):
        start = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - start) / len(pixels)

    runs = {name: (lambda e=enc: timed(lambda: e.run(pixels))) for name, enc in encoders.items()}

    def torch_eager():
        with torch.inference_mode():
            return timed(lambda: torch_module(tensor))

    runs["torch eager fp32"] = torch_eager
    return runs


def box_shift(a, b) -> float:
    """Largest corner distance in pixels between the boxes of two parsed answers, paired in order."""
    import math

    worst = 0.0
    for x, y in zip(a.objects, b.objects):
        worst = max([worst] + [math.dist(p, q) for p, q in zip(x.polygon, y.polygon)])
    return worst


def forced_choices(pipe, prompt, answer, feats):
    """The language model run once over prompt + answer (teacher forcing) with these image features: at each
    answer position, the token it would choose and its lead in logits over the runner-up."""
    import torch

    [row] = pipe.lm.embed_rows([prompt + answer], [feats])
    with torch.inference_mode():
        logits = pipe.lm.model(inputs_embeds=row[None]).logits[0, len(prompt) - 1 : len(prompt) + len(answer) - 1]
    top = logits.float().topk(2, dim=-1)
    return top.indices[:, 0].tolist(), (top.values[:, 0] - top.values[:, 1]).tolist()


def answers(pipe_fp32, pipe_int8, images, tokens: int) -> dict:
    """Greedy answers of both pipelines (same language model) on each image, compared."""
    from geovlm.core.parsing import parse_answer
    from geovlm.models.language import DecodeSettings

    out = {"identical": 0, "n": len(images), "boxes": 0, "box_count_differs": 0, "max_shift_px": 0.0,
           "first_difference": [], "steps": 0, "same_steps": 0, "flip_leads": [], "leads": []}
    prompt = pipe_fp32.prompt_ids([("user", QUESTION)])
    settings = DecodeSettings(max_new_tokens=tokens, stop=tuple(pipe_fp32.profile.stop))
    for image in images:
        texts, ids = [], []
        for pipe in (pipe_fp32, pipe_int8):
            decoding = pipe.lm.decoding([prompt], list(pipe.encode([image])), [settings])
            decoding.run()
            ids.append(decoding.results[0].token_ids)
            texts.append(decoding.results[0].text)
        out.setdefault("sample", texts[0])
        feats = [pipe.encode([image])[0] for pipe in (pipe_fp32, pipe_int8)]
        chosen, leads = forced_choices(pipe_fp32, prompt, ids[0], feats[0])
        chosen_int8, _ = forced_choices(pipe_int8, prompt, ids[0], feats[1])
        out["steps"] += len(chosen)
        out["same_steps"] += sum(a == b for a, b in zip(chosen, chosen_int8))
        out["flip_leads"] += [lead for a, b, lead in zip(chosen, chosen_int8, leads) if a != b]
        out["leads"] += leads
        size = (image.shape[1], image.shape[0])
        parsed = [parse_answer(t, pipe_fp32.profile, image_size=size) for t in texts]
        out["boxes"] += len(parsed[0].objects)
        if ids[0] == ids[1]:
            out["identical"] += 1
            continue
        out["first_difference"].append(next((i for i, (p, q) in enumerate(zip(*ids)) if p != q), min(map(len, ids))))
        if len(parsed[0].objects) != len(parsed[1].objects):
            out["box_count_differs"] += 1
        out["max_shift_px"] = max(out["max_shift_px"], box_shift(*parsed))
    return out


# -- fresh processes: anonymous memory ---------------------------------------------------------------------


def child(kind: str, path: str, model_dir: str, threads: int, tokens: int) -> None:
    """In a fresh process, print JSON of its memory after: `encoder-prepacked` / `encoder-unpacked`: opening the
    encoder at `path` with / without pre-packed weights and encoding a batch of 8 tiles twice (ms per image of the
    second); `encoder-prepacked-arena`: likewise with onnxruntime's CPU arena and memory pattern on; `ask`:
    loading the pipeline of `model_dir` with that encoder and answering once (bench_engine's ask; encode ms of
    that first encode, one 256 px tile); `ask-as-before`: likewise with the session options of before
    2026-11-30 (pre-packed weights, CPU arena and memory pattern)."""
    image = tiles(1)
    if kind == "ask-as-before":  # onnxruntime's defaults, as GeoVLM set them before 2026-11-30
        from geovlm.models import encoder_runtime

        current = encoder_runtime.session_options

        def as_before(threads=None, prepacking=True):
            options = current(threads, prepacking=True)
            options.enable_cpu_mem_arena = options.enable_mem_pattern = True
            return options

        encoder_runtime.session_options = as_before
    if kind.startswith("ask"):
        import torch

        from geovlm.models.pipeline import GenRequest, VlmPipeline

        torch.set_num_threads(threads)
        pipe = VlmPipeline.load(model_dir, encoder_onnx=path, device="cpu", providers=["CPUExecutionProvider"])
        [result] = pipe.generate_batch([GenRequest(image[0], [("user", QUESTION)], max_new_tokens=tokens)])
        print(json.dumps(dict(memory_status(), encode_ms=1000 * result.timings["encode"])))
        return
    from geovlm.models.encoder_quantise import encoder_pixels  # the encoder alone: no torch, no transformers
    from geovlm.models.encoder_runtime import OnnxEncoder, session_options

    options = session_options(threads, prepacking=kind.startswith("encoder-prepacked"))
    if kind.endswith("-arena"):  # as before 2026-11-30: onnxruntime's defaults
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = True
    encoder = OnnxEncoder(path, providers=["CPUExecutionProvider"], options=options)
    pixels = encoder_pixels(encoder, tiles(8))  # a batch as the server makes them
    encoder.run(pixels)
    start = time.perf_counter()
    encoder.run(pixels)
    print(json.dumps(dict(memory_status(), encode_ms=1000 * (time.perf_counter() - start) / len(pixels))))


def in_fresh_process(kind: str, path: Path, model_dir: Path, threads: int, tokens: int) -> dict:
    out = subprocess.run(  # nosec B603  # this interpreter and this file, no shell
        [sys.executable, __file__, "--child", kind, "--encoder", str(path), "--model", str(model_dir),
         "--threads", str(threads), "--tokens", str(tokens)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def fresh_table(title: str, variants: dict, model_dir: Path, args) -> None:
    """{label: (kind, path)} each run in 3 fresh processes (1 for --smoke), alternated; medians of memory and
    encode ms."""
    rows = {label: [] for label in variants}
    runs = 1 if args.smoke else 3
    for r in range(runs):
        for label in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            kind, path = variants[label]
            rows[label].append(in_fresh_process(kind, path, model_dir, args.threads, args.tokens))
    print(f"\n| {title}, fresh process, median of {runs} | anonymous memory (RssAnon) | file-backed (RssFile) | "
          "peak RSS | encode |\n|---|---|---|---|---|")
    for label, got in rows.items():
        m = {k: med([g[k] for g in got]) for k in got[0]}
        print(f"| {label} | {m['RssAnon']:.0f} MiB | {m['RssFile']:.0f} MiB | {m['VmHWM']:.0f} MiB | "
              f"{m['encode_ms']:.0f} ms |", flush=True)
    print(f"| (machine: {load_text()}) | | | | |")


def inline_copy(path: Path, out: Path) -> Path:
    """The encoder at `path` as GeoVLM exported it before its weights went to a file beside the graph: one
    file, weights inline (the "before" of the memory rows)."""
    import onnx

    onnx.save(onnx.load(str(path)), str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiles", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, 1 round, 2 tiles, 3 tokens, 1 fresh process each: checks the script")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.tiles, args.tokens = 1, 2, 3
    if args.child:
        child(args.child, args.encoder, args.model, args.threads, args.tokens)
        return
    import onnxruntime
    import torch

    from geovlm.models.checkpoints import load_vision_model
    from geovlm.models.encoder_export import vision_encoder
    from geovlm.models.encoder_quantise import encoder_pixels, feature_agreement, int8_beside
    from geovlm.models.encoder_runtime import OnnxEncoder, session_options
    from geovlm.models.pipeline import VlmPipeline

    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"{load_text()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), smoke=args.smoke)
        pipe = VlmPipeline.load(model_dir, device="cpu", providers=["CPUExecutionProvider"])
        start = time.perf_counter()
        int8_path = int8_beside(pipe.encoder.path)
        made_s = time.perf_counter() - start
        int8 = OnnxEncoder(int8_path, providers=["CPUExecutionProvider"])
        pipe_int8 = VlmPipeline(pipe.checkpoint, pipe.profile, pipe.lm, int8)
        gate = json.loads(int8.metadata["geovlm.int8_gate"])
        shapes = "SMOKE RUN, tiny shapes: no figures" if args.smoke else "Random ViT-B/16 @224 (196 image tokens)"
        print(f"\n{shapes} + 768x12 Llama; int8 made and gated in {made_s:.1f} s "
              f"(gate on sample/aerial.tif: per-token cosine >= {gate['min_cosine']:.4f}, relative error "
              f"{gate['relative_error']:.4f}); graph and weights {size_mb(pipe.encoder.path):.0f} MB fp32, "
              f"{size_mb(int8_path):.0f} MB int8; medians of {args.rounds} alternated rounds.\n")
        module = vision_encoder(load_vision_model(model_dir))
        images = tiles(args.tiles)
        pixels = encoder_pixels(pipe.encoder, images)
        print("| encoder, ms/image | onnxruntime fp32 | onnxruntime int8 | torch eager fp32 | int8 ahead of fp32 "
              "onnxruntime by | int8 ahead of torch by |\n|---|---|---|---|---|---|")
        for batch in (1, 8):
            runs = speed_runs({"onnxruntime fp32": pipe.encoder, "onnxruntime int8": int8}, module, pixels[:batch])
            ms = {k: med(v) for k, v in alternate(runs, args.rounds).items()}
            f, q, t = ms["onnxruntime fp32"], ms["onnxruntime int8"], ms["torch eager fp32"]
            print(f"| batch {batch} | {f:.1f} | {q:.1f} | {t:.1f} | {f / q:.2f}x | {t / q:.2f}x |", flush=True)
        print(f"| (machine: {load_text()}) | | | | | |")
        fp32_feats = pipe.encoder.run(pixels)
        with torch.inference_mode():
            torch_diff = float(abs(fp32_feats - module(torch.from_numpy(pixels)).numpy()).max())
        agreement = feature_agreement(fp32_feats, int8.run(pixels))
        print(f"\n| int8 vs fp32 features on {len(images)} tiles of the shared rasters | value |\n|---|---|")
        print(f"| per-token cosine, worst / mean | {agreement.min_cosine:.4f} / {agreement.mean_cosine:.5f} |")
        print(f"| relative error ‖int8 − fp32‖ / ‖fp32‖ | {agreement.relative_error:.4f} |")
        print(f"| max abs difference (fp32 onnxruntime vs torch: {torch_diff:.1e}) | {agreement.max_abs_diff:.3f} |")
        got = answers(pipe, pipe_int8, images, args.tokens)
        print(f"\n| greedy answers, {args.tokens} new tokens, fp32 vs int8 features | value |\n|---|---|")
        print(f"| answers token for token identical | {got['identical']} of {got['n']} |")
        print(f"| first differing token of the others (index) | {got['first_difference'] or '-'} |")
        print(f"| boxes parsed from the fp32 answers | {got['boxes']} |")
        print(f"| answers whose number of boxes differs | {got['box_count_differs']} |")
        print(f"| largest box shift (boxes paired in order) | {got['max_shift_px']:.1f} px |")
        flips = got["flip_leads"]
        print(f"| teacher-forced on the fp32 answers: steps where int8 picks the same token | {got['same_steps']} of "
              f"{got['steps']} |")
        print(f"| fp32's lead of its token over the runner-up, median over all steps / largest where int8 picked "
              f"another | {med(got['leads']):.3f} / {max(flips) if flips else 0:.3f} logits |")
        print(f"| (machine: {load_text()}) | |", flush=True)
        print(f"\nThe first fp32 answer: {got['sample']!r}")
        prepack = {}
        for name, path in (("fp32", pipe.encoder.path), ("int8", int8_path)):
            for packed, arena in ((True, False), (False, False), (name == "int8", True)):
                options = session_options(args.threads, prepacking=packed)
                options.enable_cpu_mem_arena = options.enable_mem_pattern = arena
                served = packed == (name == "int8") and not arena
                label = (f"{name}, {'pre-packed' if packed else 'not pre-packed'}, "
                         f"{'CPU arena and memory pattern' if arena else 'no arena'}{' (served)' if served else ''}")
                prepack[label] = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        print("\n| session options, ms/image | batch 1 | batch 8 |\n|---|---|---|")
        ms = {}
        for batch in (1, 8):
            feed = {pipe.encoder.input_name: pixels[:batch]}
            runs = {k: (lambda s=s, f=feed, n=batch: speed(lambda: s.run(None, f)) / n) for k, s in prepack.items()}
            ms[batch] = {k: med(v) for k, v in alternate(runs, args.rounds).items()}
        for k in prepack:
            print(f"| {k} | {ms[1][k]:.1f} | {ms[8][k]:.1f} |")
        print(f"| (machine: {load_text()}) | | |", flush=True)
        fp32_path = pipe.encoder.path
        del pipe, pipe_int8, int8, module, prepack
        inline = inline_copy(fp32_path, Path(tmp) / "encoder-inline-float32.onnx")
        fresh_table("encoder alone, batch of 8", {
            "fp32, weights inline, pre-packed, CPU arena (as before)": ("encoder-prepacked-arena", inline),
            "fp32, weights in a mapped file, pre-packed, CPU arena": ("encoder-prepacked-arena", fp32_path),
            "fp32, weights in a mapped file, pre-packed, no arena": ("encoder-prepacked", fp32_path),
            "fp32, weights in a mapped file, not pre-packed, no arena (served)": ("encoder-unpacked", fp32_path),
            "int8, weights in a mapped file, pre-packed, no arena (served)": ("encoder-prepacked", int8_path),
            "int8, weights in a mapped file, not pre-packed, no arena": ("encoder-unpacked", int8_path),
        }, model_dir, args)
        fresh_table(f"one ask ({args.tokens} new tokens), the whole pipeline", {
            "fp32 encoder as before (weights inline, pre-packed, CPU arena)": ("ask-as-before", inline),
            "fp32 encoder as served now": ("ask", fp32_path),
            "int8 encoder as served (--encoder-precision int8)": ("ask", int8_path),
        }, model_dir, args)


if __name__ == "__main__":
    main()
