"""Tests for L{twistedmail.imap}: the command parser, sequence sets, modified
UTF-7 mailbox names and the response formatting helpers."""

from __future__ import annotations

import datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.config import IMAPSettings, Settings, settings_from_dict
from twistedmail.imap import (
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_LITERAL,
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
    CommandParser,
    ContinuationNeeded,
    Copy,
    Create,
    Delete,
    Enable,
    Event,
    Examine,
    Expunge,
    Fetch,
    FetchItem,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    IdleDone,
    InputMode,
    LineTooLong,
    List,
    LiteralTooLarge,
    Login,
    Logout,
    Lsub,
    MailboxNameError,
    Move,
    Namespace,
    Noop,
    ParserStateError,
    QResync,
    Rename,
    Search,
    SearchAll,
    SearchAnd,
    SearchBody,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchMessages,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSize,
    SearchText,
    Select,
    SequenceSet,
    SequenceSetError,
    StartTLS,
    Status,
    StatusItem,
    Store,
    StoreMode,
    Subscribe,
    Unselect,
    Unsubscribe,
    decode_mailbox_name,
    encode_mailbox_name,
    format_astring,
    format_continuation,
    format_date_time,
    format_flags,
    format_list,
    format_mailbox,
    format_nstring,
    format_status,
    format_string,
)
from twistedmail.imap._parser import SKIP_FACTOR

_EVENT_TYPES = (
    Command,
    ContinuationNeeded,
    LiteralTooLarge,
    LineTooLong,
    BadCommand,
    AuthenticateResponse,
    AuthenticateCancelled,
    IdleDone,
)


def _drive(parser: CommandParser, chunks: list[bytes]) -> list[Event]:
    """Feed C{chunks}, answering every pause the way a simple server would.

    After IDLE it waits for DONE, after AUTHENTICATE for one response, and
    after anything else (STARTTLS, a SASL response) it resumes.
    """
    events: list[Event] = []

    def settle(new: list[Event]) -> None:
        events.extend(new)
        while parser.paused:
            last = events[-1]
            if isinstance(last, Idle):
                more = parser.expect_done()
            elif isinstance(last, Authenticate):
                more = parser.expect_sasl_response()
            else:
                more = parser.resume()
            events.extend(more)

    for chunk in chunks:
        settle(parser.receive_data(chunk))
    return events


def parse(data: bytes, **limits: int) -> list[Event]:
    """All events from C{data} fed in one piece to a fresh parser."""
    return _drive(CommandParser(**limits), [data])


def one(data: bytes) -> Event:
    """The single non-continuation event from one command line."""
    events = [e for e in parse(data) if not isinstance(e, ContinuationNeeded)]
    assert len(events) == 1, events
    return events[0]


def seq(text: str) -> SequenceSet:
    """Shorthand for a parsed sequence set."""
    return SequenceSet.parse(text)


class MailboxNameTests(SynchronousTestCase):
    """Modified UTF-7 (RFC 3501 §5.1.3)."""

    def test_rfc_example(self) -> None:
        """The RFC's own example decodes and encodes back."""
        wire = b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        name = "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
        self.assertEqual(decode_mailbox_name(wire), name)
        self.assertEqual(encode_mailbox_name(name), wire)

    def test_ampersand_and_latin(self) -> None:
        """& is written &-; accented letters are shifted."""
        self.assertEqual(encode_mailbox_name("A&B"), b"A&-B")
        self.assertEqual(decode_mailbox_name(b"A&-B"), "A&B")
        self.assertEqual(encode_mailbox_name("Entw\u00fcrfe"), b"Entw&APw-rfe")
        self.assertEqual(encode_mailbox_name("\U0001f600"), b"&2D3eAA-")
        self.assertEqual(decode_mailbox_name(b"&2D3eAA-"), "\U0001f600")

    def test_malformed(self) -> None:
        """Every non-canonical or broken spelling raises MailboxNameError."""
        for bad in [
            b"&",
            b"a&U,BTFw",
            b"&AGE-",  # BASE64 for the printable "a"
            b"&U,B-",  # stray bits
            b"&U,BTFw-&ZeVnLIqe-",  # adjacent shifts
            b"&2D0-",  # lone surrogate
            b"&U/BTFw-",  # "/" instead of ","
            b"&U,BTFw=-",  # padding
            b"&A-",  # one BASE64 character
            b"caf\xc3\xa9",  # raw UTF-8
            b"a\x00b",
            b"tab\there",
        ]:
            with self.assertRaises(MailboxNameError, msg=bad):
                decode_mailbox_name(bad)

    def test_lone_surrogate_refused(self) -> None:
        """A str with a lone surrogate cannot be encoded."""
        self.assertRaises(MailboxNameError, encode_mailbox_name, "a\ud800")

    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
    def test_round_trip(self, name: str) -> None:
        """decode(encode(name)) == name, and the encoding is 7-bit printable."""
        wire = encode_mailbox_name(name)
        self.assertTrue(all(0x20 <= c < 0x7F for c in wire))
        self.assertEqual(decode_mailbox_name(wire), name)

    @given(st.binary(max_size=40))
    def test_any_bytes(self, data: bytes) -> None:
        """Any octets either decode canonically or raise MailboxNameError."""
        try:
            name = decode_mailbox_name(data)
        except MailboxNameError:
            return
        self.assertEqual(encode_mailbox_name(name), data)

    @given(
        st.text(alphabet="&A,+-/aZ09", max_size=20),
    )
    def test_shift_alphabet(self, text: str) -> None:
        """Strings made of shift syntax decode canonically or raise."""
        data = text.encode("ascii")
        try:
            name = decode_mailbox_name(data)
        except MailboxNameError:
            return
        self.assertEqual(encode_mailbox_name(name), data)


_bounds = st.one_of(st.none(), st.integers(min_value=1, max_value=4294967295))
_small_bounds = st.one_of(st.none(), st.integers(min_value=1, max_value=60))
_sets = st.lists(st.tuples(_bounds, _bounds), min_size=1, max_size=8).map(
    lambda r: SequenceSet(tuple(r))
)
_small_sets = st.lists(st.tuples(_small_bounds, _small_bounds), min_size=1).map(
    lambda r: SequenceSet(tuple(r))
)


