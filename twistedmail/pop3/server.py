# -*- test-case-name: tests.test_pop3_server -*-
"""The POP3 server's Twisted adapter (the last step of the flow: Maildir to
the user's client over POP3 with STLS, or POP3S).

L{POP3ServerFactory} makes one L{POP3ServerProtocol} per connection; the
protocol feeds bytes to the sans-I/O L{POP3Machine} and answers its
decisions with the portal (L{twistedmail.auth.throttle.login}) and the
Maildir store.  What it adds to the machine:

  - Login: the avatar (L{IPOP3Maildrop}) gives the Maildir; the maildrop
    is locked (L{MaildropLock}, one session per maildrop across threads
    and processes), the INBOX opened and its listing fixed, all in a
    thread.  A second session gets ``-ERR [IN-USE]``.  The lock is
    released on every way out: QUIT, a dropped connection, a timeout.
  - Snapshots kept between sessions: when a session ends, the factory
    keeps its maildrop's open INBOX and listing (at most
    L{KEEP_MAILDROPS} maildrops and L{KEEP_MESSAGES} messages in all, the
    least recently used dropped first).  The next login to that maildrop
    brings the kept snapshot up to date (a few C{stat} calls when nothing
    changed, only what changed otherwise) instead of reading the folder
    and its UID list again, and keeps the listing (and its formatted LIST
    and UIDL answers) when the messages are the same.  This is what
    Dovecot's index files do for it; ours lives in memory.
  - RETR and TOP: messages up to L{SYNC_READ_LIMIT} octets are read on the
    reactor thread (a page-cache read is cheaper than a thread hop);
    larger ones are read and formatted in a thread.  The status line and
    the message go out in one write, so no small first segment waits for
    the client's delayed ACK; on plain TCP with nothing buffered that is
    one C{sendmsg} of the pieces straight to the socket
    (L{twistedmail.sending.write_now}).
  - UPDATE: the messages marked deleted are expunged through the store in
    a thread, then the client gets its answer.
  - Timeouts on the injected clock: C{[pop3] login_timeout} before login,
    C{idle_timeout} after (RFC 1939 §3 asks for at least 10 minutes).  The
    clock stops while the client is not reading what we sent (the
    transport paused us), so a slow download is not cut.
  - Flow control: the protocol is the transport's push producer; while
    the transport's buffer is full no further pipelined command is read.
  - Limits: C{max_connections} and C{max_connections_per_ip} per factory;
    one over gets ``-ERR [SYS/TEMP]`` and is closed.
  - Log lines: connection opened/closed (L{twistedmail.logs}) and the
    login lines of L{twistedmail.auth.throttle.login}.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail.auth.throttle import LoginThrottle, login
from twistedmail.config import Settings
from twistedmail.interfaces import IPOP3Maildrop
from twistedmail.logs import (
    log_connection_closed,
    log_connection_opened,
    new_session_id,
)
from twistedmail.maildir import (
    Mailbox,
    MaildirError,
    MaildirStore,
    MessageInfo,
    NoSuchMessageError,
)
from twistedmail.pop3._machine import (
    AUTH_FAILED,
    IN_USE,
    MESSAGE_GONE,
    TEMP_FAILURE,
    TIMED_OUT,
    TOO_MANY_CONNECTIONS,
    CloseRequested,
    Event,
    Listing,
    LoginRequested,
    MachineConfig,
    MessageRequested,
    POP3Machine,
    Refused,
    Session,
    State,
    TLSRequested,
    UpdateRequested,
    stuff_message,
    uidls_for,
)
from twistedmail.sending import send_buffered_now, write_now
from twistedmail.tls import ServerTLS

__all__ = [
    "KEEP_MAILDROPS",
    "KEEP_MESSAGES",
    "LOCK_NAME",
    "SYNC_READ_LIMIT",
    "MaildropLock",
    "POP3ServerFactory",
    "POP3ServerProtocol",
]

#: The lock file in each Maildir that POP3 sessions hold (see
#: L{MaildropLock}).
LOCK_NAME = "twistedmail-pop3.lock"

#: Messages up to this size are read on the reactor thread: from the page
#: cache, reading and formatting 1 MiB takes well under a millisecond,
#: less than a round trip through the thread pool.
SYNC_READ_LIMIT = 1024 * 1024

#: Maildrops whose snapshot the factory keeps after their session ended
#: (see the module docstring).
KEEP_MAILDROPS = 64

#: Messages in all in the snapshots kept (about 300 octets each: a kept
#: maildrop of 100,000 messages holds some 30 MB).
KEEP_MESSAGES = 200_000


_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC

_log = Logger()


class MaildropLock:
    """One POP3 session's hold on a maildrop (RFC 1939 §8: exclusive
    access), across threads and processes.

    It takes ``fcntl.flock`` on L{LOCK_NAME} in the Maildir without
    waiting.  Each lock opens its own file description, so a second
    session in the same process is refused as surely as one in another
    process; the kernel drops the lock when the holder's process dies, so
    there is no stale lock to clean up.  On NFS ``flock`` works between
    hosts only where the kernel maps it to NFS locks and lockd runs (see
    L{twistedmail.maildir.lock}).

    @param maildir: the Maildir's directory (created when missing).
    """

    def __init__(self, maildir: str) -> None:
        self.path = os.path.join(maildir, LOCK_NAME)
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if free (blocking file I/O; run it in a thread).

        @return: False when another session holds it.
        """
        if self._fd is not None:
            raise RuntimeError("lock already held")
        os.makedirs(os.path.dirname(self.path), 0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock up (closing the descriptor drops the flock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def wire_size(info: MessageInfo) -> int:
    """A message's size as POP3 sends it (CRLF line ends).

    Dovecot records that in the name (``,W=``); otherwise the file's size is
    used, which is exact for files with CRLF line ends (ours) and a little
    low for LF files written by other programs.
    """
    return _wire_size(info.base, info.size)


def _wire_size(base: str, size: int) -> int:
    _, found, rest = base.partition(",W=")
    if found:
        digits = rest.partition(",")[0]
        if digits.isascii() and digits.isdigit():
            return int(digits)
    return size


#: Each ``,W=`` field (up to the next field) and each line end.
_W_FIELDS = re.compile(r",W=[^,\n]*|\n")


def wire_sizes(bases: Sequence[str], sizes: Sequence[int]) -> list[int]:
    """L{wire_size} of each message, from its base name and its size.

    When every name has one ``,W=`` field with digits (a Maildir written
    by Dovecot), the figures are taken in a few passes in C over all the
    names; otherwise name by name.
    """
    n = len(bases)
    if n:
        joined = "\n".join(bases)
        fields = _W_FIELDS.findall(joined)
        # One field per name: the line ends are the odd entries exactly.
        if len(fields) == 2 * n - 1 and "\n" not in fields[::2]:
            digits = "\n".join(fields[::2]).replace(",W=", "")
            flat = digits.replace("\n", "")
            if (
                flat.isascii()
                and flat.isdigit()
                and len(flat) + n - 1 == len(digits)
                and "\n\n" not in digits
                and digits[0] != "\n"
                and digits[-1] != "\n"
            ):
                return list(map(int, digits.split("\n")))
    return [_wire_size(b, s) for b, s in zip(bases, sizes, strict=True)]


def make_listing(bases: Sequence[str], sizes: Sequence[int]) -> Listing:
    """The session's listing of messages with these base names and sizes
    (in UID order): each one's L{wire_size} and L{uidl_for} its base
    name."""
    return Listing(wire_sizes(bases, sizes), uidls_for(bases))


@dataclass
class _Snapshot:
    """A maildrop's open INBOX and the listing made of it, kept for the
    next session while its messages stay the same (UIDVALIDITY and UIDs:
    a message's base name and size never change)."""

    mailbox: Mailbox
    uidvalidity: int
    uids: list[int]
    listing: Listing


@dataclass
class _Maildrop:
    """What a logged-in session holds: the lock, the snapshot of the
    INBOX, the maildrop's path and the avatar's logout."""

    lock: MaildropLock
    snapshot: _Snapshot
    path: str
    logout: Callable[[], None]


def _open_maildrop(
    store: MaildirStore, path: str, kept: _Snapshot | None
) -> tuple[MaildropLock, _Snapshot] | None:
    """Lock and open a maildrop and make its listing (in a thread: for a
    big maildrop the listing takes a while too); None when it is in use.

    @param kept: the snapshot an earlier session left; it is brought up to
        date instead of opening the folder anew, and its listing kept when
        the messages are the same.
    """
    lock = MaildropLock(path)
    if not lock.acquire():
        return None
    try:
        if kept is not None:
            try:
                kept.mailbox.refresh()
            except MaildirError:
                # Gone or broken since: open it as if for the first time.
                kept = None
        if kept is not None:
            mailbox = kept.mailbox
            uids = mailbox.uids()
            if kept.uidvalidity == mailbox.uidvalidity and kept.uids == uids:
                return lock, _Snapshot(mailbox, kept.uidvalidity, uids, kept.listing)
        else:
            mailbox = store.open_mailbox(path)
        uids, bases, sizes = mailbox.columns()
        listing = make_listing(bases, sizes)
        return lock, _Snapshot(mailbox, mailbox.uidvalidity, uids, listing)
    except BaseException:
        lock.release()
        raise


def _read_message(mailbox: Mailbox, uid: int) -> bytes:
    """A message's bytes, read from the file the store names with plain
    system calls (open, read, close: about half of what a buffered file
    object makes); through L{Mailbox.read} when the file was renamed since
    the snapshot.

    The first read asks for one octet more than the size the store
    recorded: a regular file returns less only at its end, so one read is
    enough unless the file grew (then the rest is read too).
    """
    info = mailbox.get(uid)
    try:
        fd = os.open(os.path.join(mailbox.path, info.filename), _READ_FLAGS)
    except FileNotFoundError:
        return mailbox.read(uid)
    try:
        want = max(info.size + 1, 8192)
        data = os.read(fd, want)
        if len(data) < want:
            return data
        chunks = [data]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_formatted(
    mailbox: Mailbox, uid: int, lines: int | None
) -> tuple[int, bytes, bytes]:
    """Read a message and byte-stuff it for RETR or TOP (in a thread for
    big messages); see L{stuff_message}."""
    return stuff_message(_read_message(mailbox, uid), lines)


def _peer_ip(peer: IAddress | None) -> str:
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else ""


class POP3ServerFactory(Factory):
    """Makes the protocol for each POP3 (or POP3S) connection.

    @param settings: C{[pop3]} limits and policy, the server's hostname.
    @param reactor: the clock for timeouts (and nothing else: threads go
        through the store's C{run_in_thread}).
    @param portal: from L{twistedmail.auth.realm.make_portal}; must serve
        L{IPOP3Maildrop}.
    @param throttle: the server's login back-off.
    @param store: the Maildir store the maildrops are read from.
    @param tls: offers STLS when given (and C{implicit_tls} is false).
    @param implicit_tls: the connections are TLS from the start (the
        ``pop3s`` role; wrap this factory with
        L{ServerTLS.wrap_implicit}); STLS is not offered then, and logins
        are allowed at once.
    @param keep_maildrops: how many ended sessions' snapshots to keep (see
        the module docstring); 0 keeps none.
    @param keep_messages: how many messages those may hold in all.
    """

    #: The connection log lines say enough; no "Starting factory" lines.
    noisy = False

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorTime,
        *,
        portal: Portal,
        throttle: LoginThrottle,
        store: MaildirStore,
        tls: ServerTLS | None,
        implicit_tls: bool = False,
        keep_maildrops: int = KEEP_MAILDROPS,
        keep_messages: int = KEEP_MESSAGES,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.portal = portal
        self.throttle = throttle
        self.store = store
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.role = "pop3s" if implicit_tls else "pop3"
        pop3 = settings.pop3
        self.config = MachineConfig(
            hostname=settings.server.hostname,
            stls=tls is not None and not implicit_tls,
            plaintext_auth=pop3.allow_plaintext_auth,
            max_errors=pop3.max_errors,
        )
        self.protocols: set[POP3ServerProtocol] = set()
        self._per_ip: dict[str, int] = {}
        self.keep_maildrops = keep_maildrops
        self.keep_messages = keep_messages
        self._kept: OrderedDict[str, _Snapshot] = OrderedDict()

    def buildProtocol(self, addr: IAddress | None) -> POP3ServerProtocol:  # type: ignore[override]
        """A new session's protocol."""
        protocol = POP3ServerProtocol()
        protocol.factory = self
        return protocol

    def _opened(self, protocol: POP3ServerProtocol, ip: str) -> bool:
        """Count a new connection; False when it is over a limit."""
        limits = self.settings.pop3
        count = self._per_ip.get(ip, 0)
        self.protocols.add(protocol)
        self._per_ip[ip] = count + 1
        return (
            len(self.protocols) <= limits.max_connections
            and count < limits.max_connections_per_ip
        )

    def _take_kept(self, path: str) -> _Snapshot | None:
        """The snapshot kept for this maildrop, taken out (one session
        uses it at a time)."""
        return self._kept.pop(path, None)

    def _keep(self, path: str, snapshot: _Snapshot) -> None:
        """Keep an ended session's snapshot, dropping the least recently
        used ones over the limits."""
        kept = self._kept
        kept[path] = snapshot
        kept.move_to_end(path)
        total = sum(len(s.uids) for s in kept.values())
        while kept and (len(kept) > self.keep_maildrops or total > self.keep_messages):
            _, dropped = kept.popitem(last=False)
            total -= len(dropped.uids)

    def _closed(self, protocol: POP3ServerProtocol, ip: str) -> None:
        if protocol in self.protocols:
            self.protocols.discard(protocol)
            count = self._per_ip.get(ip, 1) - 1
            if count > 0:
                self._per_ip[ip] = count
            else:
                self._per_ip.pop(ip, None)


@implementer(IPushProducer)
class POP3ServerProtocol(Protocol):
    """One POP3 session (see the module docstring).

    @ivar machine: the protocol state.
    @ivar session_id: names the connection in every log line.
    """

    factory: POP3ServerFactory
    machine: POP3Machine
    session_id: str = ""

    def __init__(self) -> None:
        self._peer: IAddress | None = None
        self._ip = ""
        self._timer: IDelayedCall | None = None
        self._paused = False
        self._reading_paused = False
        self._gone = False
        self._close_reason = ""
        self._maildrop: _Maildrop | None = None
        self._busy = 0
        self._events: deque[Event] = deque()
        self._running = False
        self._wrote = False
        self._registered = False

    @property
    def _transport(self) -> Any:
        # Any: the transport may be TCP, TLS or startTLS-capable.
        assert self.transport is not None
        return self.transport

    # Connection life.

    def connectionMade(self) -> None:
        """Greet (or refuse when over a limit) and start the login timer."""
        factory = self.factory
        self.session_id = new_session_id()
        self._peer = self._transport.getPeer()
        self._ip = _peer_ip(self._peer)
        log_connection_opened(_log, factory.role, self._peer, self.session_id)
        self.machine = POP3Machine(
            factory.config,
            Session(peer=self._ip, tls_active=factory.implicit_tls),
        )
        if not factory._opened(self, self._ip):
            self._run(self.machine.close(TOO_MANY_CONNECTIONS))
            return
        # Every response is one write; Nagle's algorithm would only hold
        # back the last segment of a message until the client's (delayed)
        # ACK of the ones before.
        set_no_delay = getattr(self._transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._transport.registerProducer(self, True)
        self._registered = True
        self.machine.greet()
        self._flush()
        self._start_timer()

    def dataReceived(self, data: bytes) -> None:
        """Feed the machine; the client is alive, so the timer restarts."""
        if self._gone:
            return
        self._start_timer()
        self._run(self.machine.receive_data(data))
        self._limit_reading()
        self._send_now()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Release everything: timer, counts, maildrop lock (no UPDATE unless
        QUIT got there: RFC 1939 §6)."""
        if self._gone:
            return
        self._gone = True
        self.machine.connection_lost()
        self._stop_timer()
        self.factory._closed(self, self._ip)
        why = self._close_reason or (
            reason.getErrorMessage() if reason is not None else "connection lost"
        )
        log_connection_closed(_log, self.factory.role, self._peer, self.session_id, why)
        self._release_when_idle()

    # IPushProducer: the transport tells us when its buffer is full.

    def pauseProducing(self) -> None:
        """The client is not keeping up: stop sending and stop the clock."""
        self._paused = True
        self.machine.hold()
        self._stop_timer()

    def resumeProducing(self) -> None:
        """The client caught up: go on with pipelined commands."""
        if not self._paused or self._gone:
            return
        self._paused = False
        self._start_timer()
        self._run(self.machine.release())
        self._limit_reading()

    def stopProducing(self) -> None:
        """The connection is going away (connectionLost follows)."""
        self._paused = True

    # Timers.

    def _timeout(self) -> float:
        limits = self.factory.settings.pop3
        if self.machine.state in (State.TRANSACTION, State.UPDATE):
            return limits.idle_timeout
        return limits.login_timeout

    def _start_timer(self) -> None:
        if self._gone or self._paused:
            return
        delay = self._timeout()
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.factory.reactor.callLater(delay, self._timed_out)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        if self.machine.state is State.UPDATE:
            # Deletions are being applied; the answer closes the session.
            return
        self._run(self.machine.close(TIMED_OUT))

    # Events.

    def _run(self, events: Sequence[Event]) -> None:
        """Handle events in order; answers that come at once add more."""
        self._events.extend(events)
        if self._running:
            return
        self._running = True
        try:
            while self._events:
                self._handle(self._events.popleft())
                self._flush()
        finally:
            self._running = False
        self._flush()

    def _flush(self) -> None:
        out = self.machine.data_to_send()
        if not out or self._gone:
            return
        if not write_now(self._transport, out):
            self._wrote = True

    def _send_now(self) -> None:
        """Hand what was written since the last call to the socket now, not
        on the reactor's next turn (L{send_buffered_now})."""
        if not self._wrote:
            return
        self._wrote = False
        send_buffered_now(self._transport)

    def _handle(self, event: Event) -> None:
        if isinstance(event, MessageRequested):
            self._retrieve(event)
        elif isinstance(event, Refused):
            _log.debug(
                "pop3 -ERR: {reason} session={session}",
                reason=event.reason,
                session=self.session_id,
            )
        elif isinstance(event, CloseRequested):
            self._close_reason = event.reason
            self._flush()
            self._stop_timer()
            self._lose_connection()
        elif isinstance(event, TLSRequested):
            self._start_tls()
        elif isinstance(event, LoginRequested):
            self._background(self._login(event))
        elif isinstance(event, UpdateRequested):
            self._background(self._update(event))

    def _lose_connection(self) -> None:
        """Close after what was written is sent.  The producer goes first:
        a TLS transport holds back its close_notify (and so the close)
        while a producer is registered."""
        if self._registered:
            self._registered = False
            self._transport.unregisterProducer()
        self._transport.loseConnection()

    def _start_tls(self) -> None:
        self._flush()
        tls = self.factory.tls
        assert tls is not None
        start_tls = self._transport.startTLS
        start_tls(tls.connection_creator())
        self._run(self.machine.tls_started())

    def _limit_reading(self) -> None:
        """Stop reading from the socket while much input waits unhandled."""
        busy = self.machine.pending or self._paused
        if not self._reading_paused and not (busy and self.machine.buffered > 4096):
            # Nothing to stop or start (after nearly every command).
            return
        pause = getattr(self._transport, "pauseProducing", None)
        resume = getattr(self._transport, "resumeProducing", None)
        if pause is None or resume is None:
            return
        if busy and self.machine.buffered > 4096 and not self._reading_paused:
            self._reading_paused = True
            pause()
        elif self._reading_paused and not busy:
            self._reading_paused = False
            resume()

    def _background(self, coroutine: Any) -> None:
        """Run a coroutine that answers the machine; errors are logged."""
        d = Deferred.fromCoroutine(coroutine)

        def failed(failure: Failure) -> None:
            _log.failure(
                "POP3 session error session={session}",
                failure,
                session=self.session_id,
            )
            if not self._gone:
                self._lose_connection()

        d.addErrback(failed)

    def _answer(self, events: Sequence[Event]) -> None:
        self._run(events)
        self._limit_reading()

    # Login.

    async def _login(self, request: LoginRequested) -> None:
        factory = self.factory
        try:
            _, avatar, logout = await login(
                factory.portal,
                factory.throttle,
                protocol=factory.role,
                client_ip=self._ip,
                username=request.username,
                password=request.password,
                interface=IPOP3Maildrop,
                session_id=self.session_id,
            )
        except UnauthorizedLogin:
            if not self._gone:
                self._answer(self.machine.login_failed(AUTH_FAILED))
            return
        except Exception:
            # login() logged it with its traceback.
            if not self._gone:
                self._answer(self.machine.login_failed(TEMP_FAILURE))
            return
        if self._gone:
            logout()
            return
        path = IPOP3Maildrop(avatar).mailbox_path
        self._busy += 1
        try:
            opened = await factory.store.run_in_thread(
                _open_maildrop, factory.store, path, factory._take_kept(path)
            )
        except Exception:
            _log.failure(
                "cannot open maildrop {path} session={session}",
                path=path,
                session=self.session_id,
            )
            logout()
            if not self._gone:
                self._answer(self.machine.login_failed(TEMP_FAILURE))
            return
        finally:
            self._busy -= 1
        if opened is None:
            logout()
            if not self._gone:
                self._answer(self.machine.login_failed(IN_USE))
            return
        lock, snapshot = opened
        self._maildrop = _Maildrop(lock, snapshot, path, logout)
        if self._gone:
            self._release_when_idle()
            return
        self._answer(self.machine.login_succeeded(snapshot.listing))
        # From now on the (longer) idle timeout applies.
        self._start_timer()

    # RETR and TOP.

    def _retrieve(self, request: MessageRequested) -> None:
        drop = self._maildrop
        assert drop is not None
        snapshot = drop.snapshot
        uid = snapshot.uids[request.index]
        if snapshot.listing.sizes[request.index] <= SYNC_READ_LIMIT:
            try:
                octets, body, end = _read_formatted(
                    snapshot.mailbox, uid, request.lines
                )
            except Exception as e:
                self._run(self._read_failed(e))
                return
            self._run(self.machine.message_read(octets, body, end))
            return
        self._background(self._retrieve_in_thread(request, snapshot.mailbox, uid))

    async def _retrieve_in_thread(
        self, request: MessageRequested, mailbox: Mailbox, uid: int
    ) -> None:
        self._busy += 1
        try:
            octets, body, end = await self.factory.store.run_in_thread(
                _read_formatted, mailbox, uid, request.lines
            )
        except Exception as e:
            if not self._gone:
                self._answer(self._read_failed(e))
            return
        finally:
            self._busy -= 1
            if self._gone:
                self._release_when_idle()
        if not self._gone:
            self._answer(self.machine.message_read(octets, body, end))

    def _read_failed(self, error: Exception) -> list[Event]:
        if isinstance(error, NoSuchMessageError):
            return self.machine.message_failed(MESSAGE_GONE)
        _log.failure(
            "cannot read a message session={session}",
            Failure(error),
            session=self.session_id,
        )
        return self.machine.message_failed(TEMP_FAILURE)

    # UPDATE.

    async def _update(self, request: UpdateRequested) -> None:
        drop = self._maildrop
        assert drop is not None
        uids = [drop.snapshot.uids[i] for i in request.indexes]
        removed = True
        if uids:
            self._busy += 1
            try:
                await self.factory.store.run_in_thread(
                    drop.snapshot.mailbox.expunge, uids
                )
            except Exception:
                _log.failure(
                    "cannot expunge deleted messages session={session}",
                    session=self.session_id,
                )
                removed = False
            finally:
                self._busy -= 1
        # RFC 1939 §6: the maildrop is unlocked before the +OK goes out, so a
        # client that logs in again at once is not refused [IN-USE].
        self._release_when_idle()
        if not self._gone:
            self._answer(self.machine.update_done(removed))

    # Letting go of the maildrop.

    def _release_when_idle(self) -> None:
        """Unlock and close the maildrop once no thread uses it, and give
        its snapshot to the factory to keep."""
        drop = self._maildrop
        if drop is None or self._busy:
            return
        self._maildrop = None
        try:
            drop.snapshot.mailbox.close()
        except Exception:
            _log.failure(
                "closing the maildrop failed session={session}", session=self.session_id
            )
        else:
            self.factory._keep(drop.path, drop.snapshot)
        drop.lock.release()
        drop.logout()
