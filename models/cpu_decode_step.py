"""A whole decode step of a Llama-family decoder, fp32, on CPU, compiled with numba.

A decode step is memory-bound: it reads every weight once and, at batch 1, each product is a matrix-vector
product. Run as torch operations, a step of the benchmark's 12-layer decoder is ~360 small operations; each pays
torch's dispatch, and the products run on oneDNN's matrix-vector kernel, which reads 61-72 % of the rate a plain
sum of the same bytes reads (`bench/bench_kernels.py`). Here the step is one compiled function (numba, LLVM):
per layer RMSNorm, the stacked q/k/v product, rotary embedding, the key/value write into the static cache,
attention, the output product, RMSNorm, the stacked gate/up product, SiLU and the down product; the products
(each weight row read once for every row of the batch) and the attention are split over the cores (`prange`,
numba's threading layer: TBB where the `tbb` wheel is installed, `load_tbb`, else OpenMP), the rest runs on one
core between them. Rows of a batch keep their own positions (a ragged batch). The arithmetic is transformers'
Llama (models/llama/modeling_llama.py: LlamaRMSNorm in fp32, `apply_rotary_pos_emb`, softmax attention scaled by
head_dim^-0.5, `down(silu(gate) * up)`), with sums in a different order (vectorised, fastmath): logits agree
with the torch step's to 1e-5 and greedy tokens equal `generate`'s (tests/test_cpu_decode_step.py,
tests/test_models_generation.py).

The kernels are compiled on first use and cached on disk by numba (`cache=True`) in GeoVLM's cache folder
(`$GEOVLM_CACHE/numba`, else ~/.cache/geovlm/numba; a NUMBA_CACHE_DIR of the user's wins; where it cannot be
written, a private temporary folder, else none, never the install folder: numba_cache.py, which also prunes the
kernels of sources that are gone or changed, `prune_cache`), so a read-only install folder still caches;
`start_preload` compiles or loads them (and numba's typed lists) in the background while
a model's weights load, and `CpuDecodeStep.warm_up` runs the model's own first step. Where numba is missing, or
the model is not fp32 on CPU, or has biases, the torch step serves (`unavailable_reason`); a batch's cache stays
the step's after rows finished (`CpuDecodeStep.whole`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import List, Optional

from . import numba_cache

log = logging.getLogger(__name__)
# Checked before numba loads (just below), which reads NUMBA_CACHE_DIR: numba would cache in the install folder
# where the folder cannot be written (numba_cache.py). None: no folder can be, the kernels are not cached.
NUMBA_CACHE = numba_cache.choose_cache()
numba_cache.use(NUMBA_CACHE)
# The TBB runtime's file as the `tbb` wheel installs it, per platform (the names numba's TBB layer asks for:
# numba/np/ufunc/parallel.py, _check_tbb_version_compatible).
TBB_LIBRARIES = {"linux": "libtbb.so.12", "win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}


def load_tbb() -> Optional[str]:
    """Load the TBB runtime of the `tbb` wheel, so that numba's TBB threading layer (first in its default
    priority, NUMBA_THREADING_LAYER_PRIORITY) finds it: the wheel puts the library in the environment's `lib`
    folder, which the dynamic loader does not search (conda's environments put it on the path). Once loaded by
    path, the loader resolves numba's request for it by name to this copy. Returns the path loaded, or None
    (no wheel, another platform, or the library refuses to load: numba then takes OpenMP).

    Why TBB: a decode step is ~60 parallel regions. libgomp's passive wait (the engine's default, so that an
    engine beside QGIS does not spin on its cores: engine/cpu_threads.py) wakes a sleeping thread for each region;
    TBB's workers spin briefly and then sleep, which keeps both cases. Measured with bench/bench_threads.py
    (decode tokens/s with 0 / 1 / 2 busy processes, 2 cores): TBB 79.5 / 61.8 / 34.3, OpenMP passive
    69.5 / 59.4 / 44.2, OpenMP spinning 77.7 / 25.3 / 22.4 (docs/benchmarks.md, with an earlier run)."""
    import ctypes
    import importlib.metadata
    import sys

    name = TBB_LIBRARIES.get(sys.platform)
    try:
        files = importlib.metadata.distribution("tbb").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if name and file.name == name:
            path = str(file.locate())
            try:
                ctypes.CDLL(path)
            except OSError as exc:
                log.info("the TBB runtime at %s did not load (%s): numba's steps run on OpenMP", path, exc)
                return None
            return path
    return None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (numba's threading-layer errors span several, with hints)."""
    return " ".join(str(exc).split())


