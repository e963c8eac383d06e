"""Engine commands: `demo-model`, `convert`, `export-encoder`, `ask`; heavy imports stay inside them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from . import CliError, check_text_argument
from .parse_cmd import add_profile_overrides, profile_overrides
from .serve_cmds import (
    add_encoder_precision_arg,
    add_key_args,
    add_request_timeout_arg,
    add_retry_window_arg,
    check_generation_args,
    request_timeout,
    retry_window,
)

STAND_IN_NOTE = (
    "NOTE: this is the demo model, a tiny randomly initialised stand-in: its answers are noise, "
    "not a reading of the image."
)


def register(sub) -> None:
    p = sub.add_parser("demo-model", help="write the tiny random stand-in checkpoint (for demos and tests)")
    p.add_argument("dir", help="folder to write the checkpoint into (llava-hf; MiniGPT-v2 for minigptv2/skyeyegpt)")
    from ..models.checkpoints import ARCHITECTURES  # standard library only

    p.add_argument("--family", default="geochat", help="family whose input size and prompts it follows (default "
                   f"geochat): {', '.join(name for names in ARCHITECTURES.values() for name in names)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser("convert", help="convert a checkpoint to a safetensors layout the engine loads")
    conv = p.add_subparsers(dest="kind", metavar="KIND")
    conv.required = True
    for family in ("geochat", "skysensegpt"):
        c = conv.add_parser(
            family, help=f"{family} (original LLaVA/GeoChat layout) + a local CLIP ViT-L/14-336"
        )
        c.add_argument("--src", required=True, help=f"the {family} checkpoint folder")
        c.add_argument("--clip", required=True, help="local openai/clip-vit-large-patch14-336 folder")
        c.add_argument("--out", required=True)
        c.add_argument("--image-size", type=int, default=504)
        c.set_defaults(func=cmd_convert, family=family)
    c = conv.add_parser("rsllava", help="RS-LLaVA: merge its LoRA onto the Mistral base, add CLIP")
    c.add_argument("--lora", required=True, help="the RS-LLaVA LoRA folder (adapter + non-LoRA trainables)")
    c.add_argument("--base", required=True, help="the base model folder (neural-chat-7b-v3-3)")
    c.add_argument("--clip", required=True, help="local openai/clip-vit-large-patch14-336 folder")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_convert, family="rsllava")
    c = conv.add_parser("minigptv2", help="MiniGPT-v2 / SkyEyeGPT: checkpoint + EVA ViT-g + LLaMA-2-chat, LoRA merged")
    c.add_argument("--ckpt", required=True, help="the checkpoint .pth (llama_proj and LoRA; read weights-only)")
    c.add_argument("--eva", required=True, help="the EVA ViT-g weights (eva_vit_g.pth or .safetensors)")
    c.add_argument("--llama", required=True, help="local Llama-2-7b-chat-hf folder")
    c.add_argument("--out", required=True)
    c.add_argument("--family", default="minigptv2", choices=("minigptv2", "skyeyegpt"))
    c.add_argument("--image-size", type=int, default=448)
    c.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the checkpoint's config, else 16)")
    c.add_argument("--vision-heads", type=int, help="attention heads of a reduced EVA (default: width / 88)")
    c.add_argument("--licence", help="the checkpoint's licence note (default: the family's)")
    c.set_defaults(func=cmd_convert)
    c = conv.add_parser("safetensors", help="a llava-hf folder with pickled .bin weights -> safetensors")
    c.add_argument("--src", required=True)
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_convert, family=None)

    p = sub.add_parser("export-encoder", help="export the vision encoder to ONNX and check it against torch")
    p.add_argument("--model", required=True, help="checkpoint folder (llava-hf or MiniGPT-v2)")
    p.add_argument("--out", required=True, help="FILE.onnx")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="half-precision weights (GPU inference)")
    precision.add_argument("--int8", action="store_true",
                           help="int8 dynamic quantisation for the CPU, written only if it passes its parity gate "
                           "against the fp32 export (per-token cosine >= 0.99, relative error <= 0.10)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--family", help="model family, when the folder has no geovlm.json")
    p.set_defaults(func=cmd_export_encoder)

    p = sub.add_parser(
        "ask", help="ask a model about a raster; stream the answer, optionally save its boxes",
        description="Ask a model about a raster (or a window of it): the answer streams, and --out writes its "
        "boxes on the raster's map. Without --model or --engine it asks the demo model, a random stand-in.",
        epilog="""examples (in a clone, from its root):
  geovlm ask sample/aerial.tif "[grounding]Describe the image and locate what you name." --family geochat --out ask.gpkg
  geovlm ask sample/aerial.tif "[refer] the road" --family geochat --window 0,0,384,384 --max-new-tokens 32""",
    )
    p.add_argument("raster")
    p.add_argument("question", help="the question, with the family's task word if any, e.g. '[grounding]...' "
                   "(after -- if it begins with '-')")
    p.add_argument("--model", help="checkpoint folder, llava-hf or MiniGPT-v2 (default: the random demo model)")
    p.add_argument("--family", help="model family (default: from the checkpoint's geovlm.json)")
    p.add_argument("--encoder", help="an exported encoder .onnx (default: exported next to the model)")
    add_encoder_precision_arg(p)
    p.add_argument("--window", dash_value=True, help="col,row,width,height of the raster to send")
    p.add_argument("--bands", default=None, dash_value=True,
                   help="three 1-based bands as red,green,blue (default 1,2,3; band 1 as grey "
                   "where the raster has one or two)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--providers", help="onnxruntime providers in order, comma-separated")
    p.add_argument("--out", help="OUT.gpkg or OUT.geojson for the grounded objects")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier --out")
    p.add_argument("--engine", metavar="URL[,URL...]|local",
                   help="ask an engine over HTTP (ours, vLLM, SGLang; 'local' starts one) instead of in-process")
    add_retry_window_arg(p)
    add_request_timeout_arg(p)
    add_key_args(p)
    add_profile_overrides(p)
    p.set_defaults(func=cmd_ask)


def demo_model_dir() -> Path:
    """Where `ask` keeps the demo model: $GEOVLM_CACHE/demo-model, else the repository's .cache/."""
    root = os.environ.get("GEOVLM_CACHE")
    base = Path(root) if root else Path(__file__).resolve().parents[1] / ".cache"
    return base / "demo-model"


