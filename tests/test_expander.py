"""Tests for L{twistedmail.aliases.expander}."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.address import Address
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.aliases.expander import (
    MAX_INCLUDE_SIZE,
    AliasExpander,
    AliasLoop,
    BadTarget,
    DisabledUser,
    Expansion,
    FileTarget,
    How,
    IncludeUnreadable,
    LocalMailbox,
    ProgramTarget,
    RemoteAddress,
    Step,
    TargetRefused,
    TooDeep,
    UnknownUser,
    include_reader,
    parse_targets,
)
from twistedmail.config import AliasSettings
from twistedmail.interfaces import User
from twistedmail.replies import (
    ALIAS_INCLUDE_UNAVAILABLE,
    ALIAS_LOOP,
    ALIAS_TOO_DEEP,
    BAD_ALIAS_TARGET,
    MAILBOX_UNAVAILABLE,
    TARGET_REFUSED,
    UNKNOWN_USER,
)

D = "example.test"
OTHER = "other.test"


def user(name: str, enabled: bool = True, domain: str = D) -> User:
    """A user C{name@domain} with a default mailbox."""
    return User(f"{name}@{domain}", "", f"{domain}/{name}", enabled)


def mailbox(u: User) -> LocalMailbox:
    """The destination for a user's mailbox."""
    return LocalMailbox(u.address, u)


def memory_reader(files: dict[str, str]) -> Callable[[str], Deferred[str]]:
    """An include reader over a dictionary; a missing path is ENOENT."""

    def read(path: str) -> Deferred[str]:
        if path in files:
            return succeed(files[path])
        return fail(FileNotFoundError(2, "No such file or directory", path))

    return read


ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol")
DAVE_OFF = user("dave", enabled=False)


class ExpanderTestCase(SynchronousTestCase):
    """Helpers: a directory with two local domains and some users."""

    def expand(
        self,
        address: str,
        aliases: Mapping[str, tuple[str, ...]] | None = None,
        users: tuple[User, ...] = (ALICE, BOB, CAROL, DAVE_OFF),
        alias_settings: AliasSettings | None = None,
        files: dict[str, str] | None = None,
    ) -> Expansion:
        """Expand C{address} against a fresh in-memory directory."""
        directory = MemoryDirectory((D, OTHER), users, dict(aliases or {}))
        expander = AliasExpander(
            directory, alias_settings or AliasSettings(), memory_reader(files or {})
        )
        return self.successResultOf(expander.expand(Address.parse(address, utf8=True)))


class BasicTests(ExpanderTestCase):
    """Users, remote addresses and unknown users."""

    def test_user(self) -> None:
        """A local user is their mailbox; RCPT is accepted."""
        e = self.expand("alice@example.test")
        self.assertEqual(e.destinations, (mailbox(ALICE),))
        self.assertEqual(e.failures, ())
        self.assertIsNone(e.rcpt_reply())

    def test_remote(self) -> None:
        """An address in a domain that is not local is a remote address."""
        e = self.expand("Someone@Elsewhere.EXAMPLE")
        self.assertEqual(e.destinations, (RemoteAddress("Someone@elsewhere.example"),))
        self.assertEqual(e.steps[0].how, How.REMOTE)
        self.assertIsNone(e.rcpt_reply())

    def test_unknown_top_level(self) -> None:
        """An unknown recipient: no destinations, one UnknownUser, 550 5.1.1."""
        e = self.expand("nobody@example.test")
        self.assertEqual(e.destinations, ())
        self.assertEqual(e.failures, (UnknownUser("nobody@example.test"),))
        self.assertEqual(e.rcpt_reply(), UNKNOWN_USER)
        self.assertEqual(str(e.rcpt_reply()), "550 5.1.1 No such user here")

    def test_disabled_user(self) -> None:
        """A disabled user receives no mail: 550 5.2.1."""
        e = self.expand("dave@example.test")
        self.assertEqual(e.destinations, ())
        self.assertEqual(e.failures, (DisabledUser("dave@example.test"),))
        self.assertEqual(e.rcpt_reply(), MAILBOX_UNAVAILABLE)
        self.assertEqual(
            (e.rcpt_reply().code, e.rcpt_reply().status),  # type: ignore[union-attr]
            (550, "5.2.1"),
        )

    def test_case_insensitive(self) -> None:
        """Domains and local parts are compared without case."""
        e = self.expand("ALICE@Example.TEST")
        self.assertEqual(e.destinations, (mailbox(ALICE),))
        e = self.expand(
            "List@EXAMPLE.test", {"list@example.test": ("BOB@Example.Test",)}
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))

    def test_idna_domain(self) -> None:
        """A U-label target and its A-label key are one domain."""
        directory = MemoryDirectory(
            ("xn--bcher-kva.example",), (user("anna", domain="xn--bcher-kva.example"),)
        )
        expander = AliasExpander(directory, AliasSettings())
        e = self.successResultOf(
            expander.expand(Address.parse("Anna@Bücher.example", utf8=True))
        )
        self.assertEqual(
            [d.key for d in e.destinations], ["anna@xn--bcher-kva.example"]
        )

    def test_slow_directory(self) -> None:
        """Answers that arrive later (SQL, files) give the same expansion."""
        clock = Clock()

        class Slow(MemoryDirectory):
            def get_alias(self, address: str) -> Deferred[tuple[str, ...] | None]:
                answer = super().get_alias(address)
                return deferLater(clock, 1, lambda: None).addCallback(lambda _: answer)

        directory = Slow((D,), (ALICE, BOB), {"team@example.test": ("alice", "bob")})
        d = AliasExpander(directory, AliasSettings()).expand(
            Address.parse("team@example.test")
        )
        self.assertNoResult(d)
        clock.pump([1] * 5)
        e = self.successResultOf(d)
        self.assertEqual(e.destinations, (mailbox(ALICE), mailbox(BOB)))

    def test_directory_failure(self) -> None:
        """A failing directory fails the Deferred (the caller answers 451)."""

        class Broken(MemoryDirectory):
            def get_alias(self, address: str) -> Deferred[tuple[str, ...] | None]:
                return fail(OSError("database is locked"))

        expander = AliasExpander(Broken((D,)), AliasSettings())
        f = self.failureResultOf(
            expander.expand(Address.parse("alice@example.test")), OSError
        )
        self.assertEqual(str(f.value), "database is locked")


