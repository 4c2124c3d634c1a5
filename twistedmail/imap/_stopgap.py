# -*- test-case-name: tests.test_imap_server_fetch -*-
"""A minimal stand-in for the IMAP message and SEARCH modules, for the IMAP
step of the flow.

The full versions (``_message``: ENVELOPE, BODYSTRUCTURE and sections with a
cache; ``_search``: SEARCH) are written separately; until they land the
server uses these, which cover the common cases: a byte-exact MIME splitter
for sections and sizes, ENVELOPE from the raw header fields, BODYSTRUCTURE
with extension data, and SEARCH over flags, dates, sizes, sets, headers
(RFC 2047 decoded) and text parts (transfer-decoded).  Known gaps: group
syntax in address lists, RFC 2231 continuations in parameters, and
message/rfc822 parts inside message/rfc822 parts beyond what the splitter
sees.
"""

from __future__ import annotations

import datetime
import email.errors
import email.header
import email.utils
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

from twistedmail.imap._format import format_list, format_nstring, format_string
from twistedmail.imap._types import (
    BodySection,
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
)

__all__ = [
    "MessagePart",
    "SearchContext",
    "bodystructure",
    "envelope",
    "evaluate_search",
    "fetch_section",
    "parse_message",
]

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")


@dataclass
class MessagePart:
    """One MIME entity, split byte-exactly.

    @ivar header: the header octets with the blank line that ends them.
    @ivar body: the octets after the blank line.
    @ivar fields: (name, unfolded raw value) for each header field.
    @ivar children: the parts of a multipart.
    @ivar message: the message of a message/rfc822 part.
    """

    header: bytes
    body: bytes
    fields: list[tuple[bytes, bytes]]
    maintype: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    children: list[MessagePart] = field(default_factory=list)
    message: MessagePart | None = None

    def get(self, name: bytes) -> bytes | None:
        """The first field's raw value, or None."""
        lower = name.lower()
        for key, value in self.fields:
            if key.lower() == lower:
                return value
        return None


def _split(data: bytes) -> tuple[bytes, bytes]:
    if data.startswith(b"\r\n"):
        return b"\r\n", data[2:]
    if data.startswith(b"\n"):
        return b"\n", data[1:]
    m = _HEADER_END.search(data)
    if m is None:
        return data, b""
    return data[: m.end()], data[m.end() :]


def _fields(header: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for line in re.split(rb"\r?\n", header):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            name, value = out[-1]
            out[-1] = (name, value + b" " + line.strip())
            continue
        m = _FIELD.match(line)
        if m is not None:
            out.append((m.group(1), line[m.end() :].strip()))
    return out


def _content_type(
    value: bytes | None, default: str
) -> tuple[str, str, list[tuple[str, str]]]:
    if value is None:
        maintype, _, subtype = default.partition("/")
        defaults = [("charset", "us-ascii")] if maintype == "text" else []
        return maintype, subtype, defaults
    m = Message()
    m["Content-Type"] = value.decode("utf-8", "replace")
    ctype = m.get_content_type()
    maintype, _, subtype = ctype.partition("/")
    params: list[tuple[str, str]] = []
    for key, val in (m.get_params() or [])[1:]:
        if isinstance(val, tuple):
            val = email.utils.collapse_rfc2231_value(val)
        params.append((key, str(val)))
    return maintype, subtype, params


def parse_message(
    data: bytes, default: str = "text/plain", depth: int = 0
) -> MessagePart:
    """Split a message (or MIME part) into a L{MessagePart} tree."""
    header, body = _split(data)
    fields = _fields(header)
    part = MessagePart(header, body, fields)
    part.maintype, part.subtype, part.params = _content_type(
        part.get(b"content-type"), default
    )
    if depth > 20:
        return part
    if part.maintype == "multipart":
        boundary = dict(part.params).get("boundary")
        if boundary:
            part.children = [
                parse_message(
                    chunk,
                    "message/rfc822" if part.subtype == "digest" else "text/plain",
                    depth + 1,
                )
                for chunk in _multipart_chunks(
                    body, boundary.encode("utf-8", "replace")
                )
            ]
        if not part.children:
            part.children = [parse_message(b"\r\n", "text/plain", depth + 1)]
    elif (part.maintype, part.subtype) == ("message", "rfc822"):
        part.message = parse_message(body, "text/plain", depth + 1)
    return part


def _multipart_chunks(body: bytes, boundary: bytes) -> list[bytes]:
    delimiter = re.compile(
        rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)"
    )
    chunks: list[bytes] = []
    start: int | None = None
    for m in delimiter.finditer(body):
        if start is not None:
            chunks.append(body[start : m.start()])
        if m.group(1):
            return chunks
        start = m.end()
    if start is not None:
        chunks.append(body[start:])
    return chunks


# --- ENVELOPE -----------------------------------------------------------------


