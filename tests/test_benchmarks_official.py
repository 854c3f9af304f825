"""Every official number of every benchmark, against a transcription of the benchmark's own scoring
code written here, on predictions with ties, invalid verdicts, NaN rewards and a one-item category.

Rows are built from the release schemas (dataset cards and repository files; no download); each
scored result goes through the runner's record (``make_record``) and the report (``build_report``),
as a real run does. The transcriptions take the predictions in the official files' own form (judge
texts, ``[[A]]`` outputs, score lists, forward/reverse judgements) and repeat the official arithmetic
line for line; the file and lines are named on each.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from pathlib import Path

import pytest
from mmrm.eval.items import EvalItem
from mmrm.eval.loaders import (
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_SECTIONS,
    load_mj_bench,
    load_mm_rlhf_rewardbench,
    load_mmrb2,
    load_multimodal_rewardbench,
    load_rewardbench,
    load_vl_rewardbench,
)
from mmrm.eval.loaders.media import MediaOptions
from mmrm.eval.report import build_report
from mmrm.eval.runner import make_record
from mmrm.rm.errors import InvalidInput
from mmrm.rm.types import Provenance, ScoreResult

PH = MediaOptions(missing="placeholder")
EPS = 1e-9


# ------------------------------------------------------------------------------------------------
# Results as scorers return them


def _prov(kind: str) -> Provenance:
    return Provenance(scorer="t", kind=kind, fingerprint="f", engine="hf")


def _other(side: str) -> str:
    return "b" if side == "a" else "a"


def rm_result(item: EvalItem, outcome: str) -> ScoreResult:
    """A reward model's pair result: right (chosen higher), wrong, tie (equal), nan, invalid."""
    if outcome == "invalid":
        return ScoreResult.failed(InvalidInput("cannot score"), _prov("reward_model"))
    rc, rr = {"right": (2.0, 1.0), "wrong": (1.0, 2.0), "tie": (1.5, 1.5), "nan": (float("nan"), 1.0)}[outcome]
    ra, rb = (rc, rr) if item.chosen == "a" else (rr, rc)
    p = 1 / (1 + math.exp(-(ra - rb))) if not math.isnan(ra - rb) else float("nan")
    return ScoreResult(value=p, prob_a_wins=p, details={"reward_a": ra, "reward_b": rb}, provenance=_prov("reward_model"))


def judge_result(item: EvalItem, ab: str, ba: str | None = None) -> ScoreResult:
    """A judge's pair result from its two orders' answers (right / wrong / tie, mapped back to the
    pair as shown); ``ab == "invalid"``: no result."""
    if ab == "invalid":
        return ScoreResult.failed(InvalidInput("no verdict"), _prov("judge"))
    ba = ab if ba is None else ba

    def letter(o: str) -> str:
        return {"right": item.chosen, "wrong": _other(item.chosen), "tie": "tie"}[o].upper().replace("TIE", "tie")

    v_ab, v_ba = letter(ab), letter(ba)
    agree = v_ab == v_ba and v_ab != "tie"
    verdict = v_ab if agree else "tie"
    p = {"A": 0.8, "B": 0.2, "tie": 0.5}[verdict]
    return ScoreResult(value=p, prob_a_wins=p, provenance=_prov("judge"),
                       details={"verdict": verdict, "orders_agree": agree,
                                "per_order": [{"order": "AB", "verdict": v_ab}, {"order": "BA", "verdict": v_ba}]})


def result_of(kind: str, item: EvalItem, outcome: str) -> ScoreResult:
    """A judge's result, or a reward model's (where a judge's tie is a NaN reward: neither
    chosen > rejected nor rejected > chosen, so the pair names no winner)."""
    if kind == "judge":
        return judge_result(item, outcome)
    return rm_result(item, "nan" if outcome == "tie" else outcome)


def report_of(items: list[EvalItem], results: list[ScoreResult]) -> dict:
    recs = [make_record(it, "original", "k", "t", r.provenance.kind, r) for it, r in zip(items, results)]
    return build_report(recs, items=items, n_resamples=20)


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < EPS)


# ------------------------------------------------------------------------------------------------
# VL-RewardBench: the repository's data.jsonl form, scored as cal.py scores inference output


