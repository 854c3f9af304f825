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
from mmrm.rm.errors import BackendError, InvalidInput, MmrmError
from mmrm.rm.media import MediaPolicy
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.vllm_engine import VLLMRewardModel
from mmrm.rm.types import Sample, ScoreResult
from mmrm.serve.config import ModelConfig
from mmrm.serve.errors import to_wire

log = logging.getLogger("mmrm.serve")

WARMUP = Sample(prompt="warm-up", response="ok")


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
        common = dict(max_length=self.cfg.max_length, truncation=self.cfg.truncation, media_policy=self.media,
                      name=self.cfg.name, max_batch_size=self.cfg.max_batch_size, max_batch_tokens=self.cfg.max_batch_tokens)
        rm: RewardModel
        if self.cfg.engine == "vllm":
            v = self.cfg.vllm
            assert v is not None  # the config validator guarantees it
            rm = VLLMRewardModel.from_server(checkpoint, base_url=v.base_url, served_model=v.served_model,
                                             timeout_s=v.timeout_s, api_key=os.environ.get(v.api_key_env or "") or None,
                                             **common)  # type: ignore[arg-type]
        else:
            rm = RewardModel.from_pretrained(
                checkpoint, dtype=self.cfg.dtype, device=self.cfg.device, compile=self.cfg.compile,
                pack_sequences={"auto": None, "on": True, "off": False}[self.cfg.packing], **common,  # type: ignore[arg-type]
            )
        rm.score([WARMUP])  # ready means: loaded AND scored once
        self.rm, self._checkpoint = rm, checkpoint  # swap atomically: in-flight batches keep the old one
        log.info("model %s loaded from %s (fingerprint %s)", self.cfg.name, checkpoint, rm.fingerprint)

    def _apply_knobs(self, knobs: dict[str, Any]) -> None:
        self._score_batch.set_max_batch_size(int(knobs["max_batch_size"]))
        self._score_batch.set_batch_wait_timeout_s(float(knobs["batch_wait_timeout_s"]))
        if self.rm is not None:
            self.rm.max_batch_size = int(knobs["max_batch_size"])
            self.rm.max_batch_tokens = int(knobs["max_batch_tokens"])

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
    async def _score_batch(self, items: list[Encoded]) -> list[tuple[float | MmrmError | RuntimeError, int, int]]:
        rm = self.rm
        assert rm is not None
        depth = self._pending
        rewards = await self._run(rm.rewards_of, items)
        return [(r, len(items), depth) for r in rewards]

    async def _run(self, fn: Any, items: list[Encoded]) -> list[float | MmrmError | RuntimeError]:
        """Run a forward in a worker thread (the loop stays free), timed for the health check."""
        def locked() -> list[float | MmrmError | RuntimeError]:
            with self._forward_lock:
                self._batch_started = time.monotonic()
                try:
                    return fn(items)
                finally:
                    self._last_batch_s = time.monotonic() - self._batch_started
                    self._batch_started = None

        return await asyncio.to_thread(locked)

    async def _one(self, enc: Encoded) -> tuple[Any, int, int]:
        self._pending += 1
        try:
            return await self._score_batch(enc)
        finally:
            self._pending -= 1

    async def score(self, samples: list[dict[str, Any]], request_id: str = "", fields: list[str] | None = None,
                    groups: list[int] | None = None) -> dict[str, Any]:
        """Score samples. Input errors reject the whole request naming ``items[i]``; a runtime
        failure of one item becomes that item's invalid result.

        ``groups`` (sizes, summing to ``len(samples)``) marks consecutive samples that share a
        prompt, a GRPO group: each group runs the shared-prefix path
        (:meth:`RewardModel.rewards_of_group`) as one unit instead of joining the dynamic batch.
        """
        rm = self.rm
        assert rm is not None
        parsed = [Sample.model_validate(s) for s in samples]

        def encode_all() -> list[Encoded]:
            out = []
            for i, s in enumerate(parsed):
                try:
                    out.append(rm.encode(s))
                except InvalidInput as e:
                    raise e.with_field_prefix(fields[i] if fields else f"items[{i}]")
            return out

        try:
            encoded = await asyncio.to_thread(encode_all)
        except InvalidInput as e:
            return to_wire(e)
        if groups is not None:
            outs = []
            k = 0
            for n in groups:
                part = encoded[k:k + n]
                k += n
                outs += [(r, len(part), self._pending) for r in await self._run(rm.rewards_of_group, part)]
        else:
            outs = await asyncio.gather(*(self._one(e) for e in encoded))
        prov = rm.provenance
        results = []
        for value, _, _ in outs:
            if isinstance(value, float):
                results.append(ScoreResult(value=value, provenance=prov).model_dump(mode="json"))
            else:
                log.warning("request %s: item failed at run time: %s", request_id, value)
                results.append(ScoreResult.failed(value if isinstance(value, MmrmError) else
                                                  BackendError(f"scoring failed: {value}"), prov).model_dump(mode="json"))
        return {
            "results": results,
            "batch_sizes": sorted({b for _, b, _ in outs}),
            "queue_depth": max((d for _, _, d in outs), default=0),
        }
