"""Load llava-hf checkpoints from a local folder: safetensors only, never remote code, never the hub."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.profiles import get_profile
from .file_hashes import cached_sha256

LLAVA_FAMILIES = ("llava15", "geochat", "skysensegpt", "rsllava")
META_FILE = "geovlm.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded, with what to do about it."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint folder holds, read without loading any weights."""

    path: Path
    family: str
    name: str
    licence: str
    random_stand_in: bool
    config: dict


def _family_of(path: Path, meta: dict, family: Optional[str]) -> str:
    name = family or meta.get("family")
    if not name:
        raise CheckpointError(
            f"{path} does not say which model family it is: pass --family "
            f'({", ".join(LLAVA_FAMILIES)}) or write {{"family": ...}} into {META_FILE}'
        )
    try:
        key = get_profile(name).name
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if key not in LLAVA_FAMILIES:
        raise CheckpointError(
            f"family {key!r} is not served by the LLaVA engine; it serves {', '.join(LLAVA_FAMILIES)}"
        )
    return key


def inspect_checkpoint(model_dir, family: Optional[str] = None) -> CheckpointInfo:
    """Check that `model_dir` is a loadable llava-hf folder and read its family; clear errors otherwise."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"model folder {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: it is not a Hugging Face checkpoint folder")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
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
            f"{path} holds a {model_type!r} model; the LLaVA engine loads llava-hf checkpoints (model_type 'llava')"
        )
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
    meta_file = path / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    key = _family_of(path, meta, family)
    return CheckpointInfo(
        path=path,
        family=key,
        name=meta.get("name", path.name),
        licence=meta.get("licence", get_profile(key).licence_note),
        random_stand_in=bool(meta.get("random_stand_in", False)),
        config=config,
    )


def encoder_weights_hash(model_dir) -> str:
    """sha256 over the vision-tower and projector tensors as stored (names, dtypes, shapes, raw bytes: any dtype,
    bfloat16 included); computed once per version of the weight files (file_hashes.cached_sha256)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    return cached_sha256("encoder_weights", files, lambda: _encoder_weights_sha256(files), model_dir)


def _encoder_weights_sha256(files) -> str:
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in sorted(k for k in f.keys() if "vision_tower" in k or "multi_modal_projector" in k):
                tensor = f.get_slice(key)
                digest.update(f"{key}:{tensor.get_dtype()}:{tensor.get_shape()}".encode())
                digest.update(f.get_tensor(key).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def from_local_folder(cls, folder, **kwargs):
    """`cls.from_pretrained` on a local folder only: never the hub, never remote code.

    Every load of GeoVLM goes through here. The folder must exist; `local_files_only` and HF_HUB_OFFLINE stop
    any download, so there is no hub revision to pin.
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
    `get_image_features` and the encoder export."""
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
