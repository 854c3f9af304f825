"""The resumable evaluation runner: in-process, or on Ray Data with one model per actor.

A run scores every (pair, variant) of a benchmark that the results file does not already hold for
this scorer key, in batches, appending each batch to the :class:`~mmrm.eval.store.ResultStore` as it
finishes (one write + fsync). Killed at any moment and started again, it recomputes only what was
not on disk: the pairs of the batch in flight, nothing else.

The scorer is any :class:`~mmrm.rm.scorer.Scorer` (a reward model, a judge, a panel, a served model
or judge through :class:`~mmrm.client.RemoteScorer`): a pair it cannot score is recorded invalid
with its reason and the run goes on, wherever the scorer runs. A stored record counts as done when
its key matches and it was scored in the same presentation order (``chosen``); results that failed
for a transient reason (:data:`TRANSIENT_ERRORS`) are retried by the next run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmrm.eval.items import EvalItem
from mmrm.eval.metrics import verdict_of
from mmrm.eval.scorers import ScorerSpec, scorer_key, spec_from_dict
from mmrm.eval.store import RecordKey, ResultStore
from mmrm.eval.variants import VARIANTS, Blanker
from mmrm.rm.errors import ErrorKind, MmrmError
from mmrm.rm.media import MediaLoader, MediaPolicy
from mmrm.rm.scorer import Scorer
from mmrm.rm.types import Message, ScoreResult

__all__ = ["TRANSIENT_ERRORS", "RunStats", "make_record", "plan", "run_eval", "run_eval_ray"]

log = logging.getLogger(__name__)

#: error kinds that a later run retries instead of keeping as the pair's result: conditions of the
#: scorer or the network at the time, not properties of the pair.
TRANSIENT_ERRORS: frozenset[ErrorKind] = frozenset({
    "backend_error", "overloaded", "budget_exhausted", "media_fetch_failed", "scorer_exception", "timeout",
    "rate_limited", "replica_unavailable", "service_error", "transport_error",
})

#: progress(done, total) after each stored batch
Progress = Callable[[int, int], None]


@dataclass
class RunStats:
    """What one run did (``forward_calls``: backbone passes of in-process reward models)."""

    benchmark: str
    scorer_key: str
    variants: list[str]
    total: int = 0
    already_done: int = 0
    scored: int = 0
    invalid: int = 0
    forward_calls: int | None = None
    seconds: float = 0.0
    repaired_bytes: int = 0
    corrupt_lines: int = 0
    batches: int = 0
    placeholder_items: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_len(msg: Message) -> int:
    return len(msg.text.strip())


def _finite(x: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (the store refuses non-finite floats)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def make_record(item: EvalItem, variant: str, scorer_key: str, scorer_name: str, scorer_kind: str,
                result: ScoreResult) -> dict[str, Any]:
    """The stored record of one scored (pair, variant): the result plus what the report needs."""
    det = result.details or {}
    reward_a, reward_b = det.get("reward_a"), det.get("reward_b")
    verdict = verdict_of(prob_a_wins=result.prob_a_wins if result.prob_a_wins is not None else result.value,
                         reward_a=reward_a, reward_b=reward_b, invalid=not result.ok,
                         judge_verdict=det.get("verdict") if det.get("verdict") in ("A", "B", "tie") else None)
    return _finite({
        "benchmark": item.benchmark,
        "pair_key": item.key,
        "scorer_key": scorer_key,
        "variant": variant,
        "source_id": item.source_id,
        "index": item.index,
        "category": item.category,
        "subset": item.subset,
        "group": item.group,
        "chosen": item.chosen,
        "len_a": _text_len(item.pair.response_a),
        "len_b": _text_len(item.pair.response_b),
        "has_media": item.has_media,
        "placeholder": item.uses_placeholders,
        "placeholder_media": item.placeholder_media,
        "meta": item.meta,
        "scorer": scorer_name,
        "scorer_kind": scorer_kind,
        "verdict": verdict,
        "prob_a_wins": result.prob_a_wins if result.ok else None,
        "reward_a": reward_a,
        "reward_b": reward_b,
        "orders_agree": det.get("orders_agree"),
        "invalid": result.invalid,
        "error_kind": result.error_kind,
        "result": result.model_dump(mode="json"),
        "time": time.time(),
    })


def _forward_calls(scorer: Scorer) -> int | None:
    # A statistic only in-process reward models keep (backbone passes); other scorers report None.
    n = getattr(scorer, "forward_calls", None)
    return n if isinstance(n, int) else None


def _score_chunk(scorer: Scorer, pairs: list[Any]) -> list[ScoreResult]:
    """``scorer.compare(pairs)``, isolating a pair whose scoring raises.

    Scorers report item failures as invalid results; an exception is a scorer bug or a batch
    the scorer cannot mix. The batch is then retried pair by pair, and a pair that still raises
    gets an invalid result (``scorer_exception``, retried by the next run) instead of ending the
    run. Errors of the service itself (unreachable, refusing) do end it: nothing could be scored.
    """
    from mmrm.client import ServiceError, TransportError

    try:
        res = scorer.compare(pairs)
    except (ServiceError, TransportError):
        raise
    except Exception as e:  # noqa: BLE001 - isolated per pair below, and recorded with its message
        prov = scorer.provenance
        if len(pairs) == 1:
            log.warning("scorer %s raised on one pair: %r", prov.scorer, e)
            err = MmrmError(f"the scorer raised {type(e).__name__}: {e}")
            err.kind = "scorer_exception"
            return [ScoreResult.failed(err, prov)]
        log.warning("scorer %s raised on a batch of %d pairs (%r); scoring them one by one", prov.scorer, len(pairs), e)
        return [r for p in pairs for r in _score_chunk(scorer, [p])]
    if len(res) != len(pairs):
        raise RuntimeError(f"scorer returned {len(res)} results for {len(pairs)} pairs")
    return res


def _is_done(rec: dict[str, Any] | None, item: EvalItem) -> bool:
    return rec is not None and rec.get("chosen") == item.chosen and rec.get("error_kind") not in TRANSIENT_ERRORS


def plan(items: Sequence[EvalItem], scorer_key: str, stored: dict[RecordKey, dict[str, Any]],
         variants: Sequence[str]) -> tuple[list[tuple[EvalItem, str]], int]:
    """(work still to do, how many are already done). The blank variant covers pairs with media only."""
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {VARIANTS}")
    todo, done = [], 0
    for v in variants:
        for it in items:
            if v == "blank" and not it.has_media:
                continue
            if _is_done(stored.get((it.benchmark, it.key, scorer_key, v)), it):
                done += 1
            else:
                todo.append((it, v))
    return todo, done


def _check_items(items: Sequence[EvalItem]) -> str:
    if not items:
        raise ValueError("no items to evaluate")
    names = {it.benchmark for it in items}
    if len(names) != 1:
        raise ValueError(f"one benchmark per run, got {sorted(names)}")
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError("pair keys are not unique; use a loader from mmrm.eval.loaders")
    return names.pop()


def _media_loader(scorer: Scorer, policy: MediaPolicy | None) -> MediaLoader:
    """The loader the blank variant reads image sizes with: the given policy, else an in-process
    reward model's own (same allowed roots as its scoring), else the default (no local files)."""
    if policy is not None:
        return MediaLoader(policy)
    # Only a default: the scorer is scored the same whether or not it has an encoder.
    own = getattr(getattr(scorer, "encoder", None), "media", None)
    return own if isinstance(own, MediaLoader) else MediaLoader()


