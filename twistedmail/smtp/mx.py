# -*- test-case-name: tests.test_mx -*-
"""MX resolution: where mail for a domain goes (the relay step, "MX records
with preference" in the seed's flow).

L{MXResolver} asks an injected C{IResolver} (L{make_resolver} builds the real
one from the C{[dns]} settings) and answers with the hosts to try, best first:

  - MX records sorted by preference, equal preferences shuffled (RFC 5321
    §5.1); each host's AAAA then A addresses, in the order DNS gave them.
  - No MX record but the domain has addresses: the domain itself is the one
    host, preference 0 (the implicit MX, RFC 5321 §5.1).
  - A null MX (a single ``0 .`` record, RFC 7505 §3): L{PermanentError} with
    556 5.1.10, so the message bounces at once.
  - CNAMEs are followed (at most L{MAX_CNAME_CHAIN} links) for the domain and
    for each MX host.
  - An address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) skips DNS.

Failures: NXDOMAIN for the domain is permanent (550 5.1.2); a timeout, a
SERVFAIL or any other DNS trouble is temporary (451 4.4.3), so the queue
retries later.  MX hosts that have no address are left out; when none has
one, the failure is temporary (the receiving domain's DNS may be fixed).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.names.client import Resolver
from twisted.names.error import DNSNameError

from twistedmail.address import AddressError, normalize_domain
from twistedmail.replies import PermanentError, Reply, TemporaryError

__all__ = [
    "DEFAULT_DNS_TIMEOUT",
    "MAX_CNAME_CHAIN",
    "MXHost",
    "MXResolver",
    "NO_SUCH_DOMAIN",
    "NULL_MX",
    "DNS_FAILURE",
    "make_resolver",
    "system_nameservers",
    "parse_nameserver",
]

#: Seconds per try, one try per entry (twisted.names' default).
DEFAULT_DNS_TIMEOUT: tuple[int, ...] = (1, 3, 11, 45)
#: How many CNAME links are followed before giving up (temporary failure).
MAX_CNAME_CHAIN = 8

NULL_MX = Reply(556, "5.1.10", "Recipient domain does not accept mail (null MX)")
NO_SUCH_DOMAIN = Reply(550, "5.1.2", "Recipient domain does not exist")
NO_MAIL_HOST = Reply(550, "5.1.2", "Recipient domain has no mail server")
DNS_FAILURE = Reply(451, "4.4.3", "Temporary DNS failure looking up the mail server")

T = TypeVar("T")


@dataclass(frozen=True)
class MXHost:
    """One mail server for a domain.

    @ivar name: the host's name (lower case, A-labels, no trailing dot), or
        the address literal it came from; certificates are checked against it.
    @ivar preference: the MX preference (0 for an implicit MX or a literal).
    @ivar addresses: IP addresses to connect to, in order (IPv6 first).
    """

    name: str
    preference: int
    addresses: tuple[str, ...]


class _NoData(Exception):
    """The name exists but has no record of the asked type."""


def _name(value: Any) -> str:
    """A dns.Name (or bytes) as lower-case text without the trailing dot."""
    raw = value.name if isinstance(value, dns.Name) else value
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    return text.rstrip(".").lower()


def _shuffle(items: list[Any]) -> None:
    random.shuffle(items)


class MXResolver:
    """Look up the mail hosts of a domain through an C{IResolver}.

    @param resolver: answers the DNS queries (a L{twisted.names.client.Resolver}
        from L{make_resolver}, or a fake in tests).
    @param clock: bounds the whole lookup by C{deadline} seconds.
    @param timeout: per-query retry timeouts handed to the resolver.
    @param deadline: seconds one L{lookup} may take in all; past it the
        lookup fails with a temporary error.
    @param shuffle: shuffles a list in place; used for MX records of equal
        preference (tests inject a deterministic one).
    @param ipv6: also look up AAAA records (tried before the A records).
    """

    def __init__(
        self,
        resolver: Any,
        clock: IReactorTime,
        *,
        timeout: Sequence[int] = DEFAULT_DNS_TIMEOUT,
        deadline: float = 120.0,
        shuffle: Callable[[list[Any]], None] | None = None,
        ipv6: bool = True,
    ) -> None:
        self._resolver = resolver
        self._clock = clock
        self._timeout = tuple(timeout)
        self._deadline = deadline
        self._shuffle = shuffle or _shuffle
        self._ipv6 = ipv6

    def lookup(self, domain: str) -> Deferred[list[MXHost]]:
        """The hosts to try for C{domain}, best first.

        @param domain: a domain (U-labels allowed, a trailing dot ignored)
            or an address literal.
        @return: a Deferred firing with a non-empty list of L{MXHost}, or
            failing with L{PermanentError} (no such domain, null MX, no mail
            server) or L{TemporaryError} (DNS trouble).
        """
        return self._bounded(self._lookup(domain), domain)

    def resolve_host(self, name: str) -> Deferred[tuple[str, ...]]:
        """The addresses of one host (for a smarthost: no MX lookup).

        @return: a Deferred firing with the host's addresses (AAAA first), or
            failing like L{lookup}; a host with no address is permanent.
        """

        async def run() -> tuple[str, ...]:
            literal = _literal(name)
            if literal is not None:
                return (literal,)
            host = _normalize(name)
            addresses = await self._addresses(host)
            if not addresses:
                raise PermanentError(NO_MAIL_HOST, f"{host} has no address")
            return addresses

        return self._bounded(run(), name)

    def _bounded(self, coro: Any, what: str) -> Deferred[T]:
        d: Deferred[T] = Deferred.fromCoroutine(coro)

        def timed_out(failure: Any) -> Any:
            failure.trap(defer.TimeoutError)
            raise TemporaryError(
                DNS_FAILURE, f"DNS lookup for {what} took over {self._deadline}s"
            )

        d.addTimeout(self._deadline, self._clock)
        d.addErrback(timed_out)
        return d

    async def _lookup(self, domain: str) -> list[MXHost]:
        literal = _literal(domain)
        if literal is not None:
            return [MXHost(domain, 0, (literal,))]
        name = _normalize(domain)
        try:
            mx_records = await self._query(name, dns.MX)
        except DNSNameError:
            raise PermanentError(NO_SUCH_DOMAIN, f"{name}: NXDOMAIN") from None
        if not mx_records:
            addresses = await self._addresses(name)
            if not addresses:
                raise PermanentError(NO_MAIL_HOST, f"{name}: no MX and no address")
            return [MXHost(name, 0, addresses)]
        targets = [(r.preference, _name(r.name)) for r in mx_records]
        if len(targets) == 1 and targets[0] == (0, ""):
            raise PermanentError(NULL_MX, f"{name} publishes a null MX (RFC 7505)")
        # A "." target among others is a broken null MX; it names no host.
        targets = [t for t in targets if t[1]]
        ordered = self._order(targets)
        hosts: list[MXHost] = []
        temporary: list[str] = []
        results = await defer.gatherResults(
            [_settled(self._addresses(host)) for _, host in ordered]
        )
        for (preference, host), (value, problem) in zip(ordered, results, strict=True):
            if problem is not None:
                temporary.append(_describe(problem))
            elif value:
                hosts.append(MXHost(host, preference, value))
            else:
                temporary.append(f"{host} has no address")
        if not hosts:
            reason = "; ".join(temporary)
            raise TemporaryError(DNS_FAILURE, f"{name}: no usable MX host: {reason}")
        return hosts

    def _order(self, targets: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Sort by preference; shuffle each group of equal preferences."""
        ordered: list[tuple[int, str]] = []
        for preference in sorted({p for p, _ in targets}):
            group = [t for t in targets if t[0] == preference]
            if len(group) > 1:
                self._shuffle(group)
            ordered.extend(group)
        return ordered

    async def _addresses(self, host: str) -> tuple[str, ...]:
        """AAAA then A addresses of a host; empty if it has none.

        @raise TemporaryError: when a query fails other than NXDOMAIN/NODATA.
        """
        kinds = [dns.AAAA, dns.A] if self._ipv6 else [dns.A]
        results = await defer.gatherResults(
            [_settled(self._query_or_none(host, k)) for k in kinds]
        )
        addresses: list[str] = []
        errors: list[BaseException] = []
        for value, problem in results:
            if problem is not None:
                errors.append(problem)
            elif value:
                addresses.extend(_address_text(r) for r in value)
        if not addresses and errors:
            raise errors[0]
        return tuple(dict.fromkeys(addresses))

    async def _query_or_none(self, host: str, kind: int) -> list[Any]:
        try:
            return await self._query(host, kind)
        except DNSNameError:
            return []

    async def _query(self, name: str, kind: int) -> list[Any]:
        """The records of one type at C{name}, following CNAMEs.

        @return: the record payloads (empty for NODATA).
        @raise DNSNameError: NXDOMAIN.
        @raise TemporaryError: for any other DNS failure or a CNAME chain
            that is too long.
        """
        method = {
            dns.MX: "lookupMailExchange",
            dns.A: "lookupAddress",
            dns.AAAA: "lookupIPV6Address",
        }[kind]
        current = name
        hops = 0
        while True:
            try:
                answers, _authority, _additional = await getattr(
                    self._resolver, method
                )(current, self._timeout)
            except (DNSNameError, defer.CancelledError):
                raise
            except Exception as e:
                raise TemporaryError(
                    DNS_FAILURE, f"{current} {dns.QUERY_TYPES[kind]}: {_describe(e)}"
                ) from None
            by_name: dict[str, list[Any]] = {}
            for rr in answers:
                by_name.setdefault(_name(rr.name), []).append(rr)
            # Follow the chain as far as this answer carries it.
            moved = False
            while True:
                here = by_name.get(current, [])
                records = [rr.payload for rr in here if rr.type == kind]
                if records:
                    return records
                cnames = [rr.payload for rr in here if rr.type == dns.CNAME]
                if not cnames:
                    break
                hops += 1
                if hops > MAX_CNAME_CHAIN:
                    raise TemporaryError(
                        DNS_FAILURE, f"{name}: CNAME chain too long (or a loop)"
                    )
                current = _name(cnames[0].name)
                moved = True
            if not moved:
                return []  # NODATA
            # The chain leaves the answer: ask again where it points.


