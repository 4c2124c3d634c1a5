# -*- test-case-name: tests.test_tls -*-
"""Helpers for tests of twistedmail and of applications that embed it.

Not a step of the mail flow: these build the fixtures the flow's tests need
(a certificate the server can use and client TLS options that trust it).
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS

from twistedmail.tls import _self_signed

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

__all__ = [
    "client_tls_options_for",
    "make_test_certificate",
    "memory_resolver",
    "start_test_dns",
]


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


def memory_resolver(
    records: Mapping[str, Sequence[Any]],
    *,
    servfail: Collection[str] = (),
    unanswered: Collection[str] = (),
) -> Any:
    """A DNS resolver (C{IResolver}) answering from records built in code.

    Names not in C{records} get NXDOMAIN; a name that is present answers
    NODATA for types it has no record of; a CNAME is answered with its
    target's addresses, as an authoritative server does.  Use it directly as
    a fake resolver, or serve it on loopback with L{start_test_dns}.

    @param records: owner name (text, no trailing dot) to records, e.g.
        C{{"b.test": [dns.Record_MX(10, b"mx.b.test")],
        "mx.b.test": [dns.Record_A("127.0.0.1")]}}.
    @param servfail: names whose every query fails with SERVFAIL
        (C{twisted.names.error.DNSServerError}).
    @param unanswered: names whose queries never get an answer (the client
        times out).
    """
    from twisted.internet.defer import Deferred, fail
    from twisted.names import authority, dns
    from twisted.names.error import DNSNameError, DNSServerError

    soa = dns.Record_SOA(mname=b"ns.test", rname=b"hostmaster.test", minimum=60)
    blocked = {n.lower().encode("ascii") for n in servfail}
    silent = {n.lower().encode("ascii") for n in unanswered}

    class MemoryAuthority(authority.FileAuthority):
        def loadFile(self, filename: object) -> None:
            self.soa = (b"", soa)  # type: ignore[assignment]
            self.records = {  # type: ignore[assignment]
                name.lower().rstrip(".").encode("ascii"): list(recs)
                for name, recs in records.items()
            }

        def _lookup(
            self, name: bytes, cls: int, type: int, timeout: object = None
        ) -> Any:
            if name.lower() in blocked:
                return fail(DNSServerError(name))
            if name.lower() in silent:
                return Deferred()
            d = super()._lookup(name, cls, type, timeout)

            def nxdomain(failure: Any) -> Any:
                # What twisted.names' client raises for NXDOMAIN (the server
                # answers it as NXDOMAIN too).
                failure.trap(dns.AuthoritativeDomainError)
                raise DNSNameError(name)

            return d.addErrback(nxdomain)

    return MemoryAuthority(None)


def start_test_dns(
    reactor: Any,
    records: Mapping[str, Sequence[Any]],
    *,
    servfail: Collection[str] = (),
    unanswered: Collection[str] = (),
) -> tuple[int, Callable[[], Any]]:
    """Serve C{records} over UDP on 127.0.0.1, on a free port.

    A real C{twisted.names} server (L{memory_resolver} behind a
    C{DNSServerFactory}), so the client side is exercised end to end: point
    C{[dns] nameservers = ["127.0.0.1:PORT"]} at it.

    @param reactor: provides IReactorUDP.
    @return: (the port number, a function stopping the server and returning
        a Deferred); register the latter with C{addCleanup}.
    """
    from twisted.names import dns, server
    from twisted.names.error import DNSServerError

    class Factory(server.DNSServerFactory):
        def gotResolverError(
            self, failure: Any, protocol: Any, message: Any, address: Any
        ) -> None:
            # SERVFAIL asked for by the test: answer it without logging an
            # error (the base class logs every non-NXDOMAIN failure).
            if failure.check(DNSServerError):
                response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
                self.sendReply(protocol, response, address)
                return
            super().gotResolverError(failure, protocol, message, address)

    resolver = memory_resolver(records, servfail=servfail, unanswered=unanswered)
    factory = Factory(authorities=[resolver])
    factory.noisy = False
    protocol = dns.DNSDatagramProtocol(factory)
    protocol.noisy = False
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    return port.getHost().port, port.stopListening
