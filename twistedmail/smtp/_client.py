# -*- test-case-name: tests.test_smtp_client -*-
"""The ESMTP client as a sans-I/O machine (the relay step: MTA client → peer).

L{ClientMachine} takes the server's bytes and returns events (bytes to
write, "start TLS now", results); it never touches sockets or clocks.
L{twistedmail.smtp.client} drives it over TCP and keeps its timers.

States (L{State}):

  - C{GREETING}: waiting for the 220 banner (any other reply: the host fails).
  - C{EHLO} / C{HELO}: EHLO, falling back to HELO on 500/502 (RFC 5321
    §3.2); a 4xx or 5xx otherwise fails the host.
  - C{STARTTLS}: sent STARTTLS (RFC 3207); on 220 the adapter starts TLS
    (C{TLS}), then EHLO again.  Policy "opportunistic" goes on in plain text
    only when STARTTLS is not offered; "required"/"verify" fail the host.
  - C{AUTH}: AUTH PLAIN or LOGIN (RFC 4954) when credentials are set, only
    over TLS unless allowed in plain text.
  - C{READY}: the session is up; L{ClientMachine.send_message} starts a
    transaction (C{TRANSACTION}); when it ends the machine is C{READY} again,
    so one connection carries many messages.
  - C{QUIT}, C{CLOSED}: after QUIT; C{FAILED}: the session broke.

A transaction pipelines MAIL, every RCPT and DATA in one write when the
server offers PIPELINING (RFC 2920 §3.1), else one command per reply.  Per
recipient, the result is the RCPT refusal or the reply after the final dot.

Limits: a reply line is at most L{REPLY_LINE_LIMIT} octets and a reply at
most L{REPLY_LINES_LIMIT} lines; beyond either, or on anything that is not
a reply, the session fails with a temporary error, and the buffer never
grows past the limit (a 1 MB line costs no more than 4 KiB).
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import functools
import re
from collections import deque
from dataclasses import dataclass, field, replace
from email.generator import BytesGenerator
from email.message import Message
from enum import Enum
from io import BytesIO

from twistedmail.address import Address, AddressError
from twistedmail.replies import Reply, TemporaryError
from twistedmail.smtp._parser import xtext_encode

__all__ = [
    "REPLY_LINES_LIMIT",
    "REPLY_LINE_LIMIT",
    "ClientMachine",
    "ClientOptions",
    "ClientProtocolError",
    "Closed",
    "ConversionError",
    "Credentials",
    "DeliveryResult",
    "Event",
    "Extensions",
    "HostFailure",
    "OutboundMessage",
    "OutboundRecipient",
    "RecipientResult",
    "ReplyParser",
    "SendBody",
    "SendCommands",
    "ServerReply",
    "SessionFailed",
    "SessionReady",
    "StartTLS",
    "State",
    "TransactionDone",
    "dot_stuff",
    "normalize_line_endings",
    "to_seven_bit",
]

#: RFC 5321 §4.5.3.1.5 allows reply lines of 512 octets; real servers send
#: longer ones, so we accept up to 4096 and call anything longer garbage.
REPLY_LINE_LIMIT = 4096
#: Lines in one multiline reply (EHLO replies have a few dozen at most).
REPLY_LINES_LIMIT = 256

TLSPolicy = str  # "none" | "opportunistic" | "required" | "verify" | "implicit"

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|\r?\n|$)")
_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")


class ClientProtocolError(Exception):
    """The server sent something that is not an SMTP reply (or too much)."""


class ConversionError(Exception):
    """An 8-bit message cannot be made 7-bit (RFC 6152 §3)."""


class HostFailure(TemporaryError):
    """This host cannot take mail now: try the next MX host, then retry.

    Raised for a refused or timed-out connection, a greeting other than
    220, a TLS failure or a refused EHLO/HELO/AUTH.  C{reply} is ours or the
    server's (a 5xx greeting keeps its code; it is still a host failure).
    """


@dataclass(frozen=True)
class ServerReply:
    """One complete reply from the server.

    @ivar code: the reply code.
    @ivar lines: the text of each line (after ``ddd-`` / ``ddd ``).
    """

    code: int
    lines: tuple[str, ...]

    def to_reply(self) -> Reply:
        """As a L{Reply}: enhanced status code split off, lines joined."""
        text = " ".join(line.strip() for line in self.lines).strip()
        status = ""
        m = _STATUS.match(text)
        if m and m.group(1) == str(self.code)[0]:
            status = text[: m.end()].strip()
            text = text[m.end() :].strip()
            # Multiline replies repeat the status on every line.
            text = text.replace(f" {status} ", " ")
        return Reply(self.code, status, text or "(no text)")


class ReplyParser:
    """Bytes from the server to L{ServerReply} values (RFC 5321 §4.2).

    Memory stays bounded: at most one line (L{REPLY_LINE_LIMIT}) is buffered.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._code: bytes | None = None
        self._lines: list[str] = []

    @property
    def buffered(self) -> int:
        """Octets held waiting for the end of a line (at most the limit)."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget buffered bytes (after STARTTLS, RFC 3207 §4.2)."""
        self.__init__()  # type: ignore[misc]

    def feed(self, data: bytes) -> list[ServerReply]:
        """Take bytes; return the replies they complete.

        @raise ClientProtocolError: on a line too long, too many lines, or
            anything that is not a reply line.
        """
        replies: list[ServerReply] = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > REPLY_LINE_LIMIT:
                    self._buffer = b""
                    raise ClientProtocolError(
                        f"reply line longer than {REPLY_LINE_LIMIT} octets"
                    )
                return replies
            if end > REPLY_LINE_LIMIT:
                self._buffer = b""
                raise ClientProtocolError(
                    f"reply line longer than {REPLY_LINE_LIMIT} octets"
                )
            line = self._buffer[:end].rstrip(b"\r")
            self._buffer = self._buffer[end + 1 :]
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)

    def _line(self, line: bytes) -> ServerReply | None:
        m = _REPLY_LINE.match(line)
        if not m:
            raise ClientProtocolError(f"not an SMTP reply: {line[:80]!r}")
        code = m.group(1)
        if self._code is not None and code != self._code:
            raise ClientProtocolError("reply code changed inside a multiline reply")
        self._code = code
        text = line[4:].decode("utf-8", "replace")
        self._lines.append(text)
        if len(self._lines) > REPLY_LINES_LIMIT:
            raise ClientProtocolError(f"reply longer than {REPLY_LINES_LIMIT} lines")
        if line[3:4] == b"-":
            return None
        reply = ServerReply(int(code), tuple(self._lines))
        self._code, self._lines = None, []
        return reply


