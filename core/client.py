"""The engine client: OpenAI chat completions with an image, over one or several endpoints (stdlib only).

It speaks the protocol of `geovlm serve`, vLLM, SGLang and Ollama alike. The image goes into the first user
message as a data URI; the text of that message is the plain question (with the family's task words when a
task is given), never the `<image>` marker: the server applies the family's prompt template.

Several endpoints share the work: each has a concurrency limit and every request goes to the least busy one
that is up. Connection errors, 429, 502, 503 and 504 are retried with exponential backoff (honouring
Retry-After), preferably on another endpoint, and the endpoint rests for a while; a 500 (the server is up,
the request failed there) is tried once more. Other 4xx answers and an error event inside a stream (the
model failed on this request) are not retried. Retries go on for a window of time per request
(`retry_window`, sized to an engine restart with its model load; a job can set its own `deadline_s`), not
for a count of attempts; `engine_down(reason)` (the local launcher gave up) ends them at once. The first
failure of a request that will be retried is reported at once to `on_first_failure` (so that a caller can say
what is happening instead of waiting out the window in silence). Each job of
`ask_many` yields exactly one result, however often its request had to be sent, and a stream sent again
never repeats text already handed to `on_token`.
"""
from __future__ import annotations

import base64
import json
import random
import struct
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

from .answer import Answer, printable_text
from .georef import FitPlan, fit_plan
from .parsing import parse_answer
from .profiles import Profile, get_profile
from .transport import (
    AnswerTimeout,
    Cancelled,
    CancelToken,
    HttpClientTransport,
    HttpResponse,
    Transport,
    TransportError,
)

__all__ = [
    "AskJob", "Cancelled", "CancelToken", "EngineClient", "EngineError", "Endpoint", "ImageSource",
    "check_engine_url", "image_size_of", "prepare_image",
]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
Messages = Sequence[Tuple[str, str]]


DEFAULT_REQUEST_TIMEOUT_S = 120.0  # one attempt's wait to connect or for data: a whole answer when not streamed
MAX_REQUEST_TIMEOUT_S = 3600.0  # an hour for one attempt: a long answer of a 7B model on a slow CPU fits
DEFAULT_RETRY_WINDOW_S = 120.0  # an engine restart: process start plus the model load (a 7B model on a GPU
# server loads in 30-90 s; the demo model restarts in 5-10 s on a busy laptop)
MAX_RETRY_WINDOW_S = 86400.0  # a day: an engine host rebooted overnight; beyond that a run waits for nothing


