"""Image decoding matches what the image shows (RELIABILITY.md, "image fidelity").

Each case saves ONE picture in a non-plain form (EXIF-rotated, 16-bit, CMYK, palette, alpha) and
compares it with the same picture saved as a plain 8-bit RGB PNG:

* the pixels :class:`MediaLoader` decodes equal the plain picture's, and
* a real reward model (the tiny Qwen2-VL checkpoint) gives both the same score within 1e-5.

Every expectation is computed here with numpy from the pixel values the test itself wrote (or, for
lossy JPEG, read back raw with Pillow and converted by the documented formula), never by the code
under test. The plain picture goes through the test's own PNG encoder (``helpers.png_data_uri``).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers import png_data_uri
from mmrm.rm.media import MediaLoader

H, W = 56, 84  # not square, so a rotation that is not applied changes the image's shape too


def picture() -> np.ndarray:
    """A smooth, asymmetric RGB picture (uint8 [H, W, 3]): any flip or turn changes it."""
    y, x = np.mgrid[0:H, 0:W]
    r = (x * 255 // (W - 1)).astype(np.uint8)
    g = (y * 255 // (H - 1)).astype(np.uint8)
    b = ((x * 3 + y * 7) % 256).astype(np.uint8)
    arr = np.stack([r, g, b], axis=-1)
    arr[4:14, 6:30] = (250, 20, 20)  # a red bar near the top-left corner
    return arr


def uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def saved(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def decoded(source: str) -> np.ndarray:
    im = MediaLoader().load_image(source)
    assert im.mode == "RGB"
    return np.asarray(im)


# -------------------------------------------------------------------------------------------------
# The cases: (source in the non-plain form, the plain RGB picture it must equal)

# How a picture is stored for each EXIF orientation so that a viewer shows it upright (EXIF 2.3,
# tag 0x0112): 6 = "rotate 90 degrees clockwise to view", so it is stored turned counter-clockwise.
_STORED_FOR_ORIENTATION = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transposed
    6: lambda a: np.rot90(a, 1),  # turned 90 counter-clockwise
    7: lambda a: np.rot90(a.swapaxes(0, 1), 2),  # transversed
    8: lambda a: np.rot90(a, -1),  # turned 90 clockwise
}


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def exif_png(orientation: int) -> tuple[str, np.ndarray]:
    up = picture()
    stored = np.ascontiguousarray(_STORED_FOR_ORIENTATION[orientation](up))
    return uri(saved(Image.fromarray(stored), "PNG", exif=exif_bytes(orientation)), "image/png"), up


def exif_jpeg() -> tuple[str, np.ndarray]:
    """A phone photo: a JPEG stored sideways with orientation 6. JPEG is lossy, so the plain form is
    the stored pixels as Pillow decodes them (no EXIF handling), turned upright by numpy."""
    stored = np.ascontiguousarray(np.rot90(picture(), 1))
    data = saved(Image.fromarray(stored), "JPEG", quality=95, exif=exif_bytes(6))
    raw = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # as stored: convert() ignores EXIF
    return uri(data, "image/jpeg"), np.ascontiguousarray(np.rot90(raw, -1))


def grey8() -> np.ndarray:
    return picture().mean(axis=-1).round().astype(np.uint8)


def sixteen_bit_grey() -> tuple[str, np.ndarray]:
    """The same grey picture at 16 bits (v * 257: 0 -> 0, 255 -> 65535), as Pillow mode I;16."""
    g = grey8()
    im16 = Image.fromarray(g.astype(np.uint16) * 257)
    assert im16.mode == "I;16"
    return uri(saved(im16, "PNG"), "image/png"), np.repeat(g[..., None], 3, axis=-1)


def sixteen_bit_grey_fine() -> tuple[str, np.ndarray]:
    """16-bit values that are not multiples of 257: each must round to the nearest 8-bit level."""
    v = (np.arange(H * W, dtype=np.int64).reshape(H, W) * 65535 // (H * W - 1)).astype(np.uint16)
    want = np.rint(v.astype(np.float64) / 257.0).astype(np.uint8)
    return uri(saved(Image.fromarray(v), "PNG"), "image/png"), np.repeat(want[..., None], 3, axis=-1)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def sixteen_bit_rgb() -> tuple[str, np.ndarray]:
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16), written by hand: Pillow cannot."""
    arr = picture()
    rows = (arr.astype(">u2") * 257).reshape(H, W * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 16, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    return uri(data, "image/png"), arr


def cmyk_jpeg() -> tuple[str, np.ndarray]:
    """A CMYK JPEG (with black ink, K > 0). Its plain form: the CMYK values as stored, read raw,
    converted by R = (255 - C)(255 - K) / 255 (and likewise G, B), rounded."""
    arr = picture().astype(np.int64)
    k = (255 - arr.max(axis=-1)) // 2
    cmy = np.clip(255 - arr - k[..., None], 0, 255)
    cmyk = np.concatenate([cmy, k[..., None]], axis=-1).astype(np.uint8)
    data = saved(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=95)
    raw = np.asarray(Image.open(io.BytesIO(data))).astype(np.float64)
    assert raw.shape == (H, W, 4)
    rgb = np.rint((255 - raw[..., :3]) * (255 - raw[..., 3:]) / 255.0).astype(np.uint8)
    return uri(data, "image/jpeg"), rgb


def _palette_picture() -> tuple[np.ndarray, np.ndarray]:
    """Indices [H, W] and a 16-colour palette [16, 3] (the test's own, not a quantizer's)."""
    y, x = np.mgrid[0:H, 0:W]
    idx = ((x // 11) + 8 * (y // 28)).astype(np.uint8) % 16
    palette = np.array([((i * 53) % 256, (i * 97) % 256, (255 - i * 16) % 256) for i in range(16)], np.uint8)
    return idx, palette


def _p_image(idx: np.ndarray, palette: np.ndarray) -> Image.Image:
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette.reshape(-1).tolist())
    return im


def palette(fmt: str) -> tuple[str, np.ndarray]:
    idx, pal = _palette_picture()
    return uri(saved(_p_image(idx, pal), fmt), f"image/{fmt.lower()}"), pal[idx]


def palette_transparent(fmt: str) -> tuple[str, np.ndarray]:
    """Index 3 is transparent: those pixels show the white background."""
    idx, pal = _palette_picture()
    want = pal[idx].copy()
    want[idx == 3] = 255
    return uri(saved(_p_image(idx, pal), fmt, transparency=3), f"image/{fmt.lower()}"), want


def _alpha() -> np.ndarray:
    """Opaque, fully transparent and partly transparent regions."""
    a = np.full((H, W), 255, np.uint8)
    a[:, : W // 3] = 0
    a[H // 2 :, W // 3 : 2 * W // 3] = 128
    a[: H // 2, W // 3 : 2 * W // 3] = 40
    return a


def _over_white(rgb: np.ndarray, a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def rgba_png() -> tuple[str, np.ndarray]:
    rgb, a = picture(), _alpha()
    rgb_under = rgb.copy()
    rgb_under[a == 0] = 0  # what a dropped alpha channel would show: black
    im = Image.fromarray(np.concatenate([rgb_under, a[..., None]], axis=-1), mode="RGBA")
    return uri(saved(im, "PNG"), "image/png"), _over_white(rgb_under, a)


def la_png() -> tuple[str, np.ndarray]:
    g, a = grey8(), _alpha()
    im = Image.fromarray(np.stack([g, a], axis=-1), mode="LA")
    return uri(saved(im, "PNG"), "image/png"), np.repeat(_over_white(g[..., None], a), 3, axis=-1)


def rgba_webp() -> tuple[str, np.ndarray]:
    rgb, a = picture(), _alpha()
    im = Image.fromarray(np.concatenate([rgb, a[..., None]], axis=-1), mode="RGBA")
    return uri(saved(im, "WEBP", lossless=True, exact=True), "image/webp"), _over_white(rgb, a)


CASES = {
    **{f"exif_orientation_{o}_png": (lambda o=o: exif_png(o)) for o in range(2, 9)},
    "exif_orientation_6_jpeg": exif_jpeg,
    "sixteen_bit_grey_png": sixteen_bit_grey,
    "sixteen_bit_grey_png_fine_levels": sixteen_bit_grey_fine,
    "sixteen_bit_rgb_png": sixteen_bit_rgb,
    "cmyk_jpeg": cmyk_jpeg,
    "palette_png": lambda: palette("PNG"),
    "palette_gif": lambda: palette("GIF"),
    "palette_transparent_png": lambda: palette_transparent("PNG"),
    "palette_transparent_gif": lambda: palette_transparent("GIF"),
    "rgba_png": rgba_png,
    "la_png": la_png,
    "rgba_webp": rgba_webp,
}

@pytest.mark.parametrize("name", list(CASES))
def test_decoded_pixels_equal_the_plain_picture(name: str) -> None:
    source, want = CASES[name]()
    got = decoded(source)
    assert got.shape == want.shape, f"{name}: decoded {got.shape}, the picture is {want.shape}"
    diff = int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max())
    assert diff == 0, f"{name}: max pixel difference {diff}"


def test_fully_transparent_pixels_are_white_and_opaque_ones_unchanged() -> None:
    source, _ = rgba_png()
    got, a = decoded(source), _alpha()
    assert (got[a == 0] == 255).all()
    assert (got[a == 255] == picture()[a == 255]).all()


def test_unparseable_exif_leaves_the_image_as_stored() -> None:
    # A PNG eXIf chunk that is not a TIFF structure: the image is still readable, shown as stored.
    arr = picture()
    body = saved(Image.fromarray(arr), "PNG")
    iend = body.rindex(b"IEND") - 4
    data = body[:iend] + _png_chunk(b"eXIf", b"MM\x00\x2a garbage") + body[iend:]
    assert (decoded(uri(data, "image/png")) == arr).all()


def test_video_frames_are_used_as_stored() -> None:
    # Animated images keep their behaviour: every frame, as stored (no EXIF turn per frame).
    frames = [np.full((H, W, 3), (i * 60, 255 - i * 60, 90), np.uint8) for i in range(3)]
    ims = [Image.fromarray(f) for f in frames]
    data = saved(ims[0], "PNG", save_all=True, append_images=ims[1:], exif=exif_bytes(6))
    got = MediaLoader().load_video(uri(data, "image/png"))
    assert [np.asarray(g).shape for g in got] == [(H, W, 3)] * 3
    for g, f in zip(got, frames):
        assert (np.asarray(g) == f).all()


# -------------------------------------------------------------------------------------------------
# The reward model's score is the plain picture's


@pytest.fixture(scope="module")
def reward_model(reward_checkpoint: Path):
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_pretrained(reward_checkpoint, device="cpu")


def _sample(image_uri: str):
    from mmrm.rm.types import Sample

    return Sample(
        prompt=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_uri}},
                                             {"type": "text", "text": "What does the picture show?"}]}],
        response="A gradient with a red bar.",
    )


