"""Tests for L{twistedmail.imap._search}: every SEARCH key of RFC 3501
§6.4.4, MODSEQ, nesting, lazy loading, and the SEARCH/ESEARCH responses."""

from __future__ import annotations

import datetime
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.imap import CommandParser, Search
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
from twistedmail.imap._types import (
    SearchAll,
    SearchAnd,
    SearchFlag,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchSize,
)
from twistedmail.maildir import MessageInfo

UTC = datetime.UTC
_NON_ASCII = re.compile(r'"[^"]*[^\x00-\x7f][^"]*"|[^\s()"]*[^\x00-\x7f][^\s()"]*')


def stamp(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    """POSIX seconds of a date and time in UTC."""
    when = datetime.datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(when.timestamp())


def info(
    uid: int,
    size: int,
    when: int,
    flags: str = "",
    keywords: frozenset[str] = frozenset(),
    new: bool = False,
) -> MessageInfo:
    """A message's store entry."""
    base = f"{uid}.base"
    filename = f"new/{base}" if new else f"cur/{base}:2,{flags}"
    return MessageInfo(uid, base, filename, size, when, frozenset(flags), keywords)


MESSAGES = {
    10: (
        b"From: Alice Example <alice@example.com>\r\n"
        b"To: bob@example.org\r\n"
        b"Subject: Hello World\r\n"
        b"Date: Thu, 01 Feb 2024 12:00:00 +0000\r\n"
        b"\r\n"
        b"Plain body about apples.\r\n"
    ),
    20: (
        b"From: =?UTF-8?Q?J=C3=B6rg?= <joerg@example.de>\r\n"
        b"To: alice@example.com\r\n"
        b"Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= aus =?UTF-8?B?S8O2bG4=?=\r\n"
        b"Date: Wed, 31 Jan 2024 10:00:00 +0100\r\n"
        b"X-Priority: 1 (Highest)\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n"
        b"\r\n"
        b"--b\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"Caf=C3=A9 with soft=\r\n"
        b"break\r\n"
        b"--b\r\n"
        b"Content-Type: text/html; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"PHA+Q3LobWUgYnJ1bOllPC9wPg==\r\n"
        b"--b--\r\n"
    ),
    30: (
        b"From: carol@example.net\r\n"
        b"To: dave@example.net\r\n"
        b"Subject: no date here\r\n"
        b"\r\n"
        b"Meeting notes.\r\n"
    ),
    40: (
        b"From: eve@example.com\r\n"
        b"To: frank@example.com\r\n"
        b"Cc: Grace <grace@example.com>\r\n"
        b"Bcc: heidi@example.com\r\n"
        b"Subject: late night\r\n"
        b"Date: Thu, 01 Feb 2024 23:30:00 -0800\r\n"
        b"\r\n"
        b"Sent late.\r\n"
    ),
    50: (
        b"From: ivan@example.com\r\n"
        b"Subject: attachment\r\n"
        b"Date: yesterday\r\n"
        b"Content-Type: multipart/mixed; boundary=q\r\n"
        b"\r\n"
        b"--q\r\n"
        b"\r\n"
        b"see attached\r\n"
        b"--q\r\n"
        b"Content-Type: image/png\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"c2VjcmV0\r\n"
        b"--q--\r\n"
    ),
}

INFOS = [
    info(10, 100, stamp(2024, 2, 1, 12, 0, 0), "RS"),
    info(20, 200, stamp(2024, 1, 31, 9, 0, 0), "DF", frozenset({"$Junk"}), new=True),
    info(30, 300, stamp(2024, 2, 1, 23, 59, 59), "ST"),
    info(40, 400, stamp(2024, 2, 2, 0, 0, 0), ""),
    info(50, 500, stamp(2024, 2, 3, 8, 0, 0), "S", frozenset({"Work"})),
]


def _literal(match: re.Match[str]) -> str:
    word = match.group(0).strip('"')
    return f"{{{len(word.encode())}+}}\r\n{word}"


def key(text: str) -> SearchKey:
    """The key tree the parser makes of ``SEARCH text`` (non-ASCII strings
    are sent as LITERAL+ literals, as a client must)."""
    text = _NON_ASCII.sub(_literal, text)
    events = CommandParser().receive_data(b"a SEARCH " + text.encode() + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], Search), events
    return events[0].key


