# -*- test-case-name: tests.test_imap_parser -*-
"""The events the IMAP command parser yields, for the IMAP step of the flow.

Each client command becomes one frozen dataclass (a L{Command} subclass named
after it, with its arguments typed and decoded: mailbox names from modified
UTF-7, strings from UTF-8, dates as C{datetime}).  The framing events
(L{ContinuationNeeded}, L{LiteralTooLarge}, L{LineTooLong}, L{BadCommand}) and
the events of the AUTHENTICATE and IDLE exchanges complete the set.  Grammar
rules cited are from RFC 3501 §9 unless another RFC is named.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import ClassVar, Literal

from twistedmail.imap._format import format_astring, format_list
from twistedmail.imap._sequence import SequenceSet

__all__ = [
    "Append",
    "Authenticate",
    "AuthenticateCancelled",
    "AuthenticateResponse",
    "BadCommand",
    "BodySection",
    "Capability",
    "Check",
    "Close",
    "Command",
    "ContinuationNeeded",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Event",
    "Examine",
    "Expunge",
    "Fetch",
    "FetchAttribute",
    "FetchItem",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "Idle",
    "IdleDone",
    "LineTooLong",
    "List",
    "LiteralTooLarge",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "QResync",
    "Rename",
    "Search",
    "SearchAll",
    "SearchAnd",
    "SearchBody",
    "SearchDate",
    "SearchFlag",
    "SearchHeader",
    "SearchKey",
    "SearchMessages",
    "SearchModSeq",
    "SearchNot",
    "SearchOr",
    "SearchSize",
    "SearchText",
    "Select",
    "StartTLS",
    "Status",
    "StatusItem",
    "Store",
    "StoreMode",
    "Subscribe",
    "Unselect",
    "Unsubscribe",
]


# --- framing events ---------------------------------------------------------


@dataclass(frozen=True)
class ContinuationNeeded:
    """A synchronising literal ``{size}`` was announced and is accepted.

    The adapter sends ``+ text`` (RFC 3501 §7.5) so the client sends it.
    """

    text: str = "Ready for literal"
    size: int = 0


@dataclass(frozen=True)
class LiteralTooLarge:
    """A literal above the limit was announced; none of it was or will be kept.

    No continuation was requested.  For a synchronising literal the client
    sends nothing more of the command, so the server answers with a tagged
    ``NO [TOOBIG]`` (RFC 7889, RFC 4469) and the session goes on.  A
    non-synchronising literal (RFC 7888 §4) is on its way: it and the rest
    of its command are skipped without being kept, and the server answers
    with a tagged ``BAD [TOOBIG]``; when it is too large even to skip
    (C{closing}), the parser reads nothing more and the server says BYE.
    The answer is untagged when C{tag} is None.
    """

    tag: str | None
    size: int
    synchronising: bool = True
    closing: bool = False


@dataclass(frozen=True)
class LineTooLong:
    """A command line went past the limit; the rest of it is being skipped."""

    tag: str | None


@dataclass(frozen=True)
class BadCommand:
    """A syntax error: answer ``tag BAD reason``, or ``* BAD`` without a tag."""

    tag: str | None
    reason: str


@dataclass(frozen=True)
class AuthenticateResponse:
    """One client line of an AUTHENTICATE exchange, BASE64-decoded (§6.2.2)."""

    tag: str
    data: bytes


@dataclass(frozen=True)
class AuthenticateCancelled:
    """The client answered a SASL challenge with ``*`` (RFC 3501 §6.2.2)."""

    tag: str


@dataclass(frozen=True)
class IdleDone:
    """The client ended IDLE with ``DONE`` (RFC 2177 §3)."""

    tag: str


# --- commands -----------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """Base of every parsed command; C{name} is the command word."""

    name: ClassVar[str] = ""
    tag: str


@dataclass(frozen=True)
class Capability(Command):
    """``CAPABILITY`` (RFC 3501 §6.1.1)."""

    name: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True)
class Noop(Command):
    """``NOOP`` (RFC 3501 §6.1.2)."""

    name: ClassVar[str] = "NOOP"


@dataclass(frozen=True)
class Logout(Command):
    """``LOGOUT`` (RFC 3501 §6.1.3)."""

    name: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True)
class StartTLS(Command):
    """``STARTTLS`` (RFC 3501 §6.2.1).  The parser pauses after it."""

    name: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True)
class Authenticate(Command):
    """``AUTHENTICATE mechanism [initial-response]`` (§6.2.2, RFC 4959).

    @ivar mechanism: upper-cased SASL mechanism name.
    @ivar initial_response: the decoded SASL-IR, C{b""} for ``=``, or None
        when the client sent none.  The parser pauses after this command.
    """

    name: ClassVar[str] = "AUTHENTICATE"
    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True)
class Login(Command):
    """``LOGIN userid password`` (RFC 3501 §6.2.3), decoded as UTF-8."""

    name: ClassVar[str] = "LOGIN"
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Login(tag={self.tag!r}, username={self.username!r}, password=...)"


class StatusItem(StrEnum):
    """A ``status-att`` (RFC 3501 §6.3.10, RFC 7162, RFC 7889, RFC 9208)."""

    MESSAGES = "MESSAGES"
    RECENT = "RECENT"
    UIDNEXT = "UIDNEXT"
    UIDVALIDITY = "UIDVALIDITY"
    UNSEEN = "UNSEEN"
    HIGHESTMODSEQ = "HIGHESTMODSEQ"
    APPENDLIMIT = "APPENDLIMIT"
    SIZE = "SIZE"
    DELETED = "DELETED"


@dataclass(frozen=True)
class QResync:
    """The ``QRESYNC`` SELECT parameter (RFC 7162 §3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    known_sequence_set: SequenceSet | None = None
    known_uid_set: SequenceSet | None = None


@dataclass(frozen=True)
class _Opening(Command):
    """What SELECT and EXAMINE share (they are siblings, not subclasses)."""

    read_only: ClassVar[bool] = False
    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True)
