"""The ``mmrm`` command."""
import typer

app = typer.Typer(no_args_is_help=True, help="mmrm: multimodal reward models and judges.")
