"""Nothing lost, training: ``mmrm train`` killed with SIGKILL mid-epoch resumes to the same final
weights, bit for bit, as a run that was never interrupted.

Both runs are real ``mmrm train`` processes with the same environment (one torch thread each, so
the arithmetic is the same); the kill is SIGKILL (no handler runs, no state is flushed) and lands
in the middle of the first epoch, after the run has saved a resumable state at least once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import state_dicts_equal, wait_until

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 12  # 48 training pairs / batch 4


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from mmrm.train.digits import build_digits_dataset

    return build_digits_dataset(tmp_path_factory.mktemp("digits-rel"), limit=60, seed=2)


def _config(tmp: Path, name: str, backbone: Path, data: tuple[Path, Path], **kw) -> Path:
    cfg = {"backbone": str(backbone), "output_dir": str(tmp / name), "train_data": str(data[0]), "epochs": 2,
           "batch_size": 4, "lr": 3e-4, "max_length": 256, "seed": 7, "save_every": 1, **kw}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "mmrm.cli", "train", "--config", str(config)]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    out = {f"head.{k}": v for k, v in load_file(str(path / "head.safetensors")).items()}
    for f in sorted(path.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _step(out: Path) -> int:
    import json

    try:
        return int(json.loads((out / "train_state" / "meta.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def test_training_killed_mid_epoch_resumes_to_the_same_weights(tmp_path: Path, tiny_qwen2_vl: Path, digits) -> None:
    full = _config(tmp_path, "full", tiny_qwen2_vl, digits)
    part = _config(tmp_path, "part", tiny_qwen2_vl, digits)
    # The kill first (the uninterrupted run goes after it, so both never compete for the 2 cores).
    proc = subprocess.Popen(_cmd(part), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # until step 3 is saved (or the run has exited: the assert below shows its stderr)
    wait_until(lambda: _step(tmp_path / "part") >= 3 or proc.poll() is not None, timeout=240, interval=0.05,
               message="the training run saved no step 3")
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    time.sleep(0.3)  # into the middle of a later step (a forward/backward takes longer than this)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = _step(tmp_path / "part")
    assert proc.returncode == -signal.SIGKILL
    assert 3 <= killed_at < STEPS_PER_EPOCH, killed_at  # mid-epoch, with progress saved
    assert not (tmp_path / "part" / "head.safetensors").exists()  # it did not finish
    resumed = subprocess.run(_cmd(part), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = subprocess.run(_cmd(full), env=_env(), capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys() and len(a) > 10
    assert state_dicts_equal(a, b), "resumed weights differ from the uninterrupted run"


def test_kill_inside_the_state_save_window_still_resumes(tmp_path: Path, tiny_qwen2_vl: Path, digits) -> None:
    """The one instant a SIGKILL can hit that the test above cannot aim at: inside save_state, between
    moving the old state aside and moving the new one in. Simulated exactly (same files, same names)."""
    from mmrm.train import TrainConfig, train

    cfg = TrainConfig.model_validate(yaml.safe_load(_config(tmp_path, "win", tiny_qwen2_vl, digits, epochs=1).read_text()))
    stopped = train(cfg.model_copy(update={"stop_after_steps": 2}))
    assert stopped.steps == 2
    state = tmp_path / "win" / "train_state"
    state.rename(state.with_name("train_state.old"))  # save_state's first rename happened ...
    (state.with_name("train_state.tmp")).mkdir()  # ... the new state was being written, not yet moved in
    (state.with_name("train_state.tmp") / "meta.json").write_text('{"step": 3}')
    steps: list[int] = []
    train(cfg, on_step=lambda rec: steps.append(int(rec["step"])))
    assert steps[0] == 3, f"resumed at step {steps[0] - 1}, not at the saved step 2"
