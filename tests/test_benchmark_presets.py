"""The benchmarks' own judge presets: VL-RewardBench (``vl_rewardbench``) and Multimodal RewardBench
(``multimodal_rewardbench``).

Each preset is checked against an independent transcription, written here, of the benchmark's own
code: the prompt its script builds (text, role, where the image goes) and the verdict its scoring
script reads, on outputs in the documented format, published outputs, and hostile ones. Where mmrm's
preset is deliberately stricter, the test says how:

* VL-RewardBench's ``cal.py`` counts ANY answer number other than the rejected response's as agree
  ('Answer 3 is better' agrees); the preset reads only 1 and 2, any other number is invalid, which
  leaves cal.py's denominator as its doesntMatch does;
* Multimodal RewardBench's ``extract_judgment`` flips a seeded coin when neither ``[[A]]`` nor
  ``[[B]]`` is in the output; the preset returns invalid (never a coin), and
  :mod:`mmrm.eval.official` draws the benchmark's coin at scoring time.

End to end, a scripted judge (fixed replies in the benchmark's format, no model) runs through
:func:`mmrm.eval.runner.run_eval` on loaded release rows, and the report's official numbers equal
the transcribed scoring scripts' on the same replies.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from mmrm.eval.loaders import load_multimodal_rewardbench, load_vl_rewardbench
from mmrm.eval.report import build_report
from mmrm.eval.runner import run_eval
from mmrm.eval.store import ResultStore
from mmrm.judges import Judge, JudgeOptions, list_presets, load_preset
from mmrm.judges.backends.base import GenReply
from mmrm.judges.parsing import AnswerError, pair_verdict
from mmrm.judges.reasoning import build_query
from mmrm.rm.media import MediaPolicy
from mmrm.rm.types import ImagePart, Message, TextPart, as_response

EPS = 1e-9
VLRB_REPO, MMRB_REPO = "vl-rewardbench/VL_RewardBench", "facebookresearch/multimodal_rewardbench"


# ------------------------------------------------------------------------------------------------
# Independent transcriptions of the official code


def vlrb_prompt(query: str, answers: list[str]) -> str:
    """vl-rewardbench/VL_RewardBench prompt.py @ e492d65, ``prompt(data_obj, random_number)``
    (lines 1-22): an f-string opening with a space; ``answers`` already in the order shown."""
    return f''' You are a highly capable multimodal AI assistant tasked with evaluating answers to visual questions. Please analyze the following image and question, then determine which of the two provided answers is better.

Question: {query}

Answer 1: {answers[0]}

Answer 2: {answers[1]}

Please evaluate both answers based on the following criteria:
1. Accuracy: How well does the answer align with the visual information in the image?
2. Completeness: Does the answer fully address all aspects of the question?
3. Clarity: Is the answer easy to understand and well-articulated?
4. Relevance: Does the answer directly relate to the question and the image?

After your evaluation, please:
1. Explain your reasoning for each criterion.
2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: Overall Judgment: Answer X is better.

Your response should be structured and detailed, demonstrating your understanding of both the visual and textual elements of the task.'''


def cal_py_status(response: str, rejected_response_choice: int) -> str:
    """vl-rewardbench/VL_RewardBench cal.py @ 6f64385, ``distribution(reparse=True)`` lines 73-89
    (the same regex as inference_hf.py @ eb00f28 ``process_item``): agree / reject / doesntMatch."""
    pattern = r"(?:Overall Judgment|Therefore)\s*.*\s*-*\s*Answer\s*(\d+)\s*is\s*(?:the\s*)?(?:slightly\s*)?better"
    match = re.search(pattern, response.replace("\n", "").replace("*", ""), re.IGNORECASE)
    if not match:
        return "doesntMatch"
    return "reject" if int(match.group(1)) == rejected_response_choice else "agree"


MMRB_JUDGE_PROMPT = (  # facebookresearch/multimodal_rewardbench scripts/1_run_model_as_judge_gpt4o.py @ 3366b34, lines 75-77
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the "
    "user question displayed below. You should choose the assistant that follows the user's instructions and answers "
    "the user's question better. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, "
    "depth, creativity, and level of detail of their responses. Begin your evaluation by comparing the two responses "
    "and provide a short explanation. Avoid any position biases and ensure that the order in which the responses were "
    "presented does not influence your decision. Do not allow the length of the responses to influence your "
    "evaluation. Do not favor certain names of the assistants. Be as objective as possible. After providing your "
    "explanation, output your final verdict by strictly following this format: \"[[A]]\" if assistant A is better, "
    "\"[[B]]\" if assistant B is better.\n\n"
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]"
    "\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)


def extract_judgment(judgment: str, rng: random.Random) -> tuple[str, bool]:
    """facebookresearch/multimodal_rewardbench scripts/2_get_accuracy.py @ 3366b34, lines 13-19, and
    whether the coin was used (the script's ``random`` is seeded 123 in ``compute_acc``)."""
    if "[[A]]" in judgment:
        return "A", False
    elif "[[B]]" in judgment:
        return "B", False
    return ("A" if rng.random() < 0.5 else "B"), True


# ------------------------------------------------------------------------------------------------
# Loading and prompts


def _make_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


PNG = _make_png()


def _image_prompt(text: str) -> list[Message]:
    img = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    return [Message.model_validate({"role": "user", "content": [img, {"type": "text", "text": text}]})]


def test_presets_load_by_name_and_cite_the_benchmark_code() -> None:
    assert {"vl_rewardbench", "multimodal_rewardbench"} <= set(list_presets())
    vl, mm = load_preset("vl_rewardbench"), load_preset("multimodal_rewardbench")
    assert {(s.repo, s.path, s.commit[:7]) for s in vl.sources} == {
        (VLRB_REPO, "prompt.py", "e492d65"), (VLRB_REPO, "inference_hf.py", "eb00f28"), (VLRB_REPO, "cal.py", "6f64385")}
    assert {(s.repo, s.path, s.commit[:7]) for s in mm.sources} == {
        (MMRB_REPO, "scripts/1_run_model_as_judge_gpt4o.py", "3366b34"), (MMRB_REPO, "scripts/2_get_accuracy.py", "3366b34")}
    for p in (vl, mm):
        assert p.mode == "pairwise" and p.system is None and p.image_placement == "after_text"
        assert p.slot is None and p.fallbacks == []  # read from the text as the benchmark reads it; no lenient default
    assert Judge("vl_rewardbench", _Scripted(lambda text: "")).preset.name == "vl_rewardbench"


@pytest.mark.parametrize("preset, official", [
    ("vl_rewardbench", lambda q, a1, a2: vlrb_prompt(q, [a1, a2])),
    ("multimodal_rewardbench", lambda q, a1, a2: MMRB_JUDGE_PROMPT.format(question=q, answer_a=a1, answer_b=a2)),
])
def test_prompt_renders_exactly_what_the_benchmark_script_sends(preset, official) -> None:
    # Both scripts send one user message: the text part first, then the image (inference_hf.py
    # vllm_openai lines 28-37; 1_run_model_as_judge_gpt4o.py prompt lines 44-58); no system message.
    q, a1, a2 = "What is in the image?\nAnswer briefly.", "A red {square}.\n\nIt is small.", "A blue circle."
    msgs = build_query(load_preset(preset), _image_prompt(q), [as_response(a1), as_response(a2)])
    [user] = msgs
    assert user.role == "user" and len(user.content) == 2
    text, image = user.content
    assert isinstance(text, TextPart) and isinstance(image, ImagePart)
    assert text.text == official(q, a1, a2)
    assert image.image_url.url.endswith(PNG)


# ------------------------------------------------------------------------------------------------
# VL-RewardBench's verdict


def _vl_status(reply: str, rejected: int) -> str:
    """What mmrm's preset gives, in cal.py's terms: the side it reads, mapped as cal.py maps it."""
    try:
        side = pair_verdict(load_preset("vl_rewardbench").parse, reply)  # type: ignore[arg-type]
    except AnswerError:
        return "doesntMatch"
    choice = {"first": 1, "second": 2}[side]
    return "reject" if choice == rejected else "agree"


VL_SAME = [  # (reply, why); mmrm's reading equals cal.py's for either rejected response
    ("1. Accuracy: ...\n2. Completeness: ...\nOverall Judgment: Answer 1 is better.", "prompt.py's own example format"),
    ("Overall Judgment: Answer 2 is better.", "the documented format, the other answer"),
    ("**Overall Judgment:** Answer 2 is better.", "markdown bold: cal.py deletes '*'"),
    ("### Overall Judgment\n\n**Answer 1** is the better answer.", "headings and newlines deleted; 'is the better'"),
    ("Overall Judgment:\nAnswer 2\nis better", "newline inside the verdict: deleted"),
    ("Overall Judgment: **Answer** **2** is better.", "bold words: only with '*' deleted does 'Answer 2' match"),
    ("Overall\nJudgment: Answer 1 is better.", "a newline inside 'Overall Judgment' is deleted too: doesntMatch (kept)"),
    ("Therefore, Answer 1 is slightly better than Answer 2.", "'Therefore' and 'slightly'"),
    ("overall judgment - answer 2 is better", "case-insensitive, a dash"),
    ("Overall Judgment: Answer 01 is better.", "int('01') is 1"),
    ("Overall Judgment: Answer 1 is better. On reflection, Answer 2 is better.", "two verdicts: the greedy '.*' takes the last"),
    ('Overall Judgment: Answer 1 is better, although Answer 2 claims "Answer 2 is better".',
     "a verdict quoted after the judgment is read (cal.py's quirk, kept)"),
    ('Answer 2 says "Therefore, Answer 2 is better". Overall Judgment: Answer 1 is better.',
     "a quoted verdict before the judgment: the last verdict counts"),
    ("Answer 1 is better.", "no 'Overall Judgment' or 'Therefore' before it: doesntMatch"),
    ("Overall Judgement: Answer 1 is better.", "British spelling: doesntMatch"),
    ("Overall Judgment: Answer", "truncated: doesntMatch"),
    ("Overall Judgment: Answer 1 is", "truncated before 'better': doesntMatch"),
    ("Overall Judgment: both answers are equally good; neither Answer is better.", "no number: doesntMatch"),
    ("", "empty: doesntMatch"),
]

VL_STRICTER = [  # cal.py: agree whatever was rejected; mmrm: no verdict (invalid), out of the denominator
    "Overall Judgment: Answer 3 is better.",
    "Overall Judgment: Answer 0 is better.",
    "Therefore, Answer 12 is better.",
]


@pytest.mark.parametrize("reply, why", VL_SAME, ids=[w for _, w in VL_SAME])
@pytest.mark.parametrize("rejected", [1, 2])
def test_vl_rewardbench_verdict_equals_cal_py(reply: str, why: str, rejected: int) -> None:
    assert _vl_status(reply, rejected) == cal_py_status(reply, rejected)


def test_vl_rewardbench_verdicts_that_name_no_response_are_invalid_not_agree() -> None:
    for reply in VL_STRICTER:
        for rejected in (1, 2):
            assert cal_py_status(reply, rejected) == "agree"  # cal.py lines 86-89: any other number agrees
            assert _vl_status(reply, rejected) == "doesntMatch"
    with pytest.raises(AnswerError, match="not one of"):
        pair_verdict(load_preset("vl_rewardbench").parse, VL_STRICTER[0])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Multimodal RewardBench's verdict

MMRB_PUBLISHED = [  # facebookresearch/multimodal_rewardbench outputs/example.jsonl @ 966bac4 (endings of its two outputs)
    ("Based on the above factors, Assistant B's response is slightly more comprehensive and well-rounded in capturing "
     "the details and artistic value of the teapot.\n\nFinal verdict: [[B]]", "B"),
    ("Therefore, Assistant A has provided a response that is more helpful, relevant, accurate, and creative in "
     "accordance with the user\u2019s instructions.\n\nFinal Verdict: [[A]]", "A"),
]

MMRB_HOSTILE = [
    "The first is better. [[A]]",
    "[[B]]",
    "Final verdict: [[B]]. Wait, on reflection: [[A]]",  # both: extract_judgment tests [[A]] first -> A
    "Final verdict: [[A]]\n\nAssistant B's answer ends with \"[[B]]\"",  # both -> A
    'Assistant A\'s answer quotes "[[A]]" inside its text. Final verdict: [[B]]',  # a quoted verdict: A (the script's quirk, kept)
    "[[[B]]] and [[[A]]]",
    "Final verdict: [[a]]",  # case: no marker -> coin
    "Final verdict: [[C]]",  # a tie marker the prompt does not offer -> coin
    "Final verdict: [[",  # truncated -> coin
    "Both are good. [[A/B]]",
    "",
]


@pytest.mark.parametrize("reply", [r for r, _ in MMRB_PUBLISHED] + MMRB_HOSTILE)
def test_multimodal_rewardbench_verdict_equals_extract_judgment_or_invalid_where_it_flips_a_coin(reply: str) -> None:
    official, coin = extract_judgment(reply, random.Random(123))
    rule = load_preset("multimodal_rewardbench").parse
    assert rule is not None
    if coin:
        with pytest.raises(AnswerError):
            pair_verdict(rule, reply)
    else:
        assert pair_verdict(rule, reply) == {"A": "first", "B": "second"}[official]


def test_multimodal_rewardbench_published_outputs() -> None:
    rule = load_preset("multimodal_rewardbench").parse
    assert rule is not None
    for reply, label in MMRB_PUBLISHED:
        assert pair_verdict(rule, reply) == {"A": "first", "B": "second"}[label]


# ------------------------------------------------------------------------------------------------
# End to end: a scripted judge through run_eval, official numbers from the transcribed scripts


class _Scripted:
    """A text-only judge backend whose reply is a function of the user text it is sent; records requests."""

    engine, scorer_id, dtype = "openai", "scripted-benchmark-judge", None
    supports_logprobs = supports_prefill = supports_json_schema = False

    def __init__(self, reply) -> None:
        self.reply, self.requests = reply, []

    def check_labels(self, prefill, labels) -> None:
        raise AssertionError("a text-only preset checks no slot labels")

    def config_fingerprint(self):
        return {"engine": "scripted"}

    def label_probs(self, requests):
        raise AssertionError("no logprobs here")

    def generate(self, requests):
        self.requests += requests
        out = []
        for r in requests:
            [user] = r.messages
            text = "".join(p.text for p in user.content if isinstance(p, TextPart))
            out.append(GenReply(text=self.reply(text), finish_reason="stop"))
        return out


def _png_bytes() -> bytes:
    return base64.b64decode(PNG)


def _behaviour(text: str) -> str:
    m = re.search(r"behave:(\w+)", text)
    assert m, text
    return m.group(1)


def _vl_reply(text: str) -> str:
    """A consistent judge: prefers the answer marked GOOD (or BAD, to be wrong) whichever order it is shown in."""
    a1 = re.search(r"\nAnswer 1: (.*)\n\nAnswer 2: ", text).group(1)  # type: ignore[union-attr]
    how = _behaviour(text)
    if how == "garbled":
        return "Overall Judgement: I like Answer 1 is better."  # British spelling: cal.py finds nothing
    want = "GOOD" if how == "right" else "BAD"
    k = 1 if want in a1 else 2
    return f"1. Accuracy: fine.\n**Overall Judgment:** Answer {k} is better."


VL_E2E = [  # (id, image_path, human_ranking, behaviour)
    ("RLAIF-V-1", "images/rlaif-v/1.png", [0, 1], "right"),
    ("RLHF-V-2", "images/rlhf-v/2.png", [1, 0], "wrong"),
    ("hallucination_pair-3", "images/povid/3.png", [0, 1], "garbled"),
    ("wildvision-battle-4", "images/wildvision-battle/4.png", [1, 0], "right"),
    ("LRVInstruction-5", "images/vlfeedback/5.png", [0, 1], "wrong"),
    ("mathverse-6", "images/reasoning_tasks/6.png", [1, 0], "right"),
]


def _cal_py_numbers(inference: list[dict]) -> dict:
    """cal.py @ 6f64385 at k=1, one inference per pair and no repeated key (so its shuffle changes
    nothing): distribution lines 73-89, classify lines 140-170, distribution_dataset lines 176-217
    (group_mapping, group accuracies, overall and macro)."""
    group_mapping = {"vlfeedback": "general", "povid": "hallucination", "reasoning_tasks": "reasoning",
                     "rlhf-v": "hallucination", "rlaif-v": "hallucination", "wildvision-battle": "general"}
    correct, total = defaultdict(int), defaultdict(int)
    for item in inference:
        ranking, random_number = item["ranking"], item["random_number"]
        rejected = ranking.index(1 if random_number == 0 else 0) + 1
        status = cal_py_status(item["filter_choice"], rejected)
        g = group_mapping[item["image_path"].split("/")[1]]
        correct[g] += status == "agree"
        total[g] += status in ("agree", "reject")
    tasks = ["reasoning", "hallucination", "general"]
    return {"per": {t: correct[t] / total[t] for t in tasks},
            "macro": sum(correct[t] / total[t] for t in tasks) / 3,
            "overall": sum(correct[t] for t in tasks) / sum(total[t] for t in tasks)}


def test_vl_rewardbench_preset_end_to_end_official_number(tmp_path: Path) -> None:
    rows = []
    for i, path, ranking, how in VL_E2E:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(_png_bytes())
        good, bad = f"GOOD answer of {i}", f"BAD answer of {i}"
        response = [good, bad] if ranking == [0, 1] else [bad, good]
        rows.append({"id": i, "image_path": path, "query": f"Describe it. behave:{how}", "response": response,
                     "human_ranking": ranking, "models": ["m1", "m2"], "judge": "human", "rationale": None,
                     "query_source": "src", "meta": {}})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_vl_rewardbench(tmp_path / "data.jsonl")
    backend = _Scripted(_vl_reply)
    judge = Judge("vl_rewardbench", backend, JudgeOptions(method="text"))
    store = ResultStore(tmp_path / "results.jsonl")
    run_eval(items, judge, store, batch_size=4)
    assert len(backend.requests) == 2 * len(rows)  # both orders of every pair
    for r in backend.requests:
        [user] = r.messages
        assert [type(p) for p in user.content] == [TextPart, ImagePart]  # the text, then the image
    rep = build_report(store.records(), items=items, n_resamples=20)
    off = rep["official"]
    # The same judge as the official inference_hf.py runs it: one order (random_number 0: as stored).
    inference = [{"ranking": r["human_ranking"], "random_number": 0, "image_path": r["image_path"],
                  "filter_choice": _vl_reply(vlrb_prompt(r["query"], r["response"]))} for r in rows]
    want = _cal_py_numbers(inference)
    assert abs(off["overall_accuracy"] - want["overall"]) < EPS and abs(off["macro_accuracy"] - want["macro"]) < EPS
    for c, acc in want["per"].items():
        assert abs(off["categories"][c]["accuracy"] - acc) < EPS, c
    assert off["unparsed"] == 1 and off["categories"]["hallucination"]["unparsed"] == 1
    assert want["overall"] == pytest.approx(3 / 5)  # right 3, wrong 2, the garbled one out of the denominator
    assert rep["metrics"]["accuracy"]["value"] == pytest.approx(3 / 6)  # strict: every pair counts


def _mm_reply(text: str) -> str:
    m = re.search(r"\[The Start of Assistant A's Answer\]\n(.*)\n\[The End of Assistant A's Answer\]", text)
    a = m.group(1)  # type: ignore[union-attr]
    how = _behaviour(text)
    if how == "silent":
        return "Both answers have merit."  # no marker: the script's coin, mmrm's invalid
    want = "GOOD" if how == "right" else "BAD"
    return "Final verdict: [[A]]" if want in a else "Final verdict: [[B]]"


def test_multimodal_rewardbench_preset_end_to_end_official_number(tmp_path: Path) -> None:
    spec = [("vqa-1", "general", "Output1", "right"), ("vqa-2", "general", "Output2", "wrong"),
            ("pairs-3", "safety", "Output1", "silent"), ("math-4", "reasoning", "Output2", "right"),
            ("code-5", "reasoning", "Output1", "silent"), ("vqa-6", "general", "Output2", "right")]
    rows = []
    for i, cat, better, how in spec:
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / f"images/{i}.png").write_bytes(_png_bytes())
        good, bad = f"GOOD answer of {i}", f"BAD answer of {i}"
        o1, o2 = (good, bad) if better == "Output1" else (bad, good)
        rows.append({"ID": i, "Text": f"What is shown? behave:{how}", "Image": f"images/{i}.png", "Output1": o1,
                     "Output2": o2, "Better": better, "Category": cat})
    (tmp_path / "all_data.json").write_text(json.dumps(rows))
    items = load_multimodal_rewardbench(tmp_path / "all_data.json")
    backend = _Scripted(_mm_reply)
    store = ResultStore(tmp_path / "results.jsonl")
    run_eval(items, Judge("multimodal_rewardbench", backend, JudgeOptions(method="text")), store, batch_size=4)
    assert len(backend.requests) == 2 * len(rows)
    rep = build_report(store.records(), items=items, n_resamples=20)
    off = rep["official"]
    # 2_get_accuracy.py compute_acc (lines 21-41) on the outputs of 1_run_model_as_judge_gpt4o.py (one order, Output1 as A)
    rng = random.Random(123)
    accs: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        out = _mm_reply(MMRB_JUDGE_PROMPT.format(question=r["Text"], answer_a=r["Output1"], answer_b=r["Output2"]))
        pred, _ = extract_judgment(out, rng)
        label = "B" if r["Better"] == "Output2" else "A"
        acc = int(pred == label)
        accs["all"].append(acc)
        category = r["Category"]
        if category == "safety":
            category = "safety/bias" if r["ID"].lower().startswith("pairs") else "safety/toxicity"
        elif category == "reasoning":
            category = "reasoning/math" if r["ID"].lower().startswith("math") else "reasoning/coding"
        accs[category].append(acc)
    want = {t: sum(v) / len(v) for t, v in accs.items()}
    assert abs(off["accuracy"] - want.pop("all")) < EPS
    assert set(off["categories"]) == set(want)
    for c, acc in want.items():
        assert abs(off["categories"][c]["accuracy"] - acc) < EPS, c
    assert off["no_winner"] == 2  # the two silent pairs: invalid in mmrm, the script's coin at scoring time
    assert rep["metrics"]["accuracy"]["value"] == pytest.approx(3 / 6)


