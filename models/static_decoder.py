"""The decoding half of a Llama-family language model over a preallocated (static) KV cache.

transformers' `generate` grows a DynamicCache with `torch.cat` at every step and rebuilds the attention mask;
here each sequence of a batch owns a row of one cache allocated once (`[layers, batch, kv_heads, capacity,
head_dim]`), a step writes one key/value per row in place and attends over a view of the filled part. Rows keep
their own lengths, so a batch of prompts of different lengths is prefilled packed (no padding tokens: the linear
layers see only real tokens, attention runs per row) and decoded together. On CUDA the decode step is captured
once per (batch, capacity) as a CUDA graph and replayed, as gpt-fast and vLLM do.

The query/key/value projections and the MLP's gate/up projections are stacked at load into one matrix each (the
model's parameters become views of the stacks: one copy, held in memory rather than mapped from the file): a step
makes 4 matrix products per layer instead of 7, which pays on CPU, where each product's thread fork/join is a
visible share of a step, and on GPU (fewer, larger kernels). On CPU the products run on oneDNN (`pick_linear`);
an fp32 decode step on CPU runs instead as one function compiled with numba (cpu_decode_step.py).
The arithmetic is otherwise transformers' (its RMSNorm and rotary embedding, attention by
`scaled_dot_product_attention` as in its `sdpa` implementation, transformers models/llama/modeling_llama.py), and
greedy tokens equal `generate`'s in fp32 (a test, batch 1 and a ragged batch of 8).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from . import cpu_decode_step

log = logging.getLogger(__name__)

# Text models whose decoder layer is Llama's (pre-norm, rotary, gated MLP); others use transformers' forward.
ARCHITECTURES = ("llama", "mistral")


def unsupported_reason(text_config, capacity: Optional[int] = None) -> Optional[str]:
    """Why this decoder cannot run `text_config` (None when it can); `capacity` is the longest sequence."""
    kind = getattr(text_config, "model_type", None)
    if kind not in ARCHITECTURES:
        return f"text model {kind!r} is not one of {', '.join(ARCHITECTURES)}"
    if getattr(text_config, "hidden_act", "silu") != "silu":
        return f"the MLP's activation is {text_config.hidden_act!r}, not SiLU"
    window = getattr(text_config, "sliding_window", None)
    if window and capacity and capacity > window:
        return f"a sequence of {capacity} tokens exceeds the sliding window of {window}"
    return None


@dataclass
class KVCache:
    """Keys and values of every layer for `batch` sequences: `[layers, batch, kv_heads, capacity, head_dim]`.
    `lengths[b]` is how many positions row b holds; `positions` is the same as a device tensor."""

    keys: object
    values: object
    lengths: List[int]
    positions: object

    @property
    def capacity(self) -> int:
        """Positions each row can hold."""
        return int(self.keys.shape[3])


class StaticDecoder:
    """Prefill and decode steps of a Llama-family language model (a llava-hf model's, or a bare causal LM).

    Shapes: prefill takes one `[length, hidden]` embedding tensor per row; a step takes `[batch]` token ids; both
    return `[batch, vocab]` logits of each row's last position. Raises ValueError for an architecture it does not
    implement (see `unsupported_reason`)."""

    def __init__(self, model):
        # a LlavaForConditionalGeneration's text model, or a bare *ForCausalLM's (MiniGPT-v2's LLaMA)
        text = getattr(model.model, "language_model", model.model)
        config = text.config
        reason = unsupported_reason(config)
        if reason:
            raise ValueError(reason)
        self.model = model
        self.embed = text.embed_tokens
        self.norm = text.norm
        self.rotary = text.rotary_emb
        self.lm_head = model.lm_head
        self.layers = list(text.layers[: config.num_hidden_layers])
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scale = self.head_dim**-0.5
        self.gqa = self.kv_heads != self.heads
        self.window = getattr(config, "sliding_window", None)
        self.linear, self.kernel = pick_linear(self.lm_head.weight)
        # Decode steps on CPU in fp32 run as one compiled function (cpu_decode_step), built and compiled in the
        # background after the stacking; `step_kernel` says which step serves.
        self.compiled_step_reason = cpu_decode_step.unavailable_reason(self)
        self._compiled: Optional[cpu_decode_step.CpuDecodeStep] = None
        if self.compiled_step_reason is None:
            cpu_decode_step.announce_compile()
        self._graphs: Dict[Tuple[int, int], _GraphedStep] = {}
        # Each layer's tensors, called through torch.nn.functional (a decode step is a few hundred small
        # operations; module calls and transformers' seven-operation RMSNorm add up). Stacking copies most of the
        # weights (it reads them from the file for the first time): it runs in the background, beside the rest
        # of the load and the first image's encoding, and the first prefill or step waits for it.
        self._weights: Optional[List[_Weights]] = None
        self._stacking = threading.Thread(target=self._stack, name="geovlm-stack-weights")  # not a daemon:
        # a process exiting while torch copies would abort (as onnxruntime's session build did, encoder_runtime)
        self._stack_error: Optional[BaseException] = None
        self._stacking.start()

    def _stack(self) -> None:
        try:
            self._weights = [_layer_weights(layer) for layer in self.layers]
        except BaseException as exc:  # handed to the thread that needs the weights  # noqa: BLE001
            self._stack_error = exc
            return
        # numba installed but not serving (it failed to load or compile, or its JIT is off) is worth a warning;
        # no numba, a GPU or bf16 model, or an architecture it does not take is the expected torch step
        noticeable = cpu_decode_step.numba_problem() is not None
        if self.compiled_step_reason is None:
            try:
                compiled = cpu_decode_step.CpuDecodeStep(self, self._weights)
            except ValueError as exc:  # biases, a weight that is not contiguous
                self.compiled_step_reason = str(exc)
            else:
                try:
                    compiled.warm_up()
                    self._compiled = compiled
                except Exception as exc:  # a compiler failure must leave the torch step serving  # noqa: BLE001
                    reason = cpu_decode_step.one_line(exc)
                    self.compiled_step_reason, noticeable = f"compiling it failed: {reason}", True
        if self.compiled_step_reason:
            log.log(logging.WARNING if noticeable else logging.INFO,
                    "decode steps run as torch operations: the compiled CPU step is unavailable (%s)",
                    self.compiled_step_reason)

    @property
    def step_kernel(self) -> str:
        """What runs a decode step: "numba" (the compiled CPU step) or the linear kernel's name."""
        self._stacking.join()  # the stacking thread compiles the step after the weights are stacked
        return "numba" if self._compiled is not None else self.kernel

    @property
    def weights(self) -> List[_Weights]:
        """Each layer's tensors (`_Weights`), once the background stacking is done; re-raises its error."""
        if self._weights is None:
            self._stacking.join()
            if self._stack_error is not None:
                raise RuntimeError(f"stacking the language model's projections failed: {self._stack_error}") \
                    from self._stack_error
        return self._weights

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty cache for `batch` rows of `capacity` tokens, zeroed: a masked position must hold a finite value,
        since attention multiplies its zero weight by it."""
        import torch

        weight = self.lm_head.weight
        shape = (len(self.layers), batch, self.kv_heads, capacity, self.head_dim)
        keys = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        values = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        positions = torch.zeros(batch, dtype=torch.long, device=weight.device)
        return KVCache(keys, values, [0] * batch, positions)

    @staticmethod
    def keep_rows(cache: KVCache, keep: Sequence[int]) -> KVCache:
        """`cache` with only the rows `keep` (ascending row indices), in that order: each kept row's filled
        positions are moved down in place, one row at a time (no copy of the whole cache), and the returned cache
        is a view of the first `len(keep)` rows. Retiring finished rows this way keeps a batch's later steps from
        attending, and writing, for sequences that are done."""
        for j, row in enumerate(keep):
            if j != row:
                n = cache.lengths[row]
                cache.keys[:, j, :, :n].copy_(cache.keys[:, row, :, :n])
                cache.values[:, j, :, :n].copy_(cache.values[:, row, :, :n])
        count = len(keep)
        lengths = [cache.lengths[row] for row in keep]
        positions = cache.positions[list(keep)].clone()
        return KVCache(cache.keys[:, :count], cache.values[:, :count], lengths, positions)

    def _logits(self, hidden):
        normed = _rms_norm(hidden, self.norm.weight, self.norm.variance_epsilon)
        return self.linear(normed, self.lm_head.weight, self.lm_head.bias).float()

    def _qkv(self, w, x, batch: int, length: int, cos, sin):
        """Queries, keys, values `[batch, heads, length, head_dim]` of normed `x`, rotary applied."""
        shape = (batch, length, -1, self.head_dim)
        n_q, n_k, n_v = w.splits
        qk, v = self.linear(x, w.qkv, w.qkv_bias).split((n_q + n_k, n_v), dim=-1)
        # queries and keys sit side by side in the stacked output: rotated together, in one pass
        q, k = _rotate(qk.view(shape), cos, sin).split((n_q // self.head_dim, n_k // self.head_dim), dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.view(shape).transpose(1, 2)

    def _mlp(self, w, hidden):
        from torch.nn.functional import silu

        gate, up = self.linear(_rms_norm(hidden, w.norm2, w.eps2), w.gate_up, w.gate_up_bias).chunk(2, dim=-1)
        return self.linear(silu(gate) * up, w.down, w.down_bias)

    def prefill(self, rows: Sequence, cache: KVCache):
        """Run each row's prompt embeddings (`[length, hidden]`) packed into one sequence; fill `cache` rows
        from position 0. Returns `[batch, vocab]` float32 logits of each row's last prompt token. ValueError for a
        prompt longer than the model's sliding window."""
        import torch
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        if self.window and max(len(r) for r in rows) > self.window:
            raise ValueError(f"a prompt is longer than the sliding window of {self.window} tokens")
        hidden = torch.cat(list(rows)).unsqueeze(0)  # [1, tokens, hidden]
        bounds, start = [], 0
        for r in rows:
            bounds.append((start, start + len(r)))
            start += len(r)
        device = hidden.device
        positions = torch.cat([torch.arange(e - s, device=device) for s, e in bounds]).unsqueeze(0)
        cos, sin = _rotary(self.rotary, hidden, positions)
        total = hidden.shape[1]
        for i, w in enumerate(self.weights):
            q, k, v = self._qkv(w, _rms_norm(hidden, w.norm1, w.eps1), 1, total, cos, sin)
            outs = []
            for b, (s, e) in enumerate(bounds):
                cache.keys[i, b, :, : e - s] = k[0, :, s:e]
                cache.values[i, b, :, : e - s] = v[0, :, s:e]
                outs.append(
                    sdpa(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=e - s > 1, scale=self.scale,
                         enable_gqa=self.gqa)
                )
            out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            hidden = hidden + self.linear(out.transpose(1, 2).reshape(1, total, -1), w.o, w.o_bias)
            hidden = hidden + self._mlp(w, hidden)
        cache.lengths[:] = [e - s for s, e in bounds]
        cache.positions.copy_(torch.tensor(cache.lengths, device=device))
        last = torch.tensor([e - 1 for _, e in bounds], device=device)
        return self._logits(hidden[0, last])

    def step(self, tokens, cache: KVCache, full_span: bool = False):
        """One decode step: `tokens` `[batch]` long (the token each row just chose) are written at each row's
        next position. Attends over the filled part of the cache (`full_span`: over all of it, masked, for a
        CUDA graph). Returns `[batch, vocab]` float32 logits; advances `cache.positions` (and `lengths`)."""
        import torch
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        # a prefill needs only the weights; a step waits for the compiled step too
        if self.step_kernel == "numba" and not full_span:
            logits = self._compiled.step(tokens, cache, torch.get_num_threads())
            if logits is not None:  # else a cache laid out otherwise: the torch step below
                return torch.from_numpy(logits)
        batch = tokens.shape[0]
        pos = cache.positions
        hidden = self.embed(tokens).unsqueeze(1)  # [batch, 1, hidden]
        layers = self.weights
        cos, sin = _rotary(self.rotary, hidden, pos.unsqueeze(1))
        # Rows of one length (batch 1 always) attend over the same span unmasked and are written as one slice.
        same = cache.lengths[0] if not full_span and len(set(cache.lengths)) == 1 else None
        span = cache.capacity if full_span else max(cache.lengths) + 1
        mask = rows = None
        if same is None:
            mask = (torch.arange(span, device=pos.device).unsqueeze(0) <= pos.unsqueeze(1)).view(batch, 1, 1, span)
            rows = torch.arange(batch, device=pos.device)
        for i, w in enumerate(layers):
            q, k, v = self._qkv(w, _rms_norm(hidden, w.norm1, w.eps1), batch, 1, cos, sin)
            keys, values = cache.keys[i], cache.values[i]
            if same is None:
                keys[rows, :, pos] = k[:, :, 0]
                values[rows, :, pos] = v[:, :, 0]
            else:
                keys[:, :, same : same + 1] = k
                values[:, :, same : same + 1] = v
            out = sdpa(q, keys[:, :, :span], values[:, :, :span], attn_mask=mask, scale=self.scale,
                       enable_gqa=self.gqa)
            hidden = hidden + self.linear(out.transpose(1, 2).reshape(batch, 1, -1), w.o, w.o_bias)
            hidden = hidden + self._mlp(w, hidden)
        pos += 1
        cache.lengths[:] = [n + 1 for n in cache.lengths]
        return self._logits(hidden[:, 0])

    def graphed(self, batch: int, capacity: int) -> Optional[_GraphedStep]:
        """The CUDA-graph decode step for `batch` rows of `capacity` tokens (captured on first use; None where
        capture fails, with a warning: the eager step then serves)."""
        key = (batch, capacity)
        if key not in self._graphs:
            try:
                self._graphs[key] = _GraphedStep(self, batch, capacity)
            except RuntimeError as exc:  # capture refused by this device or torch build
                log.warning("CUDA graph capture failed (%s); decoding without graphs", exc)
                self._graphs[key] = None
        return self._graphs[key]


def pick_linear(weight):
    """The linear-layer kernel for weights like `weight` (`y = x·Wᵀ + b`, x `[..., in]`, W `[out, in]`) and its
    name: oneDNN's on CPU, torch's `linear` elsewhere.

    On CPU torch's `linear` calls MKL, whose single-vector product (a decode step at batch 1) runs on one thread
    and, on the AMD EPYC cores measured (`make bench`), reads 13 GB/s where oneDNN's reads 22 GB/s; oneDNN is
    also faster for prefill-sized products. The kernel is the one torch's inductor compiles CPU linear layers to
    (`torch.ops.mkldnn._linear_pointwise`, torch/_inductor/mkldnn_ir.py); it is checked against `linear` on a
    small product first (a strided bias included) and not used where it is missing or disagrees (rounding
    differs, ~1e-6 relative)."""
    import torch
    from torch.nn.functional import linear

    onednn = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if (weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16) or onednn is None
            or not torch.backends.mkldnn.is_available()):
        return linear, "torch"

    def onednn_linear(x, w, b=None):
        # the operator reads a bias as contiguous whatever its strides: a strided view gives wrong sums
        return onednn(x, w, b if b is None else b.contiguous(), "none", [], "")

    probe_x = torch.linspace(-1, 1, 3 * 16, dtype=weight.dtype).view(1, 3, 16)
    probe_w = torch.linspace(1, -1, 5 * 16, dtype=weight.dtype).view(5, 16)
    try:
        with torch.inference_mode():
            bias = probe_w[:, 0]
            agree = torch.allclose(onednn_linear(probe_x, probe_w, bias), linear(probe_x, probe_w, bias),
                                   rtol=1e-2, atol=1e-3)
    except RuntimeError as exc:  # an operator this build registers but cannot run
        log.info("oneDNN linear unavailable (%s); using torch's linear", exc)
        return linear, "torch"
    return (onednn_linear, "onednn") if agree else (linear, "torch")


