"""Real TRL GRPOTrainer runs on the CPU with mmrm's reward: in-process and through the running service.

TRL (huggingface/trl ``f2cd57710ae345ea6428ae95363267fcf38a3dc8``; installed ``trl==1.16.0``) keeps
the last generation batch's prompts, completions and per-function rewards in ``trainer._logs`` and
logs ``rewards/<name>/mean`` per step. Those must equal what mmrm returns for the same completions,
checked against an independent in-process scoring of TRL's own record (TRL stores rewards as
float32, hence the tolerance). The end-to-end example's smoke run checks the mechanics only; the
full run's before/after numbers are in examples/grpo_results.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from mmrm.rl.trl import trl_reward_func
from mmrm.rl.reward_fn import RewardFn, to_sample

pytestmark = pytest.mark.slow

NOUNS = ("cat", "dog", "car", "sky", "tree", "table", "chair", "sign")


@pytest.fixture(scope="module")
def rm(reward_checkpoint):
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_pretrained(reward_checkpoint, device="cpu")


def _run(policy_dir: Path, reward: RewardFn, out: Path, *, asynchronous: bool = False):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Tell me about the {w}."}]} for w in NOUNS])
    batches = []
    func = trl_reward_func(reward, on_batch=batches.append, asynchronous=asynchronous)
    args = GRPOConfig(output_dir=str(out), use_cpu=True, max_steps=2, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, logging_steps=1, report_to=[], save_strategy="no", learning_rate=1e-3,
                      beta=0.0, seed=0, bf16=False, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(policy_dir), reward_funcs=[func], args=args, train_dataset=ds)
    trainer.train()
    return trainer, batches


def _check_trl_logged_mmrm_rewards(trainer, batches, rm) -> None:
    # 1. TRL's own record of the last batch == an independent in-process scoring of those completions
    prompts, completions = list(trainer._logs["prompt"]), list(trainer._logs["completion"])
    logged = list(trainer._logs["rewards"]["mmrm"])
    assert len(logged) == len(completions) == 4
    independent = rm.rewards([to_sample(p, c) for p, c in zip(prompts, completions)])
    assert np.allclose(logged, independent, rtol=1e-6, atol=1e-5)
    # 2. per step: TRL's logged mean == the mean of what mmrm returned at that step (float32 in TRL)
    means = [h["rewards/mmrm/mean"] for h in trainer.state.log_history if "rewards/mmrm/mean" in h]
    assert len(means) == len(batches) == 2
    for m, b in zip(means, batches):
        assert b.log.invalid == 0 and math.isclose(m, sum(b.rewards) / len(b.rewards), rel_tol=1e-6, abs_tol=1e-6)
    # mmrm's own metrics went through TRL's log_metric
    assert all("mmrm/invalid_fraction" in h for h in trainer.state.log_history if "rewards/mmrm/mean" in h)


def test_grpo_in_process(tiny_qwen2, rm, tmp_path):
    trainer, batches = _run(tiny_qwen2, RewardFn(rm), tmp_path / "inproc")
    _check_trl_logged_mmrm_rewards(trainer, batches, rm)


def test_grpo_through_the_service(tiny_qwen2, rm, service, tmp_path):
    reward = RewardFn.remote(service["url"], model="tiny", token=service["token"])
    try:
        trainer, batches = _run(tiny_qwen2, reward, tmp_path / "remote", asynchronous=True)
    finally:
        reward.close()
    assert reward.stats.items == 8 and reward.stats.invalid == 0
    _check_trl_logged_mmrm_rewards(trainer, batches, rm)  # remote rewards == in-process rewards (1e-5)


def test_grpo_vision_language_policy_images_reach_the_reward(tiny_qwen2_vl, rm, tmp_path):
    """A tiny Qwen2-VL policy with an ``images`` column: TRL puts the PIL images into the prompts (and
    passes the column too); the rewards TRL logs equal an independent scoring of (image, prompt,
    completion) with the image as a PNG data URI, and a different image changes them."""
    from datasets import Dataset
    from helpers import image_array, png_data_uri
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    arrays = [image_array(56, 56, seed=10 + i) for i in range(4)]
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": "What is in the image?"}]] * 4,
                            "images": [[Image.fromarray(a)] for a in arrays]})
    args = GRPOConfig(output_dir=str(tmp_path / "vlm"), use_cpu=True, max_steps=1, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=8, logging_steps=1, report_to=[], save_strategy="no",
                      learning_rate=1e-3, beta=0.0, seed=0, bf16=False, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(tiny_qwen2_vl), reward_funcs=[trl_reward_func(RewardFn(rm))], args=args,
                          train_dataset=ds)
    trainer.train()
    completions, logged = list(trainer._logs["completion"]), list(trainer._logs["rewards"]["mmrm"])
    assert all(p[0]["content"][0]["type"] == "image" for p in trainer._logs["prompt"])
    images = [p[0]["content"][0]["image"] for p in trainer._logs["prompt"]]  # the PIL images TRL put in

    def sample(img_uri, completion):
        return {"prompt": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img_uri}},
                                                        {"type": "text", "text": "What is in the image?"}]}],
                "response": completion[0]["content"]}

    from mmrm.rm.types import Sample

    want = rm.rewards([Sample.model_validate(sample(png_data_uri(np.asarray(im)), c)) for im, c in zip(images, completions)])
    assert np.allclose(logged, want, rtol=1e-6, atol=1e-5)
    other = rm.rewards([Sample.model_validate(sample(png_data_uri(arrays[0][::-1].copy()), c)) for c in completions])
    assert not np.allclose(other, want, atol=1e-4)  # the pixels reached the reward model


def test_example_smoke(tmp_path, monkeypatch):
    """examples/grpo_with_mmrm.py --quick: every stage runs (data, mmrm train, GRPO, before/after)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "grpo_with_mmrm.py"
    spec = importlib.util.spec_from_file_location("grpo_with_mmrm", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results.json"
    assert mod.main(["--quick", "--out-dir", str(tmp_path / "run"), "--results", str(results)]) == 0
    res = json.loads(results.read_text())
    assert res["data"]["train_pairs"] > 0 and 0 <= res["reward_model"]["eval_pairwise_accuracy"] <= 1
    assert (tmp_path / "run" / "rm" / "mmrm_reward.json").exists()
    assert res["grpo"]["steps"] == 2 and res["grpo"]["reward_fn_stats"]["invalid"] == 0
    for when in ("before", "after"):
        assert res[when]["invalid"] == 0 and math.isfinite(res[when]["mean_reward"])
        assert 0 <= res[when]["digit_share"] <= 1
    assert mod.digit_share("ab12") == 0.5 and mod.digit_share(" ") == 0.0
    assert not set(mod.prompts_for("train", 50, 0)) & set(mod.prompts_for("eval", 50, 0))
