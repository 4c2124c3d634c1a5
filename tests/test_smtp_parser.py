"""Tests for L{twistedmail.smtp._parser}."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.address import Address
from twistedmail.replies import Reply
from twistedmail.smtp._parser import (
    BAD_RECIPIENT,
    BAD_SENDER,
    NON_ASCII_ADDRESS,
    SYNTAX_ERROR,
    UNKNOWN_COMMAND,
    UNKNOWN_PARAMETER,
    Auth,
    Bdat,
    Data,
    Hello,
    Help,
    Mail,
    Noop,
    NotImplementedCommand,
    ProtocolError,
    Quit,
    Rcpt,
    Rset,
    StartTLS,
    Vrfy,
    parse_command,
    xtext_decode,
    xtext_encode,
)

_ATEXT = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=10)
_labels = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12
)
_locals = st.lists(_atoms, min_size=1, max_size=4).map(".".join)
_domains = st.lists(_labels, min_size=1, max_size=4).map(".".join)
_verbs = st.sampled_from(
    [b"EHLO", b"HELO", b"LHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET"]
    + [b"NOOP", b"QUIT", b"VRFY", b"HELP", b"STARTTLS", b"AUTH", b"EXPN", b"XYZ"]
)
_fragments = st.sampled_from(
    [b" ", b"FROM:", b"TO:", b"<", b">", b"@", b":", b",", b"=", b"+", b'"']
    + [b"\\", b"SIZE", b"BODY=8BITMIME", b"NOTIFY=", b"ORCPT=rfc822;", b"LAST"]
    + [b"a", b"example.com", b"\xc3\xa9", b"\xff", b"\r", b"\x00", b"[1.2.3.4]"]
)


class CommandTests(SynchronousTestCase):
    """Each verb parses to its command value."""

    def test_simple_verbs(self) -> None:
        """Verbs without arguments, in any case."""
        self.assertEqual(parse_command(b"data"), Data())
        self.assertEqual(parse_command(b"RSET"), Rset())
        self.assertEqual(parse_command(b"QuIt"), Quit())
        self.assertEqual(parse_command(b"NOOP"), Noop())
        self.assertEqual(parse_command(b"NOOP anything at all"), Noop())
        self.assertEqual(parse_command(b"STARTTLS"), StartTLS())
        self.assertEqual(parse_command(b"HELP"), Help(""))
        self.assertEqual(parse_command(b"HELP MAIL"), Help("MAIL"))
        self.assertEqual(parse_command(b"VRFY alice"), Vrfy("alice"))
        self.assertEqual(parse_command(b"EXPN list"), NotImplementedCommand("EXPN"))

    def test_no_argument_allowed(self) -> None:
        """DATA, RSET, QUIT and STARTTLS take no argument: 501 5.5.4."""
        for line in [b"DATA x", b"RSET x", b"QUIT now", b"STARTTLS please"]:
            with self.assertRaises(ProtocolError, msg=line) as cm:
                parse_command(line)
            self.assertEqual(cm.exception.reply, SYNTAX_ERROR)

    def test_hello(self) -> None:
        """EHLO, HELO and LHLO need exactly one name."""
        self.assertEqual(
            parse_command(b"EHLO client.example"), Hello("EHLO", "client.example")
        )
        self.assertEqual(
            parse_command(b"helo [192.0.2.1]"), Hello("HELO", "[192.0.2.1]")
        )
        self.assertEqual(parse_command(b"LHLO x"), Hello("LHLO", "x"))
        for line in [b"EHLO", b"EHLO ", b"HELO a b"]:
            with self.assertRaises(ProtocolError, msg=line) as cm:
                parse_command(line)
            self.assertEqual(cm.exception.reply, SYNTAX_ERROR)

    def test_unknown(self) -> None:
        """Unknown verbs, non-UTF-8 and control characters give 500 5.5.2."""
        for line in [b"FOO", b"", b"MAIL\x00FROM:<>", b"\xff\xfe", b"NOOP\r"]:
            with self.assertRaises(ProtocolError, msg=line) as cm:
                parse_command(line)
            self.assertEqual(cm.exception.reply, UNKNOWN_COMMAND)

    def test_bdat(self) -> None:
        """BDAT takes a size and an optional LAST."""
        self.assertEqual(parse_command(b"BDAT 100"), Bdat(100, False))
        self.assertEqual(parse_command(b"BDAT 0 last"), Bdat(0, True))
        for line in [b"BDAT", b"BDAT -1", b"BDAT 1 FIRST", b"BDAT x", b"BDAT 1 LAST x"]:
            with self.assertRaises(ProtocolError, msg=line) as cm:
                parse_command(line)
            self.assertEqual(cm.exception.reply, SYNTAX_ERROR)

    def test_auth(self) -> None:
        """AUTH takes a mechanism and an optional initial response."""
        self.assertEqual(parse_command(b"AUTH plain"), Auth("PLAIN"))
        self.assertEqual(
            parse_command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
            Auth("PLAIN", "AGFsaWNlAHNlY3JldA=="),
        )
        self.assertEqual(parse_command(b"AUTH LOGIN ="), Auth("LOGIN", "="))
        for line in [b"AUTH", b"AUTH PLAIN a b", b"AUTH PLAIN !!", b"AUTH P*AIN"]:
            with self.assertRaises(ProtocolError, msg=line):
                parse_command(line)


class MailTests(SynchronousTestCase):
    """MAIL FROM: reverse paths and parameters."""

    def test_plain(self) -> None:
        """A bracketed mailbox, with or without a space after the colon."""
        m = parse_command(b"MAIL FROM:<Alice@Example.COM>")
        self.assertEqual(m, Mail(Address("Alice", "example.com")))
        self.assertEqual(
            parse_command(b"mail from: <a@b.example>"), Mail(Address("a", "b.example"))
        )

    def test_null(self) -> None:
        """<> is the null reverse path."""
        m = parse_command(b"MAIL FROM:<>")
        assert isinstance(m, Mail)
        self.assertIsNone(m.sender)
        self.assertEqual(m.sender_text, "")

    def test_source_route(self) -> None:
        """A source route is accepted and dropped (RFC 5321 §3.6.1)."""
        m = parse_command(b"MAIL FROM:<@a.example,@b.example:u@c.example>")
        self.assertEqual(m, Mail(Address("u", "c.example")))

    def test_params(self) -> None:
        """SIZE, BODY, SMTPUTF8, RET, ENVID and AUTH."""
        m = parse_command(
            b"MAIL FROM:<a@b.example> size=1000 BODY=8bitmime RET=hdrs "
            b"ENVID=QQ+2B1 AUTH=a+40b.example SMTPUTF8"
        )
        self.assertEqual(
            m,
            Mail(
                Address("a", "b.example"),
                size=1000,
                body="8BITMIME",
                smtputf8=True,
                ret="HDRS",
                envid="QQ+1",
                auth="a@b.example",
                has_params=True,
            ),
        )

    def test_bad_params(self) -> None:
        """Malformed parameters give 501; unknown ones 555 (RFC 5321 §4.1.1.11)."""
        cases: list[tuple[bytes, Reply]] = [
            (b"MAIL FROM:<a@b.example> SIZE=x", SYNTAX_ERROR),
            (b"MAIL FROM:<a@b.example> SIZE", SYNTAX_ERROR),
            (b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2", SYNTAX_ERROR),
            (b"MAIL FROM:<a@b.example> RET=ALL", SYNTAX_ERROR),
            (b"MAIL FROM:<a@b.example> ENVID=a+zz", SYNTAX_ERROR),
            (b"MAIL FROM:<a@b.example> SMTPUTF8=yes", SYNTAX_ERROR),
            (b"MAIL FROM:<a@b.example> =x", SYNTAX_ERROR),
            (b"MAIL FROM:<a@b.example> BODY=BINARYMIME", UNKNOWN_PARAMETER),
            (b"MAIL FROM:<a@b.example> XFOO=1", UNKNOWN_PARAMETER),
            (b"MAIL FROM:<a@b.example> NOTIFY=NEVER", UNKNOWN_PARAMETER),
            (b"MAIL TO:<a@b.example>", SYNTAX_ERROR),
            (b"MAIL", SYNTAX_ERROR),
        ]
        for line, reply in cases:
            with self.assertRaises(ProtocolError, msg=line) as cm:
                parse_command(line)
            self.assertEqual(cm.exception.reply, reply, line)

    def test_bad_paths(self) -> None:
        """Malformed reverse paths give 501 5.1.7."""
        for path in [
            b"a@b.example",
            b"<a@b.example",
            b"<<a@b.example>>",
            b"<a@b.example>x",
            b"<a>",
            b"<@a.example>",
            b"<@a.example:>",
            b"<@bad_domain:u@c.example>",
            b"<a@b.example.>",
            b"<a@[1.2.3.4>",
        ]:
            with self.assertRaises(ProtocolError, msg=path) as cm:
                parse_command(b"MAIL FROM:" + path)
            self.assertEqual(cm.exception.reply, BAD_SENDER, path)

    def test_utf8(self) -> None:
        """UTF-8 addresses need SMTPUTF8 on the same MAIL (RFC 6531 §3.4)."""
        line = "MAIL FROM:<jöran@bücher.example>".encode()
        with self.assertRaises(ProtocolError) as cm:
            parse_command(line)
        self.assertEqual(cm.exception.reply, NON_ASCII_ADDRESS)
        m = parse_command(line + b" SMTPUTF8")
        self.assertEqual(
            m,
            Mail(
                Address("jöran", "xn--bcher-kva.example"),
                smtputf8=True,
                has_params=True,
            ),
        )


class RcptTests(SynchronousTestCase):
    """RCPT TO: forward paths and DSN parameters."""

    def test_plain(self) -> None:
        """A bracketed mailbox."""
        self.assertEqual(
            parse_command(b"RCPT TO:<bob@example.com>"),
            Rcpt(Address("bob", "example.com")),
        )

    def test_postmaster(self) -> None:
        """<Postmaster> alone is allowed (RFC 5321 §4.1.1.3)."""
        self.assertEqual(parse_command(b"RCPT TO:<Postmaster>"), Rcpt(None))

    def test_quoted(self) -> None:
        """A quoted local part may hold @, > and spaces."""
        r = parse_command(b'RCPT TO:<"a >b@c"@example.com> NOTIFY=NEVER')
        self.assertEqual(
            r,
            Rcpt(
                Address('"a >b@c"', "example.com"), notify=("NEVER",), has_params=True
            ),
        )

    def test_dsn(self) -> None:
        """NOTIFY and ORCPT (RFC 3461 §4.1, §4.2)."""
        r = parse_command(
            b"RCPT TO:<b@example.com> NOTIFY=success,delay ORCPT=rfc822;b+40example.com"
        )
        self.assertEqual(
            r,
            Rcpt(
                Address("b", "example.com"),
                notify=("SUCCESS", "DELAY"),
                orcpt="rfc822;b+40example.com",
                has_params=True,
            ),
        )

    def test_bad(self) -> None:
        """Bad paths give 501 5.1.3; bad DSN parameters 501 5.5.4."""
        cases: list[tuple[bytes, Reply]] = [
            (b"RCPT TO:<>", BAD_RECIPIENT),
            (b"RCPT TO:b@example.com", BAD_RECIPIENT),
            (b"RCPT TO:<b@example.com", BAD_RECIPIENT),
            (b"RCPT TO:<b@@example.com>", BAD_RECIPIENT),
            (b"RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS", SYNTAX_ERROR),
            (b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,SUCCESS", SYNTAX_ERROR),
            (b"RCPT TO:<b@example.com> NOTIFY=SOMETIMES", SYNTAX_ERROR),
            (b"RCPT TO:<b@example.com> ORCPT=rfc822", SYNTAX_ERROR),
            (b"RCPT TO:<b@example.com> ORCPT=rfc822;a+4", SYNTAX_ERROR),
            (b"RCPT TO:<b@example.com> SIZE=10", UNKNOWN_PARAMETER),
            (b"RCPT FROM:<b@example.com>", SYNTAX_ERROR),
        ]
        for line, reply in cases:
            with self.assertRaises(ProtocolError, msg=line) as cm:
                parse_command(line)
            self.assertEqual(cm.exception.reply, reply, line)

    def test_utf8(self) -> None:
        """A UTF-8 recipient is accepted only in an SMTPUTF8 transaction."""
        line = "RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>".encode()
        with self.assertRaises(ProtocolError) as cm:
            parse_command(line)
        self.assertEqual(cm.exception.reply, NON_ASCII_ADDRESS)
        r = parse_command(line, smtputf8=True)
        assert isinstance(r, Rcpt) and r.recipient is not None
        self.assertEqual(r.recipient.local, "δοκιμή")
        self.assertTrue(r.recipient.domain.startswith("xn--"))


class XtextTests(SynchronousTestCase):
    """RFC 3461 §4 xtext."""

    @given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255)))
    def test_round_trip(self, text: str) -> None:
        """Decoding an encoding gives the text back."""
        self.assertEqual(xtext_decode(xtext_encode(text)), text)

    def test_bad(self) -> None:
        """Lower-case hex, a lone + and = are not xtext."""
        for bad in ["+4a", "+", "a=b", "a b"]:
            with self.assertRaises(ProtocolError, msg=bad):
                xtext_decode(bad)


class PropertyTests(SynchronousTestCase):
    """Properties over generated input."""

    @given(st.binary(max_size=600))
    def test_random_bytes(self, line: bytes) -> None:
        """Any bytes give a command or a ProtocolError, never anything else."""
        for utf8 in (False, True):
            try:
                parse_command(line, smtputf8=utf8)
            except ProtocolError as e:
                self.assertIsInstance(e.reply, Reply)

    @given(_verbs, st.lists(_fragments, max_size=12))
    def test_command_shaped_bytes(self, verb: bytes, parts: list[bytes]) -> None:
        """Command-shaped junk gives a command or a ProtocolError."""
        try:
            parse_command(verb + b" " + b"".join(parts), smtputf8=True)
        except ProtocolError as e:
            self.assertIn(e.reply.code, (500, 501, 502, 553, 555))

    @given(_locals, _domains, st.lists(_domains, max_size=3))
    def test_path_round_trip(self, local: str, domain: str, route: list[str]) -> None:
        """A formatted path parses back to its mailbox; a route is dropped."""
        prefix = ",".join("@" + d for d in route) + ":" if route else ""
        line = f"RCPT TO:<{prefix}{local}@{domain}>".encode()
        self.assertEqual(parse_command(line), Rcpt(Address(local, domain)))
        line = f"MAIL FROM:<{prefix}{local}@{domain}>".encode()
        self.assertEqual(parse_command(line), Mail(Address(local, domain)))

    @given(
        st.integers(min_value=0, max_value=10**20 - 1),
        st.sampled_from(["7BIT", "8BITMIME"]),
        st.text(
            alphabet=st.characters(min_codepoint=32, max_codepoint=126),
            min_size=1,
            max_size=30,
        ),
    )
    def test_param_round_trip(self, size: int, body: str, envid: str) -> None:
        """Formatted MAIL parameters parse back to their values."""
        line = f"MAIL FROM:<a@b.example> SIZE={size} BODY={body} ENVID={xtext_encode(envid)}"
        self.assertEqual(
            parse_command(line.encode()),
            Mail(
                Address("a", "b.example"),
                size=size,
                body=body,
                envid=envid,
                has_params=True,
            ),
        )