def _settled(
    coro: Coroutine[Any, Any, T],
) -> Deferred[tuple[T | None, Exception | None]]:
    """Run C{coro}; fire with (result, None) or (None, exception), never fail."""

    async def run() -> tuple[T | None, Exception | None]:
        try:
            return await coro, None
        except defer.CancelledError:
            raise
        except Exception as e:
            return None, e

    return Deferred.fromCoroutine(run())


def _address_text(record: Any) -> str:
    """The address of an A or AAAA record as text."""
    if isinstance(record, dns.Record_AAAA):
        return str(ipaddress.IPv6Address(record.address))
    return str(record.dottedQuad())


def _describe(e: BaseException) -> str:
    if isinstance(e, dns_error.DNSQueryTimeoutError | defer.TimeoutError):
        return "timeout"
    if isinstance(e, dns_error.DNSServerError):
        return "SERVFAIL"
    if isinstance(e, dns_error.DNSQueryRefusedError):
        return "REFUSED"
    if isinstance(e, TemporaryError):
        return e.reason
    return type(e).__name__


def _literal(domain: str) -> str | None:
    """The address inside an address literal, or None for a domain."""
    if not domain.startswith("["):
        return None
    try:
        text = normalize_domain(domain)
    except AddressError as e:
        raise PermanentError(NO_SUCH_DOMAIN, str(e)) from None
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    return str(ipaddress.ip_address(inner))


