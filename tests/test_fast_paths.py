"""Optimized scoring paths give the plain reference path's scores (fp32, within 1e-4 absolute).

The plain path (``RewardModel.score``: every sample encoded alone and run whole) is itself tested
against plain transformers in test_reward_model.py; here every fast path is checked against it:

* the GRPO group path (``rank`` / ``rewards_of_group``): the shared prompt and its images run
  once, the responses run on its cached keys and values (mrope positions shifted by the image's
  rope delta on the Qwen2-VL family);
* the cases where that path must step aside (a response with its own image, no shared prefix,
  left truncation that cuts each sample differently) and still give the same scores;
* packed rows (``packing``: text-only samples end to end, per-sample causal attention) and
  the regional ``torch.compile`` of the decoder's MLP and norms, against padded eager batches.

The reference here is the padded path with packing off; test_reward_model.py checks the default
path (packed on a CPU) against plain transformers.

No test here times anything: speed lives in benchmarks/ (BENCHMARKS.md).
"""

from __future__ import annotations

import pytest
import torch

from helpers import image_part, image_uri, text_part, video_part
from mmrm.rm.errors import UnsupportedInput
from mmrm.rm.options import ScoringOptions
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.types import Group, Pair, Sample

ATOL = 1e-4
ARCHS = ["qwen2", "qwen2_vl", "qwen2_5_vl"]
VL_ARCHS = ["qwen2_vl", "qwen2_5_vl"]

RESPONSES = [
    "The digit is 3.",
    "It is a seven, because of the straight stroke at the top and the long diagonal line below it.",
    "three",
    "The digit is 3.",  # a duplicate: its tail is one token after the shared prefix cut
    "I cannot tell which digit it is; the image is too blurry to read anything at all, sorry.",
    "8",
]


@pytest.fixture(scope="module")
def rms(tiny_models):
    return {arch: RewardModel.from_backbone(tiny_models[arch], head_type="mlp2", seed=5, device="cpu").eval()
            for arch in ARCHS}


def _prompt(arch: str, media: str = "image") -> list[dict]:
    text = "Look at the picture carefully and tell me which digit is written in it, with a reason."
    if arch == "qwen2":
        return [{"role": "system", "content": "You are a careful grader."}, {"role": "user", "content": text}]
    if media == "image":
        parts = [image_part(image_uri(84, 140, seed=7)), text_part(text)]
    elif media == "two_images":
        parts = [image_part(image_uri(56, 84, seed=8)), text_part("left"), image_part(image_uri(112, 56, seed=9)), text_part(text)]
    else:
        parts = [video_part([image_uri(56, 84, seed=s) for s in range(4)]), text_part(text)]
    return [{"role": "system", "content": "You are a careful grader."}, {"role": "user", "content": parts}]


def _plain(rm: RewardModel, prompt, responses) -> list[float]:
    rm.options.packing = "off"
    try:
        return rm.rewards([Sample(prompt=prompt, response=r) for r in responses])
    finally:
        rm.options.packing = "auto"


def _group(rm: RewardModel, prompt, responses) -> list[float | None]:
    """The raw values of one group through ``rank`` (the shared-prefix path)."""
    return rm.rank([Group(prompt=prompt, responses=responses)])[0].values


@pytest.mark.parametrize("arch", ARCHS)
def test_group_path_matches_plain_path(rms, arch):
    rm = rms[arch]
    prompt = _prompt(arch)
    ref = _plain(rm, prompt, RESPONSES)
    before = rm.forward_calls
    got = _group(rm, prompt, RESPONSES)
    # the prefix path really ran: one pass for the shared prefix, one for all the responses
    assert rm.forward_calls - before == 2
    assert got == pytest.approx(ref, abs=ATOL)
    enc = [rm.encode(Sample(prompt=prompt, response=r)) for r in RESPONSES]
    prefix = rm.engine.shared_prefix_length(enc)
    assert prefix >= rm.options.min_shared_prefix
    assert prefix < min(e.length for e in enc)


@pytest.mark.parametrize("arch", VL_ARCHS)
@pytest.mark.parametrize("media", ["two_images", "video"])
def test_group_path_with_several_images_or_a_video(rms, arch, media):
    rm = rms[arch]
    prompt = _prompt(arch, media)
    ref = _plain(rm, prompt, RESPONSES[:4])
    before = rm.forward_calls
    got = _group(rm, prompt, RESPONSES[:4])
    assert rm.forward_calls - before == 2
    assert got == pytest.approx(ref, abs=ATOL)


