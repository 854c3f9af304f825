"""mmrm.eval: offline preference-accuracy evaluation of reward models and judges.

Loaders read published benchmark formats into :class:`EvalItem` (a :class:`~mmrm.rm.types.Pair`
plus the human label and categories); the runner scores them with any :class:`~mmrm.rm.scorer.Scorer`
(a reward model in-process, a judge, a panel, or a served model or judge through
:class:`~mmrm.client.RemoteScorer`), in-process or on Ray Data, appending results to a
kill-safe :class:`ResultStore` so an interrupted run resumes where it stopped; :func:`build_report` /
:func:`write_report` compute the metrics (definitions in :mod:`mmrm.eval.metrics`) and the official
numbers of each benchmark (exactly as its own script computes them: :mod:`mmrm.eval.official`), and
write markdown + HTML with plots.

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
from mmrm.eval.scorers import JudgeSpec, RewardModelSpec, Scorer, ServiceSpec, describe_scorer, scorer_key
from mmrm.eval.store import ResultStore

__all__ = [
    "LOADERS",
    "EvalItem",
    "JudgeSpec",
    "MediaOptions",
    "MissingMedia",
    "ResultStore",
    "RewardModelSpec",
    "RunStats",
    "Scorer",
    "ServiceSpec",
    "build_report",
    "describe_scorer",
    "load_benchmark",
    "run_eval",
    "run_eval_ray",
    "scorer_key",
    "write_report",
]
