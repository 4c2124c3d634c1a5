"""Interoperability: mbsync (Debian package ``isync``) keeps a local Maildir
in two-way sync with the IMAP server, over STARTTLS and over IMAPS.

The scenario: INBOX and a folder tree (Work, Work.Projects) are seeded on
the server; a first sync copies them; then both sides change (flags set and
cleared, a message deleted, one marked \\Deleted, new messages, a new
folder) and a second sync must leave both sides holding the same messages
(by Message-ID) with the same flags, the expunged ones gone everywhere, and
agreeing with what the changes should give; a third sync changes nothing.

mbsync runs as a subprocess with a private HOME and configuration; it
trusts exactly the test certificate (``CertificateFile``) and keeps its
local folders with ``SubFolders Verbatim`` (``Work/Projects`` locally for
the server's ``Work.Projects``).
"""

from __future__ import annotations

import email.parser
import imaplib
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Iterable
from typing import Any

from imapclient import IMAPClient
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.imap_client_helpers import (
    ALICE,
    PASSWORD,
    TIMEOUT,
    Server,
    in_thread,
    make_server,
    plain_message,
)
from twistedmail.config import ListenerSettings, ServerSettings, Settings, TLSSettings
from twistedmail.service import DEMO_ACCOUNT_FILE, makeService
from twistedmail.testing import make_test_certificate

HOSTNAME = "mail.example.test"

#: Flags both sides keep: Maildir letters (draft, flagged, replied, seen,
#: trashed).  mbsync 1.4 syncs no keywords.
_FLAGS = frozenset("DFRST")

#: A folder's contents: Message-ID to its flag letters.
Contents = dict[str, str]

_HEADERS = email.parser.BytesHeaderParser()


def _message_id(data: bytes) -> str:
    value = _HEADERS.parsebytes(data)["Message-ID"]
    assert value is not None, data[:200]
    return str(value).strip()


def _message(n: int) -> bytes:
    """Message ``n``; 6 and 22 are big (several hundred KiB, 6 with 8-bit
    UTF-8 text) so that the literals both ways take many reads."""
    if n == 6:
        line = "Gr\u00fc\u00dfe aus K\u00f6ln, ligne %d \u2014 \u65e5\u672c\r\n"
        body = "".join(line % i for i in range(8000)).encode()
        return plain_message(n, "gro\u00df", body)
    if n == 22:
        body = b"".join(b"line %d of a big one\r\n" % i for i in range(20000))
        return plain_message(n, "big", body)
    return plain_message(n)


def _without_tuid(data: bytes) -> bytes:
    return re.sub(rb"(?m)^X-TUID: \S+\r?\n", b"", data, count=1)


def _mid(n: int) -> str:
    return f"<{n}@example.test>"


#: IMAP system flags as Maildir letters.
_LETTER = {
    b"\\Draft": "D",
    b"\\Flagged": "F",
    b"\\Answered": "R",
    b"\\Seen": "S",
    b"\\Deleted": "T",
}


def _letters(flags: Iterable[str]) -> str:
    return "".join(sorted(set(flags) & _FLAGS))