def ready_demo_model() -> Path:
    """The demo model, written with its encoder on first use; both are built in a scratch folder that is then
    renamed, so commands and engines started side by side never see half a model. CliError in one line where its
    folder cannot be written (a GEOVLM_CACHE that is not a writable folder)."""
    import shutil
    import tempfile

    from ..models.demo_model import write_demo_model
    from ..models.pipeline import ensure_encoder

    target = demo_model_dir()
    if not (target / "geovlm.json").is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
        except OSError as exc:
            raise CliError(f"the demo model cannot be written in {target.parent} ({exc.strerror or exc}): set "
                           "GEOVLM_CACHE to a writable folder, or give --model") from None
        write_demo_model(scratch)
        ensure_encoder(scratch)
        try:
            scratch.rename(target)
        except OSError:  # another engine was faster
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _check_demo_target(folder: Path) -> None:
    """CliError in one line when writing the demo model into `folder` would replace what is there: a file, or a
    folder holding anything but an earlier demo model (its geovlm.json says `random_stand_in`), such as a real
    checkpoint, whose config.json, weights and tokenizer the random stand-in would overwrite."""
    import json

    if folder.exists() and not folder.is_dir():
        raise CliError(f"{folder} is a file: give a new or empty folder for the demo model")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    try:
        stand_in = json.loads((folder / "geovlm.json").read_text(encoding="utf-8")).get("random_stand_in") is True
    except (OSError, ValueError, AttributeError):
        stand_in = False
    if not stand_in:
        raise CliError(f"{folder} is not empty and holds no earlier demo model: the random stand-in would replace "
                       "its files (config.json, weights, tokenizer); give a new or empty folder")


