"""Export a checkpoint's vision side to one ONNX graph: for llava-hf the CLIP tower up to the feature layer, CLS
handling and projector; for MiniGPT-v2 the EVA ViT-g, its LayerNorm, the 4-token merge and projection.

The graph takes `pixel_values` float32 [batch, 3, size, size] (normalised) and returns `image_features`
float32 [batch, image_tokens, hidden]. Its `metadata_props` carry the versioned schema below, which the
runtime and the preprocessing follow.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..core.profiles import get_profile
from .checkpoints import CheckpointInfo, as_checkpoint, load_vision_model

SCHEMA = "geovlm-encoder"
SCHEMA_VERSION = "1"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
WEIGHTS_ALIGNMENT = 64 * 1024  # the largest memory-map granularity (Windows'); a multiple of Linux's 4 KiB pages


class ExportError(RuntimeError):
    """The export failed or its graph does not match the checkpoint."""


def _mean_std(checkpoint: CheckpointInfo):
    """Normalisation constants from the checkpoint's vision or preprocessor config, CLIP's by default."""
    vision = checkpoint.vision_config or {}
    if "mean" in vision and "std" in vision:
        return tuple(float(v) for v in vision["mean"]), tuple(float(v) for v in vision["std"])
    conf = checkpoint.path / "preprocessor_config.json"
    if conf.is_file():
        data = json.loads(conf.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(float(v) for v in data["image_mean"]), tuple(float(v) for v in data["image_std"])
    return CLIP_MEAN, CLIP_STD


def vision_encoder(model):
    """A torch module computing exactly what `model.get_image_features` gives, as one tensor: pixel_values
    `[n, 3, size, size]` -> float32 features `[n, image_tokens, hidden]` (the projector's output). ExportError for
    a list of feature layers or an unknown vision_feature_select_strategy."""
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


def vision_of(checkpoint: CheckpointInfo, model=None):
    """(module, reference) of a checkpoint's vision side: `module` maps pixel_values [n, 3, size, size] to
    features [n, image_tokens, hidden] and is what gets exported; `reference(pixels)` is what the graph must equal.
    `model` is the already loaded vision model when the caller has one (llava-hf: a LlavaForConditionalGeneration;
    MiniGPT-v2: its MiniGptVision)."""
    if checkpoint.architecture == "minigptv2":
        from .minigptv2 import load_vision

        module = model if model is not None else load_vision(checkpoint)

        def eager(pixels):
            import torch

            with torch.no_grad():
                return module(pixels).float()

        return module.eval(), eager
    model = model if model is not None else load_vision_model(checkpoint.path)
    return vision_encoder(model), lambda pixels: torch_image_features(model, pixels)


def metadata_for(checkpoint: CheckpointInfo, dtype: str, opset: int) -> Dict[str, str]:
    """The metadata_props of an encoder exported from `checkpoint`."""
    profile = get_profile(checkpoint.family)
    mean, std = _mean_std(checkpoint)
    props = {
        "geovlm.schema": SCHEMA,
        "geovlm.schema_version": SCHEMA_VERSION,
        "geovlm.model_name": checkpoint.name,
        "geovlm.architecture": checkpoint.architecture,
        "geovlm.family": checkpoint.family,
        "geovlm.input_size": str(checkpoint.input_size),
        "geovlm.fit": profile.fit,
        "geovlm.pad_color": json.dumps([int(255 * m) for m in mean]),
        "geovlm.mean": json.dumps(list(mean)),
        "geovlm.std": json.dumps(list(std)),
        "geovlm.image_tokens": str(checkpoint.image_tokens),
        "geovlm.hidden_size": str(checkpoint.hidden_size),
        "geovlm.dtype": dtype,
        "geovlm.opset": str(opset),
        "geovlm.source_sha256": checkpoint.encoder_hash,
    }
    if checkpoint.architecture == "llava":
        props["geovlm.feature_layer"] = str(checkpoint.config["vision_feature_layer"])
        props["geovlm.select_strategy"] = checkpoint.config["vision_feature_select_strategy"]
    else:
        vision = checkpoint.vision_config
        props["geovlm.vision_depth"] = str(vision["depth"])
        props["geovlm.merge_tokens"] = str(vision["merge_tokens"])
    return props


def _write_metadata(path: Path, props: Dict[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    del graph.metadata_props[:]
    for key, value in props.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


@dataclass
class ExportReport:
    """What `export_encoder` wrote (`path`), how far its outputs lay from torch's per batch size checked
    (`max_abs_diff`, feature units), the `tolerance` they passed, and the metadata stamped in the file."""

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
) -> ExportReport:
    """Export, stamp the metadata, then run ONNX and torch on the same random batch; fail above tolerance.
    `model_dir` is a checkpoint folder or its CheckpointInfo; `model` its loaded vision model (see `vision_of`),
    when the caller has it. The graph appears at `out_path`, its weights beside it (`weights_path`, see
    `place_encoder`), only once checked: both are written in a scratch folder beside them, removed if anything
    fails. CheckpointError for a folder that cannot be read (`as_checkpoint`); ExportError for a vision side the
    exporter does not handle (`vision_encoder`) or a graph that differs from torch by more than the tolerance."""
    checkpoint = as_checkpoint(model_dir, family)  # clear errors before any loading
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module, reference = vision_of(checkpoint, model)
    dtype = "float16" if fp16 else "float32"
    with scratch_folder(out_path) as scratch:
        graph = scratch / "graph.onnx"
        props = _export(checkpoint, module, graph, dtype, opset)
        diffs = _parity(reference, checkpoint.input_size, graph, check_batches)
        worst, tolerance = max(diffs.values()), TOLERANCE[dtype]
        if not worst <= tolerance:
            raise ExportError(f"ONNX encoder differs from torch by {worst:.3g} (> {tolerance:g}); export rejected")
        place_encoder(graph, out_path, scratch)
    return ExportReport(out_path, diffs, tolerance, props)


def weights_path(path) -> Path:
    """The file beside an encoder graph `path` that holds its weights (ONNX external data): `<name>.data`."""
    path = Path(path)
    return path.with_name(path.name + ".data")


@contextlib.contextmanager
def scratch_folder(out_path: Path):
    """A new hidden folder beside `out_path` for the files of an export in progress, removed on leaving (on
    errors and Ctrl-C too): nothing half-written is ever seen under the final name."""
    folder = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def place_encoder(graph: Path, out_path: Path, scratch: Path) -> None:
    """Write the ONNX model at `graph` (weights inline or external) to `out_path` with its weights in
    `weights_path(out_path)`, each tensor of 1 MiB or more at an offset that is a multiple of 64 KiB (onnx_ir.save
    `alignment`). onnxruntime then maps those tensors from the file instead of copying them into its own memory
    (onnxruntime pull requests 11127 and 11789, "directly use memory mapped data for external data
    initializers"): the weights count as file-backed, shared, evictable pages, not anonymous memory. Both files
    are written in `scratch` (a folder beside `out_path`) and renamed into place, the weights first."""
    import onnx_ir

    staged = scratch / "placed"
    staged.mkdir()
    weights = weights_path(out_path)
    onnx_ir.save(onnx_ir.load(str(graph)), str(staged / out_path.name), external_data=weights.name,
                 alignment=WEIGHTS_ALIGNMENT)
    os.replace(staged / weights.name, weights)
    os.replace(staged / out_path.name, out_path)


def _export(checkpoint: CheckpointInfo, encoder, out_path: Path, dtype: str, opset: int) -> Dict[str, str]:
    """Write the graph of the vision module `encoder` to `out_path` and stamp its metadata (returned)."""
    import torch

    if dtype == "float16":  # a copy: `encoder` stays the fp32 reference of the check
        encoder = copy.deepcopy(encoder).half()
    size = checkpoint.input_size
    example = torch.zeros(2, 3, size, size)
    # The dynamo exporter (torch.export) gives a clean graph with a symbolic batch axis; the TorchScript
    # exporter also works but specialises more shapes to constants, so we use dynamo.
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad(), quiet_exporter():
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
    with quiet_exporter():
        program.save(str(out_path))
    props = metadata_for(checkpoint, dtype, opset)
    _write_metadata(out_path, props)
    return props


# torch's ONNX exporter logs one warning per torchvision operator it cannot register when torchvision is absent
# (torch/onnx/_internal/exporter/_registration.py); the encoders use none of them.
_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def quiet_exporter():
    """A context in which torch's ONNX exporter does not print what concerns torch, not the user: the
    "torchvision is not installed. Skipping torchvision::..." log lines and torch.export's FutureWarning about
    pytree's `LeafSpec` (raised through copyreg.py). Only these; other warnings and errors pass."""
    logger = logging.getLogger(_REGISTRATION_LOGGER)
    quiet = _SkipTorchvisionNotes()
    logger.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
            yield
    finally:
        logger.removeFilter(quiet)


class _SkipTorchvisionNotes(logging.Filter):
    """Drops the exporter's "torchvision is not installed. Skipping ..." records, keeps every other one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


def _parity(reference, size: int, path: Path, check_batches: Sequence[int]) -> Dict[int, float]:
    """Max |ONNX - reference| of the graph at `path` on a seeded random batch of each size."""
    import torch

    from .encoder_runtime import OnnxEncoder

    runtime = OnnxEncoder(path, providers=["CPUExecutionProvider"])
    diffs = {}
    generator = torch.Generator().manual_seed(0)
    for n in check_batches:
        pixels = torch.randn(n, 3, size, size, generator=generator)
        ref = reference(pixels).numpy()
        diffs[n] = float(abs(runtime.run(pixels.numpy()) - ref).max())
    return diffs
