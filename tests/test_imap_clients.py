"""Interoperability: Python's imaplib and imapclient (PyPI) against the IMAP
server on 127.0.0.1, port 0, over STARTTLS and implicit TLS.

Each test drives one client step by step from the reactor thread (the
client calls run in threads), so mail can be delivered through the store
while a client idles.  What the clients read is compared byte for byte with
what was delivered.
"""

from __future__ import annotations

import base64
import datetime
import imaplib
import re
from typing import Any

from imapclient import IMAPClient
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.imap_client_helpers import (
    ALICE,
    BOB,
    PASSWORD,
    TIMEOUT,
    in_thread,
    make_server,
    messages,
    plain_message,
    transcript,
)
from tests.imap_server_helpers import make_world


def _ok(result: tuple[str, Any]) -> Any:
    """The data of an imaplib response that must be OK."""
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def _fetch_parts(data: list[Any]) -> dict[int, dict[bytes, bytes]]:
    """imaplib FETCH data: sequence number to {item name: literal}, e.g.
    ``BODY[]``, for the items sent as literals."""
    out: dict[int, dict[bytes, bytes]] = {}
    seq = 0
    for entry in data:
        if isinstance(entry, tuple):
            head, literal = entry
            first = re.match(rb"(\d+) \(", head)
            if first is not None:
                seq = int(first.group(1))
            m = re.search(rb"([A-Z0-9.]+(?:\[[^\]]*\])?(?:<\d+>)?) \{\d+\}$", head)
            assert m is not None, head
            out.setdefault(seq, {})[m.group(1)] = literal
    return out


class RegressionTests(SynchronousTestCase):
    """Server bugs the clients found, pinned on a fake transport."""

    def test_rename_inbox_keeps_keywords_and_order(self) -> None:
        """RENAME INBOX moves the mail in UID order with its keywords (the
        Maildir keyword letters are per folder), and leaves the INBOX empty
        with its UIDs still growing (imapclient saw keywords vanish)."""
        world = make_world(self.mktemp())
        for n in range(1, 5):
            world.deliver(plain_message(n))
        client = world.logged_in()
        client.ok("SELECT INBOX")
        client.ok("STORE 2 +FLAGS ($Work \\Flagged)")
        client.ok("STORE 4 +FLAGS ($Later)")
        client.ok("UNSELECT")
        client.ok("RENAME INBOX Old")
        client.ok("SELECT Old")
        lines = client.ok("FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        flags = [re.search(rb"FLAGS \(([^)]*)\)", x) for x in lines if b"FETCH" in x]
        ids = [re.search(rb"<(\d+)@", x) for x in lines if b"Message-ID" in x]
        self.assertEqual(
            [(m.group(1) if m else None) for m in ids], [b"1", b"2", b"3", b"4"]
        )
        self.assertEqual(
            [set(m.group(1).split()) if m else None for m in flags],
            [set(), {b"$Work", b"\\Flagged"}, set(), {b"$Later"}],
        )
        status = client.ok("STATUS INBOX (MESSAGES UIDNEXT)")
        self.assertEqual(status, [b"* STATUS INBOX (MESSAGES 0 UIDNEXT 5)"])


