"""Test helpers for the Maildir store tests (tests.test_maildir_*)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from twistedmail.maildir import MaildirStore

__all__ = ["CountingOpener", "make_store", "run_now", "write_file"]


def run_now(f: Callable[[], Any]) -> Deferred[Any]:
    """A synchronous stand-in for the thread runner."""
    return maybeDeferred(f)


class CountingOpener:
    """An opener that records every path it opens."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, path: str) -> IO[bytes]:
        self.opened.append(path)
        return open(path, "rb")


def make_store(
    root: str, clock: Clock | None = None, opener: CountingOpener | None = None
) -> MaildirStore:
    """A store on ``root`` with a synchronous runner and a clock at a
    realistic time (2026)."""
    if clock is None:
        clock = Clock()
        clock.advance(1_790_000_000)
    if opener is None:
        return MaildirStore(root, "mx.example.test", clock, run_now)
    return MaildirStore(root, "mx.example.test", clock, run_now, opener=opener)


def write_file(path: str, data: bytes, mtime: float | None = None) -> None:
    """Write a file directly (to fake other programs' Maildir files)."""
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
