"""`geovlm serve` (the engine server) and `geovlm engine-check`; `engine_for(args)` gives other commands a
client, starting a local engine when no `--engine URL` is given."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import urllib.parse
from pathlib import Path

from ..engine.launcher import KEY_VARIABLE
from . import CliError, check_text_argument
from .parse_cmd import add_profile_overrides, profile_overrides


def register(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a vision-language model over the OpenAI chat-completions API (with images). "
        "Without --model it serves the demo model, a random stand-in whose answers are noise.",
    )
    serve.add_argument("--model", metavar="DIR", help="llava-hf or MiniGPT-v2 folder (default: the demo)")
    serve.add_argument("--family", help="model family, when the checkpoint does not say")
    add_profile_overrides(serve)
    serve.add_argument("--encoder", metavar="FILE.onnx", help="ONNX vision encoder (default: exported once)")
    add_encoder_precision_arg(serve)
    serve.add_argument("--device", help="language-model device: cuda or cpu (default: cuda when present)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=port_number, default=8000, dash_value=True,
                       help="port; 0 takes a free one (default: 8000)")
    add_key_args(serve, "require this bearer key")
    serve.add_argument("--max-body-mb", type=float, default=32.0, help="request size limit (default: 32)")
    serve.add_argument("--max-pixels", type=int, default=4096 * 4096, help="image pixel limit")
    serve.add_argument("--max-tokens", type=int, default=None,
                       help="largest max_tokens accepted (default: the model's context; 2048 where it does not say)")
    serve.add_argument("--batch-window-ms", type=float, default=10.0, help="batching window (default: 10)")
    serve.add_argument("--max-batch", type=int, default=8, help="largest batch (default: 8)")
    serve.add_argument("--max-queue", type=int, default=256, help="queued requests before 429")
    serve.add_argument("--max-queued-pixels", type=int, default=4 * 4096 * 4096,
                       help="pixels of the images queued or in generation before 429 (default: four 4096x4096)")
    serve.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")
    serve.add_argument("--memory-budget-mb", type=float, default=512.0,
                       help="request bodies and decoded images held at once before 429 (default: 512)")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds for a connection's request headers before it is closed (default: 10)")
    serve.add_argument("--max-connections", type=int, default=2048,
                       help="open connections; beyond, the one idle longest is closed (default: 2048)")
    serve.add_argument("--ready-file", help="write {url, pid} as JSON here once listening (for launchers)")
    serve.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # the launcher's: exit when it is gone
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "engine-check",
        help="ask an engine (or a local one) one question about a test image",
        description="Check an engine: health, the served model, and one streamed answer about a test image.",
    )
    add_engine_args(check)
    check.add_argument("--question", default="Describe the image.", dash_value=True, help="the question to ask")
    check.add_argument("--max-tokens", type=int, default=32)
    check.add_argument("--temperature", type=float, default=0.0, help="0 (greedy) to 2")
    add_retry_window_arg(check, ENGINE_CHECK_RETRY_WINDOW_S, "it is a check: an engine that is down is said "
                         "so soon")
    add_request_timeout_arg(check)
    check.set_defaults(func=cmd_engine_check)


ENGINE_CHECK_RETRY_WINDOW_S = 10.0
# Libraries whose INFO lines say nothing to a user of `serve` (the ONNX exporter logs each graph rewrite).
QUIET_LOGGERS = ("onnxscript", "onnx_ir")


def add_retry_window_arg(parser: argparse.ArgumentParser, default=None, why: str = "") -> None:
    """--retry-window S: how long a request is retried while no engine answers (`engine_for` applies it)."""
    from ..core.client import DEFAULT_RETRY_WINDOW_S, MAX_RETRY_WINDOW_S

    shown = default if default is not None else DEFAULT_RETRY_WINDOW_S
    parser.add_argument("--retry-window", type=float, default=default, metavar="S",
                        help=f"seconds a request is retried while no engine answers (default: {shown:g}"
                        + (f"; {why}" if why else ", time for an engine to restart")
                        + f"; 0 to {MAX_RETRY_WINDOW_S:g})")


def add_request_timeout_arg(parser: argparse.ArgumentParser) -> None:
    """--request-timeout S: how long one attempt of a request waits for the engine (`engine_for` applies it)."""
    from ..core.client import DEFAULT_REQUEST_TIMEOUT_S, MAX_REQUEST_TIMEOUT_S

    parser.add_argument("--request-timeout", type=float, default=None, metavar="S",
                        help=f"seconds one attempt waits for the engine to connect or send its answer before it is "
                        f"given up and retried within --retry-window (default: {DEFAULT_REQUEST_TIMEOUT_S:g}; more "
                        f"than 0, at most {MAX_REQUEST_TIMEOUT_S:g})")


def request_timeout(args) -> float | None:
    """The --request-timeout of `args` (None when not given); CliError in one line when it is not a number of
    seconds more than 0 and at most `core.client.MAX_REQUEST_TIMEOUT_S`. Commands call it with their other
    checks, before any raster is read or engine contacted; `engine_for` applies it."""
    from ..core.client import MAX_REQUEST_TIMEOUT_S

    timeout = getattr(args, "request_timeout", None)
    if timeout is not None and not 0 < timeout <= MAX_REQUEST_TIMEOUT_S:
        raise CliError(f"--request-timeout is the seconds one attempt waits, more than 0 and at most "
                       f"{MAX_REQUEST_TIMEOUT_S:g}, not {timeout:g}")
    return timeout


def retry_window(args) -> float | None:
    """The --retry-window of `args` (None when not given); CliError in one line when it is not a number of seconds
    from 0 to `core.client.MAX_RETRY_WINDOW_S` (a day, the bound of the bulk algorithms' RETRY_WINDOW). Commands
    call it with their other checks, before any raster is read or engine contacted; `engine_for` applies it."""
    from ..core.client import MAX_RETRY_WINDOW_S

    window = getattr(args, "retry_window", None)
    if window is not None and not 0 <= window <= MAX_RETRY_WINDOW_S:
        raise CliError(f"--retry-window must be 0 or more seconds, at most {MAX_RETRY_WINDOW_S:g} (a day), "
                       f"not {window:g}")
    return window


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The options `engine_for` reads: --engine, --api-key, --family, --model, --engine-python."""
    parser.add_argument("--engine", metavar="URL[,URL...]", help="engine URL(s); default: a local one")
    add_key_args(parser)
    parser.add_argument("--family", help="model family (needed for vLLM: it does not report it)")
    parser.add_argument("--model", metavar="DIR", help="checkpoint of the local engine (default: demo)")
    parser.add_argument("--engine-python", help="Python that runs the local engine (default: this one)")
    parser.add_argument("--max-concurrent", type=int, default=4, help="requests in flight per engine")


def add_key_args(parser: argparse.ArgumentParser, what: str = "bearer key of the engine") -> None:
    """--api-key-file and --api-key (the key from the environment is preferred: a flag shows in `ps`)."""
    parser.add_argument("--api-key-file", metavar="FILE", help=f"{what}, read from FILE (first line)")
    parser.add_argument("--api-key", dash_value=True, help=f"{what} (visible to other local users in the process "
                        f"list: prefer {KEY_VARIABLE} or --api-key-file)")


def api_key_from(args) -> str | None:
    """The key of --api-key-file, else of --api-key (with a warning: other users can read it in `ps`), else
    of the GEOVLM_API_KEY environment variable; None when none is given. CliError in one line for a file that
    cannot be read (or is not UTF-8 text) and for a key that is not printable ASCII: it travels in an HTTP
    header (`Authorization: Bearer KEY`), where a client would send "é" as one Latin-1 byte and the server
    compare it with its two UTF-8 bytes, refusing every request."""
    path = getattr(args, "api_key_file", None)
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:  # a UnicodeDecodeError has no strerror
            raise CliError(f"cannot read the API key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise CliError(f"the API key file {path} is empty")
        return _ascii_key(key, f"the API key file {path}")
    if getattr(args, "api_key", None):
        print(f"geovlm: warning: --api-key shows the key to every local user in the process list; set "
              f"{KEY_VARIABLE} or use --api-key-file instead", file=sys.stderr)
        return _ascii_key(args.api_key, "--api-key")
    key = os.environ.get(KEY_VARIABLE) or None
    return key if key is None else _ascii_key(key, KEY_VARIABLE)


def _ascii_key(key: str, where: str) -> str:
    if not (key.isascii() and key.isprintable()):
        raise CliError(f"{where} holds a key that is not printable ASCII: an API key travels in an HTTP header; "
                       "use letters, digits and punctuation")
    return key


def engine_for(args):
    """An `EngineClient` for `args`: the --engine URLs, else a local engine started now (and stopped when
    this process exits). The client's `local_engine` is that launcher, or None."""
    from ..core.client import EngineClient
    from ..engine.launcher import EngineStartError, LocalEngine

    family = getattr(args, "family", None)
    if family:
        from ..core.profiles import get_profile

        try:
            get_profile(family)
        except ValueError as exc:  # said as --family's fault, before any engine is reached or started
            raise CliError(f"--family: {exc}") from None
    concurrent = getattr(args, "max_concurrent", 4)
    if concurrent < 1:
        raise CliError("--max-concurrent must be at least 1")
    retry_window(args)
    request_timeout(args)
    if getattr(args, "engine", None):
        urls = [u.strip() for u in args.engine.split(",") if u.strip()]
        key = api_key_from(args)
        try:
            client = EngineClient(urls, api_key=key, profile=family, max_concurrent=concurrent)
        except ValueError as exc:  # not an http(s) URL, or an unknown family
            raise CliError(f"--engine: {exc}") from None
        _warn_plain_http(urls, key)
        client.local_engine = None
        return _with_retry_options(client, args)
    engine = LocalEngine(
        python=getattr(args, "engine_python", None), model=getattr(args, "model", None), family=family
    )
    print("geovlm: starting a local engine ...", file=sys.stderr)
    _say_launcher_events()
    try:
        engine.start()
    except EngineStartError as exc:
        raise CliError(f"the local engine did not start: {exc}") from exc
    return _with_retry_options(client_for_local(engine, family, concurrent), args)


def _with_retry_options(client, args):
    """`client` with the --retry-window and --request-timeout of `args` (when given) and a first-failure line on
    stderr: one line as soon as a request first fails ("cannot reach URL: connection refused; retrying for up to
    120 s ..."), so that nobody waits out the retry window in silence."""
    import threading

    from ..core.client import NO_ANSWER

    window = retry_window(args)
    if window is not None:
        client.retry_window = window
    timeout = request_timeout(args)
    if timeout is not None:
        client.timeout = timeout
    said = threading.Event()

    def say(message: str, window_s: float) -> None:
        if not said.is_set():
            said.set()
            slow = " (--request-timeout to change)" if NO_ANSWER in message else ""
            print(f"geovlm: {message}{slow}; retrying for up to {window_s:.0f} s (--retry-window to change, "
                  "Ctrl-C to stop)", file=sys.stderr, flush=True)

    client.on_first_failure = say
    return client


class _FirstLine(logging.Handler):
    """Launcher events on stderr, one line each (a crash's message carries the engine's log tail)."""

    def emit(self, record: logging.LogRecord) -> None:
        lines = self.format(record).splitlines()
        print(f"geovlm: {lines[0].rstrip(':') if lines else ''}", file=sys.stderr, flush=True)


def _say_launcher_events() -> None:
    """Show the local launcher's warnings and errors (a crash, a restart, giving up) in one line each; without
    a handler, Python would print each whole, the engine's last 30 lines of log included."""
    logger = logging.getLogger("geovlm.launcher")
    if not any(isinstance(h, _FirstLine) for h in logger.handlers):
        handler = _FirstLine(logging.WARNING)
        logger.addHandler(handler)
        logger.propagate = False


def client_for_local(engine, family=None, max_concurrent: int = 4):
    """An `EngineClient` of a started `LocalEngine`: its retries ride out the engine's restarts (for as long as
    the launcher may take to start it again) and end at once when the launcher gives up (the client's errors
    then say so, and why, in one line)."""
    from ..core.client import DEFAULT_RETRY_WINDOW_S, EngineClient

    window = max(DEFAULT_RETRY_WINDOW_S, engine.start_timeout + 30.0)
    client = EngineClient(engine.url, api_key=engine.api_key, profile=family, max_concurrent=max_concurrent,
                          retry_window=window)
    client.local_engine = engine
    engine.on_down = lambda error: client.engine_down(engine.down_reason or error)
    if engine.down_reason:  # it gave up before the hook was in place
        client.engine_down(engine.down_reason)
    return client


def port_number(text: str) -> int:
    """A TCP port for argparse: an integer from 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def _check_port_free(host: str, port: int) -> None:
    """CliError in one line when `host`:`port` cannot be listened on (another server holds it, or the address
    is not this machine's). Bound as uvicorn binds (SO_REUSEADDR), then closed; port 0 (any free port) is bound
    too, which checks the address."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = ("another server holds it, perhaps an engine already running: choose another --port, or 0 for a "
                "free one" if exc.errno == errno.EADDRINUSE else f"is {host} an address of this machine?")
        raise CliError(f"cannot listen on {host}:{port}: {reason}; {hint}") from None


def add_encoder_precision_arg(parser) -> None:
    """--encoder-precision fp32|int8: the precision of the encoder exported next to the model."""
    parser.add_argument("--encoder-precision", choices=("fp32", "int8"), default="fp32",
                        help="int8: the encoder quantised for the CPU (2-3x faster), used where its features pass "
                        "the parity gate against fp32 (else fp32 serves, with one warning); it can move a box the "
                        "model is unsure of (README); default fp32")


def cmd_serve(args) -> int:
    """`geovlm serve`: load the model (--model, else the demo model) and serve it over HTTP on --host:--port
    (loopback by default) until stopped; 0 then. CliError (one line) for bad options, an address that cannot
    be listened on or a --ready-file without its folder, each before the model loads, and for a model that
    cannot be loaded."""
    from ..engine.lifeline import watch_parent
    from ..engine.server import Settings, create_app, run
    from ..models.checkpoints import CheckpointError
    from ..models.cpu_decode_step import threading_layer
    from ..models.encoder_runtime import EncoderError
    from ..models.pipeline import VlmPipeline
    from .engine_cmds import check_device_arg, ready_demo_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in QUIET_LOGGERS:  # the ONNX exporter's passes log each rewrite at INFO: dozens of lines a start
        logging.getLogger(chatty).setLevel(logging.WARNING)
    parent_alive = watch_parent(args.parent_pid) if args.parent_pid else None
    key = api_key_from(args)
    check_device_arg(args.device)
    overrides = profile_overrides(args)
    _check_port_free(args.host, args.port)  # before the model loads (a minute for a real one), not after
    if args.ready_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.ready_file))):
        raise CliError(f"--ready-file: the folder of {args.ready_file} does not exist")  # found once listening
    if not _is_loopback(args.host) and not key:
        print(f"geovlm serve: warning: listening on {args.host} without an API key", file=sys.stderr)
    if args.max_tokens is not None and args.max_tokens < 1:
        raise CliError("--max-tokens must be at least 1 (or left out: the model's context)")
    _check_serve_limits(args)
    model = args.model
    if model is None:
        model = ready_demo_model()
        print(f"geovlm serve: no --model given; serving the demo model at {model}, a random stand-in: "
              "its answers are noise", file=sys.stderr)
    try:
        pipeline = VlmPipeline.load(model, family=args.family, encoder_onnx=args.encoder, device=args.device,
                                    overrides=overrides, encoder_precision=args.encoder_precision)
    except (OSError, ValueError, CheckpointError, EncoderError) as exc:
        raise CliError(str(exc)) from exc
    if pipeline.lm.decoder is not None:  # ready only once the compiled CPU step is (the first requests would wait)
        kernel = pipeline.lm.decoder.step_kernel
        threads = f" ({threading_layer()} threads)" if kernel == "numba" else ""
        logging.getLogger("geovlm.engine").info("decode steps: %s%s", kernel, threads)
    settings = Settings(
        api_key=key,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_tokens_limit=args.max_tokens,
        batch_window_s=args.batch_window_ms / 1000.0,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_queued_pixels=args.max_queued_pixels,
        request_timeout_s=args.request_timeout,
        memory_budget_bytes=int(args.memory_budget_mb * 1024 * 1024),
        header_timeout_s=args.header_timeout,
        max_connections=args.max_connections,
    )
    try:
        run(create_app(pipeline, settings), args.host, args.port, args.ready_file, settings.graceful_s,
            settings.max_connections, settings.header_timeout_s, parent_alive=parent_alive)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    return 0


