# -*- test-case-name: tests.test_imap_message -*-
"""Message structure for IMAP FETCH (RFC 3501 §6.4.5, §7.4.2): the IMAP step
of the flow, between the Maildir store's bytes and the FETCH response.

Pure code, no I/O: everything here takes a message's octets and returns
octets ready for a response.  The MIME structure is found by our own byte
scanner rather than by C{email.message}, because FETCH must return the exact
octets of each part and their exact sizes; it never raises, whatever the
input (malformed MIME falls back as described below).

Structure rules (RFC 2045, RFC 2046, RFC 3501 §6.4.5):

  - A header ends at the first empty line (which ``HEADER`` and ``MIME``
    include) or, for broken input, at the first line that is neither a
    field nor a continuation line (which then starts the body).  CRLF and
    bare LF line ends are both understood; octets are returned as stored.
  - A missing or invalid Content-Type is ``text/plain; charset=us-ascii``
    (``message/rfc822`` inside ``multipart/digest``).  A valid one is
    described as written: ``text/plain`` without a charset has no
    parameters (NIL).
  - The CRLF before a boundary delimiter belongs to the delimiter.  A
    multipart without a close delimiter ends where its enclosing part ends.
    A multipart without a boundary parameter, or in which no delimiter line
    is found, has an invalid Content-Type and so is ``text/plain;
    charset=us-ascii`` (RFC 2045 §5.2).
  - A ``message/rfc822`` part is parsed as a message unless its
    Content-Transfer-Encoding is not an identity encoding; such a part is
    described as ``application/octet-stream`` (with its parameters), since
    clients read an envelope after ``"MESSAGE" "RFC822"``.  Multiparts and
    messages nested deeper than L{MAX_DEPTH} are treated the same way
    (text/plain and application/octet-stream).
  - In BODY and BODYSTRUCTURE, media types, subtypes, encodings, parameter
    names and disposition types are upper-cased; parameter values and
    every other string are sent as they are in the message, encoded words
    included (RFC 3501 §7.4.2).  8-bit values go out as literals
    (L{format_string}).  The MD5 extension field is always NIL.
  - ``body-fld-lines`` counts line feeds, plus one for a last line without
    one.
  - ENVELOPE address lists follow RFC 5322 loosely: groups give
    ``(NIL NIL "name" NIL)`` ... ``(NIL NIL NIL NIL)``; a mailbox without a
    local part or domain gets ``MISSING_MAILBOX``/``MISSING_DOMAIN`` so that
    it cannot be mistaken for group syntax; a comment is the name of an
    address that has no display name.  The first of duplicate fields wins.
  - A section that names no part (``BODY[9]`` of a two-part message,
    ``HEADER`` of a part that is not ``message/rfc822``) is empty.

Caching: L{cached_structure} keeps ENVELOPE, BODY, BODYSTRUCTURE and the
header block of each message in the folder's cache (L{CACHE_KEY}, format
below), so that a warm FETCH of them reads no message file.  Its value is
``b"1 <n1> <n2> <n3> <n4>\\n"`` (the format version, then four lengths) and
the four values concatenated.  With it go the message's L{SEARCH_FIELDS}
into the cache's field index (L{search_fields}: each field's values
decoded and case-folded as SEARCH compares them, UTF-8, joined by NUL), so
that SEARCH on them is one query per folder (L{indexed_matches}).
"""

from __future__ import annotations

import binascii
import bisect
import codecs
import quopri
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol

from twistedmail.imap._format import MAX_QUOTED, format_list
from twistedmail.imap._types import BodySection
from twistedmail.maildir.cache import INDEXED_FIELDS

__all__ = [
    "CACHE_KEY",
    "MAX_DEPTH",
    "BatchCache",
    "BatchedHeaders",
    "SEARCH_FIELDS",
    "FieldIndex",
    "MessageParts",
    "Structure",
    "StructureCache",
    "bodystructure",
    "cached_header",
    "cached_structure",
    "compute_structure",
    "decode_header_value",
    "envelope",
    "fetch_section",
    "field_pattern",
    "field_values",
    "format_section",
    "header_block",
    "header_end",
    "header_fields",
    "indexed_matches",
    "parse_message",
    "rfc822_header",
    "rfc822_size",
    "rfc822_text",
    "search_fields",
    "text_parts",
    "to_crlf",
]

#: Deeper multiparts and encapsulated messages are not descended into; this
#: bounds the recursion (and the response) for hostile input.
MAX_DEPTH = 40

#: The folder cache key of L{cached_structure}'s entries (the version is in
#: the name: a new format takes a new key).
CACHE_KEY = "imap-structure-1"

_FIELD_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_NEWLINES = re.compile(rb"\r?\n")
_IDENTITY_ENCODINGS = frozenset({b"7BIT", b"8BIT", b"BINARY"})
# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TSPECIALS = frozenset(b'()<>@,;:\\"/[]?=')
_TOKEN_CHARS = frozenset(c for c in range(0x21, 0x7F) if c not in _TSPECIALS)
_WSP = b" \t\r\n"
# Octets a quoted string may hold (RFC 3501 §9 QUOTED-CHAR, as _format sends).
_QUOTABLE = bytes(range(0x20, 0x7F))


def _quote(value: bytes) -> bytes:
    """L{twistedmail.imap.format_string} for bytes, without its per-octet
    loop (the same output; BODYSTRUCTURE formats many short strings)."""
    if len(value) <= MAX_QUOTED and not value.translate(None, _QUOTABLE):
        if b"\\" in value or b'"' in value:
            value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + value + b'"'
    return b"{%d}\r\n" % len(value) + value


def _nquote(value: bytes | None) -> bytes:
    """L{_quote}, or ``NIL`` for None."""
    return b"NIL" if value is None else _quote(value)


