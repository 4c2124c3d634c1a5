# -*- test-case-name: tests.test_local_delivery -*-
"""Local delivery: the last step of the flow on the receiving side.

The L{twistedmail.spool.runner.QueueRunner} hands each local destination an
alias expansion produced (a mailbox, a program, a file) to L{LocalDelivery}
together with the spooled message.  Every copy gets a ``Return-Path:`` with
the envelope sender and a ``Delivered-To:`` naming the local address it was
delivered for, prepended to the header; a message that already carries a
``Delivered-To:`` for that address has been here before and is refused as a
mail loop (554 5.4.6), the way qmail and Postfix break forwarding loops.

 - Mailboxes: the Maildir store's C{deliver} with a unique name made from the
   queue id and the mailbox, so a retry after a crash finds the earlier copy
   instead of delivering twice.
 - Programs (``|command``): spawned without a shell (the command is split
   into words with L{shlex}) unless the ``[delivery] program_shell`` setting
   says otherwise; the message on standard input; killed after
   ``program_timeout`` seconds (a temporary failure).  Exit status 0 is
   success; the exit codes of sysexits(3) map to replies as Postfix does:
   EX_TEMPFAIL, EX_OSERR, EX_IOERR and EX_CONFIG are temporary, any other
   non-zero status permanent.
 - Files (``/path``): appended in mbox (mboxrd) format under an fcntl lock,
   then fsynced; a failed write is cut back so the file is never left with
   half a message.

Failures are L{PermanentError} or L{TemporaryError}; their replies end up in
the queue entry and, later, in bounces.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from twistedmail.aliases.directory import default_mailbox
from twistedmail.aliases.expander import (
    Destination,
    FileTarget,
    LocalMailbox,
    ProgramTarget,
)
from twistedmail.config import DeliverySettings
from twistedmail.interfaces import User
from twistedmail.logs import FastLogger
from twistedmail.replies import (
    MAILBOX_UNAVAILABLE,
    MailError,
    PermanentError,
    Reply,
    TemporaryError,
)
from twistedmail.spool.store import ThreadRunner

__all__ = [
    "COMMAND_NOT_FOUND",
    "COMMAND_TIMEOUT",
    "LOOP_DETECTED",
    "LocalDelivery",
    "MailboxStore",
    "add_trace_headers",
    "delivered_to",
    "destination_key",
    "exit_status_reply",
    "mbox_bytes",
    "unique_name",
]

log = FastLogger()

LOOP_DETECTED = Reply(554, "5.4.6", "Mail loop detected")
COMMAND_TIMEOUT = Reply(451, "4.3.0", "Command time limit exceeded")
COMMAND_DIED = Reply(451, "4.3.0", "Command died with a signal")
COMMAND_NOT_FOUND = Reply(554, "5.3.0", "Command not found")
BAD_COMMAND = Reply(554, "5.3.5", "Command line cannot be parsed")
LOCAL_ERROR = Reply(451, "4.3.0", "Local delivery error")
MAILBOX_MISCONFIGURED = Reply(451, "4.3.5", "Mailbox misconfigured")
FILE_REFUSED = Reply(554, "5.2.0", "Cannot write to the mailbox file")
FILE_FULL = Reply(452, "4.2.2", "Mailbox file full")

# sysexits(3) -> (temporary?, enhanced status, text); as Postfix's sys_exits.c.
_SYSEXITS: dict[int, tuple[bool, str, str]] = {
    64: (False, "5.3.0", "command line usage error"),
    65: (False, "5.6.0", "data format error"),
    66: (False, "5.3.0", "cannot open input"),
    67: (False, "5.1.1", "user unknown"),
    68: (False, "5.1.2", "host name unknown"),
    69: (False, "5.3.0", "service unavailable"),
    70: (False, "5.3.0", "internal software error"),
    71: (True, "4.3.0", "system resource problem"),
    72: (False, "5.3.0", "critical OS file missing"),
    73: (False, "5.2.0", "cannot create output file"),
    74: (True, "4.3.0", "input/output error"),
    75: (True, "4.3.0", "temporary failure"),
    76: (False, "5.5.0", "remote protocol error"),
    77: (False, "5.7.0", "permission denied"),
    78: (True, "4.3.5", "local configuration error"),
}

_OUTPUT_LIMIT = 4096


class MailboxStore(Protocol):
    """What local delivery needs from the Maildir store."""

    def mailbox_path(self, user: User) -> str:
        """The absolute path of a user's Maildir."""

    def deliver(
        self, path: str, message: bytes, unique: str, quota: int | None
    ) -> Deferred[str]:
        """Store a message once per C{unique}; fire with its file name."""


