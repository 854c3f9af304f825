"""Run a serve config file on an embedded single-node Ray (``mmrm serve CONFIG``)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from mmrm.serve.config import ServeFile, load_serve_file

log = logging.getLogger("mmrm.serve")


def start(config: ServeFile | str | Path, *, host: str | None = None, port: int | None = None,
          num_cpus: int | None = None) -> dict[str, Any]:
    """Start Ray (if needed) and Serve, deploy every application of the file; return the HTTP address.

    Binds 127.0.0.1 unless the file's ``http_options.host`` (or ``host``) says otherwise.
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
        # Child workers inherit this environment, which is how auth.token_env reaches the ingress.
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)
    serve.start(http_options={"host": http["host"], "port": int(http["port"])})
    for app, cfg in sf.mmrm_apps():
        serve.run(build_app(app.args), name=app.name, route_prefix=app.route_prefix, blocking=False)
    return {"host": http["host"], "port": int(http["port"]), "url": f"http://{http['host']}:{http['port']}"}


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
