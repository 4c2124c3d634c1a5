"""Tests for L{twistedmail.imap._message}: ENVELOPE, BODY, BODYSTRUCTURE and
BODY[section] for FETCH, and the structure cache."""

from __future__ import annotations

import os
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.imap._format import format_nstring, format_string
from twistedmail.imap._message import (
    CACHE_KEY,
    MAX_DEPTH,
    Structure,
    _format_address_list,
    _format_addresses,
    _nquote,
    _quote,
    bodystructure,
    cached_header,
    cached_structure,
    compute_structure,
    decode_header_value,
    envelope,
    fetch_section,
    format_section,
    header_block,
    header_end,
    parse_message,
    rfc822_header,
    rfc822_size,
    rfc822_text,
    text_parts,
    to_crlf,
)
from twistedmail.imap._types import BodySection

DATA = os.path.join(os.path.dirname(__file__), "data", "imap")
NAMES = sorted(n[:-4] for n in os.listdir(DATA) if n.endswith(".eml"))


def load(name: str) -> bytes:
    """The octets of a fixture file."""
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def expected(name: str, kind: str) -> bytes:
    """An expectation file's value (its one trailing newline removed)."""
    value = load(f"{name}.{kind}")
    assert value.endswith(b"\n"), name
    return value[:-1]


# --- a reader for IMAP response values (RFC 3501 §9), for the checks ----------

Value = bytes | None | list["Value"]


class IMAPSyntaxError(Exception):
    """The octets are not one well-formed IMAP value."""


def read_value(data: bytes, pos: int = 0) -> tuple[Value, int]:
    """Read one value (list, NIL, number, quoted string or literal)."""
    if pos >= len(data):
        raise IMAPSyntaxError("truncated")
    c = data[pos : pos + 1]
    if c == b"(":
        items: list[Value] = []
        pos += 1
        while True:
            if pos >= len(data):
                raise IMAPSyntaxError("unbalanced list")
            if data[pos : pos + 1] == b")":
                return items, pos + 1
            if items and data[pos : pos + 1] == b" ":
                pos += 1
            elif items and data[pos - 1 : pos] != b")" and data[pos : pos + 1] != b"(":
                raise IMAPSyntaxError(f"no space at {pos}")
            item, pos = read_value(data, pos)
            items.append(item)
    if c == b'"':
        out = bytearray()
        pos += 1
        while True:
            if pos >= len(data):
                raise IMAPSyntaxError("unterminated quoted string")
            ch = data[pos]
            if ch == 0x22:
                return bytes(out), pos + 1
            if ch == 0x5C:
                if data[pos + 1 : pos + 2] not in (b'"', b"\\"):
                    raise IMAPSyntaxError("bad escape")
                pos += 1
                ch = data[pos]
            if ch in (0x0D, 0x0A, 0) or ch > 0x7F:
                raise IMAPSyntaxError("not a QUOTED-CHAR")
            out.append(ch)
            pos += 1
    if c == b"{":
        close = data.index(b"}\r\n", pos)
        size = int(data[pos + 1 : close])
        start = close + 3
        if start + size > len(data):
            raise IMAPSyntaxError("short literal")
        return data[start : start + size], start + size
    end = pos
    while end < len(data) and data[end : end + 1] not in b' ()"{':
        end += 1
    atom = data[pos:end]
    if atom == b"NIL":
        return None, end
    if atom.isdigit():
        return atom, end
    raise IMAPSyntaxError(f"unexpected {atom!r} at {pos}")


def read_list(data: bytes) -> list[Value]:
    """The one parenthesised list that C{data} must be, exactly."""
    value, end = read_value(data)
    if end != len(data) or not isinstance(value, list):
        raise IMAPSyntaxError("not exactly one list")
    return value


class IMAPReaderTests(SynchronousTestCase):
    """The test helper that checks response syntax rejects what it must."""

    def test_rejects(self) -> None:
        """Unbalanced lists, bad quoting and stray atoms are errors."""
        for bad in [
            b"(",
            b"(NIL",
            b'("a)',
            b'("\r")',
            b"(FOO)",
            b"(NIL))",
            b"{9}\r\nab",
        ]:
            self.assertRaises((IMAPSyntaxError, ValueError), read_list, bad)

    def test_reads(self) -> None:
        """Nested lists, literals, quoted strings and NIL are read."""
        self.assertEqual(
            read_list(b'(NIL "a\\"b" {3}\r\nx\ry ((1)(2)) 5)'),
            [None, b'a"b', b"x\ry", [[b"1"], [b"2"]], b"5"],
        )


