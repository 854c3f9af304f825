"""RewardModel on the tiny real-architecture models.

Expected values are computed here, independently of the code under test: with the plain
transformers model and processor (images decoded from the test's own arrays, the chat template
rendered by the processor), with ``math``/``statistics`` for the pair and group formulas.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import image_part, image_uri, pil_image, text_part, video_part
from mmrm.rm import checkpoint as ckpt
from mmrm.rm.errors import ConfigError, InputTooLong, MediaError, MmrmError, UnsupportedInput
from mmrm.rm.heads import RewardHead, pool_last_token
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.types import Group, Pair, Sample

VL_ARCHS = ["qwen2_vl", "qwen2_5_vl"]
ATOL = 1e-5

# ------------------------------------------------------------------------------------------------
# Conversations. Each media item is described by (height, width, seed) so the test can rebuild the
# exact pixels itself for the reference computation.


def _img(h, w, seed):
    return ("image", (h, w, seed))


def _vid(frames):
    return ("video", frames)


# (prompt messages, response content); content is a string or a list of text / _img / _vid items.
MIXED = [
    ([("user", "hi")], "The digit is 3."),
    ([("user", [_img(56, 84, 1), "What digit?"])], "it is seven"),
    (
        [("system", "Be a careful grader."), ("user", [_img(112, 56, 2), "compare the left and the right", _img(84, 84, 3)])],
        "the left one is better because it is red and blue and the right one is not",
    ),
    ([("user", [_vid([(56, 56, s) for s in range(10, 14)]), "describe the video"])], "a cat"),
    (
        [("user", "which digit is this, one or two?"), ("assistant", "two"), ("user", "are you sure? think again")],
        "Yes: the digit is two because of the shape.",
    ),
    ([("user", "edit the picture")], ["Edited:", _img(28, 28, 4)]),
    ([("user", [_img(56, 56, 5), _vid([(84, 56, 20), (84, 56, 21)]), "same scene?"])], "yes, the same scene in both"),
]


def _content_to_parts(content):
    if isinstance(content, str):
        return content
    parts = []
    for c in content:
        if isinstance(c, str):
            parts.append(text_part(c))
        elif c[0] == "image":
            parts.append(image_part(image_uri(*c[1])))
        else:
            parts.append(video_part([image_uri(*f) for f in c[1]]))
    return parts


def make_sample(spec) -> Sample:
    prompt, response = spec
    return Sample(
        prompt=[{"role": r, "content": _content_to_parts(c)} for r, c in prompt],
        response=_content_to_parts(response),
    )


def reference_inputs(spec, processor):
    """Processor inputs for one conversation, built without mmrm: the template messages, the PIL
    images from the test's own arrays, and the rendered text with trailing whitespace stripped."""
    prompt, response = spec
    msgs, images, videos = [], [], []
    for role, content in [*prompt, ("assistant", response)]:
        if isinstance(content, str):
            msgs.append({"role": role, "content": content})
            continue
        parts = []
        for c in content:
            if isinstance(c, str):
                parts.append({"type": "text", "text": c})
            elif c[0] == "image":
                parts.append({"type": "image"})
                images.append(pil_image(*c[1]))
            else:
                parts.append({"type": "video"})
                videos.append([pil_image(*f) for f in c[1]])
        msgs.append({"role": role, "content": parts})
    text = processor.apply_chat_template(msgs, tokenize=False).rstrip()
    kw = {"text": [text], "return_tensors": "pt"}
    if images:
        kw["images"] = images
    if videos:
        kw["videos"] = videos
    return processor(**kw)


def reference_reward(body: nn.Module, head: nn.Module, inputs) -> float:
    """Plain transformers: body forward on ONE unpadded sequence, hidden state at the last position."""
    with torch.no_grad():
        out = body(**inputs, use_cache=False)
        return float(head(out.last_hidden_state[:, -1]).reshape(-1)[0])


# ------------------------------------------------------------------------------------------------
# Fixtures: each reward model is built and saved once per module.


@pytest.fixture(scope="module")
def vl(tiny_models, tmp_path_factory):
    """arch -> (RewardModel loaded from its saved checkpoint, checkpoint path)."""
    root = tmp_path_factory.mktemp("rm_vl")
    out = {}
    for arch in VL_ARCHS:
        built = RewardModel.from_backbone(tiny_models[arch], head_type="mlp2", seed=1, device="cpu")
        path = built.save_pretrained(root / arch)
        out[arch] = (RewardModel.from_pretrained(path, device="cpu"), path)
    return out


