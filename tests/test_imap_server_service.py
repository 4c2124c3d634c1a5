"""The imap and imaps roles of the assembled service: Python's imaplib over
STARTTLS and over implicit TLS (IMAPS), against L{makeService} on port 0."""

from __future__ import annotations

import imaplib
import os
import shutil
import ssl
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from twistedmail.config import (
    IMAPSettings,
    ListenerSettings,
    ServerSettings,
    Settings,
    TLSSettings,
)
from twistedmail.service import DEMO_ACCOUNT_FILE, MailService, makeService
from twistedmail.testing import make_test_certificate

HOSTNAME = "mail.example.test"
_OFF = {name: None for name in ListenerSettings().roles()}
_MESSAGE = (
    b"From: someone@example.test\r\n"
    b"To: demo@mail.example.test\r\n"
    b"Subject: over IMAP\r\n"
    b"\r\n"
    b"Hello over IMAP.\r\n"
)


class IMAPServiceTests(TestCase):
    """The service serves IMAP with STARTTLS and IMAPS with its certificate."""

    async def start(self) -> MailService:
        """Start a service with imap and imaps on port 0 and a test
        certificate for its hostname."""
        # A short path: the queue's control socket lives in the data folder,
        # and AF_UNIX paths are limited to 107 octets (trial's are long).
        data = tempfile.mkdtemp(prefix="tm-imap-")
        self.addCleanup(shutil.rmtree, data, True)
        cert, key = make_test_certificate(os.path.join(data, "certs"), HOSTNAME)
        self.cert = cert
        settings = Settings(
            server=ServerSettings(hostname=HOSTNAME, data_dir=data),
            listeners=ListenerSettings(
                **{
                    **_OFF,
                    "imap": "tcp:port=0:interface=127.0.0.1",
                    "imaps": "tcp:port=0:interface=127.0.0.1",
                }
            ),
            tls=TLSSettings(certificate=cert, key=key),
            imap=IMAPSettings(),
        )
        svc = makeService(settings, reactor)
        svc.startService()
        self.addCleanup(svc.stopService)
        await svc.ready
        with open(os.path.join(data, DEMO_ACCOUNT_FILE)) as f:
            self.user, self.password = f.read().split("\n")[:2]
        return svc

    def context(self) -> ssl.SSLContext:
        """A client context that trusts only the test certificate and checks
        the name connected to (127.0.0.1, which the certificate lists)."""
        return ssl.create_default_context(cafile=self.cert)

    def session(self, client: imaplib.IMAP4) -> dict[str, Any]:
        """Log in, APPEND a message, SELECT, FETCH it, LOGOUT."""
        out: dict[str, Any] = {}
        out["login"] = client.login(self.user, self.password)
        out["append"] = client.append("INBOX", "(\\Flagged)", None, _MESSAGE)
        out["select"] = client.select("INBOX")
        out["fetch"] = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        out["list"] = client.list()
        out["logout"] = client.logout()
        return out

    def check(self, out: dict[str, Any]) -> None:
        """The message came back byte for byte, with its flag."""
        self.assertEqual(out["login"][0], "OK")
        self.assertEqual(out["append"][0], "OK")
        self.assertEqual(out["select"], ("OK", [b"1"]))
        typ, data = out["fetch"]
        self.assertEqual(typ, "OK")
        self.assertIn(b"\\Flagged", data[0][0])
        self.assertEqual(data[0][1], _MESSAGE)
        names = b"\n".join(out["list"][1])
        for folder in (b"INBOX", b"Sent", b"Drafts", b"Trash", b"Junk", b"Archive"):
            self.assertIn(folder, names)
        self.assertEqual(out["logout"][0], "BYE")

    async def test_starttls(self) -> None:
        """The imap role: LOGINDISABLED in clear, STARTTLS, then LOGIN."""
        svc = await self.start()
        port = svc.addresses()["imap"].port  # type: ignore[attr-defined]

        def run() -> tuple[tuple[str, ...], dict[str, Any]]:
            client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            before = client.capabilities
            client.starttls(self.context())
            return before, self.session(client)

        before, out = await deferToThread(run)
        self.assertIn("STARTTLS", before)
        self.assertIn("LOGINDISABLED", before)
        self.check(out)

    async def test_imaps(self) -> None:
        """The imaps role: TLS from the first octet, the certificate checked
        (its names include 127.0.0.1)."""
        svc = await self.start()
        port = svc.addresses()["imaps"].port  # type: ignore[attr-defined]

        def run() -> tuple[tuple[str, ...], dict[str, Any]]:
            client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=self.context())
            return client.capabilities, self.session(client)

        caps, out = await deferToThread(run)
        self.assertNotIn("STARTTLS", caps)
        self.assertNotIn("LOGINDISABLED", caps)
        self.assertIn("AUTH=PLAIN", caps)
        self.check(out)
