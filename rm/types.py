"""The one input type and the one result type of mmrm.

Everything that is scored is a conversation: OpenAI-style chat ``messages`` whose content is a
string or a list of parts (``text``, ``image_url``, ``video``). HTTP bodies, RL adapters and
benchmark loaders convert INTO these types at their edge; nothing downstream knows where a sample
came from.

* :class:`Sample`: prompt messages + one response (scored pointwise).
* :class:`Pair`: prompt messages + responses A and B (scored as P(A > B)).
* :class:`Group`: prompt messages + N responses (a GRPO group).

A response is the final assistant turn; it may itself contain images (an edited or generated
image, a GUI frame). Media sources are strings whose accepted forms are listed once, in
:mod:`mmrm.rm.media`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mmrm.rm.errors import ErrorKind, error_from, error_kind_of
from mmrm.rm.version import __version__

Role = Literal["system", "user", "assistant"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Strict):
    """A text content part: ``{"type": "text", "text": "..."}``."""

    type: Literal["text"] = "text"
    text: str = Field(description="The text.")


class ImageURL(_Strict):
    """The ``image_url`` object of OpenAI's chat format."""

    url: str = Field(min_length=1, description="Data URI, bare base64, local path, or http(s) URL.")
    detail: Literal["auto", "low", "high"] | None = Field(
        default=None, description="Accepted for OpenAI compatibility; mmrm ignores it."
    )


class ImagePart(_Strict):
    """An image content part: ``{"type": "image_url", "image_url": {"url": "..."}}``."""

    type: Literal["image_url"] = "image_url"
    image_url: ImageURL

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_string(cls, data: Any) -> Any:
        # vLLM and some clients send ``"image_url": "data:..."`` instead of the object form.
        if isinstance(data, dict) and isinstance(data.get("image_url"), str):
            data = {**data, "image_url": {"url": data["image_url"]}}
        return data

    @property
    def url(self) -> str:
        return self.image_url.url


class VideoPart(_Strict):
    """A video content part: a list of frame sources, or one source of a video file.

    ``{"type": "video", "video": ["data:image/png;base64,...", ...]}`` or
    ``{"type": "video", "video": "clips/a.mp4"}``.
    """

    type: Literal["video"] = "video"
    video: list[str] | str = Field(description="Frame sources (images) or one video source.")
    fps: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="Frame rate of the given frames."
    )

    @field_validator("video")
    @classmethod
    def _not_empty(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list) and not v:
            raise ValueError("video must have at least one frame")
        if isinstance(v, str) and not v:
            raise ValueError("video source must not be empty")
        return v


ContentPart = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


def _infer_part_type(part: Any) -> Any:
    # vLLM also accepts an image part with no "type": ``{"image_url": "https://..."}``
    # (vllm/entrypoints/chat_utils.py, CustomChatCompletionContentSimpleImageParam).
    if isinstance(part, dict) and "type" not in part and "image_url" in part:
        return {"type": "image_url", **part}
    return part


