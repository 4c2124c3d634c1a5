"""Tests for L{twistedmail.delivery.lmtp}: LMTP straight into Maildir.

The agent alone with the real spool, local delivery and Maildir store on a
fake clock; then smtplib.LMTP against the assembled service on loopback.
"""

from __future__ import annotations

import os
import smtplib
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.maildir_helpers import run_now
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.aliases.expander import AliasExpander
from twistedmail.config import (
    AliasSettings,
    ListenerSettings,
    ServerSettings,
    Settings,
    SpoolSettings,
)
from twistedmail.delivery.lmtp import LMTPDeliveryAgent
from twistedmail.delivery.local import LocalDelivery
from twistedmail.interfaces import Envelope, IPerRecipientDeliveryAgent, Recipient, User
from twistedmail.maildir import MaildirStore
from twistedmail.replies import MailError, Reply
from twistedmail.service import MailService, makeService
from twistedmail.spool.runner import QueueRunner, SettledHook
from twistedmail.spool.store import DEFERRED, DELIVERED, REMOTE, QueueEntry, Spool

D = "example.test"
MESSAGE = b"Subject: lmtp\r\nMessage-ID: <m1@front.test>\r\n\r\nHello.\r\n"


def _directory() -> MemoryDirectory:
    """bob; carol with a quota too small for any message; dave disabled;
    aliases to two users, to a user and a remote address, to a program."""
    return MemoryDirectory(
        (D,),
        (
            User(f"bob@{D}", "", f"{D}/bob"),
            User(f"carol@{D}", "", f"{D}/carol", quota=10),
            User(f"dave@{D}", "", f"{D}/dave", enabled=False),
        ),
        {
            f"team@{D}": ("bob", "carol"),
            f"pair@{D}": ("bob", "erin"),
            f"fwd@{D}": ("bob", "friend@remote.test"),
            f"prog@{D}": ("|/bin/true",),
        },
    )


