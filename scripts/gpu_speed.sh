set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then python -m pip install -q --no-index --no-deps .whl/*.whl; fi
SHIM=$(mktemp -d); mkdir -p "$SHIM/mmrm"; cp mmrm/*.py "$SHIM/mmrm/"
for d in rm judges train serve eval; do ln -s "$PWD/$d" "$SHIM/mmrm/$d"; done
export PYTHONPATH="$SHIM"
python -P benchmarks/speed.py --measures matmul,inproc,group --out "$OUT/speed-gpu.json" > "$OUT/speed-gpu.log" 2>&1; echo "rc $?"
tail -5 "$OUT/speed-gpu.log"
python -c "import json; d=json.load(open('$OUT/speed-gpu.json')); print(json.dumps({k: d[k] for k in d if k not in ('machine','args')})[:3000])"
