"""Shared fixtures: tiny real-architecture models are built ONCE per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoint directories of the tiny qwen2, qwen2_vl and qwen2_5_vl models (seed 0)."""
    from mmrm.rm.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny_model(arch, root / arch, seed=0) for arch in ("qwen2", "qwen2_vl", "qwen2_5_vl")}


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["qwen2"]


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["qwen2_vl"]


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["qwen2_5_vl"]


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints in the published reward-model layouts (mmrm.rm.tiny_layouts), built once."""
    from mmrm.rm import tiny_layouts as tl

    root = tmp_path_factory.mktemp("published")
    return {
        "skywork": tl.build_value_head(root / "skywork-vl-reward"),
        "trl_text": tl.build_value_head(root / "trl-text", arch="qwen2", head_format="bin"),
        "docreward": tl.build_docreward(root / "docreward"),
        "openrlhf": tl.build_openrlhf(root / "openrlhf", value_head_prefix="value_head", normalize=(0.25, 2.5)),
        "seq_cls_vl": tl.build_vl_sequence_classification(root / "seqcls-vl"),
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # GPU tests run on a GPU machine; elsewhere they are reported as skipped with the reason.
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------------
# vLLM: two real vLLM (CPU) servers per test session, both on tiny Qwen2-VL models and serving images
# (tests/vllm_server.py): a generating judge and a pooling reward backbone. Text-only tests use
# them with text inputs. They live in their own venv (vLLM pins its own torch); CI pre-creates it
# with `python tests/vllm_server.py install`, and the fixtures create it when it is missing. Each
# server starts on first use only, so sessions that never touch vLLM never start one.


def _vllm_helpers():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import vllm_server as vs

    return vs


@pytest.fixture(scope="session")
def vllm_judge_model(tmp_path_factory: pytest.TempPathFactory, tiny_qwen2_vl: Path) -> Path:
    """The tiny Qwen2-VL with its judge labels lifted into the top 20 (``build_judge_model``)."""
    return _vllm_helpers().build_judge_model(tiny_qwen2_vl, tmp_path_factory.mktemp("vllm-judge") / "tiny-vl-judge")


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, vllm_judge_model: Path):
    """A generating vLLM server for :func:`vllm_judge_model` on 127.0.0.1 (``.base_url``, ``.model``)."""
    vs = _vllm_helpers()
    server = vs.start_server(vllm_judge_model, log_path=tmp_path_factory.mktemp("vllm") / "server.log",
                             served_name="tiny-vl-judge", extra_args=vs.JUDGE_ARGS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_pooling_server(tmp_path_factory: pytest.TempPathFactory, reward_checkpoint: Path):
    """A pooling vLLM server for the backbone of :func:`reward_checkpoint` (``mmrm vllm-view``)."""
    from mmrm.rm.engines.vllm import backbone_view

    vs = _vllm_helpers()
    view = backbone_view(reward_checkpoint, tmp_path_factory.mktemp("vllm-view") / "backbone")
    server = vs.start_server(view, log_path=tmp_path_factory.mktemp("vllm-pool") / "server.log",
                             served_name="tiny-rm", extra_args=vs.POOLING_ARGS)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# One Ray cluster and one running mmrm service per test session.

SERVICE_TOKEN_ENV = "MMRM_TEST_API_TOKEN"


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs Ray (Serve, Train).

    Logical CPUs are oversubscribed (the machine has 2 cores): they only decide placement, and each
    replica still runs torch with the threads of its own ``num_cpus``. There must be room for every
    Serve application the session deploys AND the 2 Ray Train workers, or Ray Train waits forever
    (16 ran out once the layouts and reasoning apps came; module-scoped apps now also delete
    themselves when their tests are done).
    """
    import secrets

    import ray

    # Ray workers inherit the environment at start-up: that is how the service's token reaches the
    # ingress (auth.token_env), so it is set before the cluster starts.
    os.environ.setdefault(SERVICE_TOKEN_ENV, secrets.token_hex(16))
    ray.init(num_cpus=32, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def reward_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_qwen2_vl: Path) -> Path:
    """A saved mmrm reward checkpoint on the tiny Qwen2-VL (random seeded head)."""
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_backbone(tiny_qwen2_vl, seed=3).save_pretrained(tmp_path_factory.mktemp("rm") / "tiny-rm")


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def service(ray_cluster, reward_checkpoint: Path, tiny_qwen2_vl: Path, media_root: Path) -> dict:
    """The mmrm service on real Ray Serve + HTTP: a reward model, an hf judge, and a rate-limited app."""
    from helpers import free_port

    from mmrm.serve.config import ServeFile
    from mmrm.serve.run import start

    token = os.environ[SERVICE_TOKEN_ENV]
    model = {"name": "tiny", "checkpoint": str(reward_checkpoint), "num_cpus": 1, "max_batch_size": 16,
             "batch_wait_timeout_s": 0.02, "max_ongoing_requests": 64}
    args = {
        "models": [model],
        "judges": [{"name": "judge", "backend": {"type": "hf", "model": str(tiny_qwen2_vl)},
                    "judge": {"min_label_mass": 0.0}, "num_cpus": 1}],
        "limits": {"media": {"allowed_roots": [str(media_root)]}, "max_body_bytes": 4 * 1024 * 1024, "max_items": 64},
        "admission": {"max_inflight": 6, "retry_after_s": 2},
        "auth": {"token_env": SERVICE_TOKEN_ENV},
    }
    limited = {
        "models": [{**model, "name": "tiny-limited", "num_cpus": 0.5}],
        "auth": {"token_env": SERVICE_TOKEN_ENV, "protect_metrics": True, "rate_limit": {"requests_per_s": 0.2, "burst": 2}},
    }
    sf = ServeFile.model_validate({"applications": [
        {"name": "mmrm", "route_prefix": "/", "import_path": "mmrm.serve.app:build_app", "args": args},
        {"name": "limited", "route_prefix": "/limited", "import_path": "mmrm.serve.app:build_app", "args": limited},
    ]})
    addr = start(sf, port=free_port())
    return {"url": addr["url"], "token": token, "headers": {"Authorization": f"Bearer {token}"},
            "checkpoint": reward_checkpoint, "media_root": media_root, "judge_model": tiny_qwen2_vl}