@dataclass
class _Weights:
    """One decoder layer's tensors. `qkv` is the query, key and value projections stacked (`[heads·head_dim +
    2·kv_heads·head_dim, hidden]`) and `gate_up` the MLP's gate and up projections (`[2·intermediate, hidden]`):
    a step makes 4 matrix products per layer instead of 7 (vLLM's QKVParallelLinear and
    MergedColumnParallelLinear stack them the same way). `splits` are the q, k, v output widths."""

    norm1: object
    eps1: float
    qkv: object
    qkv_bias: object
    splits: Tuple[int, int, int]
    o: object
    o_bias: object
    norm2: object
    eps2: float
    gate_up: object
    gate_up_bias: object
    down: object
    down_bias: object


def _stacked(modules):
    """(weight, bias) of `modules`' linear layers stacked along the output dimension; each module's parameters
    are then made views of the stack, so the model holds one copy (its own forward, used by the reference path,
    reads the same numbers). A missing bias stacks as zeros; no bias at all gives None."""
    import torch

    weight = torch.cat([m.weight.detach() for m in modules])
    bias = None
    if any(m.bias is not None for m in modules):
        bias = torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(m.weight.shape[0])
                          for m in modules])
    start = 0
    for m in modules:
        end = start + m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start:end], requires_grad=False)
        if m.bias is not None:
            m.bias = torch.nn.Parameter(bias[start:end], requires_grad=False)
        start = end
    return weight, bias