class SequenceSetTests(SynchronousTestCase):
    """``sequence-set`` (RFC 3501 §9) parsing, formatting and resolution."""

    def test_rfc_example(self) -> None:
        """2,4:7,9,12:* in a mailbox of 15 (RFC 3501 §9, seq-number)."""
        s = seq("2,4:7,9,12:*")
        self.assertEqual(list(s.iter_numbers(15)), [2, 4, 5, 6, 7, 9, 12, 13, 14, 15])
        self.assertEqual(s.to_bytes(), b"2,4:7,9,12:*")
        self.assertTrue(s.uses_star)

    def test_star_and_reversed(self) -> None:
        """*:4 is the same as 4:*; a reversed range counts upwards."""
        self.assertEqual(list(seq("*:4").iter_numbers(6)), [4, 5, 6])
        self.assertEqual(list(seq("5:3").iter_numbers(9)), [3, 4, 5])
        self.assertEqual(list(seq("*").iter_numbers(3)), [3])

    def test_clip_and_empty(self) -> None:
        """Numbers above the largest are skipped; an empty mailbox has none."""
        self.assertEqual(list(seq("3:10").iter_numbers(4)), [3, 4])
        self.assertEqual(list(seq("1:*").iter_numbers(0)), [])
        self.assertTrue(seq("1:4").is_within(4))
        self.assertFalse(seq("1:5").is_within(4))
        self.assertFalse(seq("*").is_within(0))

    def test_uids(self) -> None:
        """UID sets match existing UIDs; 559:* includes the last UID (§6.4.8)."""
        uids = [3, 10, 100, 500]
        self.assertEqual(list(seq("559:*").iter_uids(uids)), [500])
        self.assertEqual(list(seq("4:100,3").iter_uids(uids)), [3, 10, 100])
        self.assertEqual(list(seq("1:*").iter_uids([])), [])
        self.assertEqual(list(seq("11:99").iter_uids(uids)), [])

    def test_normalised(self) -> None:
        """Normalising sorts and merges; with a maximum, * is resolved."""
        self.assertEqual(str(seq("9,1:3,2,4,7:*").normalised()), "1:4,7:*")
        self.assertEqual(str(seq("9,1:3,2,4,7:*").normalised(8)), "1:4,7:8")
        self.assertEqual(str(seq("12:*").normalised(20)), "12:20")

    def test_contains(self) -> None:
        """contains() resolves * against the largest number."""
        s = seq("1,5:*")
        self.assertTrue(s.contains(7, 9))
        self.assertFalse(s.contains(3, 9))
        self.assertFalse(s.contains(10, 9))

    def test_from_numbers(self) -> None:
        """Numbers are compacted into ascending ranges."""
        self.assertEqual(
            SequenceSet.from_numbers([8, 1, 2, 3, 5, 7, 2]).to_bytes(), b"1:3,5,7:8"
        )
        self.assertRaises(SequenceSetError, SequenceSet.from_numbers, [])

    def test_malformed(self) -> None:
        """Malformed sets raise SequenceSetError."""
        for bad in [
            "",
            "0",
            "1:",
            ":1",
            "1,,2",
            "01",
            "4294967296",
            "9" * 5000,
            "a",
            "1:2:3",
            "1, 2",
            "\u0661",
        ]:
            with self.assertRaises(SequenceSetError, msg=bad):
                seq(bad)

    @given(_sets)
    def test_round_trip(self, s: SequenceSet) -> None:
        """parse(s.to_bytes()) == s."""
        self.assertEqual(SequenceSet.parse(s.to_bytes()), s)

    @given(_small_sets, st.integers(min_value=0, max_value=70))
    def test_normalised_same_numbers(self, s: SequenceSet, largest: int) -> None:
        """Normalising keeps exactly the same numbers, ascending and unique."""
        numbers = list(s.iter_numbers(largest))
        self.assertEqual(numbers, sorted(set(numbers)))
        expected = set()
        for first, last in s.ranges:
            a = largest if first is None else first
            b = largest if last is None else last
            expected.update(range(min(a, b), max(a, b) + 1))
        self.assertEqual(set(numbers), {n for n in expected if 1 <= n <= largest})
        if numbers:
            self.assertEqual(list(s.normalised(largest).iter_numbers(largest)), numbers)
            self.assertEqual(
                SequenceSet.from_numbers(numbers).normalised(), s.normalised(largest)
            )

    @given(
        _small_sets,
        st.lists(st.integers(min_value=1, max_value=80), unique=True).map(sorted),
    )
    def test_uids_agree_with_contains(self, s: SequenceSet, uids: list[int]) -> None:
        """iter_uids yields the UIDs that contains() accepts, in order."""
        expected = [u for u in uids if s.contains(u, uids[-1])] if uids else []
        self.assertEqual(list(s.iter_uids(uids)), expected)


class FormatTests(SynchronousTestCase):
    """Response building blocks quote what is safe and literal the rest."""

    def test_quoted(self) -> None:
        """Printable ASCII is quoted with \\ and \" escaped."""
        self.assertEqual(format_string("a b"), b'"a b"')
        self.assertEqual(format_string('say "hi" \\o/'), b'"say \\"hi\\" \\\\o/"')
        self.assertEqual(format_string(""), b'""')

    def test_literal(self) -> None:
        """CR, LF, NUL, 8-bit and long strings become literals."""
        self.assertEqual(format_string("a\r\nb"), b"{4}\r\na\r\nb")
        self.assertEqual(format_string("caf\u00e9"), b"{5}\r\ncaf\xc3\xa9")
        self.assertEqual(format_string(b"\x00"), b"{1}\r\n\x00")
        self.assertEqual(format_string("x" * 2000)[:8], b"{2000}\r\n")

    def test_astring_and_nstring(self) -> None:
        """Atoms stay bare except NIL; None is NIL."""
        self.assertEqual(format_astring("INBOX"), b"INBOX")
        self.assertEqual(format_astring("nil"), b'"nil"')
        self.assertEqual(format_astring("a]b"), b'"a]b"')
        self.assertEqual(format_astring(""), b'""')
        self.assertEqual(format_nstring(None), b"NIL")
        self.assertEqual(format_nstring("x"), b'"x"')

    def test_list_mailbox_flags(self) -> None:
        """Lists, mailbox names and flags."""
        self.assertEqual(format_list([b"a", b"(b)"]), b"(a (b))")
        self.assertEqual(format_mailbox("Entw\u00fcrfe"), b"Entw&APw-rfe")
        self.assertEqual(format_mailbox("My Mail"), b'"My Mail"')
        self.assertEqual(
            format_flags(["\\Seen", "$Junk", "\\*"]), b"(\\Seen $Junk \\*)"
        )
        self.assertRaises(ValueError, format_flags, ["a b"])
        self.assertRaises(ValueError, format_flags, ["x)\r\n* BYE"])

    def test_date_time(self) -> None:
        """date-time with a space-padded day and the zone."""
        zone = datetime.timezone(-datetime.timedelta(hours=7))
        when = datetime.datetime(1996, 7, 7, 2, 44, 25, tzinfo=zone)
        self.assertEqual(format_date_time(when), b'" 7-Jul-1996 02:44:25 -0700"')
        naive = datetime.datetime(2024, 12, 31, 23, 0, 0)
        self.assertEqual(format_date_time(naive), b'"31-Dec-2024 23:00:00 +0000"')

    def test_status_and_continuation(self) -> None:
        """Status lines never carry CR/LF from the text."""
        self.assertEqual(
            format_status("a1", "OK", "SELECT completed", b"READ-WRITE"),
            b"a1 OK [READ-WRITE] SELECT completed\r\n",
        )
        self.assertEqual(
            format_status(None, "BAD", "no\r\n* OK injected"),
            b"* BAD no  * OK injected\r\n",
        )
        self.assertEqual(format_continuation(), b"+ Ready\r\n")

    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
    def test_string_round_trip(self, value: str) -> None:
        """Any string formatted as an astring parses back to itself."""
        wire = b"a LOGIN " + format_astring(value) + b" " + format_string(value)
        self.assertEqual(one(wire + b"\r\n"), Login("a", value, value))

    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
    def test_mailbox_round_trip(self, name: str) -> None:
        """Any mailbox name formatted for the wire parses back to itself."""
        expected = "INBOX" if name.upper() == "INBOX" else name
        event = one(b"t SELECT " + format_mailbox(name) + b"\r\n")
        self.assertEqual(event, Select("t", expected))


