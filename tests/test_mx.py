"""Tests for L{twistedmail.smtp.mx} and L{twistedmail.smtp.routing}."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twistedmail.config import DNSSettings, RelaySettings, ServerSettings, Settings
from twistedmail.replies import PermanentError, TemporaryError
from twistedmail.smtp._client import (
    Credentials,
    HostFailure,
    OutboundMessage,
    OutboundRecipient,
)
from twistedmail.smtp.mx import (
    MXHost,
    MXResolver,
    make_resolver,
    parse_nameserver,
)
from twistedmail.smtp.routing import (
    ROUTING_LOOP,
    Route,
    RouteHost,
    Router,
    deliver_to_route,
    make_router,
    parse_host_port,
)
from twistedmail.testing import memory_resolver, start_test_dns

A = dns.Record_A
AAAA = dns.Record_AAAA
MX = dns.Record_MX
CNAME = dns.Record_CNAME

#: A small zone used by most tests, through a fake resolver and over UDP.
ZONE: dict[str, list[Any]] = {
    "b.test": [MX(20, b"mx2.b.test"), MX(10, b"mx1.b.test"), MX(10, b"mx1b.b.test")],
    "mx1.b.test": [A("127.0.0.2"), AAAA("::2")],
    "mx1b.b.test": [A("127.0.0.3")],
    "mx2.b.test": [A("127.0.0.4")],
    "implicit.test": [A("192.0.2.7"), AAAA("2001:db8::7")],
    "null.test": [MX(0, b".")],
    "alias.test": [CNAME(b"b.test")],
    "cname-mx.test": [MX(5, b"www.cname-mx.test")],
    "www.cname-mx.test": [CNAME(b"real.cname-mx.test")],
    "real.cname-mx.test": [A("198.51.100.1")],
    "noaddr.test": [MX(10, b"ghost.noaddr.test")],
    "txtonly.test": [dns.Record_TXT(b"hello")],
    "loop1.test": [CNAME(b"loop2.test")],
    "loop2.test": [CNAME(b"loop1.test")],
    "halfbroken.test": [MX(10, b"dead.test"), MX(20, b"mx2.b.test")],
}


def reverse(items: list[Any]) -> None:
    """A deterministic 'shuffle' for tests: reverse the group."""
    items.reverse()


class Lookups:
    """Cases run against any resolver.

    Each C{case_*} generator yields Deferreds through C{result_of} and C{failure_of};
    every subclass gets a C{test_*} method per case, driven by its C{drive}.
    """

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for name, func in list(Lookups.__dict__.items()):
            if name.startswith("case_"):
                setattr(cls, "test_" + name[5:], cls.drive(func))

    @staticmethod
    def drive(func: Any) -> Any:
        raise NotImplementedError

    def resolver(self, **kw: Any) -> MXResolver:
        raise NotImplementedError

    def result_of(self, d: Deferred[Any]) -> Any:
        raise NotImplementedError

    def failure_of(self, d: Deferred[Any], kind: type[Exception]) -> Any:
        raise NotImplementedError

    def case_sorted_by_preference(self) -> None:
        """MX records come back best preference first, AAAA before A."""
        hosts = yield self.result_of(
            self.resolver(shuffle=lambda x: None).lookup("b.test")
        )
        self.assertEqual(
            hosts,
            [
                MXHost("mx1.b.test", 10, ("::2", "127.0.0.2")),
                MXHost("mx1b.b.test", 10, ("127.0.0.3",)),
                MXHost("mx2.b.test", 20, ("127.0.0.4",)),
            ],
        )

    def case_ties_shuffled(self) -> None:
        """Only equal preferences go through the shuffle."""
        seen: list[list[Any]] = []

        def shuffle(items: list[Any]) -> None:
            seen.append(list(items))
            items.reverse()

        hosts = yield self.result_of(self.resolver(shuffle=shuffle).lookup("b.test"))
        self.assertEqual(
            [h.name for h in hosts], ["mx1b.b.test", "mx1.b.test", "mx2.b.test"]
        )
        self.assertEqual(seen, [[(10, "mx1.b.test"), (10, "mx1b.b.test")]])

    def case_implicit_mx(self) -> None:
        """No MX record: the domain's own addresses, preference 0."""
        hosts = yield self.result_of(self.resolver().lookup("Implicit.TEST."))
        self.assertEqual(
            hosts, [MXHost("implicit.test", 0, ("2001:db8::7", "192.0.2.7"))]
        )

    def case_null_mx(self) -> None:
        """A null MX bounces at once with 556 5.1.10 (RFC 7505)."""
        e = yield self.failure_of(self.resolver().lookup("null.test"), PermanentError)
        self.assertEqual((e.reply.code, e.reply.status), (556, "5.1.10"))

    def case_nxdomain(self) -> None:
        """A domain that does not exist is permanent: 550 5.1.2."""
        e = yield self.failure_of(
            self.resolver().lookup("nowhere.test"), PermanentError
        )
        self.assertEqual((e.reply.code, e.reply.status), (550, "5.1.2"))

    def case_no_mx_no_address(self) -> None:
        """A domain with neither MX nor address records has no mail server."""
        e = yield self.failure_of(
            self.resolver().lookup("txtonly.test"), PermanentError
        )
        self.assertEqual(e.reply.status, "5.1.2")

    def case_cname_domain(self) -> None:
        """A CNAME at the domain is followed to the target's MX records."""
        hosts = yield self.result_of(
            self.resolver(shuffle=reverse).lookup("alias.test")
        )
        self.assertEqual(
            [h.name for h in hosts], ["mx1b.b.test", "mx1.b.test", "mx2.b.test"]
        )

    def case_cname_mx_host(self) -> None:
        """An MX host that is a CNAME resolves through it."""
        hosts = yield self.result_of(self.resolver().lookup("cname-mx.test"))
        self.assertEqual(hosts, [MXHost("www.cname-mx.test", 5, ("198.51.100.1",))])

    def case_cname_loop(self) -> None:
        """A CNAME loop is a temporary failure, not a hang."""
        e = yield self.failure_of(self.resolver().lookup("loop1.test"), TemporaryError)
        self.assertEqual(e.reply.status, "4.4.3")

    def case_mx_host_without_address(self) -> None:
        """MX hosts with no address: temporary, the DNS may be fixed."""
        e = yield self.failure_of(self.resolver().lookup("noaddr.test"), TemporaryError)
        self.assertIn("ghost.noaddr.test", e.reason)

    def case_mx_host_without_address_skipped(self) -> None:
        """An MX host with no address is left out when others remain."""
        hosts = yield self.result_of(self.resolver().lookup("halfbroken.test"))
        self.assertEqual(hosts, [MXHost("mx2.b.test", 20, ("127.0.0.4",))])

    def case_ipv4_only(self) -> None:
        """With ipv6=False no AAAA record is asked for."""
        hosts = yield self.result_of(self.resolver(ipv6=False).lookup("implicit.test"))
        self.assertEqual(hosts[0].addresses, ("192.0.2.7",))

    def case_literal(self) -> None:
        """Address literals skip DNS."""
        r = self.resolver()
        hosts = yield self.result_of(r.lookup("[192.0.2.1]"))
        self.assertEqual(hosts, [MXHost("[192.0.2.1]", 0, ("192.0.2.1",))])
        hosts = yield self.result_of(r.lookup("[IPv6:2001:DB8::1]"))
        self.assertEqual(hosts[0].addresses, ("2001:db8::1",))

    def case_resolve_host(self) -> None:
        """resolve_host gives a host's addresses without an MX lookup."""
        addresses = yield self.result_of(self.resolver().resolve_host("mx1.b.test"))
        self.assertEqual(addresses, ("::2", "127.0.0.2"))
        e = yield self.failure_of(
            self.resolver().resolve_host("b.test"), PermanentError
        )
        self.assertEqual(e.reply.status, "5.1.2")


