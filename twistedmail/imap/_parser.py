# -*- test-case-name: tests.test_imap_parser -*-
"""The sans-I/O IMAP4rev1 command parser: the first step of the IMAP server.

Bytes from the client go in through L{CommandParser.receive_data}; events come
out (see L{twistedmail.imap._types}).  The parser never writes: the adapter
answers L{ContinuationNeeded} with ``+ Ready`` and the other events with the
server's responses.

Framing (RFC 3501 §4.3, §7.5; RFC 7888):

    - A command is one line, or several lines each ending in a literal
      announcement ``{n}`` (synchronising: the parser yields
      L{ContinuationNeeded} and then reads n octets) or ``{n+}``
      (non-synchronising, LITERAL+: the octets follow at once).
    - ``max_line`` bounds the text of one command (the literals' octets
      excluded); past it the parser yields L{LineTooLong}, and skips to the
      end of the line keeping only a few octets (memory stays flat).
    - ``max_literal`` bounds the literal octets of one command.  A larger
      announcement yields L{LiteralTooLarge} before any octet of it is read
      and without a continuation; the command is dropped.  The octets of a
      refused ``{n+}`` literal are skipped as they arrive (never kept), then
      the rest of its command; a ``{n+}`` larger than L{max_skip} (so many
      octets that reading them is pointless, as for a 2 GB announcement)
      closes the parser instead: it reads nothing more, and the server
      says BYE (RFC 7888 §4 allows either).

Input modes, which the server drives:

    - C{COMMAND}: lines are commands.
    - C{PAUSED}: after L{StartTLS}, L{Authenticate}, L{Idle} and
      L{AuthenticateResponse} the parser holds further input (up to the
      limits) until the server calls L{CommandParser.resume} (optionally
      discarding what came before TLS), L{CommandParser.expect_sasl_response}
      or L{CommandParser.expect_done}.  That way a pipelined line is never
      read in the wrong mode.
    - C{SASL}: the next line is a BASE64 client response or ``*``.
    - C{DONE}: the next line must be ``DONE`` (RFC 2177).

Grammar rules are RFC 3501 §9 unless noted.  Deviations, for client
compatibility: 8-bit octets are accepted inside quoted strings (decoded as
UTF-8), and a bare LF ends a line (the command gets BAD).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Callable
from enum import Enum
from typing import Literal

from twistedmail.imap._mutf7 import MailboxNameError, decode_mailbox_name
from twistedmail.imap._sequence import MAX_NUMBER, SequenceSet, SequenceSetError
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
    FetchAttribute,
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
    QResync,
    Rename,
    Search,
    SearchAll,
    SearchAnd,
    SearchBody,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchMessages,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSize,
    SearchText,
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

__all__ = [
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_LITERAL",
    "SKIP_FACTOR",
    "CommandParser",
    "InputMode",
    "ParserStateError",
]

#: Default bound on one command's text, literals excluded.  RFC 7162 §4
#: asks servers to accept command lines of at least 8192 octets.
DEFAULT_MAX_LINE = 64 * 1024

#: Default bound on the literal octets of one command (an APPEND's message).
DEFAULT_MAX_LITERAL = 35 * 1024 * 1024

#: A refused non-synchronising literal of up to this many times
#: C{max_literal} octets is skipped; a larger one closes the session.
SKIP_FACTOR = 4

#: Largest mod-sequence-value (RFC 7162 §7: 63-bit unsigned).
_MAX_MODSEQ = 2**63 - 1

#: Deepest nesting of SEARCH keys (NOT, OR, parentheses) we parse.
_MAX_SEARCH_DEPTH = 64

# Character classes of RFC 3501 §9.  atom-specials are "(" ")" "{" SP CTL
# list-wildcards ("%" "*") quoted-specials ('"' "\") and resp-specials ("]");
# CHAR is 7-bit, so 8-bit octets are outside every class.
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]*')
_ASTRING = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]*')
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]*')
_LIST_MAILBOX = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]*')
_DIGITS = re.compile(rb"[0-9]*")
_SEQUENCE = re.compile(rb"[0-9*:,]*")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]*")
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE = re.compile(rb'\\(["\\])')
_LITERAL_END = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
_TAG_PREFIX = re.compile(rb'([^\x00-\x20\x7f-\xff(){%*"\\+]+) ')
_BASE64 = re.compile(
    rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z"
)
_BASE64_CHARS = re.compile(rb"[A-Za-z0-9+/=]*")
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_DATE_TIME = re.compile(
    rb"( [0-9]|[0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)
_MONTHS = {
    m.encode("ascii"): i + 1
    for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())
}
_SYSTEM_FLAGS = {
    f.upper(): f
    for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
_FETCH_MACROS = {
    "ALL": (
        FetchItem.FLAGS,
        FetchItem.INTERNALDATE,
        FetchItem.RFC822_SIZE,
        FetchItem.ENVELOPE,
    ),
    "FAST": (FetchItem.FLAGS, FetchItem.INTERNALDATE, FetchItem.RFC822_SIZE),
    "FULL": (
        FetchItem.FLAGS,
        FetchItem.INTERNALDATE,
        FetchItem.RFC822_SIZE,
        FetchItem.ENVELOPE,
        FetchItem.BODY,
    ),
}
_FETCH_ITEMS = frozenset(item.value for item in FetchItem)
_SECTION_TEXTS = frozenset(
    {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"}
)
_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})
_UID_COMMANDS = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"})
_PAUSING = (StartTLS, Authenticate, Idle)


class ParserStateError(Exception):
    """The server drove the parser out of order (a bug, not a client error)."""


class InputMode(Enum):
    """What the parser makes of the next line (see the module docstring)."""

    COMMAND = "command"
    PAUSED = "paused"
    SASL = "sasl"
    DONE = "done"


class _Frame(Enum):
    LINE = "line"
    LITERAL = "literal"
    SKIP = "skip"
    DISCARD = "discard"
    CLOSED = "closed"


class _Bad(Exception):
    """A syntax error; the reason goes to the client in the BAD response."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _literal_at_end(text: bytes) -> tuple[int, bool] | None:
    """The ``{n}``/``{n+}`` announcement ending C{text}, as (n, synchronising).

    Absurdly long numbers come back as a size no limit allows, without
    converting thousands of digits.
    """
    if not text.endswith(b"}"):
        return None
    start = text.rfind(b"{")
    if start < 0:
        return None
    m = _LITERAL_END.match(text, start)
    if m is None:
        return None
    digits = m.group(1)
    size = int(digits) if len(digits) <= 20 else 10**20
    return size, not m.group(2)