@pytest.mark.parametrize("arch", ["qwen2", "qwen2_5_vl"])
def test_group_split_over_several_batches(rms, arch):
    rm = rms[arch]
    prompt = _prompt(arch)
    ref = _plain(rm, prompt, RESPONSES)
    old = rm.options.max_batch_size
    rm.options.max_batch_size = 2
    try:
        before = rm.forward_calls
        got = _group(rm, prompt, RESPONSES)
        assert rm.forward_calls - before == 1 + 3  # the prefix once, then 3 batches of 2 responses
    finally:
        rm.options.max_batch_size = old
    assert got == pytest.approx(ref, abs=ATOL)


def test_group_score_does_not_depend_on_the_other_responses(rms):
    rm = rms["qwen2_vl"]
    prompt = _prompt("qwen2_vl")
    full = _group(rm, prompt, RESPONSES)
    part = _group(rm, prompt, [RESPONSES[1], RESPONSES[5]])
    assert part == pytest.approx([full[1], full[5]], abs=ATOL)


def test_rewards_of_group_on_a_pair_matches_compare(rms):
    rm = rms["qwen2_5_vl"]
    prompt = _prompt("qwen2_5_vl")
    enc = [rm.encode(Sample(prompt=prompt, response=r)) for r in RESPONSES[:2]]
    a, b = rm.rewards_of_group(enc)
    p = rm.probabilities([Pair(prompt=prompt, response_a=RESPONSES[0], response_b=RESPONSES[1])])[0]
    assert torch.sigmoid(torch.tensor(a - b)).item() == pytest.approx(p, abs=ATOL)


def test_response_with_its_own_image_falls_back_to_plain(rms):
    rm = rms["qwen2_vl"]
    prompt = _prompt("qwen2_vl")
    responses = ["An edited picture:", [text_part("Edited:"), image_part(image_uri(56, 56, seed=11))]]
    enc = [rm.encode(Sample(prompt=prompt, response=r)) for r in responses]
    assert rm.engine.shared_prefix_length(enc) == 0  # media differ / media after the prefix: no sharing
    before = rm.forward_calls
    got = _group(rm, prompt, responses)
    assert rm.forward_calls - before == 1
    assert got == pytest.approx(_plain(rm, prompt, responses), abs=ATOL)


def test_different_prompts_share_nothing(rms):
    rm = rms["qwen2"]
    enc = [rm.encode(Sample(prompt="first prompt about cats", response="ok")),
           rm.encode(Sample(prompt="second prompt about dogs", response="ok"))]
    assert rm.engine.shared_prefix_length(enc) == 0
    assert rm.rewards_of_group(enc) == pytest.approx(rm.rewards_of(enc), abs=ATOL)


def test_left_truncation_group_matches_plain(tiny_models, tmp_path):
    built = RewardModel.from_backbone(tiny_models["qwen2"], head_type="linear", seed=2, device="cpu")
    path = built.save_pretrained(tmp_path / "rm")
    rm = RewardModel.from_pretrained(path, device="cpu", max_length=40, truncation="left")
    prompt = "one two three four five six seven eight nine ten " * 6
    responses = ["The digit is 3.", "It is a seven, surely.", "8"]
    assert _group(rm, prompt, responses) == pytest.approx(_plain(rm, prompt, responses), abs=ATOL)


def test_group_with_a_bad_item_is_invalid_and_the_rest_score_as_plain(rms):
    rm = rms["qwen2"]
    prompt = _prompt("qwen2")
    bad = [text_part("look:"), image_part(image_uri(28, 28, seed=1))]  # an image for a text-only model
    [g] = rm.rank([Group(prompt=prompt, responses=[RESPONSES[0], bad, RESPONSES[1], RESPONSES[2]])])
    assert [r.ok for r in g.results] == [True, False, True, True] and g.normalized[1] is None
    assert g.results[1].error_kind == UnsupportedInput.kind and g.results[1].field == "response.content[1]"
    assert [g.values[i] for i in (0, 2, 3)] == pytest.approx(_plain(rm, prompt, RESPONSES[:3]), abs=ATOL)
    # normalized over the valid responses only, with the formula of the plain group
    vals = [g.values[i] for i in (0, 2, 3)]
    mean = sum(vals) / 3
    sd = (sum((v - mean) ** 2 for v in vals) / 3) ** 0.5
    assert [g.normalized[i] for i in (0, 2, 3)] == pytest.approx([(v - mean) / (sd + 1e-6) for v in vals], abs=1e-9)


# ------------------------------------------------------------------------------------------------
# The vision-feature cache (content hash -> image features), inference only, bounded.


