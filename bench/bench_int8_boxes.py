"""Whether the int8 encoder moves the boxes of a model that writes boxes: a small language model trained here,
on the shared rasters, to locate a marker, answered through fp32 and int8 features of the same ViT.

`bench_encoder.py` measures the int8 encoder's features and speed, but its language model is random: it writes no
box, and its choices are near-ties everywhere, so "boxes do not move" could not be measured there. A real
checkpoint (GeoChat, LLaVA-1.5) cannot be downloaded here. This script makes the closest stand-in it can:

- a CLIP ViT-B/32 tower at 224 px with random weights (768 wide, 12 layers: the layer shapes of bench_encoder's
  ViT-B/16, 49 image tokens so that training fits on a CPU), frozen, with its random projector;
- a 3-layer 192-wide Llama trained from scratch (AdamW, `--steps`) on tiles of the shared rasters
  (`../shared/data/rasters`: an aerial photo, a Landsat scene, a panchromatic VHR scene, a 16-bit 4-band one) with
  a magenta rectangle pasted at a random place and size, to answer GeoChat's referring question
  ("[refer] Give me the location of <p> the magenta rectangle </p>") in GeoChat's syntax `{<x1><y1><x2><y2>|<90>}`
  (percent of the image, `../shared/reference/answer-formats.md`), on features of the fp32 ONNX export;
- then, on held-out tiles (other places, other markers), the greedy answers of the trained model through the
  served fp32 ONNX encoder and through the gated int8 one (`models/encoder_quantise.py`, as
  `--encoder-precision int8` serves it): boxes parsed by `core.parsing.parse_answer`, the largest corner shift
  in pixels between the two, how many answers are identical, the fp32 boxes' IoU with the pasted marker (that
  the model really locates), and, teacher-forced on the fp32 answers, the tokens int8 changes and the lead in
  logits of fp32's choice over its runner-up.

A trained toy is not a real checkpoint: its features come from a random ViT and its task is one marker. It
shows how int8's feature error (2 % relative, cosine >= 0.999) meets decision margins that training made,
which a random model cannot; the real checkpoints' margins still need a run on their weights.

    python bench/bench_int8_boxes.py [--steps 3000] [--minutes 30] [--train 1200] [--test 60] [--threads N] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_encoder import RASTERS, box_shift, forced_choices  # noqa: E402
from bench_engine import load_text, med  # noqa: E402

QUESTION = "the magenta rectangle"
SOURCES = ["cogeo.tif", "RGB.byte.tif", "sample_geotiff.tif", "RGBA.uint16.tif"]
SIZE = 224


def build_model(folder: Path, smoke: bool):
    """(folder, model) of a llava-hf checkpoint written into `folder` (family geochat): a random CLIP ViT-B/32 at
    224 px, a 3-layer 192-wide Llama and the demo tokenizer (`smoke`: a 2-layer 64-wide tower)."""
    import shutil

    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from geovlm.models.demo_model import no_progress_bars, write_demo_model

    demo = write_demo_model(folder / "tok")
    width, layers = (64, 2) if smoke else (768, 12)
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                              num_attention_heads=width // 64, image_size=SIZE, patch_size=32, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=400, hidden_size=192, intermediate_size=512, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=2, pad_token_id=4)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=3, pad_token_id=4,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=(SIZE // 32) ** 2)
    torch.manual_seed(0)
    out = folder / "int8-boxes-model"
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = 2
    with no_progress_bars():
        model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / name, out / name)
    (out / "geovlm.json").write_text(json.dumps({"family": "geochat", "name": "int8-boxes-toy"}))
    return out, model


def marked_tiles(n: int, seed: int, test: bool):
    """n (HxWx3 uint8 tile, marker box x0,y0,x1,y1 in pixels) pairs: 224 px windows of the shared rasters, a
    magenta rectangle of 24-90 px pasted. Training windows start in the left 60 % of the columns a window can
    start at, `test` windows in the right 20 %."""
    import rasterio

    from geovlm.models.imagery import read_rgb

    rng = random.Random(seed)  # nosec B311  # places of markers, not secrets
    sizes = {}
    for name in SOURCES:
        with rasterio.open(RASTERS / name) as ds:
            sizes[name] = (ds.width, ds.height)
    out = []
    for _ in range(n):
        name = rng.choice(SOURCES)
        w, h = sizes[name]
        lo, hi = (int(0.8 * (w - SIZE)), w - SIZE) if test else (0, int(0.6 * (w - SIZE)))
        col, row = rng.randint(lo, hi), rng.randint(0, h - SIZE)
        tile = read_rgb(RASTERS / name, (col, row, SIZE, SIZE)).copy()
        bw, bh = rng.randint(24, 90), rng.randint(24, 90)
        x0, y0 = rng.randint(0, SIZE - bw), rng.randint(0, SIZE - bh)
        tile[y0:y0 + bh, x0:x0 + bw] = (255, 0, 255)
        out.append((tile, (x0, y0, x0 + bw, y0 + bh)))
    return out


def answer_text(box) -> str:
    """GeoChat's answer for a pixel box of a 224 px tile: corners in percent, rounded, upright (|<90>)."""
    x0, y0, x1, y1 = (round(100 * v / SIZE) for v in box)
    return f"{{<{x0}><{y0}><{x1}><{y1}>|<90>}}"


