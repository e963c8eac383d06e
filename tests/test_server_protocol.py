"""Reading OpenAI chat-completions bodies: messages to turns, the image data URI, limits, clear 400s."""
import base64
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geovlm.engine.protocol import ProtocolError, decode_image, parse_chat

sys.path.insert(0, str(Path(__file__).parent))
from models_support import corrupt_jpeg  # noqa: E402


def data_uri(width=40, height=30, fmt="PNG", seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}", pixels


def body(messages, **options):
    return json.dumps({"model": "m", "messages": messages, **options}).encode()


def first_turn(text="What is here?", url=None):
    url = url or data_uri()[0]
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {"role": "user", "content": parts}


def parse(raw, max_pixels=10_000, max_tokens=64):
    return parse_chat(raw, max_pixels, max_tokens)


def test_png_is_decoded_exactly_and_text_parts_become_the_question():
    url, pixels = data_uri()
    raw = body([first_turn("Describe", url)], max_tokens=20, temperature=0.5, stop="##", seed=3, stream=True)
    chat = parse(raw)
    assert np.array_equal(chat.image, pixels)
    assert chat.messages == [("user", "Describe")]
    assert (chat.max_tokens, chat.temperature, chat.stop, chat.seed, chat.stream) == (20, 0.5, ("##",), 3, True)
    assert parse(body([first_turn()], seed=2**64 - 1)).seed == 2**64 - 1  # torch takes the whole range


def test_jpeg_and_a_multi_turn_conversation_without_system_messages():
    url, _ = data_uri(fmt="JPEG")
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        first_turn("What is it?", url),
        {"role": "assistant", "content": "A harbour."},
        {"role": "user", "content": [{"type": "text", "text": "How many ships?"}]},
    ]
    chat = parse(body(messages))
    assert chat.image.shape == (30, 40, 3) and chat.image.dtype == np.uint8
    assert chat.messages == [("user", "What is it?"), ("assistant", "A harbour."), ("user", "How many ships?")]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (body([]), "non-empty list"),
        (body([{"role": "user", "content": "no image"}]), "must carry an image"),
        (body([first_turn("look at <image> here")]), "<image>"),
        (body([first_turn(url="https://example.org/a.png")]), "data URI"),
        (body([first_turn(url="data:image/png;base64,@@@")]), "invalid base64"),
        (body([first_turn(url="data:image/png;base64," + base64.b64encode(b"not a png").decode())]), "decoded"),
        (body([first_turn(url="data:image/gif;base64,R0lGODlh")]), "data URI"),
        (body([first_turn(), {"role": "assistant", "content": "x"}]), "last message"),
        (body([first_turn(), first_turn()]), "one image"),
        (body([{"role": "tool", "content": "x"}]), "not supported"),
        (body([first_turn()], n=2), "n=1"),
        (body([first_turn()], max_tokens=65), "between 1 and 64"),
        (body([first_turn()], max_completion_tokens=0, max_tokens=5), "between 1 and 64"),
        (body([first_turn()], max_tokens="5"), "type int"),
        (body([first_turn()], temperature=3), "temperature"),
        (body([first_turn()], seed=2**64), "seed"),
        (body([first_turn()], seed=-(2**63) - 1), "seed"),
        (body([first_turn()], stop=["a", "b", "c", "d", "e"]), "stop"),
        # JSON's "\ud800" without its pair: Python reads it, the tokenizer raised TypeError (a 500)
        (body([first_turn("ships \ud800 here")]), r"messages\[0\]: the text holds a lone surrogate \(\\ud800\)"),
        (body([first_turn(), {"role": "assistant", "content": "x\udfff"}, {"role": "user", "content": "y"}]),
         r"messages\[1\]: .*lone surrogate"),
    ],
)
def test_malformed_bodies_are_clear_400s(raw, message):
    with pytest.raises(ProtocolError, match=message) as caught:
        parse(raw)
    assert caught.value.status == 400


def test_pixel_limit_is_checked_before_decoding():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A header that claims 9000 x 9000 pixels and no pixel data: decoding it would fail (400), so only a
    # check made before decoding answers 413.
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0))
    claim = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")
    with pytest.raises(ProtocolError, match="81000000 pixels") as caught:
        decode_image("data:image/png;base64," + base64.b64encode(claim).decode(), max_pixels=1000)
    assert caught.value.status == 413
    url, _ = data_uri(200, 100)
    assert decode_image(url, max_pixels=20_000).shape == (100, 200, 3)


