# -*- test-case-name: tests.test_tls -*-
"""TLS for every listener: the server certificate and its OpenSSL context.

This is the step before any protocol runs on an encrypted connection: STARTTLS
(SMTP, IMAP), STLS (POP3) and the implicit-TLS roles (``submissions``,
``pop3s``, ``imaps``) all take their context from one L{ServerTLS}.

- L{ensure_certificate} finds the certificate and key: the configured files,
  or a self-signed certificate for the server's hostname generated under
  ``data_dir/tls/`` on first start and reused after.
- L{ServerTLS} builds the pyOpenSSL context (TLS 1.2 or 1.3 minimum, no
  compression, server cipher preference) and can L{ServerTLS.reload} the files
  for new connections while existing connections keep theirs.
- L{install_sighup_reload} ties a reload to SIGHUP; only the twistd plugin
  calls it, since library code installs no signal handlers.

On-disk format (version 1) of ``data_dir/tls/``: ``cert.pem`` (one PEM
certificate, mode 0644) and ``key.pem`` (a PEM PKCS#8 private key without
passphrase, mode 0600); the directory is mode 0700.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import tempfile
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from twistedmail.address import AddressError, normalize_domain
from twistedmail.config import ConfigError, Settings, TLSSettings

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = [
    "SELF_SIGNED_VALIDITY",
    "ServerTLS",
    "TLSError",
    "ensure_certificate",
    "install_sighup_reload",
    "make_server_tls",
]

_log = Logger()

#: How long a generated self-signed certificate is valid.  Under Apple's
#: 825-day limit for TLS server certificates.
SELF_SIGNED_VALIDITY = datetime.timedelta(days=730)

# Generated certificates start an hour early so that a client whose clock is a
# little behind still accepts a certificate made a moment ago.
_BACKDATE = datetime.timedelta(hours=1)

_MIN_VERSIONS = {
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}


class TLSError(ConfigError):
    """A certificate, key or TLS setting cannot be used.

    ``str()`` names the file (or setting) and the problem, like every
    L{ConfigError}, so the server refuses to start with a clear message.

    @ivar source: the file path, or the setting such as ``[tls] ciphers``.
    """

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(source, "", problem)


def _now(clock: IReactorTime | None) -> datetime.datetime:
    if clock is None:
        return datetime.datetime.now(datetime.UTC)
    return datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)


def _subject_alt_names(hostname: str) -> list[x509.GeneralName]:
    """DNS names for the hostname and localhost, plus the loopback addresses."""
    names: list[x509.GeneralName] = []
    ips = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    if hostname.startswith("["):
        literal = hostname[1:-1]
        if literal[:5].lower() == "ipv6:":
            literal = literal[5:]
        ip = ipaddress.ip_address(literal)
        if ip not in ips:
            ips.insert(0, ip)
    else:
        names.append(x509.DNSName(hostname))
    if hostname != "localhost":
        names.append(x509.DNSName("localhost"))
    names.extend(x509.IPAddress(ip) for ip in ips)
    return names


def _self_signed(
    hostname: str, key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> tuple[bytes, bytes]:
    """Make a self-signed server certificate; return (cert PEM, key PEM).

    @param hostname: a domain (U-labels are converted to A-labels) or an
        address literal such as ``[192.0.2.1]``.
    @raise ValueError: when the hostname is not a domain or address literal.
    """
    try:
        hostname = normalize_domain(hostname)
    except AddressError as e:
        raise ValueError(f"cannot make a certificate for {hostname!r}: {e}") from None
    common_name = hostname.strip("[]")
    # RFC 5280 upper bound for a common name; the SAN carries the real name.
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if len(common_name) <= 64
        else [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twistedmail")]
    )
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(_subject_alt_names(hostname)), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    """Write data to path via a temporary file, fsync and rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _problem_with_pair(
    cert_path: str, key_path: str, now: datetime.datetime
) -> str | None:
    """Why a generated pair must be made again, or None when it is usable."""
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, TypeError) as e:
        return f"unreadable ({e})"
    if cert.public_key() != key.public_key():
        return "the key does not match the certificate"
    if cert.not_valid_after_utc <= now:
        return "expired"
    return None


