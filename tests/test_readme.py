"""The README's examples are the code as it is.

* Python blocks marked ``<!-- readme-test: run -->`` run, in order, in one namespace, in a folder laid
  out like the demo's (``.mmrm-demo/model`` is the session's tiny reward checkpoint, ``.mmrm-demo/data``
  the digits eval set): today the Python API block and the offline-evaluation block. The values in
  their comments are the real demo model's and are not compared.
* Every other Python block is compiled and its import statements run: the judges block (it needs a
  Qwen2.5-VL checkpoint and an OpenAI-compatible server) and the RL block (it needs a policy, a
  TRL trainer and a running service).
* Every dotted ``mmrm.`` name in the README (code or prose) resolves to a module or an attribute,
  so a moved or renamed module cannot stay documented under its old path.
* Every ``mmrm`` command line in a bash block names a real command and only its real options.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import shutil
from pathlib import Path

import pytest
from helpers import image_array, png_bytes

README = Path(__file__).resolve().parents[1] / "README.md"
RUN_MARK = "<!-- readme-test: run -->"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[tuple[int, str, bool]]:
    """``(line, code, marked_run)`` of every fenced block in ``lang``."""
    text = README.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != lang:
            continue
        before = text[: m.start()].rstrip().splitlines()
        out.append((text.count("\n", 0, m.start()) + 1, m.group(2), bool(before) and before[-1].strip() == RUN_MARK))
    return out


def test_the_readme_has_blocks_of_both_kinds() -> None:
    py = blocks("python")
    assert sum(run for _, _, run in py) == 2 and len(py) >= 4, [(line, run) for line, _, run in py]


@pytest.fixture()
def demo_folder(tmp_path: Path, reward_checkpoint: Path, digits_eval_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory shaped like the demo's: .mmrm-demo/{model, data/{eval.jsonl, images/...}}."""
    demo = tmp_path / ".mmrm-demo"
    demo.mkdir()
    (demo / "model").symlink_to(reward_checkpoint, target_is_directory=True)
    shutil.copytree(digits_eval_data.parent, demo / "data")
    (demo / "data" / "images" / "0360.png").write_bytes(png_bytes(image_array(28, 28, seed=360)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_runnable_blocks_run(demo_folder: Path) -> None:
    namespace: dict = {}
    for line, code, run in blocks("python"):
        if run:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code
    assert {"rm", "items"} <= namespace.keys()  # the two blocks ran to their ends
    assert (demo_folder / "eval-out" / "results.jsonl").stat().st_size > 0


@pytest.mark.parametrize("line", [line for line, _, run in blocks("python") if not run])
def test_other_blocks_compile_and_import(line: int) -> None:
    code = next(c for ln, c, _ in blocks("python") if ln == line)
    tree = ast.parse(code, filename=f"README.md:{line}")
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports, "a README example without imports cannot be checked"
    exec(compile(ast.Module(body=imports, type_ignores=[]), f"README.md:{line}", "exec"), {})  # noqa: S102


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            fields = getattr(obj, "model_fields", {})  # a pydantic model's fields are not class attributes
            if attr in fields:
                obj = fields[attr]
            elif hasattr(obj, attr):
                obj = getattr(obj, attr)
            else:
                return False
        return True
    return False


def test_every_dotted_mmrm_name_resolves() -> None:
    names = sorted(set(re.findall(r"(?<![\w./-])mmrm(?:\.[A-Za-z_]\w*)+", README.read_text())))
    assert len(names) > 10, names
    missing = [n for n in names if not _resolves(n)]
    assert not missing, f"README names that do not exist (moved or renamed?): {missing}"


def test_command_lines_use_real_commands_and_options() -> None:
    import typer.main

    from mmrm.cli import app

    root = typer.main.get_command(app)
    seen = 0
    for line, code, _ in blocks("bash"):
        for cmd in code.replace("\\\n", " ").splitlines():
            words = shlex.split(cmd.split(" #")[0], comments=True) if "mmrm " in cmd else []
            if not any(w.endswith("mmrm") for w in words):
                continue
            args = words[next(i for i, w in enumerate(words) if w.endswith("mmrm")) + 1:]
            command = root
            while args and hasattr(command, "commands") and args[0] in command.commands:
                command = command.commands[args.pop(0)]
            assert not hasattr(command, "commands"), f"README.md:{line}: no such mmrm command: {cmd.strip()}"
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            unknown = [a.split("=")[0] for a in args if a.startswith("-") and a.split("=")[0] not in known]
            assert not unknown, f"README.md:{line}: {command.name} has no option {unknown}: {cmd.strip()}"
            seen += 1
    assert seen >= 5, seen
