"""Tests for L{twistedmail.spool.tools}: the queue commands, direct and
through the control socket."""

from __future__ import annotations

import io
import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThread
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.relay_helpers import Outbound, wait
from twistedmail.config import ServerSettings, Settings
from twistedmail.replies import Reply
from twistedmail.spool.store import DEFERRED, REMOTE, QueueEntry, RecipientRecord
from twistedmail.spool.tools import (
    ControlProtocol,
    QueueControl,
    QueueControlService,
    _SocketAddress,
    control_path,
    queue_command,
)

BUSY = Reply(451, "4.3.0", "Try again later")
NOW = 1_700_000_000.0


class FakeOperations:
    """Queue operations that record calls; ids in C{known} exist."""

    def __init__(self, *known: str) -> None:
        self.known = set(known)
        self.calls: list[tuple[str, str | None]] = []

    def _op(self, name: str, queue_id: str) -> Deferred[None]:
        if queue_id not in self.known:
            return fail(KeyError(queue_id))
        self.calls.append((name, queue_id))
        return succeed(None)

    def flush(self, queue_id: str | None = None, /) -> None:
        """Record a flush."""
        self.calls.append(("flush", queue_id))

    def hold(self, queue_id: str, /) -> Deferred[QueueEntry]:
        """Record a hold."""
        return self._op("hold", queue_id)  # type: ignore[return-value]

    def release(self, queue_id: str, /) -> Deferred[QueueEntry]:
        """Record a release."""
        return self._op("release", queue_id)  # type: ignore[return-value]

    def delete(self, queue_id: str, /) -> Deferred[None]:
        """Record a delete."""
        return self._op("delete", queue_id)

    def exists(self, queue_id: str, /) -> Deferred[None]:
        """Known ids exist."""
        if queue_id not in self.known:
            return fail(KeyError(queue_id))
        return succeed(None)


