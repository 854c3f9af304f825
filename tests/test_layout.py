"""The rooms and their import rules (DESIGN.md, "Layout"), and the light public face.

Every module of every room is parsed with ``ast`` and every import statement in it is checked: at
module level, inside functions, under ``if TYPE_CHECKING:``, relative or absolute. The rooms are read
from pyproject's ``[tool.setuptools.package-dir]``, so a new room is checked the day it is mapped.
A broken rule fails with the file, the line and the rule, e.g.::

    rm/errors.py:12: mmrm.rm.errors imports mmrm.client: rm may import only rm

Not checked here: imports spelled as strings (``importlib.import_module(...)``, a serve config's
``import_path``); the face (``mmrm/__init__.py``) makes those on purpose and is checked by running it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: room -> the rooms its modules may import (besides itself). ``mmrm`` is the public face and the
#: CLI: it may import every room (the face lazily, the CLI to run the commands).
ALLOWED: dict[str, frozenset[str]] = {
    "rm": frozenset(),
    "client": frozenset({"rm"}),
    "judges": frozenset({"rm"}),
    "train": frozenset({"rm"}),
    # eval's `type: service` scorer spec evaluates a served model through the client (a RemoteScorer),
    # and its runner stops a run on the client's ServiceError/TransportError. The client is light
    # and never imports eval, so this edge makes no cycle.
    "eval": frozenset({"rm", "judges", "client"}),
    "rl": frozenset({"rm", "judges", "client"}),
    "serve": frozenset({"rm", "judges"}),
    "mmrm": frozenset({"rm", "client", "rl", "judges", "train", "serve", "eval"}),
}
#: single modules that may import one more room than their own room may (the narrowest exception).
MODULE_ALLOWED: dict[str, frozenset[str]] = {
    # the OpenAI-compatible judge backend is an HTTP client too: it reuses the client's one retry
    # policy (Retry-After, backoff) and its ServiceError instead of a second copy (issue 15).
    "mmrm.judges.backends.openai": frozenset({"client"}),
}
#: the only modules outside serve that may import it: the CLI (``mmrm serve``) and the body of its
#: ``mmrm demo`` command, which starts a local service. Tests and benchmarks are outside the package.
SERVE_IMPORTERS = frozenset({"mmrm.cli", "mmrm.demo"})
#: third-party packages a room must never import (the client runs inside RL workers and notebooks).
HEAVY = frozenset({"torch", "ray", "transformers"})
FORBIDDEN_EXTERNAL: dict[str, frozenset[str]] = {"client": HEAVY}


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is imported, and by which module."""

    importer: str  # dotted module name, e.g. "mmrm.rm.errors"
    path: str  # relative to the project root, e.g. "rm/errors.py"
    line: int
    target: str  # the module the statement imports, e.g. "mmrm.client" or "torch"


