"""Encoded bytes -> RGB pixels: format sniffing, header limits before decoding, and the conversion to
RGB that keeps what the image shows.

Formats are identified by their magic bytes, never by a declared MIME type or file name. Sizes are
read from the header and checked before anything is decoded (decompression bombs stop there).

What a decoded image looks like (each rule tested against the same picture saved as plain RGB,
``tests/test_image_fidelity.py``):

* **EXIF orientation** is applied to still images (as transformers' ``load_image`` does with
  ``ImageOps.exif_transpose``): a phone photo stored sideways is scored upright. An EXIF block
  that cannot be parsed leaves the image as stored. Frames of an animated image or of a video file
  are used as stored (as before: they carry no per-frame orientation); a video given as a list of
  images loads each one as a still, orientation applied.
* **16-bit** greyscale PNG (Pillow mode ``I;16``/``I``) is scaled to 8 bits (``round(v / 257)``),
  not clipped to white; 16-bit RGB(A) PNG is read at 8 bits by Pillow itself.
* **CMYK** (JPEG) becomes RGB by Pillow's conversion, ``R = (255 - C) * (255 - K) / 255``;
  there is no ICC colour management (nor is there in transformers' loaders).
* **Palette** images become the colours they index; a transparent index counts as alpha.
* **Alpha** (``RGBA``, ``LA``, ``PA``, a ``tRNS`` transparency colour) is composited on **white**,
  the choice of transformers' ``convert_to_rgb`` (which the Qwen2-VL processors call) and of
  ``qwen_vl_utils``; dropping the alpha channel instead would show whatever colour the encoder left
  under transparent pixels (often black).
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Iterator

from PIL import Image, ImageOps

from mmrm.rm.errors import LimitExceeded, MediaError
from mmrm.rm.media.policy import IMAGE_FORMATS, VIDEO_CONTAINERS, MediaPolicy
from mmrm.rm.media.sources import Fetched

__all__ = ["Decoder", "PixelBudget", "sniff_image", "sniff_mime", "sniff_video_container", "to_rgb"]

# Pillow signals malformed input with these (plugins raise SyntaxError/struct.error on bad headers,
# decoders OSError on truncated or corrupt data, EOFError past the last frame).
PIL_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error)

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

_MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}
_MIME_BY_CONTAINER = {"mp4": "video/mp4", "matroska": "video/x-matroska", "avi": "video/x-msvideo"}


class PixelBudget:
    """Pixels left for one video, taken before each frame is decoded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, pixels: int, field: str) -> None:
        """Spend ``pixels``; raises :class:`LimitExceeded` once the total passes the limit."""
        self.used += pixels
        if self.used > self.limit:
            raise LimitExceeded(
                f"video has more than {self.limit} pixels over all frames", field=field, limit=self.limit
            )


