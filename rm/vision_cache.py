"""The vision feature cache of the ``hf`` engine: image features by content hash.

An image seen before (the other side of a pair, a group's shared image, a benchmark image scored
by many prompts) skips the vision tower, and one image repeated in a batch runs it once. Features
are only valid for the weights that made them, so the cache empties itself when any parameter of
the backbone changes in place (an optimizer step, ``load_state_dict``, a LoRA update).
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections import OrderedDict
from typing import Any

import torch
from torch import nn


class FeatureCache:
    """A least-recently-used map from content keys to tensors, bounded by their total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._lock = threading.Lock()
        self._weights_version = -1

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, *, touch: bool = True) -> torch.Tensor | None:
        """The tensor under ``key`` (None when absent); ``touch`` counts the lookup and marks it used."""
        with self._lock:
            v = self._items.get(key)
            if touch:
                if v is None:
                    self.misses += 1
                else:
                    self.hits += 1
                    self._items.move_to_end(key)
            return v

    def put(self, key: str, value: torch.Tensor) -> None:
        """Keep ``value`` under ``key``, evicting the least recently used beyond :attr:`max_bytes`
        (a tensor larger than the whole cache is not kept)."""
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.numel() * old.element_size()
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, v = self._items.popitem(last=False)
                self.bytes -= v.numel() * v.element_size()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0

    def follow_weights(self, backbone: nn.Module) -> None:
        """Empty the cache if ``backbone``'s weights changed since the last call: every in-place
        change of a parameter bumps its version counter."""
        version = sum(p._version for p in backbone.parameters())
        if version != self._weights_version:
            self.clear()
            self._weights_version = version


def content_key(pixels: torch.Tensor, grid: torch.Tensor) -> str:
    """A hash of one image's preprocessed pixels, its grid, dtype and shape."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{tuple(pixels.shape)}|{pixels.dtype}|{grid.tolist()}".encode())
    h.update(pixels.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_ACCEPTS: dict[tuple[type, str], bool] = {}


def accepts(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes a keyword ``name`` (cached per class)."""
    key = (type(module), name)
    if key not in _ACCEPTS:
        _ACCEPTS[key] = name in inspect.signature(module.forward).parameters
    return _ACCEPTS[key]


def backbone_inputs(cache: FeatureCache, backbone: nn.Module, base: nn.Module, batch: dict[str, torch.Tensor],
                    device: torch.device) -> dict[str, Any]:
    """The batch on ``device``; at inference, images' vision features come from ``cache``.

    Training (grad enabled, or the backbone in train mode) always runs the tower, and so does a
    backbone whose forward takes no precomputed features (``mm_encoder_outputs``).
    """
    use_cache = (
        cache.max_bytes > 0 and not torch.is_grad_enabled() and not backbone.training
        and "pixel_values" in batch and "image_grid_thw" in batch and accepts(base, "mm_encoder_outputs")
        # Qwen3-VL's DeepStack also feeds per-block vision features into the decoder; the cache keeps
        # only the final ones, so such models always run their tower.
        and not getattr(getattr(base.config, "vision_config", None), "deepstack_visual_indexes", None)
    )
    if not use_cache:
        return {k: v.to(device) for k, v in batch.items()}
    cache.follow_weights(backbone)
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pixels, grids = batch["pixel_values"], batch["image_grid_thw"]
    rows = grids.prod(-1).tolist()
    keys, slices, start = [], [], 0
    for g, n in zip(grids, rows):
        sl = pixels[start:start + n]
        start += n
        slices.append(sl)
        keys.append(content_key(sl, g))
    missing = list(dict.fromkeys(k for k in keys if cache.get(k) is None))
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        idx = [first[k] for k in missing]
        feats = base.get_image_features(torch.cat([slices[i] for i in idx]).to(device), grids[idx].to(device),
                                        return_dict=True).pooler_output
        for k, f in zip(missing, feats):
            cache.put(k, f.detach())
    image = [cache.get(k, touch=False) for k in keys]
    if any(f is None for f in image):  # evicted while filling (a cache smaller than one batch)
        return {k: v.to(device) for k, v in batch.items()}
    out: dict[str, Any] = {k: v.to(device) for k, v in batch.items() if k not in ("pixel_values", "pixel_values_videos")}
    enc: dict[str, Any] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(image))}
    if "pixel_values_videos" in batch:  # videos are not cached, but the model takes both or neither
        enc["video"] = base.get_video_features(batch["pixel_values_videos"].to(device), out["video_grid_thw"],
                                               return_dict=True)
    out["mm_encoder_outputs"] = enc
    return out