class ImaplibTests(TestCase):
    """Python's imaplib: every command it has a method for."""

    def setUp(self) -> None:
        self.server = make_server(self)
        self.mail = messages()
        self.server.seed(self.mail)

    async def connect(self, implicit: bool = False) -> imaplib.IMAP4:
        """An imaplib session over STARTTLS (or implicit TLS), logged in."""
        port = self.server.listen(implicit)
        client = await in_thread(self.server.imaplib, port, implicit=implicit)
        _ok(await in_thread(client.login, ALICE, PASSWORD))
        return client

    async def logout(self, client: imaplib.IMAP4) -> None:
        """LOGOUT: the server says BYE."""
        typ, data = await in_thread(client.logout)
        self.assertEqual((typ, data), ("BYE", [b"Logging out"]))

    async def test_starttls_session(self) -> None:
        """STARTTLS (LOGIN refused before it), LOGIN, CAPABILITY, LIST,
        SELECT, FETCH of whole messages byte for byte, BODY.PEEK."""
        port = self.server.listen()
        client = await in_thread(self.server.imaplib, port, starttls=False)
        self.assertIn("STARTTLS", client.capabilities)
        self.assertIn("LOGINDISABLED", client.capabilities)
        with self.assertRaises(imaplib.IMAP4.error):
            await in_thread(client.login, ALICE, PASSWORD)
        _ok(await in_thread(client.starttls, self.server.ssl_context()))
        self.assertNotIn("STARTTLS", client.capabilities)
        self.assertIn("AUTH=PLAIN", client.capabilities)
        _ok(await in_thread(client.login, ALICE, PASSWORD))
        caps = _ok(await in_thread(client.capability))[0].split()
        for cap in (b"IMAP4rev1", b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE"):
            self.assertIn(cap, caps)
        listed = _ok(await in_thread(client.list))
        names = {line.rsplit(b" ", 1)[1].strip(b'"') for line in listed}
        self.assertTrue({b"INBOX", b"Sent", b"Drafts", b"Trash"} <= names, listed)
        count = _ok(await in_thread(client.select, "INBOX"))
        self.assertEqual(count, [str(len(self.mail)).encode()])
        self.assertEqual(client.untagged_responses.get("RECENT"), [b"5"])
        # Full bodies, as delivered.
        data = _ok(await in_thread(client.fetch, "1:*", "(BODY.PEEK[])"))
        bodies = _fetch_parts(data)
        self.assertEqual([bodies[n][b"BODY[]"] for n in range(1, 6)], self.mail)
        # RFC822.HEADER ends at the blank line, which it includes.
        data = _ok(await in_thread(client.fetch, "3", "(RFC822.HEADER)"))
        header = _fetch_parts(data)[3][b"RFC822.HEADER"]
        self.assertEqual(header, self.mail[2].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        # BODY.PEEK did not set \Seen.
        flags = _ok(await in_thread(client.fetch, "1:*", "(FLAGS)"))
        self.assertEqual(
            flags, [b"%d (FLAGS (\\Recent))" % n for n in range(1, 6)], flags
        )
        await self.logout(client)

    async def test_imaps_authenticate_plain(self) -> None:
        """Implicit TLS, AUTHENTICATE PLAIN (a wrong password refused),
        EXAMINE, FETCH RFC822."""
        port = self.server.listen(implicit=True)
        client = await in_thread(self.server.imaplib, port, implicit=True)
        self.assertIn("AUTH=PLAIN", client.capabilities)
        self.assertNotIn("STARTTLS", client.capabilities)
        with self.assertRaises(imaplib.IMAP4.error):
            await in_thread(
                client.authenticate, "PLAIN", lambda _: f"\0{ALICE}\0wrong".encode()
            )
        _ok(
            await in_thread(
                client.authenticate,
                "PLAIN",
                lambda _: f"\0{ALICE}\0{PASSWORD}".encode(),
            )
        )
        self.assertEqual(client.state, "AUTH")
        _ok(await in_thread(client.select, "INBOX", True))
        data = _ok(await in_thread(client.fetch, "2", "(RFC822)"))
        self.assertEqual(_fetch_parts(data)[2][b"RFC822"], self.mail[1])
        # EXAMINE is read-only: RFC822 leaves \Seen alone.
        flags = _ok(await in_thread(client.fetch, "2", "(FLAGS)"))
        self.assertNotIn(b"\\Seen", flags[0])
        await self.logout(client)

    async def test_envelope_bodystructure_sections(self) -> None:
        """ENVELOPE, BODYSTRUCTURE, RFC822.SIZE, INTERNALDATE, BODY[n],
        BODY[n.MIME], partial fetches, HEADER.FIELDS; BODY[] sets \\Seen."""
        client = await self.connect()
        _ok(await in_thread(client.select, "INBOX"))
        data = _ok(
            await in_thread(
                client.fetch,
                "3",
                "(UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)",
            )
        )
        line = data[0] if isinstance(data[0], bytes) else b"".join(data[0])
        self.assertIn(b"RFC822.SIZE %d" % len(self.mail[2]), line)
        self.assertIn(
            b'ENVELOPE ("Tue, 8 Feb 2022 10:00:00 +0100" '
            b'"=?utf-8?q?r=C3=A9sum=C3=A9_attached?=" '
            b'(("=?utf-8?q?Ren=C3=A9?=" NIL "rene" "example.test"))',
            line,
        )
        self.assertIn(b'"<1@example.test>" "<3@example.test>")', line)
        self.assertRegex(
            line,
            rb'BODYSTRUCTURE \(\("TEXT" "PLAIN" \("CHARSET" "utf-8"\) NIL NIL '
            rb'"QUOTED-PRINTABLE" \d+ 1.*\)\("APPLICATION" "PDF" \("NAME" "cv.pdf"\)'
            rb' NIL NIL "BASE64" \d+ .*"MIXED" \("BOUNDARY" "b1"\)',
        )
        internal = imaplib.Internaldate2tuple(line)
        self.assertIsNotNone(internal)
        # Sections: the text part, its MIME header, the attachment decoded.
        data = _ok(
            await in_thread(client.fetch, "3", "(BODY.PEEK[1] BODY.PEEK[2.MIME])")
        )
        parts = _fetch_parts(data)[3]
        self.assertEqual(
            parts[b"BODY[1]"],
            b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln, voil=C3=A0 mon r=C3=A9sum=C3=A9.",
        )
        self.assertTrue(
            parts[b"BODY[2.MIME]"].startswith(b"Content-Type: application/pdf")
        )
        data = _ok(await in_thread(client.fetch, "3", "(BODY.PEEK[2])"))
        pdf = base64.b64decode(_fetch_parts(data)[3][b"BODY[2]"])
        self.assertTrue(pdf.startswith(b"%PDF-1.4"))
        # A partial fetch and HEADER.FIELDS.
        data = _ok(
            await in_thread(
                client.fetch,
                "5",
                "(BODY.PEEK[TEXT]<0.20> BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
            )
        )
        parts = _fetch_parts(data)[5]
        self.assertEqual(parts[b"BODY[TEXT]<0>"], b"line 0 of a longer m")
        self.assertEqual(
            parts[b"BODY[HEADER.FIELDS (SUBJECT)]"], b"Subject: a bigger one\r\n\r\n"
        )
        # A non-peek fetch sets \Seen.
        data = _ok(await in_thread(client.fetch, "1", "(BODY[TEXT])"))
        self.assertIn(
            b"\\Seen", b"".join(x if isinstance(x, bytes) else x[0] for x in data)
        )
        flags = _ok(await in_thread(client.fetch, "1", "(FLAGS)"))
        self.assertIn(b"\\Seen", flags[0])

    async def test_search_and_store(self) -> None:
        """SEARCH over headers, bodies, dates, sizes and flags (CHARSET
        UTF-8 with a literal too); STORE with every mode; flags persist."""
        client = await self.connect()
        _ok(await in_thread(client.select, "INBOX"))
        search = client.search
        self.assertEqual(_ok(await in_thread(search, None, "ALL")), [b"1 2 3 4 5"])
        self.assertEqual(_ok(await in_thread(search, None, "SUBJECT", "lunch")), [b"2"])
        self.assertEqual(
            _ok(await in_thread(search, None, "OR", "FROM", "rene", "LARGER", "10000")),
            [b"3 5"],
        )
        self.assertEqual(
            _ok(await in_thread(search, None, "NOT", "BODY", "message")), [b"3 4"]
        )
        self.assertEqual(
            _ok(await in_thread(search, None, "SENTSINCE", "8-Feb-2022")), [b"3"]
        )
        self.assertEqual(
            _ok(await in_thread(search, None, "HEADER", "Message-ID", "<4@")), [b"4"]
        )
        # CHARSET UTF-8 with the key as a literal: the encoded-word subject
        # and the UTF-8 body text both match when decoded.
        client.literal = "r\u00e9sum\u00e9".encode()
        self.assertEqual(_ok(await in_thread(search, "UTF-8", "SUBJECT")), [b"3"])
        client.literal = "gr\u00fc\u00dfe".encode()
        self.assertEqual(_ok(await in_thread(search, "UTF-8", "TEXT")), [b"3 4"])
        # STORE: +FLAGS, -FLAGS, FLAGS with a keyword, .SILENT.
        data = _ok(await in_thread(client.store, "1:2", "+FLAGS", "(\\Seen \\Flagged)"))
        self.assertEqual(
            data,
            [
                b"1 (FLAGS (\\Flagged \\Seen \\Recent))",
                b"2 (FLAGS (\\Flagged \\Seen \\Recent))",
            ],
        )
        data = _ok(await in_thread(client.store, "2", "-FLAGS", "(\\Flagged)"))
        self.assertEqual(data, [b"2 (FLAGS (\\Seen \\Recent))"])
        data = _ok(await in_thread(client.store, "3", "FLAGS.SILENT", "($Label1)"))
        self.assertEqual(data, [None])
        self.assertEqual(
            _ok(await in_thread(search, None, "KEYWORD", "$Label1")), [b"3"]
        )
        self.assertEqual(_ok(await in_thread(search, None, "UNSEEN")), [b"3 4 5"])
        self.assertEqual(_ok(await in_thread(search, None, "FLAGGED", "SEEN")), [b"1"])
        # The flags survive a new session.
        await self.logout(client)
        client = await self.connect()
        _ok(await in_thread(client.select, "INBOX"))
        data = _ok(await in_thread(client.fetch, "1:3", "(FLAGS)"))
        self.assertEqual(
            data,
            [
                b"1 (FLAGS (\\Flagged \\Seen))",
                b"2 (FLAGS (\\Seen))",
                b"3 (FLAGS ($Label1))",
            ],
        )
        await self.logout(client)

    async def test_copy_move_append(self) -> None:
        """CREATE a folder tree, LIST it, COPY (COPYUID), MOVE, COPY to a
        missing mailbox (TRYCREATE), APPEND with flags and a date (APPENDUID),
        STATUS, DELETE of a parent."""
        client = await self.connect()
        _ok(await in_thread(client.create, "Work"))
        _ok(await in_thread(client.create, "Work.Projects"))
        listed = _ok(await in_thread(client.list, '""', "Work*"))
        self.assertEqual(
            sorted(listed),
            [
                b'(\\HasChildren) "." Work',
                b'(\\HasNoChildren) "." Work.Projects',
            ],
        )
        _ok(await in_thread(client.select, "INBOX"))
        # COPY answers COPYUID (UIDPLUS).
        typ, data = await in_thread(client.copy, "1:2", "Work")
        self.assertEqual(typ, "OK")
        client.untagged_responses.pop("COPYUID", None)
        self.assertRegex(data[0], rb"^\[COPYUID \d+ 1:2 1:2\]")
        # MOVE (RFC 6851): untagged COPYUID, then EXPUNGEs.
        typ, data = await in_thread(
            client._simple_command, "MOVE", "3", "Work.Projects"
        )
        self.assertEqual(typ, "OK", data)
        self.assertEqual(client.untagged_responses.pop("EXPUNGE"), [b"3"])
        data = _ok(
            await in_thread(
                client.fetch, "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
            )
        )
        ids = [
            p[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"] for p in _fetch_parts(data).values()
        ]
        self.assertEqual(
            ids, [b"Message-ID: <%d@example.test>\r\n\r\n" % n for n in (1, 2, 4, 5)]
        )
        # A COPY into a missing mailbox: NO [TRYCREATE].
        typ, data = await in_thread(client.copy, "1", "Nowhere")
        self.assertEqual(typ, "NO")
        self.assertTrue(data[0].startswith(b"[TRYCREATE]"), data)
        # APPEND with flags and an internal date, read back exactly.
        when = imaplib.Time2Internaldate(1_600_000_000)
        new = plain_message(9, "appended")
        typ, data = await in_thread(
            client.append, "Work.Projects", "(\\Seen $Todo)", when, new
        )
        self.assertEqual(typ, "OK", data)
        self.assertRegex(data[0], rb"^\[APPENDUID \d+ 2\]")
        _ok(await in_thread(client.select, "Work.Projects"))
        data = _ok(
            await in_thread(
                client.uid, "FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])"
            )
        )
        parts = _fetch_parts(data)
        self.assertEqual(parts[1][b"BODY[]"], self.mail[2])
        self.assertEqual(parts[2][b"BODY[]"], new)
        heads = [e[0] for e in data if isinstance(e, tuple)]
        # Appended (and moved) messages are \Recent for one session.
        self.assertIn(b"FLAGS (\\Seen $Todo \\Recent)", heads[1])
        self.assertEqual(
            imaplib.Internaldate2tuple(heads[1]),
            imaplib.Internaldate2tuple(b"INTERNALDATE " + when.encode()),
        )
        # STATUS of the folders.
        data = _ok(await in_thread(client.status, "Work", "(MESSAGES UIDNEXT UNSEEN)"))
        self.assertEqual(data, [b"Work (MESSAGES 2 UIDNEXT 3 UNSEEN 2)"])
        # Delete the parent: its child stays.
        _ok(await in_thread(client.close))
        typ, data = await in_thread(client.delete, "Work")
        listed = _ok(await in_thread(client.list, '""', "Work*"))
        self.assertEqual(typ, "OK", data)
        # RFC 3501 §6.3.4: it stays as \Noselect while it has children.
        self.assertEqual(
            listed,
            [
                b'(\\Noselect \\HasChildren) "." Work',
                b'(\\HasNoChildren) "." Work.Projects',
            ],
        )
        typ, data = await in_thread(client.select, "Work")
        self.assertEqual(typ, "NO", data)
        await self.logout(client)

    async def test_uid_commands_and_expunge(self) -> None:
        """UID SEARCH, STORE, COPY, FETCH, UID EXPUNGE and EXPUNGE keep UIDs
        and sequence numbers straight; NAMESPACE, CHECK, UNSELECT, ID."""
        client = await self.connect()
        _ok(await in_thread(client.select, "INBOX"))
        self.assertEqual(
            _ok(await in_thread(client.uid, "SEARCH", "SUBJECT", "lunch")),
            [b"2"],
        )
        self.assertEqual(
            _ok(await in_thread(client.uid, "SEARCH", "UID", "2:4")), [b"2 3 4"]
        )
        data = _ok(await in_thread(client.uid, "STORE", "2,4", "+FLAGS", "(\\Deleted)"))
        self.assertEqual(
            data,
            [
                b"2 (UID 2 FLAGS (\\Deleted \\Recent))",
                b"4 (UID 4 FLAGS (\\Deleted \\Recent))",
            ],
        )
        data = _ok(
            await in_thread(client._simple_command, "UID", "COPY", "1:3", "Trash")
        )
        self.assertRegex(data[0], rb"^\[COPYUID \d+ 1:3 1:3\]")
        # UID EXPUNGE (UIDPLUS) removes only the UIDs named.
        typ, data = await in_thread(client.uid, "EXPUNGE", "4")
        self.assertEqual(typ, "OK", data)
        self.assertEqual(client.untagged_responses.pop("EXPUNGE"), [b"4"])
        data = _ok(await in_thread(client.expunge))
        self.assertEqual(data, [b"2"])
        data = _ok(await in_thread(client.uid, "FETCH", "1:*", "(FLAGS)"))
        self.assertEqual(
            data,
            [
                b"1 (UID 1 FLAGS (\\Recent))",
                b"2 (UID 3 FLAGS (\\Recent))",
                b"3 (UID 5 FLAGS (\\Recent))",
            ],
        )
        # NAMESPACE, CHECK, UNSELECT, ID.
        self.assertEqual(
            _ok(await in_thread(client.namespace)), [b'(("" ".")) NIL NIL']
        )
        _ok(await in_thread(client.check))
        _ok(await in_thread(client.unselect))
        self.assertEqual(client.state, "AUTH")
        typ, data = await in_thread(client.xatom, "ID", '("name" "imaplib")')
        self.assertEqual(typ, "OK")
        await self.logout(client)

    async def test_quota(self) -> None:
        """A user with a quota: QUOTA capability, GETQUOTAROOT, GETQUOTA,
        an APPEND over it refused with OVERQUOTA."""
        server = make_server(self, quota=5000)
        port = server.listen(implicit=True)
        client = await in_thread(server.imaplib, port, implicit=True)
        _ok(await in_thread(client.login, BOB, PASSWORD))
        caps = _ok(await in_thread(client.capability))[0].split()
        self.assertIn(b"QUOTA", caps)
        typ, data = await in_thread(client.getquotaroot, "INBOX")
        self.assertEqual(typ, "OK")
        self.assertEqual(data, [[b'INBOX ""'], [b'"" (STORAGE 0 4)']])
        typ, data = await in_thread(
            client.append, "INBOX", None, None, plain_message(1, body=b"x" * 3000)
        )
        self.assertEqual(typ, "OK")
        used = -(-len(plain_message(1, body=b"x" * 3000)) // 1024)
        typ, data = await in_thread(
            client.append, "INBOX", None, None, plain_message(2, body=b"x" * 3000)
        )
        self.assertEqual(typ, "NO")
        self.assertTrue(data[0].startswith(b"[OVERQUOTA]"), data)
        self.assertEqual(
            _ok(await in_thread(client.getquota, '""')),
            [b'"" (STORAGE %d 4)' % used],
        )
        await self.logout(client)


class ImaplibLimitTests(TestCase):
    """imaplib against the literal limit ([imap] max_literal, announced as
    APPENDLIMIT)."""

    async def test_append_over_the_limit(self) -> None:
        """An APPEND one octet over APPENDLIMIT gets a tagged NO [TOOBIG]
        before imaplib sends any of the message; the session goes on and an
        APPEND that fits works.  A LITERAL+ one gets BAD [TOOBIG], its
        octets are skipped, and the session still works."""
        server = make_server(self, max_literal=1000)
        port = server.listen()
        client = await in_thread(server.imaplib, port)
        _ok(await in_thread(client.login, ALICE, PASSWORD))
        self.assertIn("APPENDLIMIT=1000", client.capabilities)
        big = b"Subject: big\r\n\r\n" + b"x" * (1001 - 16)
        self.assertEqual(len(big), 1001)
        typ, data = await in_thread(client.append, "INBOX", None, None, big)
        self.assertEqual(
            (typ, data), ("NO", [b"[TOOBIG] Literal of 1001 octets is too large"])
        )
        _ok(await in_thread(client.noop))
        lines = await in_thread(
            transcript, client, "APPEND INBOX {1001+}\r\n" + big.decode()
        )
        self.assertEqual(len(lines), 1)
        self.assertRegex(
            lines[0], rb"^\S+ BAD \[TOOBIG\] Literal of 1001 octets is too large$"
        )
        typ, data = await in_thread(client.append, "INBOX", None, None, big[:1000])
        self.assertEqual(typ, "OK", data)
        self.assertRegex(data[0], rb"^\[APPENDUID \d+ 1\]")
        data = _ok(await in_thread(client.select, "INBOX"))
        self.assertEqual(data, [b"1"])
        typ, _ = await in_thread(client.logout)
        self.assertEqual(typ, "BYE")


class IMAPClientTests(TestCase):
    """imapclient (PyPI): its parsed responses, IDLE and CONDSTORE."""

    def setUp(self) -> None:
        self.server = make_server(self)
        self.mail = messages()
        self.server.seed(self.mail)

    async def connect(self, implicit: bool = True) -> IMAPClient:
        """An imapclient session (UIDs by default) over implicit TLS or
        STARTTLS, not yet logged in."""
        port = self.server.listen(implicit)
        context = self.server.ssl_context()

        def connect() -> IMAPClient:
            client = IMAPClient(
                "127.0.0.1", port, ssl=implicit, ssl_context=context, timeout=TIMEOUT
            )
            if not implicit:
                client.starttls(context)
            return client

        client = await in_thread(connect)

        def close() -> None:
            if client._imap.state != "LOGOUT":
                client.shutdown()

        self.addCleanup(close)
        return client

    async def test_session(self) -> None:
        """imapclient over STARTTLS with AUTHENTICATE PLAIN: ID, NAMESPACE,
        special-use folders, UTF-7 folder names, SEARCH with UTF-8,
        parsed ENVELOPE and BODYSTRUCTURE, bodies, flags, COPY, MOVE, UID
        EXPUNGE, APPEND with a date, STATUS."""
        client = await self.connect(implicit=False)
        await in_thread(client.plain_login, ALICE, PASSWORD)
        caps = await in_thread(client.capabilities)
        self.assertIn(b"IDLE", caps)
        self.assertIn(b"LIST-STATUS", caps)
        self.assertEqual(
            await in_thread(client.id_, {"name": "imapclient"}),
            ((b"name", b"twistedmail"),),
        )
        ns = await in_thread(client.namespace)
        self.assertEqual((ns.personal, ns.other, ns.shared), ((("", "."),), None, None))
        folders = await in_thread(client.list_folders)
        self.assertIn(((b"\\HasNoChildren",), b".", "INBOX"), folders)
        self.assertEqual(await in_thread(client.find_special_folder, b"\\Sent"), "Sent")
        self.assertEqual(
            await in_thread(client.find_special_folder, b"\\Trash"), "Trash"
        )
        # Modified UTF-7 names, both ways.
        await in_thread(client.create_folder, "Caf\u00e9 & R\u00e9sum\u00e9s")
        await in_thread(client.create_folder, "Caf\u00e9.\u65e5\u672c")
        names = {f[2] for f in await in_thread(client.list_folders)}
        self.assertIn("Caf\u00e9 & R\u00e9sum\u00e9s", names)
        self.assertIn("Caf\u00e9.\u65e5\u672c", names)
        info = await in_thread(client.select_folder, "INBOX")
        self.assertEqual(info[b"EXISTS"], 5)
        self.assertEqual(info[b"UIDNEXT"], 6)
        self.assertIn(b"\\Seen", info[b"PERMANENTFLAGS"])
        uids = await in_thread(client.search)
        self.assertEqual(uids, [1, 2, 3, 4, 5])
        self.assertEqual(
            await in_thread(client.search, ["SUBJECT", "caf\u00e9"], "UTF-8"), [4]
        )
        self.assertEqual(
            await in_thread(client.search, ["TEXT", "K\u00f6ln"], "UTF-8"), [3]
        )
        fetched = await in_thread(
            client.fetch, [3], ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "FLAGS"]
        )
        data = fetched[3]
        env = data[b"ENVELOPE"]
        self.assertEqual(env.subject, b"=?utf-8?q?r=C3=A9sum=C3=A9_attached?=")
        self.assertEqual(env.message_id, b"<3@example.test>")
        self.assertEqual(env.in_reply_to, b"<1@example.test>")
        self.assertEqual(
            [str(a) for a in env.to], ["alice@example.test", "Bob <bob@example.test>"]
        )
        self.assertEqual(env.cc[0].mailbox, b"carol")
        self.assertEqual(env.from_[0].host, b"example.test")
        body = data[b"BODYSTRUCTURE"]
        self.assertTrue(body.is_multipart)
        parts, subtype = body[0], body[1]
        self.assertEqual(subtype, b"MIXED")
        self.assertEqual(parts[0][:2], (b"TEXT", b"PLAIN"))
        self.assertEqual(parts[1][:2], (b"APPLICATION", b"PDF"))
        self.assertEqual(data[b"RFC822.SIZE"], len(self.mail[2]))
        # Whole messages as delivered.
        bodies = await in_thread(
            client.fetch, await in_thread(client.search), ["BODY.PEEK[]"]
        )
        self.assertEqual([bodies[u][b"BODY[]"] for u in range(1, 6)], self.mail)
        # Flags, copy, move, expunge, append.
        await in_thread(client.add_flags, [1, 2], [b"\\Seen", b"$Work"])
        await in_thread(client.remove_flags, [2], [b"$Work"])
        flags = await in_thread(client.get_flags, [1, 2])
        self.assertEqual(set(flags[1]), {b"\\Seen", b"$Work", b"\\Recent"})
        self.assertEqual(set(flags[2]), {b"\\Seen", b"\\Recent"})
        await in_thread(client.copy, [1, 2], "Archive")
        await in_thread(client.move, [3], "Caf\u00e9 & R\u00e9sum\u00e9s")
        self.assertEqual(await in_thread(client.search), [1, 2, 4, 5])
        await in_thread(client.set_flags, [4], [b"\\Deleted"])
        await in_thread(client.uid_expunge, [4])
        self.assertEqual(await in_thread(client.search), [1, 2, 5])
        when = datetime.datetime(2021, 5, 4, 3, 2, 1, tzinfo=datetime.UTC)
        result = await in_thread(
            client.append, "Archive", plain_message(7), [b"\\Answered"], when
        )
        self.assertRegex(result, rb"^\[APPENDUID \d+ 3\]")
        status = await in_thread(
            client.folder_status, "Archive", [b"MESSAGES", b"UNSEEN", b"UIDNEXT"]
        )
        self.assertEqual(status, {b"MESSAGES": 3, b"UNSEEN": 1, b"UIDNEXT": 4})
        await in_thread(client.select_folder, "Archive", readonly=True)
        fetched = await in_thread(
            client.fetch, [3], ["INTERNALDATE", "FLAGS", "BODY.PEEK[]"]
        )
        self.assertEqual(fetched[3][b"INTERNALDATE"].astimezone(datetime.UTC), when)
        self.assertEqual(fetched[3][b"FLAGS"], (b"\\Answered",))
        self.assertEqual(fetched[3][b"BODY[]"], plain_message(7))
        await in_thread(client.select_folder, "Caf\u00e9 & R\u00e9sum\u00e9s")
        moved = await in_thread(
            client.fetch, await in_thread(client.search), ["BODY.PEEK[]"]
        )
        self.assertEqual(moved, {1: {b"BODY[]": self.mail[2], b"SEQ": 1}})
        self.assertEqual(await in_thread(client.logout), b"Logging out")

    async def test_idle(self) -> None:
        """IDLE sees a delivery (EXISTS), another session's STORE (FETCH)
        and EXPUNGE as they happen; DONE ends it cleanly."""
        client = await self.connect()
        await in_thread(client.login, ALICE, PASSWORD)
        await in_thread(client.select_folder, "INBOX")
        other = await self.connect()
        await in_thread(other.login, ALICE, PASSWORD)
        await in_thread(other.select_folder, "INBOX")
        await in_thread(client.idle)
        # Mail delivered through the store is pushed.
        await self.server.deliver(plain_message(6, "new mail"), "idle-6")
        seen = await in_thread(client.idle_check, TIMEOUT)
        self.assertIn((6, b"EXISTS"), seen)
        # So are another session's flag changes and expunges.
        await in_thread(other.add_flags, [2], [b"\\Flagged"])
        seen = await in_thread(client.idle_check, TIMEOUT)
        # This session selected first: \Recent is its own.
        self.assertEqual(seen, [(2, b"FETCH", (b"FLAGS", (b"\\Flagged", b"\\Recent")))])
        await in_thread(other.delete_messages, [1])
        seen = await in_thread(client.idle_check, TIMEOUT)
        self.assertEqual(seen, [(1, b"FETCH", (b"FLAGS", (b"\\Deleted", b"\\Recent")))])
        await in_thread(other.expunge)
        seen = await in_thread(client.idle_check, TIMEOUT)
        self.assertEqual(seen, [(1, b"EXPUNGE")])
        text, responses = await in_thread(client.idle_done)
        self.assertEqual(responses, [])
        # The client's view agrees with the other session.
        self.assertEqual(await in_thread(client.search), [2, 3, 4, 5, 6])
        fetched = await in_thread(client.fetch, [6], ["BODY.PEEK[]"])
        self.assertEqual(fetched[6][b"BODY[]"], plain_message(6, "new mail"))
        await in_thread(client.logout)
        await in_thread(other.logout)

    async def test_condstore(self) -> None:
        """ENABLE CONDSTORE, HIGHESTMODSEQ, FETCH MODSEQ, FETCH CHANGEDSINCE,
        SEARCH MODSEQ and STATUS HIGHESTMODSEQ after a STORE."""
        client = await self.connect()
        await in_thread(client.login, ALICE, PASSWORD)
        self.assertEqual(await in_thread(client.enable, "CONDSTORE"), [b"CONDSTORE"])
        info = await in_thread(client.select_folder, "INBOX")
        highest = info[b"HIGHESTMODSEQ"]
        fetched = await in_thread(client.fetch, [1, 2, 3, 4, 5], ["MODSEQ"])
        self.assertTrue(all(f[b"MODSEQ"][0] <= highest for f in fetched.values()))
        await in_thread(client.add_flags, [2, 4], [b"\\Answered"])
        changed = await in_thread(
            client.fetch, [1, 2, 3, 4, 5], ["FLAGS"], [f"CHANGEDSINCE {highest}"]
        )
        self.assertEqual(sorted(changed), [2, 4])
        modseqs = {u: changed[u][b"MODSEQ"][0] for u in changed}
        self.assertTrue(all(m > highest for m in modseqs.values()), modseqs)
        self.assertEqual(
            await in_thread(client.search, ["MODSEQ", str(highest + 1)]), [2, 4]
        )
        status = await in_thread(client.folder_status, "INBOX", [b"HIGHESTMODSEQ"])
        self.assertEqual(status[b"HIGHESTMODSEQ"], max(modseqs.values()))
        # The mod-sequences survive a new session, which turns CONDSTORE on
        # with SELECT (CONDSTORE) instead of ENABLE.
        await in_thread(client.logout)
        again = await self.connect()
        await in_thread(again.login, ALICE, PASSWORD)
        imap = again._imap
        typ, _ = await in_thread(imap._simple_command, "SELECT", "INBOX", "(CONDSTORE)")
        self.assertEqual(typ, "OK")
        self.assertEqual(
            imap.untagged_responses.pop("HIGHESTMODSEQ"),
            [str(max(modseqs.values())).encode()],
        )
        # STORE's FETCH answers now carry MODSEQ (RFC 7162 §3.2).
        lines = await in_thread(transcript, imap, "STORE 5 +FLAGS (\\Seen)")
        self.assertRegex(lines[0], rb"^\* 5 FETCH \(FLAGS \(\\Seen\) MODSEQ \(\d+\)\)$")
        self.assertRegex(lines[1], rb" OK ")
        await in_thread(again.logout)

    async def test_mailbox_management(self) -> None:
        """SUBSCRIBE and LSUB, RENAME INBOX (its mail moves, the INBOX stays
        and keeps its UIDs growing), EXAMINE refusing STORE, partial and
        header-field fetches, CLOSE expunging, UNSELECT, LIST RETURN
        (STATUS), and an APPEND over APPENDLIMIT refused before its literal
        is sent."""
        server = make_server(self, max_literal=4096)
        server.seed(self.mail[:4])
        port = server.listen(implicit=True)

        def connect() -> IMAPClient:
            return IMAPClient(
                "127.0.0.1",
                port,
                ssl=True,
                ssl_context=server.ssl_context(),
                timeout=TIMEOUT,
            )

        client = await in_thread(connect)
        self.addCleanup(
            lambda: client.shutdown() if client._imap.state != "LOGOUT" else None
        )
        await in_thread(client.login, ALICE, PASSWORD)
        self.assertIn(b"APPENDLIMIT=4096", await in_thread(client.capabilities))
        await in_thread(client.unsubscribe_folder, "Junk")
        await in_thread(client.subscribe_folder, "Junk")
        await in_thread(client.unsubscribe_folder, "Archive")
        subscribed = [f[2] for f in await in_thread(client.list_sub_folders)]
        self.assertIn("Junk", subscribed)
        self.assertNotIn("Archive", subscribed)
        await in_thread(client.select_folder, "INBOX")
        await in_thread(client.add_flags, [2], [b"$Work"])
        await in_thread(client.unselect_folder)
        await in_thread(client.rename_folder, "INBOX", "Old")
        inbox = await in_thread(client.folder_status, "INBOX")
        old = await in_thread(client.folder_status, "Old")
        self.assertEqual((inbox[b"MESSAGES"], inbox[b"UIDNEXT"]), (0, 5))
        self.assertEqual(old[b"MESSAGES"], 4)
        await in_thread(client.select_folder, "Old", readonly=True)
        with self.assertRaises(IMAPClient.Error) as caught:
            await in_thread(client.add_flags, [1], [b"\\Seen"])
        self.assertIn("[READ-ONLY]", str(caught.exception))
        info = await in_thread(client.select_folder, "Old")
        self.assertEqual(info[b"EXISTS"], 4)
        # The same order, the keyword kept.
        fetched = await in_thread(
            client.fetch, [1, 2, 3, 4], ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]
        )
        self.assertEqual(
            [fetched[u][b"BODY[HEADER.FIELDS (SUBJECT)]"] for u in (1, 2, 3, 4)],
            [
                re.search(rb"(?m)^Subject: .*\r\n", m).group(0) + b"\r\n"  # type: ignore[union-attr]
                for m in self.mail[:4]
            ],
        )
        self.assertEqual(fetched[2][b"FLAGS"], (b"$Work",))
        fetched = await in_thread(
            client.fetch,
            [1],
            ["BODY.PEEK[]<0.30>", "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]"],
        )
        self.assertEqual(fetched[1][b"BODY[]<0>"], self.mail[0][:30])
        self.assertEqual(
            fetched[1][b"BODY[HEADER.FIELDS (SUBJECT FROM)]"],
            b"From: Sender <sender@example.test>\r\nSubject: hello\r\n\r\n",
        )
        await in_thread(client.delete_messages, [1, 2])
        await in_thread(client.close_folder)
        self.assertEqual((await in_thread(client.folder_status, "Old"))[b"MESSAGES"], 2)
        await in_thread(client.select_folder, "Old")
        await in_thread(client.unselect_folder)
        # An APPEND over the limit: refused at once, no continuation.
        with self.assertRaises(IMAPClient.Error) as caught:
            await in_thread(client.append, "Old", b"x" * 5000)
        self.assertIn("TOOBIG", str(caught.exception))
        await in_thread(client.noop)
        typ, _ = await in_thread(
            client._imap._simple_command,
            "LIST",
            '""',
            '"*"',
            "RETURN",
            "(STATUS (MESSAGES UNSEEN))",
        )
        self.assertEqual(typ, "OK")
        statuses = client._imap.untagged_responses.pop("STATUS")
        self.assertIn(b"Old (MESSAGES 2 UNSEEN 2)", statuses)
        self.assertIn(b"INBOX (MESSAGES 0 UNSEEN 0)", statuses)
        await in_thread(client.logout)

    async def test_idle_keepalive(self) -> None:
        """A session IDLE with nothing happening gets ``* OK Still here``
        every C{idle_keepalive} seconds and stays usable."""
        server = make_server(self, idle_keepalive=0.2)
        port = server.listen(implicit=True)
        context = server.ssl_context()

        def run() -> tuple[list[Any], Any]:
            client = IMAPClient(
                "127.0.0.1", port, ssl=True, ssl_context=context, timeout=TIMEOUT
            )
            client.login(ALICE, PASSWORD)
            client.select_folder("INBOX")
            client.idle()
            seen = client.idle_check(TIMEOUT)
            client.idle_done()
            noop = client.noop()
            client.logout()
            return seen, noop

        seen, noop = await in_thread(run)
        self.assertEqual(seen, [(b"OK", b"Still here")])
        self.assertEqual(noop, (b"NOOP completed", []))
