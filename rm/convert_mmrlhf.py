"""MM-RLHF-Reward checkpoints in LLaVA's own code layout -> transformers' LLaVA-OneVision layout
(``mmrm convert SRC DEST --to llava_onevision``).

MM-RLHF-Reward (``llava/model/language_model/llava_qwen.py`` of MM-RLHF, read in the
julyanghar/MM-RLHF copy at commit 882e67a) is ``LlavaQwenForCausalLM`` with ``config.is_rm``: a
Qwen2 language model under ``model.`` (``model.embed_tokens``, ``model.layers.*``, ``model.norm``),
LLaVA's SigLIP tower under ``model.vision_tower.vision_tower.vision_model.*`` (its last layer and
head already dropped), the projector ``model.mm_projector.0`` / ``.2`` (Linear, GELU, Linear),
``model.image_newline``, ``lm_head`` and the reward head ``rm_head.dense`` / ``rm_head.out_proj``.
Its ``config.json`` is a Qwen2 config with ``model_type: llava_qwen`` and LLaVA's ``mm_*`` fields.

The key mapping is transcribed from transformers' ``KEYS_TO_MODIFY_MAPPING`` in
``src/transformers/models/llava_onevision/convert_llava_onevision_weights_to_hf.py``
(huggingface/transformers, commit 01080c6), written here for the module names transformers 5
gives ``LlavaOnevisionForConditionalGeneration`` (``model.language_model``, ``model.vision_tower``,
``model.multi_modal_projector.linear_1/2``, ``model.image_newline``, ``lm_head``). Every mapped
tensor is checked against a ``meta``-device model built from the derived config: a missing,
unexpected or misshapen tensor is an error naming it and both shapes.

The output is loaded by mmrm as the ``mm_rlhf`` layout: the LLaVA-OneVision model, its processor
(the source's tokenizer plus ``<image>`` / ``<video>``, a SigLIP-style image processor with the
source's grid pinpoints, and a chat template that renders MM-RLHF's scoring text without a critique,
:data:`LLAVA_ONEVISION_TEMPLATE`) and ``rm_head.safetensors`` holding the four ``rm_head.*``
tensors unchanged.

Nothing in the source directory is imported or run; ``.bin`` files are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mmrm.rm.errors import ConfigError
from mmrm.rm.layouts import MMRLHF_HEAD_FILE, load_pickle_safely

__all__ = ["LLAVA_ONEVISION_TEMPLATE", "SIGLIP_VISION", "checked_weights", "convert_mm_rlhf", "hf_config", "llava_to_hf_key",
           "rm_head", "text_config"]

#: The published vision tower of LLaVA-OneVision-Qwen2 (``mm_vision_tower``): SigLIP so400m at 384
#: px, as transformers' conversion script configures it. ``num_hidden_layers`` is re-read from the
#: weights (LLaVA drops the last of the 27 layers).
SIGLIP_VISION: dict[str, dict[str, Any]] = {
    "google/siglip-so400m-patch14-384": {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                                         "num_hidden_layers": 26, "patch_size": 14, "image_size": 384},
}

#: The evaluator prompt of MM-RLHF's reward scoring (``make_conv_rm`` in ``llava/eval/eval_mm_reward_bench.py``,
#: julyanghar/MM-RLHF commit e103c40): the question and the response both go into the user turn.
MMRLHF_CRITIC_PROMPT = (
    "You are an unbiased and fair evaluator tasked with assessing the quality of answers provided by a Large "
    "Multimodal Model (LMM). Given the following question and the LMM's response, please evaluate the correctness, "
    "clarity, and completeness of the answer. Provide a detailed explanation of your assessment, including specific "
    "points of strength and areas for improvement.\n\n[Question]: {question}\n[LMM Response]: {answer}\n\n[Evaluation]:"
)


def _jinja_literal(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


_HEAD, _TAIL = MMRLHF_CRITIC_PROMPT.split("{question}")
_MID, _END = _TAIL.split("{answer}")

#: The scoring text of that script without a critique (its ``--wo_critic`` pass), as a chat template
#: over [user (images, question), assistant (response)]: LLaVA's ``qwen_1_5`` ChatML (default system
#: turn), the user turn ``<image>`` + newline (one per image) + the evaluator prompt stripped, then
#: an open assistant turn, whose trailing newline is the pooled last token. Any other conversation
#: renders as plain ChatML.
LLAVA_ONEVISION_TEMPLATE = (
    "{%- set ns = namespace(q='', a='', n=0) -%}"
    "{%- if messages | length > 1 and messages[-1]['role'] == 'assistant' -%}"
    "{%- for message in messages -%}{%- if message['role'] == 'user' or loop.last -%}"
    "{%- if message['content'] is string -%}{%- set t = message['content'] -%}{%- else -%}{%- set t = namespace(v='') -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{%- set t.v = t.v + part['text'] -%}"
    "{%- elif part['type'] in ['image', 'image_url'] -%}{%- set ns.n = ns.n + 1 -%}{%- endif -%}{%- endfor -%}"
    "{%- set t = t.v -%}{%- endif -%}"
    "{%- if loop.last -%}{%- set ns.a = t -%}{%- else -%}{%- set ns.q = ns.q + t -%}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set body = " + _jinja_literal(_HEAD) + " + ns.q + " + _jinja_literal(_MID) + " + ns.a + " + _jinja_literal(_END) + " -%}"
    "{%- if ns.n > 0 -%}{%- set body = ('<image>\\n' * ns.n) + (body | replace('<image>', '') | trim) -%}{%- endif -%}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{{ body }}<|im_end|>\n<|im_start|>assistant{{ '\\n' }}"
    "{%- else -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}<|im_start|>system\nYou are a helpful assistant.<|im_end|>{{ '\\n' }}{%- endif -%}"
    "<|im_start|>{{ message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] in ['image', 'image_url'] -%}<image>{{ '\\n' }}"
    "{%- elif part['type'] in ['video', 'video_url'] -%}<video>{{ '\\n' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
    "{%- endif -%}"
)

# LLaVA's config fields that are not Qwen2's (dropped from the text config).
_LLAVA_ONLY = re.compile(r"^(mm_|image_|tokenizer_|is_rm|unfreeze_|use_pos_skipping|pos_skipping_range|"
                         r"vocab_size_|architectures$|model_type$|auto_map$|_name_or_path$|transformers_version$)")

# (LLaVA-code prefix, transformers 5 prefix), first match wins.
_PREFIXES = (
    ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.vision_model."),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.image_newline", "model.image_newline"),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)


def llava_to_hf_key(key: str, *, vision_prefix: str = "model.vision_tower.vision_model.") -> str | None:
    """The transformers name of a LLaVA-code tensor name, or None for a name outside the model
    (``rm_head.*``, rotary ``inv_freq`` buffers). ``vision_prefix``: where the SigLIP tower's
    ``vision_model`` lives in the installed transformers' model."""
    if key.startswith("rm_head.") or key.endswith(".inv_freq"):
        return None
    for old, new in _PREFIXES:
        if key.startswith(old):
            if old.startswith("model.vision_tower."):
                new = vision_prefix
            return new + key[len(old):]
    raise ConfigError(f"{key} is no tensor of the LLaVA-code MM-RLHF layout (model.*, lm_head.*, rm_head.*)", field=key)


