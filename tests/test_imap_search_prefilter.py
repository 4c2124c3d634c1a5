"""Tests for the raw-header prefilter of header keys in
L{twistedmail.imap._search}: it rules out headers that cannot match
without decoding them, and never changes a result."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.imap._message import decode_header_value, header_block, header_fields
from twistedmail.imap._search import _may_contain, _plain_needle, evaluate_search
from twistedmail.imap._types import SearchHeader
from twistedmail.maildir import MessageInfo

#: Pieces of header values: ASCII, 8-bit UTF-8 and invalid octets, encoded
#: words and their halves, folds, and letters whose case folding differs.
VALUE_PIECES = [
    b"a",
    b"B",
    b"ss",
    b"x",
    b"K",
    b"Zephyr",
    b" ",
    b"\t",
    b"\r\n ",
    b"\r\n\t",
    b"=?",
    b"?=",
    b"=?utf-8?q?=C3=9F?=",
    b"=?utf-8?b?WkVQSFlS?=",
    "ß".encode(),
    "é".encode(),
    "\u212a".encode(),  # KELVIN SIGN, case-folds to "k"
    b"\xff",
]
#: Names with few letters, so that the letters in a header come from values.
NAMES = [b"X-A", b"X-B"]
#: Pieces of search strings, many of which occur in the values.
NEEDLE_PIECES = ["a", "b", "B", "ss", "ß", "k", "K", "\u212a", "zephyr", "ZEPHYR"]
NEEDLE_PIECES += ["x", "=?", "?=", "é", " ", "\t"]

values = st.lists(st.sampled_from(VALUE_PIECES), max_size=8).map(b"".join)
headers = st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=4)


def _message(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\nbody\r\n"


def _reference(msg: bytes, field: str, needle: str) -> bool:
    """The header key's meaning, decoding every field (RFC 3501 §6.4.4)."""
    folded = needle.casefold()
    return any(
        folded in decode_header_value(value).casefold()
        for name, value in header_fields(header_block(msg))
        if name.decode("utf-8", "replace") == field
    )


def _matches(msg: bytes, field: str, needle: str) -> bool:
    """Whether the header key C{field needle} matches the message."""
    info = MessageInfo(1, "1.b", "cur/1.b:2,", len(msg), 0, frozenset(), frozenset())
    found = evaluate_search(
        SearchHeader(field, needle),
        [info],
        load=lambda uid: msg,
        load_header=lambda uid: header_block(msg),
        uid=True,
    )
    return found == [1]


class PrefilterTests(SynchronousTestCase):
    """The byte search that rules headers out before decoding them."""

    def test_plain_needle(self) -> None:
        """Only non-empty printable ASCII without white space is searched
        as octets."""
        self.assertEqual(_plain_needle("zephyr"), b"zephyr")
        self.assertEqual(_plain_needle("a=?b"), b"a=?b")
        for needle in ("", "two words", "tab\there", "grüße", "line\r\n"):
            self.assertIsNone(_plain_needle(needle))

    def test_may_contain(self) -> None:
        """A plain ASCII header without the string (in any case) is ruled
        out; encoded words or 8-bit octets keep it in."""
        self.assertFalse(_may_contain(b"Subject: budget\r\n\r\n", b"zephyr"))
        self.assertTrue(_may_contain(b"Subject: ZEPHYR\r\n\r\n", b"zephyr"))
        self.assertTrue(_may_contain(b"Subject: =?utf-8?q?x?=\r\n\r\n", b"zephyr"))
        self.assertTrue(_may_contain("Subject: é\r\n\r\n".encode(), b"zephyr"))

    def test_examples(self) -> None:
        """Matches the shortcut must not lose: another case, a string that
        spans a fold, an encoded word, case folding of 8-bit text; and a
        plain header without the string does not match."""
        cases = [
            (b"Subject: Zephyr", "zEPHYR"),
            (b"Subject: two\r\n words", "two words"),
            (b"Subject: =?utf-8?q?ZEPHYR?=", "zephyr"),
            ("Subject: \u212aelvin".encode(), "kelvin"),
            (b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "grüsse"),
        ]
        for header, needle in cases:
            msg = header + b"\r\n\r\nbody\r\n"
            self.assertTrue(_matches(msg, "subject", needle), (header, needle))
        msg = b"Subject: budget\r\nX-Zephyr: 1\r\n\r\nzephyr\r\n"
        self.assertFalse(_matches(msg, "subject", "zephyr"))

    @settings(max_examples=500)
    @given(values, headers, st.data())
    def test_same_results(
        self, value: bytes, others: list[tuple[bytes, bytes]], data: st.DataObject
    ) -> None:
        """A header key matches exactly when some decoded field contains the
        string, with or without the prefilter's shortcut.  The strings are
        slices of the searched field's decoded value or of its words (in
        either case), or other pieces."""
        msg = _message([(b"X-A", value), *others])
        decoded = decode_header_value(value)
        pool = [decoded, *decoded.split(), *NEEDLE_PIECES]
        source = data.draw(st.sampled_from(pool))
        start = data.draw(st.integers(0, len(source)))
        needle = source[start : data.draw(st.integers(start, len(source)))]
        if data.draw(st.booleans()):
            needle = needle.swapcase()
        self.assertEqual(_matches(msg, "x-a", needle), _reference(msg, "x-a", needle))