class CommandTests(SynchronousTestCase):
    """Each command, from the examples of RFC 3501 §6 and the extensions."""

    def assertParses(self, line: bytes, expected: Event) -> None:
        """C{line} (CRLF added) parses to C{expected}."""
        self.assertEqual(one(line + b"\r\n"), expected)

    def test_any_state(self) -> None:
        """CAPABILITY, NOOP, LOGOUT (RFC 3501 §6.1); names are case-insensitive."""
        self.assertParses(b"abcd CAPABILITY", Capability("abcd"))
        self.assertParses(b"a002 noop", Noop("a002"))
        self.assertParses(b"A023 LOGOUT", Logout("A023"))

    def test_tags(self) -> None:
        """A tag is any ASTRING-CHAR but "+", "]" included."""
        self.assertParses(b"a]b.1$ NOOP", Noop("a]b.1$"))

    def test_login(self) -> None:
        """LOGIN with atoms, quoted strings and literals (RFC 3501 §6.2.3)."""
        self.assertParses(b"a001 LOGIN SMITH SESAME", Login("a001", "SMITH", "SESAME"))
        self.assertParses(
            b'a LOGIN "fred smith" "p\\"w\\\\"', Login("a", "fred smith", 'p"w\\')
        )
        events = parse(b"a LOGIN {4}\r\nfred {6+}\r\nsecret\r\n")
        self.assertEqual(
            events, [ContinuationNeeded(size=4), Login("a", "fred", "secret")]
        )
        self.assertNotIn("secret", repr(events[1]))

    def test_authenticate(self) -> None:
        """AUTHENTICATE with and without SASL-IR (RFC 4959); = is empty."""
        self.assertParses(b"A001 AUTHENTICATE GSSAPI", Authenticate("A001", "GSSAPI"))
        self.assertParses(
            b"a AUTHENTICATE plain AGZyZWQAdGVzdA==",
            Authenticate("a", "PLAIN", b"\x00fred\x00test"),
        )
        self.assertParses(b"a AUTHENTICATE PLAIN =", Authenticate("a", "PLAIN", b""))
        for bad in [b"a AUTHENTICATE PLAIN AGZy=ZWQ", b"a AUTHENTICATE PLAIN abc"]:
            self.assertEqual(one(bad + b"\r\n"), BadCommand("a", "invalid BASE64"))

    def test_starttls(self) -> None:
        """STARTTLS (RFC 3501 §6.2.1)."""
        self.assertParses(b"a002 STARTTLS", StartTLS("a002"))

    def test_mailbox_commands(self) -> None:
        """SELECT, EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE (§6.3)."""
        self.assertParses(b"A142 SELECT INBOX", Select("A142", "INBOX"))
        self.assertParses(b"A142 SELECT inBox", Select("A142", "INBOX"))
        self.assertParses(b"A932 EXAMINE blurdybloop", Examine("A932", "blurdybloop"))
        self.assertTrue(Examine.read_only)
        self.assertParses(b"A003 CREATE owatagusiam/", Create("A003", "owatagusiam/"))
        self.assertParses(b"A683 DELETE blurdybloop", Delete("A683", "blurdybloop"))
        self.assertParses(
            b"A683 RENAME blurdybloop sarasota",
            Rename("A683", "blurdybloop", "sarasota"),
        )
        self.assertParses(
            b"A002 SUBSCRIBE #news.comp.mail.mime",
            Subscribe("A002", "#news.comp.mail.mime"),
        )
        self.assertParses(
            b"A002 UNSUBSCRIBE #news.comp.mail.mime",
            Unsubscribe("A002", "#news.comp.mail.mime"),
        )
        self.assertParses(
            b'a CREATE "~peter/mail/&U,BTFw-/&ZeVnLIqe-"',
            Create("a", "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"),
        )

    def test_select_parameters(self) -> None:
        """SELECT (CONDSTORE) and (QRESYNC ...) (RFC 7162 §3.1.8, §3.2.5)."""
        self.assertParses(
            b"a SELECT INBOX (CONDSTORE)", Select("a", "INBOX", condstore=True)
        )
        self.assertParses(
            b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 "
            b"41,43:211,214:541))",
            Select(
                "A02",
                "INBOX",
                qresync=QResync(67890007, 20050715194045000, seq("41,43:211,214:541")),
            ),
        )
        self.assertParses(
            b"B02 EXAMINE INBOX (QRESYNC (67890007 90060115194045000 "
            b"1:29997 (5000,7500,9000,9990:9999 15000,22500,27000,29970,29973)))",
            Examine(
                "B02",
                "INBOX",
                qresync=QResync(
                    67890007,
                    90060115194045000,
                    seq("1:29997"),
                    seq("5000,7500,9000,9990:9999"),
                    seq("15000,22500,27000,29970,29973"),
                ),
            ),
        )
        self.assertParses(
            b"a SELECT INBOX (QRESYNC (1 2))",
            Select("a", "INBOX", qresync=QResync(1, 2)),
        )

    def test_list_and_lsub(self) -> None:
        """LIST and LSUB (RFC 3501 §6.3.8, §6.3.9)."""
        self.assertParses(b'A101 LIST "" ""', List("A101", "", ("",)))
        self.assertParses(
            b'A102 LIST #news.comp.mail.misc ""',
            List("A102", "#news.comp.mail.misc", ("",)),
        )
        self.assertParses(b"A202 LIST ~/Mail/ %", List("A202", "~/Mail/", ("%",)))
        self.assertParses(b"a LIST inbox *]", List("a", "INBOX", ("*]",)))
        self.assertParses(
            b'A002 LSUB "#news." "comp.mail.*"',
            Lsub("A002", "#news.", "comp.mail.*"),
        )

    def test_list_extended(self) -> None:
        """LIST-EXTENDED (RFC 5258 §6) and LIST-STATUS (RFC 5819) examples."""
        self.assertParses(
            b'A01 LIST (SUBSCRIBED) "" "*"',
            List("A01", "", ("*",), frozenset({"SUBSCRIBED"}), extended=True),
        )
        self.assertParses(
            b'A02 LIST (subscribed RECURSIVEMATCH) "" "%" RETURN (CHILDREN)',
            List(
                "A02",
                "",
                ("%",),
                frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
                frozenset({"CHILDREN"}),
                extended=True,
            ),
        )
        self.assertParses(
            b'A05 LIST "" ("INBOX" "Drafts" "Sent/%")',
            List("A05", "", ("INBOX", "Drafts", "Sent/%"), extended=True),
        )
        self.assertParses(
            b'A01 LIST "" % RETURN (STATUS (MESSAGES UNSEEN) SPECIAL-USE)',
            List(
                "A01",
                "",
                ("%",),
                return_options=frozenset({"STATUS", "SPECIAL-USE"}),
                status_items=(StatusItem.MESSAGES, StatusItem.UNSEEN),
                extended=True,
            ),
        )
        self.assertParses(
            b'a LIST () "" % RETURN ()', List("a", "", ("%",), extended=True)
        )
        for bad in [
            b'a LIST (RECURSIVEMATCH) "" %',
            b'a LIST (BOGUS) "" %',
            b'a LIST "" % RETURN (BOGUS)',
            b'a LIST "" % BOGUS (CHILDREN)',
            b'a LIST "" (%',
        ]:
            self.assertIsInstance(one(bad + b"\r\n"), BadCommand, bad)

    def test_status(self) -> None:
        """STATUS with every item (RFC 3501 §6.3.10, RFC 7162, 7889, 9208)."""
        self.assertParses(
            b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)",
            Status("A042", "blurdybloop", (StatusItem.UIDNEXT, StatusItem.MESSAGES)),
        )
        self.assertParses(
            b"a STATUS INBOX (messages recent uidnext uidvalidity unseen "
            b"highestmodseq appendlimit size deleted)",
            Status("a", "INBOX", tuple(StatusItem)),
        )
        self.assertIsInstance(one(b"a STATUS INBOX (FOO)\r\n"), BadCommand)
        self.assertIsInstance(one(b"a STATUS INBOX ()\r\n"), BadCommand)

    def test_append(self) -> None:
        """APPEND with flags, date-time and a literal (RFC 3501 §6.3.11)."""
        message = b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nHello Joe\r\n"
        events = parse(
            b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(message)
            + message
            + b"\r\n"
        )
        self.assertEqual(
            events,
            [
                ContinuationNeeded(size=len(message)),
                Append("A003", "saved-messages", message, ("\\Seen",)),
            ],
        )
        zone = datetime.timezone(-datetime.timedelta(hours=7))
        self.assertEqual(
            one(
                b'a APPEND INBOX (\\seen \\DRAFT $Forwarded) " 7-Jul-1996 02:44:25 '
                b'-0700" {3+}\r\nabc\r\n'
            ),
            Append(
                "a",
                "INBOX",
                b"abc",
                ("\\Seen", "\\Draft", "$Forwarded"),
                datetime.datetime(1996, 7, 7, 2, 44, 25, tzinfo=zone),
            ),
        )
        self.assertEqual(
            one(b'a APPEND x "17-Jul-1996 02:44:25 +0200" {0}\r\n\r\n'),
            Append(
                "x"[:0] + "a",
                "x",
                b"",
                internal_date=datetime.datetime(
                    1996,
                    7,
                    17,
                    2,
                    44,
                    25,
                    tzinfo=datetime.timezone(datetime.timedelta(hours=2)),
                ),
            ),
        )
        for bad in [
            b'a APPEND INBOX "hello"',
            b'a APPEND INBOX "31-Feb-1996 02:44:25 +0200" {0+}\r\n',
            b'a APPEND INBOX "1-Jan-1996 25:44:25 +0200" {0+}\r\n',
            b'a APPEND INBOX "1-Jan-1996 02:44:25 0200" {0+}\r\n',
            b"a APPEND INBOX (\\*) {0+}\r\n",
            b"a APPEND INBOX {1+}\r\nx extra",
        ]:
            self.assertIsInstance(one(bad + b"\r\n"), BadCommand, bad)

    def test_selected_state(self) -> None:
        """CHECK, CLOSE, EXPUNGE, UNSELECT, COPY, MOVE (RFC 3501 §6.4, 6851)."""
        self.assertParses(b"FXXZ CHECK", Check("FXXZ"))
        self.assertParses(b"A341 CLOSE", Close("A341"))
        self.assertParses(b"A202 EXPUNGE", Expunge("A202"))
        self.assertParses(b"a UNSELECT", Unselect("a"))
        self.assertParses(b"A003 COPY 2:4 MEETING", Copy("A003", seq("2:4"), "MEETING"))
        self.assertParses(b"a MOVE 1:* Trash", Move("a", seq("1:*"), "Trash"))

    def test_uid_commands(self) -> None:
        """UID FETCH/SEARCH/STORE/COPY/MOVE/EXPUNGE (§6.4.8, RFC 4315)."""
        self.assertParses(
            b"A999 UID FETCH 4827313:4828442 FLAGS",
            Fetch("A999", seq("4827313:4828442"), (FetchItem.FLAGS,), uid=True),
        )
        self.assertParses(
            b"a uid copy 1:3 Archive", Copy("a", seq("1:3"), "Archive", uid=True)
        )
        self.assertParses(b"a UID MOVE 7 x", Move("a", seq("7"), "x", uid=True))
        self.assertParses(
            b"A004 UID EXPUNGE 3000:3002", Expunge("A004", seq("3000:3002"))
        )
        self.assertParses(b"a UID SEARCH ALL", Search("a", SearchAll(), uid=True))
        self.assertParses(
            b"a UID STORE 1 FLAGS ()",
            Store("a", seq("1"), StoreMode.REPLACE, (), uid=True),
        )
        self.assertIsInstance(one(b"a UID NOOP\r\n"), BadCommand)
        self.assertIsInstance(one(b"a UID EXPUNGE\r\n"), BadCommand)

    def test_store(self) -> None:
        """STORE forms (RFC 3501 §6.4.6) and UNCHANGEDSINCE (RFC 7162)."""
        self.assertParses(
            b"A003 STORE 2:4 +FLAGS (\\Deleted)",
            Store("A003", seq("2:4"), StoreMode.ADD, ("\\Deleted",)),
        )
        self.assertParses(
            b"a STORE 1 -flags.silent \\seen $label1",
            Store("a", seq("1"), StoreMode.REMOVE, ("\\Seen", "$label1"), silent=True),
        )
        self.assertParses(
            b"a103 UID STORE 6,4,8 (UNCHANGEDSINCE 12121230045) +FLAGS.SILENT "
            b"(\\Deleted)",
            Store(
                "a103",
                seq("6,4,8"),
                StoreMode.ADD,
                ("\\Deleted",),
                silent=True,
                uid=True,
                unchanged_since=12121230045,
            ),
        )
        for bad in [
            b"a STORE 1 FLAGS",
            b"a STORE 1 *FLAGS (x)",
            b"a STORE 1 LABELS (x)",
            b"a STORE 1 FLAGS (\\*)",
            b"a STORE 0 FLAGS (x)",
            b"a STORE 1 (UNCHANGED 1) FLAGS (x)",
        ]:
            self.assertIsInstance(one(bad + b"\r\n"), BadCommand, bad)

    def test_fetch_simple(self) -> None:
        """FETCH macros and simple attributes (RFC 3501 §6.4.5)."""
        fast = (FetchItem.FLAGS, FetchItem.INTERNALDATE, FetchItem.RFC822_SIZE)
        self.assertParses(b"a FETCH 1 FAST", Fetch("a", seq("1"), fast))
        self.assertParses(
            b"a FETCH 1 all", Fetch("a", seq("1"), fast + (FetchItem.ENVELOPE,))
        )
        self.assertParses(
            b"a FETCH 1 FULL",
            Fetch("a", seq("1"), fast + (FetchItem.ENVELOPE, FetchItem.BODY)),
        )
        every = b" ".join(item.value.encode() for item in FetchItem)
        self.assertParses(
            b"a FETCH 1:* (" + every + b")", Fetch("a", seq("1:*"), tuple(FetchItem))
        )
        self.assertParses(
            b"a FETCH 2 rfc822.size", Fetch("a", seq("2"), (FetchItem.RFC822_SIZE,))
        )
        for bad in [
            b"a FETCH 1 (FAST)",
            b"a FETCH 1 ()",
            b"a FETCH 1 BOGUS",
            b"a FETCH 1 BODY.PEEK",
            b"a FETCH 1 (FLAGS",
            b"a FETCH 1",
            b"a FETCH FLAGS",
        ]:
            self.assertIsInstance(one(bad + b"\r\n"), BadCommand, bad)

    def test_fetch_sections(self) -> None:
        """BODY[section]<partial> and BODY.PEEK (RFC 3501 §6.4.5)."""
        self.assertParses(
            b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])",
            Fetch(
                "A654",
                seq("2:4"),
                (
                    FetchItem.FLAGS,
                    BodySection(text="HEADER.FIELDS", fields=("DATE", "FROM")),
                ),
            ),
        )
        cases = {
            b"BODY[]": BodySection(),
            b"BODY.PEEK[]<0.2048>": BodySection(peek=True, partial=(0, 2048)),
            b"body[header]": BodySection(text="HEADER"),
            b"BODY[TEXT]<10.5>": BodySection(text="TEXT", partial=(10, 5)),
            b"BODY[1]": BodySection(part=(1,)),
            b"BODY[3.2.1.MIME]": BodySection(part=(3, 2, 1), text="MIME"),
            b"BODY[4.2.HEADER]": BodySection(part=(4, 2), text="HEADER"),
            b"BODY[4.2.TEXT]": BodySection(part=(4, 2), text="TEXT"),
            b'BODY.PEEK[1.HEADER.FIELDS.NOT ("Received" X-Spam)]': BodySection(
                peek=True,
                part=(1,),
                text="HEADER.FIELDS.NOT",
                fields=("Received", "X-Spam"),
            ),
        }
        for wire, section in cases.items():
            self.assertParses(b"a FETCH 1 " + wire, Fetch("a", seq("1"), (section,)))
        for bad in [
            b"BODY[0]",
            b"BODY[01]",
            b"BODY[MIME]",
            b"BODY[1.]",
            b"BODY[1..2]",
            b"BODY[HEADER.FIELDS]",
            b"BODY[HEADER.FIELDS ()]",
            b"BODY[TEXT.1]",
            b"BODY[1.BOGUS]",
            b"BODY[]<1>",
            b"BODY[]<1.0>",
            b"BODY[",
            b"BODY.PEEK[] <1.2>",
        ]:
            self.assertIsInstance(one(b"a FETCH 1 " + bad + b"\r\n"), BadCommand, bad)

    def test_fetch_modifiers(self) -> None:
        """CHANGEDSINCE and VANISHED (RFC 7162 §3.1.4, §3.2.6)."""
        self.assertParses(
            b"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
            Fetch("s100", seq("1:*"), (FetchItem.FLAGS,), True, 12345),
        )
        self.assertParses(
            b"s101 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
            Fetch("s101", seq("300:500"), (FetchItem.FLAGS,), True, 12345, True),
        )
        self.assertIsInstance(
            one(b"a FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)\r\n"), BadCommand
        )
        self.assertIsInstance(one(b"a UID FETCH 1 FLAGS (VANISHED)\r\n"), BadCommand)

    def test_response_name(self) -> None:
        """A section's FETCH response name drops PEEK and the partial length."""
        self.assertEqual(
            BodySection(peek=True, text="TEXT", partial=(0, 10)).response_name(),
            b"BODY[TEXT]<0>",
        )
        self.assertEqual(
            BodySection(
                part=(1, 2), text="HEADER.FIELDS", fields=("From", "X y")
            ).response_name(),
            b'BODY[1.2.HEADER.FIELDS (From "X y")]',
        )
        self.assertEqual(BodySection().response_name(), b"BODY[]")

    def test_search_rfc_examples(self) -> None:
        """The SEARCH examples of RFC 3501 §6.4.4."""
        self.assertParses(
            b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',
            Search(
                "A282",
                SearchAnd(
                    (
                        SearchFlag("\\Flagged"),
                        SearchDate("since", datetime.date(1994, 2, 1)),
                        SearchNot(SearchHeader("from", "Smith")),
                    )
                ),
            ),
        )
        self.assertParses(
            b'A283 SEARCH TEXT "string not in mailbox"',
            Search("A283", SearchText("string not in mailbox")),
        )
        self.assertEqual(
            parse(b"A284 SEARCH CHARSET UTF-8 TEXT {6}\r\nXX\xc3\xa9XX\r\n"),
            [
                ContinuationNeeded(size=6),
                Search("A284", SearchText("XX\u00e9XX"), charset="UTF-8"),
            ],
        )

    def test_search_every_key(self) -> None:
        """Every search-key of RFC 3501 §9, plus MODSEQ (RFC 7162)."""
        day = datetime.date(2024, 3, 9)
        cases: dict[bytes, object] = {
            b"ALL": SearchAll(),
            b"ANSWERED": SearchFlag("\\Answered"),
            b"BCC x": SearchHeader("bcc", "x"),
            b"BEFORE 9-Mar-2024": SearchDate("before", day),
            b"BODY {1+}\r\nx": SearchBody("x"),
            b"CC x": SearchHeader("cc", "x"),
            b"DELETED": SearchFlag("\\Deleted"),
            b"DRAFT": SearchFlag("\\Draft"),
            b"FLAGGED": SearchFlag("\\Flagged"),
            b"FROM x": SearchHeader("from", "x"),
            b'HEADER "X-Mailer" ""': SearchHeader("x-mailer", ""),
            b"KEYWORD $Junk": SearchFlag("$Junk"),
            b"LARGER 1000": SearchSize("larger", 1000),
            b"NEW": SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False))),
            b"NOT SEEN": SearchNot(SearchFlag("\\Seen")),
            b"OLD": SearchFlag("\\Recent", False),
            b'ON "09-mar-2024"': SearchDate("on", day),
            b"OR SEEN (DRAFT DELETED)": SearchOr(
                SearchFlag("\\Seen"),
                SearchAnd((SearchFlag("\\Draft"), SearchFlag("\\Deleted"))),
            ),
            b"RECENT": SearchFlag("\\Recent"),
            b"SEEN": SearchFlag("\\Seen"),
            b"SENTBEFORE 9-Mar-2024": SearchDate("before", day, sent=True),
            b"SENTON 9-Mar-2024": SearchDate("on", day, sent=True),
            b"SENTSINCE 9-Mar-2024": SearchDate("since", day, sent=True),
            b"SINCE 9-Mar-2024": SearchDate("since", day),
            b"SMALLER 5": SearchSize("smaller", 5),
            b"SUBJECT hello": SearchHeader("subject", "hello"),
            b"TEXT x": SearchText("x"),
            b"TO x": SearchHeader("to", "x"),
            b"UID 1:*": SearchMessages(seq("1:*"), uid=True),
            b"UNANSWERED": SearchFlag("\\Answered", False),
            b"UNDELETED": SearchFlag("\\Deleted", False),
            b"UNDRAFT": SearchFlag("\\Draft", False),
            b"UNFLAGGED": SearchFlag("\\Flagged", False),
            b"UNKEYWORD $Junk": SearchFlag("$Junk", False),
            b"UNSEEN": SearchFlag("\\Seen", False),
            b"2,4:*": SearchMessages(seq("2,4:*")),
            b"(SEEN)": SearchFlag("\\Seen"),
            b"MODSEQ 620162338": SearchModSeq(620162338),
            b'MODSEQ "/flags/\\\\draft" all 620162338': SearchModSeq(
                620162338, "/flags/\\draft", "all"
            ),
        }
        for wire, key in cases.items():
            self.assertParses(b"a SEARCH " + wire, Search("a", key))  # type: ignore[arg-type]

    def test_search_return_options(self) -> None:
        """ESEARCH RETURN options (RFC 4731 §3.1)."""
        self.assertParses(
            b"A282 SEARCH RETURN (MIN COUNT) FLAGGED",
            Search("A282", SearchFlag("\\Flagged"), return_options=("MIN", "COUNT")),
        )
        self.assertParses(
            b"a UID SEARCH RETURN () CHARSET us-ascii ALL",
            Search("a", SearchAll(), True, "US-ASCII", ()),
        )
        self.assertIsInstance(one(b"a SEARCH RETURN (FOO) ALL\r\n"), BadCommand)

    def test_search_errors(self) -> None:
        """Malformed SEARCH commands are BAD, never exceptions."""
        for bad in [
            b"a SEARCH",
            b"a SEARCH BOGUS",
            b"a SEARCH SINCE 30-Feb-2024",
            b"a SEARCH SINCE 1-Foo-2024",
            b"a SEARCH SINCE 2024-01-01",
            b"a SEARCH OR SEEN",
            b"a SEARCH NOT",
            b"a SEARCH (SEEN",
            b"a SEARCH ()",
            b"a SEARCH LARGER x",
            b"a SEARCH LARGER 99999999999",
            b"a SEARCH FROM",
            b'a SEARCH TEXT "\xff"',
            b"a SEARCH CHARSET",
            b'a SEARCH MODSEQ "/x" bogus 1',
            b"a SEARCH " + b"NOT " * 100 + b"ALL",
            b"a SEARCH " + b"(" * 20000 + b"ALL" + b")" * 20000,
        ]:
            self.assertIsInstance(one(bad + b"\r\n"), BadCommand, bad[:40])

    def test_other_charset(self) -> None:
        """An unknown CHARSET is left to the server (NO [BADCHARSET])."""
        event = one(b"a SEARCH CHARSET KOI8-R TEXT \xf0\xd2\r\n")
        self.assertIsInstance(event, BadCommand)  # 8-bit atoms are not astrings
        event = one(b"a SEARCH CHARSET KOI8-R TEXT {2+}\r\n\xf0\xd2\r\n")
        assert isinstance(event, Search)
        self.assertEqual(event.charset, "KOI8-R")

    def test_extensions(self) -> None:
        """IDLE, ENABLE, ID, NAMESPACE, GETQUOTA, GETQUOTAROOT."""
        self.assertEqual(_drive(CommandParser(), [b"a IDLE\r\n"]), [Idle("a")])
        self.assertParses(
            b"t2 ENABLE CONDSTORE x-good-idea",
            Enable("t2", ("CONDSTORE", "X-GOOD-IDEA")),
        )
        self.assertParses(
            b'a023 ID ("name" "sodr" "version" "19.34" "vendor" NIL)',
            Id("a023", (("name", "sodr"), ("version", "19.34"), ("vendor", None))),
        )
        self.assertParses(b"a ID NIL", Id("a", None))
        self.assertParses(b"a ID ()", Id("a", ()))
        self.assertParses(b"A01 NAMESPACE", Namespace("A01"))
        self.assertParses(
            b'G0001 GETQUOTA "!partition/sda4"', GetQuota("G0001", "!partition/sda4")
        )
        self.assertParses(b"A003 GETQUOTAROOT INBOX", GetQuotaRoot("A003", "INBOX"))
        for bad in [b"a ENABLE", b"a ID (name x)", b'a ID ("name")', b"a ID"]:
            self.assertIsInstance(one(bad + b"\r\n"), BadCommand, bad)

    def test_bad_commands(self) -> None:
        """Syntax errors name the tag when one was read, else are untagged."""
        cases = {
            b"a BOGUS": "a",
            b"a NOOP extra": "a",
            b"a  NOOP": "a",
            b"a": "a",
            b"a LOGIN fred": "a",
            b"a SELECT": "a",
            b"a SELECT &Jjo": "a",
            b"a SELECT caf\xc3\xa9": "a",
            b'a LOGIN "unterminated': "a",
            b"a LOGIN {3} x": "a",
            b'a LOGIN "\\q" x': "a",
            b'a LOGIN "a\x00" x': "a",
            b"+ NOOP": None,
            b"* NOOP": None,
            b"(a) NOOP": None,
            b"": None,
            b" NOOP": None,
            b"\xff NOOP": None,
        }
        for wire, tag in cases.items():
            event = one(wire + b"\r\n")
            self.assertIsInstance(event, BadCommand, wire)
            assert isinstance(event, BadCommand)
            self.assertEqual(event.tag, tag, wire)

    def test_bare_lf(self) -> None:
        """A line ending in a bare LF is refused, and the next one still works."""
        self.assertEqual(
            parse(b"a NOOP\nb NOOP\r\n"),
            [BadCommand("a", "line must end with CRLF"), Noop("b")],
        )

    def test_pipelined(self) -> None:
        """Several commands in one chunk come out in order."""
        self.assertEqual(
            parse(b"a NOOP\r\nb CHECK\r\nc LOGOUT\r\n"),
            [Noop("a"), Check("b"), Logout("c")],
        )


