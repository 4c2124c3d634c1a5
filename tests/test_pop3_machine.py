"""Tests for L{twistedmail.pop3._machine}: the sans-I/O POP3 session."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.pop3._machine import (
    COMMAND_LINE_LIMIT,
    COMMANDS,
    PIPELINE_LIMIT,
    TRANSITIONS,
    CloseRequested,
    Listing,
    LoginRequested,
    MachineConfig,
    MessageRequested,
    POP3Machine,
    ProtocolError,
    Refused,
    Session,
    State,
    TLSRequested,
    UpdateRequested,
    _top,
    format_message,
    stuff_message,
    uidl_for,
    uidls_for,
)

LISTING = Listing([120, 200, 5000], ["uid-one", "uid-two", "uid-three"])


def machine(
    *, tls: bool = False, stls: bool = True, plaintext: bool = False, **kw: object
) -> POP3Machine:
    """A greeted machine (greeting taken)."""
    config = MachineConfig(
        hostname="pop.example.test",
        stls=stls,
        plaintext_auth=plaintext,
        **kw,  # type: ignore[arg-type]
    )
    m = POP3Machine(config, Session(peer="192.0.2.1", tls_active=tls))
    m.greet()
    m.data_to_send()
    return m


def out(m: POP3Machine) -> bytes:
    """Everything the machine wants to send now."""
    return b"".join(m.data_to_send())


def logged_in(listing: Listing = LISTING) -> POP3Machine:
    """A machine in TRANSACTION with the given listing."""
    m = machine(tls=True)
    [event] = m.receive_data(b"USER alice\r\n" + b"PASS pw\r\n")
    assert isinstance(event, LoginRequested)
    m.login_succeeded(listing)
    out(m)
    return m


class GreetingTests(SynchronousTestCase):
    """The greeting and the capability list."""

    def test_greeting(self) -> None:
        """The greeting is +OK with the hostname and no APOP timestamp."""
        m = POP3Machine(MachineConfig(hostname="pop.example.test"), Session())
        m.greet()
        self.assertEqual(out(m), b"+OK pop.example.test POP3 ready\r\n")

    def test_capa_before_tls(self) -> None:
        """Before TLS, CAPA offers STLS and neither USER nor SASL."""
        m = machine()
        m.receive_data(b"CAPA\r\n")
        self.assertEqual(
            out(m),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n"
            b"AUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\n"
            b"IMPLEMENTATION twistedmail\r\n.\r\n",
        )

    def test_capa_after_tls(self) -> None:
        """Under TLS, CAPA offers USER and SASL PLAIN and no STLS."""
        m = machine(tls=True)
        m.receive_data(b"capa\r\n")
        self.assertEqual(
            out(m),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n"
            b"RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
            b"IMPLEMENTATION twistedmail\r\n.\r\n",
        )

    def test_capa_plaintext_allowed(self) -> None:
        """With plaintext logins allowed, USER and SASL show before TLS too."""
        m = machine(plaintext=True)
        m.receive_data(b"CAPA\r\n")
        caps = out(m).split(b"\r\n")
        self.assertIn(b"USER", caps)
        self.assertIn(b"SASL PLAIN", caps)
        self.assertIn(b"STLS", caps)

    def test_capa_without_stls(self) -> None:
        """Without a TLS context, STLS is neither offered nor accepted."""
        m = machine(stls=False)
        m.receive_data(b"CAPA\r\nSTLS\r\n")
        data = out(m)
        self.assertNotIn(b"STLS\r\n", data)
        self.assertTrue(data.endswith(b"-ERR STLS not available\r\n"), data)

    def test_capa_in_transaction(self) -> None:
        """CAPA works after login; login capabilities are gone then."""
        m = logged_in()
        m.receive_data(b"CAPA\r\n")
        data = out(m)
        self.assertTrue(data.startswith(b"+OK"))
        self.assertNotIn(b"USER\r\n", data)
        self.assertIn(b"TOP\r\n", data)

    def test_capa_arguments(self) -> None:
        """CAPA takes no argument."""
        m = machine()
        m.receive_data(b"CAPA x\r\n")
        self.assertEqual(out(m), b"-ERR Bad arguments\r\n")


class AuthorizationTests(SynchronousTestCase):
    """USER/PASS, AUTH PLAIN and STLS (RFC 1939 §7, RFC 5034, RFC 2595)."""

    def test_user_pass(self) -> None:
        """USER then PASS asks for a login with the whole PASS argument."""
        m = machine(tls=True)
        events = m.receive_data(b"USER alice@example.test\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out(m), b"+OK Send PASS\r\n")
        [event] = m.receive_data(b"PASS two words\r\n")
        self.assertEqual(
            event, LoginRequested(b"alice@example.test", b"two words", "USER")
        )
        self.assertTrue(m.pending)
        m.login_succeeded(LISTING)
        self.assertEqual(out(m), b"+OK Logged in, 3 messages\r\n")
        self.assertIs(m.state, State.TRANSACTION)
        self.assertEqual(m.session.user, "alice@example.test")

    def test_login_failed(self) -> None:
        """A refused login answers with the adapter's reply; USER is needed again."""
        m = machine(tls=True)
        m.receive_data(b"USER alice\r\nPASS bad\r\n")
        m.login_failed(b"-ERR [AUTH] Authentication failed\r\n")
        self.assertEqual(
            out(m), b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n"
        )
        self.assertIs(m.state, State.AUTHORIZATION)
        m.receive_data(b"PASS bad\r\n")
        self.assertEqual(out(m), b"-ERR Send USER first\r\n")

    def test_pass_without_user(self) -> None:
        """PASS needs USER just before it."""
        m = machine(tls=True)
        m.receive_data(b"USER alice\r\nNOOP\r\nPASS pw\r\n")
        self.assertEqual(
            out(m),
            b"+OK Send PASS\r\n-ERR Command not valid in this state\r\n"
            b"-ERR Send USER first\r\n",
        )

    def test_user_without_name(self) -> None:
        """USER needs a name."""
        m = machine(tls=True)
        m.receive_data(b"USER\r\n")
        self.assertEqual(out(m), b"-ERR Bad arguments\r\n")

    def test_plaintext_refused(self) -> None:
        """Before TLS, USER, PASS and AUTH PLAIN get -ERR [AUTH]."""
        m = machine()
        m.receive_data(b"USER alice\r\nPASS pw\r\nAUTH PLAIN AGFsaWNlAHB3\r\n")
        reply = (
            b"-ERR [AUTH] Plaintext authentication disallowed on non-secure"
            b" connections; use STLS\r\n"
        )
        self.assertEqual(out(m), reply * 3)

    def test_auth_plain_initial_response(self) -> None:
        """AUTH PLAIN with an initial response logs in at once."""
        m = machine(tls=True)
        token = base64.b64encode(b"\0alice\0pass word")
        [event] = m.receive_data(b"AUTH PLAIN " + token + b"\r\n")
        self.assertEqual(event, LoginRequested(b"alice", b"pass word", "PLAIN"))

    def test_auth_plain_continuation(self) -> None:
        """AUTH PLAIN without a response gets "+ " and reads the next line."""
        m = machine(tls=True)
        self.assertEqual(m.receive_data(b"AUTH plain\r\n"), [])
        self.assertEqual(out(m), b"+ \r\n")
        self.assertIs(m.state, State.AUTH_CONTINUE)
        token = base64.b64encode(b"alice\0alice\0pw")
        [event] = m.receive_data(token + b"\r\n")
        self.assertEqual(event, LoginRequested(b"alice", b"pw", "PLAIN"))

    def test_auth_plain_cancel(self) -> None:
        """ "*" cancels the exchange."""
        m = machine(tls=True)
        m.receive_data(b"AUTH PLAIN\r\n*\r\nNOOP\r\n")
        self.assertEqual(
            out(m),
            b"+ \r\n-ERR Authentication cancelled\r\n"
            b"-ERR Command not valid in this state\r\n",
        )

    def test_auth_bad_base64(self) -> None:
        """Bad base64, inline or continued, is -ERR and the session goes on."""
        m = machine(tls=True)
        m.receive_data(b"AUTH PLAIN !!!!\r\nAUTH PLAIN\r\nnot base64\r\nCAPA\r\n")
        data = out(m)
        self.assertTrue(
            data.startswith(
                b"-ERR Invalid base64 data\r\n+ \r\n-ERR Invalid base64 data\r\n"
                b"+OK Capability"
            ),
            data,
        )

    def test_auth_malformed_plain(self) -> None:
        """PLAIN needs exactly three NUL-separated parts and a user name."""
        m = machine(tls=True)
        for raw in (b"alice", b"\0\0pw", b"a\0b\0c\0d"):
            m.receive_data(b"AUTH PLAIN " + base64.b64encode(raw) + b"\r\n")
            self.assertEqual(out(m), b"-ERR Invalid SASL PLAIN response\r\n")

    def test_auth_other_authzid(self) -> None:
        """Logging in as someone else (an authorization identity) is refused."""
        m = machine(tls=True)
        m.receive_data(b"AUTH PLAIN " + base64.b64encode(b"bob\0alice\0pw") + b"\r\n")
        self.assertEqual(out(m), b"-ERR [AUTH] Cannot log in as another user\r\n")

    def test_auth_empty_initial_response(self) -> None:
        """ "=" is an empty initial response (RFC 5034 §4): malformed PLAIN."""
        m = machine(tls=True)
        m.receive_data(b"AUTH PLAIN =\r\n")
        self.assertEqual(out(m), b"-ERR Invalid SASL PLAIN response\r\n")

    def test_auth_mechanisms(self) -> None:
        """AUTH alone lists the mechanisms; others are refused."""
        m = machine(tls=True)
        m.receive_data(b"AUTH\r\nAUTH CRAM-MD5\r\nAUTH PLAIN a b\r\n")
        self.assertEqual(
            out(m),
            b"+OK Supported mechanisms follow\r\nPLAIN\r\n.\r\n"
            b"-ERR Unsupported authentication mechanism\r\n"
            b"-ERR Bad arguments\r\n",
        )

    def test_auth_response_line_limit(self) -> None:
        """A SASL response line longer than the limit is -ERR, session usable."""
        m = machine(tls=True)
        m.receive_data(b"AUTH PLAIN\r\n")
        out(m)
        m.receive_data(b"A" * 5000 + b"\r\nNOOP\r\n")
        self.assertEqual(
            out(m), b"-ERR Line too long\r\n-ERR Command not valid in this state\r\n"
        )

    def test_apop_not_offered(self) -> None:
        """APOP is not offered: the directory holds only password hashes."""
        m = machine(tls=True)
        m.receive_data(b"APOP alice 0123456789abcdef0123456789abcdef\r\n")
        self.assertEqual(out(m), b"-ERR Unknown command\r\n")

    def test_stls(self) -> None:
        """STLS: +OK, input sent after it is dropped, then a fresh session."""
        m = machine()
        events = m.receive_data(b"STLS\r\nUSER injected\r\n")
        self.assertEqual(events, [TLSRequested()])
        self.assertEqual(out(m), b"+OK Begin TLS negotiation\r\n")
        self.assertIs(m.state, State.STARTING_TLS)
        self.assertEqual(m.receive_data(b"NOOP\r\n"), [])
        self.assertEqual(m.tls_started(), [])
        self.assertTrue(m.session.tls_active)
        m.receive_data(b"PASS x\r\nSTLS\r\n")
        self.assertEqual(out(m), b"-ERR Send USER first\r\n-ERR TLS already active\r\n")

    def test_tls_started_unasked(self) -> None:
        """tls_started without STLS is a programming error."""
        self.assertRaises(RuntimeError, machine().tls_started)

    def test_quit(self) -> None:
        """QUIT before login says goodbye and closes; nothing more is read."""
        m = machine()
        events = m.receive_data(b"QUIT\r\nNOOP\r\n")
        self.assertEqual(events, [CloseRequested("QUIT")])
        self.assertEqual(out(m), b"+OK pop.example.test POP3 signing off\r\n")
        self.assertEqual(m.receive_data(b"NOOP\r\n"), [])
        self.assertEqual(out(m), b"")

    def test_answer_after_close(self) -> None:
        """An answer that comes after close() (a timeout) changes nothing."""
        m = machine(tls=True)
        m.receive_data(b"USER a\r\nPASS b\r\n")
        out(m)
        m.close(b"-ERR Disconnected for inactivity\r\n")
        self.assertEqual(m.login_succeeded(LISTING), [])
        self.assertIs(m.state, State.CLOSED)
        self.assertEqual(out(m), b"-ERR Disconnected for inactivity\r\n")

    def test_answer_without_request(self) -> None:
        """Answers that nothing asked for are programming errors."""
        m = machine()
        self.assertRaises(RuntimeError, m.login_succeeded, Listing([], []))
        self.assertRaises(RuntimeError, m.message_read, 1, b".\r\n")
        self.assertRaises(RuntimeError, m.update_done, True)


