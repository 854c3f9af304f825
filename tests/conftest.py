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
# Judges: one real vLLM (CPU) OpenAI-compatible server per test session (tests/vllm_server.py).
# It lives in its own venv (vLLM pins its own torch); CI pre-creates it with
# `python tests/vllm_server.py install`, and the fixture creates it itself when it is missing.


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, tiny_qwen2: Path):
    """A running vLLM server for the text-only tiny Qwen2 on 127.0.0.1 (``.base_url``, ``.model``)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import vllm_server as vs

    server = vs.start_server(tiny_qwen2, log_path=tmp_path_factory.mktemp("vllm") / "server.log")
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
    replica still runs torch with the threads of its own ``num_cpus``.
    """
    import secrets

    import ray

    # Ray workers inherit the environment at start-up: that is how the service's token reaches the
    # ingress (auth.token_env), so it is set before the cluster starts.
    os.environ.setdefault(SERVICE_TOKEN_ENV, secrets.token_hex(16))
    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def service(ray_cluster, reward_checkpoint: Path, tiny_qwen2_vl: Path, media_root: Path) -> dict:
    """The mmrm service on real Ray Serve + HTTP: a reward model, an hf judge, and a rate-limited app."""
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
    addr = start(sf, port=_free_port())
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