_SAMPLE = (
    b"a1 LOGIN {4}\r\nfred {6+}\r\nsecret\r\n"
    b"a2 SELECT INBOX\r\n"
    b"a3 APPEND x (\\Seen) {5}\r\nhello\r\n"
    b"a4 FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From)]<0.10>)\r\n"
    b"a5 BOGUS {3}\r\n"
    b'a6 LOGIN "x {3}\r\n'
    b"a7 IDLE\r\nDONE\r\n"
    b"a8 AUTHENTICATE PLAIN\r\nAGZyZWQAdGVzdA==\r\n"
    b"a9 APPEND x {0+}\r\n\r\n"
    b"b1 SEARCH TEXT {2}\r\nab OR SEEN TEXT {1+}\r\nx\r\n"
)


class FramingTests(SynchronousTestCase):
    """Literals and line splitting (RFC 3501 §4.3, §7.5; RFC 7888)."""

    def test_sample(self) -> None:
        """The sample session parses to the expected events."""
        self.assertEqual(
            parse(_SAMPLE),
            [
                ContinuationNeeded(size=4),
                Login("a1", "fred", "secret"),
                Select("a2", "INBOX"),
                ContinuationNeeded(size=5),
                Append("a3", "x", b"hello", ("\\Seen",)),
                Fetch(
                    "a4",
                    seq("1:*"),
                    (
                        BodySection(
                            peek=True,
                            text="HEADER.FIELDS",
                            fields=("From",),
                            partial=(0, 10),
                        ),
                    ),
                ),
                BadCommand("a5", "unknown command BOGUS"),
                BadCommand("a6", "bad quoted string"),
                Idle("a7"),
                IdleDone("a7"),
                Authenticate("a8", "PLAIN"),
                AuthenticateResponse("a8", b"\x00fred\x00test"),
                Append("a9", "x", b""),
                ContinuationNeeded(size=2),
                Search(
                    "b1",
                    SearchAnd(
                        (
                            SearchText("ab"),
                            SearchOr(SearchFlag("\\Seen"), SearchText("x")),
                        )
                    ),
                ),
            ],
        )

    def test_every_split(self) -> None:
        """Splitting the sample at any one point gives the same events."""
        expected = parse(_SAMPLE)
        for i in range(len(_SAMPLE) + 1):
            self.assertEqual(
                _drive(CommandParser(), [_SAMPLE[:i], _SAMPLE[i:]]), expected, i
            )

    def test_byte_by_byte(self) -> None:
        """Feeding one octet at a time gives the same events."""
        chunks = [_SAMPLE[i : i + 1] for i in range(len(_SAMPLE))]
        self.assertEqual(_drive(CommandParser(), chunks), parse(_SAMPLE))

    @given(st.lists(st.integers(min_value=0, max_value=len(_SAMPLE))))
    def test_any_chunking(self, cuts: list[int]) -> None:
        """Any chunking of the sample gives the same events."""
        points = [0, *sorted(cuts), len(_SAMPLE)]
        chunks = [_SAMPLE[a:b] for a, b in zip(points, points[1:], strict=False)]
        self.assertEqual(_drive(CommandParser(), chunks), parse(_SAMPLE))

    def test_continuation_before_literal(self) -> None:
        """The continuation comes as soon as the announcement line ends."""
        parser = CommandParser()
        self.assertEqual(parser.receive_data(b"a LOGIN {4}"), [])
        self.assertEqual(parser.receive_data(b"\r\n"), [ContinuationNeeded(size=4)])
        self.assertEqual(parser.receive_data(b"fred x"), [])
        self.assertEqual(parser.receive_data(b"\r\n"), [Login("a", "fred", "x")])

    def test_literal_holds_anything(self) -> None:
        """Literal octets are never scanned: CRLF, braces and quotes inside."""
        body = b'x\r\n{5}\r\n"\r\nb NOOP\r\n'
        self.assertEqual(
            one(b"a APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n"),
            Append("a", "INBOX", body),
        )

    def test_braces_in_quotes(self) -> None:
        """Braces inside a quoted string are text, after it a literal."""
        self.assertEqual(
            parse(b'a LOGIN "p{3}" {1}\r\nx\r\n'),
            [ContinuationNeeded(size=1), Login("a", "p{3}", "x")],
        )

    def test_non_sync_no_continuation(self) -> None:
        """A {n+} literal is read at once, with no continuation (RFC 7888)."""
        self.assertEqual(
            parse(b"a LOGIN {1+}\r\nu {1+}\r\np\r\n"), [Login("a", "u", "p")]
        )

    def test_early_refusal(self) -> None:
        """An unknown command or bad tag gets BAD instead of a continuation."""
        self.assertEqual(
            parse(b"a XYZZY {5}\r\nb NOOP\r\n"),
            [BadCommand("a", "unknown command XYZZY"), Noop("b")],
        )
        self.assertEqual(
            parse(b"a UID BOGUS {5}\r\n"),
            [BadCommand("a", "unknown UID command BOGUS")],
        )
        self.assertEqual(
            parse(b"* LOGIN {5}\r\n"), [BadCommand(None, "expected a tag")]
        )


