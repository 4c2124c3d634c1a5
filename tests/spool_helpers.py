"""Test helpers for the spool, runner and local delivery tests."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed

from twistedmail.interfaces import User

__all__ = ["FakeStore", "FsyncRecorder", "ManualThreads"]

_T = TypeVar("_T")


class FsyncRecorder:
    """An fsync that records what it synced (``"file"`` or ``"dir"``) in
    C{events}, which tests may append their own markers to."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.events: list[str] = []
        self.fail = fail

    def __call__(self, fd: int) -> None:
        if self.fail is not None:
            raise self.fail
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        self.events.append(kind)
        os.fsync(fd)

    @property
    def dirs(self) -> int:
        """How many folder fsyncs were done."""
        return self.events.count("dir")


class ManualThreads:
    """A thread runner whose jobs run only when the test says so."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], object], Deferred[object]]] = []

    def __call__(self, f: Callable[[], _T], /) -> Deferred[_T]:
        d: Deferred[_T] = Deferred()
        self.jobs.append((f, d))  # type: ignore[arg-type]
        return d

    def run_one(self) -> None:
        """Run the oldest waiting job."""
        f, d = self.jobs.pop(0)
        maybeDeferred(f).chainDeferred(d)

    def run_all(self) -> None:
        """Run jobs until none wait (jobs may queue more)."""
        while self.jobs:
            self.run_one()


class FakeStore:
    """A Maildir store that keeps deliveries by unique name."""

    def __init__(self, root: str = "/mail") -> None:
        self.root = root
        self.delivered: dict[str, tuple[str, bytes, int | None]] = {}
        self.error: Exception | None = None

    def mailbox_path(self, user: User) -> str:
        """The user's Maildir under the root."""
        return os.path.join(self.root, user.mailbox)

    def deliver(
        self, path: str, message: bytes, unique: str, quota: int | None
    ) -> Deferred[str]:
        """Record the message once per unique name."""
        if self.error is not None:
            return fail(self.error)
        self.delivered.setdefault(unique, (path, message, quota))
        return succeed(unique)
