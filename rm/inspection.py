"""What a checkpoint directory is, as ``mmrm inspect`` reports it: its layout, backbone, head,
pooling rule, template, dtype and size, read from headers and small files only (no model is built).
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, Field

from mmrm.rm import checkpoint as ckpt
from mmrm.rm import layouts
from mmrm.rm.options import LayoutName

__all__ = ["Inspection", "inspect_checkpoint"]


class Inspection(BaseModel):
    """A checkpoint as mmrm would load it."""

    path: str = Field(description="The checkpoint directory.")
    layout: LayoutName = Field(description="The detected (or forced) layout.")
    layout_title: str = Field(description="The layout in words.")
    backbone_class: str = Field(description="config.json architectures[0].")
    model_type: str | None = Field(description="config.json model_type.")
    vision: bool = Field(description="Whether the backbone has a vision tower.")
    head: str = Field(description="The reward head: type, width, and where its tensors are.")
    pooling: str = Field(description="Which token's hidden state is pooled.")
    pool_token: str | None = Field(description="The token every scored sequence must end with (needs the tokenizer).")
    template: str = Field(description="What is rendered before tokenizing.")
    dtype: str | None = Field(description="The weights' dtype as config.json records it.")
    parameters: int = Field(description="Tensor elements in the backbone's weight files.")
    size_bytes: int = Field(description="Bytes of all files in the directory.")

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) rows for a table."""
        gib = self.size_bytes / 2**30
        return [
            ("layout", f"{self.layout} ({self.layout_title})"),
            ("backbone", f"{self.backbone_class} (model_type {self.model_type}{', vision' if self.vision else ', text only'})"),
            ("head", self.head),
            ("pooling", self.pooling),
            ("pool token", repr(self.pool_token)),
            ("template", self.template),
            ("dtype", str(self.dtype)),
            ("size", f"{self.parameters / 1e6:.2f}M parameters, {gib:.3f} GiB on disk"),
        ]


def _head(plan: layouts.Plan, path: Path) -> str:
    if plan.layout == "mmrm":
        cfg = ckpt.read_config(path)
        assert cfg is not None
        inner = f", inner {cfg.head.inner_size or cfg.head.hidden_size}" if cfg.head.type == "mlp2" else ""
        return f"{cfg.head.type} ({cfg.head.hidden_size}{inner}) in {ckpt.HEAD_NAME}"
    keys = ", ".join(f"{k} {list(s)}" for k, s in plan.expected_head().items())
    if plan.head_type == "dense_tanh":
        return f"dense_tanh ({plan.hidden_size} -> {plan.hidden_size} -> tanh -> 1) from {plan.head_file}: {keys}"
    out = f"linear ({plan.hidden_size} -> 1{', no bias' if plan.head_bias is None else ''}) from {plan.head_file}: {keys}"
    if plan.normalize is not None:
        out += f"; reward (r - {plan.normalize[0]}) / {plan.normalize[1]}"
    return out


def inspect_checkpoint(path: str | Path, layout: LayoutName | None = None) -> Inspection:
    """Detect a checkpoint's layout and describe it (see :class:`Inspection`).

    Raises :class:`~mmrm.rm.errors.ConfigError` for a directory no layout recognises, naming the
    files and tensors found and the layouts known.
    """
    path = Path(path)
    facts = layouts.read_facts(path)
    plan = layouts.detect_facts(facts, layout)
    pool = _pool_token(path, plan)
    title = next(lay.title for lay in layouts.LAYOUTS if lay.name == plan.layout)
    dtype = facts.config.get("dtype") or facts.config.get("torch_dtype") or (facts.config.get("text_config") or {}).get("dtype")
    return Inspection(
        path=str(path), layout=plan.layout, layout_title=title, backbone_class=plan.backbone_class,
        model_type=facts.config.get("model_type"), vision=facts.vision, head=_head(plan, path),
        pooling=plan.pooling, pool_token=pool, template=plan.template, dtype=dtype,
        parameters=sum(math.prod(s) for s in facts.weights.values()),
        size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    )


def _pool_token(path: Path, plan: layouts.Plan) -> str | None:
    from mmrm.rm import loading

    processor = loading.load_processor(path)
    if plan.layout == "mmrm":
        cfg = ckpt.read_config(path)
        return cfg.pool_token if cfg is not None else None
    return loading.plan_config(plan, processor).pool_token
