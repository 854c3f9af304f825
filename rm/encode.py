"""Conversations -> model inputs: the one path from :class:`Message` lists to tensors.

Reward models and the ``hf`` judge backend both use it, so there is one place that renders the
chat template, loads media through :mod:`mmrm.rm.media`, applies the length policy, and pads.

Each conversation is encoded ALONE (no cross-sample padding at this stage) and batches are built by
:func:`collate`. That keeps a sample's tokens independent of its batch, lets callers sort by length
under a token budget, and makes the per-sample length known before any forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from mmrm.rm.errors import InputTooLong, InvalidInput, UnsupportedInput
from mmrm.rm.families import ModelFamily, family_for
from mmrm.rm.media import MediaLoader
from mmrm.rm.types import ImagePart, Message, TextPart, VideoPart

Truncation = Literal["refuse", "left"]

# Keys with one entry per token: padded along the sequence. Every other tensor the processor returns
# (pixel values, grids, temporal scales) is per image/video and concatenated along dim 0.
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass
class Encoded:
    """One encoded conversation: 1-D token ids plus its media tensors."""

    input_ids: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-token extras (1-D) and media tensors
    n_images: int = 0
    n_videos: int = 0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def _template_messages(messages: list[Message], image: Callable[[], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Messages as the chat template wants them (media parts keep their type, sources dropped).

    ``image`` makes each image part (in order) instead: e.g. an ``image_url`` part for a server that
    renders the template itself."""
    out = []
    for m in messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        parts: list[dict[str, Any]] = []
        for p in m.content:
            if isinstance(p, TextPart):
                parts.append({"type": "text", "text": p.text})
            elif isinstance(p, ImagePart):
                parts.append(image() if image is not None else {"type": "image"})
            else:
                parts.append({"type": "video"})
        out.append({"role": m.role, "content": parts})
    return out


