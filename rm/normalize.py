"""Group normalization of rewards, the one formula every part of mmrm uses."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def group_normalize(rewards: Sequence[float], *, eps: float = 1e-6) -> list[float]:
    """``(r - mean) / (std + eps)`` with the mean and POPULATION std (ddof=0) over the whole group.

    A group of one (G=1) has std 0 and normalizes to ``[0.0]``; so does any group of equal rewards.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        return []
    return ((r - r.mean()) / (r.std(ddof=0) + eps)).tolist()