TBB_PATH = load_tbb()
# One step at a time in the process, whichever model it is for: numba's workqueue layer (its last resort, where
# neither TBB nor OpenMP loads) must not be entered by two threads at once.
STEP_LOCK = threading.Lock()
LOAD_ERROR: Optional[str] = None  # why an installed numba did not load
try:
    import numba
    import numpy as np
    from numba import njit, prange
except ImportError:  # an engine without numba decodes with the torch step
    numba = None
except Exception as exc:  # numba refuses its configuration, e.g. NUMBA_NUM_THREADS=0  # noqa: BLE001
    numba = None
    LOAD_ERROR = f"numba failed to load: {one_line(exc)}"
if numba is not None and NUMBA_CACHE.folder is not None:
    numba.config.CACHE_DIR = str(NUMBA_CACHE.folder)  # numba loaded before this module read the variable earlier


def launch_threads_here() -> None:
    """Start numba's threading layer on the calling thread (called at import on the main thread). Its TBB layer
    starts with a task run on the thread that launches it and waits for that task when the process exits; where
    TBB sees one CPU (an affinity or a cgroup quota of one), it has no worker to run the task, so a process whose
    first parallel kernel ran on another thread (the decode step's warm-up and a server's batches do) hung at exit
    (numba issue #10556, oneTBB issue #2056). Started here, the main thread runs that task itself. A layer that
    fails to start is left to fail again at the first kernel (a warning, the torch step serves)."""
    if numba is None or numba.config.DISABLE_JIT:
        return
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()  # idempotent; what numba's first parallel kernel calls
    except Exception as exc:  # an unknown or unloadable layer  # noqa: BLE001
        log.debug("numba's threading layer did not start at import: %s", one_line(exc))


if threading.current_thread() is threading.main_thread():
    launch_threads_here()

