"""The OpenAI chat-completions body, read strictly: messages, one image as a data URI, sampling options.

How plain OpenAI messages map onto a family's prompt: the image (an `image_url` part holding a PNG or JPEG
data URI) belongs to the first user message, and the text parts of that message are the question; the
server puts them into the family's prompt template, so no text may contain the `<image>` marker. Later
user and assistant messages are further turns about the same image. System messages are not sent to the
model: every family brings its own system prompt. Anything else malformed is a `ProtocolError` (HTTP 400).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

IMAGE_MARKER = "<image>"
MAX_STOP = 4
MIN_TEMPERATURE = 1e-4  # below this (and top_p below MIN_TOP_P) sampling is greedy: softmax(logits / t) overflows
MIN_TOP_P = 1e-6
MAX_CHARS_PER_TOKEN = 32  # no tokenizer's token spans more characters: a cheap bound before tokenising
_DATA_URI = re.compile(r"^data:image/(png|jpeg|jpg);base64,", re.IGNORECASE)


class ProtocolError(Exception):
    """A request the server cannot serve: `status` (400 or 413) and an OpenAI error type."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass
class ChatRequest:
    """What the server needs from one chat-completions body."""

    image: np.ndarray
    messages: List[Tuple[str, str]]
    model: Optional[str] = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: Tuple[str, ...] = ()
    seed: Optional[int] = None
    stream: bool = False
    include_usage: bool = False


def check_sampling(temperature: float, top_p: float = 1.0) -> Tuple[float, float]:
    """The sampling values as the model gets them: `temperature` in [0, 2] and `top_p` in (0, 1], both finite,
    else `ValueError` (one line, for the CLI as for the server). A temperature under MIN_TEMPERATURE or a top_p
    under MIN_TOP_P is greedy decoding (0.0, 1.0): sampling would keep only the likeliest token anyway, and
    dividing the logits by 1e-300 makes inf/nan probabilities."""
    temperature, top_p = float(temperature), float(top_p)
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise ValueError(f"temperature must be between 0 and 2, got {temperature}")
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature < MIN_TEMPERATURE or top_p < MIN_TOP_P:
        return 0.0, 1.0
    return temperature, top_p


