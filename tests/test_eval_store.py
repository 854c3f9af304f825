"""The append-only results file: torn writes at every byte, repair, locking, and real SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_until
from mmrm.eval.store import ResultStore, decode_line, encode_line
from mmrm.rm.errors import ConfigError


def rec(i: int, variant: str = "original", **extra: object) -> dict:
    return {"benchmark": "b", "pair_key": f"p{i}", "scorer_key": "s", "variant": variant,
            "text": f"ünïcode \t tab \n newline {i}", **extra}


def test_round_trip_and_last_record_wins(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.jsonl")
    with store.writer() as w:
        assert w.append([rec(0), rec(1)]) == 2
        w.append([rec(0, value=2)])
    recs, st = store.load()
    assert len(recs) == 2 and recs[("b", "p0", "s", "original")]["value"] == 2
    assert st.valid == 3 and st.superseded == 1 and st.corrupt == 0 and not st.torn_tail
    line = encode_line(rec(5))
    assert line.count(b"\n") == 1 and decode_line(line[:-1]) == rec(5)


def test_every_truncation_point_loads_a_clean_prefix(tmp_path: Path) -> None:
    """A SIGKILL mid-write leaves a byte prefix of the file: at every cut, loading returns exactly the
    complete records before the cut, never a corrupt one, and a writer then repairs the tail."""
    full = tmp_path / "full.jsonl"
    with ResultStore(full).writer() as w:
        for i in range(4):
            w.append([rec(i)])
    data = full.read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    cut_file = tmp_path / "cut.jsonl"
    for cut in range(len(data) + 1):
        cut_file.write_bytes(data[:cut])
        recs, st = ResultStore(cut_file).load()
        complete = sum(e <= cut for e in ends)
        assert sorted(k[1] for k in recs) == [f"p{i}" for i in range(complete)], cut
        assert st.corrupt == 0 and st.torn_tail == (cut not in ends and cut != 0)
    # the writer truncates a torn tail, then appends whole lines
    cut_file.write_bytes(data[: ends[1] + 7])
    with ResultStore(cut_file).writer() as w:
        assert w.repaired_bytes == 7
        w.append([rec(9)])
    recs, st = ResultStore(cut_file).load()
    assert sorted(k[1] for k in recs) == ["p0", "p1", "p9"] and st.corrupt == 0 and not st.torn_tail


def test_corrupt_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    with ResultStore(p).writer() as w:
        w.append([rec(0), rec(1), rec(2)])
    lines = p.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"p1", b"pX")  # bit rot: checksum no longer matches
    p.write_bytes(b"\n".join(lines))
    recs, st = ResultStore(p).load()
    assert sorted(k[1] for k in recs) == ["p0", "p2"] and st.corrupt == 1 and st.corrupt_lines == [2]


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.jsonl")
    with store.writer(), pytest.raises(ConfigError, match="another run"):
        store.writer().open()
    with store.writer() as w:  # released
        w.append([rec(0)])


WRITER = r"""
import sys
from mmrm.eval.store import ResultStore
path, start = sys.argv[1], int(sys.argv[2])
big = "x" * 300_000
with ResultStore(path).writer() as w:
    i = start
    while True:
        w.append([{"benchmark": "b", "pair_key": f"p{i}-{j}", "scorer_key": "s", "variant": "original", "pad": big}
                  for j in range(4)])
        i += 1
"""


def test_sigkill_of_a_writing_process_at_random_times(tmp_path: Path) -> None:
    """A real writer process, SIGKILLed at random moments (large records: kills land mid-write
    too); after each kill every stored record is intact and the next writer carries on."""
    path = tmp_path / "r.jsonl"
    rng = random.Random(0)
    seen_torn = 0
    total_valid = 0
    for round_ in range(8):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(1000 * round_)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # until the writer has written (or has exited: the returncode check below says why)
        wait_until(lambda: (path.exists() and path.stat().st_size > 0) or p.poll() is not None, timeout=30,
                   interval=0.01, message="the writer wrote nothing")
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()[-2000:] if p.stderr else ""
        recs, st = ResultStore(path).load()
        assert st.corrupt == 0 and st.superseded == 0
        assert all(r["pad"] == "x" * 300_000 for r in recs.values())
        assert len(recs) >= total_valid  # nothing stored is ever lost
        total_valid = len(recs)
        seen_torn += st.torn_tail
    assert total_valid > 0
    with ResultStore(path).writer() as w:
        w.append([rec(0)])
    recs, st = ResultStore(path).load()
    assert not st.torn_tail and st.corrupt == 0 and len(recs) == total_valid + 1
