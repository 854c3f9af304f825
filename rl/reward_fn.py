"""The reward callable for RL loops: prompts (with images) + completions -> rewards.

One object, :class:`RewardFn`, scores with any :class:`~mmrm.rm.scorer.Scorer` and gives the same
numbers wherever the scorer runs:

* **in-process**: a :class:`~mmrm.rm.reward_model.RewardModel` (``RewardFn(rm)`` or
  :meth:`RewardFn.from_checkpoint`), a judge built with the rubric to score by
  (``RewardFn(Judge("vqa", backend))``) or a panel;
* **remote**: a running mmrm service through :class:`~mmrm.client.RemoteScorer`
  (:meth:`RewardFn.remote`): a served reward model (``model=``, ``POST /v1/score``) or a served judge
  (``judge=`` + ``rubric=``, ``POST /v1/judge``). The service answers per item, exactly as the
  scorer does in process, so for the same checkpoint the two paths give the same rewards and the
  same failures (tested to 1e-5; fp32 rounding differs with the number of torch threads).

Inputs convert INTO :class:`~mmrm.rm.types.Sample` here (:func:`to_sample`), whatever their form:

* a **prompt** is a string (one user turn) or chat messages (OpenAI or TRL/transformers style);
  image parts may be ``{"type": "image_url", "image_url": {"url": ...}}``, ``{"type": "image",
  "image": <PIL image | bytes | {"bytes", "path"} | source string>}`` or a bare ``{"type": "image"}``
  placeholder;
* **images** (optional, one entry per sample: a list or a single image) fill the placeholders in
  order; a prompt with no image part gets them in front of its first user turn's text (TRL's and
  ``mmrm train``'s convention); a prompt that already carries exactly as many images ignores them
  (TRL passes the ``images`` column AND prompts it already filled from it). PIL images and raw bytes
  travel as base64 data URIs, so they cross HTTP unchanged;
* a **completion** is a string, an assistant message, or a one-message list (TRL's conversational
  form).

Failures never become a silent number. An item that cannot be converted or scored (bad media,
too long, judge output unreadable, request timed out after the client's retries) comes back as
``None`` with its reason in :attr:`RewardBatch.errors`; the call logs it (WARNING) and counts it in
:attr:`RewardFn.stats`. What happens next is the adapter's documented policy (TRL: ``None``; verl:
an error or a logged, counted fallback). Shaping (:mod:`mmrm.rl.shaping`) is applied here, once.

>>> fn = RewardFn(rm)                                           # doctest: +SKIP
>>> fn(["2+2?", "2+2?"], ["4", "5"])                            # doctest: +SKIP
[1.73, -0.41]
>>> remote = RewardFn.remote("http://rm:8000", model="rm-small")  # doctest: +SKIP
>>> await remote.acall(prompts, completions, images=images)     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mmrm.rm.errors import BackendError, InvalidInput, MmrmError, Overloaded, UnsupportedInput
from mmrm.rm.scorer import Scorer
from mmrm.rl.shaping import Shaped, Shaping, ShapingLog, apply_shaping
from mmrm.rm.types import Group, Message, Provenance, Sample, ScoreResult, as_response

if TYPE_CHECKING:  # the options' module is light, but RewardFn.remote needs none of it
    from mmrm.rm.options import ScoringOptions

__all__ = [
    "RewardBatch",
    "RewardFn",
    "RewardStats",
    "RewardUnavailable",
    "exact_match",
    "media_source",
    "to_sample",
]

log = logging.getLogger("mmrm.reward")

#: A verifier: (response text, reference) -> matched? Used by the hybrid shaping step.
Verifier = Callable[[str, Any], bool]


class RewardUnavailable(MmrmError):
    """No usable reward for a call (every item failed) or for an item where the policy is to raise."""

    kind = "reward_unavailable"


# --------------------------------------------------------------------------------------------------
# Inputs -> Sample


def media_source(obj: Any) -> str:
    """A media source string (:mod:`mmrm.rm.media` forms) for an image given in any common form.

    Strings pass unchanged (data URI, base64, path, URL); ``bytes`` and PIL images become base64
    data URIs (PIL images are encoded losslessly as PNG); a ``{"bytes", "path"}`` dict (how
    ``datasets`` and parquet store images) uses its bytes, else its path.

    >>> media_source("data:image/png;base64,iVBO")
    'data:image/png;base64,iVBO'
    >>> media_source(b"\\x89PNG\\r\\n\\x1a\\n....")[:22]
    'data:image/png;base64,'
    """
    if isinstance(obj, str):
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        from mmrm.rm.media import to_data_uri  # here, not at import: PIL is needed only for media

        return to_data_uri(bytes(obj))
    if isinstance(obj, Mapping):
        if obj.get("bytes") is not None:
            return media_source(obj["bytes"])
        if obj.get("path"):
            return str(obj["path"])
        if isinstance(obj.get("url"), str):
            return obj["url"]
        raise InvalidInput("an image dict needs 'bytes', 'path' or 'url'", field="image")
    save = getattr(obj, "save", None)
    if callable(save) and hasattr(obj, "size") and hasattr(obj, "mode"):  # a PIL image, without importing PIL
        from mmrm.rm.media import to_data_uri

        return to_data_uri(obj)  # lossless PNG; modes PNG cannot hold become RGB as the loader would
    raise InvalidInput(f"cannot read an image from a {type(obj).__name__}; give a PIL image, bytes, a "
                       f"{{'bytes','path'}} dict or a source string", field="image")


def _tolist(v: Any) -> Any:
    # verl hands over numpy object arrays where a dataset had lists.
    return v.tolist() if hasattr(v, "tolist") and not isinstance(v, (str, bytes)) else v


def _image_list(images: Any) -> list[Any]:
    images = _tolist(images)
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [i for i in images if i is not None]
    return [images]


_IMAGE_TYPES = ("image", "image_url")


def _part(p: Any, pending: list[str], field: str) -> dict[str, Any]:
    if isinstance(p, str):
        return {"type": "text", "text": p}
    if not isinstance(p, Mapping):
        raise InvalidInput(f"a content part must be a dict, not {type(p).__name__}", field=field)
    t = p.get("type", "image_url" if "image_url" in p else None)
    if t == "text":
        return {"type": "text", "text": p.get("text") or ""}
    if t == "image_url":
        v = p.get("image_url")
        url = v.get("url") if isinstance(v, Mapping) else v
        return {"type": "image_url", "image_url": {"url": media_source(url)}}
    if t == "image":
        payload = p.get("image", p.get("url", p.get("path")))
        if payload is None:  # a placeholder: filled from `images`, in order
            if not pending:
                raise InvalidInput("the prompt has more image placeholders than images were given", field=field)
            return {"type": "image_url", "image_url": {"url": pending.pop(0)}}
        return {"type": "image_url", "image_url": {"url": media_source(payload)}}
    if t in ("video", "video_url"):
        v = p.get("video", p.get("video_url"))
        v = v.get("url") if isinstance(v, Mapping) and "url" in v else _tolist(v)
        return {"type": "video", "video": [media_source(f) for f in v] if isinstance(v, list) else media_source(v)}
    raise UnsupportedInput(f"content part type {t!r} is not scored", field=field,
                           limit=["text", "image", "image_url", "video"])


def _messages(prompt: Any, images: list[str], field: str) -> list[Message]:
    prompt = _tolist(prompt)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise InvalidInput("a prompt must be a string or a non-empty list of chat messages", field=field)
    raw: list[tuple[str, Any]] = []
    for j, m in enumerate(prompt):
        if isinstance(m, Message):
            m = m.model_dump(mode="json")
        if not isinstance(m, Mapping) or "role" not in m:
            raise InvalidInput("a chat message must be a dict with 'role' and 'content'", field=f"{field}[{j}]")
        role = "system" if m["role"] == "developer" else m["role"]
        if role not in ("system", "user", "assistant"):
            raise UnsupportedInput(f"message role {role!r} is not scored", field=f"{field}[{j}].role",
                                   limit=["system", "user", "assistant"])
        if m.get("content") is None:
            raise InvalidInput("message content is missing (tool calls are not scored)", field=f"{field}[{j}].content")
        raw.append((role, _tolist(m["content"])))

    def is_image(p: Any) -> bool:
        return isinstance(p, Mapping) and p.get("type", "image_url" if "image_url" in p else None) in _IMAGE_TYPES

    def is_placeholder(p: Any) -> bool:
        return is_image(p) and p.get("type") == "image" and p.get("image", p.get("url", p.get("path"))) is None

    parts = [p for _, c in raw if isinstance(c, list) for p in c]
    holes = sum(is_placeholder(p) for p in parts)
    filled = sum(is_image(p) for p in parts) - holes
    pending = list(images)
    if holes:
        if holes != len(images):
            raise InvalidInput(f"the prompt has {holes} image placeholder(s) but {len(images)} image(s) were given",
                               field=field, limit=holes)
    elif filled:
        if images and len(images) != filled:
            raise InvalidInput(f"the prompt already carries {filled} image(s) and {len(images)} more were given; "
                               "give images either in the prompt or beside it", field=field, limit=filled)
        pending = []  # the same images, given twice (TRL passes the column it already put in the prompt)
    out: list[Message] = []
    for j, (role, content) in enumerate(raw):
        if isinstance(content, list):
            content = [_part(p, pending, f"{field}[{j}].content[{k}]") for k, p in enumerate(content)]
        if role == "user" and pending and not holes:
            head = [{"type": "image_url", "image_url": {"url": u}} for u in pending]
            content = head + (content if isinstance(content, list) else [{"type": "text", "text": content}])
            pending = []
        out.append(Message.model_validate({"role": role, "content": content}))
    if pending:
        raise InvalidInput(f"{len(pending)} image(s) given but the prompt has no user turn to put them in", field=field)
    return out


def _is_message(x: Any) -> bool:
    return isinstance(x, Message) or (isinstance(x, Mapping) and "role" in x)


def _response(completion: Any, field: str) -> Message:
    completion = _tolist(completion)
    if isinstance(completion, list) and completion and all(_is_message(m) for m in completion):
        if len(completion) != 1:  # TRL's conversational completion is a one-message list
            raise UnsupportedInput(f"a completion of {len(completion)} messages (tool calls, multi-turn) is not "
                                   "scored; give the final assistant message", field=field, limit=1)
        completion = completion[0]
    if isinstance(completion, Message):
        completion = completion.model_dump(mode="json")
    if isinstance(completion, Mapping) and "role" in completion:
        content = _tolist(completion.get("content"))
        if content is None:
            raise InvalidInput("the completion has no content (tool calls are not scored)", field=field)
        if isinstance(content, list):
            content = [_part(p, [], f"{field}.content[{k}]") for k, p in enumerate(content)]
        completion = {"role": completion["role"], "content": content}
    elif isinstance(completion, list):  # content parts
        completion = [_part(p, [], f"{field}[{k}]") for k, p in enumerate(completion)]
    try:
        return as_response(completion)
    except (TypeError, ValueError) as e:
        raise InvalidInput(str(e), field=field) from e


def to_sample(prompt: Any, completion: Any, images: Any = None, *, field: str = "") -> Sample:
    """One :class:`~mmrm.rm.types.Sample` from an RL loop's prompt, completion and images.

    Raises a typed :class:`~mmrm.rm.errors.MmrmError` naming ``prompt``/``completion``/``images``.

    >>> s = to_sample([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
    ...               [{"role": "assistant", "content": "A cat."}], images=["data:image/png;base64,iVBO"])
    >>> [p.type for p in s.prompt[0].parts], s.response.text
    (['image_url', 'text'], 'A cat.')
    >>> to_sample("Describe it.", "Red.", images="data:image/png;base64,iVBO").prompt[0].parts[0].type
    'image_url'
    """
    pre = f"{field}." if field else ""
    try:
        srcs = [media_source(i) for i in _image_list(images)]
    except MmrmError as e:
        raise e.with_field_prefix(f"{pre}images")
    msgs = _messages(prompt, srcs, f"{pre}prompt")
    resp = _response(completion, f"{pre}completion")
    try:
        return Sample(prompt=msgs, response=resp)
    except ValueError as e:
        raise InvalidInput(str(e), field=f"{pre}prompt") from e


_WS = re.compile(r"\s+")


def exact_match(response: str, reference: Any) -> bool:
    """The default verifier: the response equals the reference after case folding and collapsing
    whitespace, or its last ``\\boxed{...}`` does.

    >>> exact_match("  The answer is\\n 4 ", "the answer is 4"), exact_match("so \\\\boxed{4}", "4")
    (True, True)
    """
    def norm(s: str) -> str:
        return _WS.sub(" ", s).strip().casefold()

    if reference is None:
        return False
    ref = norm(str(reference))
    if norm(response) == ref:
        return True
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", response)
    return bool(boxed) and norm(boxed[-1]) == ref


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RewardBatch:
    """What one call returns: shaped rewards, raw values, the scorer's records and the shaping log."""

    rewards: list[float | None]
    raw: list[float | None]
    results: list[ScoreResult]
    log: ShapingLog

    @property
    def errors(self) -> list[str | None]:
        """Per item: ``"<kind>: <reason>"`` for a failed item, else None."""
        return [None if r.ok else f"{r.error_kind or 'error'}: {r.invalid}" for r in self.results]

    @property
    def failed(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if not r.ok]


@dataclass
class RewardStats:
    """Counters over a RewardFn's life (thread-safe updates through :meth:`add`)."""

    calls: int = 0
    items: int = 0
    invalid: int = 0
    invalid_by_kind: Counter = field(default_factory=Counter)
    fallbacks: int = 0
    fallbacks_by_kind: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, results: Sequence[ScoreResult]) -> None:
        with self._lock:
            self.calls += 1
            self.items += len(results)
            for r in results:
                if not r.ok:
                    self.invalid += 1
                    self.invalid_by_kind[r.error_kind or "error"] += 1

    def add_fallback(self, kind: str) -> None:
        with self._lock:
            self.fallbacks += 1
            self.fallbacks_by_kind[kind] += 1


