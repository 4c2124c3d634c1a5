"""Tests for twistedmail.imap.server: states, login, capabilities, mailbox
management and LIST, each command on a fake transport."""

from __future__ import annotations

import base64
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.imap_server_helpers import PASSWORD, make_world
from twistedmail.imap.server import FIRST_LOGIN_MARKER, State
from twistedmail.testing import make_test_certificate
from twistedmail.tls import ServerTLS


def plain(user: str, password: str = PASSWORD, authzid: str = "") -> str:
    """A base64 SASL PLAIN response."""
    raw = f"{authzid}\0{user}\0{password}".encode()
    return base64.b64encode(raw).decode()


class GreetingAndStateTests(SynchronousTestCase):
    """Greeting, CAPABILITY, wrong-state commands, LOGOUT, timeouts."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())

    def test_greeting(self) -> None:
        """The greeting is an untagged OK with the capabilities."""
        client = self.world.connect()
        self.assertTrue(client.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "))
        self.assertIn(b"AUTH=PLAIN", client.greeting)
        self.assertIn(b"APPENDLIMIT=36700160", client.greeting)

    def test_no_delay(self) -> None:
        """The connection turns Nagle's algorithm off (TCP_NODELAY), so the
        tagged line that follows a response's untagged lines is not held
        back until the client's delayed ACK."""
        client = self.world.connect()
        self.assertTrue(client.transport.no_delay)

    def test_capability_before_login(self) -> None:
        """Without TLS and with plaintext allowed: AUTH=PLAIN, no STARTTLS."""
        client = self.world.connect()
        lines = client.ok("CAPABILITY")
        self.assertEqual(len(lines), 1)
        caps = lines[0].split()
        for cap in (
            b"IMAP4rev1",
            b"LITERAL+",
            b"SASL-IR",
            b"IDLE",
            b"UIDPLUS",
            b"MOVE",
            b"CONDSTORE",
            b"QRESYNC",
            b"ESEARCH",
            b"LIST-STATUS",
            b"SPECIAL-USE",
            b"AUTH=PLAIN",
        ):
            self.assertIn(cap, caps)
        self.assertNotIn(b"STARTTLS", caps)
        self.assertNotIn(b"QUOTA", caps)

    def test_login_disabled_without_tls(self) -> None:
        """Plaintext auth off: LOGINDISABLED, and LOGIN gets NO."""
        world = make_world(self.mktemp(), allow_plaintext_auth=False)
        client = world.connect()
        self.assertIn(b"LOGINDISABLED", client.greeting)
        self.assertNotIn(b"AUTH=PLAIN", client.greeting)
        lines = client.cmd(f'LOGIN alice "{PASSWORD}"')
        self.assertEqual(lines, [b"a1 NO [PRIVACYREQUIRED] Use STARTTLS first"])
        lines = client.cmd("AUTHENTICATE PLAIN " + plain("alice"))
        self.assertEqual(lines, [b"a2 NO [PRIVACYREQUIRED] Use STARTTLS first"])
        self.assertEqual(client.proto.state, State.NOT_AUTHENTICATED)

    def test_wrong_state(self) -> None:
        """Commands of later states get BAD before login."""
        client = self.world.connect()
        for command in ("SELECT INBOX", "FETCH 1 FLAGS", 'LIST "" *', "CLOSE"):
            lines = client.cmd(command)
            self.assertEqual(len(lines), 1)
            self.assertRegex(
                lines[0], rb"^a\d+ BAD .*not allowed in the not authenticated"
            )

    def test_wrong_state_after_login(self) -> None:
        """LOGIN again, AUTHENTICATE, STARTTLS and selected-state commands
        get BAD when authenticated."""
        client = self.world.logged_in()
        for command in (
            f'LOGIN alice "{PASSWORD}"',
            "STARTTLS",
            "AUTHENTICATE PLAIN",
            "FETCH 1 FLAGS",
            "STORE 1 +FLAGS (\\Seen)",
            "EXPUNGE",
            "CHECK",
        ):
            lines = client.cmd(command)
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(b" BAD ", lines[0])
        self.assertEqual(client.ok("NOOP"), [])

    def test_unknown_command(self) -> None:
        """An unknown command gets a tagged BAD with a reason."""
        client = self.world.connect()
        self.assertEqual(
            client.cmd("FROBNICATE"), [b"a1 BAD unknown command FROBNICATE"]
        )

    def test_untagged_garbage(self) -> None:
        """A line with no tag gets an untagged BAD."""
        client = self.world.connect()
        out = client.raw(b"\r\n")
        self.assertTrue(out.startswith(b"* BAD "), out)

    def test_logout(self) -> None:
        """LOGOUT: BYE, tagged OK, connection closed."""
        client = self.world.connect()
        lines = client.cmd("LOGOUT")
        self.assertEqual(lines, [b"* BYE Logging out", b"a1 OK LOGOUT completed"])
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(client.proto.state, State.LOGOUT)

    def test_commands_after_logout_ignored(self) -> None:
        """Pipelined commands after LOGOUT are not run."""
        client = self.world.connect()
        out = client.raw(b"a LOGOUT\r\nb NOOP\r\n")
        self.assertNotIn(b"b OK", out)

    def test_login_timeout(self) -> None:
        """One minute without login: BYE and disconnect."""
        client = self.world.connect()
        self.world.clock.advance(59)
        self.assertFalse(client.transport.disconnecting)
        self.world.clock.advance(1)
        self.assertEqual(client.take(), b"* BYE Autologout; no login in time\r\n")
        self.assertTrue(client.transport.disconnecting)

    def test_login_deadline_not_restarted(self) -> None:
        """Before login, input does not restart the timer: a client that
        sends commands, or trickles a line an octet at a time, is still
        logged out one minute after it connected."""
        client = self.world.connect()
        self.world.clock.advance(30)
        self.assertEqual(client.cmd("NOOP"), [b"a1 OK NOOP completed"])
        for _ in range(29):
            client.raw(b"x")
            self.world.clock.advance(1)
        self.assertFalse(client.transport.disconnecting)
        self.world.clock.advance(1)
        self.assertEqual(client.take(), b"* BYE Autologout; no login in time\r\n")
        self.assertTrue(client.transport.disconnecting)

    def test_login_timeout_during_authenticate(self) -> None:
        """A client that never answers the AUTHENTICATE challenge is logged
        out at the minute too."""
        client = self.world.connect()
        self.assertEqual(client.raw(b"a AUTHENTICATE PLAIN\r\n"), b"+ \r\n")
        self.world.clock.advance(60)
        self.assertEqual(client.take(), b"* BYE Autologout; no login in time\r\n")
        self.assertTrue(client.transport.disconnecting)

    def test_timer_switches_at_login(self) -> None:
        """Logging in replaces the login deadline with the 30-minute
        autologout (RFC 3501 §5.4), counted from the login."""
        client = self.world.connect()
        self.world.clock.advance(50)
        client.login()
        self.world.clock.advance(1799)
        self.assertFalse(client.transport.disconnecting)
        self.world.clock.advance(1)
        self.assertEqual(client.take(), b"* BYE Autologout; idle for too long\r\n")
        self.assertTrue(client.transport.disconnecting)

    def test_partial_input_restarts_after_login(self) -> None:
        """Logged in, any input restarts the timer, even part of a line (a
        slow APPEND upload stays)."""
        client = self.world.logged_in()
        self.assertEqual(
            client.raw(b"a APPEND INBOX {10}\r\n"), b"+ Ready for literal\r\n"
        )
        for _ in range(3):
            self.world.clock.advance(1700)
            client.raw(b"x")
        self.assertFalse(client.transport.disconnecting)
        self.world.clock.advance(1800)
        self.assertTrue(client.transport.disconnecting)

    def test_timers_released(self) -> None:
        """A closed session leaves no timer behind, IDLE's included."""
        client = self.world.logged_in()
        client.ok("SELECT INBOX")
        client.raw(b"i IDLE\r\n")
        self.assertNotEqual(self.world.clock.getDelayedCalls(), [])
        client.proto.connectionLost(None)
        self.assertEqual(self.world.clock.getDelayedCalls(), [])

    def test_idle_timeout_after_login(self) -> None:
        """Logged in, the autologout timer is 30 minutes."""
        client = self.world.logged_in()
        self.world.clock.advance(1799)
        self.assertFalse(client.transport.disconnecting)
        client.ok("NOOP")
        self.world.clock.advance(1799)
        self.assertFalse(client.transport.disconnecting)
        self.world.clock.advance(1)
        self.assertTrue(client.transport.disconnecting)

    def test_too_many_errors(self) -> None:
        """Repeated BADs end the session with BYE."""
        world = make_world(self.mktemp(), max_errors=3)
        client = world.connect()
        out = client.raw(b"a X\r\nb X\r\nc X\r\nd NOOP\r\n")
        self.assertIn(b"* BYE Too many errors", out)
        self.assertNotIn(b"d OK", out)
        self.assertTrue(client.transport.disconnecting)

    def test_per_ip_limit(self) -> None:
        """Connections over the per-address limit get BYE."""
        world = make_world(self.mktemp(), max_connections_per_ip=1)
        factory = world.factory()
        first = world.connect(factory)
        second = world.connect(factory)
        self.assertTrue(first.greeting.startswith(b"* OK"))
        self.assertEqual(
            second.greeting, b"* BYE Too many connections, try again later\r\n"
        )
        self.assertTrue(second.transport.disconnecting)

    def test_id_and_noop(self) -> None:
        """ID answers with the server name in any state."""
        client = self.world.connect()
        self.assertEqual(
            client.ok('ID ("name" "test")'), [b'* ID ("name" "twistedmail")']
        )
        self.assertEqual(client.ok("ID NIL"), [b'* ID ("name" "twistedmail")'])
        self.assertEqual(client.ok("NOOP"), [])