# --- the fixtures --------------------------------------------------------------


class FixtureTests(SynchronousTestCase):
    """ENVELOPE, BODY and BODYSTRUCTURE of tests/data/imap, compared exactly."""

    def test_fixtures_present(self) -> None:
        """Every fixture has its three expectations."""
        self.assertGreaterEqual(len(NAMES), 15)
        for name in NAMES:
            for kind in ("envelope", "body", "bodystructure"):
                self.assertTrue(os.path.exists(os.path.join(DATA, f"{name}.{kind}")))

    def test_envelope(self) -> None:
        """ENVELOPE matches the hand-checked expectation of every fixture."""
        for name in NAMES:
            self.assertEqual(
                envelope(load(f"{name}.eml")), expected(name, "envelope"), name
            )

    def test_body(self) -> None:
        """BODY matches the hand-checked expectation of every fixture."""
        for name in NAMES:
            self.assertEqual(
                bodystructure(load(f"{name}.eml"), extensible=False),
                expected(name, "body"),
                name,
            )

    def test_bodystructure(self) -> None:
        """BODYSTRUCTURE matches the hand-checked expectation of every fixture."""
        for name in NAMES:
            self.assertEqual(
                bodystructure(load(f"{name}.eml"), extensible=True),
                expected(name, "bodystructure"),
                name,
            )

    def test_expectations_parse(self) -> None:
        """Every expectation is one well-formed IMAP list."""
        for name in NAMES:
            for kind in ("envelope", "body", "bodystructure"):
                read_list(expected(name, kind))

    def test_sizes_match_sections(self) -> None:
        """The octet count of each part in BODYSTRUCTURE is the size of the
        part FETCH returns for its number."""
        msg = load("nested.eml")
        sizes = {
            (1, 1): 17,
            (1, 2, 1): 28,
            (1, 2, 2): 12,
            (2,): 12,
        }
        for part, size in sizes.items():
            self.assertEqual(len(fetch_section(msg, BodySection(part=part))), size)

    def test_compute_structure(self) -> None:
        """L{compute_structure} bundles what the single functions return."""
        msg = load("rfc822.eml")
        s = compute_structure(msg)
        self.assertEqual(s.envelope, envelope(msg))
        self.assertEqual(s.body, bodystructure(msg, extensible=False))
        self.assertEqual(s.bodystructure, bodystructure(msg, extensible=True))
        self.assertEqual(s.header, header_block(msg))


# --- sections -------------------------------------------------------------------