class Encoder:
    """Render and tokenize conversations for one checkpoint's processor or tokenizer.

    Args:
        processor: a transformers processor (VLMs) or tokenizer (text-only models).
        media: the loader that turns media sources into images (limits and allowed sources live there).
        max_length: longest sequence accepted, in tokens (after image/video expansion).
        truncation: ``"refuse"`` (default) raises :class:`InputTooLong`; ``"left"`` drops prompt
            tokens from the left, keeping the whole response, and refuses if that would cut media.
        model_type: the checkpoint's ``config.model_type``, which picks the model family
            (:mod:`mmrm.rm.families`); if None, the family is recognised from the vocabulary.
    """

    def __init__(
        self,
        processor: Any,
        *,
        media: MediaLoader | None = None,
        max_length: int = 4096,
        truncation: Truncation = "refuse",
        model_type: str | None = None,
    ) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.multimodal = hasattr(processor, "image_processor")
        self.media = media or MediaLoader()
        self.max_length = max_length
        self.truncation = truncation
        if self.tokenizer.pad_token_id is None:
            raise UnsupportedInput("the tokenizer has no pad token; set one in the checkpoint", field="tokenizer")
        self.pad_id = int(self.tokenizer.pad_token_id)
        vocab = self.tokenizer.get_vocab()
        self.family: ModelFamily = family_for(vocab, model_type)
        # The processor's own media placeholders (transformers' generic attributes) and the family's
        # media tokens.
        declared = {getattr(processor, a, None) for a in ("image_token", "video_token", "vision_start_token", "vision_end_token")}
        media_tokens = {t for t in declared if isinstance(t, str) and t} | set(self.family.media_tokens)
        # Token ids that mark media spans: left truncation must never cut through one.
        self._media_ids = {vocab[t] for t in media_tokens if t in vocab}
        # Every special token that marks media: typed into a text part it would make the token count
        # disagree with the images given, which fails the whole forward (and with it every other
        # sample of the batch).
        marks = declared | {t for t in self.tokenizer.all_special_tokens if vocab.get(t) in self._media_ids}
        self._placeholders = sorted(t for t in marks if isinstance(t, str) and t)

    # ----------------------------------------------------------------------------------------------
    def check_text(self, messages: list[Message]) -> None:
        """Refuse text the tokenizer cannot take as given: lone UTF-16 surrogates (not encodable as
        UTF-8) and media placeholder tokens typed as text (their count would not match the media)."""
        for i, m in enumerate(messages):
            for j, p in enumerate(m.parts):
                if not isinstance(p, TextPart):
                    continue
                where = f"messages[{i}].content[{j}].text" if isinstance(m.content, list) else f"messages[{i}].content"
                try:
                    p.text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise InvalidInput(f"text is not valid Unicode (a lone surrogate at character {e.start})",
                                       field=where, limit="UTF-8 encodable text") from None
                for t in self._placeholders:
                    if t in p.text:
                        raise UnsupportedInput(
                            f"text contains the media placeholder {t!r}; pass images and video as content parts",
                            field=where, limit="no media placeholder tokens in text")

    def load_media(self, messages: list[Message]) -> tuple[list[Any], list[list[Any]]]:
        """Load every image and video of a conversation in order, with field paths in errors."""
        images: list[Any] = []
        videos: list[list[Any]] = []
        for i, m in enumerate(messages):
            for j, p in enumerate(m.parts):
                if isinstance(p, TextPart):
                    continue
                where = f"messages[{i}].content[{j}]"
                if not self.multimodal:
                    raise UnsupportedInput(
                        "this model is text-only and cannot score images or video; remove the media part "
                        "or use a vision-language checkpoint",
                        field=where,
                        limit="text only",
                    )
                if isinstance(p, ImagePart):
                    images.append(self.media.load_image(p.url, field=f"{where}.image_url"))
                elif isinstance(p, VideoPart):
                    videos.append(self.media.load_video(p.video, field=f"{where}.video"))
        return images, videos

    def render(self, messages: list[Message], *, add_generation_prompt: bool = False, strip_end: bool = False) -> str:
        """The chat-template text of a conversation.

        ``strip_end`` removes trailing whitespace so the text ends exactly at the final turn's end
        token (the token a reward model pools).
        """
        text = self.processor.apply_chat_template(
            _template_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return text.rstrip() if strip_end else text

    def encode(
        self,
        messages: list[Message],
        *,
        add_generation_prompt: bool = False,
        strip_end: bool = False,
        suffix: str = "",
        protected_suffix: int = 0,
    ) -> Encoded:
        """Encode one conversation, applying the length policy.

        ``suffix`` is text appended after the rendered template (a token some reward layouts pool).

        ``protected_suffix`` is how many final tokens left truncation may never remove (the
        response); callers that do not know it leave 0 and only the prompt side is cut anyway.
        """
        self.check_text(messages)
        text = self.render(messages, add_generation_prompt=add_generation_prompt, strip_end=strip_end) + suffix
        images, videos = self.load_media(messages)
        if self.multimodal:
            kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
            if images:
                kwargs["images"] = images
            if videos:
                kwargs["videos"] = videos
            batch = self.processor(**kwargs)
        else:
            batch = self.tokenizer([text], return_tensors="pt", add_special_tokens=False)
        ids = batch["input_ids"][0]
        extras: dict[str, torch.Tensor] = {}
        for k, v in batch.items():
            if k == "input_ids" or not isinstance(v, torch.Tensor):
                continue
            extras[k] = v[0] if k in _SEQUENCE_KEYS else v
        enc = Encoded(input_ids=ids, extras=extras, n_images=len(images), n_videos=len(videos))
        if enc.length > self.max_length:
            enc = self._truncate(enc, protected_suffix)
        return enc

    def _truncate(self, enc: Encoded, protected_suffix: int) -> Encoded:
        n = enc.length
        if self.truncation == "refuse":
            raise InputTooLong(
                f"input is {n} tokens, longer than max_length; shorten it or configure truncation='left'",
                field="messages",
                limit=self.max_length,
            )
        cut = n - self.max_length
        if cut > n - protected_suffix:
            raise InputTooLong(
                f"the response alone ({protected_suffix} tokens) does not fit in max_length",
                field="response",
                limit=self.max_length,
            )
        removed = enc.input_ids[:cut].tolist()
        if self._media_ids & set(removed):
            raise InputTooLong(
                f"left truncation of {cut} tokens would cut an image or video out of the prompt; "
                "raise max_length or shorten the prompt",
                field="messages",
                limit=self.max_length,
            )
        extras = {k: (v[cut:] if k in _SEQUENCE_KEYS else v) for k, v in enc.extras.items()}
        return Encoded(input_ids=enc.input_ids[cut:], extras=extras, n_images=enc.n_images, n_videos=enc.n_videos)


def collate(items: list[Encoded], pad_id: int, *, padding_side: Literal["right", "left"] = "right") -> dict[str, torch.Tensor]:
    """Pad encoded conversations into one batch.

    Right padding (the default) keeps every real token at the same position as when the sample is
    alone, which is what makes reward scores batch-invariant; generation uses left padding.
    Media tensors are concatenated in sample order, the order the model's vision path expects.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    width = max(it.length for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=items[0].input_ids.dtype)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    seq_extras: dict[str, torch.Tensor] = {}
    media: dict[str, list[torch.Tensor]] = {}
    for it in items:
        for k, v in it.extras.items():
            if k in _SEQUENCE_KEYS and k != "attention_mask" and k not in seq_extras:
                seq_extras[k] = torch.zeros((len(items), width), dtype=v.dtype)
    for row, it in enumerate(items):
        n = it.length
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[row, sl] = it.input_ids
        mask[row, sl] = 1
        for k, v in it.extras.items():
            if k in _SEQUENCE_KEYS:
                if k in seq_extras:
                    seq_extras[k][row, sl] = v
            else:
                media.setdefault(k, []).append(v)
    out = {"input_ids": ids, "attention_mask": mask, **seq_extras}
    for k, vs in media.items():
        out[k] = torch.cat(vs, dim=0)
    return out
