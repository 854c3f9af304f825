"""Bradley-Terry training loop: in-process, or one copy per Ray Train worker (DDP).

Resuming is exact: the data order is a pure function of (seed, epoch), and the resumable state
holds the trainable weights, the optimizer and scheduler, the step and the RNG states. A run
stopped at step k and resumed ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mmrm.rm.encode import Encoded, collate
from mmrm.rm.errors import MmrmError
from mmrm.rm.media import MediaPolicy
from mmrm.rm.reward_model import RewardModel
from mmrm.train.config import TrainConfig
from mmrm.train.data import PreferencePair, load_pairs
from mmrm.train.loss import bradley_terry_loss

log = logging.getLogger(__name__)

STATE_DIR = "train_state"


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    checkpoint: Path | None
    steps: int
    total_steps: int
    final_loss: float | None
    eval_accuracy: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "steps": self.steps,
            "total_steps": self.total_steps,
            "final_loss": self.final_loss,
            "eval_accuracy": self.eval_accuracy,
            "seconds": round(self.seconds, 2),
            "history": self.history,
        }


def media_policy_for(cfg: TrainConfig) -> MediaPolicy:
    """Local images may come from the data files' folders and the configured roots, nowhere else."""
    roots = [Path(cfg.train_data).resolve().parent, *[Path(r).resolve() for r in cfg.media_roots]]
    if cfg.eval_data:
        roots.append(Path(cfg.eval_data).resolve().parent)
    return MediaPolicy(allowed_roots=roots)


def build_model(cfg: TrainConfig, device: str = "cpu") -> RewardModel:
    """The reward model to train: the backbone, a seeded head, and the tuning mode applied."""
    rm = RewardModel.from_backbone(
        cfg.backbone, head_type=cfg.head_type, inner_size=cfg.head_inner_size, seed=cfg.seed, dtype=cfg.dtype,
        device=device, max_length=cfg.max_length, truncation=cfg.truncation, media_policy=media_policy_for(cfg),
    )
    if cfg.tune == "frozen":
        rm.backbone.requires_grad_(False)
    elif cfg.tune == "lora":
        from peft import LoraConfig, get_peft_model

        rm.backbone = get_peft_model(
            rm.backbone,
            LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                       target_modules=cfg.lora.target_modules, bias="none"),
        )
    return rm


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class _Encodings:
    """Encodes each pair once (media loaded and tokenized), on first use."""

    def __init__(self, rm: RewardModel, pairs: list[PreferencePair]) -> None:
        self.rm, self.pairs = rm, pairs
        self._cache: dict[int, tuple[Encoded, Encoded]] = {}

    def __call__(self, i: int) -> tuple[Encoded, Encoded]:
        if i not in self._cache:
            a, b = self.pairs[i].pair.samples()
            try:
                self._cache[i] = (self.rm.encode(a), self.rm.encode(b))
            except MmrmError as e:
                raise e.with_field_prefix(f"train_data[{i}]")
        return self._cache[i]


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, pairs: list[PreferencePair]) -> float:
    """Share of pairs with r(chosen) > r(rejected); a tie counts as wrong."""
    if not pairs:
        return float("nan")
    was_training = rm.training
    rm.eval()
    enc = _Encodings(rm, pairs)
    flat: list[Encoded] = []
    for i in range(len(pairs)):
        flat.extend(enc(i))
    r = rm.rewards_of(flat)
    rm.train(was_training)
    wins = [float(r[2 * k]) > float(r[2 * k + 1]) for k in range(len(pairs))]
    return float(np.mean(wins))


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


_STATE_FILES = ("trainable.safetensors", "optim.pt", "meta.json")  # meta.json is written last


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in _STATE_FILES)