def test_scores_equal_the_plain_pictures_scores(reward_model) -> None:
    names = list(CASES)
    built = [CASES[n]() for n in names]
    # What a decoder without these rules would score: the EXIF picture as stored (sideways), and
    # the 16-bit picture clipped at 255 (Pillow's own I;16 -> L). They must score differently from
    # the plain picture, or the comparison above would prove nothing.
    sideways = np.ascontiguousarray(np.rot90(picture(), 1))
    clipped = np.repeat(np.minimum(grey8().astype(np.uint16) * 257, 255).astype(np.uint8)[..., None], 3, axis=-1)
    samples = ([_sample(src) for src, _ in built] + [_sample(png_data_uri(want)) for _, want in built]
               + [_sample(png_data_uri(sideways)), _sample(png_data_uri(clipped))])
    scores = reward_model.rewards(samples)
    n = len(names)
    deltas = {name: abs(scores[i] - scores[n + i]) for i, name in enumerate(names)}
    over = {k: v for k, v in deltas.items() if v > 1e-5}
    assert not over, f"|score - plain score| above 1e-5: {over}"
    plain = dict(zip(names, scores[n : 2 * n]))
    assert abs(scores[-2] - plain["exif_orientation_6_png"]) > 1e-4
    assert abs(scores[-1] - plain["sixteen_bit_grey_png"]) > 1e-4