class TransactionTests(SynchronousTestCase):
    """STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP (RFC 1939 §5, §7)."""

    def test_stat(self) -> None:
        """STAT gives the count and total size."""
        m = logged_in()
        m.receive_data(b"STAT\r\n")
        self.assertEqual(out(m), b"+OK 3 5320\r\n")

    def test_list(self) -> None:
        """LIST gives every message's size; LIST n one."""
        m = logged_in()
        m.receive_data(b"LIST\r\nLIST 2\r\n")
        self.assertEqual(
            out(m),
            b"+OK 3 messages (5320 octets)\r\n1 120\r\n2 200\r\n3 5000\r\n.\r\n"
            b"+OK 2 200\r\n",
        )

    def test_uidl(self) -> None:
        """UIDL gives the unique-ids; UIDL n one."""
        m = logged_in()
        m.receive_data(b"UIDL\r\nuidl 3\r\n")
        self.assertEqual(
            out(m),
            b"+OK Unique-ID listing follows\r\n1 uid-one\r\n2 uid-two\r\n"
            b"3 uid-three\r\n.\r\n+OK 3 uid-three\r\n",
        )

    def test_listing_lengths(self) -> None:
        """A listing's sizes and unique-ids must pair up."""
        self.assertRaises(ValueError, Listing, [1, 2], ["a"])
        self.assertEqual(len(LISTING), 3)

    def test_listing_shared(self) -> None:
        """One listing serves several sessions (the adapter keeps it from
        one to the next): its LIST and UIDL answers are made once, and a
        session's deletions show only in that session."""
        listing = Listing([120, 200, 5000], ["uid-one", "uid-two", "uid-three"])
        first, second = logged_in(listing), logged_in(listing)
        first.receive_data(b"DELE 1\r\nLIST\r\nUIDL\r\nSTAT\r\n")
        self.assertEqual(
            out(first),
            b"+OK Message 1 deleted\r\n+OK 2 messages (5200 octets)\r\n"
            b"2 200\r\n3 5000\r\n.\r\n+OK Unique-ID listing follows\r\n"
            b"2 uid-two\r\n3 uid-three\r\n.\r\n+OK 2 5200\r\n",
        )
        second.receive_data(b"LIST\r\nUIDL\r\n")
        self.assertEqual(
            out(second),
            b"+OK 3 messages (5320 octets)\r\n1 120\r\n2 200\r\n3 5000\r\n.\r\n"
            b"+OK Unique-ID listing follows\r\n1 uid-one\r\n2 uid-two\r\n"
            b"3 uid-three\r\n.\r\n",
        )
        self.assertIs(listing.size_lines, listing.size_lines)
        self.assertEqual(
            listing.uidl_lines, b"1 uid-one\r\n2 uid-two\r\n3 uid-three\r\n.\r\n"
        )
        self.assertEqual(listing.total, 5320)

    def test_uidl_after_dele(self) -> None:
        """UIDL leaves deleted messages out and keeps the others' numbers."""
        m = logged_in()
        m.receive_data(b"DELE 2\r\nUIDL\r\n")
        self.assertEqual(
            out(m),
            b"+OK Message 2 deleted\r\n+OK Unique-ID listing follows\r\n"
            b"1 uid-one\r\n3 uid-three\r\n.\r\n",
        )

    def test_empty_maildrop(self) -> None:
        """An empty maildrop lists nothing."""
        m = logged_in(Listing([], []))
        m.receive_data(b"STAT\r\nLIST\r\nUIDL\r\nRETR 1\r\n")
        self.assertEqual(
            out(m),
            b"+OK 0 0\r\n+OK 0 messages (0 octets)\r\n.\r\n"
            b"+OK Unique-ID listing follows\r\n.\r\n-ERR No such message\r\n",
        )

    def test_retr(self) -> None:
        """RETR asks for the message; the answer goes out with its status."""
        m = logged_in()
        [event] = m.receive_data(b"RETR 2\r\nNOOP\r\n")
        self.assertEqual(event, MessageRequested(1, None))
        self.assertEqual(out(m), b"")
        m.message_read(7, b"Hi: x\r\n.\r\n")
        self.assertEqual(out(m), b"+OK 7 octets\r\nHi: x\r\n.\r\n+OK\r\n")

    def test_retr_failed(self) -> None:
        """A message that cannot be read is -ERR; the session goes on."""
        m = logged_in()
        m.receive_data(b"RETR 1\r\n")
        m.message_failed(b"-ERR gone\r\n")
        m.receive_data(b"NOOP\r\n")
        self.assertEqual(out(m), b"-ERR gone\r\n+OK\r\n")

    def test_top(self) -> None:
        """TOP asks for the message with a line count."""
        m = logged_in()
        [event] = m.receive_data(b"TOP 3 0\r\n")
        self.assertEqual(event, MessageRequested(2, 0))

    def test_bad_numbers(self) -> None:
        """RETR 0, RETR 99999, TOP 1 -1 and friends are -ERR with a reason."""
        m = logged_in()
        m.receive_data(
            b"RETR 0\r\nRETR 99999\r\nTOP 1 -1\r\nRETR x\r\nRETR\r\n"
            b"RETR 1 2\r\nLIST 4\r\nUIDL -1\r\nDELE 99999999999999\r\n"
        )
        self.assertEqual(
            out(m).split(b"\r\n")[:-1],
            [
                b"-ERR No such message",
                b"-ERR No such message",
                b"-ERR Bad arguments",
                b"-ERR Bad arguments",
                b"-ERR Bad arguments",
                b"-ERR Bad arguments",
                b"-ERR No such message",
                b"-ERR Bad arguments",
                b"-ERR Bad arguments",
            ],
        )
        self.assertIs(m.state, State.TRANSACTION)

    def test_dele_rset(self) -> None:
        """DELE hides a message from every command; RSET brings it back."""
        m = logged_in()
        m.receive_data(
            b"DELE 1\r\nDELE 1\r\nSTAT\r\nLIST\r\nLIST 1\r\nRETR 1\r\nTOP 1 0\r\n"
            b"UIDL 1\r\nRSET\r\nSTAT\r\n"
        )
        self.assertEqual(
            out(m),
            b"+OK Message 1 deleted\r\n-ERR Message is deleted\r\n+OK 2 5200\r\n"
            b"+OK 2 messages (5200 octets)\r\n2 200\r\n3 5000\r\n.\r\n"
            + b"-ERR Message is deleted\r\n" * 4
            + b"+OK 3 messages (5320 octets)\r\n+OK 3 5320\r\n",
        )

    def test_quit_update(self) -> None:
        """QUIT in TRANSACTION asks for the deletions, then says goodbye."""
        m = logged_in()
        [event] = m.receive_data(b"DELE 3\r\nDELE 1\r\nQUIT\r\n")
        self.assertEqual(event, UpdateRequested((0, 2)))
        self.assertIs(m.state, State.UPDATE)
        self.assertEqual(m.update_done(True), [CloseRequested("QUIT")])
        self.assertEqual(
            out(m),
            b"+OK Message 3 deleted\r\n+OK Message 1 deleted\r\n"
            b"+OK pop.example.test POP3 signing off\r\n",
        )

    def test_update_failed(self) -> None:
        """A failed UPDATE is -ERR [SYS/TEMP] (RFC 2449 §8.1.2)."""
        m = logged_in()
        m.receive_data(b"DELE 1\r\nQUIT\r\n")
        out(m)
        m.update_done(False)
        self.assertEqual(
            out(m), b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n"
        )
        self.assertIs(m.state, State.CLOSED)

    def test_noop_rset_arguments(self) -> None:
        """NOOP and RSET take no argument."""
        m = logged_in()
        m.receive_data(b"NOOP x\r\nRSET x\r\nSTAT x\r\nNOOP\r\n")
        self.assertEqual(out(m), b"-ERR Bad arguments\r\n" * 3 + b"+OK\r\n")

    def test_wrong_state(self) -> None:
        """Login commands after login, mailbox commands before it: -ERR."""
        m = logged_in()
        m.receive_data(b"USER a\r\nPASS b\r\nAUTH PLAIN\r\nSTLS\r\n")
        self.assertEqual(out(m), b"-ERR Command not valid in this state\r\n" * 4)
        m = machine(tls=True)
        m.receive_data(b"STAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nRSET\r\nNOOP\r\n")
        self.assertEqual(out(m), b"-ERR Command not valid in this state\r\n" * 6)

    def test_unknown_command(self) -> None:
        """Unknown commands (and non-ASCII ones) are -ERR."""
        m = machine()
        m.receive_data(b"HELO x\r\n\xff\xfe\r\n\r\n")
        self.assertEqual(out(m), b"-ERR Unknown command\r\n" * 3)

    def test_pipelining(self) -> None:
        """Pipelined commands are answered in order, the waits included."""
        m = logged_in()
        [event] = m.receive_data(b"RETR 1\r\nRETR 2\r\nSTAT\r\n")
        self.assertEqual(event, MessageRequested(0, None))
        [event] = m.message_read(1, b"a\r\n.\r\n")
        self.assertEqual(event, MessageRequested(1, None))
        self.assertEqual(m.message_read(1, b"b\r\n.\r\n"), [])
        self.assertEqual(
            out(m),
            b"+OK 1 octets\r\na\r\n.\r\n+OK 1 octets\r\nb\r\n.\r\n+OK 3 5320\r\n",
        )

    def test_hold(self) -> None:
        """While held (the transport is full), no further command is read."""
        m = logged_in()
        m.hold()
        self.assertEqual(m.receive_data(b"RETR 1\r\n"), [])
        self.assertEqual(m.buffered, 8)
        self.assertEqual(m.release(), [MessageRequested(0, None)])


