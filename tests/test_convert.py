"""``mmrm convert``: an mmrm checkpoint exported to the TRL / LLaMA-Factory value-head layout gives
the same rewards in an independent value-head scorer (tests/test_layouts.py ``ref_skywork``: the
Skywork-VL-Reward / LLaMA-Factory scoring code transcribed with plain transformers) and back
through mmrm's own layout detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmrm.cli import app
from mmrm.rm import layouts
from mmrm.rm.reward_model import RewardModel
from test_layouts import VL_CONVS, _sample, ref_skywork

runner = CliRunner()


@pytest.fixture(scope="module")
def linear_checkpoint(tiny_qwen2_5_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rm = RewardModel.from_backbone(tiny_qwen2_5_vl, head_type="linear", seed=11, device="cpu")
    with torch.no_grad():
        rm.head.net.bias.fill_(0.375)  # a bias that must travel too
    return rm.save_pretrained(tmp_path_factory.mktemp("convert") / "linear-rm")


def test_export_to_value_head_scores_the_same_elsewhere(linear_checkpoint: Path, tmp_path: Path):
    dest = tmp_path / "exported"
    r = runner.invoke(app, ["convert", str(linear_checkpoint), str(dest), "--to", "value_head"])
    assert r.exit_code == 0, r.output
    files = {f.name for f in dest.iterdir()}
    assert "value_head.safetensors" in files and "mmrm_reward.json" not in files and "head.safetensors" not in files
    from safetensors import safe_open

    with safe_open(str(dest / "value_head.safetensors"), framework="pt") as fh:
        shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}
    assert shapes == {"v_head.summary.weight": [1, 128], "v_head.summary.bias": [1]}
    original = RewardModel.from_pretrained(linear_checkpoint, device="cpu").rewards([_sample(u, r) for u, r in VL_CONVS])
    other_tool = ref_skywork(dest, VL_CONVS)
    assert max(abs(a - b) for a, b in zip(original, other_tool)) <= 1e-4, (original, other_tool)
    back = RewardModel.from_pretrained(dest, device="cpu")
    assert back.config.source == "value_head" and layouts.detect(dest).layout == "value_head"
    assert back.rewards([_sample(u, r) for u, r in VL_CONVS]) == pytest.approx(original, abs=1e-4)
    # the generation prompt of the exported template is unchanged (the model still chats)
    gen = back.processor.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<|im_start|>assistant\n")


def test_export_refuses_what_has_no_value_head_form(reward_checkpoint: Path, tmp_path: Path):
    assert json.loads((reward_checkpoint / "mmrm_reward.json").read_text())["head"]["type"] == "mlp2"
    r = runner.invoke(app, ["convert", str(reward_checkpoint), str(tmp_path / "x")])
    assert r.exit_code == 2 and "head is mlp2" in " ".join(r.output.split())
    r = runner.invoke(app, ["convert", str(reward_checkpoint), str(tmp_path / "y"), "--to", "vllm"])
    assert r.exit_code == 2 and "unknown target layout" in r.output
