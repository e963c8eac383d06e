"""`geovlm convert minigptv2`: a MiniGPT-v2-architecture checkpoint (MiniGPT-v2, SkyEyeGPT, RS fine-tunes) + the
EVA ViT-g weights + the LLaMA-2-chat base -> one folder the engine loads with no remote code (models/minigptv2.py).

Inputs, as the original code reads them (`minigpt_v2.py`, `eva_vit.py`, `base_model.py`):
- CKPT.pth: the trained parameters only, `{"model": state_dict, ...}`: `llama_proj.*` and the LoRA pairs
  `llama_model.base_model.model.<module>.lora_A/lora_B[.default].weight` (q_proj and v_proj, r 64, alpha 16 in
  MiniGPT-v2's configs; r is read from the tensors, alpha from the checkpoint's config when it has one).
- EVA_VIT_G: the EVA-CLIP ViT-g state dict (`eva_vit_g.pth`: `cls_token`, `pos_embed`, `patch_embed.proj.*`,
  `blocks.N.*`); all blocks but the last are kept and the position table is resized to the input grid.
- LLAMA2_CHAT_DIR: a Hugging Face LLaMA-2-chat folder (safetensors, or pickles read weights-only).

Every pickle is read with torch.load(weights_only=True); one holding anything but weights is refused.

Written: the LLaMA folder with the LoRA merged (W + alpha/r * B @ A, in float32, stored in W's dtype) as
safetensors, `vision.safetensors` (`visual_encoder.*`, `ln_vision.*`, `llama_proj.*`, the original names),
`vision_config.json`, and geovlm.json recording each input and its licence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..core.profiles import get_profile
from .checkpoints import META_FILE, from_local_folder
from .convert import (
    ConversionError,
    ShardWriter,
    _prepare_out,
    load_pickled_weights,
    read_tensors,
)
from .minigptv2 import VisionConfig

LORA = re.compile(r"^(?:llama_model\.)?base_model\.model\.(?P<stem>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")
BASE = re.compile(r"^llama_model\.(?:base_model\.model\.)?(?P<key>.+)$")
EVA_PREFIXES = ("visual_encoder.", "visual.", "module.")
EVA_LICENCE = "EVA-CLIP ViT-g (BAAI, via BLIP-2/LAVIS): MIT licence"
LLAMA_LICENCE = "LLaMA 2: Llama 2 Community Licence Agreement (Meta)"
DEFAULT_LORA_ALPHA = 16.0  # minigpt_v2.yaml / minigptv2_eval.yaml


def _weights_file(file: Path) -> dict:
    """A file's tensors: safetensors, else a pickle read weights-only."""
    file = Path(file)
    if not file.is_file():
        raise ConversionError(f"{file} is not a file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return load_pickled_weights(file)


def _trained(ckpt: Path) -> Tuple[dict, dict, dict, Optional[float]]:
    """(llama_proj + ln_vision + visual_encoder tensors, LoRA pairs by module, replaced base tensors, LoRA alpha of
    the checkpoint's config or None) of a MiniGPT-v2 training checkpoint."""
    import torch

    data = _weights_file(ckpt)
    state = data.get("model", data) if isinstance(data.get("model"), dict) else data
    alpha = None
    config = data.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        alpha = config["model"].get("lora_alpha")
    vision, lora, base = {}, {}, {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(f"{ckpt}: {key!r} is a {type(tensor).__name__}, not a tensor")
        if key.startswith(("llama_proj.", "ln_vision.", "visual_encoder.")):
            vision[key] = tensor
        elif match := LORA.match(key):
            lora.setdefault(match["stem"], {})[match["ab"]] = tensor
        elif match := BASE.match(key):
            base[match["key"]] = tensor  # a base weight trained in full (say, the embeddings)
        else:
            raise ConversionError(f"{ckpt}: unexpected weight {key!r} for a MiniGPT-v2 checkpoint")
    if "llama_proj.weight" not in vision:
        raise ConversionError(f"{ckpt} has no llama_proj weights: it is not a MiniGPT-v2 checkpoint")
    broken = sorted(stem for stem, pair in lora.items() if set(pair) != {"A", "B"})
    if broken:
        raise ConversionError(f"{ckpt}: LoRA pairs without their other half: {', '.join(broken[:3])}")
    return vision, lora, base, (float(alpha) if alpha is not None else None)


def _eva(eva: Path, image_size: int, heads: Optional[int]):
    """The EVA ViT tensors renamed to `visual_encoder.*`, the last block dropped, the position table resized to
    the grid of `image_size` (eva_vit.interpolate_pos_embed: bicubic, align_corners=False, in float32); and the
    sizes read from them."""
    import torch

    state = {}
    for key, tensor in _weights_file(eva).items():
        for prefix in EVA_PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = tensor
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
              "blocks.0.mlp.fc1.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise ConversionError(f"{eva} is not an EVA ViT state dict (no {', '.join(missing)})")
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    depth = blocks - 1  # create_eva_vit_g builds 39 of EVA-g's 40 blocks; load_state_dict(strict=False) skips one
    if depth < 1:
        raise ConversionError(f"{eva} has {blocks} block(s); the conversion keeps all but the last")
    hidden = int(state["pos_embed"].shape[-1])
    if heads is None:
        if hidden % 88:
            raise ConversionError(f"{eva}: width {hidden} is not EVA-g's (heads of 88); give --vision-heads")
        heads = hidden // 88
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    if image_size % patch:
        raise ConversionError(f"image size {image_size} is not a multiple of the EVA patch size {patch}")
    grid = image_size // patch
    pos = state["pos_embed"].float()
    old = int(round((pos.shape[-2] - 1) ** 0.5))
    if old != grid:
        table = pos[0]
        patches = table[1:].reshape(1, old, old, hidden).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        pos = torch.cat([table[:1], resized.permute(0, 2, 3, 1).reshape(grid * grid, hidden)])[None]
    out = {"visual_encoder.pos_embed": pos}
    for key, tensor in state.items():
        if key == "pos_embed":
            continue
        if key.startswith("blocks.") and int(key.split(".")[1]) >= depth:
            continue
        if key.startswith(("cls_token", "patch_embed.", "blocks.")):
            out[f"visual_encoder.{key}"] = tensor
    sizes = {
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": heads,
        "patch_size": patch,
        "mlp_hidden": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
    }
    return out, sizes


def _licence_file(folder: Path) -> Optional[str]:
    for name in ("LICENSE.txt", "LICENSE", "LICENSE.md", "USE_POLICY.md"):
        if (folder / name).is_file():
            return name
    return None


def convert_minigptv2(
    ckpt,
    eva,
    llama,
    out,
    family: str = "minigptv2",
    image_size: int = 448,
    lora_alpha: Optional[float] = None,
    vision_heads: Optional[int] = None,
    name: Optional[str] = None,
    licence: Optional[str] = None,
) -> Path:
    """Write the engine's MiniGPT-v2 folder at `out` (must be empty or absent); ConversionError on bad input.
    `lora_alpha` overrides the checkpoint's (else 16, MiniGPT-v2's); `vision_heads` is needed only for an EVA
    whose width is not a multiple of 88; `licence` is the checkpoint's licence note (else the family's)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    ckpt, eva, llama = Path(ckpt), Path(eva), Path(llama)
    family = get_profile(family).name
    if family not in ("minigptv2", "skyeyegpt"):
        raise ConversionError(f"family {family!r} is not a MiniGPT-v2 family (minigptv2, skyeyegpt)")
    if not llama.is_dir():
        raise ConversionError(f"LLaMA folder {llama} does not exist")
    trained, lora, base_replaced, ckpt_alpha = _trained(ckpt)
    try:
        text = from_local_folder(AutoConfig, llama)
        tok = from_local_folder(AutoTokenizer, llama)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read the LLaMA config/tokenizer of {llama}: {exc}") from None
    if text.model_type != "llama":
        raise ConversionError(f"{llama} holds a {text.model_type!r} model, not LLaMA")
    if tok.unk_token_id is None:
        raise ConversionError(f"the tokenizer of {llama} has no <unk> token to mark the image positions")
    vision_state, sizes = _eva(eva, image_size, vision_heads)
    config = VisionConfig(image_size=image_size, lm_hidden=int(text.hidden_size),
                          image_token_id=int(tok.unk_token_id), **sizes)
    if (config.grid * config.grid) % config.merge_tokens:
        raise ConversionError(f"{config.grid}x{config.grid} patches do not split into groups of {config.merge_tokens}")
    proj = trained["llama_proj.weight"]
    if tuple(proj.shape) != (config.lm_hidden, config.hidden_size * config.merge_tokens):
        raise ConversionError(
            f"llama_proj of {ckpt} is {tuple(proj.shape)}; EVA width {config.hidden_size} x {config.merge_tokens} "
            f"-> LLaMA width {config.lm_hidden} needs {(config.lm_hidden, config.hidden_size * config.merge_tokens)}"
        )
    vision_state.update({k: v for k, v in trained.items() if k.startswith("visual_encoder.")})
    vision_state["ln_vision.weight"] = trained.get("ln_vision.weight", torch.ones(config.hidden_size))
    vision_state["ln_vision.bias"] = trained.get("ln_vision.bias", torch.zeros(config.hidden_size))
    vision_state["llama_proj.weight"] = proj
    vision_state["llama_proj.bias"] = trained["llama_proj.bias"]
    alpha = next(a for a in (lora_alpha, ckpt_alpha, DEFAULT_LORA_ALPHA) if a is not None)

    out = _prepare_out(out)
    writer, merged = ShardWriter(out), set()
    for key, tensor in read_tensors(llama):
        tensor = base_replaced.pop(key, tensor)
        stem = key.removesuffix(".weight")
        if stem in lora:
            a, b = lora[stem]["A"].float(), lora[stem]["B"].float()
            tensor = (tensor.float() + (alpha / a.shape[0]) * (b @ a)).to(tensor.dtype)
            merged.add(stem)
        writer.add(key, tensor)
    unmatched = sorted(set(lora) - merged) + sorted(base_replaced)
    if unmatched:
        raise ConversionError(f"{ckpt} has weights for modules {llama} lacks: {', '.join(unmatched[:3])}")
    writer.close()
    vision_state = {k: v.contiguous() for k, v in vision_state.items()}
    save_file(vision_state, str(out / config.weights), metadata={"format": "pt"})
    config.write(out)
    text.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(out)
    ckpt_licence = licence or get_profile(family).licence_note
    llama_file = _licence_file(llama)
    sources = [
        {"input": "checkpoint", "file": ckpt.name, "licence": ckpt_licence,
         "lora_pairs": len(lora), "lora_alpha": float(alpha)},
        {"input": "eva_vit_g", "file": eva.name, "licence": EVA_LICENCE},
        {"input": "llama", "file": llama.name,
         "licence": LLAMA_LICENCE + (f" (its {llama_file})" if llama_file else "")},
    ]
    meta = {
        "architecture": "minigptv2",
        "family": family,
        "name": name or ckpt.stem,
        "licence": "; ".join(f"{s['input']}: {s['licence']}" for s in sources),
        "sources": sources,
        "source": f"geovlm convert minigptv2 of {ckpt.name} + {eva.name} + {llama.name}",
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def licences(out) -> Dict[str, str]:
    """input -> licence of a converted folder, as its geovlm.json records them."""
    meta = json.loads((Path(out) / META_FILE).read_text())
    return {s["input"]: s["licence"] for s in meta.get("sources", [])}
