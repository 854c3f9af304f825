"""MM-RLHF-Reward's head and index rule, transcribed from its code (MM-RLHF's
``llava/model/language_model/llava_qwen.py``, read in the julyanghar/MM-RLHF copy at commit 882e67a: class RewardHead, and LlavaQwenForCausalLM.forward's
``rm_forward`` branch), checked against mmrm's ``dense_tanh`` head and pooling under left and right
padding. (The LLaVA-code checkpoint conversion and critique-then-score are not built yet.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmrm.rm.heads import MMRLHF_HEAD_KEYS, RewardHead, cumsum_index, dense_tanh_state, pool_last_token

H = 16


class MMRLHFRewardHead(nn.Module):
    """Transcribed: dropout -> dense (H x H) -> tanh -> dropout -> out_proj (H x 1)."""

    def __init__(self, hidden: int, p: float = 0.1) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(p)
        self.out_proj = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(h)))))


def test_dense_tanh_equals_mm_rlhf_head():
    torch.manual_seed(0)
    theirs = MMRLHFRewardHead(H).eval()
    holder = nn.Module()
    holder.rm_head = theirs
    sd = holder.state_dict()
    assert set(sd) == set(MMRLHF_HEAD_KEYS)
    ours = RewardHead(H, "dense_tanh")
    ours.load_state_dict(dense_tanh_state(sd))
    x = torch.randn(5, H)
    assert torch.allclose(ours(x), theirs(x).squeeze(-1), atol=1e-6)
    with pytest.raises(KeyError, match="rm_head.out_proj.bias"):
        dense_tanh_state({k: v for k, v in sd.items() if k != "rm_head.out_proj.bias"})


def _batch(lengths: list[int], side: str) -> torch.Tensor:
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, width - n:] = 1
    return mask


def test_index_rule_under_right_and_left_padding():
    lengths = [5, 3, 7]
    hidden = torch.arange(3 * 7, dtype=torch.float32).reshape(3, 7, 1)  # value = row * 7 + position
    right = _batch(lengths, "right")
    # as MM-RLHF computes it: the number of real tokens minus one
    assert cumsum_index(right).tolist() == [4, 2, 6]
    # right padding: that is the last real token, where mmrm pools
    assert pool_last_token(hidden, right).squeeze(-1).tolist() == [4.0, 9.0, 20.0]
    assert hidden[torch.arange(3), cumsum_index(right)].squeeze(-1).tolist() == [4.0, 9.0, 20.0]
    # left padding: the rule points before the end of every row shorter than the batch
    left = _batch(lengths, "left")
    assert cumsum_index(left).tolist() == [4, 2, 6]
    last = pool_last_token(hidden, left).squeeze(-1).tolist()
    assert last == [6.0, 13.0, 20.0]
    assert hidden[torch.arange(3), cumsum_index(left)].squeeze(-1).tolist() == [4.0, 9.0, 20.0] != last
