"""``mmrm convert --to llava_onevision``: an MM-RLHF-Reward checkpoint in LLaVA's own code layout
becomes transformers' LLaVA-OneVision layout plus ``rm_head.safetensors`` (mmrm's ``mm_rlhf``
layout), and scores as the authors' code scores.

The tiny source checkpoint is a real ``LlavaOnevisionForConditionalGeneration`` with random weights,
written under the LLaVA-code tensor names by the inverse mapping below (written here from
MM-RLHF's module names, not from mmrm's), with a ``llava_qwen`` config.json and a random
``rm_head``. The reference reward is MM-RLHF's ``rm_forward`` branch
(``llava/model/language_model/llava_qwen.py``, julyanghar/MM-RLHF commit 882e67a, LlavaQwenForCausalLM.forward:
``rm_head(outputs.hidden_states[-1])`` read at ``attention_mask.long().cumsum(dim=-1)[:, -1] - 1``)
on a plain transformers forward of that tiny model, with the scoring text of
``llava/eval/eval_mm_reward_bench.py`` (commit e103c40) without a critique (``--wo_critic``):
``make_conv_rm`` puts question and response into the evaluator prompt of the user turn, and LLaVA's
``qwen_1_5`` conversation (ChatML, ``get_prompt`` with the assistant message None) leaves the
assistant turn open.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import image_part, image_uri, pil_image, text_part

from mmrm.cli import app
from mmrm.rm import convert_mmrlhf as cm
from mmrm.rm import layouts
from mmrm.rm.errors import ConfigError
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.tiny import build_tokenizer
from mmrm.rm.types import Sample
from test_layouts_mmrlhf import MMRLHFRewardHead

runner = CliRunner()
H = 32
SIDE = 28  # tiny SigLIP: 28 px, 14 px patches -> 4 tokens a tile
PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]


def to_llava_key(hf_key: str) -> str:
    """transformers 5 LLaVA-OneVision name -> LLaVA code name (MM-RLHF's LlavaQwenForCausalLM)."""
    for new, old in (("model.vision_tower.vision_model.", "model.vision_tower.vision_tower.vision_model."),
                     ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
                     ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
                     ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
                     ("model.language_model.", "model."),
                     ("model.image_newline", "model.image_newline"),
                     ("lm_head.", "lm_head.")):
        if hf_key.startswith(new):
            return old + hf_key[len(new):]
    raise AssertionError(hf_key)


def _configs(vocab: int, image_id: int):
    import transformers as tf

    text = tf.Qwen2Config(hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=2048,
                          tie_word_embeddings=False, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    vision = tf.SiglipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=SIDE, patch_size=14, vision_use_head=False)
    full = tf.LlavaOnevisionConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=image_id,
                                   image_grid_pinpoints=PINPOINTS, vision_feature_select_strategy="full",
                                   vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
                                   tie_word_embeddings=False)
    return text, vision, full


@pytest.fixture(scope="module")
def llava_code(tmp_path_factory: pytest.TempPathFactory):
    """(source dir, reference model, reference head, image token id) of a tiny LLaVA-code MM-RLHF checkpoint."""
    import transformers as tf
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("mmrlhf")
    src = root / "MM-RLHF-Reward-tiny"
    tok = build_tokenizer(src, seed=3)
    image_id = len(tok)  # where the converter's added <image> lands
    text, vision, full = _configs(len(tok) + 6, image_id)  # room for <image> and <video>, as Qwen2's vocab has
    torch.manual_seed(5)
    model = tf.LlavaOnevisionForConditionalGeneration(full).eval()
    with torch.no_grad():
        model.model.image_newline.normal_()
    head = MMRLHFRewardHead(H).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.25)
    state = {to_llava_key(k): v.clone().contiguous() for k, v in model.state_dict().items()}
    state.update({f"rm_head.{k}": v.clone() for k, v in head.state_dict().items()})
    save_file(state, str(src / "model-00001-of-00001.safetensors"), metadata={"format": "pt"})
    tower = root / "siglip-tiny"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps(vision.to_dict()))
    cfg = {**text.to_dict(), "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
           "mm_vision_tower": str(tower), "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 24,
           "mm_vision_select_layer": -1, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "spatial_unpad",
           "image_aspect_ratio": "anyres_max_9", "image_grid_pinpoints": PINPOINTS, "is_rm": True,
           "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right"}
    (src / "config.json").write_text(json.dumps(cfg))
    return src, model, head, image_id