def train(model, pipe, prompt, feats, boxes, steps: int, batch: int, minutes: float):
    """Train the language side (embeddings, layers, head) on prompt + answer with the image features given;
    the loss over the answer's tokens only. Returns (steps run, first and last 50-step mean loss)."""
    import torch

    tok = pipe.lm.tokenizer
    answers = [tok(answer_text(b), add_special_tokens=False)["input_ids"] + [2] for b in boxes]
    embed = model.get_input_embeddings()
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    for p in model.model.multi_modal_projector.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    prompt_t = torch.tensor(prompt)
    slots = prompt_t == pipe.lm.image_token_id
    rng = random.Random(1)  # nosec B311  # the order of training examples
    losses, start = [], time.monotonic()
    model.train()
    for step in range(steps):
        pick = [rng.randrange(len(answers)) for _ in range(batch)]
        width = max(len(answers[i]) for i in pick)
        ids = torch.full((batch, len(prompt) + width), 4, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for r, i in enumerate(pick):
            ids[r, : len(prompt)] = prompt_t
            ids[r, len(prompt): len(prompt) + len(answers[i])] = torch.tensor(answers[i])
            labels[r, len(prompt) - 1: len(prompt) + len(answers[i]) - 1] = torch.tensor(answers[i])
        rows = embed(ids)
        image = torch.from_numpy(feats[pick])
        rows = torch.cat([rows[:, : int(slots.nonzero()[0])], image, rows[:, int(slots.nonzero()[-1]) + 1:]], 1)
        logits = model.lm_head(model.model.language_model(inputs_embeds=rows).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            print(f"  step {step}: loss {med(losses[-50:]):.3f} ({time.monotonic() - start:.0f} s)", flush=True)
        if time.monotonic() - start > 60 * minutes:
            print(f"  stopped at step {step + 1}: --minutes {minutes} reached", flush=True)
            break
    model.eval()
    return len(losses), sum(losses[:50]) / min(50, len(losses)), sum(losses[-50:]) / min(50, len(losses))


def compare(pipe, pipe_int8, prompt, tiles, tokens: int) -> dict:
    """Greedy answers through fp32 and int8 features on each tile, parsed and compared (see the module doc)."""
    from geovlm.core.parsing import parse_answer
    from geovlm.evaluation.detection import polygon_iou
    from geovlm.models.language import DecodeSettings

    out = {"n": len(tiles), "identical": 0, "parsed": 0, "count_differs": 0, "shifts": [], "ious": [],
           "steps": 0, "same": 0, "flip_leads": [], "leads": [], "samples": []}
    settings = DecodeSettings(max_new_tokens=tokens, stop=tuple(pipe.profile.stop))
    for image, truth in tiles:
        feats = [p.encode([image])[0] for p in (pipe, pipe_int8)]
        ids, parsed = [], []
        for p, f in zip((pipe, pipe_int8), feats):
            decoding = p.lm.decoding([prompt], [f], [settings])
            decoding.run()
            ids.append(decoding.results[0].token_ids)
            parsed.append(parse_answer(decoding.results[0].text, p.profile, image_size=(SIZE, SIZE),
                                       default_label=QUESTION))
            if len(out["samples"]) < 4:
                out["samples"].append(decoding.results[0].text)
        out["identical"] += ids[0] == ids[1]
        if parsed[0].objects:
            out["parsed"] += 1
            x0, y0, x1, y1 = truth
            out["ious"].append(polygon_iou(parsed[0].objects[0].polygon, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]))
        if len(parsed[0].objects) != len(parsed[1].objects):
            out["count_differs"] += 1
        elif parsed[0].objects:
            out["shifts"].append(box_shift(*parsed))
        chosen, leads = forced_choices(pipe, prompt, ids[0], feats[0])
        chosen_int8, _ = forced_choices(pipe_int8, prompt, ids[0], feats[1])
        out["steps"] += len(chosen)
        out["same"] += sum(a == b for a, b in zip(chosen, chosen_int8))
        out["flip_leads"] += [lead for a, b, lead in zip(chosen, chosen_int8, leads) if a != b]
        out["leads"] += leads
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=30.0, help="stop training after this long")
    parser.add_argument("--train", type=int, default=1200, help="training tiles")
    parser.add_argument("--test", type=int, default=60, help="held-out tiles")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and counts: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.train, args.test, args.batch = 3, 8, 2, 4
    import onnxruntime
    import torch

    from geovlm.models.demo_model import no_progress_bars
    from geovlm.models.encoder_quantise import feature_agreement, int8_beside
    from geovlm.models.encoder_runtime import OnnxEncoder
    from geovlm.models.pipeline import VlmPipeline

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU, {args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"{load_text()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, model = build_model(Path(tmp), args.smoke)
        pipe = VlmPipeline.load(model_dir, device="cpu", providers=["CPUExecutionProvider"])
        prompt = pipe.prompt_ids([("user", pipe.profile.task_words["refer"].format(question=QUESTION))])
        start = time.perf_counter()
        training = marked_tiles(args.train, seed=0, test=False)
        feats = pipe.encode([t for t, _ in training])
        print(f"{len(training)} training tiles encoded (fp32 ONNX) in {time.perf_counter() - start:.0f} s", flush=True)
        start = time.perf_counter()
        steps, first, last = train(model, pipe, prompt, feats, [b for _, b in training], args.steps, args.batch,
                                   args.minutes)
        train_s = time.perf_counter() - start
        trained = Path(tmp) / "trained"
        with no_progress_bars():
            model.save_pretrained(trained)
        for name in ("tokenizer.json", "tokenizer_config.json", "geovlm.json"):
            (trained / name).write_bytes((model_dir / name).read_bytes())
        del pipe, model, feats
        pipe = VlmPipeline.load(trained, device="cpu", providers=["CPUExecutionProvider"])
        int8 = OnnxEncoder(int8_beside(pipe.encoder.path), providers=["CPUExecutionProvider"])
        pipe_int8 = VlmPipeline(pipe.checkpoint, pipe.profile, pipe.lm, int8)
        held_out = marked_tiles(args.test, seed=1, test=True)
        pixels = [t for t, _ in held_out]
        agreement = feature_agreement(pipe.encode(pixels), pipe_int8.encode(pixels))
        got = compare(pipe, pipe_int8, prompt, held_out, tokens=24)
    shape = "SMOKE RUN, tiny shapes: no figures" if args.smoke else "Random ViT-B/32 @224 (49 image tokens, frozen)"
    print(f"\n{shape} + a 3-layer 192-wide Llama trained {steps} steps of {args.batch} in {train_s:.0f} s on "
          f"{args.train} marked tiles (answer-token loss {first:.2f} -> {last:.2f}); {got['n']} held-out tiles.\n")
    print("| int8 vs fp32 encoder, held-out tiles | value |\n|---|---|")
    print(f"| features: per-token cosine worst / mean, relative error | {agreement.min_cosine:.4f} / "
          f"{agreement.mean_cosine:.5f}, {agreement.relative_error:.4f} |")
    ious = got["ious"]
    print(f"| fp32 answers with a box / IoU with the marker, median (min) | {got['parsed']} of {got['n']} / "
          f"{med(ious) if ious else 0:.2f} ({min(ious) if ious else 0:.2f}) |")
    print(f"| answers token for token identical | {got['identical']} of {got['n']} |")
    print(f"| answers whose number of boxes differs | {got['count_differs']} |")
    shifts = got["shifts"]
    moved = sum(s > 0 for s in shifts)
    print(f"| boxes that moved / largest corner shift | {moved} of {len(shifts)} / "
          f"{max(shifts) if shifts else 0:.1f} px (1 unit of GeoChat's percent = {SIZE / 100:.2f} px) |")
    flips = got["flip_leads"]
    print(f"| teacher-forced: steps where int8 picks fp32's token | {got['same']} of {got['steps']} |")
    print(f"| fp32's lead over the runner-up, median / smallest / largest where int8 picked another | "
          f"{med(got['leads']):.2f} / {min(got['leads']):.3f} / {max(flips) if flips else 0:.3f} logits |")
    print(f"| (machine: {load_text()}) | |")
    print(f"\nfp32 answers, first tiles: {got['samples'][::2]}\nint8 answers, same tiles: {got['samples'][1::2]}")
    if not math.isfinite(last):
        sys.exit("training diverged")


if __name__ == "__main__":
    main()