def ensure_certificate(
    settings: TLSSettings,
    hostname: str,
    data_dir: str,
    clock: IReactorTime | None = None,
) -> tuple[str, str]:
    """Find the server's certificate and key files; make them if needed.

    With C{settings.certificate} and C{settings.key} set, they are returned
    as they are (L{ServerTLS} checks them).  Otherwise the pair lives in
    C{data_dir/tls/}: C{cert.pem} and C{key.pem} (mode 0600).  They are made
    on first start, a self-signed ECDSA P-256 certificate for C{hostname}
    (SAN: the hostname, C{localhost}, 127.0.0.1 and ::1; valid for
    L{SELF_SIGNED_VALIDITY}; random serial), and reused after.  They are made
    again only when missing, unreadable, not matching each other, or expired.
    A changed hostname does B{not} make a new certificate: the old one stays
    in use (delete the two files to get one for the new name).

    Runs blocking file I/O; call it at start-up, before the reactor runs.

    @param clock: the time source for the validity period and the expiry
        check; the system clock when None.
    @return: (certificate path, key path).
    @raise OSError: when the files cannot be written.
    @raise ValueError: when a certificate for C{hostname} cannot be made.
    """
    if settings.certificate:
        return settings.certificate, settings.key
    tls_dir = os.path.join(data_dir, "tls")
    cert_path = os.path.join(tls_dir, "cert.pem")
    key_path = os.path.join(tls_dir, "key.pem")
    now = _now(clock)
    problem = _problem_with_pair(cert_path, key_path, now)
    if problem is None:
        return cert_path, key_path
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    cert_pem, key_pem = _self_signed(
        hostname, ec.generate_private_key(ec.SECP256R1()), now
    )
    # The key goes first: after a crash between the two renames the pair does
    # not match, and the next start makes a new one.
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    _log.info(
        "generated a self-signed TLS certificate for {hostname} in {path}"
        " (previous: {problem})",
        hostname=hostname,
        path=cert_path,
        problem=problem,
    )
    return cert_path, key_path


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(path, f"cannot read: {e.strerror or e}") from None


_ServerKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


