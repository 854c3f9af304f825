"""Think-then-verdict judges (presets) on the tiny Qwen2-VL through the in-process ``hf`` backend.

A random tiny model cannot reason, so the mechanics are checked against an independent reference:
for a fixed reasoning (teacher-forced: the backend's generation step returns it), the verdict
distribution mmrm reads equals a plain transformers forward over the chat-templated prompt (built
here from the preset's template by hand) + reasoning + the answer tag. Real generation is checked
too: a user preset whose answer tag is a string the tiny model really writes greedily, so the
backend generates, stops at the tag, and the read follows the reasoning it produced.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mmrm.judges import Judge, JudgeOptions
from mmrm.judges.backends.base import GenReply, GenRequest, LabelReply, LabelRequest
from mmrm.judges.presets import load_preset
from mmrm.judges.reasoning import build_query
from mmrm.rm.errors import BackendError, ConfigError
from mmrm.rm.types import Message, Pair, Sample, as_response

ATOL = 1e-4
REASONING = "<think>Response 1 states the sum correctly; Response 2 does not. Total: 9 vs 2.</think>"


def _png(color: tuple[int, int, int], size: int = 56) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


RED = _png((200, 30, 30))
PAIRS = [
    Pair(prompt="What is 2 + 2?", response_a="It is 4.", response_b="It is 5."),
    Pair(prompt=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": RED}},
                                              {"type": "text", "text": "What color is the square?"}]}],
         response_a="Red.", response_b="A blue circle."),
]


@pytest.fixture(scope="module")
def backend(tiny_qwen2_vl: Path):
    from mmrm.judges.backends.hf import HFJudgeBackend

    return HFJudgeBackend(tiny_qwen2_vl, max_batch_size=8)


class FixedReasoning:
    """Teacher forcing of the reasoning: generation returns ``text`` (stopped at ``stop``); the
    verdict read is the real backend's. Everything else is the wrapped backend's."""

    def __init__(self, inner, text: str = REASONING, stop: str | None = "<answer>", finish: str = "stop",
                 fail: set[int] | None = None) -> None:
        self.inner, self.text, self.stop, self.finish, self.fail = inner, text, stop, finish, fail or set()
        self.gen: list[GenRequest] = []
        self.reads: list[LabelRequest] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, requests: list[GenRequest]) -> list[GenReply]:
        out = []
        for r in requests:
            k = len(self.gen)
            self.gen.append(r)
            if k in self.fail:
                out.append(GenReply(error=BackendError("injected backend fault")))
            else:
                out.append(GenReply(text=self.text, finish_reason=self.finish, stop=self.stop))
        return out

    def label_probs(self, requests: list[LabelRequest]) -> list[LabelReply]:
        self.reads += requests
        return self.inner.label_probs(requests)


def _reference_probs(model_dir: Path, user_text: str, images: list[str], suffix: str, labels: tuple[str, ...]) -> dict[str, float]:
    """P(label) at the next token after chat(user: images + text) + ``suffix``: one plain forward."""
    return _reference(model_dir, user_text, images, suffix, labels)[0]


def _reference(model_dir: Path, user_text: str, images: list[str], suffix: str, labels: tuple[str, ...],
               top_k: int = 20) -> tuple[dict[str, float], dict[str, float]]:
    """(P(label) as in :func:`_reference_probs`, P(label) counting only its tokens that rank in the top ``top_k``:
    what a server that returns ``top_k`` logprobs can see)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": user_text}]
    text = proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True) + suffix
    pil = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB") for u in images]
    inputs = proc(text=[text], images=pil or None, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, -1].float(), dim=-1)
    tok = proc.tokenizer
    top = set(torch.topk(probs, top_k).indices.tolist())
    out, seen = {}, {}
    for lab in labels:
        ids = [i for i in range(len(tok)) if i not in tok.all_special_ids and tok.decode([i]).strip() == lab]
        out[lab] = float(probs[ids].sum())
        seen[lab] = float(sum(probs[i] for i in ids if i in top))
    return out, seen


def _pair_inputs(p: Pair, first, second) -> tuple[str, str, str, list[str]]:
    def text_of(m) -> str:
        return m.content if isinstance(m.content, str) else "".join(x.text for x in m.content if x.type == "text")

    images = [x.url for m in p.prompt if not isinstance(m.content, str) for x in m.content if x.type == "image_url"]
    return "\n\n".join(text_of(m) for m in p.prompt), text_of(first), text_of(second), images


