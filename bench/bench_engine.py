"""CPU benchmark of the engine: encoder onnxruntime vs torch eager, LM tokens/s, time per tile end to end.

Builds a random model from config (no download): a ViT-B/16-sized CLIP tower at 224 px (196 image tokens) and
a ~100M-parameter Llama-shaped language model, in a temporary llava-hf folder. Runs in a few minutes on 2 cores.

    python bench/bench_engine.py [--threads N] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_model(folder: Path) -> Path:
    """A random llava-hf checkpoint: ViT-B/16 tower, 768-wide 12-layer Llama, the demo tokenizer."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from geovlm.models.demo_model import write_demo_model

    demo = write_demo_model(folder / "tok")
    vision = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=400,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=4,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=3,
        pad_token_id=4,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=196,
    )
    torch.manual_seed(0)
    out = folder / "bench-model"
    LlavaForConditionalGeneration(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / name, out / name)
    meta = {"family": "llava15", "name": "bench-vitb-llama100m", "random_stand_in": True}
    (out / "geovlm.json").write_text(json.dumps(meta))
    return out


def timed(fn, repeat: int) -> float:
    """Median seconds of `fn()` over `repeat` runs after one warm-up."""
    fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def bench_encoder(model_dir: Path, repeat: int):
    import numpy as np
    import torch

    from geovlm.models.checkpoints import load_model
    from geovlm.models.encoder_export import export_encoder, vision_encoder
    from geovlm.models.encoder_runtime import OnnxEncoder

    model = load_model(model_dir)
    report = export_encoder(model_dir, model_dir / "encoder.onnx", model=model, check_batches=(1,))
    enc = OnnxEncoder(report.path, providers=["CPUExecutionProvider"])
    module = vision_encoder(model)
    rows = []
    for batch in (1, 8):
        pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        tensor = torch.from_numpy(pixels)
        with torch.inference_mode():
            t_torch = timed(lambda t=tensor: module(t), repeat)
        t_ort = timed(lambda p=pixels: enc.run(p), repeat)
        rows.append((batch, 1000 * t_ort / batch, 1000 * t_torch / batch, t_torch / t_ort))
    return rows, max(report.max_abs_diff.values())


def bench_pipeline(model_dir: Path, tokens: int):
    from geovlm.core.parsing import parse_answer
    from geovlm.models.imagery import read_rgb
    from geovlm.models.pipeline import GenRequest, VlmPipeline

    raster = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rasters" / "cogeo.tif"
    pipe = VlmPipeline.load(model_dir, encoder_onnx=model_dir / "encoder.onnx", providers=["CPUExecutionProvider"])
    tiles = [read_rgb(raster, (256 * i, 256 * i, 256, 256)) for i in range(4)]
    question = [("user", "Describe the image")]
    pipe.generate_batch([GenRequest(tiles[0], question, max_new_tokens=4)])  # warm-up
    pipe.cache = type(pipe.cache)()
    split = {"preprocess": [], "encode": [], "prefill": [], "decode": [], "parse": []}
    walls, decoded = [], 0
    for tile in tiles:
        start = time.perf_counter()
        result = pipe.generate_batch([GenRequest(tile, question, max_new_tokens=tokens)])[0]
        t0 = time.perf_counter()
        parse_answer(result.text, pipe.profile, image_size=(tile.shape[1], tile.shape[0]))
        split["parse"].append(time.perf_counter() - t0)
        walls.append(time.perf_counter() - start)
        for key in ("preprocess", "encode", "prefill", "decode"):
            split[key].append(result.timings[key])
        decoded += result.tokens
    decode_tps = decoded / sum(split["decode"])
    pipe.cache = type(pipe.cache)()
    start = time.perf_counter()
    batch = pipe.generate_batch([GenRequest(t, question, max_new_tokens=tokens) for t in tiles])
    batch_wall = time.perf_counter() - start
    batch_tps = sum(r.tokens for r in batch) / batch[0].timings["decode"]
    return walls, {k: statistics.mean(v) for k, v in split.items()}, decode_tps, batch_wall, batch_tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp))
        rows, diff = bench_encoder(model_dir, args.repeat)
        walls, split, tps, batch_wall, batch_tps = bench_pipeline(model_dir, args.tokens)
    print(
        f"\nCPU, {args.threads} threads, torch {torch.__version__}; random ViT-B/16 @224 (196 tokens) + "
        f"768x12 Llama; ONNX vs torch max abs diff {diff:.1e}\n"
    )
    print("| encoder batch | onnxruntime ms/image | torch eager ms/image | torch / ort |")
    print("|---|---|---|---|")
    for batch, ort_ms, torch_ms, ratio in rows:
        print(f"| {batch} | {ort_ms:.1f} | {torch_ms:.1f} | {ratio:.2f} |")
    print(f"\n| end to end ({args.tokens} new tokens, 256x256 tiles of cogeo.tif) | value |")
    print("|---|---|")
    print(f"| time per tile, one at a time | {statistics.mean(walls):.2f} s |")
    for key, value in split.items():
        print(f"| - {key} | {1000 * value:.1f} ms |")
    print(f"| LM decode, batch 1 | {tps:.1f} tokens/s |")
    print(f"| 4 tiles in one batch | {batch_wall:.2f} s ({batch_wall / 4:.2f} s/tile, {batch_tps:.1f} tokens/s) |")


if __name__ == "__main__":
    main()