class SectionTests(SynchronousTestCase):
    """BODY[section]<partial> (RFC 3501 §6.4.5)."""

    msg = load("rfc822.eml")

    def section(
        self, part: tuple[int, ...] = (), text: str | None = None, **kw: object
    ) -> bytes:
        """The section of the rfc822 fixture."""
        return fetch_section(self.msg, BodySection(part=part, text=text, **kw))  # type: ignore[arg-type]

    def test_whole(self) -> None:
        """BODY[] is the whole message; RFC822 helpers match."""
        self.assertEqual(self.section(), self.msg)
        self.assertEqual(rfc822_size(self.msg), len(self.msg))
        self.assertEqual(rfc822_header(self.msg) + rfc822_text(self.msg), self.msg)

    def test_header_and_text(self) -> None:
        """HEADER ends with the empty line; TEXT is the rest."""
        header = self.section(text="HEADER")
        self.assertTrue(header.startswith(b"From: Forwarder"))
        self.assertTrue(header.endswith(b"boundary=b1\r\n\r\n"))
        self.assertEqual(header + self.section(text="TEXT"), self.msg)

    def test_header_fields(self) -> None:
        """HEADER.FIELDS keeps the named fields in order, case-insensitively,
        with the empty line; .NOT keeps the others."""
        self.assertEqual(
            self.section(text="HEADER.FIELDS", fields=("subject", "FROM", "X-None")),
            b"From: Forwarder <fwd@example.com>\r\nSubject: Fwd: two messages\r\n\r\n",
        )
        self.assertEqual(
            self.section(text="HEADER.FIELDS.NOT", fields=("From", "To", "Date")),
            b"Subject: Fwd: two messages\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n",
        )
        self.assertEqual(
            self.section(text="HEADER.FIELDS", fields=("X-None",)), b"\r\n"
        )

    def test_folded_fields(self) -> None:
        """A folded field comes with its continuation lines."""
        msg = load("encoded.eml")
        got = fetch_section(msg, BodySection(text="HEADER.FIELDS", fields=("Subject",)))
        self.assertEqual(
            got,
            b"Subject: =?UTF-8?B?w4RyZ2VyIMO8YmVy?=\r\n =?UTF-8?B?IFVtbGF1dGU=?=\r\n\r\n",
        )

    def test_parts(self) -> None:
        """Numbered parts, and parts of an encapsulated message."""
        self.assertEqual(self.section((1,)), b"See attached.")
        inner = self.section((2,))
        self.assertTrue(inner.startswith(b"From: Inner One"))
        self.assertTrue(inner.endswith(b"--b2--"))
        self.assertEqual(self.section((2, 1)), b"plain")
        self.assertEqual(self.section((2, 2)), b"<b>html</b>")
        self.assertEqual(self.section((3, 1)), b"Just text.")
        self.assertEqual(self.section((3,)), b"Subject: inner two\r\n\r\nJust text.")

    def test_message_part_specifiers(self) -> None:
        """HEADER, TEXT and HEADER.FIELDS of a message/rfc822 part, and MIME
        of any part."""
        self.assertEqual(self.section((3,), "HEADER"), b"Subject: inner two\r\n\r\n")
        self.assertEqual(self.section((3,), "TEXT"), b"Just text.")
        self.assertEqual(
            self.section((2,), "HEADER.FIELDS", fields=("subject",)),
            b"Subject: inner one\r\n\r\n",
        )
        self.assertEqual(
            self.section((2,), "MIME"),
            b"Content-Type: message/rfc822\r\nContent-Description: first\r\n\r\n",
        )
        self.assertEqual(
            self.section((2, 2), "MIME"),
            b"Content-Type: text/html; charset=us-ascii\r\n\r\n",
        )

    def test_nowhere(self) -> None:
        """A section naming nothing is empty: missing parts, HEADER of a part
        that is not a message, MIME of the whole message."""
        self.assertEqual(self.section((4,)), b"")
        self.assertEqual(self.section((1, 1)), b"")
        self.assertEqual(self.section((2, 3)), b"")
        self.assertEqual(self.section((1,), "HEADER"), b"")
        self.assertEqual(self.section((1,), "TEXT"), b"")
        self.assertEqual(self.section((), "MIME"), b"")

    def test_single_part_message(self) -> None:
        """A message that is not multipart has a part 1: its body; 1.MIME is
        its header."""
        msg = load("simple.eml")
        body = fetch_section(msg, BodySection(part=(1,)))
        self.assertEqual(body, rfc822_text(msg))
        self.assertEqual(
            fetch_section(msg, BodySection(part=(1,), text="MIME")), header_block(msg)
        )
        self.assertEqual(fetch_section(msg, BodySection(part=(2,))), b"")

    def test_nested_multipart(self) -> None:
        """Parts of a multipart inside a multipart are numbered 1.2.1..."""
        msg = load("nested.eml")
        self.assertEqual(
            fetch_section(msg, BodySection(part=(1, 1))), b"Caf=C3=A9 au lait"
        )
        self.assertEqual(
            fetch_section(msg, BodySection(part=(1, 2, 2))), b"iVBORw0KGgo="
        )
        self.assertTrue(
            fetch_section(msg, BodySection(part=(1, 2))).startswith(b"--rel\r\n")
        )

    def test_partial(self) -> None:
        """<origin.length> cuts the section; past the end it is empty."""
        self.assertEqual(self.section((1,), partial=(4, 3)), b"att")
        self.assertEqual(self.section((1,), partial=(10, 100)), b"ed.")
        self.assertEqual(self.section((1,), partial=(100, 5)), b"")
        self.assertEqual(self.section(partial=(0, 4)), b"From")

    def test_format_section(self) -> None:
        """The response item names the section and sends a literal."""
        section = BodySection(peek=True, part=(1,), partial=(4, 3))
        self.assertEqual(
            format_section(section, fetch_section(self.msg, section)),
            b"BODY[1]<4> {3}\r\natt",
        )
        section = BodySection(text="HEADER.FIELDS", fields=("From",))
        self.assertEqual(
            format_section(section, b"x"), b"BODY[HEADER.FIELDS (From)] {1}\r\nx"
        )

    def test_lf_message(self) -> None:
        """Bare LF line ends are understood, and HEADER.FIELDS ends with the
        message's own line end."""
        msg = load("lf.eml")
        self.assertEqual(
            fetch_section(msg, BodySection(part=(1,))), b"line one\nline two"
        )
        self.assertEqual(
            fetch_section(msg, BodySection(text="HEADER.FIELDS", fields=("from",))),
            b"From: lf@example.com\n\n",
        )
        self.assertEqual(to_crlf(msg).count(b"\r\n"), msg.count(b"\n"))
        self.assertNotIn(b"\r\r", to_crlf(msg))

    def test_to_crlf_unchanged(self) -> None:
        """A CRLF message is returned as it is."""
        msg = load("simple.eml")
        self.assertIs(to_crlf(msg), msg)

    def test_parsed_once(self) -> None:
        """A parsed message answers several items like the functions do."""
        parts = parse_message(self.msg)
        self.assertEqual(parts.envelope(), envelope(self.msg))
        self.assertEqual(parts.section(BodySection(part=(2, 1))), b"plain")