def test_teacher_forced_verdict_equals_plain_forward_both_orders(backend, tiny_qwen2_vl: Path) -> None:
    preset = load_preset("r1_reward")
    fixed = FixedReasoning(backend)
    judge = Judge(preset, fixed, JudgeOptions(reasoning_tokens=64, min_label_mass=0.0))
    results = judge.compare(PAIRS)
    assert len(fixed.gen) == 4 and len(fixed.reads) == 4  # 2 pairs x 2 orders: one generation + one read each
    assert all(r.stop == ("<answer>",) and r.max_tokens == 64 for r in fixed.gen)
    worst = 0.0
    for p, r in zip(PAIRS, results):
        assert r.ok and r.details["path"] == "probability" and r.details["probability"] is True
        expect = []
        for first, second in ((p.response_a, p.response_b), (p.response_b, p.response_a)):
            q, a1, a2, images = _pair_inputs(p, first, second)
            ref = _reference_probs(tiny_qwen2_vl, preset.template.format(question=q, answer1=a1, answer2=a2), images,
                                   REASONING + "<answer>", ("1", "2"))
            z = ref["1"] + ref["2"]
            expect.append((ref["1"] / z, ref["2"] / z))
        for entry, (p1, p2) in zip(r.details["per_order"], expect):
            worst = max(worst, abs(entry["probs"]["A"] - p1), abs(entry["probs"]["B"] - p2))
            assert entry["probs"]["A"] == pytest.approx(p1, abs=ATOL) and entry["probs"]["tie"] == 0.0
        want = 0.5 * (expect[0][0] + expect[1][1])  # P(A shown first wins) and P(A shown second wins)
        assert r.value == pytest.approx(want, abs=ATOL) and r.prob_a_wins == r.value
        assert r.details["per_order"][0]["samples"][0]["reasoning"] == REASONING
    print(f"max |P_mmrm - P_reference| = {worst:.3g}")
    assert abs(results[0].value - results[1].value) > 1e-6  # different inputs, different verdicts: a real comparison


