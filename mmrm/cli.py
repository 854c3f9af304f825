"""The ``mmrm`` command: build tiny models, train, score, and run the demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="mmrm: multimodal reward models and judges.")
console = Console(stderr=True)


def _fail(e: Exception) -> None:
    from rich.markup import escape

    # Messages carry field paths like items[0]; escape them so rich does not read them as markup.
    console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)  # a long field path stays one piece
    raise typer.Exit(2)


@app.command()
def tiny(
    arch: str = typer.Argument(..., help="qwen2, qwen2_vl, qwen2_5_vl or qwen3_vl"),
    out: Path = typer.Argument(..., help="Output checkpoint directory."),
    seed: int = typer.Option(0, help="Weights seed (same seed, same weights)."),
    size: str = typer.Option("tiny", help="tiny (tests) or small (~25M, benchmarks)."),
) -> None:
    """Build a tiny model of a real architecture locally (no network)."""
    from mmrm.rm.tiny import build_tiny_model

    if arch not in ("qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3_vl") or size not in ("tiny", "small"):
        _fail(ValueError(f"unknown arch/size {arch!r}/{size!r}"))
    path = build_tiny_model(arch, out, seed=seed, size=size)  # type: ignore[arg-type]
    typer.echo(str(path))


@app.command()
def train(config: Path = typer.Option(..., "--config", "-c", help="Training YAML (see mmrm.train.TrainConfig).")) -> None:
    """Train a reward model (Bradley-Terry), in-process or on Ray Train; resumes if stopped."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from mmrm.rm.errors import MmrmError
    from mmrm.train import TrainConfig, train as run_train

    try:
        cfg = TrainConfig.from_yaml(config)
    except (MmrmError, ValueError) as e:
        _fail(e)
    with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("train", total=None, info="")

        def on_step(rec: dict[str, float]) -> None:
            info = f"loss {rec['loss']:.4f}" + (f" acc {rec['eval_accuracy']:.3f}" if "eval_accuracy" in rec else "")
            progress.update(task, completed=int(rec["step"]), info=info)

        try:
            result = run_train(cfg, on_step=on_step)
        except MmrmError as e:
            _fail(e)
        progress.update(task, total=result.total_steps)
    table = Table(title="training summary")
    for k in ("checkpoint", "steps", "total_steps", "final_loss", "eval_accuracy", "seconds"):
        table.add_row(k, str(result.to_dict()[k]))
    console.print(table)