class Loads:
    """Loaders that count what they are asked for."""

    def __init__(self, messages: dict[int, bytes] = MESSAGES) -> None:
        self.messages = messages
        self.full: list[int] = []
        self.headers: list[int] = []

    def load(self, uid: int) -> bytes | None:
        """A whole message."""
        self.full.append(uid)
        return self.messages.get(uid)

    def load_header(self, uid: int) -> bytes | None:
        """Only the header."""
        self.headers.append(uid)
        msg = self.messages.get(uid)
        return None if msg is None else msg[: msg.index(b"\r\n\r\n") + 4]


def never(uid: int) -> bytes:
    """A loader for searches that must not load anything."""
    raise AssertionError(f"loaded message {uid}")


class SearchTestCase(SynchronousTestCase):
    """Shared helpers."""

    def uids(self, text: str, **kw: object) -> list[int]:
        """UIDs matching ``SEARCH text`` over L{INFOS}."""
        loads = Loads()
        kw.setdefault("load", loads.load)
        return evaluate_search(key(text), INFOS, uid=True, **kw)  # type: ignore[arg-type]

    def meta(self, text: str, **kw: object) -> list[int]:
        """UIDs matching a key that must not load any message."""
        kw.setdefault("recent", None)
        return evaluate_search(key(text), INFOS, load=never, uid=True, **kw)  # type: ignore[arg-type]


class FlagTests(SearchTestCase):
    """Flag keys read only the store entries (never a message file)."""

    def test_system_flags(self) -> None:
        """ANSWERED, DELETED, DRAFT, FLAGGED, SEEN and their UN- forms."""
        self.assertEqual(self.meta("ANSWERED"), [10])
        self.assertEqual(self.meta("UNANSWERED"), [20, 30, 40, 50])
        self.assertEqual(self.meta("DELETED"), [30])
        self.assertEqual(self.meta("UNDELETED"), [10, 20, 40, 50])
        self.assertEqual(self.meta("DRAFT"), [20])
        self.assertEqual(self.meta("UNDRAFT"), [10, 30, 40, 50])
        self.assertEqual(self.meta("FLAGGED"), [20])
        self.assertEqual(self.meta("UNFLAGGED"), [10, 30, 40, 50])
        self.assertEqual(self.meta("SEEN"), [10, 30, 50])
        self.assertEqual(self.meta("UNSEEN"), [20, 40])

    def test_recent_from_store(self) -> None:
        """Without a session set, \\Recent is "still in new/"."""
        self.assertEqual(self.meta("RECENT"), [20])
        self.assertEqual(self.meta("OLD"), [10, 30, 40, 50])
        self.assertEqual(self.meta("NEW"), [20])

    def test_recent_from_session(self) -> None:
        """With the session's \\Recent set, that set decides."""
        recent = {30, 40}
        self.assertEqual(self.meta("RECENT", recent=recent), [30, 40])
        self.assertEqual(self.meta("OLD", recent=recent), [10, 20, 50])
        # NEW is RECENT and UNSEEN.
        self.assertEqual(self.meta("NEW", recent=recent), [40])

    def test_keywords(self) -> None:
        """KEYWORD and UNKEYWORD, compared case-insensitively."""
        self.assertEqual(self.meta("KEYWORD $junk"), [20])
        self.assertEqual(self.meta("KEYWORD work"), [50])
        self.assertEqual(self.meta("UNKEYWORD $Junk"), [10, 30, 40, 50])
        self.assertEqual(self.meta("KEYWORD $Forwarded"), [])

    def test_unknown_system_flag(self) -> None:
        """A system flag the store does not keep is never set."""
        self.assertEqual(
            evaluate_search(SearchFlag("\\Whatever"), INFOS, load=never, uid=True), []
        )
        self.assertEqual(
            evaluate_search(SearchFlag("\\Whatever", False), INFOS, load=never),
            [1, 2, 3, 4, 5],
        )

    def test_all(self) -> None:
        """ALL matches everything; sequence numbers are list positions."""
        self.assertEqual(self.meta("ALL"), [10, 20, 30, 40, 50])
        self.assertEqual(
            evaluate_search(SearchAll(), INFOS, load=never), [1, 2, 3, 4, 5]
        )
        self.assertEqual(evaluate_search(SearchAll(), [], load=never), [])