def _normalize(domain: str) -> str:
    try:
        return normalize_domain(domain.rstrip("."))
    except AddressError as e:
        raise PermanentError(NO_SUCH_DOMAIN, f"{domain!r}: {e}") from None


def parse_nameserver(text: str) -> tuple[str, int]:
    """Parse ``host:port``, ``host`` (port 53) or ``[v6addr]:port``.

    @raise ValueError: when the text is not an IP address with an optional
        port.
    """
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {text!r}")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, port


def make_resolver(settings: Any, reactor: Any) -> Resolver:
    """Build the real resolver from C{[dns]} settings.

    @param settings: a L{twistedmail.config.DNSSettings} (C{nameservers}: a
        list of ``host:port``, empty for the system's C{/etc/resolv.conf};
        C{timeout}: the per-query tries).
    @param reactor: provides IReactorTime, IReactorUDP and IReactorTCP.
    @return: an C{IResolver} to give to L{MXResolver}.
    """
    servers = [parse_nameserver(s) for s in settings.nameservers]
    if not servers:
        # The system's resolv.conf, read once: twisted.names' own re-reading
        # keeps a timer that nothing can stop, so two services in one process
        # (or a stopped one) would leave it behind.  A change needs a restart.
        servers = system_nameservers()
    return Resolver(servers=servers, timeout=tuple(settings.timeout), reactor=reactor)


def system_nameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The ``nameserver`` lines of a resolv.conf, as (host, 53) pairs.

    @return: the servers in file order; C{[("127.0.0.1", 53)]} when the file
        is missing or names none (what the C library does too).
    """
    servers: list[tuple[str, int]] = []
    try:
        with open(path) as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    servers.append((words[1], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]
