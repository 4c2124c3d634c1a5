# -*- test-case-name: tests.test_imap_server -*-
"""The IMAP4rev1 server's Twisted adapter (the last step of the flow: the
Maildir store to the user's mail client over IMAP with STARTTLS, or IMAPS).

L{IMAPServerFactory} makes one L{IMAPServerProtocol} per connection.  The
protocol feeds the client's octets to the sans-I/O L{CommandParser} and
answers each command event; blocking store work (opening folders, reading
messages, flag renames, fsyncs) runs through the store's C{run_in_thread}.

States (RFC 3501 §3), and the commands each allows (others get ``BAD``)::

    NOT_AUTHENTICATED  CAPABILITY NOOP LOGOUT ID STARTTLS AUTHENTICATE LOGIN
    AUTHENTICATED      CAPABILITY NOOP LOGOUT ID SELECT EXAMINE CREATE DELETE
                       RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB STATUS APPEND
                       ENABLE IDLE NAMESPACE GETQUOTA GETQUOTAROOT
    SELECTED           all of AUTHENTICATED but ENABLE, plus CHECK CLOSE
                       UNSELECT EXPUNGE SEARCH FETCH STORE COPY MOVE
    LOGOUT             none (the connection closes)

Commands run one at a time, in order; input that arrives meanwhile is parsed
and queued (reading from the socket stops while many commands wait).

Many sessions on one mailbox (RFC 3501 §7, §5.2): each session holds a
L{MailboxView}.  The store tells every session of each change made through
it (delivery, other IMAP sessions, POP3), and its watcher (inotify, or a
directory poll) of changes made by other programs; only when the store has
no watcher does a session look at the disk itself every C{[imap]
check_interval} seconds.  NOOP and CHECK always look.
Changes are told just before a command's tagged response, and at once
during IDLE; ``EXPUNGE`` is held back during FETCH, STORE and SEARCH.

Timeouts on the injected clock: C{login_timeout} from the connection's
start until login (input does not restart it), C{idle_timeout} of silence
after (RFC 3501 §5.4); IDLE sends ``* OK Still here`` every
C{idle_keepalive} seconds.  Mod-sequences (CONDSTORE, QRESYNC) live in
L{twistedmail.imap._modseq}.
"""

from __future__ import annotations

import bisect
import datetime
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from enum import Enum
from typing import Any, TypeVar

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedmail.auth.throttle import LoginThrottle, login
from twistedmail.config import Settings
from twistedmail.imap._format import (
    format_date_time,
    format_flags,
    format_list,
    format_mailbox,
    format_status,
)
from twistedmail.imap._listing import SPECIAL_USE, ListEntry, list_entries, lsub_entries
from twistedmail.imap._mailbox_view import (
    LETTER_FLAGS,
    METADATA_ITEMS,
    MailboxView,
    MetadataLines,
    UIDValidityChanged,
    imap_flags,
    ranges_to_set,
    split_flags,
)
from twistedmail.imap._message import (
    BatchedHeaders,
    Structure,
    cached_structure,
    fetch_section,
    indexed_matches,
    rfc822_text,
)
from twistedmail.imap._modseq import ModSeqIndex
from twistedmail.imap._mutf7 import MailboxNameError
from twistedmail.imap._parser import CommandParser
from twistedmail.imap._search import (
    SUPPORTED_CHARSETS,
    evaluate_search,
    format_esearch,
    format_search,
    highest_modseq,
    search_cost,
    uses_internal_date,
    uses_modseq,
)
from twistedmail.imap._sequence import SequenceSet
from twistedmail.imap._types import (
    Append,
    Authenticate,
    AuthenticateCancelled,
    AuthenticateResponse,
    BadCommand,
    BodySection,
    Capability,
    Check,
    Close,
    Command,
    ContinuationNeeded,
    Copy,
    Create,
    Delete,
    Enable,
    Event,
    Examine,
    Expunge,
    Fetch,
    FetchItem,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    IdleDone,
    LineTooLong,
    List,
    LiteralTooLarge,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Rename,
    Search,
    Select,
    StartTLS,
    Status,
    StatusItem,
    Store,
    StoreMode,
    Subscribe,
    Unselect,
    Unsubscribe,
)
from twistedmail.interfaces import IIMAPAccount
from twistedmail.logs import (
    log_connection_closed,
    log_connection_opened,
    new_session_id,
)
from twistedmail.maildir import (
    FolderExistsError,
    FolderNameError,
    KeywordError,
    Mailbox,
    MaildirError,
    MaildirStore,
    MessageInfo,
    NoSuchFolderError,
    NoSuchMessageError,
    dates_unknown,
)
from twistedmail.maildir.delivery import ensure_maildir
from twistedmail.tls import ServerTLS

__all__ = [
    "FIRST_LOGIN_MARKER",
    "PRE_AUTH_MAX_LITERAL",
    "IMAPServerFactory",
    "IMAPServerProtocol",
    "State",
]

#: Written into a Maildir once its special-use folders were made, so that a
#: user who deletes one does not get it back at the next login.
FIRST_LOGIN_MARKER = "twistedmail-imap-folders"

#: Queued commands past which the protocol stops reading from the socket.
_MAX_QUEUED = 32
# A FETCH of more messages than this builds its responses in a thread even
# when it reads nothing (100,000 lines keep the reactor thread for a tenth
# of a second or more).
_INLINE_FETCH = 1000

#: The literal octets one command may carry before login (a LOGIN with
#: literal strings fits): an unauthenticated client cannot make the server
#: hold a message-sized literal.
PRE_AUTH_MAX_LITERAL = 8192

_BASE_CAPABILITIES = (
    "IMAP4rev1",
    "LITERAL+",
    "SASL-IR",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UIDPLUS",
    "MOVE",
    "UNSELECT",
    "CHILDREN",
    "SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "ESEARCH",
    "CONDSTORE",
    "QRESYNC",
)

_log = Logger()
_T = TypeVar("_T")


class State(Enum):
    """The session states of RFC 3501 §3."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_PRE = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SEL = frozenset({State.SELECTED})
_ONLY_AUTH = frozenset({State.AUTHENTICATED})

#: Which states allow each command (the state table the docs render).
COMMAND_STATES: dict[type[Command], frozenset[State]] = {
    Capability: _ANY,
    Noop: _ANY,
    Logout: _ANY,
    Id: _ANY,
    StartTLS: _PRE,
    Authenticate: _PRE,
    Login: _PRE,
    Select: _AUTH,
    Examine: _AUTH,
    Create: _AUTH,
    Delete: _AUTH,
    Rename: _AUTH,
    Subscribe: _AUTH,
    Unsubscribe: _AUTH,
    List: _AUTH,
    Lsub: _AUTH,
    Status: _AUTH,
    Append: _AUTH,
    Enable: _ONLY_AUTH,
    Idle: _AUTH,
    Namespace: _AUTH,
    GetQuota: _AUTH,
    GetQuotaRoot: _AUTH,
    Check: _SEL,
    Close: _SEL,
    Unselect: _SEL,
    Expunge: _SEL,
    Search: _SEL,
    Fetch: _SEL,
    Store: _SEL,
    Copy: _SEL,
    Move: _SEL,
}


def _peer_ip(peer: IAddress | None) -> str:
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else ""


def _canonical(name: str) -> str:
    return "INBOX" if name.upper() == "INBOX" else name


def _ok(tag: str, text: str, code: bytes | str | None = None) -> bytes:
    return format_status(tag, "OK", text, code)


def _no(tag: str, text: str, code: bytes | str | None = None) -> bytes:
    return format_status(tag, "NO", text, code)


def _bad(tag: str | None, text: str, code: bytes | str | None = None) -> bytes:
    return format_status(tag, "BAD", text, code)


def _store_refusal(tag: str, error: Exception) -> bytes:
    """The ``NO`` for a store error; the text never names a path."""
    text = str(error) or "refused"
    if isinstance(error, NoSuchFolderError):
        return _no(tag, text, "NONEXISTENT")
    if isinstance(error, FolderExistsError):
        return _no(tag, text, "ALREADYEXISTS")
    if isinstance(error, FolderNameError):
        return _no(tag, text, "CANNOT")
    if isinstance(error, KeywordError):
        return _no(tag, text, "LIMIT")
    return _no(tag, text)


def _vanished(spans: Sequence[tuple[int, int]], uids: Sequence[int], top: int) -> bytes:
    """The UIDs in C{spans}, up to C{top}, that are not in C{uids}, as a
    sequence set (empty when none): VANISHED (EARLIER) from what is there
    now, since we keep no expunge history (RFC 7162 §3.2.5.1 allows that).

    @param uids: the UIDs present, ascending.
    @param top: the highest UID the folder ever gave (UIDNEXT - 1): an
        expunged last message is still reported.
    """
    out: list[bytes] = []
    for low, high in spans:
        high = min(high, top)
        if low > high:
            continue
        i = bisect.bisect_left(uids, low)
        start = low
        while i < len(uids) and uids[i] <= high:
            if uids[i] > start:
                out.append(_span(start, uids[i] - 1))
            start = uids[i] + 1
            i += 1
        if start <= high:
            out.append(_span(start, high))
    return b",".join(out)


def _span(low: int, high: int) -> bytes:
    return b"%d" % low if low == high else b"%d:%d" % (low, high)


def prepare_account(store: MaildirStore, path: str) -> None:
    """Make the INBOX, and on first login the special-use folders
    (RFC 6154), subscribed (blocking).  The INBOX is not opened: reading
    a big folder's UID list here would be thrown away before SELECT."""
    ensure_maildir(path)
    marker = os.path.join(path, FIRST_LOGIN_MARKER)
    if os.path.exists(marker):
        return
    existing = set(store.list_folders(path))
    store.create_folders(path, [n for n in SPECIAL_USE if n not in existing])
    store.set_subscribed_many(path, [*SPECIAL_USE, "INBOX"], True)
    with open(marker, "wb"):
        pass