# --- headers ------------------------------------------------------------------


def header_end(data: bytes, start: int = 0, end: int | None = None) -> int | None:
    """Where the body starts, when the header starting at C{start} is
    complete within C{data[start:end]}; else None.

    For reading a file a block at a time until the header is in: a header is
    complete once its empty line (or a line that is not a field) is seen.
    """
    stop = len(data) if end is None else end
    header_stop, body_start = _scan_header(data, start, stop, None)
    if body_start > header_stop:
        return body_start
    # No empty line: the header ends at a line that is not a field, but only
    # a whole line (with its line feed) can be told apart from a field.
    if data.find(b"\n", header_stop, stop) < 0:
        return None
    return header_stop


def header_fields(msg: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of the message's header: ``(lower-cased name, value)``
    with the value unfolded and stripped (encoded words left as they are),
    in order, duplicates kept."""
    fields: list[_Field] = []
    _scan_header(msg, 0, len(msg), fields)
    return [(f.name, _unfold(msg[f.colon + 1 : f.end])) for f in fields]


_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


def field_pattern(name: str) -> re.Pattern[bytes] | None:
    """A pattern for L{field_values}: the fields called C{name} (any case),
    or None for a name no field can have (not printable ASCII)."""
    if not name.isascii():
        return None
    raw = name.encode("ascii")
    if not _FIELD_NAME.fullmatch(raw):
        return None
    return re.compile(
        rb"(?im)^" + re.escape(raw) + rb"[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)"
    )


def field_values(header: bytes, pattern: re.Pattern[bytes]) -> list[bytes]:
    """The values of one field in a header block (L{header_block}), as
    L{header_fields} gives them (unfolded, stripped), in order; found by one
    regular expression instead of reading every field."""
    return [_unfold(m.group(1)) for m in pattern.finditer(header)]


def header_block(msg: bytes) -> bytes:
    """The message's header, with its empty line (``BODY[HEADER]``), found
    without looking at the body: the fast path for header-only work."""
    return msg[: _scan_header(msg, 0, len(msg), None)[1]]


def rfc822_header(msg: bytes) -> bytes:
    """``RFC822.HEADER``: the same octets as ``BODY.PEEK[HEADER]``."""
    return header_block(msg)


def rfc822_text(msg: bytes) -> bytes:
    """``RFC822.TEXT``: the same octets as ``BODY[TEXT]``."""
    return msg[_scan_header(msg, 0, len(msg), None)[1] :]


def rfc822_size(msg: bytes) -> int:
    """``RFC822.SIZE``: the message's size in octets as it is sent."""
    return len(msg)


def to_crlf(msg: bytes) -> bytes:
    """The message with bare LF line ends made CRLF (IMAP sends CRLF lines;
    Maildirs written by other programs may hold LF).  Unchanged, and not
    copied, when it has no bare LF."""
    if msg.count(b"\n") == msg.count(b"\r\n"):
        return msg
    return _NEWLINES.sub(b"\r\n", msg)


class _Field(NamedTuple):
    name: bytes  # lower-cased
    start: int  # the field's first octet
    colon: int  # the colon after the name
    end: int  # after its last line end (continuations included)


def _scan_header(
    data: bytes, start: int, end: int, fields: list[_Field] | None
) -> tuple[int, int]:
    """Find the header starting at C{start}: C{(header_stop, body_start)}.

    C{header_stop} is where the fields end and C{body_start} is after the
    empty line, if there is one.  Fields are appended to C{fields}.
    """
    pos = start
    current: list[int] | None = None  # [name_start, colon] of the open field
    name = b""
    while pos < end:
        nl = data.find(b"\n", pos, end)
        stop = end if nl < 0 else nl + 1
        first = data[pos]
        if first == 0x0A or (first == 0x0D and stop - pos <= 2 and nl >= 0):
            if fields is not None and current is not None:
                fields.append(_Field(name, current[0], current[1], pos))
            return pos, stop
        if first in (0x20, 0x09):
            if current is None and pos == start:
                # A continuation with no field before it: skip it.
                pass
            pos = stop
            continue
        m = _FIELD_LINE.match(data, pos, stop)
        if m is None:
            break
        if fields is not None:
            if current is not None:
                fields.append(_Field(name, current[0], current[1], pos))
            colon = m.end() - 1
            name = data[pos:colon].rstrip(b" \t").lower()
            current = [pos, colon]
        pos = stop
    if fields is not None and current is not None:
        fields.append(_Field(name, current[0], current[1], pos))
    return pos, pos


def _unfold(value: bytes) -> bytes:
    return _NEWLINES.sub(b"", value).strip(_WSP)


# --- the entity tree ----------------------------------------------------------


class _Entity:
    """One MIME entity: a message, or a part of a multipart."""

    __slots__ = (
        "body_start",
        "default",
        "end",
        "fields",
        "first",
        "header_stop",
        "message",
        "params",
        "parts",
        "start",
        "subtype",
        "type",
    )

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.header_stop = start
        self.body_start = start
        self.end = end
        self.fields: list[_Field] = []
        self.first: dict[bytes, _Field] = {}
        self.type = b"TEXT"
        self.subtype = b"PLAIN"
        self.params: list[tuple[bytes, bytes]] = []
        self.default = True
        self.parts: list[_Entity] = []
        self.message: _Entity | None = None


class MessageParts:
    """A message parsed once, for several FETCH items of it.

    Made by L{parse_message}; never raises.
    """

    def __init__(self, msg: bytes) -> None:
        self.data = msg
        self.root = self._entity(0, len(msg), 0, False)

    # Parsing

    def _entity(self, start: int, end: int, depth: int, digest: bool) -> _Entity:
        data = self.data
        entity = _Entity(start, end)
        entity.header_stop, entity.body_start = _scan_header(
            data, start, end, entity.fields
        )
        first = entity.first
        for field in reversed(entity.fields):
            first[field.name] = field
        parsed = _content_type(self._value(entity, b"content-type"))
        if parsed is not None:
            entity.type, entity.subtype, entity.params = parsed
            entity.default = False
        elif digest:
            entity.type, entity.subtype = b"MESSAGE", b"RFC822"
        else:
            entity.params = [(b"CHARSET", b"US-ASCII")]
        if entity.type == b"MULTIPART":
            boundary = _param(entity.params, b"BOUNDARY")
            if boundary and depth < MAX_DEPTH:
                spans = _split_multipart(data, entity.body_start, end, boundary)
                is_digest = entity.subtype == b"DIGEST"
                entity.parts = [
                    self._entity(s, e, depth + 1, is_digest) for s, e in spans
                ]
            if not entity.parts:
                # RFC 2045 §5.2: an invalid Content-Type means text/plain.
                entity.type, entity.subtype = b"TEXT", b"PLAIN"
                entity.params = [(b"CHARSET", b"US-ASCII")]
                entity.default = True
        elif entity.type == b"MESSAGE" and entity.subtype == b"RFC822":
            if self._encoding(entity) in _IDENTITY_ENCODINGS and depth < MAX_DEPTH:
                entity.message = self._entity(entity.body_start, end, depth + 1, False)
            else:
                # Clients read an envelope after "MESSAGE" "RFC822": a part
                # we cannot describe as a message must not be named one.
                entity.type, entity.subtype = b"APPLICATION", b"OCTET-STREAM"
        return entity

    def _value(self, entity: _Entity, name: bytes) -> bytes | None:
        field = entity.first.get(name)
        if field is None:
            return None
        return _unfold(self.data[field.colon + 1 : field.end])

    def _encoding(self, entity: _Entity) -> bytes:
        value = self._value(entity, b"content-transfer-encoding")
        token = _first_token(value) if value is not None else None
        return token.upper() if token else b"7BIT"

    # ENVELOPE

    def envelope(self, entity: _Entity | None = None) -> bytes:
        """The ENVELOPE of the message (or of an encapsulated one)."""
        e = self.root if entity is None else entity

        def text(name: bytes) -> bytes:
            return _nquote(self._value(e, name))

        def addresses(name: bytes) -> bytes | None:
            value = self._value(e, name)
            if value is None:
                return None
            found = _format_addresses(value)
            return found or None

        sender_from = addresses(b"from")
        nil = b"NIL"
        items = [
            text(b"date"),
            text(b"subject"),
            sender_from or nil,
            addresses(b"sender") or sender_from or nil,
            addresses(b"reply-to") or sender_from or nil,
            addresses(b"to") or nil,
            addresses(b"cc") or nil,
            addresses(b"bcc") or nil,
            text(b"in-reply-to"),
            text(b"message-id"),
        ]
        return format_list(items)

    # BODY and BODYSTRUCTURE

    def bodystructure(self, *, extensible: bool) -> bytes:
        """BODYSTRUCTURE (C{extensible}) or BODY of the message."""
        return self.structures()[1 if extensible else 0]

    def structures(self) -> tuple[bytes, bytes]:
        """BODY and BODYSTRUCTURE of the message, made in one pass."""
        return self._body(self.root)

    def _body(self, e: _Entity) -> tuple[bytes, bytes]:
        data = self.data
        if e.parts:
            inner = [self._body(p) for p in e.parts]
            subtype = b" " + _quote(e.subtype)
            body = b"(" + b"".join(b for b, _ in inner) + subtype + b")"
            extension = self._extension(e, _format_params(e.params))
            full = b"(" + b"".join(s for _, s in inner) + subtype
            return body, full + b" " + extension + b")"
        head = b" ".join(
            [
                _quote(e.type),
                _quote(e.subtype),
                _format_params(e.params),
                _nquote(self._value(e, b"content-id")),
                _nquote(self._value(e, b"content-description")),
                _quote(self._encoding(e)),
                b"%d" % (e.end - e.body_start),
            ]
        )
        if e.message is not None:
            envelope = self.envelope(e.message)
            lines = b"%d" % _count_lines(data, e.body_start, e.end)
            body, full = self._body(e.message)
            body = b" ".join([head, envelope, body, lines])
            full = b" ".join([head, envelope, full, lines])
        elif e.type == b"TEXT":
            body = full = head + b" %d" % _count_lines(data, e.body_start, e.end)
        else:
            body = full = head
        return (
            b"(" + body + b")",
            b"(" + full + b" " + self._extension(e, b"NIL") + b")",
        )

    def _extension(self, e: _Entity, first: bytes) -> bytes:
        """MD5-or-parameters, disposition, language, location."""
        disposition = b"NIL"
        value = self._value(e, b"content-disposition")
        if value is not None:
            parsed = _disposition(value)
            if parsed is not None:
                kind, params = parsed
                disposition = format_list([_quote(kind), _format_params(params)])
        language = b"NIL"
        value = self._value(e, b"content-language")
        if value is not None:
            tags = [
                t
                for t in (_strip_comments(v).strip(_WSP) for v in value.split(b","))
                if t
            ]
            if tags:
                language = format_list(_quote(t) for t in tags)
        location = _nquote(_nonempty(self._value(e, b"content-location")))
        return b" ".join([first, disposition, language, location])

    # Sections

    def _resolve(self, path: tuple[int, ...]) -> _Entity | None:
        node = self.root
        in_message = True
        for n in path:
            if in_message:
                children = node.parts or [node]
            elif node.parts:
                children = node.parts
            elif node.message is not None:
                children = node.message.parts or [node.message]
            else:
                return None
            if not 1 <= n <= len(children):
                return None
            node = children[n - 1]
            in_message = False
        return node

    def section(self, section: BodySection) -> bytes:
        """The octets of C{BODY[section]<partial>} (empty when the section
        names nothing)."""
        content = self._section(section)
        if section.partial is not None:
            origin, length = section.partial
            content = content[origin : origin + length]
        return content

    def _section(self, section: BodySection) -> bytes:
        data = self.data
        node = self._resolve(section.part)
        if node is None:
            return b""
        text = section.text
        if text is None:
            if not section.part:
                return data
            return data[node.body_start : node.end]
        if text == "MIME":
            if not section.part:
                return b""
            return data[node.start : node.body_start]
        if section.part:
            if node.message is None:
                return b""
            node = node.message
        if text == "TEXT":
            return data[node.body_start : node.end]
        if text == "HEADER":
            return data[node.start : node.body_start]
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            wanted = {f.lower().encode("utf-8", "replace") for f in section.fields}
            keep = text == "HEADER.FIELDS"
            chunks = [
                data[f.start : f.end] for f in node.fields if (f.name in wanted) == keep
            ]
            lf_only = node.header_stop > node.start and (
                data[node.start : node.header_stop].count(b"\r\n") == 0
            )
            chunks.append(b"\n" if lf_only else b"\r\n")
            return b"".join(chunks)
        return b""

    # Search support

    def header_text(self, entity: _Entity | None = None) -> str:
        """Every field of the header as ``name: value`` lines, encoded words
        decoded (for SEARCH TEXT)."""
        e = self.root if entity is None else entity
        data = self.data
        return "\n".join(
            decode_header_value(_unfold(data[f.start : f.end])) for f in e.fields
        )

    def text_parts(self) -> Iterator[str]:
        """The decoded text of the body (for SEARCH BODY): each text part
        with its transfer encoding and charset undone, and the header of
        each encapsulated message, decoded."""
        yield from self._texts(self.root)

    def _texts(self, e: _Entity) -> Iterator[str]:
        if e.parts:
            for part in e.parts:
                yield from self._texts(part)
        elif e.message is not None:
            yield self.header_text(e.message)
            yield from self._texts(e.message)
        elif e.type == b"TEXT":
            raw = self.data[e.body_start : e.end]
            decoded = _decode_transfer(raw, self._encoding(e))
            charset = _param(e.params, b"CHARSET") or b"utf-8"
            yield _decode_charset(decoded, charset)


def parse_message(msg: bytes) -> MessageParts:
    """Parse a message once, for several FETCH items (never raises)."""
    return MessageParts(msg)


def envelope(msg: bytes) -> bytes:
    """The formatted ENVELOPE of a message (RFC 3501 §7.4.2).

    Only the header is looked at.
    """
    return MessageParts(header_block(msg)).envelope()


def bodystructure(msg: bytes, *, extensible: bool) -> bytes:
    """The formatted BODYSTRUCTURE (C{extensible=True}, with extension data)
    or BODY (C{extensible=False}) of a message (RFC 3501 §7.4.2)."""
    return MessageParts(msg).bodystructure(extensible=extensible)


def fetch_section(msg: bytes, section: BodySection) -> bytes:
    """The octets of ``BODY[section]<partial>`` (RFC 3501 §6.4.5), unformatted.

    A section of the header only does not parse the body.  Empty when the
    section names no part.
    """
    if not section.part and section.text in (
        "HEADER",
        "HEADER.FIELDS",
        "HEADER.FIELDS.NOT",
    ):
        parts = MessageParts(header_block(msg))
    else:
        parts = MessageParts(msg)
    return parts.section(section)


def format_section(section: BodySection, content: bytes) -> bytes:
    """The FETCH response item for C{section}: its name and C{content} as a
    literal, e.g. ``BODY[1]<0> {5}\\r\\nHello``."""
    return section.response_name() + b" {%d}\r\n" % len(content) + content


# --- caching --------------------------------------------------------------------


class Structure(NamedTuple):
    """What L{cached_structure} keeps of a message, formatted for FETCH."""

    envelope: bytes
    body: bytes
    bodystructure: bytes
    header: bytes


class StructureCache(Protocol):
    """Where structures are kept: L{twistedmail.maildir.Mailbox} fits."""

    def cache_get(self, base: str, key: str) -> bytes | None:
        """The cached value, or None."""

    def cache_put(
        self,
        base: str,
        key: str,
        value: bytes,
        fields: Mapping[str, bytes | None] | None = None,
    ) -> None:
        """Keep a value, and index the message's C{fields} (by index name)
        when given."""


def _encode_structure(s: Structure) -> bytes:
    head = b"1 %d %d %d %d\n" % tuple(len(v) for v in s)
    return head + b"".join(s)


def _decode_structure(value: bytes) -> Structure | None:
    head, nl, rest = value.partition(b"\n")
    fields = head.split(b" ")
    if not nl or len(fields) != 5 or fields[0] != b"1":
        return None
    try:
        sizes = [int(f) for f in fields[1:]]
    except ValueError:
        return None
    if sum(sizes) != len(rest) or min(sizes) < 0:
        return None
    out = []
    pos = 0
    for size in sizes:
        out.append(rest[pos : pos + size])
        pos += size
    return Structure(*out)


def _decode_header(value: bytes) -> bytes | None:
    """Just the header of an encoded L{Structure} (what SEARCH needs),
    sliced out without copying the other parts; None when the value is
    not a well-formed encoding (L{_decode_structure} says the same)."""
    nl = value.find(b"\n")
    fields = value[:nl].split(b" ") if nl >= 0 else []
    if len(fields) != 5 or fields[0] != b"1":
        return None
    try:
        sizes = [int(f) for f in fields[1:]]
    except ValueError:
        return None
    if sum(sizes) != len(value) - nl - 1 or min(sizes) < 0:
        return None
    return value[len(value) - sizes[3] :]


def compute_structure(msg: bytes) -> Structure:
    """Parse a message and format everything L{Structure} holds."""
    parts = MessageParts(msg)
    body, full = parts.structures()
    return Structure(parts.envelope(), body, full, msg[: parts.root.body_start])


def cached_structure(
    cache: StructureCache, base: str, loader: Callable[[], bytes]
) -> Structure:
    """A message's ENVELOPE, BODY, BODYSTRUCTURE and header, from the cache
    when they are there; else computed from C{loader()} (the message's
    bytes, exactly as FETCH sends them) and cached.

    Blocking (the cache is a database); call off the reactor thread.

    @param cache: the folder (L{twistedmail.maildir.Mailbox}).
    @param base: the message's base name (L{MessageInfo.base}).
    """
    value = cache.cache_get(base, CACHE_KEY)
    if value is not None:
        found = _decode_structure(value)
        if found is not None:
            return found
    structure = compute_structure(loader())
    cache.cache_put(
        base, CACHE_KEY, _encode_structure(structure), search_fields(structure.header)
    )
    return structure


def cached_header(
    cache: StructureCache, base: str, loader: Callable[[], bytes]
) -> bytes:
    """A message's header block through L{cached_structure} (for SEARCH on
    header fields without reading the file twice)."""
    return cached_structure(cache, base, loader).header


class BatchCache(StructureCache, Protocol):
    """A structure cache that also reads many entries at once: L{Mailbox}
    fits."""

    def cache_get_many(self, bases: Sequence[str], key: str) -> dict[str, bytes]:
        """The cached values of those of C{bases} that have one."""


class BatchedHeaders:
    """The header blocks of a folder's messages for SEARCH: read from the
    structure cache a batch at a time (one query for L{BATCH} messages
    rather than one each), in the order the messages are asked for, which
    is their order in C{uids}.  A message not cached yet is parsed from its
    file and cached, as by L{cached_header}.

    Blocking (the cache is a database); call off the reactor thread.

    @param cache: the folder (L{twistedmail.maildir.Mailbox}).
    @param uids: the messages' UIDs, ascending.
    @param bases: their base names, in the same order.
    @param read: a message's octets by UID (may raise, as
        L{twistedmail.maildir.Mailbox.read} does when it is gone).
    """

    #: Messages read from the cache per query.
    BATCH = 500

    def __init__(
        self,
        cache: BatchCache,
        uids: Sequence[int],
        bases: Sequence[str],
        read: Callable[[int], bytes],
    ) -> None:
        self._cache = cache
        self._uids = uids
        self._bases = bases
        self._read = read
        self._start = 0
        self._stop = 0
        self._values: dict[str, bytes] = {}

    def __call__(self, uid: int) -> bytes:
        """The header block of the message with this UID.

        @raise KeyError: for a UID not among C{uids}.
        """
        i = bisect.bisect_left(self._uids, uid)
        if i >= len(self._uids) or self._uids[i] != uid:
            raise KeyError(uid)
        if not self._start <= i < self._stop:
            self._start, self._stop = i, min(len(self._uids), i + self.BATCH)
            self._values = self._cache.cache_get_many(
                self._bases[self._start : self._stop], CACHE_KEY
            )
        base = self._bases[i]
        value = self._values.get(base)
        header = None if value is None else _decode_header(value)
        if header is not None:
            return header
        return cached_structure(self._cache, base, lambda: self._read(uid)).header


#: The header fields whose decoded values the folder cache indexes for
#: SEARCH (L{search_fields}): those of SEARCH's own keys.  A change to what
#: L{search_fields} stores takes a new cache format version.
SEARCH_FIELDS = INDEXED_FIELDS

_SEARCH_FIELD_LINE = re.compile(
    rb"(?im)^(" + rb"|".join(f.encode() for f in SEARCH_FIELDS) + rb")[ \t]*:"
    rb"([^\n]*(?:\n[ \t][^\n]*)*)"
)


def _folded(value: bytes) -> bytes:
    """An unfolded field value as SEARCH compares it (decoded, case-folded),
    in UTF-8: plain ASCII without an encoded word decodes to itself, and
    ASCII case folding is lower-casing.  Surrogates (which some codecs
    make) are kept, so every string has an encoding."""
    if value.isascii() and b"=?" not in value:
        return value.lower()
    return decode_header_value(value).casefold().encode("utf-8", "surrogatepass")


def search_fields(header: bytes) -> dict[str, bytes | None]:
    """A header block's L{SEARCH_FIELDS} for the cache's field index, by
    field name: each field's values (as L{field_values} finds them),
    decoded and case-folded (L{decode_header_value}, C{str.casefold}),
    UTF-8, joined by NUL; None for a field the header does not have.

    A search string without NUL is in the joined value exactly when it is
    in one of the values (a match across the join would hold the NUL)."""
    found: dict[bytes, list[bytes]] = {}
    for m in _SEARCH_FIELD_LINE.finditer(header):
        raw = m.group(2)
        # _unfold, without its substitution for the many unfolded values.
        value = _unfold(raw) if b"\n" in raw else raw.strip(_WSP)
        found.setdefault(m.group(1).lower(), []).append(_folded(value))
    out: dict[str, bytes | None] = {}
    for name in SEARCH_FIELDS:
        values = found.get(name.encode())
        out[name] = None if values is None else b"\0".join(values)
    return out


class FieldIndex(BatchCache, Protocol):
    """A structure cache with the field index: L{Mailbox} fits."""

    def cache_match(
        self, field: str, needle: bytes, bases: Sequence[str]
    ) -> tuple[set[str], list[str]]:
        """C{(matching, unindexed)}: the base names of the indexed messages
        whose C{field} contains C{needle}, and those of C{bases} that are
        not indexed."""

    def cache_put_fields(
        self, entries: Sequence[tuple[str, Mapping[str, bytes | None]]]
    ) -> None:
        """Index the fields of many messages (by base name)."""


def indexed_matches(
    cache: FieldIndex, field: str, needle: str, bases: Sequence[str]
) -> tuple[set[str], set[str]] | None:
    """SEARCH on a header field through the folder cache's index:
    C{(matching, unindexed)}, the base names of the indexed messages whose
    C{field} contains C{needle} (RFC 3501 §6.4.4: a substring of a decoded
    value, compared case-folded), and of the messages of C{bases} the
    index does not answer for.  None when the index cannot answer (a field
    not in L{SEARCH_FIELDS}, a needle with NUL).

    Messages of C{bases} whose structure was cached before the index
    existed (an older cache file) are indexed now, from their cached
    header; those not cached at all are left out, for the caller to read.

    Blocking (the cache is a database); call off the reactor thread.

    @param field: the lower-cased field name.
    @param needle: the search string, case-folded (C{str.casefold}).
    @param bases: the base names of the messages searched.
    """
    if field not in SEARCH_FIELDS or "\0" in needle:
        return None
    raw = needle.encode("utf-8", "surrogatepass")
    matching, missing = cache.cache_match(field, raw, bases)
    unindexed = set(missing)
    entries: list[tuple[str, Mapping[str, bytes | None]]] = []
    for i in range(0, len(missing), BatchedHeaders.BATCH):
        chunk = missing[i : i + BatchedHeaders.BATCH]
        for base, entry in cache.cache_get_many(chunk, CACHE_KEY).items():
            header = _decode_header(entry)
            if header is None:
                continue
            fields = search_fields(header)
            entries.append((base, fields))
            unindexed.discard(base)
            value = fields[field]
            if value is not None and raw in value:
                matching.add(base)
    if entries:
        cache.cache_put_fields(entries)
    return matching, unindexed


# --- Content-Type and friends (RFC 2045 §5.1, RFC 2183) ---------------------------


def _nonempty(value: bytes | None) -> bytes | None:
    return value if value else None


def _strip_comments(value: bytes) -> bytes:
    """Remove RFC 5322 comments (outside quoted strings)."""
    if b"(" not in value:
        return value
    out = bytearray()
    depth = 0
    quoted = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == 0x5C and (quoted or depth) and i + 1 < n:
            if not depth:
                out += value[i : i + 2]
            i += 2
            continue
        if depth:
            if c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
        elif quoted:
            out.append(c)
            if c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
            out.append(c)
        elif c == 0x28:
            depth = 1
            out.append(0x20)
        else:
            out.append(c)
        i += 1
    return bytes(out)


def _token_at(value: bytes, pos: int) -> tuple[bytes, int]:
    end = pos
    n = len(value)
    while end < n and value[end] in _TOKEN_CHARS:
        end += 1
    return value[pos:end], end


def _skip_ws(value: bytes, pos: int) -> int:
    n = len(value)
    while pos < n and value[pos] in _WSP:
        pos += 1
    return pos


def _first_token(value: bytes) -> bytes:
    value = _strip_comments(value)
    return _token_at(value, _skip_ws(value, 0))[0]


def _parse_params(value: bytes, pos: int) -> list[tuple[bytes, bytes]]:
    """``*(";" parameter)`` from C{pos}, leniently: junk up to the next
    ``;`` is skipped."""
    params: list[tuple[bytes, bytes]] = []
    n = len(value)
    while True:
        semi = value.find(b";", pos)
        if semi < 0:
            return params
        pos = _skip_ws(value, semi + 1)
        name, pos = _token_at(value, pos)
        pos = _skip_ws(value, pos)
        if not name or pos >= n or value[pos] != 0x3D:
            continue
        pos = _skip_ws(value, pos + 1)
        if pos < n and value[pos] == 0x22:
            out = bytearray()
            pos += 1
            while pos < n and value[pos] != 0x22:
                if value[pos] == 0x5C and pos + 1 < n:
                    pos += 1
                out.append(value[pos])
                pos += 1
            pos += 1
            params.append((name.upper(), bytes(out)))
        else:
            end = pos
            while end < n and value[end] not in b"; \t\r\n":
                end += 1
            params.append((name.upper(), value[pos:end]))
            pos = end


def _content_type(
    value: bytes | None,
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """``(TYPE, SUBTYPE, params)`` of a Content-Type value, or None when it
    is invalid (RFC 2045 §5.2: then the default applies)."""
    if value is None:
        return None
    value = _strip_comments(value)
    pos = _skip_ws(value, 0)
    kind, pos = _token_at(value, pos)
    pos = _skip_ws(value, pos)
    if not kind or pos >= len(value) or value[pos] != 0x2F:
        return None
    subtype, pos = _token_at(value, _skip_ws(value, pos + 1))
    if not subtype:
        return None
    return kind.upper(), subtype.upper(), _parse_params(value, pos)


def _disposition(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    value = _strip_comments(value)
    kind, pos = _token_at(value, _skip_ws(value, 0))
    if not kind:
        return None
    return kind.upper(), _parse_params(value, pos)


def _param(params: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in params:
        if key == name:
            return value
    return None


def _format_params(params: list[tuple[bytes, bytes]]) -> bytes:
    if not params:
        return b"NIL"
    return format_list(_quote(k) + b" " + _quote(v) for k, v in params)


def _count_lines(data: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    lines = data.count(b"\n", start, end)
    if data[end - 1] != 0x0A:
        lines += 1
    return lines


def _split_multipart(
    data: bytes, start: int, end: int, boundary: bytes
) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each body part between C{start} and C{end}
    (RFC 2046 §5.1.1); empty when there is no delimiter line."""
    marker = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while True:
        i = data.find(marker, pos, end)
        if i < 0:
            break
        pos = i + 1
        if i != start and data[i - 1] != 0x0A:
            continue
        nl = data.find(b"\n", i, end)
        line_stop = end if nl < 0 else nl + 1
        rest = data[i + len(marker) : line_stop]
        close = rest.startswith(b"--")
        if not close and rest.strip(_WSP):
            continue
        if part_start is not None:
            stop = i
            if stop > start and data[stop - 1] == 0x0A:
                stop -= 1
                if stop > start and data[stop - 1] == 0x0D:
                    stop -= 1
            spans.append((part_start, max(part_start, stop)))
        if close:
            part_start = None
            break
        part_start = line_stop
        pos = line_stop
    if part_start is not None:
        spans.append((part_start, end))
    return spans


# --- addresses (RFC 5322 §3.4) -------------------------------------------------------

# Token kinds of the address scanner.
_WORD, _QUOTED, _SPECIAL, _COMMENT, _LITERAL = range(5)


class _Token(NamedTuple):
    kind: int
    text: bytes
    space: bool  # whitespace or a comment came before it


_TOKEN = re.compile(
    rb"""
    (?P<ws>[ \t\r\n]+)
    |"(?P<q>(?:[^"\\]|\\.)*)\\?(?:"|\Z)
    |(?P<lit>\[[^\]]*(?:\]|\Z))
    |(?P<sp>[<>@,;:.])
    |(?P<c>\()
    |(?P<w>[^ \t\r\n"(<>@,;:.\[]+)
    """,
    re.S | re.X,
)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.S)
_CRLF = re.compile(rb"[\r\n]")


def _comment_end(value: bytes, i: int) -> tuple[bytes, int]:
    """The text of the (nested) comment opening at C{i}, and its end."""
    depth = 1
    text = bytearray()
    i += 1
    n = len(value)
    while i < n and depth:
        d = value[i]
        if d == 0x5C and i + 1 < n:
            i += 1
            text.append(value[i])
        elif d == 0x28:
            depth += 1
            text.append(d)
        elif d == 0x29:
            depth -= 1
            if depth:
                text.append(d)
        else:
            text.append(d)
        i += 1
    return bytes(text).strip(_WSP), i


def _tokens(value: bytes) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    n = len(value)
    space = False
    match = _TOKEN.match
    while pos < n:
        m = match(value, pos)
        if m is None:  # cannot happen: every octet starts an alternative
            out.append(_Token(_WORD, value[pos : pos + 1], space))
            pos += 1
            continue
        kind = m.lastgroup
        if kind == "ws":
            space = True
        elif kind == "w":
            out.append(_Token(_WORD, m.group("w"), space))
            space = False
        elif kind == "sp":
            out.append(_Token(_SPECIAL, m.group("sp"), space))
            space = False
        elif kind == "q":
            text = m.group("q")
            if b"\\" in text:
                text = _QUOTED_PAIR.sub(rb"\1", text)
            if b"\r" in text or b"\n" in text:
                text = _CRLF.sub(b"", text)
            out.append(_Token(_QUOTED, text, space))
            space = False
        elif kind == "lit":
            out.append(_Token(_LITERAL, m.group("lit"), space))
            space = False
        else:
            text, end = _comment_end(value, pos)
            out.append(_Token(_COMMENT, text, space))
            space = True
            pos = end
            continue
        pos = m.end()
    return out


def _phrase(tokens: list[_Token]) -> bytes:
    """A display name: words joined as written, quotes removed."""
    out = bytearray()
    for t in tokens:
        if t.kind == _COMMENT:
            continue
        if t.space and out:
            out.append(0x20)
        out += t.text
    return bytes(out)


def _addr_spec(tokens: list[_Token]) -> tuple[bytes, bytes]:
    """``(local part, domain)``, either possibly empty."""
    words = [t for t in tokens if t.kind != _COMMENT]
    at = next(
        (k for k, t in enumerate(words) if t.kind == _SPECIAL and t.text == b"@"), None
    )
    local_tokens = words if at is None else words[:at]
    domain_tokens = [] if at is None else words[at + 1 :]
    local = _phrase(local_tokens)
    domain = b"".join(t.text for t in domain_tokens if t.text != b"@")
    return local, domain


def _address(
    name: bytes | None, route: bytes | None, local: bytes, domain: bytes
) -> bytes:
    return format_list(
        [
            _nquote(name or None),
            _nquote(route or None),
            _quote(local or b"MISSING_MAILBOX"),
            _quote(domain or b"MISSING_DOMAIN"),
        ]
    )


def _mailbox(tokens: list[_Token]) -> bytes | None:
    """One formatted mailbox from its tokens, or None when there is none."""
    if not any(t.kind != _COMMENT for t in tokens):
        return None
    comments = [t.text for t in tokens if t.kind == _COMMENT and t.text]
    angle = next(
        (k for k, t in enumerate(tokens) if t.kind == _SPECIAL and t.text == b"<"), None
    )
    if angle is None:
        local, domain = _addr_spec(tokens)
        return _address(comments[-1] if comments else None, None, local, domain)
    name = _phrase(tokens[:angle])
    inner = tokens[angle + 1 :]
    close = next(
        (k for k, t in enumerate(inner) if t.kind == _SPECIAL and t.text == b">"), None
    )
    after = [] if close is None else inner[close + 1 :]
    if close is not None:
        inner = inner[:close]
    route = None
    colon = next(
        (k for k, t in enumerate(inner) if t.kind == _SPECIAL and t.text == b":"), None
    )
    if colon is not None and inner and inner[0].text == b"@":
        route = b"".join(t.text for t in inner[:colon] if t.kind != _COMMENT)
        inner = inner[colon + 1 :]
    local, domain = _addr_spec(inner)
    if not name:
        late = [t.text for t in after if t.kind == _COMMENT and t.text]
        name = (late or comments or [b""])[-1]
    return _address(name, route, local, domain)


# The common shapes, ``local@domain`` and ``Some Name <local@domain>``,
# answered without the tokenizer (tests check both ways agree).
_PLAIN_ADDRESS = re.compile(
    rb"[ \t\r\n]*(?:([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:[ \t\r\n]+"
    rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)[ \t\r\n]*<)?"
    rb"([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+)@([A-Za-z0-9.-]+)(>?)[ \t\r\n]*\Z"
)
_SPACES = re.compile(rb"[ \t\r\n]+")
_HARD = re.compile(rb'["():;\[\\]')


def _format_addresses(value: bytes) -> bytes:
    """The formatted ``address`` items of an address list, concatenated
    inside parentheses (RFC 3501 §9, ``env-from``), or empty for none."""
    if not _HARD.search(value):
        out = []
        for piece in value.split(b","):
            m = _PLAIN_ADDRESS.match(piece)
            if m is None or (m.group(1) is None) != (m.group(4) == b""):
                break
            name = None if m.group(1) is None else _SPACES.sub(b" ", m.group(1))
            out.append(_address(name, None, m.group(2), m.group(3)))
        else:
            return b"(" + b"".join(out) + b")"
    return _format_address_list(value)


def _format_address_list(value: bytes) -> bytes:
    """L{_format_addresses} the general way, with the tokenizer."""
    tokens = _tokens(value)
    out: list[bytes] = []
    current: list[_Token] = []
    in_group = False
    in_angle = False
    for t in tokens:
        if t.kind == _SPECIAL:
            if t.text == b"<":
                in_angle = True
            elif t.text == b">":
                in_angle = False
            elif not in_angle and t.text == b",":
                item = _mailbox(current)
                if item is not None:
                    out.append(item)
                current = []
                continue
            elif not in_angle and t.text == b":" and not in_group:
                out.append(_address_group(_phrase(current)))
                in_group = True
                current = []
                continue
            elif not in_angle and t.text == b";":
                item = _mailbox(current)
                if item is not None:
                    out.append(item)
                current = []
                if in_group:
                    out.append(b"(NIL NIL NIL NIL)")
                    in_group = False
                continue
        current.append(t)
    item = _mailbox(current)
    if item is not None:
        out.append(item)
    if in_group:
        out.append(b"(NIL NIL NIL NIL)")
    return b"(" + b"".join(out) + b")" if out else b""


def _address_group(name: bytes) -> bytes:
    return b"(NIL NIL " + _quote(name or b"MISSING_GROUP") + b" NIL)"


# --- decoding for SEARCH (RFC 2047, RFC 2045 §6) ----------------------------------------

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_BASE64_ALPHABET = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)
_NOT_BASE64 = bytes(c for c in range(256) if c not in _BASE64_ALPHABET)


def _decode_charset(raw: bytes, charset: bytes) -> str:
    name = charset.decode("ascii", "replace").strip().lower()
    if name in ("", "us-ascii", "ascii"):
        name = "utf-8"
    try:
        codecs.lookup(name)
    except (LookupError, ValueError):
        name = "utf-8"
    try:
        return raw.decode(name, "replace")
    except Exception:  # a codec that fails oddly on hostile input
        return raw.decode("utf-8", "replace")


def _decode_b64(text: bytes) -> bytes:
    text = text.translate(None, _NOT_BASE64)
    if len(text) % 4 == 1:
        text = text[:-1]
    try:
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except binascii.Error:
        return b""


def decode_header_value(value: bytes) -> str:
    """A header value as text: encoded words (RFC 2047) decoded, the
    whitespace between adjacent ones dropped, other octets read as UTF-8
    (invalid sequences replaced).  Never raises."""
    out: list[str] = []
    pos = 0
    run_charset: bytes | None = None
    run = bytearray()

    def flush() -> None:
        nonlocal run_charset
        if run_charset is not None:
            out.append(_decode_charset(bytes(run), run_charset))
            run.clear()
            run_charset = None

    for m in _ENCODED_WORD.finditer(value):
        between = value[pos : m.start()]
        if not (run_charset is not None and not between.strip(_WSP)):
            flush()
            out.append(between.decode("utf-8", "replace"))
        charset = m.group(1).split(b"*")[0]
        if m.group(2) in b"bB":
            raw = _decode_b64(m.group(3))
        else:
            raw = _QP_HEX.sub(
                lambda h: bytes([int(h.group(1), 16)]), m.group(3).replace(b"_", b" ")
            )
        if run_charset is not None and charset.lower() != run_charset.lower():
            flush()
        run_charset = charset
        run += raw
        pos = m.end()
    flush()
    out.append(value[pos:].decode("utf-8", "replace"))
    return "".join(out)


def _decode_transfer(raw: bytes, encoding: bytes) -> bytes:
    if encoding == b"BASE64":
        return _decode_b64(raw)
    if encoding == b"QUOTED-PRINTABLE":
        try:
            return quopri.decodestring(raw)
        except (ValueError, binascii.Error):
            return raw
    return raw


def text_parts(msg: bytes) -> list[str]:
    """The decoded body text of a message, part by part (SEARCH BODY)."""
    return list(MessageParts(msg).text_parts())
