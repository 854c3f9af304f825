"""A verl reward manager that scores with mmrm: each sample's images, GRPO groups through ``/v1/rank``.

Configured in verl's own way, as a reward manager loaded by importlib (no file to write)::

    reward.reward_manager.source=importlib
    reward.reward_manager.name=MmrmRewardManager
    reward.reward_manager.module.path=pkg://mmrm.rl.verl_manager
    +reward.reward_kwargs.mmrm_url=http://rm.internal:8000
    +reward.reward_kwargs.mmrm_model=rm-small
    +reward.reward_kwargs.mmrm_on_invalid=fallback
    +reward.reward_kwargs.mmrm_fallback=0.0

(the other ``mmrm_*`` keys of :func:`mmrm.rl.verl.from_reward_kwargs`, plus ``mmrm_group_size``,
default ``actor_rollout_ref.rollout.n``, and ``mmrm_group_wait_s``, default 2.0). Leave
``reward.reward_model.enable`` off: mmrm is the reward model, outside verl.

Checked against verl 0.9.1 (the released wheel):

* ``verl/trainer/ppo/reward.py``: ``resolve_reward_manager_cls`` with ``source == "importlib"``
  loads ``reward_manager.name`` from ``reward_manager.module.path`` (``pkg://`` or a file), and
  ``load_reward_manager`` builds it as ``cls(config=, tokenizer=, compute_score=,
  reward_router_address=, reward_model_tokenizer=)``.
* ``verl/experimental/reward_loop/reward_loop.py``: ``RewardLoopManager.compute_rm_score`` pads the
  batch to a multiple of ``reward.num_workers``, ``chunk``s it across the Ray ``RewardLoopWorker``
  actors, and each worker's ``compute_score_batch`` calls ``run_single`` once per sample,
  concurrently (``asyncio.gather``); the results' ``reward_score`` go through
  ``assemble_rm_scores`` (the score at each response's last valid token: verl's ``rm_scores``)
  and every key of ``reward_extra_info`` becomes a ``non_tensor_batch`` column. With the agent
  loop's reward during rollout (``agent_loop.py::_compute_score``), each finished sample goes to a
  random worker.
* What a sample carries there (``utils/dataset/rl_dataset.py::_build_messages`` and the trainer's
  ``_get_gen_batch``): ``raw_prompt`` (chat messages whose ``<image>`` markers became ``{"type":
  "image", "image": <PIL image>}`` parts: this is where a VLM dataset's images are at 0.9.1),
  ``uid`` (the prompt's id, shared by its ``rollout.n`` samples), ``reward_model.ground_truth``,
  and ``responses`` / ``attention_mask``. A ``multi_modal_data`` entry (``{"image" | "images":
  [...]}``), where a recipe or a custom agent loop puts one, fills the prompt's image placeholders.

**Groups.** Per worker, concurrent ``run_single`` calls are coalesced by ``uid``
(:class:`~mmrm.rl.group_batcher.GroupBatcher`): a complete group (``group_size`` samples) is scored
as one group (``/v1/rank`` for a served model: its prompt and images are encoded once); a group
still short after ``mmrm_group_wait_s`` (verl's chunking split it across workers, or the rollout's
per-sample reward sent its samples to different workers) is scored item by item (``/v1/score``);
whatever is ready together goes in one call. Both give the same raw rewards. Without a reward
model in verl (the usual setting here), the agent loop sends each finished sample alone to a random
reward worker: set ``reward.num_workers=1`` so a prompt's samples meet on one worker, and
``mmrm_group_wait_s`` to cover the spread of their finish times. Each sample's
``reward_extra_info`` has ``mmrm_invalid`` (1.0 where the fallback was used) and ``mmrm_grouped``
(1.0 where it was scored in a whole group).

**Failures** follow :class:`~mmrm.rl.verl.VerlReward`'s policy: ``mmrm_on_invalid=raise``
(default) fails verl's step with the sample's reason; ``fallback`` gives ``mmrm_fallback``, logged
and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from mmrm.rl.group_batcher import GroupBatcher
from mmrm.rl.verl import VerlReward, from_reward_kwargs

__all__ = ["MmrmRewardManager", "VERL_RELEASE"]

#: The verl release this manager was checked against.
VERL_RELEASE = "0.9.1"


def _cfg(node: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if node is None:
            return default
        node = node.get(key) if isinstance(node, Mapping) or hasattr(node, "get") else getattr(node, key, None)
    return default if node is None else node


def _plain(x: Any) -> Any:
    """numpy object arrays (how verl's non_tensor_batch holds lists) as lists."""
    return x.tolist() if hasattr(x, "tolist") and not isinstance(x, (str, bytes)) else x


def _images(mm: Any) -> list[Any] | None:
    if not isinstance(mm, Mapping):
        return None
    imgs = mm.get("images", mm.get("image"))
    return None if imgs is None else list(_plain(imgs))


class MmrmRewardManager(RewardManagerBase):
    """verl's reward manager for an mmrm reward (see the module doc for the settings)."""

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, reward_router_address: str | None = None,
                 reward_model_tokenizer: Any = None, **_: Any) -> None:
        super().__init__(config, tokenizer, compute_score)
        kw = {k: v for k, v in dict(_cfg(config, "reward", "reward_kwargs", default={}) or {}).items()
              if str(k).startswith("mmrm_")}  # other keys belong to verl (e.g. DAPO's overlong_buffer_cfg)
        group_size = int(kw.pop("mmrm_group_size", None) or _cfg(config, "actor_rollout_ref", "rollout", "n", default=1))
        group_wait_s = float(kw.pop("mmrm_group_wait_s", 2.0))
        self.verl_reward: VerlReward = from_reward_kwargs(kw)
        self.batcher: GroupBatcher = GroupBatcher(self._score, group_size=group_size, group_wait_s=group_wait_s)

    async def _score(self, items: Sequence[tuple[Any, str, Any, Any]], gids: Sequence[Hashable | None]) -> list[tuple[float, float]]:
        batch = await self.verl_reward.reward.arank_inputs(
            [i[0] for i in items], [i[1] for i in items], images=[i[2] for i in items],
            references=[i[3] for i in items], groups=gids)
        return self.verl_reward.settle(batch)

    async def run_single(self, data: Any) -> dict[str, Any]:
        """One sample's ``{"reward_score", "reward_extra_info"}`` (scored together with its group)."""
        item = data[-1:][0]  # multi-sequence outputs: the last sequence, as verl's own managers do
        response_ids = item.batch["responses"]
        valid = int(item.batch["attention_mask"][-response_ids.shape[-1]:].sum())
        text = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True))
        nt = item.non_tensor_batch
        raw = nt.get("raw_prompt")
        prompt = None if raw is None else list(_plain(raw))
        reference = _cfg(_plain(nt.get("reward_model")), "ground_truth")
        uid = nt.get("uid")
        uid = None if uid is None else str(_plain(uid))
        (score, invalid), grouped = await self.batcher.submit((prompt, text, _images(_plain(nt.get("multi_modal_data"))),
                                                               reference), uid)
        return {"reward_score": score, "reward_extra_info": {"mmrm_invalid": invalid, "mmrm_grouped": float(grouped)}}