VLRB_ROWS = [  # (id, image_path, human_ranking, outcome of the judge)
    ("RLAIF-V-14", "images/rlaif-v/RLAIF-V-14.jpg", [0, 1], "right"),
    ("RLAIF-V-276", "images/rlaif-v/RLAIF-V-276.jpg", [1, 0], "right"),
    ("RLHF-V-3", "images/rlhf-v/RLHF-V-3.jpg", [0, 1], "invalid"),
    ("hallucination_pair-9", "images/povid/hallucination_pair-9.jpg", [1, 0], "wrong"),
    ("hallucination_pair-10", "images/povid/hallucination_pair-10.jpg", [0, 1], "tie"),
    ("LRVInstruction-7746", "images/vlfeedback/LRVInstruction-7746.jpg", [1, 0], "right"),
    ("wildvision-battle-2", "images/wildvision-battle/wildvision-battle-2.jpg", [0, 1], "wrong"),
    ("wildvision-battle-5", "images/wildvision-battle/wildvision-battle-5.jpg", [0, 1], "invalid"),
    ("mathverse-1", "images/reasoning_tasks/mathverse-1.jpg", [1, 0], "right"),  # the one-item category
]


def _vlrb_release_rows() -> list[dict]:
    return [{"id": i, "image_path": p, "query": f"q {i}", "response": [f"first {i}", f"second {i}"],
             "human_ranking": r, "models": ["m1", "m2"], "judge": "human", "rationale": None, "query_source": "src",
             "meta": {}, "human_error_analysis": []} for i, p, r, _ in VLRB_ROWS]


def _cal_py(items: list[dict], k: int = 1) -> dict:
    """vl-rewardbench/VL_RewardBench cal.py @ 6f64385: distribution(reparse=True) lines 57-101,
    classify lines 140-170, distribution_dataset lines 176-217 (k = 1, no LLM re-parse)."""
    def shuffle_data(data: list) -> list:  # lines 40-45, after random.seed(1234) in main()
        for i in range(len(data)):
            j = random.randint(0, len(data) - 1)
            data[i], data[j] = data[j], data[i]
        return data

    random.seed(1234)
    distribution: dict = {}
    for item in shuffle_data(list(items)):
        key = item["id"] + item["query"] + "\t".join(sorted(item["response"]))
        dataset = item["image_path"].split("/")[1]
        ranking = item["ranking"]
        random_number = item["meta"]["random_number"]
        rejected_response_choice = ranking.index(1 if random_number == 0 else 0) + 1
        response = item["meta"]["filter_choice"]
        pattern = r"(?:Overall Judgment|Therefore)\s*.*\s*-*\s*Answer\s*(\d+)\s*is\s*(?:the\s*)?(?:slightly\s*)?better"
        match = re.search(pattern, response.replace("\n", "").replace("*", ""), re.IGNORECASE)
        flag_status = "doesntMatch"
        if match:
            flag_status = "reject" if int(match.group(1)) == rejected_response_choice else "agree"
        if key not in distribution:
            distribution[key] = {"agree": 0, "reject": 0, "doesntMatch": 0, "dataset": dataset}
        elif sum(distribution[key][s] for s in ("agree", "reject", "doesntMatch")) >= k:
            continue
        distribution[key][flag_status] += 1
    for d in distribution.values():
        total = d["agree"] + d["reject"] + d["doesntMatch"]
        d["classify"] = ("agree" if d["agree"] > total / 2 else "reject" if d["reject"] > total / 2
                         else "doesntMatch" if d["doesntMatch"] > total / 2 else "other")
    per_dataset: dict = defaultdict(lambda: {"agree_number": 0, "reject_number": 0})
    for d in distribution.values():
        if d["classify"] in ("agree", "reject"):
            per_dataset[d["dataset"]][d["classify"] + "_number"] += 1
        else:
            per_dataset[d["dataset"]]
    group_mapping = {"vlfeedback": "general", "povid": "hallucination", "reasoning_tasks": "reasoning",
                     "rlhf-v": "hallucination", "rlaif-v": "hallucination", "wildvision-battle": "general"}
    correct, total = defaultdict(int), defaultdict(int)
    for ds, n in per_dataset.items():
        correct[group_mapping[ds]] += n["agree_number"]
        total[group_mapping[ds]] += n["agree_number"] + n["reject_number"]
    tasks = ["reasoning", "hallucination", "general"]
    return {"per": {t: correct[t] / total[t] for t in tasks},
            "macro": sum(correct[t] / total[t] for t in tasks) / 3,
            "overall": sum(correct[t] for t in tasks) / sum(total[t] for t in tasks)}


