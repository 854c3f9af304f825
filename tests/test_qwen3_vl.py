"""A tiny Qwen3-VL in the real transformers layout, scored through the hf engine.

The expected rewards are an independent forward: transformers' own processor and
``Qwen3VLForConditionalGeneration`` on each conversation alone (unpadded), the last position's final
hidden state, and the head computed here from ``head.safetensors`` with plain tensor ops.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmrm.rm.families import QWEN, family_for
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.types import Group
from test_layouts import _ref_messages, _sample

ATOL = 1e-5
CONVS = [  # (user parts: text or (height, width, seed) images, response)
    ([(64, 96, 1), "What is in the picture?"], "A cat on a red chair."),
    (["hi"], "The digit is 3."),
    ([(96, 96, 2), "compare the two pictures, which one is better?", (64, 64, 3)], "the left one, because it is blue"),
]


@pytest.fixture(scope="module")
def qwen3_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmrm.rm.tiny import build_tiny_model

    base = build_tiny_model("qwen3_vl", tmp_path_factory.mktemp("qwen3vl") / "tiny-qwen3-vl", seed=0)
    return RewardModel.from_backbone(base, seed=5, device="cpu").save_pretrained(base.parent / "rm")


def _reference(path: Path) -> list[float]:
    import transformers as tf
    from safetensors.torch import load_file

    proc = tf.AutoProcessor.from_pretrained(str(path))
    model = tf.Qwen3VLForConditionalGeneration.from_pretrained(str(path)).eval()
    h = load_file(str(path / "head.safetensors"))
    out = []
    for user, response in CONVS:
        msgs, images = _ref_messages(user, response)
        text = proc.apply_chat_template(msgs, tokenize=False).rstrip()
        kw = {"images": images} if images else {}
        inputs = proc(text=[text], return_tensors="pt", **kw)
        with torch.no_grad():
            last = model.model(**inputs, use_cache=False).last_hidden_state[0, -1]
        x = torch.nn.functional.silu(h["net.0.weight"] @ last + h["net.0.bias"])
        out.append(float(h["net.2.weight"] @ x + h["net.2.bias"]))
    return out


def test_qwen3_vl_real_layout(qwen3_vl):
    cfg = json.loads((qwen3_vl / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3VLForConditionalGeneration"] and cfg["model_type"] == "qwen3_vl"
    assert cfg["vision_config"]["patch_size"] == 16 and cfg["vision_config"]["deepstack_visual_indexes"]
    assert cfg["text_config"]["rope_parameters"]["mrope_interleaved"] is True
    import transformers as tf

    assert type(tf.AutoProcessor.from_pretrained(str(qwen3_vl))).__name__ == "Qwen3VLProcessor"
    assert family_for({}, "qwen3_vl") is QWEN


def test_qwen3_vl_scores_equal_an_independent_forward(qwen3_vl):
    rm = RewardModel.from_pretrained(qwen3_vl, device="cpu")
    got = rm.rewards([_sample(u, r) for u, r in CONVS])  # one padded batch of mixed lengths, with images
    want = _reference(qwen3_vl)
    assert max(abs(a - b) for a, b in zip(got, want)) <= ATOL, (got, want)
    assert len({round(w, 4) for w in want}) == len(want)
    g = Group(prompt=_sample(*CONVS[0]).prompt, responses=[CONVS[0][1], "a dog", "nothing at all in it"])
    ranked = [r.value for r in rm.rank([g])[0].results]  # the shared-prefix path (image once)
    assert ranked[0] == pytest.approx(want[0], abs=ATOL)
    assert ranked == pytest.approx(rm.rewards(g.samples()), abs=ATOL)
