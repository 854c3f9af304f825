"""The checkpoint layouts mmrm loads, one entry each, and their detection.

A published reward model is a transformers backbone plus a scalar head, but every trainer stores
the head, and pools the sequence, its own way. Each :class:`Layout` below says how to recognise one
from the files alone (names, ``config.json``, tensor names and shapes read from file headers), where
its head lives, and how its authors' code renders and pools a conversation. :func:`detect` returns a
:class:`Plan` for a directory; :mod:`mmrm.rm.loading` carries it out.

Nothing here runs or imports a checkpoint's own Python files, and pickled ``.bin`` files are read
only with ``torch.load(weights_only=True)``.

* ``mmrm``: ``head.safetensors`` + ``mmrm_reward.json``; the template's end-of-turn token.
* ``value_head`` (TRL, LLaMA-Factory, Skywork-VL-Reward): ``value_head.safetensors`` / ``.bin``
  (or TRL's own save: among the model weights) with ``v_head.summary.weight`` [1, H] and
  ``v_head.summary.bias`` [1]; the last real token of the unstripped chat template
  (``attention_mask.sum(-1) - 1``).
* ``docreward``: as ``value_head`` (``value_head.bin``) plus the ``<|regression|>`` token, appended
  and pooled.
* ``openrlhf``: a bias-free ``{value_head_prefix}.weight`` [1, H] beside the base model's weights;
  the last real token; ``(r - mean) / std`` when ``normalize_reward``.
* ``sequence_classification`` (``*ForSequenceClassification``, VLM ones included): ``score.weight``
  [1, H]; the last real token of the unstripped chat template.
* ``mm_rlhf`` (MM-RLHF-Reward, converted by ``mmrm convert --to llava_onevision`` from LLaVA's
  code layout): ``LlavaOnevisionForConditionalGeneration`` weights plus ``rm_head.safetensors``
  (``rm_head.dense`` [H, H] -> tanh -> ``rm_head.out_proj`` [1, H]); pooled at
  ``attention_mask.cumsum(-1)[:, -1] - 1``, the last real token of mmrm's right-padded batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from mmrm.rm.errors import ConfigError
from mmrm.rm.options import LayoutName

__all__ = ["DOCREWARD_TASK_PROMPT", "LAYOUTS", "Facts", "Layout", "LayoutName", "Plan", "detect", "detect_facts", "read_facts"]

#: which transformers class loads the backbone: the causal LM / VLM (``causal``), or the base model
#: alone (``base``: the checkpoint's head sits beside its weights and is read separately).
Loader = Literal["mmrm", "causal", "base"]

VALUE_HEAD_FILES = ("value_head.safetensors", "value_head.bin")
#: where ``mmrm convert --to llava_onevision`` puts MM-RLHF's ``rm_head.*`` tensors.
MMRLHF_HEAD_FILE = "rm_head.safetensors"
VALUE_HEAD_KEYS = ("v_head.summary.weight", "v_head.summary.bias")
REGRESSION_TOKEN = "<|regression|>"
#: DocReward's task prompt (``demo_inference.py`` of github.com/Junpliu/DocReward, commit 6d0ddaa):
#: the user turn before the document pages, which are the assistant's turns.
DOCREWARD_TASK_PROMPT = "You need to create a professional document page(s). "
_WEIGHT_GLOBS = ("model*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class Facts:
    """What a checkpoint directory holds, read without loading a model or running any of its code.

    Attributes:
        path: the directory.
        files: names of its top-level files.
        config: its ``config.json``.
        weights: backbone tensor name -> shape, from the weight files' headers.
        weight_files: backbone tensor name -> the file that holds it.
        added_tokens: the tokenizer's added tokens (``tokenizer_config.json`` / ``tokenizer.json``).
    """

    path: Path
    files: tuple[str, ...]
    config: dict[str, Any]
    weights: dict[str, tuple[int, ...]]
    weight_files: dict[str, str]
    added_tokens: frozenset[str]

    @property
    def architecture(self) -> str:
        return (self.config.get("architectures") or [""])[0]

    @property
    def hidden_size(self) -> int:
        text = self.config.get("text_config") or {}
        h = text.get("hidden_size") or self.config.get("hidden_size")
        if not h:
            raise ConfigError(f"{self.path}/config.json names no hidden_size", field="config.hidden_size")
        return int(h)

    @property
    def vision(self) -> bool:
        return "vision_config" in self.config


@dataclass(frozen=True)
class Plan:
    """How to load one checkpoint: the detected layout and everything its loading needs.

    Attributes:
        layout: the layout's name.
        backbone_class: the architecture ``config.json`` names.
        loader: which transformers class loads the backbone (see :data:`Loader`).
        head_file: the file holding the head (relative to the checkpoint).
        head_type: the head's form: ``linear`` (one weight [1, H] and an optional bias [1]) or
            ``dense_tanh`` (MM-RLHF's four ``rm_head.*`` tensors).
        head_weight: the head's weight tensor name; its shape must be ``[1, hidden_size]``.
        head_bias: the head's bias tensor name (shape ``[1]``), or None for a bias-free head.
        hidden_size: the backbone's hidden size.
        normalize: ``(mean, std)`` when rewards are reported as ``(r - mean) / std``.
        strip_end: whether trailing whitespace of the rendered conversation is removed.
        suffix: text appended to the rendered conversation (a token the layout pools).
        turn_per_image: a response made only of images renders as one assistant turn per image.
        eos_if_missing: append ``" " + eos_token`` when the rendered conversation does not end with
            the tokenizer's eos token (OpenRLHF's reward dataset does).
        pooling: how the authors' code pools, in words.
        template: what the authors' code renders, in words.
    """

    layout: LayoutName
    backbone_class: str
    loader: Loader
    hidden_size: int
    head_file: str | None = None
    head_type: Literal["linear", "dense_tanh"] = "linear"
    head_weight: str | None = None
    head_bias: str | None = None
    normalize: tuple[float, float] | None = None
    strip_end: bool = True
    suffix: str = ""
    turn_per_image: bool = False
    eos_if_missing: bool = False
    pooling: str = "last real token"
    template: str = "the checkpoint's chat template"

    def expected_head(self) -> dict[str, tuple[int, ...]]:
        """Head tensor name -> the shape it must have."""
        h = self.hidden_size
        if self.head_type == "dense_tanh":
            return {"rm_head.dense.weight": (h, h), "rm_head.dense.bias": (h,),
                    "rm_head.out_proj.weight": (1, h), "rm_head.out_proj.bias": (1,)}
        out: dict[str, tuple[int, ...]] = {}
        if self.head_weight:
            out[self.head_weight] = (1, self.hidden_size)
        if self.head_bias:
            out[self.head_bias] = (1,)
        return out


@dataclass(frozen=True)
class Layout:
    """One checkpoint layout: how to recognise it, what it needs, and how to plan its loading."""

    name: LayoutName
    title: str
    needs: str
    matches: Callable[[Facts], bool]
    plan: Callable[[Facts], Plan] = field(repr=False)


# ---------------------------------------------------------------------------------------- reading
def _safetensors_shapes(f: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as fh:
        return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}


def load_pickle_safely(f: Path, *, mmap: bool = False) -> dict[str, Any]:
    """A ``.bin`` state dict, read with ``torch.load(weights_only=True)``: tensors only, never code."""
    import torch

    try:
        sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # an unpickler refusal or a broken file: both mean "do not load this"
        raise ConfigError(f"{f.name} cannot be read as a plain tensor file (weights_only=True): {e}",
                          field=str(f)) from e
    if not isinstance(sd, dict):
        raise ConfigError(f"{f.name} holds a {type(sd).__name__}, not a state dict", field=str(f))
    return sd


def tensor_shapes(f: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``.safetensors`` (header only) or ``.bin`` (memory-mapped) file."""
    if f.suffix == ".safetensors":
        return _safetensors_shapes(f)
    return {k: tuple(v.shape) for k, v in load_pickle_safely(f, mmap=True).items()}


