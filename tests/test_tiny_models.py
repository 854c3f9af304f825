"""The tiny real-architecture models: they load by path with the ordinary Auto* classes, run
images and video frames through the real forward pass, and are deterministic in their seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import pil_image, state_dicts_equal

# The chat special tokens of the Qwen family, written out here (not imported from the builder).
CHAT_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

VL_ARCHS = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module")
def vl_loaded(tiny_models):
    """(processor, model) per VL arch, loaded once by path with the Auto* classes."""
    import transformers as tf

    out = {}
    for arch in VL_ARCHS:
        path = str(tiny_models[arch])
        out[arch] = (tf.AutoProcessor.from_pretrained(path), tf.AutoModelForImageTextToText.from_pretrained(path).eval())
    return out


def test_qwen2_loads_with_auto_classes(tiny_qwen2):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(tiny_qwen2))
    tok = tf.AutoTokenizer.from_pretrained(str(tiny_qwen2))
    assert type(model) is tf.Qwen2ForCausalLM
    assert model.config.model_type == "qwen2"
    ids = tok("The digit is 3.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    # the config's special ids lie inside the tiny vocabulary
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert 0 <= getattr(model.config, name) < model.config.vocab_size


@pytest.mark.parametrize(
    "arch,cls_name,proc_name",
    [
        ("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    ],
)
def test_vl_loads_with_auto_classes(vl_loaded, tiny_models, arch, cls_name, proc_name):
    import transformers as tf

    processor, model = vl_loaded[arch]
    assert type(model) is getattr(tf, cls_name)
    assert type(processor) is getattr(tf, proc_name)
    cfg = json.loads((tiny_models[arch] / "config.json").read_text())
    assert cfg["architectures"] == [cls_name]
    assert cfg["model_type"] == arch
    text_cfg = model.config.get_text_config()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert 0 <= getattr(text_cfg, name) < text_cfg.vocab_size
        # the outer config's own value, where this transformers version keeps one, must fit too
        outer = cfg.get(name)
        assert outer is None or 0 <= outer < text_cfg.vocab_size


def _render(processor, content):
    return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("arch", VL_ARCHS)
def test_vl_forward_with_images(vl_loaded, arch):
    processor, model = vl_loaded[arch]
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    merge = model.config.vision_config.spatial_merge_size
    text = _render(processor, [{"type": "image"}, {"type": "text", "text": "what"}, {"type": "image"}])
    images = [pil_image(84, 112, seed=1), pil_image(56, 56, seed=2)]
    batch = processor(text=[text], images=images, return_tensors="pt")
    grid = batch["image_grid_thw"]
    assert grid.shape == (2, 3)
    # one placeholder token per merged patch, per image
    assert int((batch["input_ids"] == image_id).sum()) == int(grid.prod(dim=1).sum()) // merge**2
    # the two images are different sizes, so their grids differ
    assert not torch.equal(grid[0], grid[1])
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.logits).all()
    # the image really feeds the computation: another image changes the logits
    other = processor(text=[text], images=[pil_image(84, 112, seed=9), images[1]], return_tensors="pt")
    with torch.no_grad():
        out2 = model(**other)
    assert not torch.allclose(out.logits, out2.logits)


@pytest.mark.parametrize("arch", VL_ARCHS)
def test_vl_forward_with_video_frames(vl_loaded, arch):
    processor, model = vl_loaded[arch]
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    merge = model.config.vision_config.spatial_merge_size
    text = _render(processor, [{"type": "video"}, {"type": "text", "text": "describe the video"}])
    frames = [pil_image(56, 56, seed=s) for s in range(4)]
    batch = processor(text=[text], videos=[frames], return_tensors="pt")
    grid = batch["video_grid_thw"]
    assert grid.shape == (1, 3)
    assert int(grid[0, 0]) == 4 // model.config.vision_config.temporal_patch_size
    assert int((batch["input_ids"] == video_id).sum()) == int(grid.prod()) // merge**2
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("arch", ["qwen2", "qwen2_vl", "qwen2_5_vl"])
def test_tokenizer_has_chat_special_tokens_as_single_tokens(tiny_models, arch):
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(tiny_models[arch]))
    ids = set()
    for t in CHAT_TOKENS:
        enc = tok.encode(t, add_special_tokens=False)
        assert len(enc) == 1, f"{t} is split into {enc}"
        assert tok.convert_ids_to_tokens(enc[0]) == t
        assert tok.convert_tokens_to_ids(t) == enc[0]
        ids.add(enc[0])
    assert len(ids) == len(CHAT_TOKENS)
    # embedded in text they stay whole too
    enc = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert enc[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert enc[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token == "<|endoftext|>"
    assert tok.eos_token == "<|im_end|>"


@pytest.mark.parametrize("arch", VL_ARCHS)
def test_chat_template_renders_media_placeholders(vl_loaded, arch):
    processor, _ = vl_loaded[arch]
    text = processor.apply_chat_template(
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "A:"}, {"type": "image"}, {"type": "video"}]},
            {"role": "assistant", "content": "ok"},
        ],
        tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nsys<|im_end|>\n"
        "<|im_start|>user\nA:<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n"
    )
    assert processor.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen2_chat_template_via_tokenizer(tiny_qwen2):
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(tiny_qwen2))
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}], tokenize=False)
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>x<|im_end|>\n"


# ------------------------------------------------------------------------------------------------
# Determinism


def _weights(path: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    assert sd, f"no weights in {path}"
    return sd


@pytest.mark.parametrize("arch", ["qwen2", "qwen2_vl", "qwen2_5_vl"])
def test_same_seed_same_model_and_tokenizer(tiny_models, tmp_path, arch):
    from mmrm.rm.tiny import build_tiny_model

    again = build_tiny_model(arch, tmp_path / arch, seed=0)
    assert state_dicts_equal(_weights(again), _weights(tiny_models[arch]))
    assert (again / "tokenizer.json").read_bytes() == (tiny_models[arch] / "tokenizer.json").read_bytes()
    assert json.loads((again / "config.json").read_text()) == json.loads((tiny_models[arch] / "config.json").read_text())


def test_different_seed_different_weights(tiny_qwen2, tmp_path):
    from mmrm.rm.tiny import build_tiny_model

    other = build_tiny_model("qwen2", tmp_path / "qwen2_seed1", seed=1)
    a, b = _weights(tiny_qwen2), _weights(other)
    assert not state_dicts_equal(a, b)
    # not just one tensor: the decoder weights that exist in both with the same shape all differ
    common = [k for k in a if k in b and a[k].shape == b[k].shape and "layers.0" in k and k.endswith("proj.weight")]
    assert common
    assert all(not torch.equal(a[k], b[k]) for k in common)