class AgentTests(SynchronousTestCase):
    """The agent with the real spool, expander, local delivery and Maildir."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        root = self.mktemp()
        self.mail = os.path.join(root, "mail")
        self.spool = Spool(os.path.join(root, "spool"), self.clock, fsync=os.fsync)
        self.spool.prepare()
        self.directory = _directory()
        self.successResultOf(
            self.directory.add_user(User(f"erin@{D}", "", f"{D}/erin"))
        )
        self.expander = AliasExpander(
            self.directory, AliasSettings(allow_programs=True)
        )
        store = MaildirStore(self.mail, "mx.example.test", self.clock, run_now)
        self.local = LocalDelivery(store, None, self.clock)  # type: ignore[arg-type]

    def agent(self) -> LMTPDeliveryAgent:
        """A fresh agent over this test's parts."""
        return LMTPDeliveryAgent(self.spool, self.expander, self.local)

    def deliver(self, *recipients: str, message: bytes = MESSAGE) -> list[Reply]:
        """Run one message through an agent; the replies (and the queue id
        in C{self.queue_id})."""
        agent = self.agent()
        agent.start(Envelope("alice@front.test", client_address="127.0.0.1"))
        self.queue_id = agent.queue_id
        for r in recipients:
            agent.add_recipient(Recipient(r))
        agent.body(message)
        d = agent.commit_each()
        self.clock.advance(0)
        return self.successResultOf(d)

    def inbox(self, user: str) -> list[bytes]:
        """The messages in a user's new/ folder."""
        new = os.path.join(self.mail, D, user, "new")
        if not os.path.isdir(new):
            return []
        return [
            open(os.path.join(new, n), "rb").read() for n in sorted(os.listdir(new))
        ]

    def queued(self) -> list[str]:
        """The queue entries' ids."""
        return sorted(n for n in os.listdir(self.spool.queue_dir) if "." not in n)

    def run_queue(self, settled: SettledHook | None = None) -> QueueRunner:
        """Start a queue runner on the spool and let it do what is due."""
        runner = QueueRunner(
            self.spool,
            self.expander,
            self.local,
            self.clock,
            SpoolSettings(),
            settled=settled,
        )
        runner.startService()
        self.addCleanup(runner.stopService)
        self.clock.advance(0)
        self.successResultOf(runner.started)
        self.clock.advance(0)
        return runner

    def test_provides_interface(self) -> None:
        """The agent answers per recipient (the server checks this)."""
        self.assertTrue(IPerRecipientDeliveryAgent.providedBy(self.agent()))

    def test_mixed_recipients(self) -> None:
        """Each recipient gets its own reply: delivered, over quota (4xx),
        disabled (5xx), unknown (5xx); nothing is queued."""
        replies = self.deliver(f"bob@{D}", f"carol@{D}", f"dave@{D}", f"nobody@{D}")
        self.assertEqual(
            [(r.code, r.status) for r in replies],
            [(250, "2.0.0"), (452, "4.2.2"), (550, "5.2.1"), (550, "5.1.1")],
        )
        (copy,) = self.inbox("bob")
        self.assertTrue(
            copy.startswith(b"Return-Path: <alice@front.test>\r\nDelivered-To: bob@")
        )
        self.assertTrue(copy.endswith(MESSAGE))
        self.assertEqual(self.inbox("carol"), [])
        self.assertEqual(self.queued(), [])
        self.assertEqual(os.listdir(os.path.join(self.spool.path, "tmp")), [])

    def test_refused_not_retried(self) -> None:
        """A recipient refused with 4xx is the front MTA's to retry: the
        queue runner never delivers it, even once the mailbox has room."""
        self.deliver(f"bob@{D}", f"carol@{D}")
        self.successResultOf(self.directory.remove_user(f"carol@{D}"))
        self.successResultOf(
            self.directory.add_user(User(f"carol@{D}", "", f"{D}/carol"))
        )
        self.run_queue()
        self.clock.advance(3600)
        self.assertEqual(self.inbox("carol"), [])
        self.assertEqual(len(self.inbox("bob")), 1)

    def test_two_users_alias(self) -> None:
        """An alias to two local users: one 250 once both copies are in."""
        (reply,) = self.deliver(f"pair@{D}")
        self.assertEqual((reply.code, reply.status), (250, "2.0.0"))
        self.assertEqual(len(self.inbox("bob")), 1)
        self.assertEqual(len(self.inbox("erin")), 1)
        self.assertIn(b"Delivered-To: erin@", self.inbox("erin")[0])
        self.assertEqual(self.queued(), [])

    def test_remote_target_queued(self) -> None:
        """A remote alias target is left to the queue: 250, the entry holds
        that recipient only, and the runner's pass over it does not deliver
        the local copy a second time."""
        replies = self.deliver(f"fwd@{D}", f"bob@{D}")
        self.assertEqual([r.code for r in replies], [250, 250])
        self.assertIn(f"queued as {self.queue_id}", replies[0].text)
        self.assertEqual(self.queued(), [self.queue_id])
        entry = self.successResultOf(self.spool.load(self.queue_id or ""))
        self.assertEqual([r.address for r in entry.recipients], [f"fwd@{D}"])
        self.run_queue()
        entry = self.successResultOf(self.spool.load(self.queue_id or ""))
        self.assertEqual(
            [(r.address, r.status) for r in entry.recipients],
            [(f"fwd@{D}", DELIVERED), ("friend@remote.test", REMOTE)],
        )
        # fwd@ and bob@ both lead to bob's mailbox: one copy (the Maildir
        # name comes from the queue id and the mailbox).
        self.assertEqual(len(self.inbox("bob")), 1)

    def test_partial_alias_queued(self) -> None:
        """An alias whose copies partly failed (a full mailbox) is accepted
        and queued; the runner retries the missing copy only."""
        (reply,) = self.deliver(f"team@{D}")
        self.assertEqual(reply.code, 250)
        self.assertEqual(len(self.inbox("bob")), 1)
        self.run_queue()
        entry = self.successResultOf(self.spool.load(self.queue_id or ""))
        (record,) = entry.recipients
        self.assertEqual(record.status, DEFERRED)
        self.assertEqual(record.reply and record.reply.status, "4.2.2")
        self.assertEqual(len(self.inbox("bob")), 1)

    def test_success_notice_queued(self) -> None:
        """NOTIFY=SUCCESS: the copy is made at once and the recipient queued,
        so the runner (whose settled hook sends notices) settles it as
        delivered, here removing the entry, without a second copy."""
        agent = self.agent()
        agent.start(Envelope("alice@front.test"))
        agent.add_recipient(Recipient(f"bob@{D}", ("SUCCESS",)))
        agent.body(MESSAGE)
        d = agent.commit_each()
        self.clock.advance(0)
        (reply,) = self.successResultOf(d)
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.queued(), [agent.queue_id])
        self.assertEqual(len(self.inbox("bob")), 1)
        settled: list[list[str]] = []

        def hook(entry: QueueEntry) -> Deferred[QueueEntry]:
            settled.append([r.status for r in entry.recipients])
            return succeed(entry)

        self.run_queue(hook)
        self.assertEqual(settled, [[DELIVERED]])
        self.assertEqual(self.queued(), [])
        self.assertEqual(len(self.inbox("bob")), 1)

    def test_program_left_to_runner(self) -> None:
        """Program targets are not run here: the recipient is queued."""
        (reply,) = self.deliver(f"prog@{D}")
        self.assertEqual(reply.code, 250)
        self.assertEqual(self.queued(), [self.queue_id])

    def test_loop_refused(self) -> None:
        """A message already delivered to bob here is a loop: 554 5.4.6."""
        (reply,) = self.deliver(
            f"bob@{D}", message=b"Delivered-To: bob@example.test\r\n" + MESSAGE
        )
        self.assertEqual((reply.code, reply.status), (554, "5.4.6"))

    def test_abort(self) -> None:
        """An aborted message leaves nothing behind."""
        agent = self.agent()
        agent.start(Envelope("alice@front.test"))
        agent.add_recipient(Recipient(f"bob@{D}"))
        agent.body(MESSAGE)
        agent.abort()
        self.clock.advance(0)
        self.assertEqual(self.inbox("bob"), [])
        self.assertEqual(self.queued(), [])

    def test_queue_id_per_message(self) -> None:
        """Each start() reserves a new queue id (the Received: header's)."""
        agent = self.agent()
        agent.start(Envelope("a@front.test"))
        first = agent.queue_id
        agent.start(Envelope("a@front.test"))
        self.assertNotEqual(agent.queue_id, first)
        self.assertEqual(len(agent.queue_id or ""), 23)

    def test_single_commit(self) -> None:
        """commit() (one reply for all) gives the queue id when any recipient
        was delivered, and the first failure when none was."""
        agent = self.agent()
        agent.start(Envelope("a@front.test"))
        agent.add_recipient(Recipient(f"carol@{D}"))
        agent.add_recipient(Recipient(f"bob@{D}"))
        agent.body(MESSAGE)
        self.assertEqual(self.successResultOf(agent.commit()), agent.queue_id)
        agent.start(Envelope("a@front.test"))
        agent.add_recipient(Recipient(f"carol@{D}"))
        agent.body(MESSAGE)
        failure = self.failureResultOf(agent.commit(), MailError)
        self.assertEqual(failure.value.reply.status, "4.2.2")


