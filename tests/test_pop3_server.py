"""Tests for L{twistedmail.pop3.server}: the POP3 adapter on a fake
transport, a fake clock and a real Maildir store."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.pop3_helpers import (
    FAST,
    HOSTNAME,
    PASSWORD,
    TLSStringTransport,
    World,
    make_message,
    make_world,
)
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.auth.checkers import DirectoryChecker
from twistedmail.auth.realm import MailRealm
from twistedmail.interfaces import User
from twistedmail.maildir import MaildirStore, MessageInfo
from twistedmail.maildir.uidlist import UIDLIST_NAME
from twistedmail.pop3.server import (
    LOCK_NAME,
    SYNC_READ_LIMIT,
    MaildropLock,
    POP3ServerProtocol,
    wire_size,
    wire_sizes,
)

LOGIN = f"USER alice@example.test\r\nPASS {PASSWORD}\r\n".encode()


class QueuedThreads:
    """A C{run_in_thread} whose calls wait until the test runs them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, f: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((f, d))
        return d

    def run_all(self) -> None:
        """Run every queued call (and any they queue), in order."""
        while self.calls:
            f, d = self.calls.pop(0)
            try:
                result = f()
            except Exception as e:
                d.errback(e)
            else:
                d.callback(result)


class CountingTransport(TLSStringTransport):
    """Counts write calls (write and writeSequence each count once)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, seq: Any) -> None:
        self.writes += 1
        super().write(b"".join(seq))


class DescriptorTransport(TLSStringTransport):
    """A transport with a TCP connection's C{doWrite}: it records the
    calls, and what was written before each."""

    connected = True

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.do_writes: list[bytes] = []

    def doWrite(self) -> None:
        self.do_writes.append(self.value())


class FailingDirectory(MemoryDirectory):
    """A directory whose user lookups fail, as a broken database would."""

    def get_user(self, address: str) -> Deferred[User | None]:
        return fail(OSError("database is gone"))


class Session:
    """One fake connection: send lines, read what came back."""

    def __init__(
        self,
        world: World,
        proto: POP3ServerProtocol,
        transport: TLSStringTransport,
    ) -> None:
        self.world = world
        self.proto = proto
        self.transport = transport
        self.greeting = self.take()

    def take(self) -> bytes:
        """The bytes written since the last take."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        """Send bytes (the login back-off delay is 0 and is run too)."""
        self.proto.dataReceived(data)
        self.world.clock.advance(0)
        return self.take()

    def login(self) -> bytes:
        """Log in as alice."""
        return self.send(LOGIN)

    def drop(self) -> None:
        """The client goes away without QUIT."""
        self.proto.connectionLost(None)


def connect(world: World, **kw: Any) -> Session:
    """A session on a new connection to the world's (first) factory."""
    factory = world.factories[0] if world.factories else world.factory()
    proto, transport = world.connect(factory, **kw)
    return Session(world, proto, transport)


class ServerTestCase(SynchronousTestCase):
    """Makes a world per test."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())

    def files(self, user: str = "alice") -> list[str]:
        """The message files in a user's INBOX."""
        md = self.world.maildir(user)
        return sorted(
            os.listdir(os.path.join(md, "new")) + os.listdir(os.path.join(md, "cur"))
        )


