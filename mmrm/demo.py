"""The README's first command: build the digits demo reward model if absent, serve it on an
embedded local Ray, score a real held-out digit image over HTTP, and print a curl example."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from mmrm.train.digits import PROMPT, build_demo_model


def write_demo_config(workdir: Path, port: int) -> Path:
    """The demo's serve config: one reward model, local images allowed only from the demo data."""
    cfg = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "mmrm",
            "route_prefix": "/",
            "import_path": "mmrm.serve.app:build_app",
            "args": {
                "models": [{"name": "digits", "checkpoint": str(workdir / "model"), "num_cpus": 1,
                            "max_batch_size": 32, "batch_wait_timeout_s": 0.01}],
                "limits": {"media": {"allowed_roots": [str(workdir / "data")]}},
            },
        }],
    }
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_demo(workdir: Path, *, epochs: int = 5, limit: int | None = None, port: int = 8000,
             keep_serving: bool = True, console: Any = None) -> dict[str, Any]:
    from mmrm.client import Client
    from mmrm.rm.types import Pair
    from mmrm.serve.run import start

    workdir = Path(workdir).resolve()
    say = console.print if console is not None else print
    say(f"[1/3] demo reward model: {workdir / 'model'} (trained if absent: about a CPU minute)")
    model_dir = build_demo_model(workdir, epochs=epochs, limit=limit)
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    say(f"      held-out pairwise accuracy: {metrics.get('eval_accuracy')}")
    config = write_demo_config(workdir, port)
    say(f"[2/3] serving {config} on an embedded local Ray")
    addr = start(config)
    row = json.loads((workdir / "data" / "eval.jsonl").read_text().splitlines()[0])
    image = str((workdir / "data" / row["images"][0]).resolve())
    prompt = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": PROMPT}]}]
    say(f"[3/3] POST {addr['url']}/v1/compare with the held-out image {image} (mmrm.client)")
    with Client(base_url=addr["url"], token=None) as client:
        res = client.compare([Pair(prompt=prompt, response_a=row["chosen"], response_b=row["rejected"])], model="digits")[0]
    res.raise_for_invalid()  # the service answers per item: a pair it could not score says why here
    out = {
        "image": image,
        "chosen": row["chosen"],
        "rejected": row["rejected"],
        "reward_chosen": res.details["reward_a"],
        "reward_rejected": res.details["reward_b"],
        "p_chosen_beats_rejected": res.prob_a_wins,
        "held_out_pairwise_accuracy": metrics.get("eval_accuracy"),
        "provenance": res.provenance.model_dump(),
    }
    print(json.dumps(out, indent=2), flush=True)
    score_body = {"model": "digits", "items": [{"prompt": prompt, "response": row["chosen"]}]}
    curl = (f"curl -s {addr['url']}/v1/score -H 'Content-Type: application/json' -d "
            + shlex.quote(json.dumps(score_body)))
    print("\nTry it yourself:\n" + curl, flush=True)
    if keep_serving:
        import signal
        import threading

        from ray import serve

        say(f"\nserving on {addr['url']} (OpenAPI at {addr['url']}/docs); Ctrl-C to stop")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        serve.shutdown()
    return out
