"""Test helpers for the end-to-end flow test (tests/test_flow.py): start a
whole twistedmail instance on loopback, hold a dead port, read Maildirs,
and wait for a condition on the reactor with a deadline."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.config import Settings
from twistedmail.service import MailService, makeService

__all__ = [
    "Instance",
    "dead_port",
    "maildir_messages",
    "maildir_names",
    "start_instance",
    "wait_for",
]

#: Polling interval while waiting for a condition (seconds, on the reactor).
POLL = 0.01


class ConditionTimeout(AssertionError):
    """A condition did not hold before its deadline."""


async def wait_for(
    reactor: Any,
    check: Callable[[], Awaitable[bool] | bool],
    what: str,
    deadline: float = 20.0,
) -> None:
    """Look again every L{POLL} seconds (a C{deferLater} on the reactor)
    until C{check} is true.

    @param what: names the condition in the failure message.
    @param deadline: seconds of wall time before failing; the test's own
        timeout is the backstop.
    @raise ConditionTimeout: when C{check} is still false at the deadline.
    """
    # Wall time, not the reactor's: a deadline for the test itself.
    end = time.monotonic() + deadline
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise ConditionTimeout(f"gave up after {deadline}s waiting for {what}")
        await deferLater(reactor, POLL, lambda: None)


def dead_port(test: TestCase, host: str, port: int) -> None:
    """Make C{host:port} refuse connections for the test's lifetime.

    A TCP socket bound to the address but never listening: a connection
    attempt gets a reset (ECONNREFUSED), and no other program can start
    listening there while the test runs.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    test.addCleanup(sock.close)
    sock.bind((host, port))


def maildir_names(
    data_dir: str, mailbox: str, folders: tuple[str, ...] = ("new",)
) -> list[str]:
    """The base names (before ``:2,``) of the messages in a mailbox's
    folders (mailbox relative to the data folder's C{mail/}), sorted."""
    names: list[str] = []
    for folder in folders:
        path = os.path.join(data_dir, "mail", mailbox, folder)
        if os.path.isdir(path):
            names.extend(n.split(":2,")[0] for n in os.listdir(path))
    return sorted(names)


def maildir_messages(
    data_dir: str, mailbox: str, folders: tuple[str, ...] = ("new",)
) -> list[bytes]:
    """The messages in a mailbox's folders (C{new/} unless told), in the
    order of their base names."""
    found: dict[str, bytes] = {}
    for folder in folders:
        path = os.path.join(data_dir, "mail", mailbox, folder)
        if os.path.isdir(path):
            for name in os.listdir(path):
                with open(os.path.join(path, name), "rb") as f:
                    found[name.split(":2,")[0]] = f.read()
    return [found[name] for name in sorted(found)]


@dataclass
class Instance:
    """One running twistedmail service.

    @ivar ports: the bound port of each listener role.
    """

    service: MailService
    settings: Settings
    directory: MemoryDirectory
    ports: dict[str, int]

    @property
    def data_dir(self) -> str:
        """The instance's data folder."""
        return self.settings.server.data_dir

    def messages(
        self, mailbox: str, folders: tuple[str, ...] = ("new",)
    ) -> list[bytes]:
        """The messages in one of this instance's Maildirs (C{new/} unless
        told)."""
        return maildir_messages(self.data_dir, mailbox, folders)

    def message_names(self, mailbox: str) -> list[str]:
        """The base names of the messages in a Maildir (C{new/} and
        C{cur/})."""
        return maildir_names(self.data_dir, mailbox, ("new", "cur"))


async def start_instance(
    test: TestCase, reactor: Any, settings: Settings, directory: MemoryDirectory
) -> Instance:
    """Start C{makeService(settings, reactor, directory=directory)}, stop
    it at the end of the test, and wait until every listener is bound."""
    service = makeService(settings, reactor, directory=directory)
    service.startService()
    test.addCleanup(service.stopService)
    await service.ready
    ports = {
        role: address.port  # type: ignore[attr-defined]
        for role, address in service.addresses().items()
    }
    return Instance(service, settings, directory, ports)
