"""Batch planning: which encoded samples share a forward pass.

Padded batches are length-sorted (longest first) under an item cap and a padded-token budget;
packed rows (:mod:`mmrm.rm.packing`) keep input order under a real-token budget. Plans are lists of
indices into the caller's samples; they never change a sample's reward (every sample is pooled at
its own last token), only how many forwards run.
"""

from __future__ import annotations

from typing import Sequence

#: a batch with more padded tokens than this is also cut where padding would exceed
#: :data:`MAX_PADDING_FRACTION` of it: on compute-bound hardware padding is wasted work, while
#: small batches (overhead-bound) stay whole.
PADDING_CHECK_TOKENS = 4096
MAX_PADDING_FRACTION = 0.2


def plan_batches(lengths: Sequence[int], *, max_batch_size: int, max_batch_tokens: int,
                 padding_check_tokens: int = PADDING_CHECK_TOKENS,
                 max_padding_fraction: float = MAX_PADDING_FRACTION) -> list[list[int]]:
    """Indices grouped into padded batches: longest first, capped by items and by padded tokens,
    and (for large batches) by the share of padding.

    >>> plan_batches([3, 9, 5], max_batch_size=2, max_batch_tokens=100)
    [[1, 2], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # sorted: the first is the longest
        padded = width * (len(cur) + 1)
        wasteful = padded > padding_check_tokens and padded - real - lengths[i] > max_padding_fraction * padded
        if cur and (len(cur) >= max_batch_size or padded > max_batch_tokens or wasteful):
            batches.append(cur)
            cur = []
            real = 0
        cur.append(i)
        real += lengths[i]
    if cur:
        batches.append(cur)
    return batches


def plan_packs(lengths: Sequence[int], *, pack_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped into packed rows of at most ``pack_tokens`` tokens (a longer sample gets a
    row of its own) and ``max_batch_size`` samples, in input order.

    >>> plan_packs([3, 9, 5], pack_tokens=10, max_batch_size=8)
    [[0], [1], [2]]
    >>> plan_packs([3, 4, 5], pack_tokens=10, max_batch_size=8)
    [[0, 1], [2]]
    """
    packs: list[list[int]] = []
    cur: list[int] = []
    tokens = 0
    for i, n in enumerate(lengths):
        if cur and (tokens + n > pack_tokens or len(cur) >= max_batch_size):
            packs.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += n
    if cur:
        packs.append(cur)
    return packs


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` cut into consecutive runs of at most ``size`` (requests to a server that batches
    on its own)."""
    return [list(indices[k:k + size]) for k in range(0, len(indices), size)]
