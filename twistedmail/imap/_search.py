# -*- test-case-name: tests.test_imap_search -*-
"""SEARCH (RFC 3501 §6.4.4) over a folder's messages, and the SEARCH and
ESEARCH (RFC 4731) responses: the IMAP step of the flow.

Pure code: the caller passes the session's view of the folder (a list of
L{MessageInfo} in sequence-number order) and loaders for message octets;
nothing here touches files itself.  A key tree from the parser is compiled
once into predicates, then run over each message:

  - flag, size, internal-date, sequence-set, UID and MODSEQ keys read only
    the L{MessageInfo} (and the session's \\Recent set, and the mod-sequence
    callable): a search made only of them never calls a loader;
  - header keys (FROM, SUBJECT, HEADER..., SENT*) need only the header
    block: C{load_header} when given (the server may back it with the
    folder cache), else the header part of C{load};
  - a header key on a field the folder cache indexes (C{match_field}, see
    L{twistedmail.imap._message.indexed_matches}) is answered by one
    look-up for the whole folder, and only the messages that may match are
    looked at (for ``AND``, those all of its indexed keys allow; for
    ``OR``, those either side allows); a message the index does not know
    is tested the slow way;
  - BODY and TEXT load the whole message once.

Within ``AND`` (and ``OR``) the cheaper keys run first, so a message that
fails a flag test is never read.

Matching (RFC 3501 §6.4.4): strings match as case-insensitive substrings
(Unicode case folding) of the decoded text: header values with encoded
words (RFC 2047) decoded; for BODY and TEXT the text parts with their
Content-Transfer-Encoding and charset undone (other parts are not
searched), plus the header of each encapsulated message.  An empty string
matches every message that has the field (HEADER) or at all (BODY, TEXT).
BEFORE, ON and SINCE compare the internal date's calendar day in the
server's time zone (C{tz}); SENTBEFORE, SENTON and SENTSINCE the day
written in the Date field, disregarding its time and zone, falling back to
the internal date when Date is missing or unreadable.  LARGER and SMALLER
compare RFC822.SIZE (L{MessageInfo.size}).  MODSEQ (RFC 7162 §3.1.5)
compares the message's mod-sequence with C{>=}; the entry name is ignored
(we keep one mod-sequence per message).  Only the UTF-8 and US-ASCII
charsets are supported (L{SUPPORTED_CHARSETS}): the parser has already
decoded the strings.
"""

from __future__ import annotations

import bisect
import datetime
import email.utils
import re
from collections.abc import Callable, Container, Iterable, Sequence