class LoginTests(SynchronousTestCase):
    """LOGIN and AUTHENTICATE PLAIN."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())

    def test_login(self) -> None:
        """LOGIN with the right password: OK with the new capabilities."""
        client = self.world.connect()
        lines = client.cmd(f'LOGIN alice@example.test "{PASSWORD}"')
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith(b"a1 OK [CAPABILITY IMAP4rev1 "))
        self.assertNotIn(b"AUTH=PLAIN", lines[0])
        self.assertEqual(client.proto.state, State.AUTHENTICATED)

    def test_login_default_domain(self) -> None:
        """The local part alone works in the default domain."""
        client = self.world.connect()
        client.ok(f'LOGIN alice "{PASSWORD}"')

    def test_login_wrong_password(self) -> None:
        """A wrong password: NO [AUTHENTICATIONFAILED], still not logged in."""
        client = self.world.connect()
        lines = client.cmd('LOGIN alice "wrong"')
        self.assertEqual(lines, [b"a1 NO [AUTHENTICATIONFAILED] Invalid credentials"])
        self.assertEqual(client.proto.state, State.NOT_AUTHENTICATED)

    def test_authenticate_initial_response(self) -> None:
        """AUTHENTICATE PLAIN with SASL-IR."""
        client = self.world.connect()
        lines = client.cmd("AUTHENTICATE PLAIN " + plain("alice@example.test"))
        self.assertTrue(lines[0].startswith(b"a1 OK [CAPABILITY "), lines)
        self.assertEqual(client.proto.state, State.AUTHENTICATED)
        self.assertEqual(client.ok("NOOP"), [])

    def test_authenticate_challenge(self) -> None:
        """AUTHENTICATE PLAIN without an initial response: an empty
        challenge, then the response line."""
        client = self.world.connect()
        self.assertEqual(client.raw(b"a1 AUTHENTICATE PLAIN\r\n"), b"+ \r\n")
        out = client.raw(plain("alice").encode() + b"\r\n")
        self.assertTrue(out.startswith(b"a1 OK [CAPABILITY "), out)

    def test_authenticate_pipelined_after_response(self) -> None:
        """A command pipelined after the SASL response runs after login."""
        client = self.world.connect()
        client.raw(b"a1 AUTHENTICATE PLAIN\r\n")
        out = client.raw(plain("alice").encode() + b"\r\na2 SELECT INBOX\r\n")
        self.assertIn(b"a1 OK", out)
        self.assertIn(b"a2 OK [READ-WRITE]", out)

    def test_authenticate_cancel(self) -> None:
        """``*`` cancels the exchange with BAD."""
        client = self.world.connect()
        client.raw(b"a1 AUTHENTICATE PLAIN\r\n")
        self.assertEqual(client.raw(b"*\r\n"), b"a1 BAD Authentication cancelled\r\n")
        self.assertEqual(client.ok("NOOP"), [])

    def test_authenticate_bad_base64(self) -> None:
        """Bad BASE64 in the response: BAD, back to commands."""
        client = self.world.connect()
        client.raw(b"a1 AUTHENTICATE PLAIN\r\n")
        out = client.raw(b"!!!\r\n")
        self.assertTrue(out.startswith(b"a1 BAD "), out)
        self.assertEqual(client.ok("NOOP"), [])

    def test_authenticate_wrong_password(self) -> None:
        """Bad credentials: NO [AUTHENTICATIONFAILED]."""
        client = self.world.connect()
        lines = client.cmd("AUTHENTICATE PLAIN " + plain("alice", "nope"))
        self.assertEqual(lines, [b"a1 NO [AUTHENTICATIONFAILED] Invalid credentials"])
        self.assertEqual(client.ok("NOOP"), [])

    def test_authenticate_other_authzid(self) -> None:
        """Acting as another user is refused."""
        client = self.world.connect()
        lines = client.cmd("AUTHENTICATE PLAIN " + plain("alice", authzid="bob"))
        self.assertEqual(
            lines, [b"a1 NO [AUTHORIZATIONFAILED] Authorization identity refused"]
        )

    def test_authenticate_malformed(self) -> None:
        """A PLAIN response without two NULs is BAD."""
        client = self.world.connect()
        lines = client.cmd(
            "AUTHENTICATE PLAIN " + base64.b64encode(b"no nuls").decode()
        )
        self.assertEqual(lines, [b"a1 BAD Malformed PLAIN response"])

    def test_authenticate_unknown_mechanism(self) -> None:
        """Only PLAIN is offered."""
        client = self.world.connect()
        lines = client.cmd("AUTHENTICATE CRAM-MD5")
        self.assertEqual(
            lines, [b"a1 NO [CANNOT] Unsupported authentication mechanism"]
        )
        self.assertEqual(client.ok("NOOP"), [])

    def test_first_login_makes_special_folders(self) -> None:
        """Sent, Drafts, Trash, Junk, Archive are made and subscribed once."""
        client = self.world.logged_in()
        folders = self.world.store.list_folders(self.world.maildir())
        self.assertEqual(
            folders, ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
        )
        self.assertTrue(
            os.path.exists(os.path.join(self.world.maildir(), FIRST_LOGIN_MARKER))
        )
        client.ok("DELETE Junk")
        self.world.logged_in()
        self.assertNotIn("Junk", self.world.store.list_folders(self.world.maildir()))

    def test_quota_capability(self) -> None:
        """A user with a quota gets QUOTA after login."""
        world = make_world(self.mktemp(), quota=10 * 1024)
        client = world.connect()
        lines = client.cmd(f'LOGIN bob "{PASSWORD}"')
        self.assertIn(b" QUOTA ", lines[0])


class StartTLSTests(SynchronousTestCase):
    """STARTTLS on a fake transport."""

    def setUp(self) -> None:
        cert, key = make_test_certificate(self.mktemp())
        self.world = make_world(
            self.mktemp(), tls=ServerTLS(cert, key), allow_plaintext_auth=False
        )

    def test_starttls(self) -> None:
        """STARTTLS: OK, TLS starts, LOGIN becomes possible."""
        client = self.world.connect()
        self.assertIn(b"STARTTLS", client.greeting)
        self.assertEqual(client.cmd("STARTTLS"), [b"a1 OK Begin TLS negotiation now"])
        self.assertEqual(len(client.transport.tls_started), 1)
        caps = client.ok("CAPABILITY")[0]
        self.assertNotIn(b"STARTTLS", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        client.login()

    def test_pipelined_after_starttls_dropped(self) -> None:
        """Commands sent with STARTTLS, before the handshake, are dropped."""
        client = self.world.connect()
        out = client.raw(b"a STARTTLS\r\nb LOGIN alice x\r\n")
        self.assertEqual(out, b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(client.ok("NOOP"), [])

    def test_starttls_twice(self) -> None:
        """A second STARTTLS is BAD."""
        client = self.world.connect()
        client.ok("STARTTLS")
        lines = client.cmd("STARTTLS")
        self.assertEqual(lines, [b"a2 BAD TLS is not available here"])

    def test_implicit_tls(self) -> None:
        """On the imaps role, login is allowed at once and no STARTTLS."""
        client = self.world.connect(self.world.factory(implicit_tls=True))
        self.assertNotIn(b"STARTTLS", client.greeting)
        self.assertIn(b"AUTH=PLAIN", client.greeting)
        client.login()


class MailboxManagementTests(SynchronousTestCase):
    """CREATE, DELETE, RENAME, SUBSCRIBE, LIST, LSUB, STATUS, NAMESPACE."""

    def setUp(self) -> None:
        self.world = make_world(self.mktemp())
        self.client = self.world.logged_in()

    def folders(self) -> list[str]:
        return self.world.store.list_folders(self.world.maildir())

    def test_create(self) -> None:
        """CREATE makes a folder (and missing parents); a trailing
        separator is dropped."""
        self.client.ok("CREATE Work.Projects.")
        self.assertIn("Work", self.folders())
        self.assertIn("Work.Projects", self.folders())

    def test_create_exists(self) -> None:
        """CREATE of an existing folder or INBOX: NO [ALREADYEXISTS]."""
        self.assertEqual(
            self.client.cmd("CREATE Sent"),
            [b"a1 NO [ALREADYEXISTS] folder 'Sent' exists"],
        )
        self.assertEqual(
            self.client.cmd("CREATE inbox"),
            [b"a2 NO [ALREADYEXISTS] INBOX always exists"],
        )

    def test_create_names_leaving_maildir(self) -> None:
        """Names that could leave the Maildir are refused and nothing is made
        outside."""
        root = self.world.root
        before = sorted(os.listdir(root))
        for name in ('"../x"', '"/etc"', '"a/b"', '"."', '".."', '"a..b"', '".x"'):
            lines = self.client.cmd(f"CREATE {name}")
            self.assertEqual(len(lines), 1)
            self.assertRegex(lines[0], rb"^a\d+ NO \[CANNOT\] folder names may not")
        self.assertEqual(sorted(os.listdir(root)), before)
        self.assertFalse(os.path.exists(os.path.join(root, "x")))
        lines = self.client.cmd(b"CREATE {3+}\r\na\x00b")
        self.assertIn(b" BAD ", lines[-1])

    def test_create_below_inbox(self) -> None:
        """Folders below INBOX are not supported: NO with a reason."""
        lines = self.client.cmd("CREATE INBOX.foo")
        self.assertEqual(
            lines, [b"a1 NO [CANNOT] folders below INBOX are not supported"]
        )

    def test_create_utf7(self) -> None:
        """Names travel as modified UTF-7 and are stored as Unicode."""
        self.client.ok("CREATE Entw&APw-rfe")
        self.assertIn("Entwürfe", self.folders())
        lines = self.client.ok('LIST "" Entw*')
        self.assertEqual(lines, [b'* LIST (\\HasNoChildren) "." Entw&APw-rfe'])

    def test_delete(self) -> None:
        """DELETE removes a folder; INBOX and missing ones get NO."""
        self.client.ok("CREATE Old")
        self.client.ok("DELETE Old")
        self.assertNotIn("Old", self.folders())
        self.assertEqual(
            self.client.cmd("DELETE Old"),
            [b"a3 NO [NONEXISTENT] no folder 'Old'"],
        )
        self.assertEqual(
            self.client.cmd("DELETE INBOX"), [b"a4 NO [CANNOT] INBOX cannot be deleted"]
        )

    def test_rename(self) -> None:
        """RENAME moves a folder and its children."""
        self.client.ok("CREATE A.B")
        self.client.ok("RENAME A C")
        self.assertIn("C", self.folders())
        self.assertIn("C.B", self.folders())
        self.assertNotIn("A", self.folders())
        lines = self.client.cmd("RENAME Missing X")
        self.assertIn(b"NO [NONEXISTENT]", lines[0])
        lines = self.client.cmd("RENAME C Sent")
        self.assertIn(b"NO [ALREADYEXISTS]", lines[0])
        lines = self.client.cmd("RENAME C INBOX")
        self.assertIn(b"NO [CANNOT]", lines[0])

    def test_rename_inbox(self) -> None:
        """RENAME INBOX moves its messages into the new folder and leaves
        INBOX empty."""
        self.world.deliver(b"Subject: one\r\n\r\nx\r\n")
        self.world.deliver(b"Subject: two\r\n\r\ny\r\n")
        self.client.ok("RENAME INBOX Old-Inbox")
        self.assertIn(b"(MESSAGES 2)", self.client.ok("STATUS Old-Inbox (MESSAGES)")[0])
        self.assertIn(b"(MESSAGES 0)", self.client.ok("STATUS INBOX (MESSAGES)")[0])

    def test_subscribe_and_lsub(self) -> None:
        """SUBSCRIBE/UNSUBSCRIBE and LSUB with % showing \\Noselect parents."""
        self.client.ok("CREATE Lists.Twisted")
        self.client.ok("SUBSCRIBE Lists.Twisted")
        self.client.ok("UNSUBSCRIBE Junk")
        lines = self.client.ok('LSUB "" *')
        self.assertIn(b'* LSUB () "." Lists.Twisted', lines)
        self.assertNotIn(b'* LSUB () "." Junk', lines)
        self.assertIn(b'* LSUB () "." INBOX', lines)
        lines = self.client.ok('LSUB "" %')
        self.assertIn(b'* LSUB (\\Noselect) "." Lists', lines)

    def test_list(self) -> None:
        """LIST * and %: children attributes, special-use attributes,
        \\Noselect for a missing parent."""
        self.world.store.create_folder(self.world.maildir(), "Orphan.Child")
        self.client.ok("CREATE Work.Projects")
        lines = self.client.ok('LIST "" *')
        self.assertEqual(
            lines,
            [
                b'* LIST (\\HasNoChildren) "." INBOX',
                b'* LIST (\\HasNoChildren \\Archive) "." Archive',
                b'* LIST (\\HasNoChildren \\Drafts) "." Drafts',
                b'* LIST (\\HasNoChildren \\Junk) "." Junk',
                b'* LIST (\\Noselect \\HasChildren) "." Orphan',
                b'* LIST (\\HasNoChildren) "." Orphan.Child',
                b'* LIST (\\HasNoChildren \\Sent) "." Sent',
                b'* LIST (\\HasNoChildren \\Trash) "." Trash',
                b'* LIST (\\HasChildren) "." Work',
                b'* LIST (\\HasNoChildren) "." Work.Projects',
            ],
        )
        lines = self.client.ok('LIST "" %')
        self.assertNotIn(b'* LIST (\\HasNoChildren) "." Work.Projects', lines)
        self.assertIn(b'* LIST (\\HasChildren) "." Work', lines)
        lines = self.client.ok("LIST Work. %")
        self.assertEqual(lines, [b'* LIST (\\HasNoChildren) "." Work.Projects'])
        lines = self.client.ok('LIST "" inbox')
        self.assertEqual(lines, [b'* LIST (\\HasNoChildren) "." INBOX'])

    def test_list_empty_pattern(self) -> None:
        """LIST "" "" gives the separator."""
        self.assertEqual(self.client.ok('LIST "" ""'), [b'* LIST (\\Noselect) "." ""'])

    def test_list_extended(self) -> None:
        """LIST-EXTENDED selection and return options, LIST-STATUS."""
        self.client.ok("UNSUBSCRIBE Junk")
        lines = self.client.ok('LIST (SUBSCRIBED) "" *')
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "." INBOX', lines)
        self.assertFalse(any(b"Junk" in line for line in lines))
        lines = self.client.ok('LIST (SPECIAL-USE) "" *')
        self.assertEqual(len(lines), 5)
        self.client.ok("SUBSCRIBE Ghost")
        lines = self.client.ok('LIST (SUBSCRIBED) "" Ghost')
        self.assertEqual(
            lines, [b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "." Ghost']
        )
        self.world.deliver(b"Subject: s\r\n\r\nbody\r\n")
        lines = self.client.ok('LIST "" (INBOX Sent) RETURN (STATUS (MESSAGES UNSEEN))')
        self.assertEqual(
            lines,
            [
                b'* LIST (\\HasNoChildren) "." INBOX',
                b'* LIST (\\HasNoChildren \\Sent) "." Sent',
                b"* STATUS INBOX (MESSAGES 1 UNSEEN 1)",
                b"* STATUS Sent (MESSAGES 0 UNSEEN 0)",
            ],
        )

    def test_list_recursivematch(self) -> None:
        """RECURSIVEMATCH: a parent with a subscribed child gets CHILDINFO."""
        self.client.ok("CREATE Lists.Twisted")
        self.client.ok("SUBSCRIBE Lists.Twisted")
        lines = self.client.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
        self.assertIn(
            b'* LIST (\\HasChildren) "." Lists ("CHILDINFO" ("SUBSCRIBED"))', lines
        )

    def test_status(self) -> None:
        """STATUS of every item; missing mailboxes get NO."""
        self.world.deliver(b"Subject: a\r\n\r\nx\r\n")
        lines = self.client.ok(
            "STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN "
            "HIGHESTMODSEQ SIZE DELETED APPENDLIMIT)"
        )
        self.assertRegex(
            lines[0],
            rb"^\* STATUS INBOX \(MESSAGES 1 RECENT 1 UIDNEXT 2 UIDVALIDITY \d+ "
            rb"UNSEEN 1 HIGHESTMODSEQ \d+ SIZE 17 DELETED 0 APPENDLIMIT 36700160\)$",
        )
        lines = self.client.cmd("STATUS Nowhere (MESSAGES)")
        self.assertEqual(lines, [b"a2 NO [NONEXISTENT] no folder 'Nowhere'"])

    def test_namespace(self) -> None:
        """NAMESPACE: one personal namespace with "." as separator."""
        self.assertEqual(
            self.client.ok("NAMESPACE"), [b'* NAMESPACE (("" ".")) NIL NIL']
        )

    def test_enable(self) -> None:
        """ENABLE reports the extensions it turned on, once."""
        self.assertEqual(
            self.client.ok("ENABLE QRESYNC X-UNKNOWN"), [b"* ENABLED QRESYNC"]
        )
        self.assertEqual(self.client.ok("ENABLE CONDSTORE"), [b"* ENABLED"])

    def test_quota(self) -> None:
        """GETQUOTAROOT and GETQUOTA for a user with a quota; NO without."""
        self.assertEqual(self.client.ok("GETQUOTAROOT INBOX"), [b"* QUOTAROOT INBOX"])
        self.assertIn(b"NO [NONEXISTENT]", self.client.cmd('GETQUOTA ""')[0])
        world = make_world(self.mktemp(), quota=2048)
        bob = world.logged_in("bob")
        world.deliver(b"x" * 1000, user="bob")
        self.assertEqual(
            bob.ok("GETQUOTAROOT INBOX"),
            [b'* QUOTAROOT INBOX ""', b'* QUOTA "" (STORAGE 1 2)'],
        )
        self.assertEqual(bob.ok('GETQUOTA ""'), [b'* QUOTA "" (STORAGE 1 2)'])
        lines = bob.cmd(b"APPEND INBOX {1200+}\r\n" + b"y" * 1200)
        self.assertEqual(lines, [b"a3 NO [OVERQUOTA] Quota exceeded"])