def recover_state(path: Path) -> None:
    """Repair what a kill inside :func:`save_state` can leave: the new state still in ``.tmp`` or
    the previous one still in ``.old``. A complete ``.tmp`` wins (it is newer), else ``.old``."""
    import shutil

    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if not path.exists():
        if tmp.exists() and _complete(tmp):
            tmp.rename(path)
        elif old.exists():
            old.rename(path)
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> None:
    """Write the resumable state so that a kill at any instant leaves a loadable one behind: the new
    state is written to ``.tmp`` (``meta.json`` last), the old one moved to ``.old``, the new one
    moved in, the old one removed; :func:`recover_state` finishes an interrupted sequence."""
    import shutil

    from safetensors.torch import save_file

    recover_state(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in _trainable(model).items()}, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()}, tmp / "optim.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = _trainable(model)
    missing = set(params) - set(weights)
    if missing:
        raise MmrmError(f"resumable state does not match the model: missing {sorted(missing)[:3]}", field=str(path))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    st = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    _set_rng_state(st["rng"])
    return int(json.loads((path / "meta.json").read_text())["step"])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of an epoch: a pure function of (seed, epoch), so resume replays it exactly."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_loop(
    cfg: TrainConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    save_final: bool = True,
) -> tuple[RewardModel, TrainResult]:
    """Run (or resume) training. With ``world_size > 1`` each rank takes its share of every batch and
    ``wrap`` (e.g. DDP) averages gradients; only rank 0 writes files."""
    t0 = time.perf_counter()
    _set_seed(cfg.seed)
    rm = build_model(cfg, device=device)
    rm.train()
    train_pairs = load_pairs(cfg.train_data)
    eval_pairs = load_pairs(cfg.eval_data) if cfg.eval_data else []
    if len(train_pairs) < cfg.batch_size:
        raise MmrmError(f"train_data has {len(train_pairs)} pairs, fewer than batch_size", field="train_data",
                        limit=cfg.batch_size)
    encodings = _Encodings(rm, train_pairs)
    model = wrap(rm) if wrap else rm

    params = _trainable(rm)
    head_ids = {id(p) for p in rm.head.parameters()}
    groups = [
        {"params": [p for p in params.values() if id(p) not in head_ids], "lr": cfg.lr},
        {"params": [p for p in params.values() if id(p) in head_ids], "lr": cfg.head_lr or cfg.lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    warm = max(cfg.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warm + 1)) if warm else 1.0)

    micro_per_epoch = len(train_pairs) // cfg.batch_size  # the last partial batch is dropped: equal shares
    total_steps = (micro_per_epoch * cfg.epochs) // cfg.grad_accum
    state_dir = Path(cfg.output_dir) / STATE_DIR
    step = 0
    if rank == 0:
        recover_state(state_dir)
    if (state_dir / "meta.json").exists():
        step = load_state(state_dir, rm, optimizer, scheduler)
        if rank == 0:
            log.info("resumed from %s at step %d", state_dir, step)

    history: list[dict[str, float]] = []
    last_loss: float | None = None
    share = cfg.batch_size // world_size
    stop_at = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps
    while step < stop_at:
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for a in range(cfg.grad_accum):
            micro = step * cfg.grad_accum + a
            epoch, within = divmod(micro, micro_per_epoch)
            order = epoch_order(cfg.seed, epoch, len(train_pairs))
            idx = order[within * cfg.batch_size:(within + 1) * cfg.batch_size][rank * share:(rank + 1) * share]
            chosen, rejected = zip(*(encodings(int(i)) for i in idx))
            batch = collate([*chosen, *rejected], rm.encoder.pad_id)
            rewards = model(batch)
            r_c, r_r = rewards[: len(idx)], rewards[len(idx):]
            margin = torch.tensor([train_pairs[int(i)].margin for i in idx], device=rewards.device)
            loss = bradley_terry_loss(r_c, r_r, margin=margin, center_coef=cfg.center_coef) / cfg.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        last_loss = loss_sum
        record = {"step": float(step), "loss": loss_sum}
        if cfg.eval_every and eval_pairs and step % cfg.eval_every == 0:
            record["eval_accuracy"] = pairwise_accuracy(rm, eval_pairs)
        history.append(record)
        if on_step:
            on_step(record)
        if rank == 0 and (
            (cfg.save_every and step % cfg.save_every == 0) or (cfg.stop_after_steps and step == stop_at and step < total_steps)
        ):
            save_state(state_dir, rm, optimizer, scheduler, step)

    finished = step >= total_steps
    acc = pairwise_accuracy(rm, eval_pairs) if (eval_pairs and finished) else None
    ckpt = None
    if finished and rank == 0 and save_final:
        ckpt = rm.save_pretrained(cfg.output_dir, merge_lora=cfg.lora.merge_on_save)
        summary = {"steps": step, "final_loss": last_loss, "eval_accuracy": acc, "history": history}
        (Path(cfg.output_dir) / "train_metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    result = TrainResult(checkpoint=ckpt, steps=step, total_steps=total_steps, final_loss=last_loss,
                         eval_accuracy=acc, history=history, seconds=time.perf_counter() - t0)
    return rm, result
