"""Checkpoint folders: read once into a `CheckpointInfo` (architecture, family, sizes, hashes), which every
later step takes instead of the folder. Safetensors only, never remote code, never the hub.

Two architectures are served: llava-hf folders (`LlavaForConditionalGeneration`: LLaVA-1.5, GeoChat,
SkySenseGPT, RS-LLaVA) and MiniGPT-v2 folders written by `geovlm convert minigptv2` (`models/minigptv2.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional, Tuple

from ..core.profiles import get_profile
from .file_hashes import cached_value

ARCHITECTURES = {
    "llava": ("llava15", "geochat", "skysensegpt", "rsllava"),
    "minigptv2": ("minigptv2", "skyeyegpt"),
}
META_FILE = "geovlm.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
MINIGPT_VISION_CONFIG = "vision_config.json"  # beside a MiniGPT-v2 folder's LLaMA config.json


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded, with what to do about it."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint folder, read once without loading any weights; passed on to every later step.

    `input_size` is the side in pixels of the square encoder input, `image_tokens` the number of positions the
    image fills in the prompt, `hidden_size` the language model's width (the encoder's output width),
    `image_token_id` the prompt id those positions carry before the features replace them. `vision_file` names
    the one safetensors file holding the vision side (MiniGPT-v2), None where the vision tensors sit among the
    others (llava-hf). `sources` lists what a conversion was made from, each with its licence. `context_length`
    is the longest sequence in tokens (prompt, image tokens included, plus new tokens) the language model was
    built for: its config's `max_position_embeddings`, None where config.json does not say.
    """

    path: Path
    architecture: str  # a key of ARCHITECTURES
    family: str
    name: str
    licence: str
    random_stand_in: bool
    config: dict  # config.json as read
    input_size: int
    image_tokens: int
    hidden_size: int
    image_token_id: int
    vision_file: Optional[str] = None
    vision_config: Optional[dict] = None  # MiniGPT-v2's vision_config.json
    sources: Tuple[dict, ...] = ()
    context_length: Optional[int] = None

    @cached_property
    def encoder_hash(self) -> str:
        """sha256 of the vision weights as stored (see `encoder_weights_hash`), computed once per object."""
        return encoder_weights_hash(self.path, self.vision_file)

    def describe(self) -> dict:
        """What a server reports about the checkpoint (`/v1/models`)."""
        return {
            "model": self.name,
            "architecture": self.architecture,
            "family": self.family,
            "input_size": self.input_size,
            "fit": get_profile(self.family).fit,
            "image_tokens": self.image_tokens,
            "hidden_size": self.hidden_size,
            "context_length": self.context_length,
            "licence": self.licence,
            "sources": [dict(s) for s in self.sources],
            "random_stand_in": self.random_stand_in,
        }


def _family_of(path: Path, meta: dict, family: Optional[str], architecture: str) -> str:
    served = ARCHITECTURES[architecture]
    name = family or meta.get("family")
    if not name:
        raise CheckpointError(
            f"{path} does not say which model family it is: pass --family "
            f'({", ".join(served)}) or write {{"family": ...}} into {META_FILE}'
        )
    try:
        key = get_profile(name).name
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if key not in served:
        engine = "LLaVA" if architecture == "llava" else "MiniGPT-v2"
        raise CheckpointError(f"family {key!r} is not served by the {engine} engine; it serves {', '.join(served)}")
    return key


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def _context_length(text_config: dict) -> Optional[int]:
    """`max_position_embeddings` of a language model's config (a dict from config.json) as a positive int, else
    None (not given, or not a positive whole number)."""
    value = text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _check_weights_and_tokenizer(path: Path) -> None:
    if not list(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickled:
            raise CheckpointError(
                f"{path} has only pickled weights ({', '.join(pickled[:3])}); GeoVLM loads safetensors only. "
                "Convert them with `geovlm convert safetensors --src DIR --out OUT` (reads with "
                "torch.load(weights_only=True), writes .safetensors)"
            )
        raise CheckpointError(f"{path} has no .safetensors weights")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); copy the base model's")


