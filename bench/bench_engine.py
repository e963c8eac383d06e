"""CPU benchmark of the engine against the peer its users would otherwise run, side by side in one process.

A random llava-hf checkpoint is built from config (nothing is downloaded): a ViT-B/16-sized CLIP tower at 224 px
(196 image tokens) and a ~100M-parameter Llama-shaped language model. Every ratio comes from A and B run
alternately (A B B A ...) in this process, medians over the rounds, with the machine's load printed:

- decoding: GeoVLM (`VlmPipeline`: ONNX encoder, static-cache decoder) vs transformers'
  `LlavaForConditionalGeneration.generate`, greedy, fp32: time to first token and decode tokens/s at batch 1 and
  for 8 requests (GeoVLM's ragged batch vs generate's left-padded batch), tokens compared;
- the memory-bandwidth bound of decoding measured here (bytes read per token / the best read rate of this
  machine, read in the same alternation as the batch-1 decode runs) and each side's % of its round's bound;
- the encoder: onnxruntime vs torch eager, ms/image at batch 1 and 8;
- cold load (`VlmPipeline.load` vs `from_pretrained`) and peak / anonymous memory of one ask, each in a fresh
  process.

Both sides run with the OpenMP wait of an engine process (`OMP_WAIT_POLICY=PASSIVE` unless the environment
chooses one, engine/cpu_threads.py); the benchmarks importing this module do too.

    python bench/bench_engine.py [--threads N] [--tokens 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess  # nosec B404  # runs this same file in fresh processes for the load and memory rows
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from geovlm.engine.cpu_threads import use_passive_wait  # noqa: E402

use_passive_wait()  # both sides run as an engine process does (engine/cpu_threads.py), before torch loads
QUESTION = (
    "[grounding]Describe the image in detail: name every building, road, vehicle, tree and field you see, "
    "give the location of each of them, and say how they relate to one another across the whole scene."
)
RASTER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rasters" / "cogeo.tif"
if not RASTER.exists():  # a clone with nothing beside it: the embedded sample (a crop of the same raster)
    RASTER = Path(__file__).resolve().parents[1] / "sample" / "aerial.tif"


def build_model(folder: Path, smoke: bool = False) -> Path:
    """A random llava-hf checkpoint: ViT-B/16 tower, 768-wide 12-layer Llama, the demo tokenizer (`smoke`: tiny
    shapes that only check the script)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from geovlm.models.demo_model import write_demo_model

    demo = write_demo_model(folder / "tok")
    width, layers, size, patch = (64, 2, 56, 14) if smoke else (768, 12, 224, 16)
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                              num_attention_heads=width // 64, image_size=size, patch_size=patch,
                              hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=400, hidden_size=width, intermediate_size=width * 8 // 3, num_hidden_layers=layers,
                       num_attention_heads=width // 64, num_key_value_heads=width // 64, max_position_embeddings=1024,
                       bos_token_id=1, eos_token_id=2, pad_token_id=4)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=3, pad_token_id=4,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=(size // patch) ** 2)
    torch.manual_seed(0)
    out = folder / "bench-model"
    LlavaForConditionalGeneration(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / name, out / name)
    meta = {"family": "llava15", "name": "bench-vitb-llama100m", "random_stand_in": True}
    (out / "geovlm.json").write_text(json.dumps(meta))
    return out


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} cores"


def alternate(runs: dict, rounds: int) -> dict:
    """Each callable of `runs` once as warm-up, then `rounds` rounds in alternating order (A B, B A, ...);
    the list of what each returned per round."""
    for fn in runs.values():
        fn()
    names, out = list(runs), {name: [] for name in runs}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(runs[name]())
    return out


def med(values) -> float:
    return statistics.median(values)


# -- decoding -------------------------------------------------------------------------------------------------


