"""``mmrm inspect``: what a checkpoint directory is, and a clear error for one mmrm does not know.

The expectations are the published layouts' own facts (file names, tensor names and shapes, the
pooled token each author's code reads), not what the inspector itself computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrm.cli import app

runner = CliRunner()


@pytest.mark.parametrize("key,layout,head,pool", [
    ("skywork", "value_head", "v_head.summary.weight [1, 128], v_head.summary.bias [1]", "Ċ"),  # "\n" after <|im_end|>
    ("docreward", "docreward", "value_head.bin: v_head.summary.weight [1, 128]", "<|regression|>"),
    ("openrlhf", "openrlhf", "no bias) from model.safetensors: value_head.weight [1, 128]; reward (r - 0.25) / 2.5",
     "<|im_end|>"),
    ("seq_cls_vl", "sequence_classification", "score.weight [1, 128]", "Ċ"),
])
def test_inspect_reports_each_layout(published, key, layout, head, pool):
    r = runner.invoke(app, ["inspect", str(published[key]), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout[r.stdout.index("{"):])
    assert rep["layout"] == layout
    assert head in rep["head"]
    assert rep["pool_token"] == pool
    assert rep["dtype"] == "float32"
    arch = json.loads((published[key] / "config.json").read_text())["architectures"][0]
    assert rep["backbone_class"] == arch
    assert rep["size_bytes"] == sum(f.stat().st_size for f in published[key].rglob("*") if f.is_file())
    assert rep["parameters"] > 100_000


def test_inspect_table_and_mmrm_checkpoint(reward_checkpoint: Path):
    r = runner.invoke(app, ["inspect", str(reward_checkpoint)])
    assert r.exit_code == 0, r.output
    for label in ("layout", "backbone", "head", "pooling", "pool token", "template", "dtype", "size"):
        assert label in r.stdout
    assert "mmrm" in r.stdout and "mlp2 (128, inner 128) in head.safetensors" in r.stdout
    assert "'<|im_end|>'" in r.stdout


def test_inspect_unknown_layout_names_files_keys_and_layouts(tiny_qwen2_vl: Path):
    r = runner.invoke(app, ["inspect", str(tiny_qwen2_vl)])
    assert r.exit_code == 2
    out = " ".join(r.output.split())
    for part in ("no reward checkpoint mmrm knows", "model.safetensors", "config.json", "Qwen2VLForConditionalGeneration",
                 "lm_head.weight", "Known layouts: mmrm", "value_head", "docreward", "openrlhf", "sequence_classification"):
        assert part in out, (part, out)


def test_inspect_forced_layout_that_does_not_fit(published):
    r = runner.invoke(app, ["inspect", str(published["openrlhf"]), "--layout", "value_head"])
    assert r.exit_code == 2 and "value_head.safetensors, value_head.bin" in " ".join(r.output.split())
