"""Tests for L{twistedmail.spool.srs}: rewriting, checking, the expander
hook, and forwarding through the relay."""

from __future__ import annotations

import os
import stat

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.relay_helpers import Outbound, wait
from twistedmail.address import Address
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.aliases.expander import AliasExpander, Expansion, RemoteAddress
from twistedmail.config import AliasSettings, ServerSettings, Settings, SRSSettings
from twistedmail.replies import PermanentError
from twistedmail.spool.srs import (
    SECRET_FILE,
    SRS,
    SRSExpander,
    check_srs_recipient,
    is_srs,
    load_secret,
)

DAY = 86400
START = 1_700_000_000.0
LOCAL_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)


def make_srs(secret: bytes = b"k1", clock: Clock | None = None) -> tuple[SRS, Clock]:
    """An SRS for fwd.test on a fixed clock."""
    if clock is None:
        clock = Clock()
        clock.advance(START)
    return SRS(secret, "fwd.test", clock, max_age=21), clock


class ForwardTests(SynchronousTestCase):
    """SRS.forward and SRS.reverse."""

    def test_srs0_shape(self) -> None:
        """SRS0=hash=stamp=domain=local@our domain."""
        srs, _ = make_srs()
        rewritten = srs.forward("alice@example.org")
        local, _, domain = rewritten.rpartition("@")
        self.assertEqual(domain, "fwd.test")
        parts = local.split("=")
        self.assertEqual(parts[0], "SRS0")
        self.assertEqual(len(parts[1]), 4)
        self.assertEqual(len(parts[2]), 2)
        self.assertEqual(parts[3:], ["example.org", "alice"])

    def test_round_trip(self) -> None:
        """reverse gives the original sender back."""
        srs, _ = make_srs()
        self.assertEqual(
            srs.reverse(srs.forward("alice@example.org")), "alice@example.org"
        )

    @given(
        st.text(alphabet=LOCAL_ALPHABET, min_size=1, max_size=30),
        st.lists(
            st.text(
                alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10
            ),
            min_size=1,
            max_size=3,
        ),
    )
    def test_round_trip_any(self, local: str, labels: list[str]) -> None:
        """Any local part and domain survive the round trip."""
        srs, _ = make_srs()
        sender = f"{local}@{'.'.join(labels)}.test"
        self.assertEqual(srs.reverse(srs.forward(sender)), sender)

    def test_case_insensitive(self) -> None:
        """An MTA changing the case on the way does not break it."""
        srs, _ = make_srs()
        rewritten = srs.forward("Alice@Example.org")
        self.assertEqual(srs.reverse(rewritten.upper()), "ALICE@EXAMPLE.ORG")
        self.assertEqual(srs.reverse(rewritten.lower()), "alice@example.org")

    def test_forged_hash(self) -> None:
        """A wrong hash is refused with 550 5.7.1."""
        srs, _ = make_srs()
        rewritten = srs.forward("alice@example.org")
        forged = rewritten.replace("=example.org=", "=evil.example=")
        e = self.assertRaises(PermanentError, srs.reverse, forged)
        self.assertEqual((e.reply.code, e.reply.status), (550, "5.7.1"))
        h = rewritten.split("=")[1]
        other = "AAAA" if h.upper() != "AAAA" else "BBBB"
        e = self.assertRaises(
            PermanentError, srs.reverse, rewritten.replace(h, other, 1)
        )
        self.assertEqual(e.reply.status, "5.7.1")

    def test_other_secret(self) -> None:
        """An address made with another key is forged."""
        srs, clock = make_srs(b"k1")
        other, _ = make_srs(b"k2", clock)
        self.assertRaises(PermanentError, other.reverse, srs.forward("a@example.org"))

    def test_expiry(self) -> None:
        """Valid for max_age days, refused after (550 5.7.1)."""
        srs, clock = make_srs()
        rewritten = srs.forward("alice@example.org")
        clock.advance(21 * DAY)
        self.assertEqual(srs.reverse(rewritten), "alice@example.org")
        clock.advance(DAY)
        e = self.assertRaises(PermanentError, srs.reverse, rewritten)
        self.assertEqual(e.reply.status, "5.7.1")
        self.assertIn("days old", e.reason)

    def test_stamp_wraps(self) -> None:
        """The day stamp wraps after 1024 days: an address made just before
        the wrap is valid just after it."""
        clock = Clock()
        clock.advance(1023 * DAY)
        srs, _ = make_srs(clock=clock)
        rewritten = srs.forward("alice@example.org")
        clock.advance(2 * DAY)
        self.assertEqual(srs.reverse(rewritten), "alice@example.org")

    def test_malformed(self) -> None:
        """Not SRS: 5.1.1; SRS-shaped but broken: 5.7.1."""
        srs, _ = make_srs()
        e = self.assertRaises(PermanentError, srs.reverse, "bob@fwd.test")
        self.assertEqual(e.reply.status, "5.1.1")
        for bad in ("SRS0=x@fwd.test", "SRS0==ab=c=d@fwd.test", "SRS1=ab@fwd.test"):
            e = self.assertRaises(PermanentError, srs.reverse, bad)
            self.assertEqual(e.reply.status, "5.7.1", bad)

    def test_null_sender_and_own_addresses(self) -> None:
        """The null sender and our own SRS addresses are kept."""
        srs, _ = make_srs()
        self.assertEqual(srs.forward(""), "")
        rewritten = srs.forward("alice@example.org")
        self.assertEqual(srs.forward(rewritten), rewritten)

    def test_srs1(self) -> None:
        """Another forwarder's SRS0 becomes SRS1 naming it; the bounce goes
        back to that forwarder's SRS0 address."""
        first, clock = make_srs(b"theirs")
        first.domain = "first.test"
        srs0 = first.forward("alice@example.org")
        ours, _ = make_srs(b"k1", clock)
        srs1 = ours.forward(srs0)
        self.assertTrue(srs1.startswith("SRS1="))
        self.assertIn("=first.test==", srs1)
        self.assertTrue(srs1.endswith("@fwd.test"))
        back = ours.reverse(srs1)
        self.assertEqual(back, srs0)
        self.assertEqual(first.reverse(back), "alice@example.org")

    def test_srs1_again(self) -> None:
        """An SRS1 address is rehashed for our domain, keeping the first
        forwarder; forged SRS1 hashes are refused."""
        first, clock = make_srs(b"theirs")
        first.domain = "first.test"
        second, _ = make_srs(b"second", clock)
        second.domain = "second.test"
        srs0 = first.forward("alice@example.org")
        srs1 = second.forward(srs0)
        ours, _ = make_srs(b"k1", clock)
        again = ours.forward(srs1)
        self.assertTrue(again.endswith("@fwd.test"))
        self.assertEqual(ours.reverse(again), srs0)
        self.assertRaises(
            PermanentError, ours.reverse, srs1.replace("second.test", "fwd.test")
        )

    def test_is_srs(self) -> None:
        """SRS0 and SRS1 with =, + or - separators, any case."""
        for local in ("SRS0=a", "srs0+a", "SRS1-a", "Srs1=x"):
            self.assertTrue(is_srs(local), local)
        for local in ("SRS2=a", "SRS0", "bob", "SRS0_a"):
            self.assertFalse(is_srs(local), local)


