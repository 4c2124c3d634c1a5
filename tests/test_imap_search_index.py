"""Tests for header SEARCH through the folder cache's field index
(L{twistedmail.imap._message.search_fields}, L{indexed_matches}, the
C{match_field} of L{twistedmail.imap._search.evaluate_search}, and the
C{fields} table of L{twistedmail.maildir.cache.MessageCache}): the index
must give exactly the answers of the slow path, which reads each header."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.imap_server_helpers import make_world
from twistedmail.imap._message import (
    CACHE_KEY,
    SEARCH_FIELDS,
    BatchedHeaders,
    cached_structure,
    indexed_matches,
    search_fields,
)
from twistedmail.imap._search import evaluate_search
from twistedmail.imap._types import (
    SearchAnd,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchNot,
    SearchOr,
)
from twistedmail.maildir import MessageInfo
from twistedmail.maildir.cache import CACHE_NAME, MessageCache

# Headers that have tripped decoders: encoded words in several charsets
# and both encodings, adjacent encoded words (the space between them goes),
# folds (in and between encoded words), repeated and missing fields, raw
# 8-bit UTF-8 and invalid 8-bit octets, odd spacing and case of names,
# bare LF line ends, case folding beyond ASCII, NUL from an encoded word.
TRICKY = [
    b"Subject: Hello World\r\nFrom: Alice <alice@example.com>\r\n\r\n",
    b"Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= aus =?UTF-8?B?S8O2bG4=?=\r\n\r\n",
    b"Subject: =?UTF-8?Q?Stra=C3=9Fe?=\r\nTo: =?KOI8-R?B?8NLJ18XU?= <x@y.ru>\r\n\r\n",
    b"Subject: =?Shift_JIS?B?k/qWe4zq?=\r\nCc: =?utf-8?q?=E6=97=A5=E6=9C=AC?=\r\n\r\n",
    b"Subject: =?UTF-8?B?QUJD?= =?UTF-8?B?REVG?=\r\n\r\n",
    b"Subject: =?UTF-8?Q?part_one?=\r\n =?UTF-8?Q?_part_two?= and\r\n\tfolded\r\n\r\n",
    b"Subject: a long\r\n subject folded\r\n  twice\r\nFrom: b@c\r\n\r\n",
    b"From: a@b\r\nTo: someone@example.org\r\n\r\n",
    b"Subject: first zephyr\r\nSubject: second KUMQUAT\r\n\r\n",
    b"To: one@example.com\r\nCc: x@y\r\nto: Two <two@example.com>\r\n\r\n",
    "Subject: Grüße, raw UTF-8 ΣΊΣΥΦΟΣ\r\n\r\n".encode(),
    b"Subject: invalid \xff\xfe octets\r\nFrom: \xe9t\xe9@x\r\n\r\n",
    b"SUBJECT : spaced name\r\nfRoM:\tTabbed <t@x>\r\n\r\n",
    b"Subject: bare LF\nFrom: lf@example.com\n folded\n\n",
    b"Subject: =?UTF-8?Q?=EF=AC=83ce?= office\r\n\r\n",
    b"Subject: =?UTF-8?B?YQBi?= nul inside\r\n\r\n",
    b"Subject: =?bogus-charset?Q?abc?= =?UTF-8?X?bad?=\r\n\r\n",
    b"Subject:\r\nFrom: empty subject <e@x>\r\n\r\n",
    b"Bcc: hidden@example.com\r\nX-Subject: not the subject zephyr\r\n\r\n",
    b"Subject: =?utf-16?B?AGEAYgBj?= =?raw-unicode-escape?Q?=5Cud800?=\r\n\r\n",
    b"Subject: Re: [list] =?UTF-8?Q?caf=C3=A9?=\r\n =?UTF-8?Q?_cr=C3=A8me?=\r\n\r\n",
    b"",
]

NEEDLES = [
    "hello",
    "WORLD",
    "grüße",
    "GRÜSSE",
    "strasse",
    "köln",
    "привет",
    "日本",
    "本",
    "abcdef",
    "part one part two",
    "onepart",
    "subject folded twice",
    "long subject",
    "zephyr",
    "kumquat",
    "second",
    "two@example.com",
    "x@y",
    "σίσυφοσ",
    "ΣΊΣΥΦΟΣ",
    "\ufffd",
    "ffice",
    "ﬃ",
    "a\x00b",
    "\x00",
    "bare lf",
    "folded",
    "spaced",
    "tabbed",
    "hidden",
    "abc",
    "café crème",
    "",
    " ",
    "@",
    "e",
]


class _Folder:
    """A folder cache (the shape of L{twistedmail.maildir.Mailbox}'s cache
    methods) over a real L{MessageCache}, with the messages' octets."""

    def __init__(self, path: str, messages: Mapping[str, bytes]) -> None:
        self.cache = MessageCache(path)
        self.messages = messages
        self.reads: list[str] = []

    def cache_get(self, base: str, key: str) -> bytes | None:
        return self.cache.get(base, key)

    def cache_get_many(self, bases: Sequence[str], key: str) -> dict[str, bytes]:
        return self.cache.get_many(bases, key)

    def cache_put(
        self,
        base: str,
        key: str,
        value: bytes,
        fields: Mapping[str, bytes | None] | None = None,
    ) -> None:
        self.cache.put(base, key, value, fields)

    def cache_put_fields(
        self, entries: Sequence[tuple[str, Mapping[str, bytes | None]]]
    ) -> None:
        self.cache.put_fields(entries)

    def cache_match(
        self, field: str, needle: bytes, bases: Sequence[str]
    ) -> tuple[set[str], list[str]]:
        return self.cache.match(field, needle, bases)