def _ends_inside_quotes(text: bytes) -> bool:
    """Whether C{text} ends inside an unterminated quoted string."""
    pos = 0
    while True:
        start = text.find(b'"', pos)
        if start < 0:
            return False
        m = _QUOTED.match(text, start)
        if m is None:
            return True
        pos = m.end()


def _tag_of(text: bytes) -> str | None:
    """The tag at the start of a command, when one can be read."""
    m = _TAG_PREFIX.match(text)
    return m.group(1).decode("ascii") if m else None


def _decode_base64(data: bytes) -> bytes:
    """RFC 3501 §9 ``base64``: strict, padded, no whitespace."""
    if not _BASE64.match(data):
        raise _Bad("invalid BASE64")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise _Bad("invalid BASE64") from None


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("string is not valid UTF-8") from None


def _mailbox_name(data: bytes) -> str:
    """``mailbox = "INBOX" / astring``, INBOX case-insensitively (§5.1)."""
    if data.upper() == b"INBOX":
        return "INBOX"
    try:
        return decode_mailbox_name(data)
    except MailboxNameError as e:
        raise _Bad(str(e)) from None


def _pattern(data: bytes) -> str:
    try:
        return decode_mailbox_name(data)
    except MailboxNameError as e:
        raise _Bad(str(e)) from None


class _Reader:
    """A cursor over one command: its line segments and the literals between.

    Segment i (all but the last) ends with a literal announcement whose
    octets are literal i.
    """

    __slots__ = ("_index", "_literals", "_pos", "_seg", "_segments")

    def __init__(self, segments: list[bytes], literals: list[bytes]) -> None:
        self._segments = segments
        self._literals = literals
        self._index = 0
        self._seg = segments[0]
        self._pos = 0

    def peek(self) -> int:
        """The next octet of the current segment, or -1 at its end."""
        return self._seg[self._pos] if self._pos < len(self._seg) else -1

    def at_end(self) -> bool:
        """Whether the whole command has been read."""
        return self._pos >= len(self._seg) and self._index >= len(self._segments) - 1

    def skip(self) -> None:
        """Step over one octet already peeked at."""
        self._pos += 1

    def take(self, pattern: re.Pattern[bytes]) -> bytes:
        """The longest run matching C{pattern} (which may match nothing)."""
        m = pattern.match(self._seg, self._pos)
        assert m is not None
        self._pos = m.end()
        return m.group()

    def expect(self, char: bytes, what: str) -> None:
        """Read one expected octet, or fail naming what was wanted."""
        if self.peek() != char[0]:
            raise _Bad(f"expected {what}")
        self._pos += 1

    def sp(self) -> None:
        """``SP``."""
        if self.peek() != 0x20:
            raise _Bad("expected a space" if not self.at_end() else "missing argument")
        self._pos += 1

    def maybe_sp(self) -> bool:
        """Read an SP when one is next."""
        if self.peek() == 0x20:
            self._pos += 1
            return True
        return False

    def end(self) -> None:
        """The command must end here."""
        if not self.at_end():
            raise _Bad("unexpected data after the command")

    def atom(self) -> bytes:
        """``atom = 1*ATOM-CHAR``."""
        value = self.take(_ATOM)
        if not value:
            raise _Bad("expected an atom")
        return value

    def word(self) -> str:
        """An atom, upper-cased (command names, keywords)."""
        return self.atom().decode("ascii").upper()

    def peek_word(self) -> str:
        """The atom that comes next, upper-cased, without reading it."""
        m = _ATOM.match(self._seg, self._pos)
        assert m is not None
        return m.group().decode("ascii").upper()

    def number(self, limit: int = MAX_NUMBER, nonzero: bool = False) -> int:
        """``number`` / ``nz-number`` (and mod-sequence values with a limit)."""
        digits = self.take(_DIGITS)
        if not digits:
            raise _Bad("expected a number")
        if len(digits) > 20 or int(digits) > limit:
            raise _Bad("number too large")
        value = int(digits)
        if nonzero and (value == 0 or digits[:1] == b"0"):
            raise _Bad("expected a non-zero number")
        return value

    def sequence_set(self) -> SequenceSet:
        """``sequence-set``."""
        text = self.take(_SEQUENCE)
        if not text:
            raise _Bad("expected a sequence set")
        try:
            return SequenceSet.parse(text)
        except SequenceSetError as e:
            raise _Bad(str(e)) from None

    def quoted(self) -> bytes:
        """``quoted = DQUOTE *QUOTED-CHAR DQUOTE``."""
        m = _QUOTED.match(self._seg, self._pos)
        if m is None:
            raise _Bad("bad quoted string")
        self._pos = m.end()
        return _QUOTED_ESCAPE.sub(rb"\1", m.group(1))

    def literal(self) -> bytes:
        """``literal = "{" number ["+"] "}" CRLF *CHAR8`` (RFC 7888 for "+")."""
        m = _LITERAL_END.match(self._seg, self._pos)
        if m is None or self._index >= len(self._literals):
            raise _Bad("a literal announcement must end the line")
        data = self._literals[self._index]
        self._index += 1
        self._seg = self._segments[self._index]
        self._pos = 0
        return data

    def string(self) -> bytes:
        """``string = quoted / literal``."""
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise _Bad("expected a string")

    def astring(self) -> bytes:
        """``astring = 1*ASTRING-CHAR / string``."""
        if self.peek() in (0x22, 0x7B):
            return self.string()
        value = self.take(_ASTRING)
        if not value:
            raise _Bad("expected a string")
        return value

    def nstring(self) -> bytes | None:
        """``nstring = string / nil``."""
        if self.peek() not in (0x22, 0x7B):
            if self.word() != "NIL":
                raise _Bad("expected a string or NIL")
            return None
        return self.string()

    def mailbox(self) -> str:
        """``mailbox``, decoded."""
        return _mailbox_name(self.astring())

    def list_mailbox(self) -> str:
        """``list-mailbox = 1*list-char / string``, decoded."""
        if self.peek() in (0x22, 0x7B):
            return _pattern(self.string())
        value = self.take(_LIST_MAILBOX)
        if not value:
            raise _Bad("expected a mailbox pattern")
        return _pattern(value)

    def flag(self) -> str:
        """``flag``: a system flag (canonical case), keyword or extension."""
        if self.peek() == 0x5C:
            self.skip()
            name = "\\" + self.atom().decode("ascii")
            return _SYSTEM_FLAGS.get(name.upper(), name)
        return self.atom().decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        """``flag-list = "(" [flag *(SP flag)] ")"``."""
        self.expect(b"(", "a flag list")
        flags: list[str] = []
        if self.peek() != 0x29:
            flags.append(self.flag())
            while self.maybe_sp():
                flags.append(self.flag())
        self.expect(b")", "')' after the flags")
        return tuple(flags)

    def parenthesised(self, item: Callable[[], object]) -> None:
        """``"(" item *(SP item) ")"``; C{item} reads and records each one."""
        self.expect(b"(", "'('")
        item()
        while self.maybe_sp():
            item()
        self.expect(b")", "')'")


