"""OpenRLHF's remote reward-model protocol (``--reward.remote_url``, formerly ``--remote_rm_url``).

Verified against the OpenRLHF 0.11.2 release (PyPI wheel; first matched at commit
``3c3be6234e0cb353e76bb8019947db9dfe99fca7``, 2026-08-13, where the same code holds), field by
field; ``tests/test_rl_clients.py`` drives the route with 0.11.2's own client code:

* ``openrlhf/utils/agent.py`` -- ``SingleTurnAgentExecutor._fetch_rewards_via_http`` sends
  ``POST <url>`` with JSON ``{"query": [...], "prompts": [...], "labels": [...]}`` (aiohttp, 180 s
  timeout; any failure, 4xx included, is retried 5 times 1 s apart, then the sample is left without a
  reward). ``execute`` builds each query as ``tokenizer.decode(prompt_ids + response_ids,
  skip_special_tokens=False)``: the FULL chat-templated text, so the response ends with the EOS
  token (``<|im_end|>``), and for a VLM the image placeholder appears *expanded* (one
  ``<|image_pad|>`` per visual token) while ``prompts[i]`` holds the unexpanded template text. It
  sends one query per request; at the commit above, with several URLs, the shards after the first
  could be EMPTY lists (0.11.2 skips them), so ``{"query": [], ...}`` answers ``{"rewards": [], ...}``.
* The same function reads the answer as ``reward = body["rewards"]``, ``scores = body["scores"]``
  (falling back to ``rewards``), ``extra_logs = body["extra_logs"] or {}``; other top-level keys are
  ignored. ``openrlhf/trainer/ppo_utils/samples_generator.py::_process_response_into_experience``
  then calls ``torch.tensor([reward])``, ``torch.tensor([score])`` and ``torch.tensor([value])`` for
  every ``extra_logs`` value: so every value must be a number (or a list of numbers); a ``null`` or
  a string crashes the training step. ``rewards`` feed the advantage; ``scores`` drive dynamic
  filtering (``--algo.dynamic_filtering_range``, default ``(0, 1)``, applied to the mean score of a
  prompt's samples) and the logged ``score``; ``extra_logs`` are logged metrics.
* ``openrlhf/cli/serve_rm.py`` (the reference server, ``POST /get_reward``) reads only ``query``
  and answers ``{"rewards": r, "scores": r, "extra_logs": {"dummy_scores": r}}`` with lists aligned
  with ``query``. ``examples/python/reward_func.py`` documents ``scores`` as "0-1 reward ... for
  dynamic filtering". The older client (``openrlhf/utils/remote_rm_utils.py::request_api_wrapper``,
  before ``a458821e``) sent the same three keys and also tensorized every ``extra_logs`` value.

mmrm's choices:

* ``rewards`` = the scorer's raw value; ``scores`` = ``sigmoid(reward)`` by default, a number in
  (0, 1) as dynamic filtering expects (a raw reward compared with the default range ``(0, 1)`` would
  filter out most prompts); ``scores="reward"`` copies ``rewards`` as ``serve_rm.py`` does.
* ``extra_logs`` holds only lists of numbers aligned with ``query``.
* Failed items (``compat.openrlhf.on_invalid``). What OpenRLHF 0.11.2 does with a failed request
  (``openrlhf/utils/agent.py``, ``SingleTurnAgentExecutor._fetch_rewards_via_http``): any non-2xx
  raises in ``raise_for_status``, is retried 5 times 1 s apart, then becomes a ``RuntimeError`` that
  ``SingleTurnAgentExecutor.execute`` catches and logs at INFO, leaving ``reward`` and ``scores``
  ``None``. ``samples_generator.py::SamplesGenerator._process_response_into_experience`` then
  builds an ``Experience`` with ``rewards=None``, and the step fails when
  ``experience.py::Experience.concat_experiences`` (called by ``experience_maker.py::
  split_rollout_samples``) pads that ``None`` together with the other samples' reward tensors (or,
  when it is the first of its micro-batch, when ``make_experience`` /
  ``compute_advantages_and_returns`` find the micro-batch without a reward tensor). So:

  - ``on_invalid="error"`` (default): the first failure fails the request (see
    :func:`mmrm.serve.compat.raise_for_failed`: 422 for input errors, 5xx for runtime errors), and
    with OpenRLHF one bad rollout fails the training step (:func:`warn_if_error_policy` says so at
    start-up).
  - ``on_invalid="fill"`` (recommended for OpenRLHF): a failed item's reward is ``fill_value``
    (finite; its score follows ``scores``), it is flagged in ``extra_logs["mmrm_invalid"]`` (1.0 =
    failed; OpenRLHF logs it as a metric) and listed in a top-level ``errors`` key (kind, message,
    field, limit; OpenRLHF ignores unknown keys).

  Either way each failed item is logged at WARNING with the request id, its field and the limit,
  and the ingress counts it in ``mmrm_errors_total{route="/get_reward",kind}``. Request-level
  failures (overload 503, deadline 504, a replica gone) stay HTTP errors: OpenRLHF retries those.
* mmrm extension: ``images`` beside ``query``, one entry per query: a list of image sources (any
  form :mod:`mmrm.rm.media` accepts), a single source, or null. They fill the prompt's image
  placeholders in order; a prompt with no placeholder gets them in front of its first user turn.
  OpenRLHF 0.11.2 itself does not send images (its VLM prompts carry only placeholders); its
  executor subclass :mod:`mmrm.rl.openrlhf_agent` does. A query with placeholders and no images is
  an item failure whose message names that limit (under the route's ``on_invalid``).
* ``labels`` are kept on the request (``req.labels``) for reference-guided judges; reward models
  ignore them.

Converting a query into a :class:`~mmrm.rm.types.Sample`: :func:`split_query` cuts ``prompts[i]``
off the front of ``query[i]``; the remainder, without trailing EOS tokens, is the response. The
prompt text is read back into messages with :func:`mmrm.serve.compat.parse_rendered_chat` (a
trailing generation prompt such as ``<|im_start|>assistant\\n`` is dropped; any text it prefills,
e.g. Qwen3's empty ``<think></think>``, is kept at the start of the response); a prompt in no known
template becomes one user message holding the raw prompt text. Without ``prompts``, the query itself
must be a rendered conversation whose last turn is the assistant's. When the prompt is not a prefix
of the query (e.g. OpenRLHF truncated a prompt longer than ``max_len - max_new_tokens`` from the
left) the request fails with 422 naming ``query[i]``.

>>> req = RewardRequest.model_validate({
...     "query": ["<|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\n4<|im_end|>"],
...     "prompts": ["<|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\n"],
...     "labels": ["4"]})
>>> s = to_samples(req)[0]
>>> [(m.role, m.content) for m in s.messages]
[('user', '2+2?'), ('assistant', '4')]
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmrm.rm.errors import InvalidInput, MmrmError
from mmrm.rm.results import sigmoid
from mmrm.rm.types import Sample, ScoreResult
from mmrm.serve.compat import (
    _PAD_TOKENS,
    Turn,
    item_failures,
    log_item_failures,
    media_placeholders,
    parse_rendered_chat,
    raise_for_failed,
    strip_end_tokens,
    to_messages,
)

__all__ = [
    "ItemError", "RewardRequest", "RewardResponse", "split_query", "to_response", "to_samples", "warn_if_error_policy",
]

log = logging.getLogger("mmrm.serve.compat")

#: Where OpenRLHF's reference server listens; the route mmrm offers under the same path.
ROUTE = "/get_reward"


class RewardRequest(BaseModel):
    """The body OpenRLHF POSTs to its remote reward model (plus mmrm's optional ``images``).

    Unknown keys are accepted and ignored (``unknown_fields()`` names them, for a log line), like
    OpenRLHF's own server, which reads only ``query``.
    """

    model_config = ConfigDict(extra="allow")

    query: list[str] = Field(
        description="Full chat-templated texts: prompt + response, as the policy's tokenizer decoded them.")
    prompts: list[str] | None = Field(default=None, description="The prompt text of each query (a prefix of it).")
    labels: list[Any] | None = Field(default=None, description="Dataset labels (references); unused by reward models.")
    images: list[list[str] | str | None] | None = Field(
        default=None, description="mmrm extension: per query, the image sources of its prompt (or null)."
    )

    @model_validator(mode="after")
    def _aligned(self) -> "RewardRequest":
        for name in ("prompts", "labels", "images"):
            v = getattr(self, name)
            if v is not None and len(v) != len(self.query):
                raise InvalidInput(f"{name} has {len(v)} entries but query has {len(self.query)}; they are parallel lists",
                                   field=name, limit=len(self.query))
        return self

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    def images_of(self, i: int) -> list[str]:
        v = self.images[i] if self.images is not None else None
        if v is None:
            return []
        return [v] if isinstance(v, str) else list(v)


class ItemError(BaseModel):
    """One failed item in ``errors`` (only with ``on_invalid="fill"``)."""

    index: int
    kind: str
    message: str
    field: str | None = None
    limit: Any = None


class RewardResponse(BaseModel):
    """The answer OpenRLHF reads: three lists aligned with ``query`` (and ``errors`` in fill mode)."""

    rewards: list[float] = Field(description="The RL reward per query: the scorer's raw value.")
    scores: list[float] = Field(description="Per query: sigmoid(reward) (dynamic filtering, logging), or the reward.")
    extra_logs: dict[str, list[float]] = Field(default_factory=dict, description="Numeric per-query metrics to log.")
    errors: list[ItemError] | None = Field(default=None, description="Failed items (fill mode only); OpenRLHF ignores it.")


def _prefix_pattern(prompt: str) -> re.Pattern[str]:
    # The prompt, with each run of a processor's pad token allowed to be any length >= 1.
    pads = "|".join(re.escape(t) for t in _PAD_TOKENS)
    pieces = re.split(f"((?:{pads})+)", prompt)
    out = []
    for k, piece in enumerate(pieces):
        if k % 2:
            tok = next(t for t in _PAD_TOKENS if piece.startswith(t))
            out.append(f"(?:{re.escape(tok)})+")
        elif piece:
            out.append(re.escape(piece))
    return re.compile("".join(out), re.DOTALL)


def split_query(query: str, prompt: str, *, field: str = "query") -> str:
    """The response part of an OpenRLHF query: ``query`` minus its prefix ``prompt``.

    The prefix may differ from ``prompt`` only in the length of image-pad runs (a VLM processor
    expands one ``<|image_pad|>`` into one per visual token before generation, and the query is
    decoded from those tokens). Raises :class:`~mmrm.rm.errors.InvalidInput` naming ``field`` when
    the prompt is not a prefix. End-of-turn tokens are NOT stripped here (see :func:`to_samples`).

    >>> split_query("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>",
    ...             "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n")
    'Hello<|im_end|>'
    >>> split_query("<|vision_start|><|image_pad|><|image_pad|><|vision_end|>What?A cat",
    ...             "<|vision_start|><|image_pad|><|vision_end|>What?")
    'A cat'
    >>> split_query("something else", "Q: ", field="query[3]")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmrm.rm.errors.InvalidInput: the query does not start with its prompt ...
    """
    if query.startswith(prompt):
        return query[len(prompt):]
    m = _prefix_pattern(prompt).match(query)
    if m is not None:
        return query[m.end():]
    raise InvalidInput("the query does not start with its prompt (was the prompt truncated to fit max_len, or "
                       "rendered differently?); mmrm needs the prompt as a prefix to find the response", field=field)


def _sample(i: int, req: RewardRequest) -> Sample:
    query = req.query[i]
    images = req.images_of(i)
    if req.prompts is not None:
        prompt = req.prompts[i]
        response = split_query(query, prompt, field=f"query[{i}]")
        try:
            rc = parse_rendered_chat(prompt)
        except MmrmError as e:
            raise e.with_field_prefix(f"prompts[{i}]")
        if rc is None:
            turns = [Turn("user", prompt, closed=True)]
        else:
            turns = list(rc.turns)
            if turns and turns[-1].role == "assistant" and not turns[-1].closed:
                response = turns.pop().content + response  # generation prompt (and any prefill)
            if not turns or turns[-1].role == "assistant" or not all(t.closed for t in turns):
                raise InvalidInput("the prompt must end with a complete user/system turn, optionally followed by the "
                                   "generation prompt", field=f"prompts[{i}]")
    else:
        try:
            rc = parse_rendered_chat(query)
        except MmrmError as e:
            raise e.with_field_prefix(f"query[{i}]")
        if rc is None or len(rc.turns) < 2 or rc.turns[-1].role != "assistant":
            raise InvalidInput("without prompts, a query must be a conversation rendered with a chat template mmrm "
                               "reads (ChatML, Llama-3, Gemma) whose last turn is the assistant's; send prompts",
                               field=f"query[{i}]")
        turns = list(rc.turns[:-1])
        response = rc.turns[-1].content
        if not all(t.closed for t in turns):
            raise InvalidInput("an earlier turn of the query is not closed", field=f"query[{i}]")
    n_ph = sum(media_placeholders(t.content) for t in turns)
    if n_ph and not images:
        # The usual cause, named so the log says what to change: stock OpenRLHF sends text only.
        raise InvalidInput(f"the text holds {n_ph} image placeholder(s) and the request carries no images: "
                           "OpenRLHF 0.11.2's remote reward client sends query/prompts/labels only; send the images "
                           "with mmrm's executor (--train.agent_func_path <mmrm.rl.openrlhf_agent's file>)",
                           field=f"images[{i}]", limit=n_ph)
    try:
        messages = to_messages(turns, images=images, field=f"images[{i}]")
    except ValidationError as e:  # e.g. an empty image source: the client's input, not a server fault
        raise InvalidInput(f"invalid image source: {e.errors()[0].get('msg', 'invalid value')}",
                           field=f"images[{i}]") from e
    try:
        return Sample(prompt=messages, response=strip_end_tokens(response))
    except ValidationError as e:
        raise InvalidInput(e.errors()[0].get("msg", "invalid sample"), field=f"query[{i}]") from e


def to_samples(req: RewardRequest) -> list[Sample | MmrmError]:
    """One :class:`~mmrm.rm.types.Sample` per query, in order (empty for an empty ``query``); a query
    that cannot be converted is its own :class:`~mmrm.rm.errors.InvalidInput` (or subclass) naming
    ``query[i]``, ``prompts[i]`` or ``images[i]``, so it fails alone.
    """
    out: list[Sample | MmrmError] = []
    for i in range(len(req.query)):
        try:
            out.append(_sample(i, req))
        except MmrmError as e:
            out.append(e)
    return out


def to_response(
    results: Sequence[ScoreResult],
    *,
    scores: Literal["sigmoid", "reward"] = "sigmoid",
    on_invalid: Literal["error", "fill"] = "error",
    fill_value: float | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The JSON body OpenRLHF expects, from one result per query.

    Args:
        scores: ``"sigmoid"`` (default): ``scores[i] = sigmoid(rewards[i])``, in (0, 1) for dynamic
            filtering; ``"reward"``: the raw reward, as OpenRLHF's ``serve_rm.py`` answers.
        on_invalid: ``"error"`` (default) raises the first failure (the request fails);
            ``"fill"`` answers ``fill_value`` for failed items and reports them (see module doc).
        fill_value: the reward of a failed item (its score follows ``scores``); required with
            ``on_invalid="fill"``.
        request_id: the service's request id, for the WARNING line logged per failed item.

    >>> from mmrm.rm.types import Provenance
    >>> prov = Provenance(scorer="rm", kind="reward_model", fingerprint="f", mmrm_version="0", engine="hf")
    >>> to_response([ScoreResult(value=0.0, provenance=prov)])
    {'rewards': [0.0], 'scores': [0.5], 'extra_logs': {}}
    """
    if on_invalid == "fill":
        if fill_value is None or not math.isfinite(fill_value):
            raise ValueError(f"on_invalid='fill' needs a finite fill_value, got {fill_value!r}")
    elif on_invalid != "error":
        raise ValueError(f"on_invalid must be 'error' or 'fill', got {on_invalid!r}")
    if scores not in ("sigmoid", "reward"):
        raise ValueError(f"scores must be 'sigmoid' or 'reward', got {scores!r}")
    failures = item_failures(results, field="query")
    outcome = (f"answered reward {fill_value} (on_invalid: fill)" if on_invalid == "fill"
               else "the request fails (on_invalid: error)")
    log_item_failures(ROUTE, failures, request_id=request_id, outcome=outcome)
    if on_invalid == "error":
        raise_for_failed(results, field="query", failures=failures)

    failed = dict(failures)
    rewards: list[float] = []
    flags: list[float] = []
    errors: list[ItemError] = []
    for i, r in enumerate(results):
        err = failed.get(i)
        if err is None:
            rewards.append(float(r.value))  # type: ignore[arg-type]
            flags.append(0.0)
        else:
            rewards.append(float(fill_value))  # type: ignore[arg-type]
            flags.append(1.0)
            errors.append(ItemError(index=i, kind=err.kind, message=err.message, field=err.field,
                                    limit=err.to_dict()["limit"]))
    body = RewardResponse(
        rewards=rewards,
        scores=[sigmoid(x) for x in rewards] if scores == "sigmoid" else list(rewards),
        extra_logs={"mmrm_invalid": flags} if on_invalid == "fill" else {},
        errors=errors or None,
    )
    return body.model_dump(mode="json", exclude_none=True)


def warn_if_error_policy(on_invalid: str) -> str | None:
    """The start-up warning for ``compat.openrlhf.on_invalid: error`` (logged at WARNING, and
    returned); None for ``fill``. The ingress calls it once when it builds its app."""
    if on_invalid != "error":
        return None
    msg = ("compat.openrlhf.on_invalid is 'error': one rollout that cannot be scored (a broken or missing image, "
           "a query over max_length, ...) fails its whole /get_reward request, and OpenRLHF 0.11.2 then leaves "
           "that sample without a reward, which fails the training step. For OpenRLHF set "
           "compat.openrlhf.on_invalid: fill with a finite fill_value (the reward a failed rollout gets).")
    log.warning(msg)
    return msg
