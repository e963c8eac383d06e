"""The `geovlm` command line. Each command module registers its subcommands; heavy imports stay inside the
command functions, so `geovlm --help` is instant."""
from __future__ import annotations

import importlib
import os
import sys
from typing import List, Optional

from .arguments import CommandParser

# What `geovlm --help` shows to try first: each line runs as it is in a clone, from its root (make demo runs the
# first two; tests/test_cli_help.py runs every example of every help).
EXAMPLES = """examples (in a clone, from its root; each writes its output in the current folder):
  geovlm ask sample/aerial.tif "[grounding]Describe the image and locate what you name." --family geochat --out ask.gpkg
  geovlm parse sample/earthdial_refer.jsonl --family earthdial --image-size 800x800 --out earthdial_refer.gpkg
  geovlm eval detection sample/earthdial_refer.jsonl --family earthdial

`geovlm COMMAND --help` gives each command's options (and examples)."""

# Modules that define `register(subparsers)`; each adds its own subcommands.
COMMAND_MODULES = ("parse_cmd", "engine_cmds", "serve_cmds", "eval_cmd", "bulk_cmds")


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def input_file(path, what: str = "input"):
    """`path` as a `pathlib.Path` when it names a file; CliError in one line when it does not exist or names a
    folder (which is not "not found": a shell's tab completion gives folders)."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise CliError(f"{what} {path} is a folder: give a file")
    if not path.is_file():
        raise CliError(f"{what} not found: {path}")
    return path


def check_text_argument(text: str, what: str) -> None:
    """CliError in one line when a text argument (`what`, e.g. "the question") holds bytes that are not UTF-8.
    Python keeps such bytes of `sys.argv` as lone surrogates (U+DC80..U+DCFF, PEP 383's surrogateescape), which
    no tokenizer takes (the Rust tokenizers raised a TypeError after the model had loaded) and JSON cannot carry
    to an engine."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        shown = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"\\u{char:04x}"
        raise CliError(f"{what} is not UTF-8 text ({shown} at character {exc.start + 1}): set the terminal to "
                       "UTF-8, or write the text again") from None


def build_parser() -> CommandParser:
    """The `geovlm` argument parser: --version and one subcommand per module of COMMAND_MODULES that this build
    holds (a group whose module is missing is left out). No command given parses to `command` None (`main`
    prints the help)."""
    from .. import __version__

    parser = CommandParser(  # its subcommands' parsers too: options may take values beginning with '-'
        prog="geovlm", description="Remote-sensing vision-language models, answered in map coordinates.",
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"geovlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")  # none given: main prints the help
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(name):
                continue  # that group of commands is not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run `geovlm` with `argv` (default sys.argv[1:]); returns the exit status: the command's (0 done), 2 for
    a CliError (said in one line, "geovlm COMMAND: ...") or no command (the help printed), 130 for Ctrl-C, 141
    (128 + SIGPIPE) when the reader of the standard output left (`| head`), without a traceback.
    Hugging Face libraries are kept offline unless the environment says otherwise."""
    from ..engine.cpu_threads import use_passive_wait

    use_passive_wait()  # before any command imports torch (engine/cpu_threads.py)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `geovlm`: the help (its list of commands), not a usage error; exit 2
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"geovlm {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        sys.stdout.flush()  # a partial answer's line ends before the message
        print(f"\ngeovlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `geovlm eval ... | head -3`: the reader left; end quietly, as a tool SIGPIPE ends
        _stdout_to_devnull()
        return 141


def _stdout_to_devnull() -> None:
    """Point the standard output at the null device, so that Python's flush at exit does not fail on the closed
    pipe a second time ("Exception ignored ... BrokenPipeError"; the `signal` module's documentation, "Note on
    SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