def _mixed_image_samples():
    a, b = image_uri(84, 112, seed=21), image_uri(56, 56, seed=22)
    return [
        Sample(prompt=[{"role": "user", "content": [image_part(a), text_part("what is it?")]}], response="a cat"),
        Sample(prompt=[{"role": "user", "content": [image_part(b), text_part("and this?")]}], response="a dog"),
        Sample(prompt=[{"role": "user", "content": [image_part(a), text_part("describe")]}], response="a cat on a mat"),
        Sample(prompt=[{"role": "user", "content": [image_part(b), image_part(a), text_part("same?")]}], response="no"),
        Sample(prompt="no image here", response="fine"),
    ]


def _count_tower_images(rm):
    """Count images that go through the vision tower (a forward hook on it)."""
    seen = []
    tower = rm.backbone.model.visual
    handle = tower.register_forward_hook(lambda mod, args, kw_out: seen.append(1))
    return seen, handle


@pytest.mark.parametrize("arch", VL_ARCHS)
def test_vision_cache_same_scores_as_without(rms, arch):
    rm = rms[arch]
    samples = _mixed_image_samples()
    rm.engine.vision_cache.max_bytes = 0  # off: the reference
    ref = rm.rewards(samples)
    rm.engine.vision_cache.max_bytes = rm.options.vision_cache_bytes
    rm.engine.vision_cache.clear()
    first = rm.rewards(samples)  # fills the cache (two distinct images)
    assert len(rm.engine.vision_cache) == 2
    second = rm.rewards(samples)  # served from the cache
    assert first == pytest.approx(ref, abs=ATOL)
    assert second == pytest.approx(ref, abs=ATOL)
    assert rm.engine.vision_cache.bytes <= rm.engine.vision_cache.max_bytes


def test_vision_cache_runs_a_shared_image_once(rms):
    rm = rms["qwen2_5_vl"]
    rm.engine.vision_cache.clear()
    prompt = _prompt("qwen2_5_vl")
    calls, handle = _count_tower_images(rm)
    try:
        rm.probabilities([Pair(prompt=prompt, response_a="yes", response_b="no")])
        assert len(calls) == 1  # both sides of the pair: one image, one tower pass
        rm.probabilities([Pair(prompt=prompt, response_a="maybe", response_b="never")])
        assert len(calls) == 1  # seen before: no tower pass at all
    finally:
        handle.remove()


def test_vision_cache_invalidated_when_weights_change(tiny_models):
    rm = RewardModel.from_backbone(tiny_models["qwen2_vl"], seed=6, device="cpu").eval()
    samples = _mixed_image_samples()[:2]
    before = rm.rewards(samples)
    with torch.no_grad():
        for p in rm.backbone.model.visual.parameters():
            p.mul_(1.5)  # an in-place update, as an optimizer step does
    after = rm.rewards(samples)
    rm.engine.vision_cache.max_bytes = 0
    fresh = rm.rewards(samples)
    assert after == pytest.approx(fresh, abs=ATOL)
    assert after != pytest.approx(before, abs=ATOL)


def test_vision_cache_not_used_with_grad_or_in_training(rms):
    rm = rms["qwen2_vl"]
    rm.engine.vision_cache.clear()
    enc = [rm.encode(s) for s in _mixed_image_samples()[:2]]
    from mmrm.rm.encode import collate

    batch = collate(enc, rm.encoder.pad_id)
    with torch.enable_grad():
        rm.forward(batch)
    assert len(rm.engine.vision_cache) == 0
    rm.train()
    try:
        with torch.no_grad():
            rm.forward(batch)
        assert len(rm.engine.vision_cache) == 0
    finally:
        rm.eval()


def test_feature_cache_is_bounded_lru():
    from mmrm.rm.vision_cache import FeatureCache

    c = FeatureCache(max_bytes=3 * 400)
    for k in "abc":
        c.put(k, torch.zeros(100))  # 400 bytes each
    assert c.get("a") is not None  # a is now the most recent
    c.put("d", torch.zeros(100))
    assert c.get("b") is None and c.get("a") is not None and c.get("d") is not None
    assert c.bytes <= c.max_bytes
    c.put("huge", torch.zeros(1000))  # larger than the whole bound: not kept
    assert c.get("huge") is None and c.bytes <= c.max_bytes


