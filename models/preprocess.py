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
    (LLaVA's expand2square); stretch: resized to the input size; crop: resized by (scale_x, scale_y), then
    the window at -offset * scale cut out. Resizing is bicubic, as CLIP's processor does.
    """
    from PIL import Image

    image = check_rgb(image)
    h, w = image.shape[:2]
    if (w, h) != (plan.width, plan.height):
        raise ValueError(f"plan is for {plan.width}x{plan.height}, image is {w}x{h}")
    pil = Image.fromarray(image)
    size = (plan.input_width, plan.input_height)
    if plan.mode == "pad":
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(v) for v in pad_color))
        canvas.paste(pil, (int(plan.offset_x), int(plan.offset_y)))
        out = canvas.resize(size, Image.BICUBIC)
    elif plan.mode == "stretch":
        out = pil.resize(size, Image.BICUBIC)
    elif plan.mode == "crop":
        new_w, new_h = round(plan.scale_x * w), round(plan.scale_y * h)
        left, top = round(-plan.offset_x * plan.scale_x), round(-plan.offset_y * plan.scale_y)
        out = pil.resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + size[0], top + size[1]))
    else:
        raise ValueError(f"fit mode {plan.mode!r} is not supported by the LLaVA encoder")
    return np.asarray(out)


def normalise(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HxWx3 images -> float32 [n, 3, H, W] with (x/255 - mean) / std per channel."""
    batch = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    batch = (batch - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