class ToolTestCase(SynchronousTestCase):
    """A data folder with a spool holding two entries: one deferred remote
    recipient, one held with a pending local one."""

    def setUp(self) -> None:
        data = self.mktemp()
        self.settings = Settings().with_changes(server=ServerSettings(data_dir=data))
        self.out = Outbound(os.path.join(data, "spool"))
        self.out.clock.advance(NOW - self.out.clock.seconds())
        self.first = self.out.submit("bob@b.test")
        remote = RecipientRecord(
            "bob@b.test",
            status=REMOTE,
            reply=BUSY,
            reason="host mx.b.test said: 451 4.3.0 Try again later",
            attempts=2,
            last_attempt=NOW,
            next_attempt=NOW + 600,
        )
        wait(self.out, self.out.spool.update_status(self.first, [remote]))
        self.second = self.out.submit("carol@a.test", sender="")
        wait(
            self.out,
            self.out.spool.update_status(
                self.second, [RecipientRecord("carol@a.test")], held=True
            ),
        )

    def run_command(self, *args: str) -> tuple[int, str, str]:
        """Run a queue command: (status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        status = queue_command(
            list(args), self.settings, out, err, now=lambda: NOW + 60
        )
        return status, out.getvalue(), err.getvalue()

    def entry(self, queue_id: str) -> QueueEntry:
        """The entry as on disk."""
        return wait(self.out, self.out.spool.load(queue_id))


class ReadingTests(ToolTestCase):
    """list and show."""

    def test_list(self) -> None:
        """Each entry with id, size, arrival, sender, and its recipients with
        status and reason; held entries marked with !."""
        status, out, err = self.run_command("list")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertIn("-Queue ID-", lines[0])
        first = [line for line in lines if line.startswith(self.first)][0]
        self.assertIn("Tue Nov 14 22:13:20", first)
        self.assertTrue(first.endswith("alice@a.test"))
        self.assertIn(
            "bob@b.test (remote, 2 attempts, next Tue Nov 14 22:23:20): "
            "host mx.b.test said: 451 4.3.0 Try again later",
            out,
        )
        held = [line for line in lines if line.startswith(self.second)][0]
        self.assertTrue(held.startswith(self.second + "!"))
        self.assertTrue(held.endswith("<>"))
        self.assertIn("carol@a.test (pending)", out)
        self.assertEqual(lines[-1], "-- 1 KiB in 2 entries.")

    def test_list_empty(self) -> None:
        """An empty queue says so."""
        wait(self.out, self.out.spool.remove(self.first))
        wait(self.out, self.out.spool.remove(self.second))
        self.assertEqual(self.run_command("list"), (0, "Mail queue is empty\n", ""))

    def test_show(self) -> None:
        """Envelope, records and the message header."""
        status, out, err = self.run_command("show", self.first.lower())
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"Queue ID: {self.first}\n", out)
        self.assertIn("Sender: <alice@a.test>\n", out)
        self.assertIn("  bob@b.test (remote, 2 attempts", out)
        self.assertIn("Subject: hi\n", out)
        self.assertIn("(8 bytes of body not shown)", out)
        self.assertNotIn("Hello.", out)

    def test_show_unknown(self) -> None:
        """An unknown id: an error and exit status 1."""
        status, out, err = self.run_command("show", "0" * 23)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"twistedmail queue: no such entry {'0' * 23}\n")

    def test_malformed_id(self) -> None:
        """A malformed id: an error and exit status 1."""
        for command in ("show", "hold", "release", "delete", "flush"):
            status, out, err = self.run_command(command, "../etc/passwd")
            self.assertEqual((status, out), (1, ""))
            self.assertIn("malformed queue id", err)

    def test_usage(self) -> None:
        """Missing or extra words, or an unknown command: usage, status 2."""
        for args in (
            [],
            ["frob"],
            ["show"],
            ["hold"],
            ["list", "x"],
            ["hold", "a", "b"],
        ):
            status, out, err = self.run_command(*args)
            self.assertEqual((status, out), (2, ""), args)
            self.assertTrue(err.startswith("usage: twistedmail queue list"))


class DirectChangeTests(ToolTestCase):
    """With no server running the tools change the files themselves."""

    def test_hold_release(self) -> None:
        """hold and release set and clear the held flag on disk."""
        status, out, _ = self.run_command("hold", self.first)
        self.assertEqual(status, 0)
        self.assertIn(f"held {self.first} (server not running", out)
        self.assertTrue(self.entry(self.first).held)
        self.assertEqual(self.run_command("release", self.first)[0], 0)
        self.assertFalse(self.entry(self.first).held)
        # The records are untouched.
        self.assertEqual(self.entry(self.first).recipients[0].attempts, 2)

    def test_delete(self) -> None:
        """delete removes the entry and its status file."""
        self.assertEqual(self.run_command("delete", self.first)[0], 0)
        self.assertEqual(self.out.queue_ids(), [self.second])
        self.assertFalse(
            os.path.exists(self.out.spool.status_path(self.first)),
        )

    def test_flush_one(self) -> None:
        """flush ID makes the entry's waiting recipients due now."""
        self.assertEqual(self.run_command("flush", self.first)[0], 0)
        self.assertEqual(self.entry(self.first).recipients[0].next_attempt, NOW + 60)

    def test_flush_all(self) -> None:
        """flush without an id makes every waiting recipient due."""
        deferred = RecipientRecord(
            "carol@a.test", status=DEFERRED, attempts=1, next_attempt=NOW + 9999
        )
        wait(self.out, self.out.spool.update_status(self.second, [deferred]))
        status, out, _ = self.run_command("flush")
        self.assertEqual(status, 0)
        self.assertIn("flushed the queue", out)
        self.assertEqual(self.entry(self.first).recipients[0].next_attempt, NOW + 60)
        self.assertEqual(self.entry(self.second).recipients[0].next_attempt, NOW + 60)

    def test_unknown(self) -> None:
        """Changing an unknown entry: status 1, nothing written."""
        for command in ("hold", "release", "delete", "flush"):
            status, _, err = self.run_command(command, "F" * 23)
            self.assertEqual(status, 1)
            self.assertEqual(err, f"twistedmail queue: no such entry {'F' * 23}\n")
        self.assertEqual(
            sorted(self.out.queue_ids()), sorted([self.first, self.second])
        )

    def test_restarted_server_sees_hold(self) -> None:
        """A hold made while the server was down is honoured at start."""
        self.run_command("hold", self.first)
        self.out.clock.advance(NOW + 3600 - self.out.clock.seconds())
        self.out.start()
        self.addCleanup(self.out.stop)
        self.out.advance(5)
        self.assertEqual(self.out.transport.sent, [])
        self.assertEqual(self.out.agent.copies, [])


class ControlProtocolTests(SynchronousTestCase):
    """The control channel's line protocol."""

    def exchange(self, ops: FakeOperations, *lines: bytes) -> list[bytes]:
        """Send request lines; the reply lines."""
        proto = ControlProtocol(QueueControl(ops))
        transport = StringTransport()
        proto.makeConnection(transport)
        for line in lines:
            proto.dataReceived(line + b"\r\n")
        return transport.value().split(b"\r\n")[:-1]

    def test_commands(self) -> None:
        """Each command calls the operation and replies OK."""
        queue_id = "A" * 23
        ops = FakeOperations(queue_id)
        replies = self.exchange(
            ops,
            b"hold " + queue_id.lower().encode(),
            b"release " + queue_id.encode(),
            b"flush " + queue_id.encode(),
            b"flush",
            b"delete " + queue_id.encode(),
        )
        self.assertEqual(
            replies,
            [
                b"OK held " + queue_id.encode(),
                b"OK released " + queue_id.encode(),
                b"OK flushed " + queue_id.encode(),
                b"OK flushed the queue",
                b"OK deleted " + queue_id.encode(),
            ],
        )
        self.assertEqual(
            ops.calls,
            [
                ("hold", queue_id),
                ("release", queue_id),
                ("flush", queue_id),
                ("flush", None),
                ("delete", queue_id),
            ],
        )

    def test_errors(self) -> None:
        """Unknown entries, malformed ids, bad commands: ERR replies."""
        ops = FakeOperations()
        replies = self.exchange(
            ops,
            b"hold " + b"B" * 23,
            b"hold nope",
            b"hold",
            b"rm -rf /",
            b"",
        )
        self.assertEqual(
            replies,
            [
                b"ERR no such entry " + b"B" * 23,
                b"ERR malformed queue id",
                b"ERR usage: hold ID",
                b"ERR unknown command",
                b"ERR unknown command",
            ],
        )
        self.assertEqual(ops.calls, [])

    def test_long_line(self) -> None:
        """An overlong request is refused and the connection dropped."""
        proto = ControlProtocol(QueueControl(FakeOperations()))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"x" * 5000)
        self.assertEqual(transport.value(), b"ERR line too long\r\n")
        self.assertTrue(transport.disconnecting)


