"""Shared helpers of the engine tests: one demo checkpoint and one pipeline per test session.

Test modules import this file after putting tests/ on sys.path (pytest's importlib mode does not)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
RASTERS = Path(os.environ.get("GEOVLM_SHARED", ROOT.parent / "shared")) / "data" / "rasters"


def demo_dir(tmp_path_factory) -> Path:
    """The demo checkpoint (with its exported encoder), written once in the session's temporary folder."""
    from geovlm.models.demo_model import write_demo_model

    path = tmp_path_factory.getbasetemp() / "demo-model"
    if not (path / "geovlm.json").is_file():
        write_demo_model(path, seed=0)
    return path


@functools.cache
def pipeline(model_dir: str):
    """The demo pipeline on the CPU (even beside a GPU): the tests compare it with fp32 CPU torch."""
    from geovlm.models.pipeline import VlmPipeline

    return VlmPipeline.load(model_dir, device="cpu", providers=["CPUExecutionProvider"])


@functools.cache
def hf_model(model_dir: str):
    """The checkpoint's whole LlavaForConditionalGeneration in fp32 on the CPU (`load_model`), loaded once per
    folder: the torch model the encoder tests export the ONNX encoder from and compare it with."""
    from geovlm.models.checkpoints import load_model

    return load_model(model_dir)


def cogeo_tiles(n: int, size: int = 160):
    """n different RGB tiles cut from cogeo.tif, of varied shapes."""
    from geovlm.models.imagery import read_rgb

    tiles = []
    for i in range(n):
        w, h = size + 37 * i, size + 11 * (i % 3)
        tiles.append(read_rgb(RASTERS / "cogeo.tif", (90 * i, 60 * i, w, h)))
    return tiles


def random_image(seed: int, h: int = 90, w: int = 130) -> np.ndarray:
    """An h x w x 3 uint8 image of uniform noise, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def corrupt_jpeg(width=4000, height=4000):
    """A real JPEG header claiming width x height, then 200 bytes of noise and the end marker."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    sos = data.find(b"\xff\xda")
    head = data[: sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")]
    return head + np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes() + b"\xff\xd9"
