"""Published reward-model layouts (mmrm.rm.layouts): detected on load and scored as their authors score.

Every checkpoint is a tiny one in the exact published layout (mmrm.rm.tiny_layouts: real
transformers classes, random weights). The expected rewards come from re-implementations of each
author's scoring code written here with plain transformers calls (cited at each function), never
from mmrm's code path: the same conversations in ONE padded batch of mixed lengths, with images.
The key names and shapes are also checked at the published dimensions, on the ``meta`` device.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import image_part, image_uri, pil_image, text_part
from mmrm.rm import layouts
from mmrm.rm import tiny_layouts as tl
from mmrm.rm.errors import ConfigError
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.types import Sample

ATOL = 1e-5

# (user content, response); an image is (height, width, seed), rebuilt by the reference from its arrays.
VL_CONVS = [
    (["What digit is this?", (56, 84, 1)], "It is seven."),
    ("hi", "The digit is 3."),
    ([(84, 84, 2), "compare the left and the right one, which is better and why", (56, 56, 3)],
     "the left one is better because it is red and blue and the right one is not"),
]
TEXT_CONVS = [("hi", "The digit is 3."), ("which digit is this, one or two? think about it", "two, because of the shape"),
              ("a", "b")]


def _sample(user, response) -> Sample:
    if isinstance(user, str):
        return Sample(prompt=user, response=response)
    parts = [text_part(c) if isinstance(c, str) else image_part(image_uri(*c)) for c in user]
    return Sample(prompt=[{"role": "user", "content": parts}], response=response)


def _ref_messages(user, response):
    """Template messages and PIL images, as the authors' scripts build them (qwen_vl_utils style)."""
    if isinstance(user, str):
        return [{"role": "user", "content": user}, {"role": "assistant", "content": response}], []
    content, images = [], []
    for c in user:
        if isinstance(c, str):
            content.append({"type": "text", "text": c})
        else:
            content.append({"type": "image"})
            images.append(pil_image(*c))
    return [{"role": "user", "content": content}, {"role": "assistant", "content": response}], images


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _value_head(path: Path) -> nn.Linear:
    f = path / "value_head.safetensors"
    if f.exists():
        from safetensors import safe_open

        with safe_open(str(f), framework="pt", device="cpu") as fh:
            sd = {k: fh.get_tensor(k) for k in fh.keys()}
    else:
        sd = torch.load(str(path / "value_head.bin"), map_location="cpu", weights_only=True)
    return _linear(sd["v_head.summary.weight"], sd["v_head.summary.bias"])


# ------------------------------------------------------------------------------------------------
# Reference scorers: the authors' code, transcribed with plain transformers.


