"""`geovlm serve`: an OpenAI-compatible HTTP server around a `VlmPipeline`.

Routes: POST /v1/chat/completions (JSON or server-sent events), GET /v1/models (with a "geovlm" entry:
family, input size, fit mode, image tokens, whether the model is a random stand-in) and GET /health (the
one route open without the key, for launchers and load balancers). Secure defaults: loopback, an optional
bearer key, a body size limit, a pixel limit, a budget of request memory, a deadline for request headers
and a bound on open connections (so slow clients cannot starve /health), timeouts; one log line per request.
A client that leaves is a normal event: 499 and one info line.
"""
import asyncio
import contextlib
import hmac
import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from .batching import END, Batcher, Busy
from .connections import guarded_protocol
from .memory import MemoryBudget, OverBudget
from .protocol import ChatRequest, ProtocolError, allow_pixels, parse_chat, text_limit

log = logging.getLogger("geovlm.engine")
BATCHER_STOP_S = 5.0  # after the graceful period, for the batcher to finish; both within the launcher's wait


@dataclass
class Settings:
    """Server limits and batching. Sizes in bytes and pixels, times in seconds."""

    api_key: Optional[str] = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_tokens_limit: Optional[int] = None  # largest max_tokens: None for the model's context (`token_limit`)
    batch_window_s: float = 0.01
    max_batch: int = 8
    max_queue: int = 256
    max_queued_pixels: int = 4 * 4096 * 4096  # of the images waiting or in generation (429 beyond)
    decode_concurrency: int = 2  # bodies parsed and images decoded at once
    request_timeout_s: float = 300.0
    body_timeout_s: float = 30.0
    graceful_s: float = 15.0  # on SIGTERM, for the requests in flight
    memory_budget_bytes: int = 512 * 1024 * 1024  # request bodies and decoded images held at once (429 beyond)
    header_timeout_s: float = 10.0  # for a connection's request headers (closed after)
    max_connections: int = 2048  # open at once; beyond, the one waiting longest for its headers is closed


DEFAULT_MAX_TOKENS = 2048  # the largest max_tokens for a model whose config gives no context length


def token_limit(setting: Optional[int], context: Optional[int]) -> Tuple[int, str]:
    """(the largest max_tokens a request may ask for, what decides it, to say in the 400 beyond it): the model's
    `context` in tokens (its config's max_position_embeddings) unless `setting` (`geovlm serve --max-tokens`) is
    smaller; `setting`, else DEFAULT_MAX_TOKENS, for a model whose context is unknown (None)."""
    if context and (not setting or setting >= context):
        return int(context), "the model's context"
    if setting:
        return int(setting), "this server's --max-tokens"
    return DEFAULT_MAX_TOKENS, "this server's limit"


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers=None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers = headers or {}


