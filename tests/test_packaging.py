"""A wheel of the project builds without setuptools warnings and carries its data files.

The build runs on a copy of the sources (a build writes build/ and *.egg-info next to them) with
the environment's setuptools and no index, so it needs no network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what setuptools prints when a configuration is ambiguous or deprecated
WARNING = re.compile(r"SetuptoolsWarning|SetuptoolsDeprecationWarning|BuildBackendWarning|Package would be ignored"
                     r"|no concept of package data|is deprecated")


def _copy_sources(dest: Path) -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for folder in set(cfg["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, dest / f)


def build_wheel(src: Path, out: Path) -> tuple[str, Path]:
    """(pip's and setuptools' output, the wheel) of ``pip wheel`` on ``src``."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    (wheel,) = out.glob("mmrm-*.whl")
    return r.stdout + r.stderr, wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    src = tmp_path_factory.mktemp("src")
    _copy_sources(src)
    return build_wheel(src, tmp_path_factory.mktemp("wheel"))


def test_the_wheel_builds_without_setuptools_warnings(wheel: tuple[str, Path]) -> None:
    output, _ = wheel
    hits = [line for line in output.splitlines() if WARNING.search(line)]
    assert not hits, "setuptools warned:\n" + "\n".join(hits)


def test_the_wheel_carries_every_shipped_rubric(wheel: tuple[str, Path]) -> None:
    _, path = wheel
    names = set(zipfile.ZipFile(path).namelist())
    shipped = sorted(p.name for p in (ROOT / "judges" / "rubrics").glob("*.yaml"))
    assert shipped, "no rubric YAML in judges/rubrics"
    missing = [n for n in shipped if f"mmrm/judges/rubrics/{n}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert "mmrm/judges/rubrics.py" in names  # the module beside the data folder of the same name