class LimitTests(SynchronousTestCase):
    """Named limits: lines and literals, memory flat whatever the client does."""

    def test_defaults(self) -> None:
        """64 KiB lines and 35 MB literals unless configured."""
        parser = CommandParser()
        self.assertEqual(
            (parser.max_line, parser.max_literal),
            (DEFAULT_MAX_LINE, DEFAULT_MAX_LITERAL),
        )
        self.assertEqual((DEFAULT_MAX_LINE, DEFAULT_MAX_LITERAL), (65536, 36700160))
        self.assertRaises(ValueError, CommandParser, max_line=0)

    def test_huge_sync_literal(self) -> None:
        """A 2 GB announcement is refused at once: no continuation, no buffer."""
        parser = CommandParser()
        events = parser.receive_data(b"a APPEND INBOX {2147483648}\r\n")
        self.assertEqual(events, [LiteralTooLarge("a", 2147483648)])
        self.assertEqual(parser.buffered_size, 0)
        self.assertEqual(parser.receive_data(b"b NOOP\r\n"), [Noop("b")])

    def test_too_large_untagged(self) -> None:
        """Without a readable tag, LiteralTooLarge has None."""
        self.assertEqual(
            parse(b"* APPEND x {999999999}\r\n"), [LiteralTooLarge(None, 999999999)]
        )

    def test_huge_non_sync_literal_skipped(self) -> None:
        """A refused {n+} literal is skipped, then the rest of its line."""
        parser = CommandParser(max_literal=100)
        smuggled = b"b DELETE INBOX\r\n" * 10
        events = parser.receive_data(
            b"a APPEND INBOX {%d+}\r\n" % len(smuggled)
            + smuggled
            + b" rest {3}\r\nc NOOP\r\n"
        )
        self.assertEqual(
            events, [LiteralTooLarge("a", len(smuggled), False), Noop("c")]
        )

    def test_huge_non_sync_memory_flat(self) -> None:
        """Skipping a refused {n+} literal keeps nothing in memory, up to
        max_skip octets."""
        parser = CommandParser()
        size = parser.max_skip
        self.assertEqual(size, SKIP_FACTOR * DEFAULT_MAX_LITERAL)
        self.assertEqual(
            parser.receive_data(b"a APPEND INBOX {%d+}\r\n" % size),
            [LiteralTooLarge("a", size, False)],
        )
        chunk = b"x" * 65536
        for _ in range(200):
            self.assertEqual(parser.receive_data(chunk), [])
            self.assertEqual(parser.buffered_size, 0)
        self.assertFalse(parser.closed)

    def test_non_sync_past_max_skip_closes(self) -> None:
        """A 2 GB {n+} announcement is not worth reading: LiteralTooLarge
        with closing set, and the parser takes nothing more."""
        parser = CommandParser()
        self.assertEqual(
            parser.receive_data(b"a APPEND INBOX {2147483648+}\r\nxyz"),
            [LiteralTooLarge("a", 2147483648, False, True)],
        )
        self.assertTrue(parser.closed)
        self.assertEqual(parser.receive_data(b"\r\nb NOOP\r\n"), [])
        self.assertEqual(parser.buffered_size, 0)

    def test_skip_limit_follows_max_literal(self) -> None:
        """max_skip follows max_literal (the server raises it at login)."""
        parser = CommandParser(max_literal=10)
        self.assertEqual(parser.max_skip, 10 * SKIP_FACTOR)
        self.assertEqual(
            parser.receive_data(b"a LOGIN {41+}\r\n"),
            [LiteralTooLarge("a", 41, False, True)],
        )
        parser = CommandParser(max_literal=10)
        self.assertEqual(
            parser.receive_data(b"a LOGIN {40+}\r\n" + b"x" * 40 + b"\r\nb NOOP\r\n"),
            [LiteralTooLarge("a", 40, False), Noop("b")],
        )

    def test_skip_chain(self) -> None:
        """A further {n+} in a refused command's rest is skipped too."""
        parser = CommandParser(max_literal=4)
        self.assertEqual(
            parser.receive_data(b"a LOGIN {9+}\r\n123456789 {3+}\r\nb N\r\nc NOOP\r\n"),
            [LiteralTooLarge("a", 9, False), Noop("c")],
        )

    def test_literal_total(self) -> None:
        """max_literal bounds all literals of one command together."""
        events = parse(b"a LOGIN {3}\r\nabc {3}\r\nb NOOP\r\n", max_literal=5)
        self.assertEqual(
            events, [ContinuationNeeded(size=3), LiteralTooLarge("a", 3), Noop("b")]
        )

    def test_never_ending_line(self) -> None:
        """An endless line gives one LineTooLong and keeps memory flat."""
        parser = CommandParser(max_line=1024)
        events = parser.receive_data(b"a1 LOGIN ")
        chunk = b"x" * 4096
        for _ in range(500):
            events += parser.receive_data(chunk)
            self.assertLess(parser.buffered_size, 64)
        self.assertEqual(events, [LineTooLong("a1")])
        self.assertEqual(parser.receive_data(b"\r\nb NOOP\r\n"), [Noop("b")])

    def test_long_line_untagged(self) -> None:
        """Without a readable tag, LineTooLong has None."""
        parser = CommandParser(max_line=64)
        self.assertEqual(parser.receive_data(b"(" * 100), [LineTooLong(None)])

    def test_long_complete_line(self) -> None:
        """A whole over-long line arriving at once is refused too."""
        self.assertEqual(
            parse(b"t NOOP " + b"x" * 100 + b"\r\nu NOOP\r\n", max_line=64),
            [LineTooLong("t"), Noop("u")],
        )

    def test_line_limit_counts_all_segments(self) -> None:
        """The text around literals counts towards max_line."""
        line = b"t LOGIN {1+}\r\n" + b"x" + b" {1+}\r\n" * 20 + b"\r\n"
        events = parse(line + b"u NOOP\r\n", max_line=64)
        self.assertEqual(events, [LineTooLong("t"), Noop("u")])

    def test_long_line_ending_in_literal(self) -> None:
        """An over-long line ending in {n+} has its literal skipped too."""
        events = parse(
            b"t APPEND " + b"x" * 100 + b" {16+}\r\nb DELETE INBOX\r\n\r\nu NOOP\r\n",
            max_line=64,
        )
        self.assertEqual(events, [LineTooLong("t"), Noop("u")])
        parser = CommandParser(max_line=64)
        events = parser.receive_data(
            b"t APPEND " + b"x" * 100 + b" {2147483648+}\r\nb NOOP\r\n"
        )
        self.assertEqual(
            events, [LineTooLong("t"), LiteralTooLarge("t", 2147483648, False, True)]
        )
        self.assertTrue(parser.closed)
        parser = CommandParser(max_line=64)
        events = parser.receive_data(b"t APPEND " + b"x" * 100)
        events += parser.receive_data(b" {16+}\r\nb DELETE INBOX\r\n\r\nu NOOP\r\n")
        self.assertEqual(events, [LineTooLong("t"), Noop("u")])

    def test_huge_announcement_digits(self) -> None:
        """Thousands of digits in an announcement are just too large."""
        events = parse(b"a LOGIN {" + b"9" * 5000 + b"}\r\nb NOOP\r\n")
        self.assertEqual(len(events), 2)
        self.assertIsInstance(events[0], LiteralTooLarge)
        self.assertEqual(events[1], Noop("b"))


