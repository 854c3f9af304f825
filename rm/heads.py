"""Reward heads: map the pooled hidden state of the last real token to one scalar reward.

``linear`` and ``mlp2`` are mmrm's; ``dense_tanh`` is MM-RLHF-Reward's ``RewardHead``
(``llava/model/language_model/llava_qwen.py`` of MM-RLHF: ``dense`` H x H -> tanh -> ``out_proj``
H x 1, dropout around both, off at inference).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

HeadType = Literal["linear", "mlp2", "dense_tanh"]

#: MM-RLHF's head tensor names -> dense_tanh's.
MMRLHF_HEAD_KEYS = {"rm_head.dense.weight": "net.0.weight", "rm_head.dense.bias": "net.0.bias",
                    "rm_head.out_proj.weight": "net.2.weight", "rm_head.out_proj.bias": "net.2.bias"}


class RewardHead(nn.Module):
    """``linear``: one projection to a scalar. ``mlp2``: Linear -> SiLU -> Linear (BaseReward's best).
    ``dense_tanh``: Linear(H, H) -> tanh -> Linear(H, 1) (MM-RLHF-Reward's head).

    The head runs in float32 by default whatever the backbone's dtype, so a bf16 backbone does not
    quantize rewards that training pushes apart by small margins.
    """

    def __init__(self, hidden_size: int, head_type: HeadType = "mlp2", inner_size: int | None = None) -> None:
        super().__init__()
        self.head_type = head_type
        self.hidden_size = hidden_size
        if head_type == "linear":
            self.inner_size = None
            self.net: nn.Module = nn.Linear(hidden_size, 1)
        elif head_type == "mlp2":
            self.inner_size = inner_size or hidden_size
            self.net = nn.Sequential(nn.Linear(hidden_size, self.inner_size), nn.SiLU(), nn.Linear(self.inner_size, 1))
        elif head_type == "dense_tanh":
            self.inner_size = hidden_size
            self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))
        else:
            raise ValueError(f"unknown head type {head_type!r}; choose 'linear', 'mlp2' or 'dense_tanh'")

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: [batch, hidden] -> rewards [batch]."""
        p = next(self.parameters())
        return self.net(pooled.to(dtype=p.dtype, device=p.device)).squeeze(-1)


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last real (unmasked) token of each row, for left OR right padding.

    Using the position of the last 1 in the mask (not ``-1`` and not "first pad token - 1") is what
    keeps the pooled token right whatever the padding side.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.to(torch.long) * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def cumsum_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """MM-RLHF-Reward's pooled position, as its code computes it: ``attention_mask.cumsum(-1)[:, -1] - 1``.

    That is the number of real tokens minus one: the last real token under right padding (mmrm's
    batches), but under left padding a position among the first real tokens or the padding, not
    the last real token (see :func:`pool_last_token`, right for both).
    """
    return attention_mask.long().cumsum(dim=-1)[:, -1] - 1


def dense_tanh_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``dense_tanh`` head's state dict from MM-RLHF's ``rm_head.*`` tensors; a missing one is a KeyError naming it."""
    return {ours: tensors[theirs] for theirs, ours in MMRLHF_HEAD_KEYS.items()}
