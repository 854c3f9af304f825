"""Coalesce concurrent per-sample reward calls into batched group calls.

RL frameworks that score one sample per call (verl's reward loop calls ``run_single`` once per
sample, concurrently) lose what a reward service does best with a GRPO group: encode the shared
prompt and images once (``/v1/rank``) and batch many items per request. :class:`GroupBatcher`
sits between the per-sample calls and ONE batched function:

* a sample with a group id waits until its group has ``group_size`` members, then the whole group
  is scored as a group;
* a group that is still short ``group_wait_s`` after its first member arrived (the framework split
  it across workers, or it is a validation batch of another size) is scored item by item;
* a sample without a group id is scored item by item at once;
* whatever is ready within ``batch_wait_s`` goes out in one call (several groups, and items).

The batched function gets the items and, per item, its group id (``None`` for item-by-item
scoring) and returns one result per item, in order. An exception it raises reaches every caller of
that batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["GroupBatcher"]

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[Sequence[T], Sequence[Hashable | None]], Awaitable[Sequence[R]]]


class GroupBatcher(Generic[T, R]):
    """Per-sample ``await batcher.submit(item, group_id)`` calls, scored together (see the module doc).

    Args:
        run: the batched function ``(items, group_ids) -> results`` (``None`` id: score alone).
        group_size: members of a complete group (GRPO's samples per prompt).
        group_wait_s: how long a short group waits for its missing members before its items are
            scored one by one.
        batch_wait_s: how long the first ready item waits for others to share its call.

    One batcher serves one event loop (a verl reward worker has one).
    """

    def __init__(self, run: BatchFn, *, group_size: int, group_wait_s: float = 2.0, batch_wait_s: float = 0.01) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if group_wait_s < 0 or batch_wait_s < 0:
            raise ValueError(f"group_wait_s and batch_wait_s must be >= 0, got {group_wait_s}, {batch_wait_s}")
        self.run = run
        self.group_size = group_size
        self.group_wait_s = group_wait_s
        self.batch_wait_s = batch_wait_s
        self._open: dict[Hashable, list[tuple[T, asyncio.Future]]] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._ready: list[tuple[T, Hashable | None, asyncio.Future]] = []
        self._flush: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        #: counters: groups scored whole, items scored one by one (of a short group or without id), calls
        self.groups = 0
        self.items_alone = 0
        self.calls = 0

    async def submit(self, item: T, group_id: Hashable | None) -> tuple[R, bool]:
        """The item's result, and whether it was scored as part of a whole group."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        if group_id is None or self.group_size == 1:
            self._make_ready([(item, fut)], None)  # a group of one is an item
            return await fut
        members = self._open.setdefault(group_id, [])
        members.append((item, fut))
        if len(members) >= self.group_size:
            del self._open[group_id]
            timer = self._timers.pop(group_id, None)
            if timer is not None:
                timer.cancel()
            self._make_ready(members, group_id)
        elif len(members) == 1:
            self._timers[group_id] = loop.call_later(self.group_wait_s, self._expire, group_id)
        return await fut

    def _expire(self, group_id: Hashable) -> None:
        self._timers.pop(group_id, None)
        members = self._open.pop(group_id, None)
        if members:
            self._make_ready(members, None)

    def _make_ready(self, members: list[tuple[T, asyncio.Future]], group_id: Hashable | None) -> None:
        self._ready.extend((item, group_id, fut) for item, fut in members)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.batch_wait_s, self._start)

    def _start(self) -> None:
        self._flush = None
        batch, self._ready = self._ready, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._tasks.add(task)  # a reference until done: the loop keeps only weak ones
            task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[T, Hashable | None, asyncio.Future]]) -> None:
        items = [b[0] for b in batch]
        gids = [b[1] for b in batch]
        self.calls += 1
        self.groups += len({g for g in gids if g is not None})
        self.items_alone += sum(g is None for g in gids)
        try:
            results = list(await self.run(items, gids))
            if len(results) != len(items):
                raise RuntimeError(f"the batched function returned {len(results)} results for {len(items)} items")
        except BaseException as e:  # noqa: BLE001 - every waiting caller gets the failure, none hangs
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for (_, gid, fut), r in zip(batch, results):
            if not fut.done():
                fut.set_result((r, gid is not None))

    def pending(self) -> dict[str, Any]:
        """What waits now: open (short) groups and their member counts, items ready to go."""
        return {"open_groups": {str(k): len(v) for k, v in self._open.items()}, "ready": len(self._ready)}
