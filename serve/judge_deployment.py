"""The judge replica: one Ray Serve deployment per configured judge.

The backend (an in-process transformers LMM, or a client of an OpenAI-compatible server such as
vLLM) is built once per replica; each request builds a cheap :class:`mmrm.judges.Judge` for its
rubric or preset (a reasoning judge such as R1-Reward: :mod:`mmrm.judges.presets`; the labels of
every configured preset are checked once, at start-up). Judging runs in a worker thread so the
replica's loop stays free for health checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

from mmrm.judges.backends.base import GenReply, GenRequest, LabelReply, LabelRequest
from mmrm.judges.judge import Judge, load_spec
from mmrm.judges.presets import Preset
from mmrm.judges.rubrics import Rubric
from mmrm.rm.errors import InvalidInput, MmrmError
from mmrm.rm.media import MediaPolicy
from mmrm.rm.types import Group, Pair, Sample
from mmrm.serve.config import JudgeConfig
from mmrm.serve.errors import Timeout, to_wire

log = logging.getLogger("mmrm.serve")

_Req = TypeVar("_Req", LabelRequest, GenRequest)
_Rep = TypeVar("_Rep", LabelReply, GenReply)


class StopAware:
    """A judge backend for ONE request that stops when nobody waits for the request any more
    (``abandoned()``: its deadline passed, or Ray cancelled it after a 504 or a client disconnect).

    It passes the judge's queries to the shared backend in chunks of one backend batch, and asks
    ``abandoned()`` before each chunk: the chunks not yet started are answered with a timeout error
    (read by nobody) instead of running. Everything else is the backend's own (fingerprint, labels)."""

    def __init__(self, backend: Any, abandoned: Callable[[], bool], chunk: int) -> None:
        self._backend, self._abandoned, self._chunk = backend, abandoned, max(1, chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _chunked(self, run: Callable[[list[_Req]], list[_Rep]], requests: list[_Req], empty: type[_Rep]) -> list[_Rep]:
        out: list[_Rep] = []
        for k in range(0, len(requests), self._chunk):
            part = requests[k:k + self._chunk]
            if self._abandoned():
                out += [empty(error=Timeout("the request was abandoned before this query ran")) for _ in part]
            else:
                out += run(part)
        return out

    def label_probs(self, requests: list[LabelRequest]) -> list[LabelReply]:
        return self._chunked(self._backend.label_probs, requests, LabelReply)

    def generate(self, requests: list[GenRequest]) -> list[GenReply]:
        return self._chunked(self._backend.generate, requests, GenReply)


class JudgeServer:
    def __init__(self, judge: dict[str, Any], media: dict[str, Any]) -> None:
        self.cfg = JudgeConfig.model_validate(judge)
        policy = MediaPolicy.model_validate(media)
        b = self.cfg.backend
        if b.type == "hf":
            from mmrm.judges.backends.hf import HFJudgeBackend

            self.backend: Any = HFJudgeBackend(b.model, device=b.device, dtype=b.dtype, max_batch_size=b.max_batch_size,
                                               max_length=b.max_length, media_policy=policy)
        else:
            from mmrm.judges.backends.openai import OpenAIJudgeBackend

            self.backend = OpenAIJudgeBackend(**b.model_dump(exclude={"type"}), media_policy=policy)
        # Requests name rubrics or presets; only these (shipped names, or the operator's files by stem) resolve.
        self.rubrics: dict[str, Rubric | Preset] = {}
        for ref in self.cfg.rubrics:
            r = load_spec(ref)
            self.rubrics[Path(ref).stem if Path(ref).suffix else ref] = r
        if self.cfg.default_rubric not in self.rubrics:
            raise MmrmError(f"default_rubric {self.cfg.default_rubric!r} is not among the judge's rubrics",
                            field="default_rubric", limit=sorted(self.rubrics))
        Judge(self.rubrics[self.cfg.default_rubric], self.backend, self.cfg.judge)
        for spec in self.rubrics.values():
            if isinstance(spec, Preset):  # each preset's labels are checked once, here, not per request
                Judge(spec, self.backend, self.cfg.judge)
        # An in-process model runs one forward at a time (several at once would each take every
        # core and thrash); a remote server batches concurrent requests itself.
        self._lock: Any = threading.Lock() if b.type == "hf" else contextlib.nullcontext()
        # Queries per backend call, so that an abandoned request stops between calls: one forward
        # batch of an in-process model; as many as a remote backend sends at once.
        self._chunk = int(getattr(b, "max_batch_size", None) or getattr(b, "max_concurrency", None) or 16)

    async def info(self) -> dict[str, Any]:
        j = Judge(self.rubrics[self.cfg.default_rubric], self.backend, self.cfg.judge, check_labels=False)
        return {"id": self.cfg.name, "kind": "judge", "fingerprint": j.fingerprint,
                "engine": self.cfg.backend.type, "dtype": getattr(self.cfg.backend, "dtype", None)}

    def _rubric(self, rubric: str | dict[str, Any] | None) -> tuple[Rubric | Preset, bool]:
        """The request's rubric or preset, and whether it was checked at start-up."""
        if rubric is None:
            return self.rubrics[self.cfg.default_rubric], True
        if isinstance(rubric, dict):
            kind = "preset" if rubric.get("kind") == "preset" else "rubric"
            try:
                return (Preset if kind == "preset" else Rubric).model_validate(rubric), False
            except ValueError as e:
                raise InvalidInput(f"inline {kind} is invalid: {e}", field="rubric") from None
        if rubric not in self.rubrics:
            raise InvalidInput(f"unknown rubric {rubric!r}", field="rubric", limit=sorted(self.rubrics))
        return self.rubrics[rubric], True

    async def judge(self, body: dict[str, Any], request_id: str = "", deadline: float | None = None) -> dict[str, Any]:
        """Judge samples (pointwise / checklist) or pairs (both orders); per-item failures stay per
        item, each naming its item (``items[i]`` / ``pairs[i]``).

        ``deadline`` (wall-clock seconds, :func:`time.time`): once it passes, or once Ray cancels
        this request (a 504 at the ingress, a client that disconnected), the judge's queries that
        have not started are dropped (:class:`StopAware`); only the backend batch already running
        finishes."""
        return await self._stoppable(self._judge, body, deadline)

    async def rank(self, body: dict[str, Any], request_id: str = "", deadline: float | None = None) -> dict[str, Any]:
        """Rank ``/v1/rank`` groups with the judge's default rubric or preset, by its configured
        ``rank_strategy`` (pointwise scores, or pairwise judgments: anchor, bradley_terry, knockout).
        A strategy whose backend calls exceed ``max_queries`` is refused (422) with the count and the
        limit. Deadlines and cancellation as in :meth:`judge`."""
        return await self._stoppable(self._rank, body, deadline)

    async def _stoppable(self, run: Callable[[dict[str, Any], StopAware], Any], body: dict[str, Any],
                         deadline: float | None) -> dict[str, Any]:
        cancelled = threading.Event()

        def abandoned() -> bool:
            return cancelled.is_set() or (deadline is not None and time.time() > deadline)

        try:
            return await run(body, StopAware(self.backend, abandoned, self._chunk))
        except asyncio.CancelledError:
            cancelled.set()  # the worker thread stops before its next backend batch
            raise

    async def _rank(self, body: dict[str, Any], backend: StopAware) -> dict[str, Any]:
        try:
            judge = Judge(self.rubrics[self.cfg.default_rubric], backend, self.cfg.judge, check_labels=False)
            groups = [Group.model_validate(g) for g in body["groups"]]
            out = await asyncio.to_thread(self._serialized, partial(judge.rank, groups, eps=body.get("eps", 1e-6)))
        except MmrmError as e:
            return to_wire(e)
        for i, g in enumerate(out):
            for j, r in enumerate(g.results):
                if not r.ok:
                    r.field = f"groups[{i}].responses[{j}]"
        return {"groups": [{"results": [r.model_dump(mode="json") for r in g.results], "normalized": g.normalized} for g in out],
                "fingerprint": judge.fingerprint}

    async def _judge(self, body: dict[str, Any], backend: StopAware) -> dict[str, Any]:
        key = "pairs" if body.get("pairs") is not None else "items"
        try:
            spec, checked = self._rubric(body.get("rubric"))
            judge = Judge(spec, backend, self.cfg.judge, check_labels=not checked)
            refs = body.get("references")
            if key == "pairs":
                run: Any = partial(judge.compare, [Pair.model_validate(p) for p in body["pairs"]], references=refs)
            else:
                run = partial(judge.score, [Sample.model_validate(s) for s in body["items"]], references=refs)
            results = await asyncio.to_thread(self._serialized, run)
        except MmrmError as e:
            return to_wire(e)
        for i, r in enumerate(results):
            if not r.ok:
                # The judge's own field paths point into its prompt, not the request: name the item.
                r.field = f"{key}[{i}]"
        return {"results": [r.model_dump(mode="json") for r in results], "fingerprint": judge.fingerprint}

    def _serialized(self, run: Any) -> Any:
        with self._lock:
            return run()