def create_app(pipeline, settings: Optional[Settings] = None):
    """The FastAPI application serving `pipeline` (a `VlmPipeline` or an object with its methods)."""
    from ..models.pipeline import GenRequest

    settings = settings or Settings()
    allow_pixels(settings.max_pixels)  # --max-pixels above Pillow's own bound (179 M) is the server's to refuse
    info = dict(pipeline.info())
    model_name = str(info.get("model") or "geovlm")
    batcher = Batcher(
        pipeline, settings.batch_window_s, settings.max_batch, settings.max_queue, settings.max_queued_pixels
    )
    decode_slots = asyncio.Semaphore(settings.decode_concurrency)
    budget = MemoryBudget(settings.memory_budget_bytes)
    # A stand-in pipeline (tests) may have neither a tokenizer nor a context length.
    context = getattr(getattr(pipeline, "lm", None), "context_length", None)
    max_chars = text_limit(context)
    max_tokens, limited_by = token_limit(settings.max_tokens_limit, context)
    info["max_tokens_limit"] = max_tokens
    if settings.max_tokens_limit and context and settings.max_tokens_limit > context:
        log.warning("--max-tokens %d is more than the model's context of %d tokens: max_tokens is limited to %d",
                    settings.max_tokens_limit, context, context)
    tokenize = getattr(pipeline, "prompt_ids", None)
    tokenizer_lock = threading.Lock()  # tokenised off the worker, one prompt at a time

    def read_request(raw: bytes):
        """Parse, decode and tokenise one body (in the thread pool, never on the batching worker)."""
        chat = parse_chat(raw, settings.max_pixels, max_tokens, max_chars, limited_by)
        ids = None
        if tokenize is not None:
            with tokenizer_lock:
                ids = tokenize(chat.messages)
            if context and len(ids) + chat.max_tokens > context:
                raise ProtocolError(
                    f"the prompt ({len(ids)} tokens with the image) and max_tokens ({chat.max_tokens}) "
                    f"exceed the model's context of {context} tokens"
                )
        return chat, ids

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        stand_in = " (a random stand-in: its answers are noise)" if info.get("random_stand_in") else ""
        log.info("serving %s, family %s%s; max_tokens up to %d (%s)", model_name, info.get("family"), stand_in,
                 max_tokens, limited_by)
        yield
        await run_in_threadpool(batcher.stop, BATCHER_STOP_S)

    app = FastAPI(title="GeoVLM engine", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    in_flight = {"/v1/chat/completions": 0}
    if settings.api_key is not None:
        app.add_middleware(_BearerKey, key=settings.api_key)
    app.add_middleware(_RequestLog, in_flight=in_flight)  # the outer one: it logs the 401s too

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error_response(exc.status, str(exc), exc.kind, exc.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return _error_response(404, f"no route {request.url.path}", "not_found_error")

    @app.exception_handler(405)
    async def bad_method(request: Request, exc):
        return _error_response(405, f"{request.method} not allowed", "invalid_request_error")

    @app.get("/health")
    async def health():
        stats = batcher.stats
        body = {
            "status": "ok" if batcher.alive else "down",
            "held_bytes": budget.used,
            "model": model_name,
            "random_stand_in": bool(info.get("random_stand_in")),
            "in_flight": in_flight["/v1/chat/completions"],
            "waiting": batcher.waiting,
            "requests": stats.requests,
            "batches": stats.batches,
            "largest_batch": stats.largest_batch,
            "pid": os.getpid(),
        }
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get("/v1/models")
    async def models():
        entry = {"id": model_name, "object": "model", "created": 0, "owned_by": "geovlm", "geovlm": info}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        held = budget.reservation()  # closed when the answer is out (by the event stream when streamed)
        try:
            response = await answer(request, held)
        except BaseException:
            held.close()
            raise
        if not isinstance(response, StreamingResponse):
            held.close()
        return response

    async def answer(request: Request, held):
        raw = await _read_body(request, settings, held)
        try:
            async with decode_slots:  # a decoded image can be a hundred times its file
                chat, prompt_ids = await run_in_threadpool(read_request, raw)
            held.resize(chat.image.nbytes)  # the body goes, the image stays until the answer is out
        except ProtocolError as exc:
            raise ApiError(exc.status, str(exc), exc.kind) from exc
        except OverBudget as exc:
            raise ApiError(429, f"server busy: {exc}", "rate_limit_error", {"Retry-After": "1"}) from exc
        del raw
        if chat.model not in (None, "", model_name):
            raise ApiError(404, f"model {chat.model!r} is not served here; this server has {model_name!r}",
                           "not_found_error")
        gen = GenRequest(
            image=chat.image,
            messages=chat.messages,
            max_new_tokens=chat.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=chat.stop,
            seed=chat.seed,
            prompt_ids=prompt_ids,
        )
        request.state.note = f"{chat.image.shape[1]}x{chat.image.shape[0]}px"
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            if chat.stream:
                job = batcher.submit_stream(gen, waker=lambda: loop.call_soon_threadsafe(wake.set))
            else:
                job = batcher.submit(gen)
        except Busy as exc:
            raise ApiError(429, f"server busy: {exc}", "rate_limit_error", {"Retry-After": "1"}) from exc
        if chat.stream:
            events = _sse(job, wake, chat, reply_id, created, model_name, settings.request_timeout_s,
                          request.state, held)
            headers = {"Cache-Control": "no-cache"}
            # Also after the response, in case the stream never started (the client left before it).
            after = BackgroundTask(_end_stream, job, held)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers, background=after)
        try:
            result = await _result_of(request, job, settings.request_timeout_s)
        except asyncio.TimeoutError as exc:
            raise ApiError(504, "generation timed out", "timeout_error") from exc
        except ValueError as exc:  # the pipeline found the request unfit
            raise ApiError(400, f"the model cannot take this request: {exc}") from exc
        except ApiError:
            raise
        except Exception as exc:  # the pipeline failed: report it, keep serving
            log.exception("generation failed")
            raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from exc
        request.state.note += f" tokens={result.tokens} batch={job.batch_size}"
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": _finish(result.finish_reason),
                }
            ],
            "usage": _usage(result),
        }

    return app