class _MbsyncCase(TestCase):
    """mbsync with a private HOME and a local Maildir (the near side)."""

    def setUp(self) -> None:
        if shutil.which("mbsync") is None:
            self.fail("mbsync is not installed (apt-get install isync)")
        self.home = os.path.abspath(self.mktemp())
        self.local = os.path.join(self.home, "Mail")
        os.makedirs(self.local)
        self.outputs: list[str] = []

    # The local side

    def local_folders(self) -> dict[str, Contents]:
        """Every local folder (``Work/Projects`` named ``Work.Projects``)."""
        self.local_bodies: dict[str, bytes] = {}
        result: dict[str, Contents] = {}
        for directory, subdirs, _ in os.walk(self.local):
            if "cur" not in subdirs:
                continue
            name = os.path.relpath(directory, self.local).replace(os.sep, ".")
            contents: Contents = {}
            for sub in ("new", "cur"):
                for filename in os.listdir(os.path.join(directory, sub)):
                    with open(os.path.join(directory, sub, filename), "rb") as f:
                        data = f.read()
                    mid = _message_id(data)
                    contents[mid] = _letters(filename.partition(":2,")[2])
                    self.local_bodies[mid] = data
            result[name] = contents
        return result

    def local_file(self, folder: str, n: int) -> str:
        """The local file holding message ``n``."""
        directory = os.path.join(self.local, *folder.split("."))
        for sub in ("new", "cur"):
            for filename in os.listdir(os.path.join(directory, sub)):
                path = os.path.join(directory, sub, filename)
                with open(path, "rb") as f:
                    if _message_id(f.read()) == _mid(n):
                        return path
        raise AssertionError(f"message {n} is not in local {folder}")

    def set_local_flags(self, folder: str, n: int, letters: str) -> None:
        """Rename a local message's file to carry these flags, in cur/."""
        path = self.local_file(folder, n)
        base = os.path.basename(path).partition(":2,")[0]
        target = os.path.join(os.path.dirname(os.path.dirname(path)), "cur")
        os.rename(path, os.path.join(target, f"{base}:2,{''.join(sorted(letters))}"))

    def add_local(self, folder: str, n: int) -> None:
        """Put a new message into a local folder's new/ (making the
        folder if needed)."""
        directory = os.path.join(self.local, *folder.split("."))
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(directory, sub), exist_ok=True)
        name = f"1790000000.local{n}.test"
        with open(os.path.join(directory, "tmp", name), "wb") as f:
            f.write(_message(n).replace(b"\r\n", b"\n"))
        os.rename(
            os.path.join(directory, "tmp", name), os.path.join(directory, "new", name)
        )

    # mbsync

    def write_config(
        self,
        port: int,
        implicit: bool,
        cert: str,
        user: str = ALICE,
        password: str = PASSWORD,
    ) -> str:
        """The mbsyncrc: our server far (LOGIN over IMAPS, SASL PLAIN over
        STARTTLS), the local Maildir near."""
        rc = os.path.join(self.home, "mbsyncrc")
        with open(rc, "w") as f:
            f.write(
                "IMAPAccount twistedmail\n"
                "Host 127.0.0.1\n"
                f"Port {port}\n"
                f"User {user}\n"
                f'Pass "{password}"\n'
                f"SSLType {'IMAPS' if implicit else 'STARTTLS'}\n"
                f"CertificateFile {cert}\n"
                f"AuthMechs {'LOGIN' if implicit else 'PLAIN'}\n"
                "\n"
                "IMAPStore far\n"
                "Account twistedmail\n"
                "\n"
                "MaildirStore near\n"
                f"Path {self.local}/\n"
                f"Inbox {self.local}/INBOX\n"
                "SubFolders Verbatim\n"
                "\n"
                "Channel mail\n"
                "Far :far:\n"
                "Near :near:\n"
                "Patterns *\n"
                "Create Both\n"
                "Expunge Both\n"
                "SyncState *\n"
                "CopyArrivalDate yes\n"
            )
        os.chmod(rc, 0o600)
        return rc

    async def mbsync(self, rc: str) -> str:
        """Run ``mbsync -a``; fail the test (with its output) if it fails."""
        path = shutil.which("mbsync")
        assert path is not None
        env = {"HOME": self.home, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        out, err, code = await getProcessOutputAndValue(
            path, ["-V", "-c", rc, "-a"], env=env, path=self.home, reactor=reactor
        )
        text = (out + err).decode("utf-8", "replace")
        self.outputs.append(text)
        self.assertEqual(code, 0, f"mbsync failed ({code}):\n{text}")
        return text


class MbsyncTests(_MbsyncCase):
    """mbsync against a server on 127.0.0.1, port 0."""

    def setUp(self) -> None:
        super().setUp()
        self.server: Server = make_server(self)
        self.seed_server()

    # The server side

    def seed_server(self) -> None:
        """INBOX: 1-5 (2 flagged); Work: 11, 12; Work.Projects: 21, 22
        (22 seen)."""
        store = self.server.store
        path = self.server.maildir()
        self.server.seed([plain_message(n) for n in range(1, 6)])
        for folder, numbers in (("Work", (11, 12)), ("Work.Projects", (21, 22))):
            store.create_folder(path, folder)
            mailbox = store.open_mailbox(path, folder)
            try:
                for n in numbers:
                    mailbox.add(_message(n), "S" if n == 22 else "")
            finally:
                mailbox.close()
        mailbox = store.open_mailbox(path)
        try:
            mailbox.set_flags(2, frozenset("F"), frozenset())
        finally:
            mailbox.close()

    def server_folders(self) -> dict[str, Contents]:
        """Every folder on the server with its messages (read from disk)."""
        self.server_bodies: dict[str, bytes] = {}
        store = self.server.store
        path = self.server.maildir()
        result: dict[str, Contents] = {}
        for folder in ["INBOX", *store.list_folders(path)]:
            mailbox = store.open_mailbox(path, folder)
            try:
                contents: Contents = {}
                for info in mailbox.messages():
                    data = mailbox.read(info.uid)
                    mid = _message_id(data)
                    contents[mid] = _letters(info.flags)
                    self.server_bodies[mid] = data
                result[folder] = contents
            finally:
                mailbox.close()
        return result

    def check_bodies(self) -> None:
        """Each message is the same on both sides and as first written:
        CRLF on the server, LF locally (mbsync converts, and puts an
        ``X-TUID`` header into every message it copies, either way)."""
        self.assertEqual(set(self.server_bodies), set(self.local_bodies))
        for mid, data in self.server_bodies.items():
            n = int(mid[1:].partition("@")[0])
            self.assertEqual(_without_tuid(data), _message(n), mid)
            self.assertEqual(
                _without_tuid(self.local_bodies[mid]),
                _message(n).replace(b"\r\n", b"\n"),
                mid,
            )

    # Server-side changes through IMAP

    def change_server(self, port: int, implicit: bool) -> None:
        """Blocking: flag changes, an expunge, an APPEND and a new folder
        on the server, as another client would make them."""
        client = self.server.imaplib(port, implicit=implicit)
        try:
            assert client.login(ALICE, PASSWORD)[0] == "OK"
            assert client.select("INBOX")[0] == "OK"
            # 1: seen and answered; 2: unflagged; 3: expunged.
            _, ids = client.search(None, "HEADER", "Message-ID", "<1@")
            assert client.store(ids[0], "+FLAGS", "(\\Seen \\Answered)")[0] == "OK"
            _, ids = client.search(None, "HEADER", "Message-ID", "<2@")
            assert client.store(ids[0], "-FLAGS", "(\\Flagged)")[0] == "OK"
            _, ids = client.search(None, "HEADER", "Message-ID", "<3@")
            assert client.store(ids[0], "+FLAGS", "(\\Deleted)")[0] == "OK"
            assert client.expunge()[0] == "OK"
            # Work: 12 marked \Deleted (not expunged), a new flagged message.
            assert client.select("Work")[0] == "OK"
            _, ids = client.search(None, "HEADER", "Message-ID", "<12@")
            assert client.store(ids[0], "+FLAGS", "(\\Deleted)")[0] == "OK"
            typ, _ = client.append("Work", "(\\Flagged)", None, plain_message(13))
            assert typ == "OK"
            # Work.Projects: 22 unseen again.
            assert client.select("Work.Projects")[0] == "OK"
            _, ids = client.search(None, "HEADER", "Message-ID", "<22@")
            assert client.store(ids[0], "-FLAGS", "(\\Seen)")[0] == "OK"
            # A new folder under Work, with a draft in it.
            assert client.create("Work.Later")[0] == "OK"
            typ, _ = client.append("Work.Later", "(\\Draft)", None, plain_message(31))
            assert typ == "OK"
            client.logout()
        finally:
            if client.state != "LOGOUT":
                client.shutdown()

    # The scenario

    async def two_way_sync(self, implicit: bool) -> None:
        port = self.server.listen(implicit)
        rc = self.write_config(port, implicit, self.server.cert)
        log = await self.mbsync(rc)
        sasl = "Authenticating with SASL mechanism PLAIN"
        if implicit:
            self.assertNotIn(sasl, log)
        else:
            self.assertIn(sasl, log)
        # The first login made the special-use folders (Sent, Trash...).
        first = self.server_folders()
        self.assertEqual(self.local_folders(), first, self.outputs[-1])
        self.check_bodies()
        self.assertEqual(self.server_folders(), first)
        self.assertEqual(
            {k: first[k] for k in ("INBOX", "Work", "Work.Projects")},
            {
                "INBOX": {_mid(n): "F" if n == 2 else "" for n in range(1, 6)},
                "Work": {_mid(11): "", _mid(12): ""},
                "Work.Projects": {_mid(21): "", _mid(22): "S"},
            },
        )
        # Changes on the local side.
        self.set_local_flags("INBOX", 4, "SF")
        os.unlink(self.local_file("INBOX", 5))
        self.set_local_flags("Work", 11, "T")
        self.set_local_flags("Work.Projects", 21, "RS")
        self.add_local("INBOX", 6)
        self.add_local("Work.Projects", 23)
        self.add_local("Personal", 41)
        # Changes on the server side, over IMAP and by delivery.
        await in_thread(self.change_server, port, implicit)
        await self.server.deliver(plain_message(7), "mbsync-7")
        await self.mbsync(rc)
        expected = {
            "INBOX": {
                _mid(1): "RS",
                _mid(2): "",
                _mid(4): "FS",
                _mid(6): "",
                _mid(7): "",
            },
            "Work": {_mid(13): "F"},
            "Work.Projects": {_mid(21): "RS", _mid(22): "", _mid(23): ""},
            "Work.Later": {_mid(31): "D"},
            "Personal": {_mid(41): ""},
        }
        server = self.server_folders()
        self.assertEqual(self.local_folders(), server, self.outputs[-1])
        self.check_bodies()
        self.assertEqual({k: server[k] for k in expected}, expected, self.outputs[-1])
        self.assertEqual(
            set(server), {*expected, "Sent", "Drafts", "Trash", "Junk", "Archive"}
        )
        # A third sync finds nothing to do.
        before = self.snapshot()
        await self.mbsync(rc)
        self.assertEqual(self.snapshot(), before, self.outputs[-1])

    def snapshot(self) -> tuple[Any, ...]:
        """The file names on both sides and the server's UID lists."""
        names = []
        for root in (self.local, self.server.maildir()):
            for directory, _, files in os.walk(root):
                if os.path.basename(directory) in ("new", "cur"):
                    names.extend(os.path.join(directory, f) for f in files)
        return tuple(sorted(names))

    async def test_starttls(self) -> None:
        """A two-way sync over STARTTLS: both sides' changes meet."""
        await self.two_way_sync(False)

    async def test_idle_session_sees_sync(self) -> None:
        """An imapclient session IDLE on the INBOX is told of what mbsync
        pushes (a flag, a deletion, a new message) as it happens, and its
        view then matches the local side."""
        port = self.server.listen(implicit=True)
        rc = self.write_config(port, True, self.server.cert)
        await self.mbsync(rc)
        context = self.server.ssl_context()

        def idle() -> IMAPClient:
            client = IMAPClient(
                "127.0.0.1", port, ssl=True, ssl_context=context, timeout=TIMEOUT
            )
            client.login(ALICE, PASSWORD)
            client.select_folder("INBOX")
            client.idle()
            return client

        client = await in_thread(idle)
        self.addCleanup(
            lambda: client.shutdown() if client._imap.state != "LOGOUT" else None
        )
        self.set_local_flags("INBOX", 1, "S")
        os.unlink(self.local_file("INBOX", 2))
        self.add_local("INBOX", 7)
        await self.mbsync(rc)

        def watch() -> list[Any]:
            seen: list[Any] = []
            kinds: set[bytes] = set()
            # Each change is pushed as it is made; stop once all arrived.
            while not {b"FETCH", b"EXPUNGE", b"EXISTS"} <= kinds:
                got = client.idle_check(TIMEOUT)
                if not got:
                    break
                seen += got
                kinds |= {r[1] for r in got if len(r) > 1}
            client.idle_done()
            return seen

        seen = await in_thread(watch)
        self.assertIn((1, b"FETCH", (b"FLAGS", (b"\\Seen",))), seen)
        self.assertIn((2, b"EXPUNGE"), seen)
        # mbsync may APPEND before or after it expunges.
        self.assertTrue({(5, b"EXISTS"), (6, b"EXISTS")} & set(seen), seen)
        uids = await in_thread(client.search)
        fetched = await in_thread(
            client.fetch, uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]
        )
        view = {
            _message_id(f[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]): _letters(
                _LETTER.get(flag, "") for flag in f[b"FLAGS"]
            )
            for f in fetched.values()
        }
        self.assertEqual(view, self.local_folders()["INBOX"])
        self.assertEqual(sorted(view), sorted(_mid(n) for n in (1, 3, 4, 5, 7)))
        await in_thread(client.logout)

    async def test_imaps(self) -> None:
        """A two-way sync over IMAPS: both sides' changes meet."""
        await self.two_way_sync(True)


