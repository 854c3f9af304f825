"""Reports: metrics from stored results, each benchmark's official numbers, markdown + HTML + plots.

:func:`build_report` reads records (from :class:`~mmrm.eval.store.ResultStore`) of ONE benchmark and
ONE scorer key and returns a JSON-safe dict; :func:`write_report` renders it to ``report.md``,
``report.html``, ``report.json`` and three PNG plots (per-category accuracy with 95% intervals,
reliability diagram, score histograms of chosen vs rejected). Metric definitions: :mod:`mmrm.eval.metrics`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mmrm.eval import metrics as M
from mmrm.eval import official as O
from mmrm.eval.loaders import REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS

__all__ = ["build_report", "headline_rows", "write_report"]

VLRB_CATEGORIES = ("general", "hallucination", "reasoning")
PLACEHOLDER_NOTE = ("{n} of {total} pairs were scored with GENERATED PLACEHOLDER images in place of missing media; "
                    "these numbers exercise the pipeline and do not measure the benchmark.")


def _interval(stat: Any, n: int, *, strata: Sequence[Any] | None = None, n_resamples: int, seed: int) -> list[float]:
    lo, hi = M.bootstrap_ci(stat, n, strata=strata, n_resamples=n_resamples, seed=seed)
    return [lo, hi]


def _metric(value: float | None, ci: list[float] | None = None, n: int | None = None) -> dict[str, Any]:
    return {"value": value, "ci": ci, "n": n}


def build_report(
    records: Sequence[dict[str, Any]],
    *,
    items: Sequence[Any] | None = None,
    benchmark: str | None = None,
    scorer_key: str | None = None,
    n_items: int | None = None,
    scorer: dict[str, Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of one (benchmark, scorer key) from its records (see :mod:`mmrm.eval.metrics`).

    With ``items`` (the run's :class:`~mmrm.eval.items.EvalItem` list) only their pairs are reported,
    scored in their current presentation order, and their categories, groups and file positions
    come from the items (the loader's), not from when the records were written.
    """
    recs = [r for r in records if (benchmark is None or r["benchmark"] == benchmark)
            and (scorer_key is None or r["scorer_key"] == scorer_key)]
    if items is not None:
        by_key = {(it.benchmark, it.key): it for it in items}
        fresh = []
        for r in recs:
            it = by_key.get((r["benchmark"], r["pair_key"]))
            if it is not None and it.chosen == r["chosen"]:
                fresh.append({**r, "category": it.category, "subset": it.subset, "group": it.group, "index": it.index,
                              "meta": it.meta})
        recs = fresh
        if n_items is None:
            n_items = len(items)
    if not recs:
        raise ValueError(f"no results for benchmark={benchmark!r} scorer_key={scorer_key!r}")
    benches, keys = {r["benchmark"] for r in recs}, {r["scorer_key"] for r in recs}
    if len(benches) > 1 or len(keys) > 1:
        raise ValueError(f"one benchmark and scorer per report; got {sorted(benches)} / {sorted(keys)}: pass benchmark= and scorer_key=")
    bench = benches.pop()
    orig = sorted((r for r in recs if r["variant"] == "original"), key=lambda r: (r["index"], r["pair_key"]))
    blank = {r["pair_key"]: r for r in recs if r["variant"] == "blank"}
    if not orig:
        raise ValueError("no original-variant results to report")
    n = len(orig)
    verdicts = [r["verdict"] for r in orig]
    chosen = [r["chosen"] for r in orig]
    cats = [r["category"] for r in orig]
    correct = M.correct_of(verdicts, chosen)
    kind = orig[0].get("scorer_kind", "reward_model")

    def acc_stat(ix: np.ndarray) -> float:
        return float(correct[ix].mean())

    rep: dict[str, Any] = {
        "benchmark": bench,
        "scorer_key": orig[0]["scorer_key"],
        "scorer": scorer or {"name": orig[0].get("scorer"), "kind": kind, "key": orig[0]["scorer_key"]},
        "n_pairs": n,
        "n_items_expected": n_items,
        "complete": None if n_items is None else n >= n_items,
        "bootstrap": {"resamples": n_resamples, "seed": seed, "level": 0.95},
    }
    n_ph = sum(bool(r.get("placeholder")) for r in orig)
    rep["placeholder_pairs"] = n_ph
    rep["placeholder_note"] = PLACEHOLDER_NOTE.format(n=n_ph, total=n) if n_ph else None

    m: dict[str, Any] = {}
    m["accuracy"] = _metric(M.accuracy(correct), _interval(acc_stat, n, n_resamples=n_resamples, seed=seed), n)
    per = M.per_category(correct, cats)
    cat_arr = np.asarray(cats)
    m["per_category"] = []
    for c, (k, a) in sorted(per.items()):
        idx = np.flatnonzero(cat_arr == c)
        sub = correct[idx]
        ci = _interval(lambda ix, sub=sub: float(sub[ix].mean()), k, n_resamples=n_resamples, seed=seed)
        m["per_category"].append({"category": c, "n": k, "accuracy": a, "ci": ci})
    if len(per) > 1:
        m["macro_accuracy"] = _metric(
            M.macro_accuracy(correct, cats),
            _interval(lambda ix: M.macro_accuracy(correct[ix], cat_arr[ix]), n, strata=cats, n_resamples=n_resamples, seed=seed),
            n,
        )
    groups = [r.get("group") for r in orig]
    if any(g is not None for g in groups):
        gs = [g if g is not None else f"__pair_{i}" for i, g in enumerate(groups)]
        per_group = np.array(list(M.group_all_correct(correct, gs).values()), dtype=float)
        m["acc_plus"] = _metric(float(per_group.mean()),
                                _interval(lambda ix: float(per_group[ix].mean()), len(per_group), n_resamples=n_resamples, seed=seed),
                                len(per_group))
    valid = [v is not None for v in verdicts]
    m["invalid_rate"] = 1.0 - float(np.mean(valid))
    m["tie_rate"] = M.tie_rate(verdicts)
    m["swap_consistency"] = M.swap_consistency([r.get("orders_agree") for r in orig])
    p_chosen = [(r["prob_a_wins"] if r["chosen"] == "a" else 1.0 - r["prob_a_wins"])
                for r in orig if r["verdict"] is not None and r["prob_a_wins"] is not None]
    m["calibration"] = M.calibration(p_chosen)
    len_c = [r["len_a"] if r["chosen"] == "a" else r["len_b"] for r in orig]
    len_r = [r["len_b"] if r["chosen"] == "a" else r["len_a"] for r in orig]
    m["length_bias"] = M.length_bias(len_c, len_r, verdicts, chosen)
    if blank:
        both = [r for r in orig if r["pair_key"] in blank]
        pc = [None if r["prob_a_wins"] is None else (r["prob_a_wins"] if r["chosen"] == "a" else 1 - r["prob_a_wins"]) for r in both]
        bb = [blank[r["pair_key"]] for r in both]
        pb = [None if b["prob_a_wins"] is None else (b["prob_a_wins"] if b["chosen"] == "a" else 1 - b["prob_a_wins"]) for b in bb]
        m["image_reliance"] = M.image_reliance([r["verdict"] for r in both], [b["verdict"] for b in bb],
                                               [r["chosen"] for r in both], pc, pb)
    else:
        m["image_reliance"] = None
    rewards_c = [r["reward_a"] if r["chosen"] == "a" else r["reward_b"] for r in orig if r.get("reward_a") is not None]
    rewards_r = [r["reward_b"] if r["chosen"] == "a" else r["reward_a"] for r in orig if r.get("reward_a") is not None]
    rep["scores"] = {"reward_chosen": rewards_c, "reward_rejected": rewards_r, "p_chosen": p_chosen}
    rep["metrics"] = m
    rep["official"] = _official(bench, orig, verdicts, chosen, cats, groups, kind)
    return _json_safe(rep)