# --- headers ----------------------------------------------------------------------


class HeaderTests(SynchronousTestCase):
    """Finding the end of the header (the fast path)."""

    def test_header_end(self) -> None:
        """None until the header is complete; then where the body starts."""
        self.assertIsNone(header_end(b"From: a\r\nSubj"))
        self.assertIsNone(header_end(b"From: a\r\nSubject: x\r\n"))
        self.assertIsNone(header_end(b"From: a\r\n\r"))
        self.assertEqual(header_end(b"From: a\r\n\r\nbody"), 11)
        self.assertEqual(header_end(b"From: a\n\nbody"), 9)
        # A line that is not a field ends a broken header.
        self.assertEqual(header_end(b"From: a\r\nnot a field\r\n"), 9)
        self.assertIsNone(header_end(b"From: a\r\nnot a field"))

    def test_header_block(self) -> None:
        """The header with its empty line, or all of a header-only message."""
        self.assertEqual(header_block(b"A: 1\r\n\r\nbody"), b"A: 1\r\n\r\n")
        self.assertEqual(header_block(b"A: 1\r\n B"), b"A: 1\r\n B")
        self.assertEqual(header_block(b"\r\nbody"), b"\r\n")
        self.assertEqual(header_block(b"garbage\r\n\r\n"), b"")

    def test_envelope_ignores_body(self) -> None:
        """The envelope of a message is the envelope of its header alone."""
        msg = load("nested.eml")
        self.assertEqual(envelope(msg), envelope(header_block(msg)))

    def test_decode_header_value(self) -> None:
        """Encoded words are decoded and joined; other octets are UTF-8."""
        self.assertEqual(
            decode_header_value(
                b"=?UTF-8?B?w4RyZ2VyIMO8YmVy?=\r\n =?UTF-8?B?IFVtbGF1dGU=?="
            ),
            "Ärger über Umlaute",
        )
        self.assertEqual(
            decode_header_value(b"=?ISO-8859-1?Q?Andr=E9?= Pirard"), "André Pirard"
        )
        # A character split between two words survives.
        self.assertEqual(
            decode_header_value(b"=?utf-8?q?J=C3?= =?utf-8?q?=B6rg?="), "Jörg"
        )
        self.assertEqual(decode_header_value(b"=?x-unknown?q?abc?= d"), "abc d")
        self.assertEqual(decode_header_value("Grüße".encode()), "Grüße")
        self.assertEqual(decode_header_value(b"=?utf-8?b?!!!?="), "")

    def test_text_parts(self) -> None:
        """Text parts come decoded (transfer encoding, charset); images do
        not come at all; encapsulated headers do."""
        texts = text_parts(load("nested.eml"))
        self.assertEqual(texts, ["Café au lait", "<p>Café au lait</p>"])
        texts = text_parts(load("rfc822.eml"))
        self.assertIn("See attached.", texts)
        self.assertIn("Subject: inner two", texts)
        self.assertIn("Just text.", texts)