class LoginTests(ServerTestCase):
    """USER/PASS and AUTH PLAIN through the portal."""

    def test_greeting(self) -> None:
        """The greeting names the host."""
        s = connect(self.world)
        self.assertEqual(s.greeting, f"+OK {HOSTNAME} POP3 ready\r\n".encode())

    def test_user_pass(self) -> None:
        """The right password logs in and shows the maildrop's size."""
        self.world.deliver(make_message(1))
        s = connect(self.world)
        self.assertEqual(s.login(), b"+OK Send PASS\r\n+OK Logged in, 1 messages\r\n")

    def test_auth_plain(self) -> None:
        """AUTH PLAIN with an initial response and with a continuation."""
        token = base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode())
        s = connect(self.world)
        self.assertEqual(
            s.send(b"AUTH PLAIN " + token + b"\r\n"), b"+OK Logged in, 0 messages\r\n"
        )
        s.send(b"QUIT\r\n")
        s.drop()
        s = connect(self.world)
        self.assertEqual(s.send(b"AUTH PLAIN\r\n"), b"+ \r\n")
        self.assertEqual(s.send(token + b"\r\n"), b"+OK Logged in, 0 messages\r\n")

    def test_wrong_password(self) -> None:
        """A wrong password is -ERR [AUTH]; the session can try again."""
        s = connect(self.world)
        self.assertEqual(
            s.send(b"USER alice@example.test\r\nPASS wrong\r\n"),
            b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n",
        )
        self.assertEqual(s.login()[-16:], b"Logged in, 0 messages\r\n"[-16:])

    def test_unknown_user(self) -> None:
        """An unknown user gets the same answer as a wrong password."""
        s = connect(self.world)
        self.assertEqual(
            s.send(f"USER nobody@example.test\r\nPASS {PASSWORD}\r\n".encode()),
            b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n",
        )

    def test_directory_down(self) -> None:
        """A directory that cannot be read gives -ERR [SYS/TEMP]."""
        world = self.world
        broken = FailingDirectory()
        checker = DirectoryChecker(
            broken, "example.test", maybeDeferred, hasher=FAST, failure_hash="x"
        )
        world.portal = Portal(MailRealm(broken, world.root), [checker])
        s = connect(world)
        self.assertEqual(
            s.login(),
            b"+OK Send PASS\r\n"
            b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n",
        )
        self.flushLoggedErrors(OSError)

    def test_plaintext_refused(self) -> None:
        """Without TLS and with plaintext logins off: -ERR [AUTH]."""
        world = make_world(self.mktemp(), allow_plaintext_auth=False)
        s = connect(world)
        self.assertIn(b"-ERR [AUTH] Plaintext", s.login())

    def test_log_lines(self) -> None:
        """Connection opened/closed and login lines are logged."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        s = connect(self.world)
        s.login()
        s.send(b"QUIT\r\n")
        s.drop()
        texts = [formatEvent(e) for e in events]
        session = s.proto.session_id
        self.assertIn(
            f"connection opened: role=pop3 rhost=192.0.2.7 rport=40000"
            f" session={session}",
            texts,
        )
        self.assertIn(
            "login: protocol=pop3 rhost=192.0.2.7 user=alice@example.test", texts
        )
        self.assertIn(
            f"connection closed: role=pop3 rhost=192.0.2.7 rport=40000"
            f" session={session} reason=QUIT",
            texts,
        )


class CommandTests(ServerTestCase):
    """The transaction commands on a real Maildir."""

    def setUp(self) -> None:
        super().setUp()
        self.messages = [make_message(i, body_lines=i) for i in range(1, 4)]
        self.bases = [self.world.deliver(m) for m in self.messages]
        self.session = connect(self.world)
        self.session.login()

    def test_stat_list(self) -> None:
        """STAT and LIST give the stored sizes."""
        sizes = [len(m) for m in self.messages]
        s = self.session
        self.assertEqual(
            s.send(b"STAT\r\nLIST\r\nLIST 2\r\n"),
            f"+OK 3 {sum(sizes)}\r\n+OK 3 messages ({sum(sizes)} octets)\r\n"
            f"1 {sizes[0]}\r\n2 {sizes[1]}\r\n3 {sizes[2]}\r\n.\r\n"
            f"+OK 2 {sizes[1]}\r\n".encode(),
        )

    def test_uidl_is_base_name(self) -> None:
        """UIDL gives each message's Maildir base name."""
        self.assertEqual(
            self.session.send(b"UIDL\r\n"),
            b"+OK Unique-ID listing follows\r\n"
            + b"".join(
                b"%d %s\r\n" % (i + 1, b.encode()) for i, b in enumerate(self.bases)
            )
            + b".\r\n",
        )

    def test_retr(self) -> None:
        """RETR sends the stored message exactly, status line and message
        in one write (no small first write to wait for a delayed ACK)."""
        self.session.send(b"QUIT\r\n")
        self.session.drop()
        transport = CountingTransport()
        proto = self.world.factories[0].buildProtocol(None)
        proto.makeConnection(transport)
        proto.dataReceived(LOGIN)
        transport.clear()
        before = transport.writes
        proto.dataReceived(b"RETR 2\r\n")
        self.assertEqual(transport.writes - before, 1)
        m = self.messages[1]
        self.assertEqual(
            transport.value(), b"+OK %d octets\r\n" % len(m) + m + b".\r\n"
        )

    def test_sent_at_once(self) -> None:
        """What one read of commands produces is handed to the socket
        before the reactor's next turn (doWrite called once, after the
        last reply); nothing is sent that way once closing, nor when
        nothing was written."""
        transport = DescriptorTransport()
        proto = self.world.factories[0].buildProtocol(None)
        proto.makeConnection(transport)
        self.assertEqual(transport.do_writes, [])
        proto.dataReceived(b"NOOP\r\nNOOP\r\n")
        self.assertEqual(len(transport.do_writes), 1)
        self.assertEqual(transport.do_writes, [transport.value()])
        self.assertEqual(transport.value().count(b"-ERR"), 2)
        proto.dataReceived(b"NO")
        self.assertEqual(len(transport.do_writes), 1)
        transport.loseConnection()
        proto.dataReceived(b"OP\r\n")
        self.assertEqual(len(transport.do_writes), 1)

    def test_sent_at_once_below_wrapper(self) -> None:
        """Under a TLS wrapper, whose doWrite is the TCP connection's, the
        connection sends at once; not while the connection is closing."""
        below = DescriptorTransport()
        wrapper = TLSStringTransport()
        wrapper.doWrite = below.doWrite  # type: ignore[attr-defined]
        wrapper.connected = True  # type: ignore[attr-defined]
        proto = self.world.factories[0].buildProtocol(None)
        proto.makeConnection(wrapper)
        proto.dataReceived(b"CAPA\r\n")
        self.assertEqual(len(below.do_writes), 1)
        below.disconnecting = True
        proto.dataReceived(b"CAPA\r\n")
        self.assertEqual(len(below.do_writes), 1)

    def test_top(self) -> None:
        """TOP sends the headers, the blank line and n body lines."""
        m = self.messages[2]
        head, _, body = m.partition(b"\r\n\r\n")
        first = body.split(b"\r\n")[0] + b"\r\n"
        self.assertEqual(
            self.session.send(b"TOP 3 1\r\n"),
            b"+OK %d octets\r\n" % (len(head) + 4 + len(first))
            + head
            + b"\r\n\r\n"
            + first
            + b".\r\n",
        )
        self.assertEqual(
            self.session.send(b"TOP 3 0\r\n")[-len(b"\r\n\r\n.\r\n") :],
            b"\r\n\r\n.\r\n",
        )

    def test_bad_input(self) -> None:
        """RETR 0, RETR 99999, TOP 1 -1, long lines: -ERR, session usable."""
        s = self.session
        self.assertEqual(
            s.send(
                b"RETR 0\r\nRETR 99999\r\nTOP 1 -1\r\n" + b"X" * 300 + b"\r\nNOOP\r\n"
            ),
            b"-ERR No such message\r\n-ERR No such message\r\n-ERR Bad arguments\r\n"
            b"-ERR Line too long\r\n+OK\r\n",
        )

    def test_ten_errors(self) -> None:
        """Ten errors in a row end the session; deletions are not applied."""
        s = self.session
        s.send(b"DELE 1\r\n")
        data = s.send(b"RETR 0\r\n" * 10)
        self.assertTrue(data.endswith(b"-ERR Too many errors, closing connection\r\n"))
        self.assertTrue(s.transport.disconnecting)
        s.drop()
        self.assertEqual(len(self.files()), 3)

    def test_update(self) -> None:
        """Deleted messages are removed at QUIT, not before."""
        s = self.session
        s.send(b"DELE 1\r\nDELE 3\r\n")
        self.assertEqual(len(self.files()), 3)
        self.assertEqual(
            s.send(b"QUIT\r\n"), f"+OK {HOSTNAME} POP3 signing off\r\n".encode()
        )
        self.assertTrue(s.transport.disconnecting)
        s.drop()
        self.assertEqual([f.partition(":")[0] for f in self.files()], [self.bases[1]])

    def test_rset(self) -> None:
        """RSET unmarks: QUIT then removes nothing."""
        s = self.session
        s.send(b"DELE 1\r\nDELE 2\r\nRSET\r\nQUIT\r\n")
        s.drop()
        self.assertEqual(len(self.files()), 3)

    def test_dropped_connection(self) -> None:
        """A connection lost without QUIT deletes nothing (RFC 1939 §6)."""
        s = self.session
        s.send(b"DELE 1\r\nDELE 2\r\n")
        s.drop()
        self.assertEqual(len(self.files()), 3)

    def test_snapshot(self) -> None:
        """Mail that arrives during a session shows in the next one."""
        s = self.session
        self.world.deliver(make_message(99))
        self.assertEqual(s.send(b"STAT\r\n")[:6], b"+OK 3 ")
        s.send(b"QUIT\r\n")
        s.drop()
        s = connect(self.world)
        self.assertEqual(s.login(), b"+OK Send PASS\r\n+OK Logged in, 4 messages\r\n")

    def test_uidl_stable(self) -> None:
        """UIDL is the same in the next session and with a new store
        (a restart), after deletions too."""
        s = self.session
        first = s.send(b"UIDL\r\n")
        s.send(b"DELE 1\r\nQUIT\r\n")
        s.drop()
        world = self.world
        world.store = MaildirStore(
            os.path.join(world.root, "mail"),
            HOSTNAME,
            world.clock,
            world.store.run_in_thread,
        )
        world.factories.clear()
        s = connect(world)
        s.login()
        second = s.send(b"UIDL\r\n")
        first_ids = [line.split(b" ")[1] for line in first.split(b"\r\n")[1:-2]]
        second_ids = [line.split(b" ")[1] for line in second.split(b"\r\n")[1:-2]]
        self.assertEqual(second_ids, first_ids[1:])

    def test_message_removed_by_another(self) -> None:
        """A message removed by someone else during the session: -ERR."""
        md = self.world.maildir()
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(md, sub)):
                if name.startswith(self.bases[0]):
                    os.unlink(os.path.join(md, sub, name))
        self.assertEqual(
            self.session.send(b"RETR 1\r\nNOOP\r\n"),
            b"-ERR Message was removed by another session\r\n+OK\r\n",
        )


