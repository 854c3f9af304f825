"""OpenRLHF's remote reward model pointed at an mmrm service: payload, images, failures, sizing.

Run OpenRLHF with ``--reward.remote_url http://<mmrm-host>:8000/get_reward`` (the URL includes the
route). The service side is :mod:`mmrm.serve.compat.openrlhf`; this module holds what the TRAINING
side needs: the exact body OpenRLHF sends (:func:`request_body`), and how to size the service so a
run never meets the queue limit (:func:`size_service`, :func:`check_service`).

Checked against OpenRLHF 0.11.2 (the released wheel; first read at commit
``3c3be6234e0cb353e76bb8019947db9dfe99fca7``), and run with its own code in
``tests/test_rl_clients.py``:

* ``openrlhf/utils/agent.py::SingleTurnAgentExecutor.execute`` scores each sample as soon as it is
  generated: ``_fetch_rewards_via_http([query], [prompt], [label])``, ONE query per request, where
  ``query = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)``.
* ``--reward.remote_url`` is split at commas (``cli/train_ppo_ray.py``). ``_fetch_rewards_via_http``
  shards a query list over the URLs, skips empty shards, and takes each shard's URL from a
  ``cycle`` over them, so one-query requests rotate across the URLs: several URLs do spread the
  load (one URL in front of Serve's replicas works as well).
* Each POST uses aiohttp with a 180 s total timeout and is tried 5 times, 1 s apart, on ANY failure
  (4xx included), ignoring ``Retry-After``; then the sample is left without a reward.
* ``vllm_engine.generate_responses`` starts the ``n_samples_per_prompt`` samples of a prompt
  together, and the samples generator dispatches every prompt of a generation batch
  (``--rollout.vllm_generate_batch_size``, default ``--rollout.batch_size``) at once. So up to
  ``generate_batch_size * n_samples_per_prompt`` reward requests can be in flight together.

**Images.** OpenRLHF's VLM prompts carry image placeholders, not pixels, and 0.11.2's reward paths
send none: ``_fetch_rewards_via_http`` posts ``query``/``prompts``/``labels`` only, a custom
``reward_func(queries, prompts, labels)`` file gets no images, and an agent instance
(``MultiTurnAgentExecutor``) sees only the observation text and label. The one place that has a
sample's ``images`` is the executor's ``execute``; :mod:`mmrm.rl.openrlhf_agent` is an executor
(OpenRLHF's single-turn one, subclassed) that adds them to its reward request: pass its file as
``--train.agent_func_path``. mmrm's ``/get_reward`` accepts an extra key beside ``query``:
``"images": [[source, ...] | source | null, ...]``, one entry per query, filling the placeholders in
order (or, with none, going in front of the first user turn); :func:`request_body` builds it.
Without it, a query with image placeholders is an item failure (``invalid_input`` naming
``images[i]``, the placeholder count as its limit, and this limit in its message): the fill value
under ``on_invalid: fill``. The plain text form works unchanged.

**Failures.** A ``null`` reward would crash OpenRLHF's ``torch.tensor``, so the service never sends
one on this route. Default (``compat.openrlhf.on_invalid: error``): a failed item fails the request
(422 input / 5xx runtime); OpenRLHF retries 5 times and then leaves the sample without a reward.
``on_invalid: fill`` with a ``fill_value``: the item gets that value, flagged in
``extra_logs["mmrm_invalid"]`` (1.0 = failed, logged by OpenRLHF as a metric) and listed in
``errors``. Choose the fill value deliberately (e.g. the reward of a clearly bad answer).

**Sizing.** Because the client ignores ``Retry-After`` and gives up after ~5 s of 1 s retries, a
503 from admission control or Serve's queue loses rewards. Size for the peak burst (see
:func:`size_service`): ``admission.max_inflight`` and, per model, ``num_replicas *
max_ongoing_requests + max_queued_requests`` at least the peak number of concurrent requests
(with headroom), and ``limits.request_timeout_s`` long enough to drain a burst yet under the
client's 180 s, or a slow burst turns into timeouts and retries that add load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrm.rl.reward_fn import media_source
from mmrm.rm import service_defaults

__all__ = ["AGENT_FILE", "CLIENT_TIMEOUT_S", "OPENRLHF_COMMIT", "OPENRLHF_RELEASE", "Sizing", "check_service", "request_body", "size_service"]

#: The OpenRLHF commit whose remote-reward client this module was first matched against.
OPENRLHF_COMMIT = "3c3be6234e0cb353e76bb8019947db9dfe99fca7"
#: The OpenRLHF release whose client code this module was checked against (tests/test_rl_clients.py).
OPENRLHF_RELEASE = "0.11.2"
#: The file to pass as OpenRLHF's ``--train.agent_func_path`` (:mod:`mmrm.rl.openrlhf_agent`; importing
#: that module needs OpenRLHF, naming its file does not).
AGENT_FILE = str(Path(__file__).with_name("openrlhf_agent.py"))
#: OpenRLHF's aiohttp total timeout per reward request, its tries, and the pause between tries.
CLIENT_TIMEOUT_S = 180.0
CLIENT_TRIES = 5
CLIENT_RETRY_PAUSE_S = 1.0

# What a serve config means when it leaves a knob out (rl never imports serve: it pulls in Ray).
_DEFAULTS = {"max_inflight": service_defaults.MAX_INFLIGHT, "max_ongoing_requests": service_defaults.MAX_ONGOING_REQUESTS,
             "max_queued_requests": service_defaults.MAX_QUEUED_REQUESTS, "num_replicas": service_defaults.NUM_REPLICAS,
             "request_timeout_s": service_defaults.REQUEST_TIMEOUT_S}


def request_body(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any],
                 images: Sequence[Any] | None = None) -> dict[str, Any]:
    """The JSON body OpenRLHF POSTs (``query``/``prompts``/``labels``), plus mmrm's ``images`` when given.

    ``images`` has one entry per query: a list of images, one image, or ``None``; PIL images and
    bytes become data URIs.

    >>> request_body(["<q>"], ["<p>"], ["4"])
    {'query': ['<q>'], 'prompts': ['<p>'], 'labels': ['4']}
    >>> request_body(["<q>"], ["<p>"], [None], images=[["data:image/png;base64,iVBO"]])["images"]
    [['data:image/png;base64,iVBO']]
    """
    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"query, prompts and labels are parallel lists; got {len(queries)}, {len(prompts)}, {len(labels)}")
    body: dict[str, Any] = {"query": list(queries), "prompts": list(prompts), "labels": list(labels)}
    if images is not None:
        if len(images) != len(queries):
            raise ValueError(f"images has {len(images)} entries for {len(queries)} queries; give one per query")
        body["images"] = [None if im is None else [media_source(x) for x in im] if isinstance(im, (list, tuple))
                          else media_source(im) for im in images]
    return body


@dataclass(frozen=True)
class Sizing:
    """Recommended service settings for one OpenRLHF run (see :func:`size_service`)."""

    peak_requests: int
    max_inflight: int
    num_replicas: int
    max_ongoing_requests: int
    max_queued_requests: int
    request_timeout_s: float
    drain_s: float | None
    notes: list[str] = field(default_factory=list)

    def args(self) -> dict[str, Any]:
        """The parts of a serve config ``args`` block to set (merge into yours)."""
        return {
            "admission": {"max_inflight": self.max_inflight},
            "limits": {"request_timeout_s": self.request_timeout_s},
            "model": {"num_replicas": self.num_replicas, "max_ongoing_requests": self.max_ongoing_requests,
                      "max_queued_requests": self.max_queued_requests},
        }


def size_service(
    *,
    rollout_batch_size: int,
    n_samples_per_prompt: int,
    vllm_generate_batch_size: int | None = None,
    eval_batch_size: int = 0,
    eval_n_samples_per_prompt: int = 0,
    items_per_s_per_replica: float | None = None,
    num_replicas: int | None = None,
    headroom: float = 1.25,
) -> Sizing:
    """Service settings under which an OpenRLHF run does not hit the queue limit.

    Args:
        rollout_batch_size, n_samples_per_prompt, vllm_generate_batch_size: OpenRLHF's
            ``--rollout.batch_size``, ``--rollout.n_samples_per_prompt``,
            ``--rollout.vllm_generate_batch_size`` (default: the rollout batch size).
        eval_batch_size, eval_n_samples_per_prompt: the evaluation burst, if you evaluate.
        items_per_s_per_replica: measured scoring throughput of one replica (``mmrm`` speed
            benchmark); with it, the replica count is chosen so a peak burst drains in well under
            the client's 180 s timeout.
        num_replicas: a fixed replica count (overrides the throughput-based choice).
        headroom: factor over the peak for the bounds (default 1.25).

    >>> s = size_service(rollout_batch_size=128, n_samples_per_prompt=8)
    >>> s.peak_requests, s.max_inflight, s.max_ongoing_requests, s.max_queued_requests
    (1024, 1280, 1280, 1280)
    >>> size_service(rollout_batch_size=128, n_samples_per_prompt=8, items_per_s_per_replica=4).num_replicas
    5
    """
    for name, v in (("rollout_batch_size", rollout_batch_size), ("n_samples_per_prompt", n_samples_per_prompt)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if headroom < 1:
        raise ValueError(f"headroom must be >= 1, got {headroom}")
    gen = vllm_generate_batch_size or rollout_batch_size
    peak = max(gen * n_samples_per_prompt, eval_batch_size * eval_n_samples_per_prompt)
    bound = math.ceil(peak * headroom)
    notes: list[str] = []
    # The service's deadline sits at two thirds of the client's timeout (it answers before the client gives up),
    # and replicas are chosen so a peak burst drains in a third of it (60 s), leaving room for slow batches.
    deadline = round(CLIENT_TIMEOUT_S * 2 / 3, 1)
    if num_replicas is None:
        if items_per_s_per_replica:
            num_replicas = max(1, math.ceil(peak / (items_per_s_per_replica * CLIENT_TIMEOUT_S / 3)))
        else:
            num_replicas = 1
            notes.append("pass items_per_s_per_replica (measured) to size replicas for the drain time")
    drain = peak / (items_per_s_per_replica * num_replicas) if items_per_s_per_replica else None
    if drain is not None and drain > deadline:
        notes.append(f"a peak burst of {peak} requests takes ~{drain:.0f} s on {num_replicas} replica(s), over the "
                     f"{deadline:.0f} s deadline: add replicas or lower the generation batch")
    return Sizing(
        peak_requests=peak,
        max_inflight=bound,
        num_replicas=num_replicas,
        # Every request waits in a replica slot or Serve's queue, never in a 503; the replica's dynamic
        # batcher (max_batch_size) decides how many are computed together.
        max_ongoing_requests=math.ceil(bound / num_replicas),
        max_queued_requests=bound,
        request_timeout_s=deadline,
        drain_s=drain,
        notes=notes,
    )


def check_service(args: Mapping[str, Any], sizing: Sizing, *, model: str | None = None) -> list[str]:
    """Problems of a serve config ``args`` block (a plain dict, as in the YAML) for this sizing.

    ``model`` names the model that scores ``/get_reward`` (default: ``compat.openrlhf.model``, else
    the first). An empty list means the run will not meet the queue limits.
    """
    problems: list[str] = []
    inflight = (args.get("admission") or {}).get("max_inflight", _DEFAULTS["max_inflight"])
    if inflight < sizing.peak_requests:
        problems.append(f"admission.max_inflight={inflight} is below the peak of {sizing.peak_requests} concurrent "
                        f"requests: OpenRLHF ignores Retry-After and drops the reward after {CLIENT_TRIES} tries; "
                        f"set it to >= {sizing.max_inflight}")
    models = list(args.get("models") or [])
    name = model or ((args.get("compat") or {}).get("openrlhf") or {}).get("model")
    m = next((x for x in models if x.get("name") == name), models[0] if models and name is None else None)
    if m is None:
        problems.append(f"no served model {name!r} for /get_reward")
    else:
        auto = m.get("autoscaling")
        replicas = (auto or {}).get("max_replicas", 1) if auto else m.get("num_replicas") or _DEFAULTS["num_replicas"]
        capacity = replicas * m.get("max_ongoing_requests", _DEFAULTS["max_ongoing_requests"]) + \
            m.get("max_queued_requests", _DEFAULTS["max_queued_requests"])
        if m.get("max_queued_requests", 0) != -1 and capacity < sizing.peak_requests:
            problems.append(f"model {m.get('name')!r}: replicas x max_ongoing_requests + max_queued_requests = "
                            f"{capacity} is below the peak of {sizing.peak_requests}: Serve answers 503 to the rest")
    timeout = (args.get("limits") or {}).get("request_timeout_s", _DEFAULTS["request_timeout_s"])
    if timeout >= CLIENT_TIMEOUT_S:
        problems.append(f"limits.request_timeout_s={timeout} is not under OpenRLHF's {CLIENT_TIMEOUT_S:.0f} s client "
                        "timeout: the client gives up first and retries, adding load")
    if sizing.drain_s is not None and sizing.drain_s > timeout:
        problems.append(f"a peak burst drains in ~{sizing.drain_s:.0f} s, longer than limits.request_timeout_s="
                        f"{timeout}: requests at the back of the burst time out (504)")
    return problems