def _values_at_mask_end(model: nn.Module, head: nn.Linear, inputs) -> list[float]:
    """TRL's value-head forward (``v_head(hidden_states[-1])``) read as LLaMA-Factory / Skywork /
    DocReward read it: ``values.gather(-1, attention_mask.sum(-1, keepdim=True) - 1)``."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, return_dict=True, use_cache=False)
        values = head(out.hidden_states[-1]).squeeze(-1)
        scores = values.gather(dim=-1, index=inputs["attention_mask"].sum(dim=-1, keepdim=True) - 1).squeeze(-1)
    return scores.tolist()


def ref_skywork(path: Path, convs) -> list[float]:
    """Skywork-VL-Reward-7B's model card (huggingface.co/Skywork/Skywork-VL-Reward-7B, README
    "Running inference"): Qwen2_5_VLForConditionalGeneration wrapped in TRL's
    AutoModelForCausalLMWithValueHead, value_head.safetensors loaded with strict=False;
    ``text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)``,
    ``processor(text=..., images=..., padding=True)``, ``values = model(**inputs)[-1]``, score =
    ``values.gather(-1, attention_mask.sum(-1, keepdim=True) - 1)``. TRL's value head
    (trl/models/modeling_value_head.py, ValueHead / forward, v0.x) is ``summary(hidden_states[-1])``
    (dropout is off in eval). LLaMA-Factory's value-head scoring (its hf_engine ``_get_scores``) is
    the same gather, so text value-head models use it too."""
    import transformers as tf

    vision = "vision_config" in json.loads((path / "config.json").read_text())
    proc = tf.AutoProcessor.from_pretrained(str(path)) if vision else tf.AutoTokenizer.from_pretrained(str(path))
    model = (tf.Qwen2_5_VLForConditionalGeneration if vision else tf.AutoModelForCausalLM).from_pretrained(str(path)).eval()
    head = _value_head(path)
    texts, images = [], []
    for user, response in convs:
        msgs, imgs = _ref_messages(user, response)
        texts.append(proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False))
        images += imgs
    kw = {"images": images} if images else {}
    inputs = proc(text=texts, padding=True, return_tensors="pt", **kw) if vision else proc(
        texts, padding=True, return_tensors="pt", add_special_tokens=False)
    return _values_at_mask_end(model, head, inputs)


def ref_docreward(path: Path, docs) -> list[float]:
    """DocReward's demo_inference.py (github.com/Junpliu/DocReward, commit 6d0ddaa,
    RewardModelInference.get_reward_scores): the user turn is the fixed task prompt, each page an
    assistant turn with its image; the chat template (no generation prompt) is padded, then
    ``<|regression|>`` is inserted at each row's end (``attention_mask.sum(1)``) and the value read
    at ``attention_mask.sum(-1) - 1``, i.e. at that token."""
    import transformers as tf

    proc = tf.AutoProcessor.from_pretrained(str(path))
    model = tf.Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path)).eval()
    head = _value_head(path)
    texts, images = [], []
    for pages in docs:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "You need to create a professional document page(s). "}]}]
        for p in pages:
            msgs.append({"role": "assistant", "content": [{"type": "image"}]})
            images.append(pil_image(*p))
        texts.append(proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False))
    inputs = proc(text=texts, images=images, padding=True, return_tensors="pt")
    reg = proc.tokenizer.convert_tokens_to_ids("<|regression|>")
    b, n = inputs["input_ids"].shape
    lengths = inputs["attention_mask"].sum(dim=1)
    ids = torch.zeros((b, n + 1), dtype=inputs["input_ids"].dtype)
    mask = torch.zeros((b, n + 1), dtype=inputs["attention_mask"].dtype)
    for i in range(b):
        k = int(lengths[i])
        ids[i, :k] = inputs["input_ids"][i, :k]
        mask[i, :k] = inputs["attention_mask"][i, :k]
        ids[i, k] = reg
        mask[i, k] = 1
        if k < n:
            ids[i, k + 1:] = inputs["input_ids"][i, k:]
    inputs["input_ids"], inputs["attention_mask"] = ids, mask
    if "mm_token_type_ids" in inputs:  # transformers 5 adds it (after the authors' code): 0 = a text token
        tt = torch.zeros((b, n + 1), dtype=inputs["mm_token_type_ids"].dtype)
        for i in range(b):
            k = int(lengths[i])
            tt[i, :k] = inputs["mm_token_type_ids"][i, :k]
            tt[i, k + 1:] = inputs["mm_token_type_ids"][i, k:]
        inputs["mm_token_type_ids"] = tt
    return _values_at_mask_end(model, head, inputs)


def ref_openrlhf(path: Path, convs) -> list[float]:
    """OpenRLHF 0.11.2: the query text as its reward dataset builds it (openrlhf/datasets/
    reward_dataset.py, ``(prompt + chosen).rstrip("\\n")`` plus ``" " + eos`` unless it ends with
    eos), tokenized left-padded without special tokens (cli/serve_rm.py ``tokenize_fn``), and the
    RewardModel.forward of openrlhf/models/model.py (``_get_reward_model``): positions from the
    mask's cumsum, ``values = value_head(last_hidden_state)``, gathered at
    ``size(1) - 1 - mask.fliplr().argmax(1)``, then ``(r - mean) / std`` when normalize_reward."""
    import transformers as tf
    from safetensors import safe_open

    cfg = json.loads((path / "config.json").read_text())
    tok = tf.AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    body = tf.AutoModel.from_pretrained(str(path)).eval()
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        head = _linear(fh.get_tensor(cfg["value_head_prefix"] + ".weight"), None)
    texts = []
    for user, response in convs:
        msgs, _ = _ref_messages(user, response)
        t = tok.apply_chat_template(msgs, tokenize=False).rstrip("\n")
        if not t.endswith(tok.eos_token):
            t += " " + tok.eos_token
        texts.append(t)
    batch = tok(texts, return_tensors="pt", add_special_tokens=False, padding=True)
    mask = batch["attention_mask"]
    eos_indices = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1, keepdim=True)
    position_ids = mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(mask == 0, 1)
    with torch.no_grad():
        hidden = body(batch["input_ids"], attention_mask=mask, position_ids=position_ids)["last_hidden_state"]
        reward = head(hidden).squeeze(-1).gather(dim=1, index=eos_indices).squeeze(1)
    if cfg.get("normalize_reward"):
        reward = (reward - cfg["mean"]) / cfg["std"]
    return reward.tolist()


def ref_seq_cls_vl(path: Path, convs) -> list[float]:
    """A VLM sequence classifier as transformers' ``*ForSequenceClassification.forward`` pools
    (e.g. Qwen2ForSequenceClassification in transformers 5: the last non-pad token of each row,
    ``(arange * (input_ids != pad)).argmax(-1)``) over ``score(last_hidden_state)``; the text is the
    whole chat template, nothing stripped, as TRL's RewardTrainer (trl/trainer/reward_trainer.py,
    1.16, ``tokenize_fn``) trains such models."""
    import transformers as tf
    from safetensors import safe_open

    proc = tf.AutoProcessor.from_pretrained(str(path))
    body = tf.Qwen2_5_VLModel.from_pretrained(str(path)).eval()
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        head = _linear(fh.get_tensor("score.weight"), None)
    texts, images = [], []
    for user, response in convs:
        msgs, imgs = _ref_messages(user, response)
        texts.append(proc.apply_chat_template(msgs, tokenize=False))
        images += imgs
    inputs = proc(text=texts, images=images, padding=True, return_tensors="pt")
    pad = proc.tokenizer.pad_token_id
    with torch.no_grad():
        logits = head(body(**inputs, use_cache=False).last_hidden_state)
    non_pad = (inputs["input_ids"] != pad).int()
    last = (torch.arange(non_pad.shape[-1]) * non_pad).argmax(-1)
    return logits[torch.arange(logits.shape[0]), last, 0].tolist()


# The checkpoints: the session fixture ``published`` (tests/conftest.py).


def _assert_close(got, want):
    assert len(got) == len(want)
    diff = max(abs(a - b) for a, b in zip(got, want))
    assert diff <= ATOL, (got, want, diff)
    assert len({round(w, 3) for w in want}) == len(want), want  # distinct rewards: a wrong pooled row would show


# ------------------------------------------------------------------------------------------------
# Detection and scoring


@pytest.mark.parametrize("key,layout,ref,convs", [
    ("skywork", "value_head", ref_skywork, VL_CONVS),
    ("trl_text", "value_head", ref_skywork, TEXT_CONVS),
    ("openrlhf", "openrlhf", ref_openrlhf, TEXT_CONVS),
    ("seq_cls_vl", "sequence_classification", ref_seq_cls_vl, VL_CONVS),
])
def test_layout_scores_as_its_authors(published, key, layout, ref, convs):
    path = published[key]
    rm = RewardModel.from_pretrained(path, device="cpu")
    assert rm.config.source == layout
    got = rm.rewards([_sample(u, r) for u, r in convs])
    _assert_close(got, ref(path, convs))
    # the same rewards one by one and as a group (batch invariance holds for every layout)
    assert rm.rewards([_sample(*convs[0])]) == pytest.approx(got[:1], abs=ATOL)


def test_trl_value_head_inside_the_model_weights(published, tmp_path):
    """TRL's own save_pretrained keeps v_head.summary.* among the backbone's weights (no value_head file)."""
    from safetensors.torch import load_file, save_file

    path = _copy(published["trl_text"], tmp_path / "trl-inline")
    head = torch.load(str(path / "value_head.bin"), weights_only=True)
    (path / "value_head.bin").unlink()
    sd = load_file(str(path / "model.safetensors")) | head
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    rm = RewardModel.from_pretrained(path, device="cpu")
    assert rm.config.source == "value_head"
    got = rm.rewards([_sample(u, r) for u, r in TEXT_CONVS])
    (path / "value_head.bin").write_bytes((published["trl_text"] / "value_head.bin").read_bytes())  # for the reference
    _assert_close(got, ref_skywork(path, TEXT_CONVS))


def test_openrlhf_appends_eos_when_the_template_does_not_end_with_it(published, tmp_path):
    """OpenRLHF's reward dataset appends " " + eos to a text that does not end with eos."""
    path = _copy(published["openrlhf"], tmp_path / "orl-eos")
    f = path / "tokenizer_config.json"
    cfg = json.loads(f.read_text())
    cfg["eos_token"] = "<|endoftext|>"  # the template ends with <|im_end|>, no longer the eos token
    f.write_text(json.dumps(cfg))
    rm = RewardModel.from_pretrained(path, device="cpu")
    assert rm.config.suffix == " <|endoftext|>" and rm.config.pool_token == "<|endoftext|>"
    got = rm.rewards([_sample(u, r) for u, r in TEXT_CONVS])
    _assert_close(got, ref_openrlhf(path, TEXT_CONVS))


