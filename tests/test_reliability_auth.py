"""Auth and exposure, on the live service: every route but ``/healthz`` needs the token, ``/metrics``
can be protected, the HTTP server binds 127.0.0.1 unless told otherwise, and no secret reaches a log.

(The same rules against the app with every route it has, including the docs and unknown paths, with
no Ray: tests/test_reliability_errors.py.)
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = pytest.mark.slow


def _routes(app: dict) -> list[tuple[str, str]]:
    r = httpx.get(app["url"] + "/openapi.json", headers=app["headers"], timeout=30)
    assert r.status_code == 200, r.text[:300]
    spec = r.json()
    out = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    return out + [("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"), ("GET", "/no/such/route"),
                  ("DELETE", "/v1/score"), ("PUT", "/v1/models")]


@pytest.mark.parametrize("which", ["main", "rel"])
def test_every_live_route_but_healthz_needs_the_token(service: dict, rel_service: dict, which: str) -> None:
    app = service if which == "main" else rel_service
    token = app["token"]
    routes = _routes(app)
    assert len(routes) >= 15
    wrong = [{}, {"Authorization": "Bearer " + secrets.token_hex(16)}, {"Authorization": token},
             {"Authorization": f"Basic {token}"}, {"Authorization": f"Bearer {token}x"}, {"X-Api-Key": token}]
    for method, path in routes:
        for headers in wrong:
            r = httpx.request(method, app["url"] + path, headers=headers, json={} if method == "POST" else None,
                              timeout=30)
            if path == "/healthz":
                assert r.status_code == 200
                continue
            if path == "/metrics" and which == "main":  # main leaves /metrics open (protect_metrics off)
                continue
            assert r.status_code == 401, (which, method, path, headers, r.status_code)
            assert r.json()["error"]["kind"] == "unauthorized" and token not in r.text
        # the token in the query string is not a credential either
        r = httpx.request(method, app["url"] + path + f"?token={token}&access_token={token}", timeout=30)
        assert r.status_code in ((200,) if path == "/healthz" else (200, 401) if path == "/metrics" else (401,))


def test_metrics_protected_when_configured(service: dict, rel_service: dict) -> None:
    assert httpx.get(service["url"] + "/metrics", timeout=30).status_code == 200  # protect_metrics: false
    assert httpx.get(rel_service["url"] + "/metrics", timeout=30).status_code == 401  # protect_metrics: true
    assert httpx.get(rel_service["url"] + "/metrics", headers=rel_service["headers"], timeout=30).status_code == 200


def test_http_server_binds_loopback_by_default(service: dict) -> None:
    """The session's service was started with ``mmrm.serve.run.start`` and no host (as ``mmrm serve``
    does for a file without ``http_options.host``): its listening socket is on 127.0.0.1 only."""
    import psutil

    port = urlsplit(service["url"]).port
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening, f"nothing listens on port {port}"
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
    # and it is not reachable on the machine's other addresses
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for ip in others:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((ip, port)) != 0, f"the service answers on {ip}:{port}"


def test_no_secret_in_any_log(service: dict, rel_service: dict) -> None:
    """Requests with the right token, wrong tokens, a token in the URL, the judge backend's API key
    (the same secret, sent to the stub judge server as its bearer key) and failing paths; then every
    file Ray and Serve wrote for this cluster (worker stdout/stderr, replica, proxy and access logs)
    is searched for the secrets."""
    import ray

    token = service["token"]
    wrong = "wrongtoken-" + secrets.token_hex(12)
    h = service["headers"]
    body = {"model": "tiny", "items": [{"prompt": "p", "response": "r"}]}
    for url in (service["url"], rel_service["url"]):
        model = "tiny" if url == service["url"] else "tiny2"
        assert httpx.post(url + "/v1/score", json={**body, "model": model}, headers=h, timeout=60).status_code == 200
        assert httpx.post(url + "/v1/score", json=body, headers={"Authorization": f"Bearer {wrong}"}, timeout=60).status_code == 401
        assert httpx.post(url + "/v1/score", json=body, headers={"Authorization": wrong}, timeout=60).status_code == 401
        assert httpx.post(url + f"/v1/score?token={wrong}", json=body, timeout=60).status_code == 401
        assert httpx.post(url + "/v1/score", json={"model": "nope", "items": body["items"]}, headers=h,
                          timeout=60).status_code == 404
    stub = rel_service["stub"]
    n = len(stub.auth_headers)
    r = httpx.post(rel_service["url"] + "/v1/judge", headers=h, timeout=120,
                   json={"judge": "flaky", "items": [{"prompt": "q", "response": m} for m in ("ok", "[[500]]", "[[garbage]]")]})
    assert r.status_code == 200
    assert f"Bearer {token}" in stub.auth_headers[n:]  # the backend key really was in play
    time.sleep(2)  # workers flush their log files
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    files = [p for p in session.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any("serve" in p.parts for p in files), "no Serve logs found"
    leaks = []
    for p in files:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        for secret in (token, wrong):
            if secret.encode() in data:
                leaks.append((str(p.relative_to(session)), secret == token))
    assert not leaks, f"secrets found in logs (file, is_service_token): {leaks}"