class AliasTests(ExpanderTestCase):
    """Aliases, lists, nested failures and duplicates."""

    def test_list(self) -> None:
        """An alias delivers to each of its targets, in order."""
        e = self.expand(
            "team@example.test",
            {"team@example.test": ("bob@example.test", "alice@example.test")},
        )
        self.assertEqual(e.destinations, (mailbox(BOB), mailbox(ALICE)))

    def test_alias_before_user(self) -> None:
        """An alias with the same key as a user wins (forwarding)."""
        e = self.expand(
            "alice@example.test", {"alice@example.test": ("x@remote.example",)}
        )
        self.assertEqual(e.destinations, (RemoteAddress("x@remote.example"),))

    def test_nested(self) -> None:
        """Aliases of aliases expand recursively; no alias is a destination."""
        e = self.expand(
            "all@example.test",
            {
                "all@example.test": ("team@example.test", "carol@example.test"),
                "team@example.test": ("alice@example.test", "bob@example.test"),
            },
        )
        self.assertEqual(e.destinations, (mailbox(ALICE), mailbox(BOB), mailbox(CAROL)))

    def test_nested_failures(self) -> None:
        """Missing or disabled members are failures; the rest still deliver."""
        e = self.expand(
            "team@example.test",
            {
                "team@example.test": (
                    "ghost@example.test",
                    "bob@example.test",
                    "dave@example.test",
                )
            },
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))
        self.assertEqual(
            e.failures,
            (UnknownUser("ghost@example.test"), DisabledUser("dave@example.test")),
        )
        self.assertIsNone(e.rcpt_reply())

    def test_all_members_fail(self) -> None:
        """With no destination at all, RCPT gets the first failure's reply."""
        e = self.expand(
            "team@example.test",
            {"team@example.test": ("dave@example.test", "ghost@example.test")},
        )
        self.assertEqual(e.rcpt_reply(), MAILBOX_UNAVAILABLE)

    def test_empty_alias(self) -> None:
        """An alias that lists nothing delivers nowhere and is refused."""
        e = self.expand("void@example.test", {"void@example.test": ()})
        self.assertEqual((e.destinations, e.failures), ((), ()))
        self.assertEqual(e.rcpt_reply(), UNKNOWN_USER)

    def test_duplicates(self) -> None:
        """A destination reached twice (in any case, via any route) is kept once."""
        e = self.expand(
            "all@example.test",
            {
                "all@example.test": (
                    "alice@example.test",
                    "team@example.test",
                    "ALICE@EXAMPLE.TEST",
                    "x@remote.example",
                    "X@Remote.Example",
                ),
                "team@example.test": ("bob@example.test", "alice+tag@example.test"),
            },
        )
        self.assertEqual(
            e.destinations,
            (mailbox(ALICE), mailbox(BOB), RemoteAddress("x@remote.example")),
        )
        self.assertEqual(e.failures, ())

    def test_bare_local_part(self) -> None:
        """A target without a domain is qualified with the alias's domain."""
        e = self.expand(
            "boss@other.test",
            {"boss@other.test": ("erin",)},
            (user("erin", domain=OTHER),),
        )
        self.assertEqual([d.key for d in e.destinations], ["erin@other.test"])

    def test_bad_target(self) -> None:
        """An unparsable target is a failure, not an exception."""
        e = self.expand(
            "team@example.test",
            {"team@example.test": ("not an address@", "bob@example.test", "  ")},
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))
        self.assertEqual(len(e.failures), 2)
        self.assertIsInstance(e.failures[0], BadTarget)
        self.assertEqual(e.failures[1], BadTarget("  ", "empty target"))

    def test_bad_target_only(self) -> None:
        """An alias whose only target is broken is refused as misconfigured."""
        e = self.expand("team@example.test", {"team@example.test": ("a@b@",)})
        self.assertEqual(e.rcpt_reply(), BAD_ALIAS_TARGET)

    def test_angle_brackets(self) -> None:
        """A target in angle brackets is the address inside."""
        e = self.expand(
            "team@example.test", {"team@example.test": ("<bob@example.test>",)}
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))

    def test_utf8_target(self) -> None:
        """Targets are parsed with SMTPUTF8 allowed."""
        e = self.expand(
            "team@example.test", {"team@example.test": ("jürgen@bücher.example",)}
        )
        self.assertEqual(
            e.destinations, (RemoteAddress("jürgen@xn--bcher-kva.example"),)
        )


