# -*- test-case-name: tests.test_queue_tools -*-
"""Queue tools: ``twistedmail queue list|show|flush|hold|release|delete``.

Step of the flow: the operator's view of the spool (like Postfix's mailq,
postcat, postqueue -f and postsuper).

Reading (``list``, ``show``) reads the queue files directly; it is safe
while the server runs because every entry and status file is replaced by
an atomic rename, never rewritten in place (an entry removed meanwhile is
just skipped).

Changing (``flush``, ``hold``, ``release``, ``delete``) must not race with
the running server, which rewrites whole status records: a tool writing the
status file between the server's read and write would have its change lost
(or a removed entry written back).  So:

 - **Server running**: the change goes through the control channel, a UNIX
   socket ``queue.control`` in the data folder (mode 0600, so only the
   server's user and root may use it; L{QueueControlService} serves it).
   The server applies it under the entry's lock (L{EntryLocks}), which its
   runner and relay hold for every read-change-write cycle, so nothing is
   lost, and ``flush`` acts at once.  One request line, one reply line:
   ``hold ID`` → ``OK held ID`` or ``ERR no such entry ID``.
 - **Server not running** (nothing answers on the socket, or there is no
   socket): the tool changes the files itself through L{Spool} (temporary
   file, fsync, rename).  ``flush`` then makes every waiting recipient due
   at once, so the next start tries them first.

The one window left is a server starting within the few milliseconds of a
direct change; the change is atomic either way, and the server's start-up
scan reads entries again under the lock before changing them.

A stale socket file (left by a crash) is removed when the server starts.

Exit status: 0 success, 1 an unknown or malformed queue id or a failure,
2 a usage error.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import IO, Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from twistedmail.config import Settings
from twistedmail.spool.store import (
    DEFERRED,
    REMOTE,
    BrokenEntry,
    NewerVersion,
    QueueEntry,
    Spool,
    read_entry_file,
    read_status_file,
)

__all__ = [
    "CONTROL_SOCKET",
    "ControlProtocol",
    "QueueControl",
    "QueueControlService",
    "QueueOperations",
    "control_path",
    "format_list",
    "format_show",
    "queue_command",
    "read_queue",
    "send_control",
]

log = Logger()

#: The control socket's name in the data folder.
CONTROL_SOCKET = "queue.control"
_ID_LENGTH = 23
_HEX = frozenset("0123456789ABCDEF")
_T = TypeVar("_T")

USAGE = """\
usage: twistedmail queue list
       twistedmail queue show ID
       twistedmail queue flush [ID]
       twistedmail queue hold ID
       twistedmail queue release ID
       twistedmail queue delete ID
"""


def control_path(settings: Settings) -> str:
    """The control socket's path for a configuration."""
    return settings.data_path(CONTROL_SOCKET)


#: The longest socket path the kernel takes in C{sun_path} (Linux: 108
#: octets with the terminating NUL; the BSDs: 104).
_SUN_PATH_MAX = 103