def _infos(count: int, flagged: frozenset[int] = frozenset()) -> list[MessageInfo]:
    out = []
    for uid in range(1, count + 1):
        flags = "FS" if uid in flagged else "S"
        base = f"{uid}.base"
        out.append(
            MessageInfo(
                uid, base, f"cur/{base}:2,{flags}", 10, 0, frozenset(flags), frozenset()
            )
        )
    return out


class _World:
    """Messages, their folder cache, and both ways to search them."""

    def __init__(
        self,
        case: SynchronousTestCase,
        headers: Sequence[bytes],
        flagged: frozenset[int] = frozenset(),
    ) -> None:
        path = case.mktemp()
        os.makedirs(path)
        self.infos = _infos(len(headers), flagged)
        self.octets = {
            i.uid: h + b"body text\r\n"
            for i, h in zip(self.infos, headers, strict=True)
        }
        self.folder = _Folder(path, {i.base: self.octets[i.uid] for i in self.infos})
        case.addCleanup(self.folder.cache.close)
        self.bases = [i.base for i in self.infos]

    def cache_all(self, uids: Sequence[int] | None = None) -> None:
        """Put the structure (and so the index) of these messages (all by
        default) in the cache, as FETCH does."""
        for info in self.infos:
            if uids is None or info.uid in uids:
                octets = self.octets[info.uid]
                cached_structure(self.folder, info.base, lambda o=octets: o)

    def read(self, uid: int) -> bytes:
        self.folder.reads.append(str(uid))
        return self.octets[uid]

    def slow(self, key: SearchKey) -> list[int]:
        """Today's path: every header read and decoded."""
        return evaluate_search(key, self.infos, load=self.octets.get, uid=True)

    def fast(self, key: SearchKey) -> list[int]:
        """The server's path: the index, and cached headers for the rest."""
        headers = BatchedHeaders(
            self.folder, [i.uid for i in self.infos], self.bases, self.read
        )

        def match_field(field: str, needle: str) -> tuple[set[str], set[str]] | None:
            return indexed_matches(self.folder, field, needle, self.bases)

        return evaluate_search(
            key,
            self.infos,
            load=self.octets.get,
            load_header=headers,
            uid=True,
            match_field=match_field,
        )