class _Clock:
    """A transformers streamer noting when each `put` comes (the prompt first, then each new token)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def decoding_runs(pipe, hf_model, images, tokens: int):
    """(GeoVLM run, transformers run) for these images, each returning (ttft s, decode tokens/s, token lists).
    Row i's question is QUESTION less its last 3*i words: a batch's prompts differ in length."""
    import numpy as np
    import torch

    from geovlm.core.georef import fit_plan
    from geovlm.models.language import DecodeSettings
    from geovlm.models.preprocess import fit_image, normalise

    words = QUESTION.split()
    prompts = [pipe.prompt_ids([("user", " ".join(words[: len(words) - 3 * i]))]) for i in range(len(images))]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pipe.lm.pad_id] * (width - len(p)) + p for p in prompts])  # left-padded for generate
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def geovlm():
        pipe.cache = type(pipe.cache)()  # every run encodes its images
        start = time.perf_counter()
        feats = pipe.encode(images)
        decoding = pipe.lm.decoding(prompts, list(feats), [DecodeSettings(max_new_tokens=tokens)] * len(images))
        steps = iter(decoding)
        next(steps)
        first = time.perf_counter()
        for _ in steps:
            pass
        decode_s = time.perf_counter() - first
        ids = [r.token_ids for r in decoding.results]
        return first - start, sum(len(t) - 1 for t in ids) / decode_s, ids

    def transformers_generate():
        clock = _Clock()
        start = time.perf_counter()
        fitted = [fit_image(im, fit_plan(pipe.profile, im.shape[1], im.shape[0]), pipe.pad_color) for im in images]
        pixels = torch.from_numpy(np.ascontiguousarray(normalise(fitted, pipe.encoder.mean, pipe.encoder.std)))
        with torch.inference_mode():
            out = hf_model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                                    max_new_tokens=tokens, do_sample=False, streamer=clock)
        new = out[:, ids.shape[1]:].tolist()
        eos = pipe.lm.eos_ids
        rows = [row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))] for row in new]
        decode_s = clock.times[-1] - clock.times[1]
        return clock.times[1] - start, sum(len(t) - 1 for t in rows) / decode_s, rows

    return geovlm, transformers_generate


def lm_bytes_per_token(model) -> tuple:
    """(weight bytes, KV-cache bytes per position) a decode step reads: every language-model weight but the
    input embedding (one row of it is read), the output head included."""
    text = model.model.language_model
    weights = sum(p.numel() * p.element_size() for n, p in text.named_parameters() if "embed_tokens" not in n)
    weights += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    config = text.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * model.lm_head.weight.element_size()
    return weights, kv


def buffer_sums(nbytes: int) -> dict:
    """{"torch": fn, "numba": fn}: each sums one float32 buffer of `nbytes` (the same buffer), the read rate's
    measure; numba's (the compiler of GeoVLM's CPU step) where it is installed, compiled before it is returned."""
    import torch

    buffer = torch.ones(nbytes // 4, dtype=torch.float32)
    sums = {"torch": buffer.sum}
    try:
        from numba import njit
    except ImportError:
        return sums

    @njit(fastmath=True, parallel=True)
    def total(values):
        return values.sum()

    array = buffer.numpy()
    total(array)
    sums["numba"] = lambda: total(array)
    return sums


def bandwidth_runs(model, decoder):
    """Ways to read memory as fast as this machine allows, each returning GB/s: sums over a buffer the size of
    the weights (torch's, and numba's where it is installed); a bare pass of torch's matrix-vector products
    (`torch.mv`, MKL on CPU) over the language model's weight matrices; the same pass over GeoVLM's stacked
    matrices with its linear kernel (`decoder.linear`, oneDNN on CPU) and, where the compiled CPU step serves,
    with that step's product (`cpu_decode_step._products`): a decode step with everything but the weight reads
    taken out."""
    import torch

    weights = [m.weight for m in model.model.language_model.modules() if isinstance(m, torch.nn.Linear)]
    weights.append(model.lm_head.weight)
    total = sum(w.numel() * w.element_size() for w in weights)
    vectors = [torch.ones(w.shape[1]) for w in weights]
    ours = [m for w in decoder.weights for m in (w.qkv, w.o, w.gate_up, w.down)] + [decoder.lm_head.weight]
    our_vectors = [torch.ones(1, w.shape[1]) for w in ours]

    def timed(fn):
        def run():
            start = time.perf_counter()
            with torch.inference_mode():
                fn()
            return total / (time.perf_counter() - start) / 1e9
        return run

    def weight_pass():
        for w, v in zip(weights, vectors):
            torch.mv(w, v)

    def kernel_pass():
        for w, v in zip(ours, our_vectors):
            decoder.linear(v, w)

    runs = {f"sum over a weight-sized buffer ({name}, this process)": timed(fn)
            for name, fn in buffer_sums(total).items()}
    runs["bare matrix-vector pass over the weights (torch.mv)"] = timed(weight_pass)
    runs[f"bare pass of GeoVLM's products ({decoder.kernel} kernel, stacked matrices)"] = timed(kernel_pass)
    if decoder.step_kernel == "numba":
        import numpy as np

        from geovlm.models.cpu_decode_step import _products

        arrays = [w.detach().numpy() for w in ours]
        inputs = [v.numpy() for v in our_vectors]  # [1, in]: a batch of one row
        outputs = [np.empty((1, w.shape[0]), np.float32) for w in ours]

        def compiled_pass():
            for w, v, o in zip(arrays, inputs, outputs):
                _products(w, v, o)

        runs["bare pass of GeoVLM's products (the compiled step's numba kernel, stacked matrices)"] = \
            timed(compiled_pass)
    return runs


# -- encoder --------------------------------------------------------------------------------------------------


def encoder_runs(pipe, model_dir: Path, batch: int):
    import numpy as np
    import torch

    from geovlm.models.checkpoints import load_vision_model
    from geovlm.models.encoder_export import vision_encoder

    module = vision_encoder(load_vision_model(model_dir))
    size = pipe.encoder.input_size
    pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    tensor = torch.from_numpy(pixels)
    with torch.inference_mode():
        diff = float(abs(pipe.encoder.run(pixels) - module(tensor).numpy()).max())

    def timed(fn):
        start = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - start) / batch

    def torch_eager():
        with torch.inference_mode():
            return timed(lambda: module(tensor))

    return {"onnxruntime": lambda: timed(lambda: pipe.encoder.run(pixels)), "torch eager": torch_eager}, diff


# -- fresh processes: cold load and memory ----------------------------------------------------------------------


def memory_status() -> dict:
    """This process's peak RSS (VmHWM), anonymous and file-backed resident memory, in MiB (/proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024  # MiB
    return out


