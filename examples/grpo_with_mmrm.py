"""GRPO against a reward model trained with ``mmrm train``: the policy learns what the reward model learned.

Runs on a CPU in a few minutes, with nothing downloaded::

    .venv/bin/python examples/grpo_with_mmrm.py                 # full run, writes examples/grpo_results.json
    .venv/bin/python examples/grpo_with_mmrm.py --quick         # a smoke run (mechanics only)

The steps:

1. **Models.** A tiny text-only Qwen2 policy (random weights, local tokenizer: ``mmrm tiny``) and a
   second tiny Qwen2 as the reward model's backbone.
2. **Preference data.** Completions sampled from the untrained policy (some with digit tokens made
   likelier, so the data covers the range) are paired within a prompt; the completion with the
   larger share of digit characters is ``chosen``. This is the learnable property: "answers that
   are mostly numerals". Nothing else in the run knows it.
3. **Reward model.** ``mmrm.train`` (Bradley-Terry, ``mlp2`` head, full fine-tuning) on those pairs;
   its held-out pairwise accuracy is reported.
4. **GRPO.** TRL's ``GRPOTrainer`` on the policy with the reward model as its only reward,
   through :func:`mmrm.rl.trl.trl_reward_func`, in-process. (Over HTTP, replace
   ``RewardFn.from_checkpoint(path)`` with ``RewardFn.remote(url, model=...)``: the same rewards, see
   tests/test_grpo.py.)
5. **Before/after**, on held-out prompts, with the same sampling protocol: the mean reward the
   reward model gives the policy's completions, AND the property measured directly (the share of
   digit characters in a completion; no reward model involved). Both must rise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NOUNS = ("cat", "dog", "car", "sky", "tree", "table", "chair", "sign", "water", "window", "menu", "page",
         "button", "person", "text", "colour", "frame", "photo", "image", "video", "form", "layout")
TEMPLATES = ("Tell me about the {}.", "Describe the {}.", "What is the {}?", "Say something about the {}.")


@dataclass
class Config:
    """Settings of one run (defaults: the full run recorded in BENCHMARKS.md)."""

    out_dir: str = "runs/grpo_with_mmrm"
    seed: int = 0
    # preference data and reward model
    rm_prompts: int = 40
    samples_per_prompt: int = 12
    min_gap: float = 0.1
    rm_epochs: int = 3
    rm_batch_size: int = 32
    rm_lr: float = 3e-4
    # GRPO
    grpo_steps: int = 40
    prompts_per_step: int = 2
    num_generations: int = 8
    max_completion_length: int = 12
    policy_lr: float = 2e-3
    # evaluation
    eval_prompts: int = 16
    eval_samples: int = 8
    results_path: str | None = "examples/grpo_results.json"


def digit_share(text: str) -> float:
    """The property, measured directly: the share of non-space characters that are digits 0-9."""
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def prompts_for(split: str, n: int, seed: int) -> list[str]:
    """Disjoint prompt sets: even (template, noun) cells for training, odd ones held out."""
    cells = [(t, w) for t in TEMPLATES for w in NOUNS]
    pool = [t.format(w) for k, (t, w) in enumerate(cells) if (k % 2 == 0) == (split != "eval")]
    random.Random(f"{seed}-{split}").shuffle(pool)
    return (pool * (n // len(pool) + 1))[:n]


def _chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def sample(model: Any, tok: Any, prompts: list[str], k: int, max_new_tokens: int, *, seed: int,
           digit_bias: float = 0.0) -> list[list[str]]:
    """``k`` completions per prompt, sampled as GRPOTrainer samples (temperature 1, no top-k/p),
    decoded without special tokens. ``digit_bias`` adds to the logits of tokens holding a digit."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Bias(LogitsProcessor):
        def __init__(self, ids: list[int], b: float) -> None:
            self.ids, self.b = torch.tensor(ids), b

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            scores[:, self.ids] += self.b
            return scores

    procs = None
    if digit_bias:
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        procs = LogitsProcessorList([_Bias([i for i, t in enumerate(vocab) if re.search(r"\d", t)], digit_bias)])
    torch.manual_seed(seed)
    model.eval()
    side = tok.padding_side
    tok.padding_side = "left"  # one batched generate call for all prompts
    texts = [tok.apply_chat_template(_chat(p), add_generation_prompt=True, tokenize=False) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = side
    with torch.no_grad():
        gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             num_return_sequences=k, pad_token_id=tok.pad_token_id, logits_processor=procs)
    flat = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [flat[i * k:(i + 1) * k] for i in range(len(prompts))]


