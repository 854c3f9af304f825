"""Media loading with limits: the one place that turns a media source string into RGB pixels.

Accepted forms of a media source (this is the list; other modules point here). A source string is
stripped of surrounding whitespace and then recognised in this order, first match wins
(:func:`classify_source` is the one implementation of these rules):

1. **Data URI** -- ``data:[<mime>][;<param>]*;base64,<payload>``. Only base64 data URIs are
   accepted (percent-encoded ones are refused); ``image/svg+xml`` is refused.
2. **URL** -- anything starting with ``<scheme>:`` (a letter, then letters, digits, ``+ - .``).
   Only ``http://`` and ``https://`` are fetched, and only when :attr:`MediaPolicy.allow_http` is
   on. Every other scheme (``file://``, ``ftp://``, ``gopher:``, ...) is refused with
   :class:`~mmrm.rm.errors.MediaForbidden`, and so is a redirect to one (``data:``, ``mailto:``,
   ...). (So a local path whose first segment contains ``:`` is read as a URL and refused; write
   it as ``./name``.)
3. **Bare base64** -- at least 64 characters, all from the base64 alphabet (standard or URL-safe,
   optional ``=`` padding, whitespace ignored). Base64 has no ``.`` or ``:``, so paths with a file
   extension and URLs never match; a long extension-less path made only of base64 characters is
   read as base64 (write it as ``./name``: the ``.`` makes it a path).
4. **Local path** -- absolute, or relative to the allowed roots (tried in order). Only files under
   :attr:`MediaPolicy.allowed_roots` are read; with no roots, local paths are refused.

Formats: only raster images are decoded, identified by their magic bytes (never by a declared MIME
type or file name): PNG, JPEG, WebP, GIF and BMP. SVG and anything else are refused. A still image
is its first frame; an animated GIF/WebP/PNG used as a *video* gives all its frames. Video files
(MP4/MOV, Matroska/WebM, AVI) need the optional PyAV package. Every image comes back as RGB showing
what the file shows: EXIF orientation applied, 16-bit scaled, CMYK and palettes converted,
transparency composited on white (as transformers' ``convert_to_rgb`` and Qwen2-VL's loader do);
:mod:`mmrm.rm.media.decode` has the rules.

Limits (see :class:`MediaPolicy`): encoded bytes per item (base64 is measured before decoding,
HTTP bodies while streaming), pixels and aspect ratio per image read from the header *before*
decoding (stops decompression bombs), frames and total pixels per video, and for HTTP a total time
budget and a redirect limit. Resizing into a model's pixel range is a separate step,
:func:`fit_pixels`. Going the other way, :func:`to_data_uri` is the one encoder of an image (or
media bytes) into a data URI.

Every refusal raises a typed error from :mod:`mmrm.rm.errors` (``MediaError``, ``MediaForbidden``,
``LimitExceeded``, ``PayloadTooLarge``, ``MediaFetchError``) whose ``field`` names the input and
whose ``limit`` names the rule it broke, so the service can answer with a 4xx.

The package's modules, one job each: :mod:`~mmrm.rm.media.policy` (limits), :mod:`~mmrm.rm.media.sources`
(the source classifier; inline data and local files), :mod:`~mmrm.rm.media.fetch` (the SSRF-safe
HTTP fetcher), :mod:`~mmrm.rm.media.decode` (sniffing, header limits, conversion to RGB),
:mod:`~mmrm.rm.media.resize` (:func:`fit_pixels`), :mod:`~mmrm.rm.media.data_uri` (the encoder) and
:mod:`~mmrm.rm.media.loader` (:class:`MediaLoader`, which puts them together).
"""

from __future__ import annotations

from mmrm.rm.media.data_uri import MediaData, to_data_uri
from mmrm.rm.media.decode import to_rgb
from mmrm.rm.media.fetch import Resolver
from mmrm.rm.media.loader import MediaLoader
from mmrm.rm.media.policy import IMAGE_FORMATS, VIDEO_CONTAINERS, MediaPolicy
from mmrm.rm.media.resize import fit_pixels, image_sha256
from mmrm.rm.media.sources import Source, SourceKind, classify_source

__all__ = [
    "IMAGE_FORMATS",
    "VIDEO_CONTAINERS",
    "MediaData",
    "MediaLoader",
    "MediaPolicy",
    "Resolver",
    "Source",
    "SourceKind",
    "classify_source",
    "fit_pixels",
    "image_sha256",
    "to_data_uri",
    "to_rgb",
]