class LoopTests(ExpanderTestCase):
    """Loops and the alias-to-self idiom."""

    def test_self_reference_of_user(self) -> None:
        """C{alice: alice, bob} keeps a copy for alice (sendmail's idiom)."""
        e = self.expand(
            "alice@example.test",
            {"alice@example.test": ("alice@example.test", "bob@example.test")},
        )
        self.assertEqual(e.destinations, (mailbox(ALICE), mailbox(BOB)))
        self.assertEqual(e.failures, ())

    def test_self_reference_disabled(self) -> None:
        """The idiom for a disabled user is the disabled-user failure."""
        e = self.expand(
            "dave@example.test", {"dave@example.test": ("dave@example.test",)}
        )
        self.assertEqual(e.failures, (DisabledUser("dave@example.test"),))

    def test_self_reference_of_non_user(self) -> None:
        """An alias naming itself without a user behind it is a loop."""
        e = self.expand(
            "list@example.test",
            {"list@example.test": ("list@example.test", "bob@example.test")},
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))
        self.assertEqual(
            e.failures, (AliasLoop(("list@example.test", "list@example.test")),)
        )

    def test_cycle(self) -> None:
        """A cycle of aliases is a loop failure: 550 5.4.6."""
        e = self.expand(
            "a@example.test",
            {
                "a@example.test": ("b@example.test",),
                "b@example.test": ("c@example.test",),
                "c@example.test": ("b@example.test",),
            },
        )
        self.assertEqual(e.destinations, ())
        self.assertEqual(
            e.failures,
            (AliasLoop(("b@example.test", "c@example.test", "b@example.test")),),
        )
        self.assertEqual(e.rcpt_reply(), ALIAS_LOOP)

    def test_cycle_through_user(self) -> None:
        """A cycle back to an alias that is also a user ends in its mailbox."""
        e = self.expand(
            "alice@example.test",
            {
                "alice@example.test": ("fwd@example.test",),
                "fwd@example.test": ("alice@example.test", "bob@example.test"),
            },
        )
        self.assertEqual(e.destinations, (mailbox(ALICE), mailbox(BOB)))

    def test_seen_alias_not_expanded_again(self) -> None:
        """An alias reached twice is expanded once; the step says so."""
        e = self.expand(
            "all@example.test",
            {
                "all@example.test": ("team@example.test", "team@example.test"),
                "team@example.test": ("bob@example.test",),
            },
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))
        self.assertEqual([s.how for s in e.steps].count(How.SEEN), 1)

    def test_diamond_graph_is_not_exponential(self) -> None:
        """Thirty layers of two aliases each pointing at both of the next layer
        expand in linear work (2**30 paths would never finish)."""
        aliases: dict[str, tuple[str, ...]] = {}
        for i in range(30):
            nxt = (f"l{i + 1}a@example.test", f"l{i + 1}b@example.test")
            aliases[f"l{i}a@example.test"] = nxt
            aliases[f"l{i}b@example.test"] = nxt
        aliases["l30a@example.test"] = ("alice@example.test",)
        aliases["l30b@example.test"] = ("bob@example.test",)
        e = self.expand(
            "l0a@example.test", aliases, alias_settings=AliasSettings(max_depth=40)
        )
        self.assertEqual(e.destinations, (mailbox(ALICE), mailbox(BOB)))
        self.assertLess(len(e.steps), 200)


class DepthTests(ExpanderTestCase):
    """The depth limit."""

    def chain(self, n: int) -> dict[str, tuple[str, ...]]:
        """Aliases a0 -> a1 -> ... -> a(n-1) -> alice: n alias steps."""
        aliases: dict[str, tuple[str, ...]] = {
            f"a{i}@example.test": (f"a{i + 1}@example.test",) for i in range(n)
        }
        aliases[f"a{n - 1}@example.test"] = ("alice@example.test",)
        return aliases

    def test_at_limit(self) -> None:
        """Exactly max_depth alias steps are allowed."""
        e = self.expand(
            "a0@example.test", self.chain(5), alias_settings=AliasSettings(max_depth=5)
        )
        self.assertEqual(e.destinations, (mailbox(ALICE),))
        self.assertEqual(max(s.depth for s in e.steps), 5)

    def test_over_limit(self) -> None:
        """One step more is a TooDeep failure naming the chain: 550 5.4.6."""
        e = self.expand(
            "a0@example.test", self.chain(5), alias_settings=AliasSettings(max_depth=4)
        )
        self.assertEqual(e.destinations, ())
        self.assertEqual(
            e.failures, (TooDeep(tuple(f"a{i}@example.test" for i in range(5))),)
        )
        self.assertEqual(e.rcpt_reply(), ALIAS_TOO_DEEP)

    def test_deep_default(self) -> None:
        """The default limit (20) allows a chain of 20 and refuses 21."""
        self.assertEqual(
            self.expand("a0@example.test", self.chain(20)).destinations,
            (mailbox(ALICE),),
        )
        self.assertIsInstance(
            self.expand("a0@example.test", self.chain(21)).failures[0], TooDeep
        )

    def test_very_deep_chain(self) -> None:
        """A large configured limit works: expansion does not recurse."""
        e = self.expand(
            "a0@example.test",
            self.chain(3000),
            alias_settings=AliasSettings(max_depth=3000),
        )
        self.assertEqual(e.destinations, (mailbox(ALICE),))

    def test_shallower_route_expands_again(self) -> None:
        """An alias first met too deep for its whole tree is expanded again
        when met on a shorter route."""
        e = self.expand(
            "t@example.test",
            {
                "t@example.test": ("a@example.test", "b@example.test"),
                "a@example.test": ("b@example.test",),
                "b@example.test": ("c@example.test",),
                "c@example.test": ("alice@example.test",),
            },
            alias_settings=AliasSettings(max_depth=3),
        )
        self.assertEqual(e.destinations, (mailbox(ALICE),))
        self.assertEqual(
            e.failures,
            (
                TooDeep(
                    (
                        "t@example.test",
                        "a@example.test",
                        "b@example.test",
                        "c@example.test",
                    )
                ),
            ),
        )


