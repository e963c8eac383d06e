"""Int8 dynamic quantisation of an exported fp32 vision encoder (CPU), kept only behind a parity gate.

onnxruntime's `quantize_dynamic` (onnxruntime docs, "Quantize ONNX models", dynamic quantisation) stores the
weights of every MatMul and Gemm as signed int8 with one scale per output channel and quantises their activations
to uint8 on the fly at each run (`DynamicQuantizeLinear` + `MatMulInteger`); nothing is calibrated. The patch
embedding (the one Conv) stays float32: quantised, it alone brought the worst token's cosine from 0.9996 to 0.94 on
the demo encoder and from 0.9996 to 0.994 on a ViT-B/16, for no measurable speed (bench/bench_encoder.py). The quantised
graph is compared with the fp32 graph it came from on real imagery, the tiles of `sample/aerial.tif` (shipped
with GeoVLM) fitted and normalised exactly as the pipeline does, and kept only when

- every image token's feature vector points the same way: per-token cosine similarity >= `MIN_COSINE` (0.99,
  an angle of at most 8.1 degrees), the worst token of all tiles; and
- the features keep their size: relative error ||int8 - fp32||_F / ||fp32||_F <= `MAX_RELATIVE_ERROR` (0.10)
  over all tiles' features together.

Cosine is the measure for quantised embeddings because the language model reads the image tokens through
linear projections and attention, where a token's direction matters; the relative error bounds what cosine
cannot see (a change of scale). Otherwise `QuantisationError` says which bound failed, in one line.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .encoder_export import ExportError, place_encoder, scratch_folder
from .file_hashes import cached_value

MIN_COSINE = 0.99
MAX_RELATIVE_ERROR = 0.10
QUANTISED_OPS = ("MatMul", "Gemm")  # not Conv: the patch embedding stays float32 (see above)
SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "aerial.tif"
# (col, row, width, height) windows of the 768 x 768 sample: the whole scene, a square and two oblong crops
# (letterboxed or stretched by the family's fit, as the pipeline does)
GATE_WINDOWS = ((0, 0, 768, 768), (0, 0, 256, 256), (384, 128, 384, 512), (200, 400, 500, 300))


class QuantisationError(ExportError):
    """The int8 encoder could not be made, or its features are not within the gate's tolerance."""


@dataclass
class FeatureAgreement:
    """How closely features [n, tokens, hidden] of a candidate encoder follow the reference's."""

    min_cosine: float  # the worst per-token cosine similarity
    mean_cosine: float
    relative_error: float  # ||candidate - reference||_F / ||reference||_F
    max_abs_diff: float

    def failures(self, min_cosine: float = MIN_COSINE, max_relative_error: float = MAX_RELATIVE_ERROR) -> List[str]:
        """What is outside the tolerance, in words (empty when the candidate passes)."""
        out = []
        if not self.min_cosine >= min_cosine:  # NaN fails too
            out.append(f"per-token cosine {self.min_cosine:.4f} < {min_cosine}")
        if not self.relative_error <= max_relative_error:
            out.append(f"relative error {self.relative_error:.3f} > {max_relative_error}")
        return out

    def as_dict(self) -> Dict[str, float]:
        """The four figures by field name, rounded to 6 decimals (the `geovlm.int8_gate` metadata)."""
        return {k: round(float(v), 6) for k, v in vars(self).items()}


def feature_agreement(reference: np.ndarray, candidate: np.ndarray) -> FeatureAgreement:
    """Compare two float arrays of features [n, tokens, hidden]; a token of zero norm counts as cosine 0.
    ValueError for arrays of different shapes."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"features of shape {candidate.shape} cannot be compared with {reference.shape}")
    norms = np.linalg.norm(reference, axis=-1) * np.linalg.norm(candidate, axis=-1)
    dots = (reference * candidate).sum(-1)
    cosine = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    scale = np.linalg.norm(reference)
    relative = np.linalg.norm(candidate - reference) / scale if scale > 0 else float("inf")
    return FeatureAgreement(float(cosine.min()), float(cosine.mean()), float(relative),
                            float(np.abs(candidate - reference).max()))


def gate_images() -> List[np.ndarray]:
    """The gate's images: HxWx3 uint8 tiles of `sample/aerial.tif` (GATE_WINDOWS). QuantisationError when the
    sample is not installed beside GeoVLM."""
    from .imagery import read_rgb

    if not SAMPLE.is_file():
        raise QuantisationError(f"the int8 parity gate needs its sample imagery, {SAMPLE}, which is missing")
    return [read_rgb(SAMPLE, window) for window in GATE_WINDOWS]


def encoder_pixels(encoder, images: Sequence[np.ndarray]) -> np.ndarray:
    """pixel_values [n, 3, size, size] float32 of HxWx3 uint8 images for `encoder` (an OnnxEncoder): fitted by its
    fit and pad colour and normalised by its mean / std, as `VlmPipeline` prepares them."""
    from ..core.georef import fit_plan
    from ..core.profiles import get_profile
    from .preprocess import fit_image, normalise

    profile = get_profile(encoder.family).with_overrides(input_size=encoder.input_size, fit=encoder.fit)
    fitted = [fit_image(im, fit_plan(profile, im.shape[1], im.shape[0]), encoder.pad_color) for im in images]
    return normalise(fitted, encoder.mean, encoder.std)


@dataclass
class QuantisationReport:
    """What `quantise_encoder` wrote (`path`) and how its features agreed with the fp32 encoder's."""

    path: Path
    agreement: FeatureAgreement
    images: int  # how many gate images were compared