def run_eval(
    items: Sequence[EvalItem],
    scorer: Scorer,
    results: ResultStore | str | Path,
    *,
    key: str | None = None,
    variants: Sequence[str] = ("original",),
    batch_size: int = 16,
    media_policy: MediaPolicy | None = None,
    progress: Progress | None = None,
) -> RunStats:
    """Score what ``results`` lacks for ``scorer`` (any :class:`~mmrm.rm.scorer.Scorer`), in this
    process; returns what this run did.

    ``key`` stores the results under that key instead of :func:`~mmrm.eval.scorers.scorer_key`'s.
    ``media_policy`` lets the blank variant read image sizes (default: an in-process reward model's
    own media policy; give it for other scorers).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    store = results if isinstance(results, ResultStore) else ResultStore(results)
    bench = _check_items(items)
    key = key or scorer_key(scorer)
    prov = scorer.provenance
    t0 = time.monotonic()
    blanker = Blanker(_media_loader(scorer, media_policy)) if "blank" in variants else None
    fc0 = _forward_calls(scorer)
    with store.writer() as w:
        stored, st = store.load()
        todo, done = plan(items, key, stored, variants)
        stats = RunStats(benchmark=bench, scorer_key=key, variants=list(variants), total=len(todo) + done,
                         already_done=done, repaired_bytes=w.repaired_bytes, corrupt_lines=st.corrupt,
                         placeholder_items=sum(it.uses_placeholders for it in items))
        if progress:
            progress(done, stats.total)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            pairs = [it.pair if v == "original" else blanker(it.pair) for it, v in chunk]  # type: ignore[misc]
            res = _score_chunk(scorer, pairs)
            recs = [make_record(it, v, key, prov.scorer, prov.kind, r) for (it, v), r in zip(chunk, res)]
            w.append(recs)
            stats.scored += len(recs)
            stats.invalid += sum(r["invalid"] is not None for r in recs)
            stats.batches += 1
            if progress:
                progress(done + stats.scored, stats.total)
    fc1 = _forward_calls(scorer)
    stats.forward_calls = None if fc0 is None or fc1 is None else fc1 - fc0
    stats.seconds = time.monotonic() - t0
    return stats


# --------------------------------------------------------------------------------------------------
# Ray Data


class _RayScoreBatch:
    """A Ray Data actor: builds its scorer once (one model per actor / GPU), scores batches."""

    def __init__(self, spec: dict[str, Any], key: str) -> None:
        s = spec_from_dict(spec)
        self.scorer = s.build()
        self.key, self.prov = scorer_key(self.scorer), self.scorer.provenance
        if self.key != key:
            raise RuntimeError(f"the actor's scorer key {self.key} differs from the driver's {key}: "
                               "the checkpoint or service changed during the run")
        roots = getattr(s, "media_roots", [])
        self.blanker = Blanker(MediaLoader(MediaPolicy(allowed_roots=[Path(r).resolve() for r in roots])))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        items = [EvalItem.model_validate_json(s) for s in batch["item"]]
        variants = [str(v) for v in batch["variant"]]
        pairs = [it.pair if v == "original" else self.blanker(it.pair) for it, v in zip(items, variants)]
        fc0 = _forward_calls(self.scorer)
        res = _score_chunk(self.scorer, pairs)
        fc1 = _forward_calls(self.scorer)
        recs = [make_record(it, v, self.key, self.prov.scorer, self.prov.kind, r)
                for it, v, r in zip(items, variants, res)]
        calls = [0] * len(recs)
        if recs and fc0 is not None and fc1 is not None:
            calls[0] = fc1 - fc0
        return {"record": np.array([json.dumps(r) for r in recs], dtype=object), "forward_calls": np.array(calls)}


def run_eval_ray(
    items: Sequence[EvalItem],
    spec: ScorerSpec,
    results: ResultStore | str | Path,
    *,
    variants: Sequence[str] = ("original",),
    batch_size: int = 16,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0.0,
    num_cpus_per_actor: float = 1.0,
    progress: Progress | None = None,
) -> RunStats:
    """:func:`run_eval` on Ray Data: ``map_batches`` over an actor pool of ``num_actors`` (give each
    ``num_gpus_per_actor=1`` for one model per GPU). Ray must be initialized (``ray.init``) already.

    The driver is the only writer of the results file: it appends each batch as Ray Data yields it,
    so the run is incremental and resumable exactly like the in-process one.
    """
    import ray
    import ray.data

    if not ray.is_initialized():
        raise RuntimeError("call ray.init(...) (or connect to a cluster) before run_eval_ray")
    store = results if isinstance(results, ResultStore) else ResultStore(results)
    bench = _check_items(items)
    key = spec.key() or scorer_key(spec.build())
    t0 = time.monotonic()
    with store.writer() as w:
        stored, st = store.load()
        todo, done = plan(items, key, stored, variants)
        stats = RunStats(benchmark=bench, scorer_key=key, variants=list(variants), total=len(todo) + done,
                         already_done=done, repaired_bytes=w.repaired_bytes, corrupt_lines=st.corrupt,
                         placeholder_items=sum(it.uses_placeholders for it in items), forward_calls=0)
        if progress:
            progress(done, stats.total)
        if todo:
            rows = [{"item": it.model_dump_json(), "variant": v} for it, v in todo]
            ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
            ds = ds.map_batches(
                _RayScoreBatch,
                fn_constructor_kwargs={"spec": spec.model_dump(mode="json"), "key": key},
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=num_actors),
                num_cpus=num_cpus_per_actor,
                num_gpus=num_gpus_per_actor,
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                recs = [json.loads(s) for s in batch["record"]]
                w.append(recs)
                stats.scored += len(recs)
                stats.invalid += sum(r["invalid"] is not None for r in recs)
                stats.forward_calls = (stats.forward_calls or 0) + int(sum(batch["forward_calls"]))
                stats.batches += 1
                if progress:
                    progress(done + stats.scored, stats.total)
    stats.seconds = time.monotonic() - t0
    return stats