@pytest.fixture(scope="module")
def converted(llava_code, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = llava_code[0]
    dest = tmp_path_factory.mktemp("mmrlhf-out") / "converted"
    r = runner.invoke(app, ["convert", str(src), str(dest), "--to", "llava_onevision"])
    assert r.exit_code == 0, r.output
    return dest


IMG = (30, 40)  # height, width: every image the same size, so one anyres grid for the batch


CASES = [("What is here?", "A red square.", 1), ("Describe the picture in detail, please, with the colours.",
          "It shows noise of many colours spread over the whole frame, nothing else.", 2), ("Count it.", "One.", 3)]


# eval_mm_reward_bench.py, make_conv_rm: the evaluator prompt, transcribed
CRITIC_PROMPT = (
    "You are an unbiased and fair evaluator tasked with assessing the quality of answers provided by a Large Multimodal Model (LMM). "
    "Given the following question and the LMM's response, please evaluate the correctness, clarity, and completeness of the answer. "
    "Provide a detailed explanation of your assessment, including specific points of strength and areas for improvement.\n\n"
    "[Question]: {question}\n"
    "[LMM Response]: {answer}\n\n"
    "[Evaluation]:"
)


def make_conv_rm(prompt: str, answer: str, has_image: bool = True) -> str:
    text = CRITIC_PROMPT.format(question=prompt, answer=answer)
    if has_image:
        text = ("<image>\n" + text.replace("<image>", "").strip()).strip()
    return text


def qwen_1_5_prompt(user: str, assistant: str | None = None) -> str:
    """LLaVA's conv_qwen (SeparatorStyle.CHATML) get_prompt over one exchange."""
    system, sep = "<|im_start|>system\nYou are a helpful assistant.", "<|im_end|>"
    out = system + sep + "\n"
    for role, message in (("<|im_start|>user", user), ("<|im_start|>assistant", assistant)):
        out += role + "\n" + message + sep + "\n" if message else role + "\n"
    return out


def _reference(llava_code, dest: Path) -> list[float]:
    """MM-RLHF's rm_forward on the tiny model: the wo_critic scoring text, right padding, cumsum index."""
    import transformers as tf

    _, model, head, _ = llava_code
    proc = tf.AutoProcessor.from_pretrained(str(dest))
    texts = [qwen_1_5_prompt(make_conv_rm(q, a)) for q, a, _ in CASES]
    assert texts[0].endswith("[Evaluation]:<|im_end|>\n<|im_start|>assistant\n")
    proc.tokenizer.padding_side = "right"
    batch = proc(text=texts, images=[pil_image(*IMG, seed=s) for _, _, s in CASES], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        rewards = head(out.hidden_states[-1])
    idx = batch["attention_mask"].long().cumsum(dim=-1)[:, -1] - 1
    assert len(set(idx.tolist())) == len(CASES)  # mixed lengths
    return rewards[torch.arange(len(CASES)), idx].squeeze(-1).tolist()


def test_convert_writes_the_llava_onevision_layout(llava_code, converted: Path):
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaOnevisionForConditionalGeneration"] and cfg["model_type"] == "llava_onevision"
    assert cfg["image_token_index"] == llava_code[3] and cfg["vision_config"]["num_hidden_layers"] == 2
    assert cfg["image_grid_pinpoints"] == PINPOINTS
    from safetensors import safe_open

    with safe_open(str(converted / layouts.MMRLHF_HEAD_FILE), framework="pt") as fh:
        assert sorted(fh.keys()) == sorted(f"rm_head.{k}" for k in llava_code[2].state_dict())
    plan = layouts.detect(converted)
    assert (plan.layout, plan.head_type, plan.backbone_class) == ("mm_rlhf", "dense_tanh",
                                                                  "LlavaOnevisionForConditionalGeneration")


def test_converted_model_scores_as_mm_rlhf(llava_code, converted: Path):
    rm = RewardModel.from_pretrained(converted, device="cpu")
    samples = [Sample(prompt=[{"role": "user", "content": [image_part(image_uri(*IMG, seed=s)), text_part(q)]}],
                      response=a) for q, a, s in CASES]
    ours = rm.rewards(samples)
    assert rm.config.source == "mm_rlhf"
    # the same rewards one by one (batch invariance)
    assert rm.rewards(samples[1:2]) == pytest.approx(ours[1:2], abs=1e-5)
    theirs = _reference(llava_code, converted)
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    print("max abs diff", diff)
    assert diff < 1e-5, (ours, theirs)
    assert max(theirs) - min(theirs) > 1e-3  # the rows differ: pooling the wrong token would show


def test_the_llava_code_layout_is_refused_with_the_convert_command(llava_code):
    with pytest.raises(ConfigError, match="--to llava_onevision"):
        layouts.detect(llava_code[0])


def test_inspect_reports_the_layout(converted: Path):
    r = runner.invoke(app, ["inspect", str(converted)])
    assert r.exit_code == 0, r.output
    assert "mm_rlhf" in r.output and "dense_tanh" in r.output and "cumsum" in r.output


def _copy_without(src: Path, dest: Path, drop: str | None = None, reshape: str | None = None) -> Path:
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (dest / f.name).write_bytes(f.read_bytes())
    state = load_file(str(src / "model-00001-of-00001.safetensors"))
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = torch.zeros(1, state[reshape].shape[-1] + 1)
    save_file(state, str(dest / "model-00001-of-00001.safetensors"))
    return dest


@pytest.mark.parametrize("drop,reshape,match", [
    ("rm_head.out_proj.weight", None, r"rm_head.out_proj.weight \(expected shape \[1, 32\]\)"),
    (None, "rm_head.out_proj.weight", r"rm_head.out_proj.weight has shape \[1, 33\], expected \[1, 32\]"),
    ("model.layers.1.mlp.up_proj.weight", None, r"model.language_model.layers.1.mlp.up_proj.weight \[64, 32\]"),
    (None, "model.mm_projector.2.weight", r"model.mm_projector.2.weight: shape \[1, 33\], but "
     r"model.multi_modal_projector.linear_2.weight needs \[32, 32\]"),
])
def test_corrupt_checkpoints_are_clear_errors(llava_code, tmp_path: Path, drop, reshape, match):
    bad = _copy_without(llava_code[0], tmp_path / "bad", drop, reshape)
    r = runner.invoke(app, ["convert", str(bad), str(tmp_path / "out"), "--to", "llava_onevision"])
    assert r.exit_code != 0
    with pytest.raises(ConfigError, match=match):
        cm.convert_mm_rlhf(bad, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_missing_head_file_after_conversion_is_an_error(converted: Path, tmp_path: Path):
    bad = tmp_path / "nohead"
    bad.mkdir()
    for f in converted.iterdir():
        if f.name != layouts.MMRLHF_HEAD_FILE:
            (bad / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ConfigError, match="the mm_rlhf layout needs rm_head.safetensors"):
        RewardModel.from_pretrained(bad, layout="mm_rlhf", device="cpu")
    # without the file nothing marks the directory as a reward model: not a served random head
    with pytest.raises(ConfigError, match="no reward checkpoint mmrm knows"):
        RewardModel.from_pretrained(bad, device="cpu")


def test_published_7b_key_names_and_shapes_on_meta():
    """MM-RLHF-Reward-7B (LLaVA-OneVision-Qwen2-7B: Qwen2-7B + SigLIP so400m, 26 layers kept) on ``meta``."""
    import transformers as tf

    text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1000000.0,
                rms_norm_eps=1e-6, tie_word_embeddings=False)
    llava = {**text, "model_type": "llava_qwen", "architectures": ["LlavaQwenForCausalLM"],
             "mm_vision_tower": "google/siglip-so400m-patch14-384", "image_aspect_ratio": "anyres_max_9",
             "image_grid_pinpoints": "(1x1),...,(6x6)", "mm_projector_type": "mlp2x_gelu", "is_rm": True}
    vision = tf.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                   num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False)
    full = tf.LlavaOnevisionConfig(text_config=tf.Qwen2Config(**text).to_dict(), vision_config=vision.to_dict())
    with torch.device("meta"):
        model = tf.LlavaOnevisionForConditionalGeneration(full)
    state = {to_llava_key(k): v for k, v in model.state_dict().items()}
    state.update({"rm_head.dense.weight": torch.empty(3584, 3584, device="meta"),
                  "rm_head.dense.bias": torch.empty(3584, device="meta"),
                  "rm_head.out_proj.weight": torch.empty(1, 3584, device="meta"),
                  "rm_head.out_proj.bias": torch.empty(1, device="meta")})
    published = {"model.embed_tokens.weight": (152064, 3584), "model.layers.27.mlp.down_proj.weight": (3584, 18944),
                 "model.norm.weight": (3584,), "lm_head.weight": (152064, 3584), "model.image_newline": (3584,),
                 "model.mm_projector.0.weight": (3584, 1152), "model.mm_projector.2.weight": (3584, 3584),
                 "model.vision_tower.vision_tower.vision_model.encoder.layers.25.mlp.fc1.weight": (4304, 1152),
                 "model.vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight": (729, 1152)}
    for k, shape in published.items():
        assert tuple(state[k].shape) == shape, k
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.26.mlp.fc1.weight" not in state
    config = cm.hf_config(llava, state)
    assert config.vision_config.num_hidden_layers == 26 and config.vision_config.image_size == 384
    assert len(config.image_grid_pinpoints) == 36 and config.image_grid_pinpoints[-1] == [2304, 2304]
    weights = cm.checked_weights(config, state)
    assert len(weights) == len(state) - 4
    head = cm.rm_head(state, config.text_config.hidden_size)
    assert {k: tuple(v.shape) for k, v in head.items()} == {k: tuple(state[k].shape) for k in head}



def test_a_bin_checkpoint_converts_to_the_same_tensors(llava_code, converted: Path, tmp_path: Path):
    """LLaVA-code checkpoints saved as ``pytorch_model*.bin`` are read with ``weights_only=True``."""
    from safetensors.torch import load_file

    src = tmp_path / "bin-src"
    src.mkdir()
    for f in llava_code[0].iterdir():
        if f.suffix != ".safetensors":
            (src / f.name).write_bytes(f.read_bytes())
    state = load_file(str(llava_code[0] / "model-00001-of-00001.safetensors"))
    torch.save(state, src / "pytorch_model.bin")
    out = cm.convert_mm_rlhf(src, tmp_path / "bin-out")
    for name in ("model.safetensors", layouts.MMRLHF_HEAD_FILE):
        a, b = load_file(str(out / name)), load_file(str(converted / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # a pickle holding more than tensors is refused, not unpickled
    torch.save({"rm_head.dense.weight": object()}, src / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="weights_only=True"):
        cm.convert_mm_rlhf(src, tmp_path / "bin-out2")


def test_inspect_names_the_convert_command_for_the_llava_code_layout(llava_code):
    r = runner.invoke(app, ["inspect", str(llava_code[0])])
    assert r.exit_code != 0
    assert "llava_qwen" in r.output and "--to llava_onevision" in r.output


def test_the_template_renders_the_authors_scoring_text(converted: Path):
    import transformers as tf

    proc = tf.AutoProcessor.from_pretrained(str(converted))
    text_only = [{"role": "user", "content": "What is 2+2? <b>"}, {"role": "assistant", "content": "  It is 4.  "}]
    assert proc.apply_chat_template(text_only, tokenize=False) == qwen_1_5_prompt(make_conv_rm("What is 2+2? <b>", "  It is 4.  ", False))
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Which digit? "}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "Seven."}]}]
    assert proc.apply_chat_template(with_image, tokenize=False) == qwen_1_5_prompt(make_conv_rm(" Which digit? ", "Seven."))
