"""vLLM side of the ``vllm`` measure; runs INSIDE the vLLM virtual environment (its own torch).

    python _vllm_worker.py MODEL_DIR PROMPTS_JSON

Loads MODEL_DIR with vLLM's pooling runner (last-token hidden state, no normalization: what
mmrm's head needs), then answers one line of JSON per line read on stdin:
``run`` -> {"seconds": ..., "n": ...} for embedding every prompt (token ids) once;
``check`` -> {"embeddings": [...]} for the first 4 prompts; ``quit`` ends it.
"""

from __future__ import annotations

import json
import sys
import time


def say(obj: dict) -> None:
    # vLLM logs to stdout too: answers carry a marker the driver looks for.
    print("@@MMRM " + json.dumps(obj), flush=True)


def main() -> None:
    model_dir, prompts_path = sys.argv[1], sys.argv[2]
    from vllm import LLM

    ids = json.load(open(prompts_path))
    prompts = [{"prompt_token_ids": p} for p in ids]
    kw = dict(model=model_dir, runner="pooling", convert="embed", dtype="float32", enforce_eager=True,
              max_model_len=max(len(p) for p in ids) + 16, gpu_memory_utilization=0.2, seed=0,
              # Every round embeds the same prompts: a prefix cache would answer them from memory.
              enable_prefix_caching=False)
    try:
        llm = LLM(**kw, pooler_config={"seq_pooling_type": "LAST", "use_activation": False})
    except TypeError:
        llm = LLM(**kw, pooler_config={"pooling_type": "LAST", "normalize": False})
    llm.embed(prompts[:4], use_tqdm=False)  # warm-up
    say({"ready": True})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            t = time.perf_counter()
            out = llm.embed(prompts, use_tqdm=False)
            dt = time.perf_counter() - t
            say({"seconds": dt, "n": len(out)})
        elif cmd == "check":
            out = llm.embed(prompts[:4], use_tqdm=False)
            say({"embeddings": [list(map(float, o.outputs.embedding)) for o in out]})
        elif cmd == "quit":
            break


if __name__ == "__main__":
    main()