# Options of `serve` that are sizes, counts or times: each must be a finite number above 0 (the batching window
# may be 0: no waiting). Checked one by one, so that nan (which no comparison refuses) and inf (which int() of
# the bytes cannot take) are named in one line before the model loads.
POSITIVE_LIMITS = ("max_body_mb", "max_pixels", "max_batch", "max_queue", "max_queued_pixels", "memory_budget_mb",
                   "header_timeout", "max_connections", "request_timeout")


def _check_serve_limits(args) -> None:
    """CliError naming the first of `serve`'s limits that is not a finite number above 0 (--batch-window-ms: not
    below 0)."""
    import math

    for name in POSITIVE_LIMITS + ("batch_window_ms",):
        value = getattr(args, name)
        low_ok = value >= 0 if name == "batch_window_ms" else value > 0
        if not (math.isfinite(value) and low_ok):
            flag = "--" + name.replace("_", "-")
            wanted = "0 or more" if name == "batch_window_ms" else "more than 0"
            raise CliError(f"{flag} must be a finite number, {wanted}, not {value}")


def cmd_engine_check(args) -> int:
    import json

    import numpy as np
    from PIL import Image, ImageDraw

    from ..core.client import EngineError
    from ..models.preprocess import ArraySource

    check_generation_args(args.max_tokens, args.temperature, "--max-tokens")
    if not args.question.strip():
        raise CliError("--question is empty: ask something, e.g. \"Describe the image.\"")
    check_text_argument(args.question, "--question")
    request_timeout(args)  # said before any engine is started or reached, as ask does
    retry_window(args)
    client = engine_for(args)
    try:
        health = client.health()
        listing = client.models()
        print(json.dumps({"health": health, "models": listing}, indent=2))
        image = Image.new("RGB", (320, 240), (70, 110, 60))
        ImageDraw.Draw(image).rectangle((100, 80, 180, 140), fill=(200, 200, 210))
        text, answer = client.ask(
            ArraySource(np.asarray(image)), None, args.question, max_tokens=args.max_tokens,
            temperature=args.temperature,
            on_token=lambda piece: print(piece, end="", flush=True), on_restart=show_restart,
        )
        print(f"\n-- {answer.summary()}")
    except EngineError as exc:
        raise CliError(str(exc)) from exc
    finally:
        if client.local_engine is not None:
            client.local_engine.stop()
    return 0


def check_generation_args(max_tokens: int, temperature: float, tokens_flag: str) -> float:
    """The CLI's sampling values, checked as the server checks them (one line on error); the temperature the
    model gets (a vanishing one is greedy)."""
    from ..engine.protocol import check_sampling

    if max_tokens < 1:
        raise CliError(f"{tokens_flag} must be at least 1")
    try:
        return check_sampling(temperature)[0]
    except ValueError as exc:
        raise CliError(f"--{exc}") from None


def show_restart() -> None:
    """A streamed answer broke and is asked again: end the broken line and say so."""
    print(flush=True)
    print("[stream broke; answer restarted]", file=sys.stderr, flush=True)


def _warn_plain_http(urls, key) -> None:
    """One warning line on stderr for each plain-http URL of another machine: the images (and the key, when
    one is given) cross the network unencrypted, and an engine reached without a key is open to anyone who
    can reach it, as `geovlm serve` warns when it listens off loopback without one."""
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or _is_loopback(parts.hostname or ""):
            continue
        what = "the images and the API key" if key else "the images, with no API key,"
        print(f"geovlm: warning: {url} is plain http to another machine: {what} cross the network unencrypted "
              "(use https, or an SSH tunnel to a loopback port)", file=sys.stderr)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