class Decoder:
    """Decodes fetched bytes into RGB images under a policy's pixel, frame and aspect limits."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.policy = policy

    def check_pixels(self, w: int, h: int, field: str) -> None:
        """Refuse an empty size, more than ``max_pixels``, or more than ``max_aspect_ratio``."""
        if w <= 0 or h <= 0:
            raise MediaError(f"image has an empty size {w}x{h}", field=field, limit="width, height > 0")
        if w * h > self.policy.max_pixels:
            raise LimitExceeded(
                f"image is {w}x{h} = {w * h} pixels, more than max_pixels", field=field, limit=self.policy.max_pixels
            )
        if max(w, h) / min(w, h) > self.policy.max_aspect_ratio:
            raise LimitExceeded(
                f"image is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):.0f}, more than max_aspect_ratio",
                field=field,
                limit=self.policy.max_aspect_ratio,
            )

    def still(self, fetched: Fetched, field: str, budget: PixelBudget | None = None) -> Image.Image:
        """One image as RGB: the first frame of an animation, EXIF orientation applied."""
        fmt = sniff_image(fetched, field)
        with _pil_errors(field, fmt, self.policy.max_pixels):
            # Image.open reads only the header; the size is checked before load() decodes anything.
            with Image.open(io.BytesIO(fetched.data), formats=[fmt]) as im:
                w, h = im.size
                self.check_pixels(w, h, field)
                if budget is not None:
                    budget.take(w * h, field)
                im.load()
                return to_rgb(_upright(im))

    def frames(self, fetched: Fetched, field: str) -> list[Image.Image]:
        """Every frame of an animated GIF/WebP/PNG (a still gives one), as stored, in RGB."""
        p = self.policy
        fmt = sniff_image(fetched, field)
        with _pil_errors(field, fmt, p.max_pixels):
            with Image.open(io.BytesIO(fetched.data), formats=[fmt]) as im:
                # n_frames reads frame headers only (GIF skips data blocks, WebP/APNG read a count).
                n = int(getattr(im, "n_frames", 1))
                if n > p.max_frames:
                    raise LimitExceeded(
                        f"animated {fmt} has {n} frames, more than max_frames", field=field, limit=p.max_frames
                    )
                w, h = im.size
                self.check_pixels(w, h, field)
                PixelBudget(p.max_video_pixels).take(n * w * h, field)
                frames = []
                for i in range(n):
                    im.seek(i)
                    im.load()
                    frames.append(to_rgb(im))
                return frames

    def container(self, data: bytes, container: str, field: str) -> list[Image.Image]:
        """The frames of a video file (MP4/MOV, Matroska/WebM, AVI) through PyAV, with limits."""
        p = self.policy
        try:
            import av  # optional: only video files need it
        except ImportError as e:
            raise MediaError(
                "video files need the optional 'av' (PyAV) package; install it or send the frames as images",
                field=field,
                limit="list of frame images or an animated GIF/WebP/PNG",
            ) from e
        av_errors = tuple(
            c for c in (getattr(av, "FFmpegError", None), getattr(av, "AVError", None)) if isinstance(c, type)
        ) + PIL_DECODE_ERRORS
        try:
            # The demuxer is named, never probed: probing could pick e.g. HLS, which opens URLs.
            with av.open(io.BytesIO(data), mode="r", format=container) as box:
                if not box.streams.video:
                    raise MediaError("the file has no video stream", field=field, limit=list(VIDEO_CONTAINERS))
                stream = box.streams.video[0]
                declared = int(stream.frames or 0)  # 0 when the container does not say
                if declared > p.max_frames:
                    raise LimitExceeded(
                        f"video declares {declared} frames, more than max_frames", field=field, limit=p.max_frames
                    )
                w, h = int(stream.codec_context.width), int(stream.codec_context.height)
                self.check_pixels(w, h, field)
                PixelBudget(p.max_video_pixels).take(declared * w * h, field)  # from the header
                frames: list[Image.Image] = []
                budget = PixelBudget(p.max_video_pixels)  # from the frames actually decoded
                for frame in box.decode(stream):
                    # The header may lie or be silent: keep counting while decoding.
                    if len(frames) >= p.max_frames:
                        raise LimitExceeded(
                            f"video has more than {p.max_frames} frames", field=field, limit=p.max_frames
                        )
                    self.check_pixels(frame.width, frame.height, field)
                    budget.take(frame.width * frame.height, field)
                    frames.append(frame.to_image().convert("RGB"))
        except av_errors as e:
            raise MediaError(f"cannot decode {container} video: {e}", field=field, limit=list(VIDEO_CONTAINERS)) from e
        if not frames:
            raise MediaError("the video has no frames", field=field, limit=list(VIDEO_CONTAINERS))
        return frames


# -------------------------------------------------------------------------------------------------
# Sniffing


def sniff_image(fetched: Fetched, field: str) -> str:
    """The Pillow format of ``fetched`` from its magic bytes; refuses SVG and non-images."""
    data = fetched.data
    fmt = _image_format(data)
    if fmt is not None:
        return fmt
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if (fetched.mime or "").startswith("image/svg") or (head.startswith(b"<") and b"<svg" in head):
        raise MediaError("SVG is not accepted: send a raster image", field=field, limit=list(IMAGE_FORMATS))
    declared = f" (declared {fetched.mime})" if fetched.mime else ""
    raise MediaError(
        f"not a supported image{declared}: expected PNG, JPEG, WebP, GIF or BMP",
        field=field,
        limit=list(IMAGE_FORMATS),
    )


def sniff_video_container(data: bytes) -> str | None:
    """PyAV demuxer name for a video container's magic bytes, or None (maybe an image)."""
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def sniff_mime(data: bytes) -> str:
    """The MIME type of encoded media from its magic bytes, ``application/octet-stream`` if unknown.

    Informative only (for a data URI's header): the loader identifies formats by magic bytes.
    """
    fmt = _image_format(data)
    if fmt is not None:
        return _MIME_BY_FORMAT[fmt]
    container = sniff_video_container(data)
    return _MIME_BY_CONTAINER[container] if container is not None else "application/octet-stream"


def _image_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


# -------------------------------------------------------------------------------------------------
# Pixels


def to_rgb(im: Image.Image) -> Image.Image:
    """A new RGB image that shows what ``im`` shows: 16-bit scaled to 8 bits, CMYK and palette
    converted, any transparency composited on white (see the module docstring)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        im = _sixteen_to_eight(im)
    has_alpha = any(b in ("A", "a") for b in im.getbands()) or im.info.get("transparency") is not None
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")  # also turns a tRNS colour or a transparent palette index into alpha
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _sixteen_to_eight(im: Image.Image) -> Image.Image:
    """An 8-bit ``L`` (or ``LA`` where a tRNS grey level is transparent) image from 16-bit grey.

    Pillow's own ``I;16 -> L`` conversion clips at 255, which turns all but the darkest 0.4 % of
    the range white; scaling by 255/65535 keeps the picture (an 8-bit value ``v`` stored as
    ``v * 257`` comes back as ``v`` exactly).
    """
    import numpy as np  # only 16-bit images need it

    a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    grey = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))
    trns = im.info.get("transparency")
    if isinstance(trns, int):
        alpha = Image.fromarray(np.where(a == trns, 0, 255).astype(np.uint8))
        return Image.merge("LA", (grey, alpha))
    return grey


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation says (``im`` itself when there is nothing to turn)."""
    try:
        if im.getexif().get(_EXIF_ORIENTATION, 1) not in (2, 3, 4, 5, 6, 7, 8):
            return im
        return ImageOps.exif_transpose(im)
    except PIL_DECODE_ERRORS:  # an EXIF block that cannot be parsed: show the image as stored
        return im


@contextlib.contextmanager
def _pil_errors(field: str, fmt: str, max_pixels: int) -> Iterator[None]:
    """Translate Pillow's exceptions into typed media errors (our own errors pass through)."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own bomb guard (2x Image.MAX_IMAGE_PIXELS) fired inside Image.open, before our
        # check could run; the image breaks whichever of the two limits is lower. The warning is
        # only raised when a warnings filter escalates it.
        pil_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else max_pixels
        raise LimitExceeded(f"image is a decompression bomb: {e}", field=field, limit=min(max_pixels, pil_limit)) from e
    except PIL_DECODE_ERRORS as e:
        raise MediaError(f"cannot decode {fmt} image: {e}", field=field, limit=list(IMAGE_FORMATS)) from e