def _judgements(r: dict[str, Any]) -> list[Any]:
    """A result's judgements as MMRB2's script counts them: one per presentation order a judge
    answered in (its per-order verdicts, in the frame of the pair as shown), else the verdict for
    both orders (an order-blind scorer answers both alike); none for an invalid result."""
    if r["verdict"] is None:
        return []
    per_order = (((r.get("result") or {}).get("details") or {}).get("per_order")) or []
    got = [{"A": "a", "B": "b"}.get(str(o.get("verdict")), "tie") for o in per_order if o.get("verdict") is not None]
    return got or [r["verdict"], r["verdict"]]


def _official(bench: str, orig: list[dict[str, Any]], verdicts: list[Any], chosen: list[str], cats: list[str],
              groups: list[Any], kind: str) -> dict[str, Any]:
    """The numbers each benchmark's own scoring script reports (definitions: :mod:`mmrm.eval.official`),
    with mmrm's strict accuracy beside them under its own name."""
    out: dict[str, Any] = {"script": O.OFFICIAL_SOURCES.get(bench, "generic: pooled accuracy (a tie or invalid is wrong)"),
                           "strict": O.strict(verdicts, chosen, cats)}
    if bench == "vl-rewardbench":
        out.update(O.vl_rewardbench(verdicts, chosen, cats, dedupe=[(r.get("meta") or {}).get("cal_key") or r["pair_key"]
                                                                    for r in orig]))
    elif bench == "mm-rlhf-rewardbench":
        out.update(O.mm_rlhf_rewardbench(verdicts, chosen, cats, [g if g is not None else r["pair_key"]
                                                                  for g, r in zip(groups, orig)]))
    elif bench == "multimodal-rewardbench":
        out.update(O.multimodal_rewardbench(verdicts, chosen, cats))
    elif bench == "rewardbench":
        out.update(O.rewardbench(verdicts, chosen, [r.get("subset") or "?" for r in orig], kind,
                                 REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS))
    elif bench == "mmrb2":
        out.update(O.mmrb2([_judgements(r) for r in orig], chosen, cats))
    elif bench == "mj-bench":
        out.update(O.mj_bench(verdicts, chosen, cats, [r.get("subset") for r in orig]))
    else:
        out["accuracy"] = out["strict"]["accuracy"]
    return out