def rooms(root: Path) -> dict[str, Path]:
    """Top-level subpackage -> its folder, from pyproject's package-dir (``{"mmrm.rm": root/"rm", ...}``)."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    return {pkg: root / folder for pkg, folder in cfg["tool"]["setuptools"]["package-dir"].items()
            if pkg.count(".") <= 1}


def module_name(package: str, folder: Path, file: Path) -> str:
    parts = list(file.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(root: Path) -> list[Import]:
    """Every import statement of every module in every room."""
    out: list[Import] = []
    for package, folder in sorted(rooms(root).items()):
        for file in sorted(folder.rglob("*.py")):
            mod = module_name(package, folder, file)
            is_package = file.name == "__init__.py"
            rel = file.relative_to(root).as_posix()
            tree = ast.parse(file.read_text(), filename=rel)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    out += [Import(mod, rel, node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    if node.level:  # relative: resolved against the importing module's package
                        base = mod.split(".") if is_package else mod.split(".")[:-1]
                        base = base[: len(base) - (node.level - 1)]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    out.append(Import(mod, rel, node.lineno, target))
                    if target == "mmrm":  # `from mmrm import judges` imports a room, too
                        out += [Import(mod, rel, node.lineno, f"mmrm.{a.name}") for a in node.names
                                if a.name in ALLOWED]
    return out


def room_of(module: str) -> str | None:
    """``"rm"`` for ``mmrm.rm.errors``, ``"mmrm"`` for the face/CLI modules, None outside mmrm."""
    parts = module.split(".")
    if parts[0] != "mmrm":
        return None
    if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != "mmrm":
        return parts[1]
    return "mmrm"


def violations(root: Path) -> list[str]:
    """Each broken import rule as ``path:line: importer imports target: rule``."""
    bad: list[str] = []
    for imp in imports_of(root):
        src = room_of(imp.importer)
        assert src is not None, imp
        where = f"{imp.path}:{imp.line}: {imp.importer} imports {imp.target}"
        top = imp.target.split(".")[0]
        if top != "mmrm":
            if top in FORBIDDEN_EXTERNAL.get(src, ()):
                bad.append(f"{where}: {src} must never import {', '.join(sorted(FORBIDDEN_EXTERNAL[src]))}")
            continue
        dst = room_of(imp.target)
        if src != "mmrm" and imp.target == "mmrm":
            bad.append(f"{where}: no room imports the top-level package (it imports the rooms)")
        elif dst == "mmrm" and src != "mmrm":
            bad.append(f"{where}: no room imports the face or the CLI")
        elif dst == "serve" and src != "serve" and imp.importer not in SERVE_IMPORTERS:
            bad.append(f"{where}: only {', '.join(sorted(SERVE_IMPORTERS))} import serve")
        elif dst not in ("mmrm", src) and dst not in ALLOWED[src] | MODULE_ALLOWED.get(imp.importer, frozenset()):
            allowed = ", ".join(sorted(ALLOWED[src] | {src}))
            bad.append(f"{where}: {src} may import only {allowed}")
    return bad


# ------------------------------------------------------------------------------------------ the rules


def test_every_room_is_checked() -> None:
    """The table above names exactly the rooms pyproject maps, and each room has modules to check."""
    found = {pkg.split(".")[-1] if pkg != "mmrm" else "mmrm" for pkg in rooms(ROOT)}
    assert found == set(ALLOWED), f"pyproject maps {sorted(found)}, the rules name {sorted(ALLOWED)}"
    importers = {room_of(i.importer) for i in imports_of(ROOT)}
    assert importers == set(ALLOWED), importers


def test_import_rules_hold() -> None:
    bad = violations(ROOT)
    assert not bad, "import rules broken (DESIGN.md, Layout):\n" + "\n".join(bad)


def _plant(root: Path, files: dict[str, str]) -> None:
    (root / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.setuptools.package-dir]
        "mmrm" = "mmrm"
        "mmrm.rm" = "rm"
        "mmrm.client" = "client"
        "mmrm.rl" = "rl"
        "mmrm.judges" = "judges"
        "mmrm.train" = "train"
        "mmrm.serve" = "serve"
        "mmrm.eval" = "eval"
        """))
    for folder in ("mmrm", "rm", "client", "rl", "judges", "train", "serve", "eval"):
        (root / folder).mkdir()
        (root / folder / "__init__.py").write_text("")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


