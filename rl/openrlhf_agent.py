"""An OpenRLHF agent executor that sends each rollout's images to mmrm's ``/get_reward``.

OpenRLHF 0.11.2's own remote reward client sends text only: ``SingleTurnAgentExecutor.execute``
gets the sample's ``images`` (and hands them to vLLM), but calls ``_fetch_rewards_via_http([query],
[prompt], [label])`` without them, so a VLM rollout reaches the reward service with image
placeholders and no pixels. This file is OpenRLHF's ``--train.agent_func_path`` (OpenRLHF loads
the file and builds its ``AgentExecutor()`` with no arguments)::

    MMRM_BASE_URL=http://rm.internal:8000 \\
    python -m openrlhf.cli.train_ppo_ray ... \\
        --train.agent_func_path $(python -c 'import mmrm.rl.openrlhf as m; print(m.AGENT_FILE)')

(set ``MMRM_BASE_URL``, and ``MMRM_API_TOKEN`` if the service wants a token, in the Ray job's
environment, e.g. ``ray job submit --runtime-env-json '{"env_vars": {...}}'``). Everything else is
OpenRLHF's own single-turn executor: generation, truncation, the output it builds, and how it
reads the answer. Only the reward request differs: mmrm's body (:func:`mmrm.rl.openrlhf.request_body`:
``query``/``prompts``/``labels`` plus ``images``, loaded with OpenRLHF's own
``openrlhf.utils.vlm_utils.load_images``, so mmrm scores the pixels the policy saw, as PNG data
URIs), sent through :class:`mmrm.client.AsyncClient` (its retry policy: 429/503 honour
``Retry-After``, a 4xx is not retried, unlike OpenRLHF's five blind tries).

Checked against OpenRLHF 0.11.2 (the released wheel): ``openrlhf/utils/agent.py``
(``SingleTurnAgentExecutor.__init__(remote_rm_url)``, ``execute(prompt, label, sampling_params,
max_length, hf_tokenizer, llm_engine, images=None)``, ``_fetch_rewards_via_http``) and
``openrlhf/trainer/ray/vllm_engine.py::_load_agent_executor`` (the module's ``AgentExecutor``,
a subclass of ``AgentExecutorBase``, built with no arguments; ``--train.agent_func_path`` also sets
``--reward.remote_url`` to ``"agent"``). OpenRLHF's custom ``reward_func(queries, prompts, labels)``
file gets no images either, so it cannot carry them; this executor is the one place that has them.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from typing import Any

from openrlhf.utils.agent import SingleTurnAgentExecutor

from mmrm.client import AsyncClient
from mmrm.client.base import BASE_URL_ENV
from mmrm.rl.openrlhf import request_body
from mmrm.rl.reward_fn import media_source

__all__ = ["AgentExecutor", "OPENRLHF_RELEASE", "ROUTE"]

#: The OpenRLHF release this executor was checked against.
OPENRLHF_RELEASE = "0.11.2"
ROUTE = "/get_reward"

# The images of the rollout being executed: execute() sets them for its own task, so concurrent
# rollouts on the engine's event loop never see each other's.
_IMAGES: contextvars.ContextVar[Any] = contextvars.ContextVar("mmrm_openrlhf_images", default=None)


def _sources(images: Any) -> list[str] | None:
    if not images:
        return None
    from openrlhf.utils.vlm_utils import load_images  # OpenRLHF's loader: the pixels the policy saw

    loaded = load_images(images)
    return [media_source(img) for img in loaded] or None


class AgentExecutor(SingleTurnAgentExecutor):
    """OpenRLHF's single-turn executor, its reward request carrying the rollout's images to mmrm.

    Args:
        base_url: the mmrm service (default ``$MMRM_BASE_URL``); the route is ``/get_reward``.
        client_kwargs: for :class:`mmrm.client.AsyncClient` (``token``, ``timeout``, ``max_retries``, ...).
    """

    def __init__(self, base_url: str | None = None, **client_kwargs: Any) -> None:
        url = (base_url or os.environ.get(BASE_URL_ENV) or "").rstrip("/")
        if not url:
            raise ValueError(f"mmrm's OpenRLHF executor needs the service's address: set ${BASE_URL_ENV} in the Ray "
                             "job's environment (e.g. http://rm.internal:8000)")
        # OpenRLHF computes a reward only when it has an endpoint; this one is also what it logs.
        super().__init__(url + ROUTE)
        self.base_url = url
        self.client_kwargs = client_kwargs
        self._clients: dict[int, AsyncClient] = {}

    def _client(self) -> AsyncClient:
        # one client per event loop (an httpx pool belongs to the loop it was opened on)
        key = id(asyncio.get_running_loop())
        if key not in self._clients:
            self._clients[key] = AsyncClient(base_url=self.base_url, **self.client_kwargs)
        return self._clients[key]

    async def execute(self, prompt: Any, label: Any, sampling_params: Any, max_length: int, hf_tokenizer: Any,
                      llm_engine: Any, images: Any = None) -> dict[str, Any]:
        """OpenRLHF's ``execute``, with this rollout's images kept for its reward request."""
        token = _IMAGES.set(images)
        try:
            return await super().execute(prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine,
                                         images=images)
        finally:
            _IMAGES.reset(token)

    async def _fetch_rewards_via_http(self, queries_list: list[str], prompts_list: list[str],
                                      labels_list: list[Any]) -> list[dict[str, Any]]:
        """One ``/get_reward`` request for the queries (the current rollout's images with each)."""
        srcs = await asyncio.to_thread(_sources, _IMAGES.get())
        body = request_body(queries_list, prompts_list, labels_list,
                            images=None if srcs is None else [srcs] * len(queries_list))
        return [await self._client().request("POST", ROUTE, json=body)]