async def _result_of(request: Request, job, timeout: float, poll_s: float = 0.5):
    """The job's result, checking every `poll_s` that the client is still there; the job is cancelled when
    it is gone (499) or after `timeout` (`asyncio.TimeoutError`)."""
    future = asyncio.wrap_future(job.future)
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError
            done, _ = await asyncio.wait({future}, timeout=min(poll_s, remaining))
            if done:
                return future.result()
            if await request.is_disconnected():
                raise ApiError(499, "the client closed the connection", "client_closed_request")
    finally:
        if not future.done():
            job.cancel()
            future.cancel()  # whatever the worker sets later is dropped, never "never retrieved"


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


def _usage(result) -> dict:
    prompt, tokens = int(result.prompt_tokens), int(result.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}


def _error_response(status: int, message: str, kind: str, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request, settings: Settings, held) -> bytes:
    """The body, at most `max_body_bytes`; beyond that 413, after reading on a little (so that the client
    gets to see the answer instead of a reset connection) but never more than four times the limit. The
    bytes kept are held on the memory budget (`held`, a `Reservation`: 429 when it is spent); 408 when the
    body is slower than `body_timeout_s`, 499 when the client leaves meanwhile."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > 4 * limit):
        raise ApiError(413, f"body over the limit of {limit} bytes")
    parts, size = [], 0

    async def consume():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                held.resize(2 * size)  # the chunks, then their join: what came, not what was announced
                parts.append(chunk)
            elif size > 4 * limit:
                break

    async def discard():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > 4 * limit:
                break

    held.reading(True)
    try:
        try:
            await asyncio.wait_for(consume(), settings.body_timeout_s)
        except OverBudget as exc:  # read on without keeping it, so that the client sees the 429, not a reset
            parts.clear()
            held.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(discard(), settings.body_timeout_s)
            raise ApiError(429, f"server busy: {exc}", "rate_limit_error", {"Retry-After": "1"}) from exc
    except asyncio.TimeoutError as exc:
        raise ApiError(408, f"body not received within {settings.body_timeout_s:.0f} s") from exc
    except ClientDisconnect as exc:
        raise ApiError(499, "the client closed the connection", "client_closed_request") from exc
    finally:
        held.reading(False)
    if size > limit:
        raise ApiError(413, f"body over the limit of {limit} bytes")
    return b"".join(parts)


async def _sse(job, wake: asyncio.Event, chat: ChatRequest, reply_id: str, created: int, model: str,
               timeout: float, state, held):
    """Server-sent events in OpenAI's chunk shape, ending with [DONE]; an error ends the stream without it.
    The job's pieces are taken from its queue each time the worker wakes `wake`: no thread waits on a stream.
    A client that leaves cancels this generator: the job is cancelled, the request logged as 499."""

    def event(delta: Optional[dict], finish: Optional[str] = None, **extra) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model}
        return f"data: {json.dumps(dict(chunk, choices=choices, **extra))}\n\n".encode()

    from ..models.pipeline import StreamDone

    done, ended = None, False
    try:
        yield event({"role": "assistant", "content": ""})
        while not ended:
            try:
                item = job.pieces.get_nowait()
            except queue.Empty:
                wake.clear()
                if job.pieces.empty():
                    try:
                        await asyncio.wait_for(wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        yield _sse_error(f"no output for {timeout:.0f} s", 504, "timeout_error")
                        return
                continue
            if item is END:
                ended = True
            elif isinstance(item, ValueError):  # as for a plain request: the request is unfit
                yield _sse_error(f"the model cannot take this request: {item}", 400, "invalid_request_error")
                return
            elif isinstance(item, BaseException):  # the client must learn that the stream failed
                log.error("stream failed: %s: %s", type(item).__name__, item)
                yield _sse_error(f"generation failed: {type(item).__name__}: {item}")
                return
            elif isinstance(item, StreamDone):
                done = item.result
            elif item:
                yield event({"content": item})
        if done is None:
            yield _sse_error("the stream ended without a result")
            return
        yield event({}, _finish(done.finish_reason))
        if chat.include_usage:
            yield event(None, usage=_usage(done))
        yield b"data: [DONE]\n\n"
        state.note = f"{state.note} tokens={done.tokens} batch={job.batch_size}"
        ended = True
    except (asyncio.CancelledError, GeneratorExit, OSError):
        state.client_left = True
        raise
    finally:
        _end_stream(job, held)


def _end_stream(job, held) -> None:
    if not job.finished:
        job.cancel()
    held.close()


def _sse_error(message: str, code: int = 500, kind: str = "server_error") -> bytes:
    return f"data: {json.dumps({'error': {'message': message, 'type': kind, 'code': code}})}\n\n".encode()


class _BearerKey:
    """ASGI middleware: every route but /health needs `Authorization: Bearer KEY` (401 otherwise)."""

    def __init__(self, app, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, key = header.partition(b" ")
            if not (hmac.compare_digest(key.strip(), self.key) and scheme.lower() == b"bearer"):
                message = "a valid API key is needed (Authorization: Bearer KEY)"
                refusal = _error_response(401, message, "authentication_error", {"WWW-Authenticate": "Bearer"})
                return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


class _RequestLog:
    """ASGI middleware: one log line per request (client, method, path, status, bytes, seconds, note), and
    the number of requests in flight for the paths counted in `in_flight`."""

    def __init__(self, app, in_flight: dict):
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, sent = [0], [0]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                sent[0] += len(message.get("body", b""))
            await send(message)

        counted = scope["path"] in self.in_flight
        if counted:
            self.in_flight[scope["path"]] += 1
        try:
            await self.app(scope, receive, send_logged)
        finally:
            if counted:
                self.in_flight[scope["path"]] -= 1
            client = scope.get("client") or ("-", 0)
            state = scope.get("state") or {}
            note = state.get("note", "")
            if state.get("client_left"):
                status[0], note = 499, f"{note} (the client left during the stream)".strip()
            log.info(
                '%s "%s %s" %s %dB %.3fs %s',
                client[0], scope["method"], scope["path"], status[0] or "-", sent[0],
                time.perf_counter() - started, note,
            )


def run(app, host: str = "127.0.0.1", port: int = 8000, ready_file=None, graceful_s: float = 15.0,
        max_connections: int = 2048, header_timeout_s: float = 10.0, parent_alive=None) -> None:
    """Serve `app` until SIGINT/SIGTERM, or until `parent_alive()` turns false (checked every second), then
    finish the requests in flight (up to `graceful_s`). Port 0 takes a free port; once listening, the URL is
    logged and, with `ready_file`, written there as JSON (removed when the server stops). At most
    `max_connections` are open (the file descriptor limit is raised to fit where allowed); request headers must
    come within `header_timeout_s`."""
    import uvicorn

    max_connections = _fit_descriptors(max_connections)
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, timeout_keep_alive=5, log_config=None,
        timeout_graceful_shutdown=graceful_s, server_header=False,
        http=guarded_protocol(header_timeout_s, max_connections),
    )
    sock = config.bind_socket()
    bound = sock.getsockname()
    address = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{address}:{bound[1]}"

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                log.info("listening on %s", url)
                if ready_file:
                    _write_atomic(ready_file, json.dumps({"url": url, "pid": os.getpid()}))
                if parent_alive is not None:
                    self.lifeline = asyncio.ensure_future(self.watch_parent())

        async def shutdown(self, sockets=None):
            await super().shutdown(sockets)
            forget_ready()  # here too: after a SIGTERM uvicorn raises the signal again once shut down (uvicorn
            # Server.capture_signals), and the process ends before the `finally` below

        async def watch_parent(self):
            while not self.should_exit:
                if not parent_alive():
                    log.warning("the process that started this engine is gone; stopping")
                    self.should_exit = True
                await asyncio.sleep(1.0)

    def forget_ready():
        if ready_file:  # a stopped engine leaves no file saying it listens
            with contextlib.suppress(OSError):
                os.remove(ready_file)

    try:
        Server(config).run(sockets=[sock])
    finally:
        forget_ready()


def _fit_descriptors(connections: int, spare: int = 128) -> int:
    """Raise the soft limit of open files to hold `connections` sockets plus `spare` (model files, logs) where
    the hard limit allows; the connections that fit."""
    try:
        import resource
    except ImportError:  # Windows: no such limit on sockets
        return connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + spare
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft - spare < connections:
        log.warning("only %d open files allowed: at most %d connections", soft, max(1, soft - spare))
        return max(1, soft - spare)
    return connections


def _write_atomic(path, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