def cmd_demo_model(args) -> int:
    """`geovlm demo-model DIR`: write a small model of random weights with FAMILY's architecture into DIR (a
    stand-in for tests and demos: its answers mean nothing); 0. CliError for an unknown family, and for a DIR
    that is a file or holds anything but an earlier demo model (`_check_demo_target`), before anything is
    written."""
    from ..core.profiles import get_profile
    from ..models.checkpoints import ARCHITECTURES
    from ..models.demo_model import write_demo_model

    try:
        family = get_profile(args.family).name
    except ValueError as exc:
        raise CliError(str(exc)) from None
    served = [name for names in ARCHITECTURES.values() for name in names]
    if family not in served:  # no checkpoint of our engine has its architecture: `ask` would refuse the folder
        raise CliError(f"the demo model is a checkpoint of the engine's architectures (LLaVA, MiniGPT-v2), which "
                       f"serve {', '.join(served)}, not {family}: its models are reached through another server "
                       "(--engine URL --family " + family + ")")
    _check_demo_target(Path(args.dir))
    if family in ARCHITECTURES["minigptv2"]:
        from ..models.minigpt_demo import write_minigpt_demo

        out = write_minigpt_demo(args.dir, seed=args.seed, family=family)
    else:
        out = write_demo_model(args.dir, seed=args.seed, family=family)
    print(f"wrote the demo model to {out}")
    print(STAND_IN_NOTE)
    return 0


def cmd_convert(args) -> int:
    from ..models import convert
    from ..models.checkpoints import CheckpointError

    try:
        if args.kind in ("geochat", "skysensegpt"):
            out = convert.convert_geochat(
                args.src, args.clip, args.out, family=args.family, image_size=args.image_size
            )
        elif args.kind == "rsllava":
            out = convert.convert_rsllava(args.lora, args.base, args.clip, args.out)
        elif args.kind == "minigptv2":
            from ..models.convert_minigptv2 import convert_minigptv2, licences

            out = convert_minigptv2(
                args.ckpt, args.eva, args.llama, args.out, family=args.family, image_size=args.image_size,
                lora_alpha=args.lora_alpha, vision_heads=args.vision_heads, licence=args.licence,
            )
            for source, licence in licences(out).items():
                print(f"licence of the {source}: {licence}")
        else:
            out = convert.convert_safetensors(args.src, args.out)
    except (CheckpointError, convert.ConversionError) as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {out}")
    return 0


def cmd_export_encoder(args) -> int:
    import tempfile

    from ..models.checkpoints import CheckpointError
    from ..models.encoder_export import ExportError, export_encoder

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".geovlm-export-") as scratch:
            # --int8: the fp32 graph is exported (and checked against torch) in a scratch folder, then quantised
            fp32_out = Path(scratch) / "encoder-float32.onnx" if args.int8 else out
            report = export_encoder(args.model, fp32_out, fp16=args.fp16, opset=args.opset, family=args.family)
            diffs = ", ".join(f"batch {n}: {d:.2e}" for n, d in report.max_abs_diff.items())
            print(f"max abs difference ONNX vs torch: {diffs} (tolerance {report.tolerance:g})")
            if args.int8:
                from ..models.encoder_quantise import quantise_encoder

                gate = quantise_encoder(fp32_out, out)
                print(f"int8 vs float32 on {gate.images} sample images: per-token cosine >= "
                      f"{gate.agreement.min_cosine:.4f}, relative error {gate.agreement.relative_error:.4f}")
    except (CheckpointError, ExportError) as exc:
        raise CliError(str(exc)) from None
    meta = report.metadata
    dtype = "int8" if args.int8 else meta["geovlm.dtype"]
    print(f"wrote {out} ({dtype}, {meta['geovlm.image_tokens']} image tokens)")
    return 0


def _bands(text):
    if not text:
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise CliError(f"--bands needs three integers, got {text!r}") from None
    if len(bands) != 3:
        raise CliError(f"--bands needs three bands (red,green,blue), got {text!r}")
    return bands