@pytest.fixture(scope="module")
def text_rm(tiny_qwen2, tmp_path_factory):
    """(RewardModel with a linear head on the text-only qwen2, checkpoint path)."""
    built = RewardModel.from_backbone(tiny_qwen2, head_type="linear", seed=2, device="cpu")
    path = built.save_pretrained(tmp_path_factory.mktemp("rm_text") / "qwen2")
    return RewardModel.from_pretrained(path, device="cpu"), path


@pytest.fixture(scope="module")
def mixed_samples():
    return [make_sample(s) for s in MIXED]


TEXT_SAMPLES = [
    Sample(prompt="Which digit?", response="The digit is 3."),
    Sample(prompt="hi", response="hello there, how are you"),
    Sample(prompt=[{"role": "system", "content": "sys"}, {"role": "user", "content": "a b c d e"}], response="ok"),
]


# ------------------------------------------------------------------------------------------------
# Shapes, dtypes, heads


def test_score_returns_one_python_float_per_sample(vl, mixed_samples):
    rm, _ = vl["qwen2_vl"]
    scores = rm.rewards(mixed_samples)
    assert len(scores) == len(mixed_samples)
    assert all(type(s) is float and math.isfinite(s) for s in scores)
    assert len(set(scores)) == len(scores)  # different conversations, different rewards
    calls = rm.forward_calls
    assert rm.rewards([]) == []
    assert rm.forward_calls == calls


