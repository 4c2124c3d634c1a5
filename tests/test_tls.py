"""Tests for L{twistedmail.tls} and the TLS helpers in L{twistedmail.testing}."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorTCP,
    IStreamClientEndpoint,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twistedmail.config import ServerSettings, Settings, TLSSettings
from twistedmail.testing import client_tls_options_for, make_test_certificate
from twistedmail.tls import (
    SELF_SIGNED_VALIDITY,
    ServerTLS,
    TLSError,
    ensure_certificate,
    install_sighup_reload,
    make_server_tls,
)

# 2026-01-01T00:00:00Z
_T0 = 1767225600.0


def _clock(at: float = _T0) -> Clock:
    clock = Clock()
    clock.advance(at)
    return clock


def _load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


class EnsureCertificateTests(SynchronousTestCase):
    """Finding or making the server's certificate and key."""

    def test_generated(self) -> None:
        """With none configured, a self-signed pair is written to data_dir/tls/."""
        data = self.mktemp()
        cert_path, key_path = ensure_certificate(
            TLSSettings(), "mail.example.test", data, _clock()
        )
        self.assertEqual(cert_path, os.path.join(data, "tls", "cert.pem"))
        self.assertEqual(key_path, os.path.join(data, "tls", "key.pem"))
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertEqual(
            stat.S_IMODE(os.stat(os.path.join(data, "tls")).st_mode) & 0o077, 0
        )
        self.assertEqual(
            sorted(os.listdir(os.path.join(data, "tls"))), ["cert.pem", "key.pem"]
        )
        cert = _load(cert_path)
        dns, ips = _sans(cert)
        self.assertEqual(dns, ["mail.example.test", "localhost"])
        self.assertEqual(ips, ["127.0.0.1", "::1"])
        self.assertEqual(cert.issuer, cert.subject)
        self.assertEqual(
            cert.not_valid_after_utc.timestamp(),
            _T0 + SELF_SIGNED_VALIDITY.total_seconds(),
        )
        self.assertLess(cert.not_valid_before_utc.timestamp(), _T0)
        # The files make a usable server context.
        ServerTLS(cert_path, key_path)

    def test_idn_hostname(self) -> None:
        """An internationalised hostname goes into the SAN as A-labels."""
        cert_path, _ = ensure_certificate(
            TLSSettings(), "bücher.example", self.mktemp()
        )
        self.assertEqual(
            _sans(_load(cert_path))[0], ["xn--bcher-kva.example", "localhost"]
        )

    def test_reused(self) -> None:
        """A second start reuses the pair: the same bytes, even for a new hostname."""
        data = self.mktemp()
        first = ensure_certificate(TLSSettings(), "mail.example.test", data, _clock())
        before = [_read(p) for p in first]
        second = ensure_certificate(
            TLSSettings(), "other.example.test", data, _clock(_T0 + 86400)
        )
        self.assertEqual(second, first)
        self.assertEqual([_read(p) for p in second], before)

    def test_remade_when_unreadable(self) -> None:
        """A corrupt certificate file is replaced by a new pair."""
        data = self.mktemp()
        cert_path, key_path = ensure_certificate(
            TLSSettings(), "mail.example.test", data
        )
        old_key = _read(key_path)
        _write(cert_path, b"garbage")
        ensure_certificate(TLSSettings(), "mail.example.test", data)
        _load(cert_path)
        self.assertNotEqual(_read(key_path), old_key)
        ServerTLS(cert_path, key_path)

    def test_remade_when_mismatched(self) -> None:
        """A key that does not match the certificate (a crash between renames) is remade."""
        data = self.mktemp()
        cert_path, key_path = ensure_certificate(
            TLSSettings(), "mail.example.test", data
        )
        _, other_key = make_test_certificate(self.mktemp())
        _write(key_path, _read(other_key))
        ensure_certificate(TLSSettings(), "mail.example.test", data)
        ServerTLS(cert_path, key_path)

    def test_remade_when_expired(self) -> None:
        """An expired self-signed certificate is replaced at the next start."""
        data = self.mktemp()
        cert_path, _ = ensure_certificate(
            TLSSettings(), "mail.example.test", data, _clock()
        )
        old = _load(cert_path)
        later = _T0 + SELF_SIGNED_VALIDITY.total_seconds() + 1
        ensure_certificate(TLSSettings(), "mail.example.test", data, _clock(later))
        new = _load(cert_path)
        self.assertNotEqual(new.serial_number, old.serial_number)
        self.assertGreater(new.not_valid_after_utc, old.not_valid_after_utc)

    def test_configured(self) -> None:
        """Configured files are returned as they are and nothing is generated."""
        data = self.mktemp()
        settings = TLSSettings(certificate="/etc/x/cert.pem", key="/etc/x/key.pem")
        self.assertEqual(
            ensure_certificate(settings, "mail.example.test", data),
            ("/etc/x/cert.pem", "/etc/x/key.pem"),
        )
        self.assertFalse(os.path.exists(data))

    def test_make_server_tls(self) -> None:
        """make_server_tls generates under the data folder and loads the pair."""
        data = self.mktemp()
        settings = Settings(
            server=ServerSettings(hostname="mx.example.test", data_dir=data)
        )
        server_tls = make_server_tls(settings, _clock())
        self.assertEqual(server_tls.cert_path, os.path.join(data, "tls", "cert.pem"))
        self.assertIn("mx.example.test", _sans(server_tls.certificate)[0])


