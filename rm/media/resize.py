"""Resizing into a model's pixel range, and a content hash of decoded pixels."""

from __future__ import annotations

import hashlib
import math

from PIL import Image

from mmrm.rm.errors import LimitExceeded
from mmrm.rm.media.policy import MAX_ASPECT_RATIO

__all__ = ["fit_pixels", "image_sha256"]


def fit_pixels(
    image: Image.Image, *, min_pixels: int, max_pixels: int, factor: int = 28, field: str = "image"
) -> Image.Image:
    """Resize ``image`` so its area is within ``[min_pixels, max_pixels]`` and both sides are
    multiples of ``factor``, keeping the aspect ratio as closely as that allows.

    The same rule as Qwen2-VL's ``smart_resize``. This is about fitting a model, not safety: bombs
    are refused earlier, by :class:`MediaLoader`. Returns the image itself when nothing changes.

    Raises:
        ValueError: inconsistent arguments (a programming error, not a user input error).
        LimitExceeded: aspect ratio above 200 (no multiple-of-``factor`` shape fits the range).
    """
    if factor <= 0 or min_pixels <= 0 or max_pixels < min_pixels or max_pixels < factor * factor:
        raise ValueError(
            f"need 0 < min_pixels <= max_pixels and max_pixels >= factor**2, got "
            f"min_pixels={min_pixels}, max_pixels={max_pixels}, factor={factor}"
        )
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image has an empty size {w}x{h}")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise LimitExceeded(
            f"aspect ratio {max(w, h) / min(w, h):.0f} is too extreme to resize", field=field, limit=MAX_ASPECT_RATIO
        )
    h_bar = max(factor, round(h / factor) * factor)
    w_bar = max(factor, round(w / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    if (w_bar, h_bar) == (w, h):
        return image
    return image.resize((w_bar, h_bar), Image.Resampling.BICUBIC)


def image_sha256(image: Image.Image) -> str:
    """Hex SHA-256 of an image's decoded pixels, mode and size: a cache key that does not depend on
    how the image was encoded or where it came from."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()
