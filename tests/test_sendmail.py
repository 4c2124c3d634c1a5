"""Tests for L{twistedmail.sendmail}."""

from __future__ import annotations

import io
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.interfaces import Recipient
from twistedmail.sendmail import main
from twistedmail.spool.store import QueueEntry, Spool, read_entry_file

HOST = "host.example"


class SendmailTests(SynchronousTestCase):
    """The sendmail command drops messages into the spool's incoming/ folder."""

    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        self.config = self.mktemp()
        with open(self.config, "w") as f:
            f.write(f'[server]\nhostname = "{HOST}"\ndata_dir = "{self.data}"\n')
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.stderr = io.StringIO()

    def run_sendmail(self, args: list[str], message: bytes) -> int:
        """Run main() with this test's config, clock and login name."""
        return main(
            ["-C", self.config, *args],
            io.BytesIO(message),
            stderr=self.stderr,
            clock=self.clock,
            login="alice",
        )

    def dropped(self) -> tuple[QueueEntry, bytes]:
        """The one entry in incoming/, and its message."""
        folder = os.path.join(self.data, "spool", "incoming")
        [name] = os.listdir(folder)
        path = os.path.join(folder, name)
        entry, offset = read_entry_file(path)
        with open(path, "rb") as f:
            f.seek(offset)
            return entry, f.read(entry.size)

    def test_plain(self) -> None:
        """Recipients from the arguments; sender login@hostname; Date,
        Message-ID, From and Received added; CRLF line ends."""
        code = self.run_sendmail(
            ["bob@example.com", "carol"], b"Subject: hi\n\nHello.\n"
        )
        self.assertEqual(code, 0, self.stderr.getvalue())
        entry, message = self.dropped()
        self.assertEqual(entry.envelope.sender, f"alice@{HOST}")
        self.assertEqual(
            entry.envelope.recipients,
            (Recipient("bob@example.com"), Recipient(f"carol@{HOST}")),
        )
        self.assertEqual(entry.envelope.protocol, "local")
        self.assertTrue(
            message.startswith(b"Received: by host.example (twistedmail sendmail")
        )
        self.assertIn(b"\r\nSubject: hi\r\nFrom: alice@host.example\r\nDate: ", message)
        self.assertRegex(
            message, rb"\r\nMessage-ID: <[0-9A-F]{23}@host\.example>\r\n\r\n"
        )
        self.assertTrue(message.endswith(b"\r\n\r\nHello.\r\n"))
        self.assertNotIn(b"\n", message.replace(b"\r\n", b""))

    def test_extract(self) -> None:
        """-t takes To, Cc and Bcc (folded too) and removes the Bcc field."""
        message = (
            b"To: Bob <bob@example.com>\n"
            b"Cc: carol@example.com, dave\n"
            b"Bcc: eve@example.com,\n"
            b" frank@example.com\n"
            b"Subject: x\n"
            b"\n"
            b"Bcc: in the body stays\n"
        )
        self.assertEqual(self.run_sendmail(["-t"], message), 0, self.stderr.getvalue())
        entry, queued = self.dropped()
        self.assertEqual(
            [r.address for r in entry.envelope.recipients],
            [
                "eve@example.com",
                "frank@example.com",
                "carol@example.com",
                f"dave@{HOST}",
                "bob@example.com",
            ],
        )
        header = queued.split(b"\r\n\r\n")[0]
        self.assertNotIn(b"Bcc", header)
        self.assertNotIn(b"frank", header)
        self.assertIn(b"\r\nBcc: in the body stays\r\n", queued)

    def test_resent(self) -> None:
        """With Resent- fields present, -t uses Resent-To and friends."""
        message = b"To: old@example.com\nResent-To: new@example.com\n\nx\n"
        self.assertEqual(self.run_sendmail(["-t"], message), 0)
        entry, _ = self.dropped()
        self.assertEqual(entry.envelope.recipients, (Recipient("new@example.com"),))

    def test_sender(self) -> None:
        """-f sets the envelope sender and the added From; -F the full name."""
        args = [
            "-f",
            "list-bounces@example.org",
            "-F",
            "Alice Smith",
            "bob@example.com",
        ]
        self.assertEqual(self.run_sendmail(args, b"Subject: x\n\nbody\n"), 0)
        entry, message = self.dropped()
        self.assertEqual(entry.envelope.sender, "list-bounces@example.org")
        self.assertIn(b"\r\nFrom: Alice Smith <list-bounces@example.org>\r\n", message)

    def test_null_sender(self) -> None:
        """-f '<>' is the null sender; From falls back to the login."""
        self.assertEqual(self.run_sendmail(["-f<>", "bob@example.com"], b"x\n"), 0)
        entry, message = self.dropped()
        self.assertEqual(entry.envelope.sender, "")
        self.assertIn(b"From: alice@host.example\r\n", message)

    def test_existing_fields_kept(self) -> None:
        """Date, Message-ID and From already present are not added again."""
        message = (
            b"From: x@example.com\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
            b"Message-ID: <a@b>\n\nbody\n"
        )
        self.assertEqual(self.run_sendmail(["bob@example.com"], message), 0)
        _, queued = self.dropped()
        self.assertEqual(queued.count(b"From:"), 1)
        self.assertEqual(queued.count(b"Date:"), 1)
        self.assertEqual(queued.count(b"Message-ID:"), 1)

    def test_dot_ends(self) -> None:
        """Without -i a lone dot ends the message."""
        message = b"Subject: x\n\nbefore\n.\nafter\n"
        self.assertEqual(self.run_sendmail(["bob@example.com"], message), 0)
        _, queued = self.dropped()
        self.assertTrue(queued.endswith(b"\r\n\r\nbefore\r\n"))

    def test_dot_kept(self) -> None:
        """With -i (or -oi) a lone dot is just a line."""
        for flag in ("-i", "-oi"):
            message = b"Subject: x\n\nbefore\n.\nafter\n"
            self.assertEqual(self.run_sendmail([flag, "bob@example.com"], message), 0)
            folder = os.path.join(self.data, "spool", "incoming")
            _, queued = self.dropped()
            self.assertTrue(queued.endswith(b"before\r\n.\r\nafter\r\n"), flag)
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))

    def test_no_header(self) -> None:
        """A message that does not start with a header gets an empty line
        between the added fields and its text."""
        self.assertEqual(self.run_sendmail(["bob@example.com"], b"just text\n"), 0)
        _, queued = self.dropped()
        self.assertTrue(queued.endswith(b"\r\n\r\njust text\r\n"))

    def test_dsn_options(self) -> None:
        """-N, -R and -V become the DSN parameters."""
        args = ["-N", "failure,delay", "-R", "hdrs", "-V", "id1", "bob@example.com"]
        self.assertEqual(self.run_sendmail(args, b"x\n"), 0)
        entry, _ = self.dropped()
        self.assertEqual(entry.envelope.recipients[0].notify, ("FAILURE", "DELAY"))
        self.assertEqual((entry.envelope.ret, entry.envelope.envid), ("HDRS", "id1"))

    def test_usage_errors(self) -> None:
        """No recipients, an unknown option or a bad address: exit 64."""
        self.assertEqual(self.run_sendmail([], b"x\n"), 64)
        self.assertEqual(self.run_sendmail(["-X", "bob@example.com"], b"x\n"), 64)
        self.assertEqual(self.run_sendmail(["bad address@@"], b"x\n"), 64)
        self.assertEqual(self.run_sendmail(["-bp"], b"x\n"), 64)
        self.assertIn("usage:", self.stderr.getvalue())

    def test_data_errors(self) -> None:
        """-t with no recipient field, or a bad header address: exit 65."""
        self.assertEqual(self.run_sendmail(["-t"], b"Subject: x\n\nbody\n"), 65)
        self.assertEqual(self.run_sendmail(["-t"], b"To: a@@b\n\nbody\n"), 65)

    def test_bad_config(self) -> None:
        """A broken configuration file: exit 78."""
        with open(self.config, "w") as f:
            f.write("[server\n")
        self.assertEqual(self.run_sendmail(["bob@example.com"], b"x\n"), 78)

    def test_spool_unwritable(self) -> None:
        """When the spool cannot be written: exit 75 (try again later)."""
        with open(self.data, "w") as f:
            f.write("a file where the data folder should be")
        self.assertEqual(self.run_sendmail(["bob@example.com"], b"x\n"), 75)

    def test_no_server_then_pickup(self) -> None:
        """With no server running the message waits in incoming/; a spool
        started later moves it into the queue under the same id."""
        self.assertEqual(self.run_sendmail(["bob@example.com"], b"x\n"), 0)
        entry, _ = self.dropped()
        spool = Spool(os.path.join(self.data, "spool"), self.clock)
        spool.prepare()
        d = spool.pickup_incoming()
        self.clock.advance(0)
        self.assertEqual(
            [e.queue_id for e in self.successResultOf(d)], [entry.queue_id]
        )
        self.assertEqual(self.successResultOf(spool.list()), [entry.queue_id])
