"""Answer text is printable: the demo models' tokenizers can only write printable text, and a control character a
real model or engine writes (a NUL, an escape) never reaches a terminal through the CLI or a layer's field."""
import json
import random
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import models_support as ms  # noqa: E402
from engine_http import EngineHandler, serve, url_of  # noqa: E402

from geovlm.cli import main  # noqa: E402
from geovlm.core.answer import printable_text  # noqa: E402
from geovlm.core.client import EngineClient  # noqa: E402
from geovlm.models.preprocess import ArraySource  # noqa: E402

COGEO = ms.RASTERS / "cogeo.tif"
HOSTILE = "<p>a\x00b pl\x1b[2Jane\x07</p> {<10><10><50><50>|<0>}\x85 done\tok\n"


def printable(text: str) -> bool:
    return all(c.isprintable() or c in "\t\n" for c in text)


def hostile_label() -> str:
    """The label the parser reads in HOSTILE, as a layer must hold it: its control characters replaced."""
    from geovlm.core.parsing import parse_answer
    from geovlm.core.profiles import get_profile

    label = parse_answer(HOSTILE, get_profile("geochat"), (100, 100)).objects[0].label
    assert "\x00" in label and "\x1b" in label
    written = printable_text(label)
    assert written.count("\ufffd") == 3 and printable(written) and "Jane" in written
    return written


def demo_tokenizers():
    from geovlm.models.demo_model import _train_tokenizer
    from geovlm.models.minigpt_demo import byte_fallback_tokenizer

    return {"minigptv2": byte_fallback_tokenizer(), "llava": _train_tokenizer(vocab_size=400)}


@pytest.mark.parametrize("kind", ["minigptv2", "llava"])
def test_whatever_a_random_demo_model_writes_decodes_to_printable_text(kind):
    """Every token alone, and 300 random sequences of tokens (a random model's noise: byte tokens in a row would
    make multi-byte characters), decode to printable text."""
    tok = demo_tokenizers()[kind]
    size = tok.get_vocab_size()
    assert all(printable(tok.decode([i])) for i in range(size))
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(size) for _ in range(rng.randrange(1, 40))]
        text = tok.decode(ids)
        assert printable(text), repr(text)


def test_no_text_becomes_the_minigpt_demos_image_marker():
    """The demo's `<unk>` marks the image: text with control characters, accents, CJK and emoji never becomes
    it (the normalizer leaves only characters that have a token)."""
    tok = demo_tokenizers()["minigptv2"]
    unk = tok.token_to_id("<unk>")
    for text in ("a\x00b\x1b[2J", "é中 😀\tx\ny", "\u2028\ufeff\x85", "plain [grounding] text?", "~`^|\\"):
        assert unk not in tok.encode(text).ids, text


def test_printable_text_replaces_control_characters_one_for_one():
    assert printable_text(HOSTILE) == "<p>a\ufffdb pl\ufffd[2Jane\ufffd</p> {<10><10><50><50>|<0>}\ufffd done\tok\n"
    assert len(printable_text(HOSTILE)) == len(HOSTILE)  # spans into the text stay valid
    assert printable_text("plain\r\n text é 中") == "plain\r\n text é 中"


def test_a_nul_in_a_saved_answer_does_not_cut_the_layers_field_short(tmp_path, capsys):
    """GDAL ends a string at a NUL: the label "a<NUL>b plane" was written as ''."""
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"answer": HOSTILE}) + "\n")
    out = tmp_path / "o.gpkg"
    assert main(["parse", str(answers), "--family", "geochat", "--out", str(out)]) == 0
    con = sqlite3.connect(out)
    try:
        label, source = con.execute("SELECT label, source FROM objects").fetchone()
    finally:
        con.close()
    assert label == hostile_label() and source == "{<10><10><50><50>|<0>}"


class NulEngine(EngineHandler):
    """An engine whose model writes control characters."""

    def model_entry(self):
        return {"id": "nul-writer", "object": "model", "geovlm": {"family": "geochat"}}

    def do_POST(self):  # noqa: N802 (BaseHTTPRequestHandler's name)
        body, _ = self.read_chat()
        self.send_answer(HOSTILE, stream=bool(body.get("stream")))


def test_the_client_reads_an_engines_answer_without_control_characters(tmp_path, capsys):
    """The CLI prints the stream and writes the layer without them; a whole answer (bulk runs, the plugin) has
    none either."""
    server = serve(NulEngine)
    out = tmp_path / "o.gpkg"
    try:
        argv = ["ask", str(COGEO), "[grounding] describe", "--window", "0,0,200,200", "--engine", url_of(server),
                "--out", str(out)]
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert printed == printable_text(HOSTILE) + "\n" and printable(printed)
        assert main(["engine-check", "--engine", url_of(server)]) == 0
        checked = capsys.readouterr().out
        assert printable_text(HOSTILE) in checked and "\x00" not in checked and "\x1b" not in checked
        text, answer = EngineClient(url_of(server)).ask(ArraySource(np.zeros((8, 8, 3), np.uint8)), None, "q")
        assert text == printable_text(HOSTILE) and answer.objects  # whole, not streamed: what bulk runs write
    finally:
        server.shutdown()
    con = sqlite3.connect(out)
    try:
        assert con.execute("SELECT label FROM objects").fetchone()[0] == hostile_label()
    finally:
        con.close()