class KeptSnapshotTests(ServerTestCase):
    """The factory keeps an ended session's snapshot for the next login to
    that maildrop, brought up to date then."""

    def setUp(self) -> None:
        super().setUp()
        self.bases = [self.world.deliver(make_message(i)) for i in range(3)]

    def session(self, factory: Any = None) -> Session:
        """A logged-in session of alice on the (given) factory."""
        f = factory if factory is not None else self.world.factories[0]
        proto, transport = self.world.connect(f)
        s = Session(self.world, proto, transport)
        s.login()
        return s

    def test_listing_kept(self) -> None:
        """After QUIT the snapshot is kept; the next session takes it (it
        is not kept meanwhile) and, nothing having changed, answers with
        the same listing."""
        factory = self.world.factory()
        s = self.session(factory)
        first = s.send(b"LIST\r\nUIDL\r\n")
        s.send(b"QUIT\r\n")
        [kept] = factory._kept.values()
        s = self.session(factory)
        self.assertEqual(factory._kept, {})
        self.assertIs(s.proto._maildrop.snapshot.listing, kept.listing)  # type: ignore[union-attr]
        self.assertEqual(s.send(b"LIST\r\nUIDL\r\n"), first)
        s.drop()
        [again] = factory._kept.values()
        self.assertIs(again.listing, kept.listing)

    def test_changes_between_sessions(self) -> None:
        """New mail, mail removed by another program and the session's own
        deletions all show in the next session on a kept snapshot."""
        factory = self.world.factory()
        s = self.session(factory)
        s.send(b"DELE 1\r\nQUIT\r\n")
        new = self.world.deliver(make_message(7))
        md = self.world.maildir()
        [name] = [
            n
            for n in os.listdir(os.path.join(md, "new"))
            if n.startswith(self.bases[1])
        ]
        os.unlink(os.path.join(md, "new", name))
        s = self.session(factory)
        self.assertEqual(
            s.send(b"UIDL\r\nRETR 2\r\n"),
            f"+OK Unique-ID listing follows\r\n1 {self.bases[2]}\r\n2 {new}\r\n.\r\n"
            f"+OK {len(make_message(7))} octets\r\n".encode()
            + make_message(7)
            + b".\r\n",
        )

    def test_maildir_removed(self) -> None:
        """A maildrop removed between sessions is opened anew (empty)."""
        factory = self.world.factory()
        self.session(factory).send(b"QUIT\r\n")
        shutil.rmtree(self.world.maildir())
        s = self.session(factory)
        self.assertEqual(s.send(b"STAT\r\n"), b"+OK 0 0\r\n")

    def test_limits(self) -> None:
        """At most keep_maildrops snapshots are kept (the least recently
        used goes first), and at most keep_messages messages in all."""
        self.world.deliver(make_message(1), "bob")
        factory = self.world.factory(keep_maildrops=1)
        self.session(factory).send(b"QUIT\r\n")
        proto, transport = self.world.connect(factory)
        bob = Session(self.world, proto, transport)
        bob.send(f"USER bob@example.test\r\nPASS {PASSWORD}\r\n".encode())
        bob.send(b"QUIT\r\n")
        bob_path = os.path.abspath(self.world.maildir("bob"))
        self.assertEqual([os.path.abspath(p) for p in factory._kept], [bob_path])
        factory = self.world.factory(keep_messages=2)
        self.session(factory).send(b"QUIT\r\n")
        self.assertEqual(factory._kept, {})