def _added_tokens(path: Path) -> frozenset[str]:
    out: set[str] = set()
    tc = path / "tokenizer_config.json"
    if tc.exists():
        out |= {v.get("content", "") for v in json.loads(tc.read_text()).get("added_tokens_decoder", {}).values()}
    tj = path / "tokenizer.json"
    if tj.exists():
        out |= {t.get("content", "") for t in json.loads(tj.read_text()).get("added_tokens", [])}
    return frozenset(t for t in out if t)


def read_facts(path: str | Path) -> Facts:
    """The :class:`Facts` of a checkpoint directory (headers only; no weights are loaded)."""
    path = Path(path)
    f = path / "config.json"
    if not path.is_dir() or not f.exists():
        raise ConfigError(f"{path} is not a checkpoint directory: no config.json", field="checkpoint")
    weights: dict[str, tuple[int, ...]] = {}
    where: dict[str, str] = {}
    for pattern in _WEIGHT_GLOBS:
        for wf in sorted(path.glob(pattern)):
            for k, s in tensor_shapes(wf).items():
                weights[k] = s
                where[k] = wf.name
        if weights:
            break  # safetensors win over .bin copies of the same weights
    files = tuple(sorted(p.name for p in path.iterdir() if not p.name.startswith(".")))
    return Facts(path, files, json.loads(f.read_text()), weights, where, _added_tokens(path))