class SecretTests(SynchronousTestCase):
    """load_secret."""

    def settings(self, secret: str = "") -> Settings:
        """Settings with a temp data folder."""
        return Settings().with_changes(
            server=ServerSettings(data_dir=self.mktemp()),
            srs=SRSSettings(secret=secret),
        )

    def test_configured(self) -> None:
        """The configured secret wins; no file is made."""
        s = self.settings("s3cret")
        self.assertEqual(load_secret(s), b"s3cret")
        self.assertFalse(os.path.exists(s.data_path(SECRET_FILE)))

    def test_generated_once(self) -> None:
        """Without one, a key is generated into the data folder (0600) and
        reused after."""
        s = self.settings()
        key = load_secret(s)
        self.assertEqual(len(key), 64)
        mode = stat.S_IMODE(os.stat(s.data_path(SECRET_FILE)).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(load_secret(s), key)
        self.assertNotEqual(load_secret(self.settings()), key)


class ExpanderTests(SynchronousTestCase):
    """SRSExpander and check_srs_recipient."""

    def setUp(self) -> None:
        self.srs, self.clock = make_srs()
        self.directory = MemoryDirectory(("fwd.test",))
        self.expander = SRSExpander(
            AliasExpander(self.directory, AliasSettings()), self.srs, self.directory
        )

    def expand(self, text: str) -> Expansion:
        """Expand an address."""
        return self.successResultOf(self.expander.expand(Address.parse(text)))

    def test_valid(self) -> None:
        """A valid SRS address resolves to its original, a remote address."""
        expansion = self.expand(self.srs.forward("alice@example.org"))
        self.assertEqual(expansion.destinations, (RemoteAddress("alice@example.org"),))
        self.assertIsNone(expansion.rcpt_reply())

    def test_forged(self) -> None:
        """A forged one is an unknown user: 550 5.1.1 at RCPT."""
        rewritten = self.srs.forward("alice@example.org")
        expansion = self.expand(rewritten.replace("example.org", "evil.test"))
        self.assertEqual(expansion.destinations, ())
        reply = expansion.rcpt_reply()
        assert reply is not None
        self.assertEqual((reply.code, reply.status), (550, "5.1.1"))
        self.assertIn("bad SRS hash", expansion.steps[0].result[0])

    def test_expired(self) -> None:
        """An expired one is refused too."""
        rewritten = self.srs.forward("alice@example.org")
        self.clock.advance(30 * DAY)
        reply = self.expand(rewritten).rcpt_reply()
        assert reply is not None
        self.assertEqual((reply.code, reply.status), (550, "5.1.1"))

    def test_other_addresses(self) -> None:
        """Addresses that are not SRS, or not in our domains, go to the
        alias expander."""
        reply = self.expand("bob@fwd.test").rcpt_reply()
        assert reply is not None
        self.assertEqual(reply.status, "5.1.1")
        foreign = self.srs.forward("alice@example.org").replace("fwd.test", "x.test")
        self.assertEqual(self.expand(foreign).destinations, (RemoteAddress(foreign),))

    def test_rcpt_hook(self) -> None:
        """check_srs_recipient: None for valid and non-SRS, the refusal for
        forged."""
        check = check_srs_recipient(self.srs)
        rewritten = self.srs.forward("alice@example.org")
        self.assertIsNone(check(Address.parse("bob@fwd.test")))
        self.assertIsNone(check(Address.parse(rewritten)))
        forged = check(Address.parse(rewritten.replace("=alice@", "=mallory@")))
        assert forged is not None
        self.assertEqual(forged.status, "5.7.1")


class ForwardingFlowTests(SynchronousTestCase):
    """Forwarding through the relay with SRS, and the bounce coming back."""

    def test_forward_and_bounce_back(self) -> None:
        """joe@c.test writes to fwd@a.test, forwarded to friend@b.test with an
        SRS0 sender at a.test; a bounce to that address goes on to joe."""
        clock = Clock()
        clock.advance(START)
        srs = SRS(b"k", "a.test", clock)
        out = Outbound(
            self.mktemp(),
            clock=clock,
            rewrite_sender=srs.forward,
            wrap_expander=lambda inner, d: SRSExpander(inner, srs, d),
        )
        out.start()
        self.addCleanup(out.stop)
        out.submit("fwd@a.test", sender="joe@c.test")
        [(_, forwarded)] = out.transport.sent
        self.assertTrue(forwarded.sender.startswith("SRS0="))
        self.assertTrue(forwarded.sender.endswith("@a.test"))

        out.submit(forwarded.sender, sender="")
        [_, (domain, bounce)] = out.transport.sent
        self.assertEqual(domain, "c.test")
        self.assertEqual(bounce.sender, "")
        self.assertEqual([r.address for r in bounce.recipients], ["joe@c.test"])
        self.assertEqual(out.queue_ids(), [])

    def test_forged_bounce_not_forwarded(self) -> None:
        """A message to a forged SRS address is not forwarded."""
        clock = Clock()
        clock.advance(START)
        srs = SRS(b"k", "a.test", clock)
        out = Outbound(
            self.mktemp(),
            clock=clock,
            wrap_expander=lambda inner, d: SRSExpander(inner, srs, d),
        )
        out.start()
        self.addCleanup(out.stop)
        out.submit("SRS0=AAAA=AA=c.test=joe@a.test", sender="")
        self.assertEqual(out.transport.sent, [])
        # From <> and refused: reported to the postmaster once, then done.
        self.assertEqual(
            [d for _, _, d in out.agent.copies],
            ["mailbox postmaster@a.test (built-in postmaster)"],
        )
        self.assertEqual(wait(out, out.spool.list()), [])