if numba is not None:

    @njit(fastmath=True, parallel=True, cache=True)
    def _products(weight, x, out):
        """out[b, i] = Σ_j weight[i, j]·x[b, j]: weight `[rows, cols]` C-contiguous, x `[batch, cols]`, out
        `[batch, rows]`; rows split over the cores, each row read from memory once for the whole batch. Rows of
        the batch go four at a time through one pass over the weight row (four independent sums: at a batch of
        8, 1.5x faster than one row's dot product after another, the same sums)."""
        rows, cols = weight.shape
        batch = x.shape[0]
        for i in prange(rows):
            w = weight[i]
            b = 0
            while b + 4 <= batch:
                x0, x1, x2, x3 = x[b], x[b + 1], x[b + 2], x[b + 3]
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for j in range(cols):
                    wj = w[j]
                    a0 += wj * x0[j]
                    a1 += wj * x1[j]
                    a2 += wj * x2[j]
                    a3 += wj * x3[j]
                out[b, i], out[b + 1, i], out[b + 2, i], out[b + 3, i] = a0, a1, a2, a3
                b += 4
            while b < batch:
                xb = x[b]
                acc = np.float32(0.0)
                for j in range(cols):
                    acc += w[j] * xb[j]
                out[b, i] = acc
                b += 1

    @njit(fastmath=True, cache=True)
    def _rms_norm(x, weight, eps, out):
        """LlamaRMSNorm of each row of x `[batch, width]` into out: weight · x / sqrt(mean(x²) + eps)."""
        for b in range(x.shape[0]):
            total = np.float32(0.0)
            for i in range(x.shape[1]):
                total += x[b, i] * x[b, i]
            scale = np.float32(1.0) / np.sqrt(total / np.float32(x.shape[1]) + eps)
            for i in range(x.shape[1]):
                out[b, i] = weight[i] * (x[b, i] * scale)

    @njit(fastmath=True, cache=True)
    def _rotate(x, start, heads, head_dim, cos, sin):
        """Rotary embedding in place over `heads` consecutive heads of each row of x `[batch, ...]` from column
        `start`, row b at its position's cos[b], sin[b] `[head_dim]`: transformers' apply_rotary_pos_emb,
        `x·cos + rotate_half(x)·sin`, rotate_half(x) = (-x2, x1)."""
        half = head_dim // 2
        for b in range(x.shape[0]):
            for h in range(heads):
                base = start + h * head_dim
                for d in range(half):
                    first = x[b, base + d]
                    second = x[b, base + d + half]
                    x[b, base + d] = first * cos[b, d] - second * sin[b, d]
                    x[b, base + d + half] = second * cos[b, d + half] + first * sin[b, d + half]

    @njit(fastmath=True, parallel=True, cache=True)
    def _attend(q, keys, values, positions, heads, head_dim, scale, out):
        """Softmax attention of each row's query over its first positions[b] + 1 cached positions, (row, head)
        pairs split over the cores. q `[batch, ≥ heads·head_dim]` (the queries first); keys, values `[batch,
        kv_heads, capacity, head_dim]` (a kv head serves heads // kv_heads query heads, grouped-query
        attention); out `[batch, heads·head_dim]`. The weighted sum of values is kept in a local array and
        divided by the softmax's total once: written into `out` position by position it ran 2.8x slower (the
        compiler cannot keep `out`, which may alias `values`, in registers)."""
        group = heads // keys.shape[1]
        for task in prange(q.shape[0] * heads):
            b = task // heads
            h = task % heads
            kv = h // group
            length = positions[b] + 1
            query = q[b, h * head_dim:(h + 1) * head_dim]
            scores = np.empty(length, np.float32)
            for t in range(length):
                key = keys[b, kv, t]
                acc = np.float32(0.0)
                for d in range(head_dim):
                    acc += query[d] * key[d]
                scores[t] = acc * scale
            top = scores.max()
            total = np.float32(0.0)
            for t in range(length):
                e = np.exp(scores[t] - top)
                scores[t] = e
                total += e
            weighted = np.zeros(head_dim, np.float32)
            for t in range(length):
                p = scores[t]
                value = values[b, kv, t]
                for d in range(head_dim):
                    weighted[d] += p * value[d]
            inv = np.float32(1.0) / total
            for d in range(head_dim):
                out[b, h * head_dim + d] = weighted[d] * inv

    @njit(fastmath=True, cache=True)
    def _decode(hidden, norm1, eps1, qkv, o, norm2, eps2, gate_up, down, keys, values, positions, cos, sin,
                heads, kv_heads, head_dim, final_norm, final_eps, head, logits):
        """One step of every row over every layer. hidden `[batch, hidden]` (each row's token embedding) is
        updated in place, logits `[batch, vocab]` written. Per-layer weights come as typed lists; keys, values
        `[layers, ≥ batch, kv_heads, capacity, head_dim]` (the first `batch` rows are the batch's) get each row's
        key and value at positions[b]; cos, sin
        `[batch, head_dim]` are the rotary embedding at those positions."""
        batch, width = hidden.shape
        normed = np.empty((batch, width), np.float32)
        projected = np.empty((batch, qkv[0].shape[0]), np.float32)
        attended = np.empty((batch, heads * head_dim), np.float32)
        residual = np.empty((batch, width), np.float32)
        gated = np.empty((batch, gate_up[0].shape[0]), np.float32)
        inter = gated.shape[1] // 2
        activated = np.empty((batch, inter), np.float32)
        n_q = heads * head_dim
        n_kv = kv_heads * head_dim
        scale = np.float32(head_dim ** -0.5)
        for i in range(len(qkv)):
            _rms_norm(hidden, norm1[i], eps1[i], normed)
            _products(qkv[i], normed, projected)
            _rotate(projected, 0, heads, head_dim, cos, sin)
            _rotate(projected, n_q, kv_heads, head_dim, cos, sin)
            for b in range(batch):
                at = positions[b]
                for g in range(kv_heads):
                    for d in range(head_dim):
                        keys[i, b, g, at, d] = projected[b, n_q + g * head_dim + d]
                        values[i, b, g, at, d] = projected[b, n_q + n_kv + g * head_dim + d]
            _attend(projected, keys[i], values[i], positions, heads, head_dim, scale, attended)
            _products(o[i], attended, residual)
            hidden += residual
            _rms_norm(hidden, norm2[i], eps2[i], normed)
            _products(gate_up[i], normed, gated)
            for b in range(batch):
                for j in range(inter):
                    g = gated[b, j]
                    activated[b, j] = g / (np.float32(1.0) + np.exp(-g)) * gated[b, inter + j]
            _products(down[i], activated, residual)
            hidden += residual
        _rms_norm(hidden, final_norm, final_eps, normed)
        _products(head, normed, logits)