# ---------------------------------------------------------------------------------------- layouts
def _value_head_file(facts: Facts) -> str | None:
    return next((n for n in VALUE_HEAD_FILES if n in facts.files), None)


def _has_value_head(facts: Facts) -> bool:
    return _value_head_file(facts) is not None or VALUE_HEAD_KEYS[0] in facts.weights


def _plan_value_head(facts: Facts) -> Plan:
    # TRL's AutoModelForCausalLMWithValueHead (trl/models/modeling_value_head.py, v0.x): the value of
    # every position is v_head(hidden_states[-1]); LLaMA-Factory's and Skywork's scoring code read it
    # at attention_mask.sum(-1) - 1 of the processor's chat template, trailing newline included.
    # LLaMA-Factory splits the head into value_head.*; TRL's own save_pretrained leaves it among the
    # backbone's weights (v_head.summary.* beside the model's keys).
    hf = _value_head_file(facts) or facts.weight_files.get(VALUE_HEAD_KEYS[0])
    if hf is None:
        raise ConfigError(f"the value_head layout needs one of {', '.join(VALUE_HEAD_FILES)}; {facts.path} has "
                          f"{', '.join(facts.files)}", field="value_head")
    return Plan("value_head", facts.architecture, "causal", facts.hidden_size, head_file=hf,
                head_weight=VALUE_HEAD_KEYS[0], head_bias=VALUE_HEAD_KEYS[1], strip_end=False,
                pooling="last real token (attention_mask.sum(-1) - 1), the template's trailing newline included",
                template="chat template over the whole conversation, no generation prompt, nothing stripped")


def _plan_docreward(facts: Facts) -> Plan:
    base = _plan_value_head(facts)
    return Plan("docreward", base.backbone_class, "causal", base.hidden_size, head_file=base.head_file,
                head_weight=base.head_weight, head_bias=base.head_bias, strip_end=False, suffix=REGRESSION_TOKEN,
                turn_per_image=True,
                pooling=f"an appended {REGRESSION_TOKEN} token, checked to be last",
                template=f"chat template, nothing stripped, then {REGRESSION_TOKEN}; user turn: the task prompt "
                f"{DOCREWARD_TASK_PROMPT!r}; a response of N page images renders as N assistant turns, one image each")


def _openrlhf_prefix(facts: Facts) -> str:
    return str(facts.config.get("value_head_prefix") or "score")


def _plan_openrlhf(facts: Facts) -> Plan:
    # openrlhf/models/model.py (OpenRLHF 0.11.2), _get_reward_model: Linear(H, 1, bias=False) named
    # value_head_prefix on the base model; reward at the last 1 of the attention mask; in eval mode
    # (r - mean) / std when normalize_reward, mean and std from config.json.
    prefix = _openrlhf_prefix(facts)
    cfg = facts.config
    norm = None
    if cfg.get("normalize_reward"):
        norm = (float(cfg.get("mean", 0.0)), float(cfg.get("std", 1.0)))
        if norm[1] <= 0:
            raise ConfigError(f"config.json std must be positive, it is {norm[1]}", field="config.std")
    wkey = f"{prefix}.weight"
    return Plan("openrlhf", facts.architecture, "base", facts.hidden_size, head_file=facts.weight_files.get(wkey),
                head_weight=wkey, head_bias=None, normalize=norm, eos_if_missing=True,
                pooling="last real token (last 1 of the attention mask)" + ("; (r - mean) / std" if norm else ""),
                template="chat template, trailing whitespace stripped, then \" \" + eos unless it already ends with eos")


