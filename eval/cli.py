"""``mmrm eval``: score a preference benchmark with a reward model, a judge, or a served model;
resumable; prints a table and writes a markdown + HTML report with plots.

    mmrm eval run preference .mmrm-demo/data/eval.jsonl --checkpoint .mmrm-demo/model --out docs/eval-example --blank-images
    mmrm eval run vl-rewardbench data.jsonl --url http://127.0.0.1:8000 --model rm --image-root images/
    mmrm eval run multimodal-rewardbench data/all_data.json --judge-rubric helpfulness --judge-model path/to/Qwen2.5-VL
    mmrm eval run mmrb2 t2i/test-00000-of-00001.parquet --url http://127.0.0.1:8000 --judge pairwise
    mmrm eval run mj-bench safety.parquet --perspective safety --checkpoint runs/rm
    mmrm eval report eval-out/results.jsonl --benchmark vl-rewardbench --out eval-out/
    mmrm eval list
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Offline preference-accuracy evaluation on benchmarks (resumable, with reports).")
console = Console(stderr=True)


def _fail(e: Exception) -> None:
    # Messages name fields in brackets ("... [row 3.ranking]", pydantic's "[type=...]"): escaped, or
    # rich reads them as markup tags and drops them. soft_wrap: a long field path is never broken.
    console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
    raise typer.Exit(2)


def _command_line(ctx: typer.Context) -> str:
    """This command as a user would type it (from the parsed parameters, so it reads the same
    whether it came from ``mmrm eval`` or ``python -m mmrm.eval.cli``)."""
    parts = ["mmrm", "eval", ctx.info_name or ""]
    for p in ctx.command.params:
        v = ctx.params.get(p.name or "")
        if p.param_type_name == "argument":
            parts.append(shlex.quote(str(v)))
        elif p.param_type_name == "option" and v is not None and v != p.default and v != []:
            if getattr(p, "is_flag", False):
                names = p.opts if v else p.secondary_opts
                if names:
                    parts.append(names[0])
            else:
                parts += [p.opts[0], shlex.quote(str(v))]
    return " ".join(parts)


def _print_table(rep: dict[str, Any]) -> None:
    from mmrm.eval.report import headline_rows
    from rich.table import Table

    t = Table(title=f"{rep['benchmark']}: {rep['scorer'].get('name')} ({rep['n_pairs']} pairs)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("95% interval", justify="right")
    for row in headline_rows(rep):
        t.add_row(*row)
    console.print(t)
    c = Table(title="per category")
    for col in ("category", "n", "accuracy", "95% interval"):
        c.add_column(col)
    for cat in rep["metrics"]["per_category"]:
        lo, hi = cat["ci"]
        c.add_row(cat["category"], str(cat["n"]), f"{100 * cat['accuracy']:.1f}%",
                  "" if lo is None else f"[{100 * lo:.1f}, {100 * hi:.1f}]")
    console.print(c)
    if rep.get("placeholder_note"):
        console.print(f"[yellow]warning:[/yellow] {escape(rep['placeholder_note'])}")


@app.command("list")
def list_benchmarks() -> None:
    """List the benchmark loaders."""
    from mmrm.eval.loaders import LOADERS

    for name, fn in LOADERS.items():
        typer.echo(f"{name:24s} {(fn.__doc__ or '').strip().splitlines()[0]}")


@app.command()
def run(
    ctx: typer.Context,
    benchmark: str = typer.Argument(..., help="vl-rewardbench, mm-rlhf-rewardbench, multimodal-rewardbench, rewardbench, mmrb2, mj-bench, preference"),
    data: Path = typer.Argument(..., help="The benchmark file (JSONL, JSON array, Parquet) or a saved datasets folder."),
    checkpoint: Optional[Path] = typer.Option(None, help="Score with this reward checkpoint, in-process."),
    url: Optional[str] = typer.Option(None, help="Score with an mmrm service at this URL (with --model or --judge)."),
    model: Optional[str] = typer.Option(None, help="Served reward model name (with --url)."),
    judge: Optional[str] = typer.Option(None, help="Served judge name (with --url)."),
    rubric: Optional[str] = typer.Option(None, help="Rubric for a served judge (with --url --judge)."),
    judge_rubric: Optional[str] = typer.Option(None, help="Run a judge in-process with this rubric."),
    judge_model: Optional[str] = typer.Option(None, help="The judge's checkpoint (hf) or served model name (openai)."),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible /v1 URL: the judge runs there."),
    judge_config: Optional[str] = typer.Option(None, help='JudgeOptions fields as JSON, e.g. \'{"min_label_mass": 0.2}\'.'),
    out: Path = typer.Option(Path("eval-out"), help="Report folder (results go to OUT/results.jsonl unless --results)."),
    results: Optional[Path] = typer.Option(None, help="Results file (append-only; a rerun resumes it)."),
    image_root: Optional[Path] = typer.Option(None, help="Folder the benchmark's media paths are relative to (default: the data file's)."),
    placeholder_images: bool = typer.Option(False, "--placeholder-images", help="Score missing media with generated placeholders (results are marked)."),
    inline_media: bool = typer.Option(False, "--inline-media", help="Send local media as data URIs (for --url)."),
    order: Optional[str] = typer.Option(None, help="Presentation order: random, chosen_first, swapped, as_stored (default: the loader's)."),
    seed: int = typer.Option(0, help="Seed of the random presentation order."),
    limit: Optional[int] = typer.Option(None, help="Only the first N pairs (no media of later rows is read)."),
    task: Optional[str] = typer.Option(None, help="mmrb2: the task (t2i, edit, interleaved, reasoning; default: from the path)."),
    perspective: Optional[str] = typer.Option(None, help="mj-bench: the perspective (alignment, safety, quality, bias; default: the rows' category or the path)."),
    batch_size: int = typer.Option(16, help="Pairs per scoring call (and per fsync-ed write)."),
    blank_images: bool = typer.Option(False, "--blank-images", help="Also score every pair with its images blanked (image reliance)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda[:N] (in-process scorers)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    use_ray: bool = typer.Option(False, "--ray", help="Run on Ray Data with an actor pool (ray.init(address='auto') or local)."),
    num_actors: int = typer.Option(1, help="Ray actors (one model each)."),
    gpus_per_actor: float = typer.Option(0.0, help="GPUs per Ray actor (1: one model per GPU)."),
    resamples: int = typer.Option(1000, help="Bootstrap resamples for the intervals."),
    summary_json: Optional[Path] = typer.Option(None, help="Also write this run's statistics (pairs scored, forward passes) as JSON."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the report after scoring."),
) -> None:
    """Score BENCHMARK's pairs that the results file lacks, then report (resumable after any kill)."""
    from mmrm.eval.loaders import MediaOptions, load_benchmark
    from mmrm.eval.report import build_report, write_report
    from mmrm.eval.runner import run_eval, run_eval_ray
    from mmrm.eval.scorers import JudgeSpec, RewardModelSpec, ServiceSpec, describe_scorer, scorer_key
    from mmrm.eval.store import ResultStore
    from mmrm.rm.errors import MmrmError
    from mmrm.rm.media import MediaPolicy
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    chosen_kinds = [checkpoint is not None, url is not None, judge_rubric is not None]
    if sum(chosen_kinds) != 1:
        _fail(ValueError("give exactly one scorer: --checkpoint, --url (with --model or --judge), or --judge-rubric"))
    root = (image_root or (data if data.is_dir() else data.parent)).resolve()
    try:
        media = MediaOptions(image_root=image_root, missing="placeholder" if placeholder_images else "refuse", inline=inline_media)
        kw: dict[str, Any] = {"media": media, "seed": seed, "limit": limit}
        if order is not None:
            kw["order"] = order
        for name, value, owner in (("task", task, "mmrb2"), ("perspective", perspective, "mj-bench")):
            if value is not None:
                if benchmark != owner:
                    raise ValueError(f"--{name} is an option of {owner}, not of {benchmark}")
                kw[name] = value
        items = load_benchmark(benchmark, data, **kw)
        spec: Any
        if checkpoint is not None:
            spec = RewardModelSpec(checkpoint=checkpoint, device=device, dtype=dtype, media_roots=[root])  # type: ignore[arg-type]
        elif url is not None:
            spec = ServiceSpec(base_url=url, model=model, judge=judge, rubric=rubric)
            if (model is None) == (judge is None):
                raise ValueError("with --url give exactly one of --model and --judge")
        else:
            if judge_model is None:
                raise ValueError("--judge-rubric needs --judge-model")
            spec = JudgeSpec(rubric=judge_rubric, backend="openai" if judge_base_url else "hf", model=judge_model,
                             base_url=judge_base_url, device=device, dtype=dtype, media_roots=[root],
                             config=json.loads(judge_config) if judge_config else {})
    except (MmrmError, ValueError) as e:  # json.JSONDecodeError and pydantic errors are ValueErrors
        _fail(e)
    n_ph = sum(it.uses_placeholders for it in items)
    if n_ph:
        console.print(f"[yellow]warning:[/yellow] {n_ph} of {len(items)} pairs use generated placeholder media; "
                      "their results are marked and do not measure the benchmark")
    store = ResultStore(results or out / "results.jsonl")
    variants = ("original", "blank") if blank_images else ("original",)
    with Progress(TextColumn(f"[bold]{benchmark}[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("pairs"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("score", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            if use_ray:
                import ray

                if not ray.is_initialized():
                    ray.init(address="auto" if _ray_cluster_running() else None, log_to_driver=False)
                stats = run_eval_ray(items, spec, store, variants=variants, batch_size=batch_size, num_actors=num_actors,
                                     num_gpus_per_actor=gpus_per_actor, progress=on_progress)
                scorer_info = {"name": getattr(spec, "model", None) or str(getattr(spec, "checkpoint", "")), "key": stats.scorer_key}
            elif _nothing_to_do(spec, items, store, variants):
                stats = run_eval(items, _StoredOnly(spec), store, key=spec.key(), variants=variants,
                                 progress=on_progress)  # no model load
                scorer_info = spec.describe()
            else:
                scorer = spec.build()
                key = scorer_key(scorer)
                stats = run_eval(items, scorer, store, key=key, variants=variants, batch_size=batch_size,
                                 media_policy=MediaPolicy(allowed_roots=[root]), progress=on_progress)
                scorer_info = describe_scorer(scorer, key)
        except MmrmError as e:
            _fail(e)
    console.print(f"scored {stats.scored} new (pair, variant) results, {stats.already_done} already stored; "
                  f"{stats.invalid} invalid; {stats.seconds:.1f} s"
                  + (f"; {stats.forward_calls} forward passes" if stats.forward_calls is not None else "")
                  + (f"; repaired a torn tail of {stats.repaired_bytes} bytes" if stats.repaired_bytes else ""))
    if summary_json is not None:
        summary_json.write_text(json.dumps(stats.to_dict(), indent=1) + "\n")
    if not report:
        return
    rep = build_report(store.records(benchmark=items[0].benchmark, scorer_key=stats.scorer_key), items=items,
                       scorer=scorer_info, n_resamples=resamples)
    files = write_report(rep, out, command=_command_line(ctx))
    _print_table(rep)
    console.print(f"report: {files['markdown']} and {files['html']}")


class _StoredOnly:
    """A scorer that is never called: every result is already stored under its spec's key."""

    def __init__(self, spec: Any) -> None:
        from mmrm.rm.types import Provenance

        d = spec.describe()
        self.provenance = Provenance(scorer=d["name"], kind=d["kind"], fingerprint=d["fingerprint"],
                                     engine=d["engine"], dtype=d["dtype"])
        self.forward_calls = 0

    def score(self, samples: Any, *, references: Any = None) -> Any:
        raise AssertionError("nothing should be left to score")

    compare = rank = score


def _nothing_to_do(spec: Any, items: Any, store: Any, variants: Any) -> bool:
    """True when the spec's key is known without loading it and every result is stored already."""
    from mmrm.eval.runner import plan
    from mmrm.eval.scorers import RewardModelSpec

    if not isinstance(spec, RewardModelSpec):
        return False
    todo, _ = plan(items, spec.key(), store.load()[0], variants)
    return not todo


def _ray_cluster_running() -> bool:
    import os

    return bool(os.environ.get("RAY_ADDRESS"))


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    results: Path = typer.Argument(..., help="A results file written by `mmrm eval run`."),
    benchmark: Optional[str] = typer.Option(None, help="Which benchmark (needed when the file holds several)."),
    scorer_key: Optional[str] = typer.Option(None, help="Which scorer (needed when the file holds several)."),
    out: Path = typer.Option(Path("eval-out"), help="Report folder."),
    resamples: int = typer.Option(1000, help="Bootstrap resamples."),
) -> None:
    """Rebuild the report from stored results (no scoring)."""
    from mmrm.eval.report import build_report, write_report
    from mmrm.eval.store import ResultStore

    store = ResultStore(results)
    try:
        rep = build_report(store.records(benchmark=benchmark, scorer_key=scorer_key), n_resamples=resamples)
    except ValueError as e:
        _fail(e)
    files = write_report(rep, out, command=_command_line(ctx))
    _print_table(rep)
    console.print(f"report: {files['markdown']} and {files['html']}")


if __name__ == "__main__":
    app()