def _date(r: _Reader) -> datetime.date:
    """``date = date-text / DQUOTE date-text DQUOTE``."""
    text = r.quoted() if r.peek() == 0x22 else r.take(_ATOM)
    m = _DATE.match(text)
    if m is None or m.group(2).upper() not in _MONTHS:
        raise _Bad("expected a date like 1-Feb-1994")
    try:
        return datetime.date(
            int(m.group(3)), _MONTHS[m.group(2).upper()], int(m.group(1))
        )
    except ValueError:
        raise _Bad("no such date") from None


def _date_time(r: _Reader) -> datetime.datetime:
    """``date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP
    time SP zone DQUOTE``."""
    m = _DATE_TIME.match(r.quoted())
    if m is None or m.group(2).upper() not in _MONTHS:
        raise _Bad('expected a date-time like "17-Jul-1996 02:44:25 -0700"')
    day, _, year, hour, minute, second, sign, zh, zm = m.groups()
    offset_minutes = int(zh) * 60 + int(zm)
    if int(zm) >= 60 or offset_minutes >= 24 * 60:
        raise _Bad("bad time zone")
    offset = datetime.timedelta(minutes=offset_minutes)
    try:
        return datetime.datetime(
            int(year),
            _MONTHS[m.group(2).upper()],
            int(day),
            int(hour),
            int(minute),
            min(int(second), 59),
            tzinfo=datetime.timezone(-offset if sign == b"-" else offset),
        )
    except ValueError:
        raise _Bad("no such date-time") from None


def _status_items(r: _Reader) -> tuple[StatusItem, ...]:
    """``"(" status-att *(SP status-att) ")"``."""
    items: list[StatusItem] = []

    def item() -> None:
        word = r.word()
        try:
            items.append(StatusItem(word))
        except ValueError:
            raise _Bad(f"unknown status item {word}") from None

    r.parenthesised(item)
    return tuple(items)