class StoreFailureTests(ServerTestCase):
    """Store errors are -ERR [SYS/TEMP] (RFC 2449 §8.1.2, RFC 3206), never
    a traceback; the session stays usable and the lock is not kept."""

    def replace_by_directory(self, base: str) -> None:
        """Put a directory (with a file in it) where a message file was:
        opening it works, reading or unlinking it fails, even as root."""
        md = self.world.maildir()
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(md, sub)):
                if name.startswith(base):
                    path = os.path.join(md, sub, name)
                    os.unlink(path)
                    os.mkdir(path)
                    open(os.path.join(path, "x"), "w").close()

    def test_maildrop_cannot_open(self) -> None:
        """A maildrop that cannot be opened (here a file stands where the
        Maildir should be) is -ERR [SYS/TEMP]; once it can, login works."""
        md = self.world.maildir()
        os.makedirs(os.path.dirname(md))
        open(md, "w").close()
        s = connect(self.world)
        self.assertEqual(
            s.login(),
            b"+OK Send PASS\r\n"
            b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(FileExistsError)), 1)
        os.unlink(md)
        self.assertIn(b"+OK Logged in, 0 messages", s.login())

    def test_read_fails(self) -> None:
        """A message that cannot be read is -ERR [SYS/TEMP]; the next
        command is answered as usual."""
        base = self.world.deliver(make_message(1))
        s = connect(self.world)
        s.login()
        self.replace_by_directory(base)
        self.assertEqual(
            s.send(b"RETR 1\r\nNOOP\r\n"),
            b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n+OK\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(IsADirectoryError)), 1)

    def test_update_fails(self) -> None:
        """Deletions that cannot be applied: QUIT gets -ERR [SYS/TEMP], the
        connection closes and the maildrop is unlocked."""
        base = self.world.deliver(make_message(1))
        s = connect(self.world)
        s.login()
        self.replace_by_directory(base)
        self.assertEqual(
            s.send(b"DELE 1\r\nQUIT\r\n"),
            b"+OK Message 1 deleted\r\n"
            b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n",
        )
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(IsADirectoryError)), 1)
        lock = MaildropLock(self.world.maildir())
        self.assertTrue(lock.acquire())
        lock.release()