def check_new_tokens(max_new_tokens: int, context: Optional[int], image_tokens: int,
                     prompt_tokens: Optional[int] = None) -> None:
    """CliError in one line when --max-new-tokens cannot fit the model's `context` (tokens; None: the model does
    not say, and nothing is checked) after the prompt: its `prompt_tokens` when known (the question tokenised,
    which needs the tokenizer), else at least the image's `image_tokens`, known from the checkpoint's description
    before any weight is loaded. The pipeline refuses the same requests (`VlmPipeline._decoding`)."""
    if not context:
        return
    prompt = prompt_tokens if prompt_tokens is not None else image_tokens
    if prompt + max_new_tokens <= context:
        return
    said = (f"the prompt takes {prompt} tokens (the image's {image_tokens} included)" if prompt_tokens is not None
            else f"the prompt takes at least {image_tokens} of them (the image's tokens)")
    room = context - prompt
    raise CliError(f"--max-new-tokens {max_new_tokens} does not fit the model's context of {context} tokens: {said}, "
                   + (f"so at most {room} new tokens fit" if room > 0 else "so no new token fits"))


def check_device_arg(device) -> None:
    """--device (ask, serve) checked before a model is loaded: CliError in one line for a device type that is
    neither cpu nor cuda, or cuda where torch sees no GPU (`models.language.pick_device`)."""
    if device is None:
        return
    from ..models.language import pick_device

    try:
        pick_device(device)
    except ValueError as exc:
        raise CliError(f"--device: {exc}") from None


def check_providers_arg(text):
    """--providers as onnxruntime's names (`models.encoder_runtime.check_providers`), None when not given;
    CliError in one line, listing the providers available here, for an unknown one."""
    if text is None:
        return None
    from ..models.encoder_runtime import check_providers

    try:
        return check_providers(text.split(","))
    except ValueError as exc:
        raise CliError(f"--providers: {exc}") from None


def cmd_ask(args) -> int:
    """`geovlm ask`: one question about a raster's window, answered by the model in this process (--model, else
    the demo model) or by an engine (--engine URL or local: `_ask_engine`, where torch and numba are not loaded
    here); the answer's boxes, in pixels of the image sent, are placed on the raster's frame. 0 once answered;
    CliError (one line) for bad input, an unreadable checkpoint or a failed generation; 130 for Ctrl-C, said in
    one line (`interrupted_line`)."""
    try:
        return _ask(args)
    except KeyboardInterrupt:
        sys.stdout.flush()  # a partial answer's line ends before the message
        print(f"\n{interrupted_line(args)}", file=sys.stderr)
        return 130


def interrupted_line(args) -> str:
    """What `geovlm ask` stopped by Ctrl-C lost and kept, and how to ask again, in one line: an answer is parsed
    and its objects written to --out only once it is complete, so any text shown is cut short and --out is not
    written (an earlier file there is left as it was)."""
    if not args.out:
        kept = "nothing was saved"
    elif Path(args.out).exists():
        kept = f"{args.out} was not written (the file there is left as it was)"
    else:
        kept = f"{args.out} was not written"
    return (f"geovlm ask: stopped before the answer was complete: any text above is cut short and was not parsed, "
            f"{kept}; run the same command to ask again")