class _SocketAddress:
    """A path to bind or connect a UNIX socket to, even when the real path
    is longer than C{sun_path} allows.

    A data folder deep in the file system (or in a test's temporary folder)
    easily makes the control socket's path longer than the kernel takes.
    Then, where C{/proc/self/fd} exists (Linux), the folder is opened and
    the socket named through the folder's descriptor, which is short; the
    socket file is still made in the data folder.  Elsewhere the long path
    is used and the kernel's error says why it failed.
    """

    def __init__(self, path: str) -> None:
        self._fd: int | None = None
        self.path = path
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            return
        folder, name = os.path.split(path)
        if not os.path.isdir("/proc/self/fd"):
            return
        self._fd = os.open(folder or ".", os.O_PATH | os.O_DIRECTORY)
        self.path = f"/proc/self/fd/{self._fd}/{name}"

    def close(self) -> None:
        """Close the folder's descriptor (after the socket is closed)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def spool_path(settings: Settings) -> str:
    """The spool folder for a configuration."""
    return settings.data_path(settings.spool.directory)


def _normal_id(text: str) -> str | None:
    queue_id = text.strip().upper()
    if len(queue_id) != _ID_LENGTH or not set(queue_id) <= _HEX:
        return None
    return queue_id


# Reading


def read_queue(path: str) -> list[QueueEntry]:
    """Every readable entry in a spool folder, oldest first (blocking).

    Broken or newer-version files are skipped (the server quarantines or
    keeps them); entries removed while reading are skipped.
    """
    folder = os.path.join(path, "queue")
    try:
        names = sorted(n for n in os.listdir(folder) if "." not in n)
    except FileNotFoundError:
        return []
    entries = []
    for name in names:
        entry = _read_one(path, name)
        if entry is not None:
            entries.append(entry)
    return entries


def _read_one(path: str, queue_id: str) -> QueueEntry | None:
    folder = os.path.join(path, "queue")
    try:
        entry, _ = read_entry_file(os.path.join(folder, queue_id))
    except (OSError, BrokenEntry, NewerVersion):
        return None
    try:
        recipients, held = read_status_file(os.path.join(folder, queue_id + ".status"))
    except FileNotFoundError:
        return entry
    except (OSError, BrokenEntry, NewerVersion):
        return entry
    return replace(entry, recipients=recipients, held=held)


def _date(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%a %b %d %H:%M:%S")


def _record_line(r: Any) -> str:
    text = f"{r.address} ({r.status}"
    if r.attempts:
        text += f", {r.attempts} attempt{'s' if r.attempts != 1 else ''}"
    if r.status in (DEFERRED, REMOTE) and r.next_attempt:
        text += f", next {_date(r.next_attempt)}"
    text += ")"
    if r.reason:
        text += f": {r.reason}"
    elif r.reply is not None:
        text += f": {r.reply}"
    return text


def format_list(entries: Sequence[QueueEntry]) -> str:
    """The ``queue list`` text, like mailq: id (``!`` when held), size,
    arrival (UTC), sender, then each recipient not done with its status and
    last reason."""
    if not entries:
        return "Mail queue is empty\n"
    lines = [f"{'-Queue ID-':<25}{'--Size--':>9} {'--Arrival (UTC)--':<20} -Sender-"]
    total = 0
    for e in entries:
        total += e.size
        mark = "!" if e.held else " "
        sender = e.envelope.sender or "<>"
        lines.append(
            f"{e.queue_id}{mark} {e.size:>9} {_date(e.envelope.received_at):<20} "
            f"{sender}"
        )
        for r in e.recipients:
            if r.is_done:
                continue
            lines.append(f"{'':>57}{_record_line(r)}")
        lines.append("")
    kib = (total + 1023) // 1024
    lines.append(
        f"-- {kib} KiB in {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}."
    )
    return "\n".join(lines) + "\n"


def format_show(entry: QueueEntry, message: bytes) -> str:
    """The ``queue show`` text: envelope, every recipient record, then the
    message header (the body's size only)."""
    e = entry.envelope
    lines = [
        f"Queue ID: {entry.queue_id}{' (held)' if entry.held else ''}",
        f"Size: {entry.size}",
        f"Arrival: {_date(e.received_at)} UTC",
        f"Sender: <{e.sender}>",
        f"Client: {e.client_name or '-'} [{e.client_address or '-'}]",
        f"Protocol: {e.protocol}" + (f" ({e.tls})" if e.tls else ""),
    ]
    if e.auth_user:
        lines.append(f"Authenticated: {e.auth_user}")
    if e.ret or e.envid:
        lines.append(f"DSN: RET={e.ret or '-'} ENVID={e.envid or '-'}")
    lines.append("Recipients:")
    for r in entry.recipients:
        lines.append(f"  {_record_line(r)}")
        extra = []
        if r.parent:
            extra.append(f"from {r.parent}")
        if r.notify:
            extra.append("NOTIFY=" + ",".join(r.notify))
        if r.orcpt:
            extra.append(f"ORCPT={r.orcpt}")
        if r.last_attempt:
            extra.append(f"last attempt {_date(r.last_attempt)}")
        if extra:
            lines.append("    " + "; ".join(extra))
    end = message.find(b"\r\n\r\n")
    header = message if end < 0 else message[: end + 2]
    lines.append("")
    lines.append(header.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n"))
    body = 0 if end < 0 else len(message) - end - 4
    lines.append("")
    lines.append(f"({body} bytes of body not shown)")
    return "\n".join(lines) + "\n"


# The control channel: client side


class _NotRunning(Exception):
    """Nothing answers on the control socket."""


def send_control(path: str, request: str, timeout: float = 60.0) -> str:
    """Send one request line to the running server; return its reply line.

    @raise _NotRunning: no socket, or nothing listening on it.
    @raise OSError: the server did not answer properly.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address = _SocketAddress(path)
    try:
        s.settimeout(timeout)
        try:
            s.connect(address.path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise _NotRunning(str(e)) from None
        finally:
            address.close()
        s.sendall(request.encode("ascii") + b"\r\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > 65536:
                break
    finally:
        s.close()
    if not data.endswith(b"\n"):
        raise OSError("the server closed the control connection without a reply")
    return data.decode("utf-8", "replace").rstrip("\r\n")


# The control channel: server side


class QueueOperations(Protocol):
    """What the control channel asks of the server (the relay service,
    L{twistedmail.spool.relay.RelayRunner}, provides it)."""

    def flush(self, queue_id: str | None = None, /) -> None:
        """Try waiting recipients now."""

    def hold(self, queue_id: str, /) -> Deferred[QueueEntry]:
        """Hold an entry; fail with KeyError."""

    def release(self, queue_id: str, /) -> Deferred[QueueEntry]:
        """Release an entry; fail with KeyError."""

    def delete(self, queue_id: str, /) -> Deferred[None]:
        """Remove an entry; fail with KeyError."""

    def exists(self, queue_id: str, /) -> Deferred[None]:
        """Fire when the entry exists; fail with KeyError."""


class QueueControl:
    """Runs control commands against the server's queue operations."""

    def __init__(self, operations: QueueOperations) -> None:
        self._ops = operations

    def run(self, command: str, queue_id: str | None) -> Deferred[str]:
        """Do one command; fire with the reply text, fail with KeyError for
        an unknown entry."""
        ops = self._ops
        if queue_id is None:
            if command != "flush":
                raise ValueError(f"{command} needs a queue id")
            ops.flush(None)
            return succeed("OK flushed the queue")
        if command == "flush":

            def flushed(_: object) -> str:
                ops.flush(queue_id)
                return f"OK flushed {queue_id}"

            return ops.exists(queue_id).addCallback(flushed)
        actions: dict[str, Callable[[str], Deferred[Any]]] = {
            "hold": ops.hold,
            "release": ops.release,
            "delete": ops.delete,
        }
        past = {"hold": "held", "release": "released", "delete": "deleted"}
        d = actions[command](queue_id)
        return d.addCallback(lambda _: f"OK {past[command]} {queue_id}")


_COMMANDS = {"flush": (0, 1), "hold": (1, 1), "release": (1, 1), "delete": (1, 1)}


class ControlProtocol(LineOnlyReceiver):
    """One control connection: request lines in, one reply line each."""

    MAX_LENGTH = 1024

    def __init__(self, control: QueueControl) -> None:
        self._control = control

    def lineReceived(self, line: bytes) -> None:
        """Parse and run one request."""
        words = line.decode("ascii", "replace").split()
        if not words or words[0].lower() not in _COMMANDS:
            self._reply("ERR unknown command")
            return
        command, args = words[0].lower(), words[1:]
        low, high = _COMMANDS[command]
        if not low <= len(args) <= high:
            self._reply(f"ERR usage: {command} {'ID' if low else '[ID]'}")
            return
        queue_id = None
        if args:
            queue_id = _normal_id(args[0])
            if queue_id is None:
                self._reply("ERR malformed queue id")
                return
        d = self._control.run(command, queue_id)

        def failed(f: Failure) -> str:
            if f.check(KeyError):
                return f"ERR no such entry {queue_id}"
            log.failure("queue control {command} failed", f, command=command)
            return "ERR internal error"

        d.addErrback(failed)
        d.addCallback(self._reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Refuse and drop an overlong request."""
        self._reply("ERR line too long")
        if self.transport is not None:
            self.transport.loseConnection()

    def _reply(self, text: str) -> None:
        if self.transport is not None:
            self.sendLine(text.encode("utf-8"))
        log.info("queue control: {text}", text=text)


class _ControlFactory(Factory):
    def __init__(self, control: QueueControl) -> None:
        self._control = control

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        return ControlProtocol(self._control)


class QueueControlService(Service):
    """Serves the control socket (see the module docstring).

    @param path: the socket's path (L{control_path}).
    @param reactor: an C{IReactorUNIX}.
    @param relay: the queue operations the commands call (the relay).
    """

    def __init__(self, path: str, reactor: Any, relay: QueueOperations) -> None:
        self._path = path
        self._reactor = reactor
        self._control = QueueControl(relay)
        self.port: IListeningPort | None = None
        self._address = _SocketAddress(path)
        #: Fires with the port once listening.
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        """Remove a stale socket, then listen."""
        super().startService()
        self._remove_stale()
        self._address = _SocketAddress(self._path)
        endpoint = endpoints.UNIXServerEndpoint(
            self._reactor, self._address.path, mode=0o600
        )
        d = endpoint.listen(_ControlFactory(self._control))

        def bound(port: IListeningPort) -> IListeningPort:
            self.port = port
            self.listening.callback(port)
            return port

        def failed(f: Failure) -> None:
            self._address.close()
            log.failure("cannot listen on the queue control socket", f)
            self.listening.errback(f)

        d.addCallbacks(bound, failed)

    def _remove_stale(self) -> None:
        if not os.path.exists(self._path):
            return
        try:
            send_control(self._path, "", timeout=2.0)
        except _NotRunning:
            os.unlink(self._path)
        except OSError:
            pass

    def stopService(self) -> Deferred[None] | None:
        """Stop listening (the socket file is removed)."""
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        d: Deferred[None] | None = port.stopListening()
        if d is None:
            self._address.close()
        else:
            d.addBoth(_passing(self._address.close))
        return d


def _passing(action: Callable[[], None]) -> Callable[[_T], _T]:
    """A callback that runs C{action} and passes the result on."""

    def run(result: _T) -> _T:
        action()
        return result

    return run


# Direct changes (server not running)


def _sync(clock: Clock, d: Deferred[_T]) -> _T:
    """Run a Spool Deferred to completion with an inline thread runner."""
    results: list[_T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    for _ in range(100):
        if results or failures:
            break
        clock.advance(0)
    if failures:
        failures[0].raiseException()
    if not results:
        raise RuntimeError("spool operation did not finish")
    return results[0]


def _direct(settings: Settings, command: str, queue_id: str | None, now: float) -> str:
    clock = Clock()
    clock.advance(now)
    spool = Spool(spool_path(settings), clock, lambda f: _inline(f))
    ids = (
        [queue_id]
        if queue_id is not None
        else [e.queue_id for e in read_queue(spool_path(settings))]
    )
    for i in ids:
        entry = _sync(clock, spool.load(i))
        if command == "delete":
            _sync(clock, spool.remove(i))
        elif command in ("hold", "release"):
            _sync(clock, spool.update(replace(entry, held=command == "hold")))
        elif command == "flush":
            records = tuple(
                replace(r, next_attempt=now)
                if r.status in (DEFERRED, REMOTE) and r.next_attempt
                else r
                for r in entry.recipients
            )
            if records != entry.recipients:
                _sync(clock, spool.update(replace(entry, recipients=records)))
    past = {"flush": "flushed", "hold": "held", "release": "released"}.get(
        command, "deleted"
    )
    what = queue_id if queue_id is not None else "the queue"
    return f"OK {past} {what} (server not running: changed the files)"


def _inline(f: Callable[[], _T]) -> Deferred[_T]:
    d: Deferred[_T] = Deferred()
    try:
        d.callback(f())
    except BaseException:
        d.errback(Failure())
    return d


# The command


def queue_command(
    args: list[str],
    settings: Settings,
    stdout: IO[str],
    stderr: IO[str],
    *,
    now: Callable[[], float] = time.time,
    timeout: float = 60.0,
) -> int:
    """Run ``twistedmail queue ARGS``; return the exit status.

    @param args: the words after ``queue`` (``["hold", "ID"]``).
    @param now: the clock (for direct changes).
    @param timeout: seconds to wait for the running server's reply.
    """
    if not args or args[0] not in ("list", "show", *_COMMANDS):
        stderr.write(USAGE)
        return 2
    command, rest = args[0], args[1:]
    if command == "list":
        if rest:
            stderr.write(USAGE)
            return 2
        stdout.write(format_list(read_queue(spool_path(settings))))
        return 0
    low, high = (1, 1) if command == "show" else _COMMANDS[command]
    if not low <= len(rest) <= high:
        stderr.write(USAGE)
        return 2
    queue_id = None
    if rest:
        queue_id = _normal_id(rest[0])
        if queue_id is None:
            stderr.write(f"twistedmail queue: malformed queue id {rest[0]!r}\n")
            return 1
        if _read_one(spool_path(settings), queue_id) is None:
            stderr.write(f"twistedmail queue: no such entry {queue_id}\n")
            return 1
    if command == "show":
        assert queue_id is not None
        entry = _read_one(spool_path(settings), queue_id)
        message = _read_message(spool_path(settings), queue_id)
        if entry is None or message is None:
            stderr.write(f"twistedmail queue: no such entry {queue_id}\n")
            return 1
        stdout.write(format_show(entry, message))
        return 0
    request = command if queue_id is None else f"{command} {queue_id}"
    try:
        reply = send_control(control_path(settings), request, timeout)
    except _NotRunning:
        try:
            reply = _direct(settings, command, queue_id, now())
        except KeyError:
            stderr.write(f"twistedmail queue: no such entry {queue_id}\n")
            return 1
        except (OSError, BrokenEntry) as e:
            stderr.write(f"twistedmail queue: {e}\n")
            return 1
    except OSError as e:
        stderr.write(f"twistedmail queue: no answer from the server: {e}\n")
        return 1
    if reply.startswith("OK"):
        stdout.write(reply[3:] + "\n")
        return 0
    stderr.write(
        f"twistedmail queue: {reply[4:] if reply.startswith('ERR ') else reply}\n"
    )
    return 1


def _read_message(path: str, queue_id: str) -> bytes | None:
    file = os.path.join(path, "queue", queue_id)
    try:
        entry, offset = read_entry_file(file)
        with open(file, "rb") as f:
            f.seek(offset)
            return f.read(entry.size)
    except (OSError, BrokenEntry, NewerVersion):
        return None
