#!/usr/bin/env bash
# Create .venv with mmrm and its dependencies. Idempotent: a second run only checks.
#   scripts/setup.sh          the project (serve, score, train)
#   scripts/setup.sh --dev    + test dependencies and the separate vLLM (CPU) environment for judge tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Setuptools' editable install always adds a notice ("be careful with folders in your working
# directory with the same name as your package"): here the folder `mmrm/` IS the package's own
# folder, so the notice never applies; it is filtered by its message, every other warning still shows.
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch + torchvision first, pinned together: transformers' Qwen2-VL processors need a torchvision
# that imports beside torch (see the README's environment notes).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
  # OpenRLHF's and verl's own client code for tests/test_rl_clients.py, without their dependencies
  # (vLLM, DeepSpeed, ...), in a folder of its own: both wheels also ship top-level `tests` and
  # `scripts` packages, which must not land in the venv's site-packages.
  .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/rl-clients openrlhf==0.11.2 verl==0.9.1
  # What verl 0.9.1's DataProto and reward loop import beyond this venv (tests/test_verl_manager.py
  # checks they work beside the project's torch and transformers), in the same folder.
  .venv/bin/python -m pip install -q --no-deps --upgrade --target .venv/rl-clients tensordict==0.10.0 pyvers==0.1.0 \
    omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 orjson==3.13.0 codetiming==1.4.0
  if [ -f tests/vllm_server.py ]; then
    .venv/bin/python tests/vllm_server.py install
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
echo "mmrm installed in .venv ($(.venv/bin/python -c 'import mmrm; print(mmrm.__version__)'))"
