"""Many sessions on one mailbox (RFC 3501 §5.2, §7.4.1): two imaplib
connections to a server on 127.0.0.1 port 0, one changing the INBOX, the
other watching what it is told and when; plus a POP3 session and the store's
delivery changing it underneath.

Each step's full answer is read with L{transcript}, so the tests can say
that a FETCH, STORE or SEARCH answer holds no EXPUNGE, and that the EXPUNGE
arrives with the next NOOP.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
from typing import Any

from imapclient import IMAPClient
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.imap_client_helpers import (
    ALICE,
    PASSWORD,
    TIMEOUT,
    Server,
    in_thread,
    make_server,
    plain_message,
    transcript,
)
from twistedmail.pop3.server import POP3ServerFactory


def _tagged_ok(lines: list[bytes]) -> list[bytes]:
    """The untagged lines of an answer whose tagged line is OK."""
    assert lines and re.match(rb"^\S+ OK", lines[-1]), lines
    return lines[:-1]


def _recent_uids(lines: list[bytes]) -> set[int]:
    """UIDs whose FETCH FLAGS include \\Recent."""
    return {
        int(m.group(1))
        for line in lines
        if b"\\Recent" in line and (m := re.search(rb"UID (\d+)", line))
    }


class TwoSessionTests(TestCase):
    """Sessions A and B, both with the INBOX selected."""

    def setUp(self) -> None:
        self.server: Server = make_server(self, allow_plaintext_auth=True)
        self.server.seed([plain_message(n) for n in range(1, 6)])
        self.port = self.server.listen()

    async def session(self, select: bool = True) -> imaplib.IMAP4:
        """A plain-text imaplib session, logged in, INBOX selected."""
        client = await in_thread(self.server.imaplib, self.port, starttls=False)
        await in_thread(client.login, ALICE, PASSWORD)
        if select:
            await in_thread(client.select, "INBOX")
        return client

    async def say(self, client: imaplib.IMAP4, command: str) -> list[bytes]:
        """One command; its untagged lines (the tagged line must be OK)."""
        return _tagged_ok(await in_thread(transcript, client, command))

    async def test_flags_and_expunges_at_allowed_moments(self) -> None:
        """A's flag change reaches B at B's next command; A's EXPUNGE is held
        back from B's FETCH, STORE and SEARCH (their sequence numbers stay
        B's old ones) and arrives with B's NOOP."""
        a = await self.session()
        b = await self.session()
        self.assertEqual(
            await self.say(a, "STORE 1 +FLAGS (\\Flagged)"),
            [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))"],
        )
        self.assertEqual(await self.say(b, "NOOP"), [b"* 1 FETCH (FLAGS (\\Flagged))"])
        self.assertEqual(await self.say(a, "STORE 2 +FLAGS.SILENT (\\Deleted)"), [])
        self.assertEqual(await self.say(a, "EXPUNGE"), [b"* 2 EXPUNGE"])
        # B still numbers 1-5; no EXPUNGE during FETCH, STORE or SEARCH.
        fetched = await in_thread(transcript, b, "FETCH 1:5 (UID)")
        self.assertFalse([x for x in fetched if b"EXPUNGE" in x], fetched)
        self.assertIn(b"* 5 FETCH (UID 5)", fetched)
        self.assertIn(b"* 3 FETCH (UID 3)", fetched)
        stored = await self.say(b, "STORE 3 +FLAGS (\\Seen)")
        self.assertEqual(stored, [b"* 3 FETCH (FLAGS (\\Seen))"])
        found = await self.say(b, "SEARCH SEEN")
        self.assertEqual(found, [b"* SEARCH 3"])
        # Now B hears of the expunge, and numbers 1-4.
        noop = await self.say(b, "NOOP")
        self.assertIn(b"* 2 EXPUNGE", noop)
        self.assertEqual(
            await self.say(b, "FETCH 1:* (UID)"),
            [b"* %d FETCH (UID %d)" % (n, u) for n, u in enumerate((1, 3, 4, 5), 1)],
        )
        self.assertEqual(await self.say(b, "SEARCH SEEN"), [b"* SEARCH 2"])
        # And A hears of B's \Seen on UID 3 (its message 2 now).
        self.assertEqual(
            await self.say(a, "NOOP"), [b"* 2 FETCH (FLAGS (\\Seen \\Recent))"]
        )
        await in_thread(a.logout)
        await in_thread(b.logout)

    async def test_recent_goes_to_one_session(self) -> None:
        """The first session to select gets \\Recent for the seeded mail;
        of a new delivery, exactly one session sees \\Recent; a later
        session sees none."""
        a = await self.session(select=False)
        b = await self.session(select=False)
        self.assertIn(b"* 5 RECENT", await self.say(a, "SELECT INBOX"))
        self.assertIn(b"* 0 RECENT", await self.say(b, "SELECT INBOX"))
        self.assertEqual(
            _recent_uids(await self.say(a, "FETCH 1:* (UID FLAGS)")), {1, 2, 3, 4, 5}
        )
        self.assertEqual(
            _recent_uids(await self.say(b, "FETCH 1:* (UID FLAGS)")), set()
        )
        await self.server.deliver(plain_message(6), "concurrent-6")
        noop_a = await self.say(a, "NOOP")
        noop_b = await self.say(b, "NOOP")
        self.assertIn(b"* 6 EXISTS", noop_a)
        self.assertIn(b"* 6 EXISTS", noop_b)
        recent = [
            _recent_uids(await self.say(c, "FETCH 6 (UID FLAGS)")) for c in (a, b)
        ]
        # A asked first: the new message is A's recent one.
        self.assertEqual(recent, [{6}, set()])
        self.assertEqual(noop_a, [b"* 6 EXISTS", b"* 6 RECENT"])
        self.assertEqual(noop_b, [b"* 6 EXISTS", b"* 0 RECENT"])
        c = await self.session(select=False)
        self.assertIn(b"* 0 RECENT", await self.say(c, "SELECT INBOX"))
        for client in (a, b, c):
            await in_thread(client.logout)

    async def test_append_and_copy_reach_other_session(self) -> None:
        """A message APPENDed by A, and one COPYed into the INBOX from another
        folder, reach B as EXISTS at its next command; A's APPEND answer
        tells A too.  Each new message is \\Recent in exactly one session
        (RFC 3501 §2.3.2): A's own for its APPEND to the mailbox it has
        selected, B's for the COPY into B's mailbox."""
        a = await self.session()
        b = await self.session()
        new = plain_message(6).decode()
        lines = await in_thread(
            transcript, a, f"APPEND INBOX (\\Seen) {{{len(new)}+}}\r\n{new}"
        )
        self.assertEqual(lines[:-1], [b"* 6 EXISTS", b"* 6 RECENT"])
        self.assertRegex(lines[-1], rb"OK \[APPENDUID \d+ 6\]")
        self.assertEqual(await self.say(b, "NOOP"), [b"* 6 EXISTS", b"* 0 RECENT"])
        await self.say(a, "CREATE Saved")
        await self.say(a, "SELECT Saved")
        self.assertEqual(
            await self.say(a, "APPEND Saved {8+}\r\nx: y\r\n\r\n"),
            [b"* 1 EXISTS", b"* 1 RECENT"],
        )
        copied = await in_thread(transcript, a, "COPY 1 INBOX")
        self.assertRegex(copied[-1], rb"OK \[COPYUID \d+ 1 7\]")
        self.assertEqual(await self.say(b, "NOOP"), [b"* 7 EXISTS", b"* 1 RECENT"])
        self.assertEqual(
            await self.say(b, "FETCH 6:7 (UID RFC822.SIZE FLAGS)"),
            [
                b"* 6 FETCH (UID 6 RFC822.SIZE %d FLAGS (\\Seen))" % len(new),
                b"* 7 FETCH (UID 7 RFC822.SIZE 8 FLAGS (\\Recent))",
            ],
        )
        await self.say(a, "SELECT INBOX")
        self.assertEqual(
            _recent_uids(await self.say(a, "FETCH 1:* (UID FLAGS)")), set()
        )
        await in_thread(a.logout)
        await in_thread(b.logout)

    async def test_pop3_deletion_reaches_imap(self) -> None:
        """A message deleted over POP3 (DELE, QUIT) is EXPUNGEd in an IMAP
        session that has the INBOX selected, at its next NOOP."""
        world = self.server.world
        pop3 = POP3ServerFactory(
            world.settings,
            reactor,
            portal=world.portal,
            throttle=world.throttle,
            store=world.store,
            tls=world.tls,
            implicit_tls=True,
        )
        assert world.tls is not None
        port = reactor.listenTCP(
            0, world.tls.wrap_implicit(pop3, reactor), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        a = await self.session()

        def pop() -> None:
            client = poplib.POP3_SSL(
                "127.0.0.1",
                port.getHost().port,
                context=self.server.ssl_context(),
                timeout=TIMEOUT,
            )
            client.user(ALICE)
            client.pass_(PASSWORD)
            # The messages in POP3 order are the UIDs' order.
            client.dele(4)
            client.quit()

        await in_thread(pop)
        self.assertEqual(await self.say(a, "NOOP"), [b"* 4 EXPUNGE"])
        self.assertEqual(await self.say(a, "UID SEARCH ALL"), [b"* SEARCH 1 2 3 5"])
        await in_thread(a.logout)


class IdleSessionsTests(TestCase):
    """Several imapclient sessions IDLE on one INBOX at once."""

    async def test_delivery_reaches_every_idle_session(self) -> None:
        """One delivery is pushed to each of four IDLE sessions as EXISTS;
        \\Recent for it goes to exactly one of them."""
        server = make_server(self, allow_plaintext_auth=True)
        server.seed([plain_message(n) for n in range(1, 4)])
        port = server.listen()

        def idle() -> IMAPClient:
            client = IMAPClient("127.0.0.1", port, ssl=False, timeout=TIMEOUT)
            client.login(ALICE, PASSWORD)
            client.select_folder("INBOX")
            client.idle()
            return client

        clients = [await in_thread(idle) for _ in range(4)]
        for client in clients:
            self.addCleanup(
                lambda c=client: c.shutdown() if c._imap.state != "LOGOUT" else None
            )
        await server.deliver(plain_message(4), "idle-sessions-4")

        def wait_for_exists(client: IMAPClient) -> list[Any]:
            seen: list[Any] = []
            while (4, b"EXISTS") not in seen:
                got = client.idle_check(TIMEOUT)
                if not got:
                    break
                seen += got
            client.idle_done()
            return seen

        answers = [await in_thread(wait_for_exists, c) for c in clients]
        for seen in answers:
            self.assertIn((4, b"EXISTS"), seen)
        recent = []
        for client in clients:
            flags = await in_thread(client.get_flags, [4])
            recent.append(b"\\Recent" in flags[4])
            await in_thread(client.logout)
        self.assertEqual(recent.count(True), 1, recent)

    async def test_outside_delivery_pushed_by_the_watcher(self) -> None:
        """A message another program puts into new/ is pushed to an IDLE
        session by the store's watcher (inotify where there is one): the
        session's own polling is out of the picture (check_interval is an
        hour), and \\Recent goes to that session."""
        server = make_server(
            self, allow_plaintext_auth=True, watch="auto", check_interval=3600.0
        )
        self.addCleanup(server.store.stop_watching)
        server.seed([plain_message(1)])
        port = server.listen()

        def idle() -> IMAPClient:
            client = IMAPClient("127.0.0.1", port, ssl=False, timeout=TIMEOUT)
            client.login(ALICE, PASSWORD)
            client.select_folder("INBOX")
            client.idle()
            return client

        client = await in_thread(idle)
        self.addCleanup(
            lambda: client.shutdown() if client._imap.state != "LOGOUT" else None
        )
        new = os.path.join(server.maildir(), "new")
        with open(os.path.join(new, "1790000000.outside.host,S=9"), "wb") as f:
            f.write(b"x: y\r\n\r\nz")

        def wait_for_exists() -> list[Any]:
            seen: list[Any] = []
            while (2, b"EXISTS") not in seen:
                got = client.idle_check(TIMEOUT)
                if not got:
                    break
                seen += got
            client.idle_done()
            return seen

        seen = await in_thread(wait_for_exists)
        self.assertIn((2, b"EXISTS"), seen)
        flags = await in_thread(client.get_flags, [2])
        self.assertEqual(flags[2], (b"\\Recent",))
        await in_thread(client.logout)
