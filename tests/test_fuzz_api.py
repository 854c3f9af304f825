"""API fuzzing: schemathesis against the live service's own OpenAPI document.

Every operation of ``/openapi.json`` gets 100 generated requests that fit the schema (positive) and,
for operations with a body, 50 more that break it (negative), from a fixed seed (``derandomize``), as
real HTTP calls to the real service on Ray Serve. Half of the generated bodies have their model or
judge name pinned to a served one, so they get past routing into the replicas (media loading,
encoding, the forward pass). What must hold for every single call:

* no 5xx (schemathesis' ``not_a_server_error``), no hang (a 60 s client timeout fails the test);
* the status code and the body conform to the documented responses;
* every 4xx is mmrm's error envelope with a non-empty ``kind`` and ``message``; a 422 names the
  ``field`` it is about;
* schema-violating bodies are refused with a 4xx (``negative_data_rejection``).

And the converse, which fuzzing alone cannot show: a real server fault is a 500 with a generic
message, never disguised as a 4xx (no catch-all); Ray's "retry soon" failures are 503 with
Retry-After (the last tests, against the FastAPI app with fake replica handles, no Ray needed).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest

MAX_EXAMPLES = 100  # per operation, schema-conforming bodies (the floor)
NEGATIVE_EXAMPLES = 50  # per operation with a body, schema-violating ones (on top)


@pytest.fixture(scope="module")
def api(service: dict) -> Any:
    import schemathesis

    r = httpx.get(service["url"] + "/openapi.json", headers=service["headers"], timeout=30)
    assert r.status_code == 200
    return schemathesis.openapi.from_dict(r.json())


def _check_error_body(status: int, body: Any, label: str) -> None:
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), (label, status, body)
    err = body["error"]
    assert isinstance(err.get("kind"), str) and err["kind"], (label, status, body)
    assert isinstance(err.get("message"), str) and len(err["message"]) >= 8, (label, status, body)
    if status == 422:
        assert err.get("field"), (label, status, body)  # names what to fix


def _pin(body: Any) -> None:
    """Steer a generated body past routing and into the replicas: served model and judge names,
    responses that are assistant turns, content parts that carry their ``type`` (the published schema
    allows both omissions; the validators do not), one of items/pairs. Everything else (texts, media
    sources, sizes) stays as generated."""
    if isinstance(body, dict):
        if isinstance(body.get("model"), str):
            body["model"] = "tiny"
        if isinstance(body.get("judge"), str):
            body["judge"] = "judge"
            body.pop("rubric", None)  # a random rubric name is a (correct) 422
            body.pop("references", None)
            if body.get("items") and body.get("pairs"):
                del body["pairs"]
        for key in ("response", "response_a", "response_b"):
            if isinstance(body.get(key), dict) and "role" in body[key]:
                body[key]["role"] = "assistant"
        if isinstance(body.get("responses"), list):
            for r in body["responses"]:
                if isinstance(r, dict) and "role" in r:
                    r["role"] = "assistant"
        if "type" not in body:  # a content part: the schema does not require its discriminator
            for kind in ("text", "image_url", "video"):
                if kind in body:
                    body["type"] = kind
                    break
        for v in body.values():
            _pin(v)
    elif isinstance(body, list):
        for v in body:
            _pin(v)


def _fuzz_operation(service: dict, operation: Any, mode: Any, stats: Counter) -> None:
    import requests
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance, negative_data_rejection, response_schema_conformance, status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    if mode.name == "NEGATIVE":
        checks.append(negative_data_rejection)
    session = requests.Session()
    spent = 0.0
    label = f"{operation.method.upper()} {operation.path} [{mode.name.lower()}]"

    n = NEGATIVE_EXAMPLES if mode.name == "NEGATIVE" else MAX_EXAMPLES

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), pin=st.booleans())
    def run(case: Any, pin: bool) -> None:
        nonlocal spent
        if pin:
            _pin(case.body)
        t0 = time.monotonic()
        response = case.call(base_url=service["url"], session=session, headers=service["headers"], timeout=60)
        spent += time.monotonic() - t0
        stats[label] += 1
        stats[f"{label} {response.status_code}"] += 1
        assert time.monotonic() - t0 < 60
        case.validate_response(response, checks=checks)
        if 400 <= response.status_code < 500:
            _check_error_body(response.status_code, response.json(), label)

    t_all = time.monotonic()
    run()
    print(f"{label}: {stats[label]} calls, {spent:.1f} s in HTTP, {time.monotonic() - t_all:.1f} s in all")


@pytest.mark.slow
def test_schemathesis_fuzz_every_operation(service: dict, api: Any) -> None:
    from schemathesis import GenerationMode

    stats: Counter = Counter()
    operations = [r.ok() for r in api.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {
        "POST /v1/score", "POST /v1/compare", "POST /v1/rank", "POST /v1/judge", "POST /get_reward",
        "POST /classify", "GET /v1/models", "GET /healthz", "GET /readyz", "GET /metrics"}
    for op in operations:
        modes = [GenerationMode.POSITIVE]
        if op.method.upper() == "POST":
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            _fuzz_operation(service, op, mode, stats)
    print(sorted(stats.items()))
    for op in operations:
        if op.method.upper() == "POST":  # a GET without parameters has one possible request
            assert stats[f"POST {op.path} [positive]"] >= MAX_EXAMPLES, (op.path, stats)
            assert stats[f"POST {op.path} [negative]"] >= NEGATIVE_EXAMPLES, (op.path, stats)
    # The pinned half really reached the replicas: some generated bodies were scored.
    scored = sum(stats[f"POST {p} [positive] 200"] for p in ("/v1/score", "/v1/compare", "/v1/rank", "/get_reward"))
    assert scored > 0, stats
    # and the service is still healthy afterwards
    r = httpx.post(service["url"] + "/v1/score", json={"model": "tiny", "items": [{"prompt": "p", "response": "r"}]},
                   headers=service["headers"], timeout=60)
    assert r.status_code == 200