def build_preferences(policy_dir: Path, out: Path, cfg: Config) -> tuple[Path, Path, dict[str, Any]]:
    """Preference pairs from the untrained policy's own completions, labelled by the digit share."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    prompts = prompts_for("train", cfg.rm_prompts, cfg.seed)
    rng = random.Random(cfg.seed)
    rows = []
    # A quarter of the prompts get samples from the policy as it is, the rest with digit tokens made
    # likelier: the reward model must see answers with more numerals than the untrained policy writes.
    by_prompt: list[list[str]] = [[] for _ in prompts]
    for b, bias in enumerate((0.0, 1.0, 2.0, 3.0)):
        idx = list(range(b, len(prompts), 4))
        got = sample(model, tok, [prompts[j] for j in idx], cfg.samples_per_prompt, cfg.max_completion_length,
                     seed=cfg.seed + b, digit_bias=bias)
        for j, comps in zip(idx, got):
            by_prompt[j] = comps
    for p, comps in zip(prompts, by_prompt):
        comps = [c for c in comps if c.strip()]
        rng.shuffle(comps)
        for a, b in zip(comps[::2], comps[1::2]):
            da, db = digit_share(a), digit_share(b)
            if abs(da - db) < cfg.min_gap:
                continue
            chosen, rejected = (a, b) if da > db else (b, a)
            rows.append({"prompt": p, "chosen": chosen, "rejected": rejected})
    rng.shuffle(rows)
    n_eval = max(8, len(rows) // 6)
    out.mkdir(parents=True, exist_ok=True)
    train, evals = out / "train.jsonl", out / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[n_eval:]))
    evals.write_text("".join(json.dumps(r) + "\n" for r in rows[:n_eval]))
    return train, evals, {"train_pairs": len(rows) - n_eval, "eval_pairs": n_eval}


def evaluate(policy: Any, tok: Any, reward: Any, cfg: Config) -> dict[str, float]:
    """Held-out prompts, ``eval_samples`` completions each: the reward model's mean reward and the
    mean digit share (measured without the reward model)."""
    prompts = prompts_for("eval", cfg.eval_prompts, cfg.seed)
    comps = sample(policy, tok, prompts, cfg.eval_samples, cfg.max_completion_length, seed=10_000 + cfg.seed)
    flat_p = [_chat(p) for p, cs in zip(prompts, comps) for _ in cs]
    flat_c = [c for cs in comps for c in cs]
    rewards = reward(flat_p, flat_c)
    ok = [r for r in rewards if r is not None]
    shares = [digit_share(c) for c in flat_c]
    return {
        "mean_reward": sum(ok) / len(ok),
        "digit_share": sum(shares) / len(shares),
        "completions": len(flat_c),
        "invalid": len(rewards) - len(ok),
        "example": flat_c[0],
    }


@dataclass
class Result:
    config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    reward_model: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run(cfg: Config) -> Result:
    import torch
    from datasets import Dataset
    from mmrm.rl.trl import trl_reward_func
    from mmrm.rl.reward_fn import RewardFn
    from mmrm.rm.tiny import build_tiny_model
    from mmrm.train import TrainConfig, train
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    res = Result(config=asdict(cfg))
    t0 = time.perf_counter()
    policy_dir = build_tiny_model("qwen2", out / "policy", seed=cfg.seed)
    backbone_dir = build_tiny_model("qwen2", out / "rm_backbone", seed=cfg.seed + 1)

    # 1-3. preference data from the policy, then `mmrm train`
    train_path, eval_path, res.data = build_preferences(policy_dir, out / "prefs", cfg)
    res.seconds["data"] = time.perf_counter() - t0
    t = time.perf_counter()
    tcfg = TrainConfig(backbone=backbone_dir, output_dir=out / "rm", train_data=train_path, eval_data=eval_path,
                       head_type="mlp2", tune="full", epochs=cfg.rm_epochs, batch_size=cfg.rm_batch_size, lr=cfg.rm_lr,
                       seed=cfg.seed, max_length=256)
    tr = train(tcfg)
    res.reward_model = {"eval_pairwise_accuracy": tr.eval_accuracy, "final_loss": tr.final_loss, "steps": tr.steps}
    res.seconds["reward_model"] = time.perf_counter() - t
    log.info("reward model: %s", res.reward_model)

    # the reward callable (in-process; RewardFn.remote(url, model=...) gives the same rewards from a service)
    reward = RewardFn.from_checkpoint(out / "rm")

    tok = AutoTokenizer.from_pretrained(policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    t = time.perf_counter()
    res.before = evaluate(policy, tok, reward, cfg)
    log.info("before: %s", res.before)

    # 4. GRPO with the reward model as the only reward
    prompts = prompts_for("train", max(cfg.rm_prompts, cfg.grpo_steps * cfg.prompts_per_step), cfg.seed + 7)
    ds = Dataset.from_list([{"prompt": _chat(p)} for p in prompts])
    args = GRPOConfig(
        output_dir=str(out / "grpo"), use_cpu=True, seed=cfg.seed, max_steps=cfg.grpo_steps,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, learning_rate=cfg.policy_lr, lr_scheduler_type="constant",
        beta=0.0, temperature=1.0, logging_steps=1, save_strategy="no", report_to=[], bf16=False,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=policy, processing_class=tok, reward_funcs=[trl_reward_func(reward, name="mmrm")],
                          args=args, train_dataset=ds)
    trainer.train()
    means = [h["rewards/mmrm/mean"] for h in trainer.state.log_history if "rewards/mmrm/mean" in h]
    k = max(1, len(means) // 5)
    res.grpo = {"steps": len(means), "train_reward_per_step": [round(m, 4) for m in means],
                "train_reward_first_steps": sum(means[:k]) / k,
                "train_reward_last_steps": sum(means[-k:]) / k, "reward_fn_stats": {
                    "calls": reward.stats.calls, "items": reward.stats.items, "invalid": reward.stats.invalid}}
    res.seconds["grpo"] = time.perf_counter() - t

    # 5. after, same protocol
    res.after = evaluate(trainer.model, tok, reward, cfg)
    log.info("after: %s", res.after)
    res.seconds["total"] = time.perf_counter() - t0
    reward.close()
    return res


log = logging.getLogger("grpo_with_mmrm")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=Config.out_dir)
    ap.add_argument("--quick", action="store_true", help="a few steps: checks the mechanics, not the improvement")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps")
    ap.add_argument("--results", default=None, help="where to write the JSON results (default: examples/grpo_results.json "
                    "for a full run, none for --quick)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("mmrm.reward").setLevel(logging.WARNING)
    cfg = Config(out_dir=a.out_dir)
    if a.quick:
        cfg = Config(out_dir=a.out_dir, rm_prompts=8, samples_per_prompt=8, rm_epochs=1, rm_batch_size=8,
                     grpo_steps=2, eval_prompts=2, eval_samples=2, results_path=None)
    if a.steps is not None:
        cfg.grpo_steps = a.steps
    if a.results is not None:
        cfg.results_path = a.results
    res = run(cfg)
    text = json.dumps(asdict(res), indent=2)
    print(text)
    if cfg.results_path:
        Path(cfg.results_path).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
