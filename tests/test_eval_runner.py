"""The resumable runner over real scorers, each passed as it is (a Scorer, no wrappers): an
in-process reward model (forward passes counted), a Judge (both orders), and the HTTP service
through a RemoteScorer; blank-image variants; reports with plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mmrm.eval.items import EvalItem
from mmrm.eval.loaders import MediaOptions, load_preference
from mmrm.eval.report import build_report, write_report
from mmrm.eval.runner import TRANSIENT_ERRORS, plan, run_eval
from mmrm.eval.scorers import RewardModelSpec, describe_scorer, scorer_key
from mmrm.eval.store import ResultStore
from mmrm.judges.backends.base import LabelReply
from mmrm.rm.media import MediaPolicy
from mmrm.rm.types import Provenance, ScoreResult


@pytest.fixture(scope="module")
def rm_scorer(reward_checkpoint: Path, digits_eval_data: Path):
    spec = RewardModelSpec(checkpoint=reward_checkpoint, device="cpu", media_roots=[digits_eval_data.parent], max_batch_size=32)
    scorer = spec.build()
    assert spec.key() == scorer_key(scorer)  # the key is known without loading the model
    return scorer


@pytest.fixture(scope="module")
def digits_items(digits_eval_data: Path) -> list[EvalItem]:
    return load_preference(digits_eval_data, benchmark="digits")


def test_run_stores_what_the_model_computes_and_resumes_without_recomputing(
        tmp_path: Path, rm_scorer, digits_items: list[EvalItem]) -> None:
    store = ResultStore(tmp_path / "r.jsonl")
    seen: list[tuple[int, int]] = []
    st = run_eval(digits_items, rm_scorer, store, batch_size=8, progress=lambda d, t: seen.append((d, t)))
    assert (st.scored, st.already_done, st.total, st.batches) == (30, 0, 30, 4)
    assert st.forward_calls == 4  # 8 pairs = 16 samples: one batched backbone pass per batch
    assert seen[0] == (0, 30) and seen[-1] == (30, 30)
    direct = rm_scorer.compare([it.pair for it in digits_items])
    recs = {r["pair_key"]: r for r in store.records()}
    for it, d in zip(digits_items, direct):
        r = recs[it.key]
        assert r["prob_a_wins"] == pytest.approx(d.prob_a_wins, abs=1e-6)
        assert r["verdict"] == ("a" if d.details["reward_a"] > d.details["reward_b"] else "b")
        assert r["scorer_key"] == scorer_key(rm_scorer) and r["chosen"] == it.chosen

    again = run_eval(digits_items, rm_scorer, store, batch_size=8)
    assert (again.scored, again.already_done, again.forward_calls) == (0, 30, 0)

    # lose 11 results (as a kill before their batch was written would): exactly those are redone
    lines = store.path.read_bytes().split(b"\n")
    store.path.write_bytes(b"\n".join(lines[:19]) + b"\n" + lines[19][:25])  # 19 whole lines + a torn one
    resumed = run_eval(digits_items, rm_scorer, store, batch_size=8)
    assert (resumed.already_done, resumed.scored) == (19, 11)
    assert resumed.forward_calls == math.ceil(11 / 8) and resumed.repaired_bytes == 25
    recs, lst = store.load()
    assert len(recs) == 30 and lst.valid == 30 and lst.corrupt == 0 and not lst.torn_tail


def test_blank_images_variant_and_report(tmp_path: Path, rm_scorer, digits_items: list[EvalItem],
                                         digits_eval_data: Path) -> None:
    store = ResultStore(tmp_path / "r.jsonl")
    items = digits_items[:12]
    st = run_eval(items, rm_scorer, store, variants=("original", "blank"), batch_size=6,
                  media_policy=MediaPolicy(allowed_roots=[digits_eval_data.parent]))
    assert st.scored == 24
    blank = [r for r in store.records() if r["variant"] == "blank"]
    assert len(blank) == 12 and all(r["invalid"] is None for r in blank)
    rep = build_report(store.records(), n_items=12, scorer=describe_scorer(rm_scorer), n_resamples=200)
    ir = rep["metrics"]["image_reliance"]
    assert ir["n"] == 12 and 0.0 <= ir["flip_rate"] <= 1.0
    assert rep["complete"] and rep["placeholder_note"] is None and rep["scorer"]["fingerprint"]
    # a report over a subset of the stored pairs, with the loader's current categories
    relabeled = [it.model_copy(update={"category": f"half {i % 2}"}) for i, it in enumerate(items[:6])]
    sub = build_report(store.records(), items=relabeled, n_resamples=50)
    assert sub["n_pairs"] == 6 and sub["n_items_expected"] == 6 and sub["metrics"]["image_reliance"]["n"] == 6
    assert [c["category"] for c in sub["metrics"]["per_category"]] == ["half 0", "half 1"]
    files = write_report(rep, tmp_path / "report")
    for k in ("per_category", "reliability", "score_hist"):
        assert files[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = files["markdown"].read_text()
    assert "![reliability diagram](reliability.png)" in md and "## Image reliance" in md
    assert "report.json" not in md and json.loads(files["json"].read_text())["n_pairs"] == 12
    assert "<img src='per_category.png'" in files["html"].read_text()


def test_placeholder_results_are_marked(tmp_path: Path, rm_scorer) -> None:
    rows = [{"id": i, "prompt": "Which digit?", "images": [f"missing/{i}.png"], "chosen": "The digit is 1.",
             "rejected": "The digit is 2."} for i in range(3)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_preference(tmp_path / "d.jsonl", media=MediaOptions(missing="placeholder"))
    store = ResultStore(tmp_path / "r.jsonl")
    run_eval(items, rm_scorer, store)
    recs = store.records()
    assert all(r["placeholder"] and r["placeholder_media"] for r in recs)
    rep = build_report(recs, n_resamples=50)
    assert rep["placeholder_pairs"] == 3 and "PLACEHOLDER" in rep["placeholder_note"]
    assert "Warning" in (write_report(rep, tmp_path / "rep")["markdown"].read_text())


# ------------------------------------------------------------------------------------------------
# A judge (the real Judge, both orders) over a deterministic stand-in backend.


class StubJudgeBackend:
    """Label probabilities from a rule: ``position`` always prefers the first response shown;
    ``content`` prefers the response containing GOOD, wherever it is shown."""

    engine = "stub"
    scorer_id = "stub"
    dtype = None
    supports_logprobs = True
    supports_json_schema = False
    supports_prefill = True

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def label_probs(self, requests: list) -> list[LabelReply]:
        out = []
        for r in requests:
            text = "".join(m.text for m in r.messages)
            first = text.split("<response_a>\n")[1].split("</response_a>")[0]
            if self.mode == "position":
                out.append(LabelReply(probs={"A": 0.7, "B": 0.2, "tie": 0.1}))
            elif "GOOD" in first:
                out.append(LabelReply(probs={"A": 0.9, "B": 0.05, "tie": 0.05}))
            else:
                out.append(LabelReply(probs={"A": 0.05, "B": 0.9, "tie": 0.05}))
        return out

    def generate(self, requests: list) -> list:
        raise NotImplementedError

    def check_labels(self, prefill: str, labels: tuple[str, ...]) -> None:
        return None

    def config_fingerprint(self) -> dict:
        return {"stub": self.mode}


def _text_items(tmp_path: Path, order: str) -> list[EvalItem]:
    rows = [{"id": i, "prompt": f"question {i}", "chosen": f"GOOD answer {i}", "rejected": f"poor answer {i}"} for i in range(10)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_preference(tmp_path / "t.jsonl", benchmark="text", order=order)  # type: ignore[arg-type]


def test_judge_swap_consistency_and_order_changes(tmp_path: Path) -> None:
    from mmrm.judges import Judge

    items = _text_items(tmp_path, "random")
    assert {it.chosen for it in items} == {"a", "b"}
    content = Judge("helpfulness", StubJudgeBackend("content"))
    position = Judge("helpfulness", StubJudgeBackend("position"))
    assert scorer_key(content) != scorer_key(position)
    store = ResultStore(tmp_path / "r.jsonl")
    run_eval(items, content, store)
    run_eval(items, position, store)
    good = build_report(store.records(scorer_key=scorer_key(content)), n_resamples=50)["metrics"]
    biased = build_report(store.records(scorer_key=scorer_key(position)), n_resamples=50)["metrics"]
    assert good["swap_consistency"] == 1.0 and good["accuracy"]["value"] == 1.0
    # the position-biased judge prefers "A" in both orders: inconsistent, debiased to exact ties (wrong)
    assert biased["swap_consistency"] == 0.0 and biased["tie_rate"] == 1.0 and biased["accuracy"]["value"] == 0.0
    # another presentation order is another question for a judge: those pairs are scored again
    swapped = _text_items(tmp_path, "swapped")
    todo, done = plan(swapped, scorer_key(content), store.load()[0], ["original"])
    assert done == sum(it.chosen == "b" for it in items) and len(todo) == 10 - done
    assert run_eval(swapped, content, store).scored == len(todo)
    assert {r["chosen"] for r in store.records(scorer_key=scorer_key(content))} == {"b"}


# ------------------------------------------------------------------------------------------------
# Over HTTP: the same numbers from the served model as from the in-process one


@pytest.mark.slow
def test_service_scorer_matches_in_process(tmp_path: Path, service: dict, rm_scorer,
                                           digits_eval_data: Path) -> None:
    from mmrm.client import Client, RemoteScorer

    items = load_preference(digits_eval_data, benchmark="digits", media=MediaOptions(inline=True), limit=8)
    with Client(base_url=service["url"], token=service["token"]) as client:
        remote = RemoteScorer(client, model="tiny", batch_size=4)
        assert describe_scorer(remote)["fingerprint"] == rm_scorer.fingerprint  # the key names the checkpoint
        # the served checkpoint and the same checkpoint in process share a key: their results are the same
        assert scorer_key(remote) == scorer_key(rm_scorer)
        store = ResultStore(tmp_path / "r.jsonl")
        st = run_eval(items, remote, store, batch_size=4)
    assert st.scored == 8 and st.invalid == 0
    local = rm_scorer.compare([it.pair for it in items])
    by_key = {r["pair_key"]: r for r in store.records()}
    for it, d in zip(items, local):
        assert by_key[it.key]["prob_a_wins"] == pytest.approx(d.prob_a_wins, abs=1e-5)


class RaisingScorer:
    """A scorer that raises on any batch holding a prompt with BOOM (a scorer bug, not an item error)."""

    provenance = Provenance(scorer="raising", kind="reward_model", fingerprint="x", mmrm_version="0", engine="test")

    def compare(self, pairs: list, *, references=None) -> list:
        if any("BOOM" in p.prompt[0].text for p in pairs):
            raise ValueError("cannot mix these")
        return [ScoreResult(value=0.9, prob_a_wins=0.9, provenance=self.provenance) for _ in pairs]

    score = rank = compare


def test_a_raising_pair_is_isolated_and_retried_next_run(tmp_path: Path) -> None:
    rows = [{"id": i, "prompt": "BOOM" if i == 2 else f"q{i}", "chosen": "c", "rejected": "r"} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_preference(tmp_path / "d.jsonl", order="chosen_first")
    store = ResultStore(tmp_path / "r.jsonl")
    st = run_eval(items, RaisingScorer(), store, batch_size=5)
    assert (st.scored, st.invalid) == (5, 1)
    bad = [r for r in store.records() if r["invalid"]]
    assert bad[0]["source_id"] == "2" and bad[0]["error_kind"] == "scorer_exception" and "ValueError" in bad[0]["invalid"]
    again = run_eval(items, RaisingScorer(), store, batch_size=5)
    assert (again.already_done, again.scored) == (4, 1)  # a scorer exception is retried, the rest kept


def test_transient_error_kinds_are_in_the_shared_vocabulary() -> None:
    from mmrm.rm.errors import ERROR_KINDS

    assert TRANSIENT_ERRORS and TRANSIENT_ERRORS <= ERROR_KINDS
    assert "invalid_media" not in TRANSIENT_ERRORS and "input_too_long" not in TRANSIENT_ERRORS  # properties of a pair


def test_an_unsaved_model_has_no_key_unless_given(tmp_path: Path, tiny_qwen2: Path) -> None:
    from mmrm.rm.errors import ConfigError
    from mmrm.rm.reward_model import RewardModel

    rm = RewardModel.from_backbone(tiny_qwen2, seed=1)
    items = _text_items(tmp_path, "chosen_first")[:2]
    with pytest.raises(ConfigError, match="fingerprint"):
        run_eval(items, rm, tmp_path / "r.jsonl")
    st = run_eval(items, rm, tmp_path / "r.jsonl", key="my-key")
    assert st.scored == 2 and {r["scorer_key"] for r in ResultStore(tmp_path / "r.jsonl").records()} == {"my-key"}