@app.command()
def score(
    checkpoint: Path = typer.Argument(..., help="Reward checkpoint directory."),
    input: Path = typer.Option(..., "--input", "-i", help="JSONL: {prompt, response} or {messages} per line; - for stdin."),
    media_root: list[Path] = typer.Option([], help="Folders local image paths may come from."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    max_length: Optional[int] = typer.Option(None, help="Longest input in tokens (default: the checkpoint's)."),
    truncation: Optional[str] = typer.Option(None, help="refuse or left (default: the checkpoint's)."),
    max_batch_size: int = typer.Option(32, help="Samples per forward pass."),
) -> None:
    """Score samples with a reward model; prints one JSON result per line."""
    from mmrm.rm.errors import MmrmError
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.options import ScoringOptions
    from mmrm.rm.reward_model import RewardModel
    from mmrm.rm.types import Sample

    lines = (sys.stdin.read() if str(input) == "-" else input.read_text()).splitlines()
    try:
        samples = []
        for i, line in enumerate(l for l in lines if l.strip()):
            row = json.loads(line)
            samples.append(Sample.from_messages(row["messages"]) if "messages" in row else Sample.model_validate(row))
        options = ScoringOptions(device=device, dtype=dtype, max_length=max_length, truncation=truncation,  # type: ignore[arg-type]
                                 max_batch_size=max_batch_size,
                                 media_policy=MediaPolicy(allowed_roots=[p.resolve() for p in media_root]))
        rm = RewardModel.from_pretrained(checkpoint, options=options)
    except (MmrmError, ValueError, KeyError) as e:
        _fail(e)
    for r in rm.score(samples):
        typer.echo(r.model_dump_json())


@app.command()
def serve(
    config: Path = typer.Argument(..., help="A Ray Serve config file whose mmrm app args follow mmrm.serve.config."),
    host: Optional[str] = typer.Option(None, help="Bind address (default: the file's, else 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default: the file's, else 8000)."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs of the embedded Ray (default: all)."),
) -> None:
    """Serve reward models and judges on an embedded single-node Ray (Ctrl-C drains and stops)."""
    from mmrm.rm.errors import MmrmError
    from mmrm.serve.run import serve_forever

    try:
        serve_forever(config, host=host, port=port, num_cpus=num_cpus)
    except MmrmError as e:
        _fail(e)


@app.command("vllm-view")
def vllm_view(
    checkpoint: Path = typer.Argument(..., help="An mmrm reward checkpoint (merged weights)."),
    dest: Path = typer.Argument(..., help="Directory to create: links to the backbone files only."),
) -> None:
    """Prepare a checkpoint for the vllm engine: print the `vllm serve` command for its backbone."""
    from mmrm.rm.errors import MmrmError
    from mmrm.rm.engines.vllm import POOLER_CONFIG, backbone_view

    try:
        view = backbone_view(checkpoint, dest)
    except MmrmError as e:
        _fail(e)
    console.print(f"vllm serve {view} --runner pooling --convert embed --pooler-config '{POOLER_CONFIG}'",
                  soft_wrap=True, markup=False)


@app.command()
def inspect(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (mmrm's, or a published reward model's)."),
    layout: Optional[str] = typer.Option(None, help="Force a layout instead of detecting it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Say what a checkpoint is: layout, backbone, head, pooling rule, template, dtype, size."""
    from rich.table import Table

    from mmrm.rm.errors import MmrmError
    from mmrm.rm.inspection import inspect_checkpoint

    try:
        report = inspect_checkpoint(checkpoint, layout)  # type: ignore[arg-type]
    except (MmrmError, ValueError) as e:
        _fail(e)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    table = Table(title=str(checkpoint), show_header=False)
    for k, v in report.lines():
        table.add_row(k, v)
    Console(width=140).print(table, markup=False)


@app.command()
def convert(
    checkpoint: Path = typer.Argument(..., help="An mmrm reward checkpoint (linear head, merged weights), or for "
                                      "--to llava_onevision an MM-RLHF checkpoint in LLaVA's code layout."),
    dest: Path = typer.Argument(..., help="Directory to write (must not exist or be empty)."),
    to: str = typer.Option("value_head", help="Target layout: value_head (TRL / LLaMA-Factory, Skywork-VL-Reward's), "
                           "or llava_onevision (an MM-RLHF-Reward LLaVA-code checkpoint -> transformers' "
                           "LlavaOnevisionForConditionalGeneration + rm_head.safetensors, mmrm's mm_rlhf layout)."),
) -> None:
    """Convert a checkpoint: export an mmrm checkpoint to a layout other tools load, or bring an
    MM-RLHF-Reward checkpoint into transformers' layout."""
    from mmrm.rm.errors import MmrmError

    targets = ("value_head", "llava_onevision")
    if to not in targets:
        _fail(ValueError(f"unknown target layout {to!r}; choose {' or '.join(targets)}"))
    try:
        if to == "value_head":
            from mmrm.rm.convert import export_value_head

            out = export_value_head(checkpoint, dest)
        else:
            from mmrm.rm.convert_mmrlhf import convert_mm_rlhf

            out = convert_mm_rlhf(checkpoint, dest)
    except MmrmError as e:
        _fail(e)
    typer.echo(str(out))


@app.command()
def demo(
    workdir: Path = typer.Option(Path(".mmrm-demo"), help="Where the demo model, data and serve config live."),
    epochs: int = typer.Option(5, help="Training epochs for the demo model (5 reaches >= 0.90)."),
    limit: Optional[int] = typer.Option(None, help="Use only this many digit images (quick smoke runs)."),
    port: int = typer.Option(8000, help="Port of the local service."),
    exit_after: bool = typer.Option(False, "--exit", help="Stop the service after the demo request."),
) -> None:
    """Build the digits demo reward model if absent, serve it locally, and score a real image over HTTP."""
    from mmrm.demo import run_demo

    run_demo(workdir, epochs=epochs, limit=limit, port=port, keep_serving=not exit_after, console=console)


def _register_eval() -> None:
    from mmrm.eval.cli import app as eval_app

    app.add_typer(eval_app, name="eval", help="Offline preference-accuracy evaluation (resumable, reports).")


_register_eval()

if __name__ == "__main__":
    app()
