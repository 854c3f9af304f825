"""The media policy: limits and permissions for loading media; the defaults are the safe ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["IMAGE_FORMATS", "MAX_ASPECT_RATIO", "VIDEO_CONTAINERS", "MediaPolicy"]

_MIB = 1024 * 1024

#: Raster formats that are decoded (Pillow's format names). Everything else is refused.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

#: Container formats handed to PyAV for video files (PyAV/FFmpeg demuxer names).
VIDEO_CONTAINERS: tuple[str, ...] = ("mp4", "matroska", "avi")

#: Qwen2-VL's smart_resize refuses more extreme shapes (with an untyped error), so mmrm does too.
MAX_ASPECT_RATIO = 200


class MediaPolicy(BaseModel):
    """Limits and permissions for loading media; the defaults are the safe ones.

    Attributes are documented per field. Local paths and HTTP are off by default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(
        default=20 * _MIB,
        gt=0,
        description="Encoded bytes per media item (base64 is measured before decoding, HTTP while streaming).",
    )
    max_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Pixels per image (or video frame) as declared by its header; checked before decoding.",
    )
    max_aspect_ratio: float = Field(
        default=MAX_ASPECT_RATIO,
        ge=1,
        description="Longer side / shorter side per image, from the header (vision processors such as "
        "Qwen2-VL's refuse more than 200 with an untyped error).",
    )
    max_frames: int = Field(default=64, gt=0, description="Frames per video or animated image.")
    max_video_pixels: int = Field(
        default=200_000_000,
        gt=0,
        description="Pixels summed over all frames of one video (bounds memory: 3 bytes per pixel).",
    )
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Local paths are read only under these folders (symlinks resolved); empty = no local paths.",
    )
    allow_http: bool = Field(default=False, description="Fetch http(s) URLs at all.")
    allowed_domains: list[str] | None = Field(
        default=None,
        description="If set, only these hosts: 'example.com' matches exactly, '.example.com' matches subdomains.",
    )
    http_timeout_s: float = Field(default=10.0, gt=0, description="Total time for one fetch, redirects included.")
    max_redirects: int = Field(default=3, ge=0, description="Redirects followed per fetch.")

    @field_validator("allowed_domains")
    @classmethod
    def _normalise_domains(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        return [d.strip().lower().rstrip(".") for d in v if d.strip()]
