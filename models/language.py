"""The language model of a llava-hf checkpoint: image features spliced into `inputs_embeds`, then our own
decoding loop (greedy or sampled, stop strings, streaming deltas, batches of prompts of different lengths) over
the static-cache decoder of `static_decoder` (transformers' forward for other architectures)."""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core.answer import printable_text
from .checkpoints import load_language, load_tokenizer
from .static_decoder import StaticDecoder, unsupported_reason

log = logging.getLogger(__name__)
# CUDA graphs are captured per batch size and cache capacity, the capacity rounded up to this many tokens.
GRAPH_BUCKET = 256


def pick_device(device: Optional[str] = None):
    """(device, dtype) for the language model: CUDA in bf16 (fp16 where bf16 is missing) when present, else CPU
    in fp32. `device`: None (CUDA when torch sees a GPU), "cpu", "cuda" or "cuda:N" (N a GPU torch sees).
    Raises ValueError in one line for another device type (torch's own list of device types is not shown) and
    for CUDA on a machine where torch sees no GPU (a CPU build of torch, or no driver)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device).strip().lower()
    kind, _, number = device.partition(":")
    if kind not in ("cpu", "cuda") or (number and (kind == "cpu" or not number.isdigit())):
        raise ValueError(f"the device must be cpu, cuda or cuda:N, not {device!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + (" is a CPU build" if torch.version.cuda is None else
                                                    " sees no GPU (no NVIDIA driver or no device visible)")
            raise ValueError(f"the device {device!r} was asked for but {build}: use cpu (or leave the device out)")
        count = torch.cuda.device_count()
        if number and int(number) >= count:
            raise ValueError(f"the device {device!r} was asked for but torch sees {count} GPU(s): cuda:0 to "
                             f"cuda:{count - 1}")
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


@dataclass
class DecodeSettings:
    """One sequence's sampling: at most `max_new_tokens` tokens; `temperature` 0 is greedy (argmax), above it
    softmax sampling within the nucleus `top_p` (Holtzman et al. 2020, "The Curious Case of Neural Text
    Degeneration"); text ends before the first of `stop`; `seed` None draws a random one."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: Tuple[str, ...] = ()
    seed: Optional[int] = None


@dataclass
class Decoded:
    """One sequence's outcome: the generated `token_ids` (the end-of-sequence token included when it came),
    their `text`, and `finish_reason` "stop" (end of sequence or a stop string) or "length" (max_new_tokens)."""

    token_ids: List[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    emitted: int = 0  # characters of `text` already streamed
    done: bool = False


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still become a stop string or are bytes of a character not yet whole
    (byte-fallback tokenizers decode each pending byte as one U+FFFD)."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold


class Decoding:
    """An ongoing batched generation; iterate it for per-step text deltas, read `results` afterwards."""

    def __init__(self, lm: LanguageModel, prompts, features, settings: Sequence[DecodeSettings]):
        self.lm = lm
        self.prompts = prompts
        self.features = features
        self.settings = list(settings)
        self.results = [Decoded() for _ in prompts]
        self.prefill_s = 0.0
        self.decode_s = 0.0

    def _choose(self, logits, generators) -> List[int]:
        """Each row's next token from its `[vocab]` float32 logits: argmax when greedy, else sampled."""
        import torch

        out = logits.argmax(-1).tolist()
        for row, s in enumerate(self.settings):
            if s.temperature <= 0:
                continue
            probs = torch.softmax(logits[row] / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_p, 0) - sorted_p < s.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            out[row] = int(torch.multinomial(probs / probs.sum(), 1, generator=generators[row]))
        return out

    def _update(self, row: int, token: int) -> str:
        """Record one token of `row`; return its new streamable text. This is where the engine turns tokens into
        text: a control character a model writes (a NUL, an escape; byte-fallback tokenizers can write any
        byte) becomes U+FFFD here (`core.answer.printable_text`), so no answer printed or stored carries one."""
        res, s = self.results[row], self.settings[row]
        res.token_ids.append(token)
        if token in self.lm.eos_ids:
            res.finish_reason, res.done = "stop", True
            text = printable_text(self.lm.tokenizer.decode(res.token_ids[:-1], skip_special_tokens=True))
        else:
            text = printable_text(self.lm.tokenizer.decode(res.token_ids, skip_special_tokens=True))
            cuts = [text.find(stop) for stop in s.stop if stop and stop in text]
            if cuts:
                text = text[: min(cuts)]
                res.finish_reason, res.done = "stop", True
            elif len(res.token_ids) >= s.max_new_tokens:
                res.finish_reason, res.done = "length", True
        res.text = text
        safe = len(text) if res.done else len(text) - _held_back(text, s.stop)
        delta = text[res.emitted : max(safe, res.emitted)]
        res.emitted += len(delta)
        return delta

    def _steps(self):
        """The decoding backend: the static-cache decoder where the model's architecture has one, else
        transformers' forward over a DynamicCache."""
        capacity = max(len(p) + s.max_new_tokens for p, s in zip(self.prompts, self.settings))
        if self.lm.decoder is not None and unsupported_reason(self.lm.decoder_config, capacity) is None:
            return _StaticSteps(self.lm, self.prompts, self.features, capacity)
        return _DynamicSteps(self.lm, self.prompts, self.features)

    def __iter__(self) -> Iterator[List[str]]:
        import torch

        lm = self.lm
        generators = []
        for s in self.settings:
            g = torch.Generator(device=lm.device)
            g.manual_seed(s.seed if s.seed is not None else secrets.randbits(63))
            generators.append(g)
        start = time.perf_counter()
        with torch.inference_mode():
            steps = self._steps()
            logits = steps.first()
            self.prefill_s = time.perf_counter() - start
            start = time.perf_counter()
            try:
                while True:
                    tokens = self._choose(logits, generators)
                    deltas = []
                    for row, token in enumerate(tokens):
                        if self.results[row].done:
                            tokens[row] = lm.pad_id
                            deltas.append("")
                        else:
                            deltas.append(self._update(row, token))
                    yield deltas
                    if all(r.done for r in self.results):
                        break
                    logits = steps.next(tokens, [r.done for r in self.results])
            finally:
                steps.close()
        self.decode_s = time.perf_counter() - start

    def run(self) -> List[Decoded]:
        """Decode to the end without streaming; one Decoded per prompt, in order."""
        for _ in self:
            pass
        return self.results


class _StaticSteps:
    """Logits of each step from the static-cache decoder (a CUDA graph per step on CUDA)."""

    def __init__(self, lm: LanguageModel, prompts, features, capacity: int):
        self.lm = lm
        self.rows = lm.embed_rows(prompts, features)
        decoder, batch = lm.decoder, len(prompts)
        self.graph = None
        if str(lm.device).startswith("cuda"):
            graph = decoder.graphed(batch, -(-capacity // GRAPH_BUCKET) * GRAPH_BUCKET)
            if graph is not None and not graph.busy:
                graph.busy, self.graph = True, graph
        self.cache = self.graph.cache if self.graph else decoder.new_cache(batch, capacity)
        self.batch, self.active = batch, list(range(batch))  # the cache's rows: these rows of the batch

    def first(self):
        return self.lm.decoder.prefill(self.rows, self.cache)

    def next(self, tokens: List[int], done: Sequence[bool]):
        """Logits `[batch, vocab]` of the step after `tokens`. Rows that are `done` are retired from the cache
        first (not with a CUDA graph, whose batch is fixed), so the step runs for the rest only; a retired row's
        logits are zeros."""
        import torch

        if self.graph:
            return self.graph(torch.tensor(tokens, device=self.lm.device))
        keep = [i for i, row in enumerate(self.active) if not done[row]]
        if len(keep) < len(self.active):
            self.cache = self.lm.decoder.keep_rows(self.cache, keep)
            self.active = [self.active[i] for i in keep]
        logits = self.lm.decoder.step(torch.tensor([tokens[r] for r in self.active], device=self.lm.device),
                                      self.cache)
        if len(self.active) == self.batch:
            return logits
        full = logits.new_zeros((self.batch, logits.shape[1]))
        full[self.active] = logits
        return full

    def close(self) -> None:
        if self.graph:
            self.graph.busy = False
        self.cache = None


class _DynamicSteps:
    """Logits of each step from transformers' forward over a DynamicCache (left-padded batch): the path for text
    models the static decoder does not implement."""

    def __init__(self, lm: LanguageModel, prompts, features):
        from transformers import DynamicCache

        self.lm = lm
        self.embeds, self.mask = lm.embed_batch(prompts, features)
        self.cache = DynamicCache(config=lm.decoder_config)
        self.positions = (self.mask.long().cumsum(-1) - 1).clamp(min=0)

    def _forward(self, **inputs):
        out = self.lm.model(
            attention_mask=self.mask, position_ids=self.positions, past_key_values=self.cache, use_cache=True,
            logits_to_keep=1, **inputs,
        )
        return out.logits[:, -1].float()

    def first(self):
        return self._forward(inputs_embeds=self.embeds)

    def next(self, tokens: List[int], done: Sequence[bool]):
        import torch

        step = torch.tensor(tokens, device=self.lm.device).unsqueeze(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return self._forward(input_ids=step)

    def close(self) -> None:
        self.cache = None


class LanguageModel:
    """A checkpoint's language side on one device: a llava-hf model or a MiniGPT-v2 LlamaForCausalLM.

    `image_token_id` is the prompt id that marks the image's `image_tokens` positions (the checkpoint's
    CheckpointInfo gives both)."""

    def __init__(self, model, tokenizer, device: str, image_token_id: int, image_tokens: int):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        config = model.config
        text_config = config.get_text_config()
        self.image_token_id = int(image_token_id)
        self.hidden_size = int(text_config.hidden_size)
        self.image_tokens = int(image_tokens)
        # The longest sequence the language model was built for (None when its config does not say).
        self.context_length = getattr(text_config, "max_position_embeddings", None)
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        pad = getattr(config, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else tokenizer.pad_token_id or 0)
        self.special_ids = {token: int(i) for token, i in tokenizer.get_added_vocab().items()}
        self.special_ids["<image>"] = self.image_token_id  # the profiles' image marker
        names = sorted(self.special_ids, key=len, reverse=True)
        self._specials = re.compile("(" + "|".join(re.escape(name) for name in names) + ")")
        self.decoder_config = text_config
        reason = unsupported_reason(self.decoder_config)
        self.decoder = StaticDecoder(model) if reason is None else None
        if reason:
            log.info("decoding with transformers' forward: %s", reason)

    @classmethod
    def load(cls, checkpoint, device: Optional[str] = None) -> LanguageModel:
        """The language side of a CheckpointInfo on `device` (`pick_device`), without vision weights (the ONNX
        encoder serves)."""
        device, dtype = pick_device(device)
        model = load_language(checkpoint, dtype=dtype, device=device)
        log.info("language model on %s in %s", device, str(dtype).replace("torch.", ""))
        tokenizer = load_tokenizer(checkpoint.path)
        return cls(model, tokenizer, device, checkpoint.image_token_id, checkpoint.image_tokens)

    def prompt_ids(self, parts: Sequence[Tuple[str, bool]]) -> List[int]:
        """Token ids of a prompt given as (text, is_template) parts.

        Special tokens are read in template text only; there `<image>` becomes the image's tokens. The text
        between two special tokens (template and users' text alike) is tokenized in one piece with special
        tokens taken as plain text, the first piece with the tokenizer's BOS. Around the image this is LLaVA's
        own recipe (the text on each side tokenized on its own)."""
        pieces: list = [""]  # text to tokenize (str) and special token ids (int), alternately
        for text, template in parts:
            for i, chunk in enumerate(self._specials.split(text) if template else [text]):
                if i % 2:
                    pieces += [self.special_ids[chunk], ""]
                else:
                    pieces[-1] += chunk
        ids: List[int] = []
        for k, piece in enumerate(pieces):
            if isinstance(piece, int):
                ids.extend([piece] * (self.image_tokens if piece == self.image_token_id else 1))
            else:
                tokens = self.tokenizer(piece, add_special_tokens=k == 0, split_special_tokens=True)
                ids.extend(tokens["input_ids"])
        return ids

    def embed_rows(self, prompts: Sequence[Sequence[int]], features: Sequence[Optional[np.ndarray]]) -> list:
        """One `[len(prompt), hidden]` inputs_embeds tensor per prompt, its image features (`[image_tokens,
        hidden]`, or None for a prompt without image) at its image-token positions. ValueError when the counts
        differ."""
        import torch

        embed = self.model.get_input_embeddings()
        rows = []
        for p, feats in zip(prompts, features):
            ids = torch.tensor(p, dtype=torch.long, device=self.device)
            row = embed(ids)
            slots = ids == self.image_token_id
            n = int(slots.sum())
            if feats is None:
                if n:
                    raise ValueError("a prompt has image tokens but no image features were given")
            else:
                feats = torch.as_tensor(np.asarray(feats)).reshape(-1, self.hidden_size)
                if n != len(feats):
                    raise ValueError(f"prompt has {n} image tokens but the image gives {len(feats)} features")
                row[slots] = feats.to(row.device, row.dtype)
            rows.append(row)
        return rows

    def embed_batch(self, prompts: Sequence[Sequence[int]], features: Sequence[Optional[np.ndarray]]):
        """`embed_rows` left-padded (zeros) to `[batch, width, hidden]`, with the `[batch, width]` 0/1 mask."""
        import torch

        rows = self.embed_rows(prompts, features)
        width = max(len(r) for r in rows)
        embeds = rows[0].new_zeros((len(rows), width, self.hidden_size))
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            embeds[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
        return embeds, mask

    def decoding(self, prompts, features, settings: Sequence[DecodeSettings]) -> Decoding:
        """A batched generation of `prompts` (token id lists) with their image `features` (`[image_tokens,
        hidden]` each, or None; see `embed_rows`), one DecodeSettings per prompt."""
        return Decoding(self, prompts, features, settings)