class _CommandGrammar:
    """Recursive descent over one complete command (RFC 3501 §9)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[_Reader, str], Command]] = {
            "CAPABILITY": lambda r, tag: Capability(tag),
            "NOOP": lambda r, tag: Noop(tag),
            "LOGOUT": lambda r, tag: Logout(tag),
            "STARTTLS": lambda r, tag: StartTLS(tag),
            "CHECK": lambda r, tag: Check(tag),
            "CLOSE": lambda r, tag: Close(tag),
            "EXPUNGE": lambda r, tag: Expunge(tag),
            "IDLE": lambda r, tag: Idle(tag),
            "NAMESPACE": lambda r, tag: Namespace(tag),
            "UNSELECT": lambda r, tag: Unselect(tag),
            "AUTHENTICATE": self.authenticate,
            "LOGIN": self.login,
            "SELECT": self.select,
            "EXAMINE": self.select,
            "CREATE": self.one_mailbox(Create),
            "DELETE": self.one_mailbox(Delete),
            "SUBSCRIBE": self.one_mailbox(Subscribe),
            "UNSUBSCRIBE": self.one_mailbox(Unsubscribe),
            "GETQUOTAROOT": self.one_mailbox(GetQuotaRoot),
            "GETQUOTA": self.getquota,
            "RENAME": self.rename,
            "LIST": self.list,
            "LSUB": self.lsub,
            "STATUS": self.status,
            "APPEND": self.append,
            "SEARCH": self.search,
            "FETCH": self.fetch,
            "STORE": self.store,
            "COPY": self.copy,
            "MOVE": self.copy,
            "UID": self.uid,
            "ENABLE": self.enable,
            "ID": self.id,
        }

    def parse(self, segments: list[bytes], literals: list[bytes]) -> Event:
        """Parse a whole command into a L{Command}, or a L{BadCommand}."""
        r = _Reader(segments, literals)
        tag: str | None = None
        try:
            raw_tag = r.take(_TAG)
            if not raw_tag:
                raise _Bad("expected a tag")
            tag = raw_tag.decode("ascii")
            r.sp()
            name = r.word()
            handler = self.handlers.get(name)
            if handler is None:
                raise _Bad(f"unknown command {name[:32]}")
            command = self._named(handler, r, tag, name)
            r.end()
            return command
        except _Bad as e:
            return BadCommand(tag, e.reason)

    def _named(
        self,
        handler: Callable[[_Reader, str], Command],
        r: _Reader,
        tag: str,
        name: str,
    ) -> Command:
        # SELECT/EXAMINE and COPY/MOVE share a handler; the name picks the type.
        self._name = name
        return handler(r, tag)

    def early_check(self, text: bytes) -> BadCommand | None:
        """Check a first line's tag and command name before its literal.

        Lets the server refuse an unknown command instead of asking the
        client for a literal that would be thrown away.
        """
        r = _Reader([text], [])
        tag: str | None = None
        try:
            raw_tag = r.take(_TAG)
            if not raw_tag:
                raise _Bad("expected a tag")
            tag = raw_tag.decode("ascii")
            r.sp()
            name = r.word()
            if name not in self.handlers:
                raise _Bad(f"unknown command {name[:32]}")
            if name == "UID":
                r.sp()
                sub = r.word()
                if sub not in _UID_COMMANDS:
                    raise _Bad(f"unknown UID command {sub[:32]}")
        except _Bad as e:
            return BadCommand(tag, e.reason)
        return None

    # --- RFC 3501 §9 productions, one method per command -----------------

    def authenticate(self, r: _Reader, tag: str) -> Command:
        """``authenticate = "AUTHENTICATE" SP auth-type [SP (base64 / "=")]``
        (RFC 3501 §9, initial response from RFC 4959 §7)."""
        r.sp()
        mechanism = r.word()
        initial: bytes | None = None
        if r.maybe_sp():
            data = r.take(_BASE64_CHARS)
            if not data:
                raise _Bad("expected an initial response")
            initial = b"" if data == b"=" else _decode_base64(data)
        return Authenticate(tag, mechanism, initial)

    def login(self, r: _Reader, tag: str) -> Command:
        """``login = "LOGIN" SP userid SP password`` (both astrings)."""
        r.sp()
        user = _utf8(r.astring())
        r.sp()
        password = _utf8(r.astring())
        return Login(tag, user, password)

    def select(self, r: _Reader, tag: str) -> Command:
        """``select = "SELECT" SP mailbox [SP "(" select-param *(SP
        select-param) ")"]`` (RFC 3501 §9, RFC 4466 §2.1, RFC 7162 §7)."""
        cls = Examine if self._name == "EXAMINE" else Select
        r.sp()
        mailbox = r.mailbox()
        condstore = False
        qresync: QResync | None = None
        if r.maybe_sp():

            def param() -> None:
                nonlocal condstore, qresync
                word = r.word()
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC" and qresync is None:
                    r.sp()
                    qresync = self._qresync(r)
                else:
                    raise _Bad(f"unknown select parameter {word[:32]}")

            r.parenthesised(param)
        return cls(tag, mailbox, condstore, qresync)

    def _qresync(self, r: _Reader) -> QResync:
        """``"(" uidvalidity SP mod-sequence-value [SP known-uids]
        [SP seq-match-data] ")"`` (RFC 7162 §7)."""
        r.expect(b"(", "'(' after QRESYNC")
        uidvalidity = r.number(nonzero=True)
        r.sp()
        modseq = r.number(_MAX_MODSEQ, nonzero=True)
        known_uids = known_seq = known_set = None
        if r.maybe_sp():
            if r.peek() != 0x28:
                known_uids = r.sequence_set()
                if not r.maybe_sp():
                    r.expect(b")", "')'")
                    return QResync(uidvalidity, modseq, known_uids)
            r.expect(b"(", "'(' before sequence match data")
            known_seq = r.sequence_set()
            r.sp()
            known_set = r.sequence_set()
            r.expect(b")", "')'")
        r.expect(b")", "')'")
        return QResync(uidvalidity, modseq, known_uids, known_seq, known_set)

    def one_mailbox(
        self, cls: type[Create | Delete | Subscribe | Unsubscribe | GetQuotaRoot]
    ) -> Callable[[_Reader, str], Command]:
        """``create``/``delete``/``subscribe``/``unsubscribe = "X" SP mailbox``."""

        def parse(r: _Reader, tag: str) -> Command:
            r.sp()
            return cls(tag, r.mailbox())

        return parse

    def getquota(self, r: _Reader, tag: str) -> Command:
        """``getquota = "GETQUOTA" SP quota-root`` (RFC 9208 §9)."""
        r.sp()
        return GetQuota(tag, _utf8(r.astring()))

    def rename(self, r: _Reader, tag: str) -> Command:
        """``rename = "RENAME" SP mailbox SP mailbox``."""
        r.sp()
        old = r.mailbox()
        r.sp()
        return Rename(tag, old, r.mailbox())

    def lsub(self, r: _Reader, tag: str) -> Command:
        """``lsub = "LSUB" SP mailbox SP list-mailbox``."""
        r.sp()
        reference = r.mailbox()
        r.sp()
        return Lsub(tag, reference, r.list_mailbox())

    def list(self, r: _Reader, tag: str) -> Command:
        """``list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
        [SP list-return-opts]`` (RFC 5258 §6, RFC 5819, RFC 6154)."""
        r.sp()
        extended = False
        select: set[str] = set()
        if r.peek() == 0x28:
            extended = True
            r.skip()
            if r.peek() != 0x29:
                select.add(r.word())
                while r.maybe_sp():
                    select.add(r.word())
            r.expect(b")", "')' after the selection options")
            unknown = select - _LIST_SELECT
            if unknown:
                raise _Bad(f"unknown selection option {min(unknown)[:32]}")
            if "RECURSIVEMATCH" in select and not select & {
                "SUBSCRIBED",
                "SPECIAL-USE",
            }:
                raise _Bad("RECURSIVEMATCH needs another selection option")
            r.sp()
        reference = r.mailbox()
        r.sp()
        patterns: list[str] = []
        if r.peek() == 0x28:
            extended = True
            r.parenthesised(lambda: patterns.append(r.list_mailbox()))
        else:
            patterns.append(r.list_mailbox())
        returns: set[str] = set()
        status: tuple[StatusItem, ...] = ()
        if r.maybe_sp():
            extended = True
            if r.word() != "RETURN":
                raise _Bad("expected RETURN")
            r.sp()
            r.expect(b"(", "'(' after RETURN")
            if r.peek() != 0x29:
                while True:
                    option = r.word()
                    if option == "STATUS":
                        r.sp()
                        status = _status_items(r)
                    elif option not in _LIST_RETURN:
                        raise _Bad(f"unknown return option {option[:32]}")
                    returns.add(option)
                    if not r.maybe_sp():
                        break
            r.expect(b")", "')' after the return options")
        return List(
            tag,
            reference,
            tuple(patterns),
            frozenset(select),
            frozenset(returns),
            status,
            extended,
        )

    def status(self, r: _Reader, tag: str) -> Command:
        """``status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"``."""
        r.sp()
        mailbox = r.mailbox()
        r.sp()
        return Status(tag, mailbox, _status_items(r))

    def append(self, r: _Reader, tag: str) -> Command:
        """``append = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP
        literal``."""
        r.sp()
        mailbox = r.mailbox()
        r.sp()
        flags: tuple[str, ...] = ()
        when: datetime.datetime | None = None
        if r.peek() == 0x28:
            flags = r.flag_list()
            r.sp()
        if r.peek() == 0x22:
            when = _date_time(r)
            r.sp()
        if r.peek() != 0x7B:
            raise _Bad("APPEND needs the message as a literal")
        return Append(tag, mailbox, r.literal(), flags, when)

    def enable(self, r: _Reader, tag: str) -> Command:
        """``enable = "ENABLE" 1*(SP capability)`` (RFC 5161 §4)."""
        capabilities = []
        r.sp()
        capabilities.append(r.word())
        while r.maybe_sp():
            capabilities.append(r.word())
        return Enable(tag, tuple(capabilities))

    def id(self, r: _Reader, tag: str) -> Command:
        """``id = "ID" SP id_params_list``; ``id_params_list = "(" *(string SP
        nstring) ")" / nil`` (RFC 2971 §4)."""
        r.sp()
        if r.peek() != 0x28:
            if r.word() != "NIL":
                raise _Bad("expected a parameter list or NIL")
            return Id(tag, None)
        r.skip()
        pairs: list[tuple[str, str | None]] = []
        if r.peek() != 0x29:
            while True:
                key = _utf8(r.string())
                r.sp()
                value = r.nstring()
                pairs.append((key, None if value is None else _utf8(value)))
                if not r.maybe_sp():
                    break
        r.expect(b")", "')' after the ID parameters")
        return Id(tag, tuple(pairs))

    def uid(self, r: _Reader, tag: str) -> Command:
        """``uid = "UID" SP (copy / move / fetch / search / store / expunge)``
        (RFC 3501 §9, RFC 4315 §4, RFC 6851 §5)."""
        r.sp()
        name = r.word()
        if name not in _UID_COMMANDS:
            raise _Bad(f"unknown UID command {name[:32]}")
        self._name = name
        if name == "EXPUNGE":
            r.sp()
            return Expunge(tag, r.sequence_set())
        if name in ("COPY", "MOVE"):
            return self.copy(r, tag, uid=True)
        if name == "FETCH":
            return self.fetch(r, tag, uid=True)
        if name == "STORE":
            return self.store(r, tag, uid=True)
        return self.search(r, tag, uid=True)

    def copy(self, r: _Reader, tag: str, uid: bool = False) -> Command:
        """``copy = "COPY" SP sequence-set SP mailbox`` (and MOVE, RFC 6851)."""
        cls = Move if self._name == "MOVE" else Copy
        r.sp()
        messages = r.sequence_set()
        r.sp()
        return cls(tag, messages, r.mailbox(), uid)

    # --- FETCH ----------------------------------------------------------------

    def fetch(self, r: _Reader, tag: str, uid: bool = False) -> Command:
        """``fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" /
        fetch-att / "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]``
        (RFC 3501 §9, RFC 4466 §2.4, RFC 7162 §7)."""
        r.sp()
        messages = r.sequence_set()
        r.sp()
        attributes: list[FetchAttribute] = []
        if r.peek() == 0x28:
            r.parenthesised(lambda: attributes.append(self._fetch_att(r)))
        else:
            macro = _FETCH_MACROS.get(r.peek_word())
            if macro is not None:
                r.atom()
                attributes.extend(macro)
            else:
                attributes.append(self._fetch_att(r))
        changed_since: int | None = None
        vanished = False
        if r.maybe_sp():

            def modifier() -> None:
                nonlocal changed_since, vanished
                word = r.word()
                if word == "CHANGEDSINCE" and changed_since is None:
                    r.sp()
                    changed_since = r.number(_MAX_MODSEQ)
                elif word == "VANISHED" and not vanished:
                    vanished = True
                else:
                    raise _Bad(f"unknown fetch modifier {word[:32]}")

            r.parenthesised(modifier)
            if vanished and (not uid or changed_since is None):
                raise _Bad("VANISHED needs UID FETCH and CHANGEDSINCE")
        return Fetch(tag, messages, tuple(attributes), uid, changed_since, vanished)

    def _fetch_att(self, r: _Reader) -> FetchAttribute:
        """``fetch-att`` (RFC 3501 §9), plus ``MODSEQ`` (RFC 7162)."""
        name = r.take(_FETCH_NAME).decode("ascii").upper()
        if name in ("BODY", "BODY.PEEK") and r.peek() == 0x5B:
            return self._section(r, peek=name == "BODY.PEEK")
        if name in _FETCH_ITEMS:
            return FetchItem(name)
        if not name:
            raise _Bad("expected a fetch attribute")
        raise _Bad(f"unknown fetch attribute {name[:32]}")

    def _section(self, r: _Reader, peek: bool) -> BodySection:
        """``section = "[" [section-spec] "]"`` then ``["<" number "."
        nz-number ">"]``."""
        r.expect(b"[", "'['")
        spec = r.take(_FETCH_NAME).decode("ascii").upper()
        parts: list[int] = []
        text: str | None = None
        if spec:
            tokens = spec.split(".")
            while tokens and tokens[0].isdigit():
                token = tokens.pop(0)
                if token[0] == "0" or len(token) > 10 or int(token) > MAX_NUMBER:
                    raise _Bad("bad section part number")
                parts.append(int(token))
            if tokens:
                text = ".".join(tokens)
                if text not in _SECTION_TEXTS:
                    raise _Bad("bad section")
                if text == "MIME" and not parts:
                    raise _Bad("MIME needs a part number")
        fields: list[str] = []
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            r.sp()
            r.parenthesised(lambda: fields.append(_utf8(r.astring())))
        r.expect(b"]", "']' after the section")
        partial: tuple[int, int] | None = None
        if r.peek() == 0x3C:
            r.skip()
            origin = r.number()
            r.expect(b".", "'.' in the partial range")
            length = r.number(nonzero=True)
            r.expect(b">", "'>' after the partial range")
            partial = (origin, length)
        return BodySection(peek, tuple(parts), text, tuple(fields), partial)

    # --- STORE ----------------------------------------------------------------

    def store(self, r: _Reader, tag: str, uid: bool = False) -> Command:
        """``store = "STORE" SP sequence-set [SP store-modifiers] SP
        store-att-flags``; ``store-att-flags = (["+" / "-"] "FLAGS"
        [".SILENT"]) SP (flag-list / (flag *(SP flag)))`` (RFC 3501 §9,
        RFC 7162 §7)."""
        r.sp()
        messages = r.sequence_set()
        r.sp()
        unchanged_since: int | None = None
        if r.peek() == 0x28:
            r.skip()
            if r.word() != "UNCHANGEDSINCE":
                raise _Bad("unknown store modifier")
            r.sp()
            unchanged_since = r.number(_MAX_MODSEQ)
            r.expect(b")", "')' after the store modifier")
            r.sp()
        mode = StoreMode.REPLACE
        if r.peek() in (0x2B, 0x2D):
            mode = StoreMode.ADD if r.peek() == 0x2B else StoreMode.REMOVE
            r.skip()
        item = r.take(_FETCH_NAME).decode("ascii").upper()
        if item not in ("FLAGS", "FLAGS.SILENT"):
            raise _Bad("expected FLAGS, +FLAGS or -FLAGS")
        r.sp()
        if r.peek() == 0x28:
            flags = r.flag_list()
        else:
            flag_items = [r.flag()]
            while r.maybe_sp():
                flag_items.append(r.flag())
            flags = tuple(flag_items)
        return Store(
            tag, messages, mode, flags, item == "FLAGS.SILENT", uid, unchanged_since
        )

    # --- SEARCH ---------------------------------------------------------------

    def search(self, r: _Reader, tag: str, uid: bool = False) -> Command:
        """``search = "SEARCH" [search-return-opts] [SP "CHARSET" SP astring]
        1*(SP search-key)`` (RFC 3501 §9, RFC 4466 §2.6, RFC 4731 §3.1)."""
        r.sp()
        returns: tuple[str, ...] | None = None
        charset: str | None = None
        if r.peek_word() == "RETURN":
            r.atom()
            r.sp()
            r.expect(b"(", "'(' after RETURN")
            options: list[str] = []
            if r.peek() != 0x29:
                options.append(r.word())
                while r.maybe_sp():
                    options.append(r.word())
            r.expect(b")", "')' after the return options")
            unknown = set(options) - _SEARCH_RETURN
            if unknown:
                raise _Bad(f"unknown search return option {min(unknown)[:32]}")
            returns = tuple(options)
            r.sp()
        if r.peek_word() == "CHARSET":
            r.atom()
            r.sp()
            charset = r.astring().decode("ascii", "replace").upper()
            r.sp()
        decode = (
            _utf8
            if charset in (None, "UTF-8", "US-ASCII")
            else (lambda b: b.decode("utf-8", "replace"))
        )
        keys = [self._search_key(r, decode, 0)]
        while r.maybe_sp():
            keys.append(self._search_key(r, decode, 0))
        key = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
        return Search(tag, key, uid, charset, returns)

    def _search_key(
        self, r: _Reader, decode: Callable[[bytes], str], depth: int
    ) -> SearchKey:
        """``search-key`` (RFC 3501 §9), plus ``MODSEQ`` (RFC 7162 §7)."""
        if depth > _MAX_SEARCH_DEPTH:
            raise _Bad("search keys nested too deeply")
        c = r.peek()
        if c == 0x28:
            keys: list[SearchKey] = []
            r.parenthesised(lambda: keys.append(self._search_key(r, decode, depth + 1)))
            return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
        if c == 0x2A or 0x30 <= c <= 0x39:
            return SearchMessages(r.sequence_set())
        word = r.word()
        flag = _SEARCH_FLAGS.get(word)
        if flag is not None:
            return flag
        if word in _SEARCH_HEADERS:
            r.sp()
            return SearchHeader(word.lower(), decode(r.astring()))
        if word == "HEADER":
            r.sp()
            name = _utf8(r.astring()).lower()
            r.sp()
            return SearchHeader(name, decode(r.astring()))
        if word in ("BODY", "TEXT"):
            r.sp()
            value = decode(r.astring())
            return SearchBody(value) if word == "BODY" else SearchText(value)
        if word in ("KEYWORD", "UNKEYWORD"):
            r.sp()
            return SearchFlag(r.atom().decode("ascii"), word == "KEYWORD")
        if word in _SEARCH_DATES:
            relation, sent = _SEARCH_DATES[word]
            r.sp()
            return SearchDate(relation, _date(r), sent)
        if word in ("LARGER", "SMALLER"):
            r.sp()
            return SearchSize("larger" if word == "LARGER" else "smaller", r.number())
        if word == "UID":
            r.sp()
            return SearchMessages(r.sequence_set(), uid=True)
        if word == "NOT":
            r.sp()
            return SearchNot(self._search_key(r, decode, depth + 1))
        if word == "OR":
            r.sp()
            left = self._search_key(r, decode, depth + 1)
            r.sp()
            return SearchOr(left, self._search_key(r, decode, depth + 1))
        if word == "MODSEQ":
            r.sp()
            entry = entry_type = None
            if r.peek() == 0x22:
                entry = _utf8(r.quoted())
                r.sp()
                entry_type = r.word().lower()
                if entry_type not in ("priv", "shared", "all"):
                    raise _Bad("bad MODSEQ entry type")
                r.sp()
            return SearchModSeq(r.number(_MAX_MODSEQ), entry, entry_type)
        raise _Bad(f"unknown search key {word[:32]}")


