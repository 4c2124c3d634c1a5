"""Tests for L{twistedmail.service}: assembly, start, stop, demo account."""

from __future__ import annotations

import os
import stat

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from twistedmail.config import ListenerSettings, ServerSettings, Settings
from twistedmail.service import DEMO_ACCOUNT_FILE, Components, makeService

_OFF = {name: None for name in ListenerSettings().roles()}


def _settings(data_dir: str, **listeners: str) -> Settings:
    return Settings(
        server=ServerSettings(hostname="mail.example.test", data_dir=data_dir),
        listeners=ListenerSettings(**{**_OFF, **listeners}),  # type: ignore[arg-type]
    )


class _Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello\r\n")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class _Reader(LineReceiver):
    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.line: Deferred[bytes] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.line.callback(line)


def _hello_role(components: Components) -> Factory:
    return Factory.forProtocol(_Hello)


class ServiceTests(TestCase):
    """The whole service starts on port 0, serves and stops cleanly."""

    async def _start(self, settings: Settings) -> object:
        svc = makeService(
            settings, reactor, roles={"smtp": _hello_role, "pop3s": _hello_role}
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        await svc.ready
        return svc

    async def test_start_stop_port_zero(self) -> None:
        """Listeners bind on port 0; addresses() tells the bound ports."""
        data = self.mktemp()
        svc = await self._start(_settings(data, smtp="tcp:port=0:interface=127.0.0.1"))
        addresses = svc.addresses()  # type: ignore[attr-defined]
        self.assertEqual(list(addresses), ["smtp"])
        self.assertNotEqual(addresses["smtp"].port, 0)
        reader = _Reader()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", addresses["smtp"].port), reader
        )
        self.assertEqual(await reader.line, b"hello")
        self.assertTrue(os.path.isdir(data))

    async def test_implicit_tls_role(self) -> None:
        """A tcp: listener for an implicit-TLS role speaks TLS with the generated cert."""
        from twisted.internet.endpoints import wrapClientTLS

        from twistedmail.testing import client_tls_options_for

        data = self.mktemp()
        svc = await self._start(_settings(data, pop3s="tcp:port=0:interface=127.0.0.1"))
        port = svc.addresses()["pop3s"].port  # type: ignore[attr-defined]
        cert = os.path.join(data, "tls", "cert.pem")
        self.assertTrue(os.path.exists(cert))
        options = client_tls_options_for(cert, "mail.example.test")
        reader = _Reader()
        endpoint = wrapClientTLS(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        )
        await connectProtocol(endpoint, reader)
        self.assertEqual(await reader.line, b"hello")

    async def test_demo_account(self) -> None:
        """A first start makes a demo domain and user; the file is private."""
        data = self.mktemp()
        svc = await self._start(_settings(data))
        directory = svc.components.directory  # type: ignore[attr-defined]
        self.assertEqual(await directory.list_domains(), ["mail.example.test"])
        users = await directory.list_users()
        self.assertEqual([u.address for u in users], ["demo@mail.example.test"])
        path = os.path.join(data, DEMO_ACCOUNT_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        address, password = open(path).read().split("\n")[:2]
        self.assertEqual(address, "demo@mail.example.test")
        from twistedmail.auth.passwords import verify_password

        self.assertTrue(verify_password(users[0].password_hash, password))

    async def test_demo_account_once(self) -> None:
        """A second start with the same data keeps the first demo account."""
        data = self.mktemp()
        first = await self._start(_settings(data))
        await first.stopService()  # type: ignore[attr-defined]
        before = open(os.path.join(data, DEMO_ACCOUNT_FILE)).read()
        second = await self._start(_settings(data))
        self.assertEqual(open(os.path.join(data, DEMO_ACCOUNT_FILE)).read(), before)
        users = await second.components.directory.list_users()  # type: ignore[attr-defined]
        self.assertEqual(len(users), 1)

    async def test_two_services_one_process(self) -> None:
        """Two services with their own data folders run side by side."""
        a = await self._start(
            _settings(self.mktemp(), smtp="tcp:port=0:interface=127.0.0.1")
        )
        b = await self._start(
            _settings(self.mktemp(), smtp="tcp:port=0:interface=127.0.0.1")
        )
        self.assertNotEqual(
            a.addresses()["smtp"].port,  # type: ignore[attr-defined]
            b.addresses()["smtp"].port,  # type: ignore[attr-defined]
        )

    async def test_bind_failure_fails_ready(self) -> None:
        """A port already in use makes ready fail instead of hanging."""
        a = await self._start(
            _settings(self.mktemp(), smtp="tcp:port=0:interface=127.0.0.1")
        )
        port = a.addresses()["smtp"].port  # type: ignore[attr-defined]
        settings = _settings(self.mktemp(), smtp=f"tcp:port={port}:interface=127.0.0.1")
        svc = makeService(settings, reactor, roles={"smtp": _hello_role})
        svc.startService()
        self.addCleanup(svc.stopService)
        from twisted.internet.error import CannotListenError

        with self.assertRaises(CannotListenError):
            await svc.ready
        self.flushLoggedErrors(CannotListenError)


class DeliveryWiringTests(TestCase):
    """The assembled service delivers what its spool takes into Maildir."""

    async def test_spool_to_maildir(self) -> None:
        """A message committed through the spool's agent reaches the user's Maildir."""
        from twisted.internet.defer import Deferred

        from twistedmail.interfaces import Envelope, Recipient

        data = self.mktemp()
        svc = makeService(_settings(data), reactor, roles={})
        svc.startService()
        self.addCleanup(svc.stopService)
        await svc.ready
        components = svc.components
        await components.directory.add_alias(
            "team@mail.example.test", ("demo@mail.example.test",)
        )
        user = await components.directory.get_user("demo@mail.example.test")
        maildir = components.store.mailbox_path(user)
        delivered: Deferred[None] = Deferred()
        self.addCleanup(
            components.store.subscribe(
                maildir, "INBOX", lambda: delivered.called or delivered.callback(None)
            )
        )
        agent = components.spool.agent()
        agent.start(Envelope(sender="a@remote.test", client_address="127.0.0.1"))
        agent.add_recipient(Recipient("team@mail.example.test"))
        agent.body(b"Subject: wired\r\n\r\nhello\r\n")
        await agent.commit()
        await delivered
        new = os.path.join(data, "mail", "mail.example.test", "demo", "new")
        names = os.listdir(new)
        self.assertEqual(len(names), 1)
        content = open(os.path.join(new, names[0]), "rb").read()
        self.assertIn(b"Delivered-To: demo@mail.example.test\r\n", content)
        self.assertIn(b"Return-Path: <a@remote.test>\r\n", content)
        self.assertTrue(content.endswith(b"Subject: wired\r\n\r\nhello\r\n"))