class Select(_Opening):
    """``SELECT mailbox [(params)]`` (RFC 3501 §6.3.1, RFC 7162 §3.1.8).

    @ivar condstore: ``(CONDSTORE)`` was given (RFC 7162 §3.1.8).
    @ivar qresync: the ``(QRESYNC (...))`` parameter, or None.
    """

    name: ClassVar[str] = "SELECT"


@dataclass(frozen=True)
class Examine(_Opening):
    """``EXAMINE mailbox [(params)]`` (RFC 3501 §6.3.2): a read-only SELECT."""

    name: ClassVar[str] = "EXAMINE"
    read_only: ClassVar[bool] = True


@dataclass(frozen=True)
class Create(Command):
    """``CREATE mailbox`` (RFC 3501 §6.3.3)."""

    name: ClassVar[str] = "CREATE"
    mailbox: str


@dataclass(frozen=True)
class Delete(Command):
    """``DELETE mailbox`` (RFC 3501 §6.3.4)."""

    name: ClassVar[str] = "DELETE"
    mailbox: str


@dataclass(frozen=True)
class Rename(Command):
    """``RENAME existing new`` (RFC 3501 §6.3.5)."""

    name: ClassVar[str] = "RENAME"
    mailbox: str
    new_name: str


@dataclass(frozen=True)
class Subscribe(Command):
    """``SUBSCRIBE mailbox`` (RFC 3501 §6.3.6)."""

    name: ClassVar[str] = "SUBSCRIBE"
    mailbox: str


@dataclass(frozen=True)
class Unsubscribe(Command):
    """``UNSUBSCRIBE mailbox`` (RFC 3501 §6.3.7)."""

    name: ClassVar[str] = "UNSUBSCRIBE"
    mailbox: str


@dataclass(frozen=True)
class List(Command):
    """``LIST`` (RFC 3501 §6.3.8), with LIST-EXTENDED (RFC 5258) options.

    @ivar reference: the reference name, decoded.
    @ivar patterns: one or more patterns (``*`` and ``%`` wildcards kept).
    @ivar select_options: upper-cased selection options (``SUBSCRIBED``,
        ``REMOTE``, ``RECURSIVEMATCH``, ``SPECIAL-USE``).
    @ivar return_options: upper-cased return options (``SUBSCRIBED``,
        ``CHILDREN``, ``SPECIAL-USE``, ``STATUS``).
    @ivar status_items: the items of ``RETURN (STATUS (...))`` (RFC 5819).
    @ivar extended: True when the extended syntax was used, so the server
        answers with extended data (RFC 5258 §3).
    """

    name: ClassVar[str] = "LIST"
    reference: str
    patterns: tuple[str, ...]
    select_options: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()
    status_items: tuple[StatusItem, ...] = ()
    extended: bool = False


@dataclass(frozen=True)
class Lsub(Command):
    """``LSUB reference pattern`` (RFC 3501 §6.3.9)."""

    name: ClassVar[str] = "LSUB"
    reference: str
    pattern: str


@dataclass(frozen=True)
class Status(Command):
    """``STATUS mailbox (items)`` (RFC 3501 §6.3.10)."""

    name: ClassVar[str] = "STATUS"
    mailbox: str
    items: tuple[StatusItem, ...]