def child(kind: str, model_dir: str, tokens: int) -> None:
    """In a fresh process: load (timed after the imports) and, for `ask-*`, answer once; print JSON."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from geovlm.models.checkpoints import from_local_folder
    from geovlm.models.imagery import read_rgb
    from geovlm.models.pipeline import GenRequest, VlmPipeline

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "0")) or torch.get_num_threads())
    image = read_rgb(RASTER, (0, 0, 256, 256))
    start = time.perf_counter()
    if kind.endswith("geovlm"):
        pipe = VlmPipeline.load(model_dir, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - start
        if kind.startswith("ask"):
            pipe.generate_batch([GenRequest(image, [("user", QUESTION)], max_new_tokens=tokens)])
            ask_s = time.perf_counter() - start
    else:
        model = from_local_folder(LlavaForConditionalGeneration, model_dir, dtype=torch.float32)
        load_s = time.perf_counter() - start
        if kind.startswith("ask"):  # the prompt ids and pixels GeoVLM made for the same ask (bench's main)
            import numpy as np

            ids = torch.from_numpy(np.load(Path(model_dir) / "ask-ids.npy"))
            pixels = torch.from_numpy(np.load(Path(model_dir) / "ask-pixels.npy"))
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                               max_new_tokens=tokens, do_sample=False)
            ask_s = time.perf_counter() - start
    print(json.dumps(dict(memory_status(), load_s=load_s, ask_s=locals().get("ask_s"))))


def save_ask(pipe, model_dir: Path) -> None:
    """The prompt ids and pixel values of the fresh-process ask (a 256 px tile of cogeo.tif), for transformers."""
    import numpy as np

    from geovlm.core.georef import fit_plan
    from geovlm.models.imagery import read_rgb
    from geovlm.models.preprocess import fit_image, normalise

    image = read_rgb(RASTER, (0, 0, 256, 256))
    fitted = fit_image(image, fit_plan(pipe.profile, 256, 256), pipe.pad_color)
    np.save(model_dir / "ask-ids.npy", np.array([pipe.prompt_ids([("user", QUESTION)])]))
    np.save(model_dir / "ask-pixels.npy", normalise([fitted], pipe.encoder.mean, pipe.encoder.std))


def read_rate_child(nbytes: int, rounds: int) -> None:
    """In a fresh process: GB/s of `torch.sum` (and numba's sum, where installed) over an `nbytes` buffer,
    alternated, medians of `rounds`; print JSON {name: GB/s}."""
    sums = buffer_sums(nbytes)
    rates = {name: [] for name in sums}
    for r in range(rounds + 1):
        for name, fn in sums.items() if r % 2 == 0 else reversed(sums.items()):
            start = time.perf_counter()
            fn()
            rates[name].append(nbytes / (time.perf_counter() - start) / 1e9)
    print(json.dumps({name: med(values[1:]) for name, values in rates.items()}))


def default_wait_read_rate(nbytes: int, rounds: int, threads: int) -> dict:
    """The sums' read rates ({"torch": GB/s, "numba": GB/s}) in a fresh process whose OpenMP runtime keeps its
    own default wait (spinning): a waiting thread that sleeps (the engine's passive wait) wakes late, and a bound
    must be the machine's best read."""
    from geovlm.engine.cpu_threads import WAIT_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(GOMP_SPINCOUNT="300000", BENCH_THREADS=str(threads))  # libgomp's documented default, set so the
    # engine's passive default is not applied in the child
    out = subprocess.run(  # nosec B603  # this interpreter and this file, no shell
        [sys.executable, __file__, "--read-rate", str(nbytes), "--rounds", str(rounds)],
        check=True, capture_output=True, text=True, env=env, timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_rate_run(nbytes: int, rounds: int, threads: int):
    """A run giving the machine's best read rate now, GB/s: the fastest of torch's and numba's sums over an
    `nbytes` buffer in this process (its wait) and in a fresh process with OpenMP's default spinning wait. It
    runs in the same alternation as the batch-1 decode runs: this virtual machine's read rate changes from
    minute to minute (24-57 GB/s in one hour), so a bound measured at another time than the decoding is not its
    bound."""
    sums = list(buffer_sums(nbytes).values())

    def run():
        rates = []
        for fn in sums:
            start = time.perf_counter()
            fn()
            rates.append(nbytes / (time.perf_counter() - start) / 1e9)
        rates.extend(default_wait_read_rate(nbytes, rounds, threads).values())
        return max(rates)

    return run


def in_fresh_process(kind: str, model_dir: Path, tokens: int, threads: int) -> dict:
    env = dict(os.environ, BENCH_THREADS=str(threads))
    out = subprocess.run(  # nosec B603  # this interpreter and this file, no shell
        [sys.executable, __file__, "--child", kind, "--model", str(model_dir), "--tokens", str(tokens)],
        check=True, capture_output=True, text=True, env=env, timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- report -----------------------------------------------------------------------------------------------------


def row(label: str, a: float, b: float, unit: str, higher_is_better: bool = True, digits: int = 1) -> str:
    ratio = a / b if higher_is_better else b / a
    return f"| {label} | {a:.{digits}f} {unit} | {b:.{digits}f} {unit} | {ratio:.2f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round, 3 tokens: checks the script")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--read-rate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.tokens = 1, 3
    if args.child:
        child(args.child, args.model, args.tokens)
        return
    if args.read_rate:
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "0")) or torch.get_num_threads())
        read_rate_child(args.read_rate, args.rounds)
        return
    import onnxruntime
    import torch
    import transformers
    from transformers import LlavaForConditionalGeneration

    from geovlm.models.checkpoints import from_local_folder
    from geovlm.models.cpu_decode_step import threading_layer
    from geovlm.models.imagery import read_rgb
    from geovlm.models.pipeline import VlmPipeline

    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {load_text()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), smoke=args.smoke)
        pipe = VlmPipeline.load(model_dir, providers=["CPUExecutionProvider"])  # exports the encoder once
        save_ask(pipe, model_dir)
        hf_model = from_local_folder(LlavaForConditionalGeneration, model_dir, dtype=torch.float32).eval()
        batches = (1, 2) if args.smoke else (1, 8)
        images = [read_rgb(RASTER, (50 * i, 40 * i, 256, 256)) for i in range(batches[-1])]
        prompt_len = len(pipe.prompt_ids([("user", QUESTION)]))
        what = ("SMOKE RUN, tiny shapes: no figures" if args.smoke
                else "Random ViT-B/16 @224 (196 image tokens) + 768x12 Llama")
        print(f"\n{what} (vocab 400), fp32; prompt {prompt_len} "
              f"tokens with the image (row i of a batch: 3*i words fewer), {args.tokens} greedy new tokens; medians "
              f"of {args.rounds} alternated rounds. GeoVLM's batch-1 decode step: "
              f"{pipe.lm.decoder.step_kernel} (models/cpu_decode_step.py when numba; its threads: "
              f"{threading_layer()}).\n")
        print("| measure | GeoVLM | transformers `generate` | GeoVLM ahead by |\n|---|---|---|---|", flush=True)
        weights_b, kv_b = lm_bytes_per_token(hf_model)
        kv_mean = kv_b * (prompt_len + args.tokens / 2)
        lm_rows, same, reads = {}, True, None
        for batch in batches:
            ours, theirs = decoding_runs(pipe, hf_model, images[:batch], args.tokens)
            runs = {"geovlm": ours, "transformers": theirs}
            if batch == 1:  # the bound is read in the same rounds (read_rate_run)
                runs["read"] = read_rate_run(weights_b, 3, args.threads)
            got = alternate(runs, args.rounds)
            reads = got.pop("read", reads)
            lm_rows[batch] = {k: (med([r[0] for r in v]), med([r[1] for r in v])) for k, v in got.items()}
            if batch == 1:
                got_one = got
            same &= all(g[2] == t[2] for g, t in zip(got["geovlm"], got["transformers"]))
            g, t = lm_rows[batch]["geovlm"], lm_rows[batch]["transformers"]
            what = "batch 1" if batch == 1 else f"{batch} requests (GeoVLM ragged batch, generate padded batch)"
            print(row(f"decode tokens/s, {what}", g[1], t[1], "tok/s"))
            print(row(f"time to first token, {what}", g[0], t[0], "s", higher_is_better=False, digits=3))
            print(f"| (machine: {load_text()}) | | | |", flush=True)
        print(f"\nTokens identical to transformers in every round: {'yes' if same else 'NO'}")
        per_token = weights_b + kv_mean
        bounds = [rate * 1e9 / per_token for rate in reads]
        print("\n| memory-bandwidth bound of decoding, batch 1 | value |\n|---|---|")
        print(f"| best read rate of each decode round (sums: torch and numba, this process and a fresh spinning one)"
              f" | {' / '.join(f'{r:.1f}' for r in reads)} GB/s |")
        print(f"| bytes read per token: weights + KV cache at the mean context | {weights_b / 1e6:.1f} MB + "
              f"{kv_mean / 1e6:.1f} MB |")
        print(f"| bound (read rate / bytes per token), median of the rounds | {med(bounds):.1f} tokens/s |")
        for side, label in (("geovlm", "GeoVLM"), ("transformers", "transformers generate")):
            shares = [100 * g[1] / b for g, b in zip(got_one[side], bounds)]
            print(f"| {label} decode, batch 1 | {lm_rows[1][side][1]:.1f} tokens/s = {med(shares):.0f} % of its "
                  f"round's bound (median; rounds {min(shares):.0f}-{max(shares):.0f} %) |")
        rates = alternate(bandwidth_runs(hf_model, pipe.lm.decoder), max(args.rounds, 7))
        for name, values in rates.items():
            print(f"| read rate after the decoding: {name} | {med(values):.1f} GB/s |")
        kernel = med(rates[[k for k in rates if k.startswith("bare pass of GeoVLM")][-1]])  # the step's own
        share = 100 * lm_rows[1]["geovlm"][1] * per_token / (kernel * 1e9)
        print(f"| GeoVLM decode against the bare pass of its own products after the decoding ("
              f"{kernel * 1e9 / per_token:.1f} tokens/s) | {share:.0f} % |")
        print(f"| (machine: {load_text()}) | |", flush=True)
        print("\n| encoder, ms/image | onnxruntime | torch eager | onnxruntime ahead by | max abs diff |")
        print("|---|---|---|---|---|")
        for batch in batches:
            runs, diff = encoder_runs(pipe, model_dir, batch)
            times = {k: med(v) for k, v in alternate(runs, args.rounds).items()}
            o, t = times["onnxruntime"], times["torch eager"]
            print(f"| batch {batch} | {o:.1f} | {t:.1f} | {t / o:.2f}x | {diff:.1e} |", flush=True)
        print(f"| (machine: {load_text()}) | | | | |")
        del pipe, hf_model
        fresh = {"geovlm": [], "transformers": []}
        loads = 1 if args.smoke else 3
        for r in range(loads):
            for name in ("geovlm", "transformers") if r % 2 == 0 else ("transformers", "geovlm"):
                fresh[name].append(in_fresh_process(f"load-{name}", model_dir, args.tokens, args.threads))
        g_load = med([f["load_s"] for f in fresh["geovlm"]])
        t_load = med([f["load_s"] for f in fresh["transformers"]])
        print("\n| fresh process | GeoVLM | transformers | GeoVLM / transformers |\n|---|---|---|---|")
        print(f"| cold load (`VlmPipeline.load` vs `from_pretrained`), median of {loads} | {g_load:.2f} s | "
              f"{t_load:.2f} s | {g_load / t_load:.2f}x |", flush=True)
        asks = {name: in_fresh_process(f"ask-{name}", model_dir, args.tokens, args.threads)
                for name in ("geovlm", "transformers")}
        g, t = asks["geovlm"]["ask_s"], asks["transformers"]["ask_s"]
        print(f"| cold start to one answer ({args.tokens} tokens: load, encode, prefill, decode) | {g:.2f} s | "
              f"{t:.2f} s | {g / t:.2f}x |")
        for key, label in (("VmHWM", "peak RSS of one ask"), ("RssAnon", "anonymous memory after one ask"),
                           ("RssFile", "file-backed memory after one ask")):
            g, t = asks["geovlm"][key], asks["transformers"][key]
            print(f"| {label} | {g:.0f} MiB | {t:.0f} MiB | {g / t:.2f}x |")
        print(f"| (machine: {load_text()}) | | | |")


if __name__ == "__main__":
    main()
