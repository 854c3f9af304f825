"""The README's first command: build the digits demo reward model if absent, then score with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrm.rm.media import MediaPolicy
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.types import Pair
from mmrm.train.config import TrainConfig
from mmrm.train.digits import PROMPT, build_digits_dataset


def build_demo_model(workdir: Path, *, epochs: int = 5, limit: int | None = None, on_step: Any = None) -> Path:
    """Tiny Qwen2-VL backbone -> digits preference data -> trained reward checkpoint (``workdir/model``)."""
    from mmrm.rm.tiny import build_tiny_model
    from mmrm.train import train

    model_dir = workdir / "model"
    if (model_dir / "mmrm_reward.json").exists():
        return model_dir
    backbone = workdir / "backbone"
    if not (backbone / "config.json").exists():
        build_tiny_model("qwen2_vl", backbone, seed=0)
    train_file, eval_file = build_digits_dataset(workdir / "data", seed=0, limit=limit)
    cfg = TrainConfig(backbone=backbone, output_dir=model_dir, train_data=train_file, eval_data=eval_file,
                      epochs=epochs, batch_size=32, lr=3e-4, max_length=512, seed=0)
    train(cfg, on_step=on_step)
    return model_dir


def run_demo(workdir: Path, *, epochs: int = 5, limit: int | None = None, console: Any = None) -> dict[str, Any]:
    workdir = Path(workdir).resolve()
    say = console.print if console is not None else print
    say(f"demo model: {workdir / 'model'} (built if absent; a few CPU minutes)")
    model_dir = build_demo_model(workdir, epochs=epochs, limit=limit)
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    rm = RewardModel.from_pretrained(model_dir, device="auto",
                                     media_policy=MediaPolicy(allowed_roots=[workdir / "data"]))
    row = json.loads((workdir / "data" / "eval.jsonl").read_text().splitlines()[0])
    image = str((workdir / "data" / row["images"][0]).resolve())
    prompt = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": PROMPT}]}]
    pair = Pair(prompt=prompt, response_a=row["chosen"], response_b=row["rejected"])
    res = rm.compare_results([pair])[0]
    out = {
        "image": image,
        "chosen": row["chosen"],
        "rejected": row["rejected"],
        "reward_chosen": res.details["reward_a"],
        "reward_rejected": res.details["reward_b"],
        "p_chosen_beats_rejected": res.value,
        "held_out_pairwise_accuracy": metrics.get("eval_accuracy"),
        "provenance": res.provenance.model_dump(),
    }
    print(json.dumps(out, indent=2))
    return out
