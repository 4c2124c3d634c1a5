"""Tests for L{twistedmail.smtp.server} with StringTransport and Clock."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.smtp_fakes import FakeAgent, Mailbag, directory, expander_for, portal
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.config import AliasSettings, ServerSettings, Settings, SMTPSettings
from twistedmail.interfaces import IDeliveryAgent, IDirectory
from twistedmail.replies import PermanentError, Reply
from twistedmail.smtp.server import (
    SMTPServerFactory,
    SMTPServerProtocol,
    received_header,
)
from twistedmail.spool.store import Spool

HELLO = b"EHLO client.example\r\n"


def make_factory(
    role: str = "smtp",
    *,
    smtp: SMTPSettings | None = None,
    bag: Mailbag | None = None,
    clock: Clock | None = None,
    auth: bool = False,
    trusted: tuple[str, ...] = (),
    dir_: IDirectory | None = None,
    aliases: AliasSettings | None = None,
    agents: Callable[[], IDeliveryAgent] | None = None,
) -> SMTPServerFactory:
    """A factory over the fake directory, agent and portal."""
    d = directory()
    settings = Settings().with_changes(
        server=ServerSettings(hostname="mx.local.example"),
        smtp=smtp or SMTPSettings(),
        aliases=aliases or AliasSettings(),
    )
    clock = clock or Clock()
    return SMTPServerFactory(
        settings,
        clock,
        role=role,
        delivery_agent_factory=agents or (bag or Mailbag()).agent,
        expander=expander_for(d),
        directory=dir_ or d,
        portal=portal(d) if auth else None,
        throttle=LoginThrottle(clock) if auth else None,
        trusted_networks=trusted,
    )


class Client:
    """A connected protocol and its transport."""

    def __init__(self, factory: SMTPServerFactory, ip: str = "198.51.100.7") -> None:
        self.factory = factory
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        self.proto: SMTPServerProtocol = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        """Send bytes; return the replies written meanwhile."""
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value()

    def lines(self, data: bytes) -> list[str]:
        """Send bytes; return the final reply lines' code and status."""
        out = []
        for line in self.send(data).decode().split("\r\n")[:-1]:
            if line[3:4] == " ":
                words = line.split(" ")
                status = len(words) > 1 and words[1][:1] in "245" and "." in words[1]
                out.append(" ".join(words[:2]) if status else words[0])
        return out

    def close(self) -> None:
        """The peer goes away."""
        self.proto.connectionLost(None)


def plain(user: str, password: str) -> bytes:
    """An AUTH PLAIN initial response."""
    return base64.b64encode(f"\0{user}\0{password}".encode())


