"""Input variants scored besides the original pair: ``blank`` replaces every image and video frame
with a uniform image of the same size (the image-reliance probe)."""

from __future__ import annotations

from typing import Any, Literal

from mmrm.rm.errors import MmrmError
from mmrm.rm.media import MediaLoader, to_data_uri
from mmrm.rm.types import Pair

Variant = Literal["original", "blank"]
VARIANTS: tuple[str, ...] = ("original", "blank")

#: Size used when an image cannot be read (the original pair then fails too, so its verdict is
#: invalid and the pair leaves the image-reliance metric).
FALLBACK_SIZE = (224, 224)


class Blanker:
    """Turns a pair into its blank-media twin. Sizes are read through ``loader`` (its policy decides
    which local paths may be read), and blank images are cached per size."""

    def __init__(self, loader: MediaLoader | None = None, fill: tuple[int, int, int] = (128, 128, 128)) -> None:
        self.loader = loader or MediaLoader()
        self.fill = fill
        self._uris: dict[tuple[int, int], str] = {}
        self._sizes: dict[str, tuple[int, int]] = {}

    def blank_uri(self, size: tuple[int, int]) -> str:
        if size not in self._uris:
            from PIL import Image

            self._uris[size] = to_data_uri(Image.new("RGB", size, self.fill))
        return self._uris[size]

    def _size(self, source: str) -> tuple[int, int]:
        if source not in self._sizes:
            try:
                self._sizes[source] = self.loader.load_image(source).size
            except MmrmError:
                self._sizes[source] = FALLBACK_SIZE
        return self._sizes[source]

    def _part(self, part: dict[str, Any]) -> dict[str, Any]:
        if part.get("type") == "image_url":
            return {"type": "image_url", "image_url": {"url": self.blank_uri(self._size(part["image_url"]["url"]))}}
        if part.get("type") == "video":
            video = part["video"]
            if isinstance(video, list):
                frames = [self.blank_uri(self._size(f)) for f in video]
            else:
                try:
                    frames = [self.blank_uri(im.size) for im in self.loader.load_video(video)]
                except MmrmError:
                    frames = [self.blank_uri(FALLBACK_SIZE)]
            return {**part, "video": frames}
        return part

    def _message(self, msg: dict[str, Any]) -> dict[str, Any]:
        if isinstance(msg.get("content"), list):
            return {**msg, "content": [self._part(p) for p in msg["content"]]}
        return msg

    def __call__(self, pair: Pair) -> Pair:
        d = pair.model_dump(mode="json", exclude_none=True)
        return Pair.model_validate({
            "prompt": [self._message(m) for m in d["prompt"]],
            "response_a": self._message(d["response_a"]),
            "response_b": self._message(d["response_b"]),
        })