class IndexAgreesTests(SynchronousTestCase):
    """The index's answers equal the slow path's on tricky headers."""

    def test_tricky_headers(self) -> None:
        """Every field and needle on the tricky headers: the same matches,
        and the index (not the header) answers every message."""
        world = _World(self, TRICKY)
        world.cache_all()
        for field in SEARCH_FIELDS:
            for needle in NEEDLES:
                key = SearchHeader(field, needle)
                with self.subTest(field=field, needle=needle):
                    self.assertEqual(world.fast(key), world.slow(key))
        self.assertEqual(world.folder.reads, [])

    def test_expected_matches(self) -> None:
        """Spot checks that the comparisons above are not vacuous: decoded
        words, case folding and repeated fields match where they should."""
        world = _World(self, TRICKY)
        world.cache_all()
        self.assertEqual(world.fast(SearchHeader("subject", "GRÜSSE")), [2, 11])
        self.assertEqual(world.fast(SearchHeader("subject", "strasse")), [3])
        self.assertEqual(world.fast(SearchHeader("to", "привет")), [3])
        self.assertEqual(world.fast(SearchHeader("subject", "kumquat")), [9])
        self.assertEqual(world.fast(SearchHeader("to", "two@")), [10])
        self.assertEqual(world.fast(SearchHeader("subject", "σίσυφοσ")), [11])
        self.assertEqual(world.fast(SearchHeader("subject", "abcdef")), [5])
        self.assertEqual(world.fast(SearchHeader("subject", "ffice")), [15])
        self.assertEqual(world.fast(SearchHeader("bcc", "")), [19])
        # Missing fields never match, even the empty string.
        self.assertNotIn(8, world.fast(SearchHeader("subject", "")))
        self.assertIn(18, world.fast(SearchHeader("subject", "")))
        # No match across two values of a repeated field.
        self.assertEqual(world.fast(SearchHeader("subject", "zephyr\x00second")), [])
        self.assertEqual(world.fast(SearchHeader("subject", "a\x00b")), [16])

    def test_not_cached_falls_back(self) -> None:
        """Messages not in the cache are read and answered the slow way
        (and cached, with their index, for the next search)."""
        world = _World(self, TRICKY)
        world.cache_all(uids=range(1, 10))
        for needle in ("zephyr", "e", "strasse", ""):
            key = SearchHeader("subject", needle)
            self.assertEqual(world.fast(key), world.slow(key))
        self.assertTrue(world.folder.reads)
        world.folder.reads.clear()
        self.assertEqual(
            world.fast(SearchHeader("from", "e")), world.slow(SearchHeader("from", "e"))
        )
        self.assertEqual(world.folder.reads, [])

    def test_other_fields_slow_path(self) -> None:
        """A field outside the index (HEADER X-Subject) is read from the
        headers, and agrees."""
        world = _World(self, TRICKY)
        world.cache_all()
        key = SearchHeader("x-subject", "zephyr")
        self.assertEqual(world.fast(key), [19])
        self.assertEqual(world.fast(key), world.slow(key))

    def test_combinations(self) -> None:
        """AND, OR and NOT with flags and other headers: the index's set of
        ruled-out messages never drops a match."""
        world = _World(self, TRICKY, flagged=frozenset({2, 3, 9, 11, 15}))
        world.cache_all(uids=range(1, 18))
        flagged = SearchFlag("\\Flagged", True)
        subject = SearchHeader("subject", "e")
        keys: list[SearchKey] = [
            SearchAnd((flagged, subject)),
            SearchAnd((subject, SearchHeader("from", "@"))),
            SearchAnd((subject, SearchNot(SearchHeader("from", "@")))),
            SearchOr(subject, flagged),
            SearchOr(SearchHeader("to", "x"), SearchHeader("cc", "x")),
            SearchOr(SearchHeader("to", "x"), SearchHeader("x-subject", "zephyr")),
            SearchNot(subject),
            SearchNot(SearchOr(subject, SearchHeader("bcc", ""))),
            SearchAnd((SearchOr(subject, flagged), SearchHeader("subject", "r"))),
            SearchAnd((SearchHeader("subject", "\x00"), flagged)),
        ]
        for key in keys:
            with self.subTest(key=key):
                self.assertEqual(world.fast(key), world.slow(key))

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.lists(
                st.sampled_from(
                    [
                        b"Subject: ",
                        b"From: ",
                        b"To: ",
                        b"Cc: ",
                        b"=?UTF-8?B?w5/DnA==?=",
                        b"=?ISO-8859-1?Q?=DF=E9?=",
                        b"=?UTF-8?Q?a_b?=",
                        b"plain",
                        b"ABC",
                        "ß".encode(),
                        b"\xc3",
                        b" ",
                        b"\r\n ",
                        b"\r\n",
                    ]
                ),
                max_size=12,
            ).map(b"".join),
            min_size=1,
            max_size=5,
        ),
        st.sampled_from(SEARCH_FIELDS),
        st.text(alphabet="aAbBcCßsSéÉ \x00\ufffd", max_size=4),
    )
    def test_generated(self, headers: list[bytes], field: str, needle: str) -> None:
        """Generated headers and needles: the index agrees with the slow
        path."""
        world = _World(self, [h + b"\r\n\r\n" for h in headers])
        world.cache_all()
        key = SearchHeader(field, needle)
        self.assertEqual(world.fast(key), world.slow(key))


class SearchFieldsTests(SynchronousTestCase):
    """What L{search_fields} stores."""

    def test_values(self) -> None:
        """Each field's values decoded, case-folded, UTF-8, joined by NUL;
        None for a missing field."""
        fields = search_fields(
            b"Subject: =?UTF-8?Q?Stra=C3=9Fe?=\r\nTo: A@B\r\nto: C\r\n\r\n"
        )
        values = dict(fields)
        self.assertEqual(
            values,
            {
                "subject": b"strasse",
                "from": None,
                "to": b"a@b\x00c",
                "cc": None,
                "bcc": None,
            },
        )