class SizeTests(SearchTestCase):
    """LARGER and SMALLER are strict comparisons with RFC822.SIZE."""

    def test_larger(self) -> None:
        """LARGER n: size above n."""
        self.assertEqual(self.meta("LARGER 300"), [40, 50])
        self.assertEqual(self.meta("LARGER 299"), [30, 40, 50])

    def test_smaller(self) -> None:
        """SMALLER n: size below n."""
        self.assertEqual(self.meta("SMALLER 300"), [10, 20])
        self.assertEqual(self.meta("SMALLER 301"), [10, 20, 30])
        self.assertEqual(self.meta("SMALLER 100"), [])


class DateTests(SearchTestCase):
    """BEFORE/ON/SINCE use the internal date's day; SENT* the Date field's."""

    def test_internal_day_boundaries(self) -> None:
        """23:59:59 and 00:00:00 fall on different days (in UTC)."""
        self.assertEqual(self.meta("ON 1-Feb-2024"), [10, 30])
        self.assertEqual(self.meta("ON 2-Feb-2024"), [40])
        self.assertEqual(self.meta("BEFORE 2-Feb-2024"), [10, 20, 30])
        self.assertEqual(self.meta("BEFORE 1-Feb-2024"), [20])
        self.assertEqual(self.meta("SINCE 2-Feb-2024"), [40, 50])
        self.assertEqual(self.meta("SINCE 1-Feb-2024"), [10, 30, 40, 50])

    def test_server_time_zone(self) -> None:
        """Days are the server's: two hours east, 23:59:59 UTC is already
        the next day, and 00:00 UTC is 02:00."""
        east = datetime.timezone(datetime.timedelta(hours=2))
        self.assertEqual(self.meta("ON 1-Feb-2024", tz=east), [10])
        self.assertEqual(self.meta("ON 2-Feb-2024", tz=east), [30, 40])
        west = datetime.timezone(datetime.timedelta(hours=-1))
        self.assertEqual(self.meta("ON 1-Feb-2024", tz=west), [10, 30, 40])

    def test_sent_dates(self) -> None:
        """The day written in Date counts, not its UTC day: 23:30 -0800 on
        1 Feb is 2 Feb in UTC but SENTON 1-Feb."""
        loads = Loads()
        self.assertEqual(
            evaluate_search(key("SENTON 1-Feb-2024"), INFOS, load=loads.load, uid=True),
            [10, 30, 40],
        )
        self.assertEqual(self.uids("SENTBEFORE 1-Feb-2024"), [20])
        self.assertEqual(self.uids("SENTSINCE 2-Feb-2024"), [50])
        self.assertEqual(self.uids("SENTSINCE 1-Feb-2024"), [10, 30, 40, 50])

    def test_sent_date_fallback(self) -> None:
        """A missing (30) or unreadable (50) Date falls back to the internal
        date."""
        self.assertIn(30, self.uids("SENTON 1-Feb-2024"))
        self.assertEqual(self.uids("SENTON 3-Feb-2024"), [50])

    def test_sent_dates_read_headers_only(self) -> None:
        """SENT* keys use the header loader when there is one."""
        loads = Loads()
        evaluate_search(
            key("SENTON 1-Feb-2024"),
            INFOS,
            load=never,
            load_header=loads.load_header,
        )
        self.assertEqual(loads.headers, [10, 20, 30, 40, 50])

    def test_bad_internal_date(self) -> None:
        """An internal date out of range does not break the search."""
        odd = [info(1, 1, 10**15)]
        self.assertEqual(evaluate_search(key("ON 1-Jan-1970"), odd, load=never), [1])