class FramingTests(SynchronousTestCase):
    """Line framing, the 255-octet limit and error counting."""

    def test_line_limit(self) -> None:
        """A 255-octet line (CRLF included) is read; 256 is -ERR."""
        m = machine(tls=True)
        name = b"a" * (COMMAND_LINE_LIMIT - len(b"USER \r\n"))
        m.receive_data(b"USER " + name + b"\r\n")
        self.assertEqual(out(m), b"+OK Send PASS\r\n")
        m.receive_data(b"USER " + name + b"a\r\nNOOP\r\n")
        self.assertEqual(
            out(m), b"-ERR Line too long\r\n-ERR Command not valid in this state\r\n"
        )

    def test_long_line_in_pieces(self) -> None:
        """A long line is refused once however it arrives; the rest is dropped."""
        m = machine()
        for _ in range(10):
            m.receive_data(b"x" * 100)
        m.receive_data(b"still the long line\r\nCAPA\r\n")
        data = out(m)
        self.assertTrue(data.startswith(b"-ERR Line too long\r\n+OK Capability"), data)
        self.assertEqual(data.count(b"-ERR"), 1)

    def test_bare_lf(self) -> None:
        """A bare LF ends a line too."""
        m = machine()
        m.receive_data(b"CAPA\nQUIT\n")
        self.assertTrue(out(m).endswith(b"signing off\r\n"))

    def test_chunking(self) -> None:
        """Commands split across reads are the same commands."""
        m = logged_in()
        for c in b"STAT\r\nLIST 1\r\n":
            m.receive_data(bytes([c]))
        self.assertEqual(out(m), b"+OK 3 5320\r\n+OK 1 120\r\n")

    def test_ten_errors(self) -> None:
        """Ten -ERR replies in a row close the session."""
        m = machine()
        events = m.receive_data(b"BAD\r\n" * 9)
        self.assertEqual(len(events), 9)
        self.assertNotIn(CloseRequested("too many errors"), events)
        events = m.receive_data(b"BAD\r\nCAPA\r\n")
        self.assertEqual(events[-1], CloseRequested("too many errors"))
        self.assertEqual(
            out(m),
            b"-ERR Unknown command\r\n" * 10
            + b"-ERR Too many errors, closing connection\r\n",
        )
        self.assertIs(m.state, State.CLOSED)

    def test_errors_must_be_in_a_row(self) -> None:
        """A +OK resets the count."""
        m = machine()
        m.receive_data((b"BAD\r\n" * 9 + b"CAPA\r\n") * 3)
        self.assertIs(m.state, State.AUTHORIZATION)

    def test_refused_events(self) -> None:
        """Each -ERR is reported for the log."""
        m = machine()
        self.assertEqual(
            m.receive_data(b"BAD\r\n"),
            [Refused(b"-ERR Unknown command\r\n", "Unknown command")],
        )

    def test_pipeline_limit(self) -> None:
        """Too much input while a command waits closes the session."""
        m = logged_in()
        m.receive_data(b"RETR 1\r\n")
        events = m.receive_data(b"NOOP\r\n" * (PIPELINE_LIMIT // 6 + 1))
        self.assertEqual(events, [CloseRequested("too much pipelined input")])

    def test_close(self) -> None:
        """close() sends a last line and closes, once."""
        m = logged_in()
        self.assertEqual(m.close(b"-ERR bye\r\n"), [CloseRequested("-ERR bye")])
        self.assertEqual(m.close(b"-ERR again\r\n"), [])
        self.assertEqual(out(m), b"-ERR bye\r\n")


class TableTests(SynchronousTestCase):
    """The (state, command) table."""

    def test_every_pair(self) -> None:
        """Every (state, command) pair either has a handler or raises."""
        for state in State:
            for name in sorted(COMMANDS) + ["XYZZY"]:
                m = logged_in() if state is State.TRANSACTION else machine(tls=True)
                m.state = state
                if (state, name) in TRANSITIONS:
                    self.assertTrue(hasattr(m, TRANSITIONS[state, name]))
                else:
                    self.assertRaises(ProtocolError, m.dispatch, name, b"")


class FormatTests(SynchronousTestCase):
    """format_message: CRLF, byte-stuffing, TOP."""

    def test_plain(self) -> None:
        """A CRLF message is sent as it is, then the dot line."""
        self.assertEqual(
            format_message(b"A: b\r\n\r\nbody\r\n"), (14, b"A: b\r\n\r\nbody\r\n.\r\n")
        )

    def test_parts(self) -> None:
        """stuff_message gives the body and its end apart; a message with
        nothing to stuff is not copied."""
        data = b"A: b\r\n\r\nbody\r\n"
        octets, body, end = stuff_message(data)
        self.assertEqual((octets, end), (14, b".\r\n"))
        self.assertIs(body, data)
        self.assertEqual(
            stuff_message(b"A: b\r\n\r\nno end"),
            (14, b"A: b\r\n\r\nno end", b"\r\n.\r\n"),
        )

    def test_retr_parts(self) -> None:
        """message_read with the end apart sends the same bytes."""
        m = logged_in()
        m.receive_data(b"RETR 1\r\n")
        m.message_read(*stuff_message(b"A: b\r\n\r\n.x\r\n"))
        self.assertEqual(out(m), b"+OK 12 octets\r\nA: b\r\n\r\n..x\r\n.\r\n")

    def test_stuffing(self) -> None:
        """Lines starting with a dot get another, the first line included."""
        self.assertEqual(
            format_message(b".a\r\n\r\n.\r\n..x\r\n"),
            (14, b"..a\r\n\r\n..\r\n...x\r\n.\r\n"),
        )

    def test_bare_lf(self) -> None:
        """LF line ends (other programs' Maildirs) are sent as CRLF."""
        self.assertEqual(
            format_message(b"A: b\n\n.x\r\ny"), (13, b"A: b\r\n\r\n..x\r\ny\r\n.\r\n")
        )

    def test_mixed(self) -> None:
        """A message whose first line ends in CRLF is sent as it is: a later
        bare LF stays, and cannot end the response early."""
        self.assertEqual(
            format_message(b"A: b\r\n\r\nx\n.\r\n"),
            (13, b"A: b\r\n\r\nx\n.\r\n.\r\n"),
        )

    def test_empty(self) -> None:
        """An empty message is just the dot line."""
        self.assertEqual(format_message(b""), (0, b".\r\n"))

    def test_top(self) -> None:
        """TOP gives the headers, the blank line and n body lines."""
        msg = b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree\r\n"
        self.assertEqual(format_message(msg, 0)[1], b"A: 1\r\nB: 2\r\n\r\n.\r\n")
        self.assertEqual(
            format_message(msg, 2)[1], b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\n.\r\n"
        )
        self.assertEqual(format_message(msg, 99)[1], msg + b".\r\n")

    def test_top_odd_shapes(self) -> None:
        """No body, no headers, no final CRLF."""
        self.assertEqual(format_message(b"A: 1\r\n", 5)[1], b"A: 1\r\n.\r\n")
        self.assertEqual(format_message(b"\r\nx\r\ny", 1)[1], b"\r\nx\r\n.\r\n")
        self.assertEqual(
            format_message(b"A: 1\r\n\r\nx", 3)[1], b"A: 1\r\n\r\nx\r\n.\r\n"
        )

    @given(
        st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b" "])).map(
            b"".join
        ),
        st.none() | st.integers(0, 5),
    )
    def test_same_as_replace(self, stored: bytes, lines: int | None) -> None:
        """stuff_message gives what stuffing with one bytes.replace (how it
        was done before the search went through a regular expression)
        gives: the same octets, the same body, the same end."""
        data = stored
        first = data.find(b"\n")
        if first == 0 or (first > 0 and data[first - 1 : first] != b"\r"):
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if lines is not None:
            data = _top(data, lines)
        body = (b"." if data.startswith(b".") else b"") + data.replace(
            b"\r\n.", b"\r\n.."
        )
        end = b"\r\n.\r\n" if data and not data.endswith(b"\r\n") else b".\r\n"
        self.assertEqual(stuff_message(stored, lines), (len(data), body, end))

    def test_nothing_to_stuff(self) -> None:
        """A message with no line to stuff is passed on uncopied, whether
        or not its lines end in CRLF; only a first line starting with a dot
        is stuffed then."""
        data = b"A: b\r\n\r\nx.\r\n\r\n"
        self.assertIs(stuff_message(data)[1], data)
        self.assertEqual(stuff_message(b".a\r\nb\r\n")[1], b"..a\r\nb\r\n")
        self.assertEqual(stuff_message(b"\r\n.\r\n")[1], b"\r\n..\r\n")

    @given(st.binary(max_size=300), st.none() | st.integers(0, 5))
    def test_unstuff_round_trip(self, data: bytes, lines: int | None) -> None:
        """What a client reads back (unstuffed) is the CRLF message, or a
        prefix of it made of whole lines for TOP."""
        octets, wire = format_message(data, lines)
        self.assertTrue(wire.endswith(b"\r\n.\r\n") or wire == b".\r\n")
        body = wire[: -len(b".\r\n")]
        lines_out = body.split(b"\r\n")[:-1] if body else []
        for line in lines_out:
            self.assertNotEqual(line, b".")
        unstuffed = b"".join(
            (line[1:] if line.startswith(b".") else line) + b"\r\n"
            for line in lines_out
        )
        first = data.find(b"\n")
        normal = data
        if first == 0 or (first > 0 and data[first - 1 : first] != b"\r"):
            normal = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        expected = (
            normal if normal.endswith(b"\r\n") or not normal else normal + b"\r\n"
        )
        if lines is None:
            self.assertEqual(unstuffed, expected)
            self.assertEqual(octets, len(normal))
        else:
            self.assertTrue(expected.startswith(unstuffed))