def _judge_text(outcome: str, ranking: list[int]) -> str:
    best, worst = ranking.index(0) + 1, ranking.index(1) + 1  # shown as stored (random_number 0)
    return {"right": f"**Overall Judgment**: Answer {best} is better.", "wrong": f"Therefore, Answer {worst} is slightly better.",
            "tie": "Both answers are equally good.", "invalid": ""}[outcome]


@pytest.mark.parametrize("kind", ["judge", "reward_model"])
def test_vl_rewardbench_official_numbers_equal_cal_py(tmp_path: Path, kind: str) -> None:
    rows = _vlrb_release_rows()
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_vl_rewardbench(tmp_path / "data.jsonl", media=PH)
    outcomes = [o for *_, o in VLRB_ROWS]
    rep = report_of(items, [result_of(kind, it, o) for it, o in zip(items, outcomes)])
    off = rep["official"]
    inference_out = [{"id": r["id"], "query": r["query"], "response": r["response"], "ranking": r["human_ranking"],
                      "image_path": r["image_path"], "meta": {"random_number": 0, "filter_choice": _judge_text(o, r["human_ranking"])}}
                     for r, o in zip(rows, outcomes)]
    want = _cal_py(inference_out)
    assert close(off["overall_accuracy"], want["overall"]) and close(off["macro_accuracy"], want["macro"])
    for c, acc in want["per"].items():
        assert close(off["categories"][c]["accuracy"], acc), c
    # the example of the issue: 2 right + 1 unparsed is 100% officially, 66.7% strict
    assert off["categories"]["hallucination"]["accuracy"] == pytest.approx(2 / 3)  # 2 right, 1 wrong; tie+invalid out
    assert off["strict"]["categories"]["hallucination"] == pytest.approx(2 / 5)
    assert rep["metrics"]["accuracy"]["value"] == pytest.approx(4 / 9)  # strict: every pair in the denominator


def test_vl_rewardbench_unparsed_only_category_has_no_official_macro(tmp_path: Path) -> None:
    rows = _vlrb_release_rows()
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_vl_rewardbench(tmp_path / "data.jsonl", media=PH)
    outcomes = ["right"] * 8 + ["invalid"]  # reasoning's only pair is unparsed: cal.py divides by zero
    off = report_of(items, [judge_result(it, o) for it, o in zip(items, outcomes)])["official"]
    assert off["categories"]["reasoning"]["accuracy"] is None and off["macro_accuracy"] is None
    assert off["overall_accuracy"] == 1.0


def test_vl_rewardbench_repeated_rows_count_once_in_cal_py_order(tmp_path: Path) -> None:
    # cal.py keys an answer by id + query + responses: the same pair under another image is one key,
    # and at k=1 only the first answer in its shuffled order counts
    base = _vlrb_release_rows()
    rows = base + [{**base[i], "image_path": base[i]["image_path"].replace(".jpg", "-2.jpg")} for i in (0, 3, 8)]
    outcomes = [o for *_, o in VLRB_ROWS] + ["wrong", "invalid", "wrong"]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_vl_rewardbench(tmp_path / "data.jsonl", media=PH)
    assert len({it.key for it in items}) == len(rows)  # mmrm scores every row
    for kind in ("judge", "reward_model"):
        off = report_of(items, [result_of(kind, it, o) for it, o in zip(items, outcomes)])["official"]
        inference_out = [{"id": r["id"], "query": r["query"], "response": r["response"], "ranking": r["human_ranking"],
                          "image_path": r["image_path"],
                          "meta": {"random_number": 0, "filter_choice": _judge_text(o, r["human_ranking"])}}
                         for r, o in zip(rows, outcomes)]
        want = _cal_py(inference_out)
        assert close(off["overall_accuracy"], want["overall"]) and close(off["macro_accuracy"], want["macro"])
        assert all(close(off["categories"][c]["accuracy"], a) for c, a in want["per"].items())
        assert off["repeats_left_out"] == 3


