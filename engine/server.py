"""`geovlm serve`: an OpenAI-compatible HTTP server around a `VlmPipeline`.

Routes: POST /v1/chat/completions (JSON or server-sent events), GET /v1/models (with a "geovlm" entry:
family, input size, fit mode, image tokens, whether the model is a random stand-in) and GET /health (the
one route open without the key, for launchers and load balancers). Secure defaults: loopback, an optional
bearer key, a body size limit, a pixel limit, timeouts; one log line per request.
"""
import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .batching import Batcher, Busy
from .protocol import ChatRequest, ProtocolError, parse_chat

log = logging.getLogger("geovlm.engine")
BATCHER_STOP_S = 5.0  # after the graceful period, for the batcher to finish; both within the launcher's wait


@dataclass
class Settings:
    """Server limits and batching. Sizes in bytes and pixels, times in seconds."""

    api_key: Optional[str] = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_tokens_limit: int = 2048
    batch_window_s: float = 0.01
    max_batch: int = 8
    max_queue: int = 256
    max_queued_pixels: int = 4 * 4096 * 4096  # of the images waiting or in generation (429 beyond)
    decode_concurrency: int = 2  # bodies parsed and images decoded at once
    request_timeout_s: float = 300.0
    body_timeout_s: float = 30.0
    graceful_s: float = 15.0  # on SIGTERM, for the requests in flight


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
    info = dict(pipeline.info())
    model_name = str(info.get("model") or "geovlm")
    batcher = Batcher(
        pipeline, settings.batch_window_s, settings.max_batch, settings.max_queue, settings.max_queued_pixels
    )
    decode_slots = asyncio.Semaphore(settings.decode_concurrency)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        stand_in = " (a random stand-in: its answers are noise)" if info.get("random_stand_in") else ""
        log.info("serving %s, family %s%s", model_name, info.get("family"), stand_in)
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
        raw = await _read_body(request, settings)
        try:
            async with decode_slots:  # a decoded image can be a hundred times its file
                chat = await run_in_threadpool(parse_chat, raw, settings.max_pixels, settings.max_tokens_limit)
        except ProtocolError as exc:
            raise ApiError(exc.status, str(exc), exc.kind) from exc
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
        )
        request.state.note = f"{chat.image.shape[1]}x{chat.image.shape[0]}px"
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        try:
            job = batcher.submit_stream(gen) if chat.stream else batcher.submit(gen)
        except Busy as exc:
            raise ApiError(429, f"server busy: {exc}", "rate_limit_error", {"Retry-After": "1"}) from exc
        if chat.stream:
            events = _sse(batcher, job, chat, reply_id, created, model_name, settings.request_timeout_s)
            headers = {"Cache-Control": "no-cache"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        try:
            result = await _result_of(request, job, settings.request_timeout_s)
        except asyncio.TimeoutError as exc:
            raise ApiError(504, "generation timed out", "timeout_error") from exc
        except ValueError as exc:  # the pipeline found the request unfit
            raise ApiError(400, f"the model cannot take this request: {exc}") from exc
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


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


def _usage(result) -> dict:
    prompt, tokens = int(result.prompt_tokens), int(result.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}


def _error_response(status: int, message: str, kind: str, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request, settings: Settings) -> bytes:
    """The body, at most `max_body_bytes`; beyond that 413, after reading on a little (so that the client
    gets to see the answer instead of a reset connection) but never more than four times the limit."""
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
                parts.append(chunk)
            elif size > 4 * limit:
                break

    try:
        await asyncio.wait_for(consume(), settings.body_timeout_s)
    except asyncio.TimeoutError as exc:
        raise ApiError(408, f"body not received within {settings.body_timeout_s:.0f} s") from exc
    if size > limit:
        raise ApiError(413, f"body over the limit of {limit} bytes")
    return b"".join(parts)


def _sse(batcher: Batcher, job, chat: ChatRequest, reply_id: str, created: int, model: str, timeout: float):
    """Server-sent events in OpenAI's chunk shape, ending with [DONE]; an error ends the stream without it."""

    def event(delta: Optional[dict], finish: Optional[str] = None, **extra) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model}
        return f"data: {json.dumps(dict(chunk, choices=choices, **extra))}\n\n".encode()

    from ..models.pipeline import StreamDone

    yield event({"role": "assistant", "content": ""})
    done = None
    try:
        for piece in batcher.pieces(job, timeout):
            if isinstance(piece, StreamDone):
                done = piece.result
            elif piece:
                yield event({"content": piece})
    except ValueError as exc:  # as for a plain request: the request is unfit
        yield _sse_error(f"the model cannot take this request: {exc}", 400, "invalid_request_error")
        return
    except Exception as exc:  # the client must learn that the stream failed
        log.error("stream failed: %s: %s", type(exc).__name__, exc)
        yield _sse_error(f"generation failed: {type(exc).__name__}: {exc}")
        return
    if done is None:
        yield _sse_error("the stream ended without a result")
        return
    yield event({}, _finish(done.finish_reason))
    if chat.include_usage:
        yield event(None, usage=_usage(done))
    yield b"data: [DONE]\n\n"


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
            note = getattr(scope.get("state", {}), "get", lambda *_: "")("note", "")
            log.info(
                '%s "%s %s" %s %dB %.3fs %s',
                client[0], scope["method"], scope["path"], status[0] or "-", sent[0],
                time.perf_counter() - started, note,
            )


def run(app, host: str = "127.0.0.1", port: int = 8000, ready_file=None, graceful_s: float = 15.0,
        limit_connections: int = 512, parent_alive=None) -> None:
    """Serve `app` until SIGINT/SIGTERM, or until `parent_alive()` turns false (checked every second), then
    finish the requests in flight (up to `graceful_s`). Port 0 takes a free port; once listening, the URL
    is logged and, with `ready_file`, written there as JSON."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, timeout_keep_alive=5, log_config=None,
        timeout_graceful_shutdown=graceful_s, limit_concurrency=limit_connections, server_header=False,
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

        async def watch_parent(self):
            while not self.should_exit:
                if not parent_alive():
                    log.warning("the process that started this engine is gone; stopping")
                    self.should_exit = True
                await asyncio.sleep(1.0)

    Server(config).run(sockets=[sock])


def _write_atomic(path, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
