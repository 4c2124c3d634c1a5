# -*- test-case-name: tests.test_imap_parser -*-
"""Safe building blocks for IMAP responses (RFC 3501 §4, §9), the server's side.

Every value a server puts in a response goes through one of these: a string
that could be mistaken for syntax, or that holds CR, LF, NUL or 8-bit octets,
is sent as a literal, never quoted; quoted strings escape ``"`` and ``\\``.
"""

from __future__ import annotations

import datetime
import itertools
import operator
from collections.abc import Iterable, Sequence

from twistedmail.imap._mutf7 import encode_mailbox_name

__all__ = [
    "MAX_QUOTED",
    "format_astring",
    "format_continuation",
    "format_date_time",
    "format_date_times",
    "format_flags",
    "format_list",
    "format_mailbox",
    "format_nstring",
    "format_status",
    "format_string",
    "is_atom",
]

#: Longer strings are sent as literals even when they could be quoted, so no
#: response line grows past what clients buffer.
MAX_QUOTED = 1024

# ATOM-CHAR (RFC 3501 §9): any CHAR except atom-specials.
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')
_ATOM_CHARS = frozenset(c for c in range(0x21, 0x7F) if c not in _ATOM_SPECIALS)
_QUOTABLE = frozenset(range(0x20, 0x7F))
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def is_atom(value: bytes) -> bool:
    """Whether C{value} can be sent as an ``atom`` (RFC 3501 §9)."""
    return bool(value) and all(c in _ATOM_CHARS for c in value)


def format_string(value: bytes | str) -> bytes:
    """A ``string``: quoted when safe, otherwise a literal (RFC 3501 §4.3).

    A C{str} is sent as UTF-8.  Strings with CR, LF, NUL, other controls or
    8-bit octets, or longer than L{MAX_QUOTED}, become ``{n}`` CRLF literals.
    """
    data = _as_bytes(value)
    if len(data) <= MAX_QUOTED and all(c in _QUOTABLE for c in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def format_astring(value: bytes | str) -> bytes:
    """An ``astring``: an atom when possible, otherwise a L{format_string}.

    ``NIL`` is quoted so it cannot be read as the nil value.
    """
    data = _as_bytes(value)
    if is_atom(data) and data.upper() != b"NIL":
        return data
    return format_string(data)


def format_nstring(value: bytes | str | None) -> bytes:
    """An ``nstring``: ``NIL`` for None, otherwise a L{format_string}."""
    return b"NIL" if value is None else format_string(value)


def format_list(items: Iterable[bytes]) -> bytes:
    """A parenthesised list of already formatted items, separated by SP."""
    return b"(" + b" ".join(items) + b")"


def format_mailbox(name: str) -> bytes:
    """A ``mailbox``: modified UTF-7 (RFC 3501 §5.1.3) as an astring.

    @raise twistedmail.imap.MailboxNameError: when the name cannot be encoded.
    """
    return format_astring(encode_mailbox_name(name))


def format_flags(flags: Iterable[str]) -> bytes:
    """A ``flag-list`` such as ``(\\Seen \\Answered $Junk)``.

    @raise ValueError: for a flag that is not an atom (with an optional
        leading backslash), which could otherwise break the response.
    """
    out = []
    for flag in flags:
        data = flag.encode("ascii", "replace")
        body = data[1:] if data[:1] == b"\\" else data
        if not is_atom(body) and data != b"\\*":
            raise ValueError(f"not a flag: {flag!r}")
        out.append(data)
    return format_list(out)


def format_date_time(when: datetime.datetime) -> bytes:
    """A quoted ``date-time`` such as ``"17-Jul-1996 02:44:25 -0700"``.

    A naive datetime is taken as UTC.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    offset = when.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (
        f'"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} '
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


_DAY = 86_400
#: ``HH:MM:`` of each minute of a day, and ``SS +0000"`` of each second.
_MINUTE_TEXTS = tuple(b"%02d:%02d:" % divmod(m, 60) for m in range(1440))
_SECOND_TEXTS = tuple(b'%02d +0000"' % s for s in range(60))


class _DayTexts(dict[int, bytes]):
    """The start of a UTC date-time (``"DD-Mon-YYYY``, then a space) of
    each day since the epoch, made on first use: a folder's messages
    share a few hundred days or so."""

    def __missing__(self, day: int) -> bytes:
        when = datetime.datetime.fromtimestamp(day * _DAY, datetime.UTC)
        month = _MONTHS[when.month - 1].encode()
        text = b'"%2d-%s-%04d ' % (when.day, month, when.year)
        self[day] = text
        return text


def format_date_times(seconds: Sequence[int]) -> list[bytes]:
    """L{format_date_time} of each POSIX time in UTC, as FETCH INTERNALDATE
    sends it: the same octets as one call per time, for a folder's worth
    of messages (the arithmetic and the joins run as passes in C, and a
    datetime is made once per distinct day only).

    @raise ValueError: for a time outside the years 1 to 9999, as
        L{datetime.datetime.fromtimestamp} raises.
    """
    # Floor division and modulo give the UTC day, minute and second of
    # times before 1970 too, as fromtimestamp does (POSIX time has no leap
    # seconds).
    repeat = itertools.repeat
    floordiv, mod, add = operator.floordiv, operator.mod, operator.add
    days = map(_DayTexts().__getitem__, map(floordiv, seconds, repeat(_DAY)))
    minutes = map(
        _MINUTE_TEXTS.__getitem__,
        map(mod, map(floordiv, seconds, repeat(60)), repeat(1440)),
    )
    rest = map(_SECOND_TEXTS.__getitem__, map(mod, seconds, repeat(60)))
    return list(map(add, map(add, days, minutes), rest))


def _text(value: str) -> bytes:
    # resp-text (RFC 3501 §9) is 1*TEXT-CHAR: no CR or LF, and we keep it ASCII.
    cleaned = "".join(" " if ch in "\r\n" else ch for ch in value)
    return cleaned.encode("ascii", "replace") or b"-"


def format_status(
    tag: str | None,
    status: str,
    text: str,
    code: bytes | str | None = None,
) -> bytes:
    """A status response line, CRLF included (RFC 3501 §7.1).

    @param tag: the command's tag, or None for an untagged (``*``) response.
    @param status: ``OK``, ``NO``, ``BAD``, ``PREAUTH`` or ``BYE``.
    @param code: the response code without brackets, e.g. ``b"READ-WRITE"``.
    @param text: human-readable text; CR and LF become spaces.
    """
    head = (tag if tag is not None else "*").encode("ascii", "replace")
    line = head + b" " + status.encode("ascii")
    if code is not None:
        line += b" [" + _text(code.decode() if isinstance(code, bytes) else code) + b"]"
    return line + b" " + _text(text) + b"\r\n"


def format_continuation(text: str = "Ready") -> bytes:
    """A continuation request line, ``+ text`` CRLF (RFC 3501 §7.5)."""
    return b"+ " + _text(text) + b"\r\n"