def _open_view(
    store: MaildirStore, path: str, name: str, read_only: bool
) -> MailboxView:
    mailbox = store.open_mailbox(path, name)
    view = MailboxView(mailbox, read_only)
    try:
        view.open()
    except BaseException:
        view.close()
        raise
    return view


def _made_infos(view: MailboxView) -> None:
    """Make a view's messages (blocking; see L{MailboxView.infos})."""
    view.infos  # noqa: B018 (made now, in this thread)


def _status(
    store: MaildirStore, path: str, name: str, items: Iterable[StatusItem]
) -> dict[StatusItem, int]:
    mailbox = store.open_mailbox(path, name)
    try:
        infos = mailbox.messages()
        values: dict[StatusItem, int] = {}
        for item in items:
            if item is StatusItem.MESSAGES:
                values[item] = len(infos)
            elif item is StatusItem.RECENT:
                values[item] = sum(1 for i in infos if i.recent)
            elif item is StatusItem.UIDNEXT:
                values[item] = mailbox.next_uid
            elif item is StatusItem.UIDVALIDITY:
                values[item] = mailbox.uidvalidity
            elif item is StatusItem.UNSEEN:
                values[item] = sum(1 for i in infos if "S" not in i.flags)
            elif item is StatusItem.SIZE:
                values[item] = sum(i.size for i in infos)
            elif item is StatusItem.DELETED:
                values[item] = sum(1 for i in infos if "T" in i.flags)
            elif item is StatusItem.HIGHESTMODSEQ:
                index = ModSeqIndex(mailbox.path)
                try:
                    values[item] = index.sync(mailbox.uidvalidity, infos)
                finally:
                    index.close()
        return values
    finally:
        mailbox.close()


def _check_folder(store: MaildirStore, path: str, name: str) -> None:
    """That a folder name is allowed and the folder exists (blocking).

    @raise FolderNameError: for a name that is not allowed.
    @raise NoSuchFolderError: when it does not exist.
    """
    directory = store.folder_path(path, name)
    if not os.path.isdir(os.path.join(directory, "cur")):
        raise NoSuchFolderError("No such mailbox")


def _list_folders(store: MaildirStore, path: str) -> tuple[list[str], list[str]]:
    return store.list_folders(path), store.subscriptions(path)


def _append(
    store: MaildirStore,
    path: str,
    name: str,
    message: bytes,
    letters: frozenset[str],
    keywords: frozenset[str],
    when: float | None,
    quota: int | None,
) -> tuple[int, int] | None:
    """APPEND in a thread: (UIDVALIDITY, UID), or None when over quota."""
    if quota is not None and store.mailbox_size(path) + len(message) > quota:
        return None
    mailbox = store.open_mailbox(path, name)
    try:
        # \Recent for the next session to look (RFC 3501 §6.3.11).
        uid = mailbox.add(message, letters, keywords, when, recent=True)
        return mailbox.uidvalidity, uid
    finally:
        mailbox.close()


def _empty_inbox(store: MaildirStore, path: str, name: str) -> None:
    """RENAME INBOX in a thread, once the new folder exists (RFC 3501
    §6.3.5): every message moves into it in UID order, with its flags,
    keywords and internal date; the INBOX stays, empty, its UIDs growing.

    A copy then an expunge rather than file renames: keyword letters in
    Maildir names mean what each folder's keyword table says, and a crash
    between the two steps leaves the mail in both folders, never in none.
    """
    inbox = store.open_mailbox(path)
    try:
        target = store.open_mailbox(path, name)
        try:
            mapping = inbox.copy([info.uid for info in inbox.messages()], target)
        finally:
            target.close()
        if mapping:
            inbox.expunge(list(mapping))
    finally:
        inbox.close()


def _copy(
    store: MaildirStore,
    view: MailboxView,
    uids: list[int],
    path: str,
    name: str,
    quota: int | None,
    move: bool,
) -> tuple[int, dict[int, int]] | None:
    """COPY or MOVE in a thread: (target UIDVALIDITY, old UID to new UID),
    or None when over quota."""
    if quota is not None:
        size = sum(view.infos[u].size for u in uids if u in view.infos)
        if store.mailbox_size(path) + size > quota:
            return None
    target = store.open_mailbox(path, name)
    try:
        # The copies are \Recent for one session (RFC 3501 §6.4.7).
        mapping = view.mailbox.copy(uids, target, recent=True)
        validity = target.uidvalidity
    finally:
        target.close()
    if move and mapping:
        view.mailbox.expunge(list(mapping))
    return validity, mapping


class IMAPServerFactory(Factory):
    """Makes the protocol for each IMAP (or IMAPS) connection.

    @param settings: C{[imap]} limits and policy, the server's hostname.
    @param reactor: the clock for timeouts; its C{callFromThread} (when it
        has one) carries store notifications made in threads.
    @param portal: must serve L{IIMAPAccount}.
    @param throttle: the server's login back-off.
    @param store: the Maildir store.
    @param tls: offers STARTTLS when given (and C{implicit_tls} is false).
    @param implicit_tls: connections are TLS from the start (the ``imaps``
        role; wrap this factory with L{ServerTLS.wrap_implicit}).
    """

    # The protocol logs one line per connection; no start/stop lines.
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
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.portal = portal
        self.throttle = throttle
        self.store = store
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.role = "imaps" if implicit_tls else "imap"
        self.protocols: set[IMAPServerProtocol] = set()
        self._per_ip: dict[str, int] = {}

    def buildProtocol(self, addr: IAddress | None) -> IMAPServerProtocol:  # type: ignore[override]
        """A new session's protocol."""
        protocol = IMAPServerProtocol()
        protocol.factory = self
        return protocol

    def call_from_thread(self, f: Callable[[], None]) -> None:
        """Run C{f} on the reactor thread (at once when there is no
        C{callFromThread}, as with a test clock)."""
        call = getattr(self.reactor, "callFromThread", None)
        if call is None:
            f()
        else:
            call(f)

    def _opened(self, protocol: IMAPServerProtocol, ip: str) -> bool:
        limits = self.settings.imap
        count = self._per_ip.get(ip, 0)
        self.protocols.add(protocol)
        self._per_ip[ip] = count + 1
        return (
            len(self.protocols) <= limits.max_connections
            and count < limits.max_connections_per_ip
        )

    def _closed(self, protocol: IMAPServerProtocol, ip: str) -> None:
        if protocol in self.protocols:
            self.protocols.discard(protocol)
            count = self._per_ip.get(ip, 1) - 1
            if count > 0:
                self._per_ip[ip] = count
            else:
                self._per_ip.pop(ip, None)