class ModeTests(SynchronousTestCase):
    """Pauses after STARTTLS, AUTHENTICATE and IDLE, driven by the server."""

    def test_starttls_discards_injection(self) -> None:
        """Octets pipelined after STARTTLS are dropped (RFC 3501 §6.2.1)."""
        parser = CommandParser()
        events = parser.receive_data(b"a STARTTLS\r\nb LOGIN evil evil\r\n")
        self.assertEqual(events, [StartTLS("a")])
        self.assertTrue(parser.paused)
        self.assertEqual(parser.receive_data(b"c DELETE INBOX\r\n"), [])
        self.assertEqual(parser.resume(discard=True), [])
        self.assertEqual(parser.receive_data(b"d NOOP\r\n"), [Noop("d")])

    def test_refused_starttls_keeps_input(self) -> None:
        """When STARTTLS is refused, the pipelined commands are read."""
        parser = CommandParser()
        self.assertEqual(
            parser.receive_data(b"a STARTTLS\r\nb NOOP\r\n"), [StartTLS("a")]
        )
        self.assertEqual(parser.resume(), [Noop("b")])

    def test_authenticate_exchange(self) -> None:
        """AUTHENTICATE, one response per challenge, then commands again."""
        parser = CommandParser()
        self.assertEqual(
            parser.receive_data(
                b"a AUTHENTICATE PLAIN\r\nAGZyZWQAdGVzdA==\r\nb NOOP\r\n"
            ),
            [Authenticate("a", "PLAIN")],
        )
        self.assertEqual(parser.mode, InputMode.PAUSED)
        self.assertEqual(
            parser.expect_sasl_response(),
            [AuthenticateResponse("a", b"\x00fred\x00test")],
        )
        self.assertTrue(parser.paused)
        self.assertEqual(parser.resume(), [Noop("b")])

    def test_authenticate_empty_and_cancel(self) -> None:
        """An empty line is an empty response; * cancels (RFC 3501 §6.2.2)."""
        parser = CommandParser()
        parser.receive_data(b"a AUTHENTICATE X\r\n")
        self.assertEqual(parser.expect_sasl_response(), [])
        self.assertEqual(parser.receive_data(b"\r\n"), [AuthenticateResponse("a", b"")])
        self.assertEqual(parser.expect_sasl_response(), [])
        self.assertEqual(
            parser.receive_data(b"*\r\nb NOOP\r\n"),
            [AuthenticateCancelled("a"), Noop("b")],
        )

    def test_authenticate_bad_base64(self) -> None:
        """Bad BASE64 ends the exchange with a tagged BAD."""
        parser = CommandParser()
        parser.receive_data(b"a AUTHENTICATE PLAIN\r\n")
        parser.expect_sasl_response()
        self.assertEqual(
            parser.receive_data(b"not base64!\r\nb NOOP\r\n"),
            [BadCommand("a", "invalid BASE64"), Noop("b")],
        )

    def test_sasl_line_too_long(self) -> None:
        """An over-long SASL response ends the exchange."""
        parser = CommandParser(max_line=64)
        parser.receive_data(b"a AUTHENTICATE PLAIN\r\n")
        parser.expect_sasl_response()
        self.assertEqual(parser.receive_data(b"A" * 100), [LineTooLong("a")])
        self.assertEqual(parser.receive_data(b"\r\nb NOOP\r\n"), [Noop("b")])

    def test_idle_done(self) -> None:
        """IDLE then DONE (RFC 2177), with a pipelined command after it."""
        parser = CommandParser()
        self.assertEqual(
            parser.receive_data(b"a IDLE\r\ndone\r\nb NOOP\r\n"), [Idle("a")]
        )
        self.assertEqual(parser.expect_done(), [IdleDone("a"), Noop("b")])

    def test_idle_not_done(self) -> None:
        """Anything but DONE ends IDLE with a BAD carrying IDLE's tag."""
        parser = CommandParser()
        parser.receive_data(b"a IDLE\r\n")
        self.assertEqual(parser.expect_done(), [])
        self.assertEqual(
            parser.receive_data(b"b NOOP\r\n"), [BadCommand("a", "expected DONE")]
        )
        self.assertEqual(parser.mode, InputMode.COMMAND)

    def test_out_of_order(self) -> None:
        """Driving the parser out of order raises ParserStateError."""
        parser = CommandParser()
        self.assertRaises(ParserStateError, parser.resume)
        self.assertRaises(ParserStateError, parser.expect_done)
        parser.receive_data(b"a AUTHENTICATE PLAIN\r\n")
        self.assertRaises(ParserStateError, parser.expect_done)
        parser.resume()
        parser.receive_data(b"b IDLE\r\n")
        self.assertRaises(ParserStateError, parser.expect_sasl_response)

    def test_pause_buffer_bounded(self) -> None:
        """A flood during a pause is capped, then reported as LineTooLong."""
        parser = CommandParser(max_line=64, max_literal=64)
        parser.receive_data(b"a IDLE\r\n")
        for _ in range(100):
            parser.receive_data(b"x" * 1000)
        self.assertLessEqual(parser.buffered_size, 128)
        self.assertEqual(parser.expect_done(), [LineTooLong("a")])
        self.assertEqual(parser.receive_data(b"yyy\r\nb NOOP\r\n"), [Noop("b")])


