"""The one encoder of media into ``data:`` URIs; every caller that inlines an image uses it.

Bytes keep their encoding (the MIME type is read from their magic bytes); a PIL image is encoded
losslessly as PNG unless a format is asked for (e.g. JPEG for a benchmark that wants photo-sized
payloads). Modes the chosen format cannot store are first converted by the decoder's own
:func:`~mmrm.rm.media.decode.to_rgb`, so the pixels a scorer sees are the ones the caller meant.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Union

from PIL import Image

from mmrm.rm.media.decode import sniff_mime, to_rgb

__all__ = ["MediaData", "to_data_uri"]

#: What :func:`to_data_uri` encodes: a PIL image, or already encoded bytes.
MediaData = Union[Image.Image, bytes, bytearray, memoryview]

# Modes each format stores without loss (Pillow's writers); any other mode goes through to_rgb.
_STORABLE: dict[str, frozenset[str]] = {
    "PNG": frozenset({"1", "L", "LA", "I;16", "P", "RGB", "RGBA"}),
    "JPEG": frozenset({"L", "RGB", "CMYK"}),
    "WEBP": frozenset({"RGB", "RGBA"}),
}


def to_data_uri(media: MediaData, *, format: str = "PNG", **save_options: Any) -> str:
    """``data:<mime>;base64,<payload>`` for an image or for encoded media bytes.

    Args:
        media: a PIL image (encoded in ``format``), or bytes (kept as they are; the MIME type comes
            from their magic bytes, ``application/octet-stream`` when unknown).
        format: Pillow format for images: ``"PNG"`` (lossless, the default), ``"JPEG"``, ``"WEBP"``.
        save_options: passed to :meth:`PIL.Image.Image.save` (e.g. ``quality=90``).

    >>> to_data_uri(b"\\x89PNG\\r\\n\\x1a\\n")
    'data:image/png;base64,iVBORw0KGgo='
    >>> to_data_uri(Image.new("RGB", (1, 1)))[:22]
    'data:image/png;base64,'
    """
    if isinstance(media, (bytes, bytearray, memoryview)):
        data = bytes(media)
        return f"data:{sniff_mime(data)};base64," + base64.b64encode(data).decode("ascii")
    if not isinstance(media, Image.Image):
        raise TypeError(f"to_data_uri takes a PIL image or bytes, not {type(media).__name__}")
    fmt = format.upper()
    if fmt not in _STORABLE:
        raise ValueError(f"format must be one of {sorted(_STORABLE)}, got {format!r}")
    image = media if media.mode in _STORABLE[fmt] else to_rgb(media)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_options)
    return f"data:{Image.MIME[fmt]};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