class SubaddressTests(ExpanderTestCase):
    """user+tag@domain delivers to user@domain."""

    def test_plus(self) -> None:
        """The default separator is +, and the tag does not matter."""
        e = self.expand("alice+lists@example.test")
        self.assertEqual(e.destinations, (mailbox(ALICE),))
        self.assertEqual(
            e.steps[0],
            Step(
                0, "alice+lists@example.test", How.SUBADDRESS, ("alice@example.test",)
            ),
        )

    def test_base_alias(self) -> None:
        """The base address's alias applies too."""
        e = self.expand(
            "team+x@example.test", {"team@example.test": ("bob@example.test",)}
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))

    def test_exact_alias_wins(self) -> None:
        """An alias for the full subaddress is used before the base address."""
        e = self.expand(
            "alice+spam@example.test",
            {"alice+spam@example.test": ("/dev/null",)},
            alias_settings=AliasSettings(allow_files=True),
        )
        self.assertEqual([d.key for d in e.destinations], ["/dev/null"])

    def test_custom_separator(self) -> None:
        """The separator comes from the settings."""
        s = AliasSettings(subaddress_separator="-")
        self.assertEqual(
            self.expand("alice-x@example.test", alias_settings=s).destinations,
            (mailbox(ALICE),),
        )
        self.assertEqual(
            self.expand("alice+x@example.test", alias_settings=s).failures,
            (UnknownUser("alice+x@example.test"),),
        )

    def test_several_separators(self) -> None:
        """With several characters each one separates; the first one wins."""
        s = AliasSettings(subaddress_separator="+-")
        for address in [
            "alice+x@example.test",
            "alice-x@example.test",
            "alice-x+y@example.test",
        ]:
            self.assertEqual(
                self.expand(address, alias_settings=s).destinations,
                (mailbox(ALICE),),
                address,
            )

    def test_disabled(self) -> None:
        """An empty separator turns subaddressing off."""
        s = AliasSettings(subaddress_separator="")
        e = self.expand("alice+x@example.test", alias_settings=s)
        self.assertEqual(e.failures, (UnknownUser("alice+x@example.test"),))

    def test_unknown_base(self) -> None:
        """A subaddress of nobody is unknown under its full address."""
        e = self.expand("ghost+x@example.test")
        self.assertEqual(e.failures, (UnknownUser("ghost+x@example.test"),))

    def test_self_reference_through_subaddress(self) -> None:
        """C{alice: alice+copy} ends in alice's mailbox, not a loop."""
        e = self.expand(
            "alice@example.test",
            {"alice@example.test": ("alice+copy@example.test", "bob@example.test")},
        )
        self.assertEqual(e.destinations, (mailbox(ALICE), mailbox(BOB)))


class CatchAllTests(ExpanderTestCase):
    """The per-domain catch-all alias @domain."""

    def test_catch_all(self) -> None:
        """Unknown users of the domain go to the catch-all's targets."""
        e = self.expand(
            "whoever@example.test", {"@example.test": ("bob@example.test",)}
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))
        self.assertEqual(e.steps[0].how, How.CATCH_ALL)

    def test_users_first(self) -> None:
        """Existing users and subaddresses are not caught."""
        aliases = {"@example.test": ("bob@example.test",)}
        self.assertEqual(
            self.expand("alice@example.test", aliases).destinations, (mailbox(ALICE),)
        )
        self.assertEqual(
            self.expand("alice+x@example.test", aliases).destinations, (mailbox(ALICE),)
        )

    def test_per_domain(self) -> None:
        """A catch-all covers its own domain only."""
        e = self.expand("whoever@other.test", {"@example.test": ("bob@example.test",)})
        self.assertEqual(e.failures, (UnknownUser("whoever@other.test"),))

    def test_catch_all_to_unknown_is_a_loop(self) -> None:
        """A catch-all that names an unknown user of its own domain loops."""
        e = self.expand("x@example.test", {"@example.test": ("nobody@example.test",)})
        self.assertEqual(
            e.failures,
            (AliasLoop(("@example.test", "nobody@example.test", "@example.test")),),
        )
        self.assertEqual(e.rcpt_reply(), ALIAS_LOOP)

    def test_catch_all_back_to_itself(self) -> None:
        """A catch-all naming the very address it caught loops."""
        e = self.expand(
            "x@example.test", {"@example.test": ("x@example.test", "bob@example.test")}
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))
        self.assertEqual(
            e.failures,
            (AliasLoop(("x@example.test", "@example.test", "x@example.test")),),
        )


class PostmasterTests(ExpanderTestCase):
    """postmaster@ always exists in every local domain (RFC 5321 §4.5.1)."""

    def test_built_in(self) -> None:
        """With nothing defined, each domain has a built-in postmaster mailbox."""
        for domain in (D, OTHER):
            e = self.expand(f"PostMaster@{domain}")
            self.assertEqual(
                e.destinations, (LocalMailbox(f"postmaster@{domain}", None),)
            )
            self.assertEqual(e.steps[0].how, How.POSTMASTER)

    def test_subaddress(self) -> None:
        """postmaster+tag@ reaches the postmaster too."""
        e = self.expand("postmaster+x@example.test")
        self.assertEqual(
            e.destinations, (LocalMailbox("postmaster@example.test", None),)
        )

    def test_configured(self) -> None:
        """The configured postmaster address gets every domain's postmaster mail."""
        s = AliasSettings(postmaster="carol@example.test")
        e = self.expand("postmaster@other.test", alias_settings=s)
        self.assertEqual(e.destinations, (mailbox(CAROL),))

    def test_configured_remote(self) -> None:
        """The configured postmaster may be remote."""
        s = AliasSettings(postmaster="noc@isp.example")
        e = self.expand("postmaster@example.test", alias_settings=s)
        self.assertEqual(e.destinations, (RemoteAddress("noc@isp.example"),))

    def test_configured_is_a_postmaster(self) -> None:
        """Configured as a local domain's own postmaster: its built-in mailbox."""
        s = AliasSettings(postmaster="postmaster@example.test")
        for rcpt in ("postmaster@example.test", "postmaster@other.test"):
            e = self.expand(rcpt, alias_settings=s)
            self.assertEqual(
                e.destinations, (LocalMailbox("postmaster@example.test", None),)
            )

    def test_defined_wins(self) -> None:
        """A postmaster user or alias is used as it is."""
        pm = user("postmaster")
        self.assertEqual(
            self.expand("postmaster@example.test", users=(pm,)).destinations,
            (mailbox(pm),),
        )
        e = self.expand(
            "postmaster@example.test", {"postmaster@example.test": ("alice",)}
        )
        self.assertEqual(e.destinations, (mailbox(ALICE),))

    def test_catch_all_first(self) -> None:
        """A catch-all covers postmaster@ as well."""
        e = self.expand(
            "postmaster@example.test", {"@example.test": ("bob@example.test",)}
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))

    def test_remote_postmaster(self) -> None:
        """A remote domain's postmaster is just a remote address."""
        e = self.expand("postmaster@elsewhere.example")
        self.assertEqual(
            e.destinations, (RemoteAddress("postmaster@elsewhere.example"),)
        )


