"""Shared pieces of the speed benchmarks: models, inputs from the real rows, timers, FLOP counts.

Everything here runs unchanged on the CPU and on a GPU (``device="auto"``). Nothing is downloaded:
the models are built locally by :func:`mmrm.rm.tiny.build_tiny_model`, the texts come from the real
VL-RewardBench rows in ``data/benchmarks`` (vendored; or ``$MMRM_DATA``, or ``../shared/data``), and images, which are not in that
folder, are generated (smooth synthetic pictures, JPEG-encoded like real photos).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA_CANDIDATES = [Path(os.environ["MMRM_DATA"])] if os.environ.get("MMRM_DATA") else []
DATA_CANDIDATES += [ROOT / "data" / "benchmarks", ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]

#: the models the benchmarks use: (architecture, size)
MODELS = {
    "tiny-text": ("qwen2", "tiny"),
    "small-text": ("qwen2", "small"),
    "tiny-vl": ("qwen2_5_vl", "tiny"),
    "small-vl": ("qwen2_5_vl", "small"),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True, file=__import__("sys").stderr)


# ------------------------------------------------------------------------------------------ machine
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["loadavg_1m"] = float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        pass
    return info


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(n: int = 2048, reps: int = 5, rounds: int = 5) -> dict[str, Any]:
    """Best observed fp32 matmul rate (n x n x n, this process's torch threads; TF32 off on GPUs)."""
    dev = device()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        n = max(n, 8192)
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    a @ b
    sync()
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        rates.append(reps * 2 * n**3 / (time.perf_counter() - t))
    return {"n": n, "threads": torch.get_num_threads(), "best_flops": max(rates), "median_flops": statistics.median(rates)}


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """Peak resident set size (VmHWM) of a process, in MiB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def packs(rm: Any) -> bool:
    """Whether ``rm``'s inference forwards pack text-only samples (on this device)."""
    with torch.no_grad():
        return bool(rm.engine.packing_active())


def cpu_seconds_by_process(prefix: str = "ray::") -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process ("driver") and by every process
    whose title starts with ``prefix`` (Ray names its workers ``ray::<role>``), by title (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        name = "driver" if int(proc.name) == os.getpid() else title
        if name == "driver" or title.startswith(prefix):
            fields = stat.rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


# ------------------------------------------------------------------------------------------- models
def build_models(workdir: Path, names: list[str]) -> dict[str, Path]:
    """Backbone + reward checkpoint per model name (built once, reused from ``workdir``)."""
    from mmrm.rm.reward_model import RewardModel
    from mmrm.rm.tiny import build_tiny_model

    out = {}
    for name in names:
        arch, size = MODELS[name]
        ckpt = workdir / "models" / f"{name}-rm"
        if not (ckpt / "mmrm_reward.json").exists():
            log(f"building {name} ({arch}, {size})")
            backbone = build_tiny_model(arch, workdir / "models" / name, size=size, seed=0)
            RewardModel.from_backbone(backbone, seed=0).save_pretrained(ckpt)
        out[name] = ckpt
    return out


def backbone_dir(workdir: Path, name: str) -> Path:
    return workdir / "models" / name


def text_config(ckpt: Path) -> dict[str, Any]:
    cfg = json.loads((ckpt / "config.json").read_text())
    return cfg.get("text_config", cfg)


def vision_config(ckpt: Path) -> dict[str, Any] | None:
    return json.loads((ckpt / "config.json").read_text()).get("vision_config")


# ------------------------------------------------------------------------------------------- inputs
def data_dir() -> Path:
    for d in DATA_CANDIDATES:
        if (d / "vl_rewardbench" / "data.jsonl").exists():
            return d
    raise FileNotFoundError("the real rows are not found; set MMRM_DATA to the folder with vl_rewardbench/data.jsonl")


def real_rows(n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """VL-RewardBench rows (prompt, chosen, rejected), in a fixed shuffled order."""
    rows = [json.loads(line) for line in (data_dir() / "vl_rewardbench" / "data.jsonl").read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[:n] if n else rows


def text_samples(n: int, seed: int = 0) -> list[Any]:
    """Chat samples (prompt + chosen or rejected response) from the real rows."""
    from mmrm.rm.types import Sample

    rows = real_rows(None, seed)
    out = []
    for k in range(n):
        r = rows[(k // 2) % len(rows)]
        out.append(Sample(prompt=r["prompt"], response=r["chosen" if k % 2 == 0 else "rejected"]))
    return out


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (gradients and blobs), like a photo to a JPEG encoder."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            cy, cx, s = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.1, 0.5) * max(height, width)
            img[..., c] += rng.uniform(40, 120) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
        img[..., c] += rng.uniform(0, 60) * (x / width) + rng.normal(0, 6, (height, width))
    return np.clip(img, 0, 255).astype(np.uint8)


def image_data_uri(height: int, width: int, seed: int = 0) -> str:
    from PIL import Image

    from mmrm.rm.media import to_data_uri

    return to_data_uri(Image.fromarray(synthetic_image(height, width, seed)), format="JPEG", quality=90)


def cut_tokens(tokenizer: Any, text: str, n: int) -> str:
    """The first ``n`` tokens of ``text`` (repeating it when shorter), decoded back to text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < n:
        ids = ids + ids
    return tokenizer.decode(ids[:n])


def group_inputs(tokenizer: Any, *, group_size: int, image_side: int, prompt_tokens: int, response_tokens: int,
                 seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """One GRPO group: a prompt (one image + text of ``prompt_tokens`` text tokens) and
    ``group_size`` responses of ``response_tokens`` tokens cut from real responses."""
    rows = real_rows(None, seed)
    r0 = rows[0]
    content: list[dict[str, Any]] = []
    if image_side:
        content.append({"type": "image_url", "image_url": {"url": image_data_uri(image_side, image_side, seed)}})
    content.append({"type": "text", "text": cut_tokens(tokenizer, r0["prompt"] + " " + r0["chosen_reason"], prompt_tokens)
                    if r0.get("chosen_reason") else cut_tokens(tokenizer, r0["prompt"], prompt_tokens)})
    prompt = [{"role": "user", "content": content}]
    responses = []
    for k in range(group_size):
        r = rows[1 + k // 2]
        responses.append(cut_tokens(tokenizer, r["chosen" if k % 2 == 0 else "rejected"], response_tokens))
    return prompt, responses


# -------------------------------------------------------------------------------------------- FLOPs
def text_flops(cfg: dict[str, Any], lengths: list[int], prefix: int = 0) -> float:
    """Useful forward FLOPs of a Qwen2-style decoder over sequences of these lengths.

    Counted: 2 x (multiply-adds) of every linear layer per real token (q, k, v, o, gate, up, down)
    plus causal attention (QK^T and AV: 2 x 2 x head_dim x heads per attended pair, pairs = L(L+1)/2).
    Not counted: embeddings, norms, rotary, softmax, the reward head; padding tokens (waste is not
    useful work). ``prefix`` tokens are already cached: only the rest are computed, attending to it.
    """
    h = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = h // heads
    inter = cfg["intermediate_size"]
    layers = cfg["num_hidden_layers"]
    per_tok = 2 * (h * h + 2 * h * kv * hd + h * h + 3 * h * inter)
    total = 0.0
    for L in lengths:
        new = L - prefix
        pairs = L * (L + 1) / 2 - prefix * (prefix + 1) / 2
        total += layers * (per_tok * new + 4 * hd * heads * pairs)
    return total


# ------------------------------------------------------------------------------------------- timing
@dataclass
class Timed:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def interleave(arms: dict[str, Callable[[], Any]], rounds: int, warmup: bool = True) -> dict[str, Timed]:
    """Run every arm once per round, in rotating order, and time each run (side by side).

    Rotating the order spreads the machine's drift (other load, thermal) over all arms.
    """
    names = list(arms)
    if warmup:
        for n in names:
            arms[n]()
    out = {n: Timed([]) for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            sync()
            t = time.perf_counter()
            arms[n]()
            sync()
            out[n].seconds.append(time.perf_counter() - t)
    return out


def ratio(num: float, den: float) -> float:
    return round(num / den, 3) if den else float("nan")


def write_json(result: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(result, indent=2, default=float)
    print(text, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
