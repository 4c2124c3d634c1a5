"""swaks (/usr/bin/swaks, Debian package swaks) against the assembled service.

A real, independent SMTP client: plain MX delivery, STARTTLS with AUTH
PLAIN on submission, implicit TLS on submissions, AUTH refused without TLS,
PIPELINING, and a refused unknown recipient.  Each test checks swaks' exit
code (see swaks(1), EXIT CODES), its transcript, and the Maildir.  swaks runs
in a thread while the reactor serves; its TLS needs libnet-ssleay-perl and
libio-socket-ssl-perl (``./dev test`` installs all three).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Awaitable, Callable

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.service_helpers import DOMAIN, PASSWORD, start_service

SWAKS = "/usr/bin/swaks"
D = DOMAIN

# swaks(1) EXIT CODES.
EXIT_OK = 0
EXIT_MAIL = 23
EXIT_RCPT = 24
EXIT_AUTH = 28


async def _poll(check: Callable[[], Awaitable[bool] | bool]) -> None:
    """Look again every few milliseconds (on the reactor) until C{check}
    is true; trial's timeout ends a test that would wait forever."""
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await deferLater(reactor, 0.005, lambda: None)


class SwaksTests(TestCase):
    """swaks talks to the smtp, submission and submissions listeners."""

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        """Start the service with bob (who can log in) and carol."""
        self.data = self.mktemp()
        self.service, self.ports = await start_service(
            self, self.data, ("smtp", "submission", "submissions")
        )

    async def swaks(self, role: str, *args: str) -> tuple[int, str]:
        """Run swaks against a listener; its exit code and transcript."""
        command = [
            SWAKS,
            "--server",
            "127.0.0.1",
            "--port",
            str(self.ports[role]),
            "--helo",
            "client.example.net",
            "--timeout",
            "20",
            *args,
        ]

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=45,
                stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "LANG": "C"},
            )

        done = await deferToThread(run)
        return done.returncode, done.stdout + done.stderr

    def inbox(self, user: str) -> list[bytes]:
        """The messages in a user's new/ folder."""
        new = os.path.join(self.data, "mail", D, user, "new")
        if not os.path.isdir(new):
            return []
        return [open(os.path.join(new, n), "rb").read() for n in os.listdir(new)]

    async def delivered(self, user: str, message_id: str) -> bytes:
        """Wait for the message with this Message-ID in the user's Maildir."""
        needle = f"Message-Id: <{message_id}>".encode().lower()

        def found() -> bool:
            return any(needle in m.lower() for m in self.inbox(user))

        await _poll(found)
        (copy,) = [m for m in self.inbox(user) if needle in m.lower()]
        return copy

    def assertExit(self, result: tuple[int, str], code: int) -> str:
        """Check swaks' exit code (showing the transcript when wrong)."""
        self.assertEqual(result[0], code, result[1])
        return result[1]

    async def test_mx_delivery(self) -> None:
        """Plain SMTP to the MX role: queued, then in bob's Maildir."""
        transcript = self.assertExit(
            await self.swaks(
                "smtp",
                "--from",
                "someone@remote.example",
                "--to",
                f"bob@{D}",
                "--header",
                "Message-Id: <swaks-mx@remote.example>",
                "--body",
                "plain MX delivery",
            ),
            EXIT_OK,
        )
        self.assertIn("<-  220 mx.example.test ESMTP ready", transcript)
        self.assertIn("<-  250 2.0.0 OK queued as ", transcript)
        copy = await self.delivered("bob", "swaks-mx@remote.example")
        self.assertIn(b"Delivered-To: bob@example.test\r\n", copy)
        self.assertIn(b"Return-Path: <someone@remote.example>\r\n", copy)
        self.assertIn(b"with ESMTP\r\n", copy)
        self.assertIn(b"plain MX delivery", copy)

    async def test_starttls_auth_plain(self) -> None:
        """Submission: STARTTLS, then AUTH PLAIN, then the message."""
        transcript = self.assertExit(
            await self.swaks(
                "submission",
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                f"bob@{D}",
                "--auth-password",
                PASSWORD,
                "--from",
                f"bob@{D}",
                "--to",
                f"carol@{D}",
                "--header",
                "Message-Id: <swaks-sub@example.test>",
            ),
            EXIT_OK,
        )
        self.assertIn("<-  220 2.0.0 Ready to start TLS", transcript)
        self.assertIn("=== TLS started", transcript)
        self.assertIn("<~  235 2.7.0 Authentication successful", transcript)
        self.assertIn("<~  250 2.0.0 OK queued as ", transcript)
        copy = await self.delivered("carol", "swaks-sub@example.test")
        self.assertIn(b"with ESMTPSA (TLSv1.", copy)

    async def test_implicit_tls(self) -> None:
        """Submissions: TLS from the first byte, then AUTH PLAIN."""
        transcript = self.assertExit(
            await self.swaks(
                "submissions",
                "--tls-on-connect",
                "--auth",
                "PLAIN",
                "--auth-user",
                f"bob@{D}",
                "--auth-password",
                PASSWORD,
                "--from",
                f"bob@{D}",
                "--to",
                f"carol@{D}",
                "--header",
                "Message-Id: <swaks-subs@example.test>",
            ),
            EXIT_OK,
        )
        self.assertIn("=== TLS started", transcript)
        self.assertIn("<~  220 mx.example.test ESMTP ready", transcript)
        self.assertIn("<~  235 2.7.0", transcript)
        copy = await self.delivered("carol", "swaks-subs@example.test")
        self.assertIn(b"with ESMTPSA (TLSv1.", copy)

    async def test_auth_refused_without_tls(self) -> None:
        """Submission without TLS: AUTH is not offered, so swaks cannot log
        in (exit 28); and MAIL without AUTH is refused with 530 (exit 23)."""
        transcript = self.assertExit(
            await self.swaks(
                "submission",
                "--auth",
                "PLAIN",
                "--auth-user",
                f"bob@{D}",
                "--auth-password",
                PASSWORD,
                "--from",
                f"bob@{D}",
                "--to",
                f"carol@{D}",
            ),
            EXIT_AUTH,
        )
        self.assertIn("<-  250-STARTTLS", transcript)
        self.assertIn("*** Host did not advertise authentication", transcript)
        self.assertNotIn("AUTH PLAIN", transcript)
        self.assertNotIn(PASSWORD, transcript)
        transcript = self.assertExit(
            await self.swaks("submission", "--from", f"bob@{D}", "--to", f"carol@{D}"),
            EXIT_MAIL,
        )
        self.assertIn("<** 530 5.7.0 Must issue a STARTTLS command first", transcript)
        self.assertEqual(self.inbox("carol"), [])

    async def test_pipelining(self) -> None:
        """swaks --pipeline sends MAIL, RCPT and DATA in one batch; each
        gets its reply in order, and the message is delivered."""
        transcript = self.assertExit(
            await self.swaks(
                "smtp",
                "--pipeline",
                "--from",
                "someone@remote.example",
                "--to",
                f"bob@{D},carol@{D}",
                "--header",
                "Message-Id: <swaks-pipe@remote.example>",
            ),
            EXIT_OK,
        )
        lines = [line.strip() for line in transcript.splitlines()]
        sent = [i for i, line in enumerate(lines) if line.startswith("->")]
        mail = next(i for i in sent if lines[i].startswith("-> MAIL FROM:"))
        data = next(i for i in sent if lines[i] == "-> DATA")
        first_reply = next(
            i for i, line in enumerate(lines) if i > mail and "<-" in line
        )
        self.assertLess(data, first_reply)  # all sent before any reply
        replies = [line for line in lines[first_reply:] if line.startswith("<-")]
        self.assertEqual(
            [r.split()[1] for r in replies[:4]], ["250", "250", "250", "354"]
        )
        await self.delivered("bob", "swaks-pipe@remote.example")
        await self.delivered("carol", "swaks-pipe@remote.example")

    async def test_unknown_recipient(self) -> None:
        """An unknown local user is refused at RCPT (550 5.1.1, exit 24) and
        nothing is queued."""
        transcript = self.assertExit(
            await self.swaks(
                "smtp", "--from", "someone@remote.example", "--to", f"nobody@{D}"
            ),
            EXIT_RCPT,
        )
        self.assertIn("<** 550 5.1.1 No such user here", transcript)
        queue = os.path.join(self.data, "spool", "queue")
        self.assertEqual(os.listdir(queue), [])
