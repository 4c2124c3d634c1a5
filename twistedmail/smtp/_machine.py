# -*- test-case-name: tests.test_smtp_machine -*-
"""The ESMTP/LMTP session state machine (the Receive step, second stage).

Sans-I/O: L{SMTPMachine} takes the bytes the peer sent
(L{SMTPMachine.receive_data}) and returns events; decisions that need the
directory, the portal or the spool are events the adapter answers
(L{SMTPMachine.answer}).  Replies are queued as bytes and handed out by
L{SMTPMachine.data_to_send} when it is time to flush: the machine holds
replies while more pipelined commands are waiting to be read (RFC 2920 §3.1)
and releases them when it runs out of input.  It never touches sockets,
clocks or reactors.

States (L{State}):

  - C{INITIAL}: greeted; HELO, EHLO or LHLO not yet given.
  - C{READY}: greeted and introduced; no mail transaction.
  - C{MAIL}: MAIL accepted, no recipient yet.
  - C{RCPT}: at least one recipient accepted.
  - C{DATA}: reading message text after DATA (RFC 5321 §4.1.1.4).
  - C{BDAT}: reading the octets of one BDAT chunk (RFC 3030 §2).
  - C{CHUNKING}: between BDAT chunks of one message.
  - C{AUTH}: in a SASL exchange (RFC 4954 §4).
  - C{STARTING_TLS}: 220 sent to STARTTLS, waiting for the adapter to start
    TLS (RFC 3207 §4).
  - C{CLOSED}: QUIT, a fatal error or a timeout; nothing more is read.

Command transitions live in one table, L{TRANSITIONS}: (state, command type)
to the name of the method that handles it.  A pair missing from the table is
a bad sequence: L{ProtocolError} with 503 5.5.1.

Framing and limits:

  - Command lines end with CRLF only and are at most L{COMMAND_LINE_LIMIT}
    octets (RFC 5321 §4.5.3.1.4), AUTH lines L{AUTH_LINE_LIMIT} (RFC 4954
    §4).  A longer line gets one 500 reply and is discarded up to its CRLF;
    the connection stays usable.
  - DATA text lines are at most L{TEXT_LINE_LIMIT} octets (RFC 5321
    §4.5.3.1.6); a longer one fails the message (500 after the end).
  - Only <CRLF>.<CRLF> ends DATA.  A bare CR or LF in the text is either
    refused (550 5.6.0 after the end of data) or turned into CRLF, as
    configured; either way no second message can be smuggled into the first.
  - A message over the size limit is read to its end and discarded, then
    refused with 552 5.3.4 (RFC 1870 §6.3).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from twistedmail.address import Address
from twistedmail.interfaces import Envelope, Recipient
from twistedmail.replies import Reply
from twistedmail.smtp._parser import (
    AUTH_LINE_LIMIT,
    COMMAND_LINE_LIMIT,
    NOT_IMPLEMENTED,
    Auth,
    Bdat,
    Command,
    Data,
    Hello,
    Help,
    Mail,
    Noop,
    NotImplementedCommand,
    ProtocolError,
    Quit,
    Rcpt,
    Rset,
    StartTLS,
    Vrfy,
    parse_command,
)

__all__ = [
    "TEXT_LINE_LIMIT",
    "TRANSITIONS",
    "AuthRequested",
    "BodyReceived",
    "CloseRequested",
    "Event",
    "MachineConfig",
    "MailRequested",
    "MessageAborted",
    "MessageCompleted",
    "MessageStarted",
    "RcptRequested",
    "Refused",
    "SMTPMachine",
    "Session",
    "State",
    "TLSRequested",
    "VrfyRequested",
    "BAD_SEQUENCE",
    "TOO_MANY_ERRORS",
]

#: RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
TEXT_LINE_LIMIT = 1000

BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELLO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_LHLO = Reply(503, "5.5.1", "Send LHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NO_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")
TEXT_LINE_TOO_LONG = Reply(500, "5.5.2", "Message has a line longer than 1000 octets")
BARE_LINE_ENDING = Reply(
    550, "5.6.0", "Message contains a bare CR or LF; use CRLF line endings"
)
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
NO_PARAMS_AFTER_HELO = Reply(555, "5.5.4", "ESMTP parameters need EHLO")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_NOT_OFFERED = Reply(502, "5.5.1", "AUTH not available")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a transaction")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_RESPONSE = Reply(501, "5.5.2", "Cannot decode response")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
TLS_NOT_OFFERED = Reply(502, "5.5.1", "STARTTLS not available")
TLS_ACTIVE = Reply(503, "5.5.1", "TLS already active")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
LHLO_ONLY = Reply(500, "5.5.1", "This is LMTP: use LHLO")
NOT_LMTP = Reply(500, "5.5.2", "Command not recognized")
BDAT_FAILED = Reply(503, "5.5.1", "Transaction failed; send RSET")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not permitted in a BDAT transaction")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
VRFY_DISABLED = Reply(
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
OK = Reply(250, "2.0.0", "OK")
BYE = Reply(221, "2.0.0", "Bye")

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_ANY_CR_LF = re.compile(rb"[\r\n]")


class State(enum.Enum):
    """The states of an ESMTP/LMTP session (see the module docstring)."""

    INITIAL = "initial"
    READY = "ready"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    BDAT = "bdat"
    CHUNKING = "chunking"
    AUTH = "auth"
    STARTING_TLS = "starting_tls"
    CLOSED = "closed"


_COMMAND_STATES = (State.INITIAL, State.READY, State.MAIL, State.RCPT, State.CHUNKING)
_TRANSACTION_STATES = (State.MAIL, State.RCPT, State.CHUNKING)


def _build_table() -> dict[tuple[State, type], str]:
    table: dict[tuple[State, type], str] = {}
    for s in _COMMAND_STATES:
        table[s, Hello] = "_hello"
        table[s, Rset] = "_rset"
        table[s, Noop] = "_noop"
        table[s, Quit] = "_quit"
        table[s, Help] = "_help"
        table[s, Vrfy] = "_vrfy"
        table[s, Bdat] = "_bdat"
        table[s, NotImplementedCommand] = "_not_implemented"
    for s in (State.INITIAL, State.READY):
        table[s, StartTLS] = "_starttls"
    for s in (State.READY, State.MAIL, State.RCPT, State.CHUNKING):
        table[s, Auth] = "_auth"
    table[State.READY, Mail] = "_mail"
    table[State.MAIL, Rcpt] = "_rcpt"
    table[State.RCPT, Rcpt] = "_rcpt"
    table[State.MAIL, Data] = "_data"
    table[State.RCPT, Data] = "_data"
    table[State.CHUNKING, Data] = "_data"
    return table


#: (state, command type) to the handling method's name; see L{State}.
TRANSITIONS: dict[tuple[State, type], str] = _build_table()


@dataclass(frozen=True)
class MachineConfig:
    """What one listener's sessions may do.

    @ivar hostname: our name, for the greeting and EHLO reply.
    @ivar lmtp: speak LMTP (RFC 2033): LHLO, one reply per recipient.
    @ivar max_message_size: octets; advertised with SIZE (RFC 1870).
    @ivar max_recipients: recipients per transaction (RFC 5321 §4.5.3.1.8).
    @ivar max_errors: 5xx replies before 421 and disconnect.
    @ivar bare_line_endings: ``reject`` or ``normalize`` bare CR/LF in text.
    @ivar vrfy: answer VRFY through the adapter; off gives 252 2.5.0.
    @ivar starttls: offer STARTTLS (when TLS is not already active).
    @ivar auth: offer AUTH PLAIN and LOGIN at all.
    @ivar auth_plaintext: allow AUTH without TLS.
    @ivar auth_required: MAIL needs AUTH first (submission).
    """

    hostname: str = "localhost"
    lmtp: bool = False
    max_message_size: int = 35 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 20
    bare_line_endings: Literal["reject", "normalize"] = "reject"
    vrfy: bool = False
    starttls: bool = False
    auth: bool = False
    auth_plaintext: bool = False
    auth_required: bool = False


@dataclass
class Session:
    """What a session knows apart from any mail transaction.

    @ivar peer: the client's IP address.
    @ivar helo: the name given in HELO/EHLO/LHLO, or None before it.
    @ivar esmtp: the client used EHLO or LHLO (not HELO).
    @ivar tls_active: the connection is encrypted.
    @ivar auth_user: the authenticated user's address, or None.
    """

    peer: str = ""
    helo: str | None = None
    esmtp: bool = False
    tls_active: bool = False
    auth_user: str | None = None


@dataclass
class _Transaction:
    """One mail transaction: reset by RSET, EHLO and the end of a message."""

    mail: Mail
    recipients: list[Recipient] = field(default_factory=list)
    started: bool = False
    size: int = 0
    failure: Reply | None = None
    chunking: bool = False
    carry_cr: bool = False


# Events.  Requests marked "decision" stop the machine until answered.


@dataclass(frozen=True)
class MailRequested:
    """Decision: may this sender start a transaction?  Answer 250 or a refusal."""

    command: Mail


@dataclass(frozen=True)
class RcptRequested:
    """Decision: is this recipient accepted?  Answer 250 or a refusal.

    @ivar address: the recipient (bare ``<Postmaster>`` made
        ``postmaster@hostname``).
    """

    command: Rcpt
    address: Address


@dataclass(frozen=True)
class AuthRequested:
    """Decision: check these credentials; answer 235 with C{auth_user}, or 535."""

    mechanism: str
    username: str
    password: str


@dataclass(frozen=True)
class VrfyRequested:
    """Decision (only when VRFY is enabled): answer 250/251/252 or a refusal."""

    argument: str


@dataclass(frozen=True)
class MessageStarted:
    """The recipients are final and message text follows.

    @ivar envelope: the transaction; C{tls} and C{received_at} are for the
        adapter to fill in.
    """

    envelope: Envelope


@dataclass(frozen=True)
class BodyReceived:
    """Message bytes (CRLF line ends, dot-stuffing removed)."""

    data: bytes


@dataclass(frozen=True)
class MessageCompleted:
    """Decision: the whole message is in; make it durable.

    Answer with one reply (L{SMTPMachine.answer}) or, for LMTP, one per
    recipient (L{SMTPMachine.answer_each}).
    """

    recipients: int


@dataclass(frozen=True)
class MessageAborted:
    """The started message will not complete; drop what was written."""

    reason: str


@dataclass(frozen=True)
class TLSRequested:
    """Flush, start TLS as server, then call L{SMTPMachine.tls_started}."""


@dataclass(frozen=True)
class CloseRequested:
    """Flush and close the connection."""


@dataclass(frozen=True)
class Refused:
    """A command was refused (for the log)."""

    reply: Reply
    reason: str


Event = (
    MailRequested
    | RcptRequested
    | AuthRequested
    | VrfyRequested
    | MessageStarted
    | BodyReceived
    | MessageCompleted
    | MessageAborted
    | TLSRequested
    | CloseRequested
    | Refused
)

_TOO_LONG = object()


class SMTPMachine:
    """One server session's protocol state.

    @ivar state: the current L{State}.
    @ivar session: the session facts (peer, HELO name, TLS, auth).
    @ivar commands: how many complete command or AUTH lines were read (the
        adapter's command timeout watches it).
    """

    def __init__(self, config: MachineConfig, session: Session) -> None:
        self.config = config
        self.session = session
        self.state = State.INITIAL
        self.commands = 0
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._pending: object | None = None
        self._discarding = False
        self._errors = 0
        self._txn: _Transaction | None = None
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_refusal: Reply | None = None
        self._chunk_state = State.READY
        self._auth_mechanism = ""
        self._auth_username: str | None = None

    # The adapter's side.

    def greet(self, text: str = "ESMTP ready") -> None:
        """Queue the 220 greeting (RFC 5321 §4.3.1)."""
        self._out.append(Reply(220, "", f"{self.config.hostname} {text}").to_bytes())

    def receive_data(self, data: bytes) -> list[Event]:
        """Take bytes from the peer; return the events they cause."""
        if self.state is State.CLOSED:
            return []
        self._buffer += data
        self._process()
        return self._take_events()

    def answer(
        self, reply: Reply, *, auth_user: str | None = None, reset: bool = False
    ) -> list[Event]:
        """Answer the pending decision and carry on reading.

        @param reply: the reply for the peer; a 2xx reply accepts.
        @param auth_user: for L{AuthRequested}: who logged in (with 235).
        @param reset: also drop the mail transaction (after internal errors).
        """
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("no decision is pending")
        accepted = 200 <= reply.code < 300
        if isinstance(pending, MailRequested):
            if accepted:
                self._txn = _Transaction(pending.command)
                self.state = State.MAIL
        elif isinstance(pending, RcptRequested):
            if accepted and self._txn is not None:
                c = pending.command
                self._txn.recipients.append(
                    Recipient(str(pending.address), c.notify, c.orcpt)
                )
                self.state = State.RCPT
        elif isinstance(pending, AuthRequested):
            if accepted and auth_user is not None:
                self.session.auth_user = auth_user
            self.state = State.READY if self._txn is None else self.state
        elif isinstance(pending, MessageCompleted):
            self._end_transaction()
        self._reply(reply)
        if reset:
            self._abort_transaction("reset after an error")
        self._process()
        return self._take_events()

    def answer_each(self, replies: Sequence[Reply]) -> list[Event]:
        """Answer L{MessageCompleted} with one reply per recipient (LMTP)."""
        if not isinstance(self._pending, MessageCompleted):
            raise RuntimeError("no message is pending")
        if len(replies) != self._pending.recipients:
            raise ValueError("one reply per recipient")
        self._pending = None
        self._end_transaction()
        for i, r in enumerate(replies):
            self._reply(r, count=i == 0)
        self._process()
        return self._take_events()

    def tls_started(self) -> list[Event]:
        """TLS is on: forget everything the client said before (RFC 3207 §4.2)."""
        self.session.tls_active = True
        self.session.helo = None
        self.session.esmtp = False
        self.session.auth_user = None
        self._buffer.clear()
        self._discarding = False
        self.state = State.INITIAL
        return self._take_events()

    def close(self, reply: Reply) -> list[Event]:
        """Send a last reply (421 on timeout or shutdown) and close."""
        if self.state is not State.CLOSED:
            self._abort_transaction("connection closed")
            self._out.append(reply.to_bytes())
            self._set_closed()
        return self._take_events()

    def connection_lost(self) -> list[Event]:
        """The peer went away: abort any started message."""
        self._abort_transaction("connection lost")
        self.state = State.CLOSED
        self._pending = None
        return self._take_events()

    def data_to_send(self) -> bytes:
        """The replies to write now, or b"" while batching (RFC 2920 §3.1).

        Replies are held while a decision is pending and more input waits to
        be read, and released when the machine runs out of input.
        """
        if not self._out:
            return b""
        if (
            self._pending is not None
            and self._buffer
            and self.state not in (State.STARTING_TLS, State.CLOSED)
        ):
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def pending(self) -> bool:
        """A decision is waiting for L{answer}."""
        return self._pending is not None

    @property
    def in_message(self) -> bool:
        """Message text is being read (DATA, BDAT or between chunks)."""
        return self.state in (State.DATA, State.BDAT, State.CHUNKING)

    @property
    def protocol_keyword(self) -> str:
        """The RFC 3848 / RFC 6531 ``with`` keyword for the trace header."""
        s = self.session
        if self.config.lmtp:
            base = "LMTP"
        elif not s.esmtp:
            return "SMTP"
        else:
            base = "ESMTP"
        if self._txn is not None and self._txn.mail.smtputf8:
            base = "UTF8" + base.removeprefix("E")
        suffix = ("S" if s.tls_active else "") + ("A" if s.auth_user else "")
        return base + suffix

    def rcpt_address(self, command: Rcpt) -> Address:
        """The address a RCPT names: bare ``<Postmaster>`` is ours."""
        if command.recipient is None:
            return Address("postmaster", self.config.hostname)
        return command.recipient

    # Internals.

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _set_closed(self) -> None:
        self.state = State.CLOSED
        self._buffer.clear()
        self._events.append(CloseRequested())

    def _reply(self, reply: Reply, reason: str = "", count: bool = True) -> None:
        if self.state is State.CLOSED:
            return
        self._out.append(reply.to_bytes())
        if reply.code >= 500 and count:
            self._events.append(Refused(reply, reason or reply.text))
            self._errors += 1
            if (
                self._errors >= self.config.max_errors
                and self.state is not State.CLOSED
            ):
                self._abort_transaction("too many errors")
                self._out.append(TOO_MANY_ERRORS.to_bytes())
                self._set_closed()
        elif reply.code >= 400:
            self._events.append(Refused(reply, reason or reply.text))

    def _request(self, event: Event) -> None:
        self._pending = event
        self._events.append(event)

    def _abort_transaction(self, reason: str) -> None:
        txn, self._txn = self._txn, None
        if txn is not None and txn.started:
            self._events.append(MessageAborted(reason))
        if self.state in _TRANSACTION_STATES + (State.DATA, State.BDAT):
            self.state = State.READY

    def _end_transaction(self) -> None:
        self._txn = None
        self.state = State.READY

    def _process(self) -> None:
        while self._pending is None:
            if self.state is State.DATA:
                if not self._read_data():
                    return
            elif self.state is State.BDAT:
                if not self._read_chunk():
                    return
            elif self.state in _COMMAND_STATES or self.state is State.AUTH:
                auth = self.state is State.AUTH
                line = self._next_line(auth)
                if line is None:
                    return
                if line is _TOO_LONG:
                    if auth:
                        self.state = State.READY
                        self._reply(AUTH_LINE_TOO_LONG)
                    else:
                        self._reply(LINE_TOO_LONG)
                    continue
                assert isinstance(line, bytes)
                self.commands += 1
                if auth:
                    self._auth_line(line)
                else:
                    self._command_line(line)
            else:
                return

    def _next_line(self, auth: bool) -> bytes | object | None:
        """The next CRLF-terminated line, L{_TOO_LONG}, or None for more input."""
        buf = self._buffer
        while self._discarding:
            i = buf.find(b"\r\n")
            if i < 0:
                keep = 1 if buf.endswith(b"\r") else 0
                del buf[: len(buf) - keep]
                return None
            del buf[: i + 2]
            self._discarding = False
        if auth or buf[:5].upper() == b"AUTH ":
            limit = AUTH_LINE_LIMIT
        else:
            limit = COMMAND_LINE_LIMIT
        i = buf.find(b"\r\n", 0, limit)
        if i < 0:
            if len(buf) >= limit:
                self._discarding = True
                return _TOO_LONG
            return None
        line = bytes(buf[:i])
        del buf[: i + 2]
        return line

    def _command_line(self, line: bytes) -> None:
        txn = self._txn
        try:
            command = parse_command(
                line, smtputf8=txn is not None and txn.mail.smtputf8
            )
            name = TRANSITIONS.get((self.state, type(command)))
            if name is None:
                raise ProtocolError(self._sequence_reply(command), "bad sequence")
            getattr(self, name)(command)
        except ProtocolError as e:
            self._reply(e.reply, e.reason)

    def _sequence_reply(self, command: Command) -> Reply:
        if self.state is State.INITIAL:
            return NEED_LHLO if self.config.lmtp else NEED_HELLO
        if isinstance(command, Mail):
            return NESTED_MAIL
        if isinstance(command, Rcpt):
            return NEED_MAIL if self._txn is None else BAD_SEQUENCE
        return BAD_SEQUENCE

    # Command handlers (named in TRANSITIONS).

    def _hello(self, command: Hello) -> None:
        if self.config.lmtp != (command.verb == "LHLO"):
            raise ProtocolError(
                LHLO_ONLY if self.config.lmtp else NOT_LMTP, "wrong greeting verb"
            )
        self._abort_transaction("new greeting")
        self.session.helo = command.name
        self.session.esmtp = command.verb != "HELO"
        self.state = State.READY
        greeting = f"{self.config.hostname} Hello {command.name}"
        if command.verb == "HELO":
            self._reply(Reply(250, "", greeting))
            return
        lines = [
            greeting,
            "PIPELINING",
            f"SIZE {self.config.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "CHUNKING",
            "DSN",
        ]
        if self.config.starttls and not self.session.tls_active:
            lines.append("STARTTLS")
        if self._auth_offered() and self.session.auth_user is None:
            lines.append("AUTH PLAIN LOGIN")
        lines.append("HELP")
        for text in lines[:-1]:
            self._out.append(Reply(250, "", text).to_bytes(continued=True))
        self._reply(Reply(250, "", lines[-1]))

    def _auth_offered(self) -> bool:
        c = self.config
        return c.auth and (self.session.tls_active or c.auth_plaintext)

    def _rset(self, command: Rset) -> None:
        self._abort_transaction("RSET")
        self._reply(OK)

    def _noop(self, command: Noop) -> None:
        self._reply(OK)

    def _quit(self, command: Quit) -> None:
        self._abort_transaction("QUIT")
        self._out.append(BYE.to_bytes())
        self._set_closed()

    def _help(self, command: Help) -> None:
        verbs = "LHLO" if self.config.lmtp else "EHLO HELO"
        self._reply(
            Reply(
                214,
                "2.0.0",
                f"Commands: {verbs} MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"
                " STARTTLS AUTH",
            )
        )

    def _vrfy(self, command: Vrfy) -> None:
        if self.config.vrfy:
            self._request(VrfyRequested(command.argument))
        else:
            self._reply(VRFY_DISABLED)

    def _not_implemented(self, command: NotImplementedCommand) -> None:
        self._reply(NOT_IMPLEMENTED, f"{command.verb} not implemented")

    def _starttls(self, command: StartTLS) -> None:
        if not self.config.starttls:
            raise ProtocolError(TLS_NOT_OFFERED)
        if self.session.tls_active:
            raise ProtocolError(TLS_ACTIVE)
        self._reply(READY_FOR_TLS)
        # RFC 3207 §4.2: whatever was pipelined after STARTTLS is dropped.
        self._buffer.clear()
        self.state = State.STARTING_TLS
        self._events.append(TLSRequested())

    def _auth(self, command: Auth) -> None:
        if not self.config.auth:
            raise ProtocolError(AUTH_NOT_OFFERED)
        if self._txn is not None:
            raise ProtocolError(AUTH_IN_TRANSACTION)
        if self.session.auth_user is not None:
            raise ProtocolError(ALREADY_AUTHENTICATED)
        if not self._auth_offered():
            raise ProtocolError(ENCRYPTION_REQUIRED)
        if command.mechanism not in ("PLAIN", "LOGIN"):
            raise ProtocolError(UNKNOWN_MECHANISM)
        self._auth_mechanism = command.mechanism
        self._auth_username = None
        self.state = State.AUTH
        if command.initial is None:
            challenge = "" if command.mechanism == "PLAIN" else "VXNlcm5hbWU6"
            self._out.append(Reply(334, "", challenge).to_bytes())
            return
        self._auth_line(command.initial.encode("ascii"))

    def _auth_line(self, line: bytes) -> None:
        if line == b"*":
            self.state = State.READY
            self._reply(AUTH_CANCELLED)
            return
        try:
            decoded = b"" if line == b"=" else base64.b64decode(line, validate=True)
            text = decoded.decode("utf-8")
        except (binascii.Error, ValueError):
            self.state = State.READY
            self._reply(AUTH_BAD_RESPONSE)
            return
        if self._auth_mechanism == "LOGIN":
            if self._auth_username is None:
                self._auth_username = text
                self._out.append(Reply(334, "", "UGFzc3dvcmQ6").to_bytes())
                return
            username, password = self._auth_username, text
        else:
            parts = text.split("\0")
            if len(parts) != 3:
                self.state = State.READY
                self._reply(AUTH_BAD_RESPONSE)
                return
            authzid, username, password = parts
            if authzid and authzid != username:
                self.state = State.READY
                self._reply(AUTH_FAILED, "authorization identity differs")
                return
        self._request(AuthRequested(self._auth_mechanism, username, password))

    def _mail(self, command: Mail) -> None:
        c = self.config
        if c.auth_required and self.session.auth_user is None:
            if not self.session.tls_active and c.starttls and not c.auth_plaintext:
                raise ProtocolError(STARTTLS_FIRST)
            raise ProtocolError(AUTH_REQUIRED)
        if command.has_params and not self.session.esmtp:
            raise ProtocolError(NO_PARAMS_AFTER_HELO)
        if command.size is not None and command.size > c.max_message_size:
            raise ProtocolError(SIZE_EXCEEDED, f"SIZE={command.size}")
        self._request(MailRequested(command))

    def _rcpt(self, command: Rcpt) -> None:
        assert self._txn is not None
        if command.has_params and not self.session.esmtp:
            raise ProtocolError(NO_PARAMS_AFTER_HELO)
        if len(self._txn.recipients) >= self.config.max_recipients:
            self._reply(TOO_MANY_RECIPIENTS)
            return
        self._request(RcptRequested(command, self.rcpt_address(command)))

    def _start_message(self) -> None:
        txn = self._txn
        assert txn is not None
        txn.started = True
        m = txn.mail
        s = self.session
        self._events.append(
            MessageStarted(
                Envelope(
                    sender=m.sender_text,
                    recipients=tuple(txn.recipients),
                    body_type=m.body or "7BIT",
                    smtputf8=m.smtputf8,
                    ret=m.ret,
                    envid=m.envid,
                    client_address=s.peer,
                    client_name=s.helo or "",
                    auth_user=s.auth_user,
                    protocol=self.protocol_keyword,
                )
            )
        )

    def _data(self, command: Data) -> None:
        txn = self._txn
        assert txn is not None
        if txn.chunking:
            raise ProtocolError(DATA_AFTER_BDAT)
        if not txn.recipients:
            raise ProtocolError(NO_RECIPIENTS)
        self._start_message()
        self.state = State.DATA
        self._out.append(START_DATA.to_bytes())

    def _bdat(self, command: Bdat) -> None:
        # RFC 3030 §3: the chunk's octets follow whatever the reply, so they
        # are always read; a refused chunk's octets are discarded.
        txn = self._txn
        refusal: Reply | None = None
        if txn is None:
            refusal = NEED_HELLO if self.state is State.INITIAL else BAD_SEQUENCE
        elif not txn.recipients:
            refusal = NO_RECIPIENTS
        elif txn.chunking and txn.failure is BDAT_FAILED:
            refusal = BDAT_FAILED
        elif not txn.chunking:
            txn.chunking = True
            self._start_message()
        self._chunk_refusal = refusal
        self._chunk_left = command.size
        self._chunk_last = command.last
        self._chunk_state = self.state
        self.state = State.BDAT
        if command.size == 0:
            self._chunk_done()

    def _read_chunk(self) -> bool:
        n = min(self._chunk_left, len(self._buffer))
        if n == 0:
            return False
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._chunk_left -= n
        txn = self._txn
        if self._chunk_refusal is None and txn is not None and txn.failure is None:
            self._take_text(txn, data)
        if self._chunk_left == 0:
            self._chunk_done()
        return True

    def _take_text(self, txn: _Transaction, data: bytes) -> None:
        """Check and pass on BDAT octets: size, then bare CR or LF."""
        txn.size += len(data)
        if txn.size > self.config.max_message_size:
            self._fail(txn, SIZE_EXCEEDED)
            return
        if txn.carry_cr:
            data = b"\r" + data
        txn.carry_cr = data.endswith(b"\r")
        if txn.carry_cr:
            data = data[:-1]
        if _BARE.search(data):
            if self.config.bare_line_endings == "reject":
                self._fail(txn, BARE_LINE_ENDING)
                return
            data = _BARE.sub(b"\r\n", data)
        if data:
            self._events.append(BodyReceived(data))

    def _fail(self, txn: _Transaction, reply: Reply) -> None:
        txn.failure = reply
        txn.started = False
        self._events.append(MessageAborted(reply.text))

    def _chunk_done(self) -> None:
        refusal = self._chunk_refusal
        if refusal is not None:
            self.state = self._chunk_state
            self._reply(refusal)
            return
        txn = self._txn
        assert txn is not None
        if txn.failure is not None:
            failure = txn.failure
            if self._chunk_last:
                self._end_transaction()
            else:
                # RFC 3030 §4.2: the transaction failed; later chunks are
                # refused until RSET.
                txn.failure = BDAT_FAILED
                self.state = State.CHUNKING
            self._reply_message_failure(txn, failure)
            return
        if not self._chunk_last:
            self.state = State.CHUNKING
            self._reply(Reply(250, "2.0.0", f"{txn.size} octets received"))
            return
        if txn.carry_cr:
            txn.carry_cr = False
            if self.config.bare_line_endings == "reject":
                self._fail(txn, BARE_LINE_ENDING)
                self._end_transaction()
                self._reply_message_failure(txn, BARE_LINE_ENDING)
                return
            self._events.append(BodyReceived(b"\r\n"))
        self.state = State.CHUNKING
        self._request(MessageCompleted(len(txn.recipients)))

    def _read_data_fast(self, txn: _Transaction) -> bool:
        """Take the complete lines in the buffer in one go when they need no
        line-by-line care: no bare CR or LF, no overlong line, within the
        size limit.  Anything else is left for the line-by-line loop, which
        gives the same events (checked by a property test).

        @return: True when the end of the data was found and handled.
        """
        buf = self._buffer
        end = buf.rfind(b"\r\n") + 2
        if end < 2:
            return False
        if buf.startswith(b".\r\n"):
            length, consumed, done = 0, 3, True
        else:
            j = buf.find(b"\r\n.\r\n", 0, end)
            if j >= 0:
                length, consumed, done = j + 2, j + 5, True
            else:
                length, consumed, done = end, end, False
        text = bytes(buf[:length])
        lines = text.count(b"\r\n")
        if (
            text.count(b"\r") != lines
            or text.count(b"\n") != lines
            or (
                length > TEXT_LINE_LIMIT - 2
                and max(map(len, text.split(b"\r\n"))) > TEXT_LINE_LIMIT - 2
            )
        ):
            return False
        # RFC 5321 §4.5.2: drop the first dot of every line that has one.
        if text.startswith(b"."):
            text = text[1:]
        if b"\r\n." in text:
            text = text.replace(b"\r\n.", b"\r\n")
        if txn.size + len(text) > self.config.max_message_size:
            return False
        txn.size += len(text)
        del buf[:consumed]
        if text:
            self._events.append(BodyReceived(text))
        if done:
            self._request(MessageCompleted(len(txn.recipients)))
        return done

    def _reply_message_failure(self, txn: _Transaction, reply: Reply) -> None:
        if self.config.lmtp:
            for i, _ in enumerate(txn.recipients):
                self._reply(reply, count=i == 0)
        else:
            self._reply(reply)

    def _read_data(self) -> bool:
        """Read DATA text lines; False when more input is needed."""
        txn = self._txn
        assert txn is not None
        buf = self._buffer
        if txn.failure is None and not self._discarding and self._read_data_fast(txn):
            return True
        pos = 0
        end = len(buf)
        lines: list[bytes] = []
        done = False
        normalize = self.config.bare_line_endings == "normalize"
        while pos < end:
            if self._discarding:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    pos = end - 1 if buf.endswith(b"\r") else end
                    break
                pos = i + 2
                self._discarding = False
                continue
            i = buf.find(b"\r\n", pos, pos + TEXT_LINE_LIMIT)
            if i < 0:
                if end - pos >= TEXT_LINE_LIMIT:
                    self._discarding = True
                    if txn.failure is None:
                        self._fail(txn, TEXT_LINE_TOO_LONG)
                    continue
                break
            line = bytes(buf[pos:i])
            pos = i + 2
            if line == b".":
                done = True
                break
            if txn.failure is not None:
                continue
            if line[:1] == b".":
                line = line[1:]
            if _ANY_CR_LF.search(line):
                if not normalize:
                    self._fail(txn, BARE_LINE_ENDING)
                    continue
                line = _ANY_CR_LF.sub(b"\r\n", line)
            txn.size += len(line) + 2
            if txn.size > self.config.max_message_size:
                self._fail(txn, SIZE_EXCEEDED)
                continue
            lines.append(line)
        del buf[:pos]
        if lines and txn.failure is None:
            lines.append(b"")
            self._events.append(BodyReceived(b"\r\n".join(lines)))
        if not done:
            return False
        if txn.failure is not None:
            failure = txn.failure
            self._end_transaction()
            self._reply_message_failure(txn, failure)
        else:
            self._request(MessageCompleted(len(txn.recipients)))
        return True
