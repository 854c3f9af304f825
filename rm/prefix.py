"""The shared-prefix path of the ``hf`` engine: a group's prompt runs once.

Samples that share a prompt (a GRPO group, both sides of a pair) share a token prefix, images
included. The prefix runs through the backbone once with its keys and values cached; the rest of
every sample then runs in length-sorted batches attending to that cache. Causal attention makes
the prefix's states independent of what follows, so the last-token states equal the per-sample
path's up to float rounding.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mmrm.rm.encode import _SEQUENCE_KEYS, Encoded


def shared_prefix_length(encoded: Sequence[Encoded], *, media_ids: set[int], min_length: int) -> int:
    """Tokens that every encoded sample starts with and that the prefix path may cache, or 0.

    The prefix is the longest common token prefix, cut so that every sample keeps at least one
    token of its own, and only accepted when it has ``min_length`` tokens or more, the samples
    carry the same media tensors, and every media token (``media_ids``) lies inside it (the part
    after it is plain text).
    """
    if len(encoded) < 2:
        return 0
    first = encoded[0]
    keys = {k for k in first.extras if k not in _SEQUENCE_KEYS}
    for e in encoded[1:]:
        if {k for k in e.extras if k not in _SEQUENCE_KEYS} != keys:
            return 0
        for k in keys:
            a, b = first.extras[k], e.extras[k]
            if a.shape != b.shape or not torch.equal(a, b):
                return 0
    n = min(e.length for e in encoded) - 1
    ref = first.input_ids[:n]
    for e in encoded[1:]:
        diff = (e.input_ids[:n] != ref).nonzero()
        if len(diff):
            n = int(diff[0, 0])
            ref = ref[:n]
    if n < min_length:
        return 0
    media = torch.tensor(sorted(media_ids), dtype=first.input_ids.dtype)
    for e in encoded:
        if len(media) and torch.isin(e.input_ids[n:], media).any():
            return 0  # a response with its own image: not plain text after the prefix
    return n


def prefix_last_hidden(
    base: nn.Module,
    encoded: Sequence[Encoded],
    n: int,
    *,
    pad_id: int,
    device: torch.device,
    inputs: Callable[[dict[str, torch.Tensor]], dict[str, Any]],
    plan: Callable[[Sequence[int]], list[list[int]]],
    count: Callable[[], None],
) -> list[tuple[list[int], torch.Tensor]]:
    """Last-token hidden states of samples sharing their first ``n`` tokens, per forward.

    ``base`` is the transformer body; ``inputs`` puts a batch on the device (with cached vision
    features), ``plan`` batches the tails by length, ``count`` is called once per forward pass.
    Returns (indices, hidden [len(indices), hidden_size]) for every tail batch.
    """
    from transformers import DynamicCache

    cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    first = encoded[0]
    pre: dict[str, torch.Tensor] = {"input_ids": first.input_ids[None, :n]}
    for k, v in first.extras.items():
        if k in _SEQUENCE_KEYS:
            if k != "attention_mask":
                pre[k] = v[None, :n]
        else:
            pre[k] = v
    pre["attention_mask"] = torch.ones((1, n), dtype=torch.long)
    prefix_cache = DynamicCache()
    count()
    base(**inputs(pre), use_cache=True, **{cache_kw: prefix_cache})
    # Text after the prefix sits at position index + delta; mrope models (Qwen2-VL family)
    # shift it by the rope delta their image grid produces, text models by nothing.
    mrope = hasattr(base, "get_rope_index")
    delta = 0
    has_media = any(k not in _SEQUENCE_KEYS for k in first.extras)
    if mrope and has_media:
        rd = getattr(base, "rope_deltas", None)
        if rd is None:
            raise RuntimeError("the backbone exposes no rope_deltas after the prefix pass")
        delta = int(rd.reshape(-1)[0])
    layers = [(layer.keys, layer.values) for layer in prefix_cache.layers]
    tails = [e.input_ids[n:] for e in encoded]
    out: list[tuple[list[int], torch.Tensor]] = []
    for idx in plan([len(t) for t in tails]):
        g = len(idx)
        width = len(tails[idx[0]])  # the plan puts the longest first
        ids = torch.full((g, width), pad_id, dtype=first.input_ids.dtype)
        mask = torch.zeros((g, n + width), dtype=torch.long)
        mask[:, :n] = 1
        last = torch.empty(g, dtype=torch.long)
        for row, i in enumerate(idx):
            t = tails[i]
            ids[row, : len(t)] = t
            mask[row, n: n + len(t)] = 1
            last[row] = len(t) - 1
        pos = (torch.arange(n, n + width) + delta)[None].expand(g, width)
        if mrope:
            pos = pos[None].expand(3, g, width)
        cache = DynamicCache(ddp_cache_data=[(k.expand(g, -1, -1, -1), v.expand(g, -1, -1, -1)) for k, v in layers])
        count()
        res = base(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   use_cache=True, **{cache_kw: cache})
        hidden = res.last_hidden_state
        out.append((list(idx), hidden[torch.arange(g, device=hidden.device), last.to(hidden.device)]))
    return out