# ------------------------------------------------------------------------------------------------
# A tiny in-process hf judge (random weights: it writes no verdict) through run_eval


def test_multimodal_rewardbench_preset_on_a_tiny_hf_judge_end_to_end(tmp_path: Path, tiny_qwen2_vl: Path) -> None:
    from mmrm.judges.backends.hf import HFJudgeBackend

    rows = []
    for i, better in (("vqa-1", "Output1"), ("vqa-2", "Output2"), ("vqa-3", "Output2")):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.new("RGB", (56, 56), (30, 30 * len(rows), 200)).save(tmp_path / f"images/{i}.png")
        rows.append({"ID": i, "Text": f"What color is square {i}?", "Image": f"images/{i}.png", "Output1": "Blue.",
                     "Output2": "Red.", "Better": better, "Category": "general"})
    (tmp_path / "all_data.json").write_text(json.dumps(rows))
    items = load_multimodal_rewardbench(tmp_path / "all_data.json")
    backend = HFJudgeBackend(tiny_qwen2_vl, max_batch_size=8, media_policy=MediaPolicy(allowed_roots=[tmp_path]))
    judge = Judge("multimodal_rewardbench", backend, JudgeOptions(method="text", reasoning_tokens=12))
    store = ResultStore(tmp_path / "results.jsonl")
    run_eval(items, judge, store, batch_size=4)
    recs = {r["source_id"]: r for r in store.records()}
    assert set(recs) == {r["ID"] for r in rows}
    rep = build_report(list(recs.values()), items=items, n_resamples=20)
    # The transcribed script on what this judge wrote: each order's reply read by extract_judgment; a
    # pair names a winner only when both orders name the same response (mmrm's two orders), else the
    # script's seeded coin is drawn for it, in file order.
    rng, accs, no_winner = random.Random(123), [], 0
    for r in rows:
        details = (recs[r["ID"]].get("result") or {}).get("details") or {}
        orders = details.get("orders") or {o["order"]: o for o in details.get("per_order", [])}
        names = []
        for order in ("AB", "BA"):
            [sample] = orders[order]["samples"]
            assert sample.get("error_kind") in (None, "invalid_output", "budget_exhausted"), sample  # the judge ran
            pred, coin = extract_judgment(sample["reply"], random.Random(0))
            names.append(None if coin else (pred if order == "AB" else {"A": "B", "B": "A"}[pred]))
        label = "B" if r["Better"] == "Output2" else "A"
        winner = names[0] if names[0] is not None and names[0] == names[1] else None
        if winner is None:
            winner, no_winner = ("A" if rng.random() < 0.5 else "B"), no_winner + 1
        accs.append(int(winner == label))
    assert abs(rep["official"]["accuracy"] - sum(accs) / len(accs)) < EPS
    assert rep["official"]["no_winner"] == no_winner and all(rec["has_media"] for rec in recs.values())


