# -*- test-case-name: tests.test_pop3_machine -*-
"""The POP3 session state machine (the last step of the flow: Maildir to
the user's client over POP3 or POP3S).

Sans-I/O: L{POP3Machine} takes the bytes the client sent
(L{POP3Machine.receive_data}) and returns events; what needs the portal or
the store (logging in, reading a message, applying deletions) is an event
the adapter answers.  Replies are queued as bytes and handed out by
L{POP3Machine.data_to_send}.  It never touches sockets, clocks, files or
reactors.

States (L{State}, RFC 1939 §3):

  - C{AUTHORIZATION}: greeted, not logged in (RFC 1939 §4).
  - C{AUTH_CONTINUE}: in a SASL exchange, waiting for the client's
    base64 response line (RFC 5034 §4).
  - C{STARTING_TLS}: ``+OK`` sent to STLS, waiting for the adapter to start
    TLS (RFC 2595 §4).
  - C{TRANSACTION}: logged in, the maildrop locked and its listing fixed
    (RFC 1939 §5).
  - C{UPDATE}: QUIT received in TRANSACTION; deletions are being applied
    (RFC 1939 §6).
  - C{CLOSED}: QUIT done, a timeout or too many errors; nothing more is read.

Command transitions live in one table, L{TRANSITIONS}: (state, command
keyword) to the name of the method that handles it.  A known command in a
state where the table has no entry gets ``-ERR`` (wrong state); an unknown
keyword gets ``-ERR`` too.  L{POP3Machine.dispatch} raises L{ProtocolError}
for a missing pair; the line reader turns it into the reply.

Framing and limits:

  - Command lines are at most L{COMMAND_LINE_LIMIT} octets with their CRLF
    (RFC 2449 §4); SASL response lines at most L{AUTH_LINE_LIMIT}.  A longer
    line gets one ``-ERR`` and is discarded up to its line end; the session
    stays usable.  A bare LF is taken as a line end (clients do send it; no
    smuggling is possible in POP3 commands).
  - While a decision is pending at most L{PIPELINE_LIMIT} octets of
    pipelined input are kept (RFC 2449 §6.6); the adapter stops reading
    from the socket beyond that (see L{POP3Machine.buffered}).
  - L{MachineConfig.max_errors} ``-ERR`` replies in a row (RFC 1939 lets a
    server close on abuse) end the session: one more ``-ERR`` saying so,
    then the connection is closed.

Multi-line responses are byte-stuffed (RFC 1939 §3): L{format_message}
turns a stored message into the octets of a RETR or TOP response, with bare
LF line ends (Maildirs written by other programs) made CRLF.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "AUTH_LINE_LIMIT",
    "COMMAND_LINE_LIMIT",
    "PIPELINE_LIMIT",
    "TRANSITIONS",
    "CloseRequested",
    "Event",
    "LoginRequested",
    "MachineConfig",
    "Listing",
    "MessageRequested",
    "POP3Machine",
    "ProtocolError",
    "Refused",
    "Session",
    "State",
    "TLSRequested",
    "UpdateRequested",
    "err",
    "format_message",
    "stuff_message",
    "ok",
    "uidl_for",
    "uidls_for",
]

#: RFC 2449 §4: a command line is at most 255 octets, CRLF included.
COMMAND_LINE_LIMIT = 255

#: RFC 5034 §4 lets SASL responses exceed the command limit; PLAIN needs
#: little (two names and a password, base64), so this is generous.
AUTH_LINE_LIMIT = 4096

#: Pipelined input kept while a command waits for the store (RFC 2449 §6.6
#: lets the client send many commands at once; this bounds the memory).
PIPELINE_LIMIT = 64 * 1024

#: RFC 1939 §7: a unique-id is 1 to 70 characters from 0x21 to 0x7E.
UIDL_MAX = 70

_E = TypeVar("_E")

_UIDL_CHARS = frozenset(range(0x21, 0x7F))
_UIDL_BYTES = bytes(range(0x21, 0x7F))
_VALID_UIDL = re.compile(f"[\x21-\x7e]{{1,{UIDL_MAX}}}")
#: Where a line starting with a dot starts (RFC 1939 §3: it gets another
#: dot), the first line aside.
_DOT_LINES = re.compile(rb"\r\n\.")


def ok(text: str = "") -> bytes:
    """One ``+OK`` status line (CRLF included)."""
    return f"+OK {text}\r\n".encode() if text else b"+OK\r\n"


def err(text: str, code: str = "") -> bytes:
    """One ``-ERR`` status line, with an RFC 2449 response code when given
    (``AUTH``, ``SYS/TEMP``, ``IN-USE``...)."""
    prefix = f"[{code}] " if code else ""
    return f"-ERR {prefix}{text}\r\n".encode()


# Replies the adapter also uses.
AUTH_FAILED = err("Authentication failed", "AUTH")
IN_USE = err("Maildrop is locked by another session", "IN-USE")
TEMP_FAILURE = err("Temporary server failure, try again later", "SYS/TEMP")
TOO_MANY_CONNECTIONS = err("Too many connections, try again later", "SYS/TEMP")
MESSAGE_GONE = err("Message was removed by another session")
UPDATE_FAILED = err("Some deleted messages were not removed", "SYS/TEMP")
TIMED_OUT = err("Disconnected for inactivity")

# Replies of the machine itself.
LINE_TOO_LONG = err("Line too long")
UNKNOWN_COMMAND = err("Unknown command")
WRONG_STATE = err("Command not valid in this state")
BAD_ARGUMENTS = err("Bad arguments")
NO_SUCH_MESSAGE = err("No such message")
MESSAGE_DELETED = err("Message is deleted")
NEED_USER = err("Send USER first")
PLAINTEXT_REFUSED = err(
    "Plaintext authentication disallowed on non-secure connections; use STLS",
    "AUTH",
)
UNKNOWN_MECHANISM = err("Unsupported authentication mechanism")
AUTH_CANCELLED = err("Authentication cancelled")
BAD_BASE64 = err("Invalid base64 data")
BAD_PLAIN = err("Invalid SASL PLAIN response")
AUTHZ_REFUSED = err("Cannot log in as another user", "AUTH")
TLS_ACTIVE = err("TLS already active")
TLS_UNAVAILABLE = err("STLS not available")
TOO_MANY_ERRORS = err("Too many errors, closing connection")
PIPELINE_OVERFLOW = err("Too much pipelined input, closing connection")


class ProtocolError(Exception):
    """A command that gets ``-ERR``: the reply to send and a reason to log."""

    def __init__(self, reply: bytes, reason: str = "") -> None:
        super().__init__(reason or reply.decode("ascii", "replace").strip())
        self.reply = reply
        self.reason = reason or reply.decode("ascii", "replace").strip()


class State(enum.Enum):
    """The states of a POP3 session (see the module docstring)."""

    AUTHORIZATION = "authorization"
    AUTH_CONTINUE = "auth_continue"
    STARTING_TLS = "starting_tls"
    TRANSACTION = "transaction"
    UPDATE = "update"
    CLOSED = "closed"


#: Every command keyword the server knows.
COMMANDS = frozenset(
    {
        "USER",
        "PASS",
        "AUTH",
        "APOP",
        "STLS",
        "CAPA",
        "QUIT",
        "STAT",
        "LIST",
        "RETR",
        "DELE",
        "NOOP",
        "RSET",
        "TOP",
        "UIDL",
    }
)


def _build_table() -> dict[tuple[State, str], str]:
    table: dict[tuple[State, str], str] = {}
    a, t = State.AUTHORIZATION, State.TRANSACTION
    for name in ("USER", "PASS", "AUTH", "APOP", "STLS"):
        table[a, name] = "_" + name.lower()
    for name in ("STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL"):
        table[t, name] = "_" + name.lower()
    for s in (a, t):
        table[s, "CAPA"] = "_capa"
        table[s, "QUIT"] = "_quit"
    return table


#: (state, command keyword) to the handling method's name; see L{State}.
TRANSITIONS: dict[tuple[State, str], str] = _build_table()


@dataclass(frozen=True)
class MachineConfig:
    """What one listener's sessions may do.

    @ivar hostname: our name, for the greeting.
    @ivar implementation: the IMPLEMENTATION capability's text (RFC 2449
        §6.9).
    @ivar stls: offer STLS while TLS is not active (RFC 2595).
    @ivar plaintext_auth: allow USER/PASS and AUTH without TLS.
    @ivar max_errors: ``-ERR`` replies in a row before closing.
    """

    hostname: str = "localhost"
    implementation: str = "twistedmail"
    stls: bool = False
    plaintext_auth: bool = False
    max_errors: int = 10


@dataclass
class Session:
    """What a session knows apart from the maildrop.

    @ivar peer: the client's IP address.
    @ivar tls_active: the connection is encrypted (after STLS, or POP3S).
    @ivar user: the name the client logged in with, once logged in.
    """

    peer: str = ""
    tls_active: bool = False
    user: str | None = None


@dataclass(frozen=True)
class Listing:
    """The maildrop's messages as fixed at login, in order: two parallel
    sequences rather than an object per message, so that logging in to a
    maildrop of 100,000 messages makes no 100,000 objects.

    @ivar sizes: each message's size in octets (the LIST and STAT figure).
    @ivar uidls: each message's unique-id (see L{uidl_for}).
    """

    sizes: Sequence[int]
    uidls: Sequence[str]

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.uidls):
            raise ValueError("sizes and uidls differ in length")

    def __len__(self) -> int:
        return len(self.sizes)

    # The answers to LIST and UIDL of the whole maildrop are made once per
    # listing, not per command: an adapter that keeps a listing from one
    # session to the next (while the maildrop does not change) formats
    # 100,000 lines once.

    @functools.cached_property
    def total(self) -> int:
        """The sum of the sizes (STAT's figure with nothing deleted)."""
        return sum(self.sizes)

    @functools.cached_property
    def size_lines(self) -> bytes:
        """LIST's lines for every message, and the ending ``.`` line."""
        return _format_lines(self.sizes)

    @functools.cached_property
    def uidl_lines(self) -> bytes:
        """UIDL's lines for every message, and the ending ``.`` line."""
        return _format_lines(self.uidls)


def _format_lines(
    values: Sequence[int] | Sequence[str], deleted: AbstractSet[int] = frozenset()
) -> bytes:
    """``n value`` lines (numbered from 1, leaving out the indexes in
    C{deleted}) and the ending ``.`` line of a multi-line LIST or UIDL
    answer."""
    pairs: Iterable[tuple[int, int | str]] = enumerate(values, 1)
    if deleted:
        pairs = ((n, v) for n, v in pairs if n - 1 not in deleted)
    # One str built and encoded once: faster than formatting bytes line
    # by line (unique-ids are ASCII, see uidl_for).
    return "".join([f"{n} {v}\r\n" for n, v in pairs]).encode("ascii") + b".\r\n"


def uidl_for(base: str) -> str:
    """The UIDL unique-id of a message with this Maildir base name.

    The base name itself when it is a valid unique-id (1 to 70 characters
    from 0x21 to 0x7E, RFC 1939 §7); otherwise (long host names make long
    base names) its first characters that are valid, ``~`` and 24 hex digits
    of its SHA-256: the same for the same base name in every session and
    after restarts.
    """
    if _VALID_UIDL.fullmatch(base):
        return base
    raw = base.encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(raw).hexdigest()[:24]
    keep = bytes(b for b in raw if b in _UIDL_CHARS and b != 0x7E)
    prefix = keep[: UIDL_MAX - 25].decode("ascii")
    return f"{prefix}~{digest}"


def uidls_for(bases: Sequence[str]) -> list[str]:
    """L{uidl_for} of each base name: the names themselves when all are
    valid unique-ids, which is checked in a few passes in C over all of
    them (at login to a maildrop of 100,000 messages a call per name
    costs a tenth of a second)."""
    joined = "".join(bases)
    if (
        bases
        and joined.isascii()
        and not joined.encode("ascii").translate(None, _UIDL_BYTES)
        and min(map(len, bases)) >= 1
        and max(map(len, bases)) <= UIDL_MAX
    ):
        return list(bases)
    return [uidl_for(b) for b in bases]


def format_message(data: bytes, lines: int | None = None) -> tuple[int, bytes]:
    """The body of a RETR (or TOP) response for a stored message, in one
    piece (see L{stuff_message}).

    @return: (octets of the message as sent, before byte-stuffing; the
        response bytes after the status line).
    """
    octets, body, end = stuff_message(data, lines)
    return octets, body + end


def stuff_message(data: bytes, lines: int | None = None) -> tuple[int, bytes, bytes]:
    """The body of a RETR (or TOP) response for a stored message, and the
    line that ends it, apart: the caller writes both without joining them
    (one copy of the message less).

    A message whose first line ends in a bare LF (Maildirs written by
    Dovecot, mutt, twisted.mail) has all its LF line ends made CRLF (RFC
    1939 §3 wants CRLF).  A message whose first line ends in CRLF (ours)
    is sent as it is: looking only at the first line end spares two scans
    of every message, and a stray bare LF later on cannot break the
    framing, since only CRLF ``.`` CRLF ends the response.  Lines starting
    with ``.`` get another (byte-stuffing); the end is the ``.`` line,
    after a CRLF when the message does not end with one.

    @param lines: for TOP: the headers, the blank line and this many body
        lines (RFC 1939 §7); None for the whole message.
    @return: (octets of the message as sent, before byte-stuffing; the
        byte-stuffed message; the end of the response).
    """
    first = data.find(b"\n")
    if first >= 0 and (first == 0 or data[first - 1] != 0x0D):
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if lines is not None:
        data = _top(data, lines)
    octets = len(data)
    # One pass of the regular expression engine finds the lines to stuff
    # in about half the time bytes.replace() takes to find none (its
    # search is slow for this short pattern); with none, split() returns
    # the message itself, uncopied.
    parts = _DOT_LINES.split(data)
    if len(parts) > 1:
        data = b"\r\n..".join(parts)
    if data.startswith(b"."):
        data = b"." + data
    if data and not data.endswith(b"\r\n"):
        return octets, data, b"\r\n.\r\n"
    return octets, data, b".\r\n"


def _top(data: bytes, lines: int) -> bytes:
    """The headers, the blank line and the first ``lines`` body lines."""
    if data.startswith(b"\r\n"):
        end = 0
    else:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return data
        end += 2
    cut = end + 2
    for _ in range(lines):
        nl = data.find(b"\r\n", cut)
        if nl < 0:
            return data
        cut = nl + 2
    return data[:cut]


# Events.  Requests marked "decision" stop the machine until answered.


@dataclass(frozen=True)
class LoginRequested:
    """Decision: check these credentials, lock and open the maildrop.

    Answer with L{POP3Machine.login_succeeded} or
    L{POP3Machine.login_failed}.

    @ivar mechanism: ``USER`` (USER/PASS) or ``PLAIN`` (AUTH PLAIN).
    """

    username: bytes
    password: bytes
    mechanism: str


@dataclass(frozen=True)
class MessageRequested:
    """Decision: read a message and answer L{POP3Machine.message_read} (with
    L{format_message}'s result) or L{POP3Machine.message_failed}.

    @ivar index: its position in the listing (0-based).
    @ivar lines: for TOP, the body lines wanted; None for RETR.
    """

    index: int
    lines: int | None


@dataclass(frozen=True)
class UpdateRequested:
    """Decision: QUIT in TRANSACTION (RFC 1939 §6); remove these messages
    for good, then answer L{POP3Machine.update_done}.

    @ivar indexes: the deleted messages' positions (0-based), ascending.
    """

    indexes: tuple[int, ...]


@dataclass(frozen=True)
class TLSRequested:
    """Flush, start TLS as server, then call L{POP3Machine.tls_started}."""


@dataclass(frozen=True)
class CloseRequested:
    """Flush and close the connection."""

    reason: str


@dataclass(frozen=True)
class Refused:
    """A command got ``-ERR`` (for the log)."""

    reply: bytes
    reason: str


Event = (
    LoginRequested
    | MessageRequested
    | UpdateRequested
    | TLSRequested
    | CloseRequested
    | Refused
)


@dataclass
class _Maildrop:
    """The listing fixed at login and the messages marked deleted."""

    listing: Listing
    deleted: set[int] = field(default_factory=set)
    size: int = 0


class POP3Machine:
    """One server session's protocol state.

    @ivar state: the current L{State}.
    @ivar session: the session facts (peer, TLS, user).
    @ivar commands: how many complete lines were read.
    """

    def __init__(self, config: MachineConfig, session: Session) -> None:
        self.config = config
        self.session = session
        self.state = State.AUTHORIZATION
        self.commands = 0
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._pending: Event | None = None
        self._held = False
        self._discarding = False
        self._errors = 0
        self._user_name: bytes | None = None
        self._maildrop: _Maildrop | None = None

    # The adapter's side.

    def greet(self) -> None:
        """Queue the greeting (RFC 1939 §4).  No APOP timestamp: APOP is not
        offered (see the package docstring)."""
        self._out.append(ok(f"{self.config.hostname} POP3 ready"))

    def receive_data(self, data: bytes) -> list[Event]:
        """Take bytes from the client; return the events they cause."""
        if self.state is State.CLOSED:
            return []
        self._buffer += data
        self._process()
        return self._take_events()

    def login_succeeded(self, listing: Listing) -> list[Event]:
        """Answer L{LoginRequested}: logged in, maildrop locked; the listing
        stays fixed for the session (new mail shows in the next one)."""
        request = self._answering(LoginRequested)
        if self.state is State.CLOSED:
            return []
        self._user_name = None
        self._maildrop = _Maildrop(listing, size=listing.total)
        self.session.user = request.username.decode("utf-8", "replace")
        self.state = State.TRANSACTION
        self._reply(ok(f"Logged in, {len(listing)} messages"))
        return self._continue()

    def login_failed(self, reply: bytes = AUTH_FAILED) -> list[Event]:
        """Answer L{LoginRequested} with a refusal (``[AUTH]``,
        ``[IN-USE]`` or ``[SYS/TEMP]``)."""
        self._answering(LoginRequested)
        if self.state is State.CLOSED:
            return []
        self._user_name = None
        self.state = State.AUTHORIZATION
        self._reply(reply)
        return self._continue()

    def message_read(self, octets: int, body: bytes, end: bytes = b"") -> list[Event]:
        """Answer L{MessageRequested} with L{format_message}'s result (or
        L{stuff_message}'s, the body and its end apart); the status line,
        the body and its end go out as one write."""
        self._answering(MessageRequested)
        self._reply(b"+OK %d octets\r\n" % octets, body, end)
        return self._continue()

    def message_failed(self, reply: bytes = MESSAGE_GONE) -> list[Event]:
        """Answer L{MessageRequested} with a refusal."""
        self._answering(MessageRequested)
        self._reply(reply)
        return self._continue()

    def update_done(self, removed: bool) -> list[Event]:
        """Answer L{UpdateRequested}: say goodbye and close.

        @param removed: whether every deleted message was removed.
        """
        self._answering(UpdateRequested)
        if self.state is State.CLOSED:
            return []
        if removed:
            self._out.append(ok(f"{self.config.hostname} POP3 signing off"))
        else:
            self._out.append(UPDATE_FAILED)
        self._set_closed("QUIT")
        return self._take_events()

    def tls_started(self) -> list[Event]:
        """TLS is on: forget anything the client sent after STLS (RFC 2595
        §4: it was sent in the clear and may have been injected)."""
        if self.state is not State.STARTING_TLS:
            raise RuntimeError("STLS was not requested")
        self.session.tls_active = True
        self._buffer.clear()
        self._discarding = False
        self.state = State.AUTHORIZATION
        return self._continue()

    def close(self, reply: bytes) -> list[Event]:
        """Send a last reply (timeout, shutdown) and close; in TRANSACTION
        nothing is deleted (RFC 1939 §6)."""
        if self.state is not State.CLOSED:
            self._out.append(reply)
            self._set_closed(reply.decode("ascii", "replace").strip())
        return self._take_events()

    def connection_lost(self) -> None:
        """The client went away; nothing more happens."""
        self.state = State.CLOSED
        self._pending = None
        self._buffer.clear()

    def hold(self) -> None:
        """Stop reading buffered commands (the transport's buffer is full)."""
        self._held = True

    def release(self) -> list[Event]:
        """Go on reading buffered commands after L{hold}."""
        self._held = False
        return self._continue()

    def data_to_send(self) -> list[bytes]:
        """The replies to write now, in order (write them as one sequence)."""
        out, self._out = self._out, []
        return out

    @property
    def pending(self) -> bool:
        """A decision is waiting for its answer."""
        return self._pending is not None

    @property
    def buffered(self) -> int:
        """Octets of input read but not handled yet."""
        return len(self._buffer)

    def capabilities(self) -> list[str]:
        """The CAPA lines for the current state (RFC 2449 §5)."""
        caps = ["TOP", "UIDL"]
        auth_ok = self.session.tls_active or self.config.plaintext_auth
        if self.state is State.AUTHORIZATION and auth_ok:
            caps += ["USER", "SASL PLAIN"]
        caps += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if (
            self.state is State.AUTHORIZATION
            and self.config.stls
            and not self.session.tls_active
        ):
            caps.append("STLS")
        caps.append(f"IMPLEMENTATION {self.config.implementation}")
        return caps

    def dispatch(self, name: str, args: bytes) -> None:
        """Run one parsed command in the current state.

        @param name: the upper-case keyword.
        @param args: the rest of the line after one space (may be empty).
        @raise ProtocolError: for an unknown command, a command not valid
            in this state, or bad arguments.
        """
        method = TRANSITIONS.get((self.state, name))
        if method is None:
            if name in COMMANDS:
                raise ProtocolError(WRONG_STATE, f"{name} in {self.state.value}")
            raise ProtocolError(UNKNOWN_COMMAND, "unknown command")
        getattr(self, method)(args)

    # Internals.

    def _answering(self, kind: type[_E]) -> _E:
        # After close() (a timeout while the adapter was busy) answers are
        # taken and dropped: the callers return at once when CLOSED.
        pending = self._pending
        if not isinstance(pending, kind):
            raise RuntimeError(f"no {kind.__name__} is pending")
        self._pending = None
        return pending

    def _continue(self) -> list[Event]:
        self._process()
        return self._take_events()

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _set_closed(self, reason: str) -> None:
        self.state = State.CLOSED
        self._buffer.clear()
        self._events.append(CloseRequested(reason))

    def _reply(self, reply: bytes, body: bytes = b"", end: bytes = b"") -> None:
        if self.state is State.CLOSED:
            return
        self._out.append(reply)
        if body:
            self._out.append(body)
        if end:
            self._out.append(end)
        if reply.startswith(b"-"):
            self._errors += 1
            reason = reply[5:].decode("ascii", "replace").strip()
            self._events.append(Refused(reply, reason))
            if self._errors >= self.config.max_errors:
                self._out.append(TOO_MANY_ERRORS)
                self._set_closed("too many errors")
        else:
            self._errors = 0

    def _request(self, event: Event) -> None:
        self._pending = event
        self._events.append(event)

    def _process(self) -> None:
        while (
            self._pending is None
            and not self._held
            and self.state not in (State.CLOSED, State.STARTING_TLS)
        ):
            limit = (
                AUTH_LINE_LIMIT
                if self.state is State.AUTH_CONTINUE
                else COMMAND_LINE_LIMIT
            )
            nl = self._buffer.find(b"\n", 0, limit)
            if nl < 0:
                if len(self._buffer) < limit:
                    return
                # Too long: drop it up to its end (or all we have so far).
                end = self._buffer.find(b"\n", limit)
                del self._buffer[: len(self._buffer) if end < 0 else end + 1]
                if not self._discarding:
                    self._line_too_long()
                self._discarding = end < 0
                continue
            line = bytes(self._buffer[:nl])
            del self._buffer[: nl + 1]
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            self.commands += 1
            self._line(line)
        if (self._pending is not None or self._held) and len(
            self._buffer
        ) > PIPELINE_LIMIT:
            self._out.append(PIPELINE_OVERFLOW)
            self._set_closed("too much pipelined input")

    def _line_too_long(self) -> None:
        if self.state is State.AUTH_CONTINUE:
            self.state = State.AUTHORIZATION
        self._reply(LINE_TOO_LONG)

    def _line(self, line: bytes) -> None:
        if self.state is State.AUTH_CONTINUE:
            self.state = State.AUTHORIZATION
            try:
                self._plain_response(line)
            except ProtocolError as e:
                self._reply(e.reply)
            return
        name, _, args = line.partition(b" ")
        try:
            keyword = name.decode("ascii").upper()
        except UnicodeDecodeError:
            self._user_name = None
            self._reply(UNKNOWN_COMMAND)
            return
        if keyword != "PASS":
            self._user_name = None
        try:
            self.dispatch(keyword, args)
        except ProtocolError as e:
            self._reply(e.reply)

    # Argument helpers.

    def _number(self, arg: bytes) -> int:
        """A message number: 1 to the listing's length, not deleted."""
        assert self._maildrop is not None
        if not arg.isdigit() or len(arg) > 10:
            raise ProtocolError(BAD_ARGUMENTS, "message number is not a number")
        n = int(arg)
        if not 1 <= n <= len(self._maildrop.listing):
            raise ProtocolError(NO_SUCH_MESSAGE, f"no message {n}")
        if n - 1 in self._maildrop.deleted:
            raise ProtocolError(MESSAGE_DELETED, f"message {n} is deleted")
        return n

    def _words(self, args: bytes, least: int, most: int) -> list[bytes]:
        words = args.split(b" ") if args else []
        if not least <= len(words) <= most or b"" in words:
            raise ProtocolError(BAD_ARGUMENTS, "wrong number of arguments")
        return words

    def _auth_allowed(self) -> None:
        if not (self.session.tls_active or self.config.plaintext_auth):
            raise ProtocolError(PLAINTEXT_REFUSED, "login before TLS")

    # AUTHORIZATION commands (RFC 1939 §4, §7; RFC 5034; RFC 2595).

    def _user(self, args: bytes) -> None:
        self._auth_allowed()
        if not args:
            raise ProtocolError(BAD_ARGUMENTS, "USER without a name")
        self._user_name = args
        self._reply(ok("Send PASS"))

    def _capa(self, args: bytes) -> None:
        self._words(args, 0, 0)
        body = "".join(f"{c}\r\n" for c in self.capabilities())
        self._reply(ok("Capability list follows") + body.encode() + b".\r\n")

    def _quit(self, args: bytes) -> None:
        if self.state is State.TRANSACTION:
            assert self._maildrop is not None
            self.state = State.UPDATE
            self._request(UpdateRequested(tuple(sorted(self._maildrop.deleted))))
            return
        self._out.append(ok(f"{self.config.hostname} POP3 signing off"))
        self._set_closed("QUIT")

    def _stls(self, args: bytes) -> None:
        self._words(args, 0, 0)
        if self.session.tls_active:
            raise ProtocolError(TLS_ACTIVE)
        if not self.config.stls:
            raise ProtocolError(TLS_UNAVAILABLE)
        self._reply(ok("Begin TLS negotiation"))
        self.state = State.STARTING_TLS
        self._buffer.clear()
        self._events.append(TLSRequested())

    def _apop(self, args: bytes) -> None:
        # Passwords are stored only as hashes, so the shared secret APOP
        # needs is not known: APOP is not offered (RFC 1939 §7 makes it
        # optional; the greeting has no timestamp).
        raise ProtocolError(UNKNOWN_COMMAND, "APOP not offered")

    def _pass(self, args: bytes) -> None:
        self._auth_allowed()
        user, self._user_name = self._user_name, None
        if user is None:
            raise ProtocolError(NEED_USER, "PASS without USER")
        self._request(LoginRequested(user, args, "USER"))

    def _auth(self, args: bytes) -> None:
        words = args.split(b" ") if args else []
        if not words:
            # The mechanism list (RFC 1734 style; clients probe with it).
            self._reply(ok("Supported mechanisms follow") + b"PLAIN\r\n.\r\n")
            return
        if len(words) > 2 or any(not w for w in words):
            raise ProtocolError(BAD_ARGUMENTS, "wrong number of arguments")
        if words[0].upper() != b"PLAIN":
            raise ProtocolError(UNKNOWN_MECHANISM, "unknown mechanism")
        self._auth_allowed()
        if len(words) == 2:
            # RFC 5034 §4: "=" is an empty initial response.
            self._plain_response(b"" if words[1] == b"=" else words[1])
            return
        self._out.append(b"+ \r\n")
        self.state = State.AUTH_CONTINUE

    def _plain_response(self, line: bytes) -> None:
        if line == b"*":
            raise ProtocolError(AUTH_CANCELLED)
        try:
            decoded = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(BAD_BASE64, "bad base64 in AUTH PLAIN") from None
        parts = decoded.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise ProtocolError(BAD_PLAIN, "malformed PLAIN message")
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            raise ProtocolError(AUTHZ_REFUSED, "authorization identity differs")
        self._request(LoginRequested(authcid, password, "PLAIN"))

    # TRANSACTION commands (RFC 1939 §5, §7).

    def _stat(self, args: bytes) -> None:
        self._words(args, 0, 0)
        drop = self._maildrop
        assert drop is not None
        count = len(drop.listing) - len(drop.deleted)
        self._reply(ok(f"{count} {drop.size}"))

    def _list(self, args: bytes) -> None:
        drop = self._maildrop
        assert drop is not None
        listed = self._listing(args, drop.listing.sizes, "size_lines")
        if listed is not None:
            count, lines = listed
            self._reply(ok(f"{count} messages ({drop.size} octets)") + lines)

    def _uidl(self, args: bytes) -> None:
        drop = self._maildrop
        assert drop is not None
        listed = self._listing(args, drop.listing.uidls, "uidl_lines")
        if listed is not None:
            self._reply(ok("Unique-ID listing follows") + listed[1])

    def _listing(
        self, args: bytes, values: Sequence[int] | Sequence[str], whole: str
    ) -> tuple[int, bytes] | None:
        """LIST or UIDL: with an argument, reply with that message's line
        and return None; without, return the count and the lines (with the
        terminating ``.``) of every message not deleted (the listing's
        C{whole} attribute when none is)."""
        words = self._words(args, 0, 1)
        drop = self._maildrop
        assert drop is not None
        if words:
            n = self._number(words[0])
            self._reply(ok(f"{n} {values[n - 1]}"))
            return None
        deleted = drop.deleted
        if not deleted:
            lines: bytes = getattr(drop.listing, whole)
            return len(values), lines
        return len(values) - len(deleted), _format_lines(values, deleted)

    def _retr(self, args: bytes) -> None:
        [arg] = self._words(args, 1, 1)
        n = self._number(arg)
        self._request(MessageRequested(n - 1, None))

    def _top(self, args: bytes) -> None:
        arg, count = self._words(args, 2, 2)
        n = self._number(arg)
        if not count.isdigit() or len(count) > 10:
            raise ProtocolError(BAD_ARGUMENTS, "line count is not a number")
        self._request(MessageRequested(n - 1, int(count)))

    def _dele(self, args: bytes) -> None:
        [arg] = self._words(args, 1, 1)
        n = self._number(arg)
        drop = self._maildrop
        assert drop is not None
        drop.deleted.add(n - 1)
        drop.size -= drop.listing.sizes[n - 1]
        self._reply(ok(f"Message {n} deleted"))

    def _noop(self, args: bytes) -> None:
        self._words(args, 0, 0)
        self._reply(ok())

    def _rset(self, args: bytes) -> None:
        self._words(args, 0, 0)
        drop = self._maildrop
        assert drop is not None
        drop.deleted.clear()
        drop.size = drop.listing.total
        self._reply(ok(f"{len(drop.listing)} messages ({drop.size} octets)"))
