"""The pop3 and pop3s roles of the assembled service (L{makeService}):
poplib retrieves over STLS and over POP3S from the whole server, with the
certificate the service generates for itself."""

from __future__ import annotations

import os
import poplib
import ssl
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.pop3_helpers import FAST, PASSWORD, make_message
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.auth.passwords import hash_password
from twistedmail.config import ListenerSettings, ServerSettings, Settings
from twistedmail.interfaces import User
from twistedmail.service import MailService, default_roles, makeService

D = "example.test"
USER = f"alice@{D}"
LOOPBACK = "tcp:port=0:interface=127.0.0.1"


def _settings(data: str) -> Settings:
    return Settings(
        server=ServerSettings(hostname="pop.example.test", data_dir=data),
        listeners=ListenerSettings.only(pop3=LOOPBACK, pop3s=LOOPBACK),
    )


def _directory() -> MemoryDirectory:
    return MemoryDirectory(
        (D,), (User(USER, hash_password(PASSWORD, FAST), f"{D}/alice"),)
    )


def _fetch(client: poplib.POP3, delete: bool) -> dict[str, Any]:
    """Log in, STAT, UIDL, RETR everything (DELE it too when asked), QUIT."""
    out: dict[str, Any] = {"capa": client.capa()}
    client.user(USER)
    client.pass_(PASSWORD)
    out["stat"] = client.stat()
    out["uidl"] = client.uidl()[1]
    out["messages"] = []
    for n in range(1, out["stat"][0] + 1):
        _, lines, _ = client.retr(n)
        out["messages"].append(b"".join(line + b"\r\n" for line in lines))
        if delete:
            client.dele(n)
    out["quit"] = client.quit()
    return out


class POP3ServiceTests(TestCase):
    """The whole service serves POP3 on both roles."""

    async def start(self) -> dict[str, int]:
        """Start the service with pop3 and pop3s on free loopback ports,
        two messages in alice's INBOX; return the ports by role."""
        self.data = self.mktemp()
        svc = makeService(_settings(self.data), reactor, directory=_directory())
        svc.startService()
        self.addCleanup(svc.stopService)
        await svc.ready
        self.service: MailService = svc
        self.assertEqual(svc.unavailable_roles, [])
        maildir = os.path.join(self.data, "mail", D, "alice")
        self.messages = [make_message(1), b"Subject: dot\r\n\r\n.\r\nend\r\n"]
        for i, m in enumerate(self.messages):
            svc.components.store.deliver_sync(maildir, m, f"service-test-{i}")
        self.maildir = maildir
        return {
            role: address.port  # type: ignore[attr-defined]
            for role, address in svc.addresses().items()
        }

    def context(self) -> ssl.SSLContext:
        """Trust only the certificate the service made for itself."""
        return ssl.create_default_context(
            cafile=os.path.join(self.data, "tls", "cert.pem")
        )

    def left(self) -> int:
        """How many messages are still in the Maildir."""
        return sum(
            len(os.listdir(os.path.join(self.maildir, d))) for d in ("new", "cur")
        )

    def test_default_roles(self) -> None:
        """pop3 and pop3s are among the roles this version serves."""
        self.assertIn("pop3", default_roles())
        self.assertIn("pop3s", default_roles())

    async def test_stls_then_pop3s(self) -> None:
        """poplib over STLS on the pop3 role fetches and keeps the mail; then
        over POP3S on the pop3s role fetches it again and deletes it."""
        ports = await self.start()
        context = self.context()

        def over_stls() -> tuple[dict[str, Any], dict[str, Any], str]:
            client = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
            before = client.capa()
            try:
                client.user(USER)
                refused = "accepted"
            except poplib.error_proto as e:
                refused = str(e)
            client.stls(context)
            return before, _fetch(client, delete=False), refused

        before, kept, refused = await deferToThread(over_stls)
        self.assertIn("STLS", before)
        self.assertNotIn("USER", before)
        self.assertIn("[AUTH]", refused)
        self.assertNotIn("STLS", kept["capa"])
        self.assertEqual(kept["capa"]["SASL"], ["PLAIN"])
        self.assertEqual(kept["messages"], self.messages)
        self.assertEqual(kept["stat"], (2, sum(map(len, self.messages))))
        self.assertEqual(self.left(), 2)

        def over_pop3s() -> dict[str, Any]:
            client = poplib.POP3_SSL(
                "127.0.0.1", ports["pop3s"], context=context, timeout=30
            )
            return _fetch(client, delete=True)

        deleted = await deferToThread(over_pop3s)
        self.assertNotIn("STLS", deleted["capa"])
        self.assertEqual(deleted["messages"], self.messages)
        self.assertEqual(deleted["uidl"], kept["uidl"])
        self.assertTrue(deleted["quit"].startswith(b"+OK"))
        self.assertEqual(self.left(), 0)

    async def test_one_session_across_roles(self) -> None:
        """A session on pop3s holds the maildrop: a login on pop3 (after
        STLS) meanwhile gets -ERR [IN-USE]; after QUIT it succeeds."""
        ports = await self.start()
        context = self.context()

        def run() -> tuple[str, tuple[int, int]]:
            first = poplib.POP3_SSL(
                "127.0.0.1", ports["pop3s"], context=context, timeout=30
            )
            first.user(USER)
            first.pass_(PASSWORD)
            second = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
            second.stls(context)
            second.user(USER)
            try:
                second.pass_(PASSWORD)
                refused = "accepted"
            except poplib.error_proto as e:
                refused = str(e)
            first.quit()
            second.user(USER)
            second.pass_(PASSWORD)
            stat = second.stat()
            second.quit()
            return refused, stat

        refused, stat = await deferToThread(run)
        self.assertIn("[IN-USE]", refused)
        self.assertEqual(stat[0], 2)
