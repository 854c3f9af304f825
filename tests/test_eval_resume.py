"""Kill-and-resume: a real ``mmrm eval run`` process, SIGKILLed at random moments (model loading,
scoring, writing), then started again, ends with exactly one result per pair: none lost, none
duplicated, and only the missing ones recomputed (forward passes counted)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mmrm.eval.loaders import load_preference
from mmrm.eval.store import ResultStore


@pytest.mark.slow
def test_sigkill_at_random_times_then_resume(tmp_path: Path, reward_checkpoint: Path, digits_eval_data: Path) -> None:
    n_pairs = len(load_preference(digits_eval_data))
    out = tmp_path / "out"
    store = ResultStore(out / "results.jsonl")
    batch = 2

    def cmd(summary: Path) -> list[str]:
        return [sys.executable, "-m", "mmrm.eval.cli", "run", "preference", str(digits_eval_data),
                "--checkpoint", str(reward_checkpoint), "--out", str(out), "--batch-size", str(batch),
                "--device", "cpu", "--no-report", "--summary-json", str(summary)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(1234)
    kills = []
    for attempt in range(4):
        p = subprocess.Popen(cmd(tmp_path / f"s{attempt}.json"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = time.monotonic()
        if attempt == 0:  # the first kill lands in start-up (imports, model loading take longer than this)
            time.sleep(rng.uniform(0.3, 1.2))
        else:  # later kills land while scoring and writing: after this run's first write
            size0 = store.path.stat().st_size if store.path.exists() else 0
            while p.poll() is None and (not store.path.exists() or store.path.stat().st_size == size0):
                if time.monotonic() - start > 300:
                    break
                time.sleep(0.005)
            # soon after a write, so the kill lands mid-scoring even on a fast machine (15 batches)
            time.sleep(rng.uniform(0.0, 0.03))
        if p.poll() is not None:  # it finished before the kill: nothing left to interrupt
            assert p.returncode == 0, p.stderr.read().decode()[-3000:] if p.stderr else ""
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        recs, st = store.load()
        kills.append({"after_s": round(time.monotonic() - start, 2), "stored": len(recs), "torn_tail": st.torn_tail})
        assert st.corrupt == 0 and st.superseded == 0
        if (tmp_path / f"s{attempt}.json").exists():  # the kill came after the run had finished its work
            break
    assert kills, "no run was killed"
    assert any(0 < k["stored"] < n_pairs for k in kills), kills  # at least one kill interrupted the scoring

    before, _ = store.load()
    summary = tmp_path / "final.json"
    res = subprocess.run(cmd(summary), env=env, capture_output=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    s = json.loads(summary.read_text())
    missing = n_pairs - len(before)
    assert s["already_done"] == len(before), kills
    assert s["scored"] == missing  # none recomputed without need
    assert s["forward_calls"] == math.ceil(missing / batch)  # one backbone pass per batch of `batch` pairs
    recs, st = store.load()
    assert len(recs) == n_pairs  # none lost
    assert st.valid == n_pairs and st.superseded == 0 and st.corrupt == 0 and not st.torn_tail  # none duplicated
    assert {k[1] for k in recs} == {it.key for it in load_preference(digits_eval_data)}