class ServerTLSErrorTests(SynchronousTestCase):
    """Bad files and settings give an error naming the file or setting."""

    def assertNames(self, source: str, words: str, make: Callable[[], object]) -> None:
        with self.assertRaises(TLSError) as cm:
            make()
        self.assertEqual(cm.exception.source, source)
        self.assertTrue(str(cm.exception).startswith(source + ": "), str(cm.exception))
        self.assertIn(words, str(cm.exception))

    def test_missing_certificate(self) -> None:
        """A missing certificate file is named."""
        _, key = make_test_certificate(self.mktemp())
        missing = os.path.join(self.mktemp(), "cert.pem")
        self.assertNames(missing, "cannot read", lambda: ServerTLS(missing, key))

    def test_missing_key(self) -> None:
        """A missing key file is named."""
        cert, _ = make_test_certificate(self.mktemp())
        missing = os.path.join(self.mktemp(), "key.pem")
        self.assertNames(missing, "cannot read", lambda: ServerTLS(cert, missing))

    def test_not_a_certificate(self) -> None:
        """A certificate file that is not PEM is named."""
        cert, key = make_test_certificate(self.mktemp())
        _write(cert, b"not a certificate\n")
        self.assertNames(cert, "not a PEM certificate", lambda: ServerTLS(cert, key))

    def test_not_a_key(self) -> None:
        """A key file holding a certificate is named."""
        cert, key = make_test_certificate(self.mktemp())
        _write(key, _read(cert))
        self.assertNames(key, "not a PEM private key", lambda: ServerTLS(cert, key))

    def test_mismatched(self) -> None:
        """A key from another pair is named, with the certificate it fails."""
        cert, _ = make_test_certificate(self.mktemp())
        _, other_key = make_test_certificate(self.mktemp())
        self.assertNames(
            other_key,
            f"does not match the certificate in {cert}",
            lambda: ServerTLS(cert, other_key),
        )

    def test_bad_ciphers(self) -> None:
        """A cipher list that selects nothing names the setting."""
        cert, key = make_test_certificate(self.mktemp())
        self.assertNames(
            "[tls] ciphers",
            "no usable cipher",
            lambda: ServerTLS(cert, key, ciphers="NOPE"),
        )

    def test_bad_min_version(self) -> None:
        """Only TLS 1.2 and 1.3 are accepted as minimum versions."""
        cert, key = make_test_certificate(self.mktemp())
        self.assertNames(
            "[tls] min_version", "TLSv1.2", lambda: ServerTLS(cert, key, "TLSv1.1")
        )

    def test_interfaces(self) -> None:
        """ServerTLS is what Twisted's TLS layer and startTLS accept."""
        cert, key = make_test_certificate(self.mktemp())
        server_tls = ServerTLS(cert, key)
        creator = server_tls.connection_creator()
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, creator))
        self.assertIsInstance(server_tls.getContext(), SSL.Context)


class SighupTests(SynchronousTestCase):
    """install_sighup_reload schedules the callback in the reactor thread."""

    def test_sighup(self) -> None:
        """SIGHUP hands the callback to callFromThread; uninstall restores the handler."""
        calls: list[Callable[[], object]] = []

        class FakeReactor:
            def callFromThread(self, f: Callable[[], object], *args: object) -> None:
                calls.append(f)

        def callback() -> None:
            """The reload."""

        previous = signal.getsignal(signal.SIGHUP)
        uninstall = install_sighup_reload(FakeReactor(), callback)  # type: ignore[arg-type]
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        signal.raise_signal(signal.SIGHUP)
        self.assertEqual(calls, [callback])
        uninstall()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)


