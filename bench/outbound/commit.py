"""Micro-benchmark of one group commit batch of status rewrites, the way
the relay's attempt records go (see twistedmail/spool/store.py).

    .venv/bin/python bench/outbound/commit.py [--files 40] [--repetitions 7]

Times one batch of N status-file rewrites in a worker thread (as the
spool's thread pool runs it) while the main thread is idle and while it
runs pure Python (a busy reactor thread: every system call of the batch
hands it the GIL), two ways:

- ``file by file``: open, write, fsync, close and rename each file in turn,
  then fsync the folder (the group commit before c6dddc6);
- ``step by step``: the spool's group commit (``_GroupCommit._apply``):
  write every file, fsync each, close them, rename them, fsync the folder.

Prints the median and the range in milliseconds.  Files go to a temporary
folder on the file system of ``--dir`` (default: the current folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from twistedmail.interfaces import Envelope
from twistedmail.spool.store import (
    QueueEntry,
    RecipientRecord,
    Spool,
    _Batched,
    _fsync_dir,
    _status_bytes,
    _write_file,
)


def _batch(spool: Spool, n: int, round_: int) -> list[_Batched]:
    entry = QueueEntry.new("0" * 23, Envelope(sender="a@example.org"))
    records = (RecipientRecord("b@example.com", attempts=3, last_attempt=1.0),)
    data = _status_bytes(QueueEntry(entry.queue_id, entry.envelope, records))
    batch = []
    for i in range(n):
        tmp = spool.tmp_path(f"{round_}.{i}.status")
        target = spool.status_path(f"{i:023d}")
        batch.append(_Batched(None, [(tmp, target)], True, Deferred(), [(tmp, data)]))
    return batch


def file_by_file(spool: Spool, batch: list[_Batched]) -> None:
    """The old way: each file written, fsynced, closed and renamed in turn."""
    for item in batch:
        for path, data in item.writes:
            _write_file(path, [data], os.fsync)
        for source, target in item.renames:
            os.rename(source, target)
    _fsync_dir(spool.queue_dir, os.fsync)


def step_by_step(spool: Spool, batch: list[_Batched]) -> None:
    """The spool's group commit."""
    errors = spool._committer._apply(batch)
    assert not any(errors), errors


def timed(
    f: Callable[[Spool, list[_Batched]], None],
    spool: Spool,
    batch: list[_Batched],
    busy: bool,
) -> float:
    """Milliseconds for C{f} in a thread, the main thread idle or busy."""
    took: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        f(spool, batch)
        took.append(time.perf_counter() - start)

    t = threading.Thread(target=run)
    t.start()
    if busy:
        x = 0
        while t.is_alive():
            x += 1
    t.join()
    return took[0] * 1000


def main() -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--dir", default=".")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as path:
        spool = Spool(path, Clock())
        spool.prepare()
        round_ = 0
        for busy in (False, True):
            for name, f in (
                ("file by file", file_by_file),
                ("step by step", step_by_step),
            ):
                times = []
                for _ in range(args.repetitions):
                    round_ += 1
                    times.append(
                        timed(f, spool, _batch(spool, args.files, round_), busy)
                    )
                print(
                    f"{args.files} files, main thread {'busy' if busy else 'idle'}, "
                    f"{name}: median {statistics.median(times):.0f} ms "
                    f"(range {min(times):.0f}-{max(times):.0f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
