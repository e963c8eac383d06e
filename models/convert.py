"""Convert checkpoints that do not ship as llava-hf folders into that layout (safetensors).

- GeoChat / SkySenseGPT: original LLaVA/GeoChat layout (no CLIP weights) + a local CLIP ViT-L/14-336 folder;
  the CLIP position table is resized bicubically with align_corners=True (GeoChat's own recipe) for 504 px.
- RS-LLaVA: a LoRA (plus its projector) merged onto the Mistral base, + the CLIP folder, at 336 px.
- safetensors: a llava-hf folder with pickled .bin weights, read with torch.load(weights_only=True).

Written keys follow the llava-hf layout: vision_tower.vision_model.*, multi_modal_projector.linear_1/2.*,
language_model.model.*, language_model.lm_head.*.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from ..core.profiles import get_profile
from .checkpoints import META_FILE, from_local_folder
from .encoder_export import CLIP_MEAN, CLIP_STD

SHARD_BYTES = 4 << 30
PICKLED = "pytorch_model*.bin"  # the weights, never training_args.bin or other pickles beside them
PROJECTOR = {"mm_projector.0.": "multi_modal_projector.linear_1.", "mm_projector.2.": "multi_modal_projector.linear_2."}


class ConversionError(ValueError):
    """A source folder that cannot be converted, with the reason."""


def read_tensors(folder: Path, pattern: Optional[str] = None) -> Iterator[Tuple[str, object]]:
    """(name, tensor) of a folder's weights: the files matching `pattern` (default *.safetensors) when they are
    safetensors, else the pickles (`pattern`, or PICKLED) read with weights_only=True. ConversionError when there
    are none or a pickle is refused (`load_pickled_weights`)."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob(pattern or "*.safetensors"))
    if files and files[0].suffix == ".safetensors":
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        return
    files = files or sorted(folder.glob(PICKLED))
    if not files:
        raise ConversionError(f"{folder} has no .safetensors or {PICKLED} weights")
    for file in files:
        yield from load_pickled_weights(file).items()


def load_pickled_weights(file: Path) -> dict:
    """A pickled dict of weights read with torch.load(weights_only=True): plain containers, numbers, strings
    and tensors only. Anything else (a class, a function: code that unpickling would run) is refused with a
    ConversionError naming the file."""
    import zipfile

    import torch

    # mmap keeps a 13 GB checkpoint out of memory; files of the legacy (pre-zip) format cannot be mapped
    mmap = zipfile.is_zipfile(file)
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # UnpicklingError for a refused pickle, RuntimeError for a damaged archive, ...
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ConversionError(f"cannot read {file} as weights (torch.load weights_only=True): {reason}") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{file} holds a {type(state).__name__}, not a dict of weights")
    return state


def _json(path: Path, missing_ok: bool = False) -> dict:
    """The JSON object in `path` (a checkpoint's config); {} for a missing file when `missing_ok`. ConversionError
    in one line for a file that is missing (unless `missing_ok`), not UTF-8, not JSON or not a JSON object."""
    if not path.is_file():
        if missing_ok:
            return {}
        raise ConversionError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a JSON {type(data).__name__}, not the object a config is")
    return data