class InUseTests(ServerTestCase):
    """One session per maildrop (RFC 1939 §8), released on every way out."""

    def assertInUse(self) -> None:
        s = connect(self.world)
        self.assertEqual(
            s.login(),
            b"+OK Send PASS\r\n-ERR [IN-USE] Maildrop is locked by another session\r\n",
        )

    def assertFree(self) -> Session:
        s = connect(self.world)
        self.assertEqual(s.login()[-23:], b"Logged in, 0 messages\r\n")
        return s

    def test_second_session(self) -> None:
        """A second session of the same maildrop gets -ERR [IN-USE]; another
        user's maildrop is not affected."""
        first = self.assertFree()
        self.assertInUse()
        other = connect(self.world)
        self.assertIn(
            b"+OK Logged in",
            other.send(f"USER bob@example.test\r\nPASS {PASSWORD}\r\n".encode()),
        )
        first.send(b"QUIT\r\n")
        first.drop()
        self.assertFree()

    def test_released_on_connection_lost(self) -> None:
        """A dropped connection releases the lock."""
        first = self.assertFree()
        first.drop()
        self.assertFree()

    def test_released_before_quit_reply(self) -> None:
        """QUIT unlocks before its +OK goes out: a client that logs in again
        as soon as it reads the +OK is not refused, though the old
        connection has not closed yet."""
        self.world.deliver(make_message(1))
        first = connect(self.world)
        first.login()
        self.assertEqual(
            first.send(b"DELE 1\r\nQUIT\r\n"),
            b"+OK Message 1 deleted\r\n"
            + f"+OK {HOSTNAME} POP3 signing off\r\n".encode(),
        )
        self.assertTrue(first.transport.disconnecting)
        self.assertFree()
        first.drop()

    def test_released_when_lost_during_update(self) -> None:
        """A connection lost while QUIT's deletions are applied in a thread
        keeps the lock until they are done, then releases it."""
        threads = QueuedThreads()
        world = make_world(self.mktemp(), run_in_thread=threads)
        world.deliver(make_message(1))
        s = connect(world)
        s.proto.dataReceived(LOGIN)
        world.clock.advance(0)
        threads.run_all()
        s.proto.dataReceived(b"DELE 1\r\nQUIT\r\n")
        self.assertEqual(len(threads.calls), 1)
        s.drop()
        lock = MaildropLock(world.maildir())
        self.assertFalse(lock.acquire())
        threads.run_all()
        self.assertTrue(lock.acquire())
        lock.release()
        self.assertEqual(os.listdir(os.path.join(world.maildir(), "new")), [])

    def test_released_on_timeout(self) -> None:
        """The idle timeout releases the lock (when the connection closes)."""
        first = self.assertFree()
        self.world.clock.advance(600)
        self.assertEqual(first.take(), b"-ERR Disconnected for inactivity\r\n")
        self.assertTrue(first.transport.disconnecting)
        first.drop()
        self.assertFree()

    def test_other_process(self) -> None:
        """A lock held by another process (fcntl) is honoured."""
        md = self.world.maildir()
        os.makedirs(md)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys\n"
                f"fd = os.open({os.path.join(md, LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdin.close)  # type: ignore[union-attr]
        assert holder.stdout is not None
        self.assertEqual(holder.stdout.readline(), b"locked\n")
        self.assertInUse()
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait()
        self.assertFree()

    def test_lock_object(self) -> None:
        """MaildropLock excludes a second holder until released."""
        md = self.world.maildir()
        a, b = MaildropLock(md), MaildropLock(md)
        self.assertTrue(a.acquire())
        self.assertFalse(b.acquire())
        self.assertRaises(RuntimeError, a.acquire)
        a.release()
        self.assertTrue(b.acquire())
        b.release()
        self.assertFalse(b.locked)

    def test_released_after_slow_read(self) -> None:
        """A connection lost while a big message is read in a thread keeps
        the lock until the read is done, then releases it."""
        threads = QueuedThreads()
        world = make_world(self.mktemp(), run_in_thread=threads)
        world.store.deliver_sync(
            world.maildir(), b"A: b\r\n\r\n" + b"x" * SYNC_READ_LIMIT, "big"
        )
        self.world = world
        s = connect(world)
        s.proto.dataReceived(LOGIN)
        world.clock.advance(0)
        threads.run_all()
        self.assertIn(b"+OK Logged in, 1 messages", s.take())
        s.proto.dataReceived(b"RETR 1\r\n")
        self.assertEqual(len(threads.calls), 1)
        self.assertEqual(s.take(), b"")
        s.drop()
        lock = MaildropLock(world.maildir())
        self.assertFalse(lock.acquire())
        threads.run_all()
        self.assertTrue(lock.acquire())
        lock.release()

    def test_released_when_lost_during_login(self) -> None:
        """A connection lost while the maildrop opens leaves it unlocked."""
        threads = QueuedThreads()
        world = make_world(self.mktemp(), run_in_thread=threads)
        s = connect(world)
        s.proto.dataReceived(LOGIN)
        world.clock.advance(0)
        s.drop()
        threads.run_all()
        lock = MaildropLock(world.maildir())
        self.assertTrue(lock.acquire())
        lock.release()