class UIDLTests(SynchronousTestCase):
    """uidl_for: Maildir base names as unique-ids."""

    def test_base_name(self) -> None:
        """A short, printable base name is its own unique-id."""
        base = "1790000000.M1P2Q3.host,S=120"
        self.assertEqual(uidl_for(base), base)

    def test_long_name(self) -> None:
        """A base name over 70 characters gets a stable 70-character form."""
        base = "1790000000.M0P1Q1U0123456789abcdef0123.a-very-long-hostname.example.test,S=1"
        uid = uidl_for(base)
        self.assertEqual(len(uid), 70)
        self.assertEqual(uid, uidl_for(base))
        self.assertNotEqual(uid, uidl_for(base + "2"))
        self.assertTrue(uid.startswith(base[:45]))

    def test_many(self) -> None:
        """uidls_for gives valid names as they are (a new list) and makes
        the others valid one by one."""
        valid = ["1.M1.host,S=5", "x" * 70, "~!"]
        found = uidls_for(valid)
        self.assertEqual(found, valid)
        self.assertIsNot(found, valid)
        mixed = [*valid, "", "a b", "é", "y" * 71]
        self.assertEqual(uidls_for(mixed), [uidl_for(b) for b in mixed])
        self.assertEqual(uidls_for([]), [])

    @given(
        st.lists(
            st.text(st.sampled_from("aZ9.,:=~ \té\x7f\x21"), max_size=75)
            | st.text(st.sampled_from("0123456789.M,S="), min_size=60, max_size=75),
            max_size=8,
        )
    )
    def test_many_same_as_one_by_one(self, bases: list[str]) -> None:
        """uidls_for of any names is uidl_for of each."""
        self.assertEqual(uidls_for(bases), [uidl_for(b) for b in bases])

    @given(st.text(max_size=120))
    def test_always_valid(self, base: str) -> None:
        """Whatever the name, the unique-id has 1 to 70 characters 0x21-0x7E."""
        uid = uidl_for(base)
        self.assertTrue(1 <= len(uid) <= 70)
        self.assertTrue(all(0x21 <= ord(c) <= 0x7E for c in uid), uid)