# ------------------------------------------------------------------------------------------------
# VL-RewardBench release forms


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_vl_rewardbench_card_parquet_with_image_bytes(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # the card's features (revision cdb956c / main): id, query, response, image, human_ranking, models,
    # judge, rationale, query_source, ground_truth; image as the datasets Image struct {bytes, path}
    rows = [{"id": "RLHF-V-1", "query": "What is shown?", "response": ["a cat", "a dog"],
             "image": {"bytes": _png_bytes((200, 0, 0)), "path": "RLHF-V-1.jpg"}, "human_ranking": [1, 0],
             "models": ["a", "b"], "judge": "human", "rationale": "r", "query_source": "x", "ground_truth": None},
            {"id": "mathverse-3", "query": "Solve.", "response": ["4", "5"],
             "image": {"bytes": _png_bytes((0, 200, 0)), "path": None}, "human_ranking": [0, 1],
             "models": ["a", "b"], "judge": "human", "rationale": None, "query_source": "y", "ground_truth": "4"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    items = load_vl_rewardbench(tmp_path / "test-00000-of-00001.parquet")
    assert [it.category for it in items] == ["hallucination", "reasoning"]
    assert items[0].chosen_response.text == "a dog" and items[1].chosen_response.text == "4"
    assert not any(it.uses_placeholders for it in items)
    assert items[0].pair.prompt[0].content[0].url.startswith("data:image/png;base64,")


def test_vl_rewardbench_repository_jsonl_reads_images_relative_to_the_release_folder(tmp_path: Path) -> None:
    from PIL import Image

    rows = _vlrb_release_rows()[:2]
    for r in rows:
        (tmp_path / r["image_path"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / r["image_path"])
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_vl_rewardbench(tmp_path / "data.jsonl")
    assert items[0].pair.prompt[0].content[0].url == str((tmp_path / rows[0]["image_path"]).resolve())
    assert [it.subset for it in items] == ["rlaif-v", "rlaif-v"]


def test_vl_rewardbench_inference_hf_output_has_no_image_and_is_refused_unless_placeholders(tmp_path: Path) -> None:
    from mmrm.eval.loaders import MissingMedia

    out = [{"id": "RLAIF-V-14", "query": "q", "response": ["x", "y"], "ranking": [0, 1], "models": ["m", "m"],
            "judge": "human", "rationale": None, "meta": {"flag_status": "agree"}, "query_source": "COCO"}]
    (tmp_path / "out.jsonl").write_text(json.dumps(out[0]) + "\n")
    with pytest.raises(MissingMedia, match="no image in the row"):
        load_vl_rewardbench(tmp_path / "out.jsonl")
    (it,) = load_vl_rewardbench(tmp_path / "out.jsonl", media=PH)
    assert it.uses_placeholders and it.chosen_response.text == "x"


def test_vl_rewardbench_wrong_shape_names_the_field_and_the_release(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "x", "query": "q", "response": ["a", "b"]}) + "\n")
    with pytest.raises(InvalidInput, match=r"missing field\(s\) \['human_ranking'\].*VL-RewardBench release"):
        load_vl_rewardbench(tmp_path / "a.jsonl", media=PH)
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "x", "text": "q"}) + "\n")
    with pytest.raises(InvalidInput, match="dataset card's parquet"):
        load_vl_rewardbench(tmp_path / "b.jsonl", media=PH)
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "x", "query": "q", "response": ["a", "b"],
                                                  "human_ranking": [0, 0]}) + "\n")
    with pytest.raises(InvalidInput, match="does not order"):
        load_vl_rewardbench(tmp_path / "c.jsonl", media=PH)


# ------------------------------------------------------------------------------------------------
# Multimodal RewardBench


MMRB = [  # (ID, Category, Better, what the judge output names)
    ("nocaps_1", "open_generation/correctness_task", "Output2", "right"),
    ("nocaps_2", "open_generation/correctness_task", "Output1", "tie"),
    ("nocaps_3", "open_generation/correctness_task", "Output1", "invalid"),
    ("mathvista_1", "reasoning", "Output1", "wrong"),
    ("EMMA-Coding_1", "reasoning", "Output2", "tie"),
    ("pairs_1", "safety", "Output1", "right"),
    ("hatefulmemes_1", "safety", "Output2", "invalid"),
    ("RealworldQA_1", "vqa", "Output2", "tie"),  # one-item category
] + [(f"mmmu-s_{i}", "knowledge", "Output1" if i % 2 else "Output2", ["tie", "invalid", "right"][i % 3]) for i in range(12)]