class ProgramAndFileTests(ExpanderTestCase):
    """|command and /path targets, refused unless allowed."""

    aliases = {"bot@example.test": ("|/usr/bin/bot --in", "/var/log/bot.mbox", "bob")}

    def test_refused_by_default(self) -> None:
        """Without permission both are TargetRefused (550 5.7.1)."""
        e = self.expand("bot@example.test", self.aliases)
        self.assertEqual(e.destinations, (mailbox(BOB),))
        self.assertEqual([type(f) for f in e.failures], [TargetRefused, TargetRefused])
        self.assertEqual(e.failures[0].target, "|/usr/bin/bot --in")  # type: ignore[union-attr]
        self.assertEqual(e.failures[0].reply, TARGET_REFUSED)

    def test_refused_only(self) -> None:
        """An alias to a refused program alone is refused at RCPT."""
        e = self.expand("bot@example.test", {"bot@example.test": ("|cat",)})
        self.assertEqual(e.rcpt_reply(), TARGET_REFUSED)

    def test_allowed(self) -> None:
        """With permission they are destinations naming their alias."""
        s = AliasSettings(allow_programs=True, allow_files=True)
        e = self.expand("bot@example.test", self.aliases, alias_settings=s)
        self.assertEqual(
            e.destinations,
            (
                ProgramTarget("/usr/bin/bot --in", "bot@example.test"),
                FileTarget("/var/log/bot.mbox", "bot@example.test"),
                mailbox(BOB),
            ),
        )

    def test_one_allowed(self) -> None:
        """Programs and files are allowed separately."""
        e = self.expand(
            "bot@example.test",
            self.aliases,
            alias_settings=AliasSettings(allow_files=True),
        )
        self.assertEqual([type(d) for d in e.destinations], [FileTarget, LocalMailbox])
        self.assertEqual([type(f) for f in e.failures], [TargetRefused])

    def test_quoted(self) -> None:
        """Quoted targets (as aliases files write them) are unquoted."""
        s = AliasSettings(allow_programs=True)
        e = self.expand(
            "bot@example.test",
            {"bot@example.test": ('"|/bin/prog a, b"',)},
            alias_settings=s,
        )
        self.assertEqual(
            e.destinations, (ProgramTarget("/bin/prog a, b", "bot@example.test"),)
        )

    def test_empty_command(self) -> None:
        """A lone | is a bad target."""
        s = AliasSettings(allow_programs=True)
        e = self.expand(
            "bot@example.test", {"bot@example.test": ("|",)}, alias_settings=s
        )
        self.assertEqual(e.failures, (BadTarget("|", "empty command"),))

    def test_duplicate_programs(self) -> None:
        """The same command reached twice runs once."""
        s = AliasSettings(allow_programs=True)
        e = self.expand(
            "bot@example.test",
            {"bot@example.test": ("|cat", " |cat")},
            alias_settings=s,
        )
        self.assertEqual(e.destinations, (ProgramTarget("cat", "bot@example.test"),))


class IncludeTests(ExpanderTestCase):
    """:include: lists."""

    def test_include(self) -> None:
        """An include file's entries expand like alias targets."""
        files = {
            "/lists/team": "# the team\nalice@example.test, bob\n\nfwd@example.test # helper\n"
        }
        aliases = {
            "team@example.test": (":include:/lists/team",),
            "fwd@example.test": ("x@remote.example",),
        }
        e = self.expand("team@example.test", aliases, files=files)
        self.assertEqual(
            e.destinations,
            (mailbox(ALICE), mailbox(BOB), RemoteAddress("x@remote.example")),
        )
        self.assertIn(
            Step(
                1,
                ":include:/lists/team",
                How.INCLUDE,
                ("alice@example.test", "bob", "fwd@example.test"),
            ),
            e.steps,
        )

    def test_include_counts_as_a_step(self) -> None:
        """An include is one step against the depth limit."""
        files = {"/lists/team": "alice@example.test\n"}
        aliases = {"team@example.test": (":include:/lists/team",)}
        e = self.expand(
            "team@example.test",
            aliases,
            files=files,
            alias_settings=AliasSettings(max_depth=1),
        )
        self.assertEqual(
            e.failures, (TooDeep(("team@example.test", ":include:/lists/team")),)
        )
        e = self.expand(
            "team@example.test",
            aliases,
            files=files,
            alias_settings=AliasSettings(max_depth=2),
        )
        self.assertEqual(e.destinations, (mailbox(ALICE),))

    def test_unreadable(self) -> None:
        """A missing include file is a temporary failure (451 4.3.0)."""
        e = self.expand(
            "team@example.test", {"team@example.test": (":include:/lists/gone",)}
        )
        self.assertEqual(
            e.failures, (IncludeUnreadable("/lists/gone", "No such file or directory"),)
        )
        self.assertEqual(e.rcpt_reply(), ALIAS_INCLUDE_UNAVAILABLE)
        self.assertTrue(e.rcpt_reply().is_temporary)  # type: ignore[union-attr]

    def test_include_loop(self) -> None:
        """An include that includes itself is a loop."""
        files = {"/lists/a": "bob\n:include:/lists/a\n"}
        e = self.expand(
            "team@example.test",
            {"team@example.test": (":INCLUDE:/lists/a",)},
            files=files,
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))
        self.assertEqual(
            e.failures, (AliasLoop((":include:/lists/a", ":include:/lists/a")),)
        )

    def test_relative_path(self) -> None:
        """An include path must be absolute."""
        e = self.expand(
            "team@example.test", {"team@example.test": (":include:lists/a",)}
        )
        self.assertEqual(
            e.failures,
            (BadTarget(":include:lists/a", "include path must be absolute"),),
        )

    def test_programs_in_include(self) -> None:
        """Programs listed in an include are refused too, and name the alias."""
        files = {"/lists/a": "|cat\n"}
        aliases = {"team@example.test": (":include:/lists/a",)}
        e = self.expand("team@example.test", aliases, files=files)
        self.assertEqual(
            e.failures,
            (
                TargetRefused(
                    "|cat", "program targets are not enabled (allow_programs)"
                ),
            ),
        )
        s = AliasSettings(allow_programs=True)
        e = self.expand("team@example.test", aliases, files=files, alias_settings=s)
        self.assertEqual(e.destinations, (ProgramTarget("cat", "team@example.test"),))


