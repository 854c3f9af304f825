"""The digits demo: a preference set built from scikit-learn's handwritten digits (real scans).

Prompt: the image + "Which digit is in the image?"; chosen: "The digit is <true>."; rejected: "The
digit is <wrong>." with the wrong digit drawn uniformly from the other nine, so the text alone
carries no signal and a reward model can only win by reading the pixels. The held-out split is by
image. ``blank=True`` writes the same pairs with blank images: the control that must stay at chance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PROMPT = "Which digit is in the image?"


def build_digits_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    size: int = 56,
    eval_fraction: float = 0.2,
    limit: int | None = None,
    blank: bool = False,
) -> tuple[Path, Path]:
    """Write PNGs and ``train.jsonl`` / ``eval.jsonl`` into ``out_dir``; return the two JSONL paths."""
    from PIL import Image
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))
    if limit:
        order = order[:limit]
    n_eval = max(1, int(len(order) * eval_fraction))
    splits = {"eval": order[:n_eval], "train": order[n_eval:]}
    paths = {}
    for split, idx in splits.items():
        rows = []
        for i in idx:
            img = digits.images[i]  # 8x8, values 0..16, ink is high
            pixels = np.zeros((8, 8), dtype=np.uint8) if blank else (255 - img * (255 / 16)).astype(np.uint8)
            name = f"images/{i:04d}.png"
            Image.fromarray(pixels, "L").convert("RGB").resize((size, size), Image.NEAREST).save(out / name)
            true = int(digits.target[i])
            wrong = int(rng.choice([d for d in range(10) if d != true]))
            rows.append({
                "id": int(i),
                "category": f"digit {true}",
                "prompt": PROMPT,
                "images": [name],
                "chosen": f"The digit is {true}.",
                "rejected": f"The digit is {wrong}.",
            })
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths["train"], paths["eval"]


def build_demo_model(workdir: Path, *, epochs: int = 5, limit: int | None = None, on_step: Any = None) -> Path:
    """Tiny Qwen2-VL backbone -> digits preference data -> trained reward checkpoint (``workdir/model``)."""
    from mmrm.rm.tiny import build_tiny_model
    from mmrm.train import TrainConfig, train

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
