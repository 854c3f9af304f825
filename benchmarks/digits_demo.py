"""Digits demo benchmark: held-out pairwise accuracy with real pixels vs. a blank-image control.

    .venv/bin/python benchmarks/digits_demo.py [--epochs 5] [--workdir /tmp/mmrm-digits-bench]

Prints one JSON object: accuracy, loss, optimizer steps, wall seconds and CPU seconds (user +
system, this process and its threads) for each run. The blank control uses the same pairs with
blank images: it must stay near 0.5, which shows the real run learns from the pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

from mmrm.rm.tiny import build_tiny_model
from mmrm.train import TrainConfig, train
from mmrm.train.digits import build_digits_dataset


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(workdir: Path, epochs: int, seed: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    backbone = build_tiny_model("qwen2_vl", workdir / "backbone", seed=0)
    out: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
                 "epochs": epochs, "seed": seed, "backbone": "tiny Qwen2-VL (hidden 128, 2 layers, vision depth 2)"}
    for name, blank in (("real_pixels", False), ("blank_control", True)):
        data = build_digits_dataset(workdir / name, seed=seed, blank=blank)
        model_dir = workdir / f"{name}-model"
        shutil.rmtree(model_dir, ignore_errors=True)
        cfg = TrainConfig(backbone=backbone, output_dir=model_dir, train_data=data[0], eval_data=data[1],
                          epochs=epochs, batch_size=32, lr=3e-4, max_length=512, seed=seed)
        t0, c0 = time.perf_counter(), _cpu_s()
        result = train(cfg)
        out[name] = {"held_out_pairwise_accuracy": result.eval_accuracy, "final_loss": result.final_loss,
                     "steps": result.steps, "wall_s": round(time.perf_counter() - t0, 1),
                     "cpu_s": round(_cpu_s() - c0, 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mmrm-digits-bench"))
    a = p.parse_args()
    print(json.dumps(run(a.workdir, a.epochs, a.seed), indent=2))


if __name__ == "__main__":
    main()
