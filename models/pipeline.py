"""The engine-facing API: one image plus a conversation in, the model's answer out.

    pipe = VlmPipeline.load("models/geochat-7b-hf")
    [result] = pipe.generate_batch([GenRequest(image, [("user", "[grounding]Describe the image")])])
    for delta in pipe.stream(request): ...   # the last item is a StreamDone ("" carrying the GenResult)

The image given is the exact image whose pixels the client georeferences: the preprocessing is
core.georef.fit_plan's geometry, so boxes parsed against `image.shape` land where the model saw them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core.cache_paths import cache_dir
from ..core.georef import fit_plan
from ..core.profiles import Profile, get_profile
from . import cpu_decode_step
from .checkpoints import CheckpointInfo, as_checkpoint
from .encoder_runtime import DEFAULT_PROVIDERS, EncodingCache, OnnxEncoder, check_providers
from .language import DecodeSettings, LanguageModel, pick_device
from .preprocess import check_rgb, fit_image, normalise
from .static_decoder import unsupported_reason

log = logging.getLogger(__name__)
_SLOT = "\x00"  # stands for the user's text while the prompt template is cut around it
LOAD_WAIT_SHOWN_S = 0.005  # a wait for the background loading this long or longer is reported as "load"


@dataclass
class GenRequest:
    """One question about one image, with its sampling options (see DecodeSettings)."""

    image: np.ndarray  # HxWx3 uint8 RGB, the exact image whose pixels the client georeferences
    messages: list  # [("user", text), ("assistant", text), ("user", text), ...]; the image is in the first turn
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple = ()  # extra stop strings (the profile's are always used)
    seed: Optional[int] = None
    prompt_ids: Optional[List[int]] = None  # the tokenised prompt when the caller has it (the server tokenises
    # off the batching worker); None: made from `messages`


@dataclass
class GenResult:
    """One answer: its `text`, the number of generated `tokens`, why generation ended (`finish_reason`), the
    seconds of each phase (`timings`) and the prompt's length in tokens (`prompt_tokens`)."""

    text: str
    tokens: int
    finish_reason: str  # "stop" | "length"
    timings: dict = field(default_factory=dict)  # seconds: preprocess, encode, prefill, decode, and "load" when
    # the answer waited for the model's background loading (the first answer after a load, `LOAD_WAIT_SHOWN_S`)
    prompt_tokens: int = 0  # the prompt's length, the image's tokens included


class StreamDone(str):
    """The last item of `VlmPipeline.stream`: an empty string that carries the finished GenResult."""

    result: GenResult

    def __new__(cls, result: GenResult):
        done = super().__new__(cls, "")
        done.result = result
        return done


def ensure_encoder(model_dir, family: Optional[str] = None, model=None, fp16: bool = False) -> Path:
    """The ONNX encoder of a checkpoint (a folder or its CheckpointInfo), exported on first use next to it (or in
    the cache if read-only); `model` is its loaded vision model when the caller has one; `fp16`: the half-precision
    graph (for GPU providers; ExportError when it fails its parity gate). The file name holds what the encoder's
    metadata bakes in: the vision weights, the family and its fit, the precision."""
    checkpoint = as_checkpoint(model_dir, family)
    family = checkpoint.family
    precision = "float16" if fp16 else "float32"
    name = f"encoder-{checkpoint.encoder_hash[:16]}-{family}-{get_profile(family).fit}-{precision}.onnx"
    for folder in (checkpoint.path, cache_dir() / "encoders"):
        if (folder / name).is_file():
            return folder / name
    from .encoder_export import export_encoder

    folder = checkpoint.path if os.access(checkpoint.path, os.W_OK) else cache_dir() / "encoders"
    report = export_encoder(checkpoint, folder / name, model=model, fp16=fp16)
    log.info(
        "exported the vision encoder to %s (max abs diff %.2e)",
        report.path,
        max(report.max_abs_diff.values()),
    )
    return report.path


