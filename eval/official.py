"""Each benchmark's headline numbers exactly as its own scoring script computes them, beside
mmrm's strict variant (every pair in the denominator; a tie or an invalid result is wrong).

Inputs are per-pair sequences in file order: ``verdicts`` (``"a"``, ``"b"``, ``"tie"`` or ``None``
for an invalid result; see :mod:`mmrm.eval.metrics`), ``chosen`` (the human-preferred side), and
the loader's categories. A NaN reward makes a reward model's verdict a tie (``nan > x`` and
``nan < x`` are both false), which is also what every official ``chosen > rejected`` test does
with it. Each function names the file and commit it transcribes; where an official script would
divide by zero (an empty category), the number is ``None`` here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

Verdict = str | None

__all__ = [
    "OFFICIAL_SOURCES",
    "REWARDBENCH_PRIOR_SETS",
    "cal_py_order",
    "mj_bench",
    "mm_rlhf_rewardbench",
    "mmrb2",
    "multimodal_rewardbench",
    "official_coin_flip",
    "rewardbench",
    "rewardbench_results",
    "rewardbench_sections",
    "strict",
    "vl_rewardbench",
]

#: The official scoring code each definition below transcribes (repository, file, commit).
OFFICIAL_SOURCES: dict[str, str] = {
    "vl-rewardbench": "vl-rewardbench/VL_RewardBench cal.py @ 6f64385 (distribution, classify, distribution_dataset)",
    "mm-rlhf-rewardbench": "MM-RLHF-RewardBench get_acc.py (Acc: reward(chosen) > reward(rejected); Acc+: per id)",
    "multimodal-rewardbench": "facebookresearch/multimodal_rewardbench scripts/2_get_accuracy.py @ 3366b34 "
                              "(extract_judgment, compute_acc)",
    "rewardbench": "allenai/reward-bench scripts/run_rm.py (results = [1 if chosen > rejected else 0 ...]), "
                   "scripts/run_generative.py @ 00bfce4 (process_shuffled: error -> 0.5), "
                   "rewardbench/utils.py calculate_scores_per_section, "
                   "analysis/get_benchmark_results.py @ 0972ad3 (get_average_over_rewardbench: prior sets)",
    "mmrb2": "facebookresearch/MMRB2 evaluate/compute_scores/compute_accuracy.py @ 1a09882 (compute_task_accuracy, "
             "evaluate_all_tasks)",
    "mj-bench": "MJ-Bench/MJ-Bench reward_models/metric_alignment.py @ eaa92ef (get_pred: no answer -> 0.5; "
                "'filter tie' and 're-introduce ties' accuracies)",
}


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _names(v: Verdict, c: str) -> str:
    """'right', 'wrong' or 'none' (the verdict names no winner: a tie or an invalid result)."""
    if v not in ("a", "b"):
        return "none"
    return "right" if v == c else "wrong"


def strict(verdicts: Sequence[Verdict], chosen: Sequence[str], categories: Sequence[str]) -> dict[str, Any]:
    """mmrm's strict accuracy: every pair counts; a tie or an invalid result is wrong."""
    right = np.array([_names(v, c) == "right" for v, c in zip(verdicts, chosen)], dtype=float)
    cats = np.asarray(categories)
    return {"accuracy": float(right.mean()) if len(right) else None,
            "categories": {c: float(right[cats == c].mean()) for c in dict.fromkeys(categories)}}


# --------------------------------------------------------------------------------------------------
# VL-RewardBench


def cal_py_order(n: int, seed: int = 1234) -> list[int]:
    """The order ``cal.py`` visits ``n`` inference results in: its ``shuffle_data`` (swap each
    position with ``random.randint(0, n - 1)``) after ``random.seed(1234)`` in ``main``."""
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n):
        j = rng.randint(0, n - 1)
        order[i], order[j] = order[j], order[i]
    return order