from twistedmail.imap._format import format_string
from twistedmail.imap._message import (
    decode_header_value,
    field_pattern,
    field_values,
    header_block,
    header_fields,
    parse_message,
)
from twistedmail.imap._sequence import SequenceSet
from twistedmail.imap._types import (
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
from twistedmail.maildir import MessageInfo
from twistedmail.maildir.names import IMAP_SYSTEM_FLAGS

__all__ = [
    "SUPPORTED_CHARSETS",
    "FieldMatcher",
    "evaluate_search",
    "format_esearch",
    "format_search",
    "highest_modseq",
    "search_cost",
    "uses_internal_date",
    "uses_modseq",
]

#: The CHARSETs SEARCH accepts; others get ``NO [BADCHARSET (UTF-8
#: US-ASCII)]`` (RFC 3501 §6.4.4).
SUPPORTED_CHARSETS = ("UTF-8", "US-ASCII")

#: Costs of L{search_cost}.
_META, _HEADER, _BODY = 0, 1, 2

_SYSTEM_LETTERS = {name.lower(): letter for name, letter in IMAP_SYSTEM_FLAGS.items()}

Loader = Callable[[int], "bytes | None"]

#: C{match_field(field, needle)}: C{(matching, unindexed)} base names for a
#: header field containing a case-folded string, or None (not indexed).
FieldMatcher = Callable[[str, str], "tuple[set[str], set[str]] | None"]


class _Candidate:
    """The message being tested, with what has been loaded of it so far."""

    __slots__ = (
        "_body_texts",
        "_fields",
        "_header",
        "_header_text",
        "_msg",
        "_sent",
        "info",
        "load",
        "load_header",
        "seq",
    )

    def __init__(self, load: Loader, load_header: Loader | None) -> None:
        self.load = load
        self.load_header = load_header
        self.info: MessageInfo | None = None
        self.seq = 0
        self._msg: bytes | None = None
        self._fields: dict[str, list[str]] | None = None
        self._header: bytes | None = None
        self._header_text: str | None = None
        self._body_texts: list[str] | None = None
        self._sent: datetime.date | None = None

    def reset(self, info: MessageInfo, seq: int) -> None:
        self.info = info
        self.seq = seq
        self._msg = None
        self._fields = None
        self._header = None
        self._header_text = None
        self._body_texts = None
        self._sent = None

    @property
    def uid(self) -> int:
        assert self.info is not None
        return self.info.uid

    def message(self) -> bytes:
        if self._msg is None:
            self._msg = self.load(self.uid) or b""
        return self._msg

    def header(self) -> bytes:
        """The header block, from the message when it is loaded, else from
        the header loader (or the message loader when there is none)."""
        if self._header is None:
            if self._msg is not None:
                self._header = header_block(self._msg)
            elif self.load_header is not None:
                self._header = self.load_header(self.uid) or b""
            else:
                self._header = header_block(self.message())
        return self._header

    def fields(self) -> dict[str, list[str]]:
        """Decoded, case-folded header values by lower-cased field name."""
        if self._fields is None:
            fields: dict[str, list[str]] = {}
            for name, value in header_fields(self.header()):
                key = name.decode("utf-8", "replace")
                fields.setdefault(key, []).append(decode_header_value(value).casefold())
            self._fields = fields
        return self._fields

    def texts(self) -> tuple[str, list[str]]:
        """The case-folded header text and body texts (for TEXT and BODY)."""
        if self._body_texts is None or self._header_text is None:
            parts = parse_message(self.message())
            self._header_text = parts.header_text().casefold()
            self._body_texts = [t.casefold() for t in parts.text_parts()]
        return self._header_text, self._body_texts

    def sent_date(self, tz: datetime.tzinfo) -> datetime.date:
        if self._sent is None:
            self._sent = _date_field(self.fields().get("date")) or _internal_day(
                self.info, tz
            )
        return self._sent


def _plain_needle(needle: str) -> bytes | None:
    """The (case-folded) search string as octets when a byte search of the
    raw header can rule a message out (L{_may_contain}): non-empty
    printable ASCII without white space, which unfolding could bring
    together.  None otherwise."""
    if needle.isascii() and needle.isprintable() and needle.split() == [needle]:
        return needle.encode()
    return None


def _may_contain(header: bytes, needle: bytes) -> bool:
    """False only when no field of C{header} can contain C{needle} once
    decoded: a header of plain ASCII with no encoded word (no ``=?``)
    decodes to itself but for its line folds (CRLF before white space),
    and ASCII case folding is lower-casing.  This spares parsing and
    decoding every field of the (many) headers that cannot match."""
    if not header.isascii() or b"=?" in header:
        return True
    return needle in header.lower()


def _internal_day(info: MessageInfo | None, tz: datetime.tzinfo) -> datetime.date:
    assert info is not None
    try:
        return datetime.datetime.fromtimestamp(info.internal_date, tz).date()
    except (OverflowError, OSError, ValueError):
        return datetime.date(1970, 1, 1)


def _date_field(values: list[str] | None) -> datetime.date | None:
    """The calendar day written in the first Date field, or None."""
    if not values:
        return None
    try:
        parsed = email.utils.parsedate_tz(values[0])
        if parsed is None:
            return None
        return datetime.date(parsed[0], parsed[1], parsed[2])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


Predicate = Callable[[_Candidate], bool]


def search_cost(key: SearchKey) -> int:
    """What a key needs: 0 for the L{MessageInfo} alone, 1 for the header,
    2 for the whole message."""
    if isinstance(key, SearchAnd):
        return max((search_cost(k) for k in key.keys), default=_META)
    if isinstance(key, SearchOr):
        return max(search_cost(key.left), search_cost(key.right))
    if isinstance(key, SearchNot):
        return search_cost(key.key)
    if isinstance(key, SearchHeader) or (isinstance(key, SearchDate) and key.sent):
        return _HEADER
    if isinstance(key, SearchBody | SearchText):
        return _BODY
    return _META


def _has_key(key: SearchKey, kind: type | tuple[type, ...]) -> bool:
    """Whether the key or any key inside it (AND, OR, NOT) is of C{kind}."""
    if isinstance(key, kind):
        return True
    if isinstance(key, SearchAnd):
        return any(_has_key(k, kind) for k in key.keys)
    if isinstance(key, SearchOr):
        return _has_key(key.left, kind) or _has_key(key.right, kind)
    if isinstance(key, SearchNot):
        return _has_key(key.key, kind)
    return False


def uses_modseq(key: SearchKey) -> bool:
    """Whether the key has a MODSEQ criterion (then the response carries
    the highest mod-sequence of the matches, RFC 7162 §3.1.5)."""
    return _has_key(key, SearchModSeq)


def uses_internal_date(key: SearchKey) -> bool:
    """Whether the key may compare internal dates (BEFORE, ON, SINCE, and
    the SENT ones, which fall back to it without a Date field): the
    messages then need theirs known (L{Mailbox.with_dates})."""
    return _has_key(key, SearchDate)


class _Compiler:
    def __init__(
        self,
        messages: Sequence[MessageInfo],
        recent: Container[int] | None,
        modseq_of: Callable[[int], int] | None,
        tz: datetime.tzinfo,
        match_field: FieldMatcher | None = None,
    ) -> None:
        self.messages = messages
        self.recent = recent
        self.modseq_of = modseq_of
        self.tz = tz
        self.match_field = match_field
        self._indexed: dict[tuple[str, str], tuple[set[str], set[str]] | None] = {}

    def _index(self, key: SearchHeader) -> tuple[set[str], set[str]] | None:
        """The index's answer for a header key (asked once per key)."""
        if self.match_field is None:
            return None
        what = (key.field.lower(), key.value.casefold())
        if what not in self._indexed:
            self._indexed[what] = self.match_field(*what)
        return self._indexed[what]

    def possible(self, key: SearchKey) -> set[str] | None:
        """Base names of the messages that may match C{key}, as far as the
        index tells (a superset of the matches), or None when it tells
        nothing."""
        if isinstance(key, SearchHeader):
            found = self._index(key)
            return None if found is None else found[0] | found[1]
        if isinstance(key, SearchAnd):
            sets = [s for s in map(self.possible, key.keys) if s is not None]
            return set.intersection(*sets) if sets else None
        if isinstance(key, SearchOr):
            left, right = self.possible(key.left), self.possible(key.right)
            return None if left is None or right is None else left | right
        return None

    def compile(self, key: SearchKey) -> Predicate:
        if isinstance(key, SearchAll):
            return lambda c: True
        if isinstance(key, SearchAnd):
            keys = sorted(key.keys, key=search_cost)
            preds = [self.compile(k) for k in keys]
            if len(preds) == 1:
                return preds[0]
            return lambda c: all(p(c) for p in preds)
        if isinstance(key, SearchOr):
            first, second = key.left, key.right
            if search_cost(second) < search_cost(first):
                first, second = second, first
            p1, p2 = self.compile(first), self.compile(second)
            return lambda c: p1(c) or p2(c)
        if isinstance(key, SearchNot):
            inner = self.compile(key.key)
            return lambda c: not inner(c)
        if isinstance(key, SearchFlag):
            return self._flag(key)
        if isinstance(key, SearchSize):
            size = key.size
            if key.relation == "larger":
                return lambda c: c.info is not None and c.info.size > size
            return lambda c: c.info is not None and c.info.size < size
        if isinstance(key, SearchDate):
            return self._date(key)
        if isinstance(key, SearchMessages):
            return self._messages(key)
        if isinstance(key, SearchModSeq):
            modseq_of = self.modseq_of
            wanted = key.modseq
            if modseq_of is None:
                return lambda c: wanted <= 1
            return lambda c: modseq_of(c.uid) >= wanted
        if isinstance(key, SearchHeader):
            return self._header(key)
        if isinstance(key, SearchBody):
            needle = key.value.casefold()
            return lambda c: not needle or any(needle in t for t in c.texts()[1])
        if isinstance(key, SearchText):
            needle = key.value.casefold()

            def text(c: _Candidate) -> bool:
                if not needle:
                    return True
                header, bodies = c.texts()
                return needle in header or any(needle in t for t in bodies)

            return text
        # An unknown key type (a newer parser): it matches nothing.
        return lambda c: False

    def _header(self, key: SearchHeader) -> Predicate:
        field, needle = key.field.lower(), key.value.casefold()
        raw = _plain_needle(needle)
        pattern = field_pattern(field)
        if pattern is not None:
            slow = self._field(pattern, needle, raw)
        else:

            def slow(c: _Candidate) -> bool:
                if raw is not None and not _may_contain(c.header(), raw):
                    return False
                return any(needle in v for v in c.fields().get(field, ()))

        found = self._index(key)
        if found is None:
            return slow
        matching, unindexed = found

        def header(c: _Candidate) -> bool:
            assert c.info is not None
            base = c.info.base
            if base in matching:
                return True
            return base in unindexed and slow(c)

        return header

    @staticmethod
    def _field(pattern: re.Pattern[bytes], needle: str, raw: bytes | None) -> Predicate:
        """A header key on one field: only that field's values are found
        and decoded, and a value of plain ASCII with no encoded word is
        matched as it is (it decodes to itself, and ASCII case folding is
        lower-casing)."""

        def header(c: _Candidate) -> bool:
            if raw is not None and not _may_contain(c.header(), raw):
                return False
            for value in field_values(c.header(), pattern):
                if raw is not None and value.isascii() and b"=?" not in value:
                    if raw in value.lower():
                        return True
                elif needle in decode_header_value(value).casefold():
                    return True
            return False

        return header

    def _flag(self, key: SearchFlag) -> Predicate:
        name = key.flag.lower()
        present = key.present
        if name == "\\recent":
            recent = self.recent
            if recent is None:
                return lambda c: (c.info is not None and c.info.recent) == present
            return lambda c: (c.uid in recent) == present
        letter = _SYSTEM_LETTERS.get(name)
        if letter is not None:
            return lambda c: c.info is not None and (letter in c.info.flags) == present
        if name.startswith("\\"):
            # A system flag we do not keep is never set.
            return lambda c: not present

        def keyword(c: _Candidate) -> bool:
            assert c.info is not None
            found = any(k.lower() == name for k in c.info.keywords)
            return found == present

        return keyword

    def _date(self, key: SearchDate) -> Predicate:
        day = key.date
        tz = self.tz
        if key.sent:

            def when(c: _Candidate) -> datetime.date:
                return c.sent_date(tz)

        else:

            def when(c: _Candidate) -> datetime.date:
                return _internal_day(c.info, tz)

        if key.relation == "before":
            return lambda c: when(c) < day
        if key.relation == "on":
            return lambda c: when(c) == day
        return lambda c: when(c) >= day

    def _messages(self, key: SearchMessages) -> Predicate:
        if key.uid:
            largest = max((m.uid for m in self.messages), default=0)
        else:
            largest = len(self.messages)
        if largest == 0:
            return lambda c: False
        spans = key.sequence_set.resolved(largest)
        lows = [low for low, _ in spans]
        highs = [high for _, high in spans]
        use_uid = key.uid

        def member(c: _Candidate) -> bool:
            n = c.uid if use_uid else c.seq
            i = bisect.bisect_right(lows, n) - 1
            return i >= 0 and n <= highs[i]

        return member


def evaluate_search(
    key: SearchKey,
    messages: Sequence[MessageInfo],
    *,
    load: Callable[[int], bytes | None],
    load_header: Callable[[int], bytes | None] | None = None,
    recent: Container[int] | None = None,
    modseq_of: Callable[[int], int] | None = None,
    tz: datetime.tzinfo = datetime.UTC,
    uid: bool = False,
    match_field: FieldMatcher | None = None,
) -> list[int]:
    """The messages matching a SEARCH key (RFC 3501 §6.4.4), ascending.

    Blocking when a key needs message octets (the loaders read files): run
    it off the reactor thread unless L{search_cost} is 0.

    @param key: the parsed key tree (L{twistedmail.imap.Search.key}).
    @param messages: the session's view, in sequence-number order: the
        message at index C{i} has sequence number C{i + 1}.
    @param load: returns a message's octets by UID (as FETCH sends them),
        or None for a message that is gone (it then matches no string).
    @param load_header: returns just the header block by UID (e.g. from the
        folder cache, L{twistedmail.imap._message.cached_header}); without
        it header keys use C{load}.
    @param recent: the UIDs that are \\Recent in this session (RFC 3501
        §2.3.2); None takes L{MessageInfo.recent} (still in ``new/``).
    @param modseq_of: a message's mod-sequence by UID, for MODSEQ; None
        counts every message as mod-sequence 1.
    @param tz: the time zone in which internal dates fall on calendar days.
    @param uid: return UIDs (UID SEARCH) instead of sequence numbers.
    @param match_field: answers header keys from an index, for the
        messages it knows (by L{MessageInfo.base}): C{match_field(field,
        needle)} with the lower-cased field name and the case-folded
        string returns the base names of the messages it knows to match
        and of those of C{messages} it does not know, or None when it
        cannot answer (e.g.
        L{twistedmail.imap._message.indexed_matches} over the folder
        cache).  It must agree with the header block.
    @return: sequence numbers (or UIDs) of the matches, ascending.
    """
    compiler = _Compiler(messages, recent, modseq_of, tz, match_field)
    predicate = compiler.compile(key)
    possible = compiler.possible(key)
    numbered: Iterable[tuple[int, MessageInfo]] = enumerate(messages)
    if possible is not None:
        numbered = [(i, info) for i, info in numbered if info.base in possible]
    candidate = _Candidate(load, load_header)
    out = []
    for index, info in numbered:
        candidate.reset(info, index + 1)
        if predicate(candidate):
            out.append(info.uid if uid else index + 1)
    return out


def highest_modseq(uids: Iterable[int], modseq_of: Callable[[int], int]) -> int | None:
    """The highest mod-sequence among the matches, or None when there are
    none (RFC 7162 §3.1.5: then no MODSEQ is sent)."""
    return max((modseq_of(u) for u in uids), default=None)


def format_search(matches: Iterable[int], modseq: int | None = None) -> bytes:
    """The untagged ``* SEARCH 2 3 5`` response, CRLF included (RFC 3501
    §7.2.5), with ``(MODSEQ n)`` after the numbers when C{modseq} is given
    and there are matches (RFC 7162 §3.1.5)."""
    numbers = b" ".join(b"%d" % n for n in matches)
    if not numbers:
        return b"* SEARCH\r\n"
    line = b"* SEARCH " + numbers
    if modseq is not None:
        line += b" (MODSEQ %d)" % modseq
    return line + b"\r\n"


def format_esearch(
    tag: str | None,
    matches: Sequence[int],
    options: Sequence[str],
    *,
    uid: bool,
    modseq: int | None = None,
) -> bytes:
    """The untagged ``* ESEARCH`` response, CRLF included (RFC 4731 §3.1).

    @param tag: the command's tag, for the ``(TAG "...")`` correlator.
    @param matches: the matching numbers, ascending.
    @param options: the RETURN options (upper-case); empty means ``ALL``.
        ``SAVE`` (RFC 5182) is left to the caller: with ``SAVE`` alone the
        response is C{b""} (no ESEARCH is sent).
    @param uid: the command was UID SEARCH (adds ``UID``).
    @param modseq: the highest mod-sequence of the matches, for a search
        with MODSEQ (RFC 7162 §3.1.10); sent only when there are matches.
    @return: e.g. ``* ESEARCH (TAG "a1") UID MIN 2 MAX 9 COUNT 3 ALL 2,5,9``.
    """
    wanted = set(options) or {"ALL"}
    if wanted == {"SAVE"}:
        return b""
    line = b"* ESEARCH"
    if tag is not None:
        line += b" (TAG " + format_string(tag) + b")"
    if uid:
        line += b" UID"
    if matches:
        if "MIN" in wanted:
            line += b" MIN %d" % min(matches)
        if "MAX" in wanted:
            line += b" MAX %d" % max(matches)
    if "COUNT" in wanted:
        line += b" COUNT %d" % len(matches)
    if matches:
        if "ALL" in wanted:
            line += b" ALL " + SequenceSet.from_numbers(matches).to_bytes()
        if modseq is not None:
            line += b" MODSEQ %d" % modseq
    return line + b"\r\n"
