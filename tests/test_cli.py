"""The ``mmrm`` command: tiny models, training from YAML, scoring from JSONL, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrm.cli import app

runner = CliRunner()


def test_tiny_builds_a_loadable_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    r = runner.invoke(app, ["tiny", "qwen2", str(tmp_path / "m"), "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "m"), Qwen2ForCausalLM)
    bad = runner.invoke(app, ["tiny", "llama", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown arch" in bad.output


def test_score_prints_one_result_per_line(reward_checkpoint: Path, tmp_path: Path) -> None:
    from mmrm.rm.reward_model import RewardModel
    from mmrm.rm.types import Sample

    rows = [{"prompt": "Say hi", "response": "Hi!"},
            {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = runner.invoke(app, ["score", str(reward_checkpoint), "--input", str(f), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    got = [json.loads(line)["value"] for line in r.stdout.splitlines() if line.startswith("{")]
    rm = RewardModel.from_pretrained(reward_checkpoint, device="cpu")
    want = rm.rewards([Sample.model_validate(rows[0]), Sample.from_messages(rows[1]["messages"])])
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.slow
def test_train_from_yaml_with_summary(tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    from mmrm.train.digits import build_digits_dataset

    train_file, eval_file = build_digits_dataset(tmp_path / "data", limit=80, seed=0)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"backbone: {tiny_qwen2_vl}\noutput_dir: out\ntrain_data: data/train.jsonl\n"
                   "eval_data: data/eval.jsonl\nbatch_size: 8\nepochs: 1\nmax_length: 256\n")
    r = runner.invoke(app, ["train", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "training summary" in r.output and "eval_accuracy" in r.output
    metrics = json.loads((tmp_path / "out" / "train_metrics.json").read_text())
    assert metrics["steps"] == 64 // 8 and (tmp_path / "out" / "mmrm_reward.json").exists()


def test_train_config_errors_exit_2_with_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("backbone: b\noutput_dir: o\ntrain_data: d.jsonl\nbatch_size: 0\n")
    r = runner.invoke(app, ["train", "--config", str(cfg)])
    assert r.exit_code == 2 and "batch_size" in r.output
    r = runner.invoke(app, ["serve", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "missing.yaml" in r.output
