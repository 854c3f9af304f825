"""The ``hf`` engine: the transformers backbone in this process.

Scores are batch-invariant: every sample is encoded alone, batches are right-padded, and the
pooled token is the last real token of each row, so a sample's state does not depend on what else
shares its batch. Three fast paths keep it so:

* packed rows for text-only samples (:mod:`mmrm.rm.packing`; ``packing``, on a CPU by default);
* the vision feature cache (:mod:`mmrm.rm.vision_cache`; ``vision_cache_bytes``);
* the shared-prefix path for groups (:mod:`mmrm.rm.prefix`; ``shared_prefix``).

A batch whose forward fails is retried sample by sample, so only the sample that fails alone
fails.
"""

from __future__ import annotations

import logging
from typing import Literal, Sequence

import torch
from torch import nn

from mmrm.rm import batching, packing
from mmrm.rm.encode import Encoded, Encoder, collate
from mmrm.rm.engines.base import Chunk
from mmrm.rm.heads import pool_last_token
from mmrm.rm.loading import base_model
from mmrm.rm.options import ModelOptions
from mmrm.rm.prefix import prefix_last_hidden, shared_prefix_length
from mmrm.rm.types import Sample
from mmrm.rm.vision_cache import FeatureCache, backbone_inputs

log = logging.getLogger("mmrm.rm.reward_model")


class HFEngine(nn.Module):
    """A transformers backbone (causal LM, VLM or sequence classifier) run in this process.

    It is an ``nn.Module`` so that the reward model that holds it moves, trains and saves it like
    any submodule; ``options`` is the reward model's own options object (knobs changed on it, such
    as ``max_batch_size`` or ``packing``, apply from the next call).
    """

    name: Literal["hf"] = "hf"

    def __init__(self, backbone: nn.Module, encoder: Encoder, options: ModelOptions) -> None:
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.options = options
        self.forward_calls = 0
        #: image features by content hash (inference only; bounded, least recently used first out).
        self.vision_cache = FeatureCache(options.vision_cache_bytes)
        self._packable: bool | None = None  # decided on the first packed forward

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def provenance_dtype(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def check(self, sample: Sample, encoded: Encoded) -> Encoded:
        """Everything the encoder produces runs here: nothing to refuse."""
        return encoded

    def close(self) -> None:
        """Nothing is held open."""

    # ------------------------------------------------------------------------------- forwards
    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last-token states [batch, hidden] of a collated batch (one backbone forward pass; with
        grad when grad is enabled: the training forward)."""
        self.forward_calls += 1
        base = base_model(self.backbone)
        out = base(**self._inputs(base, batch), use_cache=False)
        return pool_last_token(out.last_hidden_state, batch["attention_mask"].to(out.last_hidden_state.device))

    def pooled_packed(self, encoded: Sequence[Encoded]) -> torch.Tensor:
        """Last-token states [n, hidden] of text-only samples packed into one row (one forward)."""
        self.forward_calls += 1
        base = base_model(self.backbone)
        kw = packing.pack([e.input_ids for e in encoded])
        dev = self.device
        last = kw.pop("last").to(dev)
        # the sample bounds stay on the CPU: attention reads them as Python ints in every layer
        kw = {k: v.to(dev) if isinstance(v, torch.Tensor) and k != "cu_seq_lens_q" else v for k, v in kw.items()}
        out = base(**kw, use_cache=False)
        return out.last_hidden_state[0, last]

    def _inputs(self, base: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, object]:
        return backbone_inputs(self.vision_cache, self.backbone, base, batch, self.device)

    def _pooled_padded(self, encoded: Sequence[Encoded]) -> torch.Tensor:
        return self.pooled(collate(list(encoded), self.encoder.pad_id))

    # ------------------------------------------------------------------------------- planning
    def packing_active(self) -> bool:
        """Whether a forward now packs its text-only samples (inference on a packable backbone)."""
        mode = self.options.packing
        want = self.device.type == "cpu" if mode == "auto" else mode == "on"
        if not want or torch.is_grad_enabled() or self.backbone.training:
            return False
        if self._packable is None:
            self._packable = packing.enable(base_model(self.backbone))
        return self._packable

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Padded batches under the options' ``max_batch_size`` / ``max_batch_tokens``."""
        return batching.plan_batches(lengths, max_batch_size=self.options.max_batch_size,
                                     max_batch_tokens=self.options.max_batch_tokens)

    def plan_packs(self, lengths: Sequence[int]) -> list[list[int]]:
        """Packed rows under the options' ``pack_tokens`` / ``max_batch_size``."""
        return batching.plan_packs(lengths, pack_tokens=self.options.pack_tokens,
                                   max_batch_size=self.options.max_batch_size)

    # ------------------------------------------------------------------------------ the engine
    @torch.no_grad()
    def last_hidden(self, encoded: Sequence[Encoded]) -> list[Chunk]:
        """States of independent samples, batched (packed where the options allow); a batch that
        fails is retried sample by sample."""
        packed: list[int] = []
        if self.packing_active():
            packed = [i for i, e in enumerate(encoded) if e.n_images == 0 and e.n_videos == 0]
        padded = sorted(set(range(len(encoded))) - set(packed))
        plans = [([packed[j] for j in p], self.pooled_packed) for p in self.plan_packs([encoded[i].length for i in packed])]
        plans += [([padded[j] for j in b], self._pooled_padded) for b in self.plan_batches([encoded[i].length for i in padded])]
        out: list[Chunk] = []
        for idx, run in plans:
            try:
                out.append((idx, run([encoded[i] for i in idx])))
            except RuntimeError as e:
                if len(idx) == 1:
                    log.warning("reward forward failed for one item: %s", e)
                    out.append((idx, e))
                    continue
                log.warning("batched forward of %d items failed (%s); retrying one by one", len(idx), e)
                for i in idx:
                    out += [([i], r) for _, r in self.last_hidden([encoded[i]])]
        return out

    def shared_prefix_length(self, encoded: Sequence[Encoded]) -> int:
        """The prefix the group path would cache (:func:`mmrm.rm.prefix.shared_prefix_length`), or 0."""
        return shared_prefix_length(encoded, media_ids=self.encoder._media_ids, min_length=self.options.min_shared_prefix)

    @torch.no_grad()
    def group_last_hidden(self, encoded: Sequence[Encoded]) -> list[Chunk]:
        """States of samples that share a prompt: the shared prefix (prompt + images) runs once with
        its keys and values cached, then the remaining tokens of every sample run in length-sorted
        batches attending to that cache (:mod:`mmrm.rm.prefix`). Without a usable shared prefix,
        with ``shared_prefix`` off, or if the prefix path fails, this is :meth:`last_hidden`."""
        n = self.shared_prefix_length(encoded) if self.options.shared_prefix else 0
        if n == 0:
            return self.last_hidden(encoded)
        base = base_model(self.backbone)
        try:
            return prefix_last_hidden(  # type: ignore[return-value]
                base, encoded, n, pad_id=self.encoder.pad_id, device=self.device,
                inputs=lambda batch: self._inputs(base, batch), plan=self.plan_batches, count=self._count,
            )
        except (RuntimeError, ValueError, TypeError) as e:
            log.warning("shared-prefix scoring failed (%s); scoring the samples independently", e)
            return self.last_hidden(encoded)

    def _count(self) -> None:
        self.forward_calls += 1