@pytest.fixture(scope="session")
def live_metrics_text(service: dict) -> str:
    """The service's /metrics after it has served scoring traffic (for dashboard checks)."""
    import httpx

    h = service["headers"]
    body = {"model": "tiny", "items": [{"prompt": "warm", "response": "up"}]}
    httpx.post(service["url"] + "/v1/score", json=body, headers=h, timeout=60).raise_for_status()
    httpx.post(service["url"] + "/v1/score", json={"model": "nope", "items": body["items"]}, headers=h, timeout=60)
    httpx.post(service["url"] + "/v1/score", json=body, timeout=60)  # 401: errors move too
    return httpx.get(service["url"] + "/metrics", timeout=30).text


# --------------------------------------------------------------------------------------------------
# Reliability tests (tests/test_reliability_*.py, tests/test_fuzz_*.py): one more application, "rel"
# at /rel, on the SAME Ray cluster and Serve instance as `service`. It has what the main app lacks:
# a model with 2 replicas (kill one mid-batch), media over http(s) switched ON (so the address
# rules are what refuses loopback/private/metadata URLs, not the switch), a small media byte cap,
# Serve's own queue kept short (its back-pressure must map to 503 too), a per-token rate limit, and
# an `openai` judge whose server misbehaves on purpose (StubServer below).

REL_PREFIX = "/rel"