class ParseTargetsTests(SynchronousTestCase):
    """Splitting include files into targets."""

    def test_lines_and_commas(self) -> None:
        """One per line or comma separated; blank items are dropped."""
        self.assertEqual(parse_targets("a@x, b@x,,\n c@x \n\n"), ("a@x", "b@x", "c@x"))

    def test_comments(self) -> None:
        """# starts a comment at the start of an item or after white space."""
        self.assertEqual(
            parse_targets("# list\n  # indented\na@x # trailing\nb#c@x\n#d@x, e@x"),
            ("a@x", "b#c@x"),
        )

    def test_quotes(self) -> None:
        """Quotes protect commas and #, and are kept."""
        self.assertEqual(
            parse_targets('"|prog a,b # c", "x\\"y"@x'),
            ('"|prog a,b # c"', '"x\\"y"@x'),
        )

    @given(
        st.lists(st.text(alphabet="abcxyz@.|/", min_size=1, max_size=8), max_size=6),
        st.sampled_from([",", "\n", " , ", ",\n"]),
    )
    def test_join_split(self, items: list[str], sep: str) -> None:
        """Items without separators, quotes or # survive any joining."""
        self.assertEqual(parse_targets(sep.join(items)), tuple(items))


class IncludeReaderTests(SynchronousTestCase):
    """The default include reader over the file system."""

    def write(self, data: bytes) -> str:
        """A temporary file holding C{data}; its path."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_reads(self) -> None:
        """The file's text comes back."""
        path = self.write("bob@example.test\nzoë@example.test\n".encode())
        self.assertEqual(
            self.successResultOf(include_reader()(path)),
            "bob@example.test\nzoë@example.test\n",
        )

    def test_missing(self) -> None:
        """A missing file fails with OSError."""
        self.failureResultOf(include_reader()(os.path.abspath(self.mktemp())), OSError)

    def test_too_big(self) -> None:
        """A file over the limit fails with ValueError."""
        path = self.write(b"a@x\n" * (MAX_INCLUDE_SIZE // 4 + 1))
        self.failureResultOf(include_reader()(path), ValueError)

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 fails with ValueError."""
        self.failureResultOf(include_reader()(self.write(b"\xff\xfe")), ValueError)

    def test_runner(self) -> None:
        """An injected runner does the blocking read (a thread pool in the server)."""
        calls: list[Callable[[], str]] = []

        def run(f: Callable[[], str]) -> Deferred[str]:
            calls.append(f)
            return succeed(f())

        path = self.write(b"bob\n")
        self.assertEqual(self.successResultOf(include_reader(run)(path)), "bob\n")
        self.assertEqual(len(calls), 1)

    def test_expander_default_reader(self) -> None:
        """Without a reader the expander reads real include files."""
        path = self.write(b"bob@example.test\n")
        directory = MemoryDirectory(
            (D,), (BOB,), {"team@example.test": (f":include:{path}",)}
        )
        e = self.successResultOf(
            AliasExpander(directory, AliasSettings()).expand(
                Address.parse("team@example.test")
            )
        )
        self.assertEqual(e.destinations, (mailbox(BOB),))


class DescribeTests(ExpanderTestCase):
    """The step-by-step rendering the admin CLI prints."""

    def test_describe(self) -> None:
        """Steps indented by depth, then destinations, then failures with replies."""
        e = self.expand(
            "Team+x@Example.TEST",
            {
                "team@example.test": (
                    "alice@example.test",
                    "ops@example.test",
                    "ghost",
                ),
                "alice@example.test": ("alice@example.test", "x@remote.example"),
                "ops@example.test": ("|pager",),
            },
        )
        self.assertEqual(
            e.describe(),
            [
                "Team+x@example.test: subaddress -> Team@example.test",
                "Team@example.test: alias -> alice@example.test, ops@example.test, ghost",
                "  alice@example.test: alias -> alice@example.test, x@remote.example",
                "    alice@example.test: user -> mailbox alice@example.test",
                "    x@remote.example: remote -> remote x@remote.example",
                "  ops@example.test: alias -> |pager",
                "    |pager: failed -> |pager refused: program targets are not enabled (allow_programs)",
                "  ghost@example.test: failed -> unknown user ghost@example.test",
                "destinations:",
                "  mailbox alice@example.test",
                "  remote x@remote.example",
                "failures:",
                "  550 5.7.1 Delivery to this destination is not permitted"
                " (|pager refused: program targets are not enabled (allow_programs))",
                "  550 5.1.1 No such user here (unknown user ghost@example.test)",
            ],
        )

    def test_describe_nothing(self) -> None:
        """An expansion with no destinations says so."""
        self.assertEqual(
            self.expand("ghost@example.test").describe(),
            [
                "ghost@example.test: failed -> unknown user ghost@example.test",
                "destinations: none",
                "failures:",
                "  550 5.1.1 No such user here (unknown user ghost@example.test)",
            ],
        )


# Property tests over random alias graphs.

NAMES = ("a", "b", "c", "d", "e", "postmaster")
INCLUDES = ("/inc/1", "/inc/2", "/inc/3")
TARGETS = (
    *NAMES,
    *(f"{n}@{D}" for n in NAMES),
    "B@EXAMPLE.TEST",
    "c+tag@example.test",
    "r@remote.example",
    "R@Remote.Example",
    *(f":include:{p}" for p in INCLUDES),
    "|prog",
    "/file",
    "bad@",
)
_targets = st.lists(st.sampled_from(TARGETS), max_size=4)
_graphs = st.fixed_dictionaries(
    {
        "aliases": st.dictionaries(st.sampled_from(NAMES), _targets, max_size=6),
        "catch_all": st.none() | _targets,
        "users": st.dictionaries(st.sampled_from(NAMES), st.booleans(), max_size=6),
        "includes": st.dictionaries(st.sampled_from(INCLUDES), _targets, max_size=3),
        "include_sep": st.sampled_from([",", "\n", " ,\n", "\n# comment\n"]),
        "top": st.sampled_from(NAMES + ("c+tag", "zz")),
        "max_depth": st.integers(min_value=1, max_value=6),
        "allow": st.booleans(),
    }
)


def _node(target: str) -> str:
    """The reference model's node for a target (domain qualified, case-folded)."""
    if target.startswith(("|", "/", ":include:")) or target == "bad@":
        return target
    if "@" not in target:
        target = f"{target}@{D}"
    local, _, domain = target.lower().rpartition("@")
    return f"{local.partition('+')[0]}@{domain}"


def _reference(graph: dict[str, Any]) -> set[str]:
    """Destination keys by shortest alias-step distance, without loops' subtleties.

    Aliases, the catch-all and includes cost one step; a name that is neither
    alias nor user falls to the catch-all (no step) or, for postmaster, to
    the built-in mailbox.  Users that are also aliases are left out (they
    are reached only through the alias-to-self rule).
    """
    aliases = {f"{k}@{D}": v for k, v in graph["aliases"].items()}
    if graph["catch_all"] is not None:
        aliases[f"@{D}"] = graph["catch_all"]
    aliases.update({f":include:{k}": v for k, v in graph["includes"].items()})
    users = {f"{k}@{D}": v for k, v in graph["users"].items()}
    seen: dict[str, int] = {}
    queue = deque([(0, _node(graph["top"]))])
    expected = set()
    while queue:
        depth, node = queue.popleft()
        if seen.get(node, depth + 1) <= depth:
            continue
        seen[node] = depth
        if node in aliases:
            if depth < graph["max_depth"]:
                queue.extend((depth + 1, _node(t)) for t in aliases[node])
        elif node in users:
            if users[node]:
                expected.add(node)
        elif node.endswith("@remote.example") or (
            node in ("|prog", "/file") and graph["allow"]
        ):
            expected.add(node)
        elif node.endswith(f"@{D}") and f"@{D}" in aliases:
            queue.appendleft((depth, f"@{D}"))
        elif node == f"postmaster@{D}":
            expected.add(node)
    return expected


class PropertyTests(SynchronousTestCase):
    """Expansion over random alias graphs with cycles, self-references and includes."""

    @settings(max_examples=400, deadline=None)
    @given(_graphs)
    def test_random_graphs(self, graph: dict[str, Any]) -> None:
        """Expansion terminates; destinations are users (or the built-in
        postmaster), remote, or allowed programs and files; never an alias,
        never twice; no alias step beyond the depth limit; and exactly the
        destinations reachable within the limit."""
        aliases = {f"{k}@{D}": tuple(v) for k, v in graph["aliases"].items()}
        if graph["catch_all"] is not None:
            aliases[f"@{D}"] = tuple(graph["catch_all"])
        users = tuple(user(n, enabled) for n, enabled in graph["users"].items())
        files = {p: graph["include_sep"].join(t) for p, t in graph["includes"].items()}
        s = AliasSettings(
            max_depth=graph["max_depth"],
            allow_programs=graph["allow"],
            allow_files=graph["allow"],
        )
        expander = AliasExpander(
            MemoryDirectory((D,), users, aliases), s, memory_reader(files)
        )
        e = self.successResultOf(expander.expand(Address.parse(f"{graph['top']}@{D}")))

        keys = [d.key for d in e.destinations]
        self.assertEqual(len(keys), len(set(keys)))
        enabled = {u.address for u in users if u.enabled}
        for d in e.destinations:
            if isinstance(d, LocalMailbox):
                if d.user is None:
                    self.assertEqual(d.address, f"postmaster@{D}")
                    self.assertNotIn(d.address, aliases)
                else:
                    self.assertIn(d.address, enabled)
            elif isinstance(d, RemoteAddress):
                self.assertEqual(d.key, "r@remote.example")
            else:
                self.assertTrue(graph["allow"])
        for step in e.steps:
            self.assertLessEqual(step.depth, graph["max_depth"])
            if step.how in (How.ALIAS, How.CATCH_ALL, How.INCLUDE):
                self.assertLess(step.depth, graph["max_depth"])
        for f in e.failures:
            if isinstance(f, TooDeep):
                self.assertGreaterEqual(len(f.chain), graph["max_depth"] + 1)

        alias_users = {k for k in aliases if k in enabled}
        self.assertEqual(set(keys) - alias_users, _reference(graph))


class _CountingDirectory(MemoryDirectory):
    """A memory directory that counts the lookups the expander makes."""

    lookups = 0

    def is_local_domain(self, domain: str) -> Deferred[bool]:
        self.lookups += 1
        return super().is_local_domain(domain)

    def get_user(self, address: str) -> Deferred[User | None]:
        self.lookups += 1
        return super().get_user(address)

    def get_alias(self, address: str) -> Deferred[tuple[str, ...] | None]:
        self.lookups += 1
        return super().get_alias(address)


class _NoGeneration:
    """A directory that cannot tell when it changed (no generation())."""

    def __init__(self, inner: MemoryDirectory) -> None:
        self.inner = inner
        self.lookups = 0

    def is_local_domain(self, domain: str) -> Deferred[bool]:
        self.lookups += 1
        return self.inner.is_local_domain(domain)

    def get_user(self, address: str) -> Deferred[User | None]:
        self.lookups += 1
        return self.inner.get_user(address)

    def get_alias(self, address: str) -> Deferred[tuple[str, ...] | None]:
        self.lookups += 1
        return self.inner.get_alias(address)


class CacheTests(SynchronousTestCase):
    """Expansions are kept while the directory's generation stays put."""

    def setUp(self) -> None:
        self.directory = _CountingDirectory(
            (D, OTHER), (ALICE, BOB, CAROL), {f"list@{D}": ("alice", "bob")}
        )

    def expander(self, **kwargs: Any) -> AliasExpander:
        return AliasExpander(self.directory, AliasSettings(), **kwargs)

    def expand(self, expander: AliasExpander, address: str) -> Expansion:
        return self.successResultOf(expander.expand(Address.parse(address, utf8=True)))

    def test_second_expansion_kept(self) -> None:
        """The same address again gets the same answer without a lookup;
        unknown users and remote addresses too."""
        expander = self.expander()
        for address in (f"list@{D}", f"nobody@{D}", "x@remote.test"):
            first = self.expand(expander, address)
            lookups = self.directory.lookups
            self.assertEqual(self.expand(expander, address), first)
            self.assertEqual(self.directory.lookups, lookups)

    def test_same_as_uncached(self) -> None:
        """A kept answer equals what a fresh expansion gives."""
        expander = self.expander()
        fresh = self.expander(cache_size=0)
        for address in (f"list@{D}", f"Alice@{D}", f"alice+tag@{D}", f"nobody@{D}"):
            self.expand(expander, address)
            self.assertEqual(
                self.expand(expander, address), self.expand(fresh, address)
            )

    def test_form_as_given(self) -> None:
        """Addresses that differ only in case are kept apart (the steps and
        remote destinations show the form given)."""
        expander = self.expander()
        upper = self.expand(expander, "Bob@remote.test")
        lower = self.expand(expander, "bob@remote.test")
        self.assertEqual(upper.destinations, (RemoteAddress("Bob@remote.test"),))
        self.assertEqual(lower.destinations, (RemoteAddress("bob@remote.test"),))

    def test_change_seen(self) -> None:
        """After a change to the directory the next expansion asks again and
        sees it."""
        expander = self.expander()
        self.assertEqual(
            self.expand(expander, f"list@{D}").destinations,
            (mailbox(ALICE), mailbox(BOB)),
        )
        self.successResultOf(self.directory.add_alias(f"list@{D}", ("carol",)))
        self.assertEqual(
            self.expand(expander, f"list@{D}").destinations,
            (mailbox(ALICE), mailbox(BOB), mailbox(CAROL)),
        )
        self.successResultOf(self.directory.set_enabled(ALICE.address, False))
        self.assertEqual(
            self.expand(expander, ALICE.address).failures,
            (DisabledUser(ALICE.address),),
        )

    def test_change_during_expansion_not_kept(self) -> None:
        """An expansion that waited on the directory while it changed is
        not kept."""
        waiting: list[Deferred[User | None]] = []

        class Slow(_CountingDirectory):
            def get_user(self, address: str) -> Deferred[User | None]:
                d: Deferred[User | None] = Deferred()
                waiting.append(d)
                return d

        slow = Slow((D,), (ALICE,))
        expander = AliasExpander(slow, AliasSettings())
        d = expander.expand(Address.parse(ALICE.address))
        self.successResultOf(slow.set_enabled(ALICE.address, False))
        waiting.pop().callback(ALICE)
        self.assertEqual(self.successResultOf(d).destinations, (mailbox(ALICE),))
        again = expander.expand(Address.parse(ALICE.address))
        self.assertNoResult(again)
        self.assertEqual(len(waiting), 1)

    def test_include_not_kept(self) -> None:
        """Expansions that read an include file are made afresh each time
        (the file can change on its own)."""
        files = {"/etc/list": "alice\n"}
        self.successResultOf(
            self.directory.add_alias(f"inc@{D}", (":include:/etc/list",))
        )
        expander = self.expander(read_include=memory_reader(files))
        self.assertEqual(
            self.expand(expander, f"inc@{D}").destinations, (mailbox(ALICE),)
        )
        files["/etc/list"] = "bob\n"
        self.assertEqual(
            self.expand(expander, f"inc@{D}").destinations, (mailbox(BOB),)
        )

    def test_unreadable_include_not_kept(self) -> None:
        """An include file that could not be read is tried again next time
        (it may be back)."""
        files: dict[str, str] = {}
        self.successResultOf(
            self.directory.add_alias(f"inc@{D}", (":include:/etc/list",))
        )
        expander = self.expander(read_include=memory_reader(files))
        self.assertEqual(
            [type(f) for f in self.expand(expander, f"inc@{D}").failures],
            [IncludeUnreadable],
        )
        files["/etc/list"] = "alice\n"
        self.assertEqual(
            self.expand(expander, f"inc@{D}").destinations, (mailbox(ALICE),)
        )

    def test_without_generation(self) -> None:
        """A directory without generation() is asked every time."""
        plain = _NoGeneration(self.directory)
        expander = AliasExpander(plain, AliasSettings())  # type: ignore[arg-type]
        self.expand(expander, ALICE.address)
        lookups = plain.lookups
        self.expand(expander, ALICE.address)
        self.assertEqual(plain.lookups, 2 * lookups)

    def test_bounded(self) -> None:
        """At most cache_size expansions are kept; the oldest goes first."""
        expander = self.expander(cache_size=2)
        for address in (ALICE.address, BOB.address, CAROL.address):
            self.expand(expander, address)
        lookups = self.directory.lookups
        self.expand(expander, CAROL.address)
        self.expand(expander, BOB.address)
        self.assertEqual(self.directory.lookups, lookups)
        self.expand(expander, ALICE.address)
        self.assertGreater(self.directory.lookups, lookups)