class ServiceTests(_MbsyncCase):
    """mbsync against the imaps role of L{makeService}, as deployed."""

    async def test_service_imaps(self) -> None:
        """Local mail and a local folder tree go up to the demo account; a
        message APPENDed over IMAP comes down with its flag."""
        # A short path: the queue's control socket lives in the data folder,
        # and AF_UNIX paths are limited to 107 octets (trial's are long).
        data = tempfile.mkdtemp(prefix="tm-mbsync-")
        self.addCleanup(shutil.rmtree, data, True)
        cert, key = make_test_certificate(os.path.join(data, "certs"), HOSTNAME)
        settings = Settings(
            server=ServerSettings(hostname=HOSTNAME, data_dir=data),
            listeners=ListenerSettings(  # type: ignore[arg-type]
                **{
                    **{role: None for role in ListenerSettings().roles()},
                    "imaps": "tcp:port=0:interface=127.0.0.1",
                }
            ),
            tls=TLSSettings(certificate=cert, key=key),
        )
        service = makeService(settings, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready
        with open(os.path.join(data, DEMO_ACCOUNT_FILE)) as f:
            user, password = f.read().split("\n")[:2]
        port = service.addresses()["imaps"].port  # type: ignore[attr-defined]
        self.add_local("INBOX", 1)
        self.add_local("INBOX", 6)
        self.set_local_flags("INBOX", 1, "S")
        self.add_local("Lists.Twisted", 2)
        rc = self.write_config(port, True, cert, user, password)
        await self.mbsync(rc)

        def over_imap() -> list[bytes]:
            client = imaplib.IMAP4_SSL(
                "127.0.0.1",
                port,
                ssl_context=ssl.create_default_context(cafile=cert),
                timeout=TIMEOUT,
            )
            try:
                client.login(user, password)
                lines = []
                for folder in ("INBOX", "Lists.Twisted"):
                    client.select(folder)
                    _, data = client.fetch(
                        "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
                    )
                    lines += [
                        folder.encode() + b" " + item[0] + item[1]
                        for item in data
                        if isinstance(item, tuple)
                    ]
                typ, _ = client.append(
                    "Lists.Twisted", "(\\Flagged)", None, _message(3)
                )
                assert typ == "OK"
                client.logout()
            finally:
                if client.state != "LOGOUT":
                    client.shutdown()
            return lines

        lines = await in_thread(over_imap)
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[0].startswith(b"INBOX 1 (FLAGS (\\Seen)"), lines)
        self.assertIn(b"<1@example.test>", lines[0])
        self.assertIn(b"<6@example.test>", lines[1])
        self.assertTrue(lines[2].startswith(b"Lists.Twisted 1 (FLAGS ()"), lines)
        await self.mbsync(rc)
        local = self.local_folders()
        self.assertEqual(local["INBOX"], {_mid(1): "S", _mid(6): ""})
        self.assertEqual(local["Lists.Twisted"], {_mid(2): "", _mid(3): "F"})
