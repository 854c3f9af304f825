"""Shared test utilities: images as data URIs, and a few conversations with media."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict


def image_array(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB image as a uint8 array [height, width, 3] (seeded, so reproducible)."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(arr: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a uint8 RGB array."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(arr)).decode("ascii")


def image_uri(height: int, width: int, seed: int = 0) -> str:
    """A random PNG image of the given size as a data URI."""
    return png_data_uri(image_array(height, width, seed))


def pil_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(image_array(height, width, seed))


def image_part(uri: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": uri}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def video_part(frames: list[str]) -> dict[str, Any]:
    return {"type": "video", "video": frames}


def state_dicts_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same keys, same shapes, bit-identical values."""
    import torch

    if a.keys() != b.keys():
        return False
    return all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


class VllmErrorInfo(BaseModel):
    """vLLM 0.32.0 ``vllm/entrypoints/serve/engine/protocol.py::ErrorInfo``, transcribed independently
    of mmrm's own copy (``OpenAIBaseModel``: extra keys allowed)."""

    model_config = ConfigDict(extra="allow")
    message: str
    type: str
    param: str | None = None
    code: int


class VllmErrorResponse(BaseModel):
    """vLLM 0.32.0's ``ErrorResponse``: ``{"error": ErrorInfo}``."""

    model_config = ConfigDict(extra="allow")
    error: VllmErrorInfo