def _plan_seq_cls(facts: Facts) -> Plan:
    wkey = "score.weight"
    shape = facts.weights.get(wkey)
    if shape is not None and shape[0] != 1:
        raise ConfigError(f"a sequence-classification reward model must have one label: {wkey} has shape "
                          f"{list(shape)}, expected [1, {facts.hidden_size}]", field="num_labels", limit=1)
    bias = "score.bias" if "score.bias" in facts.weights else None
    # transformers' *ForSequenceClassification pools the last non-pad token of what it is given;
    # TRL's RewardTrainer (trl/trainer/reward_trainer.py, 1.16: tokenize_fn) trains on
    # apply_chat_template of the whole conversation, nothing stripped, so that is what is scored.
    return Plan("sequence_classification", facts.architecture, "base", facts.hidden_size,
                head_file=facts.weight_files.get(wkey), head_weight=wkey, head_bias=bias, strip_end=False,
                pooling="last real token (transformers' last non-pad token), the template's trailing newline included",
                template="chat template over the whole conversation, no generation prompt, nothing stripped")


def _plan_mmrm(facts: Facts) -> Plan:
    from mmrm.rm import checkpoint as ckpt

    return Plan("mmrm", facts.architecture, "mmrm", facts.hidden_size, head_file=ckpt.HEAD_NAME,
                pooling="last real token (the template's end-of-turn token)",
                template="chat template, trailing whitespace stripped")


def _is_mm_rlhf(facts: Facts) -> bool:
    return (MMRLHF_HEAD_FILE in facts.files or "rm_head.dense.weight" in facts.weights
            or facts.config.get("model_type") == "llava_qwen")


def _plan_mm_rlhf(facts: Facts) -> Plan:
    # MM-RLHF's llava_qwen.py (julyanghar/MM-RLHF, commit 882e67a), LlavaQwenForCausalLM.forward with
    # rm_forward: rm_head(hidden_states[-1]) read at attention_mask.long().cumsum(-1)[:, -1] - 1.
    # mmrm pads on the right, where that index is the last real token.
    if facts.config.get("model_type") == "llava_qwen" or "rm_head.dense.weight" in facts.weights:
        raise ConfigError(f"{facts.path} is an MM-RLHF checkpoint in LLaVA's own code layout (model_type "
                          f"{facts.config.get('model_type')!r}); convert it first: mmrm convert {facts.path} DEST "
                          "--to llava_onevision", field="checkpoint")
    if MMRLHF_HEAD_FILE not in facts.files:
        raise ConfigError(f"the mm_rlhf layout needs {MMRLHF_HEAD_FILE}; {facts.path} has {', '.join(facts.files)}",
                          field=MMRLHF_HEAD_FILE)
    return Plan("mm_rlhf", facts.architecture, "causal", facts.hidden_size, head_file=MMRLHF_HEAD_FILE,
                head_type="dense_tanh", strip_end=False,
                pooling="attention_mask.cumsum(-1)[:, -1] - 1 (the last real token under right padding), "
                "the template's trailing newline included",
                template="MM-RLHF's scoring text without a critique (eval_mm_reward_bench.py --wo_critic): "
                "qwen_1_5 ChatML, the user turn <image> + the evaluator prompt holding question and response, "
                "then an open assistant turn; no critique pass")


def _is_openrlhf(facts: Facts) -> bool:
    marked = facts.architecture == "RewardModel" or "value_head_prefix" in facts.config or "normalize_reward" in facts.config
    return marked and f"{_openrlhf_prefix(facts)}.weight" in facts.weights