def gpu_provider(providers: Optional[Sequence[str]] = None) -> bool:
    """Whether onnxruntime would run the encoder on a GPU (CUDA or TensorRT): the first of `providers` (the
    runtime's default order when None) that this onnxruntime build has."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    first = next((p for p in (providers or DEFAULT_PROVIDERS) if p in available), "CPUExecutionProvider")
    return first in ("CUDAExecutionProvider", "TensorrtExecutionProvider")


ENCODER_PRECISIONS = ("fp32", "int8")


def _ensure_encoder_for(checkpoint, providers, precision: str = "fp32") -> Path:
    """The fp16 export where a GPU provider runs it and it passes the parity gate, else the fp32 one; with
    `precision` "int8" on the CPU provider, the int8 quantisation of the fp32 export where it passes its gate
    (models/encoder_quantise.py), else the fp32 one with one warning line."""
    if precision not in ENCODER_PRECISIONS:
        raise ValueError(f"encoder precision must be one of {', '.join(ENCODER_PRECISIONS)}, not {precision!r}")
    if precision == "int8" and gpu_provider(providers):
        log.warning("the int8 encoder is for the CPU provider; on the GPU the fp16 or fp32 encoder serves")
    elif precision == "int8":
        from .encoder_quantise import QuantisationError, int8_beside

        try:
            return int8_beside(ensure_encoder(checkpoint))
        except QuantisationError as exc:
            log.warning("%s; the fp32 encoder serves", exc)
            return ensure_encoder(checkpoint)
    if gpu_provider(providers):
        from .encoder_export import ExportError

        try:
            return ensure_encoder(checkpoint, fp16=True)
        except ExportError as exc:
            log.warning("the fp16 encoder failed its parity check (%s); the fp32 encoder serves", exc)
    return ensure_encoder(checkpoint)


def may_take_compiled_step(config: dict) -> bool:
    """Whether a checkpoint's config.json (`config`) describes a language model the compiled CPU step may serve
    (models/cpu_decode_step.py): a text model the static decoder runs (`static_decoder.unsupported_reason`, the rule
    the loaded model is held to; llava-hf's `text_config`, whose type defaults to llama, or the config itself for a
    bare causal LM) without biases, so that the step's kernels are not loaded, or compiled, for a model that will not
    use them."""
    if isinstance(config.get("text_config"), dict):
        text = config["text_config"]
        kind = text.get("model_type", "llama")
    else:
        text, kind = config, config.get("model_type")
    described = SimpleNamespace(**dict(text, model_type=kind))  # as transformers' config object reads
    return unsupported_reason(described) is None and not text.get("attention_bias") and not text.get("mlp_bias")


def _turns(messages) -> List[Tuple[str, str]]:
    turns = []
    for m in messages:
        role, text = (m["role"], m["content"]) if isinstance(m, dict) else m
        turns.append((str(role), str(text)))
    roles = [r for r, _ in turns]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    if not turns or roles != expected or roles[-1] != "user":
        raise ValueError("messages must alternate user/assistant, starting and ending with a user turn")
    return turns


class VlmPipeline:
    """An ONNX vision encoder and the checkpoint's language model (`LanguageModel`: a llava-hf model's, or
    MiniGPT-v2's LLaMA), prompted by the family profile. Images go in as HxWx3 uint8 RGB in the pixels the client
    georeferences; they are fitted and normalised here as the encoder's metadata says."""

    def __init__(self, checkpoint: CheckpointInfo, profile: Profile, lm: LanguageModel, encoder: OnnxEncoder):
        self.checkpoint = checkpoint
        self.profile = profile
        self.lm = lm
        self.encoder = encoder
        self.cache = EncodingCache()
        self._lock = threading.Lock()
        self.pad_color = encoder.pad_color

    @classmethod
    def load(
        cls, model_dir, family=None, encoder_onnx=None, device=None, providers=None, overrides=None,
        encoder_precision: str = "fp32",
    ) -> VlmPipeline:
        """The pipeline of a checkpoint folder, or of its `CheckpointInfo` (read once already); `overrides` replace
        profile fields (the encoder's own input size and fit always win: preprocessing must match the graph);
        `encoder_precision` "int8" asks for the gated int8 encoder on the CPU (`_ensure_encoder_for`; an explicit
        `encoder_onnx` is used as it is, whatever its precision; ValueError for a precision not in ENCODER_PRECISIONS,
        for `providers` that name one onnxruntime does not know or none available here (`check_providers`), and for a
        `device` that is not cpu or cuda[:N] or a CUDA device torch does not see (`pick_device`)). The folder is read
        once (CheckpointInfo); the language model is loaded without its vision tower (the ONNX encoder serves), the
        encoder's session built meanwhile in the background; digests of the weights and of the export are computed once
        per file version (file_hashes)."""
        if providers is not None:
            providers = check_providers(providers)  # ValueError for a name onnxruntime does not know
        checkpoint = as_checkpoint(model_dir, family)  # the one reading of the folder (or the one given)
        if encoder_onnx is None:
            encoder_onnx = _ensure_encoder_for(checkpoint, providers, encoder_precision)
        encoder = OnnxEncoder(encoder_onnx, providers=providers)  # its session is built while the LM loads
        lm = LanguageModel.load(checkpoint, device)
        if pick_device(device)[0] == "cpu" and may_take_compiled_step(checkpoint.config):
            # The compiled CPU step's kernels load after the weights, beside the first image's encoding and
            # prefill: loaded beside the weights, numba held the GIL that from_pretrained needs (load 0.18 ->
            # 0.55 s, docs/benchmarks.md).
            cpu_decode_step.start_preload()
        encoder.check_fits(checkpoint.hidden_size, checkpoint.image_tokens, checkpoint.encoder_hash)
        profile = get_profile(checkpoint.family, **(overrides or {}))
        if (profile.input_size, profile.fit) != (encoder.input_size, encoder.fit):
            log.warning("encoder metadata overrides the %s profile's input size / fit", profile.name)
            profile = profile.with_overrides(input_size=encoder.input_size, fit=encoder.fit)
        return cls(checkpoint, profile, lm, encoder)

    def info(self) -> dict:
        """What the engine reports (`/v1/models`): the checkpoint's description with the profile in use (its
        input size and fit), the devices and the encoder's execution provider."""
        return {
            **self.checkpoint.describe(),
            "family": self.profile.name,
            "input_size": self.profile.input_size,
            "fit": self.profile.fit,
            "image_tokens": self.encoder.image_tokens,
            "device": str(self.lm.device),
            "encoder_provider": self.encoder.provider,
            "encoder_dtype": self.encoder.metadata.get("geovlm.dtype", "float32"),
        }

    def prompt_parts(self, messages) -> List[Tuple[str, bool]]:
        """The conversation in the family's prompt format as (text, is_template) parts, the image in the first
        user turn, later turns joined as `Profile.follow_up` says: only template text may hold special tokens
        (`<image>`, the turn separator), never what the user or an earlier answer wrote."""
        turns = _turns(messages)
        before, _, after = self.profile.prompt(_SLOT).partition(_SLOT)
        sep, later = self.profile.follow_up()
        later_before, _, later_after = later.format(question=_SLOT).partition(_SLOT)
        parts = [(before, True), (turns[0][1], False), (after, True)]
        for (_, answer), (_, question) in zip(turns[1::2], turns[2::2]):
            parts += [(" ", True), (answer, False), (sep + later_before, True), (question, False), (later_after, True)]
        return parts

    def prompt(self, messages) -> str:
        """The conversation as the family's prompt text: the image in the first user turn."""
        return "".join(text for text, _ in self.prompt_parts(messages))

    def prompt_ids(self, messages) -> List[int]:
        """The conversation's prompt token ids, the image's tokens included."""
        return self.lm.prompt_ids(self.prompt_parts(messages))

    def _encode(self, images: Sequence[np.ndarray]):
        """Features of each image (cached), with the seconds spent preprocessing and encoding."""
        keys = [EncodingCache.key(check_rgb(im), self.encoder.file_hash) for im in images]
        with self._lock:
            found = {k: self.cache.get(k) for k in dict.fromkeys(keys)}
        todo = [k for k, v in found.items() if v is None]
        start = time.perf_counter()
        first = {k: images[keys.index(k)] for k in todo}
        fitted = []
        for k in todo:
            image = first[k]
            plan = fit_plan(self.profile, image.shape[1], image.shape[0])
            fitted.append(fit_image(image, plan, self.pad_color))
        preprocess_s = time.perf_counter() - start
        start = time.perf_counter()
        if todo:
            feats = self.encoder.run(normalise(fitted, self.encoder.mean, self.encoder.std))
            with self._lock:
                for k, f in zip(todo, feats):
                    self.cache.put(k, f)
                    found[k] = f
        encode_s = time.perf_counter() - start
        return np.stack([found[k] for k in keys]), preprocess_s, encode_s

    def encode(self, images: List[np.ndarray]) -> np.ndarray:
        """[n, image_tokens, hidden] float32 features of HxWx3 uint8 images, through the encoding cache."""
        return self._encode(images)[0]

    def _settings(self, r: GenRequest) -> DecodeSettings:
        if r.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        stops = tuple(dict.fromkeys(tuple(self.profile.stop) + tuple(r.stop)))
        return DecodeSettings(r.max_new_tokens, float(r.temperature), float(r.top_p), stops, r.seed)

    def _decoding(self, requests: Sequence[GenRequest]):
        settings = [self._settings(r) for r in requests]
        prompts = [r.prompt_ids if r.prompt_ids is not None else self.prompt_ids(r.messages) for r in requests]
        context = self.lm.context_length
        for prompt, s in zip(prompts, settings):
            if context and len(prompt) + s.max_new_tokens > context:
                raise ValueError(
                    f"the prompt ({len(prompt)} tokens with the image) and max_new_tokens ({s.max_new_tokens}) "
                    f"exceed the model's context of {context} tokens"
                )
        feats, pre_s, enc_s = self._encode([r.image for r in requests])
        timings = {"preprocess": pre_s, "encode": enc_s}
        waited = self._wait_for_loading()
        if waited >= LOAD_WAIT_SHOWN_S:
            timings["load"] = waited
        return self.lm.decoding(prompts, list(feats), settings), timings

    def _wait_for_loading(self) -> float:
        """Seconds spent waiting for what the language model still loads in the background (the stacked weights,
        the compiled CPU step's kernels loaded from numba's cache or compiled: `StaticDecoder._stack`), so that
        the first answer's prefill and decode times are the prefill's and the decoding's: that wait is the
        load's, reported apart (`GenResult.timings["load"]`)."""
        if self.lm.decoder is None:
            return 0.0
        start = time.perf_counter()
        self.lm.decoder.step_kernel  # noqa: B018  # joins the background stacking and the step's warm-up
        return time.perf_counter() - start

    @staticmethod
    def _result(decoded, decoding, timings, decode_s=None) -> GenResult:
        timings = dict(timings, prefill=decoding.prefill_s, decode=decoding.decode_s if decode_s is None else decode_s)
        row = next(i for i, d in enumerate(decoding.results) if d is decoded)
        prompt = len(decoding.prompts[row])
        return GenResult(decoded.text, len(decoded.token_ids), decoded.finish_reason, timings, prompt)

    def generate_batch(self, requests: List[GenRequest]) -> List[GenResult]:
        """One encoder batch and one left-padded batched generation; greedy tokens equal one-by-one runs.
        Timings are those of the whole batch."""
        if not requests:
            return []
        decoding, timings = self._decoding(requests)
        decoding.run()
        return [self._result(d, decoding, timings) for d in decoding.results]

    def stream(self, request: GenRequest) -> Iterator[str]:
        """Text deltas as they are decoded; the last item is a StreamDone carrying the GenResult."""
        decoding, timings = self._decoding([request])
        for deltas in decoding:
            if deltas[0]:
                yield deltas[0]
        yield StreamDone(self._result(decoding.results[0], decoding, timings))

    def stream_batch(self, requests: List[GenRequest]) -> Iterator[List[str]]:
        """One batched generation step by step: each item holds every request's text delta (or ""). After the
        step that finished a request comes an item holding its StreamDone, which carries its GenResult (with the
        time it decoded for), so a short answer ends while the batch decodes on for the longer ones."""
        decoding, timings = self._decoding(requests)
        ended = [False] * len(requests)
        start = None
        for deltas in decoding:
            if start is None:
                start = time.perf_counter()
            yield deltas
            now = [d.done and not e for d, e in zip(decoding.results, ended)]
            if any(now):
                elapsed = time.perf_counter() - start
                yield [StreamDone(self._result(d, decoding, timings, elapsed)) if n else ""
                       for d, n in zip(decoding.results, now)]
                ended = [e or n for e, n in zip(ended, now)]