class Message(_Strict):
    """One chat message. ``content`` is a string or a list of content parts."""

    role: Role
    content: str | list[ContentPart]

    @model_validator(mode="before")
    @classmethod
    def _infer_types(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("content"), list):
            data = {**data, "content": [_infer_part_type(p) for p in data["content"]]}
        return data

    @property
    def parts(self) -> list[TextPart | ImagePart | VideoPart]:
        """The content as a list of parts (a string becomes one text part)."""
        if isinstance(self.content, str):
            return [TextPart(text=self.content)]
        return list(self.content)

    @property
    def text(self) -> str:
        """All text parts joined (media parts omitted)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def media(self) -> list[ImagePart | VideoPart]:
        return [p for p in self.parts if not isinstance(p, TextPart)]


ResponseLike = Union[Message, str, list[ContentPart]]


def as_response(value: Any) -> Message:
    """Turn a response given as a string, a list of parts, or a message into an assistant message."""
    if isinstance(value, Message):
        msg = value
    elif isinstance(value, (str, list)):
        msg = Message(role="assistant", content=value)
    elif isinstance(value, dict) and "role" in value:
        msg = Message.model_validate(value)
    elif isinstance(value, dict):
        msg = Message(role="assistant", content=[value])  # a single content part
    else:
        raise TypeError(f"a response must be a string, content parts or a message, not {type(value).__name__}")
    if msg.role != "assistant":
        raise ValueError(f"a response must be an assistant message, got role {msg.role!r}")
    return msg


def _coerce_response(value: Any) -> Message:
    # Inside a validator a TypeError would escape pydantic as a bare TypeError (a 500, not a 422).
    try:
        return as_response(value)
    except TypeError as e:
        raise ValueError(str(e)) from e


def _check_prompt(prompt: list[Message]) -> list[Message]:
    if not prompt:
        raise ValueError("prompt must have at least one message")
    if prompt[-1].role == "assistant":
        raise ValueError("the prompt must not end with an assistant turn; pass it as the response")
    return prompt


def _coerce_prompt(value: Any) -> Any:
    # A bare string prompt is one user message: the most common form in RL datasets.
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return value


class _Scored(_Strict):
    """Prompt messages plus response field(s); shared coercions so every form converts the same way."""

    prompt: list[Message] = Field(description="Conversation before the response(s) (ends with a user turn).")
    #: fields holding one response / a list of responses (coerced from strings, parts or messages)
    response_fields: ClassVar[tuple[str, ...]] = ()
    response_list_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "prompt" in data:
                data["prompt"] = _coerce_prompt(data["prompt"])
            for k in cls.response_fields:
                if k in data and not isinstance(data[k], Message):
                    data[k] = _coerce_response(data[k])
            for k in cls.response_list_fields:
                if isinstance(data.get(k), list):
                    data[k] = [r if isinstance(r, Message) else _coerce_response(r) for r in data[k]]
        return data

    _v_prompt = field_validator("prompt")(_check_prompt)


class Sample(_Scored):
    """Prompt messages and one response to score."""

    response: Message = Field(description="The assistant response to score (may contain images).")
    response_fields: ClassVar[tuple[str, ...]] = ("response",)

    @classmethod
    def from_messages(cls, messages: list[Message] | list[dict[str, Any]]) -> "Sample":
        """Split a full conversation whose final turn is the assistant response."""
        msgs = [m if isinstance(m, Message) else Message.model_validate(m) for m in messages]
        if len(msgs) < 2 or msgs[-1].role != "assistant":
            raise ValueError("messages must end with an assistant turn (the response to score)")
        return cls(prompt=msgs[:-1], response=msgs[-1])

    @property
    def messages(self) -> list[Message]:
        """The whole conversation: prompt + response."""
        return [*self.prompt, self.response]


class Pair(_Scored):
    """Prompt messages and two responses; scorers return P(A > B)."""

    response_a: Message
    response_b: Message
    response_fields: ClassVar[tuple[str, ...]] = ("response_a", "response_b")

    def samples(self) -> tuple[Sample, Sample]:
        return Sample(prompt=self.prompt, response=self.response_a), Sample(prompt=self.prompt, response=self.response_b)

    def swapped(self) -> "Pair":
        return Pair(prompt=self.prompt, response_a=self.response_b, response_b=self.response_a)


class Group(_Scored):
    """Prompt messages and N responses (a GRPO group)."""

    responses: list[Message] = Field(min_length=1)
    response_list_fields: ClassVar[tuple[str, ...]] = ("responses",)

    def samples(self) -> list[Sample]:
        return [Sample(prompt=self.prompt, response=r) for r in self.responses]


# --------------------------------------------------------------------------------------------------
# The one result type


class Provenance(_Strict):
    """Which scorer produced a result, so a user can tell exactly what scored it."""

    scorer: str = Field(description="Scorer id: the model name in a service, or the checkpoint's name.")
    kind: Literal["reward_model", "judge"] = Field(description="What kind of scorer: a reward model or a judge.")
    fingerprint: str = Field(description="Content hash of the checkpoint (reward model) or rubric+backend (judge).")
    mmrm_version: str = Field(default=__version__, description="The mmrm version that scored (this install's by default).")
    engine: str = Field(description="Engine or backend: hf, vllm, openai.")
    dtype: str | None = Field(default=None, description="Compute dtype of the backbone, if any.")


class ScoreResult(BaseModel):
    """One scored item, the same record for every scorer.

    ``value`` is the reward (reward model), the score (judge) or, for a pair, P(A > B).
    Exactly one of ``value`` and ``invalid`` is set; a failed item never fails its batch. A failed
    item says why (``invalid``), what kind of failure it was (``error_kind``), which input field
    failed (``field``, e.g. ``items[3].prompt[0].content[1].image_url``) and the limit it broke.
    """

    model_config = ConfigDict(extra="forbid")

    value: float | None = Field(description="Reward, score, or P(A>B) for pairs; null when invalid.")
    prob_a_wins: float | None = Field(default=None, description="For pairs: P(A > B).")
    invalid: str | None = Field(default=None, description="Why there is no value (item-level failure).")
    error_kind: ErrorKind | None = Field(default=None, description="Machine-readable kind of the failure.")
    field: str | None = Field(default=None, description="Path of the input field that failed, when one did.")
    limit: Any = Field(default=None, description="The limit the failing field broke (a number, allowed values), if any.")
    details: dict[str, Any] = Field(default_factory=dict, description="Scorer-specific extras.")
    provenance: Provenance = Field(description="Which scorer produced this result.")
    _error: Exception | None = PrivateAttr(default=None)

    @classmethod
    def failed(cls, error: Exception, provenance: Provenance, *, prefix: str = "", **details: Any) -> "ScoreResult":
        """An invalid result carrying ``error`` (its message, kind, field, limit, and the exception itself)."""
        msg = f"{prefix}{error}"
        limit = getattr(error, "limit", None)
        if limit is not None and not isinstance(limit, (int, float, str, bool, list)):
            limit = str(limit)
        r = cls(value=None, invalid=msg, error_kind=error_kind_of(error), field=getattr(error, "field", None),
                limit=limit, provenance=provenance, details=details)
        r._error = error
        return r

    def error(self) -> Exception | None:
        """The error that made this result invalid (rebuilt from its kind, field and limit when the
        result came over the wire), or None for a valid result."""
        if self.invalid is None:
            return None
        if self._error is None:
            msg = self.invalid  # str(error): the message, then " [field] (limit: ...)"
            tail = (f" [{self.field}]" if self.field else "") + (f" (limit: {self.limit})" if self.limit is not None else "")
            if tail and msg.endswith(tail):
                msg = msg[: -len(tail)]
            self._error = error_from(self.error_kind, msg, field=self.field, limit=self.limit)
        return self._error

    def raise_for_invalid(self) -> float:
        """The value, or raise the error that made this result invalid."""
        err = self.error()
        if err is not None:
            raise err
        return float(self.value)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _one_of(self) -> "ScoreResult":
        if (self.value is None) == (self.invalid is None):
            raise ValueError("exactly one of value and invalid must be set")
        return self

    @property
    def ok(self) -> bool:
        return self.invalid is None
