"""The reward callable (mmrm.rl.reward_fn) and shaping (mmrm.rl.shaping).

In-process and remote paths score the same checkpoint (the session's ``reward_checkpoint``, a tiny
Qwen2-VL with a seeded head) and must agree; shaping formulas are pinned against hand computations.
"""

from __future__ import annotations

import asyncio
import base64
import doctest
import io
import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import image_array, png_bytes, png_data_uri
from mmrm.rl import reward_fn as rf
from mmrm.rl import shaping as sh
from mmrm.rm.errors import InvalidInput, UnsupportedInput
from mmrm.rm.normalize import group_normalize
from mmrm.rl.reward_fn import RewardFn, exact_match, media_source, to_sample
from mmrm.rl.shaping import Shaping, apply_shaping, sigmoid
from mmrm.rm.types import Sample

IMG = png_data_uri(image_array(56, 56, seed=1))


def _pil(seed: int = 1):
    from PIL import Image

    return Image.fromarray(image_array(56, 56, seed=seed))


# ==================================================================================================
# Conversions INTO Sample


def test_string_prompt_and_completion():
    s = to_sample("2+2?", "4")
    assert [(m.role, m.text) for m in s.messages] == [("user", "2+2?"), ("assistant", "4")]


def test_trl_multimodal_prompt_exactly_as_trl_builds_it():
    # GRPOTrainer runs prepare_multimodal_messages on conversational prompts when the dataset has images,
    # and ALSO passes the images column: the prompt's images must be used once.
    from trl.data_utils import prepare_multimodal_messages

    prompt = prepare_multimodal_messages([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is it?"}], images=[_pil()])
    s = to_sample(prompt, [{"role": "assistant", "content": "A square."}], images=[_pil()])
    user = s.prompt[1]
    assert [p.type for p in user.parts] == ["image_url", "text"]
    assert user.parts[0].url == media_source(_pil())  # PIL -> lossless PNG data URI, deterministic
    assert s.response.text == "A square." and s.prompt[0].text == "Be brief."


def test_placeholders_filled_in_order_and_images_prepended_without_placeholders():
    a, b = png_data_uri(image_array(28, 28, 2)), png_data_uri(image_array(28, 28, 3))
    s = to_sample([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "vs"}, {"type": "image"}]}],
                  "same", images=[a, b])
    assert [p.url for p in s.prompt[0].media] == [a, b]
    s = to_sample([{"role": "system", "content": "sys"}, {"role": "user", "content": "Compare."}], "x", images=[a, b])
    assert s.prompt[0].text == "sys" and [p.type for p in s.prompt[1].parts] == ["image_url", "image_url", "text"]
    assert to_sample("q", "r", images=None).prompt[0].content == "q"
    assert to_sample("q", "r", images=[]).prompt[0].content == "q"


def test_image_forms_bytes_dict_pil_string_become_the_same_source():
    raw = png_bytes(image_array(56, 56, seed=1))
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    assert media_source(raw) == uri and media_source({"bytes": raw, "path": "x.png"}) == uri
    assert media_source({"bytes": None, "path": "imgs/a.png"}) == "imgs/a.png"
    assert media_source(uri) == uri
    decoded = base64.b64decode(media_source(_pil()).split(",", 1)[1])
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(decoded))), image_array(56, 56, seed=1))
    with pytest.raises(InvalidInput):
        media_source(3.5)


def test_completion_forms():
    assert to_sample("q", {"role": "assistant", "content": "a"}).response.text == "a"
    assert to_sample("q", [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]).response.text == "a"
    edited = to_sample("Edit it.", [{"role": "assistant", "content": [{"type": "image", "image": _pil()}]}]).response
    assert edited.media[0].url.startswith("data:image/png;base64,")
    with pytest.raises(UnsupportedInput) as e:
        to_sample("q", [{"role": "assistant", "content": "call"}, {"role": "tool", "content": "out"}], field="[3]")
    assert e.value.field == "[3].completion"


@pytest.mark.parametrize("prompt,images,error,field", [
    ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}], [IMG, IMG], InvalidInput, "prompt"),
    ([{"role": "user", "content": [{"type": "image", "image": IMG}]}], [IMG, IMG], InvalidInput, "prompt"),
    ([{"role": "tool", "content": "x"}], None, UnsupportedInput, "prompt[0].role"),
    ([{"role": "user", "content": [{"type": "audio", "audio": "x"}]}], None, UnsupportedInput, "prompt[0].content[0]"),
    (None, None, InvalidInput, "prompt"),
    ("q", [3.5], InvalidInput, "images.image"),
])
def test_conversion_errors_name_the_field(prompt, images, error, field):
    with pytest.raises(error) as e:
        to_sample(prompt, "r", images)
    assert e.value.field == field


