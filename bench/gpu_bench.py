"""GPU benchmark for a lent device: GeoVLM vs transformers `generate` on a LLaVA-1.5-7B-shaped model.

The model is built from config with random weights of the real shapes (CLIP ViT-L/14 at 336 px, 576 image tokens;
Llama-2-7B / Vicuna language model, vocab 32064) directly on the GPU in bf16; nothing is downloaded. Side by side,
A and B alternated in this process, medians of the rounds:

- time to first token (image pixels in, first token chosen) and decode tokens/s at batch 1 and for 8 requests
  of different prompt lengths: GeoVLM (ONNX encoder on onnxruntime's CUDA provider in fp16, static-cache decoder
  with CUDA-graph steps) vs `LlavaForConditionalGeneration.generate` (its own vision tower, DynamicCache);
- the memory-bandwidth bound of decoding at batch 1 (bytes read per token / the device's best measured read
  rate; the spec sheet's figure printed beside it) and each side's % of it;
- the encoder's ms/image: onnxruntime CUDA fp16 (and TensorRT fp16 where the build has it) vs torch eager bf16.

Run it on the GPU machine in a venv made with `GEOVLM_ORT=gpu bash scripts/setup.sh` (onnxruntime-gpu, never
beside onnxruntime), then:

    .venv/bin/python bench/gpu_bench.py [--rounds 5] [--new-tokens 128] [--batch 8]
    .venv/bin/python bench/gpu_bench.py --smoke   # tiny shapes on the CPU: checks the script, gives no figures

Goals (issue 11): at most 150 ms to first token and at least 60 % of the bandwidth bound at batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Peak memory bandwidth in GB/s from the vendors' spec sheets, for comparison with the measured read rate.
SPEC_BANDWIDTH = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100": 1555, "L4": 300}
VOCAB, IMAGE_ID, PAD_ID, EOS_ID = 32064, 32000, 32001, 2


def llava_config(smoke: bool):
    """LLaVA-1.5-7B's shapes (or tiny ones for --smoke)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if smoke:
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      image_size=56, patch_size=14)
        text = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4)
    else:
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=336, patch_size=14)
        text = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32)
    grid = vision["image_size"] // vision["patch_size"]
    return LlavaConfig(
        vision_config=CLIPVisionConfig(projection_dim=768, hidden_act="quick_gelu", **vision),
        text_config=LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, bos_token_id=1, eos_token_id=EOS_ID,
                                pad_token_id=PAD_ID, **text),
        image_token_id=IMAGE_ID, pad_token_id=PAD_ID, vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_seq_length=grid * grid,
    )


def word_tokenizer():
    """A word-level tokenizer over the model's whole vocabulary (token i is written `w<i>`), so that every id a
    random model draws decodes; `<image>` is the image token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab.update({"<unk>": 0, "<s>": 1, "</s>": EOS_ID, "<image>": IMAGE_ID, "<pad>": PAD_ID})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))  # nosec B106  # a token, not a password
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")  # nosec B106  # tokens
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=["<image>"], **specials)
    fast.padding_side = "left"
    return fast


def build(folder: Path, smoke: bool, device: str, dtype):
    """The random model on `device` in `dtype`, and a checkpoint folder holding its config, its vision weights
    (fp32, for the ONNX export) and the tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    config = llava_config(smoke)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    config.save_pretrained(folder)
    vision = {k: v.float().cpu().contiguous() for k, v in model.state_dict().items()
              if "vision_tower" in k or "multi_modal_projector" in k}
    save_file(vision, str(folder / "vision.safetensors"))
    word_tokenizer().save_pretrained(folder)
    (folder / "geovlm.json").write_text(json.dumps({"family": "llava15", "name": "llava15-7b-shaped-random",
                                                    "random_stand_in": True}))
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def alternate(runs: dict, rounds: int) -> dict:
    """Each callable once as warm-up, then `rounds` rounds alternating the order (A B, B A, ...)."""
    for fn in runs.values():
        fn()
    out = {name: [] for name in runs}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            out[name].append(runs[name]())
    return out