class FakeResolverTests(Lookups, SynchronousTestCase):
    """MX lookups through an in-memory resolver (everything else NXDOMAIN)."""

    def setUp(self) -> None:
        self.clock = Clock()

    def resolver(self, **kw: Any) -> MXResolver:
        fake = memory_resolver(
            ZONE, servfail=["broken.test"], unanswered=["slow.test", "slow2.test"]
        )
        return MXResolver(fake, self.clock, **kw)

    def result_of(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def failure_of(self, d: Deferred[Any], kind: type[Exception]) -> Any:
        return self.failureResultOf(d, kind).value

    @staticmethod
    def drive(func: Any) -> Any:
        """Run a case synchronously: each yielded value is sent straight back."""

        def test(self: Any) -> None:
            gen = func(self)
            value = None
            try:
                while True:
                    value = gen.send(value)
            except StopIteration:
                pass

        test.__doc__ = func.__doc__
        return test

    def test_servfail_temporary(self) -> None:
        """SERVFAIL is a temporary failure: 451 4.4.3."""
        e = self.failure_of(self.resolver().lookup("broken.test"), TemporaryError)
        self.assertEqual((e.reply.code, e.reply.status), (451, "4.4.3"))
        self.assertIn("SERVFAIL", e.reason)

    def test_deadline(self) -> None:
        """A resolver that never answers: temporary failure at the deadline."""
        d = self.resolver(deadline=30).lookup("slow.test")
        self.assertNoResult(d)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        e = self.failure_of(d, TemporaryError)
        self.assertEqual(e.reply.status, "4.4.3")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resolver_timeout_error(self) -> None:
        """The resolver's own timeout error is temporary too."""
        from twisted.names.error import DNSQueryTimeoutError

        class TimingOut:
            def lookupMailExchange(self, name: str, timeout: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                d.errback(DNSQueryTimeoutError(name))
                return d

        e = self.failure_of(
            MXResolver(TimingOut(), self.clock).lookup("x.test"), TemporaryError
        )
        self.assertEqual(e.reply.status, "4.4.3")
        self.assertIn("timeout", e.reason)

    def test_mx_host_servfail(self) -> None:
        """An MX host whose address lookup fails temporarily is skipped when
        others work, and the lookup is temporary when none does."""
        fake = memory_resolver(
            {
                "d.test": [MX(10, b"broken.test"), MX(20, b"ok.test")],
                "e.test": [MX(10, b"broken.test")],
                "ok.test": [A("192.0.2.9")],
            },
            servfail=["broken.test"],
        )
        r = MXResolver(fake, self.clock)
        self.assertEqual(
            self.successResultOf(r.lookup("d.test")),
            [MXHost("ok.test", 20, ("192.0.2.9",))],
        )
        e = self.failure_of(r.lookup("e.test"), TemporaryError)
        self.assertIn("broken.test", e.reason)
        self.assertIn("SERVFAIL", e.reason)

    def test_bad_domain(self) -> None:
        """A domain that is not a domain is permanent, without a query."""
        e = self.failure_of(self.resolver().lookup("bad_domain!.test"), PermanentError)
        self.assertEqual(e.reply.status, "5.1.2")

    def test_utf8_domain(self) -> None:
        """U-labels are looked up as A-labels."""
        fake = memory_resolver({"xn--bcher-kva.test": [A("192.0.2.3")]})
        hosts = self.successResultOf(MXResolver(fake, self.clock).lookup("bücher.test"))
        self.assertEqual(hosts, [MXHost("xn--bcher-kva.test", 0, ("192.0.2.3",))])


class LoopbackDNSTests(Lookups, TestCase):
    """The same lookups through twisted.names' client and a real server on
    loopback (start_test_dns), so the wire format and rcodes are exercised."""

    def setUp(self) -> None:
        port, stop = start_test_dns(
            global_reactor, ZONE, servfail=["broken.test"], unanswered=["slow.test"]
        )
        self.addCleanup(stop)
        self.port = port

    def resolver(self, **kw: Any) -> MXResolver:
        settings = DNSSettings(nameservers=(f"127.0.0.1:{self.port}",), timeout=(2,))
        return MXResolver(
            make_resolver(settings, global_reactor),
            global_reactor,
            timeout=settings.timeout,
            **kw,
        )

    def result_of(self, d: Deferred[Any]) -> Deferred[Any]:
        return d

    def failure_of(self, d: Deferred[Any], kind: type[Exception]) -> Deferred[Any]:
        return self.assertFailure(d, kind)

    @staticmethod
    def drive(func: Any) -> Any:
        """Run a case with the reactor: each yielded Deferred is waited for."""
        return inlineCallbacks(func)

    async def test_servfail_temporary(self) -> None:
        """SERVFAIL from the server is temporary (4.4.3)."""
        d = self.resolver().lookup("broken.test")
        e = await self.assertFailure(d, TemporaryError)
        self.assertEqual(e.reply.status, "4.4.3")

    async def test_timeout_temporary(self) -> None:
        """A server that never answers: the query times out, temporary."""
        settings = DNSSettings(nameservers=(f"127.0.0.1:{self.port}",), timeout=(0.2,))
        r = MXResolver(
            make_resolver(settings, global_reactor), global_reactor, timeout=(0.2,)
        )
        e = await self.assertFailure(r.lookup("slow.test"), TemporaryError)
        self.assertEqual(e.reply.status, "4.4.3")
        self.assertIn("timeout", e.reason)


class NameserverTests(SynchronousTestCase):
    """Parsing C{[dns] nameservers} entries."""

    def test_forms(self) -> None:
        """ip, ip:port and [v6]:port are accepted."""
        self.assertEqual(parse_nameserver("192.0.2.1"), ("192.0.2.1", 53))
        self.assertEqual(parse_nameserver("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parse_nameserver("[::1]:5353"), ("::1", 5353))
        self.assertEqual(parse_nameserver("::1"), ("::1", 53))

    def test_bad(self) -> None:
        """Names, bad ports and stray brackets are refused."""
        for text in ["ns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x"]:
            with self.assertRaises(ValueError, msg=text):
                parse_nameserver(text)


def relay_settings(**kw: Any) -> RelaySettings:
    """[relay] settings with some changes."""
    return RelaySettings(**kw)


class RouterTests(SynchronousTestCase):
    """L{Router}: MX hosts, smarthost rules, TLS policies, loops."""

    def router(self, **kw: Any) -> Router:
        """A router over the test zone, with smarthost.test resolvable."""
        zone = dict(ZONE)
        zone["smarthost.test"] = [A("192.0.2.25")]
        zone["self.test"] = [
            MX(10, b"me.a.test"),
            MX(5, b"mx2.b.test"),
            MX(20, b"mx1b.b.test"),
        ]
        zone["onlyself.test"] = [MX(10, b"me.a.test")]
        zone["me.a.test"] = [A("192.0.2.1")]
        local = kw.pop("local", ())
        return Router(
            relay_settings(**kw),
            MXResolver(memory_resolver(zone), Clock(), shuffle=lambda x: None),
            helo_name="me.a.test",
            password="pw",
            is_local=lambda d: succeed(d in local),
        )

    def test_mx_route(self) -> None:
        """MX hosts with the default policy and port, or the domain's own."""
        r = self.successResultOf(self.router(port=2525).route("b.test"))
        self.assertFalse(r.smarthost)
        self.assertIsNone(r.credentials)
        self.assertEqual(
            [(h.name, h.port, h.tls) for h in r.hosts],
            [
                ("mx1.b.test", 2525, "opportunistic"),
                ("mx1b.b.test", 2525, "opportunistic"),
                ("mx2.b.test", 2525, "opportunistic"),
            ],
        )
        router = self.router(tls_policy={"b.test": "verify"}, tls="required")
        r = self.successResultOf(router.route("B.test"))
        self.assertEqual({h.tls for h in r.hosts}, {"verify"})
        r = self.successResultOf(router.route("implicit.test"))
        self.assertEqual(r.hosts[0].tls, "required")

    def test_smarthost_everything(self) -> None:
        """With a smarthost and no domain list, every domain goes there, by
        address (no MX lookup), with the credentials."""
        router = self.router(
            smarthost="smarthost.test:587",
            smarthost_username="me",
            smarthost_tls="implicit",
        )
        r = self.successResultOf(router.route("nowhere.test"))
        self.assertTrue(r.smarthost)
        self.assertEqual(
            r.hosts, (RouteHost("smarthost.test", ("192.0.2.25",), 587, "implicit"),)
        )
        self.assertEqual(r.credentials, Credentials("me", "pw"))
        options = router.client_options(r, r.hosts[0])
        self.assertEqual(
            (options.tls, options.credentials), ("implicit", r.credentials)
        )

    def test_smarthost_literal(self) -> None:
        """A bracketed address needs no DNS at all."""
        r = self.successResultOf(
            self.router(smarthost="[192.0.2.9]:25").route("x.test")
        )
        self.assertEqual(r.hosts[0].addresses, ("192.0.2.9",))

    def test_smarthost_domains(self) -> None:
        """Only the listed domains and their subdomains use the smarthost."""
        router = self.router(
            smarthost="smarthost.test", smarthost_domains=("corp.test",)
        )
        for domain, via in [
            ("corp.test", True),
            ("eu.corp.test", True),
            ("notcorp.test", None),
            ("b.test", False),
        ]:
            d = router.route(domain)
            if via is None:
                self.failureResultOf(d, PermanentError)  # NXDOMAIN by MX
                continue
            self.assertEqual(self.successResultOf(d).smarthost, via, domain)

    def test_local_domain(self) -> None:
        """Mail for a local domain never leaves: 550 5.4.6."""
        e = self.failureResultOf(
            self.router(local=("b.test",)).route("b.test"), PermanentError
        ).value
        self.assertEqual(e.reply.status, "5.4.6")

    def test_mx_is_self(self) -> None:
        """This server as an MX: it and worse hosts are dropped; only itself
        is a loop (RFC 5321 §5.1)."""
        router = self.router()
        r = self.successResultOf(router.route("self.test"))
        self.assertEqual([h.name for h in r.hosts], ["mx2.b.test"])
        e = self.failureResultOf(router.route("onlyself.test"), PermanentError).value
        self.assertEqual(e.reply, ROUTING_LOOP)

    def test_make_router(self) -> None:
        """make_router reads the password file and names us after the server."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\nignored\n")
        settings = Settings().with_changes(
            server=ServerSettings(hostname="mail.a.test"),
            relay=relay_settings(
                smarthost="[192.0.2.9]",
                smarthost_username="u",
                smarthost_password_file=path,
            ),
        )
        router = make_router(settings, MXResolver(memory_resolver({}), Clock()))
        self.assertEqual(router.helo_name, "mail.a.test")
        r = self.successResultOf(router.route("x.test"))
        self.assertEqual(r.credentials, Credentials("u", "from-file"))

    def test_deliver_to_route(self) -> None:
        """A refused first host, then the next host takes the message."""
        reactor = MemoryReactorClock()
        route = Route(
            "b.test",
            (
                RouteHost("mx1.b.test", ("192.0.2.1", "192.0.2.2"), 25, "none"),
                RouteHost("mx2.b.test", ("192.0.2.3",), 25, "none"),
            ),
        )
        message = OutboundMessage(
            "a@a.test", (OutboundRecipient("b@b.test"),), b"Subject: x\r\n\r\nhi\r\n"
        )
        d = Deferred.fromCoroutine(
            deliver_to_route(reactor, self.router(), route, message)
        )
        for i in range(2):
            reactor.tcpClients[i][2].clientConnectionFailed(
                None, Failure(ConnectionRefusedError())
            )
        host, _, factory, _, _ = reactor.tcpClients[2]
        self.assertEqual(host, "192.0.2.3")
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for reply in [b"220 mx2\r\n", b"250 mx2\r\n", b"250 ok\r\n", b"250 ok\r\n"]:
            protocol.dataReceived(reply)
        protocol.dataReceived(b"354 go\r\n")
        while transport.producer is not None:
            transport.producer.resumeProducing()
        protocol.dataReceived(b"250 ok\r\n")
        protocol.dataReceived(b"221 bye\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        result = self.successResultOf(d)
        self.assertEqual((result.host, result.address), ("mx2.b.test", "192.0.2.3"))
        self.assertEqual(len(result.delivered), 1)

    def test_deliver_to_route_all_down(self) -> None:
        """Every host down: one HostFailure naming each."""
        reactor = MemoryReactorClock()
        route = Route(
            "b.test",
            (
                RouteHost("mx1.b.test", ("192.0.2.1",), 25, "none"),
                RouteHost("mx2.b.test", ("192.0.2.3",), 25, "none"),
            ),
        )
        message = OutboundMessage("", (OutboundRecipient("b@b.test"),), b"x\r\n")
        d = Deferred.fromCoroutine(
            deliver_to_route(reactor, self.router(), route, message)
        )
        for i in range(2):
            reactor.tcpClients[i][2].clientConnectionFailed(
                None, Failure(ConnectionRefusedError())
            )
        e = self.failureResultOf(d, HostFailure).value
        self.assertIn("mx1.b.test[192.0.2.1]", e.reason)
        self.assertIn("mx2.b.test[192.0.2.3]", e.reason)


class ParseHostPortTests(SynchronousTestCase):
    """The smarthost setting's syntax."""

    def test_forms(self) -> None:
        """host, host:port, [address]:port, [IPv6:...]:port."""
        self.assertEqual(parse_host_port("relay.test", 25), ("relay.test", 25))
        self.assertEqual(parse_host_port("Relay.test:587", 25), ("relay.test", 587))
        self.assertEqual(parse_host_port("[192.0.2.1]:465", 25), ("192.0.2.1", 465))
        self.assertEqual(parse_host_port("[IPv6:2001:db8::1]", 25), ("2001:db8::1", 25))

    def test_bad(self) -> None:
        """Bad ports, empty hosts and broken brackets are refused."""
        for text in ["relay:0", "relay:x", ":25", "[1.2.3.4", "bad_host!:25", "relay:"]:
            with self.assertRaises(ValueError, msg=text):
                parse_host_port(text, 25)


class SystemNameserverTests(SynchronousTestCase):
    """Reading resolv.conf once."""

    def test_parse(self) -> None:
        """nameserver lines in order; other lines ignored."""
        from twistedmail.smtp.mx import system_nameservers

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver ::1\n"
            )
        self.assertEqual(system_nameservers(path), [("192.0.2.53", 53), ("::1", 53)])

    def test_missing(self) -> None:
        """No file, or no nameserver in it, means the local resolver."""
        from twistedmail.smtp.mx import system_nameservers

        self.assertEqual(system_nameservers(self.mktemp()), [("127.0.0.1", 53)])