# ------------------------------------------------------------------------------------------------
# Seeded random replies built from the formats' pieces: mmrm's reading vs the transcribed scripts


def _vl_random_reply(rng: random.Random) -> str:
    def pick(*xs: str) -> str:
        return rng.choice(xs)

    parts = []
    for _ in range(rng.randint(1, 3)):
        parts.append(pick("", "Overall Judgment", "overall judgment", "Therefore", "Overall Judgement", "Overall\nJudgment")
                     + pick("", ":", " ", "\n", "**", ": -", ":**\n") + pick("Answer", "answer", "**Answer**", "Answer\n")
                     + pick(" ", "", "\n", "** ") + pick("1", "2", "3", "01", "X") + pick(" ", "", "\n", "**")
                     + pick("is", "is the", "is slightly", "was") + pick(" better", "\nbetter", " worse", "")
                     + pick("", ".", " than the other.", '" (quoted).'))
    return pick("", "Reasoning...\n", "Answer 2 is better, says one reply.\n").join([""] + parts) if parts else ""


def test_random_replies_read_as_the_scripts_read_them() -> None:
    rng = random.Random(20)
    vl_rule, mm_rule = load_preset("vl_rewardbench").parse, load_preset("multimodal_rewardbench").parse
    assert vl_rule is not None and mm_rule is not None
    pattern = r"(?:Overall Judgment|Therefore)\s*.*\s*-*\s*Answer\s*(\d+)\s*is\s*(?:the\s*)?(?:slightly\s*)?better"
    seen = {"vl": set(), "mm": 0}
    for _ in range(1500):
        reply = _vl_random_reply(rng)
        m = re.search(pattern, reply.replace("\n", "").replace("*", ""), re.IGNORECASE)  # cal.py lines 81-82
        try:
            mine = {"first": 1, "second": 2}[pair_verdict(vl_rule, reply)]
        except AnswerError:
            mine = None
        official = int(m.group(1)) if m else None
        # equal, except where cal.py's number names neither response (deliberately invalid here)
        assert mine == (official if official in (1, 2) else None), reply
        seen["vl"].add(official)
        reply = "".join(rng.choice(["[[", "]]", "[", "]", "A", "B", "a", "C", " ", "\n", "[[A]]", "[[B]]"])
                        for _ in range(rng.randint(0, 10)))
        letter, coin = extract_judgment(reply, random.Random(0))
        try:
            got = pair_verdict(mm_rule, reply)
        except AnswerError:
            got = None
        assert got == (None if coin else {"A": "first", "B": "second"}[letter]), reply
        seen["mm"] += not coin
    assert {None, 1, 2, 3} <= seen["vl"] and seen["mm"] > 300  # the generators do build each kind of verdict