def png_claiming(width, height):
    """A PNG of a header claiming width x height pixels and no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_an_image_past_pillows_own_bound_names_the_servers_limit(monkeypatch):
    """Pillow refuses 30000 x 30000 as it opens the file ("exceeds limit of 178956970 pixels, could be
    decompression bomb DOS attack"): the 413 named Pillow's bound, not the server's --max-pixels. And a
    --max-pixels above that bound (a 15000 x 15000 image) is the server's to apply, not Pillow's."""
    from PIL import Image

    from geovlm.engine.protocol import allow_pixels

    with pytest.raises(ProtocolError) as caught:
        decode_image(png_claiming(30000, 30000), max_pixels=1000)
    assert caught.value.status == 413 and str(caught.value).endswith("the limit is 1000"), str(caught.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    allow_pixels(300_000_000)
    with pytest.raises(ProtocolError) as caught:  # through the pixel check: only the missing data is refused
        decode_image(png_claiming(15000, 15000), max_pixels=300_000_000)
    assert caught.value.status == 400 and "decoded" in str(caught.value)
    allow_pixels(1000)  # never lowered
    assert Image.MAX_IMAGE_PIXELS == 300_000_000


def test_truncated_png_is_a_400():
    url, _ = data_uri(64, 64)
    raw = base64.b64decode(url.split(",", 1)[1])
    broken = "data:image/png;base64," + base64.b64encode(raw[: len(raw) // 2]).decode()
    with pytest.raises(ProtocolError) as caught:
        decode_image(broken, max_pixels=10_000)
    assert caught.value.status == 400


def test_deep_json_is_a_400_not_a_recursion_error():
    with pytest.raises(ProtocolError, match="nested too deeply") as caught:
        parse(b"[" * 100_000 + b"]" * 100_000)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "options", [{"temperature": 1e-300}, {"top_p": 1e-300}, {"temperature": 1e-300, "top_p": 1e-300}]
)
def test_degenerate_sampling_is_greedy(options):
    chat = parse(body([first_turn()], **options))
    assert (chat.temperature, chat.top_p) == (0.0, 1.0)
    assert (parse(body([first_turn()], temperature=0.7, top_p=0.9)).temperature, 0.9) == (0.7, 0.9)


@pytest.mark.parametrize("value, message", [(-1, "temperature"), (float("nan"), "temperature"),
                                            (float("inf"), "temperature")])
def test_check_sampling_refuses_what_the_cli_let_through(value, message):
    from geovlm.engine.protocol import check_sampling

    with pytest.raises(ValueError, match=message):
        check_sampling(value)
    with pytest.raises(ValueError, match="top_p"):
        check_sampling(0.5, float("nan"))


def test_a_corrupt_jpeg_claiming_4000x4000_is_a_400_not_grey():
    url = "data:image/jpeg;base64," + base64.b64encode(corrupt_jpeg()).decode()
    with pytest.raises(ProtocolError, match="4000x4000.*cut short or corrupt") as caught:
        decode_image(url, max_pixels=4096 * 4096)
    assert caught.value.status == 400
    flat = io.BytesIO()  # a real, uniform JPEG of that size compresses well but still decodes
    Image.new("RGB", (4000, 4000), (10, 200, 30)).save(flat, format="JPEG", quality=5)
    assert decode_image("data:image/jpeg;base64," + base64.b64encode(flat.getvalue()).decode(),
                        max_pixels=4096 * 4096).shape == (4000, 4000, 3)


def test_undecodable_image_message_names_the_input_not_an_object_repr():
    url = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    with pytest.raises(ProtocolError) as caught:
        decode_image(url, max_pixels=10_000)
    assert "object at 0x" not in str(caught.value) and "19 bytes are neither PNG nor JPEG" in str(caught.value)


def test_over_long_text_is_refused_by_counting_characters():
    from geovlm.engine.protocol import text_limit

    limit = text_limit(64)
    assert limit == 64 * 32
    with pytest.raises(ProtocolError, match="characters") as caught:
        parse_chat(body([first_turn("x" * (limit + 1))]), 10_000, 64, limit)
    assert caught.value.status == 400
    many = [first_turn()] + [{"role": r, "content": "a"} for r in ["assistant", "user"] * 40]
    with pytest.raises(ProtocolError, match="81 messages"):
        parse_chat(body(many), 10_000, 64, limit)
    assert parse_chat(body([first_turn("x" * 100)]), 10_000, 64, limit).messages[0][1] == "x" * 100