def encoders(folder: Path, model, device: str, smoke: bool):
    """{name: OnnxEncoder or torch module} and the pixel size: onnxruntime CUDA fp16 (TensorRT fp16 where the
    build has it) on a GPU, CPU fp32 in the smoke run; torch eager in the model's dtype."""
    import onnxruntime as ort

    from geovlm.models.checkpoints import load_vision_model
    from geovlm.models.encoder_export import ExportError, export_encoder, vision_encoder
    from geovlm.models.encoder_runtime import OnnxEncoder

    vision = load_vision_model(folder)
    try:
        report = export_encoder(folder, folder / "encoder.onnx", fp16=not smoke, model=vision, check_batches=(1,))
    except ExportError as exc:  # the fp16 parity gate refused it: the fp32 graph then serves, and it is said
        print(f"fp16 export refused ({exc}); onnxruntime runs the fp32 graph")
        report = export_encoder(folder, folder / "encoder.onnx", model=vision, check_batches=(1,))
    available = ort.get_available_providers()
    out = {}
    precision = "fp16" if report.metadata["geovlm.dtype"] == "float16" else "fp32"
    wanted = [("onnxruntime CPU fp32", ["CPUExecutionProvider"])] if smoke else [
        (f"onnxruntime CUDA {precision}", ["CUDAExecutionProvider"]),
        (f"onnxruntime TensorRT {precision}", ["TensorrtExecutionProvider", "CUDAExecutionProvider"]),
    ]
    for name, providers in wanted:
        first = providers[0]
        if first not in available:
            print(f"{name}: not in this onnxruntime build ({', '.join(available)})")
            continue
        encoder = OnnxEncoder(report.path, providers=providers)
        if encoder.provider != first:
            print(f"{name}: fell back to {encoder.provider}")
            continue
        out[name] = encoder
    out["torch eager " + str(next(model.parameters()).dtype).replace("torch.", "")] = vision_encoder(model)
    return out, model.config.vision_config.image_size, max(report.max_abs_diff.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script only")
    args = parser.parse_args()
    import numpy as np
    import torch

    from geovlm.models.language import DecodeSettings, LanguageModel

    if args.smoke:
        device, dtype, name = "cpu", torch.float32, "CPU (smoke run: tiny shapes, the figures mean nothing)"
    elif torch.cuda.is_available():
        device, dtype, name = "cuda", torch.bfloat16, torch.cuda.get_device_name()
    else:
        raise SystemExit("no CUDA device: this benchmark is for a lent GPU (--smoke checks it on the CPU)")
    print(f"# {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build(folder, args.smoke, device, dtype)
        config = model.config
        image_tokens = config.image_seq_length
        lm = LanguageModel(model, word_tokenizer(), device, IMAGE_ID, image_tokens)
        encs, size, diff = encoders(folder, model, device, args.smoke)
        onnx_name = next(n for n in encs if n.startswith("onnxruntime"))
        ours_encoder = encs[onnx_name]
        rng = np.random.default_rng(0)

        def prompts_for(batch):  # BOS, the image, then 48 - 5 * row words: lengths differ row by row
            return [[1] + [IMAGE_ID] * image_tokens + list(rng.integers(3, 32000, 48 - 5 * r)) for r in range(batch)]

        def lm_runs(batch):
            prompts = prompts_for(batch)
            pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            gpu_pixels = torch.from_numpy(pixels).to(device, dtype)
            settings = [DecodeSettings(max_new_tokens=args.new_tokens)] * batch

            def geovlm():
                start = time.perf_counter()
                feats = ours_encoder.run(pixels)
                steps = iter(lm.decoding(prompts, list(feats), settings))
                next(steps)
                first = time.perf_counter()
                n = sum(1 for _ in steps)
                sync(device)
                return first - start, n * batch / (time.perf_counter() - first)

            def transformers_generate():
                times = []
                streamer = type("Clock", (), {"put": lambda self, v: times.append(time.perf_counter()),
                                              "end": lambda self: None})()
                start = time.perf_counter()
                with torch.inference_mode():
                    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=gpu_pixels,
                                         max_new_tokens=args.new_tokens, do_sample=False, streamer=streamer)
                sync(device)
                steps = out.shape[1] - ids.shape[1] - 1
                return times[1] - start, steps * batch / (times[-1] - times[1])

            return {"GeoVLM": geovlm, "transformers generate": transformers_generate}

        lm_rows = {}
        for batch in (1, args.batch):
            got = alternate(lm_runs(batch), args.rounds)
            lm_rows[batch] = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
                              for k, v in got.items()}

        def encoder_run(encoder, batch):
            pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            if hasattr(encoder, "run"):
                return lambda: _timed(lambda: encoder.run(pixels), device) / batch
            tensor = torch.from_numpy(pixels).to(device)

            def eager():
                with torch.inference_mode():
                    return _timed(lambda: encoder(tensor), device) / batch

            return eager

        enc_rows = {b: {k: statistics.median(v) for k, v in alternate(
            {n: encoder_run(e, b) for n, e in encs.items()}, args.rounds).items()} for b in (1, args.batch)}

        text = model.model.language_model
        weights = sum(p.numel() * p.element_size() for n, p in text.named_parameters() if "embed_tokens" not in n)
        weights += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
        tc = config.text_config
        kv = 2 * tc.num_hidden_layers * tc.num_key_value_heads * (tc.hidden_size // tc.num_attention_heads) * 2
        context = image_tokens + 48 + args.new_tokens / 2
        rate = read_rate(int(min(weights, 8e9)), device)
        bound = rate * 1e9 / (weights + kv * context)
        spec = next((v for k, v in SPEC_BANDWIDTH.items() if k in name), None)

    shapes = "tiny smoke-run shapes" if args.smoke else "LLaVA-1.5-7B shapes"
    print(f"{shapes}, random weights, {str(dtype).replace('torch.', '')}; prompt {image_tokens} image + "
          f"43-48 text tokens; {args.new_tokens} greedy new tokens; medians of {args.rounds} alternated rounds; "
          f"ONNX vs torch max abs diff at export {diff:.1e}\n")
    print("| measure | GeoVLM | transformers `generate` | GeoVLM ahead by |\n|---|---|---|---|")
    for batch, rows in lm_rows.items():
        g, t = rows["GeoVLM"], rows["transformers generate"]
        print(f"| time to first token, batch {batch} | {1000 * g[0]:.1f} ms | {1000 * t[0]:.1f} ms | "
              f"{t[0] / g[0]:.2f}x |")
        print(f"| decode tokens/s, batch {batch} | {g[1]:.1f} | {t[1]:.1f} | {g[1] / t[1]:.2f}x |")
    print("\n| memory-bandwidth bound, batch 1 | value |\n|---|---|")
    print(f"| read rate measured (sum over a {min(weights, 8e9) / 1e9:.1f} GB buffer) | {rate:.0f} GB/s"
          f"{f' (spec sheet {spec} GB/s)' if spec else ''} |")
    print(f"| bytes per token: weights + KV cache | {weights / 1e9:.2f} GB + {kv * context / 1e9:.3f} GB |")
    print(f"| bound | {bound:.1f} tokens/s |")
    for side in ("GeoVLM", "transformers generate"):
        print(f"| {side} | {100 * lm_rows[1][side][1] / bound:.0f} % of the bound |")
    print("\n| encoder ms/image | " + " | ".join(f"batch {b}" for b in enc_rows) + " |")
    print("|---|" + "---|" * len(enc_rows))
    for enc_name in encs:
        print(f"| {enc_name} | " + " | ".join(f"{enc_rows[b][enc_name]:.2f}" for b in enc_rows) + " |")
    if device.startswith("cuda"):
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB "
              "(the transformers model, its vision tower included, and GeoVLM's caches)")


def read_rate(nbytes: int, device: str) -> float:
    """GB/s of a sum over a bf16 buffer of `nbytes` on `device`: median of 10 after a warm-up."""
    import torch

    buffer = torch.ones(nbytes // 2, dtype=torch.bfloat16, device=device)
    runs = alternate({"read": lambda: nbytes / _timed(buffer.sum, device) * 1000 / 1e9}, 10)["read"]
    return statistics.median(runs)


def _timed(fn, device: str) -> float:
    """Milliseconds of `fn()`, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return 1000 * (time.perf_counter() - start)


if __name__ == "__main__":
    main()
