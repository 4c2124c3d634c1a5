"""msmtp (/usr/bin/msmtp, Debian package msmtp) submitting to the assembled
service, as a user's mail agent would: STARTTLS then AUTH on the
submission listener, implicit TLS on submissions, the server's certificate
checked against the self-signed one made on first start, and a wrong
password refused.  msmtp runs in a thread while the reactor serves; each
test checks its exit code (sysexits.h, see msmtp(1)) and the Maildir.
"""

from __future__ import annotations

import os
import subprocess

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.service_helpers import DOMAIN, PASSWORD, start_service

MSMTP = "/usr/bin/msmtp"
D = DOMAIN

#: sysexits.h: EX_NOPERM, msmtp's exit code for a refused AUTH.
EX_NOPERM = 77


class MsmtpTests(TestCase):
    """msmtp on the submission and submissions listeners."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        """Start the service with bob (who can log in) and carol."""
        self.data = os.path.abspath(self.mktemp())
        self.service, self.ports = await start_service(
            self, self.data, ("submission", "submissions")
        )

    async def msmtp(
        self, role: str, message: bytes, password: str = PASSWORD
    ) -> tuple[int, str]:
        """Send a message with msmtp (-t: recipients from its header) and a
        configuration file of its own; its exit code and output."""
        config = os.path.join(self.mktemp() + ".msmtprc")
        with open(config, "w") as f:
            f.write(
                "\n".join(
                    [
                        "account test",
                        "host 127.0.0.1",
                        f"port {self.ports[role]}",
                        "tls on",
                        f"tls_starttls {'on' if role == 'submission' else 'off'}",
                        "tls_trust_file " + os.path.join(self.data, "tls", "cert.pem"),
                        "auth plain",
                        f"user bob@{D}",
                        f"password {password}",
                        f"from bob@{D}",
                        "domain client.example.net",
                        "timeout 20",
                        "account default : test",
                        "",
                    ]
                )
            )
        os.chmod(config, 0o600)

        def run() -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [MSMTP, "-C", config, "-t"],
                input=message,
                capture_output=True,
                timeout=45,
                env={"PATH": "/usr/bin:/bin", "LANG": "C", "HOME": self.data},
            )

        done = await deferToThread(run)
        return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")

    async def delivered(self, user: str, message_id: bytes) -> bytes:
        """Wait for the message with this Message-ID in the user's Maildir
        (trial's timeout ends the test if it never comes)."""
        new = os.path.join(self.data, "mail", D, user, "new")
        while True:
            if os.path.isdir(new):
                for name in os.listdir(new):
                    with open(os.path.join(new, name), "rb") as f:
                        data = f.read()
                    if message_id in data:
                        return data
            await deferLater(reactor, 0.01, lambda: None)

    def message(self, message_id: str) -> bytes:
        """A message from bob to carol."""
        return (
            f"From: bob@{D}\r\nTo: carol@{D}\r\nSubject: via msmtp\r\n"
            f"Message-ID: <{message_id}@client.example.net>\r\n\r\n"
            "Sent by msmtp.\r\n"
        ).encode()

    async def test_submission_starttls(self) -> None:
        """STARTTLS, AUTH PLAIN, then the message reaches carol, with the
        TLS version in the trace header."""
        code, output = await self.msmtp("submission", self.message("m1"))
        self.assertEqual(code, 0, output)
        data = await self.delivered("carol", b"<m1@client.example.net>")
        self.assertIn(b"Sent by msmtp.", data)
        self.assertIn(b"with ESMTPSA (TLSv1.", data)

    async def test_submissions_implicit_tls(self) -> None:
        """Implicit TLS on the submissions listener works the same way."""
        code, output = await self.msmtp("submissions", self.message("m2"))
        self.assertEqual(code, 0, output)
        data = await self.delivered("carol", b"<m2@client.example.net>")
        self.assertIn(b"with ESMTPSA (TLSv1.", data)

    async def test_wrong_password(self) -> None:
        """A wrong password: msmtp reports the server's 535 refusal and
        exits with EX_NOPERM; nothing is delivered."""
        code, output = await self.msmtp(
            "submission", self.message("m3"), password="wrong"
        )
        self.assertEqual(code, EX_NOPERM, output)
        self.assertIn("535", output)
        new = os.path.join(self.data, "mail", D, "carol", "new")
        self.assertEqual(os.listdir(new) if os.path.isdir(new) else [], [])
