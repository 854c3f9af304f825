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

