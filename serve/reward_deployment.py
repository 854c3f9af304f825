"""The reward-model replica: one Ray Serve deployment per model, with dynamic batching.

Requests arrive as lists of samples. Each sample is encoded (media loaded, limits applied) off the
event loop; valid ones are queued one by one into ``@serve.batch``, which hands a list of encoded
samples from MANY concurrent requests to one call; that call splits it by the token budget
(longest first) and runs the forwards in a worker thread, so the replica's loop stays free for
health checks and new arrivals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from ray import serve

from mmrm.rm.encode import Encoded
from mmrm.rm.errors import BackendError, MmrmError
from mmrm.rm.media import MediaPolicy
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.types import Sample, ScoreResult
from mmrm.serve.config import ModelConfig
from mmrm.serve.errors import Timeout, from_wire, to_wire

log = logging.getLogger("mmrm.serve")

WARMUP = Sample(prompt="warm-up", response="ok")


class Abandon:
    """When nobody waits for a request any more: its deadline (wall-clock, from the ingress) has
    passed, or it was cancelled (the ingress answered 504, or the client disconnected: Ray raises
    CancelledError in the replica's coroutine). Worker threads cannot be cancelled, so they ask
    :meth:`now` between items and before each forward, and the rest of the request is dropped."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.cancelled = threading.Event()

    def now(self) -> bool:
        return self.cancelled.is_set() or (self.deadline is not None and time.time() > self.deadline)

    def error(self, field: str) -> Timeout:
        return Timeout("the request was abandoned (deadline passed or cancelled) before this item ran",
                       field=field or None)


class RewardModelServer:
    """Replica body (wrapped by ``serve.deployment`` in :mod:`mmrm.serve.app`)."""

    def __init__(self, model: dict[str, Any], media: dict[str, Any]) -> None:
        self.cfg = ModelConfig.model_validate(model)
        self.media = MediaPolicy.model_validate(media)
        self.rm: RewardModel | None = None
        self._checkpoint: str | None = None
        self._pending = 0
        self._batch_started: float | None = None
        self._last_batch_s = 0.0
        self._forward_lock = threading.Lock()  # one forward at a time: batches and groups take turns
        self._load(str(self.cfg.checkpoint))
        self._apply_knobs(self.cfg.knobs())

    # --------------------------------------------------------------------------- lifecycle
    def _load(self, checkpoint: str) -> None:
        v = self.cfg.vllm
        api_key = (os.environ.get(v.api_key_env or "") or None) if v is not None else None
        rm = RewardModel.from_pretrained(checkpoint, options=self.cfg.scoring_options(self.media, api_key=api_key),
                                         name=self.cfg.name)
        rm.rewards([WARMUP])  # ready means: loaded AND scored once (raises if the warm-up fails)
        self.rm, self._checkpoint = rm, checkpoint  # swap atomically: in-flight batches keep the old one
        log.info("model %s loaded from %s (fingerprint %s)", self.cfg.name, checkpoint, rm.fingerprint)

    def _apply_knobs(self, knobs: dict[str, Any]) -> None:
        self._score_batch.set_max_batch_size(int(knobs["max_batch_size"]))
        self._score_batch.set_batch_wait_timeout_s(float(knobs["batch_wait_timeout_s"]))
        if self.rm is not None:
            self.rm.options.max_batch_size = int(knobs["max_batch_size"])
            self.rm.options.max_batch_tokens = int(knobs["max_batch_tokens"])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this on live replicas when only ``user_config`` changed: new batch knobs, or a
        new checkpoint (loaded beside the old one, then swapped; requests in flight finish)."""
        ckpt = user_config.get("checkpoint")
        if ckpt and ckpt != self._checkpoint:
            self._load(ckpt)
        self._apply_knobs({**self.cfg.knobs(), **user_config})

    async def check_health(self) -> None:
        """Liveness without queueing behind a forward: the loop answers, and no batch is stuck."""
        started = self._batch_started
        if started is not None and time.monotonic() - started > self.cfg.health_timeout_s:
            raise RuntimeError(f"a batch has run for more than {self.cfg.health_timeout_s} s")

    async def info(self) -> dict[str, Any]:
        rm = self.rm
        assert rm is not None
        p = rm.provenance
        return {"id": self.cfg.name, "kind": "reward_model", "fingerprint": p.fingerprint, "engine": p.engine, "dtype": p.dtype}

    # --------------------------------------------------------------------------- scoring
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_batch(self, items: list[tuple[Encoded, Abandon]]) -> list[tuple[float | MmrmError | RuntimeError, int, int]]:
        # Serve's batcher already leaves out items whose request was cancelled before the batch
        # formed (ray/serve/batching.py); items whose request is abandoned while this batch waits
        # for the forward lock are dropped just before the forward.
        rm = self.rm
        assert rm is not None
        depth = self._pending
        rewards = await self._run(rm.rewards_of, [e for e, _ in items], [a for _, a in items])
        return [(r, len(items), depth) for r in rewards]

    async def _run(self, fn: Any, items: list[Encoded], abandon: list[Abandon]) -> list[float | MmrmError | RuntimeError]:
        """Run a forward in a worker thread (the loop stays free), timed for the health check; the
        items whose request is abandoned by the time the forward starts are left out (their
        result: a timeout, read by nobody)."""
        def locked() -> list[float | MmrmError | RuntimeError]:
            with self._forward_lock:
                out: list[float | MmrmError | RuntimeError] = [a.error("") for a in abandon]
                live = [i for i, a in enumerate(abandon) if not a.now()]
                if not live:
                    return out
                self._batch_started = time.monotonic()
                try:
                    for i, r in zip(live, fn([items[i] for i in live])):
                        out[i] = r
                    return out
                finally:
                    self._last_batch_s = time.monotonic() - self._batch_started
                    self._batch_started = None

        return await asyncio.to_thread(locked)

    async def _one(self, enc: Encoded, abandon: Abandon) -> tuple[Any, int, int]:
        self._pending += 1
        try:
            return await self._score_batch((enc, abandon))
        finally:
            self._pending -= 1

    async def score(self, samples: list[dict[str, Any]], request_id: str = "", fields: list[str] | None = None,
                    groups: list[int] | None = None, deadline: float | None = None) -> dict[str, Any]:
        """Score samples; one result per sample, in order. An entry ``{"error": ...}`` (an item the
        ingress already refused) is that item's invalid result. A sample that cannot be encoded (media
        refused or broken, too long, a modality the model does not take) is that sample's invalid
        result naming ``fields[i]`` and the limit; the others score in the same forwards as ever.

        ``groups`` (sizes, summing to ``len(samples)``) marks consecutive samples that share a
        prompt, a GRPO group: each group's valid samples run the shared-prefix path
        (:meth:`RewardModel.rewards_of_group`) as one unit instead of joining the dynamic batch.

        ``deadline`` (wall-clock seconds, :func:`time.time`): once it passes, or once Ray cancels the
        request (a 504 at the ingress, a client that disconnected), the rest of the request is
        dropped: no further item is encoded (media decoding is most of the cost of a large image),
        no queued item runs, no further group starts. Only the forward already running finishes.
        """
        abandon = Abandon(deadline)
        try:
            return await self._score(samples, request_id, fields, groups, abandon)
        except asyncio.CancelledError:
            abandon.cancelled.set()  # the worker thread still encoding this request stops at its next item
            raise

    async def _score(self, samples: list[dict[str, Any]], request_id: str, fields: list[str] | None,
                     groups: list[int] | None, abandon: Abandon) -> dict[str, Any]:
        rm = self.rm
        assert rm is not None
        names = fields or [f"items[{i}]" for i in range(len(samples))]

        def encode_all() -> list[Encoded | MmrmError]:
            out: list[Encoded | MmrmError] = []
            for i, raw in enumerate(samples):
                if abandon.now():
                    out += [abandon.error(names[k]) for k in range(i, len(samples))]
                    break
                if "error" in raw:  # refused at the ingress (a compat route could not convert it)
                    out.append(from_wire(raw["error"]))
                    continue
                try:
                    out.append(rm.encode(Sample.model_validate(raw)))
                except MmrmError as e:
                    out.append(e.with_field_prefix(names[i]))
                except Exception as e:  # noqa: BLE001 - never let one item's surprise fail the batch
                    log.exception("request %s: encoding %s failed", request_id, names[i])
                    out.append(BackendError(f"encoding failed: {type(e).__name__}", field=names[i]))
            return out

        encoded = await asyncio.to_thread(encode_all)
        good = [k for k, e in enumerate(encoded) if isinstance(e, Encoded)]
        ok = set(good)
        outs: dict[int, tuple[Any, int, int]] = {}
        if groups is not None:
            k = 0
            for n in groups:
                part = [i for i in range(k, k + n) if i in ok]
                k += n
                if part and not abandon.now():
                    # One group is one unit: _run leaves it out whole if the request is abandoned
                    # while it waits for the forward lock.
                    values = await self._run(rm.rewards_of_group, [encoded[i] for i in part],  # type: ignore[misc]
                                             [abandon] * len(part))
                    outs.update({i: (v, len(part), self._pending) for i, v in zip(part, values)})
        elif not abandon.now():
            done = await asyncio.gather(*(self._one(encoded[i], abandon) for i in good))  # type: ignore[arg-type]
            outs.update(zip(good, done))
        if abandon.now():  # nobody reads this answer: the ingress has answered 504 (or the client left)
            return to_wire(Timeout("the request deadline passed before the request finished", field="request"))
        prov = rm.provenance
        results = []
        for i, enc in enumerate(encoded):
            value = outs[i][0] if i in outs else enc
            if isinstance(value, float):
                results.append(ScoreResult(value=value, provenance=prov).model_dump(mode="json"))
                continue
            if not isinstance(value, MmrmError):
                log.warning("request %s: %s failed at run time: %s", request_id, names[i], value)
                value = BackendError(f"scoring failed: {value}", field=names[i])
            results.append(ScoreResult.failed(value, prov).model_dump(mode="json"))
        return {
            "results": results,
            "batch_sizes": sorted({b for _, b, _ in outs.values()}),
            "queue_depth": max((d for _, _, d in outs.values()), default=0),
        }