_FRAGMENTS = [
    b"a",
    b"b1 ",
    b" ",
    b"\r\n",
    b"\n",
    b"\r",
    b"{3}\r\n",
    b"{2+}\r\n",
    b"{0}\r\n",
    b"{99}\r\n",
    b"{99+}\r\n",
    # With max_literal=50, 200 octets are still skipped; 201 close.
    b"{200+}\r\n",
    b"{201+}\r\n",
    b'"',
    b"\\",
    b"(",
    b")",
    b"[",
    b"]",
    b"<",
    b">",
    b"*",
    b"%",
    b"1:*",
    b"2,4",
    b"NIL",
    b"&",
    b"&-",
    b"\xc3\xa9",
    b"\x00",
    b"NOOP",
    b"LOGIN",
    b"SELECT",
    b"FETCH",
    b"UID",
    b"BODY.PEEK[",
    b"HEADER.FIELDS",
    b"1.2.MIME",
    b"STORE",
    b"+FLAGS",
    b"\\Seen",
    b"SEARCH",
    b"OR",
    b"NOT",
    b"CHARSET",
    b"SINCE",
    b"1-Feb-1994",
    b"APPEND",
    b'"17-Jul-1996 02:44:25 -0700"',
    b"LIST",
    b"RETURN",
    b"STATUS",
    b"MESSAGES",
    b"IDLE\r\n",
    b"DONE\r\n",
    b"AUTHENTICATE",
    b"PLAIN",
    b"=",
    b"AGZy",
    b"STARTTLS\r\n",
    b"ENABLE",
    b"ID",
    b"QRESYNC",
    b"CHANGEDSINCE",
    b"MODSEQ",
]
_imapish = st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(b"".join)
_inputs = st.one_of(st.binary(max_size=200), _imapish)