class ShardWriter:
    """Writes tensors into safetensors shards of at most SHARD_BYTES and the index llava-hf folders use."""

    def __init__(self, out: Path):
        self.out, self.pending, self.size, self.files, self.index = out, {}, 0, [], {}

    def add(self, key: str, tensor) -> None:
        """Queue a torch tensor under `key` (written contiguous); a shard is written once the queued bytes
        reach SHARD_BYTES. ConversionError for a key added twice."""
        if key in self.index or key in self.pending:
            raise ConversionError(f"weight {key} appears twice")
        self.pending[key] = tensor.contiguous()
        self.size += tensor.numel() * tensor.element_size()
        if self.size >= SHARD_BYTES:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f"model-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(self.out / name), metadata={"format": "pt"})
        self.files.append(name)
        self.index.update({k: name for k in self.pending})
        self.pending, self.size = {}, 0

    def close(self) -> None:
        """Write what is queued; a single shard becomes model.safetensors, several get
        model.safetensors.index.json (total_size in bytes, weight_map: key -> shard), as transformers reads them."""
        self._flush()
        if len(self.files) == 1:
            (self.out / self.files[0]).rename(self.out / "model.safetensors")
            return
        total = sum((self.out / f).stat().st_size for f in self.files)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(self.index.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def resize_position_table(weight, grid: int):
    """A ViT position table `[1 + old², hidden]` -> `[1 + grid², hidden]` in its own dtype: the CLS row kept, the
    patch rows resized bicubically (align_corners=True) as a grid, as GeoChat does. ConversionError when the rows
    are not 1 + a square."""
    import torch

    old = int(math.isqrt(weight.shape[0] - 1))
    if old * old != weight.shape[0] - 1:
        raise ConversionError(f"position table of {weight.shape[0]} rows is not 1 + a square")
    patches = weight[1:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=True)
    resized = resized.permute(0, 2, 3, 1).reshape(grid * grid, -1)
    return torch.cat([weight[:1].float(), resized]).to(weight.dtype)


def _clip(clip_dir: Path, image_size: Optional[int]):
    """The CLIP vision config (at `image_size`) and its tensors renamed to llava-hf's vision tower."""
    from transformers import CLIPVisionConfig

    data = _json(clip_dir / "config.json")
    vision = dict(data.get("vision_config", data))
    for key in ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype"):
        vision.pop(key, None)
    config = CLIPVisionConfig(**vision)
    grid_old = config.image_size // config.patch_size
    if image_size:
        config.image_size = image_size
    grid = config.image_size // config.patch_size
    tensors = {}
    for key, tensor in read_tensors(clip_dir):
        if key.startswith(("text_model.", "visual_projection", "text_projection", "logit_scale")):
            continue
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith("vision_model.") else f"vision_model.{key}"
        if name.endswith("embeddings.position_embedding.weight") and grid != grid_old:
            tensor = resize_position_table(tensor, grid)
        tensors[f"vision_tower.{name}"] = tensor
    if not tensors:
        raise ConversionError(f"{clip_dir} holds no CLIP vision weights")
    return config, tensors


def _tokenizer(folder: Path):
    """The source tokenizer with `<image>` and `<pad>` added where missing."""
    from transformers import AutoTokenizer

    try:
        tok = from_local_folder(AutoTokenizer, folder)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot load the tokenizer of {folder}: {exc}") from None
    tok.add_tokens(["<image>"], special_tokens=True)
    if tok.pad_token is None or tok.pad_token == tok.unk_token:
        tok.add_special_tokens({"pad_token": "<pad>"})  # nosec B105  # a token, not a password
    return tok


def _grow_vocab(tensor, rows: int):
    """Append rows (the mean of the existing ones) so new tokens have embeddings and logits."""
    import torch

    if tensor.shape[0] >= rows:
        return tensor
    extra = tensor.float().mean(0, keepdim=True).expand(rows - tensor.shape[0], -1).to(tensor.dtype)
    return torch.cat([tensor, extra])


def _finish(out: Path, writer, config, tok, family: str, name: str, source: str, clip_dir: Path) -> Path:
    from transformers import GenerationConfig

    writer.close()
    config.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(out)
    pre = clip_dir / "preprocessor_config.json"
    pre_data = _json(pre, missing_ok=True)
    size = config.vision_config.image_size
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "image_mean": pre_data.get("image_mean", list(CLIP_MEAN)),
                "image_std": pre_data.get("image_std", list(CLIP_STD)),
                "size": {"shortest_edge": size},
                "crop_size": {"height": size, "width": size},
            },
            indent=2,
        )
    )
    meta = {"family": family, "name": name, "licence": get_profile(family).licence_note, "source": source}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def _llava_config(vision, text, tok, src_config: dict, vocab: int):
    from transformers import LlavaConfig

    text.vocab_size = vocab
    text.pad_token_id = tok.pad_token_id
    grid = vision.image_size // vision.patch_size
    patch_only = src_config.get("mm_vision_select_feature", "patch") == "patch"  # else cls_patch: CLS kept too
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
        vision_feature_layer=int(src_config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default" if patch_only else "full",
        image_seq_length=grid * grid + (0 if patch_only else 1),
        projector_hidden_act="gelu",
    )


def _check_projector(src_config: dict) -> None:
    kind = src_config.get("mm_projector_type", "mlp2x_gelu")
    if kind != "mlp2x_gelu":
        raise ConversionError(f"projector type {kind!r} has no llava-hf equivalent (mlp2x_gelu only)")


def _prepare_out(out) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"output folder {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _lm_key(key: str) -> Optional[str]:
    """Original LLaVA key -> llava-hf key; None for weights the conversion takes elsewhere."""
    for old, new in PROJECTOR.items():
        if key.startswith(f"model.{old}") or key.startswith(f"base_model.model.model.{old}"):
            return new + key.split(old, 1)[1]
    if "vision_tower" in key:
        return None
    if key.startswith("lm_head."):
        return f"language_model.{key}"
    if key.startswith("model."):
        return f"language_model.{key}"
    raise ConversionError(f"unexpected weight {key!r} in the source checkpoint")


def _write_language(writer, tensors: Iterator, vocab: int) -> set:
    written = set()
    for key, tensor in tensors:
        new = _lm_key(key)
        if new is None:
            continue
        if new.endswith(("embed_tokens.weight", "lm_head.weight")):
            tensor = _grow_vocab(tensor, vocab)
        writer.add(new, tensor)
        written.add(new)
    return written


def _vocab_rows(tok) -> int:
    return 64 * math.ceil(len(tok) / 64)