if numba is not None and NUMBA_CACHE.folder is None:  # no folder can take the kernels: none is cached (numba's
    # own fallback is the install folder, beside this file)
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    for _kernel in [v for v in globals().values() if isinstance(v, Dispatcher)]:
        _kernel._cache = NullCache()


def threading_layer() -> Optional[str]:
    """The threading layer numba's parallel kernels run on ("tbb", "omp" or "workqueue"), once one ran; None
    before, and without numba."""
    if numba is None:
        return None
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def numba_problem() -> Optional[str]:
    """Why an installed numba cannot serve the step: it failed to load, or its JIT is switched off (None when it
    can, and when numba is not installed)."""
    if LOAD_ERROR:
        return LOAD_ERROR
    if numba is not None and numba.config.DISABLE_JIT:
        return "NUMBA_DISABLE_JIT is set: the step would run as Python, hundreds of times slower"
    return None


def unavailable_reason(decoder) -> Optional[str]:
    """Why `decoder` (a StaticDecoder) cannot take the compiled step (None when it can)."""
    problem = numba_problem()
    if problem:
        return problem
    if numba is None:
        return "numba is not installed"
    weight = decoder.lm_head.weight
    import torch

    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return f"the model is {str(weight.dtype).replace('torch.', '')} on {weight.device.type}, not fp32 on CPU"
    if decoder.lm_head.bias is not None:
        return "the output layer has a bias"
    if decoder.head_dim % 2 or decoder.heads % decoder.kv_heads:
        return "the heads do not split evenly"
    return None


