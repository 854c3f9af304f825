"""mmrm.client: the HTTP client of the mmrm service (light: httpx + tenacity + pydantic; no torch, no Ray).

An RL loop or an eval script talks to a remote mmrm service through :class:`Client` (sync) or
:class:`AsyncClient` (asyncio). Both take the same arguments, have the same methods and return the
same types: the inputs are :class:`~mmrm.rm.types.Sample` / ``Pair`` / ``Group`` objects (or dicts of
the same shape), the results are :class:`~mmrm.rm.protocol.ItemResult` records (a
:class:`~mmrm.rm.types.ScoreResult` plus its index), one per item, in order, and
:class:`~mmrm.rm.scorer.GroupResult` records for groups. Request bodies are built from the wire
protocol's own models (:mod:`mmrm.rm.protocol`), so the client sends exactly what the server accepts.
An item the service cannot score (bad media, too long, ...) comes back as that item's invalid result
(``on_item_error="return"``, the default); ``on_item_error="fail"`` asks for a 422 naming it instead.
:class:`RemoteScorer` makes a served model or judge a :class:`~mmrm.rm.scorer.Scorer`.

>>> from mmrm.client import Client
>>> with Client(base_url="http://127.0.0.1:8000", token="secret") as client:  # doctest: +SKIP
...     results = client.score([{"prompt": "2+2?", "response": "4"}], model="rm-small")
...     results[0].value
1.73

Reliability rules (one place, both clients):

* **Retries** (:mod:`mmrm.client.retry`, the one policy) with exponential backoff and jitter on
  429, 502, 503, on connection errors and on timeouts. A ``Retry-After`` header (seconds or an HTTP
  date) is honoured: the next attempt waits at least that long. Retries stop after ``max_retries``
  retries or when the next attempt would start later than ``max_retry_time`` seconds after the
  first one, whichever comes first. Scoring is a pure function of its input, so repeating a
  request is safe.
* **No retry** on any other 4xx (a bad request stays bad), on 500, and **never on 504**: a 504 is
  the service's request deadline, the same request would cost the same again (and wait as long),
  and the service may still be computing the abandoned one, so a retry multiplies abandoned work.
  Send fewer items per request instead. These raise :class:`ServiceError` at once, carrying the
  service's ``kind``, ``message``, ``field`` and ``limit``.
* **One request id per logical call**, sent as ``X-Request-Id`` and reused by every retry of that
  call, so the client's log lines and the service's correlate. Pass ``request_id=`` to choose it.
* **Auth**: ``token=`` or the ``MMRM_API_TOKEN`` environment variable, sent as
  ``Authorization: Bearer <token>``; ``token=None`` sends none.

Responses are read leniently (unknown fields in a result record are dropped; an error kind outside
:data:`~mmrm.rm.errors.ErrorKind` reads as ``service_error``), so an older client keeps working
against a newer service.

Modules: :mod:`~mmrm.client.sync_client` (:class:`Client`), :mod:`~mmrm.client.async_client`
(:class:`AsyncClient`), :mod:`~mmrm.client.remote` (:class:`RemoteScorer`),
:mod:`~mmrm.client.retry` (the retry policy, also used by the ``openai`` judge backend),
:mod:`~mmrm.client.errors` and :mod:`~mmrm.client.base` (what both clients share).
"""

from __future__ import annotations

from mmrm.client.async_client import AsyncClient
from mmrm.client.errors import BadResponse, ServiceError, TransportError
from mmrm.client.remote import RemoteScorer
from mmrm.client.retry import RetryPolicy, parse_retry_after
from mmrm.client.sync_client import Client

__all__ = ["AsyncClient", "BadResponse", "Client", "RemoteScorer", "RetryPolicy", "ServiceError", "TransportError",
           "parse_retry_after"]