class MXTests(SynchronousTestCase):
    """The smtp (MX) role."""

    def test_greeting(self) -> None:
        """The greeting names our host."""
        c = Client(make_factory())
        self.assertEqual(c.transport.value(), b"220 mx.local.example ESMTP ready\r\n")

    def test_local_delivery(self) -> None:
        """A message for a local user is queued; the reply comes after commit,
        and the agent gets a Received: header and the text."""
        bag = Mailbag()
        clock = Clock()
        clock.advance(1700000000)
        c = Client(make_factory(bag=bag, clock=clock))
        c.send(HELLO)
        out = c.lines(
            b"MAIL FROM:<x@remote.example>\r\nRCPT TO:<Alice@LOCAL.example>\r\n"
            b"DATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"
        )
        self.assertEqual(out, ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"])
        self.assertIn(b"250 2.0.0 OK queued as Q1\r\n", c.transport.value())
        (msg,) = bag.delivered
        self.assertEqual(msg.envelope.sender, "x@remote.example")
        self.assertEqual(msg.envelope.client_address, "198.51.100.7")
        self.assertEqual(msg.envelope.received_at, 1700000000)
        self.assertEqual([r.address for r in msg.recipients], ["Alice@local.example"])
        self.assertEqual(
            msg.data,
            b"Received: from client.example ([198.51.100.7])\r\n"
            b"\tby mx.local.example (twistedmail) with ESMTP\r\n"
            b"\tid " + c.proto.session_id.encode() + b"\r\n"
            b"\tfor <Alice@local.example>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            b"Subject: hi\r\n\r\nhello\r\n",
        )

    def test_unknown_user(self) -> None:
        """An unknown local user is refused at RCPT with 550 5.1.1."""
        c = Client(make_factory())
        c.send(HELLO)
        out = c.lines(b"MAIL FROM:<>\r\nRCPT TO:<nobody@local.example>\r\n")
        self.assertEqual(out, ["250 2.1.0", "550 5.1.1"])

    def test_aliases_and_postmaster(self) -> None:
        """Aliases, subaddresses and postmaster@ are accepted."""
        c = Client(make_factory())
        c.send(HELLO + b"MAIL FROM:<>\r\n")
        out = c.lines(
            b"RCPT TO:<sales@local.example>\r\nRCPT TO:<bob+tag@local.example>\r\n"
            b"RCPT TO:<postmaster@local.example>\r\n"
        )
        self.assertEqual(out, ["250 2.1.5"] * 3)

    def test_commit_waits(self) -> None:
        """250 is sent only when commit() fires."""
        bag = Mailbag(commit_result="hold")
        c = Client(make_factory(bag=bag))
        c.send(HELLO)
        out = c.send(
            b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\nDATA\r\nx\r\n.\r\n"
        )
        self.assertNotIn(b"queued", out)
        c.transport.clear()
        bag.held[0].callback("ABC")
        self.assertEqual(c.transport.value(), b"250 2.0.0 OK queued as ABC\r\n")

    def test_commit_refused(self) -> None:
        """A MailError from commit() gives its reply; other errors 451 4.3.0."""
        bag = Mailbag(commit_result=PermanentError(Reply(552, "5.3.4", "Too big")))
        c = Client(make_factory(bag=bag))
        c.send(HELLO)
        out = c.lines(
            b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\nDATA\r\nx\r\n.\r\n"
        )
        self.assertEqual(out[-1], "552 5.3.4")
        bag.commit_result = RuntimeError("disk on fire")
        out_bytes = c.send(
            b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\nDATA\r\nx\r\n.\r\n"
        )
        self.assertIn(
            f"451 4.3.0 Internal error (session {c.proto.session_id})\r\n".encode(),
            out_bytes,
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(c.lines(b"NOOP\r\n"), ["250 2.0.0"])

    def test_directory_error(self) -> None:
        """A failing directory gives 451 4.3.0 at RCPT, logged."""

        class Broken:
            def is_local_domain(self, domain: str) -> Deferred[bool]:
                raise OSError("database gone")

        c = Client(make_factory(dir_=Broken()))  # type: ignore[arg-type]
        c.send(HELLO)
        out = c.lines(b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\nNOOP\r\n")
        self.assertEqual(out, ["250 2.1.0", "451 4.3.0", "250 2.0.0"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_abort(self) -> None:
        """A message cut off by RSET (BDAT), a bare LF or a lost connection is
        aborted, never committed."""
        bag = Mailbag()
        c = Client(make_factory(bag=bag))
        c.send(HELLO + b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\n")
        c.send(b"BDAT 3\r\nabcRSET\r\n")
        self.assertEqual(bag.aborted, 1)
        out = c.lines(
            b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\nDATA\r\n"
            b"a\n.\nMAIL FROM:<evil@x.example>\r\n.\r\n"
        )
        self.assertEqual(out[-1], "550 5.6.0")
        self.assertEqual(bag.aborted, 2)
        c.send(b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\nDATA\r\npartial\r\n")
        c.close()
        self.assertEqual(bag.aborted, 3)
        self.assertEqual(bag.delivered, [])

    def test_no_auth_on_mx(self) -> None:
        """The MX role does not offer AUTH unless mx_auth is set."""
        c = Client(
            make_factory(auth=True, smtp=SMTPSettings(allow_plaintext_auth=True))
        )
        self.assertNotIn(b"AUTH", c.send(HELLO))
        c = Client(
            make_factory(
                auth=True, smtp=SMTPSettings(allow_plaintext_auth=True, mx_auth=True)
            )
        )
        self.assertIn(b"AUTH PLAIN LOGIN", c.send(HELLO))


# (recipient path, expected reply) from an unauthenticated, untrusted peer.
RELAY_TRICKS = [
    (b"<victim@foreign.example>", "550 5.7.1"),
    (b"<victim@FOREIGN.Example>", "550 5.7.1"),
    (b"<VICTIM@foreign.EXAMPLE>", "550 5.7.1"),
    (b"<victim%foreign.example@local.example>", "550 5.1.1"),
    (b"<victim%foreign.example@LOCAL.EXAMPLE>", "550 5.1.1"),
    (b"<@local.example:victim@foreign.example>", "550 5.7.1"),
    (b"<@local.example,@mx.local.example:victim@foreign.example>", "550 5.7.1"),
    (b"<foreign.example!victim@local.example>", "550 5.1.1"),
    (b"<foreign.example!victim>", "501 5.1.3"),
    (b'<"victim@foreign.example"@local.example>', "550 5.1.1"),
    (b'<"victim@foreign.example">', "501 5.1.3"),
    (b"<victim@foreign.example@local.example>", "501 5.1.3"),
    (b"<victim@local.example@foreign.example>", "501 5.1.3"),
    (b"<victim@foreign.example.>", "501 5.1.3"),
    (b"<victim@local.example.>", "501 5.1.3"),
    (b"<victim@[192.0.2.1]>", "550 5.7.1"),
    (b"<victim@[127.0.0.1]>", "550 5.7.1"),
    (b"<victim@[IPv6:2001:db8::1]>", "550 5.7.1"),
    (b"<victim@foreign.example", "501 5.1.3"),
    (b"victim@foreign.example>", "501 5.1.3"),
    (b"victim@foreign.example", "501 5.1.3"),
    (b"<<victim@foreign.example>>", "501 5.1.3"),
    (b"<victim@[192.0.2.1>", "501 5.1.3"),
    (b"<victim@foreign.example> NOTIFY=NEVER", "550 5.7.1"),
    (b"<victim@xn--bcher-kva.example>", "550 5.7.1"),
]


class RelayTests(SynchronousTestCase):
    """Never an open relay."""

    def test_tricks_refused(self) -> None:
        """Each classic relay trick is refused from an untrusted peer, and no
        message is ever committed."""
        bag = Mailbag()
        for path, expected in RELAY_TRICKS:
            c = Client(make_factory(bag=bag))
            c.send(HELLO + b"MAIL FROM:<spammer@foreign.example>\r\n")
            out = c.lines(b"RCPT TO:" + path + b"\r\nDATA\r\nspam\r\n.\r\n")
            self.assertEqual(out[0], expected, path)
            self.assertEqual(out[1], "554 5.5.1", path)
        self.assertEqual(bag.delivered, [])

    def test_loopback_not_trusted(self) -> None:
        """Loopback is not trusted by default."""
        c = Client(make_factory(), ip="127.0.0.1")
        c.send(HELLO + b"MAIL FROM:<>\r\n")
        self.assertEqual(c.lines(b"RCPT TO:<v@foreign.example>\r\n"), ["550 5.7.1"])

    def test_trusted_network(self) -> None:
        """A trusted network relays."""
        factory = make_factory(trusted=("198.51.100.0/24",))
        c = Client(factory)
        c.send(HELLO + b"MAIL FROM:<>\r\n")
        self.assertEqual(c.lines(b"RCPT TO:<v@foreign.example>\r\n"), ["250 2.1.5"])
        c = Client(factory, ip="203.0.113.5")
        c.send(HELLO + b"MAIL FROM:<>\r\n")
        self.assertEqual(c.lines(b"RCPT TO:<v@foreign.example>\r\n"), ["550 5.7.1"])

    def test_authenticated_relays(self) -> None:
        """An authenticated MX client (mx_auth) relays."""
        c = Client(
            make_factory(
                auth=True, smtp=SMTPSettings(allow_plaintext_auth=True, mx_auth=True)
            )
        )
        c.send(HELLO)
        c.send(b"AUTH PLAIN " + plain("alice@local.example", "secret") + b"\r\n")
        c.send(b"MAIL FROM:<alice@local.example>\r\n")
        self.assertEqual(c.lines(b"RCPT TO:<v@foreign.example>\r\n"), ["250 2.1.5"])


class PostmasterTests(SynchronousTestCase):
    """The bare <Postmaster> is always accepted (RFC 5321 §4.5.1) and goes to
    a mailbox we can deliver to."""

    def recipients(self, factory: SMTPServerFactory, bag: Mailbag) -> list[str]:
        """Send a message to <Postmaster> (and alice); the agent's recipients."""
        c = Client(factory)
        out = c.lines(
            HELLO + b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n"
            b"RCPT TO:<alice@local.example>\r\nDATA\r\nhi\r\n.\r\n"
        )
        self.assertEqual(out[-4:], ["250 2.1.5", "250 2.1.5", "354", "250 2.0.0"])
        (msg,) = bag.delivered
        return [r.address for r in msg.recipients]

    def test_hostname_local(self) -> None:
        """Our hostname is a local domain: postmaster@hostname, which the
        expander resolves (configured postmaster or built-in mailbox)."""
        d = directory()
        d._domains.add("mx.local.example")
        bag = Mailbag()
        factory = make_factory(dir_=d, bag=bag)
        factory.expander = expander_for(d)
        self.assertEqual(
            self.recipients(factory, bag),
            ["postmaster@mx.local.example", "alice@local.example"],
        )

    def test_configured_postmaster(self) -> None:
        """Our hostname is not local: the configured [aliases] postmaster."""
        bag = Mailbag()
        factory = make_factory(
            bag=bag, aliases=AliasSettings(postmaster="bob@local.example")
        )
        self.assertEqual(
            self.recipients(factory, bag), ["bob@local.example", "alice@local.example"]
        )

    def test_first_local_domain(self) -> None:
        """Our hostname is not local and no postmaster is configured: the
        postmaster of the first local domain (its built-in mailbox)."""
        bag = Mailbag()
        self.assertEqual(
            self.recipients(make_factory(bag=bag), bag),
            ["postmaster@local.example", "alice@local.example"],
        )

    def test_received_for_clause(self) -> None:
        """The trace header names the address the message is delivered to."""
        bag = Mailbag()
        c = Client(make_factory(bag=bag))
        c.send(HELLO + b"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\nhi\r\n.\r\n")
        self.assertIn(b"\tfor <postmaster@local.example>;", bag.delivered[0].data)

    def test_explicit_address_untouched(self) -> None:
        """Only the bare form is rewritten: postmaster@ a local domain stays."""
        bag = Mailbag()
        c = Client(make_factory(bag=bag))
        c.send(
            HELLO + b"MAIL FROM:<>\r\nRCPT TO:<postmaster@local.example>\r\n"
            b"DATA\r\nhi\r\n.\r\n"
        )
        self.assertEqual(
            [r.address for r in bag.delivered[0].recipients],
            ["postmaster@local.example"],
        )

    def test_no_local_domain(self) -> None:
        """With no local domain and no configured postmaster there is no
        mailbox: 451 4.3.5, a configuration problem the operator can fix."""
        c = Client(make_factory(dir_=MemoryDirectory()))
        c.send(HELLO + b"MAIL FROM:<>\r\n")
        self.assertEqual(c.lines(b"RCPT TO:<Postmaster>\r\n"), ["451 4.3.5"])

    def test_lmtp(self) -> None:
        """LMTP accepts the bare <Postmaster> too (it never relays)."""
        bag = Mailbag()
        c = Client(make_factory("lmtp", bag=bag))
        out = c.lines(b"LHLO f\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n")
        self.assertEqual(out[-1], "250 2.1.5")


@implementer(IDeliveryAgent)
class _NumberedAgent(FakeAgent):
    """A fake agent that, like the spool's, knows its queue id from start()."""

    queue_id = "0123456789ABCDEF0123456"


class AgentHandOverTests(SynchronousTestCase):
    """What the agent is given."""

    def test_queue_id_in_received(self) -> None:
        """An agent with a queue id has it named in the Received: id clause."""
        bag = Mailbag()
        c = Client(make_factory(agents=lambda: _NumberedAgent(bag)))
        c.send(HELLO + b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\n")
        c.send(b"DATA\r\nhi\r\n.\r\n")
        self.assertIn(
            b"\tid 0123456789ABCDEF0123456\r\n\tfor <bob@local.example>;",
            bag.delivered[0].data,
        )

    def test_spool_entry_recipients_once(self) -> None:
        """Through the real spool each recipient is recorded once, with its
        DSN parameters, and the Received: header names the queue id."""
        clock = Clock()
        clock.advance(1700000000)
        spool = Spool(self.mktemp(), clock, fsync=lambda fd: None)
        c = Client(make_factory(clock=clock, agents=spool.agent))
        c.send(
            HELLO + b"MAIL FROM:<x@remote.example> RET=HDRS ENVID=e1\r\n"
            b"RCPT TO:<alice@local.example> NOTIFY=FAILURE,DELAY"
            b" ORCPT=rfc822;a@local.example\r\n"
            b"RCPT TO:<bob@local.example>\r\nDATA\r\nhi\r\n.\r\n"
        )
        clock.advance(0)
        self.assertIn(b"250 2.0.0 OK queued as ", c.transport.value())
        (queue_id,) = os.listdir(spool.queue_dir)
        entry = self.successResultOf(spool.load(queue_id))
        self.assertEqual(
            [(r.address, r.notify, r.orcpt) for r in entry.recipients],
            [
                ("alice@local.example", ("FAILURE", "DELAY"), "rfc822;a@local.example"),
                ("bob@local.example", (), None),
            ],
        )
        self.assertEqual((entry.envelope.ret, entry.envelope.envid), ("HDRS", "e1"))
        message = self.successResultOf(spool.read_message(queue_id))
        self.assertIn(b"\tid " + queue_id.encode() + b"; ", message)


class SubmissionTests(SynchronousTestCase):
    """The submission role: AUTH required, sender checked."""

    def client(self, **kw: bool) -> Client:
        """A submission client with plaintext AUTH allowed (no TLS here)."""
        return Client(
            make_factory(
                "submission",
                auth=True,
                smtp=SMTPSettings(allow_plaintext_auth=True, **kw),
            )
        )

    def test_auth_required(self) -> None:
        """MAIL before AUTH: 530 5.7.0."""
        c = self.client()
        c.send(HELLO)
        self.assertEqual(c.lines(b"MAIL FROM:<alice@local.example>\r\n"), ["530 5.7.0"])

    def test_tls_required_for_auth(self) -> None:
        """Without TLS and without allow_plaintext_auth: AUTH is 538, and AUTH
        is not advertised."""
        c = Client(make_factory("submission", auth=True))
        self.assertNotIn(b"AUTH", c.send(HELLO))
        self.assertEqual(c.lines(b"AUTH PLAIN =\r\n"), ["538 5.7.11"])

    def test_auth_plain_and_sender(self) -> None:
        """After AUTH PLAIN the user may send as self or an alias of self,
        and relay; other senders get 553 5.7.1."""
        c = self.client()
        c.send(HELLO)
        self.assertEqual(
            c.lines(b"AUTH PLAIN " + plain("alice@local.example", "secret") + b"\r\n"),
            ["235 2.7.0"],
        )
        for sender, expected in [
            (b"<bob@local.example>", "553 5.7.1"),
            (b"<>", "553 5.7.1"),
            (b"<alice@foreign.example>", "553 5.7.1"),
            (b"<team@local.example>", "250 2.1.0"),
            (b"<sales@local.example>", "250 2.1.0"),
            (b"<alice+x@local.example>", "250 2.1.0"),
            (b"<ALICE@local.example>", "250 2.1.0"),
        ]:
            self.assertEqual(
                c.lines(b"MAIL FROM:" + sender + b"\r\n"), [expected], sender
            )
            c.send(b"RSET\r\n")
        bag = Mailbag()
        c.factory.delivery_agent_factory = bag.agent
        out = c.lines(
            b"MAIL FROM:<alice@local.example>\r\nRCPT TO:<x@foreign.example>\r\n"
            b"RCPT TO:<nobody@local.example>\r\nDATA\r\nhi\r\n.\r\n"
        )
        self.assertEqual(
            out, ["250 2.1.0", "250 2.1.5", "550 5.1.1", "354", "250 2.0.0"]
        )
        env = bag.delivered[0].envelope
        self.assertEqual(
            (env.auth_user, env.protocol), ("alice@local.example", "ESMTPA")
        )
        self.assertIn(b"with ESMTPA", bag.delivered[0].data)

    def test_auth_failure_backoff(self) -> None:
        """A wrong password gets 535 5.7.8 after the back-off delay."""
        c = self.client()
        c.send(HELLO)
        out = c.send(b"AUTH PLAIN " + plain("alice@local.example", "wrong") + b"\r\n")
        self.assertEqual(out, b"")
        c.transport.clear()
        c.factory.reactor.advance(1.0)  # type: ignore[attr-defined]
        self.assertEqual(
            c.transport.value(), b"535 5.7.8 Authentication credentials invalid\r\n"
        )

    def test_auth_login(self) -> None:
        """AUTH LOGIN with its two challenges."""
        c = self.client()
        c.send(HELLO)
        self.assertEqual(c.send(b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        c.send(base64.b64encode(b"bob@local.example") + b"\r\n")
        out = c.lines(base64.b64encode(b"hunter2") + b"\r\n")
        self.assertEqual(out, ["235 2.7.0"])


class LMTPTests(SynchronousTestCase):
    """The lmtp role (RFC 2033)."""

    def test_per_recipient(self) -> None:
        """An agent with commit_each gives one reply per recipient."""
        bag = Mailbag(
            per_recipient=[
                Reply(250, "2.0.0", "OK"),
                Reply(452, "4.2.2", "Mailbox full"),
            ]
        )
        c = Client(make_factory("lmtp", bag=bag))
        self.assertIn(b"LMTP ready", c.transport.value())
        out = c.lines(
            b"LHLO front.example\r\nMAIL FROM:<>\r\nRCPT TO:<alice@local.example>\r\n"
            b"RCPT TO:<bob@local.example>\r\nDATA\r\nhi\r\n.\r\n"
        )
        self.assertEqual(out[-2:], ["250 2.0.0", "452 4.2.2"])
        self.assertIn(b"with LMTP", bag.delivered[0].data)

    def test_plain_agent(self) -> None:
        """An agent with only commit() gives each recipient its reply."""
        c = Client(make_factory("lmtp"))
        out = c.lines(
            b"LHLO f\r\nMAIL FROM:<>\r\nRCPT TO:<alice@local.example>\r\n"
            b"RCPT TO:<bob@local.example>\r\nDATA\r\nhi\r\n.\r\n"
        )
        self.assertEqual(out[-2:], ["250 2.0.0", "250 2.0.0"])

    def test_no_relay(self) -> None:
        """LMTP never relays, even from a trusted network."""
        c = Client(make_factory("lmtp", trusted=("0.0.0.0/0",)))
        out = c.lines(b"LHLO f\r\nMAIL FROM:<>\r\nRCPT TO:<v@foreign.example>\r\n")
        self.assertEqual(out[-1], "550 5.7.1")


class LimitTests(SynchronousTestCase):
    """Timeouts and connection limits."""

    def test_command_timeout(self) -> None:
        """Five minutes without a command: 421 4.4.2 and close."""
        clock = Clock()
        c = Client(make_factory(clock=clock))
        clock.advance(299)
        c.send(b"EHLO x\r\n")
        c.transport.clear()
        clock.advance(299)
        self.assertFalse(c.transport.disconnecting)
        clock.advance(1)
        self.assertEqual(
            c.transport.value(),
            b"421 4.4.2 mx.local.example Timeout, closing connection\r\n",
        )
        self.assertTrue(c.transport.disconnecting)

    def test_dribbled_command(self) -> None:
        """Bytes of an unfinished command do not reset the command timer."""
        clock = Clock()
        c = Client(make_factory(clock=clock))
        for _ in range(5):
            clock.advance(60)
            c.send(b"E")
        self.assertTrue(c.transport.disconnecting)

    def test_data_total_timeout(self) -> None:
        """A client dribbling message text is cut off after data_timeout in
        total, and the message is aborted."""
        clock = Clock()
        bag = Mailbag()
        c = Client(make_factory(clock=clock, bag=bag))
        c.send(HELLO + b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\nDATA\r\n")
        for _ in range(5):
            clock.advance(100)
            c.send(b"line\r\n")
        self.assertFalse(c.transport.disconnecting)
        clock.advance(100)
        self.assertTrue(c.transport.disconnecting)
        self.assertIn(b"421 4.4.2", c.transport.value())
        self.assertEqual(bag.aborted, 1)

    def test_no_timeout_after_message(self) -> None:
        """The data timer stops at the end of the message."""
        clock = Clock()
        c = Client(make_factory(clock=clock))
        c.send(HELLO + b"MAIL FROM:<>\r\nRCPT TO:<bob@local.example>\r\nDATA\r\n")
        clock.advance(500)
        c.send(b".\r\n")
        clock.advance(200)
        self.assertFalse(c.transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls().__len__(), 1)

    def test_connection_limits(self) -> None:
        """Over the per-IP or total limit: 421 4.7.0 at greeting."""
        factory = make_factory(
            smtp=SMTPSettings(max_connections=3, max_connections_per_ip=2)
        )
        a = Client(factory)
        Client(factory)
        c = Client(factory)
        self.assertEqual(
            c.transport.value(), b"421 4.7.0 Too many connections, try again later\r\n"
        )
        self.assertTrue(c.transport.disconnecting)
        c.close()
        Client(factory, ip="203.0.113.1")
        d = Client(factory, ip="203.0.113.2")
        self.assertIn(b"421 4.7.0", d.transport.value())
        a.close()
        e = Client(factory, ip="203.0.113.2")
        self.assertIn(b"220 ", e.transport.value())
        self.assertEqual(factory.connections, 3)

    def test_max_errors(self) -> None:
        """Too many errors: 421 4.7.0 and close."""
        c = Client(make_factory(smtp=SMTPSettings(max_errors=2)))
        c.send(b"FOO\r\n")
        self.assertEqual(c.lines(b"BAR\r\n"), ["500 5.5.2", "421 4.7.0"])
        self.assertTrue(c.transport.disconnecting)


class ReceivedTests(SynchronousTestCase):
    """The trace header."""

    def test_tls_and_ipv6(self) -> None:
        """TLS details are stated; IPv6 clients get an IPv6 literal; odd HELO
        names are not copied."""
        h = received_header(
            helo="bad name(",
            client_ip="2001:db8::1",
            hostname="mx.example",
            protocol="ESMTPS",
            session_id="abc",
            tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
            recipients=["a@b.example", "c@d.example"],
            when=0,
        )
        self.assertEqual(
            h,
            b"Received: from unknown ([IPv6:2001:db8::1])\r\n"
            b"\tby mx.example (twistedmail) with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n"
            b"\tid abc; Thu, 01 Jan 1970 00:00:00 +0000\r\n",
        )

    def test_address_literals(self) -> None:
        """Each client address gets its own literal, the same every time
        (they are cached): IPv4, IPv6 compressed, anything else unknown."""
        for _ in range(2):
            for ip, literal in (
                ("192.0.2.1", b"[192.0.2.1]"),
                ("2001:DB8:0:0::1", b"[IPv6:2001:db8::1]"),
                ("", b"[unknown]"),
                ("/run/mail.sock", b"[unknown]"),
            ):
                h = received_header(
                    helo="client.example",
                    client_ip=ip,
                    hostname="mx.example",
                    protocol="ESMTP",
                    session_id="abc",
                    tls=None,
                    recipients=[],
                    when=0,
                )
                self.assertTrue(
                    h.startswith(b"Received: from client.example (%s)\r\n" % literal),
                    h,
                )

    def test_date_per_second(self) -> None:
        """The date is the arrival's second (fractions dropped), whatever
        header was made before it."""
        dates = []
        for when in (0.9, 86400.5, 0.0, 59.99):
            h = received_header(
                helo="client.example",
                client_ip="192.0.2.1",
                hostname="mx.example",
                protocol="ESMTP",
                session_id="abc",
                tls=None,
                recipients=[],
                when=when,
            )
            dates.append(h.decode().rsplit("; ", 1)[1])
        self.assertEqual(
            dates,
            [
                "Thu, 01 Jan 1970 00:00:00 +0000\r\n",
                "Fri, 02 Jan 1970 00:00:00 +0000\r\n",
                "Thu, 01 Jan 1970 00:00:00 +0000\r\n",
                "Thu, 01 Jan 1970 00:00:59 +0000\r\n",
            ],
        )

    def test_vrfy(self) -> None:
        """VRFY answers from the directory when enabled."""
        c = Client(make_factory(smtp=SMTPSettings(vrfy=True)))
        c.send(HELLO)
        self.assertEqual(
            c.send(b"VRFY bob@local.example\r\n"), b"250 2.1.5 <bob@local.example>\r\n"
        )
        self.assertEqual(c.lines(b"VRFY nobody@local.example\r\n"), ["550 5.1.1"])
        self.assertEqual(c.lines(b"VRFY bob\r\n"), ["252 2.5.0"])


class _WritableTransport(StringTransport):
    """A transport that, like TCP's, can be told to send its buffer now."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "198.51.100.7", 40000))
        self.connected = True
        self.sent_now = 0

    def doWrite(self) -> None:
        """Count the calls (the protocol asks to send at once)."""
        self.sent_now += 1


class SendNowTests(SynchronousTestCase):
    """Replies go to the socket at the end of the read that made them."""

    def test_once_per_read(self) -> None:
        """One send for the greeting, one per read with replies (pipelined
        commands in one read share it), none for a read without replies."""
        transport = _WritableTransport()
        proto = make_factory().buildProtocol(None)
        proto.makeConnection(transport)
        self.assertEqual(transport.sent_now, 1)
        proto.dataReceived(HELLO)
        self.assertEqual(transport.sent_now, 2)
        proto.dataReceived(
            b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@local.example>\r\nDATA\r\n"
        )
        self.assertEqual(transport.sent_now, 3)
        proto.dataReceived(b"Subject: x\r\n")
        self.assertEqual(transport.sent_now, 3)

    def test_not_while_closing(self) -> None:
        """Nothing is pushed once the connection is closing (the reactor's
        own doWrite finishes the close)."""
        transport = _WritableTransport()
        proto = make_factory().buildProtocol(None)
        proto.makeConnection(transport)
        proto.dataReceived(b"QUIT\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.sent_now, 1)
        self.assertTrue(transport.value().endswith(b"221 2.0.0 Bye\r\n"))
