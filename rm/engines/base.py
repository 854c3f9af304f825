"""The engine interface: what runs a reward model's backbone.

A :class:`~mmrm.rm.reward_model.RewardModel` is one class for every engine. It encodes each sample
(chat template, token ids, length limits, media policy: the same on every engine), asks its engine
for the final hidden state of every sample's last token, and applies the reward head to those
states itself, once per forward, in this process. An engine only turns encoded samples into
last-token states:

* ``hf`` (:mod:`.hf`): the transformers backbone in this process, with padded or packed batches,
  the vision feature cache and the shared-prefix path for groups;
* ``vllm`` (:mod:`.vllm`): a vLLM pooling server, over HTTP.

A failure is per forward, never raised: the engine returns it in place of the states of the
samples it concerns (a typed :class:`~mmrm.rm.errors.MmrmError`, or the ``RuntimeError`` of a
forward that failed even for one sample alone), and the other samples score as ever.
"""

from __future__ import annotations

from typing import Literal, Protocol, Sequence, Union, runtime_checkable

import torch

from mmrm.rm.encode import Encoded, Encoder
from mmrm.rm.errors import MmrmError
from mmrm.rm.types import Sample

#: what an engine returns per forward: the indices (into the samples it was given) and either
#: their last-token hidden states [len(indices), hidden_size] or the failure they all share.
Chunk = tuple[list[int], Union[torch.Tensor, MmrmError, RuntimeError]]


@runtime_checkable
class Engine(Protocol):
    """Runs the backbone of a reward model (see the module docstring)."""

    #: the engine's name, as provenance reports it.
    name: Literal["hf", "vllm"]
    #: the encoder samples go through (an engine may keep more of each sample than the token ids).
    encoder: Encoder
    #: backbone forward passes (or server requests) run so far; tests and eval stats count them.
    forward_calls: int

    @property
    def provenance_dtype(self) -> str | None:
        """The backbone's compute dtype as provenance reports it (None: not known here)."""
        ...

    def check(self, sample: Sample, encoded: Encoded) -> Encoded:
        """Refuse what this engine cannot score (raise a typed error naming the sample's field)
        and attach what it needs to send; returns the encoded sample to score."""
        ...

    def last_hidden(self, encoded: Sequence[Encoded]) -> list[Chunk]:
        """Last-token hidden states of independent samples."""
        ...

    def group_last_hidden(self, encoded: Sequence[Encoded]) -> list[Chunk]:
        """Last-token hidden states of samples that share a prompt (a group, both sides of a pair)."""
        ...

    def close(self) -> None:
        """Release what the engine holds open (connections, threads)."""
        ...
