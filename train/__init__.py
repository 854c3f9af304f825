"""mmrm.train: Bradley-Terry training of reward heads, in-process or on Ray Train."""

from __future__ import annotations

from typing import Callable

from mmrm.train.config import TrainConfig
from mmrm.train.trainer import TrainResult


def train(cfg: TrainConfig, *, on_step: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train a reward model as ``cfg`` says: in-process for one worker, on Ray Train for more.

    ``on_step`` receives each optimizer step's record (in-process runs only).
    """
    if cfg.num_workers > 1:
        from mmrm.train.ray_train import train_with_ray

        return train_with_ray(cfg)
    from mmrm.train.trainer import train_loop

    from mmrm.rm.loading import resolve_device

    _, result = train_loop(cfg, on_step=on_step, device=str(resolve_device(cfg.device)))
    return result


__all__ = ["TrainConfig", "TrainResult", "train"]