def _provenance(name: str, kind: Literal["reward_model", "judge"], engine: str = "unknown") -> Provenance:
    return Provenance(scorer=name, kind=kind, fingerprint="unknown", engine=engine)


def _transient(err: MmrmError) -> bool:
    """A failure of the call that says nothing about its items (the service unreachable, overloaded
    or failing after the client's retries): the items get no reward this time. Anything else (a
    request the service refuses as a whole: 401, 404, 422, 413) is a setup error and is raised."""
    from mmrm.client import ServiceError, TransportError

    if isinstance(err, ServiceError):
        return err.retryable or err.status >= 500
    return isinstance(err, (TransportError, BackendError, Overloaded))


# --------------------------------------------------------------------------------------------------
# The reward callable


def _prompt_key(sample: Sample) -> str:
    blob = json.dumps([m.model_dump(mode="json") for m in sample.prompt], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class RewardFn:
    """Rewards for RL: ``fn(prompts, completions, images=..., references=...) -> list[float | None]``.

    Args:
        scorer: any :class:`~mmrm.rm.scorer.Scorer`: a :class:`~mmrm.rm.reward_model.RewardModel`
            (either engine), a :class:`~mmrm.judges.Judge` (built with the rubric to score by), a
            :class:`~mmrm.judges.Panel`, or a :class:`~mmrm.client.RemoteScorer` (see
            :meth:`remote`). Every sample goes through ``scorer.score``.
        shaping: the shaping steps (:class:`~mmrm.rl.shaping.Shaping`); default: none.
        verifier: ``(response_text, reference) -> bool`` for ``shaping.hybrid`` (default
            :func:`exact_match`).
        name: the name trainers log this reward under.
        concurrent: False (default): calls take turns on the scorer (an in-process model runs one
            batch at a time); True: concurrent calls reach the scorer at once (a service batches
            them itself; :meth:`remote` sets it).

    A call that fails as a whole for a transient reason (the service unreachable or failing after
    the client's retries) gives every item of it no reward, with that reason; a call the service
    refuses as a whole (401, 404, 422: a setup error) raises.

    Calls: :meth:`__call__` / :meth:`acall` return the rewards; :meth:`score_inputs` /
    :meth:`ascore_inputs` return a :class:`RewardBatch` (raw values, records, reasons, log);
    :meth:`reward_batch` / :meth:`areward_batch` take :class:`~mmrm.rm.types.Sample` objects directly.
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        shaping: Shaping | None = None,
        verifier: Verifier | None = None,
        name: str = "mmrm",
        concurrent: bool = False,
    ) -> None:
        if not isinstance(scorer, Scorer):
            raise TypeError(f"RewardFn needs a Scorer (a RewardModel, Judge, Panel or RemoteScorer; see "
                            f"RewardFn.remote), not {type(scorer).__name__}")
        self.scorer = scorer
        self.shaping = shaping or Shaping()
        self.verifier = verifier or exact_match
        self.name = name
        self.concurrent = concurrent
        self.stats = RewardStats()
        self._turns: Any = contextlib.nullcontext() if concurrent else threading.Lock()
        # the async calls' threads: one (calls take turns) or enough for a service's batching
        self._pool = ThreadPoolExecutor(max_workers=64 if concurrent else 1, thread_name_prefix="mmrm-reward")
        self._closers: list[Callable[[], None]] = []

    # ---------------------------------------------------------------------------------- builders
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, options: ScoringOptions | None = None, shaping: Shaping | None = None,
                        verifier: Verifier | None = None, name: str = "mmrm", **overrides: Any) -> RewardFn:
        """An in-process reward model loaded from a checkpoint directory (imports torch).

        ``options`` / ``overrides`` are those of :meth:`RewardModel.from_pretrained
        <mmrm.rm.reward_model.RewardModel.from_pretrained>` (a :class:`~mmrm.rm.options.ScoringOptions`
        and keyword overrides of its fields: ``device``, ``dtype``, ``media_policy``, ...)."""
        from mmrm.rm.reward_model import RewardModel

        rm = RewardModel.from_pretrained(path, options=options, **overrides)
        return cls(rm, shaping=shaping, verifier=verifier, name=name)

    @classmethod
    def remote(
        cls,
        base_url: str | None = None,
        *,
        model: str | None = None,
        judge: str | None = None,
        rubric: str | Mapping[str, Any] | None = None,
        shaping: Shaping | None = None,
        verifier: Verifier | None = None,
        name: str = "mmrm",
        batch_size: int = 64,
        concurrency: int = 4,
        **client_kwargs: Any,
    ) -> RewardFn:
        """A reward served by an mmrm service: ``model=`` (``/v1/score``) or ``judge=`` + ``rubric=``
        (``/v1/judge``), through a :class:`~mmrm.client.RemoteScorer` (``batch_size`` items per
        request, ``concurrency`` requests in flight). ``client_kwargs`` go to
        :class:`~mmrm.client.Client` (``token``, ``timeout``, ``max_retries``, ``max_retry_time``,
        ...). Needs no torch. :meth:`close` closes the client."""
        from mmrm.client import Client, RemoteScorer

        client = Client(base_url=base_url, **client_kwargs)
        try:
            scorer = RemoteScorer(client, model=model, judge=judge, rubric=rubric, batch_size=batch_size,
                                  concurrency=concurrency)
        except ValueError:
            client.close()
            raise
        fn = cls(scorer, shaping=shaping, verifier=verifier, name=name, concurrent=True)
        fn._closers.append(client.close)
        return fn

    @property
    def kind(self) -> Literal["reward_model", "judge"]:
        """The scorer's kind: ``reward_model`` or ``judge``."""
        return self.scorer.provenance.kind

    # ---------------------------------------------------------------------------------- calls
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], *, images: Sequence[Any] | None = None,
                 references: Sequence[Any] | None = None, groups: Sequence[Hashable] | None = None) -> list[float | None]:
        """Rewards, one per completion (``None`` where an item failed; see :attr:`stats`)."""
        return self.score_inputs(prompts, completions, images=images, references=references, groups=groups).rewards

    async def acall(self, prompts: Sequence[Any], completions: Sequence[Any], *, images: Sequence[Any] | None = None,
                    references: Sequence[Any] | None = None, groups: Sequence[Hashable] | None = None) -> list[float | None]:
        """See :meth:`__call__` (for loops that gather; the service path never blocks the loop)."""
        return (await self.ascore_inputs(prompts, completions, images=images, references=references, groups=groups)).rewards

    def score_inputs(self, prompts: Sequence[Any], completions: Sequence[Any], *, images: Sequence[Any] | None = None,
                     references: Sequence[Any] | None = None, groups: Sequence[Hashable] | None = None) -> RewardBatch:
        """Like :meth:`__call__`, returning the whole :class:`RewardBatch`."""
        samples, refs, early = self._convert(prompts, completions, images, references)
        ok = [i for i, s in enumerate(samples) if s is not None]
        scored = self._score([samples[i] for i in ok], [refs[i] for i in ok])  # type: ignore[misc]
        return self._finish(samples, refs, early, ok, scored, groups)

    async def ascore_inputs(self, prompts: Sequence[Any], completions: Sequence[Any], *,
                            images: Sequence[Any] | None = None, references: Sequence[Any] | None = None,
                            groups: Sequence[Hashable] | None = None) -> RewardBatch:
        """See :meth:`score_inputs`; the scorer runs in a worker thread, so the event loop never blocks."""
        samples, refs, early = self._convert(prompts, completions, images, references)
        ok = [i for i, s in enumerate(samples) if s is not None]
        loop = asyncio.get_running_loop()
        scored = await loop.run_in_executor(self._pool, self._score, [samples[i] for i in ok], [refs[i] for i in ok])
        return self._finish(samples, refs, early, ok, scored, groups)

    async def arank_inputs(self, prompts: Sequence[Any], completions: Sequence[Any], *, groups: Sequence[Hashable],
                           images: Sequence[Any] | None = None,
                           references: Sequence[Any] | None = None) -> RewardBatch:
        """See :meth:`ascore_inputs`, with the samples of each group id scored as ONE group through
        ``scorer.rank`` (``/v1/rank`` on a service: a GRPO group's shared prompt and images are encoded
        once). The rewards are the raw values, as :meth:`ascore_inputs` gives them (the group-normalized
        ones are the trainer's business, or ``shaping.group_normalize``'s). Samples whose group id is
        ``None``, and groups whose prompts differ, go through ``scorer.score``; so the same samples give
        the same rewards either way (within float rounding)."""
        samples, refs, early = self._convert(prompts, completions, images, references)
        if len(groups) != len(samples):
            raise ValueError(f"groups has {len(groups)} entries for {len(samples)} completions; give one per completion")
        ok = [i for i, s in enumerate(samples) if s is not None]
        loop = asyncio.get_running_loop()
        scored = await loop.run_in_executor(self._pool, self._rank_or_score, [samples[i] for i in ok],
                                            [refs[i] for i in ok], [groups[i] for i in ok])
        return self._finish(samples, refs, early, ok, scored, groups)

    def reward_batch(self, samples: Sequence[Sample | Mapping[str, Any]], *, references: Sequence[Any] | None = None,
                     groups: Sequence[Hashable] | None = None) -> RewardBatch:
        """The :class:`RewardBatch` of :class:`~mmrm.rm.types.Sample` objects (or dicts of that shape)."""
        ss = [s if isinstance(s, Sample) else Sample.model_validate(s) for s in samples]
        return self.score_inputs([s.prompt for s in ss], [s.response for s in ss], references=references, groups=groups)

    async def areward_batch(self, samples: Sequence[Sample | Mapping[str, Any]], *,
                            references: Sequence[Any] | None = None, groups: Sequence[Hashable] | None = None) -> RewardBatch:
        """See :meth:`reward_batch`."""
        ss = [s if isinstance(s, Sample) else Sample.model_validate(s) for s in samples]
        return await self.ascore_inputs([s.prompt for s in ss], [s.response for s in ss], references=references,
                                        groups=groups)

    # ---------------------------------------------------------------------------------- internals
    def _score(self, samples: list[Sample], refs: list[Any]) -> list[ScoreResult]:
        """``scorer.score`` (taking turns unless concurrent); a transient failure of the whole call
        fails each of its items with that reason."""
        if not samples:
            return []
        try:
            with self._turns:
                return list(self.scorer.score(samples, references=refs if any(r is not None for r in refs) else None))
        except MmrmError as e:
            if not _transient(e):
                raise
            log.warning("mmrm reward %s: a scoring call of %d items failed: %s", self.name, len(samples), e)
            prov = self._provenance()
            return [ScoreResult.failed(e, prov) for _ in samples]

    def _rank_or_score(self, samples: list[Sample], refs: list[Any], gids: list[Hashable]) -> list[ScoreResult]:
        """``scorer.rank`` for the groups (same id, same prompt), ``scorer.score`` for the rest, results
        in input order; a transient failure fails each item with that reason (as :meth:`_score`)."""
        members: dict[Hashable, list[int]] = {}
        for i, g in enumerate(gids):
            if g is not None:
                members.setdefault(g, []).append(i)
        ranked = [idx for idx in members.values() if all(samples[j].prompt == samples[idx[0]].prompt for j in idx)]
        in_group = {j for idx in ranked for j in idx}
        rest = [i for i in range(len(samples)) if i not in in_group]
        out: list[ScoreResult | None] = [None] * len(samples)
        try:
            with self._turns:
                if ranked:
                    batch = [Group(prompt=samples[idx[0]].prompt, responses=[samples[j].response for j in idx])
                             for idx in ranked]
                    grefs = [refs[idx[0]] for idx in ranked]
                    res = self.scorer.rank(batch, references=grefs if any(r is not None for r in grefs) else None)
                    for idx, g in zip(ranked, res):
                        if len(g.results) != len(idx):
                            raise MmrmError(f"the scorer ranked {len(g.results)} responses of a group of {len(idx)}")
                        for j, r in zip(idx, g.results):
                            out[j] = r
                if rest:
                    rrefs = [refs[i] for i in rest]
                    res = list(self.scorer.score([samples[i] for i in rest],
                                                 references=rrefs if any(r is not None for r in rrefs) else None))
                    for i, r in zip(rest, res):
                        out[i] = r
        except MmrmError as e:
            if not _transient(e):
                raise
            log.warning("mmrm reward %s: a ranking call of %d items failed: %s", self.name, len(samples), e)
            prov = self._provenance()
            return [ScoreResult.failed(e, prov) for _ in samples]
        return out  # type: ignore[return-value]

    def _provenance(self) -> Provenance:
        try:
            return self.scorer.provenance
        except Exception:  # noqa: BLE001 - only names the failed results; never hides the failure itself
            return _provenance(self.name, "reward_model")

    def _convert(self, prompts: Sequence[Any], completions: Sequence[Any], images: Sequence[Any] | None,
                 references: Sequence[Any] | None) -> tuple[list[Sample | None], list[Any], dict[int, ScoreResult]]:
        prompts, completions = list(_tolist(prompts)), list(_tolist(completions))
        n = len(completions)
        for nm, seq in (("prompts", prompts), ("images", images), ("references", references)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{nm} has {len(seq)} entries for {n} completions; give one per completion")
        refs = list(_tolist(references)) if references is not None else [None] * n
        imgs = list(_tolist(images)) if images is not None else [None] * n
        samples: list[Sample | None] = []
        early: dict[int, ScoreResult] = {}
        for i in range(n):
            try:
                samples.append(to_sample(prompts[i], completions[i], imgs[i], field=f"[{i}]"))
            except MmrmError as e:
                samples.append(None)
                early[i] = ScoreResult.failed(e, self._provenance())
        return samples, refs, early

    def _finish(self, samples: list[Sample | None], refs: list[Any], early: dict[int, ScoreResult], ok: list[int],
                scored: list[ScoreResult], groups: Sequence[Hashable] | None) -> RewardBatch:
        if len(scored) != len(ok):
            raise MmrmError(f"the scorer returned {len(scored)} results for {len(ok)} samples")
        results: list[ScoreResult] = [early.get(i) for i in range(len(samples))]  # type: ignore[misc]
        for i, r in zip(ok, scored):
            results[i] = r
        raw = [float(r.value) if r.ok and r.value is not None else None for r in results]
        texts = [s.response.text if s is not None else "" for s in samples]
        matches = None
        if self.shaping.hybrid:
            matches = [None if (s is None or refs[i] is None) else bool(self.verifier(texts[i], refs[i]))
                       for i, s in enumerate(samples)]
        if self.shaping.group_normalize and groups is None:
            groups = [_prompt_key(s) if s is not None else ("failed", i) for i, s in enumerate(samples)]
        shaped: Shaped = apply_shaping(raw, self.shaping, matches=matches, texts=texts, groups=groups)
        self.stats.add(results)
        self._log(results, shaped.log)
        return RewardBatch(rewards=shaped.rewards, raw=raw, results=results, log=shaped.log)

    def _log(self, results: list[ScoreResult], slog: ShapingLog) -> None:
        log.info("mmrm reward %s: %s", self.name, slog.line())
        bad = [(i, r) for i, r in enumerate(results) if not r.ok]
        if bad:
            kinds = Counter(r.error_kind or "error" for _, r in bad)
            first = "; ".join(f"[{i}] {r.error_kind}: {r.invalid}" for i, r in bad[:3])
            log.warning("mmrm reward %s: %d of %d items have no reward (%s); first: %s", self.name, len(bad),
                        len(results), ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())), first)

    # ---------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close what this RewardFn opened (the client of :meth:`remote`) and its worker threads."""
        for close in self._closers:
            close()
        self._closers.clear()
        self._pool.shutdown(wait=False)

    async def aclose(self) -> None:
        """See :meth:`close`."""
        self.close()

    def __enter__(self) -> RewardFn:  # noqa: PYI034 (Python 3.10: no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # The scorer's class only: a torch module's repr is its whole layer tree, and a remote
        # scorer's provenance would cost a request.
        return f"RewardFn({self.name!r}, {type(self.scorer).__name__}, shaping={self.shaping!r})"