def test_real_generation_stops_at_the_tag_then_reads_the_slot(backend, tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    """A user's YAML preset whose answer tag is text the tiny model really writes: generation stops there."""
    prompt = "Compare the two answers."
    base = load_preset("r1_reward").model_dump(mode="json")
    user_text = base["template"].format(question=prompt, answer1="yes", answer2="no")
    msgs = build_query(load_preset("r1_reward"), [Message(role="user", content=prompt)], [as_response("yes"), as_response("no")])
    [free] = backend.generate([GenRequest(msgs, max_tokens=24)])  # greedy, no stop string
    text = free.text or ""
    assert len(text) > 12, text
    tag = text[8:12]  # four characters the model writes after its first eight: generation must stop there
    cut = text.index(tag)
    base.update(name="greedy_tag", slot={"open": tag, "prefix": "", "labels": {"1": "first", "2": "second"}}, sources=base["sources"])
    path = tmp_path / "greedy_tag.yaml"
    path.write_text(yaml.safe_dump(base))
    judge = Judge(path, backend, JudgeOptions(reasoning_tokens=24, min_label_mass=0.0))
    [r] = judge.compare([Pair(prompt=prompt, response_a="yes", response_b="no")])
    assert r.ok, r.invalid
    rec = r.details["per_order"][0]["samples"][0]
    assert rec["reasoning"] == text[:cut]
    ref = _reference_probs(tiny_qwen2_vl, user_text, [], text[:cut] + tag, ("1", "2"))
    z = ref["1"] + ref["2"]
    assert r.details["per_order"][0]["probs"]["A"] == pytest.approx(ref["1"] / z, abs=ATOL)


def test_budget_exhaustion_and_backend_faults_stay_per_item(backend) -> None:
    # generation calls are numbered in order: pair 0 AB=0, BA=1; pair 1 AB=2, BA=3
    fixed = FixedReasoning(backend, fail={1})
    r0, r1 = Judge("r1_reward", fixed, JudgeOptions(min_label_mass=0.0)).compare(PAIRS)
    assert not r0.ok and r0.error_kind == "backend_error" and "injected backend fault" in r0.invalid and r0.value is None
    assert r1.ok
    cut = FixedReasoning(backend, text="<think>still thinking", stop=None, finish="length")
    res = Judge("r1_reward", cut, JudgeOptions(reasoning_tokens=8, min_label_mass=0.0)).compare(PAIRS)
    assert all(r.error_kind == "budget_exhausted" and "whole budget of 8 tokens" in r.invalid for r in res)
    assert cut.reads == []  # nothing read after an exhausted budget: no default verdict
    eos = FixedReasoning(backend, text="<think>done</think>", stop=None, finish="stop")
    assert all(r.error_kind == "invalid_output" and "ended without" in r.invalid
               for r in Judge("r1_reward", eos, JudgeOptions(min_label_mass=0.0)).compare(PAIRS))
    early = FixedReasoning(backend, text="<think>Response 1 is right, so ")  # <answer> opened inside <think>
    assert all(r.error_kind == "invalid_output" and "inside the reasoning" in r.invalid
               for r in Judge("r1_reward", early, JudgeOptions(min_label_mass=0.0)).compare(PAIRS))
    low = FixedReasoning(backend)
    assert all(r.error_kind == "low_label_mass" for r in Judge("r1_reward", low, JudgeOptions(min_label_mass=0.999)).compare(PAIRS))


def test_max_queries_bounds_the_backend_calls(backend) -> None:
    fixed = FixedReasoning(backend)
    res = Judge("r1_reward", fixed, JudgeOptions(min_label_mass=0.0, max_queries=4)).compare(PAIRS)
    assert len(fixed.gen) + len(fixed.reads) == 4  # pair 0: 2 orders x (generate + read)
    assert res[0].ok and res[1].error_kind == "budget_exhausted" and "max_queries=4" in res[1].invalid


def test_labels_that_are_not_single_tokens_are_refused_at_start_up(backend) -> None:
    # This tokenizer merges " 1" into one token, so "Answer " + "1" is not "Answer " plus one token.
    with pytest.raises(ConfigError, match="not a single token"):
        Judge("unified_reward_think", backend)
    Judge("unified_reward_think", backend, JudgeOptions(method="text"))  # the text path reads no slot


class ScriptedDists:
    """A backend whose verdict read returns given label probabilities per seed (no model)."""

    engine, scorer_id, dtype = "hf", "scripted", None
    supports_logprobs = supports_prefill = True
    supports_json_schema = False

    def __init__(self, by_seed: dict[int, dict[str, float]]) -> None:
        self.by_seed, self.seen = by_seed, []

    def check_labels(self, prefill, labels) -> None:
        pass

    def config_fingerprint(self):
        return {"engine": "scripted"}

    def generate(self, requests):
        self.seen += [(r.seed, r.temperature) for r in requests]
        return [GenReply(text=f"<think>seed {r.seed}</think>", finish_reason="stop", stop="<answer>") for r in requests]

    def label_probs(self, requests):
        return [LabelReply(probs=dict(self.by_seed[int(r.prefill.split("seed ")[1].split("<")[0])]), top_k=None) for r in requests]


def test_self_consistency_mean_probability_vote_and_agreement() -> None:
    dists = {10: {"1": 0.9, "2": 0.1}, 11: {"1": 0.6, "2": 0.4}, 12: {"1": 0.2, "2": 0.8}}
    b = ScriptedDists(dists)
    [r] = Judge("r1_reward", b, JudgeOptions(samples=3, seed=10, sample_temperature=0.8, min_label_mass=0.0)).compare([PAIRS[0]])
    assert sorted(b.seen) == sorted([(s, 0.8) for s in (10, 11, 12)] * 2)
    mean_first = (0.9 + 0.6 + 0.2) / 3  # the same scripted answer in both orders: position-biased judge
    ab, ba = r.details["per_order"]
    assert ab["probs"]["A"] == pytest.approx(mean_first) and ba["probs"]["A"] == pytest.approx(mean_first)
    assert ab["vote"] == "A" and ba["vote"] == "B"  # 2 of 3 samples pick the first shown; in BA that is B
    assert ab["agreement"] == pytest.approx(2 / 3) and ab["valid_samples"] == 3
    assert r.value == pytest.approx(0.5 * (mean_first + (1 - mean_first)))
    [short] = Judge("r1_reward", b, JudgeOptions(seed=10, max_reasoning_chars=8, min_label_mass=0.0)).compare([PAIRS[0]])
    rec = short.details["per_order"][0]["samples"][0]
    assert rec["reasoning"] == "</think>" and rec["reasoning_truncated_from"] == len("<think>seed 10</think>")  # bounded: its tail


class TextOnly:
    """A hosted-API-like backend: no prefill, no logprobs; replies are scripted."""

    engine, scorer_id, dtype = "openai", "hosted", None
    supports_logprobs = supports_prefill = supports_json_schema = False

    def __init__(self, replies: list[str], finish: str = "stop") -> None:
        self.replies, self.finish, self.n = replies, finish, 0

    def check_labels(self, prefill, labels) -> None:
        raise AssertionError("the text path checks no slot labels")

    def config_fingerprint(self):
        return {"engine": "text-only"}

    def label_probs(self, requests):
        raise AssertionError("no logprobs here")

    def generate(self, requests):
        out = []
        for _ in requests:
            out.append(GenReply(text=self.replies[self.n % len(self.replies)], finish_reason=self.finish))
            self.n += 1
        return out


def test_text_path_claims_no_probability_and_fallbacks_are_opt_in() -> None:
    win_first = "<think>1 is right.</think><answer>1</answer>"
    [r] = Judge("r1_reward", TextOnly([win_first, "<think>2 is right.</think><answer>2</answer>"])).compare([PAIRS[0]])
    # AB: the first shown (A) wins; BA: the second shown (A) wins -> A in both orders
    assert r.ok and r.value == 1.0 and r.prob_a_wins is None and r.details["probability"] is False
    assert "no probability is claimed" in r.details["probability_note"]
    [bad] = Judge("r1_reward", TextOnly(["I cannot decide between 1 and 2."])).compare([PAIRS[0]])
    assert bad.error_kind == "invalid_output" and "</think>" in bad.invalid
    [fb] = Judge("r1_reward", TextOnly(["I cannot decide between 1 and 2."]), JudgeOptions(preset_fallback="r1_reward_eval")).compare([PAIRS[0]])
    assert fb.ok and fb.details["per_order"][0]["samples"][0]["fallback"] == "r1_reward_eval: parse rule 1"
    [dflt] = Judge("r1_reward", TextOnly(["no digits at all"]), JudgeOptions(preset_fallback="r1_reward_readme")).compare([PAIRS[0]])
    assert dflt.value == 0.5 and dflt.details["per_order"][0]["samples"][0]["fallback"] == "r1_reward_readme: default"
    with pytest.raises(ConfigError, match="no fallback"):
        Judge("r1_reward", TextOnly([""]), JudgeOptions(preset_fallback="coin"))
    [cut] = Judge("r1_reward", TextOnly(["<think>long", ], finish="length")).compare([PAIRS[0]])
    assert cut.error_kind == "budget_exhausted"


def test_pointwise_presets_score_from_text() -> None:
    judge = Judge("unified_reward_pointwise", TextOnly(["The response is accurate.\nFinal Score: 85"]))
    [r] = judge.score([Sample(prompt="Describe the image.", response="A red square.")])
    assert r.ok and r.value == pytest.approx(0.85) and r.details["scores"] == {"final_score": 85.0}
    dims = Judge("unified_reward_2_dimensions", TextOnly(["Alignment Score (1-5): 4\nCoherence Score (1-5): 2.5\nStyle Score (1-5): 5"]))
    [d] = dims.score([Sample(prompt="a red square", response=[{"type": "image_url", "image_url": {"url": RED}}])])
    assert d.value == pytest.approx(((4 - 1) / 4 + (2.5 - 1) / 4 + 1.0) / 3)
    with pytest.raises(ConfigError, match="pointwise; use score"):
        judge.compare([PAIRS[0]])


def test_pointwise_reasoning_preset_reads_the_expected_score(backend, tiny_qwen2_vl: Path, tmp_path: Path) -> None:
    """A user's pointwise preset with a 1-5 answer slot: value = (E[score] - 1) / 4 after the reasoning."""
    spec = {
        "kind": "preset", "name": "five_point", "description": "A 1-5 rating after reasoning.", "mode": "pointwise",
        "sources": [{"repo": "example/five-point", "path": "prompt.txt", "commit": "0" * 40}],
        "template": "Rate the response from 1 to 5.\nQuestion: {question}\nResponse: {response}\n"
                    "Think in <think></think>, then answer <answer>N</answer>.",
        "think": True,
        "slot": {"open": "<answer>", "after": "</think>", "labels": {str(k): str(k) for k in range(1, 6)}},
        "fields": [{"name": "score", "lo": 1, "hi": 5,
                    "parse": {"after": "</think>", "pattern": r"<answer>\s*(?P<v>[1-5])\s*</answer>"}}],
    }
    path = tmp_path / "five_point.yaml"
    path.write_text(yaml.safe_dump(spec))
    sample = Sample(prompt="What is 2 + 2?", response="It is 4.")
    [r] = Judge(path, FixedReasoning(backend), JudgeOptions(min_label_mass=0.0)).score([sample])
    assert r.ok and r.details["path"] == "probability"
    ref = _reference_probs(tiny_qwen2_vl, spec["template"].format(question="What is 2 + 2?", response="It is 4."), [],
                           REASONING + "<answer>", tuple("12345"))
    ev = sum(int(k) * p for k, p in ref.items()) / sum(ref.values())
    assert r.details["expected"]["score"] == pytest.approx(ev, abs=ATOL)
    assert r.value == pytest.approx((ev - 1) / 4, abs=ATOL)
    [t] = Judge(path, TextOnly(["<think>fine</think><answer>4</answer>"])).score([sample])  # the same preset, text path
    assert t.value == pytest.approx(0.75) and t.details["probability"] is False
