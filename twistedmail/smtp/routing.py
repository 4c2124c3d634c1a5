# -*- test-case-name: tests.test_mx -*-
"""Routing: where to send mail for a domain, and how (the relay step).

The queue runner asks L{Router.route} for a destination domain and gets a
L{Route}: the hosts to try in order, each with its address list, port and
STARTTLS policy, plus the AUTH credentials for a smarthost.  The rules, from
the C{[relay]} settings:

  - A smarthost (``host:port``, ``[address]:port``) takes all mail, or only
    mail for C{smarthost_domains} (and their subdomains); it is looked up
    by address, never by MX, with the C{smarthost_tls} policy and the
    credentials.
  - Otherwise the domain's MX hosts (L{twistedmail.smtp.mx.MXResolver}) on
    C{port}, with the domain's C{tls_policy} entry or the default C{tls}.
  - A local domain never leaves the server (550 5.4.6), and MX hosts that
    are this server itself are dropped with every worse one (RFC 5321
    §5.1); nothing left means a loop (550 5.4.6).

L{deliver_to_route} walks a route: the next address and the next host on a
L{HostFailure}, the first session's L{DeliveryResult} otherwise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from twistedmail.address import AddressError, normalize_domain
from twistedmail.replies import PermanentError, Reply
from twistedmail.smtp._client import (
    ClientOptions,
    Credentials,
    DeliveryResult,
    HostFailure,
    OutboundMessage,
)
from twistedmail.smtp.mx import MXHost, MXResolver

__all__ = [
    "ROUTING_LOOP",
    "Route",
    "RouteHost",
    "Router",
    "deliver_to_route",
    "make_router",
    "parse_host_port",
]

log = Logger()

ROUTING_LOOP = Reply(550, "5.4.6", "Mail for this domain loops back to this server")


@dataclass(frozen=True)
class RouteHost:
    """One server to try.

    @ivar name: its host name (checked against its certificate under
        "verify"), or an address.
    @ivar addresses: IP addresses to try in order.
    @ivar tls: "opportunistic", "required", "verify" or "implicit".
    """

    name: str
    addresses: tuple[str, ...]
    port: int
    tls: str
    preference: int = 0


@dataclass(frozen=True)
class Route:
    """Where mail for one domain goes.

    @ivar hosts: best first.
    @ivar credentials: for AUTH (a smarthost), or None.
    @ivar smarthost: the route is the configured relay, not MX hosts.
    """

    domain: str
    hosts: tuple[RouteHost, ...]
    credentials: Credentials | None = None
    smarthost: bool = False


class Router:
    """Combines MX lookups with the smarthost and TLS policy settings.

    @param settings: a L{twistedmail.config.RelaySettings}.
    @param mx: looks up MX hosts and smarthost addresses.
    @param helo_name: our name in EHLO (also "this server" for loops).
    @param password: the smarthost password (already read from its file).
    @param is_local: tells whether a domain is ours (the directory's
        C{is_local_domain}); None: nothing is local.
    @param own_names: more host names that are this server.
    """

    def __init__(
        self,
        settings: Any,
        mx: MXResolver,
        *,
        helo_name: str,
        password: str = "",
        is_local: Callable[[str], Deferred[bool]] | None = None,
        own_names: Iterable[str] = (),
        trust_root: Any = None,
    ) -> None:
        self.settings = settings
        self.mx = mx
        self.helo_name = helo_name
        self.trust_root = trust_root
        self._is_local = is_local
        self._own = {n.lower().rstrip(".") for n in (helo_name, *own_names) if n}
        self._smarthost = (
            parse_host_port(settings.smarthost, 25) if settings.smarthost else None
        )
        self._smarthost_domains = tuple(
            normalize_domain(d) for d in settings.smarthost_domains
        )
        self._credentials = (
            Credentials(settings.smarthost_username, password)
            if settings.smarthost_username
            else None
        )

    def route(self, domain: str) -> Deferred[Route]:
        """Where mail for C{domain} goes.

        @return: a Deferred firing with a L{Route}, or failing with
            L{PermanentError} (no such domain, null MX, local domain, loop)
            or L{TemporaryError} (DNS trouble).
        """
        return Deferred.fromCoroutine(self._route(domain))

    async def _route(self, domain: str) -> Route:
        name = domain.rstrip(".").lower()
        if not name.startswith("["):
            name = normalize_domain(name)
        if self._is_local is not None and await self._is_local(name):
            raise PermanentError(ROUTING_LOOP, f"{name} is a local domain")
        if self._smarthost is not None and self._uses_smarthost(name):
            host, port = self._smarthost
            addresses = await self.mx.resolve_host(_bracketed(host))
            relay = RouteHost(host, addresses, port, self.settings.smarthost_tls)
            return Route(name, (relay,), self._credentials, smarthost=True)
        hosts = self._not_self(await self.mx.lookup(name), name)
        policy = self.settings.tls_policy.get(name, self.settings.tls)
        return Route(
            name,
            tuple(
                RouteHost(h.name, h.addresses, self.settings.port, policy, h.preference)
                for h in hosts
            ),
        )

    def next_hop(self, domain: str) -> str | None:
        """The smarthost (``host:port``) mail for C{domain} goes through, or
        None when it goes to the domain's own MX hosts.  Domains with the
        same next hop can share connections."""
        if self._smarthost is None:
            return None
        name = domain.rstrip(".").lower()
        if not name.startswith("["):
            try:
                name = normalize_domain(name)
            except AddressError:
                return None
        if not self._uses_smarthost(name):
            return None
        host, port = self._smarthost
        return f"[{host}]:{port}"

    def _uses_smarthost(self, domain: str) -> bool:
        if not self._smarthost_domains:
            return True
        return any(
            domain == d or domain.endswith("." + d) for d in self._smarthost_domains
        )

    def _not_self(self, hosts: list[MXHost], domain: str) -> list[MXHost]:
        """Drop this server and every worse MX host (RFC 5321 §5.1)."""
        mine = [h.preference for h in hosts if h.name in self._own]
        if not mine:
            return hosts
        kept = [h for h in hosts if h.preference < min(mine)]
        if not kept:
            raise PermanentError(ROUTING_LOOP, f"{domain}: best MX is this server")
        return kept

    def client_options(self, route: Route, host: RouteHost) -> ClientOptions:
        """The ESMTP client options for one host of a route."""
        return ClientOptions(
            helo_name=self.helo_name,
            tls=host.tls,
            credentials=route.credentials,
            allow_plaintext_auth=self.settings.allow_plaintext_auth,
            chunking=self.settings.chunking,
        )


def _bracketed(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


def make_router(
    settings: Any,
    mx: MXResolver,
    *,
    is_local: Callable[[str], Deferred[bool]] | None = None,
) -> Router:
    """A L{Router} from the whole L{twistedmail.config.Settings}.

    Reads C{smarthost_password_file} (its first line) and C{ca_file} now,
    at start-up.
    """
    relay = settings.relay
    password = relay.smarthost_password
    if relay.smarthost_password_file:
        with open(relay.smarthost_password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    trust_root = None
    if relay.ca_file:
        from twistedmail.smtp.client import load_trust_root

        trust_root = load_trust_root(relay.ca_file)
    return Router(
        relay,
        mx,
        helo_name=relay.helo_name or settings.server.hostname,
        password=password,
        is_local=is_local,
        own_names=(settings.server.hostname,),
        trust_root=trust_root,
    )


async def deliver_to_route(
    reactor: Any, router: Router, route: Route, message: OutboundMessage
) -> DeliveryResult:
    """Send C{message} along C{route}: each host and address in turn until
    one holds a session (RFC 5321 §5.1: a connection failure, a 4xx
    greeting or a TLS failure moves on to the next).

    @return: the L{DeliveryResult} of the first session.
    @raise HostFailure: when no host could be reached; the reason lists
        every host's failure.
    """
    from twistedmail.smtp.client import SMTPClientConnection, Timeouts, connect

    timeouts = Timeouts.from_settings(router.settings)
    failures: list[str] = []
    last: HostFailure | None = None
    for host in route.hosts:
        for address in host.addresses:
            try:
                conn: SMTPClientConnection = await connect(
                    reactor,
                    host.name,
                    address,
                    host.port,
                    router.client_options(route, host),
                    timeouts=timeouts,
                    trust_root=router.trust_root,
                )
            except HostFailure as e:
                log.info(
                    "{host} [{address}]: {reason}",
                    host=host.name,
                    address=address,
                    reason=e.reason,
                )
                failures.append(f"{host.name}[{address}]: {e.reason}")
                last = e
                continue
            try:
                return await conn.send(
                    message.sender,
                    message.recipients,
                    message.data,
                    ret=message.ret,
                    envid=message.envid,
                )
            finally:
                await conn.quit()
    reply = last.reply if last is not None else Reply(451, "4.4.4", "No host to try")
    raise HostFailure(reply, "; ".join(failures) or f"no host for {route.domain}")


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Parse ``host``, ``host:port``, ``[literal]:port`` or ``[v6]:port``.

    Brackets around a name or address mean the same as in Postfix: use it
    as it is, never look up MX records (a relay is always that).

    @return: (host name or address without brackets, port).
    @raise ValueError: for an empty host, a bad name or a bad port.
    """
    host, port_text = text, ""
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"unbalanced brackets in {text!r}")
        host, port_text = inner, rest[1:]
        if host[:5].lower() == "ipv6:":
            host = host[5:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    port = default_port
    if port_text or text.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {text!r}")
        port = int(port_text)
    if not host:
        raise ValueError(f"no host in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = normalize_domain(host)
        except AddressError as e:
            raise ValueError(f"bad host {host!r}: {e}") from None
    return host, port
