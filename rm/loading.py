"""Loading the parts of a reward model from a checkpoint directory (:mod:`mmrm.rm.checkpoint`):
the transformers backbone, its processor, the reward head, and the pooled token.

Both engines load the processor, the checkpoint config and the head here; only the ``hf`` engine
loads the backbone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmrm.rm import checkpoint as ckpt
from mmrm.rm.encode import Encoder
from mmrm.rm.errors import ConfigError
from mmrm.rm.heads import HeadType, RewardHead
from mmrm.rm.options import DEFAULT_MAX_LENGTH, DType, ModelOptions
from mmrm.rm.types import Message

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_processor(path: Path) -> Any:
    """A checkpoint's processor (VLM) or tokenizer (text model)."""
    import transformers as tf

    _, vision = ckpt.backbone_architecture(path)
    return tf.AutoProcessor.from_pretrained(str(path)) if vision else tf.AutoTokenizer.from_pretrained(str(path))


def load_backbone(path: Path, *, dtype: DType, sequence_classification: bool = False) -> nn.Module:
    """The checkpoint's transformers model: ``*ForSequenceClassification``, image-text-to-text
    (a VLM) or causal LM, in ``dtype``."""
    import transformers as tf

    _, vision = ckpt.backbone_architecture(path)
    kw: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if sequence_classification:
        return tf.AutoModelForSequenceClassification.from_pretrained(str(path), **kw)
    if vision:
        return tf.AutoModelForImageTextToText.from_pretrained(str(path), **kw)
    return tf.AutoModelForCausalLM.from_pretrained(str(path), **kw)


def load_head(path: Path, cfg: ckpt.CheckpointConfig, dtype: DType = "float32") -> RewardHead:
    """An mmrm checkpoint's reward head, in ``dtype``."""
    from safetensors.torch import load_file

    head = RewardHead(cfg.head.hidden_size, cfg.head.type, cfg.head.inner_size)
    head.load_state_dict(load_file(str(path / ckpt.HEAD_NAME)))
    return head.to(DTYPES[dtype])


def seeded_head(hidden: int, head_type: HeadType, inner_size: int | None, seed: int) -> RewardHead:
    """A new head whose weights follow from ``seed`` alone (so a training run is reproducible)."""
    g = torch.Generator().manual_seed(seed)
    head = RewardHead(hidden, head_type, inner_size)
    with torch.no_grad():
        for p in head.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p.shape[1])))
            else:
                p.zero_()
    return head


def head_from_score_layer(model: nn.Module, dtype: DType) -> RewardHead:
    """A one-label ``*ForSequenceClassification`` model's ``score`` layer as a ``linear`` head."""
    if model.config.num_labels != 1:
        raise ConfigError(
            f"a sequence-classification reward model must have one label, this one has {model.config.num_labels}",
            field="num_labels", limit=1,
        )
    score: nn.Linear = model.score
    head = RewardHead(score.in_features, "linear")
    with torch.no_grad():
        head.net.weight.copy_(score.weight.float())
        head.net.bias.copy_(score.bias.float() if score.bias is not None else torch.zeros(1))
    return head.to(DTYPES[dtype])


def sequence_classification_config(processor: Any, hidden: int) -> ckpt.CheckpointConfig:
    """The checkpoint config a sequence-classification checkpoint implies (it has no ``mmrm_reward.json``)."""
    return ckpt.CheckpointConfig(
        head=ckpt.HeadConfig(type="linear", hidden_size=hidden),
        pool_token=pool_token(Encoder(processor)),
        max_length=DEFAULT_MAX_LENGTH,
        source="sequence_classification",
    )


def with_length_policy(cfg: ckpt.CheckpointConfig, options: ModelOptions) -> ckpt.CheckpointConfig:
    """``cfg`` with the options' ``max_length`` / ``truncation`` where they set one."""
    updates = {k: v for k, v in (("max_length", options.max_length), ("truncation", options.truncation)) if v is not None}
    return cfg.model_copy(update=updates)


def base_model(model: nn.Module) -> nn.Module:
    """The transformer body (vision tower + decoder) of a causal-LM / VLM / seq-cls model, no LM head."""
    try:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            model = model.get_base_model()
    except ImportError:  # peft is optional at inference
        pass
    return getattr(model, model.base_model_prefix)


def hidden_size(model: nn.Module) -> int:
    """The width of a model's last hidden state (its text config's, for a VLM)."""
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    return int(text.hidden_size)


def pool_token(enc: Encoder) -> str:
    """The token a rendered (prompt, response) conversation ends with once trailing space is stripped."""
    probe = [Message(role="user", content="x"), Message(role="assistant", content="y")]
    ids = enc.tokenizer(enc.render(probe, strip_end=True), add_special_tokens=False)["input_ids"]
    return enc.tokenizer.convert_ids_to_tokens(ids[-1])


def save_backbone(model: nn.Module, path: Path, *, merge_lora: bool) -> Any:
    """Write a backbone in its transformers format; returns how LoRA is stored (``merged``,
    ``adapter`` or None for no LoRA)."""
    try:
        from peft import PeftModel
    except ImportError:
        PeftModel = None  # noqa: N806 - peft is optional
    if PeftModel is None or not isinstance(model, PeftModel):
        model.save_pretrained(str(path))
        return None
    if merge_lora:
        # merge a copy so the in-memory model keeps training with its adapter
        import copy

        copy.deepcopy(model).merge_and_unload().save_pretrained(str(path))
        return "merged"
    model.get_base_model().save_pretrained(str(path))  # with the adapter layers stripped below
    model.save_pretrained(str(path / ckpt.ADAPTER_DIR))
    _strip_lora_from_saved(path)
    return "adapter"


def _strip_lora_from_saved(path: Path) -> None:
    """peft's get_base_model() still holds LoRA layers; rewrite the saved weights without them."""
    from safetensors.torch import load_file, save_file

    for f in path.glob("model*.safetensors"):
        sd = load_file(str(f))
        clean = {}
        for k, v in sd.items():
            if "lora_" in k:
                continue
            clean[k.replace(".base_layer.", ".")] = v
        save_file(clean, str(f), metadata={"format": "pt"})