def inspect_checkpoint(model_dir, family: Optional[str] = None) -> CheckpointInfo:
    """Read a checkpoint folder once into a CheckpointInfo (no weights loaded); CheckpointError with what to do
    when it cannot be served. `family` overrides the one its geovlm.json names."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"model folder {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: it is not a Hugging Face checkpoint folder")
    config = _read_json(config_file)
    model_type = config.get("model_type")
    if model_type == "llama" and (path / MINIGPT_VISION_CONFIG).is_file():
        return _inspect_minigpt(path, config, family)
    original = model_type in ("geochat", "llava_llama", "llava_mistral") or (
        model_type == "llava" and "mm_projector_type" in config
    )
    if original:
        raise CheckpointError(
            f"{path} is in the original LLaVA/GeoChat layout (model_type {model_type!r}); convert it first: "
            "geovlm convert geochat --src DIR --clip CLIP_DIR --out OUT"
        )
    if model_type != "llava":
        raise CheckpointError(
            f"{path} holds a {model_type!r} model; the engine loads llava-hf checkpoints (model_type 'llava') and "
            "MiniGPT-v2 folders written by `geovlm convert minigptv2`"
        )
    _check_weights_and_tokenizer(path)
    meta = _read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
    key = _family_of(path, meta, family, "llava")
    vision, text = config.get("vision_config", {}), config.get("text_config", {})
    try:
        size, patch = int(vision["image_size"]), int(vision["patch_size"])
        tokens = int(config.get("image_seq_length") or (size // patch) ** 2)
        hidden, image_id = int(text["hidden_size"]), int(config.get("image_token_id", config.get("image_token_index")))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{config_file} lacks the vision/text sizes of a llava-hf config") from None
    return CheckpointInfo(
        path=path,
        architecture="llava",
        family=key,
        **_described(path, meta, key),
        config=config,
        input_size=size,
        image_tokens=tokens,
        hidden_size=hidden,
        image_token_id=image_id,
        context_length=_context_length(text),
    )


def _described(path: Path, meta: dict, family: str) -> dict:
    """The CheckpointInfo fields a folder's geovlm.json describes, for every architecture: its name (default:
    the folder's), licence note (default: the family's), whether it is a random stand-in, and its sources."""
    return {
        "name": meta.get("name", path.name),
        "licence": meta.get("licence", get_profile(family).licence_note),
        "random_stand_in": bool(meta.get("random_stand_in", False)),
        "sources": tuple(meta.get("sources", ())),
    }


def _inspect_minigpt(path: Path, config: dict, family: Optional[str]) -> CheckpointInfo:
    """A MiniGPT-v2 folder: a LLaMA folder plus vision_config.json and the vision safetensors it names."""
    vision = _read_json(path / MINIGPT_VISION_CONFIG)
    _check_weights_and_tokenizer(path)
    vision_file = vision.get("weights", "vision.safetensors")
    if not (path / vision_file).is_file():
        raise CheckpointError(f"{path} has no {vision_file} (the EVA ViT-g and projection weights)")
    meta = _read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
    key = _family_of(path, meta, family, "minigptv2")
    try:
        size, patch, merge = int(vision["image_size"]), int(vision["patch_size"]), int(vision["merge_tokens"])
        tokens = (size // patch) ** 2 // merge
        image_id = int(vision["image_token_id"])
        hidden = int(config["hidden_size"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path / MINIGPT_VISION_CONFIG} or config.json lacks MiniGPT-v2 sizes") from None
    return CheckpointInfo(
        path=path,
        architecture="minigptv2",
        family=key,
        **_described(path, meta, key),
        config=config,
        input_size=size,
        image_tokens=tokens,
        hidden_size=hidden,
        image_token_id=image_id,
        vision_file=vision_file,
        vision_config=vision,
        context_length=_context_length(config),
    )


def as_checkpoint(checkpoint, family: Optional[str] = None) -> CheckpointInfo:
    """`checkpoint` itself when it is a CheckpointInfo (read already), else the folder inspected once."""
    if isinstance(checkpoint, CheckpointInfo):
        if family and get_profile(family).name != checkpoint.family:
            return inspect_checkpoint(checkpoint.path, family)
        return checkpoint
    return inspect_checkpoint(checkpoint, family)


def encoder_weights_hash(model_dir, vision_file: Optional[str] = None) -> str:
    """sha256 over the vision tensors as stored (names, dtypes, shapes, raw bytes: any dtype, bfloat16 included):
    every tensor of `vision_file` when given (MiniGPT-v2), else the vision-tower and projector tensors of all the
    folder's safetensors files (llava-hf); computed once per version of the weight files
    (file_hashes.cached_value)."""
    files = [Path(model_dir) / vision_file] if vision_file else sorted(Path(model_dir).glob("*.safetensors"))
    name = "encoder_weights" if vision_file is None else f"encoder_weights:{vision_file}"
    if vision_file is None:
        return cached_value(name, files, lambda: _encoder_weights_sha256(files), model_dir)
    return cached_value(name, files, lambda: _encoder_weights_sha256(files, every_key=True), model_dir)


def _encoder_weights_sha256(files, every_key: bool = False) -> str:
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys = [k for k in f.keys() if every_key or "vision_tower" in k or "multi_modal_projector" in k]
            for key in sorted(keys):
                tensor = f.get_slice(key)
                digest.update(f"{key}:{tensor.get_dtype()}:{tensor.get_shape()}".encode())
                digest.update(f.get_tensor(key).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def from_local_folder(cls, folder, **kwargs):
    """`cls.from_pretrained` on a local folder only: never the hub, never remote code.

    Every load of GeoVLM goes through here. The folder must exist (CheckpointError otherwise); `local_files_only`
    and HF_HUB_OFFLINE stop any download, so there is no hub revision to pin.
    """
    path = Path(folder).resolve()
    if not path.is_dir():
        raise CheckpointError(f"not a folder: {path}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs.update(local_files_only=True, trust_remote_code=False)
    return cls.from_pretrained(str(path), **kwargs)  # nosec B615  # a local folder, downloads are switched off


def load_tokenizer(model_dir):
    """The checkpoint's tokenizer (local files, no remote code), padding on the left for batches."""
    from transformers import AutoTokenizer

    tok = from_local_folder(AutoTokenizer, model_dir)
    tok.padding_side = "left"
    return tok