def test_entry_points_load_layouts(published, tmp_path):
    """RewardFn and `mmrm score` go through from_pretrained, so they detect layouts too."""
    from typer.testing import CliRunner

    from mmrm.cli import app
    from mmrm.rl.reward_fn import RewardFn

    path = published["openrlhf"]
    want = ref_openrlhf(path, TEXT_CONVS)
    fn = RewardFn.from_checkpoint(path, device="cpu")
    _assert_close(fn([u for u, _ in TEXT_CONVS], [r for _, r in TEXT_CONVS]), want)
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps({"prompt": u, "response": r}) + "\n" for u, r in TEXT_CONVS))
    out = CliRunner().invoke(app, ["score", str(path), "--input", str(f), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    _assert_close([json.loads(line)["value"] for line in out.stdout.splitlines() if line.startswith("{")], want)


def test_skywork_pools_the_template_newline_and_default_system_turn(published):
    rm = RewardModel.from_pretrained(published["skywork"], device="cpu")
    text = rm.processor.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                            tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.") and text.endswith("<|im_end|>\n")
    enc = rm.encode(Sample(prompt="q", response="a"))
    assert rm.processor.tokenizer.decode(enc.input_ids) == text  # exactly what apply_chat_template gives


def test_docreward_scores_as_its_authors(published):
    path = published["docreward"]
    rm = RewardModel.from_pretrained(path, device="cpu")
    assert rm.config.source == "docreward" and rm.config.pool_token == "<|regression|>"
    docs = [[(56, 56, 11)], [(84, 56, 12), (56, 84, 13), (56, 56, 14)], [(112, 84, 15), (56, 56, 16)]]
    samples = []
    for pages in docs:
        # the pages are the response's images; the model renders each as its own assistant turn
        samples.append(Sample(prompt=[{"role": "user", "content": [text_part(layouts.DOCREWARD_TASK_PROMPT)]}],
                              response=[image_part(image_uri(*p)) for p in pages]))
    got = rm.rewards(samples)
    _assert_close(got, ref_docreward(path, docs))
    enc = rm.encode(samples[0])
    assert int(enc.input_ids[-1]) == rm.processor.tokenizer.convert_tokens_to_ids("<|regression|>")


def test_group_path_equals_plain_scores_on_a_layout(published):
    from mmrm.rm.types import Group

    rm = RewardModel.from_pretrained(published["skywork"], device="cpu")
    g = Group(prompt=[{"role": "user", "content": [image_part(image_uri(56, 56, 9)), text_part("describe the picture please")]}],
              responses=["a cat", "a red and blue dog on the left", "nothing"])
    ranked = rm.rank([g])[0]
    plain = rm.rewards(g.samples())
    assert [r.value for r in ranked.results] == pytest.approx(plain, abs=ATOL)


# ------------------------------------------------------------------------------------------------
# Key names and shapes at the published dimensions (meta device: no weights, no memory)

QWEN25_VL_7B = dict(  # Qwen2.5-VL-7B-Instruct's config.json (Skywork-VL-Reward-7B's backbone)
    text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584),
)
QWEN25_VL_3B = dict(  # Qwen2.5-VL-3B-Instruct's (DocReward-3B's backbone)
    text_config=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                     num_key_value_heads=2, vocab_size=151936),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048),
)


