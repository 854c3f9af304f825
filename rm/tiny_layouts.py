"""Tiny checkpoints in the published reward-model layouts (:mod:`mmrm.rm.layouts`), built locally.

Each builder starts from a tiny model of :mod:`mmrm.rm.tiny` (real transformers classes, random
weights) and writes a directory laid out as the published models are: the same file names,
tensor names and shapes, ``config.json`` ``architectures`` / ``model_type``, and special tokens.
Tests and the README examples use them; nothing here is downloaded.

* :func:`build_value_head` - TRL / LLaMA-Factory: the backbone's own weights plus
  ``value_head.safetensors`` (or ``.bin``) with ``v_head.summary.weight`` [1, H] and
  ``v_head.summary.bias`` [1]. On Qwen2.5-VL with Qwen2.5-VL's chat template (a default system
  turn) this is Skywork-VL-Reward's layout.
* :func:`build_docreward` - Qwen2.5-VL + ``value_head.bin`` + the ``<|regression|>`` special token.
* :func:`build_openrlhf` - OpenRLHF's reward model class: the base model's weights under
  ``model.`` and a bias-free ``{value_head_prefix}.weight`` [1, H], ``architectures: [RewardModel]``.
* :func:`build_vl_sequence_classification` - a VLM saved as ms-swift-style sequence
  classification: the VLM's weights without ``lm_head`` plus ``score.weight`` [num_labels, H].
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from mmrm.rm.layouts import REGRESSION_TOKEN, VALUE_HEAD_KEYS
from mmrm.rm.tiny import build_tiny_model, chat_template

__all__ = ["QWEN2_5_VL_TEMPLATE", "build_docreward", "build_openrlhf", "build_value_head",
           "build_vl_sequence_classification"]

#: The shape of Qwen2.5-VL-Instruct's chat template: a default system turn when the conversation
#: has none, ``<|im_end|>\n`` after every turn, vision placeholders for media parts.
QWEN2_5_VL_TEMPLATE = chat_template("You are a helpful assistant.")


#: the standard deviation of the random head weights
HEAD_STD = 0.25


def _value_head_tensors(hidden: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    # rewards of order 1: pooling the wrong token shows, and fp32 rounding stays far below 1e-5
    return {VALUE_HEAD_KEYS[0]: torch.randn(1, hidden, generator=g) * HEAD_STD, VALUE_HEAD_KEYS[1]: torch.randn(1, generator=g)}


def _hidden(out: Path) -> int:
    cfg = json.loads((out / "config.json").read_text())
    return int((cfg.get("text_config") or cfg)["hidden_size"])


def _set_template(out: Path, template: str) -> None:
    import transformers as tf

    vision = "vision_config" in json.loads((out / "config.json").read_text())
    proc = (tf.AutoProcessor if vision else tf.AutoTokenizer).from_pretrained(str(out))
    proc.chat_template = template
    if vision:
        proc.tokenizer.chat_template = template
    proc.save_pretrained(str(out))


def build_value_head(out: str | Path, *, arch: Literal["qwen2", "qwen2_5_vl"] = "qwen2_5_vl", seed: int = 0,
                     head_format: Literal["safetensors", "bin"] = "safetensors", chat_template: str | None = None) -> Path:
    """A TRL / LLaMA-Factory value-head reward model (Skywork-VL-Reward's layout on ``qwen2_5_vl``)."""
    import torch
    from safetensors.torch import save_file

    out = build_tiny_model(arch, out, seed=seed)
    (out / "mmrm_tiny.json").unlink()
    _set_template(out, chat_template or QWEN2_5_VL_TEMPLATE)
    tensors = _value_head_tensors(_hidden(out), seed + 101)
    if head_format == "safetensors":
        save_file(tensors, str(out / "value_head.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(tensors, str(out / "value_head.bin"))
    return out


def build_docreward(out: str | Path, *, seed: int = 0, with_token: bool = True) -> Path:
    """DocReward's layout: Qwen2.5-VL, ``value_head.bin``, and ``<|regression|>`` added to the
    tokenizer as a special token with the embeddings resized (``with_token=False`` leaves it out)."""
    import torch
    import transformers as tf

    out = build_tiny_model("qwen2_5_vl", out, seed=seed)
    (out / "mmrm_tiny.json").unlink()
    _set_template(out, QWEN2_5_VL_TEMPLATE)
    if with_token:
        proc = tf.AutoProcessor.from_pretrained(str(out))
        proc.tokenizer.add_tokens([REGRESSION_TOKEN], special_tokens=True)  # as LLaMA-Factory's add_special_tokens
        model = tf.AutoModelForImageTextToText.from_pretrained(str(out))
        torch.manual_seed(seed + 7)
        model.resize_token_embeddings(len(proc.tokenizer))
        for f in out.glob("model*.safetensors"):
            f.unlink()
        model.save_pretrained(str(out))
        proc.save_pretrained(str(out))
    torch.save(_value_head_tensors(_hidden(out), seed + 202), str(out / "value_head.bin"))
    return out


def build_openrlhf(out: str | Path, *, seed: int = 0, value_head_prefix: str = "score",
                   normalize: tuple[float, float] | None = None) -> Path:
    """OpenRLHF's reward model on the tiny Qwen2: its class layout (``_get_reward_model`` of
    ``openrlhf/models/model.py``, 0.11.2): the base model as ``model``, ``Linear(H, 1, bias=False)``
    named ``value_head_prefix``; ``normalize`` = (mean, std) is written to config.json as its
    trainer does."""
    import torch
    import transformers as tf
    from torch import nn

    tmp = Path(out).with_name(Path(out).name + ".src")
    src = build_tiny_model("qwen2", tmp, seed=seed)
    config = tf.AutoConfig.from_pretrained(str(src))
    base_cls = tf.AutoModel._model_mapping[type(config)]

    class RewardModel(base_cls.__base__):  # type: ignore[name-defined,misc]
        def __init__(self, cfg):
            super().__init__(cfg)
            setattr(self, self.base_model_prefix, base_cls(cfg))
            setattr(self, value_head_prefix, nn.Linear(cfg.hidden_size, 1, bias=False))
            self.post_init()

    config.value_head_prefix = value_head_prefix
    config.normalize_reward = normalize is not None
    if normalize is not None:
        config.mean, config.std = normalize
    model = RewardModel(config)
    body = tf.AutoModel.from_pretrained(str(src))
    getattr(model, model.base_model_prefix).load_state_dict(body.state_dict())
    with torch.no_grad():
        getattr(model, value_head_prefix).weight.normal_(0.0, HEAD_STD, generator=torch.Generator().manual_seed(seed + 303))
    out = Path(out)
    model.save_pretrained(str(out))
    tf.AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    shutil.rmtree(tmp)
    return out


def build_vl_sequence_classification(out: str | Path, *, seed: int = 0, num_labels: int = 1) -> Path:
    """A Qwen2.5-VL saved as sequence classification the ms-swift way: the VLM's weights without
    ``lm_head``, ``score.weight`` [num_labels, H], ``architectures: [Qwen2_5_VLForSequenceClassification]``
    (a class transformers does not register)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = build_tiny_model("qwen2_5_vl", out, seed=seed)
    (out / "mmrm_tiny.json").unlink()
    _set_template(out, QWEN2_5_VL_TEMPLATE)
    files = sorted(out.glob("model*.safetensors"))
    assert len(files) == 1, files  # tiny models are one shard
    sd = load_file(str(files[0]))
    sd.pop("lm_head.weight")
    g = torch.Generator().manual_seed(seed + 404)
    sd["score.weight"] = torch.randn(num_labels, _hidden(out), generator=g) * HEAD_STD
    save_file(sd, str(files[0]), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["architectures"] = ["Qwen2_5_VLForSequenceClassification"]
    cfg["num_labels"] = num_labels
    cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    cfg["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out
