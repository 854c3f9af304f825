"""A reward model or judge served by mmrm, as a :class:`~mmrm.rm.scorer.Scorer` (:class:`RemoteScorer`)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from mmrm.client.base import _Call, _reindexed
from mmrm.client.sync_client import Client
from mmrm.rm.errors import MmrmError
from mmrm.rm.protocol import ItemResult
from mmrm.rm.scorer import GroupResult, Groups, Pairs, References, Samples, rank_pointwise
from mmrm.rm.types import Provenance, as_response

__all__ = ["RemoteScorer"]

log = logging.getLogger(__name__)


class RemoteScorer:
    """A reward model (``model=``) or judge (``judge=``, optionally ``rubric=``) served by mmrm, as a
    :class:`~mmrm.rm.scorer.Scorer`: the same three operations and the same results as in process.

    Large calls are split into ``batch_size`` items per request, ``concurrency`` requests in flight;
    results come back in input order. An item the service cannot score is that item's invalid
    result; a request that fails as a whole (after the client's retries) raises its
    :class:`ServiceError` or :class:`TransportError`. A reward model reads no references (they are
    accepted and ignored, as in process); a judge gets them as text.

    ``provenance`` comes from the service's model card (``GET /v1/models``, asked once): its
    fingerprint, engine and dtype, so a served checkpoint and the same checkpoint in process are
    told apart only when they differ. A service that does not answer gives a provenance keyed by its
    URL and name (logged).

    >>> scorer = RemoteScorer(Client(base_url="http://rm:8000"), model="rm-small")  # doctest: +SKIP
    >>> scorer.score([Sample(prompt="2+2?", response="4")])[0].value                 # doctest: +SKIP
    1.73
    """

    def __init__(self, client: Client, *, model: str | None = None, judge: str | None = None,
                 rubric: str | Mapping[str, Any] | None = None, batch_size: int = 64, concurrency: int = 4) -> None:
        if (model is None) == (judge is None):
            raise ValueError("RemoteScorer needs exactly one of model= (a served reward model) and judge= (a served judge)")
        if rubric is not None and judge is None:
            raise ValueError("rubric= goes with judge=; a reward model has no rubric")
        if batch_size < 1 or concurrency < 1:
            raise ValueError(f"batch_size and concurrency must be >= 1, got {batch_size} and {concurrency}")
        self.client = client
        self.model, self.judge, self.rubric = model, judge, rubric
        self.kind: Literal["reward_model", "judge"] = "reward_model" if model is not None else "judge"
        self.name: str = model or judge  # type: ignore[assignment]
        self.batch_size, self.concurrency = batch_size, concurrency
        self._provenance: Provenance | None = None
        self._lock = threading.Lock()

    @property
    def provenance(self) -> Provenance:
        """Which scorer this is, from the service's model card (asked once)."""
        with self._lock:
            if self._provenance is None:
                self._provenance = self._provenance_of(self._card())
            return self._provenance

    def _card(self) -> dict[str, Any] | None:
        try:
            # One attempt: a card is an identity, not worth a minute of retries against a dead service.
            resp = self.client._send(_Call("GET", "/v1/models", retry=False))
            cards = resp.json().get("data", [])
        except (MmrmError, ValueError, AttributeError) as e:
            log.warning("GET %s/v1/models failed (%s); %r is identified by its URL and name only",
                        self.client.base_url, e, self.name)
            return None
        card = next((c for c in cards if isinstance(c, Mapping) and c.get("id") == self.name), None)
        if card is None:
            log.warning("%s/v1/models does not list %r; it is identified by its URL and name only", self.client.base_url, self.name)
        return card

    def _provenance_of(self, card: Mapping[str, Any] | None) -> Provenance:

        fp = (card or {}).get("fingerprint")
        if fp is None:
            fp = "url-" + _digest(self.client.base_url, self.name, self.rubric)
        elif self.rubric is not None:  # the card's fingerprint is of the judge's default rubric
            fp = _digest(fp, self.rubric)
        return Provenance(scorer=self.name, kind=self.kind, fingerprint=str(fp), engine=str((card or {}).get("engine") or "service"), dtype=(card or {}).get("dtype"))

    # ---- the Scorer operations

    def score(self, samples: Samples, *, references: References = None) -> list[ItemResult]:
        """One result per sample, in order (``/v1/score``, or ``/v1/judge`` for a judge)."""
        if self.model is not None:
            return self._map(lambda idx: self.client.score([samples[i] for i in idx], model=self.name), len(samples))
        refs = _ref_texts(references, len(samples))
        return self._map(lambda idx: self.client.judge([samples[i] for i in idx], judge=self.name, rubric=self.rubric,
                                                       references=None if refs is None else [refs[i] for i in idx]),
                         len(samples))

    def compare(self, pairs: Pairs, *, references: References = None) -> list[ItemResult]:
        """One result per pair, in order; ``value`` = P(A > B) (``/v1/compare``, or ``/v1/judge``)."""
        if self.model is not None:
            return self._map(lambda idx: self.client.compare([pairs[i] for i in idx], model=self.name), len(pairs))
        refs = _ref_texts(references, len(pairs))
        return self._map(lambda idx: self.client.judge(pairs=[pairs[i] for i in idx], judge=self.name, rubric=self.rubric,
                                                       references=None if refs is None else [refs[i] for i in idx]),
                         len(pairs))

    def rank(self, groups: Groups, *, references: References = None, eps: float = 1e-6) -> list[GroupResult]:
        """One :class:`~mmrm.rm.scorer.GroupResult` per group (``/v1/rank``; a judge scores every
        response pointwise and the groups are normalized here, the same formula)."""
        if self.model is None:
            return rank_pointwise(self.score, groups, references=references, eps=eps)
        spans = [list(range(a, min(len(groups), a + self.batch_size))) for a in range(0, len(groups), self.batch_size)]
        parts = self._parallel([lambda idx=idx: self.client.rank([groups[i] for i in idx], model=self.name, eps=eps)
                                for idx in spans])
        return [g for p in parts for g in p]

    def _map(self, call: Any, n: int) -> list[ItemResult]:
        spans = [list(range(a, min(n, a + self.batch_size))) for a in range(0, n, self.batch_size)]
        return _reindexed([r for part in self._parallel([lambda idx=idx: call(idx) for idx in spans]) for r in part])

    def _parallel(self, calls: list[Any]) -> list[Any]:
        if len(calls) <= 1:
            return [c() for c in calls]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(calls)), thread_name_prefix="mmrm-remote") as pool:
            futures = [pool.submit(c) for c in calls]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def close(self) -> None:
        """Close the client."""
        self.client.close()

    def __repr__(self) -> str:
        return f"RemoteScorer({self.kind} {self.name!r} at {self.client.base_url})"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ref_texts(references: References, n: int) -> list[str | None] | None:
    """References as the wire takes them: text (a message or content parts become their text)."""
    if references is None:
        return None
    if len(references) != n:
        raise ValueError(f"got {len(references)} references for {n} items; give one per item (None for none)")
    return [r if r is None or isinstance(r, str) else as_response(r).text for r in references]
