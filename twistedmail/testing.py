# -*- test-case-name: tests.test_tls -*-
"""Helpers for tests of twistedmail and of applications that embed it.

Not a step of the mail flow: these build the fixtures the flow's tests need
(a certificate the server can use and client TLS options that trust it).
"""

from __future__ import annotations

import datetime
import os

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS

from twistedmail.tls import _self_signed

__all__ = ["client_tls_options_for", "make_test_certificate"]


def make_test_certificate(
    directory: str, hostname: str = "localhost"
) -> tuple[str, str]:
    """Write a fresh self-signed certificate and key for C{hostname}.

    The certificate is the same kind L{twistedmail.tls.ensure_certificate}
    makes (SAN: the hostname, localhost, 127.0.0.1, ::1), with a new ECDSA
    P-256 key each call (generating one takes well under a millisecond), so
    two calls give two different certificates.

    @param directory: created if missing; gets C{cert.pem} and C{key.pem}
        (replaced if present).
    @return: (certificate path, key path).
    """
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    cert_pem, key_pem = _self_signed(
        hostname, ec.generate_private_key(ec.SECP256R1()), now
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(key_path, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    return cert_path, key_path


def client_tls_options_for(
    cert_path: str, hostname: str
) -> IOpenSSLClientConnectionCreator:
    """Client TLS options that trust only the certificate in C{cert_path}.

    Use with C{wrapClientTLS}, C{connectSSL} or a client's C{startTLS}; the
    server's certificate is checked against C{hostname} (a DNS name or an IP
    address) as a real client would.
    """
    with open(cert_path, "rb") as f:
        root = Certificate.loadPEM(f.read())
    return optionsForClientTLS(hostname, trustRoot=root)