class IndexStorageTests(SynchronousTestCase):
    """The C{fields} table of the folder cache: kept with the structure,
    forgotten with it, filled in for an older file's entries."""

    def test_forget_and_retain(self) -> None:
        """Forgetting or not retaining a message drops its index rows."""
        world = _World(self, TRICKY[:4])
        world.cache_all()
        self.assertEqual(
            world.folder.cache_match("subject", b"", world.bases),
            ({"1.base", "2.base", "3.base", "4.base"}, []),
        )
        world.folder.cache.forget(["1.base"])
        world.folder.cache.retain(["2.base", "3.base"])
        self.assertEqual(
            world.folder.cache_match("subject", b"", world.bases),
            ({"2.base", "3.base"}, ["1.base", "4.base"]),
        )

    def test_unindexed(self) -> None:
        """The messages searched that the index lacks are named, whatever
        the order of the names and whatever else the index holds."""
        world = _World(self, TRICKY[:4])
        world.cache_all(uids=[1, 3, 4])
        for bases in (world.bases, world.bases[::-1], ["3.base", "x", "1.base"]):
            matching, unindexed = world.folder.cache_match("to", b"", bases)
            self.assertEqual(matching, {"3.base"})
            self.assertEqual(unindexed, [b for b in bases if b in ("2.base", "x")])
        self.assertEqual(
            world.folder.cache_match("cc", b"", ["4.base", "3.base", "1.base"]),
            ({"4.base"}, []),
        )

    def test_empty_cache(self) -> None:
        """A folder without a cache file indexes nothing and creates no
        file."""
        path = self.mktemp()
        os.makedirs(path)
        cache = MessageCache(path)
        self.addCleanup(cache.close)
        self.assertEqual(cache.match("subject", b"x", ["b"]), (set(), ["b"]))
        self.assertFalse(os.path.exists(os.path.join(path, CACHE_NAME)))

    def test_version_2_upgraded(self) -> None:
        """A format 2 file keeps its entries and gets an empty index, which
        the first SEARCH fills in from the cached headers (without reading
        a message file); its answers agree with the slow path."""
        world = _World(self, TRICKY)
        world.cache_all()
        world.folder.cache.close()
        path = os.path.dirname(world.folder.cache.path)
        db = sqlite3.connect(os.path.join(path, CACHE_NAME))
        db.execute("DROP TABLE fields")
        db.execute("PRAGMA user_version = 2")
        db.commit()
        db.close()
        self.assertEqual(
            world.folder.cache_match("subject", b"", world.bases[:2]),
            (set(), world.bases[:2]),
        )
        self.assertIsNotNone(world.folder.cache_get("1.base", CACHE_KEY))
        for needle in ("e", "strasse", "zephyr"):
            key = SearchHeader("subject", needle)
            self.assertEqual(world.fast(key), world.slow(key))
        self.assertEqual(world.folder.reads, [])
        self.assertEqual(world.folder.cache_match("from", b"@", world.bases)[1], [])
        db = sqlite3.connect(os.path.join(path, CACHE_NAME))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], 3)


class ServerTests(SynchronousTestCase):
    """The server's SEARCH through the index, end to end: before any
    FETCH (the slow path, which caches), after FETCH ENVELOPE (the index),
    and with a message delivered since (not indexed yet)."""

    def test_same_answers(self) -> None:
        """Every command answers the same before and after the messages
        are cached and indexed, and a new message is found too."""
        world = make_world(self.mktemp())
        for header in TRICKY[:-1]:
            world.deliver(header + b"body\r\n")
        client = world.logged_in()
        client.ok("SELECT INBOX")
        needle = "grüße".encode()
        literal = b"a SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n%s\r\n" % (
            len(needle),
            needle,
        )
        commands = [
            "UID SEARCH SUBJECT zephyr",
            "SEARCH FROM example",
            "SEARCH OR TO x CC x",
            "SEARCH NOT SUBJECT e",
            'SEARCH SUBJECT ""',
            "SEARCH FLAGGED SUBJECT e",
        ]
        before = [client.ok(c) for c in commands] + [client.raw(literal)]
        self.assertEqual(before[-1], b"* SEARCH 2 11\r\na OK SEARCH completed\r\n")
        client.ok("FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
        after = [client.ok(c) for c in commands] + [client.raw(literal)]
        self.assertEqual(after, before)
        world.deliver(b"Subject: zephyr again, =?UTF-8?Q?GR=C3=9CSSE?=\r\n\r\nx\r\n")
        client.ok("NOOP")
        self.assertEqual(client.ok("UID SEARCH SUBJECT zephyr"), [b"* SEARCH 9 22"])
        self.assertEqual(
            client.raw(literal), b"* SEARCH 2 11 22\r\na OK SEARCH completed\r\n"
        )
