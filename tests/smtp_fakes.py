"""Fakes for the SMTP server tests: an in-memory delivery agent, a portal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Interface, implementer

from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.aliases.expander import AliasExpander
from twistedmail.config import AliasSettings
from twistedmail.interfaces import (
    Envelope,
    IDeliveryAgent,
    IPerRecipientDeliveryAgent,
    ISubmissionSender,
    Recipient,
    User,
)
from twistedmail.replies import Reply

__all__ = [
    "DELIVERED",
    "FakeAgent",
    "Mailbag",
    "directory",
    "expander_for",
    "portal",
]


@dataclass
class Delivered:
    """One committed message."""

    envelope: Envelope
    recipients: list[Recipient]
    data: bytes


DELIVERED = Delivered


@dataclass
class Mailbag:
    """Where the fake agents put messages, and how they behave.

    @ivar commit_result: None to succeed with C{Q<n>}; an exception to fail
        with; or ``"hold"`` to return an unfired Deferred (kept in C{held}).
    @ivar per_recipient: agents provide IPerRecipientDeliveryAgent and answer
        with these replies.
    """

    delivered: list[Delivered] = field(default_factory=list)
    aborted: int = 0
    started: int = 0
    commit_result: Any = None
    held: list[Deferred[str]] = field(default_factory=list)
    per_recipient: list[Reply] | None = None

    def agent(self) -> IDeliveryAgent:
        """A new agent (the server's delivery_agent_factory)."""
        if self.per_recipient is not None:
            return PerRecipientAgent(self)
        return FakeAgent(self)


@implementer(IDeliveryAgent)
class FakeAgent:
    """Keeps the message in memory and hands it to the mailbag on commit."""

    def __init__(self, bag: Mailbag) -> None:
        self.bag = bag
        self.envelope: Envelope | None = None
        self.recipients: list[Recipient] = []
        self.chunks: list[bytes] = []

    def start(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.bag.started += 1

    def add_recipient(self, recipient: Recipient) -> None:
        self.recipients.append(recipient)

    def body(self, data: bytes) -> None:
        self.chunks.append(data)

    def _keep(self) -> None:
        assert self.envelope is not None
        self.bag.delivered.append(
            Delivered(self.envelope, self.recipients, b"".join(self.chunks))
        )

    def commit(self) -> Deferred[str]:
        result = self.bag.commit_result
        if result == "hold":
            d: Deferred[str] = Deferred()
            d.addCallback(lambda qid: (self._keep(), qid)[1])
            self.bag.held.append(d)
            return d
        if isinstance(result, Exception):
            return fail(result)
        self._keep()
        return succeed(f"Q{len(self.bag.delivered)}")

    def abort(self) -> None:
        self.bag.aborted += 1


@implementer(IPerRecipientDeliveryAgent)
class PerRecipientAgent(FakeAgent):
    """An LMTP-style agent answering per recipient."""

    def commit_each(self) -> Deferred[list[Reply]]:
        self._keep()
        assert self.bag.per_recipient is not None
        return succeed(list(self.bag.per_recipient))


def directory() -> MemoryDirectory:
    """local.example with alice and bob, an alias and a list."""
    return MemoryDirectory(
        domains=("local.example",),
        users=(
            User("alice@local.example", "", "alice"),
            User("bob@local.example", "", "bob"),
        ),
        aliases={
            "sales@local.example": ("alice@local.example",),
            "team@local.example": ("alice@local.example", "bob@local.example"),
        },
    )


def expander_for(d: MemoryDirectory) -> AliasExpander:
    """An expander over the directory with default settings."""
    return AliasExpander(d, AliasSettings())


@implementer(IRealm)
class _Realm:
    def __init__(self, d: MemoryDirectory) -> None:
        self.d = d

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        from twistedmail.auth.realm import SubmissionSender

        name = avatar_id.decode() if isinstance(avatar_id, bytes) else avatar_id
        assert ISubmissionSender in interfaces
        user = User(name, "", name)
        return ISubmissionSender, SubmissionSender(user), lambda: None


def portal(d: MemoryDirectory) -> Portal:
    """A portal where alice@local.example's password is ``secret``."""
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice@local.example", b"secret")
    checker.addUser(b"bob@local.example", b"hunter2")
    return Portal(_Realm(d), [checker])


_unused: type[Interface] = ISubmissionSender