def vl_rewardbench(verdicts: Sequence[Verdict], chosen: Sequence[str], categories: Sequence[str],
                   dedupe: Sequence[str] | None = None) -> dict[str, Any]:
    """``cal.py`` with one inference per pair (``k=1``): a pair is *agree* when the verdict names the
    chosen response, *reject* when it names the other, *doesntMatch* otherwise (a tie, an invalid or
    unparseable answer). Per category ``agree / (agree + reject)``: unparsed pairs leave the
    denominator. Overall = pooled over general, hallucination and reasoning; macro = mean of the
    three. Where ``cal.py`` divides by zero (a category, or one source dataset of it, without a
    parsed pair: it raises ZeroDivisionError) the category's number is computed over what it has,
    and ``None`` when it has no parsed pair (then the macro is ``None`` too).

    ``dedupe``: ``cal.py``'s key per pair (id + query + responses); at ``k=1`` a repeated key counts
    once, the first in ``cal.py``'s shuffled order (:func:`cal_py_order`). Pass the whole file in file
    order. (The released 1,250 rows have no repeated key.)
    """
    agree: dict[str, int] = {c: 0 for c in ("general", "hallucination", "reasoning")}
    reject = dict.fromkeys(agree, 0)
    unparsed = dict.fromkeys(agree, 0)
    seen: set[str] = set()
    for i in (cal_py_order(len(verdicts)) if dedupe is not None else range(len(verdicts))):
        v, c, cat = verdicts[i], chosen[i], categories[i]
        if dedupe is not None:
            if dedupe[i] in seen:
                continue
            seen.add(dedupe[i])
        if cat not in agree:
            continue
        {"right": agree, "wrong": reject, "none": unparsed}[_names(v, c)][cat] += 1
    per = {c: _ratio(agree[c], agree[c] + reject[c]) for c in agree}
    total_a, total = sum(agree.values()), sum(agree[c] + reject[c] for c in agree)
    return {
        "overall_accuracy": _ratio(total_a, total),
        "macro_accuracy": None if any(p is None for p in per.values()) else float(np.mean(list(per.values()))),
        "categories": {c: {"accuracy": per[c], "agree": agree[c], "reject": reject[c], "unparsed": unparsed[c]}
                       for c in agree},
        "unparsed": sum(unparsed.values()),
        "repeats_left_out": len(verdicts) - len(seen) if dedupe is not None else 0,
    }


# --------------------------------------------------------------------------------------------------
# MM-RLHF-RewardBench


def mm_rlhf_rewardbench(verdicts: Sequence[Verdict], chosen: Sequence[str], categories: Sequence[str],
                        groups: Sequence[str]) -> dict[str, Any]:
    """Acc = share of pairs with reward(chosen) > reward(rejected) (a tie, NaN or invalid is wrong);
    Acc+ = share of ids whose pairs are all right; both per category too."""
    right = [_names(v, c) == "right" for v, c in zip(verdicts, chosen)]

    def accs(ix: list[int]) -> tuple[float | None, float | None]:
        per_group: dict[str, bool] = {}
        for i in ix:
            per_group[groups[i]] = per_group.get(groups[i], True) and right[i]
        return _ratio(sum(right[i] for i in ix), len(ix)), _ratio(sum(per_group.values()), len(per_group))

    acc, accp = accs(list(range(len(right))))
    cats = {}
    for c in dict.fromkeys(categories):
        a, p = accs([i for i, k in enumerate(categories) if k == c])
        cats[c] = {"n": sum(k == c for k in categories), "accuracy": a, "acc_plus": p}
    return {"accuracy": acc, "acc_plus": accp, "categories": cats}


# --------------------------------------------------------------------------------------------------
# Multimodal RewardBench


def official_coin_flip(verdicts: Sequence[Verdict], chosen: Sequence[str], *, seed: int = 123) -> np.ndarray:
    """Correctness as ``scripts/2_get_accuracy.py`` scores it: a verdict naming no winner (``[[A]]``
    nor ``[[B]]`` in the output: a tie, or an invalid result) becomes ``'A' if random.random() < 0.5
    else 'B'``, drawn from ``random.seed(123)`` in file order, one draw per such item. Pass verdicts
    in file order."""
    rng = random.Random(seed)
    out = np.zeros(len(verdicts))
    for i, (v, c) in enumerate(zip(verdicts, chosen)):
        if v not in ("a", "b"):
            v = "a" if rng.random() < 0.5 else "b"
        out[i] = 1.0 if v == c else 0.0
    return out


def multimodal_rewardbench(verdicts: Sequence[Verdict], chosen: Sequence[str],
                           categories: Sequence[str]) -> dict[str, Any]:
    """``compute_acc``: accuracy over all pairs ('all') and per category, with the seeded coin."""
    acc = official_coin_flip(verdicts, chosen)
    cats = np.asarray(categories)
    return {"accuracy": float(acc.mean()) if len(acc) else None,
            "categories": {c: {"n": int((cats == c).sum()), "accuracy": float(acc[cats == c].mean())}
                           for c in dict.fromkeys(categories)},
            "no_winner": int(sum(v not in ("a", "b") for v in verdicts))}


# --------------------------------------------------------------------------------------------------
# RewardBench v1


def rewardbench_results(verdicts: Sequence[Verdict], chosen: Sequence[str], kind: str) -> list[float]:
    """Per-pair results: reward models (``run_rm.py``) 1 only when chosen > rejected, else 0 (a tie,
    NaN or invalid is 0); generative judges (``run_generative.py``) 1 / 0 by the winner, 0.5 when the
    judgement names none (a tie or an error)."""
    tie = 0.5 if kind == "judge" else 0.0
    return [{"right": 1.0, "wrong": 0.0, "none": tie}[_names(v, c)] for v, c in zip(verdicts, chosen)]


def rewardbench_sections(subset_accuracy: dict[str, float], example_counts: dict[str, int],
                         sections: dict[str, Sequence[str]]) -> dict[str, float]:
    """``calculate_scores_per_section``: per section, the mean of its present subsets' accuracies
    weighted by ``example_counts``; a section with none present is 0."""
    out: dict[str, float] = {}
    for section, subsets in sections.items():
        present = [s for s in subsets if s in subset_accuracy]
        total = sum(example_counts[s] for s in present)
        out[section] = sum(subset_accuracy[s] * example_counts[s] for s in present) / total if total else 0
    return out


