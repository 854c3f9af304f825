"""How the cost of scoring grows: batch size, response length, group size, image size (in process).

    .venv/bin/python benchmarks/scaling.py [--out benchmarks/results/scaling.json] [--plots benchmarks/figures]

Prints one JSON object with one curve per axis and, when matplotlib is installed, writes one PNG
per curve. Models: the small text model (batch size, response length) and the small VLM (group
size, image size); both built locally, see ``_common.py``. Each point is the median of
``--reps`` timed runs after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def timeit(fn: Callable[[], Any], reps: int) -> float:
    fn()
    out = []
    for _ in range(reps):
        C.sync()
        t = time.perf_counter()
        fn()
        C.sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    from mmrm.rm.reward_model import RewardModel
    from mmrm.rm.types import Group, Sample

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmrm-speed")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plots", type=Path, default=None, help="folder for the PNG plots")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(os.cpu_count() or 1, 16))
    ckpts = C.build_models(args.workdir, ["small-text", "small-vl"])
    q = args.quick
    res: dict[str, Any] = {"benchmark": "mmrm-scaling", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": C.machine()}

    # -- batch size: throughput of 256-token samples (small text model)
    rm = RewardModel.from_pretrained(ckpts["small-text"], device="auto", max_batch_size=64, max_batch_tokens=1 << 20)
    tok = rm.encoder.tokenizer
    rows = C.real_rows(64)
    base = [Sample(prompt=r["prompt"], response=C.cut_tokens(tok, r["chosen"], 230)) for r in rows]
    enc = [rm.encode(s) for s in base]
    n = 8 if q else 32
    pts = []
    # packed rows (the CPU default: pack_tokens caps a row) and padded batches, side by side
    rm.options.pack_tokens = 1 << 20
    for bs in ([1, 4, 8] if q else [1, 2, 4, 8, 16, 32]):
        rm.options.max_batch_size = bs
        pt: dict[str, Any] = {"batch_size": bs}
        for tag, pack in (("", None), ("_padded", False)):
            rm.options.packing = "on" if pack else "off"
            dt = timeit(lambda: rm.rewards_of(enc[:n]), args.reps)
            pt.update({f"samples_per_s{tag}": round(n / dt, 3), f"ms_per_sample{tag}": round(1000 * dt / n, 2)})
        rm.options.packing = "auto"
        pts.append(pt)
        C.log(f"batch {bs}: {pts[-1]}")
    res["batch_size"] = {"model": "small-text", "packing": C.packs(rm), "tokens_median": statistics.median(e.length for e in enc[:n]), "points": pts}

    # -- response length: time per sample vs tokens (batch 8)
    rm.options.max_batch_size = 8
    pts = []
    for L in ([32, 128, 512] if q else [32, 64, 128, 256, 512, 1024]):
        samples = [Sample(prompt=r["prompt"], response=C.cut_tokens(tok, r["chosen"], L)) for r in rows[:8]]
        e = [rm.encode(s) for s in samples]
        dt = timeit(lambda: rm.rewards_of(e), args.reps)
        fl = C.text_flops(C.text_config(ckpts["small-text"]), [x.length for x in e])
        pts.append({"response_tokens": L, "sample_tokens": statistics.median(x.length for x in e),
                    "ms_per_sample": round(1000 * dt / len(e), 2), "gflops_achieved": round(fl / dt / 1e9, 2)})
        C.log(f"length {L}: {pts[-1]}")
    res["response_length"] = {"model": "small-text", "batch_size": 8, "points": pts}
    del rm

    # -- group size and image size (small VLM)
    vl = RewardModel.from_pretrained(ckpts["small-vl"], device="auto")
    tok = vl.encoder.tokenizer
    pts = []
    for g in ([2, 8] if q else [1, 2, 4, 8, 16]):
        p, rs = C.group_inputs(tok, group_size=g, image_side=448, prompt_tokens=40, response_tokens=150)
        # each GRPO step brings a new image: no arm may reuse features from an earlier repetition
        ind = timeit(lambda: (vl.engine.vision_cache.clear(), vl.rewards([Sample(prompt=p, response=r) for r in rs])), args.reps)
        grp = timeit(lambda: (vl.engine.vision_cache.clear(), vl.rank([Group(prompt=p, responses=rs)])), args.reps)
        pts.append({"group_size": g, "independent_s": round(ind, 3), "group_path_s": round(grp, 3),
                    "speedup": round(ind / grp, 3)})
        C.log(f"group {g}: {pts[-1]}")
    res["group_size"] = {"model": "small-vl", "image": "448x448", "response_tokens": 150, "points": pts}

    pts = []
    for side in ([224, 448] if q else [112, 224, 448, 672, 896]):
        p, rs = C.group_inputs(tok, group_size=1, image_side=side, prompt_tokens=40, response_tokens=150)
        s = Sample(prompt=p, response=rs[0])
        e = vl.encode(s)
        dt = timeit(lambda: (vl.engine.vision_cache.clear(), vl.rewards_of([e])), args.reps)
        grid = e.extras.get("image_grid_thw")
        vis_tokens = int(grid.prod(-1).sum()) // 4 if grid is not None else 0
        pts.append({"image_side": side, "visual_tokens": vis_tokens, "sample_tokens": e.length, "ms_per_sample": round(1000 * dt, 1)})
        C.log(f"image {side}: {pts[-1]}")
    res["image_size"] = {"model": "small-vl", "batch_size": 1, "points": pts}

    if args.plots:
        plot(res, args.plots)
    C.write_json(res, args.out)
    return 0


def plot(res: dict[str, Any], folder: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        C.log("matplotlib is not installed: no plots")
        return
    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        ("batch_size", "batch_size", [("samples_per_s", "default (packed on a CPU)"), ("samples_per_s_padded", "padded batches")],
         "batch size", "samples / s",
         "Throughput vs batch size (small text model, ~256 tokens)"),
        ("response_length", "sample_tokens", [("ms_per_sample", "ms / sample")], "tokens per sample", "ms / sample",
         "Cost vs sequence length (small text model, batch 8)"),
        ("group_size", "group_size", [("independent_s", "independent"), ("group_path_s", "group path")], "group size G",
         "seconds per group", "GRPO group: shared prompt + 448x448 image (small VLM)"),
        ("image_size", "visual_tokens", [("ms_per_sample", "ms / sample")], "visual tokens (image side 112..896 px)",
         "ms / sample", "Cost vs image size (small VLM, batch 1)"),
    ]
    for key, x, ys, xl, yl, title in specs:
        pts = res[key]["points"]
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
        for y, label in ys:
            ax.plot([p[x] for p in pts], [p[y] for p in pts], marker="o", label=label)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if len(ys) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"{key}.png")
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