class ControlSocketTests(TestCase):
    """The command through the control socket of a running server (real
    reactor, the command in a thread as the CLI runs it)."""

    def setUp(self) -> None:
        data = self.mktemp()
        os.makedirs(os.path.join(data, "spool", "queue"))
        self.settings = Settings().with_changes(server=ServerSettings(data_dir=data))
        self.out = Outbound(os.path.join(data, "spool"))
        self.queue_id = self.out.submit("bob@b.test")
        self.ops = FakeOperations(self.queue_id)

    def start_service(self) -> Deferred[object]:
        """Serve the control socket for the test."""
        service = QueueControlService(control_path(self.settings), reactor, self.ops)
        service.startService()
        self.addCleanup(service.stopService)
        return service.listening

    def run_command(self, *args: str) -> Deferred[tuple[int, str, str]]:
        """Run the command in a thread."""

        def run() -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            status = queue_command(list(args), self.settings, out, err, timeout=10)
            return status, out.getvalue(), err.getvalue()

        return deferToThread(run)

    async def _hold(self) -> None:
        await self.start_service()
        status, out, err = await self.run_command("hold", self.queue_id)
        self.assertEqual((status, out, err), (0, f"held {self.queue_id}\n", ""))
        self.assertEqual(self.ops.calls, [("hold", self.queue_id)])
        # Through the server, not the files.
        self.assertFalse(wait(self.out, self.out.spool.load(self.queue_id)).held)

    def test_hold_via_server(self) -> None:
        """With the server running, hold goes through the socket."""
        return Deferred.fromCoroutine(self._hold())

    async def _unknown(self) -> None:
        await self.start_service()
        self.ops.known.clear()
        status, out, err = await self.run_command("delete", self.queue_id)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"twistedmail queue: no such entry {self.queue_id}\n")

    def test_server_refuses_unknown(self) -> None:
        """The server's "no such entry" becomes exit status 1."""
        return Deferred.fromCoroutine(self._unknown())

    async def _stale(self) -> None:
        path = control_path(self.settings)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = _SocketAddress(path)
        s.bind(address.path)
        s.close()
        address.close()
        self.assertTrue(os.path.exists(path))
        await self.start_service()
        status, _, _ = await self.run_command("flush")
        self.assertEqual(status, 0)
        self.assertEqual(self.ops.calls, [("flush", None)])

    def test_stale_socket(self) -> None:
        """A socket file left by a crash is replaced at start."""
        return Deferred.fromCoroutine(self._stale())

    async def _mode(self) -> None:
        await self.start_service()
        mode = os.stat(control_path(self.settings)).st_mode & 0o777
        self.assertEqual(mode, 0o600)

    def test_socket_mode(self) -> None:
        """Only the server's user may use the socket."""
        return Deferred.fromCoroutine(self._mode())


class LongPathTests(ControlSocketTests):
    """A data folder whose control socket path is longer than C{sun_path}
    allows (deep folders, test folders) still gets a working socket."""

    def setUp(self) -> None:
        data = os.path.abspath(os.path.join(self.mktemp(), "d" * 60, "e" * 60))
        os.makedirs(os.path.join(data, "spool", "queue"))
        self.settings = Settings().with_changes(server=ServerSettings(data_dir=data))
        self.assertGreater(len(control_path(self.settings)), 108)
        self.out = Outbound(os.path.join(data, "spool"))
        self.queue_id = self.out.submit("bob@b.test")
        self.ops = FakeOperations(self.queue_id)

    async def _removed(self) -> None:
        service = QueueControlService(control_path(self.settings), reactor, self.ops)
        service.startService()
        await service.listening
        self.assertTrue(os.path.exists(control_path(self.settings)))
        await service.stopService()
        self.assertFalse(os.path.exists(control_path(self.settings)))

    def test_removed_at_stop(self) -> None:
        """The socket file is made in the data folder and removed at stop."""
        return Deferred.fromCoroutine(self._removed())