#: The prior preference sets the paper table averages (``get_average_over_rewardbench``'s ``pref_columns``).
REWARDBENCH_PRIOR_SETS: tuple[str, ...] = ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")


def rewardbench(verdicts: Sequence[Verdict], chosen: Sequence[str], subsets: Sequence[str], kind: str,
                example_counts: dict[str, int], sections: dict[str, Sequence[str]]) -> dict[str, Any]:
    """Subset accuracies (mean of the per-pair results), count-weighted sections, and two scores.

    ``score`` is the mean of the four sections: the number the run scripts' sections give, and the
    paper table's score when no prior set is in the run. ``score_with_prior_sets`` is the paper
    table's (``analysis/get_benchmark_results.py`` @ 0972ad3, ``get_average_over_rewardbench``):
    the four sections weighted 2 and the prior sets weighted 1 (the column "Prior Sets (0.5
    weight)": the mean of the present ones of anthropic_helpful, anthropic_hhh, shp, summarize);
    ``None`` when none of them was run. mmrm's headline is ``score``, because RewardBench's filtered
    split (what ``rewardbench`` loads by default) has no prior sets, and with them absent the two
    formulas agree."""
    res = rewardbench_results(verdicts, chosen, kind)
    sub: dict[str, list[float]] = {}
    for r, s in zip(res, subsets):
        sub.setdefault(s, []).append(r)
    sub_acc = {s: sum(v) / len(v) for s, v in sub.items()}
    sec = rewardbench_sections(sub_acc, example_counts, sections)
    empty = [s for s, subs in sections.items() if not any(x in sub_acc for x in subs)]
    prior = [sub_acc[s] for s in REWARDBENCH_PRIOR_SETS if s in sub_acc]
    prior_mean = float(np.mean(prior)) if prior else None
    with_prior = None if prior_mean is None else (2 * sum(sec.values()) + prior_mean) / (2 * len(sec) + 1)
    return {"subsets": sub_acc, "sections": sec, "score": float(np.mean(list(sec.values()))),
            "prior_sets": prior_mean, "score_with_prior_sets": with_prior,
            "empty_sections": empty, "tie_credit": 0.5 if kind == "judge" else 0.0}


# --------------------------------------------------------------------------------------------------
# MMRB2


def mmrb2(judgements: Sequence[Sequence[Verdict]], chosen: Sequence[str], categories: Sequence[str]) -> dict[str, Any]:
    """``compute_task_accuracy``: every judgement of a pair (its forward and reverse order) that is
    present counts, right when it names the chosen response; a pair's missing judgement (an invalid
    result) leaves the denominator, a tie stays in it as wrong. Per task ``correct / evaluated``
    (0 when nothing was evaluated); overall pooled over the tasks (``evaluate_all_tasks``)."""
    correct: dict[str, int] = {}
    evaluated: dict[str, int] = {}
    for js, c, cat in zip(judgements, chosen, categories):
        correct.setdefault(cat, 0)
        evaluated.setdefault(cat, 0)
        for j in js:
            if j is None:
                continue
            evaluated[cat] += 1
            correct[cat] += int(j == c)
    tasks = {t: {"accuracy": correct[t] / evaluated[t] if evaluated[t] else 0.0, "correct": correct[t],
                 "evaluated": evaluated[t]} for t in correct}
    tc, te = sum(correct.values()), sum(evaluated.values())
    return {"accuracy": tc / te if te else 0.0, "tasks": tasks, "evaluated": te}


# --------------------------------------------------------------------------------------------------
# MJ-Bench


def mj_bench(verdicts: Sequence[Verdict], chosen: Sequence[str], categories: Sequence[str],
             subsets: Sequence[str | None]) -> dict[str, Any]:
    """Accuracy without ties (pairs whose prediction is a tie leave the denominator) and with ties
    (they stay, as wrong). An answer naming neither image is a tie (``get_pred`` returns 0.5), so
    an invalid result is a tie too. Per perspective (category), per subcategory, and pooled."""
    def accs(ix: list[int]) -> dict[str, Any]:
        names = [_names(verdicts[i], chosen[i]) for i in ix]
        r, t = names.count("right"), names.count("none")
        return {"n": len(ix), "ties": t, "accuracy_without_ties": _ratio(r, len(ix) - t),
                "accuracy_with_ties": _ratio(r, len(ix))}

    every = list(range(len(verdicts)))
    out = accs(every)
    out["categories"] = {c: accs([i for i in every if categories[i] == c]) for c in dict.fromkeys(categories)}
    subs = [s for s in dict.fromkeys(subsets) if s is not None]
    out["subsets"] = {s: accs([i for i in every if subsets[i] == s]) for s in subs}
    return out
