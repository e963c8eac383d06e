"""A whole decode step of a Llama-family decoder, fp32, on CPU, compiled with numba.

A decode step is memory-bound: it reads every weight once and, at batch 1, each product is a matrix-vector
product. Run as torch operations, a step of the benchmark's 12-layer decoder is ~360 small operations; each pays
torch's dispatch, and the products run on oneDNN's matrix-vector kernel, which reads 61-72 % of the rate a plain
sum of the same bytes reads (`bench/bench_kernels.py`). Here the step is one compiled function (numba, LLVM):
per layer RMSNorm, the stacked q/k/v product, rotary embedding, the key/value write into the static cache,
attention, the output product, RMSNorm, the stacked gate/up product, SiLU and the down product; the products
(each weight row read once for every row of the batch) and the attention are split over the cores (`prange`,
numba's OpenMP threading layer where present), the rest runs on one core between them. Rows of a batch keep
their own positions (a ragged batch). The arithmetic is transformers' Llama (models/llama/modeling_llama.py:
LlamaRMSNorm in fp32, `apply_rotary_pos_emb`, softmax attention scaled by head_dim^-0.5, `down(silu(gate) *
up)`), with sums in a different order (vectorised, fastmath): logits agree with the torch step's to 1e-5 and
greedy tokens equal `generate`'s (tests/test_cpu_decode_step.py, tests/test_models_generation.py).

The kernels are compiled on first use and cached on disk by numba (`cache=True`) in GeoVLM's cache folder
(`$GEOVLM_CACHE/numba`, else ~/.cache/geovlm/numba; a NUMBA_CACHE_DIR of the user's wins), so a read-only install
folder still caches; `CpuDecodeStep.warm_up` compiles or loads them in the background while the rest of the
model loads. Where numba is missing, or the model is not fp32 on CPU, or has biases, and for a batch whose
cache is a view (after a row finished), the torch step serves (`unavailable_reason`, `CpuDecodeStep.accepts`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Optional

from .file_hashes import cache_dir

log = logging.getLogger(__name__)
os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir() / "numba"))  # read when numba loads, just below
LOAD_ERROR: Optional[str] = None  # why an installed numba did not load
try:
    import numba
    import numpy as np
    from numba import njit, prange
except ImportError:  # an engine without numba decodes with the torch step
    numba = None
except Exception as exc:  # numba refuses its configuration, e.g. NUMBA_NUM_THREADS=0  # noqa: BLE001
    numba = None
    LOAD_ERROR = f"numba failed to load: {exc}"

if numba is not None:

    @njit(fastmath=True, parallel=True, cache=True)
    def _products(weight, x, out):
        """out[b, i] = Σ_j weight[i, j]·x[b, j]: weight `[rows, cols]` C-contiguous, x `[batch, cols]`, out
        `[batch, rows]`; rows split over the cores, each row read from memory once for the whole batch."""
        rows, cols = weight.shape
        for i in prange(rows):
            for b in range(x.shape[0]):
                acc = np.float32(0.0)
                for j in range(cols):
                    acc += weight[i, j] * x[b, j]
                out[b, i] = acc

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
        attention); out `[batch, heads·head_dim]`."""
        group = heads // keys.shape[1]
        for task in prange(q.shape[0] * heads):
            b = task // heads
            h = task % heads
            kv = h // group
            length = positions[b] + 1
            base = h * head_dim
            scores = np.empty(length, np.float32)
            top = np.float32(-np.inf)
            for t in range(length):
                acc = np.float32(0.0)
                for d in range(head_dim):
                    acc += q[b, base + d] * keys[b, kv, t, d]
                acc *= scale
                scores[t] = acc
                top = max(top, acc)
            total = np.float32(0.0)
            for t in range(length):
                e = np.exp(scores[t] - top)
                scores[t] = e
                total += e
            for d in range(head_dim):
                out[b, base + d] = 0.0
            for t in range(length):
                p = scores[t] / total
                for d in range(head_dim):
                    out[b, base + d] += p * values[b, kv, t, d]

    @njit(fastmath=True, cache=True)
    def _decode(hidden, norm1, eps1, qkv, o, norm2, eps2, gate_up, down, keys, values, positions, cos, sin,
                heads, kv_heads, head_dim, final_norm, final_eps, head, logits):
        """One step of every row over every layer. hidden `[batch, hidden]` (each row's token embedding) is
        updated in place, logits `[batch, vocab]` written. Per-layer weights come as typed lists; keys, values
        `[layers, batch, kv_heads, capacity, head_dim]` get each row's key and value at positions[b]; cos, sin
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
        self._lock = threading.Lock()  # one step at a time: numba's workqueue layer must not be entered twice

    @staticmethod
    def accepts(cache) -> bool:
        """Whether `cache` (a KVCache) is contiguous, what the compiled step writes into: a batch's cache until
        a row is retired (`StaticDecoder.keep_rows` leaves a view of its first rows)."""
        return cache.keys.is_contiguous() and cache.values.is_contiguous()

    def __call__(self, hidden, cos, sin, cache, threads: int):
        """Logits `[batch, vocab]` (numpy float32, a new array) after the tokens whose embeddings are `hidden`
        (`[batch, hidden]` float32 numpy, changed in place), row b at position `cache.lengths[b]`; `cos`, `sin`
        `[batch, head_dim]` are those positions' rotary embedding (transformers' rotary module, unfolded).
        Writes each row's key and value there."""
        d = self.decoder
        logits = np.empty((hidden.shape[0], self.head.shape[0]), np.float32)
        positions = np.asarray(cache.lengths, np.int64)
        with self._lock:
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
            _decode(hidden, self.norm1, self.eps1, self.qkv, self.o, self.norm2, self.eps2, self.gate_up,
                    self.down, cache.keys.numpy(), cache.values.numpy(), positions, cos, sin, d.heads,
                    d.kv_heads, d.head_dim, self.final_norm, self.final_eps, self.head, logits)
        return logits

    def warm_up(self) -> None:
        """Compile the kernels (or load them from numba's cache) with a step over a one-position scratch cache;
        then leave `compile_marker()` so that the next start does not announce a compile."""
        import torch

        from .static_decoder import KVCache

        d = self.decoder
        shape = (len(self.qkv), 1, d.kv_heads, 1, d.head_dim)
        scratch = KVCache(torch.zeros(shape), torch.zeros(shape), [0], torch.zeros(1, dtype=torch.long))
        ones = np.ones((1, d.head_dim), np.float32)
        self(np.zeros((1, self.final_norm.shape[0]), np.float32), ones, ones * 0, scratch, 1)
        marker = compile_marker()
        with contextlib.suppress(OSError):  # a read-only cache: numba compiles at each start, announced each time
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()


def compile_marker() -> Path:
    """The file in numba's cache folder that says the kernels of this file, as it is now, were compiled: keyed as
    numba keys its cache (this file's size and mtime) and by numba's version."""
    source = Path(__file__).stat()
    name = f"geovlm-decode-step-{numba.__version__}-{source.st_size}-{int(source.st_mtime)}.done"
    return Path(os.environ["NUMBA_CACHE_DIR"]) / name


def announce_compile() -> None:
    """Warn (the command line shows warnings) that the kernels will be compiled, when they were not before: the
    first start after an install or an update waits seconds for it. Called on the loading thread, before the
    answer's first token."""
    marker = compile_marker()
    if not marker.exists():
        log.warning("compiling the CPU decode step, once after an install or update (a few seconds); kept in %s",
                    marker.parent)
