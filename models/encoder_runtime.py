"""Run an exported vision encoder with onnxruntime: providers in a chosen order, batches, metadata checks."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .encoder_export import SCHEMA, SCHEMA_VERSION, weights_path
from .file_hashes import cached_value, file_sha256

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class EncoderError(RuntimeError):
    """An encoder file that cannot be used, or one that does not fit the language model."""


def check_providers(names: Sequence[str]) -> List[str]:
    """onnxruntime execution providers asked for by name, in the order given (a preference: the first available
    one runs), as onnxruntime names them. A name may be given in any case and without "ExecutionProvider"
    ("cpu", "CUDA"). Raises ValueError in one line, listing `onnxruntime.get_available_providers()`, for a
    name that is no onnxruntime provider (`get_all_providers()`) and for a list of which none is available
    here (a CUDA provider with the CPU build of onnxruntime)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    known = {p.lower(): p for p in ort.get_all_providers()}
    known.update({p.lower().removesuffix("executionprovider"): p for p in ort.get_all_providers()})
    chosen = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        if name.lower() not in known:
            raise ValueError(f"unknown onnxruntime provider {name!r}; available here: {', '.join(available)}")
        chosen.append(known[name.lower()])
    if not chosen:
        raise ValueError(f"no onnxruntime provider given; available here: {', '.join(available)}")
    if not any(p in available for p in chosen):
        raise ValueError(f"none of {', '.join(chosen)} is available in this onnxruntime; available here: "
                         f"{', '.join(available)}")
    return chosen


def _three(kind):
    def parse(text: str) -> tuple:
        values = tuple(kind(v) for v in json.loads(text))
        if len(values) != 3:
            raise ValueError("not three values")
        return values

    return parse


# The metadata the runtime reads, each with its parser.
FIELDS = {
    "geovlm.family": str,
    "geovlm.fit": str,
    "geovlm.source_sha256": str,
    "geovlm.input_size": int,
    "geovlm.image_tokens": int,
    "geovlm.hidden_size": int,
    "geovlm.pad_color": _three(int),
    "geovlm.mean": _three(float),
    "geovlm.std": _three(float),
}
AGAIN = "export it again with `geovlm export-encoder`"


def session_options(threads: Optional[int] = None, prepacking: bool = True):
    """onnxruntime SessionOptions chosen for an engine that shares its cores with torch.

    - intra-op threads: `threads`, else torch's intra-op thread count (the cores the language model uses), so
      the two runtimes do not oversubscribe the machine; one inter-op thread (the graph runs sequentially);
    - no spinning: onnxruntime's workers otherwise keep spinning after each run and slow the prefill that
      follows (onnxruntime docs, "Thread management": session.intra_op.allow_spinning);
    - every graph optimisation (ORT_ENABLE_ALL: constant folding, attention/GELU/LayerNorm fusions);
    - `prepacking` False: no pre-packed copy of the weights ("session.disable_prepacking",
      onnxruntime_session_options_config_keys.h). Kernels otherwise copy each weight matrix into their own
      layout at load, in anonymous memory, beside the memory-mapped weights file (encoder_export.place_encoder).
      The fp32 encoder runs without (ViT-B/16 after a batch of 8: anonymous memory 398 -> 81 MiB, encode 9 %
      slower at batch 1 and 1 % at batch 8); the int8 one keeps it (without, it saved 72 MiB but was 48 % slower
      at batch 1: its int8 GEMMs need the packed layout), bench/bench_encoder.py, docs/benchmarks.md.
    - no CPU memory arena and no memory pattern (SessionOptions.enable_cpu_mem_arena / enable_mem_pattern,
      onnxruntime Python API docs: the arena "may pre-allocate memory for future usage", the pattern allocates
      one block for a run's tensors): the arena keeps a run's activations after it; without both, the
      anonymous memory of the ViT-B/16 encoder after a batch of 8 fell from 579 to 416 MiB, its batch-1 time
      within noise (bench/bench_encoder.py, docs/benchmarks.md)."""
    import onnxruntime as ort

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    if not prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def graph_facts(path: Path) -> dict:
    """The metadata_props and the graph inputs (name, "tensor(<type>)", shape with names or lengths) of an
    ONNX file, read from its protobuf without its weights; EncoderError for a file that is not ONNX."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise several untyped errors for bad files
        raise EncoderError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    weights = {t.name for t in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type).lower().replace("float32", "float")
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
                for d in tensor.shape.dim]
        inputs.append([value.name, f"tensor({kind})", dims])
    return {"metadata": {p.key: p.value for p in model.metadata_props}, "inputs": inputs}


def _files_sha256(paths) -> str:
    """sha256 hex digest of one file's bytes, or of the digests of several files in order."""
    if len(paths) == 1:
        return file_sha256(paths[0])
    return hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()


