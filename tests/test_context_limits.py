"""--max-new-tokens and max_tokens against the model's context: `geovlm ask` refuses what cannot fit before the
weights load (the checkpoint's description gives the context), and `geovlm serve` limits max_tokens to the model's
context (a 400 naming it, shown by the CLI client)."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402

from geovlm.cli import main  # noqa: E402

COGEO = ms.RASTERS / "cogeo.tif"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ms.demo_dir(tmp_path_factory)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("NOTE:")]
    assert "Traceback" not in err, err
    return lines[-1]


def test_the_checkpoint_description_gives_the_context_length(demo, tmp_path):
    from geovlm.models.checkpoints import inspect_checkpoint

    info = inspect_checkpoint(demo)
    assert info.context_length == 1024 and info.describe()["context_length"] == 1024
    copy = tmp_path / "no-context"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("*.onnx*", "geovlm-hashes.json"))
    config = json.loads((copy / "config.json").read_text())
    del config["text_config"]["max_position_embeddings"]
    (copy / "config.json").write_text(json.dumps(config))
    assert inspect_checkpoint(copy).context_length is None


def test_ask_refuses_more_new_tokens_than_the_context_before_loading_the_weights(demo, capsys, monkeypatch):
    from geovlm.models import pipeline

    monkeypatch.setattr(pipeline.VlmPipeline, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["ask", str(COGEO), "Describe the image", "--model", str(demo), "--max-new-tokens", "5000"]) == 2
    assert capsys.readouterr().err.strip() == (
        "geovlm ask: --max-new-tokens 5000 does not fit the model's context of 1024 tokens: the prompt takes at "
        "least 64 of them (the image's tokens), so at most 960 new tokens fit")


def test_ask_with_a_local_engine_refuses_before_the_engine_starts(demo, capsys, monkeypatch):
    """`ask --engine local` refused a --max-new-tokens past the context only as the started engine's 400, after
    its model loaded; now from the checkpoint's description, before the engine process is started."""
    from geovlm.engine import launcher

    started = []
    monkeypatch.setattr(launcher.LocalEngine, "start", lambda self: started.append(self) or pytest.fail("started"))
    argv = ["ask", str(COGEO), "Describe the image", "--model", str(demo), "--engine", "local",
            "--max-new-tokens", "5000"]
    assert main(argv) == 2
    assert one_line(capsys) == (
        "geovlm ask: --max-new-tokens 5000 does not fit the model's context of 1024 tokens: the prompt takes at "
        "least 64 of them (the image's tokens), so at most 960 new tokens fit")
    assert started == []
    assert main(argv[:-1] + ["960"] + ["--model", str(demo / "missing")]) == 2  # an unreadable --model too
    assert one_line(capsys) == f"geovlm ask: model folder {demo / 'missing'} does not exist"
    assert started == []


def test_the_pipeline_is_given_the_description_read_once(demo, capsys, monkeypatch):
    """A request that may fit goes on to load the model with the CheckpointInfo read for the check (the folder
    is not read again); a model whose config gives no context is not refused before loading."""
    from geovlm.models import checkpoints, pipeline

    given = []

    def load(checkpoint, *args, **kwargs):
        given.append(checkpoint)
        raise ValueError("stopped at load")

    monkeypatch.setattr(pipeline.VlmPipeline, "load", load)
    assert main(["ask", str(COGEO), "Describe", "--model", str(demo), "--max-new-tokens", "960"]) == 2
    assert one_line(capsys) == "geovlm ask: stopped at load"
    assert isinstance(given[0], checkpoints.CheckpointInfo) and given[0].path == Path(demo)


def test_ask_says_the_exact_prompt_length_after_loading(demo, capfd):
    argv = ["ask", str(COGEO), "Describe the image", "--model", str(demo), "--max-new-tokens", "950",
            "--window", "0,0,256,256", "--device", "cpu"]
    assert main(argv) == 2
    captured = capfd.readouterr()
    assert captured.out == ""  # nothing was generated
    last = captured.err.strip().splitlines()[-1]
    match = re.fullmatch(r"geovlm ask: --max-new-tokens 950 does not fit the model's context of 1024 tokens: the "
                         r"prompt takes (\d+) tokens \(the image's 64 included\), so at most (\d+) new tokens fit",
                         last)
    assert match and int(match[1]) + int(match[2]) == 1024 and int(match[1]) > 64, last


def test_the_token_limit_is_the_models_context_unless_the_server_sets_less():
    from geovlm.engine.server import DEFAULT_MAX_TOKENS, token_limit

    assert token_limit(None, 4096) == (4096, "the model's context")
    assert token_limit(8192, 4096) == (4096, "the model's context")
    assert token_limit(512, 4096) == (512, "this server's --max-tokens")
    assert token_limit(512, None) == (512, "this server's --max-tokens")
    assert token_limit(None, None) == (DEFAULT_MAX_TOKENS, "this server's limit")


def chat(max_tokens):
    from test_server_batching import chat_body

    return chat_body(1, max_tokens=max_tokens)


@pytest.mark.parametrize("setting, limit, said", [(None, 1024, "the model's context"),
                                                  (4096, 1024, "the model's context"),
                                                  (64, 64, "this server's --max-tokens")])
def test_the_server_refuses_max_tokens_beyond_its_limit_naming_it(demo, setting, limit, said):
    from fastapi.testclient import TestClient

    from geovlm.engine.server import Settings, create_app

    pipe = ms.pipeline(str(demo))
    with TestClient(create_app(pipe, Settings(max_tokens_limit=setting))) as client:
        entry = client.get("/v1/models").json()["data"][0]["geovlm"]
        assert (entry["context_length"], entry["max_tokens_limit"]) == (1024, limit)
        refused = client.post("/v1/chat/completions", json=chat(limit + 1))
        assert refused.status_code == 400
        message = refused.json()["error"]["message"]
        assert message == f"max_tokens must be between 1 and {limit} ({said}), not {limit + 1}"
        assert client.post("/v1/chat/completions", json=chat(4)).status_code == 200


def test_the_cli_client_shows_the_servers_line(demo, capsys):
    from test_server_batching import live_server

    from geovlm.engine.server import create_app

    with live_server(create_app(ms.pipeline(str(demo)))) as url:
        argv = ["ask", str(COGEO), "Describe", "--engine", url, "--max-new-tokens", "5000", "--retry-window", "0"]
        assert main(argv) == 2
    assert one_line(capsys) == (f"geovlm ask: {url}/v1/chat/completions: HTTP 400 max_tokens must be between 1 and "
                                "1024 (the model's context), not 5000")