@dataclass(frozen=True)
class Extensions:
    """What the server's EHLO reply offers (RFC 5321 §4.1.1.1).

    @ivar keywords: each extension keyword (upper case) to its parameters.
    """

    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_ehlo(cls, reply: ServerReply) -> Extensions:
        """Parse the lines after the first of a 250 EHLO reply."""
        keywords: dict[str, tuple[str, ...]] = {}
        for line in reply.lines[1:]:
            words = line.split()
            if words:
                keywords[words[0].upper()] = tuple(words[1:])
        return cls(keywords)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.keywords

    @property
    def size_limit(self) -> int | None:
        """The SIZE limit (RFC 1870); None when not offered or unlimited."""
        params = self.keywords.get("SIZE")
        if params and params[0].isdigit() and int(params[0]) > 0:
            return int(params[0])
        return None

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        """AUTH mechanisms offered, upper case."""
        return tuple(m.upper() for m in self.keywords.get("AUTH", ()))


@dataclass(frozen=True)
class Credentials:
    """A user name and password for AUTH PLAIN/LOGIN with a smarthost."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials({self.username!r}, <hidden>)"


@dataclass(frozen=True)
class ClientOptions:
    """How the machine behaves.

    @ivar helo_name: our name in EHLO/HELO.
    @ivar tls: "none", "opportunistic", "required", "verify" or "implicit".
    @ivar credentials: for AUTH, or None.
    @ivar allow_plaintext_auth: send AUTH without TLS.
    @ivar chunking: use BDAT when the server offers CHUNKING.
    """

    helo_name: str
    tls: TLSPolicy = "opportunistic"
    credentials: Credentials | None = None
    allow_plaintext_auth: bool = False
    chunking: bool = False


@dataclass(frozen=True)
class OutboundRecipient:
    """One recipient to deliver to, with its DSN parameters (RFC 3461 §4).

    @ivar notify: NOTIFY values (``SUCCESS``, ``FAILURE``, ``DELAY`` or
        ``NEVER``); empty when not given.
    @ivar orcpt: ORCPT as ``addr-type;xtext``, or None.
    """

    address: str
    notify: tuple[str, ...] = ()
    orcpt: str | None = None


@dataclass(frozen=True)
class OutboundMessage:
    """One message and its envelope.

    @ivar sender: the reverse path, ``""`` for the null sender.
    @ivar data: the message as stored (any line endings; CRLF is sent).
    @ivar ret: RFC 3461 RET (``FULL`` or ``HDRS``) or None.
    @ivar envid: RFC 3461 ENVID (plain text; xtext-encoded on the wire).
    """

    sender: str
    recipients: tuple[OutboundRecipient, ...]
    data: bytes
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RecipientResult:
    """What happened to one recipient.

    @ivar reply: the server's reply about it (the RCPT refusal, or the reply
        after the message), or ours when we did not get that far.
    """

    recipient: OutboundRecipient
    reply: Reply

    @property
    def delivered(self) -> bool:
        """The server took responsibility (2xx after the message)."""
        return 200 <= self.reply.code < 300

    @property
    def permanent(self) -> bool:
        """Refused for good (5xx): bounce."""
        return self.reply.is_permanent

    @property
    def temporary(self) -> bool:
        """Not delivered now (4xx or a broken session): retry."""
        return not self.delivered and not self.permanent


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one transaction, per recipient.

    @ivar host: the server's host name (the MX name) and C{address} its IP.
    @ivar dsn: the server offered DSN, so the DSN parameters were passed on
        (when false, a NOTIFY=SUCCESS recipient is due a "relayed" DSN).
    @ivar tls: the transaction ran over TLS.
    @ivar session_error: why the session broke during the transaction
        (timeout, connection lost, garbage), or None.
    """

    recipients: tuple[RecipientResult, ...]
    host: str = ""
    address: str = ""
    dsn: bool = False
    tls: bool = False
    session_error: str | None = None

    @property
    def delivered(self) -> tuple[RecipientResult, ...]:
        """Recipients the server accepted the message for."""
        return tuple(r for r in self.recipients if r.delivered)

    @property
    def temporary(self) -> tuple[RecipientResult, ...]:
        """Recipients to retry."""
        return tuple(r for r in self.recipients if r.temporary)

    @property
    def permanent(self) -> tuple[RecipientResult, ...]:
        """Recipients to bounce."""
        return tuple(r for r in self.recipients if r.permanent)


