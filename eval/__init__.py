"""mmrm.eval: offline preference-accuracy evaluation of reward models and judges.

Loaders read published benchmark formats into :class:`EvalItem` (a :class:`~mmrm.rm.types.Pair`
plus the human label and categories); the runner scores them with any :class:`Scorer` (a reward
model in-process, a judge, or the HTTP service), in-process or on Ray Data, appending results to a
kill-safe :class:`ResultStore` so an interrupted run resumes where it stopped; :func:`build_report` /
:func:`write_report` compute the metrics (definitions in :mod:`mmrm.eval.metrics`) and the official
numbers of each benchmark, and write markdown + HTML with plots.

>>> from mmrm.eval import load_benchmark, RewardModelSpec, run_eval, ResultStore, build_report  # doctest: +SKIP
>>> items = load_benchmark("vl-rewardbench", "data.jsonl", media=MediaOptions(image_root="images/"))  # doctest: +SKIP
>>> run_eval(items, RewardModelSpec(checkpoint="runs/rm").build(), ResultStore("out/results.jsonl"))  # doctest: +SKIP
>>> build_report(ResultStore("out/results.jsonl").records(), items=items)["official"]  # doctest: +SKIP

Nothing here imports torch until a scorer is built.
"""

from mmrm.eval.items import EvalItem
from mmrm.eval.loaders import LOADERS, MediaOptions, MissingMedia, load_benchmark
from mmrm.eval.report import build_report, write_report
from mmrm.eval.runner import RunStats, run_eval, run_eval_ray
from mmrm.eval.scorers import (
    JudgeScorer,
    JudgeSpec,
    RewardModelScorer,
    RewardModelSpec,
    Scorer,
    ServiceScorer,
    ServiceSpec,
)
from mmrm.eval.store import ResultStore

__all__ = [
    "LOADERS",
    "EvalItem",
    "JudgeScorer",
    "JudgeSpec",
    "MediaOptions",
    "MissingMedia",
    "ResultStore",
    "RewardModelScorer",
    "RewardModelSpec",
    "RunStats",
    "Scorer",
    "ServiceScorer",
    "ServiceSpec",
    "build_report",
    "load_benchmark",
    "run_eval",
    "run_eval_ray",
    "write_report",
]