def quantise_encoder(
    fp32_path,
    out_path,
    images: Optional[Sequence[np.ndarray]] = None,
    min_cosine: float = MIN_COSINE,
    max_relative_error: float = MAX_RELATIVE_ERROR,
) -> QuantisationReport:
    """Write the int8 dynamic quantisation of the fp32 encoder at `fp32_path` to `out_path` when its features on
    `images` (HxWx3 uint8; `gate_images()` by default) are within the tolerance of the fp32 encoder's; its
    metadata says `geovlm.dtype` int8 and carries the gate's figures (`geovlm.int8_gate`). Its weights go beside it
    (encoder_export.place_encoder); both are written in a scratch folder and appear only once the gate passed.
    QuantisationError (one line) otherwise, or for an encoder that is not fp32; EncoderError for a file that is
    not a GeoVLM encoder."""
    import onnxruntime as ort

    from .encoder_runtime import OnnxEncoder, session_options

    reference = OnnxEncoder(fp32_path, providers=["CPUExecutionProvider"])
    if reference.metadata.get("geovlm.dtype") != "float32":
        raise QuantisationError(f"{reference.path.name} is a {reference.metadata.get('geovlm.dtype')} encoder; "
                                "int8 is made from the float32 one")
    pixels = encoder_pixels(reference, gate_images() if images is None else images)
    out_path = Path(out_path)
    with scratch_folder(out_path) as scratch:
        graph = scratch / "int8.onnx"
        _quantise(reference.path, graph)
        session = ort.InferenceSession(str(graph), session_options(), providers=["CPUExecutionProvider"])
        got = session.run(None, {reference.input_name: pixels})[0]
        agreement = feature_agreement(reference.run(pixels), got)
        failures = agreement.failures(min_cosine, max_relative_error)
        if failures:
            raise QuantisationError(f"int8 encoder refused: {' and '.join(failures)} against the float32 encoder "
                                    f"on {len(pixels)} images")
        _stamp(graph, reference.metadata, agreement, len(pixels))
        place_encoder(graph, out_path, scratch)
    return QuantisationReport(out_path, agreement, len(pixels))


def _quantise(fp32_path: Path, out_path: Path) -> None:
    """onnxruntime's dynamic quantisation of the QUANTISED_OPS, signed int8 weights per channel (QInt8: on this
    CPU 3x faster than fp32 where QUInt8 weights were 1.5x, onnxruntime docs "Quantize ONNX models", "Data type
    selection")."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet_quantiser():
            quantize_dynamic(str(fp32_path), str(out_path), op_types_to_quantize=list(QUANTISED_OPS),
                             per_channel=True, weight_type=QuantType.QInt8)
    except Exception as exc:  # onnx / onnxruntime raise several untyped errors
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise QuantisationError(f"onnxruntime could not quantise {fp32_path.name}: {reason}") from None


def _stamp(path: Path, metadata: Dict[str, str], agreement: FeatureAgreement, images: int) -> None:
    """The fp32 metadata with dtype int8 and the gate's figures, on the quantised graph at `path`."""
    import json

    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    props = dict(metadata, **{"geovlm.dtype": "int8",
                              "geovlm.int8_gate": json.dumps(dict(agreement.as_dict(), images=images))})
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet_quantiser():
    """onnxruntime's quantiser logs "Please consider to run pre-processing before quantization" on the root
    logger at every call (through `logging.warning`, which also installs a root handler: removed again);
    pre-processing (symbolic shape inference) changed nothing in GeoVLM's graphs (same operators quantised) and
    took twice as long as the quantisation itself, so that one advice is not shown."""
    advice = _SkipPreprocessAdvice()
    root = logging.getLogger()
    handlers = list(root.handlers)
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        for handler in root.handlers[:]:  # `logging.warning` gave the root logger a handler of its own
            if handler not in handlers:
                root.removeHandler(handler)


class _SkipPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


def int8_beside(fp32_path) -> Path:
    """The int8 encoder next to the fp32 one at `fp32_path` (its name with `-int8.onnx` for `-float32.onnx`),
    made and gated on first use. The gate's verdict is kept in the folder's hashes store (file_hashes), keyed by
    the fp32 file's size and mtime, the quantised operators and the tolerance, so a refused quantisation is not
    tried again at every start: QuantisationError with the same line instead."""
    fp32_path = Path(fp32_path)
    out = fp32_path.with_name(fp32_path.name.replace("-float32.onnx", "-int8.onnx"))
    if out == fp32_path:
        raise QuantisationError(f"{fp32_path.name} is not named as a float32 encoder (…-float32.onnx)")
    if out.is_file():
        return out

    def verdict() -> dict:
        try:
            return {"passed": True, **quantise_encoder(fp32_path, out).agreement.as_dict()}
        except QuantisationError as exc:
            return {"passed": False, "reason": str(exc)}

    recipe = f"{'+'.join(QUANTISED_OPS)}:per-channel:{MIN_COSINE}:{MAX_RELATIVE_ERROR}"
    name = f"int8-gate:{fp32_path.name}:{recipe}"
    found = cached_value(name, [fp32_path], verdict, fp32_path.parent)
    if not found.get("passed"):
        raise QuantisationError(found.get("reason") or "int8 encoder refused")
    if not out.is_file():  # passed once, removed since
        quantise_encoder(fp32_path, out)
    return out
