"""The digits demo: a preference set built from scikit-learn's handwritten digits (real scans).

Prompt: the image + "Which digit is in the image?"; chosen: "The digit is <true>."; rejected: "The
digit is <wrong>." with the wrong digit drawn uniformly from the other nine, so the text alone
carries no signal and a reward model can only win by reading the pixels. The held-out split is by
image. ``blank=True`` writes the same pairs with blank images: the control that must stay at chance.
"""

from __future__ import annotations

import json
from pathlib import Path

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
                "prompt": PROMPT,
                "images": [name],
                "chosen": f"The digit is {true}.",
                "rejected": f"The digit is {wrong}.",
            })
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths["train"], paths["eval"]