def _ask(args) -> int:
    from ..core.parsing import parse_answer
    from ..models.imagery import ImageryError, read_rgb
    from .rasters import frame_of_image, open_frame, parse_window

    args.temperature = check_generation_args(args.max_new_tokens, args.temperature, "--max-new-tokens")
    if not args.question.strip():
        raise CliError("the question is empty: ask something about the raster, e.g. \"Describe the image\"")
    check_text_argument(args.question, "the question")
    overrides = profile_overrides(args)
    providers = None
    if not args.engine:  # the model runs here: its devices are checked before anything is read or loaded
        check_device_arg(args.device)
        providers = check_providers_arg(args.providers)
    else:
        request_timeout(args)
        retry_window(args)
        local = [flag for flag, value in (("--device", args.device), ("--providers", args.providers)) if value]
        if local:
            raise CliError(f"{' and '.join(local)} choose where a model runs here; with --engine the engine "
                           f"chooses (its own `serve` options): leave {'them' if len(local) > 1 else 'it'} out")
    if args.out:
        from .layers_io import check_output

        check_output(args.out, args.overwrite)  # before the model is loaded and asked, not after
    window = parse_window(args.window)
    frame = open_frame(args.raster, window)
    try:
        image = read_rgb(args.raster, window, _bands(args.bands))
    except ImageryError as exc:
        raise CliError(str(exc)) from None
    if (image.shape[1], image.shape[0]) != (frame.width, frame.height):
        print(f"[{frame.width}x{frame.height} px are more than the engine takes: sent decimated to "
              f"{image.shape[1]}x{image.shape[0]} px; objects are placed on the raster all the same]", file=sys.stderr)
        frame = frame_of_image(frame, image.shape[1], image.shape[0])
    if args.engine:  # the model runs elsewhere: torch, numba and its threads are not loaded here
        return _ask_engine(args, image, frame)
    from ..models.checkpoints import CheckpointError, inspect_checkpoint
    from ..models.encoder_runtime import EncoderError
    from ..models.pipeline import GenRequest, VlmPipeline

    model_dir = args.model or ready_demo_model()
    try:
        checkpoint = inspect_checkpoint(model_dir, args.family)  # the folder's one reading, weights not loaded
        check_new_tokens(args.max_new_tokens, checkpoint.context_length, checkpoint.image_tokens)
        pipe = VlmPipeline.load(checkpoint, args.family, args.encoder, args.device, providers, overrides,
                                args.encoder_precision)
    except (CheckpointError, EncoderError, ValueError) as exc:
        raise CliError(str(exc)) from None
    info = pipe.info()
    if info["random_stand_in"]:
        print(STAND_IN_NOTE, file=sys.stderr)
    print(
        f"[{info['model']} ({info['family']}), {image.shape[1]}x{image.shape[0]} px, "
        f"encoder {info['encoder_dtype']} on {info['encoder_provider']}, LM on {info['device']}; "
        f"licence: {info['licence']}]",
        file=sys.stderr,
    )
    request = GenRequest(
        image, [("user", args.question)], args.max_new_tokens, args.temperature, seed=args.seed
    )
    check_new_tokens(args.max_new_tokens, pipe.lm.context_length, pipe.encoder.image_tokens,
                     len(pipe.prompt_ids(request.messages)))
    result = None
    try:
        for delta in pipe.stream(request):
            if hasattr(delta, "result"):
                result = delta.result
            else:
                print(delta, end="", flush=True)
    except (ValueError, RuntimeError) as exc:  # a bad request, or the model failed (memory, device)
        print()
        raise CliError(f"generation failed: {exc}") from None
    print()
    times = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    print(f"[{result.tokens} tokens, finish: {result.finish_reason}; {times}]", file=sys.stderr)
    answer = parse_answer(result.text, pipe.profile, image_size=(image.shape[1], image.shape[0]))
    print(f"[parsed: {answer.summary()}]", file=sys.stderr)
    if not info["random_stand_in"]:  # the stand-in's noise is no model's syntax: no hint to change the family
        _hint_family(answer, pipe.profile.name)
    if args.out:
        from .layers_io import ParsedRecord, write_layers

        write_layers([ParsedRecord(1, pipe.profile.name, answer, frame)], args.out, overwrite=args.overwrite)
        print(f"[wrote {len(answer.objects)} objects to {args.out}]", file=sys.stderr)
    if info["random_stand_in"]:
        print(STAND_IN_NOTE, file=sys.stderr)
    return 0