def _layer_weights(layer) -> _Weights:
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    splits = tuple(int(m.weight.shape[0]) for m in projections)
    qkv, qkv_bias = _stacked(projections)
    gate_up, gate_up_bias = _stacked((mlp.gate_proj, mlp.up_proj))
    return _Weights(
        layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon, qkv, qkv_bias, splits,
        attn.o_proj.weight, attn.o_proj.bias,
        layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
        gate_up, gate_up_bias, mlp.down_proj.weight, mlp.down_proj.bias,
    )


def _rms_norm(x, weight, eps: float):
    """transformers' LlamaRMSNorm (`weight * x / sqrt(mean(x²) + eps)`, computed in fp32) as one operation."""
    from torch.nn.functional import rms_norm

    if x.dtype == weight.dtype:
        return rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _rotary(rotary, hidden, positions):
    """cos and sin `[batch, length, 1, head_dim]` of the rotary embedding at `positions`, the sign of
    rotate_half folded into sin: `x·cos + swap_halves(x)·sin` is transformers' apply_rotary_pos_emb
    (`x·cos + cat(-x2, x1)·sin`) to the bit, in fewer operations."""
    import torch

    cos, sin = rotary(hidden, positions)
    half = sin.shape[-1] // 2
    sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return cos.unsqueeze(2), sin.unsqueeze(2)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    swapped = x.unflatten(-1, (2, half)).flip(-2).flatten(-2)
    return x * cos + swapped * sin


class _GraphedStep:
    """A decode step captured as one CUDA graph over its own cache: replay after copying the step's tokens and
    positions into static buffers (torch.cuda.CUDAGraph; the recipe of PyTorch's CUDA graphs notes)."""

    def __init__(self, decoder: StaticDecoder, batch: int, capacity: int):
        import torch

        self.cache = decoder.new_cache(batch, capacity)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=self.cache.keys.device)
        self.busy = False
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up outside the graph, as the capture requires
                self.cache.positions.zero_()
                decoder.step(self.tokens, self.cache, full_span=True)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        self.cache.positions.zero_()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.logits = decoder.step(self.tokens, self.cache, full_span=True)
        self.cache.positions.zero_()
        self.cache.lengths[:] = [0] * batch

    def __call__(self, tokens):
        """Replay for `tokens` `[batch]`; positions advance as in `StaticDecoder.step`."""
        self.tokens.copy_(tokens)
        self.graph.replay()  # the captured step advanced positions on the device in place
        self.cache.lengths[:] = [n + 1 for n in self.cache.lengths]
        return self.logits