class OnnxEncoder:
    """An onnxruntime session over a GeoVLM encoder graph, with its metadata (`session_options`; `threads`:
    intra-op threads, torch's count by default; `options`: onnxruntime SessionOptions to use instead).

    The metadata and inputs are checked at construction (read once per version of the graph and its weights file,
    file_hashes); EncoderError for a missing, unreadable or foreign file. Only an int8 graph runs with pre-packed
    weights (`session_options`). The session itself is built in a background thread started here
    (graph optimisation takes about a second on a CPU), so a pipeline's language model loads meanwhile; the
    first use of `session` waits for it (EncoderError if onnxruntime refused the file)."""

    def __init__(
        self, path, providers: Optional[Sequence[str]] = None, max_batch: int = 16, threads: Optional[int] = None,
        options=None,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise EncoderError(f"encoder file {self.path} does not exist")
        self.wanted = list(providers or DEFAULT_PROVIDERS)
        available = set(ort.get_available_providers())
        chosen = [p for p in self.wanted if p in available] or ["CPUExecutionProvider"]
        folder, name = self.path.parent, self.path.name
        weights = weights_path(self.path)
        files = [self.path, weights] if weights.is_file() else [self.path]  # an export of before 2026-11-30: one
        facts = cached_value(f"onnx-graph:{name}", files, lambda: graph_facts(self.path), folder)
        meta = facts["metadata"]
        if meta.get("geovlm.schema") != SCHEMA:
            raise EncoderError(f"{self.path} is an ONNX model but not a GeoVLM encoder (no {SCHEMA} metadata)")
        if meta.get("geovlm.schema_version") != SCHEMA_VERSION:
            raise EncoderError(
                f"{self.path} has encoder schema version {meta.get('geovlm.schema_version')}, this GeoVLM "
                f"reads version {SCHEMA_VERSION}: export it again with `geovlm export-encoder`"
            )
        self.metadata: Dict[str, str] = meta
        fields = self._fields(meta)
        self.family, self.fit, self.source_hash = fields["family"], fields["fit"], fields["source_sha256"]
        self.input_size, self.image_tokens = fields["input_size"], fields["image_tokens"]
        self.hidden_size, self.pad_color = fields["hidden_size"], fields["pad_color"]
        self.mean, self.std = fields["mean"], fields["std"]
        self._check_input(facts["inputs"])
        self.input_name = facts["inputs"][0][0]
        self.max_batch = max_batch
        self.file_hash = cached_value(f"onnx:{name}", files, lambda: _files_sha256(files), folder)
        self._session, self._error = None, None
        # Not a daemon: a process that exits while onnxruntime builds the session waits for it (a daemon thread
        # inside onnxruntime's C++ at interpreter shutdown aborts the process).
        if options is None:
            options = session_options(threads, prepacking=meta.get("geovlm.dtype") == "int8")
        self._opening = threading.Thread(target=self._open, args=(options, chosen), name="geovlm-encoder-session")
        self._opening.start()

    def _open(self, options, chosen) -> None:
        import onnxruntime as ort

        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises several untyped errors for bad files
            self._error = EncoderError(f"{self.path} is not a readable ONNX model ({type(exc).__name__}: {exc})")
            return
        used = self._session.get_providers()[0]
        log.info("vision encoder %s runs on %s (asked for %s)", self.path.name, used, ", ".join(self.wanted))

    @property
    def session(self):
        """The onnxruntime InferenceSession (waits for its construction). EncoderError when the file could not be
        opened as an ONNX model."""
        self._opening.join()
        if self._error is not None:
            raise self._error
        return self._session

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (the first of those asked for that is available)."""
        return self.session.get_providers()[0]

    def _fields(self, meta: Dict[str, str]) -> dict:
        """The metadata the runtime reads, parsed; EncoderError when some is missing or unreadable."""
        missing = [key for key in FIELDS if key not in meta]
        if missing:
            raise EncoderError(f"{self.path} lacks the encoder metadata {', '.join(missing)}: {AGAIN}")
        fields = {}
        for key, parse in FIELDS.items():
            try:
                fields[key.split(".", 1)[1]] = parse(meta[key])
            except (ValueError, TypeError):
                raise EncoderError(f"{self.path} has an unreadable {key} ({meta[key]!r}): {AGAIN}") from None
        return fields

    def _check_input(self, inputs) -> None:
        """One input, pixel_values float32 [batch, 3, size, size] (each axis named or of that length)."""
        size = self.input_size
        shape = inputs[0][2] if len(inputs) == 1 else []
        dims = len(shape) == 4 and all(not isinstance(d, int) or d == n for d, n in zip(shape[1:], (3, size, size)))
        if not (dims and inputs[0][0] == "pixel_values" and inputs[0][1] == "tensor(float)"):
            got = ", ".join(f"{name} {kind} {dims}" for name, kind, dims in inputs) or "no input"
            raise EncoderError(
                f"{self.path} is no GeoVLM encoder graph: it takes {got}, the encoder takes pixel_values float32 "
                f"[batch, 3, {size}, {size}]; {AGAIN}"
            )

    def check_fits(self, hidden_size: int, image_tokens: int, source_hash: Optional[str] = None) -> None:
        """Raise unless this encoder's output is what the language model expects."""
        if self.hidden_size != hidden_size:
            raise EncoderError(
                f"encoder {self.path.name} outputs hidden size {self.hidden_size}, "
                f"the language model needs {hidden_size}"
            )
        if self.image_tokens != image_tokens:
            raise EncoderError(
                f"encoder {self.path.name} gives {self.image_tokens} image tokens, "
                f"the checkpoint expects {image_tokens}"
            )
        if source_hash is not None and source_hash != self.source_hash:
            raise EncoderError(
                f"encoder {self.path.name} was exported from other vision weights than this checkpoint's; "
                "export it again with `geovlm export-encoder`"
            )

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """[n, 3, size, size] float32 -> [n, tokens, hidden] float32, in chunks of at most `max_batch`. EncoderError
        for another input shape or a file that could not be opened."""
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        size = self.input_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, size, size):
            raise EncoderError(f"encoder input must be [n, 3, {size}, {size}], got {list(pixel_values.shape)}")
        parts = [
            self.session.run(None, {self.input_name: pixel_values[i : i + self.max_batch]})[0]
            for i in range(0, len(pixel_values), self.max_batch)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)


class EncodingCache:
    """Image encodings (each one image's `[tokens, hidden]` float32 features) keyed by image content and encoder
    hash, at most `capacity` of them, least recently used dropped first. Not thread-safe: the pipeline locks it."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image: np.ndarray, encoder_hash: str) -> str:
        """SHA-256 hex digest of the encoder's hash, the image's shape and dtype, and its bytes (C order)."""
        digest = hashlib.sha256(encoder_hash.encode())
        digest.update(f"{image.shape}:{image.dtype}".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> Optional[np.ndarray]:
        """The encoding stored under `key` (now the most recently used), or None; counted in hits/misses."""
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def put(self, key: str, value: np.ndarray) -> None:
        """Store an encoding, dropping the least recently used beyond `capacity` entries."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