class IMAPServerProtocol(Protocol):
    """One IMAP session (see the module docstring).

    @ivar state: the RFC 3501 state.
    @ivar session_id: names the connection in every log line.
    @ivar fetch_part: messages per part of a large FETCH of metadata only,
        made in a thread and sent part by part (L{MetadataLines}).
    """

    factory: IMAPServerFactory
    session_id: str = ""
    fetch_part: int = 5000

    def __init__(self) -> None:
        self.state = State.NOT_AUTHENTICATED
        self.tls_active = False
        self._parser: CommandParser | None = None
        self._queue: deque[Event] = deque()
        self._busy = False
        self._pumping = False
        self._gone = False
        self._closing = False
        self._threads = 0
        self._timer: IDelayedCall | None = None
        self._peer: IAddress | None = None
        self._ip = ""
        self._close_reason = ""
        self._errors = 0
        self._reading_paused = False
        # Octets received while earlier commands were waiting or running.
        self._backlog = 0
        # After login.
        self._path = ""
        self._quota: int | None = None
        self._logout: Callable[[], None] | None = None
        self._enabled: set[str] = set()
        # The selected mailbox.
        self._view: MailboxView | None = None
        self._selected_name = ""
        self._unsubscribe: Callable[[], None] | None = None
        self._dirty = False
        self._last_poll = 0.0
        # IDLE.
        self._idle_tag: str | None = None
        self._idle_timers: list[IDelayedCall] = []
        self._pending_close: MailboxView | None = None

    # --- connection life --------------------------------------------------------

    @property
    def _transport(self) -> Any:
        # Any: the transport may be TCP, TLS or startTLS-capable.
        assert self.transport is not None
        return self.transport

    @property
    def _condstore(self) -> bool:
        return "CONDSTORE" in self._enabled

    @property
    def _qresync(self) -> bool:
        return "QRESYNC" in self._enabled

    def connectionMade(self) -> None:
        """Greet (or refuse when over a limit) and start the login timer."""
        factory = self.factory
        limits = factory.settings.imap
        self.session_id = new_session_id()
        self._peer = self._transport.getPeer()
        self._ip = _peer_ip(self._peer)
        self.tls_active = factory.implicit_tls
        self._parser = CommandParser(
            max_line=limits.max_line,
            max_literal=min(limits.max_literal, PRE_AUTH_MAX_LITERAL),
        )
        log_connection_opened(_log, factory.role, self._peer, self.session_id)
        # A response often goes out in two writes (untagged lines, then the
        # tagged one after work in a thread); with Nagle's algorithm the
        # second waits for the client's delayed ACK of the first (40 ms).
        set_no_delay = getattr(self._transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        if not factory._opened(self, self._ip):
            self._bye("Too many connections, try again later", "too many connections")
            return
        caps = " ".join(self._capabilities())
        self._send(
            format_status(
                None, "OK", "twistedmail IMAP4rev1 ready", "CAPABILITY " + caps
            )
        )
        self._start_timer()

    def dataReceived(self, data: bytes) -> None:
        """Parse and queue the commands; the client is alive, so the timer
        restarts."""
        if self._gone or self._closing or self._parser is None:
            return
        self._start_timer()
        waiting = bool(self._queue) or self._busy
        self._queue.extend(self._parser.receive_data(data))
        if waiting:
            self._backlog += len(data)
        self._pump()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Release the timers, the counts, the selected mailbox and the
        avatar."""
        if self._gone:
            return
        self._gone = True
        self._stop_timer()
        self._stop_idle_timers()
        self.factory._closed(self, self._ip)
        why = self._close_reason or (
            reason.getErrorMessage() if reason is not None else "connection lost"
        )
        log_connection_closed(_log, self.factory.role, self._peer, self.session_id, why)
        self._queue.clear()
        self._deselect()
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    # --- output --------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if data and not self._gone:
            self._transport.write(data)

    def _send_lines(self, lines: Sequence[bytes]) -> None:
        if lines:
            self._send(b"".join(lines))

    def _bye(self, text: str, reason: str) -> None:
        """Say BYE and close the connection."""
        self._send(format_status(None, "BYE", text))
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        self.state = State.LOGOUT
        self._stop_timer()
        self._stop_idle_timers()
        self._queue.clear()
        if not self._gone:
            self._transport.loseConnection()

    # --- timers --------------------------------------------------------------

    def _start_timer(self) -> None:
        """(Re)start the autologout timer: C{idle_timeout} of silence once
        logged in (RFC 3501 §5.4); before login C{login_timeout} from the
        connection's start, which input does not restart, so a client
        that trickles octets cannot hold a connection without logging in."""
        if self._gone or self._closing:
            return
        limits = self.factory.settings.imap
        active = self._timer is not None and self._timer.active()
        if self.state is State.NOT_AUTHENTICATED:
            if active:
                return
            delay = limits.login_timeout
        else:
            delay = limits.idle_timeout
        if self._timer is not None and active:
            self._timer.reset(delay)
        else:
            self._timer = self.factory.reactor.callLater(delay, self._timed_out)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        if self.state is State.NOT_AUTHENTICATED:
            self._bye("Autologout; no login in time", "login timeout")
        else:
            self._bye("Autologout; idle for too long", "idle timeout")

    # --- the command queue ---------------------------------------------------

    def _pump(self) -> None:
        """Handle queued events in order, one command at a time."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while (
                self._queue and not self._busy and not self._gone and not self._closing
            ):
                self._run(self._handle(self._queue.popleft()))
            if not self._busy and self._idle_tag is not None and self._dirty:
                self._run(self._idle_update())
        finally:
            self._pumping = False
        self._limit_reading()

    def _run(self, work: Awaitable[None]) -> None:
        """Run one piece of session work; nothing else runs until it ends."""
        self._busy = True

        async def wrapped() -> None:
            await work

        d = Deferred.fromCoroutine(wrapped())
        d.addErrback(self._failed)
        d.addBoth(self._finished)

    def _failed(self, failure: Failure) -> None:
        _log.failure(
            "IMAP session error session={session}", failure, session=self.session_id
        )
        self._bye(f"Internal error (session {self.session_id})", "internal error")

    def _finished(self, _: object) -> None:
        self._busy = False
        if not self._pumping:
            self._pump()

    def _limit_reading(self) -> None:
        """Stop reading from the socket while many commands wait, or while
        the waiting ones came with more octets than one command may carry
        (pipelined LITERAL+ APPENDs would otherwise each hold a message):
        memory per session stays near one command's limits."""
        if self._gone:
            return
        if not self._queue:
            self._backlog = 0
        pause = getattr(self._transport, "pauseProducing", None)
        resume = getattr(self._transport, "resumeProducing", None)
        if pause is None or resume is None:
            return
        parser = self._parser
        most = parser.max_line + parser.max_literal if parser is not None else 0
        if (
            len(self._queue) > _MAX_QUEUED or (self._queue and self._backlog > most)
        ) and not self._reading_paused:
            self._reading_paused = True
            pause()
        elif self._reading_paused and not self._queue:
            self._reading_paused = False
            resume()

    async def _in_thread(self, f: Callable[..., _T], *args: object) -> _T:
        """Run blocking store work off the reactor thread."""
        self._threads += 1
        try:
            return await self.factory.store.run_in_thread(f, *args)
        finally:
            self._threads -= 1
            if self._gone:
                self._deselect()

    # --- events ----------------------------------------------------------------

    async def _handle(self, event: Event) -> None:
        tag = getattr(event, "tag", None)
        if isinstance(event, ContinuationNeeded):
            self._send(b"+ Ready for literal\r\n")
        elif isinstance(event, LineTooLong):
            self._refuse(tag, "Command line too long", "TOOBIG")
        elif isinstance(event, LiteralTooLarge):
            self._too_large(event)
        elif isinstance(event, BadCommand):
            self._refuse(tag, event.reason)
        elif isinstance(event, AuthenticateResponse):
            await self._sasl_plain(event.tag, event.data)
        elif isinstance(event, AuthenticateCancelled):
            self._refuse(event.tag, "Authentication cancelled")
        elif isinstance(event, IdleDone):
            await self._idle_done(event.tag)
        elif isinstance(event, Command):
            await self._command(event)

    def _too_large(self, event: LiteralTooLarge) -> None:
        """A literal over the limit: ``NO [TOOBIG]`` for a synchronising one
        (the client sent nothing more of it; RFC 7889), ``BAD [TOOBIG]``
        for a non-synchronising one (its octets are skipped; RFC 7888 §4),
        then BYE when it is too large even to skip."""
        text = f"Literal of {event.size} octets is too large"
        if event.synchronising and event.tag is not None:
            self._send(_no(event.tag, text, "TOOBIG"))
            return
        self._refuse(event.tag, text, "TOOBIG")
        if event.closing and not self._closing:
            self._bye("Literal too large to skip", "literal too large")

    def _refuse(self, tag: str | None, text: str, code: str | None = None) -> None:
        """A BAD; too many in a row end the session."""
        if self._idle_tag is not None and tag == self._idle_tag:
            self._end_idle()
        self._send(_bad(tag, text, code))
        self._errors += 1
        if self._errors >= self.factory.settings.imap.max_errors:
            self._bye("Too many errors", "too many errors")

    async def _command(self, command: Command) -> None:
        states = COMMAND_STATES.get(type(command), frozenset())
        if self.state not in states:
            self._refuse(
                command.tag,
                f"{command.name} is not allowed in the {self.state.value} state",
            )
            if isinstance(command, (StartTLS, Authenticate, Idle)):
                self._resume_parser()
            return
        handler: Callable[[Any], Awaitable[bytes | None]] = getattr(
            self, "_do_" + type(command).__name__.lower()
        )
        try:
            tagged = await handler(command)
        except Exception:
            _log.failure(
                "IMAP {command} failed session={session}",
                command=command.name,
                session=self.session_id,
            )
            tagged = _no(
                command.tag, f"Internal error (session {self.session_id})", "SERVERBUG"
            )
            self._resume_parser()
        if tagged is None or self._gone or self._closing:
            return
        if self.state is State.SELECTED:
            await self._update(allow_expunge=not self._holds_expunges(command))
        if tagged.split(b" ", 2)[1:2] == [b"BAD"]:
            self._errors += 1
        else:
            self._errors = 0
        self._send(tagged)

    @staticmethod
    def _holds_expunges(command: Command) -> bool:
        # RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE or SEARCH (the
        # UID forms may have them; we hold them there too, for simplicity).
        return isinstance(command, (Fetch, Store, Search))

    def _resume_parser(self) -> None:
        parser = self._parser
        if parser is not None and parser.paused:
            self._queue.extend(parser.resume())

    # --- changes from other sessions --------------------------------------------

    def _changed_elsewhere(self) -> None:
        """A store notification (from any thread)."""
        self.factory.call_from_thread(self._mark_dirty)

    def _mark_dirty(self) -> None:
        if self._gone:
            return
        self._dirty = True
        if self._idle_tag is not None and not self._busy:
            # Let the notifying code finish first.
            self.factory.reactor.callLater(0, self._pump)

    @property
    def _polling(self) -> bool:
        """Whether the session looks at the disk every C{check_interval}
        itself: only when the store has no watcher (C{[maildir] watch =
        "off"}); otherwise the watcher's notifications (inotify, or its
        own directory poll) tell of changes made by other programs."""
        return self.factory.store.watcher is None

    async def _update(self, allow_expunge: bool, force: bool = False) -> None:
        """Tell the client what changed in the selected mailbox: at once
        when the store said it changed (or C{force}: NOOP, CHECK), else
        only when the session polls and C{check_interval} has passed."""
        view = self._view
        if view is None:
            return
        now = self.factory.reactor.seconds()
        due = (
            self._polling
            and now - self._last_poll >= self.factory.settings.imap.check_interval
        )
        if force or self._dirty or due:
            self._dirty = False
            self._last_poll = now
            try:
                snap = await self._in_thread(view.poll)
            except NoSuchFolderError:
                self._bye("The selected mailbox was deleted or renamed", "mailbox gone")
                return
            if self._view is not view or self._gone:
                return
            try:
                lines = view.apply(
                    snap,
                    allow_expunge=allow_expunge,
                    condstore=self._condstore,
                    qresync=self._qresync,
                )
            except UIDValidityChanged:
                self._bye("UIDVALIDITY of the selected mailbox changed", "uidvalidity")
                return
            self._send_lines(lines)
        elif allow_expunge and view.gone:
            self._send_lines(view.expunge_now(self._qresync))

    # --- capabilities, any state ---------------------------------------------

    def _auth_allowed(self) -> bool:
        return self.tls_active or self.factory.settings.imap.allow_plaintext_auth

    def _capabilities(self) -> list[str]:
        caps = list(_BASE_CAPABILITIES)
        caps.append(f"APPENDLIMIT={self.factory.settings.imap.max_literal}")
        if self.state is State.NOT_AUTHENTICATED:
            if not self.tls_active and self.factory.tls is not None:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self._auth_allowed() else "LOGINDISABLED")
        elif self._quota is not None:
            caps += ["QUOTA", "QUOTA=RES-STORAGE"]
        return caps

    async def _do_capability(self, command: Capability) -> bytes:
        self._send(b"* CAPABILITY " + " ".join(self._capabilities()).encode() + b"\r\n")
        return _ok(command.tag, "CAPABILITY completed")

    async def _do_noop(self, command: Noop) -> bytes:
        if self.state is State.SELECTED:
            await self._update(allow_expunge=True, force=True)
        return _ok(command.tag, "NOOP completed")

    async def _do_logout(self, command: Logout) -> None:
        self._send(format_status(None, "BYE", "Logging out"))
        self._send(_ok(command.tag, "LOGOUT completed"))
        self._close("LOGOUT")

    async def _do_id(self, command: Id) -> bytes:
        self._send(b'* ID ("name" "twistedmail")\r\n')
        return _ok(command.tag, "ID completed")

    # --- not authenticated -------------------------------------------------------

    async def _do_starttls(self, command: StartTLS) -> None:
        tls = self.factory.tls
        if self.tls_active or tls is None:
            self._resume_parser()
            self._refuse(command.tag, "TLS is not available here")
            return
        self._send(_ok(command.tag, "Begin TLS negotiation now"))
        self._transport.startTLS(tls.connection_creator())
        self.tls_active = True
        assert self._parser is not None
        # Commands sent before the handshake must not run (RFC 3501 §6.2.1).
        self._queue.extend(self._parser.resume(discard=True))

    async def _do_login(self, command: Login) -> bytes | None:
        if not self._auth_allowed():
            return _no(command.tag, "Use STARTTLS first", "PRIVACYREQUIRED")
        return await self._login(command.tag, command.username, command.password)

    async def _do_authenticate(self, command: Authenticate) -> bytes | None:
        if command.mechanism != "PLAIN":
            self._resume_parser()
            return _no(command.tag, "Unsupported authentication mechanism", "CANNOT")
        if not self._auth_allowed():
            self._resume_parser()
            return _no(command.tag, "Use STARTTLS first", "PRIVACYREQUIRED")
        if command.initial_response is None:
            self._send(b"+ \r\n")
            assert self._parser is not None
            self._queue.extend(self._parser.expect_sasl_response())
            return None
        await self._sasl_plain(command.tag, command.initial_response)
        return None

    async def _sasl_plain(self, tag: str, data: bytes) -> None:
        """Check a SASL PLAIN response (RFC 4616) and answer it."""
        parts = data.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            self._resume_parser()
            self._refuse(tag, "Malformed PLAIN response")
            return None
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            self._resume_parser()
            self._send(
                _no(tag, "Authorization identity refused", "AUTHORIZATIONFAILED")
            )
            return None
        try:
            username = authcid.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            self._resume_parser()
            self._refuse(tag, "PLAIN response is not UTF-8")
            return None
        answer = await self._login(tag, username, secret)
        self._resume_parser()
        if answer is not None:
            self._send(answer)
        return None

    async def _login(self, tag: str, username: str, password: str) -> bytes | None:
        factory = self.factory
        try:
            _, avatar, logout = await login(
                factory.portal,
                factory.throttle,
                protocol=factory.role,
                client_ip=self._ip,
                username=username,
                password=password,
                interface=IIMAPAccount,
                session_id=self.session_id,
            )
        except UnauthorizedLogin:
            return _no(tag, "Invalid credentials", "AUTHENTICATIONFAILED")
        except Exception:
            return _no(tag, "Temporary failure, try again later", "UNAVAILABLE")
        if self._gone:
            logout()
            return None
        account = IIMAPAccount(avatar)
        try:
            await self._in_thread(prepare_account, factory.store, account.mailbox_path)
        except Exception:
            _log.failure(
                "cannot prepare the mailbox of {user} session={session}",
                user=username,
                session=self.session_id,
            )
            logout()
            return _no(tag, "Mailbox not available, try again later", "UNAVAILABLE")
        if self._gone:
            logout()
            return None
        self._path = account.mailbox_path
        self._quota = getattr(account.user, "quota", None)
        self._logout = logout
        self.state = State.AUTHENTICATED
        if self._parser is not None:
            self._parser.max_literal = factory.settings.imap.max_literal
        self._start_timer()
        caps = " ".join(self._capabilities())
        return _ok(tag, "Logged in", "CAPABILITY " + caps)

    # --- authenticated ---------------------------------------------------------

    async def _do_enable(self, command: Enable) -> bytes:
        enabled = []
        for cap in command.capabilities:
            if cap in ("CONDSTORE", "QRESYNC") and cap not in self._enabled:
                self._enabled.add(cap)
                enabled.append(cap)
                if cap == "QRESYNC" and "CONDSTORE" not in self._enabled:
                    self._enabled.add("CONDSTORE")
        self._send(
            b"* ENABLED" + b"".join(b" " + c.encode() for c in enabled) + b"\r\n"
        )
        return _ok(command.tag, "ENABLE completed")

    async def _do_namespace(self, command: Namespace) -> bytes:
        self._send(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
        return _ok(command.tag, "NAMESPACE completed")

    def _deselect(self) -> None:
        """Forget the selected mailbox (closing it once no thread uses it)."""
        if self._unsubscribe is not None:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            unsubscribe()
        view, self._view = self._view, None
        self._selected_name = ""
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED
        if view is not None:
            if self._threads:
                self._pending_close = view
            else:
                self._close_view(view)
        elif self._threads == 0:
            pending = self._pending_close
            if pending is not None:
                self._pending_close = None
                self._close_view(pending)

    def _close_view(self, view: MailboxView) -> None:
        try:
            view.close()
        except Exception:
            _log.failure(
                "closing a mailbox failed session={session}", session=self.session_id
            )

    async def _do_select(self, command: Select | Examine) -> bytes:
        qresync = command.qresync
        if qresync is not None and not self._qresync:
            return _bad(command.tag, "QRESYNC must be enabled first")
        was_selected = self._view is not None
        self._deselect()
        if was_selected:
            self._send(format_status(None, "OK", "Previous mailbox closed", "CLOSED"))
        if command.condstore:
            self._enabled.add("CONDSTORE")
        name = _canonical(command.mailbox)
        try:
            view = await self._in_thread(
                _open_view, self.factory.store, self._path, name, command.read_only
            )
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        if self._gone:
            self._close_view(view)
            return _ok(command.tag, "gone")
        self._view = view
        self._selected_name = name
        self.state = State.SELECTED
        self._dirty = False
        self._last_poll = self.factory.reactor.seconds()
        self._unsubscribe = self.factory.store.subscribe(
            self._path, name, self._changed_elsewhere
        )
        mailbox = view.mailbox
        if mailbox.changed_on_disk():
            # Changed between the snapshot and the subscription: no notice
            # will come for that, so the next command looks.
            self._dirty = True
        keywords = mailbox.keywords()
        system = [LETTER_FLAGS[c] for c in "RFTSD"] + ["$Forwarded"]
        flags = system + [k for k in keywords if k not in system]
        lines = [b"* FLAGS " + format_flags(flags) + b"\r\n"]
        permanent = format_flags([*flags, "\\*"]) if not command.read_only else b"()"
        lines.append(
            format_status(None, "OK", "Flags permitted", b"PERMANENTFLAGS " + permanent)
        )
        lines.append(b"* %d EXISTS\r\n" % len(view))
        lines.append(b"* %d RECENT\r\n" % len(view.recent))
        unseen = view.first_unseen
        if unseen is not None:
            lines.append(
                format_status(None, "OK", "First unseen", b"UNSEEN %d" % unseen)
            )
        lines.append(
            format_status(
                None, "OK", "UIDs valid", b"UIDVALIDITY %d" % view.uidvalidity
            )
        )
        lines.append(
            format_status(
                None, "OK", "Predicted next UID", b"UIDNEXT %d" % mailbox.next_uid
            )
        )
        lines.append(
            format_status(
                None, "OK", "Highest", b"HIGHESTMODSEQ %d" % view.highest_modseq
            )
        )
        if qresync is not None and qresync.uidvalidity == view.uidvalidity:
            lines.extend(self._qresync_lines(view, qresync))
        self._send_lines(lines)
        code = "READ-ONLY" if command.read_only else "READ-WRITE"
        return _ok(command.tag, f"{command.name} completed", code)

    _do_examine = _do_select

    def _qresync_lines(self, view: MailboxView, qresync: Any) -> list[bytes]:
        """VANISHED (EARLIER) and FETCH lines for SELECT (QRESYNC ...)
        (RFC 7162 §3.2.5.1): every UID the client may know that is gone
        (we keep no expunge history, which the RFC allows), then the
        messages changed since its mod-sequence."""
        lines = []
        known = qresync.known_uids
        top = view.mailbox.next_uid - 1
        spans = [(1, top)] if known is None else known.resolved(top)
        missing = _vanished(spans, view.uids, top)
        if missing:
            lines.append(b"* VANISHED (EARLIER) " + missing + b"\r\n")
        candidates = view.uids if known is None else list(known.iter_uids(view.uids))
        for uid in view.modseqs.changed_since(qresync.modseq, candidates):
            seq = view.seq_of(uid)
            lines.append(
                b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                % (seq or 0, uid, format_flags(view.flags_of(uid)), view.modseq_of(uid))
            )
        return lines

    async def _do_create(self, command: Create) -> bytes:
        name = command.mailbox
        if name.endswith(".") and len(name) > 1:
            name = name[:-1]
        name = _canonical(name)
        if name == "INBOX":
            return _no(command.tag, "INBOX always exists", "ALREADYEXISTS")
        try:
            await self._in_thread(self._create_folders, name)
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        return _ok(command.tag, "CREATE completed")

    def _create_folders(self, name: str) -> None:
        store = self.factory.store
        store.folder_path(self._path, name)
        parts = name.split(".")
        existing = set(store.list_folders(self._path))
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent not in existing:
                try:
                    store.create_folder(self._path, parent)
                except FolderExistsError:
                    pass
        store.create_folder(self._path, name)

    async def _do_delete(self, command: Delete) -> bytes:
        name = _canonical(command.mailbox)
        if name == "INBOX":
            return _no(command.tag, "INBOX cannot be deleted", "CANNOT")
        if name == self._selected_name:
            self._deselect()
            self._send(format_status(None, "OK", "Mailbox closed", "CLOSED"))
        try:
            await self._in_thread(self.factory.store.delete_folder, self._path, name)
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        return _ok(command.tag, "DELETE completed")

    async def _do_rename(self, command: Rename) -> bytes:
        old = _canonical(command.mailbox)
        new = _canonical(command.new_name)
        if new == "INBOX":
            return _no(command.tag, "Cannot rename to INBOX", "CANNOT")
        if old == self._selected_name and old != "INBOX":
            self._deselect()
            self._send(format_status(None, "OK", "Mailbox closed", "CLOSED"))
        try:
            if old == "INBOX":
                await self._in_thread(self._create_folders, new)
                await self._in_thread(_empty_inbox, self.factory.store, self._path, new)
            else:
                await self._in_thread(
                    self.factory.store.rename_folder, self._path, old, new
                )
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        return _ok(command.tag, "RENAME completed")

    async def _do_subscribe(self, command: Subscribe) -> bytes:
        return await self._subscription(command.tag, command.mailbox, True)

    async def _do_unsubscribe(self, command: Unsubscribe) -> bytes:
        return await self._subscription(command.tag, command.mailbox, False)

    async def _subscription(self, tag: str, name: str, on: bool) -> bytes:
        try:
            await self._in_thread(
                self.factory.store.set_subscribed, self._path, _canonical(name), on
            )
        except MaildirError as e:
            return _store_refusal(tag, e)
        return _ok(tag, ("SUBSCRIBE" if on else "UNSUBSCRIBE") + " completed")

    def _list_line(
        self, command_name: bytes, entry: ListEntry, extended: bool
    ) -> bytes:
        line = (
            b"* "
            + command_name
            + b" "
            + format_list(a.encode() for a in entry.attributes)
            + b' "." '
            + format_mailbox(entry.name)
        )
        if extended and entry.child_info:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        return line + b"\r\n"

    async def _do_list(self, command: List) -> bytes:
        if command.patterns == ("",) and not command.extended:
            self._send(b'* LIST (\\Noselect) "." ""\r\n')
            return _ok(command.tag, "LIST completed")
        folders, subscribed = await self._in_thread(
            _list_folders, self.factory.store, self._path
        )
        try:
            entries = list_entries(
                folders,
                subscribed,
                command.reference,
                [p for p in command.patterns if p],
                select_options=command.select_options,
                return_options=command.return_options,
                extended=command.extended,
            )
            lines = [self._list_line(b"LIST", e, command.extended) for e in entries]
        except MailboxNameError:
            return _no(command.tag, "A mailbox name cannot be encoded")
        self._send_lines(lines)
        if "STATUS" in command.return_options and command.status_items:
            for entry in entries:
                if not entry.selectable:
                    continue
                try:
                    values = await self._in_thread(
                        _status,
                        self.factory.store,
                        self._path,
                        entry.name,
                        command.status_items,
                    )
                except MaildirError:
                    continue
                self._send(self._status_line(entry.name, values))
        return _ok(command.tag, "LIST completed")

    async def _do_lsub(self, command: Lsub) -> bytes:
        folders, subscribed = await self._in_thread(
            _list_folders, self.factory.store, self._path
        )
        entries = lsub_entries(folders, subscribed, command.reference, command.pattern)
        try:
            self._send_lines([self._list_line(b"LSUB", e, False) for e in entries])
        except MailboxNameError:
            return _no(command.tag, "A mailbox name cannot be encoded")
        return _ok(command.tag, "LSUB completed")

    def _status_line(self, name: str, values: dict[StatusItem, int]) -> bytes:
        items = []
        for item, value in values.items():
            items.append(item.value.encode() + b" %d" % value)
        return b"* STATUS " + format_mailbox(name) + b" " + format_list(items) + b"\r\n"

    async def _do_status(self, command: Status) -> bytes:
        name = _canonical(command.mailbox)
        items = [i for i in command.items if i is not StatusItem.APPENDLIMIT]
        try:
            values = await self._in_thread(
                _status, self.factory.store, self._path, name, items
            )
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        if StatusItem.APPENDLIMIT in command.items:
            values[StatusItem.APPENDLIMIT] = self.factory.settings.imap.max_literal
        if StatusItem.HIGHESTMODSEQ in command.items:
            self._enabled.add("CONDSTORE")
        self._send(self._status_line(name, values))
        return _ok(command.tag, "STATUS completed")

    async def _do_append(self, command: Append) -> bytes:
        name = _canonical(command.mailbox)
        letters, keywords = split_flags(command.flags)
        when = (
            command.internal_date.timestamp()
            if command.internal_date is not None
            else None
        )
        try:
            result = await self._in_thread(
                _append,
                self.factory.store,
                self._path,
                name,
                command.message,
                letters,
                keywords,
                when,
                self._quota,
            )
        except NoSuchFolderError:
            return _no(command.tag, "No such mailbox", "TRYCREATE")
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        if result is None:
            return _no(command.tag, "Quota exceeded", "OVERQUOTA")
        validity, uid = result
        if name == self._selected_name:
            self._dirty = True
        return _ok(
            command.tag, "APPEND completed", b"APPENDUID %d %d" % (validity, uid)
        )

    async def _do_idle(self, command: Idle) -> None:
        self._idle_tag = command.tag
        self._send(b"+ idling\r\n")
        limits = self.factory.settings.imap
        reactor = self.factory.reactor
        self._idle_timers = [
            reactor.callLater(limits.idle_keepalive, self._idle_keepalive),
        ]
        if self._polling:
            self._idle_timers.append(
                reactor.callLater(limits.check_interval, self._idle_check)
            )
        if self.state is State.SELECTED:
            await self._update(allow_expunge=True)
        assert self._parser is not None
        self._queue.extend(self._parser.expect_done())
        return None

    def _idle_keepalive(self) -> None:
        if self._idle_tag is None or self._gone:
            return
        self._send(format_status(None, "OK", "Still here"))
        interval = self.factory.settings.imap.idle_keepalive
        self._idle_timers[0] = self.factory.reactor.callLater(
            interval, self._idle_keepalive
        )

    def _idle_check(self) -> None:
        if self._idle_tag is None or self._gone:
            return
        interval = self.factory.settings.imap.check_interval
        self._idle_timers[1] = self.factory.reactor.callLater(
            interval, self._idle_check
        )
        if self._view is not None:
            self._dirty = True
            self._pump()

    async def _idle_update(self) -> None:
        if self._idle_tag is not None and self.state is State.SELECTED:
            await self._update(allow_expunge=True)

    def _stop_idle_timers(self) -> None:
        timers, self._idle_timers = self._idle_timers, []
        for timer in timers:
            if timer.active():
                timer.cancel()

    def _end_idle(self) -> None:
        self._idle_tag = None
        self._stop_idle_timers()

    async def _idle_done(self, tag: str) -> None:
        self._end_idle()
        if self.state is State.SELECTED:
            await self._update(allow_expunge=True)
        self._errors = 0
        self._send(_ok(tag, "IDLE terminated"))

    async def _do_getquota(self, command: GetQuota) -> bytes:
        if self._quota is None or command.root != "":
            return _no(command.tag, "No such quota root", "NONEXISTENT")
        self._send(await self._quota_line())
        return _ok(command.tag, "GETQUOTA completed")

    async def _do_getquotaroot(self, command: GetQuotaRoot) -> bytes:
        name = _canonical(command.mailbox)
        try:
            encoded = format_mailbox(name)
        except MailboxNameError:
            return _no(command.tag, "Bad mailbox name")
        try:
            await self._in_thread(_check_folder, self.factory.store, self._path, name)
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        if self._quota is None:
            self._send(b"* QUOTAROOT " + encoded + b"\r\n")
            return _ok(command.tag, "GETQUOTAROOT completed")
        self._send(b"* QUOTAROOT " + encoded + b' ""\r\n')
        self._send(await self._quota_line())
        return _ok(command.tag, "GETQUOTAROOT completed")

    async def _quota_line(self) -> bytes:
        used = await self._in_thread(self.factory.store.mailbox_size, self._path)
        limit = self._quota or 0
        return b'* QUOTA "" (STORAGE %d %d)\r\n' % (
            (used + 1023) // 1024,
            limit // 1024,
        )

    # --- selected --------------------------------------------------------------

    async def _do_check(self, command: Check) -> bytes:
        await self._update(allow_expunge=True, force=True)
        return _ok(command.tag, "CHECK completed")

    async def _view_infos(self, view: MailboxView) -> dict[int, MessageInfo]:
        """The view's messages by UID, made in a thread when no command
        has needed them since SELECT (a folder may hold 100,000: the
        reactor thread would stop for a tenth of a second or more)."""
        if not view.infos_made:
            await self._in_thread(_made_infos, view)
        return view.infos

    async def _dated(self, view: MailboxView, uids: Iterable[int]) -> None:
        """Make the internal dates of the view's messages with these UIDs
        known: those a folder's first indexing left unknown are taken in a
        thread (L{Mailbox.with_dates}: once for the whole folder) and kept
        in the view."""
        infos = await self._view_infos(view)
        if not dates_unknown(infos.values()):
            return  # the usual case, once a folder's dates were taken
        chosen = [infos[u] for u in uids if u in infos]
        if dates_unknown(chosen):
            dated = await self._in_thread(view.mailbox.with_dates, chosen)
            for info in dated:
                view.changed(info)

    async def _do_close(self, command: Close) -> bytes:
        view = self._view
        if view is not None and not view.read_only:
            infos = await self._view_infos(view)
            if self._gone:
                return _ok(command.tag, "gone")
            deleted = [u for u in view.uids if "T" in infos[u].flags]
            if deleted:
                try:
                    await self._in_thread(view.mailbox.expunge, deleted)
                except MaildirError as e:
                    return _store_refusal(command.tag, e)
        self._deselect()
        return _ok(command.tag, "CLOSE completed")

    async def _do_unselect(self, command: Unselect) -> bytes:
        self._deselect()
        return _ok(command.tag, "UNSELECT completed")

    async def _do_expunge(self, command: Expunge) -> bytes:
        view = self._view
        assert view is not None
        if view.read_only:
            return _no(command.tag, "Mailbox is read-only", "READ-ONLY")
        infos = await self._view_infos(view)
        if self._gone:
            return _ok(command.tag, "gone")
        uids = [u for u in view.uids if "T" in infos[u].flags]
        if command.uid_set is not None:
            chosen = set(command.uid_set.iter_uids(view.uids))
            uids = [u for u in uids if u in chosen]
        if uids:
            await self._in_thread(self._expunge_current, view, uids)
        await self._update(allow_expunge=True, force=True)
        return _ok(command.tag, "EXPUNGE completed")

    @staticmethod
    def _expunge_current(view: MailboxView, uids: list[int]) -> None:
        # Flags may have changed since the view saw them: expunge only what
        # is \Deleted now.
        mailbox = view.mailbox
        mailbox.refresh()
        current = []
        for uid in uids:
            try:
                if "T" in mailbox.get(uid).flags:
                    current.append(uid)
            except NoSuchMessageError:
                continue
        mailbox.expunge(current)

    def _targets(self, sequence_set: SequenceSet, uid: bool) -> list[int] | None:
        view = self._view
        assert view is not None
        try:
            return view.uids_for(sequence_set, uid)
        except ValueError:
            return None

    async def _do_fetch(self, command: Fetch) -> bytes:
        view = self._view
        assert view is not None
        uids = self._targets(command.sequence_set, command.uid)
        if uids is None:
            return _bad(command.tag, "Invalid message sequence number")
        if command.vanished and not (self._qresync and command.uid):
            return _bad(command.tag, "VANISHED needs QRESYNC and UID FETCH")
        attributes = list(command.attributes)
        if command.changed_since is not None or FetchItem.MODSEQ in attributes:
            self._enabled.add("CONDSTORE")
        if command.changed_since is not None:
            uids = view.modseqs.changed_since(command.changed_since, uids)
            if FetchItem.MODSEQ not in attributes:
                attributes.append(FetchItem.MODSEQ)
            if command.vanished:
                # "*" is the highest UID ever given, so that a client
                # asking for 1:* learns that the last message went too.
                top = view.mailbox.next_uid - 1
                spans = command.sequence_set.resolved(top)
                vanished = _vanished(spans, view.uids, top)
                if vanished:
                    self._send(b"* VANISHED (EARLIER) " + vanished + b"\r\n")
        if command.uid and FetchItem.UID not in attributes:
            attributes.insert(0, FetchItem.UID)
        needs_data = any(
            isinstance(a, BodySection)
            or a
            in (
                FetchItem.ENVELOPE,
                FetchItem.BODY,
                FetchItem.BODYSTRUCTURE,
                FetchItem.RFC822,
                FetchItem.RFC822_HEADER,
                FetchItem.RFC822_TEXT,
            )
            for a in attributes
        )
        sets_seen = not view.read_only and any(
            (isinstance(a, BodySection) and not a.peek)
            or a in (FetchItem.RFC822, FetchItem.RFC822_TEXT)
            for a in attributes
        )
        if FetchItem.INTERNALDATE in attributes:
            await self._dated(view, uids)
            if self._gone:
                return _ok(command.tag, "gone")
        result: tuple[list[bytes], list[MessageInfo], bool]
        if needs_data or sets_seen or len(uids) > _INLINE_FETCH or not view.infos_made:
            result = await self._fetch_in_thread(view, uids, attributes, sets_seen)
        else:
            result = self._fetch_blocking(view, uids, attributes, False)
        lines, seen, missing = result
        for info in seen:
            view.changed(info)
        self._send_lines(lines)
        if missing:
            return _no(
                command.tag, "Some messages were expunged meanwhile", "EXPUNGEISSUED"
            )
        return _ok(command.tag, "FETCH completed")

    async def _fetch_in_thread(
        self,
        view: MailboxView,
        uids: list[int],
        attributes: list[Any],
        sets_seen: bool,
    ) -> tuple[list[bytes], list[MessageInfo], bool]:
        """L{_fetch_blocking} in a thread.  A FETCH of metadata only goes
        part by part instead, each part sent as soon as it is made, so the
        client reads the first while the next is made; its lines are then
        sent already (the answer has none)."""
        if sets_seen or not all(a in METADATA_ITEMS for a in attributes):
            return await self._in_thread(
                self._fetch_blocking, view, uids, attributes, sets_seen
            )
        fetch = MetadataLines(view, uids, attributes)
        part = self.fetch_part
        for start in range(0, len(uids), part):
            lines = await self._in_thread(fetch.lines, start, start + part)
            if self._gone or self._view is not view:
                break
            self._send_lines(lines)
        return [], [], False

    def _fetch_blocking(
        self,
        view: MailboxView,
        uids: list[int],
        attributes: list[Any],
        sets_seen: bool,
    ) -> tuple[list[bytes], list[MessageInfo], bool]:
        """Build the FETCH responses (blocking when message data is read,
        or when the view's messages are not made yet)."""
        if not sets_seen and all(a in METADATA_ITEMS for a in attributes):
            # What the store knows without reading: column by column.
            return view.metadata_lines(uids, attributes), [], False
        mailbox = view.mailbox
        seen: dict[int, MessageInfo] = {}
        if sets_seen:
            plan = []
            for uid in uids:
                try:
                    current = mailbox.get(uid)
                except NoSuchMessageError:
                    continue
                if "S" not in current.flags:
                    plan.append((uid, current.flags | {"S"}, current.keywords))
            seen = {i.uid: i for i in mailbox.set_flags_many(plan)}
            if seen:
                view.modseqs.sync(mailbox.uidvalidity, mailbox.messages())
        out: list[bytes] = []
        missing = False
        wants_flags = FetchItem.FLAGS in attributes
        for uid in uids:
            info = seen.get(uid) or view.infos[uid]
            items = self._fetch_items(view, mailbox, info, attributes)
            if items is None:
                missing = True
                continue
            if uid in seen and not wants_flags:
                items.append(
                    b"FLAGS " + format_flags(imap_flags(info, uid in view.recent))
                )
            seq = view.seq_of(uid) or 0
            out.append(b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n")
        return out, list(seen.values()), missing

    def _fetch_items(
        self,
        view: MailboxView,
        mailbox: Mailbox,
        info: MessageInfo,
        attributes: list[Any],
    ) -> list[bytes] | None:
        """The items of one FETCH response (blocking when message data is
        read), or None when the message is gone.

        ENVELOPE, BODY, BODYSTRUCTURE and header sections come from the
        folder's structure cache (L{cached_structure}); only the other
        items read the message file, once."""
        uid = info.uid
        data: bytes | None = None
        structure: Structure | None = None

        def load() -> bytes:
            nonlocal data
            if data is None:
                data = mailbox.read(uid)
            return data

        items: list[bytes] = []
        try:
            for attr in attributes:
                if attr is FetchItem.UID:
                    items.append(b"UID %d" % uid)
                elif attr is FetchItem.FLAGS:
                    items.append(
                        b"FLAGS " + format_flags(imap_flags(info, uid in view.recent))
                    )
                elif attr is FetchItem.INTERNALDATE:
                    when = datetime.datetime.fromtimestamp(
                        info.internal_date, datetime.UTC
                    )
                    items.append(b"INTERNALDATE " + format_date_time(when))
                elif attr is FetchItem.RFC822_SIZE:
                    items.append(b"RFC822.SIZE %d" % info.size)
                elif attr is FetchItem.MODSEQ:
                    items.append(b"MODSEQ (%d)" % view.modseq_of(uid))
                elif attr is FetchItem.RFC822:
                    items.append(b"RFC822 " + _literal(load()))
                elif attr is FetchItem.RFC822_TEXT:
                    items.append(b"RFC822.TEXT " + _literal(rfc822_text(load())))
                elif isinstance(attr, BodySection) and not _header_only(attr):
                    value = fetch_section(load(), attr)
                    items.append(attr.response_name() + b" " + _literal(value))
                else:
                    if structure is None:
                        if data is not None:
                            structure = cached_structure(
                                mailbox, info.base, lambda: data or b""
                            )
                        else:
                            structure = cached_structure(mailbox, info.base, load)
                    if attr is FetchItem.ENVELOPE:
                        items.append(b"ENVELOPE " + structure.envelope)
                    elif attr is FetchItem.BODYSTRUCTURE:
                        items.append(b"BODYSTRUCTURE " + structure.bodystructure)
                    elif attr is FetchItem.BODY:
                        items.append(b"BODY " + structure.body)
                    elif attr is FetchItem.RFC822_HEADER:
                        items.append(b"RFC822.HEADER " + _literal(structure.header))
                    elif isinstance(attr, BodySection):
                        value = fetch_section(structure.header, attr)
                        items.append(attr.response_name() + b" " + _literal(value))
        except NoSuchMessageError:
            return None
        return items

    async def _do_store(self, command: Store) -> bytes:
        view = self._view
        assert view is not None
        uids = self._targets(command.sequence_set, command.uid)
        if uids is None:
            return _bad(command.tag, "Invalid message sequence number")
        if view.read_only:
            return _no(command.tag, "Mailbox is read-only", "READ-ONLY")
        if command.unchanged_since is not None:
            self._enabled.add("CONDSTORE")
        letters, keywords = split_flags(command.flags)
        try:
            changed, failed = await self._in_thread(
                self._store_blocking,
                view,
                uids,
                command.mode,
                letters,
                keywords,
                command.unchanged_since,
            )
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        lines = []
        # Formatted once per distinct set of flags (few, for many messages).
        flag_items: dict[tuple[frozenset[str], frozenset[str], bool], bytes] = {}
        for info in changed:
            view.changed(info)
            uid = info.uid
            seq = view.seq_of(uid) or 0
            items = []
            if command.uid or self._qresync:
                items.append(b"UID %d" % uid)
            if not command.silent:
                key = (info.flags, info.keywords, uid in view.recent)
                item = flag_items.get(key)
                if item is None:
                    item = b"FLAGS " + format_flags(imap_flags(info, key[2]))
                    flag_items[key] = item
                items.append(item)
            if self._condstore:
                items.append(b"MODSEQ (%d)" % view.modseq_of(uid))
            if not command.silent or self._condstore:
                lines.append(b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n")
        self._send_lines(lines)
        if failed:
            numbers = failed if command.uid else [view.seq_of(u) or 0 for u in failed]
            return _ok(
                command.tag,
                "Conditional STORE failed",
                b"MODIFIED " + ranges_to_set(numbers),
            )
        return _ok(command.tag, "STORE completed")

    @staticmethod
    def _store_blocking(
        view: MailboxView,
        uids: list[int],
        mode: StoreMode,
        letters: frozenset[str],
        keywords: frozenset[str],
        unchanged_since: int | None,
    ) -> tuple[list[MessageInfo], list[int]]:
        mailbox = view.mailbox
        if unchanged_since is not None:
            view.modseqs.sync(mailbox.uidvalidity, mailbox.messages())
        # Unchanged messages in place, UIDs of those to change (renamed in
        # one batch, with one change notification).
        order: list[MessageInfo | int] = []
        plan: list[tuple[int, frozenset[str], frozenset[str]]] = []
        failed: list[int] = []
        for uid in uids:
            try:
                current = mailbox.get(uid)
            except NoSuchMessageError:
                continue
            if unchanged_since is not None and view.modseq_of(uid) > unchanged_since:
                failed.append(uid)
                continue
            if mode is StoreMode.ADD:
                new_letters = current.flags | letters
                new_keywords = current.keywords | keywords
            elif mode is StoreMode.REMOVE:
                new_letters = current.flags - letters
                new_keywords = current.keywords - keywords
            else:
                new_letters, new_keywords = letters, keywords
            if new_letters == current.flags and new_keywords == current.keywords:
                order.append(current)
                continue
            plan.append((uid, new_letters, new_keywords))
            order.append(uid)
        done: dict[int, MessageInfo] = {}
        if plan:
            done = {i.uid: i for i in mailbox.set_flags_many(plan)}
            view.modseqs.sync(mailbox.uidvalidity, mailbox.messages())
        changed = [done.get(x) if isinstance(x, int) else x for x in order]
        return [i for i in changed if i is not None], failed

    async def _do_copy(self, command: Copy | Move) -> bytes:
        view = self._view
        assert view is not None
        move = isinstance(command, Move)
        uids = self._targets(command.sequence_set, command.uid)
        if uids is None:
            return _bad(command.tag, "Invalid message sequence number")
        if move and view.read_only:
            return _no(command.tag, "Mailbox is read-only", "READ-ONLY")
        name = _canonical(command.mailbox)
        try:
            result = await self._in_thread(
                _copy,
                self.factory.store,
                view,
                uids,
                self._path,
                name,
                self._quota,
                move,
            )
        except NoSuchFolderError:
            return _no(command.tag, "No such mailbox", "TRYCREATE")
        except MaildirError as e:
            return _store_refusal(command.tag, e)
        if result is None:
            return _no(command.tag, "Quota exceeded", "OVERQUOTA")
        validity, mapping = result
        code: bytes | None = None
        if mapping:
            old = sorted(mapping)
            code = (
                b"COPYUID %d " % validity
                + ranges_to_set(old)
                + b" "
                + ranges_to_set([mapping[u] for u in old])
            )
        if not move:
            return _ok(command.tag, "COPY completed", code)
        if code is not None:
            self._send(format_status(None, "OK", "Moved", code))
        await self._update(allow_expunge=True, force=True)
        return _ok(command.tag, "MOVE completed")

    _do_move = _do_copy

    async def _do_search(self, command: Search) -> bytes:
        view = self._view
        assert view is not None
        if command.charset not in (None, *SUPPORTED_CHARSETS):
            return _no(
                command.tag,
                "Unsupported charset",
                "BADCHARSET (" + " ".join(SUPPORTED_CHARSETS) + ")",
            )
        with_modseq = uses_modseq(command.key)
        if with_modseq:
            self._enabled.add("CONDSTORE")
        mailbox = view.mailbox
        if uses_internal_date(command.key):
            await self._dated(view, view.uids)
        infos = await self._view_infos(view)
        if self._gone:
            return _ok(command.tag, "gone")
        messages = [infos[u] for u in view.uids]

        def load(uid: int) -> bytes | None:
            return _read_or_none(mailbox, uid)

        bases = [i.base for i in messages]
        headers = BatchedHeaders(
            mailbox, [i.uid for i in messages], bases, mailbox.read
        )

        def match_field(field: str, needle: str) -> tuple[set[str], set[str]] | None:
            return indexed_matches(mailbox, field, needle, bases)

        def load_header(uid: int) -> bytes | None:
            try:
                return headers(uid)
            except (KeyError, NoSuchMessageError):
                return None

        def search() -> list[int]:
            return evaluate_search(
                command.key,
                messages,
                load=load,
                load_header=load_header,
                recent=view.recent,
                modseq_of=view.modseq_of,
                uid=True,
                match_field=match_field,
            )

        if search_cost(command.key) == 0:
            matched = search()
        else:
            matched = await self._in_thread(search)
        if command.uid:
            numbers = matched
        else:
            numbers = [view.seq_of(u) or 0 for u in matched]
        modseq = highest_modseq(matched, view.modseq_of) if with_modseq else None
        if command.return_options is None:
            self._send(format_search(numbers, modseq))
        else:
            self._send(
                format_esearch(
                    command.tag,
                    numbers,
                    command.return_options,
                    uid=command.uid,
                    modseq=modseq,
                )
            )
        return _ok(command.tag, "SEARCH completed")


def _read_or_none(mailbox: Mailbox, uid: int) -> bytes | None:
    try:
        return mailbox.read(uid)
    except NoSuchMessageError:
        return None


def _header_only(section: BodySection) -> bool:
    """Whether a section is read from the message's header alone."""
    return not section.part and section.text in (
        "HEADER",
        "HEADER.FIELDS",
        "HEADER.FIELDS.NOT",
    )


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data