def _load_pair(
    cert_path: str, key_path: str
) -> tuple[list[x509.Certificate], _ServerKey]:
    """Read and parse a certificate chain and its key; check they match."""
    cert_data = _read(cert_path)
    key_data = _read(key_path)
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError as e:
        raise TLSError(cert_path, f"not a PEM certificate ({e})") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TLSError(
            key_path, "the key is encrypted; a key without passphrase is needed"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSError(key_path, f"not a PEM private key ({e})") from None
    if not isinstance(
        key,
        (
            ec.EllipticCurvePrivateKey,
            rsa.RSAPrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        raise TLSError(key_path, f"unsupported key type {type(key).__name__}")
    if chain[0].public_key() != key.public_key():
        raise TLSError(key_path, f"does not match the certificate in {cert_path}")
    return chain, key


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerTLS:
    """The server's TLS configuration, reloadable while connections are open.

    It is the object to hand to Twisted wherever a server TLS context is
    wanted: it provides L{IOpenSSLServerConnectionCreator} (for
    C{TLSMemoryBIOFactory} and C{transport.startTLS(server_tls)}) and the
    older L{IOpenSSLContextFactory} (C{getContext}).  Each new connection
    takes the context current at that moment, so L{reload} changes the
    certificate for new connections only.

    The context: TLS 1.2 or 1.3 minimum, no compression, the server's cipher
    order, the given OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are
    OpenSSL's).  ECDHE groups are chosen automatically (OpenSSL 1.1.0 and
    later always do; there is no setting to make).  The certificate file may
    hold a chain: the server certificate first, then intermediates.
    """

    _log = Logger()

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        min_version: str = "TLSv1.2",
        ciphers: str = TLSSettings.ciphers,
    ) -> None:
        """Load the files and build the first context.

        @param min_version: C{"TLSv1.2"} or C{"TLSv1.3"}.
        @param ciphers: an OpenSSL cipher list (for TLS 1.2).
        @raise TLSError: naming the file when the certificate or key cannot be
            read or parsed, or when they do not match; naming the setting when
            the version or cipher list is not usable.
        """
        if min_version not in _MIN_VERSIONS:
            raise TLSError(
                "[tls] min_version",
                f"must be one of {', '.join(sorted(_MIN_VERSIONS))}, not {min_version!r}",
            )
        self.cert_path = cert_path
        self.key_path = key_path
        self._min_version = _MIN_VERSIONS[min_version]
        self._ciphers = ciphers
        self._context, self._certificate = self._build()

    def _build(self) -> tuple[SSL.Context, x509.Certificate]:
        chain, key = _load_pair(self.cert_path, self.key_path)
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(self._min_version)
        ctx.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_NO_RENEGOTIATION
        )
        try:
            ctx.set_cipher_list(self._ciphers.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError) as e:
            raise TLSError(
                "[tls] ciphers", f"no usable cipher in {self._ciphers!r} ({e})"
            ) from None
        try:
            ctx.use_certificate(chain[0])
            for extra in chain[1:]:
                ctx.add_extra_chain_cert(extra)
        except SSL.Error as e:
            raise TLSError(self.cert_path, f"certificate not usable ({e})") from None
        try:
            ctx.use_privatekey(key)
            ctx.check_privatekey()
        except (SSL.Error, TypeError) as e:
            raise TLSError(self.key_path, f"key not usable ({e})") from None
        return ctx, chain[0]

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate new connections get."""
        return self._certificate

    def connection_creator(self) -> IOpenSSLServerConnectionCreator:
        """What C{TLSMemoryBIOFactory} or C{transport.startTLS} wants.

        It is this object: it always uses the latest context.
        """
        return self

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        """A new OpenSSL connection on the current context (Twisted calls this)."""
        return SSL.Connection(self._context, None)

    def getContext(self) -> SSL.Context:
        """The current context (for code using the older context factory API)."""
        return self._context

    def reload(self) -> None:
        """Read the certificate and key files again, for new connections.

        Connections already open keep the context they started with.  When
        the new files are bad, the old context stays in use and the error is
        logged; this never raises.  Reads two small files on the calling
        thread.
        """
        try:
            context, certificate = self._build()
        except TLSError as e:
            self._log.error(
                "TLS reload failed, keeping the previous certificate: {error}",
                error=str(e),
            )
            return
        except Exception:
            self._log.failure("TLS reload failed, keeping the previous certificate")
            return
        self._context, self._certificate = context, certificate
        self._log.info(
            "TLS certificate reloaded from {path}: serial={serial:x} expires={expires}",
            path=self.cert_path,
            serial=certificate.serial_number,
            expires=certificate.not_valid_after_utc.isoformat(),
        )

    def wrap_implicit(
        self, factory: IProtocolFactory, clock: IReactorTime | None = None
    ) -> IProtocolFactory:
        """Wrap a protocol factory so that its connections start with TLS.

        Listening on a plain C{tcp:} endpoint with the result gives implicit
        TLS (ports 465, 995, 993) whose certificate follows L{reload}.

        @param clock: the reactor Twisted's TLS layer schedules its write
            flushes on; the global reactor when None.
        """
        return TLSMemoryBIOFactory(self, False, factory, clock)


def make_server_tls(settings: Settings, clock: IReactorTime | None = None) -> ServerTLS:
    """The server's L{ServerTLS} from its settings (see L{ensure_certificate}).

    @raise TLSError: when the configured files are not usable.
    @raise OSError: when a self-signed certificate cannot be written.
    """
    cert_path, key_path = ensure_certificate(
        settings.tls, settings.server.hostname, settings.server.data_dir, clock
    )
    return ServerTLS(
        cert_path, key_path, settings.tls.min_version, settings.tls.ciphers
    )


def install_sighup_reload(
    reactor: IReactorFromThreads, callback: Callable[[], object]
) -> Callable[[], None]:
    """Call C{callback} in the reactor thread whenever the process gets SIGHUP.

    Library code never installs signal handlers; only the twistd plugin (the
    process owner) calls this, typically with C{server_tls.reload}.  The
    signal handler itself only schedules the callback with
    C{reactor.callFromThread}, which is safe from a signal handler.

    Must be called from the main thread (a rule of L{signal.signal}).

    @return: a function that puts the previous SIGHUP handler back.
    """

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(callback)

    previous = signal.signal(signal.SIGHUP, on_sighup)

    def uninstall() -> None:
        signal.signal(signal.SIGHUP, previous)

    return uninstall