class CpuDecodeStep:
    """The compiled step over a StaticDecoder's (stacked) weights, which it reads in place (numpy views of the
    torch tensors: no copy). Call `unavailable_reason` first; `layers` are the decoder's `_Weights`. Raises
    ValueError where a layer has biases or a weight is not contiguous."""

    def __init__(self, decoder, layers):
        from numba.typed import List

        def view(tensor):
            if not tensor.is_contiguous():  # a copy would double the memory of the weights
                raise ValueError("a weight is not contiguous")
            return tensor.detach().numpy()

        if any(w.qkv_bias is not None or w.o_bias is not None or w.gate_up_bias is not None
               or w.down_bias is not None for w in layers):
            raise ValueError("a layer has biases")
        self.decoder = decoder
        self.norm1 = List([view(w.norm1) for w in layers])
        self.eps1 = np.array([w.eps1 for w in layers], np.float32)
        self.qkv = List([view(w.qkv) for w in layers])
        self.o = List([view(w.o) for w in layers])
        self.norm2 = List([view(w.norm2) for w in layers])
        self.eps2 = np.array([w.eps2 for w in layers], np.float32)
        self.gate_up = List([view(w.gate_up) for w in layers])
        self.down = List([view(w.down) for w in layers])
        self.final_norm = view(decoder.norm.weight)
        self.final_eps = np.float32(decoder.norm.variance_epsilon)
        self.head = view(decoder.lm_head.weight)
        self.embedding = view(decoder.embed.weight)
        rope_type = getattr(decoder.rotary, "rope_type", "default")
        self._rope_changes = "dynamic" in rope_type or rope_type == "longrope"
        self._cos = self._sin = np.empty((0, decoder.head_dim), np.float32)

    @staticmethod
    def whole(tensor):
        """The C-contiguous numpy array `[layers, rows, kv_heads, capacity, head_dim]` whose first rows are
        `tensor`, sharing its memory: `tensor` itself when it is contiguous, the whole cache when it is a view
        of a cache's first rows (what `StaticDecoder.keep_rows` leaves after a row of a batch finished; the step
        then reads and writes only the first `batch` rows). None for any other layout."""
        import torch

        layers, _, kv_heads, capacity, head_dim = tensor.shape
        strides = tensor.stride()
        inner = (kv_heads * capacity * head_dim, capacity * head_dim, head_dim, 1)
        if tensor.storage_offset() or strides[1:] != inner or strides[0] % inner[0]:
            return None
        try:  # torch checks that the whole array lies within the tensor's storage
            whole = torch.as_strided(tensor, (layers, strides[0] // inner[0], kv_heads, capacity, head_dim), strides)
        except RuntimeError:
            return None
        return whole.numpy()

    def rotary_at(self, positions):
        """cos, sin `[batch, head_dim]` (numpy float32) of the decoder's rotary embedding at `positions` (`[batch]`
        int64 numpy): rows of a table of the first positions, computed by transformers' rotary module and grown by
        doubling (the same values bit for bit: each is the product of one frequency and one position). Where the
        scaling changes with the length (transformers' "dynamic" and "longrope", modeling_rope_utils
        .dynamic_rope_update), computed by the module at each step."""
        import torch

        rotary = self.decoder.rotary
        if self._rope_changes:
            cos, sin = rotary(torch.zeros(1), torch.from_numpy(positions).unsqueeze(1))
            return cos[:, 0].numpy(), sin[:, 0].numpy()
        top = int(positions.max()) + 1
        if top > len(self._cos):
            cos, sin = rotary(torch.zeros(1), torch.arange(max(top, 2 * len(self._cos), 256)).unsqueeze(0))
            self._cos, self._sin = cos[0].numpy(), sin[0].numpy()
        return self._cos[positions], self._sin[positions]

    def step(self, tokens, cache, threads: int):
        """Logits `[batch, vocab]` (numpy float32, a new array) after `tokens` (`[batch]` long tensor), row b at
        position `cache.lengths[b]`: writes each row's key and value there and advances `cache.lengths` and
        `cache.positions`. None, with nothing changed, where the cache is laid out otherwise than `whole` takes.
        Numpy and the compiled kernels only, no torch operation: between two steps that read every weight, the
        few Python operations of a step run on cold caches (~0.35 ms as torch operations)."""
        keys, values = self.whole(cache.keys), self.whole(cache.values)
        if keys is None or values is None:
            return None
        d = self.decoder
        hidden = self.embedding[tokens.numpy()]  # a copy, which the step changes in place
        positions = cache.positions.numpy()  # shares the tensor's memory
        logits = np.empty((hidden.shape[0], self.head.shape[0]), np.float32)
        with STEP_LOCK:
            cos, sin = self.rotary_at(positions)  # may grow the table
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
            _decode(hidden, self.norm1, self.eps1, self.qkv, self.o, self.norm2, self.eps2, self.gate_up,
                    self.down, keys, values, positions, cos, sin, d.heads, d.kv_heads, d.head_dim,
                    self.final_norm, self.final_eps, self.head, logits)
        positions += 1
        cache.lengths[:] = [n + 1 for n in cache.lengths]
        return logits

    def warm_up(self) -> None:
        """Compile the kernels (or load them from numba's cache) with a step over a one-position scratch cache;
        then leave `compile_marker()` so that the next start does not announce a compile."""
        import torch

        from .static_decoder import KVCache

        d = self.decoder
        shape = (len(self.qkv), 1, d.kv_heads, 1, d.head_dim)
        scratch = KVCache(torch.zeros(shape), torch.zeros(shape), [0], torch.zeros(1, dtype=torch.long))
        self.step(torch.zeros(1, dtype=torch.long), scratch, 1)
        _leave_compile_marker()


def preload() -> None:
    """Load the step's kernels from numba's cache (or compile them, the first time after an install or update)
    and numba's typed lists (~0.6 s on 2 cores even when cached: `CpuDecodeStep` builds typed lists), with one
    step of a tiny model of zeros whose arguments have the types a model's step has (numba keys a compiled kernel
    by its arguments' types, not their sizes); then leave `compile_marker()`. Run in the background while a model
    loads (`start_preload`), so that the model's own warm-up (`CpuDecodeStep.warm_up`) and its first answer find
    them loaded. Raises what numba raises (the warm-up then says it)."""
    from numba.typed import List

    width, heads, kv_heads, head_dim, inter, vocab = 4, 2, 1, 2, 4, 3

    def zeros(*shape):
        return np.zeros(shape, np.float32)

    eps = np.ones(1, np.float32)
    cache = zeros(1, 1, kv_heads, 1, head_dim)
    with STEP_LOCK:
        numba.set_num_threads(1)
        _decode(zeros(1, width), List([zeros(width)]), eps, List([zeros((heads + 2 * kv_heads) * head_dim, width)]),
                List([zeros(width, heads * head_dim)]), List([zeros(width)]), eps, List([zeros(2 * inter, width)]),
                List([zeros(width, inter)]), cache, cache.copy(), np.zeros(1, np.int64), zeros(1, head_dim),
                zeros(1, head_dim), heads, kv_heads, head_dim, zeros(width), np.float32(1.0), zeros(vocab, width),
                zeros(1, vocab))
    _leave_compile_marker()


def start_preload() -> Optional[threading.Thread]:
    """Announce a compile (`announce_compile`) and start `preload` on a thread, where numba can serve; None where
    it cannot (not installed, failed to load, JIT off). Called by `VlmPipeline.load` for a model on the CPU once
    the weights are loaded: the kernels load (or compile) beside the first image's encoding and prefill (beside
    the weights, numba's loading held the GIL that `from_pretrained` needs, and the load took 3x as long). A
    failure is only logged at DEBUG: the model's warm-up meets it again and says it. The thread is not a daemon
    (a process exiting while numba compiles aborts)."""
    if numba is None or numba_problem():
        return None
    announce_compile()

    def run() -> None:
        try:
            preload()
        except Exception as exc:  # noqa: BLE001  # said by the warm-up, which meets it again
            log.debug("preloading the CPU decode step failed: %s", one_line(exc))
        prune_cache()

    thread = threading.Thread(target=run, name="geovlm-preload-step")
    thread.start()
    return thread


def prune_cache() -> List[Path]:
    """Remove the stale kernels of GeoVLM's numba cache folder (`numba_cache.prune`: those of checkouts, worktrees
    or installs that are gone, and of earlier states of this source), said at INFO; nothing in a NUMBA_CACHE_DIR
    of the user's. Returns the files removed; a failure is only logged at DEBUG (pruning is housekeeping)."""
    if NUMBA_CACHE.folder is None or not NUMBA_CACHE.owned or numba is None:
        return []
    try:
        removed = numba_cache.prune(NUMBA_CACHE.folder)
    except Exception as exc:  # noqa: BLE001  # an OSError, or numba's cache internals (read by prune) changed
        log.debug("pruning numba's cache %s failed: %s", NUMBA_CACHE.folder, one_line(exc))
        return []
    if removed:
        log.info("removed %d stale files of the CPU decode step's kernels from %s", len(removed), NUMBA_CACHE.folder)
    return removed


def _leave_compile_marker() -> None:
    """Leave `compile_marker()` once the kernels are compiled, so that the next start does not announce one; it
    holds this file's path, which `numba_cache.prune` reads (numba's index does not name its source)."""
    marker = compile_marker()
    if marker is None:
        return
    with contextlib.suppress(OSError):  # a read-only cache: numba compiles at each start, announced each time
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(os.path.abspath(__file__), encoding="utf-8")


def compile_marker() -> Optional[Path]:
    """The file that says the kernels of this file, as it is now, were compiled (`numba_cache.marker_name`), in
    the subfolder of numba's cache folder where numba keeps them. None where nothing is cached."""
    if NUMBA_CACHE.folder is None:
        return None
    from numba.core.caching import UserProvidedCacheLocator

    folder = UserProvidedCacheLocator.get_suitable_cache_subpath(__file__)
    return Path(os.environ["NUMBA_CACHE_DIR"]) / folder / numba_cache.marker_name(Path(__file__), numba.__version__)


_ANNOUNCED = set()  # the markers whose compile this process announced: said once (`start_preload`, the decoder)


def announce_compile() -> None:
    """Warn (the command line shows warnings) that the kernels will be compiled, when they were not before: the
    first start after an install or an update waits seconds for it. Called on the loading thread, before the
    answer's first token; once per process and marker. Says first, once, where the kernels are cached when it is
    not the folder asked for (`numba_cache.choose_cache`)."""
    if NUMBA_CACHE.note and NUMBA_CACHE.note not in _ANNOUNCED:
        _ANNOUNCED.add(NUMBA_CACHE.note)
        log.warning("%s", NUMBA_CACHE.note)
    marker = compile_marker()
    if marker is None:
        return
    if not marker.exists() and marker not in _ANNOUNCED:
        _ANNOUNCED.add(marker)
        log.warning("compiling the CPU decode step, once after an install or update (a few seconds); kept in %s",
                    marker.parent.parent)