# Events -------------------------------------------------------------------


@dataclass(frozen=True)
class SendCommands:
    """Write these command bytes."""

    data: bytes


@dataclass(frozen=True)
class SendBody:
    """Write the message text (dot-stuffed with its final dot, or a BDAT
    chunk); may be large, so the adapter writes it in blocks."""

    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """The server said 220 to STARTTLS: start the TLS handshake now, then
    call L{ClientMachine.tls_established}."""


@dataclass(frozen=True)
class SessionReady:
    """The session is up; messages may be sent."""

    extensions: Extensions


@dataclass(frozen=True)
class TransactionDone:
    """A message's transaction is over."""

    result: DeliveryResult


@dataclass(frozen=True)
class SessionFailed:
    """The session is broken; close the connection."""

    error: TemporaryError


@dataclass(frozen=True)
class Closed:
    """QUIT is done; close the connection."""


Event = (
    SendCommands
    | SendBody
    | StartTLS
    | SessionReady
    | TransactionDone
    | SessionFailed
    | Closed
)


class State(Enum):
    """The session's states (see the module docstring)."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    TLS = "tls"
    AUTH = "auth"
    READY = "ready"
    TRANSACTION = "transaction"
    QUIT = "quit"
    CLOSED = "closed"
    FAILED = "failed"


# Replies of our own (RFC 3463 codes).
CONNECTION_LOST = Reply(451, "4.4.2", "Connection lost")
TIMED_OUT = Reply(451, "4.4.2", "Timed out waiting for the server")
BAD_REPLY = Reply(451, "4.5.0", "The server sent an invalid reply")
TLS_FAILED = Reply(451, "4.7.5", "TLS handshake failed")
TLS_NOT_OFFERED = Reply(451, "4.7.10", "TLS required but STARTTLS not offered")
AUTH_NOT_POSSIBLE = Reply(451, "4.7.8", "Cannot authenticate to the relay")
TOO_BIG = Reply(552, "5.3.4", "Message too big for the destination")
NEEDS_SMTPUTF8 = Reply(
    553, "5.6.7", "Non-ASCII address and the destination lacks SMTPUTF8"
)
NEEDS_SMTPUTF8_HEADERS = Reply(
    554, "5.6.9", "UTF-8 header fields and the destination lacks SMTPUTF8"
)
CONVERSION_FAILED = Reply(554, "5.6.3", "8-bit message cannot be converted to 7-bit")
BAD_ADDRESS = Reply(553, "5.1.3", "Invalid address")


@dataclass
class _Transaction:
    message: OutboundMessage
    body: bytes
    mail: bytes
    rcpts: list[tuple[int, bytes]]  # (index into recipients, command)
    results: dict[int, Reply]
    accepted: list[int] = field(default_factory=list)
    mail_reply: Reply | None = None
    pipelined: bool = False
    bdat: bool = False
    next_rcpt: int = 0
    rcpt_replies: int = 0
    open: bool = False  # MAIL accepted and no final reply yet (RSET needed)


class ClientMachine:
    """The client side of one SMTP session (see the module docstring).

    @param options: behaviour (HELO name, TLS policy, AUTH, BDAT).
    @param tls_active: the connection is TLS from the start (implicit TLS).
    """

    def __init__(self, options: ClientOptions, *, tls_active: bool = False) -> None:
        self.options = options
        self.state = State.GREETING
        self.tls_active = tls_active
        self.extensions = Extensions()
        self.replies_received = 0
        self._parser = ReplyParser()
        self._expect: deque[str] = deque(["greeting"])
        self._transaction: _Transaction | None = None
        self._needs_rset = False
        self._auth_steps: list[bytes] = []

    # What the adapter asks -------------------------------------------------

    @property
    def waiting_for(self) -> str | None:
        """Which reply the machine waits for (names the timeout that
        applies): greeting, command, mail, rcpt, data_init, data_done."""
        if self.state is State.TLS:
            return "command"  # the TLS handshake
        if not self._expect:
            return None
        head = self._expect[0]
        return {
            "greeting": "greeting",
            "mail": "mail",
            "rcpt": "rcpt",
            "data": "data_init",
            "dot": "data_done",
            "bdat": "data_done",
        }.get(head, "command")

    # Inputs ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the server."""
        if self.state in (State.CLOSED, State.FAILED, State.TLS):
            return []
        try:
            replies = self._parser.feed(data)
        except ClientProtocolError as e:
            return self._fail(BAD_REPLY, f"protocol error: {e}")
        events: list[Event] = []
        for reply in replies:
            if self.state in (State.CLOSED, State.FAILED, State.TLS):
                break
            self.replies_received += 1
            if not self._expect:
                events += self._fail(BAD_REPLY, f"unexpected reply {reply.code}")
                break
            events += self._reply(self._expect.popleft(), reply)
        return events

    def tls_established(self) -> list[Event]:
        """The TLS handshake after STARTTLS is done: EHLO again."""
        if self.state is not State.TLS:
            return []
        self.tls_active = True
        self.state = State.EHLO
        self.extensions = Extensions()
        return self._command("ehlo", b"EHLO " + self._helo_name() + b"\r\n")

    def connection_lost(self, reason: str) -> list[Event]:
        """The connection closed (or failed, C{reason} says how)."""
        if self.state in (State.CLOSED, State.FAILED):
            return []
        if self.state is State.QUIT:
            self.state = State.CLOSED
            return [Closed()]
        if self.state is State.TLS:
            return self._fail(TLS_FAILED, f"TLS handshake failed: {reason}")
        return self._fail(CONNECTION_LOST, f"connection lost: {reason}")

    def timed_out(self) -> list[Event]:
        """The adapter's timer for L{waiting_for} (or a data block) ran out."""
        if self.state in (State.CLOSED, State.FAILED):
            return []
        if self.state is State.QUIT:
            self.state = State.CLOSED
            return [Closed()]
        what = self.waiting_for or "the server"
        if self.state is State.TLS:
            return self._fail(TLS_FAILED, "TLS handshake timed out")
        return self._fail(TIMED_OUT, f"timed out waiting for {what}")

    def send_message(self, message: OutboundMessage) -> list[Event]:
        """Start a transaction for C{message} (only in C{READY}).

        @raise RuntimeError: when not READY.
        """
        if self.state is not State.READY:
            raise RuntimeError(f"cannot send in state {self.state.name}")
        planned = _plan(message, self.extensions, self.options.chunking)
        if isinstance(planned, DeliveryResult):
            return [TransactionDone(self._finish_result(planned))]
        self._transaction = t = planned
        self.state = State.TRANSACTION
        out = b""
        if self._needs_rset:
            self._needs_rset = False
            out += b"RSET\r\n"
            self._expect.append("rset")
        t.pipelined = "PIPELINING" in self.extensions
        out += t.mail
        self._expect.append("mail")
        if t.pipelined:
            for _, cmd in t.rcpts:
                out += cmd
                self._expect.append("rcpt")
            t.next_rcpt = len(t.rcpts)
            if not t.bdat:
                out += b"DATA\r\n"
                self._expect.append("data")
        return [SendCommands(out)]

    def quit(self) -> list[Event]:
        """Say QUIT (in C{READY}); a no-op once closed or failed."""
        if self.state is State.READY:
            self.state = State.QUIT
            return self._command("quit", b"QUIT\r\n")
        if self.state in (State.CLOSED, State.FAILED, State.QUIT):
            return []
        raise RuntimeError(f"cannot quit in state {self.state.name}")

    # Replies ---------------------------------------------------------------

    def _reply(self, kind: str, reply: ServerReply) -> list[Event]:
        handler = getattr(self, f"_on_{kind}")
        events: list[Event] = handler(reply)
        if (
            reply.code == 421
            and self.state not in (State.FAILED, State.CLOSED)
            and kind != "quit"
        ):
            # The server is closing the channel (RFC 5321 §3.8).
            events += self._fail(reply.to_reply(), "server closing (421)")
        return events

    def _on_greeting(self, reply: ServerReply) -> list[Event]:
        if reply.code != 220:
            self.state = State.FAILED
            r = reply.to_reply()
            return [
                SendCommands(b"QUIT\r\n"),
                SessionFailed(HostFailure(r, f"greeting refused: {r}")),
            ]
        self.state = State.EHLO
        return self._command("ehlo", b"EHLO " + self._helo_name() + b"\r\n")

    def _on_ehlo(self, reply: ServerReply) -> list[Event]:
        if reply.code == 250:
            self.extensions = Extensions.from_ehlo(reply)
            return self._after_hello()
        if reply.code in (500, 502) and not self.tls_active:
            self.state = State.HELO
            return self._command("helo", b"HELO " + self._helo_name() + b"\r\n")
        return self._host_failed(reply, "EHLO refused")

    def _on_helo(self, reply: ServerReply) -> list[Event]:
        if reply.code == 250:
            self.extensions = Extensions()
            return self._after_hello()
        return self._host_failed(reply, "HELO refused")

    def _after_hello(self) -> list[Event]:
        policy = self.options.tls
        if not self.tls_active and policy != "none":
            if "STARTTLS" in self.extensions:
                self.state = State.STARTTLS
                return self._command("starttls", b"STARTTLS\r\n")
            if policy != "opportunistic":
                return self._fail(
                    HostFailure(TLS_NOT_OFFERED), "STARTTLS not offered", quit=True
                )
        if self.options.credentials is not None:
            return self._start_auth()
        return self._ready()

    def _on_starttls(self, reply: ServerReply) -> list[Event]:
        if reply.code != 220:
            return self._host_failed(reply, "STARTTLS refused")
        self.state = State.TLS
        # Anything the server sent after its 220 came before TLS: drop it.
        self._parser.reset()
        return [StartTLS()]

    def _start_auth(self) -> list[Event]:
        creds = self.options.credentials
        assert creds is not None
        if not self.tls_active and not self.options.allow_plaintext_auth:
            return self._fail(
                HostFailure(AUTH_NOT_POSSIBLE), "AUTH needs TLS", quit=True
            )
        mechanisms = self.extensions.auth_mechanisms
        user, password = creds.username.encode(), creds.password.encode()
        self.state = State.AUTH
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            self._auth_steps = []
            return self._command("auth", b"AUTH PLAIN " + token + b"\r\n")
        if "LOGIN" in mechanisms:
            self._auth_steps = [base64.b64encode(user), base64.b64encode(password)]
            return self._command("auth", b"AUTH LOGIN\r\n")
        return self._fail(
            HostFailure(AUTH_NOT_POSSIBLE),
            f"no usable AUTH mechanism (offered: {' '.join(mechanisms) or 'none'})",
            quit=True,
        )

    def _on_auth(self, reply: ServerReply) -> list[Event]:
        if reply.code == 235:
            self._auth_steps = []
            return self._ready()
        if reply.code == 334 and self._auth_steps:
            return self._command("auth", self._auth_steps.pop(0) + b"\r\n")
        if reply.code == 334:
            # A challenge we have no answer to: cancel (RFC 4954 §4).
            return self._command("auth", b"*\r\n")
        return self._host_failed(reply, "AUTH refused")

    def _ready(self) -> list[Event]:
        self.state = State.READY
        return [SessionReady(self.extensions)]

    def _on_rset(self, reply: ServerReply) -> list[Event]:
        return []

    def _on_quit(self, reply: ServerReply) -> list[Event]:
        self.state = State.CLOSED
        return [Closed()]

    def _on_mail(self, reply: ServerReply) -> list[Event]:
        t = self._current()
        t.mail_reply = reply.to_reply()
        if reply.code // 100 == 2:
            t.open = True
            if not t.pipelined:
                return self._next_rcpt(t)
            return []
        if not t.pipelined:
            return self._done()
        return []

    def _next_rcpt(self, t: _Transaction) -> list[Event]:
        if t.next_rcpt < len(t.rcpts):
            cmd = t.rcpts[t.next_rcpt][1]
            t.next_rcpt += 1
            return self._command("rcpt", cmd)
        return self._after_rcpts(t)

    def _on_rcpt(self, reply: ServerReply) -> list[Event]:
        t = self._current()
        index = t.rcpts[t.rcpt_replies][0]
        t.rcpt_replies += 1
        mail_ok = t.mail_reply is not None and t.mail_reply.code // 100 == 2
        if reply.code // 100 == 2 and mail_ok:
            t.accepted.append(index)
        elif mail_ok:
            t.results[index] = reply.to_reply()
        if t.pipelined:
            if t.bdat and t.rcpt_replies == len(t.rcpts):
                return self._after_rcpts(t)
            return []
        if not mail_ok:
            return self._done()
        return self._next_rcpt(t)

    def _after_rcpts(self, t: _Transaction) -> list[Event]:
        """All RCPT replies are in (no pipelined DATA)."""
        mail_ok = t.mail_reply is not None and t.mail_reply.code // 100 == 2
        if not mail_ok or not t.accepted:
            return self._done()
        if t.bdat:
            self._expect.append("bdat")
            return [
                SendCommands(b"BDAT %d LAST\r\n" % len(t.body)),
                SendBody(t.body),
            ]
        return self._command("data", b"DATA\r\n")

    def _on_data(self, reply: ServerReply) -> list[Event]:
        t = self._current()
        if reply.code == 354:
            if t.accepted:
                self._expect.append("dot")
                return [SendBody(t.body)]
            # A server that says 354 with no recipient accepted: send an
            # empty message it will refuse (RFC 2920 §3.1), then RSET later.
            self._expect.append("discard")
            return [SendCommands(b".\r\n")]
        r = reply.to_reply()
        for index in t.accepted:
            t.results[index] = r
        t.accepted = []
        return self._done()

    def _on_discard(self, reply: ServerReply) -> list[Event]:
        return self._done()

    def _on_dot(self, reply: ServerReply) -> list[Event]:
        t = self._current()
        r = reply.to_reply()
        for index in t.accepted:
            t.results[index] = r
        t.open = False
        return self._done()

    _on_bdat = _on_dot

    def _done(self, session_error: str | None = None) -> list[Event]:
        t = self._current()
        self._transaction = None
        self.state = State.READY
        self._needs_rset = t.open
        mail_reply = t.mail_reply
        message = t.message
        results = []
        for i, rcpt in enumerate(message.recipients):
            reply = t.results.get(i)
            if reply is None:
                if mail_reply is not None and mail_reply.code // 100 != 2:
                    reply = mail_reply
                else:
                    reply = Reply(451, "4.3.0", "No reply for this recipient")
            results.append(RecipientResult(rcpt, reply))
        result = DeliveryResult(tuple(results), session_error=session_error)
        return [TransactionDone(self._finish_result(result))]

    def _finish_result(self, result: DeliveryResult) -> DeliveryResult:
        return replace(result, dsn="DSN" in self.extensions, tls=self.tls_active)

    # Helpers ---------------------------------------------------------------

    def _current(self) -> _Transaction:
        if self._transaction is None:
            raise ClientProtocolError("reply with no transaction")
        return self._transaction

    def _helo_name(self) -> bytes:
        return self.options.helo_name.encode("idna")

    def _command(self, kind: str, data: bytes) -> list[Event]:
        self._expect.append(kind)
        return [SendCommands(data)]

    def _host_failed(self, reply: ServerReply, what: str) -> list[Event]:
        r = reply.to_reply()
        return self._fail(HostFailure(r, f"{what}: {r}"), what, quit=reply.code != 421)

    def _fail(
        self, why: Reply | TemporaryError, reason: str, *, quit: bool = False
    ) -> list[Event]:
        """Break the session; a transaction in flight ends temporary."""
        error = why if isinstance(why, TemporaryError) else None
        reply = why.reply if isinstance(why, TemporaryError) else why
        if error is None:
            error = HostFailure(reply, reason)
        events: list[Event] = []
        t = self._transaction
        if t is not None:
            # Nothing in flight counts as delivered: only a reply after the
            # final dot does, and that reply has not come.
            lost = replace(reply, text=f"{reply.text} ({reason})")
            if lost.code // 100 != 4:
                lost = replace(lost, code=451)
            for i in range(len(t.message.recipients)):
                if i not in t.results or i in t.accepted:
                    t.results[i] = lost
            t.accepted = []
            t.open = False
            events += self._done(session_error=reason)
        self.state = State.FAILED
        self._expect.clear()
        if quit:
            events.append(SendCommands(b"QUIT\r\n"))
        events.append(SessionFailed(error))
        return events