def test_a_planted_violation_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    """The checker itself: each kind of violation, hidden in a function, relative or absolute."""
    _plant(tmp_path, {
        "rm/core.py": """\
            from __future__ import annotations


            def late():
                from mmrm.client import Client  # line 5
                import mmrm  # line 6
                from .. import rl  # line 7: relative, resolves to mmrm.rl
                from mmrm import judges  # line 8
                return Client, mmrm, rl, judges
            """,
        "client/http.py": """\
            def f():
                import torch.nn  # line 2
            """,
        "judges/j.py": "from mmrm.serve.app import build_app  # line 1\nfrom mmrm.client import Client  # line 2\n",
        "train/t.py": "from mmrm.cli import app  # line 1\n",
        "rl/ok.py": "from mmrm.client import Client\nfrom mmrm.judges import Judge\nfrom . import shaping\n",
        "mmrm/cli.py": "from mmrm.serve.run import start\n",
        "judges/backends/openai.py": "from mmrm.client.retry import RetryPolicy\n",  # its one exception
        "eval/scorers.py": "def build():\n    from mmrm.client import RemoteScorer\n",
    })
    got = violations(tmp_path)
    expected = [
        "rm/core.py:5: mmrm.rm.core imports mmrm.client: rm may import only rm",
        "rm/core.py:6: mmrm.rm.core imports mmrm: no room imports the top-level package",
        "rm/core.py:7: mmrm.rm.core imports mmrm: no room imports the top-level package",
        "rm/core.py:7: mmrm.rm.core imports mmrm.rl: rm may import only rm",
        "rm/core.py:8: mmrm.rm.core imports mmrm: no room imports the top-level package",
        "rm/core.py:8: mmrm.rm.core imports mmrm.judges: rm may import only rm",
        "client/http.py:2: mmrm.client.http imports torch.nn: client must never import ray, torch, transformers",
        "judges/j.py:1: mmrm.judges.j imports mmrm.serve.app: only mmrm.cli, mmrm.demo import serve",
        "judges/j.py:2: mmrm.judges.j imports mmrm.client: judges may import only judges, rm",
        "train/t.py:1: mmrm.train.t imports mmrm.cli: no room imports the face or the CLI",
    ]
    for line in expected:
        assert any(g.startswith(line) for g in got), f"not reported: {line}\ngot:\n" + "\n".join(got)
    assert len(got) == len(expected), "\n".join(got)  # the last four files break no rule


# ------------------------------------------------------------------------------------ light imports


def _modules_after(code: str, cwd: Path) -> set[str]:
    """Top-level module names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return set(r.stdout.split())


@pytest.mark.parametrize("module", ["mmrm", "mmrm.client"])
def test_light_imports_leave_torch_ray_and_transformers_out(module: str, tmp_path: Path) -> None:
    """``import mmrm`` (the face: lazy names) and ``import mmrm.client`` (used inside RL workers)."""
    loaded = _modules_after(f"import {module}", tmp_path)
    assert module.split(".")[0] in loaded  # the probe did import it
    assert not HEAVY & loaded, f"import {module} imported {sorted(HEAVY & loaded)}"


def test_vllm_server_helper_imports_neither_mmrm_nor_torch() -> None:
    """tests/vllm_server.py runs as a script (``python tests/vllm_server.py install``, before the
    project may be importable) and beside benchmarks: its import, with tests/helpers.py, stays light."""
    loaded = _modules_after("import vllm_server", ROOT / "tests")
    assert "vllm_server" in loaded and "helpers" in loaded
    assert not {"mmrm", "torch", "ray", "transformers"} & loaded, sorted(loaded)


# -------------------------------------------------------------------------------------- public face

PUBLIC = ("RewardModel", "Judge", "Panel", "Client", "AsyncClient", "RewardFn", "MediaPolicy", "Sample", "Pair",
          "Group")


def test_the_public_face_imports() -> None:
    from mmrm import AsyncClient, Client, Group, Judge, MediaPolicy, Pair, Panel, RewardFn, RewardModel, Sample

    from mmrm.client import AsyncClient as RoomAsyncClient
    from mmrm.rl.reward_fn import RewardFn as RoomRewardFn

    assert AsyncClient is RoomAsyncClient and RewardFn is RoomRewardFn  # the room's objects, not copies
    assert all(isinstance(c, type) for c in (Client, Group, Judge, MediaPolicy, Pair, Panel, RewardModel, Sample))


def test_every_public_name_resolves() -> None:
    import mmrm

    assert set(PUBLIC) <= set(mmrm.__all__)
    missing = [n for n in mmrm.__all__ if getattr(mmrm, n, None) is None]
    assert not missing, f"in mmrm.__all__ but not importable: {missing}"
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        mmrm.NoSuchName  # noqa: B018