class _Echo(Protocol):
    """Echoes; with the factory's starttls set, waits for STARTTLS first."""

    def __init__(self, factory: _EchoFactory) -> None:
        self._factory = factory
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        transport = cast(ITLSTransport, self.transport)
        server_tls = self._factory.starttls
        if server_tls is None:
            transport.write(data)
            return
        self._buffer += data
        if self._buffer == b"STARTTLS\r\n":
            transport.write(b"GO\r\n")
            transport.startTLS(server_tls)
            self._factory.starttls = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._factory.open.pop(self).callback(None)


class _EchoFactory(Factory):
    """Builds L{_Echo}s and keeps a Deferred per open connection."""

    def __init__(self, starttls: ServerTLS | None = None) -> None:
        self.open: dict[_Echo, Deferred[None]] = {}
        self.starttls = starttls

    def buildProtocol(self, addr: IAddress | None) -> _Echo:
        p = _Echo(self)
        self.open[p] = Deferred()
        return p


class _Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._want: tuple[bytes, Deferred[bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def _check(self) -> None:
        if self._want and self.received.endswith(self._want[0]):
            d = self._want[1]
            self._want = None
            d.callback(self.received)

    def echo(self, data: bytes, reply: bytes | None = None) -> Deferred[bytes]:
        """Send data; fire with all received once it ends with reply (or data)."""
        d: Deferred[bytes] = Deferred()
        self._want = (data if reply is None else reply, d)
        self.transport.write(data)  # type: ignore[union-attr]
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason
        self.lost.callback(None)

    def peer_certificate(self) -> bytes:
        cert = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        return bytes(cert.to_cryptography().fingerprint(hashes.SHA256()))

    def version(self) -> str:
        return str(self.transport.getHandle().get_protocol_version_name())  # type: ignore[union-attr]


@implementer(IOpenSSLClientConnectionCreator)
class _VersionClient:
    """A client that offers exactly one TLS version and checks nothing."""

    def __init__(self, version: int) -> None:
        self._ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._ctx.set_min_proto_version(version)
        self._ctx.set_max_proto_version(version)
        # Security level 0 lets the client offer TLS 1.1 at all.
        self._ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._ctx, None)


def _fingerprint(path: str) -> bytes:
    return _load(path).fingerprint(hashes.SHA256())


class LoopbackTests(TestCase):
    """Real TLS handshakes on 127.0.0.1 against ServerTLS."""

    def _listen(self, server_tls: ServerTLS, starttls: bool = False) -> int:
        factory = _EchoFactory(server_tls if starttls else None)
        wrapped = factory if starttls else server_tls.wrap_implicit(factory, reactor)
        tcp = cast(IReactorTCP, reactor)
        port = tcp.listenTCP(0, wrapped, interface="127.0.0.1")  # type: ignore[arg-type]

        async def close() -> None:
            await cast(Deferred[None], port.stopListening())
            for d in list(factory.open.values()):
                await d

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return int(port.getHost().port)  # type: ignore[attr-defined]

    async def _connect(
        self, port: int, creator: IOpenSSLClientConnectionCreator | None
    ) -> _Client:
        client = _Client()
        endpoint: IStreamClientEndpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        if creator is not None:
            endpoint = wrapClientTLS(creator, endpoint)
        await connectProtocol(endpoint, client)

        async def close() -> None:
            if not client.lost.called:
                client.transport.loseConnection()  # type: ignore[union-attr]
            await client.lost

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return client

    async def test_implicit_tls_echo(self) -> None:
        """wrap_implicit makes a plain TCP listener speak TLS end to end."""
        cert, key = make_test_certificate(self.mktemp())
        port = self._listen(ServerTLS(cert, key))
        client = await self._connect(port, client_tls_options_for(cert, "localhost"))
        self.assertEqual(await client.echo(b"hello\r\n"), b"hello\r\n")
        self.assertEqual(client.peer_certificate(), _fingerprint(cert))

    async def test_starttls(self) -> None:
        """transport.startTLS(server_tls) upgrades a plain connection (STARTTLS, STLS)."""
        cert, key = make_test_certificate(self.mktemp())
        server_tls = ServerTLS(cert, key)
        port = self._listen(server_tls, starttls=True)
        client = await self._connect(port, None)
        self.assertEqual(await client.echo(b"STARTTLS\r\n", b"GO\r\n"), b"GO\r\n")
        client.transport.startTLS(client_tls_options_for(cert, "localhost"))  # type: ignore[union-attr]
        self.assertEqual(await client.echo(b"secret"), b"GO\r\nsecret")
        self.assertEqual(client.peer_certificate(), _fingerprint(cert))

    async def test_ip_address_name(self) -> None:
        """A client that checks 127.0.0.1 accepts the generated certificate."""
        cert, key = make_test_certificate(self.mktemp(), "mail.example.test")
        port = self._listen(ServerTLS(cert, key))
        client = await self._connect(port, client_tls_options_for(cert, "127.0.0.1"))
        self.assertEqual(await client.echo(b"x"), b"x")

    async def test_tls11_refused(self) -> None:
        """A TLS 1.1 client is refused with a protocol-version alert.

        The server's cipher list here allows TLS 1.1 suites, so only the
        minimum version can be what refuses it.
        """
        cert, key = make_test_certificate(self.mktemp())
        ciphers = "ECDHE+AESGCM:ECDHE+AES:@SECLEVEL=0"
        port = self._listen(ServerTLS(cert, key, "TLSv1.2", ciphers))
        client = await self._connect(port, _VersionClient(SSL.TLS1_1_VERSION))
        client.transport.write(b"x")  # type: ignore[union-attr]
        await client.lost
        assert client.reason is not None
        self.assertIsInstance(client.reason.value, SSL.Error)
        self.assertIn("protocol version", str(client.reason.value))
        self.assertEqual(client.received, b"")

    async def test_tls12_accepted(self) -> None:
        """A TLS 1.2 client gets through with the default minimum."""
        cert, key = make_test_certificate(self.mktemp())
        port = self._listen(ServerTLS(cert, key))
        client = await self._connect(port, _VersionClient(SSL.TLS1_2_VERSION))
        self.assertEqual(await client.echo(b"x"), b"x")
        self.assertEqual(client.version(), "TLSv1.2")

    async def test_tls13_minimum(self) -> None:
        """With min_version TLSv1.3, TLS 1.2 is refused and 1.3 accepted."""
        cert, key = make_test_certificate(self.mktemp())
        port = self._listen(ServerTLS(cert, key, "TLSv1.3"))
        old = await self._connect(port, _VersionClient(SSL.TLS1_2_VERSION))
        old.transport.write(b"x")  # type: ignore[union-attr]
        await old.lost
        assert old.reason is not None
        self.assertIn("protocol version", str(old.reason.value))
        new = await self._connect(port, _VersionClient(SSL.TLS1_3_VERSION))
        self.assertEqual(await new.echo(b"x"), b"x")
        self.assertEqual(new.version(), "TLSv1.3")

    async def test_reload(self) -> None:
        """After reload new connections get the new certificate; open ones go on."""
        directory = self.mktemp()
        old_cert, key = make_test_certificate(directory)
        saved_old = os.path.join(self.mktemp())
        os.makedirs(saved_old)
        old_copy = os.path.join(saved_old, "cert.pem")
        _write(old_copy, _read(old_cert))
        server_tls = ServerTLS(old_cert, key)
        port = self._listen(server_tls)
        first = await self._connect(port, client_tls_options_for(old_copy, "localhost"))
        self.assertEqual(await first.echo(b"one"), b"one")

        new_cert, _ = make_test_certificate(directory)  # same paths, new pair
        server_tls.reload()
        self.assertEqual(
            server_tls.certificate.fingerprint(hashes.SHA256()), _fingerprint(new_cert)
        )
        second = await self._connect(
            port, client_tls_options_for(new_cert, "localhost")
        )
        self.assertEqual(await second.echo(b"two"), b"two")
        self.assertEqual(second.peer_certificate(), _fingerprint(new_cert))

        self.assertEqual(await first.echo(b"three"), b"onethree")
        self.assertEqual(first.peer_certificate(), _fingerprint(old_copy))
        self.assertNotEqual(_fingerprint(old_copy), _fingerprint(new_cert))

    async def test_reload_bad_files(self) -> None:
        """A reload with broken files keeps the old certificate and logs why."""
        cert, key = make_test_certificate(self.mktemp())
        old = _fingerprint(cert)
        saved = os.path.join(self.mktemp())
        os.makedirs(saved)
        _write(os.path.join(saved, "cert.pem"), _read(cert))
        server_tls = ServerTLS(cert, key)
        port = self._listen(server_tls)
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        _write(key, b"broken")
        server_tls.reload()
        self.assertEqual(server_tls.certificate.fingerprint(hashes.SHA256()), old)
        errors = [
            e for e in events if e.get("log_namespace") == "twistedmail.tls.ServerTLS"
        ]
        self.assertEqual(len(errors), 1)
        self.assertIn(key, errors[0]["error"])
        self.assertIn("not a PEM private key", errors[0]["error"])

        client = await self._connect(
            port, client_tls_options_for(os.path.join(saved, "cert.pem"), "localhost")
        )
        self.assertEqual(await client.echo(b"x"), b"x")
        self.assertEqual(client.peer_certificate(), old)