class StubServer:
    """A real HTTP server on 127.0.0.1 playing two outside parties.

    * An OpenAI-compatible judge server (``POST /v1/chat/completions``) whose behaviour is chosen by
      a marker in the judged text: ``[[sleep]]`` answers after the client's timeout, ``[[garbage]]``
      sends a body that is not JSON, ``[[500]]`` a server error, ``[[shape]]`` JSON of the wrong
      shape, ``[[nologprobs]]`` a completion without logprobs; anything else gets a well-formed
      logprobs answer (P("4") = 0.6, P("5") = 0.4).
    * A media host (``GET /img.png``, ``GET /redirect?to=URL``) that hostile-URL tests point at: it
      records every request, so a test can prove the service never connected to it.
    """

    def __init__(self) -> None:
        import http.server
        import json
        import math
        import threading
        from urllib.parse import parse_qs, urlsplit

        from helpers import image_array, png_bytes

        self.stop = threading.Event()
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.auth_headers: list[str | None] = []
        png = png_bytes(image_array(28, 28, seed=7))
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts do)
                    pass

            def do_GET(self) -> None:  # noqa: N802
                stub.requests.append(("GET", self.path))
                url = urlsplit(self.path)
                if url.path == "/img.png":
                    self._send(200, png, "image/png")
                elif url.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(url.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:  # noqa: N802
                stub.requests.append(("POST", self.path))
                stub.auth_headers.append(self.headers.get("Authorization"))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/").endswith("/tokenize"):
                    return self._send(404, b'{"error": "no tokenizer here"}')
                text = body.decode("utf-8", "replace")
                if "[[sleep]]" in text:
                    stub.stop.wait(30)  # far past the backend's timeout_s
                    return self._send(200, b"{}")
                if "[[garbage]]" in text:
                    return self._send(200, b"<html>this is not json{", "text/html")
                if "[[500]]" in text:
                    return self._send(500, b'{"error": "the model fell over"}')
                if "[[shape]]" in text:
                    return self._send(200, json.dumps({"choices": [], "id": 3}).encode())
                message = {"role": "assistant", "content": "4"}
                if "[[nologprobs]]" in text:
                    choice = {"index": 0, "message": message, "finish_reason": "length"}
                else:
                    top = [{"token": "4", "logprob": math.log(0.6)}, {"token": "5", "logprob": math.log(0.4)}]
                    choice = {"index": 0, "message": message, "finish_reason": "length",
                              "logprobs": {"content": [{"token": "4", "logprob": math.log(0.6), "top_logprobs": top}]}}
                self._send(200, json.dumps({"id": "stub", "object": "chat.completion", "choices": [choice],
                                            "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode())

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def stub_server():
    s = StubServer()
    try:
        yield s
    finally:
        s.close()


def rel_serve_args(checkpoint: Path, media_root: Path, stub_url: str) -> dict:
    """The "rel" application's mmrm ``args`` block (a ServiceConfig)."""
    return {
        "models": [{"name": "tiny2", "checkpoint": str(checkpoint), "num_replicas": 2, "num_cpus": 0.5,
                    "max_batch_size": 16, "batch_wait_timeout_s": 0.02,
                    "max_ongoing_requests": 4, "max_queued_requests": 4}],
        "judges": [{"name": "flaky", "num_cpus": 0.25, "judge": {"min_label_mass": 0.0},
                    "backend": {"type": "openai", "base_url": stub_url + "/v1", "model": "stub-judge",
                                "timeout_s": 5.0, "max_retries": 0, "prefill": "none",
                                "api_key_env": SERVICE_TOKEN_ENV}}],
        "limits": {"media": {"allowed_roots": [str(media_root)], "allow_http": True, "max_bytes": 256 * 1024,
                             "http_timeout_s": 3},
                   "max_body_bytes": 8 * 1024 * 1024, "max_items": 64},
        "admission": {"max_inflight": 16, "retry_after_s": 1},
        "auth": {"token_env": SERVICE_TOKEN_ENV, "protect_metrics": True,
                 "rate_limit": {"requests_per_s": 40, "burst": 60}},
        "ingress_num_cpus": 0.25,
    }


def deploy_rel(args: dict, url: str) -> None:
    """(Re)deploy the "rel" application on the running Serve instance; returns when ``url`` (its root
    on the proxy) answers: serve.run returns once the app runs, a moment before the proxy routes to it."""
    import httpx
    from helpers import wait_until
    from ray import serve

    from mmrm.serve.app import build_app

    serve.run(build_app(args), name="rel", route_prefix=REL_PREFIX, blocking=False)
    wait_until(lambda: httpx.get(url + "/healthz", timeout=10).status_code == 200, timeout=60, interval=0.2,
               message="the rel app is not routed by the proxy")


@pytest.fixture(scope="session")
def rel_service(service: dict, stub_server: StubServer) -> dict:
    """The "rel" application (see above), deployed beside `service` on the same cluster."""
    args = rel_serve_args(service["checkpoint"], service["media_root"], stub_server.url)
    deploy_rel(args, service["url"] + REL_PREFIX)
    return {**service, "url": service["url"] + REL_PREFIX, "root": service["url"], "args": args,
            "stub": stub_server, "model": "tiny2", "judge": "flaky"}


# --------------------------------------------------------------------------------------------------
# Offline evaluation (mmrm.eval): a small digits preference set with real images, built once.


@pytest.fixture(scope="session")
def digits_eval_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``eval.jsonl`` of the digits demo set (30 held-out pairs, real scanned digits as PNGs)."""
    from mmrm.train.digits import build_digits_dataset

    _, eval_file = build_digits_dataset(tmp_path_factory.mktemp("digits_eval"), seed=0, limit=150)
    return eval_file


# --------------------------------------------------------------------------------------------------
# RL adapters (tests/test_adapters*.py, tests/test_grpo*.py): one more application on the SAME Serve.
# OpenRLHF's and verl's clients send no Authorization header, so this app has no auth; it is sized with
# mmrm.rl.openrlhf.size_service for a small OpenRLHF run (4 prompts x 4 samples per step).

RL_COMPAT_ROLLOUT = {"rollout_batch_size": 4, "n_samples_per_prompt": 4}


@pytest.fixture(scope="session")
def rl_compat_service(service: dict) -> dict:
    """``{"url", "args", "sizing"}`` of an auth-less app at ``/rlcompat`` scoring with the session's checkpoint."""
    from ray import serve

    from mmrm.rl.openrlhf import size_service
    from mmrm.serve.app import build_app

    sizing = size_service(**RL_COMPAT_ROLLOUT)
    knobs = sizing.args()
    args = {
        "models": [{"name": "tiny", "checkpoint": str(service["checkpoint"]), "num_cpus": 1, "max_batch_size": 16,
                    "batch_wait_timeout_s": 0.02, **knobs["model"]}],
        "limits": {"media": {"allowed_roots": [str(service["media_root"])]}, **knobs["limits"]},
        "admission": knobs["admission"],
        "ingress_num_cpus": 0.25,
    }
    serve.run(build_app(args), name="rlcompat", route_prefix="/rlcompat", blocking=False)
    return {"url": service["url"] + "/rlcompat", "args": args, "sizing": sizing}


# --------------------------------------------------------------------------------------------------
# Reliability tests (continued): the processes of a running Serve application, for kill tests and RSS
# measurements (plain functions; the tests import them from conftest). Replicas are named
# actors in Serve's namespace; each pid is asked of the actor itself (``__ray_call__`` runs a function
# inside it), so a dead or restarting replica simply does not answer. Ray's state API would need the
# dashboard, which the test cluster does not run.


def _actor_pid(name: str) -> int:
    import ray

    h = ray.get_actor(name, namespace="serve")
    return ray.get(h.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)


def replica_pids(app: str, deployment: str) -> dict[str, int]:
    """Live Serve replicas of one deployment: actor name -> process id."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == "serve" and a["name"].startswith(prefix):
            try:
                out[a["name"]] = _actor_pid(a["name"])
            except Exception:  # noqa: BLE001 - dead, restarting or not yet started: not live
                continue
    return out


def wait_for_replicas(app: str, deployment: str, n: int, exclude: frozenset[int] = frozenset(),
                      timeout: float = 120) -> dict[str, int]:
    """At least ``n`` live replicas whose pid is not in ``exclude`` (e.g. one that was killed)."""
    from helpers import wait_until

    def live() -> tuple[dict[str, int]] | None:  # a 1-tuple: truthy even when n == 0 and no replica lives
        reps = {k: v for k, v in replica_pids(app, deployment).items() if v not in exclude}
        return (reps,) if len(reps) >= n else None

    return wait_until(live, timeout=timeout, interval=0.5,
                      message=f"{app}/{deployment}: fewer than {n} live replicas")[0]


def service_pids(app: str) -> dict[str, int]:
    """Every process that serves ``app``: its replicas (ingress, models, judges) and Serve's proxy."""
    import ray

    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"]
        if a["namespace"] == "serve" and (name.startswith(f"SERVE_REPLICA::{app}#") or name.startswith("SERVE_PROXY_ACTOR")):
            out[name] = _actor_pid(name)
    return out
