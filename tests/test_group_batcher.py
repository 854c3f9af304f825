"""GroupBatcher: concurrent per-sample calls coalesced by group id (what a verl reward worker sees)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence

import pytest

from mmrm.rl.group_batcher import GroupBatcher


class Recorder:
    """The batched function: records each call's (items, ids) and answers 10 * item."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[list[int], list[Hashable | None]]] = []
        self.fail = fail

    async def __call__(self, items: Sequence[int], gids: Sequence[Hashable | None]) -> list[int]:
        self.calls.append((list(items), list(gids)))
        await asyncio.sleep(0.001)
        if self.fail:
            raise ValueError("service down")
        return [10 * i for i in items]


async def _gather(b: GroupBatcher, subs: list[tuple[int, Hashable | None]], delays: dict[int, float] | None = None):
    async def one(item: int, gid: Hashable | None):
        await asyncio.sleep((delays or {}).get(item, 0.0))
        return await b.submit(item, gid)

    return await asyncio.gather(*(one(i, g) for i, g in subs))


def test_complete_groups_go_out_together_and_whole() -> None:
    rec = Recorder()
    b = GroupBatcher(rec, group_size=2, group_wait_s=5.0)
    t0 = time.monotonic()
    out = asyncio.run(_gather(b, [(1, "a"), (3, "b"), (2, "a"), (4, "b")]))
    assert time.monotonic() - t0 < 2.0  # nobody waited for the group timeout
    assert out == [(10, True), (30, True), (20, True), (40, True)]
    assert len(rec.calls) == 1
    items, gids = rec.calls[0]
    assert sorted(zip(items, gids)) == [(1, "a"), (2, "a"), (3, "b"), (4, "b")]
    assert (b.groups, b.items_alone, b.calls) == (2, 0, 1)


def test_a_short_group_waits_then_its_items_go_alone() -> None:
    """A group split across workers: the half here waits group_wait_s, then is scored item by item
    (id None), in one call with other items that became ready at the same time."""
    rec = Recorder()
    b = GroupBatcher(rec, group_size=3, group_wait_s=0.3)
    t0 = time.monotonic()
    out = asyncio.run(_gather(b, [(1, "a"), (2, "a"), (5, "b"), (6, "b"), (7, "b"), (9, None)]))
    took = time.monotonic() - t0
    assert out == [(10, False), (20, False), (50, True), (60, True), (70, True), (90, False)]
    assert 0.3 <= took < 2.0
    whole = [c for c in rec.calls if "b" in c[1]]  # with the id-less item, ready at the same time
    assert len(whole) == 1 and sorted(zip(*whole[0]), key=str) == [(5, "b"), (6, "b"), (7, "b"), (9, None)]
    late = [c for c in rec.calls if 1 in c[0]]
    assert len(late) == 1 and sorted(late[0][0]) == [1, 2] and late[0][1] == [None, None]
    assert (b.groups, b.items_alone) == (1, 3)
    assert b.pending() == {"open_groups": {}, "ready": 0}


def test_members_arriving_apart_still_make_a_group() -> None:
    """Rollouts finish at different times: a member arriving within group_wait_s completes the group."""
    rec = Recorder()
    b = GroupBatcher(rec, group_size=2, group_wait_s=1.0)
    out = asyncio.run(_gather(b, [(1, "a"), (2, "a")], delays={2: 0.2}))
    assert out == [(10, True), (20, True)] and len(rec.calls) == 1


def test_a_failed_call_reaches_every_caller_and_nothing_hangs() -> None:
    b = GroupBatcher(Recorder(fail=True), group_size=2, group_wait_s=0.1)

    async def run() -> list[object]:
        return await asyncio.gather(*(b.submit(i, g) for i, g in [(1, "a"), (2, "a"), (3, "z")]),
                                    return_exceptions=True)

    out = asyncio.run(asyncio.wait_for(run(), timeout=10))
    assert all(isinstance(e, ValueError) and str(e) == "service down" for e in out)


def test_a_wrong_result_count_is_an_error_for_every_caller() -> None:
    async def short(items: Sequence[int], gids: Sequence[Hashable | None]) -> list[int]:
        return [0]

    b = GroupBatcher(short, group_size=2)

    async def run() -> list[object]:
        return await asyncio.gather(b.submit(1, "a"), b.submit(2, "a"), return_exceptions=True)

    out = asyncio.run(run())
    assert all(isinstance(e, RuntimeError) and "1 results for 2 items" in str(e) for e in out)


@pytest.mark.parametrize("kw", [{"group_size": 0}, {"group_size": 2, "group_wait_s": -1}])
def test_bad_settings_are_refused(kw: dict) -> None:
    with pytest.raises(ValueError):
        GroupBatcher(Recorder(), **kw)
