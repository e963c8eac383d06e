"""GPU benchmark for a lent device: LLaVA-1.5-7B-sized and GeoChat-504-sized models built from config with random
weights directly on the GPU (nothing is downloaded).

Reports the encoder's ms/image (onnxruntime CUDA and TensorRT in fp16 vs torch fp16), time to first token
(encode + prefill) and decode tokens/s against the memory-bandwidth bound (weight bytes read per token).

    pip install -e '.[engine]' onnxruntime-gpu   # on the GPU machine
    python bench/gpu_bench.py [--models llava15-7b geochat-504] [--bandwidth-gbs 3350]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Peak HBM bandwidth in GB/s by device name, for the decode bound; --bandwidth-gbs overrides.
BANDWIDTH = {"H100 PCIe": 2000, "H100": 3350, "H200": 4800, "A100-SXM4-80GB": 2039, "A100": 1555, "L4": 300}


def llava_config(image_size: int):
    """LLaVA-1.5-7B shapes: CLIP ViT-L/14 at `image_size`, Llama-2-7B (Vicuna) language model."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=image_size,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )
    grid = image_size // 14
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=32000,
        pad_token_id=32001,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=grid * grid,
    )


MODELS = {"llava15-7b": 336, "geochat-504": 504}


def cuda_ms(fn, repeat: int = 10) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        runs.append(1000 * (time.perf_counter() - start))
    return statistics.median(runs)


def encoder_rows(model, size: int, batch: int, workdir: Path):
    """ms/image of the fp16 encoder: torch eager, onnxruntime CUDA, onnxruntime TensorRT."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from geovlm.models.encoder_export import vision_encoder

    module = vision_encoder(model).eval()
    pixels = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        rows = {"torch fp16": cuda_ms(lambda: module(pixels)) / batch}
    path = workdir / f"enc{size}.onnx"
    if not path.exists():
        cpu = vision_encoder(model).to("cpu")
        example = torch.zeros(1, 3, size, size)  # float32 in: the graph casts to fp16 itself
        program = torch.onnx.export(
            cpu,
            (example,),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=["image_features"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
        )
        program.save(str(path))
        model.to("cuda")
    feed = {"pixel_values": pixels.float().cpu().numpy().astype(np.float32)}
    for name, providers in (
        ("onnxruntime CUDA fp16", ["CUDAExecutionProvider"]),
        (
            "onnxruntime TensorRT fp16",
            [("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "CUDAExecutionProvider"],
        ),
    ):
        try:
            session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # a provider missing from this onnxruntime build
            rows[name] = f"unavailable ({type(exc).__name__})"
            continue
        used = session.get_providers()[0]
        if not used.startswith(name.split()[1][:4]):
            rows[name] = f"unavailable (fell back to {used})"
            continue
        rows[name] = statistics.median([_timed(lambda s=session: s.run(None, feed)) for _ in range(10)]) / batch
    return rows


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def lm_numbers(model, image_tokens: int, new_tokens: int):
    """(time to first token after the encoder in ms, decode tokens/s) for one sequence, greedy."""
    import torch
    from transformers import DynamicCache

    hidden = model.config.text_config.hidden_size
    embeds = torch.randn(1, image_tokens + 48, hidden, device="cuda", dtype=torch.float16) * 0.02

    def prefill():
        cache = DynamicCache(config=model.config.text_config)
        out = model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache, out.logits[:, -1].argmax(-1, keepdim=True)

    with torch.inference_mode():
        ttft = cuda_ms(prefill, repeat=5)
        cache, token = prefill()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
    return ttft, new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--bandwidth-gbs", type=float)
    args = parser.parse_args()
    import torch
    from transformers import LlavaForConditionalGeneration

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a lent GPU")
    name = torch.cuda.get_device_name()
    bandwidth = args.bandwidth_gbs or next((v for k, v in BANDWIDTH.items() if k in name), None)
    print(f"# {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            size = MODELS[key]
            config = llava_config(size)
            torch.manual_seed(0)
            torch.set_default_dtype(torch.float16)
            with torch.device("cuda"):
                model = LlavaForConditionalGeneration(config).eval()
            torch.set_default_dtype(torch.float32)
            lm_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "vision" not in n)
            enc = encoder_rows(model, size, args.batch, Path(tmp))
            ttft, tps = lm_numbers(model, config.image_seq_length, args.new_tokens)
            print(f"## {key}: {size} px, {config.image_seq_length} image tokens, LM {lm_bytes / 1e9:.1f} GB fp16\n")
            print(f"| measure (batch {args.batch} for the encoder) | value |\n|---|---|")
            for label, value in enc.items():
                shown = f"{value:.2f} ms/image" if isinstance(value, float) else value
                print(f"| encoder {label} | {shown} |")
            torch_enc = enc["torch fp16"]
            print(f"| time to first token (encoder torch 1 image + prefill) | {torch_enc + ttft:.1f} ms |")
            print(f"| prefill alone | {ttft:.1f} ms |")
            bound = f" (bound {bandwidth * 1e9 / lm_bytes:.1f} at {bandwidth:.0f} GB/s)" if bandwidth else ""
            print(f"| decode, batch 1 | {tps:.1f} tokens/s{bound} |")
            print(f"| peak GPU memory | {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |\n")
            del model
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
