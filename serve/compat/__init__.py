"""Protocol-compatible request/response shapes for RL stacks that already speak another API.

Each module is pure pydantic + conversion functions; the service wires them to routes:

* :mod:`mmrm.serve.compat.openrlhf` -- OpenRLHF's remote reward model (``--reward.remote_url``,
  historically ``--remote_rm_url``): ``POST /get_reward`` with ``{"query", "prompts", "labels"}``.
* :mod:`mmrm.serve.compat.vllm_classify` -- vLLM's ``POST /classify`` as verl's reward loop calls it.

Rules shared by both (and the reason for them):

* Requests convert INTO :class:`~mmrm.rm.types.Sample` at this edge; nothing downstream knows the
  protocol. An item that cannot be converted becomes a typed :class:`~mmrm.rm.errors.MmrmError` in
  its place, and a request that is wrong as a whole raises one; either names the protocol's own
  field (``query[3]``, ``images[3]``, ``input[0]``, ``messages[1].content[0]``).
* **A failed item** (media broken or refused, over ``max_length``, a modality the model does not
  take, text the tokenizer cannot take, a query the route cannot read) is that item's own failure,
  named by its field path (``query[3].prompt[0].content[1].image_url``) and the limit it broke; the
  other items score in the same forwards. Neither protocol has a per-item error slot, and both
  callers turn the reward straight into a tensor (OpenRLHF 0.11.2: ``torch.tensor([reward])``;
  verl 0.9.1: ``rm_scores.new_tensor(scores)``), so a ``null`` can never be answered. Each route
  therefore has one policy, ``on_invalid``: ``error`` (default) fails the request, input errors
  first (4xx) else runtime errors (5xx); ``fill`` answers the configured finite ``fill_value`` for
  the failed item, flags it where the protocol allows extra keys, and logs it. Either way the
  failure is counted in ``mmrm_errors_total{route,kind}`` (by the ingress) and logged here at
  WARNING with the request id, the field and the limit.
* The protocols' odd field names (a reward in ``probs``; ``scores`` vs ``rewards``) stay inside
  these modules.

Rendered chat text. Both protocols may carry a conversation that the *caller* already rendered with a
chat template (OpenRLHF's ``query``/``prompts``; verl's ``input``). mmrm renders with the scorer's own
template, so :func:`parse_rendered_chat` reads such text back into messages. It knows the templates
of the backbones mmrm serves (ChatML: Qwen2/2.5/3, Qwen2-VL/2.5-VL/3-VL; Llama-3; Gemma) and the
image placeholders they leave in the text (``<|vision_start|><|image_pad|>...<|vision_end|>``,
``<image>``, ``<|image|>``, ``<start_of_image>``), with runs of repeated pad tokens read as one image.

>>> turns = parse_rendered_chat("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n")
>>> [(t.role, t.content, t.closed) for t in turns.turns]
[('user', 'Hi', True), ('assistant', 'Hello!', True)]
>>> turns.template
'chatml'
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mmrm.rm import errors as _errors
from mmrm.rm.errors import BackendError, InvalidInput, MmrmError, UnsupportedInput
from mmrm.rm.types import ImagePart, Message, ScoreResult, TextPart

__all__ = [
    "END_TOKENS",
    "RenderedChat",
    "Turn",
    "failure_of",
    "item_failures",
    "log_item_failures",
    "media_placeholders",
    "parse_rendered_chat",
    "raise_for_failed",
    "strip_end_tokens",
    "to_messages",
]

log = logging.getLogger("mmrm.serve.compat")

#: End-of-turn / end-of-text markers a decoded generation may end with (stripped from responses).
END_TOKENS: tuple[str, ...] = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<end_of_turn>",
    "<eos>", "</s>", "<|end|>",
)

# One image (or video) placeholder in rendered text. A run of pad tokens is ONE image: processors
# expand the placeholder to one pad per visual token, and a decoded generation shows the expansion.
_IMAGE_PLACEHOLDER = re.compile(
    r"<\|vision_start\|>(?:<\|image_pad\|>)+<\|vision_end\|>"  # Qwen2-VL / 2.5-VL / 3-VL
    r"|(?:<\|image_pad\|>)+"                                    # a bare Qwen pad run
    r"|(?:<image>)+"                                            # LLaVA family
    r"|(?:<\|image\|>)+"                                        # Llama-3.2-Vision
    r"|<start_of_image>(?:<image_soft_token>)*(?:<end_of_image>)?"  # Gemma 3
)
_VIDEO_PLACEHOLDER = re.compile(r"<\|vision_start\|>(?:<\|video_pad\|>)+<\|vision_end\|>|(?:<video>)+")
#: Single tokens that a processor repeats in place (see :func:`media_placeholders`).
_PAD_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<image>", "<|image|>", "<image_soft_token>", "<video>")


@dataclass(frozen=True)
class _Template:
    name: str
    header: re.Pattern[str]  # a turn header at the current position; group "role"
    end: str  # the end-of-turn token
    prefix: tuple[str, ...]  # tokens that may precede the first turn (BOS)
    roles: dict[str, str]


_TEMPLATES = (
    _Template("chatml", re.compile(r"<\|im_start\|>(?P<role>[a-z_]+)\n"), "<|im_end|>", ("<|endoftext|>",),
              {"system": "system", "user": "user", "assistant": "assistant", "developer": "system"}),
    _Template("llama3", re.compile(r"<\|start_header_id\|>(?P<role>[a-z_]+)<\|end_header_id\|>\n\n"), "<|eot_id|>",
              ("<|begin_of_text|>",), {"system": "system", "user": "user", "assistant": "assistant"}),
    _Template("gemma", re.compile(r"<start_of_turn>(?P<role>[a-z_]+)\n"), "<end_of_turn>", ("<bos>",),
              {"user": "user", "model": "assistant", "system": "system"}),
)


@dataclass(frozen=True)
class Turn:
    """One turn read from rendered text. ``closed`` is False for a final turn with no end token
    (a generation prompt, or a response cut off by a length limit)."""

    role: str
    content: str
    closed: bool


@dataclass(frozen=True)
class RenderedChat:
    template: str
    turns: list[Turn]


def _skip(text: str, pos: int, tokens: Sequence[str]) -> int:
    while True:
        start = pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        for t in tokens:
            if text.startswith(t, pos):
                pos += len(t)
        if pos == start:
            return pos


def parse_rendered_chat(text: str) -> RenderedChat | None:
    """Read a chat-templated string back into turns; None when no known template matches.

    The text must start (after an optional BOS) with a turn header of a known template, consist of
    whole turns separated by whitespace, and may end with an unterminated final turn. A role the
    template cannot express in mmrm's types (``tool``, ``ipython``, ...) raises
    :class:`~mmrm.rm.errors.UnsupportedInput`.

    >>> rc = parse_rendered_chat("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n2+2?<|eot_id|>"
    ...                          "<|start_header_id|>assistant<|end_header_id|>\\n\\n")
    >>> rc.template, [(t.role, t.content, t.closed) for t in rc.turns]
    ('llama3', [('user', '2+2?', True), ('assistant', '', False)])
    >>> parse_rendered_chat("User: 2+2?\\nAssistant: 4") is None
    True
    """
    for tpl in _TEMPLATES:
        pos = _skip(text, 0, tpl.prefix)
        if not tpl.header.match(text, pos):
            continue
        turns: list[Turn] = []
        while True:
            pos = _skip(text, pos, END_TOKENS if turns else ())
            if pos >= len(text):
                break
            m = tpl.header.match(text, pos)
            if m is None:
                return None  # stray text between turns: not (only) this template
            role = tpl.roles.get(m.group("role"))
            if role is None:
                raise UnsupportedInput(f"turn role {m.group('role')!r} ({tpl.name} template) has no mmrm equivalent; "
                                       f"mmrm scores system/user/assistant turns", limit=sorted(tpl.roles))
            end = text.find(tpl.end, m.end())
            if end < 0:
                turns.append(Turn(role, text[m.end():], closed=False))
                break
            turns.append(Turn(role, text[m.end():end], closed=True))
            pos = end + len(tpl.end)
        return RenderedChat(tpl.name, turns)
    return None


def strip_end_tokens(text: str) -> str:
    """Remove end-of-turn/end-of-text markers (and whitespace after them) from the end of ``text``.

    >>> strip_end_tokens("4<|im_end|>\\n<|endoftext|>")
    '4'
    >>> strip_end_tokens("4 ")
    '4 '
    """
    while True:
        stripped = text.rstrip()
        for t in END_TOKENS:
            if stripped.endswith(t):
                text = stripped[: -len(t)]
                break
        else:
            return text


def media_placeholders(text: str) -> int:
    """How many image placeholders the rendered text holds (a run of pad tokens counts once).

    >>> media_placeholders("<|vision_start|><|image_pad|><|image_pad|><|vision_end|>What is it? <image>")
    2
    """
    return len(_IMAGE_PLACEHOLDER.findall(text))


def to_messages(turns: Sequence[Turn], *, images: Sequence[str] = (), field: str) -> list[Message]:
    """Messages from parsed turns; image placeholders become image parts, filled from ``images`` in order.

    With no placeholders at all, the images go in front of the first user turn's text. Raises
    :class:`~mmrm.rm.errors.InvalidInput` when placeholders and images do not match in number, and
    :class:`~mmrm.rm.errors.UnsupportedInput` for video placeholders (rendered text cannot carry frames).
    """
    n_ph = sum(media_placeholders(t.content) for t in turns)
    if any(_VIDEO_PLACEHOLDER.search(t.content) for t in turns):
        raise UnsupportedInput("rendered text holds a video placeholder; send the conversation as messages with a "
                               "video part instead", field=field)
    if n_ph and n_ph != len(images):
        raise InvalidInput(f"the text holds {n_ph} image placeholder(s) but {len(images)} image(s) were given",
                           field=field, limit=n_ph)
    pending = list(images)
    out: list[Message] = []
    for t in turns:
        parts: list[Any] = []
        pos = 0
        for m in _IMAGE_PLACEHOLDER.finditer(t.content):
            if m.start() > pos:
                parts.append(TextPart(text=t.content[pos:m.start()]))
            parts.append(ImagePart(image_url={"url": pending.pop(0)}))
            pos = m.end()
        if not n_ph and pending and t.role == "user":
            parts = [ImagePart(image_url={"url": u}) for u in pending]
            pending = []
        if pos < len(t.content) or not parts:
            parts.append(TextPart(text=t.content[pos:]))
        content: Any = parts[0].text if len(parts) == 1 and isinstance(parts[0], TextPart) else parts
        out.append(Message(role=t.role, content=content))
    if pending:
        raise InvalidInput(f"{len(pending)} image(s) given but the conversation has no user turn to attach them to",
                           field=field)
    return out


# --------------------------------------------------------------------------------------------------
# Failed items


def _error_class(kind: str | None) -> type[MmrmError]:
    for obj in vars(_errors).values():
        if isinstance(obj, type) and issubclass(obj, MmrmError) and obj.kind == kind:
            return obj
    return BackendError


def failure_of(result: ScoreResult, *, field: str) -> MmrmError | None:
    """The typed error of a failed (or non-finite) result; None when it is fine.

    Its ``field`` is the result's own (the scoring pipeline names every item with the route's field
    path, e.g. ``query[3].prompt[0].content[1].image_url``), else ``field``; its ``limit`` is the
    result's. The result is not modified (a fresh error each call).
    """
    if result.ok:
        if result.value is not None and math.isfinite(result.value):
            return None
        return BackendError(f"the scorer returned a non-finite value ({result.value})", field=field)
    err = result._error
    if isinstance(err, MmrmError):
        e = copy.copy(err)  # the result keeps its own error untouched
    else:
        e = _error_class(result.error_kind)(result.invalid or "scoring failed")
        if err is not None:
            e.__cause__ = err
    e.field = result.field or e.field or field
    if e.limit is None:
        e.limit = result.limit
    return e


def item_failures(results: Sequence[ScoreResult], *, field: str | Callable[[int], str]) -> list[tuple[int, MmrmError]]:
    """``(index, error)`` of every failed result, in order. ``field`` names item ``i``: a prefix
    (``"query"`` gives ``query[i]``) or a function of ``i``."""
    name = field if callable(field) else (lambda i: f"{field}[{i}]")
    return [(i, e) for i, r in enumerate(results) if (e := failure_of(r, field=name(i))) is not None]


def log_item_failures(route: str, failures: Sequence[tuple[int, MmrmError]], *, request_id: str | None,
                      outcome: str) -> None:
    """One WARNING line per failed item: request id, field, kind, limit, message, and what the route
    did about it (``outcome``)."""
    for i, e in failures:
        log.warning("request %s: %s item %d failed (%s) at %s, limit %s: %s; %s", request_id or "-", route, i, e.kind,
                    e.field, e.limit, e.message, outcome)


def raise_for_failed(results: Sequence[ScoreResult], *, field: str | Callable[[int], str],
                     failures: Sequence[tuple[int, MmrmError]] | None = None) -> None:
    """Raise if any result failed: the first input error if there is one (4xx: not worth a retry),
    else the first runtime error (5xx).

    ``field`` names item ``i``: a prefix (``"query"`` gives ``query[i]``) or a function of ``i``.
    ``failures`` (from :func:`item_failures`) saves computing them again.
    """
    found = list(failures) if failures is not None else item_failures(results, field=field)
    if not found:
        return
    found.sort(key=lambda ie: (not isinstance(ie[1], InvalidInput), ie[0]))
    err = copy.copy(found[0][1])
    if len(found) > 1:
        err.message = f"{err.message} ({len(found)} of {len(results)} items failed; this protocol has no per-item errors)"
        err.args = (err.message,)
    raise err
