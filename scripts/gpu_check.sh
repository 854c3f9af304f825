#!/usr/bin/env bash
# Run the GPU-marked tests and the GPU-capable suites on a CUDA machine that has torch and
# transformers but no Ray or vLLM (such machines cannot install them). Results go to $OUT if set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mmrm-gpu-out}
mkdir -p "$OUT"
# Wheels the GPU image lacks (pydantic, tenacity), carried in .whl/ when present.
if ls .whl/*.whl >/dev/null 2>&1; then python -m pip install -q --no-index --no-deps .whl/*.whl; fi
# Import mmrm from this tree without installing it: a package folder that links the subpackages.
SHIM=$(mktemp -d)
mkdir -p "$SHIM/mmrm"
cp mmrm/*.py "$SHIM/mmrm/"
for d in rm judges train serve eval; do ln -s "$PWD/$d" "$SHIM/mmrm/$d"; done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a "$OUT/env.txt"
python -P -m pytest -p no:cacheprovider -o addopts="" -q -m gpu tests/test_reward_model.py tests/test_train.py 2>&1 | tee "$OUT/gpu_tests.txt" | tail -15
python -P -m pytest -p no:cacheprovider -o addopts="" -q tests/test_reward_model.py tests/test_tiny_models.py tests/test_types.py tests/test_judges.py 2>&1 | tee "$OUT/cpu_suites_on_gpu_machine.txt" | tail -8
# Absolute figures for the digits demo on this GPU (BENCHMARKS.md).
[ "${SKIP_DIGITS:-0}" = 1 ] || python benchmarks/digits_demo.py --workdir /tmp/mmrm-digits-bench > "$OUT/digits_gpu.json" 2> "$OUT/digits_gpu.log"; tail -3 "$OUT/digits_gpu.log"
cat "$OUT/digits_gpu.json"