def check_local_model(args) -> None:
    """For `ask --engine local`: read the description of the checkpoint the local engine will serve (--model, else
    the demo model, written now if it is not yet: the engine then finds it) once, and refuse in one line
    (CliError), before the engine process starts, a checkpoint that cannot be read or a --max-new-tokens that
    cannot fit its context (`check_new_tokens`), which the engine would only refuse after loading (its 400)."""
    from ..models.checkpoints import CheckpointError, inspect_checkpoint

    try:
        checkpoint = inspect_checkpoint(args.model or ready_demo_model(), args.family)
    except (CheckpointError, ValueError) as exc:
        raise CliError(str(exc)) from None
    check_new_tokens(args.max_new_tokens, checkpoint.context_length, checkpoint.image_tokens)


def _ask_engine(args, image, frame) -> int:
    """`ask` through the engine client: the view fitted to the model's input (the exact pixels the model sees,
    whatever the server's own preprocessing) goes out, the answer is georeferenced here."""
    from ..core.client import EngineError
    from ..core.profiles import get_profile
    from ..models.preprocess import ArraySource
    from .serve_cmds import engine_for, show_restart

    if args.engine == "local":
        check_local_model(args)  # before the engine process is started, as in-process before the model loads
        args.engine = None  # engine_for starts the embedded engine
    args.engine_python, args.max_concurrent = None, 1
    client = engine_for(args)
    printed = []

    def show(piece: str) -> None:
        print(piece, end="", flush=True)
        printed.append(piece)

    try:
        family = args.family or client.profile().name
        profile = get_profile(family, **profile_overrides(args))
        details = served_details(client)
        if args.family:
            warn_other_family(details, profile.name)
        if details.get("random_stand_in"):
            print(STAND_IN_NOTE, file=sys.stderr)
        text, answer = client.ask(
            ArraySource(image), None, args.question, profile=profile,
            on_token=show, on_restart=show_restart,
            max_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        )
    except (EngineError, ValueError) as exc:
        if printed:
            print(flush=True)  # end the partial answer's line before the error
        raise CliError(str(exc)) from None
    finally:
        if client.local_engine is not None:
            client.local_engine.stop()
    print()
    print(f"[parsed: {answer.summary()}]", file=sys.stderr)
    if not details.get("random_stand_in"):
        _hint_family(answer, profile.name)
    if args.out:
        from .layers_io import ParsedRecord, write_layers

        write_layers([ParsedRecord(1, profile.name, answer, frame)], args.out, overwrite=args.overwrite)
        print(f"[wrote {len(answer.objects)} objects to {args.out}]", file=sys.stderr)
    if details.get("random_stand_in"):
        print(STAND_IN_NOTE, file=sys.stderr)
    return 0


def served_details(client) -> dict:
    """The "geovlm" details that /v1/models gives for the served model (the one asked for, else the first):
    family, random_stand_in, ...; {} for an engine that gives none (vLLM, SGLang). Raises EngineError when the
    engine cannot be asked."""
    entries = client.models().get("data") or []
    entry = next((e for e in entries if e.get("id") == client.model), entries[0] if entries else {})
    return entry.get("geovlm") or {}


def warn_other_family(details: dict, family: str) -> None:
    """One line on stderr when --family differs from the family the engine reports (`details` from
    `served_details`; ours reports it, vLLM and SGLang do not, and then nothing is said): the answers are then
    read, and views fitted, in `family`'s way, not the model's."""
    from ..core.profiles import get_profile

    reported = details.get("family")
    try:
        reported = get_profile(reported).name if reported else None
    except ValueError:  # a family this client does not know: say it as the engine does
        pass
    if reported and reported != family:
        print(f"geovlm: warning: --family {family}, but the engine reports {reported}: its answers are read in "
              f"{family}'s syntax (leave --family out to use the engine's)", file=sys.stderr)


def _hint_family(answer, family: str) -> None:
    """An answer that gave no box but has skipped fragments was likely read in another family's syntax: one
    line says to check --family (as `geovlm parse` does)."""
    if not answer.objects and answer.skipped:
        print(f"note: no box read but {len(answer.skipped)} fragments skipped: check that --family {family} is "
              "the family of the model", file=sys.stderr)