class RobustnessTests(SynchronousTestCase):
    """Any input gives well-formed events, never an exception."""

    @settings(max_examples=500)
    @given(_inputs)
    def test_any_bytes(self, data: bytes) -> None:
        """Every event is one of the event types; errors are BAD-like events."""
        for event in _drive(CommandParser(max_line=80, max_literal=50), [data]):
            self.assertIsInstance(event, _EVENT_TYPES)
            if isinstance(event, BadCommand):
                self.assertTrue(event.reason)
            if isinstance(event, Command):
                self.assertTrue(event.tag)

    @settings(max_examples=300)
    @given(_inputs, st.lists(st.integers(min_value=0, max_value=200)))
    def test_chunking_invariant(self, data: bytes, cuts: list[int]) -> None:
        """Any chunking of any input gives the same events."""
        points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
        chunks = [data[a:b] for a, b in zip(points, points[1:], strict=False)]
        self.assertEqual(
            _drive(CommandParser(max_line=80, max_literal=50), chunks),
            _drive(CommandParser(max_line=80, max_literal=50), [data]),
        )


class SettingsTests(SynchronousTestCase):
    """The ``[imap]`` settings section."""

    def test_defaults(self) -> None:
        """The section's defaults are the parser's."""
        imap = Settings().imap
        self.assertEqual(imap, IMAPSettings())
        self.assertEqual(
            (imap.max_line, imap.max_literal), (DEFAULT_MAX_LINE, DEFAULT_MAX_LITERAL)
        )

    def test_configured(self) -> None:
        """Both limits can be set, and must be positive."""
        s = settings_from_dict({"imap": {"max_line": 8192, "max_literal": 1000}})
        self.assertEqual((s.imap.max_line, s.imap.max_literal), (8192, 1000))
        from twistedmail.config import ConfigError

        self.assertRaises(ConfigError, settings_from_dict, {"imap": {"max_line": 0}})