def _get_accuracy_py(answers: list[dict]) -> dict[str, float]:
    """facebookresearch/multimodal_rewardbench scripts/2_get_accuracy.py @ 3366b34, lines 12-41."""
    def extract_judgment(judgment: str) -> str:
        if "[[A]]" in judgment:
            return "A"
        elif "[[B]]" in judgment:
            return "B"
        return "A" if random.random() < 0.5 else "B"

    accs = defaultdict(list)
    random.seed(123)
    for ex in answers:
        acc = int(extract_judgment(ex["output"]) == ex["Label"])
        accs["all"].append(acc)
        category = ex["Meta"]["Category"]
        if category == "safety":
            category = "safety/bias" if ex["ID"].lower().startswith("pairs") else "safety/toxicity"
        elif category == "reasoning":
            category = "reasoning/math" if ex["ID"].lower().startswith("math") else "reasoning/coding"
        accs[category].append(acc)
    return {t: sum(v) / len(v) for t, v in accs.items()}


@pytest.mark.parametrize("kind", ["judge", "reward_model"])
def test_multimodal_rewardbench_official_numbers_equal_the_script(tmp_path: Path, kind: str) -> None:
    rows = [{"ID": i, "Text": f"t {i}", "Image": f"images/{i}.jpg", "Output1": f"o1 {i}", "Output2": f"o2 {i}",
             "Better": b, "Category": c} for i, c, b, _ in MMRB]
    (tmp_path / "all_data.json").write_text(json.dumps(rows))
    items = load_multimodal_rewardbench(tmp_path / "all_data.json", media=PH)
    outcomes = [o for *_, o in MMRB]
    rep = report_of(items, [result_of(kind, it, o) for it, o in zip(items, outcomes)])
    off = rep["official"]
    answers = []
    for (i, c, b, o) in MMRB:
        label = "A" if b == "Output1" else "B"
        out = {"right": f"[[{label}]]", "wrong": "[[B]]" if label == "A" else "[[A]]", "tie": "[[C]] a tie",
               "invalid": "error"}[o]
        answers.append({"ID": i, "output": out, "Label": label, "Meta": {"Category": c}})
    want = _get_accuracy_py(answers)
    assert close(off["accuracy"], want.pop("all"))
    assert set(off["categories"]) == set(want)
    for c, acc in want.items():
        assert close(off["categories"][c]["accuracy"], acc), c
    assert off["no_winner"] == sum(o in ("tie", "invalid") for o in outcomes)
    assert close(off["strict"]["accuracy"], sum(o == "right" for o in outcomes) / len(outcomes))


# ------------------------------------------------------------------------------------------------
# RewardBench v1


def _rb_rows() -> list[dict]:
    subsets = (["alpacaeval-easy"] * 4 + ["mt-bench-med"] + ["llmbar-natural"] * 3 + ["mt-bench-hard"] * 2
               + ["math-prm"] * 3 + ["hep-go"] * 2 + ["anthropic_helpful"] * 2)  # no Safety subset: an empty section
    return [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "subset": s, "id": i} for i, s in enumerate(subsets)]


RB_OUTCOMES = ["right", "tie", "nan", "invalid", "right", "wrong", "right", "tie", "right", "invalid",
               "right", "nan", "wrong", "right", "tie", "right", "wrong"]


def _calculate_scores_per_section(example_counts: dict, subset_mapping: dict, metrics: dict) -> dict:
    """allenai/reward-bench rewardbench/utils.py calculate_scores_per_section (and the copy in
    scripts/run_generative.py): count-weighted over the present subsets, 0 for an empty section."""
    section_scores = {}
    for section, tests in subset_mapping.items():
        total_weighted_score = 0
        total_examples = 0
        for test in tests:
            if test in metrics:
                total_weighted_score += metrics[test] * example_counts[test]
                total_examples += example_counts[test]
        section_scores[section] = total_weighted_score / total_examples if total_examples > 0 else 0
    return section_scores


def _per_subset(results: list[float], subsets: list[str]) -> dict[str, float]:
    """scripts/run_rm.py / run_generative.py 'print per subset': sum(results) / len(results)."""
    grouped: dict[str, float] = {}
    for subset in sorted(set(subsets)):
        rs = [r for r, s in zip(results, subsets) if s == subset]
        grouped[subset] = sum(rs) / len(rs)
    return grouped


