"""Turn an RGB image into the encoder's input, following core.georef.fit_plan's geometry exactly."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from ..core.georef import FitPlan


def check_rgb(image: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 array, or a clear error."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("image has no pixels")
    return image


def fit_image(image: np.ndarray, plan: FitPlan, pad_color: Tuple[int, int, int]) -> np.ndarray:
    """The model-input image (input_height x input_width x 3 uint8) the plan describes.

    pad: the image pasted at (offset_x, offset_y) on a square canvas of `pad_color`, then resized
    (LLaVA's expand2square); stretch and dynamic: resized to the input size (for dynamic, Qwen2-VL's
    `smart_resize` size); crop: resized by (scale_x, scale_y), then the window at -offset * scale cut out.
    Resizing is bicubic, as CLIP's processor does. An image that already has the input's size (the client
    sends fitted images: core.client.prepare_image) comes back as it is: every mode is the identity there.
    ValueError for an image that is not HxWx3 uint8 (`check_rgb`) or not of the plan's width x height.
    """
    from PIL import Image

    image = check_rgb(image)
    h, w = image.shape[:2]
    if (w, h) != (plan.width, plan.height):
        raise ValueError(f"plan is for {plan.width}x{plan.height}, image is {w}x{h}")
    size = (plan.input_width, plan.input_height)
    if (w, h) == size and plan.offset_x == 0 and plan.offset_y == 0:
        return image
    pil = Image.fromarray(image)
    if plan.mode == "pad":
        side = max(w, h)
        canvas = pil  # a square image needs no padding
        if w != h:
            canvas = Image.new("RGB", (side, side), tuple(int(v) for v in pad_color))
            canvas.paste(pil, (int(plan.offset_x), int(plan.offset_y)))
        out = canvas.resize(size, Image.BICUBIC)
    elif plan.mode in ("stretch", "dynamic"):
        out = pil.resize(size, Image.BICUBIC)
    elif plan.mode == "crop":
        new_w, new_h = round(plan.scale_x * w), round(plan.scale_y * h)
        left, top = round(-plan.offset_x * plan.scale_x), round(-plan.offset_y * plan.scale_y)
        out = pil.resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + size[0], top + size[1]))
    else:
        raise ValueError(f"unknown fit mode {plan.mode!r}")
    return np.asarray(out)


def encode_png(image: np.ndarray) -> bytes:
    """An HxWx3 uint8 image as an uncompressed PNG (8-bit RGB, filter type 0 on every row, zlib level 0;
    PNG specification, ISO/IEC 15948, sections 5, 9 and 10).

    Lossless like any PNG, and ~1 ms at 504x504 where Pillow's encoder takes 25 ms even at compress_level 0,
    since it always searches the best row filter (bench/bench_sending.py). Every PNG reader opens it.
    """
    import struct
    import zlib

    image = check_rgb(image)
    height, width = image.shape[:2]
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # a 0 byte before each row: no filter
    rows[:, 1:] = image.reshape(height, 3 * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
            + chunk(b"IEND", b""))


class ArraySource:
    """An HxWx3 uint8 view as a `core.client.ImageSource`: the client fits it to the model's input, this
    makes the pixels (`fit_image`) and encodes them as an uncompressed PNG (`encode_png`: lossless, and at
    the model's input size the fastest to write and to read; bench/bench_sending.py)."""

    def __init__(self, image: np.ndarray):
        self.image = check_rgb(image)
        self.size = (int(self.image.shape[1]), int(self.image.shape[0]))

    def fitted(self, plan: FitPlan, pad_color: Tuple[int, int, int]) -> bytes:
        """PNG bytes of the view fitted as `plan` says (`plan.input_width` x `plan.input_height` pixels)."""
        return encode_png(fit_image(self.image, plan, pad_color))


def normalise(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HxWx3 images -> float32 [n, 3, H, W] with (x/255 - mean) / std per channel."""
    batch = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    batch = (batch - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