def _facts(config: dict, weights: dict, files: tuple[str, ...], added=frozenset()) -> layouts.Facts:
    return layouts.Facts(Path("/published"), files, config, weights, {k: "model.safetensors" for k in weights}, added)


@pytest.mark.parametrize("dims,hidden,added,layout", [
    (QWEN25_VL_7B, 3584, frozenset(), "value_head"),
    (QWEN25_VL_3B, 2048, frozenset({"<|regression|>"}), "docreward"),
])
def test_value_head_layouts_at_published_dims(dims, hidden, added, layout):
    import transformers as tf

    cfg = tf.Qwen2_5_VLConfig(**dims)
    with torch.device("meta"):
        model = tf.Qwen2_5_VLForConditionalGeneration(cfg)
        # TRL's AutoModelForCausalLMWithValueHead: v_head = ValueHead(config), summary = Linear(H, 1)
        holder = nn.Module()
        holder.v_head = nn.Module()
        holder.v_head.summary = nn.Linear(cfg.text_config.hidden_size, 1)
    from mmrm.rm.loading import hidden_size

    assert hidden_size(model) == hidden
    vh = {k: tuple(v.shape) for k, v in holder.state_dict().items()}
    config = cfg.to_dict() | {"architectures": ["Qwen2_5_VLForConditionalGeneration"]}
    weights = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    plan = layouts.detect_facts(_facts(config, weights, ("config.json", "model.safetensors", "value_head.safetensors"), added))
    assert plan.layout == layout and plan.loader == "causal"
    assert plan.expected_head() == vh == {"v_head.summary.weight": (1, hidden), "v_head.summary.bias": (1,)}