class HeaderTests(SearchTestCase):
    """FROM, TO, CC, BCC, SUBJECT and HEADER."""

    def test_address_fields(self) -> None:
        """Case-insensitive substrings of the field, display names decoded."""
        self.assertEqual(self.uids("FROM ALICE"), [10])
        self.assertEqual(self.uids("FROM jörg"), [20])
        self.assertEqual(self.uids("TO alice@example.com"), [20])
        self.assertEqual(self.uids("CC grace"), [40])
        self.assertEqual(self.uids("BCC heidi"), [40])
        self.assertEqual(self.uids("TO example.net"), [30])

    def test_subject_encoded_words(self) -> None:
        """Encoded words are decoded (both charsets), whitespace between
        them kept where it is not between two of them; case folding is
        Unicode's (ß matches SS)."""
        self.assertEqual(self.uids("SUBJECT grüße"), [20])
        self.assertEqual(self.uids('SUBJECT "GRÜSSE"'), [20])
        self.assertEqual(self.uids('SUBJECT "GRUSSE"'), [])
        self.assertEqual(self.uids('SUBJECT "aus köln"'), [20])
        self.assertEqual(self.uids("SUBJECT hello"), [10])
        self.assertEqual(self.uids("SUBJECT =?"), [])

    def test_header(self) -> None:
        """HEADER name string; an empty string matches the field's presence."""
        self.assertEqual(self.uids("HEADER X-Priority highest"), [20])
        self.assertEqual(self.uids('HEADER x-priority ""'), [20])
        self.assertEqual(self.uids('HEADER Date ""'), [10, 20, 40, 50])
        self.assertEqual(self.uids('HEADER Cc ""'), [40])
        self.assertEqual(self.uids("HEADER Received x"), [])

    def test_header_loader(self) -> None:
        """Header keys use the header loader and never the full one; each
        header is loaded once even for several header keys."""
        loads = Loads()
        found = evaluate_search(
            key("OR FROM alice OR SUBJECT late TO dave"),
            INFOS,
            load=never,
            load_header=loads.load_header,
            uid=True,
        )
        self.assertEqual(found, [10, 30, 40])
        self.assertEqual(loads.headers, [10, 20, 30, 40, 50])

    def test_header_without_header_loader(self) -> None:
        """Without a header loader, the full loader is used once a message."""
        loads = Loads()
        evaluate_search(
            key("OR FROM nobody SUBJECT nothing"), INFOS, load=loads.load, uid=True
        )
        self.assertEqual(loads.full, [10, 20, 30, 40, 50])

    def test_gone_message(self) -> None:
        """A message whose octets are gone matches no string."""
        loads = Loads({})
        self.assertEqual(evaluate_search(key('FROM ""'), INFOS, load=loads.load), [])
        self.assertEqual(
            evaluate_search(key("NOT BODY x"), INFOS, load=loads.load),
            [1, 2, 3, 4, 5],
        )


class BodyTests(SearchTestCase):
    """BODY and TEXT search the decoded text."""

    def test_body_plain(self) -> None:
        """A plain body; headers are not the body."""
        self.assertEqual(self.uids("BODY apples"), [10])
        self.assertEqual(self.uids("BODY alice"), [])

    def test_body_transfer_encodings(self) -> None:
        """Quoted-printable (soft line breaks too) and base64 with a charset
        are decoded before matching."""
        self.assertEqual(self.uids("BODY café"), [20])
        self.assertEqual(self.uids('BODY "softbreak"'), [20])
        self.assertEqual(self.uids('BODY "crème brulée"'), [20])
        self.assertEqual(self.uids("BODY PHA+"), [])

    def test_body_skips_non_text(self) -> None:
        """Image parts are not searched; untyped parts are text."""
        self.assertEqual(self.uids("BODY secret"), [])
        self.assertEqual(self.uids("BODY c2VjcmV0"), [])
        self.assertEqual(self.uids('BODY "see attached"'), [50])

    def test_text(self) -> None:
        """TEXT searches the header and the body."""
        self.assertEqual(self.uids("TEXT alice"), [10, 20])
        self.assertEqual(self.uids("TEXT apples"), [10])
        self.assertEqual(self.uids("TEXT köln"), [20])
        self.assertEqual(self.uids("TEXT X-PRIORITY"), [20])

    def test_empty_strings(self) -> None:
        """BODY "" and TEXT "" match every message without reading it."""
        self.assertEqual(self.meta('BODY ""'), [10, 20, 30, 40, 50])
        self.assertEqual(self.meta('TEXT ""'), [10, 20, 30, 40, 50])

    def test_charsets(self) -> None:
        """CHARSET UTF-8 and US-ASCII are what the parser accepts for us."""
        self.assertEqual(SUPPORTED_CHARSETS, ("UTF-8", "US-ASCII"))
        self.assertEqual(self.uids("CHARSET UTF-8 BODY café"), [20])
        self.assertEqual(self.uids("CHARSET US-ASCII BODY apples"), [10])

    def test_loaded_once(self) -> None:
        """BODY and TEXT together read each message once."""
        loads = Loads()
        evaluate_search(key("OR BODY x TEXT y"), INFOS, load=loads.load)
        self.assertEqual(loads.full, [10, 20, 30, 40, 50])


