"""The shared test helpers that other tests lean on: wait_until and free_port."""

from __future__ import annotations

import socket
import time

import pytest
from helpers import WaitTimeout, free_port, wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = []

    def third_time() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert wait_until(third_time, timeout=5, interval=0.01) == 3
    assert wait_until(lambda: "now", timeout=0) == "now"  # timeout 0 still asks once


def test_wait_until_times_out_with_its_message_as_an_assertion() -> None:
    t0 = time.monotonic()
    log = ["starting"]
    with pytest.raises(AssertionError, match=r"not ready: starting, still starting \(waited 0.3 s\)") as ei:
        wait_until(lambda: log.append("still starting"), timeout=0.3, interval=0.05,
                   message=lambda: "not ready: " + ", ".join(log[:2]))  # built at the timeout, not before
    assert 0.3 <= time.monotonic() - t0 < 2
    assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, WaitTimeout)


def test_wait_until_ignores_only_the_errors_it_is_told_to() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(WaitTimeout) as ei:
        wait_until(refused, timeout=0.1, interval=0.02, ignore=(OSError,))
    assert isinstance(ei.value.__cause__, ConnectionRefusedError)  # the last ignored error is kept
    with pytest.raises(ValueError, match="dead"):  # anything else ends the wait at once
        wait_until(lambda: (_ for _ in ()).throw(ValueError("dead")), timeout=30, ignore=(OSError,))


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