# Message preparation (pure) -------------------------------------------------


#: Every byte but CR and LF: deleted to leave a text's line ends in order.
_NOT_LINE_ENDS = bytes(b for b in range(256) if b not in b"\r\n")


def normalize_line_endings(data: bytes) -> bytes:
    """Every CR, LF or CRLF becomes CRLF; a final CRLF is added if missing."""
    # Spooled mail is CRLF already.  The text is CRLF-only when its CRs and
    # LFs alternate, CR first, and each pair is adjacent (as many CRLFs as
    # pairs).  Deleting the other bytes and counting one two-byte string
    # costs less than counting CR, LF and CRLF each or a regular expression.
    ends = data.translate(None, _NOT_LINE_ENDS)
    pairs = len(ends) // 2
    if ends != b"\r\n" * pairs or data.count(b"\r\n") != pairs:
        data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def dot_stuff(data: bytes) -> bytes:
    """Dot-stuff CRLF text and add the final ``.`` (RFC 5321 §4.5.2)."""
    if data.startswith(b".") or b"\n." in data:
        return re.sub(rb"(?m)^\.", b"..", data) + b".\r\n"
    return data + b".\r\n"


def _is_8bit(data: bytes) -> bool:
    return any(b >= 0x80 for b in data) if len(data) < 64 else not data.isascii()