_SEARCH_FLAGS: dict[str, SearchKey] = {
    "ALL": SearchAll(),
    "ANSWERED": SearchFlag("\\Answered"),
    "DELETED": SearchFlag("\\Deleted"),
    "DRAFT": SearchFlag("\\Draft"),
    "FLAGGED": SearchFlag("\\Flagged"),
    "RECENT": SearchFlag("\\Recent"),
    "SEEN": SearchFlag("\\Seen"),
    "UNANSWERED": SearchFlag("\\Answered", False),
    "UNDELETED": SearchFlag("\\Deleted", False),
    "UNDRAFT": SearchFlag("\\Draft", False),
    "UNFLAGGED": SearchFlag("\\Flagged", False),
    "UNSEEN": SearchFlag("\\Seen", False),
    "NEW": SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False))),
    "OLD": SearchFlag("\\Recent", False),
}
_SEARCH_HEADERS = frozenset({"BCC", "CC", "FROM", "SUBJECT", "TO"})
_SEARCH_DATES: dict[str, tuple[Literal["before", "on", "since"], bool]] = {
    "BEFORE": ("before", False),
    "ON": ("on", False),
    "SINCE": ("since", False),
    "SENTBEFORE": ("before", True),
    "SENTON": ("on", True),
    "SENTSINCE": ("since", True),
}