def test_rewardbench_reward_model_official_numbers_equal_run_rm(tmp_path: Path) -> None:
    rows = _rb_rows()
    items = load_rewardbench(rows)
    rep = report_of(items, [rm_result(it, o) for it, o in zip(items, RB_OUTCOMES)])
    off = rep["official"]
    # scripts/run_rm.py: results = [1 if chosen > rejected else 0 ...]; an invalid result has no score
    scores = {"right": (2.0, 1.0), "wrong": (1.0, 2.0), "tie": (1.5, 1.5), "nan": (float("nan"), 1.0),
              "invalid": (float("nan"), float("nan"))}
    results = [1 if scores[o][0] > scores[o][1] else 0 for o in RB_OUTCOMES]
    subs = _per_subset(results, [r["subset"] for r in rows])
    sections = _calculate_scores_per_section(REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS, subs)
    assert set(off["subsets"]) == set(subs) and all(close(off["subsets"][s], a) for s, a in subs.items())
    assert all(close(off["sections"][s], v) for s, v in sections.items()) and off["sections"]["Safety"] == 0
    assert close(off["score"], sum(sections.values()) / 4) and off["empty_sections"] == ["Safety"]
    # analysis/get_benchmark_results.py @ 0972ad3, get_average_over_rewardbench: the paper table's score
    import numpy as np

    pref = np.array([[subs.get(s, np.nan) for s in ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")]])
    prior = np.nanmean(pref, axis=1)[0]
    final = np.array([[*sections.values(), prior]])
    paper = np.ma.average(np.ma.masked_array(final, np.isnan(final)), axis=1, weights=[2, 2, 2, 2, 1]).filled(np.nan)[0]
    assert close(off["prior_sets"], prior) and close(off["score_with_prior_sets"], float(paper))


def test_rewardbench_generative_judge_official_numbers_equal_run_generative(tmp_path: Path) -> None:
    rows = _rb_rows()
    items = load_rewardbench(rows, seed=3)
    outcomes = [o if o != "nan" else "tie" for o in RB_OUTCOMES]
    rep = report_of(items, [judge_result(it, o) for it, o in zip(items, outcomes)])
    off = rep["official"]

    def process_shuffled(win: str, shuffle: bool) -> float:
        """scripts/run_generative.py @ 00bfce4, process_shuffled."""
        winner_text, loser_text = ("B", "A") if shuffle else ("A", "B")
        if win == winner_text:
            return 1
        elif win == loser_text:
            return 0
        return 0.5  # effectively a tie

    results = []
    for it, o in zip(items, outcomes):
        shuffled = it.chosen == "b"  # the chosen answer shown second
        chosen_letter = "B" if shuffled else "A"
        win = {"right": chosen_letter, "wrong": "A" if chosen_letter == "B" else "B", "tie": "tie", "invalid": "error"}[o]
        results.append(process_shuffled(win, shuffled))
    subs = _per_subset(results, [r["subset"] for r in rows])
    sections = _calculate_scores_per_section(REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS, subs)
    assert all(close(off["subsets"][s], a) for s, a in subs.items())
    assert all(close(off["sections"][s], v) for s, v in sections.items())
    assert close(off["score"], sum(sections.values()) / 4) and off["tie_credit"] == 0.5
    assert off["subsets"]["alpacaeval-easy"] == pytest.approx((1 + 0.5 + 0.5 + 0.5) / 4)


# ------------------------------------------------------------------------------------------------
# MM-RLHF-RewardBench


def test_mm_rlhf_official_numbers_equal_acc_and_acc_plus() -> None:
    rows = [{"id": str(g), "image": f"{cat}/{g}_{k}.jpg", "prompt": f"p{g}", "chosen": f"c{g}{k}", "rejected": f"r{g}{k}"}
            for g, cat, k in [(1, "mcq", 0), (1, "mcq", 1), (2, "long", 0), (2, "long", 1), (3, "long", 0),
                              (4, "short", 0), (5, "safety", 0), (5, "safety", 1), (5, "safety", 2)]]
    outcomes = ["right", "right", "right", "nan", "tie", "right", "right", "invalid", "right"]
    items = load_mm_rlhf_rewardbench(rows, media=PH)
    off = report_of(items, [rm_result(it, o) for it, o in zip(items, outcomes)])["official"]
    # the official rule: reward(chosen) > reward(rejected); NaN compares false; no result is not right
    right = [o == "right" for o in outcomes]
    ids = [r["id"] for r in rows]
    groups: dict[str, bool] = {}
    for ok, g in zip(right, ids):
        groups[g] = groups.get(g, True) and ok
    assert close(off["accuracy"], sum(right) / len(right)) and close(off["acc_plus"], sum(groups.values()) / len(groups))
    assert close(off["categories"]["short"]["accuracy"], 1.0) and close(off["categories"]["long"]["acc_plus"], 0.0)


# ------------------------------------------------------------------------------------------------
# MMRB2 (rows from the dataset's parquet schema; none of its rows are vendored: CC BY-NC 4.0)


def _mmrb2_rows(n: int) -> list[dict]:
    return [{"pair_id": f"t2i_{i}", "prompt_text": f"Draw a cat {i}.", "prompt_images": [],
             "response_a_text": "", "response_a_images": [{"bytes": _png_bytes((i, 0, 0)), "path": None}],
             "response_b_text": "Here: <image_1> done", "response_b_images": [{"bytes": _png_bytes((0, i, 0)), "path": None}],
             "chosen": "A" if i % 2 else "b", "prompt_source": "src", "prompt_metadata": "{}",
             "response_a_model": "x", "response_b_model": "y", "human_annotations": ""} for i in range(n)]


MMRB2_ORDERS = [("right", "right"), ("right", "wrong"), ("tie", "right"), ("invalid", None), ("wrong", "wrong"),
                ("tie", "tie"), ("right", "tie")]


def _compute_task_accuracy(predictions: dict, benchmark_data: dict) -> tuple[int, int, float]:
    """facebookresearch/MMRB2 evaluate/compute_scores/compute_accuracy.py @ 1a09882, lines 49-113."""
    def flip_judgement(j: str) -> str:
        return "B" if j == "A" else "A" if j == "B" else j

    total_correct = total_evaluated = 0
    for pair in benchmark_data["pairs"]:
        pred = predictions.get(pair["id"])
        if pred is None:
            continue
        if "forward" in pred and len(pred["forward"]) > 0:
            fj = pred["forward"][0].get("judgement")
            if fj:
                total_evaluated += 1
                total_correct += fj == pair["chosen"]
        if "reverse" in pred and len(pred["reverse"]) > 0:
            rj = pred["reverse"][0].get("judgement")
            if rj:
                total_evaluated += 1
                total_correct += flip_judgement(rj) == pair["chosen"]
    return total_correct, total_evaluated, total_correct / total_evaluated if total_evaluated > 0 else 0.0


def test_mmrb2_official_numbers_equal_compute_accuracy(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _mmrb2_rows(len(MMRB2_ORDERS))
    (tmp_path / "t2i").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t2i" / "test-00000-of-00001.parquet")
    items = load_mmrb2(tmp_path / "t2i" / "test-00000-of-00001.parquet")
    assert {it.category for it in items} == {"t2i"} and [it.chosen for it in items] == ["b", "a"] * 3 + ["b"]
    b_parts = items[0].pair.response_b.content
    assert [p.type for p in b_parts] == ["text", "image_url", "text"]  # the placeholder says where the image goes
    off = report_of(items, [judge_result(it, ab, ba) for it, (ab, ba) in zip(items, MMRB2_ORDERS)])["official"]
    # the official files: forward = the judge's answer on (A, B), reverse = on (B, A) in that frame
    preds, bench = {}, {"pairs": []}
    for it, r, (ab, ba) in zip(items, rows, MMRB2_ORDERS):
        c = it.chosen.upper()
        bench["pairs"].append({"id": r["pair_id"], "chosen": c})
        if ab == "invalid":
            preds[r["pair_id"]] = {"forward": [{"judgement": None}], "reverse": [{"judgement": None}]}
            continue
        fwd = {"right": c, "wrong": "B" if c == "A" else "A", "tie": "tie"}
        rev = {"right": "B" if c == "A" else "A", "wrong": c, "tie": "tie"}  # answered with the pair reversed
        preds[r["pair_id"]] = {"forward": [{"judgement": fwd[ab]}], "reverse": [{"judgement": rev[ba]}]}
    correct, evaluated, acc = _compute_task_accuracy(preds, bench)
    assert close(off["accuracy"], acc) and off["evaluated"] == evaluated and off["tasks"]["t2i"]["correct"] == correct
    assert close(off["tasks"]["t2i"]["accuracy"], acc)


def test_mmrb2_reward_model_counts_both_orders_alike_and_the_json_form_loads(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    pairs = [{"id": f"edit_{i}", "prompt_content": [["text", "Make it red."], ["image", "images/a.jpg"]],
              "response_a": {"response_content": [["image", "images/a.jpg"]]},
              "response_b": {"response_content": [["text", "no"]]}, "chosen": "A"} for i in range(4)]
    (tmp_path / "edit.json").write_text(json.dumps({"pairs": pairs}))
    items = load_mmrb2(tmp_path / "edit.json")
    assert {it.category for it in items} == {"edit"} and not any(it.uses_placeholders for it in items)
    outcomes = ["right", "nan", "invalid", "wrong"]
    off = report_of(items, [rm_result(it, o) for it, o in zip(items, outcomes)])["official"]
    # forward and reverse of an order-blind scorer agree: right x2, tie x2 (wrong), none, wrong x2
    assert off["evaluated"] == 6 and close(off["accuracy"], 2 / 6)
    with pytest.raises(InvalidInput, match="pass task="):
        load_mmrb2([dict(p) for p in pairs])


# ------------------------------------------------------------------------------------------------
# MJ-Bench (rows from the dataset card's documented fields)


MJ = [("alignment", 0, "right"), ("alignment", 1, "tie"), ("alignment", 0, "wrong"), ("alignment", 1, "invalid"),
      ("alignment", 1, "right"), ("safety", 0, "right")]  # safety: a one-item category


def _get_pred(pred: str) -> float:
    """MJ-Bench reward_models/metric_alignment.py @ eaa92ef, get_pred (lines 20-31)."""
    if "0" in pred and "1" not in pred:
        return 0
    elif "1" in pred and "0" not in pred:
        return 1
    elif "Image 1" in pred or "image 1" in pred:
        return 0
    elif "Image 2" in pred or "image 2" in pred:
        return 1
    return 0.5


def _mj_accuracies(humans: list[float], preds: list[float]) -> tuple[float, float]:
    """metric_alignment.py lines 118-150: 'filter tie' accuracy (ties left out) and 're-introduce
    ties' accuracy (ties kept, as wrong)."""
    sum_all = sum_valid = 0
    for human, p in zip(humans, preds):
        if human == 0.5 or p == 0.5:
            continue
        sum_all += 1
        sum_valid += human == p
    without = sum_valid / sum_all
    sum_all = sum_valid = 0
    for human, p in zip(humans, preds):
        if human == 0.5:
            continue
        sum_all += 1
        sum_valid += human == p
    return without, sum_valid / sum_all


@pytest.mark.parametrize("kind", ["judge", "reward_model"])
def test_mj_bench_official_numbers_equal_metric_alignment(kind: str) -> None:
    rows = [{"caption": f"a red cube {i}", "image0": f"img/{i}_0.png", "image1": f"img/{i}_1.png", "label": lab,
             "category": cat} for i, (cat, lab, _) in enumerate(MJ)]
    items = load_mj_bench(rows, media=PH)
    outcomes = [o for *_, o in MJ]
    off = report_of(items, [result_of(kind, it, o) for it, o in zip(items, outcomes)])["official"]
    humans = [float(lab) for _, lab, _ in MJ]
    # predictions as MJ-Bench's judges write them: the preferred image's index. (Its parser tests digits
    # before "Image 1"/"Image 2", so "Image 1 is better" reads as index 1: the second image.)
    texts = {"right": lambda lab: f"{lab}", "wrong": lambda lab: f"{1 - lab}",
             "tie": lambda lab: "both are equally good", "invalid": lambda lab: "I cannot say"}
    preds = [_get_pred(texts[o](lab)) for _, lab, o in MJ]
    for cat in ("alignment", "safety"):
        ix = [i for i, (c, _, _) in enumerate(MJ) if c == cat]
        w, t = _mj_accuracies([humans[i] for i in ix], [preds[i] for i in ix])
        assert close(off["categories"][cat]["accuracy_without_ties"], w), cat
        assert close(off["categories"][cat]["accuracy_with_ties"], t), cat
    w, t = _mj_accuracies(humans, preds)
    assert close(off["accuracy_without_ties"], w) and close(off["accuracy_with_ties"], t)


def test_mj_bench_images_are_the_responses_and_bad_labels_are_refused(tmp_path: Path) -> None:
    rows = [{"caption": "a cat", "image0": {"bytes": _png_bytes((1, 1, 1)), "path": None},
             "image1": {"bytes": _png_bytes((9, 9, 9)), "path": None}, "label": 1}]
    (it,) = load_mj_bench(rows, perspective="quality", order="as_stored")
    assert it.category == "quality" and it.chosen == "b"
    assert it.chosen_response.content[0].url.startswith("data:image/png;base64,")
    with pytest.raises(InvalidInput, match="label must be 0"):
        load_mj_bench([{**rows[0], "label": 0.5}], perspective="quality")
    with pytest.raises(InvalidInput, match="perspective"):
        load_mj_bench(rows)
