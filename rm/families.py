"""Model-family specifics, kept out of the generic encoder.

A :class:`ModelFamily` says what the generic code cannot know from transformers' processor API
alone: which special tokens belong to a media span (left truncation must never cut through one,
and typed into a text part they would make the model's token count disagree with its images).
The generic encoder (:mod:`mmrm.rm.encode`) asks :func:`family_for` and uses the answer; a new
family is one entry in :data:`FAMILIES`.

A family is found by the checkpoint's ``config.model_type`` when the caller knows it, else from the
tokenizer's vocabulary: a processor object does not carry its model type, and the family's media
tokens are what the encoder needs anyway (text-only Qwen2 tokenizers have them too, and typing them
as text is refused there as well).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FAMILIES", "GENERIC", "QWEN", "ModelFamily", "family_for"]


@dataclass(frozen=True)
class ModelFamily:
    """One model family's specifics.

    Attributes:
        name: a short name for messages and tests.
        model_types: transformers ``config.model_type`` values of the family.
        media_tokens: special tokens that open, close or fill a media span in the rendered text.
    """

    name: str
    model_types: frozenset[str]
    media_tokens: tuple[str, ...]

    def recognizes(self, vocab: Mapping[str, int]) -> bool:
        """Whether a tokenizer with this vocabulary belongs to the family (has all its media tokens)."""
        return bool(self.media_tokens) and all(t in vocab for t in self.media_tokens)


#: Qwen2 / Qwen2.5 / Qwen3 text and VL models: ``<|vision_start|><|image_pad|>...<|vision_end|>``.
QWEN = ModelFamily(
    name="qwen",
    model_types=frozenset({
        "qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl", "qwen2_5_omni", "qwen3", "qwen3_moe", "qwen3_vl",
        "qwen3_vl_moe",
    }),
    media_tokens=("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
)

#: Any other model: only the media tokens its processor declares (``image_token``, ...) are known.
GENERIC = ModelFamily(name="generic", model_types=frozenset(), media_tokens=())

#: The families mmrm knows, tried in order.
FAMILIES: tuple[ModelFamily, ...] = (QWEN,)


def family_for(vocab: Mapping[str, int], model_type: str | None = None) -> ModelFamily:
    """The family of a model: by ``model_type`` when given, else by its tokenizer's vocabulary;
    :data:`GENERIC` when none matches.

    >>> family_for({}, "qwen2_vl").name
    'qwen'
    >>> family_for({"<unk>": 0}).name
    'generic'
    """
    if model_type is not None:
        return next((f for f in FAMILIES if model_type in f.model_types), GENERIC)
    return next((f for f in FAMILIES if f.recognizes(vocab)), GENERIC)
