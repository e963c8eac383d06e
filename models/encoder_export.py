"""Export the vision encoder (CLIP tower up to the feature layer, CLS handling, projector) to one ONNX graph.

The graph takes `pixel_values` float32 [batch, 3, size, size] (normalised) and returns `image_features`
float32 [batch, image_tokens, hidden]. Its `metadata_props` carry the versioned schema below, which the
runtime and the preprocessing follow.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..core.profiles import get_profile
from .checkpoints import encoder_weights_hash, inspect_checkpoint, load_vision_model

SCHEMA = "geovlm-encoder"
SCHEMA_VERSION = "1"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


class ExportError(RuntimeError):
    """The export failed or its graph does not match the checkpoint."""


def _mean_std(model_dir: Path):
    """Normalisation constants from the checkpoint's preprocessor config, CLIP's by default."""
    conf = model_dir / "preprocessor_config.json"
    if conf.is_file():
        data = json.loads(conf.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(float(v) for v in data["image_mean"]), tuple(float(v) for v in data["image_std"])
    return CLIP_MEAN, CLIP_STD


def vision_encoder(model):
    """A torch module computing exactly what `model.get_image_features` gives, as one tensor."""
    import torch

    config = model.config
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ExportError("only a single vision_feature_layer is supported by the exporter")
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise ExportError(f"unknown vision_feature_select_strategy {strategy!r}")
    tower = model.model.vision_tower
    n_layers = len(tower.encoder.layers)
    keep = layer if layer >= 0 else n_layers + 1 + layer  # hidden_states[0] is the embedding output

    class VisionEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = tower.embeddings
            self.pre_layrnorm = tower.pre_layrnorm
            self.layers = torch.nn.ModuleList(tower.encoder.layers[:keep])
            self.projector = model.model.multi_modal_projector

        def forward(self, pixel_values):
            dtype = self.embeddings.patch_embedding.weight.dtype
            hidden = self.pre_layrnorm(self.embeddings(pixel_values.to(dtype)))
            for block in self.layers:
                hidden = block(hidden, None)
            if strategy == "default":
                hidden = hidden[:, 1:]
            return self.projector(hidden).float()

    return VisionEncoder().eval()


def torch_image_features(model, pixel_values):
    """The reference: LlavaForConditionalGeneration.get_image_features stacked to [batch, tokens, hidden]."""
    import torch

    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixel_values)
    return torch.stack(list(out.pooler_output)).float()


def metadata_for(
    model_dir, model, dtype: str, opset: int, family: Optional[str] = None, source_hash: Optional[str] = None
) -> Dict[str, str]:
    """The metadata_props of an encoder exported from `model_dir` (`source_hash`: its encoder_weights_hash)."""
    info = inspect_checkpoint(model_dir, family)
    profile = get_profile(info.family)
    vision = model.config.vision_config
    mean, std = _mean_std(Path(model_dir))
    grid = vision.image_size // vision.patch_size
    tokens = grid * grid + (1 if model.config.vision_feature_select_strategy == "full" else 0)
    return {
        "geovlm.schema": SCHEMA,
        "geovlm.schema_version": SCHEMA_VERSION,
        "geovlm.model_name": info.name,
        "geovlm.family": info.family,
        "geovlm.input_size": str(vision.image_size),
        "geovlm.fit": profile.fit,
        "geovlm.pad_color": json.dumps([int(255 * m) for m in mean]),
        "geovlm.mean": json.dumps(list(mean)),
        "geovlm.std": json.dumps(list(std)),
        "geovlm.image_tokens": str(tokens),
        "geovlm.hidden_size": str(model.config.text_config.hidden_size),
        "geovlm.feature_layer": str(model.config.vision_feature_layer),
        "geovlm.select_strategy": model.config.vision_feature_select_strategy,
        "geovlm.dtype": dtype,
        "geovlm.opset": str(opset),
        "geovlm.source_sha256": source_hash or encoder_weights_hash(model_dir),
    }


def _write_metadata(path: Path, props: Dict[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    del graph.metadata_props[:]
    for key, value in props.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: Dict[int, float]  # batch size -> max |onnx - torch|
    tolerance: float
    metadata: Dict[str, str]


def export_encoder(
    model_dir,
    out_path,
    fp16: bool = False,
    opset: int = 18,
    family: Optional[str] = None,
    check_batches: Sequence[int] = (1, 2),
    model=None,
    source_hash: Optional[str] = None,
) -> ExportReport:
    """Export, stamp the metadata, then run ONNX and torch on the same random batch; fail above tolerance.
    `source_hash` is the checkpoint's encoder_weights_hash when the caller has it already. The file appears at
    `out_path` only once checked: it is written under a temporary name beside it, removed if anything fails."""
    model_dir = Path(model_dir)
    inspect_checkpoint(model_dir, family)  # clear errors before any loading
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else load_vision_model(model_dir)
    scratch = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
    dtype = "float16" if fp16 else "float32"
    try:
        props = _export(model_dir, model, scratch, dtype, opset, family, source_hash)
        diffs = _parity(model, scratch, check_batches)
        worst, tolerance = max(diffs.values()), TOLERANCE[dtype]
        if not worst <= tolerance:
            raise ExportError(f"ONNX encoder differs from torch by {worst:.3g} (> {tolerance:g}); export rejected")
        os.replace(scratch, out_path)
    finally:
        scratch.unlink(missing_ok=True)
    return ExportReport(out_path, diffs, tolerance, props)


def _export(model_dir, model, out_path: Path, dtype: str, opset: int, family, source_hash) -> Dict[str, str]:
    """Write the graph of `model`'s vision encoder to `out_path` and stamp its metadata (returned)."""
    import torch

    encoder = vision_encoder(model)
    if dtype == "float16":  # a copy of the vision encoder only: `model` stays the fp32 reference of the check
        encoder = copy.deepcopy(encoder).half()
    size = model.config.vision_config.image_size
    example = torch.zeros(2, 3, size, size)
    # The dynamo exporter (torch.export) gives a clean graph with a symbolic batch axis; the TorchScript
    # exporter also works but specialises more shapes to constants, so we use dynamo.
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.onnx.export(
            encoder,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["pixel_values"],
            output_names=["image_features"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    program.save(str(out_path))
    props = metadata_for(model_dir, model, dtype, opset, family, source_hash)
    _write_metadata(out_path, props)
    return props


def _parity(model, path: Path, check_batches: Sequence[int]) -> Dict[int, float]:
    """Max |ONNX - torch| of the graph at `path` on a seeded random batch of each size."""
    import torch

    from .encoder_runtime import OnnxEncoder

    runtime = OnnxEncoder(path, providers=["CPUExecutionProvider"])
    size = model.config.vision_config.image_size
    diffs = {}
    generator = torch.Generator().manual_seed(0)
    for n in check_batches:
        pixels = torch.randn(n, 3, size, size, generator=generator)
        ref = torch_image_features(model, pixels).numpy()
        diffs[n] = float(abs(runtime.run(pixels.numpy()) - ref).max())
    return diffs