def _service_settings(data: str) -> Settings:
    return Settings(
        server=ServerSettings(
            hostname="lmtp.example.test", data_dir=data, demo_account=False
        ),
        listeners=ListenerSettings.only(lmtp="tcp:port=0:interface=127.0.0.1"),
    )


async def _poll(check: Callable[[], Awaitable[bool]]) -> None:
    """Look again every few milliseconds (on the reactor) until C{check}
    is true; trial's timeout ends a test that waits forever."""
    while not await check():
        await deferLater(reactor, 0.005, lambda: None)


class ServiceLoopbackTests(TestCase):
    """smtplib.LMTP against the assembled service (makeService)."""

    async def start_service(self) -> tuple[MailService, int]:
        """The service with only an LMTP listener on a free loopback port."""
        data = self.mktemp()
        self.data = data
        svc = makeService(_service_settings(data), reactor, directory=_directory())
        svc.startService()
        self.addCleanup(svc.stopService)
        await svc.ready
        port = svc.addresses()["lmtp"].port  # type: ignore[attr-defined]
        return svc, port

    def inbox(self, user: str) -> list[bytes]:
        """The messages in a user's new/ folder."""
        new = os.path.join(self.data, "mail", D, user, "new")
        if not os.path.isdir(new):
            return []
        return [open(os.path.join(new, n), "rb").read() for n in os.listdir(new)]

    async def test_mixed_recipients(self) -> None:
        """One reply per accepted recipient after DATA (RFC 2033 §4.2): bob
        250, carol (over quota) 452; the unknown one was refused at RCPT."""
        _, port = await self.start_service()

        def talk() -> dict[str, Any]:
            with smtplib.LMTP("127.0.0.1", port) as c:
                c.ehlo("front.test")  # LMTP sends LHLO
                out: dict[str, Any] = {"lhlo": c.ehlo_resp}
                c.mail("alice@front.test")
                out["rcpt"] = [
                    c.rcpt(f"{u}@{D}")[0] for u in ("bob", "nobody", "carol")
                ]
                out["data"] = [c.data(MESSAGE)]
                out["data"].append(c.getreply())
                return out

        out = await deferToThread(talk)
        self.assertIn(b"PIPELINING", out["lhlo"])
        self.assertEqual(out["rcpt"], [250, 550, 250])
        (bob, carol) = out["data"]
        self.assertEqual(bob[0], 250)
        self.assertTrue(bob[1].startswith(b"2.0.0 <bob@example.test>"))
        self.assertEqual(carol[0], 452)
        self.assertTrue(carol[1].startswith(b"4.2.2"))
        queue_id = bob[1].rsplit(b" ", 1)[1]
        (copy,) = self.inbox("bob")
        self.assertIn(b"Delivered-To: bob@example.test\r\n", copy)
        self.assertIn(b"with LMTP\r\n\tid " + queue_id + b"; ", copy)
        self.assertTrue(copy.endswith(MESSAGE))
        self.assertEqual(self.inbox("carol"), [])

    async def test_alias_and_partial(self) -> None:
        """An alias to two users gets one 250 with both copies in; an alias
        whose second copy cannot be made now (carol is over quota) is
        queued, the queue runner defers the missing copy, and bob's copy
        stays single.  (No remote target here: the assembled service would
        hand it to the relay and DNS.)"""
        svc, port = await self.start_service()
        spool = svc.components.spool

        def talk() -> list[tuple[int, bytes]]:
            with smtplib.LMTP("127.0.0.1", port) as c:
                c.ehlo("front.test")
                c.mail("alice@front.test")
                c.rcpt(f"pair@{D}")
                c.rcpt(f"team@{D}")
                return [c.data(MESSAGE), c.getreply()]

        await svc.components.directory.add_user(User(f"erin@{D}", "", f"{D}/erin"))
        replies = await deferToThread(talk)
        self.assertEqual([code for code, _ in replies], [250, 250])
        self.assertIn(b"delivered", replies[0][1])
        self.assertIn(b"queued as", replies[1][1])
        queue_id = replies[1][1].rsplit(b" ", 1)[1].decode()

        async def attempted() -> bool:
            entry = await spool.load(queue_id)
            return all(r.attempts > 0 for r in entry.recipients)

        await _poll(attempted)
        entry = await spool.load(queue_id)
        self.assertEqual(
            [(r.address, r.status) for r in entry.recipients],
            [(f"team@{D}", DEFERRED)],
        )
        self.assertEqual(entry.recipients[0].done, (f"mailbox:bob@{D}",))
        self.assertEqual(len(self.inbox("erin")), 1)
        self.assertEqual(self.inbox("carol"), [])
        # pair@ and team@ both lead to bob: one copy, and the runner's pass
        # over team@ added none.
        self.assertEqual(len(self.inbox("bob")), 1)