@dataclass(frozen=True)
class Append(Command):
    """``APPEND mailbox [flags] [date-time] literal`` (RFC 3501 §6.3.11).

    @ivar flags: the flags as given, system flags in canonical case.
    @ivar internal_date: the date-time with its zone, or None.
    """

    name: ClassVar[str] = "APPEND"
    mailbox: str
    message: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime.datetime | None = None

    def __repr__(self) -> str:
        return (
            f"Append(tag={self.tag!r}, mailbox={self.mailbox!r}, "
            f"message=<{len(self.message)} octets>, flags={self.flags!r}, "
            f"internal_date={self.internal_date!r})"
        )


@dataclass(frozen=True)
class Check(Command):
    """``CHECK`` (RFC 3501 §6.4.1)."""

    name: ClassVar[str] = "CHECK"


@dataclass(frozen=True)
class Close(Command):
    """``CLOSE`` (RFC 3501 §6.4.2)."""

    name: ClassVar[str] = "CLOSE"


@dataclass(frozen=True)
class Unselect(Command):
    """``UNSELECT`` (RFC 3691)."""

    name: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True)
class Expunge(Command):
    """``EXPUNGE`` (RFC 3501 §6.4.3), or ``UID EXPUNGE set`` (RFC 4315 §2.1)."""

    name: ClassVar[str] = "EXPUNGE"
    uid_set: SequenceSet | None = None


# --- SEARCH keys (RFC 3501 §6.4.4) ----------------------------------------------


@dataclass(frozen=True)
class SearchKey:
    """Base of the SEARCH key tree."""


@dataclass(frozen=True)
class SearchAll(SearchKey):
    """``ALL``: every message."""


@dataclass(frozen=True)
class SearchAnd(SearchKey):
    """All of C{keys} (a parenthesised list, or several keys in a row)."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True)
class SearchOr(SearchKey):
    """``OR key1 key2``."""

    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class SearchNot(SearchKey):
    """``NOT key``."""

    key: SearchKey


@dataclass(frozen=True)
class SearchFlag(SearchKey):
    """A flag test: ``SEEN`` is C{SearchFlag("\\\\Seen")}, ``UNSEEN`` the same
    with C{present=False}, ``KEYWORD x`` is C{SearchFlag("x")}.

    ``NEW`` is \\Recent and not \\Seen; ``OLD`` is not \\Recent.
    """

    flag: str
    present: bool = True


@dataclass(frozen=True)
class SearchHeader(SearchKey):
    """A header field containing C{value} (``FROM``, ``HEADER name value``...).

    @ivar field: the lower-cased field name (``from``, ``subject``...).
    """

    field: str
    value: str


@dataclass(frozen=True)
class SearchBody(SearchKey):
    """``BODY string``: the body contains C{value}."""

    value: str


@dataclass(frozen=True)
class SearchText(SearchKey):
    """``TEXT string``: the header or body contains C{value}."""

    value: str


@dataclass(frozen=True)
class SearchDate(SearchKey):
    """``BEFORE``/``ON``/``SINCE`` (internal date) or ``SENT*`` (Date: field)."""

    relation: Literal["before", "on", "since"]
    date: datetime.date
    sent: bool = False


@dataclass(frozen=True)
class SearchSize(SearchKey):
    """``LARGER n`` or ``SMALLER n`` (RFC822.SIZE)."""

    relation: Literal["larger", "smaller"]
    size: int


@dataclass(frozen=True)
class SearchMessages(SearchKey):
    """A sequence set (C{uid=False}) or ``UID set``."""

    sequence_set: SequenceSet
    uid: bool = False


@dataclass(frozen=True)
class SearchModSeq(SearchKey):
    """``MODSEQ [entry type] n`` (RFC 7162 §3.1.5)."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True)
class Search(Command):
    """``[UID] SEARCH [RETURN (...)] [CHARSET c] keys`` (§6.4.4, RFC 4731).

    @ivar key: the whole query; several top-level keys form a L{SearchAnd}.
    @ivar charset: the upper-cased CHARSET, or None.  Strings are decoded as
        UTF-8 for None, ``UTF-8`` and ``US-ASCII`` (invalid UTF-8 is BAD); for
        any other charset they are decoded as UTF-8 with errors replaced, and
        the server is expected to answer ``NO [BADCHARSET (UTF-8 US-ASCII)]``
        (RFC 3501 §6.4.4) without using them.
    @ivar return_options: None without ``RETURN``; else the upper-cased
        ESEARCH options (``MIN``, ``MAX``, ``ALL``, ``COUNT``, ``SAVE``); an
        empty ``RETURN ()`` means ``ALL`` (RFC 4731 §3.1).
    """

    name: ClassVar[str] = "SEARCH"
    key: SearchKey
    uid: bool = False
    charset: str | None = None
    return_options: tuple[str, ...] | None = None


# --- FETCH attributes (RFC 3501 §6.4.5) --------------------------------------