class EngineError(Exception):
    """The engine refused the request or could not be reached within the retry window."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: Optional[float] = None, status: Optional[int] = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


@dataclass
class Endpoint:
    """One engine URL (the part before /v1) with its own concurrency limit and health state."""

    url: str
    max_concurrent: int = 4
    inflight: int = 0
    failures: int = 0
    down_until: float = 0.0
    model: Optional[str] = None  # the served model id, read from /v1/models on first use
    info: Dict = field(default_factory=dict)

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]


class ImageSource(Protocol):
    """A view that the client fits to the model's input before sending: the caller's image library (PIL in
    the engine's venv: `models.preprocess.ArraySource`; Qt in QGIS) makes the pixels, the client decides
    their geometry.

    `size`: (width, height) of the view in pixels, the frame the answer is georeferenced in.
    `fitted(plan, pad_color)`: PNG or JPEG bytes of exactly `plan.input_width` x `plan.input_height` pixels,
    the view fitted as `plan` says (core.georef.FitPlan: padded to a square with `pad_color`, stretched,
    centre-cropped, or resized to multiples of 28 within the pixel budget for Qwen2-VL/2.5-VL).
    """

    size: Tuple[int, int]

    def fitted(self, plan: FitPlan, pad_color: Tuple[int, int, int]) -> bytes:
        """Encoded PNG or JPEG bytes of the view fitted as `plan` says (see the class)."""
        ...


def prepare_image(image: Union[bytes, ImageSource], image_size: Optional[Tuple[int, int]],
                  profile: Profile) -> Tuple[bytes, Tuple[int, int], List[str]]:
    """(bytes to send, size of the view they show, warnings): the exact pixels the model will see.

    A server's own preprocessing is then only a resize to the same size (an identity), whatever it does to
    other images: vLLM's llava-hf processors centre-crop where LLaVA pads, and Qwen2-VL's `smart_resize` of a
    size already in multiples of 28 within the budget is the size itself. So the georeferencing, which
    undoes `fit_plan(profile, *view)`, is exact whichever server answers.

    `image`: an ImageSource (fitted here), or encoded bytes that are either already fitted to the model's
    input for a view of `image_size`, or the view itself (sent as it is, with a warning: only a server that
    fits images as the profile says, such as `geovlm serve`, places those boxes right). Raises ValueError for
    bytes of another size.
    """
    if not isinstance(image, (bytes, bytearray)):
        view = tuple(int(v) for v in image.size)
        plan = fit_plan(profile, *view)
        data = bytes(image.fitted(plan, profile.pad_color))
        if image_size_of(data) != (plan.input_width, plan.input_height):
            raise ValueError(f"the fitted image is {image_size_of(data)}, not the model's input "
                             f"{plan.input_width}x{plan.input_height}")
        return data, view, []
    data = bytes(image)
    header = image_size_of(data)
    view = tuple(int(v) for v in image_size) if image_size else header
    plan = fit_plan(profile, *view)
    if header == (plan.input_width, plan.input_height):
        return data, view, []
    if header == view:
        return data, view, [
            f"the {view[0]}x{view[1]} view was sent as it is, not fitted to the model's "
            f"{plan.input_width}x{plan.input_height} input: boxes are right only if the server fits it as the "
            f"{profile.name} profile says ({profile.fit})"
        ]
    raise ValueError(f"the image is {header[0]}x{header[1]}: a {view[0]}x{view[1]} view is sent as it is or "
                     f"fitted to the model's {plan.input_width}x{plan.input_height} input")


@dataclass
class AskJob:
    """One question about one image (encoded bytes or an ImageSource), for `EngineClient.ask_many`."""

    image: Union[bytes, ImageSource]
    image_size: Optional[Tuple[int, int]]
    question: Union[str, Messages]
    task: Optional[str] = None


def image_size_of(data: bytes) -> Tuple[int, int]:
    """(width, height) in pixels read from a PNG header (IHDR) or a JPEG's first start-of-frame marker (SOF0 to
    SOF15 but DHT, JPG and DAC). ValueError for bytes that are neither, or whose size cannot be read."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        pos = 2
        while pos + 9 < len(data):
            if data[pos] != 0xFF:
                break
            marker = data[pos + 1]
            (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return width, height
            pos += 2 + length
    raise ValueError("image is neither a PNG nor a JPEG with a readable size")


def _mime_of(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"\xff\xd8":
        return "image/jpeg"
    raise ValueError("the client sends PNG or JPEG images only")


class _Pool:
    """Endpoints under one condition: `acquire` waits for the least busy endpoint that is up and has room."""

    def __init__(self, endpoints: List[Endpoint], rest: float, max_rest: float):
        self.endpoints = endpoints
        self.rest = rest
        self.max_rest = max_rest
        self._cond = threading.Condition()
        self._turn = 0

    def acquire(self, cancel: CancelToken, avoid: Optional[Endpoint] = None) -> Endpoint:
        with self._cond:
            while True:
                cancel.check()
                now = time.monotonic()
                free = [e for e in self.endpoints if e.inflight < e.max_concurrent]
                up = [e for e in free if e.down_until <= now] or (
                    [] if any(e.down_until <= now for e in self.endpoints) else free
                )
                if len(up) > 1 and avoid in up:
                    up.remove(avoid)
                if up:
                    self._turn += 1
                    n = len(self.endpoints)
                    best = min(up, key=lambda e: (e.inflight, (self.endpoints.index(e) - self._turn) % n))
                    best.inflight += 1
                    return best
                self._cond.wait(0.05)

    def release(self, endpoint: Endpoint, ok: Optional[bool]) -> None:
        """Give the slot back; `ok` False puts the endpoint to rest, True clears its failures."""
        with self._cond:
            endpoint.inflight -= 1
            if ok is True:
                endpoint.failures = 0
                endpoint.down_until = 0.0
            elif ok is False:
                endpoint.failures += 1
                pause = min(self.max_rest, self.rest * 2 ** (endpoint.failures - 1))
                endpoint.down_until = time.monotonic() + pause
            self._cond.notify_all()

    @property
    def capacity(self) -> int:
        return sum(e.max_concurrent for e in self.endpoints)


class EngineClient:
    """Asks vision-language questions of OpenAI-compatible engines.

    `endpoints`: URLs such as "http://127.0.0.1:8000" (a trailing /v1 is accepted; http or https only,
    else `ValueError`). `profile`: the model family; when None it is read from our server's /v1/models (vLLM
    does not report it, so give it there). `timeout` bounds the connect and each wait for data of one
    attempt; a request is retried until `retry_window` seconds have passed since its first attempt (no new
    attempt starts later), or `attempts` tries when given (a cap, for quick probes). `transport` replaces the
    standard-library HTTP transport.

    `on_first_failure(message, window_s)`: called once per request (each `ask`, `models`, `health`...; each
    job of `ask_many`) when its first attempt fails in a way that is retried, before the first wait, from the
    thread making the request. `message` is one line naming the endpoint and the cause ("cannot reach
    http://127.0.0.1:8000: connection refused", "http://127.0.0.1:8000 answered HTTP 503 ..."); `window_s`
    is how long the request will go on being retried, in seconds. Retries are the same with or without it.
    """

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]],
        api_key: Optional[str] = None,
        profile: Optional[Union[str, Profile]] = None,
        model: Optional[str] = None,
        max_concurrent: int = 4,
        timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        attempts: Optional[int] = None,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        transport: Optional[Transport] = None,
        retry_window: float = DEFAULT_RETRY_WINDOW_S,
        on_first_failure: Optional[Callable[[str, float], None]] = None,
    ):
        urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not urls:
            raise ValueError("at least one engine URL is needed")
        if max_concurrent < 1 or (attempts is not None and attempts < 1):
            raise ValueError("max_concurrent and attempts must be at least 1")
        if not retry_window >= 0:
            raise ValueError("retry_window must be a number of seconds, 0 or more")
        for url in urls:
            check_engine_url(url)
        check_distinct_urls(urls)
        self.endpoints = [Endpoint(u, max_concurrent=max_concurrent) for u in urls]
        self.api_key = api_key
        self._profile = get_profile(profile) if isinstance(profile, str) else profile
        self.model = model
        self.timeout = timeout
        self.attempts = attempts
        self.retry_window = retry_window
        self.on_first_failure = on_first_failure
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.transport = transport or HttpClientTransport()
        self._pool = _Pool(self.endpoints, rest=backoff * 4, max_rest=30.0)
        self._info_lock = threading.Lock()
        self._down: Optional[str] = None

    # ------------------------------------------------------------ public API

    def engine_down(self, reason: str) -> None:
        """The engine will not come back (the local launcher gave up): requests waiting for a retry, and all
        later ones, fail at once with an `EngineError` saying so and why (`reason`, one line). Any thread."""
        self._down = reason or "no reason given"

    def models(self, cancel: Optional[CancelToken] = None) -> Dict:
        """The /v1/models answer of an endpoint (ours adds a "geovlm" entry: family, input size, fit)."""
        return self._with_retries(lambda ep, token: self._get_json(ep, "/v1/models", token), cancel)

    def health(self, cancel: Optional[CancelToken] = None) -> Dict:
        """The /health answer of an endpoint (ours: status, model, requests in flight and waiting)."""
        return self._with_retries(lambda ep, token: self._get_json(ep, "/health", token), cancel)

    def profile(self, cancel: Optional[CancelToken] = None) -> Profile:
        """The family profile: the one configured, else the one the engine reports (asked once, with the client's
        retries). EngineError when the engine reports no family or cannot be reached."""
        if self._profile is None:
            info = self._with_retries(lambda ep, token: self._model_info(ep, token), cancel)
            family = info.get("family")
            if not family:
                raise EngineError("the engine does not report its model family; configure the profile")
            self._profile = get_profile(family)
        return self._profile

    def ask(
        self,
        image: Union[bytes, ImageSource],
        image_size: Optional[Tuple[int, int]],
        question: Union[str, Messages],
        profile: Optional[Profile] = None,
        task: Optional[str] = None,
        on_token: Optional[Callable[[str], None]] = None,
        on_restart: Optional[Callable[[], None]] = None,
        cancel: Optional[CancelToken] = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: Optional[int] = None,
        deadline_s: Optional[float] = None,
    ) -> Tuple[str, Answer]:
        """Ask about one image; returns the text and the parsed answer, in pixels of the view.

        `image` is an ImageSource, which is fitted to the model's input before it is sent, or PNG/JPEG bytes
        (see `prepare_image`); `image_size` is the size of the view (read from the bytes when None).

        `question` is a string or a conversation [("user", q), ("assistant", a), ("user", q2), ...] whose
        first user turn carries the image. With `on_token` the answer is streamed, each text piece passed
        as it arrives. A stream sent again after a break does not repeat what `on_token` already got: the
        new stream's text is held back until it passes that point; only when it differs from what was shown
        (sampling) is `on_restart` called, and the new text passed from its start. The size is read from the
        image header when `image_size` is None. `deadline_s`: seconds from now after which no retry starts
        (default: the client's `retry_window`).
        """
        cancel = cancel or CancelToken()
        profile = profile or self.profile(cancel)
        image, size, notes = prepare_image(image, image_size, profile)
        body = self._chat_body(image, question, profile, task, bool(on_token), max_tokens, temperature, seed)
        shown = [""]  # the text handed to on_token so far, over all attempts

        def forward(text: str) -> None:
            """This attempt's text so far: pass on what goes beyond what was shown."""
            if text.startswith(shown[0]):
                if len(text) > len(shown[0]):
                    on_token(text[len(shown[0]) :])
                    shown[0] = text
            elif not shown[0].startswith(text):  # the new stream took another path
                if on_restart is not None:
                    on_restart()
                on_token(text)
                shown[0] = text

        def attempt(endpoint: Endpoint, token: CancelToken) -> str:
            body["model"] = endpoint.model or self._model_info(endpoint, token)["id"]
            text = self._complete(endpoint, body, forward if on_token else None, token)
            if on_token and text != shown[0]:  # it ended short of what an earlier attempt showed
                if on_restart is not None:
                    on_restart()
                if text:
                    on_token(text)
                shown[0] = text
            return text

        text = self._with_retries(attempt, cancel, deadline_s)
        answer = parse_answer(text, profile, image_size=size)
        answer.warnings += notes
        return text, answer

    def ask_many(
        self,
        jobs: Sequence[AskJob],
        on_result: Optional[Callable[[int, object], None]] = None,
        cancel: Optional[CancelToken] = None,
        **options,
    ) -> List[object]:
        """Run many jobs over all endpoints at once; returns, in job order, (text, Answer) or the exception
        of each job. `on_result(index, result)` is called exactly once per job, from a worker thread."""
        cancel = cancel or CancelToken()
        profile = options.pop("profile", None) or self.profile(cancel)
        results: List[object] = [None] * len(jobs)

        def run(index: int) -> None:
            job = jobs[index]
            try:
                result: object = self.ask(
                    job.image, job.image_size, job.question, profile, job.task, cancel=cancel, **options
                )
            except Exception as exc:  # a job's failure is its result
                result = exc
            results[index] = result
            if on_result is not None:
                on_result(index, result)

        with ThreadPoolExecutor(max_workers=max(1, min(self._pool.capacity, len(jobs)))) as executor:
            for future in [executor.submit(run, i) for i in range(len(jobs))]:
                future.result()
        return results

    # ------------------------------------------------------------ requests

    def _chat_body(self, image, question, profile, task, stream, max_tokens, temperature, seed) -> Dict:
        turns = [("user", question)] if isinstance(question, str) else [tuple(t) for t in question]
        if not turns or turns[0][0] != "user":
            raise ValueError("a conversation starts with a user turn")
        url = f"data:{_mime_of(image)};base64,{base64.b64encode(image).decode('ascii')}"
        messages = []
        for i, (role, text) in enumerate(turns):
            if role not in ("user", "assistant"):
                raise ValueError(f"conversation roles are user and assistant, not {role!r}")
            if i == 0:
                text = profile.question(task, text) if task else text
                content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
                messages.append({"role": role, "content": content})
            else:
                messages.append({"role": role, "content": text})
        body = {
            "messages": messages,
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
            "stream": stream,
        }
        if profile.stop:
            body["stop"] = list(profile.stop)
        if seed is not None:
            body["seed"] = int(seed)
        return body

    def _headers(self, json_body: bool) -> Dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream"}
        if json_body:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _send(self, endpoint, method, path, token, payload=None) -> HttpResponse:
        """One HTTP exchange; statuses worth a retry become `_Retryable`, other errors `EngineError`."""
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        try:
            response = self.transport.request(
                method, endpoint.url + path, self._headers(data is not None), data, self.timeout, token
            )
        except TransportError as exc:
            raise _Retryable(str(exc)) from exc
        if response.status < 400:
            return response
        with response:
            try:
                detail = _error_message(response.read())
            except TransportError:
                detail = ""
        message = f"{endpoint.url}{path}: HTTP {response.status} {detail}".strip()
        if response.status in RETRY_STATUSES:
            raise _Retryable(message, _retry_after(response.headers.get("retry-after")), response.status)
        raise EngineError(message, response.status)

    def _get_json(self, endpoint, path, token) -> Dict:
        with self._send(endpoint, "GET", path, token) as response:
            return _json_or_retry(_read(response), endpoint.url + path)

    def _model_info(self, endpoint: Endpoint, token: CancelToken) -> Dict:
        """The served model of an endpoint: its id, plus our server's "geovlm" details when present."""
        with self._info_lock:
            if endpoint.model is not None:
                return dict(endpoint.info, id=endpoint.model)
        listing = self._get_json(endpoint, "/v1/models", token)
        entries = listing.get("data") or []
        if not entries:
            raise EngineError(f"{endpoint.url} serves no model")
        ids = [e.get("id") for e in entries]
        chosen = self.model if self.model in ids else None
        if self.model is not None and chosen is None:
            raise EngineError(f"{endpoint.url} does not serve {self.model!r}; it serves {ids}")
        entry = entries[ids.index(chosen)] if chosen else entries[0]
        with self._info_lock:
            endpoint.info = dict(entry.get("geovlm") or {})
            endpoint.model = entry["id"]
            return dict(endpoint.info, id=endpoint.model)

    def _complete(self, endpoint, body, on_token, token) -> str:
        """The answer's text, whole or streamed (each step's text so far to `on_token`); whatever engine wrote it,
        its control characters are U+FFFD (`printable_text`): a NUL cuts a GeoPackage field short, an escape
        moves a terminal's cursor."""
        with self._send(endpoint, "POST", "/v1/chat/completions", token, body) as response:
            if not body["stream"]:
                reply = _json_or_retry(_read(response), endpoint.url)
                try:
                    return printable_text(reply["choices"][0]["message"]["content"] or "")
                except (KeyError, IndexError, TypeError):  # a proxy's page or a garbled reply: as unreadable JSON,
                    # retried (on another engine, when there is one) rather than failing the request at once
                    raise _Retryable(f"{endpoint.url}: unexpected completion {str(reply)[:200]}") from None
            text = ""
            finished = False
            for event in _sse_events(_guarded(response.chunks())):
                if event == "[DONE]":
                    finished = True
                    break
                try:
                    chunk = json.loads(event)
                except ValueError:  # a garbled stream (a broken proxy): retried as an unreadable reply is
                    raise _Retryable(f"{endpoint.url}: unreadable stream event {event[:60]!r}") from None
                if not isinstance(chunk, dict):
                    raise _Retryable(f"{endpoint.url}: unreadable stream event {event[:60]!r}")
                if "error" in chunk:  # the model failed on this request: sending it again would not help
                    code = chunk["error"].get("code") if isinstance(chunk["error"], dict) else None
                    status = code if isinstance(code, int) else None
                    raise EngineError(f"{endpoint.url}: stream error {_error_message(event.encode())}", status)
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        text += printable_text(delta)
                        on_token(text)
            if not finished:
                raise _Retryable(f"{endpoint.url}: stream ended without [DONE]")
            return text

    def _with_retries(self, call, cancel: Optional[CancelToken], deadline_s: Optional[float] = None):
        """Run `call(endpoint, token)` on the least busy endpoint, retrying with backoff elsewhere until the
        retry window (or `deadline_s`) has passed, `attempts` tries were made, or the engine is down."""
        token = cancel or CancelToken()
        window = self.retry_window if deadline_s is None else deadline_s
        started = time.monotonic()
        deadline = started + window
        last: Optional[Endpoint] = None
        server_errors = 0
        attempt = 0
        while True:
            self._check_down()
            attempt += 1
            endpoint = self._pool.acquire(token, avoid=last)
            ok = None
            try:
                result = call(endpoint, token)
                ok = True
                return result
            except _Retryable as exc:
                server_errors += exc.status == 500
                ok = None if exc.status == 500 else False  # a 500 came from a live server: no rest
                last = endpoint
                self._check_down(exc)
                delay = self.backoff * 2 ** min(attempt - 1, 16) * (0.5 + random.random())  # nosec B311
                delay = min(self.max_backoff, exc.retry_after if exc.retry_after is not None else delay)
                out_of_time = time.monotonic() + delay > deadline
                if out_of_time or server_errors > 1 or (self.attempts is not None and attempt >= self.attempts):
                    spent = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    # the time it took, not the window: one attempt may outlast the window (a request timeout)
                    spent += f" in {time.monotonic() - started:.0f} s" if out_of_time else ""
                    raise EngineError(f"gave up after {spent}: {exc}", exc.status) from exc
                if attempt == 1 and self.on_first_failure is not None:
                    self.on_first_failure(_failure_line(endpoint.url, exc), window)
            finally:
                self._pool.release(endpoint, ok)
            self._sleep(token, delay)

    def _check_down(self, cause: Optional[Exception] = None) -> None:
        if self._down is not None:
            raise EngineError(f"the engine is down: {self._down}") from cause

    def _sleep(self, token: CancelToken, seconds: float) -> None:
        """Back off, waking early for a cancellation or when the engine is reported down."""
        end = time.monotonic() + seconds
        while self._down is None:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            token.sleep(min(0.1, remaining))


