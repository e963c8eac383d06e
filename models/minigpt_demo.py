"""Tiny, seeded, randomly initialised MiniGPT-v2-architecture inputs in the original layouts (a training checkpoint
with llama_proj and LoRA pairs, an EVA ViT state dict, a LLaMA folder) and the engine folder converted from them:
the stand-in of this architecture for demos and tests, as models/demo_model.py is for LLaVA.

Reduced sizes: EVA width 176 (two heads of 88, as EVA-g's), 3 blocks (2 kept), 56 px patches on 448 px (8x8
patches from a 4x4 position table: the conversion's resize runs), 16 image tokens; LLaMA width 64, 2 layers, a
byte-fallback BPE tokenizer trained here (so `<unk>`, the image marker, is never produced from text) whose tokens
all decode to printable ASCII (`byte_fallback_tokenizer`).
Its weights are random: whatever it writes is noise (geovlm.json carries `random_stand_in: true`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict

from .demo_model import _CORPUS

DEMO_NAME = "geovlm-minigptv2-demo-random"
EVA_WIDTH, EVA_HEADS, EVA_BLOCKS, EVA_PATCH, EVA_MLP, EVA_PRETRAIN_SIZE = 176, 2, 3, 56, 768, 224
LM_WIDTH, LM_LAYERS, LORA_RANK, LORA_ALPHA = 64, 2, 4, 8.0
PRINTABLE_BYTES = range(0x20, 0x7F)  # printable ASCII: the bytes the demo tokenizer has byte tokens for
CORPUS = _CORPUS + [
    "[INST] <Img></Img> [grounding] describe this image in detail [/INST]",
    "<p>a white plane</p> {<49><48><57><56>}<delim>{<35><54><43><62>} [caption] [vqa] [refer] [identify] [detection]",
]
SPECIAL = ["<unk>", "<s>", "</s>"]


def byte_fallback_tokenizer(corpus=CORPUS, vocab_size: int = 600):
    """A LLaMA-style BPE tokenizer: `▁` word marks, `<s>` prepended, and byte tokens `<0xNN>` for any character
    the merges do not cover (sentencepiece's byte fallback, as LLaMA-2's tokenizer has).

    LLaMA-2 has all 256 byte tokens; this one has the printable ASCII ones only (`PRINTABLE_BYTES`), and its
    normalizer writes every whitespace character as a space and every other character outside printable ASCII as
    '?'. A trained model rarely writes a byte token, but the random stand-in writes any token as often as the
    next: with all 256 (then 43 % of its vocabulary) its noise held NULs, escapes and broken UTF-8, which break
    terminals and GeoPackage fields. Now every token decodes to printable ASCII, and text still never becomes
    `<unk>` (the image marker): whatever the normalizer leaves has a token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s"), " "),
                                       normalizers.Replace(Regex(r"[^\x20-\x7E]"), "?")])
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))  # nosec B106  # a token, not a password
    trainer_tok.normalizer = normalizer
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    trainer_tok.train_from_iterator(corpus, trainer=trainer)
    learnt = json.loads(trainer_tok.to_str())["model"]
    vocab = {name: i for i, name in enumerate(SPECIAL + [f"<0x{b:02X}>" for b in PRINTABLE_BYTES])}
    for token, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))  # nosec B106
    tok.add_special_tokens(SPECIAL)
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence(  # LLaMA-2's tokenizer.json decoder
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def _llama_folder(folder: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = byte_fallback_tokenizer()
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=LM_WIDTH,
        intermediate_size=2 * LM_WIDTH,
        num_hidden_layers=LM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,  # peaked logits: greedy tokens depend on the image and rarely tie
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = 2
    model.save_pretrained(folder, safe_serialization=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"  # nosec B106  # tokens
    )
    fast.save_pretrained(folder)
    (folder / "LICENSE.txt").write_text("Random weights generated locally by GeoVLM; no licence applies.\n")


def write_minigpt_sources(folder, seed: int = 0) -> Dict[str, Path]:
    """Write the three inputs of `geovlm convert minigptv2` into `folder`: {"ckpt", "eva", "llama"} -> path.
    The checkpoint and the EVA file are pickles (torch.save) of plain dicts of tensors, as the originals are."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=gen) * scale

    grid = EVA_PRETRAIN_SIZE // EVA_PATCH
    eva = {
        "cls_token": rand(1, 1, EVA_WIDTH, scale=0.5),
        "pos_embed": rand(1, grid * grid + 1, EVA_WIDTH, scale=0.5),
        "patch_embed.proj.weight": rand(EVA_WIDTH, 3, EVA_PATCH, EVA_PATCH, scale=0.02),
        "patch_embed.proj.bias": rand(EVA_WIDTH),
    }
    for i in range(EVA_BLOCKS):
        p = f"blocks.{i}."
        eva.update({
            p + "norm1.weight": 1 + rand(EVA_WIDTH), p + "norm1.bias": rand(EVA_WIDTH),
            p + "attn.qkv.weight": rand(3 * EVA_WIDTH, EVA_WIDTH, scale=0.1),
            p + "attn.q_bias": rand(EVA_WIDTH), p + "attn.v_bias": rand(EVA_WIDTH),
            p + "attn.proj.weight": rand(EVA_WIDTH, EVA_WIDTH, scale=0.1), p + "attn.proj.bias": rand(EVA_WIDTH),
            p + "norm2.weight": 1 + rand(EVA_WIDTH), p + "norm2.bias": rand(EVA_WIDTH),
            p + "mlp.fc1.weight": rand(EVA_MLP, EVA_WIDTH, scale=0.1), p + "mlp.fc1.bias": rand(EVA_MLP),
            p + "mlp.fc2.weight": rand(EVA_WIDTH, EVA_MLP, scale=0.05), p + "mlp.fc2.bias": rand(EVA_WIDTH),
        })
    paths = {"ckpt": folder / "minigptv2_checkpoint.pth", "eva": folder / "eva_vit_g.pth", "llama": folder / "llama"}
    torch.save(eva, paths["eva"])
    paths["llama"].mkdir(exist_ok=True)
    _llama_folder(paths["llama"], seed)
    model = {"llama_proj.weight": rand(LM_WIDTH, 4 * EVA_WIDTH, scale=0.3), "llama_proj.bias": rand(LM_WIDTH)}
    for i in range(LM_LAYERS):
        for proj in ("q_proj", "v_proj"):
            # both spellings of PEFT's keys: `lora_A.weight` (peft 0.2) and `lora_A.default.weight` (later)
            tag = ".default" if i % 2 else ""
            stem = f"llama_model.base_model.model.model.layers.{i}.self_attn.{proj}"
            model[f"{stem}.lora_A{tag}.weight"] = rand(LORA_RANK, LM_WIDTH, scale=0.3)
            model[f"{stem}.lora_B{tag}.weight"] = rand(LM_WIDTH, LORA_RANK, scale=0.3)
    torch.save({"model": model, "config": {"model": {"lora_r": LORA_RANK, "lora_alpha": LORA_ALPHA}}, "epoch": 1},
               paths["ckpt"])
    return paths


def write_minigpt_demo(out_dir, seed: int = 0, family: str = "minigptv2") -> Path:
    """Write the tiny random MiniGPT-v2 engine folder into `out_dir`: inputs built in a scratch folder, then
    converted by `convert_minigptv2`, then marked as a random stand-in; no progress bars
    (`demo_model.no_progress_bars`)."""
    from .convert_minigptv2 import convert_minigptv2
    from .demo_model import no_progress_bars

    scratch = Path(tempfile.mkdtemp(prefix="geovlm-minigpt-src-"))
    try:
        with no_progress_bars():
            paths = write_minigpt_sources(scratch, seed)
            out = convert_minigptv2(paths["ckpt"], paths["eva"], paths["llama"], out_dir, family=family,
                                    name=DEMO_NAME, licence=f"none: random weights generated locally, seed {seed}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta_file = out / "geovlm.json"
    meta = json.loads(meta_file.read_text())
    meta.update(random_stand_in=True, seed=seed, licence=f"none: random weights generated locally, seed {seed}")
    meta_file.write_text(json.dumps(meta, indent=2))
    return out