class MessageSetTests(SearchTestCase):
    """Sequence sets and UID sets."""

    def test_sequence_sets(self) -> None:
        """Numbers, ranges and ``*`` (the last sequence number)."""
        self.assertEqual(self.meta("2:4"), [20, 30, 40])
        self.assertEqual(self.meta("4:2"), [20, 30, 40])
        self.assertEqual(self.meta("1,5"), [10, 50])
        self.assertEqual(self.meta("*"), [50])
        self.assertEqual(self.meta("3:*"), [30, 40, 50])
        self.assertEqual(self.meta("6:9"), [])

    def test_sequence_numbers_returned(self) -> None:
        """Without uid=True the result is sequence numbers."""
        self.assertEqual(
            evaluate_search(key("SEEN"), INFOS, load=never, recent=()), [1, 3, 5]
        )

    def test_uid_sets(self) -> None:
        """UID sets; ``*`` is the largest UID, and ``n:*`` above it still
        names the last message (RFC 3501 §6.4.8)."""
        self.assertEqual(self.meta("UID 20:40"), [20, 30, 40])
        self.assertEqual(self.meta("UID 15:25,50"), [20, 50])
        self.assertEqual(self.meta("UID *"), [50])
        self.assertEqual(self.meta("UID 99:*"), [50])
        self.assertEqual(self.meta("UID 1:9"), [])

    def test_empty_mailbox(self) -> None:
        """Sets name nothing in an empty mailbox."""
        self.assertEqual(evaluate_search(key("1:*"), [], load=never), [])
        self.assertEqual(evaluate_search(key("UID 1:*"), [], load=never), [])


class ModSeqTests(SearchTestCase):
    """MODSEQ (RFC 7162 §3.1.5)."""

    modseqs = {10: 5, 20: 9, 30: 1, 40: 12, 50: 9}

    def test_modseq(self) -> None:
        """Messages whose mod-sequence is at least n."""
        self.assertEqual(
            self.meta("MODSEQ 9", modseq_of=self.modseqs.__getitem__), [20, 40, 50]
        )
        self.assertEqual(
            self.meta(
                'MODSEQ "/flags/\\\\draft" all 10', modseq_of=self.modseqs.__getitem__
            ),
            [40],
        )
        self.assertEqual(self.meta("MODSEQ 2"), [])
        self.assertEqual(self.meta("MODSEQ 1"), [10, 20, 30, 40, 50])

    def test_uses_modseq(self) -> None:
        """The server learns when to add (MODSEQ n) to the response."""
        self.assertTrue(uses_modseq(key("OR SEEN NOT MODSEQ 5")))
        self.assertTrue(uses_modseq(key("SEEN (DRAFT MODSEQ 5)")))
        self.assertFalse(uses_modseq(key("OR SEEN NOT DRAFT")))
        self.assertEqual(highest_modseq([20, 30], self.modseqs.__getitem__), 9)
        self.assertIsNone(highest_modseq([], self.modseqs.__getitem__))

    def test_uses_internal_date(self) -> None:
        """The server learns when a SEARCH needs the messages' internal
        dates known: a date key anywhere inside AND, OR and NOT."""
        self.assertTrue(uses_internal_date(key("OR SEEN NOT BEFORE 1-Jan-2020")))
        self.assertTrue(uses_internal_date(key("SEEN (DRAFT SENTSINCE 1-Jan-2020)")))
        self.assertTrue(uses_internal_date(key("ON 1-Feb-2021")))
        self.assertFalse(uses_internal_date(key("OR SEEN NOT (DRAFT LARGER 5)")))