def _read_state(src: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(src.glob("model*.safetensors"))
    if files:
        out: dict[str, Any] = {}
        for f in files:
            out.update(load_file(str(f)))
        return out
    files = sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise ConfigError(f"{src} has no model*.safetensors or pytorch_model*.bin", field="checkpoint")
    out = {}
    for f in files:
        out.update(load_pickle_safely(f))
    return out


def text_config(llava: dict[str, Any]) -> dict[str, Any]:
    """The Qwen2 text config inside a ``llava_qwen`` config.json (LLaVA's own fields dropped)."""
    out = {k: v for k, v in llava.items() if not _LLAVA_ONLY.match(k)}
    out["model_type"] = "qwen2"
    # LlavaQwenForCausalLM.__init__ sets rope_scaling = None whatever the file says
    out.pop("rope_scaling", None)
    return out


def _vision_config(llava: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    tower = str(llava.get("mm_vision_tower") or "")
    local = Path(tower) / "config.json"
    if tower in SIGLIP_VISION:
        cfg = dict(SIGLIP_VISION[tower])
    elif tower and local.exists():
        raw = json.loads(local.read_text())
        cfg = dict(raw.get("vision_config") or raw)
    else:
        raise ConfigError(f"mm_vision_tower {tower!r} is neither a known tower ({', '.join(SIGLIP_VISION)}) nor a local "
                          "directory with a config.json", field="mm_vision_tower")
    prefix = "model.vision_tower.vision_tower.vision_model.encoder.layers."
    layers = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    if not layers:
        raise ConfigError(f"the checkpoint has no {prefix}* tensors", field="model.vision_tower")
    cfg.update(num_hidden_layers=max(layers) + 1, vision_use_head=False, model_type="siglip_vision_model")
    return {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "_name_or_path")}


def _pinpoints(llava: dict[str, Any], image_size: int) -> list[list[int]]:
    pins = llava.get("image_grid_pinpoints")
    if isinstance(pins, str):
        # LLaVA's "(1x1),...,(6x6)" form: every grid between the two corners, in tiles of image_size
        m = re.fullmatch(r"\((\d+)x(\d+)\),\.\.\.,\((\d+)x(\d+)\)", pins.replace(" ", ""))
        if m is None:
            raise ConfigError(f"image_grid_pinpoints {pins!r} is not of the form '(AxB),...,(CxD)'", field="image_grid_pinpoints")
        a, b, c, d = map(int, m.groups())
        return [[i * image_size, j * image_size] for i in range(a, c + 1) for j in range(b, d + 1)]
    if not pins:
        return [[image_size, image_size]]
    return [list(map(int, p)) for p in pins]


def hf_config(llava: dict[str, Any], state: dict[str, Any]) -> Any:
    """The ``LlavaOnevisionConfig`` of a ``llava_qwen`` config.json and its tensors (which give
    the vision tower's depth); the image token ids are set later, from the tokenizer."""
    import transformers as tf

    vision = _vision_config(llava, state)
    aspect = str(llava.get("image_aspect_ratio") or "anyres_max_9")
    return tf.LlavaOnevisionConfig(
        text_config=text_config(llava), vision_config=vision,
        image_grid_pinpoints=_pinpoints(llava, int(vision["image_size"])),
        vision_aspect_ratio=aspect if aspect.startswith("anyres_max_") else "anyres_max_9",
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        tie_word_embeddings=bool(llava.get("tie_word_embeddings", False)),
    )


def checked_weights(config: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The remapped backbone tensors, each checked against a ``meta`` model of ``config``."""
    import torch
    import transformers as tf

    with torch.device("meta"):
        ref = tf.LlavaOnevisionForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    vision_prefix = ("model.vision_tower.vision_model." if any(k.startswith("model.vision_tower.vision_model.") for k in expected)
                     else "model.vision_tower.")
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = llava_to_hf_key(key, vision_prefix=vision_prefix)
        if new is None:
            continue
        if new not in expected:
            raise ConfigError(f"{key} (-> {new}) has no place in LlavaOnevisionForConditionalGeneration", field=key)
        if tuple(value.shape) != expected[new]:
            raise ConfigError(f"{key}: shape {list(value.shape)}, but {new} needs {list(expected[new])}", field=key,
                              limit=list(expected[new]))
        out[new] = value.contiguous()
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(out) - tied)
    if missing:
        raise ConfigError(f"the checkpoint lacks {len(missing)} tensors of the model: "
                          + ", ".join(f"{k} {list(expected[k])}" for k in missing[:8]), field=missing[0])
    return out


def rm_head(state: dict[str, Any], hidden: int) -> dict[str, Any]:
    """The four ``rm_head.*`` tensors of ``state``, each checked for its shape at width ``hidden``."""
    shapes = {"rm_head.dense.weight": (hidden, hidden), "rm_head.dense.bias": (hidden,),
              "rm_head.out_proj.weight": (1, hidden), "rm_head.out_proj.bias": (1,)}
    for key, shape in shapes.items():
        if key not in state:
            raise ConfigError(f"the checkpoint has no {key} (expected shape {list(shape)}): not an MM-RLHF reward model "
                              "(config.is_rm)", field=key)
        if tuple(state[key].shape) != shape:
            raise ConfigError(f"{key} has shape {list(state[key].shape)}, expected {list(shape)}", field=key, limit=list(shape))
    return {k: state[k].contiguous() for k in shapes}


def _processor(src: Path, config: Any) -> Any:
    import transformers as tf

    tc = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").exists() else {}
    # the tokenizer class by name: AutoTokenizer would consult config.json's unregistered llava_qwen
    cls = getattr(tf, str(tc.get("tokenizer_class") or "Qwen2TokenizerFast"), None)
    if cls is None:
        raise ConfigError(f"tokenizer_class {tc.get('tokenizer_class')!r} is not a transformers class", field="tokenizer_class")
    tok = cls.from_pretrained(str(src))
    tok.add_tokens([tf.AddedToken("<image>", special=True, normalized=False),
                    tf.AddedToken("<video>", special=True, normalized=False)], special_tokens=True)
    vocab = config.text_config.vocab_size
    if len(tok) > vocab:
        raise ConfigError(f"the tokenizer with <image> and <video> has {len(tok)} tokens, more than the model's "
                          f"{vocab} embeddings", field="vocab_size", limit=vocab)
    config.image_token_id = tok.convert_tokens_to_ids("<image>")
    config.video_token_id = tok.convert_tokens_to_ids("<video>")
    v = config.vision_config
    side = int(v.image_size)
    # LLaVA's SigLIP preprocessing: a square resize, bicubic, scaled to [0, 1], mean = std = 0.5
    images = tf.LlavaOnevisionImageProcessor(
        size={"height": side, "width": side}, image_grid_pinpoints=config.image_grid_pinpoints,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=3)
    videos = tf.LlavaOnevisionVideoProcessor(size={"height": side, "width": side}, image_mean=[0.5, 0.5, 0.5],
                                             image_std=[0.5, 0.5, 0.5], resample=3)
    return tf.LlavaOnevisionProcessor(
        image_processor=images, video_processor=videos, tokenizer=tok, num_image_tokens=(side // int(v.patch_size)) ** 2,
        vision_feature_select_strategy="full", chat_template=LLAVA_ONEVISION_TEMPLATE)


def convert_mm_rlhf(src: str | Path, dest: str | Path) -> Path:
    """Write the LLaVA-code MM-RLHF checkpoint ``src`` to ``dest`` in transformers' LLaVA-OneVision
    layout plus ``rm_head.safetensors`` (see the module docstring); returns ``dest``."""
    from safetensors.torch import save_file

    src, dest = Path(src), Path(dest)
    f = src / "config.json"
    if not f.exists():
        raise ConfigError(f"{src} has no config.json", field="checkpoint")
    llava = json.loads(f.read_text())
    if llava.get("model_type") != "llava_qwen":
        raise ConfigError(f"{src}/config.json has model_type {llava.get('model_type')!r}; the LLaVA-code MM-RLHF layout "
                          "is llava_qwen", field="model_type", limit="llava_qwen")
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} exists and is not empty", field="dest")
    state = _read_state(src)
    config = hf_config(llava, state)
    head = rm_head(state, int(config.text_config.hidden_size))
    weights = checked_weights(config, state)
    processor = _processor(src, config)
    dest.mkdir(parents=True, exist_ok=True)
    config.architectures = ["LlavaOnevisionForConditionalGeneration"]
    config.save_pretrained(str(dest))
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    save_file(head, str(dest / MMRLHF_HEAD_FILE), metadata={"format": "pt"})
    processor.save_pretrained(str(dest))
    return dest
