"""An append-only results file that survives SIGKILL at any moment, including mid-write.

Format: one record per line, ``<json>\\t<checksum>\\n``, where the checksum is the first 16 hex digits
of the sha256 of the JSON text. JSON never holds a raw tab or newline (``json.dumps`` escapes them),
so the last tab splits a line unambiguously.

Why this survives a kill:

* a record becomes visible only as one complete, checksummed line; a kill during ``write`` leaves a
  prefix of the file, so at worst a torn last line (no newline, or a checksum that does not match),
  which loading detects and ignores;
* a writer repairs the file before appending: it truncates a torn tail back to the last newline
  (holding an exclusive ``flock``, so no other writer is appending), then appends whole lines;
* each batch of records is written with one ``write`` and then ``fsync``-ed, so a record is on disk
  before the run counts it done.

Records are keyed by ``(benchmark, pair_key, scorer_key, variant)``; loading keeps the LAST valid
record per key (a recomputed record supersedes an older one) and counts what it skipped.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrm.rm.errors import ConfigError

__all__ = ["LoadStats", "ResultStore", "record_key"]

RecordKey = tuple[str, str, str, str]


def record_key(rec: dict[str, Any]) -> RecordKey:
    return (rec["benchmark"], rec["pair_key"], rec["scorer_key"], rec.get("variant", "original"))


def _checksum(payload: str) -> str:
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def encode_line(rec: dict[str, Any]) -> bytes:
    payload = json.dumps(rec, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return f"{payload}\t{_checksum(payload)}\n".encode()


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The record of one complete line (without its newline), or None if it is torn or corrupt."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    payload, sep, check = text.rpartition("\t")
    if not sep or _checksum(payload) != check:
        return None
    try:
        rec = json.loads(payload)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


@dataclass
class LoadStats:
    """What a load saw: valid records, corrupt/torn lines skipped, keys seen more than once."""

    lines: int = 0
    valid: int = 0
    corrupt: int = 0
    torn_tail: bool = False
    superseded: int = 0
    corrupt_lines: list[int] = field(default_factory=list)


class ResultStore:
    """The results file of evaluation runs (see the module docs).

    Reading needs no lock. Writing takes an exclusive lock for the life of the writer::

        with ResultStore(path).writer() as w:
            w.append(records)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---------------------------------------------------------------------------------------- read
    def iter_lines(self) -> Iterator[tuple[int, dict[str, Any] | None, bool]]:
        """(line number, record or None, complete) for every line of the file."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        last = len(lines) - 1  # after the final newline comes b"" (or a torn tail)
        for n, raw in enumerate(lines):
            if n == last:
                if raw:
                    yield n + 1, None, False
                return
            yield n + 1, decode_line(raw), True

    def load(self) -> tuple[dict[RecordKey, dict[str, Any]], LoadStats]:
        """The last valid record per key, and what was skipped."""
        out: dict[RecordKey, dict[str, Any]] = {}
        st = LoadStats()
        for n, rec, complete in self.iter_lines():
            st.lines += 1
            if not complete:
                st.torn_tail = True
                continue
            if rec is None:
                st.corrupt += 1
                st.corrupt_lines.append(n)
                continue
            try:
                k = record_key(rec)
            except KeyError:
                st.corrupt += 1
                st.corrupt_lines.append(n)
                continue
            st.valid += 1
            if k in out:
                st.superseded += 1
            out[k] = rec
        return out, st

    def records(self, *, benchmark: str | None = None, scorer_key: str | None = None) -> list[dict[str, Any]]:
        recs, _ = self.load()
        return [r for r in recs.values()
                if (benchmark is None or r["benchmark"] == benchmark) and (scorer_key is None or r["scorer_key"] == scorer_key)]

    # --------------------------------------------------------------------------------------- write
    def writer(self) -> StoreWriter:
        return StoreWriter(self.path)


class StoreWriter:
    """The one writer of a results file: exclusive lock, torn-tail repair, fsync per append."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.repaired_bytes = 0
        self._fd: int | None = None

    def __enter__(self) -> StoreWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ConfigError(f"{self.path} is being written by another run; wait for it or use another results file",
                                  field="results") from e
            raise
        self._fd = fd
        self._repair_tail()
        if created:
            _fsync_dir(self.path.parent)

    def _repair_tail(self) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        # Find the last newline; everything after it is a torn record from a killed writer.
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            chunk = os.pread(self._fd, pos - start, start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
            self.repaired_bytes = size - keep

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Write ``records`` as whole lines in one write, then fsync. Returns how many were written."""
        if self._fd is None:
            raise RuntimeError("the writer is not open")
        data = b"".join(encode_line(r) for r in records)
        if not data:
            return 0
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        return data.count(b"\n")

    def close(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