def test_openrlhf_and_seq_cls_at_published_dims():
    import transformers as tf

    llama = tf.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=128256)
    base_cls = tf.AutoModel._model_mapping[type(llama)]

    class RewardModel(base_cls.__base__):  # OpenRLHF's _get_reward_model class layout
        def __init__(self, config):
            super().__init__(config)
            setattr(self, self.base_model_prefix, base_cls(config))
            setattr(self, "score", nn.Linear(config.hidden_size, 1, bias=False))

    with torch.device("meta"):
        orl = RewardModel(llama)
        seq = tf.Qwen2ForSequenceClassification(tf.Qwen2Config(hidden_size=3584, intermediate_size=18944,
                                                                num_hidden_layers=28, num_attention_heads=28,
                                                                num_key_value_heads=4, num_labels=1))
    for model, arch, layout, extra in [(orl, "RewardModel", "openrlhf", {"normalize_reward": False}),
                                       (seq, "Qwen2ForSequenceClassification", "sequence_classification", {})]:
        weights = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        config = model.config.to_dict() | {"architectures": [arch]} | extra
        plan = layouts.detect_facts(_facts(config, weights, ("config.json", "model.safetensors")))
        assert plan.layout == layout and plan.loader == "base"
        assert plan.expected_head() == {"score.weight": weights["score.weight"]}
        assert "score.bias" not in weights and all(k.startswith(("model.", "score.")) for k in weights)


