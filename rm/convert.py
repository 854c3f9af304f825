"""Exports of mmrm checkpoints to layouts other tools load (``mmrm convert``).

``value_head``: the TRL / LLaMA-Factory value-head layout (Skywork-VL-Reward's): the backbone's
files as they are, plus ``value_head.safetensors`` holding ``v_head.summary.weight`` [1, H] and
``v_head.summary.bias`` [1]. Those tools score ``v_head(hidden_states[-1])`` at the last real token
of ``apply_chat_template(messages, add_generation_prompt=False)`` with nothing stripped, while mmrm
pools the template's end-of-turn token with trailing whitespace stripped; so the exported chat
template drops the trailing whitespace of a finished conversation (a generation prompt is left as
it is), and the other tool pools exactly the token mmrm's head was trained on.

Only a ``linear`` head has a value-head form; an ``mlp2`` head is refused with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mmrm.rm import checkpoint as ckpt
from mmrm.rm import layouts
from mmrm.rm.errors import ConfigError

__all__ = ["export_value_head", "trimmed_template"]


def trimmed_template(template: str) -> str:
    """``template`` rendering a finished conversation without its trailing whitespace.

    >>> from jinja2 import Template
    >>> t = trimmed_template("{% for m in messages %}<{{ m }}>\\n{% endfor %}{% if add_generation_prompt %}<a>\\n{% endif %}")
    >>> Template(t).render(messages=["u", "a"]), Template(t).render(messages=["u"], add_generation_prompt=True)
    ('<u>\\n<a>', '<u>\\n<a>\\n')
    """
    return ("{%- set mmrm_rendered -%}" + template + "{%- endset -%}"
            "{%- if add_generation_prompt -%}{{ mmrm_rendered }}{%- else -%}{{ mmrm_rendered | trim }}{%- endif -%}")


def export_value_head(src: str | Path, dest: str | Path) -> Path:
    """Write the mmrm checkpoint ``src`` to ``dest`` in the TRL / LLaMA-Factory value-head layout
    (see the module docstring); returns ``dest``."""
    from safetensors.torch import load_file, save_file

    src, dest = Path(src), Path(dest)
    cfg = ckpt.read_config(src)
    if cfg is None:
        raise ConfigError(f"{src} is not an mmrm checkpoint (no {ckpt.CONFIG_NAME})", field="checkpoint")
    if cfg.head.type != "linear":
        raise ConfigError(f"a TRL / LLaMA-Factory value head is one Linear(H, 1); this checkpoint's head is "
                          f"{cfg.head.type}: train it with head_type linear to export it", field="head.type",
                          limit="linear")
    if cfg.lora == "adapter":
        raise ConfigError("export needs merged weights: save the model with merge_lora=True", field="checkpoint")
    if not cfg.strip_end or cfg.suffix:
        raise ConfigError(f"this checkpoint pools as the {cfg.source} layout; export it from its own files",
                          field="checkpoint")
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} exists and is not empty", field="dest")
    dest.mkdir(parents=True, exist_ok=True)
    skip = {ckpt.CONFIG_NAME, ckpt.HEAD_NAME, ckpt.ADAPTER_DIR}
    for f in src.iterdir():
        if f.name in skip or f.name.startswith("."):
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, dest / f.name)
    from mmrm.rm.loading import load_processor

    processor = load_processor(src)
    template = trimmed_template(processor.chat_template)
    processor.chat_template = template
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.chat_template = template
    processor.save_pretrained(str(dest))
    head = load_file(str(src / ckpt.HEAD_NAME))
    weight, bias = layouts.VALUE_HEAD_KEYS
    save_file({weight: head["net.weight"].float().reshape(1, -1).contiguous(),
               bias: head["net.bias"].float().reshape(1).contiguous()},
              str(dest / layouts.VALUE_HEAD_FILES[0]), metadata={"format": "pt"})
    return dest