class CommandParser:
    """Turns the client's octets into IMAP command events (sans-I/O).

    An adapter drives it like this (the server's own logic elided)::

        def dataReceived(self, data: bytes) -> None:
            self._handle(self._parser.receive_data(data))

        def _handle(self, events: list[Event]) -> None:
            for event in events:
                if isinstance(event, ContinuationNeeded):
                    self.transport.write(format_continuation(event.text))
                elif isinstance(event, Idle):
                    self.transport.write(format_continuation("idling"))
                    self._handle(self._parser.expect_done())
                ...

    After L{StartTLS}, L{Authenticate}, L{Idle} and L{AuthenticateResponse}
    the parser is paused until the server calls L{resume},
    L{expect_sasl_response} or L{expect_done} (also when it refuses the
    command); those return the events of the input held meanwhile.

    @param max_line: the most octets one command's text may take (the CRLFs
        included, the literals' contents not).
    @param max_literal: the most literal octets one command may carry.
    """

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_literal: int = DEFAULT_MAX_LITERAL,
    ) -> None:
        if max_line < 16 or max_literal < 0:
            raise ValueError("max_line must be at least 16, max_literal >= 0")
        self.max_line = max_line
        self.max_literal = max_literal
        self._grammar = _CommandGrammar()
        self._buffer = bytearray()
        self._pos = 0  # start of unread input in _buffer
        self._scanned = 0  # _buffer[_pos:_scanned] holds no LF
        self._frame = _Frame.LINE
        self._mode = InputMode.COMMAND
        self._segments: list[bytes] = []
        self._literals: list[bytes] = []
        self._literal = bytearray()
        self._text_size = 0
        self._literal_size = 0
        self._remaining = 0
        self._tail = b""
        self._pending: Command | None = None
        self._overflow = False

    @property
    def mode(self) -> InputMode:
        """What the parser makes of the next line."""
        return self._mode

    @property
    def max_skip(self) -> int:
        """The largest refused ``{n+}`` literal that is skipped rather than
        ending the session (L{SKIP_FACTOR} times C{max_literal})."""
        return SKIP_FACTOR * self.max_literal

    @property
    def closed(self) -> bool:
        """True once a literal too large to skip was announced: the parser
        reads nothing more (the server closes the connection)."""
        return self._frame is _Frame.CLOSED

    @property
    def paused(self) -> bool:
        """True while the parser waits for the server to say what comes next."""
        return self._mode is InputMode.PAUSED

    @property
    def buffered_size(self) -> int:
        """Octets held for the command in progress (unread input included)."""
        return (
            len(self._buffer)
            - self._pos
            + sum(map(len, self._segments))
            + sum(map(len, self._literals))
            + len(self._literal)
            + len(self._tail)
        )

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed octets from the client; returns the events they complete.

        While paused, octets are only buffered (up to one command's limits;
        beyond that they are dropped and L{LineTooLong} comes on resuming).
        """
        if self._frame is _Frame.CLOSED:
            return []
        if self._mode is InputMode.PAUSED:
            room = self.max_line + self.max_literal - (len(self._buffer) - self._pos)
            if len(data) > room:
                self._overflow = True
                data = data[: max(room, 0)]
            self._buffer += data
            return []
        self._buffer += data
        return self._run()

    def resume(self, *, discard: bool = False) -> list[Event]:
        """Go back to reading commands after a pause.

        @param discard: drop what the client sent during the pause (after
            STARTTLS, octets sent before the TLS handshake must not be run
            as commands: RFC 3501 §6.2.1, RFC 2595 §3.1).
        @raise ParserStateError: when the parser is not paused.
        """
        self._require_paused()
        self._mode = InputMode.COMMAND
        self._pending = None
        if discard:
            self._drop_buffer()
            self._overflow = False
            return []
        return self._after_pause()

    def expect_sasl_response(self) -> list[Event]:
        """Read the next line as the client's answer to a SASL challenge.

        Call after AUTHENTICATE (or an L{AuthenticateResponse}) once the
        ``+ challenge`` line is sent.  The line yields
        L{AuthenticateResponse} (then the parser pauses again),
        L{AuthenticateCancelled} for ``*``, or L{BadCommand} for bad BASE64
        (both end the exchange and return to commands).

        @raise ParserStateError: when not paused after AUTHENTICATE.
        """
        self._require_paused()
        if not isinstance(self._pending, Authenticate):
            raise ParserStateError("no AUTHENTICATE in progress")
        self._mode = InputMode.SASL
        return self._after_pause()

    def expect_done(self) -> list[Event]:
        """Read the next line as the ``DONE`` that ends IDLE (RFC 2177 §3).

        Call once ``+ idling`` is sent.  The line yields L{IdleDone}, or
        L{BadCommand} with IDLE's tag for anything else; either way the
        parser goes back to commands.

        @raise ParserStateError: when not paused after IDLE.
        """
        self._require_paused()
        if not isinstance(self._pending, Idle):
            raise ParserStateError("no IDLE in progress")
        self._mode = InputMode.DONE
        return self._after_pause()

    # --- internals ------------------------------------------------------------

    def _require_paused(self) -> None:
        if self._mode is not InputMode.PAUSED:
            raise ParserStateError(f"parser is not paused ({self._mode.value})")

    def _drop_buffer(self) -> None:
        del self._buffer[:]
        self._pos = self._scanned = 0

    def _after_pause(self) -> list[Event]:
        if not self._overflow:
            return self._run()
        # Part of the input was dropped while paused: framing is lost, so
        # treat it as one over-long line and resynchronise at the next LF.
        self._overflow = False
        self._drop_buffer()
        tag = self._pending.tag if self._pending else None
        if self._mode is not InputMode.COMMAND:
            self._mode = InputMode.COMMAND
            self._pending = None
        self._frame = _Frame.DISCARD
        self._tail = b""
        return [LineTooLong(tag)]

    def _reset_command(self) -> None:
        self._segments = []
        self._literals = []
        self._literal = bytearray()
        self._text_size = 0
        self._literal_size = 0

    def _run(self) -> list[Event]:
        events: list[Event] = []
        while self._mode is not InputMode.PAUSED:
            if self._frame is _Frame.LINE:
                progressed = self._read_line(events)
            elif self._frame is _Frame.LITERAL:
                progressed = self._read_literal()
            elif self._frame is _Frame.SKIP:
                progressed = self._skip_literal()
            elif self._frame is _Frame.DISCARD:
                progressed = self._discard_line(events)
            else:
                self._drop_buffer()
                break
            if not progressed:
                break
        if self._pos:
            del self._buffer[: self._pos]
            self._scanned = max(self._scanned - self._pos, 0)
            self._pos = 0
        return events

    def _current_tag(self) -> str | None:
        if self._mode in (InputMode.SASL, InputMode.DONE):
            return self._pending.tag if self._pending else None
        if self._segments:
            return _tag_of(self._segments[0])
        return _tag_of(bytes(self._buffer[self._pos : self._pos + 256]))

    def _read_line(self, events: list[Event]) -> bool:
        buf = self._buffer
        nl = buf.find(b"\n", max(self._scanned, self._pos))
        if nl < 0:
            self._scanned = len(buf)
            if self._text_size + len(buf) - self._pos > self.max_line:
                events.append(LineTooLong(self._current_tag()))
                self._tail = bytes(buf[max(self._pos, len(buf) - 32) :])
                self._pos = self._scanned = len(buf)
                self._start_discarding()
            return False
        line = bytes(buf[self._pos : nl + 1])
        self._pos = self._scanned = nl + 1
        if self._text_size + len(line) > self.max_line:
            if self._mode is InputMode.COMMAND:
                tag = _tag_of(self._segments[0] if self._segments else line)
            else:
                tag = self._current_tag()
            events.append(LineTooLong(tag))
            self._start_discarding()
            self._discarded_line_ended(line[-40:], tag, events)
            return True
        crlf = line.endswith(b"\r\n")
        text = line[:-2] if crlf else line[:-1]
        if self._mode is InputMode.DONE:
            self._done_line(text, crlf, events)
        elif self._mode is InputMode.SASL:
            self._sasl_line(text, crlf, events)
        else:
            self._command_line(text, len(line), crlf, events)
        return True

    def _start_discarding(self) -> None:
        self._reset_command()
        self._frame = _Frame.DISCARD
        if self._mode is not InputMode.COMMAND:
            self._mode = InputMode.COMMAND
            self._pending = None

    def _done_line(self, text: bytes, crlf: bool, events: list[Event]) -> None:
        assert self._pending is not None
        tag = self._pending.tag
        self._mode = InputMode.COMMAND
        self._pending = None
        if crlf and text.upper() == b"DONE":
            events.append(IdleDone(tag))
        else:
            events.append(BadCommand(tag, "expected DONE"))

    def _sasl_line(self, text: bytes, crlf: bool, events: list[Event]) -> None:
        assert self._pending is not None
        tag = self._pending.tag
        if crlf and text == b"*":
            events.append(AuthenticateCancelled(tag))
            self._mode = InputMode.COMMAND
            self._pending = None
            return
        try:
            if not crlf:
                raise _Bad("line must end with CRLF")
            data = _decode_base64(text)
        except _Bad as e:
            events.append(BadCommand(tag, e.reason))
            self._mode = InputMode.COMMAND
            self._pending = None
            return
        events.append(AuthenticateResponse(tag, data))
        self._mode = InputMode.PAUSED

    def _command_line(
        self, text: bytes, size: int, crlf: bool, events: list[Event]
    ) -> None:
        announced = _literal_at_end(text) if crlf else None
        if announced is not None and _ends_inside_quotes(text):
            announced = None
        if announced is None:
            self._segments.append(text)
            if not crlf:
                event: Event = BadCommand(
                    _tag_of(self._segments[0]), "line must end with CRLF"
                )
            elif len(self._segments) == 1 and not text:
                event = BadCommand(None, "empty command line")
            else:
                event = self._grammar.parse(self._segments, self._literals)
            self._reset_command()
            events.append(event)
            if isinstance(event, _PAUSING):
                self._mode = InputMode.PAUSED
                self._pending = event
            return
        length, synchronising = announced
        first = self._segments[0] if self._segments else text
        if self._literal_size + length > self.max_literal:
            self._reset_command()
            tag = _tag_of(first)
            if synchronising:
                events.append(LiteralTooLarge(tag, length))
            else:
                self._skip_or_close(tag, length, events)
            return
        if synchronising and not self._segments:
            refusal = self._grammar.early_check(text)
            if refusal is not None:
                events.append(refusal)
                self._reset_command()
                return
        self._segments.append(text)
        self._text_size += size
        self._literal_size += length
        self._remaining = length
        self._frame = _Frame.LITERAL
        if synchronising:
            events.append(ContinuationNeeded(size=length))

    def _read_literal(self) -> bool:
        available = len(self._buffer) - self._pos
        if self._remaining and not available:
            return False
        take = min(self._remaining, available)
        self._literal += self._buffer[self._pos : self._pos + take]
        self._pos += take
        self._scanned = self._pos
        self._remaining -= take
        if self._remaining:
            return False
        self._literals.append(bytes(self._literal))
        self._literal = bytearray()
        self._frame = _Frame.LINE
        return True

    def _skip_literal(self) -> bool:
        available = len(self._buffer) - self._pos
        if self._remaining and not available:
            return False
        take = min(self._remaining, available)
        self._pos += take
        self._scanned = self._pos
        self._remaining -= take
        if self._remaining:
            return False
        self._frame = _Frame.DISCARD
        self._tail = b""
        return True

    def _skip_or_close(self, tag: str | None, length: int, events: list[Event]) -> None:
        """A refused ``{n+}`` literal: skip its octets, or close when there
        are too many to be worth reading."""
        closing = length > self.max_skip
        events.append(LiteralTooLarge(tag, length, False, closing))
        if closing:
            self._frame = _Frame.CLOSED
            self._drop_buffer()
        else:
            self._remaining = length
            self._frame = _Frame.SKIP

    def _discard_line(self, events: list[Event]) -> bool:
        buf = self._buffer
        nl = buf.find(b"\n", self._pos)
        if nl < 0:
            self._tail = (self._tail + bytes(buf[max(self._pos, len(buf) - 32) :]))[
                -32:
            ]
            self._pos = self._scanned = len(buf)
            return False
        end = self._tail + bytes(buf[max(self._pos, nl + 1 - 40) : nl + 1])
        self._pos = self._scanned = nl + 1
        self._discarded_line_ended(end, None, events)
        return True

    def _discarded_line_ended(
        self, end: bytes, tag: str | None, events: list[Event]
    ) -> None:
        """A skipped line ended; a ``{n+}`` at its end is skipped too (or,
        past L{max_skip}, closes the parser with a L{LiteralTooLarge})."""
        self._tail = b""
        announced = _literal_at_end(end[:-2]) if end.endswith(b"\r\n") else None
        if announced is not None and not announced[1]:
            size = announced[0]
            if size > self.max_skip:
                self._skip_or_close(tag, size, events)
            else:
                self._remaining = size
                self._frame = _Frame.SKIP
        else:
            self._frame = _Frame.LINE