def _addresses(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    text = value.decode("utf-8", "surrogateescape")
    out = []
    for name, addr in email.utils.getaddresses([text]):
        if not addr and not name:
            continue
        local, at, host = addr.rpartition("@")
        if not at:
            local, host = addr, ""

        def raw(s: str) -> bytes | None:
            return s.encode("utf-8", "surrogateescape") if s else None

        out.append(
            format_list(
                [
                    format_nstring(raw(name)),
                    b"NIL",
                    format_nstring(raw(local)),
                    format_nstring(raw(host)) if host else b"NIL",
                ]
            )
        )
    return format_list(out) if out else b"NIL"


def _envelope_of(part: MessagePart) -> bytes:
    def ns(name: bytes) -> bytes:
        return format_nstring(part.get(name))

    sender = part.get(b"from")
    return format_list(
        [
            ns(b"date"),
            ns(b"subject"),
            _addresses(sender),
            _addresses(part.get(b"sender") or sender),
            _addresses(part.get(b"reply-to") or sender),
            _addresses(part.get(b"to")),
            _addresses(part.get(b"cc")),
            _addresses(part.get(b"bcc")),
            ns(b"in-reply-to"),
            ns(b"message-id"),
        ]
    )


def envelope(msg: bytes | MessagePart) -> bytes:
    """The formatted ENVELOPE of a message (RFC 3501 §7.4.2)."""
    part = msg if isinstance(msg, MessagePart) else parse_message(msg)
    return _envelope_of(part)


# --- BODYSTRUCTURE ------------------------------------------------------------


def _params(params: list[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    items = []
    for key, value in params:
        items.append(format_string(key.upper()))
        items.append(format_string(value))
    return format_list(items)


def _disposition(part: MessagePart) -> bytes:
    value = part.get(b"content-disposition")
    if value is None:
        return b"NIL"
    m = Message()
    m["Content-Disposition"] = value.decode("utf-8", "replace")
    params = m.get_params(header="content-disposition") or []
    if not params:
        return b"NIL"
    kind = params[0][0]
    rest = [(k, str(v)) for k, v in params[1:]]
    return format_list([format_string(kind.upper()), _params(rest)])


def _language(part: MessagePart) -> bytes:
    value = part.get(b"content-language")
    if value is None:
        return b"NIL"
    tags = [t.strip() for t in value.split(b",") if t.strip()]
    if not tags:
        return b"NIL"
    return format_list([format_string(t) for t in tags])


def _structure(part: MessagePart, extensible: bool) -> bytes:
    if part.maintype == "multipart":
        inner = b"".join(_structure(c, extensible) for c in part.children)
        items = [inner, format_string(part.subtype.upper())]
        if extensible:
            items += [
                _params(part.params),
                _disposition(part),
                _language(part),
                format_nstring(part.get(b"content-location")),
            ]
        return b"(" + b" ".join(items) + b")"
    encoding = part.get(b"content-transfer-encoding")
    items = [
        format_string(part.maintype.upper()),
        format_string(part.subtype.upper()),
        _params(part.params),
        format_nstring(part.get(b"content-id")),
        format_nstring(part.get(b"content-description")),
        format_string(encoding.upper() if encoding else b"7BIT"),
        b"%d" % len(part.body),
    ]
    if part.message is not None:
        items += [
            _envelope_of(part.message),
            _structure(part.message, extensible),
            b"%d" % part.body.count(b"\n"),
        ]
    elif part.maintype == "text":
        items.append(b"%d" % part.body.count(b"\n"))
    if extensible:
        items += [
            format_nstring(part.get(b"content-md5")),
            _disposition(part),
            _language(part),
            format_nstring(part.get(b"content-location")),
        ]
    return format_list(items)


def bodystructure(msg: bytes | MessagePart, extensible: bool) -> bytes:
    """The formatted BODYSTRUCTURE (C{extensible}) or BODY of a message."""
    part = msg if isinstance(msg, MessagePart) else parse_message(msg)
    return _structure(part, extensible)


# --- BODY[section] ------------------------------------------------------------


def _find(top: MessagePart, numbers: Sequence[int]) -> MessagePart | None:
    part = top
    for n in numbers:
        if part.message is not None and part is not top:
            part = part.message
        if part.maintype == "multipart":
            if n > len(part.children):
                return None
            part = part.children[n - 1]
        elif n != 1:
            return None
    return part


def _header_fields(header: bytes, names: Sequence[str], negate: bool) -> bytes:
    wanted = {n.lower().encode("utf-8", "replace") for n in names}
    out: list[bytes] = []
    keep = False
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        m = _FIELD.match(line)
        name = m.group(1).lower() if m else b""
        keep = (name in wanted) != negate
        if keep:
            out.append(line)
    return b"".join(out) + b"\r\n"


def fetch_section(msg: bytes | MessagePart, section: BodySection) -> bytes:
    """The octets of ``BODY[section]`` (before any partial is applied)."""
    top = msg if isinstance(msg, MessagePart) else parse_message(msg)
    if not section.part:
        target: MessagePart | None = top
    else:
        target = _find(top, section.part)
        if target is None:
            return b""
        if section.text == "MIME":
            return target.header
        if section.text is not None:
            if target.message is None:
                return b""
            target = target.message
    assert target is not None
    if section.text is None:
        if not section.part:
            return target.header + target.body
        if target.message is not None:
            return target.body
        return target.body
    if section.text == "HEADER":
        return target.header
    if section.text == "TEXT":
        return target.body
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return _header_fields(
            target.header, section.fields, section.text == "HEADER.FIELDS.NOT"
        )
    return b""


# --- SEARCH -------------------------------------------------------------------


@dataclass
class SearchContext:
    """What SEARCH needs to know about the selected mailbox.

    @ivar uids: the session's UIDs, index + 1 being the sequence number.
    @ivar flags: a message's IMAP flags (\\Recent included) by UID.
    @ivar size: RFC822.SIZE by UID.
    @ivar internal_date: POSIX seconds by UID.
    @ivar modseq: the mod-sequence by UID.
    @ivar read: the message's octets by UID (None when it is gone).
    """

    uids: Sequence[int]
    flags: Callable[[int], frozenset[str]]
    size: Callable[[int], int]
    internal_date: Callable[[int], float]
    modseq: Callable[[int], int]
    read: Callable[[int], bytes | None]


class _Message:
    def __init__(self, data: bytes | None) -> None:
        self.data = data or b""
        self._parsed: Message | None = None
        self._header: list[tuple[bytes, bytes]] | None = None

    def fields(self) -> list[tuple[bytes, bytes]]:
        if self._header is None:
            self._header = _fields(_split(self.data)[0])
        return self._header

    def parsed(self) -> Message:
        if self._parsed is None:
            self._parsed = message_from_bytes(self.data, policy=compat32)
        return self._parsed

    def header_text(self, name: str) -> list[str]:
        key = name.encode("ascii", "replace").lower()
        return [_decode_header(v) for k, v in self.fields() if k.lower() == key]

    def all_headers(self) -> str:
        return "\n".join(
            k.decode("ascii", "replace") + ": " + _decode_header(v)
            for k, v in self.fields()
        )

    def body_text(self) -> str:
        texts = []
        for part in self.parsed().walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            if part.get_content_maintype() not in ("text", "message"):
                continue
            charset = part.get_content_charset() or "utf-8"
            try:
                texts.append(payload.decode(charset, "replace"))
            except LookupError:
                texts.append(payload.decode("utf-8", "replace"))
        return "\n".join(texts)

    def sent_date(self) -> datetime.date | None:
        values = [v for k, v in self.fields() if k.lower() == b"date"]
        if not values:
            return None
        try:
            when = email.utils.parsedate_to_datetime(
                values[0].decode("ascii", "replace")
            )
        except (TypeError, ValueError, IndexError):
            return None
        return when.date() if when is not None else None


def _decode_header(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (LookupError, ValueError, UnicodeError, email.errors.HeaderParseError):
        return text


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _date_matches(relation: str, when: datetime.date, date: datetime.date) -> bool:
    if relation == "before":
        return when < date
    if relation == "on":
        return when == date
    return when >= date


def evaluate_search(key: SearchKey, context: SearchContext) -> list[int]:
    """The sequence numbers (ascending) of the messages matching C{key}."""
    uids = context.uids
    largest_uid = uids[-1] if uids else 0
    cache: dict[int, _Message] = {}

    def message(uid: int) -> _Message:
        m = cache.get(uid)
        if m is None:
            if len(cache) > 64:
                cache.clear()
            m = cache[uid] = _Message(context.read(uid))
        return m

    def matches(k: SearchKey, seq: int, uid: int) -> bool:
        if isinstance(k, SearchAll):
            return True
        if isinstance(k, SearchAnd):
            return all(matches(sub, seq, uid) for sub in k.keys)
        if isinstance(k, SearchOr):
            return matches(k.left, seq, uid) or matches(k.right, seq, uid)
        if isinstance(k, SearchNot):
            return not matches(k.key, seq, uid)
        if isinstance(k, SearchFlag):
            return (k.flag in context.flags(uid)) == k.present
        if isinstance(k, SearchSize):
            size = context.size(uid)
            return size > k.size if k.relation == "larger" else size < k.size
        if isinstance(k, SearchMessages):
            if k.uid:
                return k.sequence_set.contains(uid, largest_uid)
            return k.sequence_set.contains(seq, len(uids))
        if isinstance(k, SearchModSeq):
            return context.modseq(uid) >= k.modseq
        if isinstance(k, SearchDate):
            if k.sent:
                sent = message(uid).sent_date()
                return sent is not None and _date_matches(k.relation, sent, k.date)
            internal = datetime.datetime.fromtimestamp(
                context.internal_date(uid), datetime.UTC
            ).date()
            return _date_matches(k.relation, internal, k.date)
        if isinstance(k, SearchHeader):
            values = message(uid).header_text(k.field)
            if not k.value:
                return bool(values)
            return any(_contains(v, k.value) for v in values)
        if isinstance(k, SearchBody):
            return _contains(message(uid).body_text(), k.value)
        if isinstance(k, SearchText):
            m = message(uid)
            return _contains(m.all_headers(), k.value) or _contains(
                m.body_text(), k.value
            )
        return False

    return [seq for seq, uid in enumerate(uids, 1) if matches(key, seq, uid)]