# ------------------------------------------------------------------------------------------ packing
def _mixed_samples(arch: str) -> list[Sample]:
    text = [Sample(prompt=_prompt("qwen2"), response=r) for r in RESPONSES]
    if arch == "qwen2":
        return text
    # samples with an image cannot be packed: they take the padded path beside the packed ones
    return text[:3] + [Sample(prompt=_prompt(arch), response=r) for r in RESPONSES[:2]] + text[3:]


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_rows_match_padded_batches(rms, arch):
    rm = rms[arch]
    samples = _mixed_samples(arch)
    rm.options.packing = "off"
    ref = rm.rewards(samples)
    rm.options.packing = "on"
    try:
        before = rm.forward_calls
        got = rm.rewards(samples)
        # all text samples in one packed row (well under pack_tokens), the image ones in one batch
        assert rm.forward_calls - before == (1 if arch == "qwen2" else 2)
    finally:
        rm.options.packing = "auto"
    assert got == pytest.approx(ref, abs=ATOL)


def test_pack_token_budget_splits_rows_and_keeps_order(rms):
    rm = rms["qwen2"]
    samples = [Sample(prompt=_prompt("qwen2"), response=r) for r in RESPONSES]
    lengths = [rm.encode(s).length for s in samples]
    rm.options.packing = "off"
    ref = rm.rewards(samples)
    rm.options.packing, rm.options.pack_tokens = "on", max(lengths) + 1  # at most one long sample per row... or two short
    try:
        plan = rm.engine.plan_packs(lengths)
        assert [i for p in plan for i in p] == list(range(len(samples)))
        assert all(sum(lengths[i] for i in p) <= rm.options.pack_tokens for p in plan)
        before = rm.forward_calls
        got = rm.rewards(samples)
        assert rm.forward_calls - before == len(plan) > 1
        rm.options.pack_tokens = 8  # every sample is longer than the budget: one row each
        assert rm.engine.plan_packs(lengths) == [[i] for i in range(len(samples))]
        assert rm.rewards(samples) == pytest.approx(ref, abs=ATOL)
    finally:
        rm.options.packing, rm.options.pack_tokens = "auto", ScoringOptions().pack_tokens
    assert got == pytest.approx(ref, abs=ATOL)


def test_packing_leaves_padded_forwards_unchanged(tiny_models):
    """Switching the attention to the packable one changes nothing for padded batches (training,
    the group path, GPU batches): the same SDPA with the same masks, bit for bit."""
    from mmrm.rm.encode import collate

    rm = RewardModel.from_backbone(tiny_models["qwen2"], seed=5, device="cpu").eval()
    enc = [rm.encode(Sample(prompt=_prompt("qwen2"), response=r)) for r in RESPONSES]
    batch = collate(enc, rm.encoder.pad_id)
    with torch.no_grad():
        before = rm(batch)
        rm.options.packing = "on"
        rm.rewards_of(enc[:1])  # the first packed forward switches the attention
        assert rm.backbone.config._attn_implementation == "mmrm_packed_sdpa"
        after = rm(batch)
    assert torch.equal(before, after)


def test_packing_refuses_sliding_window_models(tiny_models):
    from transformers import AutoModel

    from mmrm.rm import packing

    model = AutoModel.from_pretrained(tiny_models["qwen2"], use_sliding_window=True, sliding_window=8,
                                      max_window_layers=0, attn_implementation="sdpa")
    assert packing.enable(model) is False
    plain = AutoModel.from_pretrained(tiny_models["qwen2"], attn_implementation="sdpa")
    assert packing.enable(plain) is True
    eager = AutoModel.from_pretrained(tiny_models["qwen2"], attn_implementation="eager")
    assert packing.enable(eager) is False


def test_packing_is_off_in_training_mode(rms):
    rm = rms["qwen2"]
    rm.options.packing = "on"
    try:
        rm.train()
        with torch.no_grad():
            assert rm.engine.packing_active() is False
        rm.eval()
        assert rm.engine.packing_active() is False  # grad enabled: a training step, never packed
        with torch.no_grad():
            assert rm.engine.packing_active() is True
    finally:
        rm.options.packing = "auto"
        rm.eval()


@pytest.mark.slow
def test_regional_compile_matches_eager(reward_checkpoint):
    """``compile=True`` (inductor on the MLP and norm blocks) scores like the eager model."""
    eager = RewardModel.from_pretrained(reward_checkpoint, device="cpu")
    compiled = RewardModel.from_pretrained(reward_checkpoint, device="cpu", compile=True)
    samples = [Sample(prompt=_prompt("qwen2"), response=r) for r in RESPONSES]
    samples.append(Sample(prompt=_prompt("qwen2_vl"), response=RESPONSES[1]))
    ref = eager.rewards(samples)
    assert compiled.rewards(samples) == pytest.approx(ref, abs=ATOL)
    # other lengths reuse the dynamic-shape graphs
    assert compiled.rewards(samples[1:4]) == pytest.approx(ref[1:4], abs=ATOL)