_COMMAND_WORDS = st.sampled_from(
    [
        b"USER",
        b"PASS",
        b"AUTH",
        b"APOP",
        b"STLS",
        b"CAPA",
        b"STAT",
        b"LIST",
        b"RETR",
        b"DELE",
        b"NOOP",
        b"RSET",
        b"TOP",
        b"UIDL",
        b"QUIT",
        b"XYZ",
        b"*",
    ]
)
_ARGS = st.lists(
    st.binary(max_size=12) | st.sampled_from([b"1", b"0", b"-1", b"3", b"99999"]),
    max_size=3,
)
_LINES = st.builds(
    lambda w, a, end: w + b"".join(b" " + x for x in a) + end,
    _COMMAND_WORDS,
    _ARGS,
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
)


class FuzzTests(SynchronousTestCase):
    """Whatever the client sends, only +OK/-ERR lines come back."""

    def _answer_all(self, m: POP3Machine, events: list[object]) -> None:
        while events:
            e = events.pop(0)
            more: list[object] = []
            if isinstance(e, LoginRequested):
                more = list(m.login_succeeded(LISTING))
            elif isinstance(e, MessageRequested):
                more = list(m.message_read(*format_message(b"A: b\r\n\r\n.\r\n")))
            elif isinstance(e, UpdateRequested):
                more = list(m.update_done(True))
            elif isinstance(e, TLSRequested):
                more = list(m.tls_started())
            events.extend(more)

    def _check_output(self, data: bytes) -> None:
        # Multi-line bodies aside, every status line is +OK, -ERR or "+ ".
        for line in data.split(b"\r\n"):
            if line.startswith((b"+", b"-")):
                self.assertTrue(
                    line.startswith((b"+OK", b"-ERR ", b"+ ")) or line == b"+ ", line
                )

    @settings(max_examples=300)
    @given(st.lists(_LINES | st.binary(max_size=300), max_size=20), st.booleans())
    def test_any_input(self, chunks: list[bytes], tls: bool) -> None:
        """Random commands and bytes never raise and get only POP3 replies."""
        m = machine(tls=tls, plaintext=not tls)
        for chunk in chunks:
            self._answer_all(m, list(m.receive_data(chunk)))
            data = out(m)
            self.assertTrue(
                data == b"" or data.startswith((b"+OK", b"-ERR ", b"+ ")), data
            )
            self._check_output(data)