def exit_status_reply(code: int) -> Reply | None:
    """The reply for a program's exit status (None for success).

    @return: a 4xx reply for the temporary sysexits(3) codes, else 5xx.
    """
    if code == 0:
        return None
    temporary, status, text = _SYSEXITS.get(
        code, (False, "5.3.0", "unknown mail transport error")
    )
    return Reply(451 if temporary else 554, status, f"Command failed: {text}")


def destination_key(destination: Destination) -> str:
    """A stable name for a destination, recorded in the queue entry once it
    has its copy (``mailbox:``, ``program:``, ``file:`` or ``remote:``)."""
    if isinstance(destination, LocalMailbox):
        return f"mailbox:{destination.key}"
    if isinstance(destination, ProgramTarget):
        return f"program:{destination.command}"
    if isinstance(destination, FileTarget):
        return f"file:{destination.path}"
    return f"remote:{destination.key}"


def unique_name(queue_id: str, destination: Destination) -> str:
    """The Maildir unique part for one entry's copy to one mailbox: the queue
    id and a hash of the mailbox (addresses may hold ``/``)."""
    digest = hashlib.sha256(destination_key(destination).encode("utf-8"))
    return f"{queue_id}.{digest.hexdigest()[:16]}"


def _header_block(message: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = message.find(sep)
        if end >= 0:
            return message[: end + len(sep) // 2]
    if message.startswith((b"\r\n", b"\n")):
        return b""
    return message


def delivered_to(message: bytes) -> list[str]:
    """The addresses in the message's ``Delivered-To:`` header fields,
    lower-cased."""
    header = _header_block(message)
    if b"delivered-to" not in header.lower():
        return []  # the usual case: no need to split the header into fields
    found = []
    lines = re.split(rb"\r?\n(?![ \t])", header)
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"delivered-to":
            text = value.decode("utf-8", "replace")
            found.append(" ".join(text.split()).strip("<>").lower())
    return found


def add_trace_headers(message: bytes, sender: str, address: str) -> bytes:
    """Prepend ``Return-Path: <sender>`` and ``Delivered-To: address`` with
    the message's own line ending."""
    first = message.find(b"\n")
    eol = b"\r\n" if first > 0 and message[first - 1 : first] == b"\r" else b"\n"
    if first < 0:
        eol = b"\r\n"
    return (
        b"Return-Path: <%s>%sDelivered-To: %s%s"
        % (sender.encode("utf-8"), eol, address.encode("utf-8"), eol)
        + message
    )


def mbox_bytes(message: bytes, sender: str, now: float) -> bytes:
    """One mbox (mboxrd) record: the ``From `` line, the message with LF line
    ends and ``>``-quoted ``From `` lines, a blank line after."""
    body = message.replace(b"\r\n", b"\n")
    body = re.sub(rb"(?m)^(>*From )", rb">\1", body)
    if not body.endswith(b"\n"):
        body += b"\n"
    envelope_from = (sender or "MAILER-DAEMON").encode("utf-8")
    stamp = time.asctime(time.gmtime(now)).encode("ascii")
    return b"From %s %s\n%s\n" % (envelope_from, stamp, body)


def _append_file(path: str, data: bytes, fsync: Callable[[int], None]) -> None:
    """Append under an exclusive fcntl lock; fsync; cut back on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _file_error(e: OSError) -> MailError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return TemporaryError(FILE_FULL, str(e))
    if e.errno in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP):
        return PermanentError(FILE_REFUSED, str(e))
    return TemporaryError(LOCAL_ERROR, str(e))


class _Program(ProcessProtocol):
    """Feeds the message to a program and collects its fate."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.timed_out = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.message)
        self.transport.closeStdin()

    def _keep(self, data: bytes) -> None:
        if len(self.output) < _OUTPUT_LIMIT:
            self.output += data[: _OUTPUT_LIMIT - len(self.output)]

    def outReceived(self, data: bytes) -> None:
        self._keep(data)

    def errReceived(self, data: bytes) -> None:
        self._keep(data)

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        self.ended.callback(None)

    def kill(self) -> None:
        """Kill the program (the time limit is up)."""
        self.timed_out = True
        assert self.transport is not None
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass


class LocalDelivery:
    """Delivers one copy of a spooled message to one local destination.

    @param store: the Maildir store.
    @param process_reactor: spawns program targets.
    @param clock: times program targets.
    @param settings: the ``[delivery]`` settings.
    @param run_in_thread: runs blocking file appends off the reactor thread
        (default: inline, for tests).
    @param fsync: the fsync used for file targets.
    """

    def __init__(
        self,
        store: MailboxStore,
        process_reactor: IReactorProcess,
        clock: IReactorTime,
        settings: DeliverySettings | None = None,
        *,
        run_in_thread: ThreadRunner | None = None,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self._store = store
        self._process_reactor = process_reactor
        self._clock = clock
        self._settings = settings or DeliverySettings()
        self._run = run_in_thread
        self._fsync = fsync

    def deliver(
        self, queue_id: str, sender: str, destination: Destination, message: bytes
    ) -> Deferred[None]:
        """Deliver one copy.

        @param queue_id: the queue entry's id (part of the Maildir name).
        @param sender: the envelope sender (``""`` for the null sender).
        @return: fires when the copy is safe; fails with L{PermanentError}
            or L{TemporaryError}.
        """
        return Deferred.fromCoroutine(
            self._deliver(queue_id, sender, destination, message)
        )

    async def _deliver(
        self, queue_id: str, sender: str, destination: Destination, message: bytes
    ) -> None:
        if isinstance(destination, LocalMailbox):
            address = destination.address
        elif isinstance(destination, (ProgramTarget, FileTarget)):
            address = destination.alias
        else:
            raise ValueError(f"not a local destination: {destination}")
        if address.lower() in delivered_to(message):
            raise PermanentError(LOOP_DETECTED, f"{address} already in Delivered-To")
        copy = add_trace_headers(message, sender, address)
        if isinstance(destination, LocalMailbox):
            await self._mailbox(queue_id, destination, copy)
        elif isinstance(destination, ProgramTarget):
            await self._program(queue_id, sender, destination, copy)
        else:
            await self._file(sender, destination, copy)

    async def _mailbox(
        self, queue_id: str, destination: LocalMailbox, message: bytes
    ) -> None:
        user = destination.user
        if user is None:
            # The built-in postmaster mailbox of a domain (RFC 5321 §4.5.1).
            user = User(destination.address, "", default_mailbox(destination.address))
        if not user.enabled:
            raise PermanentError(MAILBOX_UNAVAILABLE, f"{user.address} is disabled")
        unique = unique_name(queue_id, destination)
        try:
            path = self._store.mailbox_path(user)
        except Exception as e:
            # A mailbox path the store refuses is a configuration error.
            raise TemporaryError(
                MAILBOX_MISCONFIGURED, f"{user.address}: {e}"
            ) from None
        try:
            await self._store.deliver(path, message, unique, user.quota)
        except MailError:
            raise
        except OSError as e:
            raise TemporaryError(LOCAL_ERROR, f"{user.address}: {e}") from None

    def _argv(self, command: str) -> list[str]:
        if self._settings.program_shell:
            return ["/bin/sh", "-c", command]
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise PermanentError(BAD_COMMAND, f"{command!r}: {e}") from None
        if not argv:
            raise PermanentError(BAD_COMMAND, "empty command")
        if "/" not in argv[0]:
            found = shutil.which(argv[0], path=self._settings.program_path)
            if found is None:
                raise PermanentError(COMMAND_NOT_FOUND, f"{argv[0]} not in PATH")
            argv[0] = found
        elif not os.access(argv[0], os.X_OK):
            raise PermanentError(COMMAND_NOT_FOUND, f"{argv[0]} not executable")
        return argv

    async def _program(
        self, queue_id: str, sender: str, target: ProgramTarget, message: bytes
    ) -> None:
        argv = self._argv(target.command)
        env = {
            "PATH": self._settings.program_path,
            "SENDER": sender,
            "RECIPIENT": target.alias,
            "QUEUE_ID": queue_id,
        }
        proto = _Program(message)
        self._process_reactor.spawnProcess(proto, argv[0], argv, env=env, path="/")
        timer: IDelayedCall = self._clock.callLater(
            self._settings.program_timeout, proto.kill
        )
        await proto.ended
        reason = proto.reason
        assert reason is not None
        if timer.active():
            timer.cancel()
        output = proto.output.decode("utf-8", "replace").strip()
        what = f"{target.command!r}: {output}" if output else repr(target.command)
        if proto.timed_out:
            raise TemporaryError(COMMAND_TIMEOUT, f"{what} timed out")
        if reason.check(ProcessDone):
            return
        value = reason.value
        if isinstance(value, ProcessTerminated) and value.exitCode is not None:
            reply = exit_status_reply(value.exitCode)
            if reply is None:
                return
            error = TemporaryError if reply.is_temporary else PermanentError
            raise error(reply, f"{what} exited with {value.exitCode}")
        raise TemporaryError(COMMAND_DIED, f"{what} ended: {value}")

    async def _file(self, sender: str, target: FileTarget, message: bytes) -> None:
        data = mbox_bytes(message, sender, self._clock.seconds())
        path, fsync = target.path, self._fsync

        def append() -> None:
            _append_file(path, data, fsync)

        try:
            if self._run is None:
                append()
            else:
                await self._run(append)
        except OSError as e:
            raise _file_error(e) from None