def to_seven_bit(data: bytes) -> bytes:
    """Convert an 8-bit message to 7-bit MIME (RFC 6152 §3).

    Text parts become quoted-printable; other leaf parts with 8-bit content
    become base64; message/rfc822 and multipart parts are walked into.

    @param data: the message, CRLF line endings.
    @return: the converted message, CRLF line endings.
    @raise ConversionError: 8-bit header fields (those need SMTPUTF8), or
        8-bit data in a part that claims base64 or quoted-printable.
    """
    head, sep, _ = data.partition(b"\r\n\r\n")
    if _is_8bit(head):
        raise ConversionError("8-bit header fields cannot be made 7-bit")
    policy = email.policy.compat32.clone(linesep="\r\n", max_line_length=0)
    msg = email.message_from_bytes(data, policy=policy)
    if msg.get("MIME-Version") is None:
        msg["MIME-Version"] = "1.0"
        if msg.get("Content-Type") is None:
            msg["Content-Type"] = "text/plain; charset=unknown-8bit"
    _convert_part(msg)
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=policy).flatten(msg)
    return normalize_line_endings(out.getvalue())


def _convert_part(part: Message) -> None:
    payload = part.get_payload()
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                _convert_part(sub)
        for edge in (part.preamble, part.epilogue):
            if edge and not edge.isascii():
                raise ConversionError("8-bit text outside the MIME parts")
        return
    # With 8-bit bytes the text comes back decoded with the part's charset
    # (or with replacement characters): either way not ASCII.
    if not isinstance(payload, str) or payload.isascii():
        return
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if cte not in ("7bit", "8bit", "binary"):
        raise ConversionError(f"8-bit data in a part that claims {cte}")
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        raise ConversionError("unreadable MIME part")
    del part["Content-Transfer-Encoding"]
    if part.get_content_maintype() == "text":
        text = raw.replace(b"\r\n", b"\n")
        encoded = binascii.b2a_qp(text, quotetabs=False, istext=True, header=False)
        part["Content-Transfer-Encoding"] = "quoted-printable"
    else:
        encoded = base64.encodebytes(raw)
        part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(encoded.decode("ascii"))