def test_exact_match_verifier():
    assert exact_match(" The  Answer\n", "the answer") and exact_match("so \\boxed{ 12 }", "12")
    assert not exact_match("13", "12") and not exact_match("12", None)


# ==================================================================================================
# Shaping: the pinned formulas


def test_hybrid_is_baserewards_formula():
    out = apply_shaping([2.0, -1.0, 0.3, None], Shaping(hybrid=True), matches=[True, False, None, True])
    assert out.rewards == [1.0, sigmoid(-1.0), sigmoid(0.3), None]
    assert out.log.matched == 1 and out.log.invalid == 1


def test_length_penalty_clip_and_group_normalization_in_order():
    s = Shaping(length_penalty=0.5, length_target=2, length_unit="words", clip_min=-1.0, clip_max=1.0,
                group_normalize=True, eps=1e-6)
    raw = [3.0, 0.2, 0.0, -0.4, None, 7.0]
    texts = ["a b c d", "a", "a b", "a b c", "x", "z"]
    out = apply_shaping(raw, s, texts=texts, groups=[0, 0, 0, 0, 0, 1])
    penalized = [3.0 - 1.0, 0.2, 0.0, -0.4 - 0.5]
    clipped = [min(1.0, max(-1.0, v)) for v in penalized]
    assert out.rewards[:4] == pytest.approx(group_normalize(clipped, eps=1e-6), abs=1e-12)
    assert out.rewards[4] is None and out.rewards[5] == 0.0  # failed stays None; a valid G=1 group -> 0
    assert (out.log.clipped, out.log.length_penalized, out.log.groups, out.log.singleton_groups) == (2, 2, 2, 1)
    pop = np.array(clipped)
    assert out.rewards[0] == pytest.approx((pop[0] - pop.mean()) / (pop.std(ddof=0) + 1e-6))


def test_identity_and_validation():
    assert apply_shaping([1.5, None], Shaping()).rewards == [1.5, None] and Shaping().is_identity
    with pytest.raises(ValueError, match="groups"):
        apply_shaping([1.0], Shaping(group_normalize=True))
    with pytest.raises(ValueError, match="matches has 1 entries for 2"):
        apply_shaping([1.0, 2.0], Shaping(hybrid=True), matches=[True])
    with pytest.raises(ValueError, match="non-finite"):
        apply_shaping([math.nan], Shaping())
    with pytest.raises(ValueError, match="clip_min"):
        Shaping(clip_min=2, clip_max=1)


@pytest.mark.parametrize("module", [rf, sh])
def test_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0


def test_reward_side_imports_stay_light():
    code = ("import sys, mmrm.rl.reward_fn, mmrm.rl.shaping, mmrm.rl.trl, mmrm.rl.verl, "
            "mmrm.rl.openrlhf; heavy = [m for m in ('torch', 'ray', 'mmrm.serve', 'trl', 'transformers') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ==================================================================================================
# In-process reward model and judge


@pytest.fixture(scope="module")
def rm(reward_checkpoint, media_root):
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_pretrained(reward_checkpoint, device="cpu", media_policy=MediaPolicy(allowed_roots=[media_root]))


def _inputs():
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit?"}]}],
               "A text question?", [{"role": "user", "content": "Describe."}], "A text question?"]
    images = [[_pil(4)], None, [IMG], None]
    completions = ["The digit is 3.", [{"role": "assistant", "content": "An answer."}], "A square.", "Another."]
    return prompts, completions, images


def test_in_process_equals_reward_model(rm, caplog):
    prompts, completions, images = _inputs()
    fn = RewardFn(rm)
    with caplog.at_level(logging.INFO, logger="mmrm.reward"):
        batch = fn.score_inputs(prompts, completions, images=images)
    want = rm.rewards([to_sample(p, c, i) for p, c, i in zip(prompts, completions, images)])
    assert batch.rewards == batch.raw == want
    assert fn(prompts, completions, images=images) == want
    assert asyncio.run(fn.acall(prompts, completions, images=images)) == want
    assert "items=4 invalid=0" in caplog.text
    assert fn.stats.calls == 3 and fn.stats.items == 12 and fn.stats.invalid == 0


def test_a_failed_item_is_none_with_its_reason_and_never_fails_the_batch(rm, caplog):
    fn = RewardFn(rm)
    with caplog.at_level(logging.WARNING, logger="mmrm.reward"):
        batch = fn.score_inputs(["ok?", [{"role": "user", "content": [{"type": "image"}]}],
                                 [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]],
                                ["yes", "no", "r"], images=[None, ["/etc/passwd.png"], [IMG, IMG]])
    assert batch.rewards[0] is not None and batch.rewards[1] is None and batch.rewards[2] is None
    assert batch.errors[1].startswith("media_forbidden") and batch.errors[2].startswith("invalid_input")
    assert batch.failed == [1, 2] and fn.stats.invalid_by_kind == {"media_forbidden": 1, "invalid_input": 1}
    assert "2 of 3 items have no reward" in caplog.text