def check_engine_url(url: str) -> str:
    """`url` when it is an http(s) URL with a host (an engine's address), else `ValueError` in one line."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"an engine URL is http://HOST:PORT or https://HOST:PORT, not {url!r}")
    try:
        parts.port  # noqa: B018  # a port that is not a number raises here
    except ValueError:
        raise ValueError(f"the engine URL {url!r} has an invalid port") from None
    return url


def check_distinct_urls(urls: Sequence[str]) -> None:
    """`ValueError` in one line when two of `urls` name the same engine (scheme, host and port compared
    without case, the default port filled in, a trailing `/` ignored): a URL listed twice would get twice the
    requests at once (each URL gets `max_concurrent` of them) and count as two engines."""
    seen: Dict[tuple, str] = {}
    for url in urls:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path.rstrip("/"))
        if key in seen:
            also = "" if seen[key] == url else f" (also as {seen[key]!r})"
            raise ValueError(f"{url!r} is listed twice{also}: name each engine once "
                             "(the requests each engine gets at once are set by the concurrency)")
        seen[key] = url


# ------------------------------------------------------------ helpers


NO_ANSWER = "sent no answer within"  # a first-failure line about a slow engine: "URL sent no answer within S s"


def _failure_line(url: str, exc: _Retryable) -> str:
    """One line for a failed attempt: the endpoint and the cause, the operating system's words for a
    connection that could not be made ("connection refused"), the status for an HTTP answer, and for an
    engine that was reached but sent nothing within the request timeout "URL sent no answer within S s"."""
    if exc.status is not None:
        return f"{url} answered HTTP {exc.status}"
    if isinstance(exc.__cause__, AnswerTimeout):
        return f"{url} {NO_ANSWER} {exc.__cause__.seconds:g} s"
    cause: Optional[BaseException] = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    if isinstance(cause, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(cause, TimeoutError):
        reason = "timed out"
    elif isinstance(cause, OSError):
        reason = (cause.strerror or str(cause) or type(cause).__name__).lower()
    else:  # a reply that broke off or could not be read
        return str(exc) if url in str(exc) else f"{url}: {exc}"
    return f"cannot reach {url}: {reason}"


def _guarded(chunks: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    except TransportError as exc:
        raise _Retryable(str(exc)) from exc


def _read(response: HttpResponse) -> bytes:
    return b"".join(_guarded(response.chunks()))


def _json_or_retry(data: bytes, where: str) -> Dict:
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:  # a truncated body from a dying server
        raise _Retryable(f"{where}: unreadable JSON reply") from exc


def _sse_events(chunks: Iterator[bytes]) -> Iterator[str]:
    """The data of each server-sent event; multi-line data joined with newlines, other fields ignored."""
    buffer = b""
    data: List[str] = []
    for chunk in chunks:
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line, buffer = buffer[:end].rstrip(b"\r").decode("utf-8"), buffer[end + 1 :]
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
            elif line.startswith("data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _error_message(data: bytes) -> str:
    """The message of an OpenAI-style error body (ours, vLLM's), else the start of the body."""
    text = data.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("detail"):
            return str(body["detail"])
    return text[:300]


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