class NestingTests(SearchTestCase):
    """AND (lists and juxtaposition), OR and NOT, nested."""

    def test_and(self) -> None:
        """Several keys must all match."""
        self.assertEqual(self.meta("SEEN LARGER 150"), [30, 50])
        self.assertEqual(self.meta("(SEEN LARGER 150) UNDELETED"), [50])

    def test_or(self) -> None:
        """OR key1 key2."""
        self.assertEqual(self.meta("OR DRAFT DELETED"), [20, 30])
        self.assertEqual(self.meta("OR (SEEN SMALLER 200) FLAGGED"), [10, 20])

    def test_not(self) -> None:
        """NOT negates, twice is the identity."""
        self.assertEqual(self.meta("NOT SEEN"), [20, 40])
        self.assertEqual(self.meta("NOT NOT SEEN"), [10, 30, 50])
        self.assertEqual(self.meta("NOT (SEEN DELETED)"), [10, 20, 40, 50])

    def test_deep(self) -> None:
        """Three levels, mixing message-reading and metadata keys."""
        self.assertEqual(
            self.uids("OR (NOT SEEN FROM jörg) (SEEN NOT OR DELETED BODY apples)"),
            [20, 50],
        )
        self.assertEqual(
            self.uids("NOT OR FROM alice (UID 30:* NOT SUBJECT late)"), [20, 40]
        )

    def test_rfc_example(self) -> None:
        """The first example of RFC 3501 §6.4.4."""
        self.assertEqual(self.uids('FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'), [20])

    def test_cheap_keys_first(self) -> None:
        """In an AND, metadata keys run first: only messages that pass them
        are read, whatever the order in the command."""
        loads = Loads()
        found = evaluate_search(
            key("BODY apples SEEN SMALLER 400"), INFOS, load=loads.load, uid=True
        )
        self.assertEqual(found, [10])
        self.assertEqual(loads.full, [10, 30])

    def test_or_cheap_side_first(self) -> None:
        """In an OR, a message that passes the metadata side is not read."""
        loads = Loads()
        evaluate_search(key("OR BODY x SEEN"), INFOS, load=loads.load)
        self.assertEqual(loads.full, [20, 40])

    def test_costs(self) -> None:
        """search_cost tells the server whether loading is needed."""
        self.assertEqual(
            search_cost(key("OR SEEN (UID 1:* LARGER 5 ON 1-Feb-2024)")), 0
        )
        self.assertEqual(search_cost(key("NOT OR SEEN FROM x")), 1)
        self.assertEqual(search_cost(key("SENTON 1-Feb-2024")), 1)
        self.assertEqual(search_cost(key("SEEN (NOT TEXT x)")), 2)


class NoLoadTests(SearchTestCase):
    """Flag-only searches never call a loader."""

    keys = (
        "ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED "
        "UNDELETED UNDRAFT UNFLAGGED UNSEEN"
    ).split() + [
        "KEYWORD $Junk",
        "UNKEYWORD $Junk",
        "LARGER 1",
        "SMALLER 1000",
        "BEFORE 1-Jan-2030",
        "ON 1-Feb-2024",
        "SINCE 1-Jan-2000",
        "1:*",
        "UID 1:*",
        "MODSEQ 1",
        'BODY ""',
        'TEXT ""',
    ]

    def test_every_metadata_key(self) -> None:
        """Each metadata key alone and all of them combined with OR and NOT
        run without loading."""
        for text in self.keys:
            self.meta(text)
            self.meta(f"NOT {text}")
        combined = self.keys[0]
        for text in self.keys[1:]:
            combined = f"OR {text} ({combined})"
        self.meta(combined)
        self.meta("NOT (" + " ".join(self.keys) + ")")


