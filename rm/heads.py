"""Reward heads: map the pooled hidden state of the last real token to one scalar reward."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

HeadType = Literal["linear", "mlp2"]


class RewardHead(nn.Module):
    """``linear``: one projection to a scalar. ``mlp2``: Linear -> SiLU -> Linear (BaseReward's best).

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
        else:
            raise ValueError(f"unknown head type {head_type!r}; choose 'linear' or 'mlp2'")

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
