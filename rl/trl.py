"""TRL ``GRPOTrainer`` reward functions backed by mmrm.

>>> from mmrm.rl.trl import trl_reward_func                     # doctest: +SKIP
>>> trainer = GRPOTrainer(model=policy, reward_funcs=[trl_reward_func(RewardFn(rm))],
...                       args=GRPOConfig(...), train_dataset=dataset)    # doctest: +SKIP

Matched against TRL's ``GRPOTrainer._calculate_rewards`` / ``_generate_and_score_completions``
(huggingface/trl main at ``f2cd57710ae345ea6428ae95363267fcf38a3dc8``, 2026-07-24, and the released
``trl==1.16.0``; both agree on everything below):

* A custom reward function is called as ``f(prompts=..., completions=..., completion_ids=...,
  **columns, trainer_state=..., log_extra=..., log_metric=...)``: every dataset column except
  ``prompt``/``completion``/``completion_ids`` arrives as a keyword list aligned with ``prompts``
  (``images``/``image`` included), plus ``environments`` when the trainer has them. It must return
  one ``float | None`` per completion (a length mismatch raises).
* ``prompts`` are strings (standard format) or chat messages (conversational format). When the
  dataset has an ``images`` (or ``image``) column, TRL first runs ``prepare_multimodal_messages``, so
  the prompts handed to reward functions already carry ``{"type": "image", "image": <PIL image>}``
  parts AND the ``images`` column is passed as well; mmrm uses the images in the prompt and does not
  add them twice. ``completions`` are strings, or one-message lists
  ``[{"role": "assistant", "content": ...}]``.
* An ``async def`` reward function is detected (main: ``inspect.iscoroutinefunction``; 1.16 also
  takes callable objects) and run on TRL's own event loop with ``asyncio.gather`` beside the other
  async functions. :func:`trl_reward_func` returns a plain function or coroutine function, which
  both versions detect, named ``name`` (TRL logs ``rewards/<name>/mean``).

**Failure policy (TRL): ``None`` for that sample.** TRL turns ``None`` into NaN. In the rewards it
combines, ``nansum`` over reward functions drops a NaN, so the sample's reward is the weighted sum of
the OTHER functions. When EVERY reward function returned ``None`` for a sample, TRL marks it
unscorable: its reward stays NaN, it is left out of its group's mean and std (``nanmean``/
``nanstd``), its advantage is set to 0 (no gradient from it), it is left out of the logged
``reward`` mean, and TRL logs the warning "All reward functions returned None for the following
kwargs ...". mmrm adds two things: each failure is logged with its reason and counted
(``mmrm/invalid`` via TRL's ``log_metric``; an ``mmrm_error`` column in the completions table via
``log_extra``), and a call in which EVERY sample failed raises :class:`~mmrm.rl.reward_fn.RewardUnavailable`
by default (``on_all_failed="raise"``): a dead service or a broken checkpoint stops the run instead
of training for hours on zero advantages. ``on_all_failed="none"`` returns the ``None`` list.

**Shaping**: leave ``group_normalize`` off (the default); GRPOTrainer normalizes per group itself
(``scale_rewards``) AFTER gathering completions from every process, whereas a reward function only
sees its own process's share, which can split a group. Clipping, the length penalty and the
verifiable-reward hybrid are fine here (``references_column`` names the dataset column holding
the reference answer, e.g. ``"solution"``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from mmrm.rl.reward_fn import RewardBatch, RewardFn, RewardUnavailable

__all__ = ["TRL_COMMIT", "TRL_RELEASE", "trl_reward_func"]

log = logging.getLogger("mmrm.reward")

#: The huggingface/trl commit whose GRPOTrainer this adapter was matched against.
TRL_COMMIT = "f2cd57710ae345ea6428ae95363267fcf38a3dc8"
#: The TRL release whose GRPOTrainer runs this adapter in the tests (tests/test_grpo.py: sync and async,
#: in process and through the service, with images); ``_calculate_rewards`` there was re-read for this.
TRL_RELEASE = "1.16.0"

_TRL_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


def _images(kwargs: dict[str, Any], column: str | None, n: int) -> list[Any] | None:
    if column is not None and kwargs.get(column) is not None:
        return list(kwargs[column])
    if column == "images" and kwargs.get("image") is not None:  # TRL's single-image column
        return [[i] if i is not None else None for i in kwargs["image"]]
    return None


def trl_reward_func(
    reward: RewardFn,
    *,
    name: str | None = None,
    images_column: str | None = "images",
    references_column: str | None = None,
    on_all_failed: Literal["raise", "none"] = "raise",
    asynchronous: bool = False,
    on_batch: Callable[[RewardBatch], None] | None = None,
) -> Callable[..., Any]:
    """A GRPOTrainer reward function that scores with ``reward``.

    Args:
        reward: the :class:`~mmrm.rl.reward_fn.RewardFn` (in-process or remote).
        name: the function's ``__name__`` (TRL's metric names); default ``reward.name``.
        images_column: the dataset column with each prompt's images (``None``: ignore images
            outside the prompt). ``"images"`` also reads TRL's single-image column ``image``.
        references_column: the dataset column with reference answers (judges with reference-guided
            rubrics, and the hybrid shaping step); ``None``: no references.
        on_all_failed: ``"raise"`` (default): a call where every sample failed raises
            :class:`~mmrm.rl.reward_fn.RewardUnavailable`; ``"none"``: return the ``None`` list.
        asynchronous: return an ``async def`` function (TRL awaits it on its event loop, beside
            other async reward functions); the service path then never blocks a thread.
        on_batch: called with each call's :class:`~mmrm.rl.reward_fn.RewardBatch` (tests, custom logs).

    Returns:
        ``f(prompts, completions, **kwargs) -> list[float | None]``.
    """
    if on_all_failed not in ("raise", "none"):
        raise ValueError(f"on_all_failed must be 'raise' or 'none', got {on_all_failed!r}")
    if reward.shaping.group_normalize:
        log.warning("mmrm reward %s: group_normalize is on, but GRPOTrainer normalizes per group itself after "
                    "gathering every process's completions; a reward function sees only its own process's share", reward.name)
    fname = name or reward.name

    def _args(prompts: Sequence[Any], completions: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        refs = kwargs.get(references_column) if references_column else None
        if references_column and refs is None:
            raise KeyError(f"references_column={references_column!r} is not a dataset column; the reward function got "
                           f"{sorted(k for k in kwargs if k not in _TRL_KWARGS)}")
        # groups (when normalizing): samples with the same prompt content, images included (RewardFn's default)
        return {"images": _images(kwargs, images_column, len(completions)), "references": refs}

    def _finish(batch: RewardBatch, kwargs: dict[str, Any]) -> list[float | None]:
        if on_batch is not None:
            on_batch(batch)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for k, v in batch.log.metrics(prefix=f"{fname}/").items():
                log_metric(k, v)
        log_extra = kwargs.get("log_extra")
        if callable(log_extra) and batch.failed:
            log_extra(f"{fname}_error", batch.errors)
        if batch.rewards and all(r is None for r in batch.rewards) and on_all_failed == "raise":
            reasons = sorted({e for e in batch.errors if e})[:3]
            raise RewardUnavailable(f"mmrm reward {fname}: every one of {len(batch.rewards)} samples failed, so TRL "
                                    f"would train on zero advantages; reasons: {reasons}")
        return batch.rewards

    if asynchronous:
        async def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
            batch = await reward.ascore_inputs(prompts, completions, **_args(prompts, completions, kwargs))
            return _finish(batch, kwargs)
    else:
        def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:  # type: ignore[misc]
            batch = reward.score_inputs(prompts, completions, **_args(prompts, completions, kwargs))
            return _finish(batch, kwargs)

    reward_func.__name__ = reward_func.__qualname__ = fname
    reward_func.__doc__ = f"mmrm reward {fname!r}: {reward!r}"
    return reward_func
