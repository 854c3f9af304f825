"""Metric labels come from route templates and fixed vocabularies only.

Before, ``mmrm_errors_total`` was labelled with the raw request path of every 401: thousands of
made-up paths grew the ingress without bound and put the caller's strings into the open
``/metrics``. Now a path that is not one of the app's routes is labelled ``other``.
"""

from __future__ import annotations

import concurrent.futures as cf
import secrets

import httpx
import psutil
import pytest

from conftest import replica_pids

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def ingress_rss() -> int:
    pids = [pid for name, pid in replica_pids("mmrm", "ingress").items()]
    assert pids, "no ingress replica found"
    return sum(psutil.Process(p).memory_info().rss for p in pids)


def test_made_up_paths_do_not_grow_metrics_or_memory(service: dict) -> None:
    url = service["url"]

    def burst(n: int) -> list[int]:
        def one(i: int) -> int:
            # 2 KB of random path, NUL-free but otherwise arbitrary: each one distinct
            return c.get(f"/{secrets.token_hex(1024)}").status_code
        with cf.ThreadPoolExecutor(8) as ex:
            return list(ex.map(one, range(n)))

    with httpx.Client(base_url=url, timeout=60) as c:
        assert set(burst(300)) == {401}  # warm: the "other" series exists, allocators settle
        metrics_before = len(c.get("/metrics").content)
        rss_before = ingress_rss()
        codes = burst(3000)
        metrics_after = c.get("/metrics").text
    assert set(codes) == {401}
    assert len(metrics_after.encode()) - metrics_before < 2048, "metrics grew with made-up paths"
    # No label value is a caller's path: every route label of the 401 series is a template or "other".
    routes = {line.split('route="', 1)[1].split('"', 1)[0] for line in metrics_after.splitlines()
              if line.startswith("mmrm_errors_total{") and 'kind="unauthorized"' in line}
    assert routes and all(r == "other" or (r.startswith("/") and len(r) < 64) for r in routes), routes
    assert "other" in routes
    growth = (ingress_rss() - rss_before) / MIB
    assert growth < 20, f"ingress grew by {growth:.1f} MiB over 3000 made-up paths"