# --- envelope details ---------------------------------------------------------------


class EnvelopeTests(SynchronousTestCase):
    """Details of ENVELOPE beyond the fixtures."""

    def env(self, header: bytes) -> list[Value]:
        """The envelope of a header, read back."""
        return read_list(envelope(header + b"\r\n\r\nbody"))

    def test_sender_defaults(self) -> None:
        """Absent or empty Sender and Reply-To are the From list."""
        env = self.env(b"From: a@b.c\r\nSender: \r\n")
        self.assertEqual(env[2], env[3])
        self.assertEqual(env[2], env[4])
        self.assertEqual(env[2], [[None, None, b"a", b"b.c"]])

    def test_missing_parts(self) -> None:
        """A mailbox without domain or local part says so."""
        env = self.env(b"To: user, @host.test, <>")
        self.assertEqual(
            env[5],
            [
                [None, None, b"user", b"MISSING_DOMAIN"],
                [None, None, b"MISSING_MAILBOX", b"host.test"],
                [None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN"],
            ],
        )

    def test_unterminated_group(self) -> None:
        """A group without ``;`` is closed."""
        env = self.env(b"Cc: friends: a@b.c")
        self.assertEqual(
            env[6],
            [
                [None, None, b"friends", None],
                [None, None, b"a", b"b.c"],
                [None, None, None, None],
            ],
        )

    def test_empty_strings(self) -> None:
        """A field that is present but empty is an empty string, not NIL."""
        env = self.env(b"Subject:\r\nDate: ")
        self.assertEqual(env[:2], [b"", b""])
        self.assertEqual(env[8:], [None, None])

    def test_control_characters(self) -> None:
        """NUL, CR and 8-bit octets in values go out as literals."""
        raw = envelope(b"Subject: a\x00b\rc\r\n\r\n")
        self.assertIn(b"{5}\r\na\x00b\rc", raw)
        self.assertEqual(read_list(raw)[1], b"a\x00b\rc")

    def test_quoted_specials(self) -> None:
        """Quotes and backslashes in names are escaped in quoted strings."""
        env = self.env(b'From: "a \\"b\\" \\\\ c" <x@y>')
        self.assertEqual(env[2], [[b'a "b" \\ c', None, b"x", b"y"]])


# --- structure details ---------------------------------------------------------------


class StructureTests(SynchronousTestCase):
    """Details of BODY and BODYSTRUCTURE beyond the fixtures."""

    def test_deep_nesting(self) -> None:
        """Nesting deeper than MAX_DEPTH stops at a text/plain leaf instead of
        recursing."""
        depth = MAX_DEPTH + 20
        msg = (
            b"".join(
                b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                for i in range(depth)
            )
            + b"\r\nleaf\r\n"
        )
        structure = bodystructure(msg, extensible=True)
        read_list(structure)
        self.assertEqual(structure.count(b'"MIXED"'), MAX_DEPTH)

    def test_deep_messages(self) -> None:
        """Deeply encapsulated messages stop at application/octet-stream."""
        msg = b"Content-Type: message/rfc822\r\n\r\n" * (MAX_DEPTH + 5) + b"x"
        structure = bodystructure(msg, extensible=False)
        read_list(structure)
        self.assertIn(b'"APPLICATION" "OCTET-STREAM"', structure)

    def test_nested_boundaries(self) -> None:
        """An inner boundary that starts with the outer one is not confused
        with it, and an unclosed inner part ends at the outer delimiter."""
        msg = (
            b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
            b"--a\r\nContent-Type: multipart/mixed; boundary=ab\r\n\r\n"
            b"--ab\r\n\r\none\r\n--ab\r\n\r\ntwo\r\n"
            b"--a\r\n\r\nthree\r\n--a--\r\n"
        )
        self.assertEqual(
            bodystructure(msg, extensible=False),
            b'((("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 1)'
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 1) "MIXED")'
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1) "MIXED")',
        )
        self.assertEqual(fetch_section(msg, BodySection(part=(1, 2))), b"two")

    def test_transport_padding_and_false_delimiters(self) -> None:
        """Whitespace after a delimiter is allowed; a boundary that is not at
        the start of a line, or that is followed by other text, is content."""
        msg = (
            b"Content-Type: multipart/mixed; boundary=z\r\n\r\n"
            b"--z  \t\r\n\r\nx --z\r\n--zz\r\n--z--\r\n"
        )
        self.assertEqual(fetch_section(msg, BodySection(part=(1,))), b"x --z\r\n--zz")

    def test_empty_part(self) -> None:
        """Two delimiters in a row make an empty part."""
        msg = b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n--z\r\n\r\nb\r\n--z--"
        self.assertEqual(
            bodystructure(msg, extensible=False),
            b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 1) "MIXED")',
        )

    def test_parameters(self) -> None:
        """Quoted values with escapes, comments, junk parameters, and 8-bit
        values as literals."""
        msg = (
            b'Content-Type: text/plain (comment); charset = "a\\"b" ; junk; '
            b"name=caf\xc3\xa9\r\n\r\nx"
        )
        self.assertEqual(
            bodystructure(msg, extensible=False),
            b'("TEXT" "PLAIN" ("CHARSET" "a\\"b" "NAME" {5}\r\ncaf\xc3\xa9) NIL NIL "7BIT" 1 1)',
        )