def _jpeg_too_short(data: bytes) -> Optional[str]:
    """Why a JPEG cannot hold the pixels its header claims, or None. A Huffman-coded scan spends at least one
    bit on every 8x8 block of the first component (its DC code; ITU-T T.81, F.1.2.1), so a file shorter than
    blocks / 8 bytes is cut or corrupt: libjpeg would fill the missing blocks with grey and say nothing."""
    pos = 2
    while pos + 9 < len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xC3 or 0xC5 <= marker <= 0xC7:  # Huffman-coded frames (arithmetic ones skipped)
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            blocks = -(-width // 8) * -(-height // 8)
            if len(data) < blocks // 8:
                return (f"the JPEG claims {width}x{height} pixels but holds only {len(data)} bytes "
                        f"(at least {blocks // 8} needed): it is cut short or corrupt")
            return None
        pos += 2 + length
    return None


def decode_image(url: str, max_pixels: int) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a PNG or JPEG data URI; the pixel count is checked before decoding (413
    naming `max_pixels`, also for an image past Pillow's own bound, `2 * PIL.Image.MAX_IMAGE_PIXELS`, which
    Pillow checks as it opens the file; `allow_pixels` raises that bound to a server's limit), and a JPEG too
    short for the size it claims is refused (`ProtocolError`, 400) instead of decoded as grey."""
    from PIL import Image, UnidentifiedImageError

    match = _DATA_URI.match(url)
    if not match:
        raise ProtocolError("image_url must be a data URI of a PNG or JPEG image (data:image/png;base64,...)")
    try:
        data = base64.b64decode(url[match.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("image_url holds invalid base64") from exc
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ProtocolError(
                    f"image has {pixels} pixels ({image.width}x{image.height}); the limit is {max_pixels}",
                    status=413,
                )
            if image.format == "JPEG":
                short = _jpeg_too_short(data)
                if short:
                    raise ProtocolError(f"image could not be decoded: {short}")
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ProtocolError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own bound, checked as it opens: say the server's
        raise ProtocolError(f"image has over {2 * Image.MAX_IMAGE_PIXELS} pixels; the limit is {max_pixels}",
                            status=413) from exc
    except UnidentifiedImageError as exc:  # its message shows the BytesIO's repr, which says nothing
        raise ProtocolError(f"image could not be decoded: its {len(data)} bytes are neither PNG nor JPEG") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ProtocolError(f"image could not be decoded as PNG or JPEG: {exc}") from exc


def allow_pixels(max_pixels: int) -> None:
    """Let Pillow open images of up to `max_pixels` pixels without its decompression-bomb warning (from
    PIL.Image.MAX_IMAGE_PIXELS, 89 M) or error (twice that): the server's own limit, checked by `decode_image`
    before any pixel is decoded, is the one that applies. Never lowers Pillow's bound (process-wide)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def parse_chat(
    raw: bytes, max_pixels: int, max_tokens_limit: int, max_text_chars: Optional[int] = None,
    max_tokens_source: str = "",
) -> ChatRequest:
    """Read a chat-completions body (bytes of JSON) into a `ChatRequest`. `max_text_chars` bounds the characters
    of all messages together (and their count) before anything is tokenised or decoded (400 beyond); the
    server derives it from the model's context (`text_limit`). A max_tokens (or max_completion_tokens) beyond
    `max_tokens_limit` is refused naming the limit and `max_tokens_source`, what sets it ("the model's
    context"). Every refusal is a ProtocolError (one line; `status` 400, or 413 for an image over `max_pixels`)."""
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise ProtocolError("body is nested too deeply to be a chat request") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("body must be a JSON object")
    if max_text_chars is not None:
        _check_text_size(body.get("messages"), max_text_chars)
    image, messages = _read_messages(body.get("messages"), max_pixels)
    request = ChatRequest(image=image, messages=messages)
    request.model = _opt(body, "model", str)
    n = _opt(body, "n", int)
    if n not in (None, 1):
        raise ProtocolError("only n=1 is supported")
    limit = _opt(body, "max_completion_tokens", int)
    if limit is None:
        limit = _opt(body, "max_tokens", int)
    if limit is not None:
        if not 1 <= limit <= max_tokens_limit:
            source = f" ({max_tokens_source})" if max_tokens_source else ""
            raise ProtocolError(f"max_tokens must be between 1 and {max_tokens_limit}{source}, not {limit}")
        request.max_tokens = limit
    temperature = _opt(body, "temperature", float)
    top_p = _opt(body, "top_p", float)
    try:
        request.temperature, request.top_p = check_sampling(
            request.temperature if temperature is None else temperature, 1.0 if top_p is None else top_p
        )
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    request.stop = _read_stop(body.get("stop"))
    request.seed = _opt(body, "seed", int)
    if request.seed is not None and not -(2**63) <= request.seed < 2**64:
        raise ProtocolError("seed must be between -2**63 and 2**64 - 1")
    request.stream = bool(_opt(body, "stream", bool))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ProtocolError("stream_options must be an object")
    request.include_usage = bool(options.get("include_usage"))
    return request


def text_limit(context_tokens: Optional[int]) -> Optional[int]:
    """The most characters a conversation may have for a model of `context_tokens` (None: no bound)."""
    return None if not context_tokens else int(context_tokens) * MAX_CHARS_PER_TOKEN


def _check_text_size(messages, max_chars: int) -> None:
    """Refuse a conversation whose text or number of messages cannot fit the model's context, counting
    characters only (400): no token is made for a prompt that is refused."""
    if not isinstance(messages, list):
        return  # _read_messages says what is wrong
    if len(messages) > max_chars // MAX_CHARS_PER_TOKEN:
        raise ProtocolError(f"{len(messages)} messages cannot fit the model's context")
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        parts = [content] if isinstance(content, str) else content if isinstance(content, list) else []
        for part in parts:
            text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
            total += len(text) if isinstance(text, str) else 0
    if total > max_chars:
        raise ProtocolError(
            f"the messages hold {total} characters; the model's context allows at most {max_chars}"
        )


def _opt(body: dict, key: str, kind: type):
    value = body.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{key} must be of type {kind.__name__}")
    return value


def _read_stop(value) -> Tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    valid = isinstance(stops, list) and len(stops) <= MAX_STOP
    if not valid or not all(isinstance(s, str) and s for s in stops):
        raise ProtocolError(f"stop must be a non-empty string or a list of at most {MAX_STOP} of them")
    return tuple(stops)


def _read_messages(messages, max_pixels: int) -> Tuple[np.ndarray, List[Tuple[str, str]]]:
    if not isinstance(messages, list) or not messages:
        raise ProtocolError("messages must be a non-empty list")
    image = None
    turns: List[Tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ProtocolError(f"messages[{i}] must be an object")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise ProtocolError(f"messages[{i}].role {role!r} is not supported")
        texts, urls = _read_content(message.get("content"), i)
        if role in ("system", "developer"):
            continue  # the family's own system prompt applies
        if urls:
            if role != "user" or turns or image is not None or len(urls) > 1:
                raise ProtocolError("exactly one image is supported, in the first user message")
            image = decode_image(urls[0], max_pixels)
        text = "\n".join(t.strip() for t in texts if t.strip())
        _check_unicode(text, f"messages[{i}]")
        if IMAGE_MARKER in text:
            raise ProtocolError(f"text must not contain {IMAGE_MARKER!r}; send the image as image_url")
        if not turns and role != "user":
            raise ProtocolError("the conversation must start with a user message")
        if turns and turns[-1][0] == role:
            raise ProtocolError("user and assistant messages must alternate")
        turns.append((role, text))
    if image is None:
        raise ProtocolError("the first user message must carry an image (image_url with a data URI)")
    if turns[-1][0] != "user":
        raise ProtocolError("the last message must be a user message")
    return image, turns


def _check_unicode(text: str, where: str) -> None:
    """Refuse (400) a text holding a lone UTF-16 surrogate (JSON's "\\ud800" escape without its pair): Python's
    JSON reader accepts it, but it is no character, and the tokenizer (Rust strings) cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise ProtocolError(f"{where}: the text holds a lone surrogate (\\u{code:04x}), which is not a character: "
                            "send valid UTF-8 (JSON escapes of surrogates come in pairs)") from None


def _read_content(content, index: int) -> Tuple[List[str], List[str]]:
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise ProtocolError(f"messages[{index}].content must be a string or a list of parts")
    texts, urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise ProtocolError(f"messages[{index}]: image_url needs a url")
            urls.append(url)
        else:
            raise ProtocolError(f"messages[{index}]: content parts must be text or image_url")
    return texts, urls