def convert_geochat(src, clip, out, family: str = "geochat", image_size: int = 504) -> Path:
    """GeoChat/SkySenseGPT (original layout) + CLIP -> llava-hf folder at `image_size` px; returns the folder.
    ConversionError for a source that is not a GeoChat/LLaVA model or a file missing or unreadable."""
    from transformers import LlamaConfig

    src, clip = Path(src), Path(clip)
    src_config = _json(src / "config.json")
    if src_config.get("model_type") not in ("geochat", "llava", "llava_llama"):
        raise ConversionError(f"{src} is a {src_config.get('model_type')!r} model, not a GeoChat/LLaVA one")
    _check_projector(src_config)
    out = _prepare_out(out)
    vision, vision_tensors = _clip(clip, image_size)
    tok = _tokenizer(src)
    vocab = max(_vocab_rows(tok), int(src_config.get("vocab_size", 0)))
    known = set(LlamaConfig().to_dict())
    text = LlamaConfig(**{k: v for k, v in src_config.items() if k in known and k not in ("architectures",)})
    writer = ShardWriter(out)
    for key, tensor in vision_tensors.items():
        writer.add(key, tensor)
    written = _write_language(writer, read_tensors(src), vocab)
    if not any(k.startswith("multi_modal_projector.") for k in written):
        raise ConversionError(f"{src} has no mm_projector weights")
    config = _llava_config(vision, text, tok, src_config, vocab)
    return _finish(out, writer, config, tok, get_profile(family).name, src.name, f"geovlm convert of {src.name}", clip)


def _merge_lora(base_key: str, tensor, lora: Dict[str, object], scale: float):
    """W + scale * B @ A for a base weight with a LoRA pair, else W unchanged."""
    stem = base_key[: -len(".weight")] if base_key.endswith(".weight") else None
    a = lora.get(f"base_model.model.{stem}.lora_A.weight") if stem else None
    b = lora.get(f"base_model.model.{stem}.lora_B.weight") if stem else None
    if a is None or b is None:
        return tensor, False
    merged = tensor.float() + scale * (b.float() @ a.float())
    return merged.to(tensor.dtype), True


def convert_rsllava(lora_dir, base, clip, out) -> Path:
    """RS-LLaVA: LoRA merged onto the base (Mistral) + projector + CLIP (336 px) -> llava-hf folder; returns the
    folder. The LoRA scale is alpha / r, or alpha / sqrt(r) with `use_rslora` (as PEFT computes it).
    ConversionError for a file missing or unreadable."""
    from transformers import AutoConfig

    lora_dir, base, clip = Path(lora_dir), Path(base), Path(clip)
    adapter = _json(lora_dir / "adapter_config.json")
    try:
        rank, alpha = int(adapter["r"]), float(adapter["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise ConversionError(f"{lora_dir / 'adapter_config.json'} gives no LoRA rank and alpha as numbers "
                              "(fields \"r\", \"lora_alpha\")") from None
    if rank <= 0:
        raise ConversionError(f"{lora_dir / 'adapter_config.json'}: LoRA rank r={rank}, not a positive number")
    scale = alpha / math.sqrt(rank) if adapter.get("use_rslora") else alpha / rank
    src_config = _json(lora_dir / "config.json", missing_ok=True)
    _check_projector(src_config)
    lora = dict(read_tensors(lora_dir, "adapter_model.*"))
    extra = sorted(lora_dir.glob("non_lora_trainables.*"))
    projector = dict(read_tensors(lora_dir, extra[0].name)) if extra else {}
    out = _prepare_out(out)
    vision, vision_tensors = _clip(clip, None)
    tok = _tokenizer(lora_dir if any((lora_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")) else base)
    try:
        text = from_local_folder(AutoConfig, base)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read the base config of {base}: {exc}") from None
    vocab = max(_vocab_rows(tok), text.vocab_size)
    writer = ShardWriter(out)
    for key, tensor in vision_tensors.items():
        writer.add(key, tensor)
    merged = 0

    def base_tensors():
        nonlocal merged
        for key, tensor in read_tensors(base):
            tensor, done = _merge_lora(key, tensor, lora, scale)
            merged += done
            yield key, tensor

    _write_language(writer, base_tensors(), vocab)
    n_pairs = sum(1 for k in lora if k.endswith("lora_A.weight"))
    if merged != n_pairs:
        raise ConversionError(f"merged {merged} of {n_pairs} LoRA pairs: the LoRA does not match the base")
    proj = {k: v for k, v in {**lora, **projector}.items() if "mm_projector" in k}
    if not proj:
        raise ConversionError(f"{lora_dir} has no mm_projector weights (non_lora_trainables)")
    _write_language(writer, proj.items(), vocab)
    config = _llava_config(vision, text, tok, src_config, vocab)
    return _finish(out, writer, config, tok, "rsllava", lora_dir.name, f"geovlm convert of {lora_dir.name}", clip)


def convert_safetensors(src, out) -> Path:
    """A llava-hf folder with pickled weights -> the same folder with safetensors (weights_only loading); returns
    the new folder. ConversionError when `src` has no pickled weights or one is refused."""
    src = Path(src)
    if not list(src.glob(PICKLED)):
        raise ConversionError(f"{src} has no {PICKLED} weights to convert")
    out = _prepare_out(out)
    writer = ShardWriter(out)
    for key, tensor in read_tensors(src, PICKLED):
        writer.add(key, tensor)
    writer.close()
    for file in src.iterdir():
        if file.is_file() and file.suffix not in (".bin", ".pt") and not file.name.endswith(".bin.index.json"):
            shutil.copy2(file, out / file.name)
    return out
