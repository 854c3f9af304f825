"""Benchmark media: where references point, what to do when a file is missing.

A reference is read by the one source classifier, :func:`mmrm.rm.media.classify_source`, as the
scorer will read it: a data URI, bare base64 or a URL passes unchanged (the scorer's media policy
decides on it, and refuses every scheme but http(s)); only a path is resolved, relative to
``MediaOptions.image_root`` (default: the data file's folder). Embedded bytes (a parquet or
``datasets`` image) become a data URI. A missing file is never skipped silently: by default the load
is refused (:class:`MissingMedia`, with the count and the fix); with ``missing="placeholder"`` a
generated image takes its place and the reference is listed in ``EvalItem.placeholder_media``.

Nothing here runs before a loader has applied its ``limit``: rows beyond it are never read for media.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from mmrm.rm.errors import InvalidInput
from mmrm.rm.media import classify_source, to_data_uri
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["IMAGE_SUFFIXES", "MediaOptions", "MediaResolver", "MissingMedia", "media_key", "placeholder_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


class MissingMedia(InvalidInput):
    """Media referenced by a benchmark are not on disk (and placeholders were not asked for)."""

    kind = "missing_media"


class MediaOptions(BaseModel):
    """Where benchmark media live and what to do when they are missing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_root: Path | None = Field(default=None, description="Folder media paths are relative to (default: the data file's folder).")
    missing: Literal["refuse", "placeholder"] = Field(
        default="refuse", description="refuse: raise MissingMedia; placeholder: substitute generated images and mark the items."
    )
    inline: bool = Field(default=False, description="Embed local files as data URIs (for scoring on a remote service).")


@functools.lru_cache(maxsize=4096)
def placeholder_image(ref: str, size: tuple[int, int] = (64, 64)) -> str:
    """A generated PNG (data URI) standing in for the missing media ``ref``: deterministic, distinct per ref."""
    from PIL import Image, ImageDraw

    h = hashlib.sha256(ref.encode("utf-8")).digest()
    img = Image.new("RGB", size, (h[0], h[1], h[2]))
    draw = ImageDraw.Draw(img)
    step = 4 + h[3] % 8
    for x in range(-size[1], size[0], step * 2):
        draw.line([(x, 0), (x + size[1], size[1])], fill=(h[4], h[5], h[6]), width=step)
    return to_data_uri(img)


def media_key(value: Any) -> Any:
    """What a pair key hashes for a media value, without decoding it: a short reference itself, a
    long one (inline data) or embedded bytes by their sha256."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if len(value) < 4096 else "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return media_key(bytes(value["bytes"]))
        return media_key(value.get("path"))
    if hasattr(value, "tobytes"):  # a PIL image
        return "sha256:" + hashlib.sha256(value.tobytes()).hexdigest()
    raise InvalidInput(f"cannot read an image from a {type(value).__name__}", field="image")


def _is_inline_or_url(ref: str) -> bool:
    """Whether ``ref`` is media itself or a URL (passed on unchanged) rather than a local path."""
    # An empty reference is a missing file here (the loader's refusal names the benchmark's fix).
    return bool(ref.strip()) and classify_source(ref).kind != "path"


def _data_uri(path: Path) -> str:
    return to_data_uri(path.read_bytes())


class MediaResolver:
    """Resolves the media of one load; collects missing references to refuse or replace them."""

    def __init__(self, options: MediaOptions | None, default_root: Path | None, benchmark: str) -> None:
        self.opts = options or MediaOptions()
        self.root = self.opts.image_root if self.opts.image_root is not None else default_root
        self.benchmark = benchmark
        self.missing: list[str] = []

    def _path(self, ref: str) -> Path:
        p = Path(ref)
        return p if p.is_absolute() or self.root is None else self.root / p

    def _missing(self, ref: str, used: list[str]) -> None:
        self.missing.append(ref)
        used.append(ref)

    def image(self, value: Any, used: list[str]) -> dict[str, Any]:
        """An ``image_url`` part for a row's image value (a reference string, embedded bytes, a
        ``datasets`` image dict or a PIL image); records a placeholder in ``used`` if it is missing."""
        if isinstance(value, Mapping) and value.get("bytes"):
            value = bytes(value["bytes"])
        elif isinstance(value, Mapping):
            value = value.get("path") or ""
        if isinstance(value, (bytes, bytearray, memoryview)) or hasattr(value, "save"):
            # lossless, alpha kept: the media loader composites it on white
            return {"type": "image_url", "image_url": {"url": to_data_uri(value if hasattr(value, "save") else bytes(value))}}
        ref = str(value)
        if _is_inline_or_url(ref):
            return {"type": "image_url", "image_url": {"url": ref}}
        path = self._path(ref)
        if ref.strip() and path.is_file():
            url = _data_uri(path) if self.opts.inline else str(path.resolve())
            return {"type": "image_url", "image_url": {"url": url}}
        self._missing(ref, used)
        return {"type": "image_url", "image_url": {"url": placeholder_image(ref)}}

    def video(self, ref: str, used: list[str], n_placeholder_frames: int = 4) -> dict[str, Any]:
        """A ``video`` part: a folder of frames, a video file, or placeholders if missing."""
        if _is_inline_or_url(ref):
            return {"type": "video", "video": ref}
        path = self._path(ref)
        if path.is_dir():
            frames = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if frames:
                srcs = [_data_uri(f) if self.opts.inline else str(f.resolve()) for f in frames]
                return {"type": "video", "video": srcs}
        elif path.is_file():
            return {"type": "video", "video": _data_uri(path) if self.opts.inline else str(path.resolve())}
        self._missing(ref, used)
        return {"type": "video", "video": [placeholder_image(f"{ref}#{i}") for i in range(n_placeholder_frames)]}

    def parts_in(self, messages: list[dict[str, Any]], used: list[str]) -> list[dict[str, Any]]:
        """Resolve relative local image/video references inside chat messages."""
        out = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                new = []
                for part in content:
                    if isinstance(part, Mapping) and part.get("type", "image_url" if "image_url" in part else None) == "image_url":
                        url = part["image_url"]["url"] if isinstance(part["image_url"], Mapping) else part["image_url"]
                        new.append(self.image(url, used))
                    elif isinstance(part, Mapping) and part.get("type") == "video" and isinstance(part.get("video"), str):
                        new.append(self.video(part["video"], used))
                    else:
                        new.append(part)
                m = {**m, "content": new}
            out.append(m)
        return out

    def finish(self, n_items: int) -> None:
        """Refuse the load if media were missing and placeholders were not asked for."""
        if not self.missing or self.opts.missing == "placeholder":
            return
        uniq = list(dict.fromkeys(self.missing))
        where = f"under {self.root}" if self.root is not None else "(no image root given)"
        raise MissingMedia(
            f"{len(uniq)} media file(s) referenced by {len(self.missing)} place(s) in {n_items} {self.benchmark} rows "
            f"are missing {where}, e.g. {uniq[:3]}. Point image_root (--image-root) at the benchmark's media, or ask "
            "for generated placeholders (missing='placeholder', --placeholder-images): every such result is then "
            "marked, and its numbers do not measure the benchmark.",
            field="image_root",
            limit="existing media files",
        )
