"""The runner on Ray Data (map_batches over an actor pool, one model per actor) on the session's
Ray cluster: the same results as in-process, written incrementally, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmrm.eval.loaders import load_preference
from mmrm.eval.runner import run_eval_ray
from mmrm.eval.scorers import RewardModelSpec
from mmrm.eval.store import ResultStore


@pytest.mark.slow
def test_ray_data_runner_matches_in_process(ray_cluster, tmp_path: Path, reward_checkpoint: Path,
                                            digits_eval_data: Path) -> None:
    items = load_preference(digits_eval_data, benchmark="digits", limit=12)
    spec = RewardModelSpec(checkpoint=reward_checkpoint, device="cpu", media_roots=[digits_eval_data.parent])
    store = ResultStore(tmp_path / "r.jsonl")
    progress: list[tuple[int, int]] = []
    st = run_eval_ray(items, spec, store, variants=("original", "blank"), batch_size=4, num_actors=1,
                      progress=lambda d, t: progress.append((d, t)))
    assert (st.scored, st.total, st.invalid) == (24, 24, 0)
    assert st.forward_calls == 6 and st.batches >= 1 and progress[-1] == (24, 24)
    recs = store.records()
    assert len(recs) == 24 and {r["scorer_key"] for r in recs} == {spec.key()}

    local = spec.build()
    direct = local.compare([it.pair for it in items])
    by_key = {r["pair_key"]: r for r in recs if r["variant"] == "original"}
    for it, d in zip(items, direct):
        assert by_key[it.key]["prob_a_wins"] == pytest.approx(d.prob_a_wins, abs=1e-5)

    again = run_eval_ray(items, spec, store, variants=("original", "blank"), batch_size=4)
    assert (again.scored, again.already_done) == (0, 24)
