"""The reward-model checkpoint directory format.

One self-contained directory that every part of mmrm loads by path (scoring, the service,
training, eval, the vLLM engine)::

    config.json, model*.safetensors   the backbone, in its ordinary transformers format
                                      (LoRA merged), loadable with the Auto* classes
    adapter/                          only when LoRA is stored unmerged: a peft adapter on the
                                      backbone above
    tokenizer*, chat_template.jinja,  tokenizer, processor and chat template
    processor_config.json
    head.safetensors                  the reward head (float32)
    mmrm_reward.json                  CheckpointConfig below: head, pooling rule, pooled token

Published reward models in other layouts (TRL / LLaMA-Factory value heads, Skywork-VL-Reward,
DocReward, OpenRLHF, one-label ``*ForSequenceClassification``) have no ``mmrm_reward.json``; they
are detected by :mod:`mmrm.rm.layouts` and load as a ``linear`` head pooled as their authors pool.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mmrm.rm.errors import ConfigError
from mmrm.rm.heads import HeadType

CONFIG_NAME = "mmrm_reward.json"
HEAD_NAME = "head.safetensors"
ADAPTER_DIR = "adapter"


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: HeadType = Field(default="mlp2", description="linear, mlp2 (Linear-SiLU-Linear) or dense_tanh "
                           "(Linear(H, H)-tanh-Linear, MM-RLHF's).")
    hidden_size: int = Field(gt=0, description="Width of the backbone's last hidden state.")
    inner_size: int | None = Field(default=None, gt=0, description="Width of mlp2's inner layer.")


class CheckpointConfig(BaseModel):
    """``mmrm_reward.json``: what turns a backbone into a reward model."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    head: HeadConfig
    pooling: Literal["last_token"] = Field(
        default="last_token", description="Pool the hidden state of the last real token of the sequence."
    )
    pool_token: str = Field(
        description="The exact token every scored sequence ends with and that is pooled: the chat "
        "template's end-of-turn token after the response (trailing whitespace is stripped)."
    )
    max_length: int = Field(default=4096, gt=0, description="Longest input in tokens, media expanded.")
    truncation: Literal["refuse", "left"] = Field(
        default="refuse", description="Over-long input: refuse (422), or drop prompt tokens from the left."
    )
    lora: Literal["merged", "adapter"] | None = Field(
        default=None, description="How LoRA weights are stored: merged into the backbone, or in adapter/."
    )
    strip_end: bool = Field(
        default=True, description="Strip trailing whitespace of the rendered conversation (mmrm, OpenRLHF); "
        "value-head and sequence-classification layouts pool the template's trailing newline and keep it.")
    suffix: str = Field(
        default="", description="Text appended to the rendered conversation: a token the layout pools "
        "(DocReward's <|regression|>); empty for none.")
    turn_per_image: bool = Field(
        default=False, description="Render a response made only of images as one assistant turn per image "
        "(DocReward: each document page is its own assistant turn).")
    source: Literal["mmrm", "sequence_classification", "value_head", "docreward", "openrlhf", "mm_rlhf"] = Field(
        default="mmrm", description="The layout the checkpoint was loaded from (mmrm.rm.layouts).")


def read_config(path: Path) -> CheckpointConfig | None:
    """The checkpoint's CheckpointConfig, or None when the directory has no ``mmrm_reward.json``."""
    f = path / CONFIG_NAME
    if not f.exists():
        return None
    try:
        return CheckpointConfig.model_validate_json(f.read_text())
    except ValueError as e:
        raise ConfigError(f"invalid {CONFIG_NAME}: {e}", field=str(f)) from e


def write_config(path: Path, cfg: CheckpointConfig) -> None:
    (path / CONFIG_NAME).write_text(cfg.model_dump_json(indent=2) + "\n")


def backbone_architecture(path: Path) -> tuple[str, bool]:
    """(first architecture name, has vision) from the backbone's ``config.json``."""
    f = path / "config.json"
    if not f.exists():
        raise ConfigError(f"{path} is not a checkpoint directory: no config.json", field="checkpoint")
    cfg = json.loads(f.read_text())
    archs = cfg.get("architectures") or [""]
    return archs[0], "vision_config" in cfg


def fingerprint(path: Path) -> str:
    """A content hash of a checkpoint directory (first 16 hex digits of a sha256).

    Small files are hashed whole. Weight files are hashed by name, size and their first and last
    MiB: enough to tell checkpoints apart without reading many gigabytes at every start.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= 4 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:16]