LAYOUTS: tuple[Layout, ...] = (
    Layout("mmrm", "mmrm's own checkpoint", "mmrm_reward.json + head.safetensors",
           lambda f: "mmrm_reward.json" in f.files, _plan_mmrm),
    Layout("mm_rlhf", "MM-RLHF-Reward (LLaVA-OneVision-Qwen2 + rm_head, converted from LLaVA's layout)",
           f"{MMRLHF_HEAD_FILE} (rm_head.dense [H, H], rm_head.out_proj [1, H]) beside "
           "LlavaOnevisionForConditionalGeneration weights", _is_mm_rlhf, _plan_mm_rlhf),
    Layout("docreward", "DocReward (Qwen2.5-VL + value head, <|regression|> pooling)",
           f"value_head.bin/.safetensors and the {REGRESSION_TOKEN} token in the tokenizer",
           lambda f: _has_value_head(f) and REGRESSION_TOKEN in f.added_tokens, _plan_docreward),
    Layout("value_head", "TRL / LLaMA-Factory value head (Skywork-VL-Reward)",
           "value_head.safetensors or value_head.bin (or, as TRL saves it, in the model weights): "
           "v_head.summary.weight [1, H], v_head.summary.bias [1]",
           _has_value_head, _plan_value_head),
    Layout("openrlhf", "OpenRLHF reward model",
           "config.json value_head_prefix / normalize_reward (or architectures RewardModel) and a "
           "{value_head_prefix}.weight [1, H] tensor", _is_openrlhf, _plan_openrlhf),
    Layout("sequence_classification", "*ForSequenceClassification (one label), VLM ones included",
           "config.json architectures *ForSequenceClassification and score.weight [1, H]",
           lambda f: f.architecture.endswith("ForSequenceClassification"), _plan_seq_cls),
)


def _body_prefixes(k: str) -> bool:
    return k.startswith(("model.", "visual.", "lm_head.", "language_model.", "vision_tower.", "multi_modal_projector."))


def unknown_layout_error(facts: Facts) -> ConfigError:
    """The error for a directory no layout recognises: what it holds and what each layout needs."""
    extra = [f"{k} {list(s)}" for k, s in facts.weights.items() if not _body_prefixes(k)]
    known = "; ".join(f"{lay.name} ({lay.needs})" for lay in LAYOUTS)
    return ConfigError(
        f"{facts.path} is no reward checkpoint mmrm knows. Files: {', '.join(facts.files)}. "
        f"config.json architectures: {facts.config.get('architectures')}, model_type: {facts.config.get('model_type')!r}. "
        f"Tensors: {len(facts.weights)} ({', '.join(sorted(facts.weights)[:3])}, ...), outside the backbone: "
        f"{', '.join(extra[:20]) or 'none'}. "
        f"Known layouts: {known}. A bare backbone gets a head with `mmrm train`.",
        field="checkpoint",
    )


def detect(path: str | Path, layout: LayoutName | None = None) -> Plan:
    """The loading plan of a checkpoint directory: the first layout that matches, or ``layout``
    when given (its requirements are then checked, and a miss is an error that says which).

    Raises :class:`~mmrm.rm.errors.ConfigError` for a directory no layout recognises, naming the
    files and tensors found and what every known layout needs.
    """
    return detect_facts(read_facts(path), layout)


def detect_facts(facts: Facts, layout: LayoutName | None = None) -> Plan:
    """:func:`detect` on :class:`Facts` already read (or built from a model's state dict)."""
    if layout is not None:
        chosen = next((lay for lay in LAYOUTS if lay.name == layout), None)
        if chosen is None:
            raise ConfigError(f"unknown layout {layout!r}; known: {', '.join(lay.name for lay in LAYOUTS)}",
                              field="layout")
        plan = chosen.plan(facts)
    else:
        match = next((lay for lay in LAYOUTS if lay.matches(facts)), None)
        if match is None:
            raise unknown_layout_error(facts)
        plan = match.plan(facts)
    if plan.loader == "base" and plan.head_file is None:
        raise ConfigError(f"the {plan.layout} layout keeps its head in the model weights as {plan.head_weight}, "
                          f"which {facts.path} lacks (tensors outside the backbone: "
                          f"{[k for k in facts.weights if not _body_prefixes(k)]})", field=plan.head_weight)
    return plan
