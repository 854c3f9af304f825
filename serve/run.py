"""Run a serve config file on an embedded single-node Ray (``mmrm serve CONFIG``)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import Any

from mmrm.serve.config import ServeFile, load_serve_file

log = logging.getLogger("mmrm.serve")


def start(config: ServeFile | str | Path, *, host: str | None = None, port: int | None = None,
          num_cpus: int | None = None) -> dict[str, Any]:
    """Start Ray (if needed) and Serve, deploy every application of the file; return the HTTP address.

    Binds 127.0.0.1 unless the file's ``http_options.host`` (or ``host``) says otherwise. A Ray
    started here listens on loopback only (``start_local_ray``); an already running one is used as is.
    """
    import ray
    from ray import serve

    from mmrm.serve.app import build_app

    sf = config if isinstance(config, ServeFile) else load_serve_file(config)
    http = {"host": "127.0.0.1", "port": 8000, **sf.http_options}
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    if not ray.is_initialized():
        start_local_ray(num_cpus=num_cpus)
    serve.start(http_options={"host": http["host"], "port": int(http["port"])})
    for app, cfg in sf.mmrm_apps():
        serve.run(build_app(app.args), name=app.name, route_prefix=app.route_prefix, blocking=False)
    return {"host": http["host"], "port": int(http["port"]), "url": f"http://{http['host']}:{http['port']}"}


LOOPBACK = "127.0.0.1"


def start_local_ray(*, num_cpus: int | None = None) -> None:
    """Start this process's own single-node Ray, reachable on loopback only and with token auth on.

    Each step works around a Ray 2.60 default (files named under site-packages/ray/); drop a step
    when Ray gets a single switch for a loopback-only node.
    """
    # Ray binds its gRPC servers (GCS, raylet, every worker), its agents and its metrics servers to
    # loopback only when the node address IS 127.0.0.1, and to every interface otherwise
    # (dashboard/agent.py `grpc_ip`, _private/runtime_env/agent/main.py, dashboard/head.py
    # `_setup_metrics`, autoscaler/_private/monitor.py). But ray.init turns a loopback
    # `_node_ip_address` into the routable address (_private/services.py resolve_ip_for_localhost ->
    # get_node_ip_address) unless ray_constants.ENABLE_RAY_CLUSTER is false, which this variable
    # sets when ray is imported; the attribute covers a ray imported before this call.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    # The dashboard agent's Prometheus exporter answers anyone, without Ray's token
    # (dashboard/modules/reporter/reporter_agent.py). This variable makes the raylet start the agent
    # with --disable-metrics-collection (dashboard/agent.py). mmrm's own /metrics is the app's.
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    # Ray 2.60 turns token auth on for a new local cluster unless RAY_AUTH_MODE says otherwise
    # (_private/authentication/authentication_token_setup.py enable_token_auth_by_default). Not set
    # here: once ray is imported, only that function makes the setting reach Ray's C++ config.
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode.lower() == "token":
        _private_token_file()
    else:
        log.warning("RAY_AUTH_MODE=%s: Ray's own ports answer any local user without a token", mode)
    # address="local": always a Ray of our own, never one named by RAY_ADDRESS or a `ray start`
    # cluster (what is set up here holds only for a Ray this process starts).
    # Child workers inherit this environment, which is how auth.token_env reaches the ingress.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             log_to_driver=True, _node_ip_address=LOOPBACK,
             runtime_env={"worker_process_setup_hook": "mmrm.serve.run.replica_grpc_on_loopback"})
    if ray.util.get_node_ip_address() != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"Ray started on {ray.util.get_node_ip_address()}, not {LOOPBACK}: its ports "
                           "would listen beyond loopback. This Ray version needs another switch.")


def replica_grpc_on_loopback() -> None:
    """Ray worker setup hook: Serve replicas start their gRPC server on loopback, not on every interface.

    Ray 2.60's replica binds its inter-deployment gRPC server to "[::]:0" whatever the node address
    (serve/_private/replica.py `_on_initialized`, via ray/_common/tls_utils.py
    add_port_to_grpc_server); callers connect to node address:port, here 127.0.0.1. The hook runs in
    each worker before any actor code is imported, so replica.py picks up the wrapped function.
    """
    import ray._common.tls_utils as tls_utils

    bind = tls_utils.add_port_to_grpc_server

    def on_loopback(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{LOOPBACK}:{address.removeprefix('[::]:')}"
        return bind(server, address)

    tls_utils.add_port_to_grpc_server = on_loopback


def _private_token_file() -> None:
    """Ray's token file, when it uses one, readable by this user only (0600).

    Ray writes a new token with a plain open(path, "w") (authentication_token_setup.py
    generate_and_save_token), i.e. 0644 under the usual umask: any local user could read it. So the
    file is written here first, 0600, with the token Ray would generate
    (authentication_token_generator.py: secrets.token_hex(32)), and an existing one is tightened.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return  # the token comes from the environment: no file
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named) if named else Path.home() / ".ray" / "auth_token"  # Ray's default path
    if not named and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another Ray start wrote it just now
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    if path.exists():
        path.chmod(0o600)


def serve_forever(config: str | Path, **kw: Any) -> None:
    """Start and block until SIGINT/SIGTERM, then shut Serve down gracefully (replicas drain)."""
    from ray import serve

    addr = start(config, **kw)
    log.warning("mmrm serving on %s", addr["url"])
    print(f"mmrm serving on {addr['url']} (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
