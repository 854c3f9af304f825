"""``mmrm serve`` exposes nothing of Ray's beyond loopback, and keeps Ray's token file private.

A real ``mmrm serve CONFIG`` process (the console script), on a config with the default host, starts
its own Ray (serve/run.py ``start_local_ray`` uses ``address="local"``, so it never joins the test
session's cluster, RAY_ADDRESS or not). Once ``/healthz`` answers, every listening socket of the
whole process tree (the CLI, GCS, raylet, dashboard and runtime-env agents, monitor, Serve's
controller, proxy and replicas) is read with psutil, and each must be on a loopback address. $HOME
is a fresh folder, so the token file Ray uses (``~/.ray/auth_token``) is the one this start wrote.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from helpers import free_port, wait_until

pytestmark = pytest.mark.slow

MMRM = Path(sys.executable).with_name("mmrm")  # the console script of this environment
START_TIMEOUT_S = 240  # ~40 s seen on 2 busy cores; the bound only keeps a hang from lasting forever
# Ray 2.60 runs two Prometheus servers it has no switch for: the autoscaler monitor's
# (autoscaler/_private/monitor.py) and the dashboard head's (dashboard/head.py _setup_metrics). They
# answer without a token, read-only, and on loopback here. (Each has a fixed port, so a second Ray
# on the machine may hold it and they are then absent.)
METRICS_ONLY = ("monitor.py", "dashboard.py")


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if addr.version == 6 and addr.ipv4_mapped:  # a dual-stack socket bound to ::ffff:127.0.0.1
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _describe(p: psutil.Process) -> str:
    cmd = p.cmdline()
    script = next((Path(a).name for a in cmd if a.endswith(".py")), "")
    return f"{p.pid} {p.name()} {script}".strip()


def _listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process, address, port) of every listening TCP socket of these processes."""
    out = []
    for p in procs:
        try:
            who = _describe(p)
            out += [(who, c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass  # a worker that exited meanwhile
    return out


def _plain_http_status(port: int) -> str:
    """The status line a GET / without credentials gets on 127.0.0.1:port ('' if not HTTP/1)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        try:
            head = s.recv(64)
        except (TimeoutError, ConnectionResetError):
            return ""
    return head.split(b"\r\n")[0].decode("latin-1") if head.startswith(b"HTTP/1.") else ""


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT (Serve drains, Ray shuts down), then kill whatever of the tree is left."""
    try:
        procs = _tree(proc.pid)
    except psutil.NoSuchProcess:
        procs = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        try:
            if p.is_running():
                p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def test_mmrm_serve_listens_on_loopback_only_and_keeps_the_token_private(reward_checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "serve.yaml"  # no http_options.host: mmrm's default, 127.0.0.1
    config.write_text(yaml.safe_dump({"http_options": {"port": port}, "applications": [{
        "name": "mmrm", "route_prefix": "/", "import_path": "mmrm.serve.app:build_app",
        "args": {"models": [{"name": "tiny", "checkpoint": str(reward_checkpoint), "num_cpus": 1}]}}]}))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["RAY_ADDRESS"] = "127.0.0.1:1"  # nothing there: starting its own Ray must not depend on this
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)  # Ray's defaults: token auth on, token file under $HOME
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(MMRM), "serve", str(config), "--num-cpus", "2"], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, f"mmrm serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

        wait_until(healthy, timeout=START_TIMEOUT_S, interval=1, ignore=(httpx.TransportError,),
                   message=lambda: f"no /healthz:\n{log.read_text()[-4000:]}")
        procs = _tree(proc.pid)
        names = {p.name() for p in procs}
        # Its own Ray: the GCS and the raylet are children of this CLI process, not of the session's.
        assert {"gcs_server", "raylet"} <= names, names
        listening = _listening(procs)
        report = "\n".join(f"  {who}: {ip}:{p}" for who, ip, p in sorted(listening, key=lambda x: x[2]))
        assert port in {p for _, _, p in listening}, f"Serve's port {port} not among:\n{report}"
        beyond = [(who, ip, p) for who, ip, p in listening if not _is_loopback(ip)]
        assert not beyond, f"listening beyond loopback:\n{report}"

        # Nothing but Serve answers an HTTP request without Ray's token (gRPC servers do not speak
        # HTTP/1 at all; Ray checks their token itself), apart from the two metrics servers above.
        refused = 0
        for who, _, p in listening:
            if p == port or who.endswith(METRICS_ONLY):
                continue
            status = _plain_http_status(p)
            assert not status or status.split()[1] in {"401", "403"}, f"{who} on {p} answers {status!r}"
            refused += bool(status)
        assert refused, f"no Ray HTTP endpoint refused a request without the token: is token auth on?\n{report}"

        token = home / ".ray" / "auth_token"
        assert token.is_file(), "Ray 2.60's default token auth left no token file"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600, oct(token.stat().st_mode)
        assert len(token.read_text().strip()) == 64
    finally:
        _stop(proc)
