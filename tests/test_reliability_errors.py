"""The one error mapping, under faults no fuzzer can provoke (no Ray: the FastAPI app of the ingress
with fake replica handles, through Starlette's test client).

A server fault must be a 500 with a generic message (logged, never leaked, never turned into a 4xx
by a catch-all); a dead replica or a full Serve queue must be a 503 with Retry-After; a request
that is refused by FastAPI itself must still carry mmrm's error envelope.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mmrm.rm.errors import InvalidInput
from mmrm.rm.types import Provenance, ScoreResult
from mmrm.serve.config import ServiceConfig
from mmrm.serve.errors import to_wire
from mmrm.serve.ingress import build_fastapi

TOKEN_ENV = "MMRM_TEST_RELIABILITY_ERRORS_TOKEN"
PROV = Provenance(scorer="tiny", kind="reward_model", fingerprint="f", mmrm_version="0", engine="hf", dtype="float32")
BODY = {"model": "tiny", "items": [{"prompt": "p", "response": "r"}]}


class _Method:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        async def run() -> Any:
            return self.fn(*args)

        return run()


class FakeReplica:
    """Stands in for a Serve handle: ``score.remote(...)`` and ``info.remote()`` are awaitable."""

    def __init__(self, score: Callable[..., Any]) -> None:
        self.score = _Method(score)
        self.info = _Method(lambda: {"id": "tiny", "kind": "reward_model"})


def _ok(samples: list, rid: str, fields: list, groups: list | None = None, deadline: float | None = None) -> dict:
    return {"results": [ScoreResult(value=0.25, provenance=PROV).model_dump(mode="json") for _ in samples],
            "batch_sizes": [len(samples)], "queue_depth": 0}


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fn(*_: Any) -> Any:
        raise exc

    return fn


def _client(score: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, **auth: Any) -> TestClient:
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token-value")
    cfg = ServiceConfig.model_validate({"models": [{"name": "tiny", "checkpoint": "/nowhere"}],
                                        "auth": {"token_env": TOKEN_ENV, **auth}})
    app = build_fastapi(cfg, {"tiny": FakeReplica(score)}, {})
    return TestClient(app, raise_server_exceptions=False, headers={"Authorization": "Bearer s3cret-token-value"})


class ActorDiedError(Exception):
    """Same name as Ray's (the mapping goes by class name, so Ray need not be imported there)."""


class RayTaskError(Exception):
    pass


@pytest.mark.parametrize("exc", [ValueError("internal detail 42"), KeyError("internal detail 42"),
                                 RuntimeError("internal detail 42"), AssertionError("internal detail 42")])
def test_server_faults_are_500_with_a_generic_message(monkeypatch: pytest.MonkeyPatch, exc: Exception,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    c = _client(_raise(exc), monkeypatch)
    r = c.post("/v1/score", json=BODY)
    assert r.status_code == 500, r.text
    assert r.json()["error"] == {"kind": "internal", "message": "internal server error", "field": None, "limit": None,
                                 "type": "InternalServerError", "code": 500}
    assert "internal detail 42" not in r.text
    assert any("internal error" in rec.getMessage() for rec in caplog.records)  # logged with its traceback
    assert c.post("/v1/score", json=BODY).status_code == 500  # stays a fault; nothing cached as 4xx


def test_malformed_replica_answers_are_500_not_4xx(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ({"results": [{"value": "not a number", "provenance": {}}], "batch_sizes": [1], "queue_depth": 0},
                {"nothing": "here"}):
        r = _client(lambda *_: bad, monkeypatch).post("/v1/score", json=BODY)  # noqa: B023
        assert r.status_code == 500, (bad, r.text)


def test_replica_death_and_serve_backpressure_are_503_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve.exceptions import BackPressureError

    class Wrapped(RayTaskError, ActorDiedError):  # like Ray's RayTaskError(<cause>) dual class
        pass

    for exc, kind in ((ActorDiedError("gone"), "replica_unavailable"), (Wrapped("gone"), "replica_unavailable"),
                      (BackPressureError(num_queued_requests=4, max_queued_requests=4), "overloaded")):
        r = _client(_raise(exc), monkeypatch).post("/v1/score", json=BODY)
        assert r.status_code == 503, (exc, r.text)
        assert r.headers["retry-after"] == "1" and r.json()["error"]["kind"] == kind
    # a wrapped ordinary error is still a server fault
    class WrappedValueError(RayTaskError, ValueError):
        pass

    assert _client(_raise(WrappedValueError("x")), monkeypatch).post("/v1/score", json=BODY).status_code == 500


def test_typed_errors_from_replicas_keep_their_status(monkeypatch: pytest.MonkeyPatch) -> None:
    err = to_wire(InvalidInput("bad image", field="items[0].prompt[0].content[0]", limit="PNG"))
    r = _client(lambda *_: err, monkeypatch).post("/v1/score", json=BODY)
    assert r.status_code == 422 and r.json()["error"]["field"] == "items[0].prompt[0].content[0]"
    assert _client(_ok, monkeypatch).post("/v1/score", json=BODY).json()["data"][0]["value"] == 0.25


def test_framework_refusals_carry_the_envelope(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _client(_ok, monkeypatch)
    r = c.post("/v1/score", content=b"\xff\xfe{not utf-8", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["error"]["kind"] and r.json()["error"]["message"]
    r = c.post("/v1/score", content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"]
    r = c.get("/v1/score")  # wrong method
    assert r.status_code == 405 and r.json()["error"]["kind"] == "method_not_allowed" and "allow" in r.headers
    r = c.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["kind"] == "not_found"


def test_every_route_but_healthz_needs_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every route the app has (docs included, unknown paths too), every method it serves."""
    c = _client(_ok, monkeypatch, protect_metrics=True)
    routes = [(m, r.path) for r in c.app.routes for m in sorted(getattr(r, "methods", None) or {"GET"})]
    assert len(routes) >= 12 and ("GET", "/docs") in routes and ("GET", "/openapi.json") in routes
    for method, path in [*routes, ("GET", "/no/such/route"), ("DELETE", "/v1/score"), ("OPTIONS", "/v1/score")]:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token-value"},
                        {"Authorization": "Basic s3cret-token-value"}, {"Authorization": "Bearer s3cret-token-value "}):
            r = c.request(method, path, headers=headers, json={} if method == "POST" else None)
            if path == "/healthz":
                assert r.status_code in (200, 405), (method, path)
                continue
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert "s3cret" not in r.text
    assert c.get("/healthz", headers={"Authorization": ""}).status_code == 200
    assert c.get("/metrics").status_code == 200  # with the token


def test_rate_limit_key_is_the_credential_not_the_header_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    c = _client(_ok, monkeypatch, rate_limit={"requests_per_s": 0.01, "burst": 2})
    codes = [c.post("/v1/score", json=BODY, headers={"Authorization": f"{scheme} s3cret-token-value"}).status_code
             for scheme in ("Bearer", "bearer", "BEARER", "bEaReR")]
    assert codes == [200, 200, 429, 429], codes
