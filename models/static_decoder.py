"""The decoding half of a Llama-family language model over a preallocated (static) KV cache.

transformers' `generate` grows a DynamicCache with `torch.cat` at every step and rebuilds the attention mask;
here each sequence of a batch owns a row of one cache allocated once (`[layers, batch, kv_heads, capacity,
head_dim]`), a step writes one key/value per row in place and attends over a view of the filled part. Rows keep
their own lengths, so a batch of prompts of different lengths is prefilled packed (no padding tokens: the linear
layers see only real tokens, attention runs per row) and decoded together. On CUDA the decode step is captured
once per (batch, capacity) as a CUDA graph and replayed, as gpt-fast and vLLM do.

The arithmetic is transformers' own: its RMSNorm, rotary embedding, projections and MLP modules are called, and
attention is `scaled_dot_product_attention` as in its `sdpa` implementation (transformers
models/llama/modeling_llama.py), so greedy tokens equal `generate`'s in fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

# Text models whose decoder layer is Llama's (pre-norm, rotary, gated MLP); others use transformers' forward.
ARCHITECTURES = ("llama", "mistral")


def unsupported_reason(text_config, capacity: Optional[int] = None) -> Optional[str]:
    """Why this decoder cannot run `text_config` (None when it can); `capacity` is the longest sequence."""
    kind = getattr(text_config, "model_type", None)
    if kind not in ARCHITECTURES:
        return f"text model {kind!r} is not one of {', '.join(ARCHITECTURES)}"
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
        self._graphs: Dict[Tuple[int, int], _GraphedStep] = {}

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

    def _logits(self, hidden):
        return self.lm_head(self.norm(hidden)).float()

    def prefill(self, rows: Sequence, cache: KVCache):
        """Run each row's prompt embeddings (`[length, hidden]`) packed into one sequence; fill `cache` rows
        from position 0. Returns `[batch, vocab]` float32 logits of each row's last prompt token."""
        import torch
        from torch.nn.functional import scaled_dot_product_attention as sdpa
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        if self.window and max(len(r) for r in rows) > self.window:
            raise ValueError(f"a prompt is longer than the sliding window of {self.window} tokens")
        hidden = torch.cat(list(rows)).unsqueeze(0)  # [1, tokens, hidden]
        bounds, start = [], 0
        for r in rows:
            bounds.append((start, start + len(r)))
            start += len(r)
        device = hidden.device
        positions = torch.cat([torch.arange(e - s, device=device) for s, e in bounds]).unsqueeze(0)
        cos, sin = self.rotary(hidden, positions)
        total = hidden.shape[1]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(1, total, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, total, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(1, total, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            outs = []
            for b, (s, e) in enumerate(bounds):
                cache.keys[i, b, :, : e - s] = k[0, :, s:e]
                cache.values[i, b, :, : e - s] = v[0, :, s:e]
                outs.append(
                    sdpa(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=e - s > 1, scale=self.scale,
                         enable_gqa=self.gqa)
                )
            out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(1, total, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
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
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        batch = tokens.shape[0]
        pos = cache.positions
        hidden = self.embed(tokens).unsqueeze(1)  # [batch, 1, hidden]
        cos, sin = self.rotary(hidden, pos.unsqueeze(1))
        # Rows of one length (batch 1 always) attend over the same span unmasked and are written as one slice.
        same = cache.lengths[0] if not full_span and len(set(cache.lengths)) == 1 else None
        span = cache.capacity if full_span else max(cache.lengths) + 1
        mask = rows = None
        if same is None:
            mask = (torch.arange(span, device=pos.device).unsqueeze(0) <= pos.unsqueeze(1)).view(batch, 1, 1, span)
            rows = torch.arange(batch, device=pos.device)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys, values = cache.keys[i], cache.values[i]
            if same is None:
                keys[rows, :, pos] = k[:, :, 0]
                values[rows, :, pos] = v[:, :, 0]
            else:
                keys[:, :, same : same + 1] = k
                values[:, :, same : same + 1] = v
            out = sdpa(q, keys[:, :, :span], values[:, :, :span], attn_mask=mask, scale=self.scale,
                       enable_gqa=self.gqa)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
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