# ------------------------------------------------------------------------------------------------
# Corrupt variants: each a clear error at load, never a model with a random head


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_head_file_is_an_unknown_layout(published, tmp_path):
    path = _copy(published["skywork"], tmp_path / "no-head")
    (path / "value_head.safetensors").unlink()
    with pytest.raises(ConfigError) as ei:
        RewardModel.from_pretrained(path, device="cpu")
    msg = str(ei.value)
    for part in ("model.safetensors", "config.json", "Qwen2_5_VLForConditionalGeneration", "value_head", "openrlhf",
                 "docreward", "sequence_classification", "lm_head.weight"):
        assert part in msg, (part, msg)
    with pytest.raises(ConfigError, match="value_head.safetensors, value_head.bin"):
        RewardModel.from_pretrained(path, device="cpu", layout="value_head")


def test_wrong_head_shape_and_missing_key(published, tmp_path):
    from safetensors.torch import save_file

    path = _copy(published["skywork"], tmp_path / "bad-shape")
    save_file({"v_head.summary.weight": torch.zeros(1, 129), "v_head.summary.bias": torch.zeros(1)},
              str(path / "value_head.safetensors"))
    with pytest.raises(ConfigError, match=r"v_head.summary.weight has shape \[1, 129\], expected \[1, 128\]"):
        RewardModel.from_pretrained(path, device="cpu")
    save_file({"v_head.summary.weight": torch.zeros(1, 128)}, str(path / "value_head.safetensors"))
    with pytest.raises(ConfigError, match=r"no v_head.summary.bias \(expected shape \[1\]\)"):
        RewardModel.from_pretrained(path, device="cpu")


def test_regression_token_absent(tmp_path):
    path = tl.build_docreward(tmp_path / "doc-no-token", with_token=False)
    with pytest.raises(ConfigError, match="<\\|regression\\|>") as ei:
        RewardModel.from_pretrained(path, device="cpu", layout="docreward")
    assert ei.value.field == "tokenizer"
    assert layouts.detect(path).layout == "value_head"  # without the token it is a plain value-head model


def test_two_label_vl_seq_cls_refused(tmp_path):
    path = tl.build_vl_sequence_classification(tmp_path / "seq2", num_labels=2)
    with pytest.raises(ConfigError, match=r"score.weight has shape \[2, 128\], expected \[1, 128\]") as ei:
        RewardModel.from_pretrained(path, device="cpu")
    assert ei.value.limit == 1


def test_missing_backbone_tensor_refused(published, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy(published["openrlhf"], tmp_path / "partial")
    sd = load_file(str(path / "model.safetensors"))
    sd.pop("model.layers.1.mlp.up_proj.weight")
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="layers.1.mlp.up_proj.weight"):
        RewardModel.from_pretrained(path, device="cpu")


def test_bin_head_loads_only_plain_tensors_and_no_checkpoint_code_runs(published, tmp_path):
    path = _copy(published["trl_text"], tmp_path / "evil")
    marker = tmp_path / "ran"
    # a pickle that would run code when unpickled without weights_only
    torch.save({"v_head.summary.weight": torch.zeros(1, 128), "v_head.summary.bias": torch.zeros(1),
                "x": _Boom(str(marker))}, str(path / "value_head.bin"))
    with pytest.raises(ConfigError, match="weights_only=True"):
        RewardModel.from_pretrained(path, device="cpu")
    assert not marker.exists()
    # a checkpoint's own Python file, mapped in config.json, is never imported
    torch.save({"v_head.summary.weight": torch.zeros(1, 128), "v_head.summary.bias": torch.zeros(1)},
               str(path / "value_head.bin"))
    (path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil", "AutoConfig": "modeling_evil.EvilConfig"}
    (path / "config.json").write_text(json.dumps(cfg))
    RewardModel.from_pretrained(path, device="cpu").rewards([Sample(prompt="q", response="a")])
    assert not marker.exists()


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