class FetchItem(StrEnum):
    """A FETCH data item without a section."""

    ENVELOPE = "ENVELOPE"
    FLAGS = "FLAGS"
    INTERNALDATE = "INTERNALDATE"
    RFC822 = "RFC822"
    RFC822_HEADER = "RFC822.HEADER"
    RFC822_SIZE = "RFC822.SIZE"
    RFC822_TEXT = "RFC822.TEXT"
    BODY = "BODY"
    BODYSTRUCTURE = "BODYSTRUCTURE"
    UID = "UID"
    MODSEQ = "MODSEQ"


@dataclass(frozen=True)
class BodySection:
    """``BODY[section]<partial>`` or ``BODY.PEEK[...]`` (RFC 3501 §6.4.5).

    @ivar peek: True for BODY.PEEK (do not set \\Seen).
    @ivar part: the part numbers (``1.2`` is C{(1, 2)}); empty for the
        whole message.
    @ivar text: None, ``HEADER``, ``HEADER.FIELDS``, ``HEADER.FIELDS.NOT``,
        ``TEXT`` or ``MIME`` (upper-cased).
    @ivar fields: the header field names of ``HEADER.FIELDS (...)``, as sent.
    @ivar partial: ``(origin, length)`` of ``<origin.length>``, or None.
    """

    peek: bool = False
    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None

    def section_bytes(self) -> bytes:
        """The ``section-spec`` between the brackets, e.g. ``1.HEADER``."""
        pieces = [str(n).encode("ascii") for n in self.part]
        if self.text:
            pieces.append(self.text.encode("ascii"))
        spec = b".".join(pieces)
        if self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            spec += b" " + format_list(format_astring(f) for f in self.fields)
        return spec

    def response_name(self) -> bytes:
        """The name of this item in the FETCH response (RFC 3501 §7.4.2).

        ``BODY.PEEK`` is answered as ``BODY``, and a partial fetch names only
        its origin: ``BODY[TEXT]<0>``.
        """
        name = b"BODY[" + self.section_bytes() + b"]"
        if self.partial is not None:
            name += b"<%d>" % self.partial[0]
        return name


FetchAttribute = FetchItem | BodySection


@dataclass(frozen=True)
class Fetch(Command):
    """``[UID] FETCH set attributes [(modifiers)]`` (§6.4.5, RFC 7162).

    ``ALL``, ``FAST`` and ``FULL`` are expanded.  With C{uid}, ``UID`` is
    not added: the server adds it to each response (§6.4.8).
    """

    name: ClassVar[str] = "FETCH"
    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    uid: bool = False
    changed_since: int | None = None
    vanished: bool = False


class StoreMode(Enum):
    """How STORE applies its flags."""

    REPLACE = ""
    ADD = "+"
    REMOVE = "-"


@dataclass(frozen=True)
class Store(Command):
    """``[UID] STORE set [(UNCHANGEDSINCE n)] [+-]FLAGS[.SILENT] flags``.

    (RFC 3501 §6.4.6, RFC 7162 §3.1.3.)
    """

    name: ClassVar[str] = "STORE"
    sequence_set: SequenceSet
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchanged_since: int | None = None


@dataclass(frozen=True)
class Copy(Command):
    """``[UID] COPY set mailbox`` (RFC 3501 §6.4.7)."""

    name: ClassVar[str] = "COPY"
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True)
class Move(Command):
    """``[UID] MOVE set mailbox`` (RFC 6851)."""

    name: ClassVar[str] = "MOVE"
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True)
class Idle(Command):
    """``IDLE`` (RFC 2177).  The parser pauses after it."""

    name: ClassVar[str] = "IDLE"


@dataclass(frozen=True)
class Enable(Command):
    """``ENABLE cap...`` (RFC 5161), capability names upper-cased."""

    name: ClassVar[str] = "ENABLE"
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Id(Command):
    """``ID (field value ...)`` or ``ID NIL`` (RFC 2971).

    @ivar parameters: the field/value pairs in order, or None for NIL.
    """

    name: ClassVar[str] = "ID"
    parameters: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class Namespace(Command):
    """``NAMESPACE`` (RFC 2342)."""

    name: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True)
class GetQuota(Command):
    """``GETQUOTA root`` (RFC 9208 §4.2)."""

    name: ClassVar[str] = "GETQUOTA"
    root: str


@dataclass(frozen=True)
class GetQuotaRoot(Command):
    """``GETQUOTAROOT mailbox`` (RFC 9208 §4.3)."""

    name: ClassVar[str] = "GETQUOTAROOT"
    mailbox: str


Event = (
    Command
    | ContinuationNeeded
    | LiteralTooLarge
    | LineTooLong
    | BadCommand
    | AuthenticateResponse
    | AuthenticateCancelled
    | IdleDone
)