def load_language(checkpoint: CheckpointInfo, dtype=None, device: str = "cpu"):
    """The causal language model of a checkpoint in eval mode on `device`, without vision weights (the ONNX
    encoder computes the image features): a llava-hf folder's LlavaForConditionalGeneration with its vision tower
    and projector dropped, a MiniGPT-v2 folder's LlamaForCausalLM."""
    if checkpoint.architecture == "minigptv2":
        from .minigptv2 import load_language_model

        return load_language_model(checkpoint.path, dtype, device)
    return load_model(checkpoint.path, dtype, device, language_only=True)


def load_model(model_dir, dtype=None, device: str = "cpu", language_only: bool = False):
    """The LlavaForConditionalGeneration of a checked folder, from safetensors, in eval mode on `device`.
    `language_only`: the vision tower and projector are dropped (None) before the move to `device`, for a
    pipeline whose ONNX encoder computes the image features; the model then takes `inputs_embeds` only."""
    import torch
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = from_local_folder(LlavaForConditionalGeneration, model_dir, dtype=dtype or torch.float32,
                              use_safetensors=True)
    if language_only:
        model.model.vision_tower = None
        model.model.multi_modal_projector = None
    return model.to(device).eval()


def load_vision_model(model_dir):
    """The LlavaForConditionalGeneration of a checked folder with only its vision tower and projector loaded, in
    fp32 on the CPU; the language model stays on the meta device and takes no memory. Enough for
    `get_image_features` and the encoder export. CheckpointError when the folder is missing or the vision tower's
    or projector's weights do not fit its config."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = from_local_folder(AutoConfig, model_dir)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    parts = {"vision_tower": AutoModel.from_config(config.vision_config),
             "multi_modal_projector": LlavaMultiModalProjector(config)}
    states = {name: {} for name in parts}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                for name, state in states.items():
                    if f"{name}." in key and not key.endswith("position_ids"):
                        # llava-hf folders store vision_tower.X or vision_tower.vision_model.X, with or without model.
                        local = key.split(f"{name}.", 1)[1].removeprefix("vision_model.")
                        state[local] = f.get_tensor(key).float()
    for name, module in parts.items():
        try:
            module.load_state_dict(states[name], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"the {name} weights of {model_dir} do not fit its config: {exc}") from None
        setattr(model.model, name, module.eval())
    return model.eval()