def _plan(
    message: OutboundMessage, ext: Extensions, chunking: bool
) -> _Transaction | DeliveryResult:
    """The commands and body for one transaction, or an early result."""

    def everyone(reply: Reply) -> DeliveryResult:
        return DeliveryResult(
            tuple(RecipientResult(r, reply) for r in message.recipients)
        )

    smtputf8 = "SMTPUTF8" in ext
    try:
        sender = _wire_address(message.sender) if message.sender else ""
    except AddressError as e:
        return everyone(replace(BAD_ADDRESS, text=f"Invalid sender ({e})"))
    if not sender.isascii() and not smtputf8:
        return everyone(NEEDS_SMTPUTF8)
    results: dict[int, Reply] = {}
    rcpt_addresses: list[tuple[int, str]] = []
    for i, r in enumerate(message.recipients):
        try:
            address = _wire_address(r.address)
        except AddressError as e:
            results[i] = replace(BAD_ADDRESS, text=f"Invalid recipient ({e})")
            continue
        if not address.isascii() and not smtputf8:
            results[i] = NEEDS_SMTPUTF8
            continue
        rcpt_addresses.append((i, address))
    if not rcpt_addresses:
        return DeliveryResult(
            tuple(
                RecipientResult(r, results[i]) for i, r in enumerate(message.recipients)
            )
        )
    data = normalize_line_endings(message.data)
    head = data.partition(b"\r\n\r\n")[0]
    utf8_headers = _is_8bit(head)
    use_smtputf8 = smtputf8 and (
        not sender.isascii()
        or utf8_headers
        or any(not a.isascii() for _, a in rcpt_addresses)
    )
    if utf8_headers and not smtputf8:
        return everyone(NEEDS_SMTPUTF8_HEADERS)
    eight_bit = _is_8bit(data)
    body_param = None
    if eight_bit:
        if "8BITMIME" in ext or use_smtputf8:
            body_param = "8BITMIME"
        else:
            try:
                data = to_seven_bit(data)
            except ConversionError as e:
                return everyone(
                    replace(CONVERSION_FAILED, text=f"{CONVERSION_FAILED.text}: {e}")
                )
    limit = ext.size_limit
    if limit is not None and len(data) > limit:
        return everyone(
            replace(TOO_BIG, text=f"{TOO_BIG.text} ({len(data)} > {limit} octets)")
        )
    dsn = "DSN" in ext
    params = []
    if "SIZE" in ext:
        params.append(f"SIZE={len(data)}")
    if body_param and ("8BITMIME" in ext or use_smtputf8):
        params.append(f"BODY={body_param}")
    if use_smtputf8:
        params.append("SMTPUTF8")
    if dsn and message.ret:
        params.append(f"RET={message.ret.upper()}")
    if dsn and message.envid:
        params.append(f"ENVID={xtext_encode(message.envid)}")
    mail = _line(f"MAIL FROM:<{sender}>", params)
    rcpts = []
    for i, address in rcpt_addresses:
        r = message.recipients[i]
        rparams = []
        if dsn and r.notify:
            rparams.append("NOTIFY=" + ",".join(v.upper() for v in r.notify))
        if dsn and r.orcpt:
            rparams.append(f"ORCPT={r.orcpt}")
        rcpts.append((i, _line(f"RCPT TO:<{address}>", rparams)))
    bdat = chunking and "CHUNKING" in ext
    body = data if bdat else dot_stuff(data)
    return _Transaction(
        message=message, body=body, mail=mail, rcpts=rcpts, results=results, bdat=bdat
    )


def _line(command: str, params: list[str]) -> bytes:
    return (" ".join([command, *params]) + "\r\n").encode("utf-8")


@functools.lru_cache(maxsize=4096)
def _wire_address(text: str) -> str:
    """An address as sent: domain as A-labels, local part as given.

    Cached: the same senders and recipients come back message after message
    (an address that raises is not cached and raises again).

    @raise AddressError: when it is not an address (or has CR/LF/brackets).
    """
    address = Address.parse(text, utf8=True)
    return f"{address.local}@{address.domain}"