class HypothesisTests(SynchronousTestCase):
    """Random trees of metadata keys agree with set algebra."""

    flags = st.sampled_from(
        [
            SearchFlag("\\Seen"),
            SearchFlag("\\Deleted", False),
            SearchFlag("\\Flagged"),
            SearchFlag("$Junk"),
            SearchSize("larger", 250),
            SearchSize("smaller", 150),
        ]
    )
    trees: st.SearchStrategy[SearchKey] = st.recursive(
        flags,
        lambda inner: st.one_of(
            st.builds(SearchNot, inner),
            st.builds(SearchOr, inner, inner),
            st.lists(inner, max_size=3).map(lambda ks: SearchAnd(tuple(ks))),
        ),
        max_leaves=12,
    )

    def oracle(self, key: SearchKey) -> set[int]:
        """The matching UIDs, by sets (a different method from the code's)."""
        every = {i.uid for i in INFOS}
        if isinstance(key, SearchNot):
            return every - self.oracle(key.key)
        if isinstance(key, SearchOr):
            return self.oracle(key.left) | self.oracle(key.right)
        if isinstance(key, SearchAnd):
            result = every
            for k in key.keys:
                result = result & self.oracle(k)
            return result
        table: dict[SearchKey, set[int]] = {
            SearchFlag("\\Seen"): {10, 30, 50},
            SearchFlag("\\Deleted", False): {10, 20, 40, 50},
            SearchFlag("\\Flagged"): {20},
            SearchFlag("$Junk"): {20},
            SearchSize("larger", 250): {30, 40, 50},
            SearchSize("smaller", 150): {10},
        }
        return table[key]

    @settings(max_examples=300, deadline=None)
    @given(trees)
    def test_algebra(self, tree: SearchKey) -> None:
        """evaluate_search gives the oracle's set, without loading."""
        found = evaluate_search(tree, INFOS, load=never, uid=True)
        self.assertEqual(found, sorted(self.oracle(tree)))


class ResponseTests(SynchronousTestCase):
    """SEARCH and ESEARCH responses."""

    def test_search(self) -> None:
        """Numbers after SEARCH; MODSEQ only with matches."""
        self.assertEqual(format_search([2, 3, 5]), b"* SEARCH 2 3 5\r\n")
        self.assertEqual(format_search([]), b"* SEARCH\r\n")
        self.assertEqual(format_search([2], 917), b"* SEARCH 2 (MODSEQ 917)\r\n")
        self.assertEqual(format_search([], 917), b"* SEARCH\r\n")

    def test_esearch_all_options(self) -> None:
        """MIN, MAX, COUNT and a compressed ALL (RFC 4731 §3.1)."""
        self.assertEqual(
            format_esearch(
                "A282", [2, 3, 4, 7, 9, 10], ("MIN", "MAX", "COUNT", "ALL"), uid=False
            ),
            b'* ESEARCH (TAG "A282") MIN 2 MAX 10 COUNT 6 ALL 2:4,7,9:10\r\n',
        )

    def test_esearch_default_all(self) -> None:
        """RETURN () means ALL; UID SEARCH says UID."""
        self.assertEqual(
            format_esearch("t", [5, 6], (), uid=True),
            b'* ESEARCH (TAG "t") UID ALL 5:6\r\n',
        )

    def test_esearch_no_matches(self) -> None:
        """With no matches only COUNT (0) is sent."""
        self.assertEqual(
            format_esearch(
                "t", [], ("MIN", "MAX", "ALL", "COUNT"), uid=False, modseq=4
            ),
            b'* ESEARCH (TAG "t") COUNT 0\r\n',
        )
        self.assertEqual(
            format_esearch("t", [], ("MIN",), uid=False), b'* ESEARCH (TAG "t")\r\n'
        )

    def test_esearch_modseq_and_save(self) -> None:
        """MODSEQ follows the data; SAVE alone sends nothing (RFC 5182)."""
        self.assertEqual(
            format_esearch("t", [3], ("COUNT",), uid=False, modseq=12),
            b'* ESEARCH (TAG "t") COUNT 1 MODSEQ 12\r\n',
        )
        self.assertEqual(format_esearch("t", [3], ("SAVE",), uid=False), b"")
        self.assertEqual(
            format_esearch("t", [3], ("SAVE", "MIN"), uid=False),
            b'* ESEARCH (TAG "t") MIN 3\r\n',
        )

    def test_esearch_without_tag(self) -> None:
        """No correlator without a tag; odd tags are quoted safely."""
        self.assertEqual(
            format_esearch(None, [1], ("MIN",), uid=False), b"* ESEARCH MIN 1\r\n"
        )
        self.assertEqual(
            format_esearch('a"b', [1], ("MIN",), uid=False),
            b'* ESEARCH (TAG "a\\"b") MIN 1\r\n',
        )
