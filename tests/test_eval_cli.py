"""``mmrm eval`` (typer sub-app): run with a reward checkpoint, resume, report, refuse missing media."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmrm.eval.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def test_list_names_every_loader() -> None:
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0
    for name in ("vl-rewardbench", "mm-rlhf-rewardbench", "multimodal-rewardbench", "rewardbench", "mmrb2", "mj-bench",
                 "preference"):
        assert name in res.output


def test_run_resume_and_report(tmp_path: Path, reward_checkpoint: Path, digits_eval_data: Path) -> None:
    out = tmp_path / "out"
    args = ["run", "preference", str(digits_eval_data), "--checkpoint", str(reward_checkpoint), "--out", str(out),
            "--limit", "10", "--batch-size", "5", "--blank-images", "--device", "cpu", "--resamples", "200",
            "--summary-json", str(tmp_path / "s1.json")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "strict accuracy" in res.output and "image reliance" in res.output
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert (s1["scored"], s1["already_done"], s1["forward_calls"]) == (20, 0, 4)
    for f in ("report.md", "report.html", "report.json", "per_category.png", "reliability.png", "score_hist.png", "results.jsonl"):
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    assert "mmrm eval run preference" in md and "![per-category accuracy](per_category.png)" in md

    args[-1] = str(tmp_path / "s2.json")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    s2 = json.loads((tmp_path / "s2.json").read_text())
    assert (s2["scored"], s2["already_done"], s2["forward_calls"]) == (0, 20, 0)

    res = runner.invoke(app, ["report", str(out / "results.jsonl"), "--out", str(tmp_path / "rep2"), "--resamples", "100"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "rep2" / "report.json").read_text())["n_pairs"] == 10


def test_missing_images_refused_unless_placeholders_asked(tmp_path: Path, reward_checkpoint: Path) -> None:
    rows = [{"id": i, "prompt": "Which digit?", "images": [f"gone/{i}.png"], "chosen": "The digit is 1.",
             "rejected": "The digit is 7."} for i in range(4)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["run", "preference", str(data), "--checkpoint", str(reward_checkpoint), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--resamples", "50"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "missing" in res.output and "--placeholder-images" in res.output
    assert not (tmp_path / "o" / "results.jsonl").exists()
    res = runner.invoke(app, [*base, "--placeholder-images"])
    assert res.exit_code == 0, res.output
    assert "placeholder" in res.output.lower()
    assert "Warning" in (tmp_path / "o" / "report.md").read_text()


def test_one_scorer_required(tmp_path: Path, digits_eval_data: Path) -> None:
    res = runner.invoke(app, ["run", "preference", str(digits_eval_data), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "exactly one scorer" in res.output


def test_benchmark_options_belong_to_their_benchmark(tmp_path: Path, digits_eval_data: Path) -> None:
    res = runner.invoke(app, ["run", "preference", str(digits_eval_data), "--checkpoint", str(tmp_path), "--task", "t2i"])
    assert res.exit_code == 2 and "--task is an option of mmrb2" in res.output
    res = runner.invoke(app, ["run", "mmrb2", str(digits_eval_data), "--checkpoint", str(tmp_path), "--task", "video"])
    assert res.exit_code == 2 and "unknown MMRB2 task" in res.output


def _rows_with_bad_pairs(tmp_path: Path) -> Path:
    rows = [{"id": 0, "prompt": "Describe the weather.", "chosen": "Sunny and warm.", "rejected": "Seven."},
            {"id": 1, "prompt": "look <|image_pad|> here", "chosen": "fine", "rejected": "bad"},  # placeholder text
            {"id": 2, "prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
            {"id": 3, "prompt": "word " * 4200, "chosen": "ok", "rejected": "no"},  # too long (4096)
            {"id": 4, "prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A chair."}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@pytest.mark.slow
def test_run_with_url_records_a_bad_pair_invalid_and_goes_on(tmp_path: Path, service: dict, monkeypatch) -> None:
    """Every scorer source gives the same run: a pair the scorer cannot score is recorded invalid
    with its reason, the other pairs score as they do alone."""
    from mmrm.eval.loaders import load_preference
    from mmrm.eval.store import ResultStore
    from mmrm.rm.reward_model import RewardModel

    monkeypatch.setenv("MMRM_API_TOKEN", service["token"])
    data = _rows_with_bad_pairs(tmp_path)
    common = ["--order", "chosen_first", "--batch-size", "5", "--resamples", "50", "--device", "cpu"]
    res = runner.invoke(app, ["run", "preference", str(data), "--url", service["url"], "--model", "tiny",
                              "--out", str(tmp_path / "url"), *common])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", "preference", str(data), "--checkpoint", str(service["checkpoint"]),
                              "--out", str(tmp_path / "ckpt"), *common])
    assert res.exit_code == 0, res.output
    items = {it.source_id: it for it in load_preference(data, order="chosen_first")}
    rm = RewardModel.from_pretrained(service["checkpoint"], device="cpu")
    for source in ("url", "ckpt"):
        recs = {r["source_id"]: r for r in ResultStore(tmp_path / source / "results.jsonl").records()}
        assert sorted(recs) == ["0", "1", "2", "3", "4"], source  # the run went on past the bad pairs
        assert (recs["1"]["error_kind"], recs["3"]["error_kind"]) == ("unsupported_input", "input_too_long"), source
        assert recs["1"]["invalid"] and recs["1"]["prob_a_wins"] is None and recs["1"]["verdict"] is None
        for sid in ("0", "2", "4"):  # independent expectation: the pair alone, in process
            want = rm.probabilities([items[sid].pair])[0]
            assert recs[sid]["invalid"] is None and abs(recs[sid]["prob_a_wins"] - want) < 1e-5, (source, sid)