def test_shaping_is_applied_once_and_logged(rm):
    prompts = ["2+2?"] * 3 + ["3+3?"]
    completions = ["4", "five", "\\boxed{4}", "6"]
    fn = RewardFn(rm, shaping=Shaping(hybrid=True, group_normalize=True))
    batch = fn.score_inputs(prompts, completions, references=["4", "4", "4", None])
    hyb = [1.0, sigmoid(batch.raw[1]), 1.0, sigmoid(batch.raw[3])]
    assert batch.rewards[:3] == pytest.approx(group_normalize(hyb[:3]), abs=1e-12)  # groups: same prompt
    assert batch.rewards[3] == 0.0 and batch.log.matched == 2 and batch.log.groups == 2


def test_judge_as_reward(tiny_qwen2_vl):
    from mmrm.judges import Judge, JudgeOptions
    from mmrm.judges.backends.hf import HFJudgeBackend

    judge = Judge("helpfulness", HFJudgeBackend(str(tiny_qwen2_vl)), JudgeOptions(min_label_mass=0.0))
    samples = [Sample(prompt="2+2?", response="4"), Sample(prompt="Name a colour.", response="Blue.")]
    want = [r.value for r in judge.score(samples)]
    fn = RewardFn(judge)
    assert fn.kind == "judge" and fn([s.prompt for s in samples], [s.response for s in samples]) == want
    vqa = Judge("vqa", judge.backend, judge.config)  # another rubric: a judge built for it, same backend
    assert RewardFn(vqa).scorer is vqa
    strict = RewardFn(Judge("helpfulness", judge.backend, JudgeOptions(min_label_mass=1.0)))
    batch = strict.reward_batch(samples)  # a random tiny judge never puts all its mass on the labels
    assert batch.rewards == [None, None] and all(e.startswith("low_label_mass") for e in batch.errors)


def test_constructor_checks(rm):
    with pytest.raises(TypeError, match="needs a Scorer"):
        RewardFn(object())
    with pytest.raises(TypeError):
        RewardFn(rm, rubric="vqa")  # type: ignore[call-arg]  # a rubric belongs to a Judge built for it
    with pytest.raises(ValueError, match="rubric"):
        RewardFn.remote("http://127.0.0.1:1", model="a", rubric="vqa")
    with pytest.raises(ValueError, match="exactly one of model"):
        RewardFn.remote("http://127.0.0.1:1", model="a", judge="b")
    with pytest.raises(ValueError, match="one per completion"):
        RewardFn(rm)(["a", "b"], ["x"])


def test_any_scorer_through_the_interface_only():
    """A scorer mmrm has never heard of: RewardFn reaches it through ``score`` and ``provenance``
    only (no dispatch on its class, no rebuilding it), with the references of the items."""
    from mmrm.rm.scorer import rank_pointwise
    from mmrm.rm.types import Provenance, ScoreResult

    class LengthScorer:
        """The reward is the response's length; an empty response cannot be scored."""

        provenance = Provenance(scorer="length", kind="judge", fingerprint="len-1", engine="python")

        def __init__(self) -> None:
            self.seen_refs: list[object] = []

        def score(self, samples, *, references=None):
            self.seen_refs.append(references)
            return [ScoreResult(value=float(len(s.response.text)), provenance=self.provenance) if s.response.text
                    else ScoreResult(value=None, invalid="empty", error_kind="invalid_input", provenance=self.provenance)
                    for s in samples]

        def compare(self, pairs, *, references=None):
            raise AssertionError("RewardFn scores samples only")

        def rank(self, groups, *, references=None):
            return rank_pointwise(self.score, groups, references=references)

    scorer = LengthScorer()
    fn = RewardFn(scorer, name="len")
    assert fn.kind == "judge"
    batch = fn.score_inputs(["q1", "q2", "q3"], ["abc", "", "hello"], references=["r1", None, "r3"])
    assert batch.rewards == [3.0, None, 5.0] and batch.errors[1] == "invalid_input: empty"
    assert scorer.seen_refs == [["r1", None, "r3"]]
    assert fn(["q"], ["four"]) == [4.0] and scorer.seen_refs[-1] is None


# ==================================================================================================
# Remote: the same checkpoint through the running service


def test_remote_transport_failure_is_per_item_none_with_reason():
    fn = RewardFn.remote("http://127.0.0.1:9", model="tiny", token=None, max_retries=0, timeout=2)
    batch = fn.score_inputs(["q", "q"], ["a", "b"])
    assert batch.rewards == [None, None] and all(e.startswith("transport_error") for e in batch.errors)
    fn.close()