class BigMessageTests(ServerTestCase):
    """Messages over SYNC_READ_LIMIT are read in a thread."""

    def test_big_retr(self) -> None:
        """A big message is read off the reactor thread and sent whole."""
        threads = QueuedThreads()
        world = make_world(self.mktemp(), run_in_thread=threads)
        body = b"".join(b".line %d\r\n" % i for i in range(110000))
        message = b"Subject: big\r\n\r\n" + body
        self.assertGreater(len(message), SYNC_READ_LIMIT)
        world.store.deliver_sync(world.maildir(), message, "big")
        s = connect(world)
        s.proto.dataReceived(LOGIN + b"RETR 1\r\nNOOP\r\n")
        world.clock.advance(0)
        threads.run_all()
        self.assertEqual(threads.calls, [])
        stuffed = message.replace(b"\r\n.", b"\r\n..")
        self.assertEqual(
            s.take(),
            b"+OK Send PASS\r\n+OK Logged in, 1 messages\r\n"
            + b"+OK %d octets\r\n" % len(message)
            + stuffed
            + b".\r\n+OK\r\n",
        )


class ForeignMaildirTests(SynchronousTestCase):
    """Maildirs written by Dovecot and twisted.mail are served (issue 5 §7)."""

    def write(self, path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def test_dovecot(self) -> None:
        """LF files are sent with CRLF, the ,W= size is listed, UIDL is the
        base name, and Dovecot's files are left as they were."""
        world = make_world(self.mktemp())
        md = world.maildir()
        for sub in ("new", "tmp"):
            os.makedirs(os.path.join(md, sub))
        lf = b"Subject: hi\n\n.dot line\nbody\n"
        crlf = lf.replace(b"\n", b"\r\n")
        base = f"1700000000.M1P2.dovecot,S={len(lf)},W={len(crlf)}"
        self.write(os.path.join(md, "cur", base + ":2,S"), lf)
        uidlist = f"3 V1700000000 N2 G0\n1 :{base}\n".encode()
        self.write(os.path.join(md, "dovecot-uidlist"), uidlist)
        s = connect(world)
        s.login()
        self.assertEqual(
            s.send(b"LIST\r\nUIDL\r\nRETR 1\r\n"),
            f"+OK 1 messages ({len(crlf)} octets)\r\n1 {len(crlf)}\r\n.\r\n"
            f"+OK Unique-ID listing follows\r\n1 {base}\r\n.\r\n"
            f"+OK {len(crlf)} octets\r\n".encode()
            + crlf.replace(b"\r\n.", b"\r\n..")
            + b".\r\n",
        )
        s.send(b"QUIT\r\n")
        with open(os.path.join(md, "dovecot-uidlist"), "rb") as f:
            self.assertEqual(f.read(), uidlist)
        # The file keeps its name (flags) and contents; our UID list is
        # made next to Dovecot's.
        self.assertEqual(os.listdir(os.path.join(md, "cur")), [base + ":2,S"])
        with open(os.path.join(md, "cur", base + ":2,S"), "rb") as f:
            self.assertEqual(f.read(), lf)
        self.assertTrue(os.path.exists(os.path.join(md, UIDLIST_NAME)))

    def test_wire_size(self) -> None:
        """wire_size takes Dovecot's ,W= wherever it stands in the name;
        without one (or with a broken one) the file size."""

        def info(base: str) -> MessageInfo:
            return MessageInfo(1, base, "new/" + base, 100, 0, frozenset(), frozenset())

        self.assertEqual(wire_size(info("1.M1.host,S=99,W=104")), 104)
        self.assertEqual(wire_size(info("1.M1.host,W=104,S=99")), 104)
        self.assertEqual(wire_size(info("1.M1.host,S=99")), 100)
        self.assertEqual(wire_size(info("1.M1.host,W=1x4")), 100)
        self.assertEqual(wire_size(info("1.M1.host,W=")), 100)

    def test_wire_sizes(self) -> None:
        """wire_sizes gives each message's wire_size: when every name has
        one ,W= with digits, and when some do not."""
        dovecot = ["1.M1.a,S=9,W=10", "2.M2.b,W=7,S=6:2,S", "3.M3.c,W=0"]
        self.assertEqual(wire_sizes(dovecot, [1, 2, 3]), [10, 7, 0])
        mixed = [*dovecot, "4.M4.d,S=5", "5.M5.e,W=1x", "6.M6.f,W=", ",W=3,W=4"]
        self.assertEqual(
            wire_sizes(mixed, [1, 2, 3, 4, 5, 6, 7]), [10, 7, 0, 4, 5, 6, 3]
        )
        self.assertEqual(wire_sizes([], []), [])

    @given(
        st.lists(
            st.tuples(
                st.lists(
                    st.sampled_from(["1", "9", ",W=", ",S=", ",", "x", ":2,", "٣"])
                ).map("".join),
                st.integers(0, 10**9),
            ),
            max_size=8,
        )
    )
    def test_wire_sizes_same_as_one_by_one(self, pairs: list[tuple[str, int]]) -> None:
        """wire_sizes of any names is wire_size of each."""

        def info(base: str, size: int) -> MessageInfo:
            return MessageInfo(
                1, base, "new/" + base, size, 0, frozenset(), frozenset()
            )

        self.assertEqual(
            wire_sizes([b for b, _ in pairs], [n for _, n in pairs]),
            [wire_size(info(b, n)) for b, n in pairs],
        )

    def test_twisted_mail(self) -> None:
        """twisted.mail's names (no size, no info) are served by file size."""
        world = make_world(self.mktemp())
        md = world.maildir()
        for sub in ("cur", "tmp"):
            os.makedirs(os.path.join(md, sub))
        msg = b"Subject: old\r\n\r\nfrom twisted.mail\r\n"
        self.write(os.path.join(md, "new", "1600000000.M123P45Q6.oldhost"), msg)
        s = connect(world)
        s.login()
        self.assertEqual(
            s.send(b"UIDL\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n"),
            b"+OK Unique-ID listing follows\r\n1 1600000000.M123P45Q6.oldhost\r\n.\r\n"
            + b"+OK %d octets\r\n" % len(msg)
            + msg
            + b".\r\n+OK Message 1 deleted\r\n"
            + f"+OK {HOSTNAME} POP3 signing off\r\n".encode(),
        )
        self.assertEqual(os.listdir(os.path.join(md, "new")), [])


class SessionTests(ServerTestCase):
    """Timeouts, limits, STLS and POP3S on the fake transport."""

    def test_login_timeout(self) -> None:
        """Before login the timeout is login_timeout."""
        s = connect(self.world)
        self.world.clock.advance(59)
        self.assertFalse(s.transport.disconnecting)
        s.send(b"NOOP\r\n")
        self.world.clock.advance(59)
        self.assertFalse(s.transport.disconnecting)
        self.world.clock.advance(1)
        self.assertEqual(s.take(), b"-ERR Disconnected for inactivity\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_idle_timeout(self) -> None:
        """After login the timeout is idle_timeout (10 minutes)."""
        s = connect(self.world)
        s.login()
        self.world.clock.advance(599)
        self.assertFalse(s.transport.disconnecting)
        self.world.clock.advance(1)
        self.assertTrue(s.transport.disconnecting)

    def test_paused_clock(self) -> None:
        """While the client does not read, the idle clock stops; and no
        further command is handled."""
        s = connect(self.world)
        s.login()
        s.proto.pauseProducing()
        self.world.clock.advance(3600)
        self.assertFalse(s.transport.disconnecting)
        self.assertEqual(s.send(b"NOOP\r\n"), b"")
        s.proto.resumeProducing()
        self.assertEqual(s.take(), b"+OK\r\n")
        self.world.clock.advance(600)
        self.assertTrue(s.transport.disconnecting)

    def test_timers_cancelled(self) -> None:
        """Nothing is left on the clock after the connection goes."""
        s = connect(self.world)
        s.login()
        s.send(b"QUIT\r\n")
        s.drop()
        self.assertEqual(self.world.clock.getDelayedCalls(), [])

    def test_per_ip_limit(self) -> None:
        """One connection over max_connections_per_ip gets -ERR [SYS/TEMP]."""
        world = make_world(self.mktemp(), max_connections_per_ip=1)
        first = connect(world)
        second = connect(world)
        self.assertEqual(
            second.greeting,
            b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
        )
        self.assertTrue(second.transport.disconnecting)
        second.drop()
        third = connect(world, peer="192.0.2.99")
        self.assertTrue(third.greeting.startswith(b"+OK"))
        first.drop()
        self.assertTrue(connect(world).greeting.startswith(b"+OK"))

    def test_total_limit(self) -> None:
        """One connection over max_connections is refused too."""
        world = make_world(self.mktemp(), max_connections=1)
        connect(world)
        self.assertTrue(connect(world, peer="192.0.2.9").greeting.startswith(b"-ERR"))

    def test_stls(self) -> None:
        """STLS starts TLS; then logins are allowed and STLS is gone."""
        from twistedmail.testing import make_test_certificate
        from twistedmail.tls import ServerTLS

        cert, key = make_test_certificate(self.mktemp())
        world = make_world(
            self.mktemp(), tls=ServerTLS(cert, key), allow_plaintext_auth=False
        )
        s = connect(world)
        capa = s.send(b"CAPA\r\n")
        self.assertIn(b"STLS\r\n", capa)
        self.assertNotIn(b"USER\r\n", capa)
        self.assertEqual(s.send(b"STLS\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(s.transport.tls_started, [world.tls])
        capa = s.send(b"CAPA\r\n")
        self.assertNotIn(b"STLS\r\n", capa)
        self.assertIn(b"USER\r\n", capa)
        self.assertIn(b"+OK Logged in", s.login())

    def test_pop3s(self) -> None:
        """On POP3S the session is TLS from the start: no STLS, logins allowed."""
        from twistedmail.testing import make_test_certificate
        from twistedmail.tls import ServerTLS

        cert, key = make_test_certificate(self.mktemp())
        world = make_world(
            self.mktemp(), tls=ServerTLS(cert, key), allow_plaintext_auth=False
        )
        factory = world.factory(implicit_tls=True)
        self.assertEqual(factory.role, "pop3s")
        s = connect(world)
        capa = s.send(b"CAPA\r\n")
        self.assertNotIn(b"STLS", capa)
        self.assertIn(b"USER\r\n", capa)
        self.assertEqual(s.send(b"STLS\r\n"), b"-ERR TLS already active\r\n")
        self.assertIn(b"+OK Logged in", s.login())

    def test_no_tls(self) -> None:
        """Without a TLS context STLS is refused."""
        s = connect(self.world)
        self.assertEqual(s.send(b"STLS\r\n"), b"-ERR STLS not available\r\n")

    def test_pipelined_input_bounded(self) -> None:
        """While a command waits, reading from the socket pauses."""
        threads = QueuedThreads()
        world = make_world(self.mktemp(), run_in_thread=threads)
        s = connect(world)
        s.proto.dataReceived(LOGIN + b"NOOP\r\n" * 1000)
        world.clock.advance(0)
        self.assertEqual(s.transport.producerState, "paused")
        threads.run_all()
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.take().count(b"+OK\r\n"), 1000)