#: (label, key in the official dict) of each benchmark's official headline numbers.
_OFFICIAL_HEADLINES: dict[str, list[tuple[str, str]]] = {
    "vl-rewardbench": [("official overall accuracy (cal.py: unparsed pairs leave the denominator)", "overall_accuracy"),
                       ("official macro accuracy (cal.py: mean of the three categories)", "macro_accuracy")],
    "mm-rlhf-rewardbench": [("official Acc (reward(chosen) > reward(rejected))", "accuracy"),
                            ("official Acc+ (every pair of an id right)", "acc_plus")],
    "multimodal-rewardbench": [("official accuracy (no winner named: seeded coin)", "accuracy")],
    "rewardbench": [("official RewardBench score (mean of the four sections)", "score"),
                    ("official score with prior sets (paper table: sections x2, prior sets x1)", "score_with_prior_sets")],
    "mmrb2": [("official accuracy (both orders; missing judgements leave the denominator)", "accuracy")],
    "mj-bench": [("official accuracy without ties (ties leave the denominator)", "accuracy_without_ties"),
                 ("official accuracy with ties (ties count wrong)", "accuracy_with_ties")],
}


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------------
# Rendering


def _f(x: Any, pct: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.4f}"


def _ci(ci: Any) -> str:
    return "" if not ci or ci[0] is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def headline_rows(rep: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value, 95% interval) rows for the console table and the report."""
    m, o = rep["metrics"], rep["official"]
    rows = [(label, _f(o.get(k)), "") for label, k in _OFFICIAL_HEADLINES.get(rep["benchmark"], [])]
    if rep["benchmark"] == "rewardbench":
        rows += [(f"official RewardBench {s} (example-weighted; empty = 0)", _f(v), "") for s, v in o["sections"].items()]
    rows.append(("strict accuracy (tie/invalid = wrong)", _f(m["accuracy"]["value"]), _ci(m["accuracy"]["ci"])))
    if m.get("macro_accuracy"):
        rows.append(("strict macro accuracy (mean over categories)", _f(m["macro_accuracy"]["value"]), _ci(m["macro_accuracy"]["ci"])))
    if m.get("acc_plus"):
        rows.append(("strict Acc+ (all pairs of a prompt group right)", _f(m["acc_plus"]["value"]), _ci(m["acc_plus"]["ci"])))
    rows.append(("invalid rate", _f(m["invalid_rate"]), ""))
    rows.append(("tie rate", _f(m["tie_rate"]), ""))
    if m.get("swap_consistency") is not None:
        rows.append(("swap consistency (both orders agree)", _f(m["swap_consistency"]), ""))
    what = "sigmoid(r_chosen - r_rejected)" if rep["scorer"].get("kind") == "reward_model" else "P(chosen wins)"
    rows.append((f"ECE of {what}", _f(m["calibration"]["ece"], pct=False), ""))
    lb = m["length_bias"]
    rows.append(("longer response wins: scorer / human", f"{_f(lb['scorer_longer_rate'])} / {_f(lb['human_longer_rate'])}", ""))
    ir = m.get("image_reliance")
    if ir and ir.get("n"):
        rows.append(("image reliance: verdict flips with images blanked", _f(ir["flip_rate"]), ""))
        rows.append(("accuracy with images blanked", _f(ir["accuracy_blank"]), ""))
    return rows


def _plots(rep: dict[str, Any], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    m = rep["metrics"]
    title = f"{rep['benchmark']} - {rep['scorer'].get('name')}"

    # per-category accuracy with 95% intervals
    cats = m["per_category"]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(cats) + 1.8))
    names = [f"{c['category']} (n={c['n']})" for c in cats]
    acc = np.array([c["accuracy"] for c in cats])
    lo = np.array([c["ci"][0] if c["ci"][0] is not None else c["accuracy"] for c in cats])
    hi = np.array([c["ci"][1] if c["ci"][1] is not None else c["accuracy"] for c in cats])
    y = np.arange(len(cats))
    ax.barh(y, acc, color="#4C72B0", xerr=[acc - lo, hi - acc], capsize=4)
    ax.axvline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.axvline(m["accuracy"]["value"], color="#C44E52", lw=1.5, label=f"overall {100 * m['accuracy']['value']:.1f}%")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% bootstrap interval)")
    ax.set_title(title, fontsize=10)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / fig.get_size_inches()[1], 1, 1))
    fig.savefig(out / "per_category.png", dpi=110)
    plt.close(fig)
    files["per_category"] = "per_category.png"

    # reliability diagram
    cal = m["calibration"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5.2, 6.0), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    bins = [b for b in cal["bins"] if b["n"]]
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    if bins:
        ax.plot([b["mean_p"] for b in bins], [b["frac_pos"] for b in bins], "o-", color="#4C72B0", label="scorer")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"reliability of P(chosen wins), ECE = {cal['ece']:.3f}" if cal["ece"] is not None else "reliability", fontsize=10)
    ax.legend(fontsize=8)
    centers = [(b["lo"] + b["hi"]) / 2 for b in cal["bins"]]
    ax2.bar(centers, [b["n"] for b in cal["bins"]], width=0.09, color="#8C8C8C")
    ax2.set_xlabel("predicted probability (each pair as (p, 1) and (1 - p, 0))")
    ax2.set_ylabel("count")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)
    files["reliability"] = "reliability.png"

    # score histograms
    sc = rep["scores"]
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    if sc["reward_chosen"]:
        allv = np.array(sc["reward_chosen"] + sc["reward_rejected"])
        edges = np.linspace(allv.min(), allv.max(), 31) if allv.max() > allv.min() else 30
        ax.hist(sc["reward_chosen"], bins=edges, alpha=0.6, label="chosen", color="#55A868")
        ax.hist(sc["reward_rejected"], bins=edges, alpha=0.6, label="rejected", color="#C44E52")
        ax.set_xlabel("reward")
    else:
        ax.hist(sc["p_chosen"], bins=np.linspace(0, 1, 21), color="#4C72B0", label="P(chosen wins)")
        ax.set_xlabel("P(chosen wins)")
    ax.set_ylabel("pairs")
    ax.set_title(f"score distributions - {title}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "score_hist.png", dpi=110)
    plt.close(fig)
    files["score_hist"] = "score_hist.png"
    return files


def _markdown(rep: dict[str, Any], files: dict[str, str], command: str | None) -> str:
    m, sc = rep["metrics"], rep["scorer"]
    lines = [f"# mmrm eval: {rep['benchmark']}", ""]
    if rep.get("placeholder_note"):
        lines += [f"> **Warning:** {rep['placeholder_note']}", ""]
    lines += [f"Scorer: `{sc.get('name')}` ({sc.get('kind')}), scorer key `{rep['scorer_key']}`"
              + (f", checkpoint fingerprint `{sc['fingerprint']}`" if sc.get("fingerprint") else "") + ".",
              f"Pairs scored: {rep['n_pairs']}" + (f" of {rep['n_items_expected']}" if rep.get("n_items_expected") else "")
              + f". Intervals: 95% percentile bootstrap, {rep['bootstrap']['resamples']} resamples, seed {rep['bootstrap']['seed']}.", ""]
    if command:
        lines += ["Reproduce:", "", "```bash", command, "```", ""]
    lines += ["| metric | value | 95% interval |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in headline_rows(rep)]
    lines += ["", "## Per category", "", "| category | n | accuracy | 95% interval |", "|---|---|---|---|"]
    lines += [f"| {c['category']} | {c['n']} | {_f(c['accuracy'])} | {_ci(c['ci'])} |" for c in m["per_category"]]
    lines += ["", f"![per-category accuracy]({files['per_category']})", ""]
    o = rep["official"]
    lines += ["## Official scoring", "", o["script"] + ".", "", "```json", json.dumps({k: v for k, v in o.items() if k != "script"}, indent=1), "```", ""]
    cal = m["calibration"]
    lines += ["## Calibration", "",
              f"Reliability of P(chosen wins) = sigmoid(r_chosen - r_rejected), each pair counted as (p, 1) and (1 - p, 0); "
              f"ECE = {_f(cal['ece'], pct=False)} over {cal['n']} valid pairs.", "",
              f"![reliability diagram]({files['reliability']})", ""]
    lb = m["length_bias"]
    lines += ["## Length bias", "",
              f"Over {lb['n']} pairs of unequal length ({lb['n_equal_length']} equal, left out): the longer response is the "
              f"human choice in {_f(lb['human_longer_rate'])} and the scorer's choice in {_f(lb['scorer_longer_rate'])}. "
              f"Accuracy when the chosen response is the longer: {_f(lb['accuracy_chosen_longer'])} (n={lb['n_chosen_longer']}); "
              f"the shorter: {_f(lb['accuracy_chosen_shorter'])} (n={lb['n_chosen_shorter']}).", ""]
    ir = m.get("image_reliance")
    lines += ["## Image reliance", ""]
    if ir and ir.get("n"):
        lines += [f"Every pair with media scored again with its images replaced by uniform grey images of the same size "
                  f"({ir['n']} pairs): the verdict changes for {_f(ir['flip_rate'])}; accuracy {_f(ir['accuracy_with_images'])} with "
                  f"images, {_f(ir['accuracy_blank'])} blanked; mean |delta P(chosen)| = {_f(ir['mean_abs_delta_p'], pct=False)}. "
                  "A scorer that ignores the image would flip almost nothing and keep its accuracy blind.", ""]
    else:
        lines += ["Not measured (run with `--blank-images`; text-only benchmarks have nothing to blank).", ""]
    lines += ["## Score distributions", "", f"![score histograms]({files['score_hist']})", "",
              "Metric definitions: `mmrm.eval.metrics` (module docstring).", ""]
    return "\n".join(lines)


def _html(rep: dict[str, Any], md_files: dict[str, str], command: str | None) -> str:
    e = html.escape
    m = rep["metrics"]
    rows = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in headline_rows(rep))
    cats = "".join(f"<tr><td>{e(c['category'])}</td><td>{c['n']}</td><td>{_f(c['accuracy'])}</td><td>{_ci(c['ci'])}</td></tr>"
                   for c in m["per_category"])
    warn = f"<p class='warn'><b>Warning:</b> {e(rep['placeholder_note'])}</p>" if rep.get("placeholder_note") else ""
    cmd = f"<pre>{e(command)}</pre>" if command else ""
    imgs = "".join(f"<figure><img src='{e(f)}' alt='{e(k)}'><figcaption>{e(k)}</figcaption></figure>" for k, f in md_files.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mmrm eval: {e(rep['benchmark'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px}}
.warn{{background:#fff3cd;border:1px solid #e0c36a;padding:.6em}}figure{{display:inline-block;margin:.5em}}
img{{max-width:460px}}pre{{background:#f4f4f4;padding:.6em;overflow-x:auto}}</style></head><body>
<h1>mmrm eval: {e(rep['benchmark'])}</h1>{warn}
<p>Scorer <code>{e(str(rep['scorer'].get('name')))}</code> ({e(str(rep['scorer'].get('kind')))}), key <code>{e(rep['scorer_key'])}</code>;
{rep['n_pairs']} pairs; 95% percentile bootstrap intervals ({rep['bootstrap']['resamples']} resamples).</p>{cmd}
<table><tr><th>metric</th><th>value</th><th>95% interval</th></tr>{rows}</table>
<h2>Per category</h2><table><tr><th>category</th><th>n</th><th>accuracy</th><th>95% interval</th></tr>{cats}</table>
<h2>Plots</h2>{imgs}
<h2>Official scoring</h2><p>{e(rep['official']['script'])}</p>
<pre>{e(json.dumps({k: v for k, v in rep['official'].items() if k != 'script'}, indent=1))}</pre>
<h2>All metrics</h2><pre>{e(json.dumps(m, indent=1))}</pre>
</body></html>
"""


def write_report(rep: dict[str, Any], out_dir: str | Path, *, command: str | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``report.json`` and the plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _plots(rep, out)
    (out / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    (out / "report.md").write_text(_markdown(rep, files, command))
    (out / "report.html").write_text(_html(rep, files, command))
    return {"markdown": out / "report.md", "html": out / "report.html", "json": out / "report.json",
            **{k: out / v for k, v in files.items()}}
