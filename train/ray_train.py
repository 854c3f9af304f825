"""Many-worker training on Ray Train (TorchTrainer + DDP), the same loop as in-process training.

Each worker runs :func:`mmrm.train.trainer.train_loop` on its share of every batch; DDP averages
the gradients, so N workers with global ``batch_size`` B follow the same trajectory as one worker
with B (up to float reduction order). Rank 0 reports the final checkpoint to Ray Train, which
stores it under ``output_dir/ray``; it is then copied to ``output_dir``. On several nodes
``output_dir`` must be shared storage (NFS, a bucket mount), as Ray Train requires.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmrm.train.config import TrainConfig
from mmrm.train.trainer import TrainResult


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import torch
    from ray.train import Checkpoint

    from mmrm.train.trainer import train_loop

    cfg = TrainConfig.model_validate(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        # find_unused_parameters: a text-only batch leaves a VLM's vision tower without gradients.
        return ray.train.torch.prepare_model(model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True})

    rm, result = train_loop(cfg, rank=rank, world_size=world, device=device, wrap=wrap, save_final=False)
    metrics = {k: v for k, v in result.to_dict().items() if k != "history"}
    if rank == 0 and result.steps >= result.total_steps:
        with tempfile.TemporaryDirectory() as tmp:
            rm.save_pretrained(tmp, merge_lora=cfg.lora.merge_on_save)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def train_with_ray(cfg: TrainConfig) -> TrainResult:
    """Run training on ``cfg.num_workers`` Ray Train workers; connects to (or starts) a Ray cluster."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(name="mmrm-train", storage_path=str(out / "ray")),
    )
    result = trainer.fit()
    m = result.metrics or {}
    ckpt = None
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            for f in Path(d).iterdir():
                dest = out / f.name
                if f.is_dir():
                    shutil.copytree(f, dest, dirs_exist_ok=True)
                else:
                    shutil.copy2(f, dest)
        ckpt = out
    return TrainResult(checkpoint=ckpt, steps=int(m.get("steps", 0)), total_steps=int(m.get("total_steps", 0)),
                       final_loss=m.get("final_loss"), eval_accuracy=m.get("eval_accuracy"), seconds=float(m.get("seconds", 0)))
