"""Training configuration: one YAML file, validated by pydantic (``mmrm train --config train.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmrm.rm.errors import ConfigError

#: the training length (``max_length`` of a training run); scoring has its own (mmrm.rm.options).
TRAINING_MAX_LENGTH = 2048


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, gt=0, description="LoRA rank.")
    alpha: int = Field(default=32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout (0 keeps resume exact and cheap).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names of the language model to adapt.",
    )
    merge_on_save: bool = Field(default=True, description="Merge LoRA into the backbone in the final checkpoint.")


class TrainConfig(BaseModel):
    """Bradley-Terry training of a reward head (and optionally the backbone).

    Loss per pair: ``-logsigmoid(r_chosen - r_rejected - margin)`` (margin from the data's
    ``margin`` column, 0 when absent) ``+ center_coef * mean((r_chosen + r_rejected)^2)``.
    """

    model_config = ConfigDict(extra="forbid")

    # Parameters that control the model
    backbone: Path = Field(description="A transformers checkpoint directory (VLM or causal LM).")
    output_dir: Path = Field(description="Where the reward checkpoint (and resumable state) is written.")
    head_type: Literal["linear", "mlp2"] = "mlp2"
    head_inner_size: int | None = Field(default=None, gt=0)
    tune: Literal["frozen", "lora", "full"] = Field(
        default="full", description="frozen: head only; lora: head + LoRA adapters (peft); full: everything."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    max_length: int = Field(
        default=TRAINING_MAX_LENGTH, gt=0,
        description="The training length: longest encoded pair side in tokens during training (media expanded); "
        "longer ones are refused or truncated per `truncation`. The checkpoint records it as its max_length, "
        "which scoring uses unless the scoring options set one (mmrm.rm.options; scoring's own default is the "
        "checkpoint's value, 4096 for a checkpoint that records none).")
    truncation: Literal["refuse", "left"] = Field(
        default="refuse", description="An over-long pair side: refuse it, or drop prompt tokens from the left.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field(default="auto", description="auto (CUDA when present), cpu or cuda[:N]; in-process runs.")

    # Parameters that control the data
    train_data: Path = Field(description="JSONL or Parquet with prompt/chosen/rejected (+images, margin).")
    eval_data: Path | None = Field(default=None, description="Held-out pairs for pairwise accuracy.")
    media_roots: list[Path] = Field(
        default_factory=list, description="Extra folders local image paths may come from (data folders are added)."
    )

    # Parameters that control optimization
    seed: int = 0
    epochs: int = Field(default=1, gt=0)
    batch_size: int = Field(default=16, gt=0, description="Pairs per optimizer micro-step, across all workers.")
    grad_accum: int = Field(default=1, gt=0, description="Micro-steps per optimizer step.")
    lr: float = Field(default=3e-4, gt=0)
    head_lr: float | None = Field(default=None, gt=0, description="Learning rate of the head (default: lr).")
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    center_coef: float = Field(default=0.0, ge=0, description="Reward-centering coefficient (0 = off).")

    # Parameters that control evaluation, checkpoints and scale
    eval_every: int = Field(default=0, ge=0, description="Optimizer steps between evaluations (0 = at the end only).")
    save_every: int = Field(default=0, ge=0, description="Optimizer steps between resumable states (0 = off).")
    stop_after_steps: int | None = Field(
        default=None, gt=0, description="Stop (with a resumable state) after this many optimizer steps."
    )
    num_workers: int = Field(default=1, gt=0, description="Ray Train workers (1 = in-process, no Ray).")
    use_gpu: bool = False
    cpus_per_worker: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.batch_size % self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by num_workers ({self.num_workers}) "
                "so every worker gets the same share of each batch"
            )
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        """Load a YAML file; relative paths in it are relative to the file's folder."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read training config: {e}", field=str(path)) from e
        for key in ("backbone", "output_dir", "train_data", "eval_data"):
            if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute():
                raw[key] = str((path.parent / raw[key]).resolve())
        return cls.model_validate(raw)
