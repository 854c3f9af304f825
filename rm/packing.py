"""Packed (variable-length) forwards: many text samples in one row, no padding.

On a CPU the forward is compute-bound: a right-padded batch computes its padding and makes
SDPA take its masked path, so it is slower per sample than one sample at a time. Packing puts
the samples of a batch end to end in one row: every linear layer sees all real tokens at once
(large matmuls, no padding), and attention runs per sample with the fused causal kernel.

The attention is transformers' own SDPA, registered under :data:`PACKED_ATTENTION` through its
public ``AttentionInterface``: without packing metadata it is exactly ``sdpa``; with
``cu_seq_lens_q`` (the sample boundaries, as flash-attention's varlen kernels take them) it
attends within each sample only. Rotary positions restart at 0 for every sample, so each sample
sees exactly what it would see alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

#: the attention implementation name a packable backbone runs with.
PACKED_ATTENTION = "mmrm_packed_sdpa"

#: decoder families whose text forward is known to take packed rows (tested against the padded path).
PACKABLE_MODEL_TYPES = frozenset({"qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3", "llama", "mistral"})


def _packed_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.pop("cu_seq_lens_q", None)
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = cu.tolist()
    # One causal SDPA per sample: no mask, so the CPU takes its fused (flash) kernel.
    outs = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, is_causal=True, **kwargs)[0]
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outs, dim=1), None


def register() -> None:
    """Register :data:`PACKED_ATTENTION` with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if PACKED_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
        # Unpacked calls build the same masks as ``sdpa``.
        AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def enable(backbone: nn.Module) -> bool:
    """Switch a backbone that runs ``sdpa`` to :data:`PACKED_ATTENTION`; False if it cannot pack.

    Unpacked forwards are unchanged (the same SDPA with the same masks), so training, the group
    path and GPU batches behave exactly as before.
    """
    config = getattr(backbone, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    text = getattr(config, "text_config", None) or config
    if config.model_type not in PACKABLE_MODEL_TYPES and text.model_type not in PACKABLE_MODEL_TYPES:
        return False
    # The packed path attends to each whole sample: a sliding window would be ignored.
    if getattr(text, "use_sliding_window", False) or "sliding_attention" in (getattr(text, "layer_types", None) or ()):
        return False
    register()
    backbone.set_attn_implementation(PACKED_ATTENTION)
    return True


def pack(input_ids: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Backbone keyword arguments for samples laid end to end in one row, and each sample's last index."""
    lengths = torch.tensor([len(t) for t in input_ids])
    cu = torch.zeros(len(input_ids) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    ids = torch.cat(list(input_ids)).unsqueeze(0)
    positions = torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0)
    return {
        "input_ids": ids,
        "position_ids": positions,
        # A dict mask tells transformers the masks are prepared: attention comes from cu_seq_lens_q.
        "attention_mask": {"full_attention": None, "sliding_attention": None},
        "cu_seq_lens_q": cu,
        "last": (cu[1:] - 1).long(),
    }