# --- the cache ---------------------------------------------------------------------------


class FakeCache:
    """A folder cache in a dict (the shape of L{Mailbox.cache_get}/put)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], bytes] = {}
        self.fields: dict[str, Mapping[str, bytes | None]] = {}
        self.puts = 0

    def cache_get(self, base: str, key: str) -> bytes | None:
        """The value or None."""
        return self.values.get((base, key))

    def cache_put(
        self,
        base: str,
        key: str,
        value: bytes,
        fields: Mapping[str, bytes | None] | None = None,
    ) -> None:
        """Keep the value (and the indexed fields)."""
        self.puts += 1
        self.values[(base, key)] = value
        if fields is not None:
            self.fields[base] = fields


class CacheTests(SynchronousTestCase):
    """L{cached_structure} computes once per message."""

    def test_second_call_reads_nothing(self) -> None:
        """The second request for a message neither loads nor writes."""
        cache = FakeCache()
        loads: list[str] = []
        msg = load("nested.eml")

        def loader() -> bytes:
            loads.append("x")
            return msg

        first = cached_structure(cache, "base1", loader)
        second = cached_structure(cache, "base1", loader)
        self.assertEqual(first, second)
        self.assertEqual(first, compute_structure(msg))
        self.assertEqual(len(loads), 1)
        self.assertEqual(cache.puts, 1)
        self.assertEqual(cached_header(cache, "base1", loader), header_block(msg))
        self.assertEqual(len(loads), 1)

    def test_broken_entry_recomputed(self) -> None:
        """A damaged cache entry is recomputed and replaced."""
        cache = FakeCache()
        msg = load("simple.eml")
        for junk in [
            b"",
            b"1 2 3\n",
            b"1 1 1 1 1\nab",
            b"2 0 0 0 0\n",
            b"1 a 0 0 0\n",
            b"1 -1 1 0 0\nx",
        ]:
            cache.values[("b", CACHE_KEY)] = junk
            self.assertEqual(
                cached_structure(cache, "b", lambda: msg), compute_structure(msg)
            )

    def test_with_maildir(self) -> None:
        """The real folder cache keeps structures across a reopen."""
        from twistedmail.maildir.cache import MessageCache

        path = self.mktemp()
        os.makedirs(path)
        cache = MessageCache(path)
        self.addCleanup(cache.close)

        class Folder:
            def cache_get(self, base: str, key: str) -> bytes | None:
                return cache.get(base, key)

            def cache_put(
                self,
                base: str,
                key: str,
                value: bytes,
                fields: Mapping[str, bytes | None] | None = None,
            ) -> None:
                cache.put(base, key, value, fields)

        msg = load("eightbit.eml")
        made = cached_structure(Folder(), "b", lambda: msg)
        cache.close()

        def fail() -> bytes:
            raise AssertionError("loaded again")

        self.assertEqual(cached_structure(Folder(), "b", fail), made)
        self.assertIsInstance(made, Structure)


# --- hypothesis: never raise, always well-formed -----------------------------------------

_FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/digest; boundary="b"\r\n',
    b"Content-Type: message/rfc822\r\n",
    b'Content-Type: text/plain; charset="utf-8\r\n',
    b"Content-Type: text/\r\n",
    b'Content-Type: ;;="\\\r\n',
    b"Content-Transfer-Encoding: base64\r\n",
    b'Content-Disposition: attachment; filename="a\\"b"\r\n',
    b"Content-Language: en, (c) , fr\r\n",
    b"Content-Location: \r\n",
    b"Content-ID: <\x00>\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"--b",
    b"From: ",
    b"To: ",
    b"Cc: ",
    b"Sender: ",
    b"Subject: ",
    b"Date: ",
    b"Message-ID: ",
    b"a@b",
    b"<",
    b">",
    b"@",
    b",",
    b";",
    b":",
    b".",
    b'"',
    b"\\",
    b"(",
    b")",
    b"[",
    b"]",
    b"=?utf-8?q?=C3?=",
    b"=?utf-8?b?w4Q=?=",
    b"\xc3\xa4",
    b"\xff",
    b"\x00",
    b"{5}",
    b"NIL",
    b"x",
    b"group:",
]

messages = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=80).map(b"".join),
)
sections = st.builds(
    BodySection,
    part=st.lists(st.integers(1, 4), max_size=4).map(tuple),
    text=st.sampled_from(
        [None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"]
    ),
    fields=st.lists(st.sampled_from(["From", "to", "SUBJECT", "x"]), max_size=3).map(
        tuple
    ),
    partial=st.none() | st.tuples(st.integers(0, 500), st.integers(0, 500)),
)


class RobustnessTests(SynchronousTestCase):
    """Any octets give well-formed results and never an exception."""

    @settings(max_examples=400, deadline=None)
    @given(messages)
    def test_structures_are_lists(self, msg: bytes) -> None:
        """ENVELOPE, BODY and BODYSTRUCTURE of any octets are one balanced
        IMAP list each."""
        env = read_list(envelope(msg))
        self.assertEqual(len(env), 10)
        read_list(bodystructure(msg, extensible=False))
        read_list(bodystructure(msg, extensible=True))

    @settings(max_examples=400, deadline=None)
    @given(messages, sections)
    def test_sections_are_slices(self, msg: bytes, section: BodySection) -> None:
        """A section is bytes; unless it is HEADER.FIELDS (which adds an
        empty line), it is a slice of the message; its response item is a
        well-formed literal."""
        content = fetch_section(msg, section)
        self.assertIsInstance(content, bytes)
        if section.text not in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            self.assertIn(content, msg)
        item = format_section(section, content)
        literal = item[item.index(b"{") :]
        self.assertEqual(read_value(literal), (content, len(literal)))

    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_search_text(self, msg: bytes) -> None:
        """Decoding for SEARCH never raises."""
        for text in text_parts(msg):
            self.assertIsInstance(text, str)
        self.assertIsInstance(parse_message(msg).header_text(), str)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=1100) | st.sampled_from([b"", b"\\", b'"', b"x" * 1025]))
    def test_quote_is_format_string(self, value: bytes) -> None:
        """The fast string formatter gives what L{format_string} gives."""
        self.assertEqual(_quote(value), format_string(value))
        self.assertEqual(_nquote(value), format_nstring(value))
        self.assertEqual(_nquote(None), b"NIL")

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    b"a",
                    b"Bob",
                    b"x.y",
                    b"+",
                    b"@",
                    b".",
                    b"<",
                    b">",
                    b" ",
                    b"\t",
                    b"-",
                    b"example.com",
                    b'"',
                    b"(c)",
                    b",",
                    b"\xc3\xa4",
                    b"_",
                    b"=",
                    b"[1]",
                    b":",
                    b";",
                    b"a@b",
                    b"A B <c@d>",
                ]
            ),
            max_size=12,
        ).map(b"".join)
    )
    def test_address_fast_path(self, value: bytes) -> None:
        """The shortcut for plain addresses agrees with the tokenizer."""
        self.assertEqual(_format_addresses(value), _format_address_list(value))

    @settings(max_examples=200, deadline=None)
    @given(messages)
    def test_cache_round_trip(self, msg: bytes) -> None:
        """What the cache keeps is what was computed."""
        cache = FakeCache()
        made = cached_structure(cache, "b", lambda: msg)
        self.assertEqual(cached_structure(cache, "b", lambda: b""), made)