def test_remote_request_level_refusal_raises_transient_failure_fails_items():
    """Per item answers leave a 4xx for the request as a whole: a setup error, raised (no resending
    without an item). A transient failure (5xx after the client's retries) gives no rewards, with reasons."""
    import http.server
    import threading

    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            status = 404 if body["model"] == "nope" else 502
            out = json.dumps({"error": {"kind": "not_found" if status == 404 else "backend_error", "message": "x",
                                        "field": "model" if status == 404 else None}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        from mmrm.client import ServiceError

        with RewardFn.remote(url, model="nope", token=None, max_retries=0) as fn:
            with pytest.raises(ServiceError) as ei:
                fn(["q", "q", "q"], ["a", "b", "c"])
            assert ei.value.status == 404 and len(seen) == 1  # one request, never resent item by item
        with RewardFn.remote(url, model="busy", token=None, max_retries=0) as fn:
            batch = fn.score_inputs(["q", "q"], ["a", "b"])
        assert batch.rewards == [None, None] and all(e.startswith("backend_error") for e in batch.errors)  # the body's kind
    finally:
        srv.shutdown()


@pytest.mark.slow
def test_remote_equals_in_process(service, rm):
    prompts, completions, images = _inputs()
    want = rm.rewards([to_sample(p, c, i) for p, c, i in zip(prompts, completions, images)])
    with RewardFn.remote(service["url"], model="tiny", token=service["token"], batch_size=3) as fn:
        got = fn(prompts, completions, images=images)  # two requests (batch_size=3)
        assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-5
        got_async = asyncio.run(fn.acall(prompts, completions, images=images))
        assert np.max(np.abs(np.array(got_async) - np.array(want))) < 1e-5


def _mixed_inputs():
    """RL inputs with one item of every failure kind between good ones (prompt, completion, images)."""
    user = lambda *parts: [{"role": "user", "content": list(parts)}]  # noqa: E731
    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    return [
        ("Describe the weather.", "Sunny and warm.", None),                                       # good
        (user({"type": "image"}, text("What is it?")), "A cat.", ["data:image/png;base64," + "QUJD" * 40]),  # broken image
        (user({"type": "image"}, text("What is it?")), "A cat.", ["/etc/passwd.png"]),           # refused path
        (user(text("Which digit?")), "The digit is 6.", [IMG]),                                    # good, with an image
        ("word " * 4200, "ok", None),                                                              # too long (4096)
        (user(text("look <|image_pad|> here")), "fine", None),                                    # placeholder text
        ("bad \ud800 text", "fine", None),                                                         # lone surrogate
        ("What is 2+2?", "4", None),                                                               # good
    ]


@pytest.mark.slow
def test_remote_mixed_failures_are_per_item_like_in_process(service, rm):
    rows = _mixed_inputs()
    prompts, completions, images = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    local = RewardFn(rm).score_inputs(prompts, completions, images=images)
    with RewardFn.remote(service["url"], model="tiny", token=service["token"]) as fn:
        remote = fn.score_inputs(prompts, completions, images=images)  # one request, answered per item
    good = [0, 3, 7]
    assert [i for i, r in enumerate(remote.rewards) if r is not None] == good
    for i in good:  # independent expectation: the sample scored alone, in process
        alone = rm.rewards([to_sample(prompts[i], completions[i], images[i])])[0]
        assert abs(remote.rewards[i] - alone) < 1e-5 and abs(local.rewards[i] - alone) < 1e-5
    want = {1: "invalid_media", 2: "media_forbidden", 4: "input_too_long", 5: "unsupported_input", 6: "invalid_input"}
    for i, kind in want.items():
        r, loc = remote.results[i], local.results[i]
        assert (r.error_kind, loc.error_kind) == (kind, kind), (i, r.invalid, loc.invalid)
        assert r.field and loc.field and r.field.endswith(loc.field), (i, r.field, loc.field)  # items[k].<the same path>
        assert r.limit == loc.limit
    assert remote.results[4].limit == 4096


@pytest.mark.slow
def test_remote_judge_equals_in_process_judge(service):
    from mmrm.judges import Judge, JudgeOptions
    from mmrm.judges.backends.hf import HFJudgeBackend

    prompts, completions = ["2+2?", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]], ["4", "A cat."]
    images = [None, [IMG]]
    local = RewardFn(Judge("helpfulness", HFJudgeBackend(str(service["judge_model"])), JudgeOptions(min_label_mass=0.0)))
    with RewardFn.remote(service["url"], judge="judge", rubric="helpfulness", token=service["token"]) as remote:
        got = remote(prompts, completions, images=images)
    want = local(prompts, completions, images=images)
    assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-5
    assert json.dumps(got)  # plain floats
