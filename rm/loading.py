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
from mmrm.rm import layouts
from mmrm.rm.encode import Encoder
from mmrm.rm.errors import ConfigError
from mmrm.rm.heads import HeadType, RewardHead, dense_tanh_state
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


def load_backbone(path: Path, *, dtype: DType, base: bool = False) -> nn.Module:
    """The checkpoint's transformers model: the base model alone
    (``base``: for checkpoints whose head sits beside the base model's weights), image-text-to-text
    (a VLM) or causal LM, in ``dtype``."""
    import transformers as tf

    _, vision = ckpt.backbone_architecture(path)
    kw: dict[str, Any] = {"dtype": DTYPES[dtype]}
    # The head's tensors are "unexpected" for the base class and are read by load_plan_head.
    cls = tf.AutoModel if base else tf.AutoModelForImageTextToText if vision else tf.AutoModelForCausalLM
    model, info = cls.from_pretrained(str(path), output_loading_info=True, **kw)
    # A body tensor left at random would score silently wrong; the LM head is never used for rewards.
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("lm_head.")]
    if missing:
        raise ConfigError(f"{path}: the backbone's weights lack {len(missing)} tensors ({', '.join(sorted(missing)[:8])}"
                          f"{', ...' if len(missing) > 8 else ''}); refusing a partly random model", field="checkpoint")
    return model


def load_head(path: Path, cfg: ckpt.CheckpointConfig, dtype: DType = "float32") -> RewardHead:
    """An mmrm checkpoint's reward head, in ``dtype``."""
    from safetensors.torch import load_file

    head = RewardHead(cfg.head.hidden_size, cfg.head.type, cfg.head.inner_size)
    head.load_state_dict(load_file(str(path / ckpt.HEAD_NAME)))
    return head.to(DTYPES[dtype])


def load_plan_head(path: Path, plan: layouts.Plan, dtype: DType = "float32") -> RewardHead:
    """The head a detected layout stores (:mod:`mmrm.rm.layouts`), as a ``linear`` (or, for MM-RLHF,
    ``dense_tanh``) head in ``dtype``.

    Every tensor the plan names must be there with its exact shape: a missing or misshapen one is a
    :class:`ConfigError` naming the tensor and both shapes, never a head left at random. A reward
    normalization ``(r - mean) / std`` is folded into the head's weight and bias.
    """
    assert plan.head_file is not None
    f = path / plan.head_file
    if not f.exists():
        raise ConfigError(f"the {plan.layout} layout's head file {plan.head_file} is missing in {path}", field=plan.head_file)
    tensors = _read_tensors(f, list(plan.expected_head()))
    for key, shape in plan.expected_head().items():
        if key not in tensors:
            raise ConfigError(f"{plan.head_file} has no {key} (expected shape {list(shape)}); it holds "
                              f"{sorted(tensors) or 'no head tensors'}", field=key)
        got = tuple(tensors[key].shape)
        if got != shape:
            raise ConfigError(f"{plan.head_file}: {key} has shape {list(got)}, expected {list(shape)}", field=key,
                              limit=list(shape))
    if plan.head_type == "dense_tanh":
        head = RewardHead(plan.hidden_size, "dense_tanh")
        head.load_state_dict({k: v.float() for k, v in dense_tanh_state(tensors).items()})
        return head.to(DTYPES[dtype])
    head = RewardHead(plan.hidden_size, "linear")
    w = tensors[plan.head_weight].float()  # type: ignore[index]
    b = tensors[plan.head_bias].float() if plan.head_bias else torch.zeros(1)
    if plan.normalize is not None:
        mean, std = plan.normalize
        w, b = w / std, (b - mean) / std
    with torch.no_grad():
        head.net.weight.copy_(w)
        head.net.bias.copy_(b)
    return head.to(DTYPES[dtype])


def _read_tensors(f: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a weight file that has them (``.bin`` files with ``weights_only=True``)."""
    if f.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in keys if k in fh.keys()}
    sd = layouts.load_pickle_safely(f)
    return {k: sd[k] for k in keys if k in sd}


def plan_config(plan: layouts.Plan, processor: Any) -> ckpt.CheckpointConfig:
    """The checkpoint config a detected layout implies (it has no ``mmrm_reward.json``)."""
    enc = Encoder(processor)
    suffix = plan.suffix
    if plan.eos_if_missing:
        eos = enc.tokenizer.eos_token
        probe = [Message(role="user", content="x"), Message(role="assistant", content="y")]
        if eos and not enc.render(probe, strip_end=plan.strip_end).endswith(eos):
            suffix = " " + eos
    if plan.suffix:
        vocab = enc.tokenizer.get_vocab()
        if plan.suffix not in vocab:
            raise ConfigError(f"the {plan.layout} layout pools the appended token {plan.suffix!r}, which the "
                              "checkpoint's tokenizer does not have", field="tokenizer", limit=plan.suffix)
    return ckpt.CheckpointConfig(
        head=ckpt.HeadConfig(type=plan.head_type, hidden_size=plan.hidden_size),
        pool_token=pool_token(enc, strip_end=plan.strip_end, suffix=suffix),
        max_length=DEFAULT_MAX_LENGTH,
        source=plan.layout,
        strip_end=plan.strip_end,
        suffix=suffix,
        turn_per_image=plan.turn_per_image,
    )


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
    # A base model (loaded alone, see load_backbone) is its own body.
    return getattr(model, model.base_model_prefix, model)


def hidden_size(model: nn.Module) -> int:
    """The width of a model's last hidden state (its text config's, for a VLM)."""
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    return int(text.hidden_size)


def pool_token(enc: Encoder, *, strip_end: bool = True, suffix: str = "") -> str:
    """The token a rendered (prompt, response) conversation ends with (trailing space stripped
    unless ``strip_end`` is off; ``suffix`` appended)."""
    probe = [Message(role="user", content="x"), Message(role="assistant", content="y")]
    ids = enc.tokenizer(enc.render(probe, strip_end=strip_end) + suffix, add_special_tokens=False)["input_ids"]
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