def test_head_structure():
    lin = RewardHead(16, "linear")
    assert isinstance(lin.net, nn.Linear) and (lin.net.in_features, lin.net.out_features) == (16, 1)
    mlp = RewardHead(16, "mlp2", inner_size=8)
    layers = list(mlp.net.children())
    assert [type(m) for m in layers] == [nn.Linear, nn.SiLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (16, 8)
    assert (layers[2].in_features, layers[2].out_features) == (8, 1)
    x = torch.randn(5, 16)
    expected = layers[2](torch.nn.functional.silu(layers[0](x))).squeeze(-1)
    assert mlp(x).shape == (5,)
    assert torch.allclose(mlp(x), expected)
    assert torch.allclose(lin(x), x @ lin.net.weight[0] + lin.net.bias[0])
    assert RewardHead(16, "mlp2").inner_size == 16
    with pytest.raises(ValueError):
        RewardHead(16, "mlp3")  # type: ignore[arg-type]


def test_model_heads_match_config(vl, text_rm):
    rm, _ = vl["qwen2_vl"]
    layers = list(rm.head.net.children())
    assert [type(m) for m in layers] == [nn.Linear, nn.SiLU, nn.Linear]
    assert layers[0].in_features == rm.backbone.config.get_text_config().hidden_size
    trm, _ = text_rm
    assert isinstance(trm.head.net, nn.Linear)
    assert trm.head.net.in_features == trm.backbone.config.hidden_size


def test_bf16_backbone_keeps_fp32_head(vl, mixed_samples):
    rm32, path = vl["qwen2_vl"]
    rm16 = RewardModel.from_pretrained(path, device="cpu", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in rm16.backbone.parameters())
    assert all(p.dtype == torch.float32 for p in rm16.head.parameters())
    assert rm16.score(mixed_samples[:2])[0].provenance.dtype == "bfloat16"
    s16 = rm16.rewards(mixed_samples[:2])
    assert all(type(s) is float and math.isfinite(s) for s in s16)
    assert np.allclose(s16, rm32.rewards(mixed_samples[:2]), atol=0.05)


# ------------------------------------------------------------------------------------------------
# Pooling


def test_pool_last_token_right_and_left_padding():
    B, T, H = 3, 5, 2
    hidden = torch.arange(B * T * H, dtype=torch.float32).reshape(B, T, H)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    # right padding: last real tokens at 2, 4, 0; left padding: always position 4
    exp_right = torch.stack([hidden[0, 2], hidden[1, 4], hidden[2, 0]])
    exp_left = torch.stack([hidden[0, 4], hidden[1, 4], hidden[2, 4]])
    assert torch.equal(pool_last_token(hidden, right), exp_right)
    assert torch.equal(pool_last_token(hidden, left), exp_left)
    assert torch.equal(pool_last_token(hidden, right.bool()), exp_right)


# ------------------------------------------------------------------------------------------------
# Batch invariance


@pytest.mark.parametrize("arch", VL_ARCHS)
def test_mixed_batch_is_one_forward_and_batch_invariant(vl, mixed_samples, arch):
    rm, _ = vl[arch]
    lengths = [rm.encode(s).length for s in mixed_samples]
    assert len(set(lengths)) == len(lengths), f"lengths should all differ: {lengths}"
    with_media = [rm.encode(s).n_images > 0 for s in mixed_samples]
    assert any(with_media) and not all(with_media)
    alone = [rm.rewards([s])[0] for s in mixed_samples]
    try:
        # padded: the whole mixed batch is one forward; packed (the CPU default): the text samples
        # share one packed row and the ones with images one padded batch
        for pack, forwards in ((False, 1), (True, 2)):
            rm.options.packing = "on" if pack else "off"
            before = rm.forward_calls
            batched = rm.rewards(mixed_samples)
            assert rm.forward_calls - before == forwards
            assert np.abs(np.array(batched) - np.array(alone)).max() <= ATOL
            # order of the batch does not matter either
            rev = rm.rewards(mixed_samples[::-1])[::-1]
            assert np.abs(np.array(rev) - np.array(alone)).max() <= ATOL
    finally:
        rm.options.packing = "auto"


@pytest.mark.parametrize("arch", VL_ARCHS)
def test_scores_match_plain_transformers_reference(vl, mixed_samples, arch):
    """Independent reference: the plain model on each unpadded sequence, last position, rm.head."""
    import transformers as tf

    rm, path = vl[arch]
    processor = tf.AutoProcessor.from_pretrained(str(path))
    model = tf.AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    got = rm.rewards(mixed_samples)
    for spec, sample, value in zip(MIXED, mixed_samples, got):
        inputs = reference_inputs(spec, processor)
        assert torch.equal(rm.encode(sample).input_ids, inputs["input_ids"][0])
        assert inputs["input_ids"][0, -1] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        expected = reference_reward(model.model, rm.head, inputs)
        assert value == pytest.approx(expected, abs=ATOL)


@pytest.mark.parametrize("arch", VL_ARCHS)
def test_left_padding_side_checkpoint_gives_same_scores(vl, mixed_samples, tmp_path, arch):
    rm, path = vl[arch]
    left = tmp_path / "left"
    shutil.copytree(path, left)
    cfg_file = left / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["padding_side"] = "left"
    cfg_file.write_text(json.dumps(cfg))
    # padded batches (the premise of this test: a tokenizer that pads on the left), not packed rows
    rm_left = RewardModel.from_pretrained(left, device="cpu", packing="off")
    assert rm_left.encoder.tokenizer.padding_side == "left"
    before = rm_left.forward_calls
    got = rm_left.rewards(mixed_samples)
    assert rm_left.forward_calls - before == 1
    assert np.abs(np.array(got) - np.array(rm.rewards(mixed_samples))).max() <= ATOL


def test_text_model_batch_invariance_and_reference(text_rm):
    import transformers as tf

    rm, path = text_rm
    tok = tf.AutoTokenizer.from_pretrained(str(path))
    body = tf.AutoModelForCausalLM.from_pretrained(str(path)).model.eval()
    before = rm.forward_calls
    batched = rm.rewards(TEXT_SAMPLES)
    assert rm.forward_calls - before == 1
    for s, v in zip(TEXT_SAMPLES, batched):
        msgs = [{"role": m.role, "content": m.content} for m in s.messages]
        ids = tok(tok.apply_chat_template(msgs, tokenize=False).rstrip(), return_tensors="pt", add_special_tokens=False)
        assert v == pytest.approx(reference_reward(body, rm.head, ids), abs=ATOL)
        assert v == pytest.approx(rm.rewards([s])[0], abs=ATOL)


# ------------------------------------------------------------------------------------------------
# Pairs and groups


def test_compare_is_sigmoid_of_reward_difference_in_one_forward(vl, mixed_samples):
    rm, _ = vl["qwen2_vl"]
    pairs = [
        Pair(prompt=mixed_samples[1].prompt, response_a="seven", response_b="The digit is 3."),
        Pair(prompt="hi", response_a="hello", response_b=[{"type": "text", "text": "Edited:"}, image_part(image_uri(28, 28, 4))]),
        Pair(prompt=mixed_samples[3].prompt, response_a="a cat", response_b="a dog running in the park"),
    ]
    rm.options.packing = "off"  # padded: every pair, both sides, one forward
    try:
        before = rm.forward_calls
        probs = rm.probabilities(pairs)
        assert rm.forward_calls - before == 1
    finally:
        rm.options.packing = "auto"
    before = rm.forward_calls
    # packed (the CPU default): text-only sides in one packed row, sides with images in one batch
    assert rm.probabilities(pairs) == pytest.approx(probs, abs=ATOL)
    assert rm.forward_calls - before == 2
    for p, prob in zip(pairs, probs):
        ra = rm.rewards([Sample(prompt=p.prompt, response=p.response_a)])[0]
        rb = rm.rewards([Sample(prompt=p.prompt, response=p.response_b)])[0]
        assert 0.0 < prob < 1.0
        assert prob == pytest.approx(1.0 / (1.0 + math.exp(rb - ra)), abs=ATOL)
    swapped = rm.probabilities([p.swapped() for p in pairs])
    assert np.allclose(np.array(swapped), 1.0 - np.array(probs), atol=ATOL)
    res = rm.compare(pairs[:1])[0]
    assert res.prob_a_wins == res.value
    assert set(res.details) >= {"reward_a", "reward_b"}


def test_compare_results_bad_side_is_invalid_others_score(text_rm):
    rm, _ = text_rm
    pairs = [
        Pair(prompt="q", response_a="fine", response_b=[image_part(image_uri(28, 28, 0))]),
        Pair(prompt="q", response_a="fine", response_b="also fine"),
    ]
    res = rm.compare(pairs)
    assert not res[0].ok and res[0].error_kind == "unsupported_input" and "response_b" in res[0].invalid
    assert res[1].ok and 0 < res[1].value < 1
    # compare() raises the typed error (a service maps its kind to a 4xx), not a generic one
    with pytest.raises(UnsupportedInput) as ei:
        rm.probabilities(pairs)
    assert ei.value.field == "response.content[0]"


def test_rank_raw_and_normalized(text_rm):
    rm, _ = text_rm
    prompt = "Which digit is it?"
    responses = ["The digit is 3.", "three", {"role": "assistant", "content": "It is 8."}, [text_part("no idea")]]
    g, one = rm.rank([Group(prompt=prompt, responses=responses), Group(prompt=prompt, responses=["only"])])
    samples = [Sample(prompt=prompt, response=r) for r in responses]
    assert g.values == pytest.approx(rm.rewards(samples), abs=ATOL)
    mean, sd = statistics.fmean(g.values), statistics.pstdev(g.values)
    assert sd > 0
    assert g.normalized == pytest.approx([(r - mean) / (sd + 1e-6) for r in g.values], abs=1e-9)
    assert statistics.fmean(g.normalized) == pytest.approx(0.0, abs=1e-9)
    assert one.normalized == [0.0] and len(one.results) == 1 and one.results[0].ok


def test_compare_names_the_failing_side(text_rm):
    rm, _ = text_rm
    pair = Pair(prompt=[{"role": "user", "content": "q"}], response_a="fine", response_b=[text_part("x"), image_part(image_uri(28, 28, 0))])
    [r] = rm.compare([pair])
    assert not r.ok and r.field == "response_b.content[1]" and r.error_kind == "unsupported_input"
    [r] = rm.compare([pair.swapped()])
    assert not r.ok and r.field == "response_a.content[1]"


# ------------------------------------------------------------------------------------------------
# Truncation


LONG_PROMPT = "the digit is one two three four five six seven eight nine ten " * 6
RESPONSE = "The digit is 3."


def test_default_policy_refuses_too_long(text_rm):
    _, path = text_rm
    rm = RewardModel.from_pretrained(path, device="cpu", max_length=24)
    sample = Sample(prompt=LONG_PROMPT, response=RESPONSE)
    with pytest.raises(InputTooLong) as ei:
        rm.rewards([sample])
    assert ei.value.field == "messages"
    assert ei.value.limit == 24
    res = rm.score([sample, Sample(prompt="hi", response="ok")])
    assert not res[0].ok and res[0].error_kind == "input_too_long"
    assert res[1].ok


def test_left_truncation_keeps_response_and_matches_manual_cut(text_rm):
    import transformers as tf

    _, path = text_rm
    max_len = 24
    rm = RewardModel.from_pretrained(path, device="cpu", max_length=max_len, truncation="left")
    sample = Sample(prompt=LONG_PROMPT, response=RESPONSE)
    tok = tf.AutoTokenizer.from_pretrained(str(path))
    text = tok.apply_chat_template(
        [{"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": RESPONSE}], tokenize=False
    ).rstrip()
    full = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert full.shape[1] > max_len
    cut = full[:, -max_len:]
    enc = rm.encode(sample)
    assert enc.length == max_len
    assert torch.equal(enc.input_ids, cut[0])
    response_ids = tok(RESPONSE + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert enc.input_ids[-len(response_ids):].tolist() == response_ids
    body = tf.AutoModelForCausalLM.from_pretrained(str(path)).model.eval()
    expected = reference_reward(body, rm.head, {"input_ids": cut, "attention_mask": torch.ones_like(cut)})
    assert rm.rewards([sample])[0] == pytest.approx(expected, abs=ATOL)
    # a short sample in the same model is not touched
    assert rm.encode(Sample(prompt="hi", response="ok")).length < max_len


def test_left_truncation_response_alone_too_long_refused(text_rm):
    _, path = text_rm
    rm = RewardModel.from_pretrained(path, device="cpu", max_length=24, truncation="left")
    sample = Sample(prompt="hi", response=LONG_PROMPT)
    with pytest.raises(InputTooLong) as ei:
        rm.rewards([sample])
    assert ei.value.field == "response"
    assert ei.value.limit == 24


def test_left_truncation_never_cuts_an_image(vl):
    _, path = vl["qwen2_vl"]
    base = RewardModel.from_pretrained(path, device="cpu")
    sample = Sample(prompt=[{"role": "user", "content": [image_part(image_uri(56, 56, 1)), text_part(LONG_PROMPT)]}], response=RESPONSE)
    n = base.encode(sample).length
    rm = RewardModel.from_pretrained(path, device="cpu", max_length=n - 6, truncation="left")
    with pytest.raises(InputTooLong) as ei:
        rm.rewards([sample])
    assert ei.value.field == "messages"
    assert ei.value.limit == n - 6
    res = rm.score([sample, Sample(prompt="hi", response="ok")])
    assert not res[0].ok and res[0].error_kind == "input_too_long" and res[1].ok


def test_left_truncation_before_an_image_keeps_its_pixels(vl):
    """Cutting text in front of an image keeps the image: reward equals the plain model on the cut ids."""
    import transformers as tf

    _, path = vl["qwen2_vl"]
    content = [text_part(LONG_PROMPT), image_part(image_uri(56, 84, 5)), text_part("what digit")]
    sample = Sample(prompt=[{"role": "user", "content": content}], response=RESPONSE)
    processor = tf.AutoProcessor.from_pretrained(str(path))
    spec = ([("user", [LONG_PROMPT, _img(56, 84, 5), "what digit"])], RESPONSE)
    inputs = reference_inputs(spec, processor)
    n = inputs["input_ids"].shape[1]
    max_len = n - 20
    rm = RewardModel.from_pretrained(path, device="cpu", max_length=max_len, truncation="left")
    enc = rm.encode(sample)
    assert enc.length == max_len
    assert torch.equal(enc.input_ids, inputs["input_ids"][0, 20:])
    cut = dict(inputs)
    for k in ("input_ids", "attention_mask", "mm_token_type_ids"):
        cut[k] = inputs[k][:, 20:]
    model = tf.AutoModelForImageTextToText.from_pretrained(str(path)).eval()
    expected = reference_reward(model.model, rm.head, cut)
    assert rm.rewards([sample])[0] == pytest.approx(expected, abs=ATOL)


# ------------------------------------------------------------------------------------------------
# Refusals and item-level failures


def test_text_only_backbone_refuses_images_with_field(text_rm):
    rm, _ = text_rm
    in_prompt = Sample(prompt=[{"role": "user", "content": [text_part("look:"), image_part(image_uri(28, 28, 1))]}], response="ok")
    with pytest.raises(UnsupportedInput) as ei:
        rm.rewards([in_prompt])
    assert ei.value.field == "prompt[0].content[1]"
    in_response = Sample(
        prompt=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        response=[text_part("here"), video_part([image_uri(28, 28, 2)])],
    )
    with pytest.raises(UnsupportedInput) as ei:
        rm.rewards([in_response])
    assert ei.value.field == "response.content[1]"


def test_failed_item_never_fails_its_batch(text_rm):
    rm, _ = text_rm
    bad = Sample(prompt=[{"role": "user", "content": [image_part(image_uri(28, 28, 1)), text_part("q")]}], response="ok")
    items = [TEXT_SAMPLES[0], bad, TEXT_SAMPLES[1], TEXT_SAMPLES[2]]
    before = rm.forward_calls
    res = rm.score(items)
    assert rm.forward_calls - before == 1  # the good items still share one forward
    assert [r.ok for r in res] == [True, False, True, True]
    assert res[1].value is None and res[1].error_kind == "unsupported_input"
    assert "prompt[0].content[0]" in res[1].invalid
    alone = rm.rewards(TEXT_SAMPLES)
    assert [res[0].value, res[2].value, res[3].value] == pytest.approx(alone, abs=ATOL)


def test_bad_media_is_an_invalid_item(vl, mixed_samples):
    rm, _ = vl["qwen2_5_vl"]
    corrupt = Sample(prompt=[{"role": "user", "content": [image_part("data:image/png;base64,aGVsbG8gd29ybGQ="), text_part("q")]}], response="ok")
    res = rm.score([mixed_samples[1], corrupt, mixed_samples[0]])
    assert [r.ok for r in res] == [True, False, True]
    assert res[1].error_kind == MediaError.kind or res[1].error_kind.startswith("invalid")
    assert [res[0].value, res[2].value] == pytest.approx(rm.rewards([mixed_samples[1], mixed_samples[0]]), abs=ATOL)
    with pytest.raises(MediaError) as ei:
        rm.rewards([corrupt])
    assert ei.value.field.startswith("prompt[0].content[0]")


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def test_mixed_failure_batch_each_bad_item_invalid_each_good_item_as_alone(vl, text_rm):
    """One batch with every kind of item failure: each bad item is its own invalid result naming
    its kind, field and limit; each good item scores exactly what it scores alone."""
    _, path = vl["qwen2_vl"]
    rm = RewardModel.from_pretrained(path, device="cpu", max_length=120)
    good = [Sample(prompt=_user(image_part(image_uri(56, 56, 1)), text_part("Which digit?")), response="The digit is 6."),
            Sample(prompt="Describe the weather.", response="Sunny and warm."),
            Sample(prompt=_user(text_part("What is the weather like?")), response="Rain, all day long.")]
    bad = {  # name -> (sample, error_kind, field, limit)
        "too_long": (Sample(prompt="word " * 200, response="ok"), "input_too_long", "messages", 120),
        "broken_image": (Sample(prompt=_user(image_part("data:image/png;base64," + "QUJD" * 40), text_part("q")), response="a"),
                         "invalid_media", "prompt[0].content[0].image_url", None),
        "refused_path": (Sample(prompt=_user(image_part("/etc/hostname"), text_part("q")), response="a"),
                         "media_forbidden", "prompt[0].content[0].image_url", None),
        "placeholder": (Sample(prompt=_user(text_part("look <|image_pad|> here")), response="fine"),
                        "unsupported_input", "prompt[0].content[0].text", "no media placeholder tokens in text"),
        "surrogate": (Sample(prompt="bad \ud800 text", response="fine"), "invalid_input", "prompt[0].content",
                      "UTF-8 encodable text"),
    }
    items = [good[0], *(b[0] for b in list(bad.values())[:3]), good[1], *(b[0] for b in list(bad.values())[3:]), good[2]]
    res = rm.score(items)
    assert len(res) == len(items)
    by_item = dict(zip(map(id, items), res))
    for s in good:
        r = by_item[id(s)]
        assert r.ok and r.value == pytest.approx(rm.rewards([s])[0], abs=ATOL)  # independent: scored alone
    for name, (s, kind, field, limit) in bad.items():
        r = by_item[id(s)]
        assert not r.ok and r.value is None, name
        assert (r.error_kind, r.field) == (kind, field), (name, r.error_kind, r.field, r.invalid)
        if limit is not None:
            assert r.limit == limit, (name, r.limit)
        with pytest.raises(MmrmError):
            r.raise_for_invalid()
    # the text-only backbone refuses an image the same way, beside items it scores
    trm, _ = text_rm
    text_good = [Sample(prompt="hi", response="ok"), Sample(prompt="2+2?", response="4")]
    image = Sample(prompt=_user(text_part("look:"), image_part(image_uri(28, 28, 1))), response="ok")
    res = trm.score([text_good[0], image, bad["surrogate"][0], text_good[1]])
    assert (res[1].error_kind, res[1].field) == ("unsupported_input", "prompt[0].content[1]")
    assert (res[2].error_kind, res[2].field) == ("invalid_input", "prompt[0].content")
    assert [res[0].value, res[3].value] == pytest.approx([trm.rewards([s])[0] for s in text_good], abs=ATOL)


def test_every_engine_is_a_scorer_with_one_result_per_item_in_order(vl, text_rm):
    from mmrm.rm.scorer import GroupResult, Scorer

    rm, _ = vl["qwen2_vl"]
    assert isinstance(rm, Scorer) and isinstance(text_rm[0], Scorer)
    samples = [Sample(prompt="q", response=r) for r in ("one", "two", "three")]
    res = rm.score(samples)
    assert [r.value for r in res] == pytest.approx([rm.rewards([s])[0] for s in samples], abs=ATOL)  # order kept
    assert len(rm.compare([Pair(prompt="q", response_a="a", response_b="b")] * 2)) == 2
    groups = rm.rank([Group(prompt="q", responses=["a", "b", "c"]), Group(prompt="r", responses=["d"])])
    assert all(isinstance(g, GroupResult) for g in groups) and [len(g.results) for g in groups] == [3, 1]
    # references are accepted (and ignored: a reward model reads none)
    assert [r.value for r in rm.score(samples, references=["x", None, "y"])] == [r.value for r in res]


# ------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("arch", VL_ARCHS)
def test_save_load_roundtrip(vl, mixed_samples, tmp_path, arch):
    rm, path = vl[arch]
    cfg = json.loads((path / ckpt.CONFIG_NAME).read_text())
    assert cfg["head"]["type"] == "mlp2"
    assert cfg["pooling"] == "last_token"
    assert cfg["pool_token"] == "<|im_end|>"
    assert (path / ckpt.HEAD_NAME).exists()
    # resave the loaded model and load it again: same scores
    again = RewardModel.from_pretrained(rm.save_pretrained(tmp_path / "again"), device="cpu")
    assert np.abs(np.array(again.rewards(mixed_samples)) - np.array(rm.rewards(mixed_samples))).max() <= 1e-6
    assert again.fingerprint == rm.fingerprint  # same content, same hash, wherever it lies


def test_fingerprint_changes_when_head_changes(text_rm, tmp_path):
    _, path = text_rm
    rm = RewardModel.from_pretrained(path, device="cpu")
    fp0 = ckpt.fingerprint(path)
    assert rm.fingerprint == fp0
    with torch.no_grad():
        rm.head.net.bias.add_(0.25)
    rm.save_pretrained(tmp_path / "changed")
    assert rm.fingerprint == ckpt.fingerprint(tmp_path / "changed")
    assert rm.fingerprint != fp0
    assert all(r.provenance.fingerprint == rm.fingerprint for r in rm.score(TEXT_SAMPLES[:1]))


def test_linear_head_saved_and_loaded(text_rm, tmp_path):
    rm, path = text_rm
    cfg = json.loads((path / ckpt.CONFIG_NAME).read_text())
    assert cfg["head"]["type"] == "linear" and cfg["pooling"] == "last_token" and cfg["pool_token"] == "<|im_end|>"
    assert isinstance(rm.head.net, nn.Linear)


def test_plain_causal_lm_without_reward_config_refused(tiny_qwen2):
    with pytest.raises(ConfigError):
        RewardModel.from_pretrained(tiny_qwen2, device="cpu")


@pytest.mark.parametrize("arch", ["qwen2", "qwen2_vl"])
def test_lora_merged_and_adapter_checkpoints(vl, text_rm, tmp_path, arch):
    from peft import LoraConfig, PeftModel, get_peft_model

    path = text_rm[1] if arch == "qwen2" else vl[arch][1]
    rm = RewardModel.from_pretrained(path, device="cpu")
    samples = list(TEXT_SAMPLES)
    if arch != "qwen2":
        samples.append(make_sample(MIXED[1]))
    base_scores = rm.rewards(samples)
    rm.backbone = get_peft_model(rm.backbone, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    n_b = 0
    with torch.no_grad():
        for name, p in rm.backbone.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
                n_b += 1
    assert n_b > 0
    rm.eval()
    lora_scores = rm.rewards(samples)
    assert np.abs(np.array(lora_scores) - np.array(base_scores)).max() > 1e-3  # the adapter matters

    merged = rm.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert isinstance(rm.backbone, PeftModel)  # saving merged keeps the in-memory adapter
    assert rm.rewards(samples) == pytest.approx(lora_scores, abs=ATOL)
    adapter = rm.save_pretrained(tmp_path / "adapter", merge_lora=False)

    assert json.loads((merged / ckpt.CONFIG_NAME).read_text())["lora"] == "merged"
    assert json.loads((adapter / ckpt.CONFIG_NAME).read_text())["lora"] == "adapter"
    assert (adapter / ckpt.ADAPTER_DIR / "adapter_config.json").exists()
    for d in (merged, adapter):
        loaded = RewardModel.from_pretrained(d, device="cpu")
        assert loaded.rewards(samples) == pytest.approx(lora_scores, abs=ATOL), d.name
    # the merged backbone is an ordinary checkpoint without LoRA weights
    from safetensors.torch import load_file

    keys = [k for f in merged.glob("*.safetensors") if f.name != ckpt.HEAD_NAME for k in load_file(str(f))]
    assert keys and not any("lora" in k for k in keys)


def _seq_cls_checkpoint(tiny_qwen2: Path, out: Path, num_labels: int):
    import transformers as tf

    cfg = tf.AutoConfig.from_pretrained(str(tiny_qwen2))
    cfg.num_labels = num_labels
    tok = tf.AutoTokenizer.from_pretrained(str(tiny_qwen2))
    cfg.pad_token_id = tok.pad_token_id
    torch.manual_seed(7)
    model = tf.Qwen2ForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a score layer with weights big enough that a wrong pooled token shows
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return model, tok


def test_sequence_classification_checkpoint(tiny_qwen2, tmp_path):
    model, tok = _seq_cls_checkpoint(tiny_qwen2, tmp_path / "seqcls", 1)
    rm = RewardModel.from_pretrained(tmp_path / "seqcls", device="cpu")
    assert rm.config.source == "sequence_classification"
    got = rm.rewards(TEXT_SAMPLES)
    for s, v in zip(TEXT_SAMPLES, got):
        msgs = [{"role": m.role, "content": m.content} for m in s.messages]
        # what TRL's RewardTrainer trains seq-cls models on: the whole template, nothing stripped
        ids = tok(tok.apply_chat_template(msgs, tokenize=False), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logit = float(model(**ids).logits[0, 0])
        assert abs(logit) > 1e-3
        assert v == pytest.approx(logit, abs=ATOL)


def test_sequence_classification_checkpoint_converts_to_mmrm_format(tiny_qwen2, tmp_path):
    _seq_cls_checkpoint(tiny_qwen2, tmp_path / "seqcls", 1)
    rm = RewardModel.from_pretrained(tmp_path / "seqcls", device="cpu")
    out = rm.save_pretrained(tmp_path / "converted")
    cfg = json.loads((out / ckpt.CONFIG_NAME).read_text())
    assert cfg["head"]["type"] == "linear" and cfg["source"] == "mmrm"
    again = RewardModel.from_pretrained(out, device="cpu")
    assert again.rewards(TEXT_SAMPLES) == pytest.approx(rm.rewards(TEXT_SAMPLES), abs=1e-6)


def test_sequence_classification_two_labels_refused(tiny_qwen2, tmp_path):
    _seq_cls_checkpoint(tiny_qwen2, tmp_path / "seqcls2", 2)
    with pytest.raises(ConfigError) as ei:
        RewardModel.from_pretrained(tmp_path / "seqcls2", device="cpu")
    assert ei.value.limit == 1


# ------------------------------------------------------------------------------------------------
# Provenance


def test_provenance_in_every_result(vl, text_rm, mixed_samples):
    rm, path = vl["qwen2_vl"]
    bad = Sample(prompt=[{"role": "user", "content": [image_part("data:image/png;base64,aGVsbG8="), text_part("q")]}], response="x")
    results = rm.score([*mixed_samples[:2], bad])
    results += rm.compare([Pair(prompt="q", response_a="a", response_b="b")])
    assert len(results) == 4
    for r in results:
        p = r.provenance
        assert p.kind == "reward_model"
        assert p.fingerprint == ckpt.fingerprint(path)
        assert p.mmrm_version == version("mmrm")
        assert p.dtype == "float32"
        assert p.engine == "hf"
        assert p.scorer == path.name
    assert not results[2].ok


# ------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.parametrize("arch", VL_ARCHS)
def test_gpu_bf16_close_to_cpu_fp32(vl, mixed_samples, arch):
    rm_cpu, path = vl[arch]
    cpu = rm_cpu.rewards(mixed_samples)
    rm_gpu = RewardModel.from_pretrained(path, device="cuda", dtype="bfloat16")
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in rm_gpu.head.parameters())
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in rm_gpu.backbone.parameters())
    before = rm_gpu.forward_calls
    gpu = rm_gpu.rewards(mixed_samples)
    assert rm_gpu.forward_calls - before == 1
    assert all(type(v) is float for v in gpu)
    assert np.allclose(gpu, cpu, atol=0.05), (gpu, cpu)
