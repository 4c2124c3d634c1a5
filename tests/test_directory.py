"""Tests for the directory backends (L{twistedmail.aliases}).

One contract suite, L{DirectoryContractMixin}, runs against L{MemoryDirectory},
L{SQLiteDirectory} and L{FilesDirectory}: every method, every refusal with
its exact message, ordering and the alias merge and removal rules.  Then
what only one backend has: SQLite's migrations, the files' parsing, reloading
and atomic rewrites, and L{open_directory}.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.aliases.files import (
    FilesDirectory,
)
from twistedmail.aliases.sql import SQLiteDirectory
from twistedmail.interfaces import DirectoryError, IDirectoryAdmin, User

_S = TypeVar("_S")

Snapshot = tuple[list[str], list[User], list[tuple[str, tuple[str, ...]]]]

ALICE = User("alice@a.test", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "a/alice")
BOB = User("bob@a.test", "$2b$12$abcdefghijklmnopqrstuv", "a/bob", False, 1000)
CAROL = User("carol@b.test", "", "/srv/mail/carol", True, 0)


def _reactor() -> IReactorCore:
    from twisted.internet import reactor

    return reactor


def deferred_test(
    f: Callable[[_S], Coroutine[Any, Any, None]],
) -> Callable[[_S], Deferred[None]]:
    """Run an C{async def} test method as a trial test returning a Deferred."""

    @functools.wraps(f)
    def run(self: _S) -> Deferred[None]:
        return Deferred.fromCoroutine(f(self))

    return run


async def snapshot(directory: IDirectoryAdmin) -> Snapshot:
    """Everything a directory holds, for before/after comparisons."""
    return (
        await directory.list_domains(),
        await directory.list_users(),
        await directory.list_aliases(),
    )


class DirectoryContractMixin:
    """What every L{IDirectoryAdmin} backend does, exactly as MemoryDirectory."""

    directory: IDirectoryAdmin

    # Provided by the TestCase classes below.
    assertEqual: Callable[..., None]
    assertIs: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertIsInstance: Callable[..., None]
    addCleanup: Callable[..., None]
    fail: Callable[..., Any]

    def make_directory(self) -> IDirectoryAdmin:
        """A new, empty, unstarted directory."""
        raise NotImplementedError()

    def reopen_directory(self) -> IDirectoryAdmin:
        """A new unstarted directory on the same storage as L{directory}."""
        raise NotImplementedError()

    def setUp(self) -> Any:  # a Deferred, which trial waits for
        """Start a new, empty directory; stop it after the test."""
        self.directory = self.make_directory()
        return self.directory.start().addCallback(
            lambda _: self.addCleanup(self.directory.stop)
        )

    async def refused(self, d: Deferred[None], message: str) -> None:
        """The change fails with DirectoryError and exactly this message."""
        try:
            await d
        except DirectoryError as e:
            self.assertEqual(str(e), message)
        else:
            self.fail(f"no DirectoryError (expected {message!r})")

    async def two_domains(self) -> None:
        """Make a.test and b.test local."""
        await self.directory.add_domain("a.test")
        await self.directory.add_domain("b.test")

    @deferred_test
    async def test_interface(self) -> None:
        """The backend provides IDirectoryAdmin."""
        self.assertTrue(verifyObject(IDirectoryAdmin, self.directory))

    @deferred_test
    async def test_empty(self) -> None:
        """A new directory holds nothing and knows no domain."""
        self.assertEqual(await snapshot(self.directory), ([], [], []))
        self.assertFalse(await self.directory.is_local_domain("a.test"))
        self.assertIs(await self.directory.get_user("alice@a.test"), None)
        self.assertIs(await self.directory.get_alias("team@a.test"), None)
        self.assertEqual(await self.directory.list_users("a.test"), [])
        self.assertEqual(await self.directory.list_aliases("a.test"), [])

    @deferred_test
    async def test_add_domain(self) -> None:
        """Added domains are local and listed sorted."""
        await self.directory.add_domain("b.test")
        await self.directory.add_domain("a.test")
        await self.directory.add_domain("xn--bcher-kva.example")
        self.assertTrue(await self.directory.is_local_domain("a.test"))
        self.assertFalse(await self.directory.is_local_domain("c.test"))
        self.assertEqual(
            await self.directory.list_domains(),
            ["a.test", "b.test", "xn--bcher-kva.example"],
        )

    @deferred_test
    async def test_add_domain_twice(self) -> None:
        """Adding a domain that is local already is refused."""
        await self.directory.add_domain("a.test")
        await self.refused(
            self.directory.add_domain("a.test"), "domain a.test exists already"
        )
        self.assertEqual(await self.directory.list_domains(), ["a.test"])

    @deferred_test
    async def test_remove_domain(self) -> None:
        """A removed domain is no longer local."""
        await self.two_domains()
        await self.directory.remove_domain("a.test")
        self.assertFalse(await self.directory.is_local_domain("a.test"))
        self.assertEqual(await self.directory.list_domains(), ["b.test"])

    @deferred_test
    async def test_remove_missing_domain(self) -> None:
        """Removing a domain that is not local is refused."""
        await self.directory.add_domain("a.test")
        await self.refused(self.directory.remove_domain("b.test"), "no domain b.test")
        self.assertEqual(await self.directory.list_domains(), ["a.test"])

    @deferred_test
    async def test_remove_domain_with_user(self) -> None:
        """A domain with a user in it cannot be removed."""
        await self.two_domains()
        await self.directory.add_user(ALICE)
        before = await snapshot(self.directory)
        await self.refused(
            self.directory.remove_domain("a.test"),
            "domain a.test still has users or aliases",
        )
        self.assertEqual(await snapshot(self.directory), before)

    @deferred_test
    async def test_remove_domain_with_alias(self) -> None:
        """A domain with only an alias (even a catch-all) cannot be removed."""
        await self.two_domains()
        await self.directory.add_alias("@b.test", ("alice@a.test",))
        before = await snapshot(self.directory)
        await self.refused(
            self.directory.remove_domain("b.test"),
            "domain b.test still has users or aliases",
        )
        self.assertEqual(await snapshot(self.directory), before)
        await self.directory.remove_alias("@b.test")
        await self.directory.remove_domain("b.test")
        self.assertEqual(await self.directory.list_domains(), ["a.test"])

    @deferred_test
    async def test_add_user(self) -> None:
        """Users come back as added, every field kept, sorted by address."""
        await self.two_domains()
        for user in (CAROL, BOB, ALICE):
            await self.directory.add_user(user)
        self.assertEqual(await self.directory.get_user("alice@a.test"), ALICE)
        self.assertEqual(await self.directory.get_user("bob@a.test"), BOB)
        self.assertEqual(await self.directory.get_user("carol@b.test"), CAROL)
        self.assertIs(await self.directory.get_user("dave@a.test"), None)
        self.assertEqual(await self.directory.list_users(), [ALICE, BOB, CAROL])
        self.assertEqual(await self.directory.list_users("a.test"), [ALICE, BOB])
        self.assertEqual(await self.directory.list_users("b.test"), [CAROL])
        self.assertEqual(await self.directory.list_users("c.test"), [])

    @deferred_test
    async def test_add_user_international(self) -> None:
        """A UTF-8 local part in an IDNA domain is kept as its key."""
        await self.directory.add_domain("xn--bcher-kva.example")
        user = User("jörg@xn--bcher-kva.example", "x", "b/j")
        await self.directory.add_user(user)
        self.assertEqual(await self.directory.get_user(user.address), user)

    @deferred_test
    async def test_add_user_not_local(self) -> None:
        """A user outside the local domains is refused."""
        await self.directory.add_domain("b.test")
        await self.refused(
            self.directory.add_user(ALICE), "a.test is not a local domain"
        )
        self.assertEqual(await self.directory.list_users(), [])

    @deferred_test
    async def test_add_user_twice(self) -> None:
        """A second user with the same address is refused; the first stays."""
        await self.two_domains()
        await self.directory.add_user(ALICE)
        await self.refused(
            self.directory.add_user(User(ALICE.address, "other", "elsewhere")),
            "user alice@a.test exists already",
        )
        self.assertEqual(await self.directory.list_users(), [ALICE])

    @deferred_test
    async def test_set_password(self) -> None:
        """set_password replaces only the hash."""
        await self.two_domains()
        await self.directory.add_user(BOB)
        await self.directory.set_password("bob@a.test", "$argon2id$new")
        self.assertEqual(
            await self.directory.get_user("bob@a.test"),
            User("bob@a.test", "$argon2id$new", "a/bob", False, 1000),
        )

    @deferred_test
    async def test_set_enabled(self) -> None:
        """set_enabled turns a user on and off, nothing else."""
        await self.two_domains()
        await self.directory.add_user(ALICE)
        await self.directory.set_enabled("alice@a.test", False)
        user = await self.directory.get_user("alice@a.test")
        self.assertEqual(
            user, User(ALICE.address, ALICE.password_hash, "a/alice", False)
        )
        await self.directory.set_enabled("alice@a.test", True)
        self.assertEqual(await self.directory.get_user("alice@a.test"), ALICE)

    @deferred_test
    async def test_change_missing_user(self) -> None:
        """Changing or removing a user that does not exist is refused."""
        await self.two_domains()
        await self.directory.add_user(ALICE)
        before = await snapshot(self.directory)
        await self.refused(
            self.directory.set_password("bob@a.test", "x"), "no user bob@a.test"
        )
        await self.refused(
            self.directory.set_enabled("bob@a.test", False), "no user bob@a.test"
        )
        await self.refused(
            self.directory.remove_user("bob@a.test"), "no user bob@a.test"
        )
        self.assertEqual(await snapshot(self.directory), before)

    @deferred_test
    async def test_remove_user(self) -> None:
        """A removed user is gone; the others stay."""
        await self.two_domains()
        await self.directory.add_user(ALICE)
        await self.directory.add_user(BOB)
        await self.directory.remove_user("alice@a.test")
        self.assertIs(await self.directory.get_user("alice@a.test"), None)
        self.assertEqual(await self.directory.list_users(), [BOB])

    @deferred_test
    async def test_add_alias(self) -> None:
        """An alias keeps its targets in order, whatever their kind."""
        await self.two_domains()
        targets = (
            "alice@a.test",
            "Remote@Elsewhere.example",
            "|/usr/bin/prog arg, with comma",
            "/var/mail/archive file",
            ":include:/etc/mail/team",
            '"quoted user"@b.test',
            "back\\slash",
        )
        await self.directory.add_alias("team@a.test", targets)
        self.assertEqual(await self.directory.get_alias("team@a.test"), targets)
        self.assertIs(await self.directory.get_alias("other@a.test"), None)

    @deferred_test
    async def test_add_alias_merges(self) -> None:
        """Adding to an alias appends only the targets it lacks, in order."""
        await self.two_domains()
        await self.directory.add_alias("team@a.test", ("x@a.test", "y@a.test"))
        await self.directory.add_alias(
            "team@a.test", ("z@a.test", "x@a.test", "w@a.test")
        )
        self.assertEqual(
            await self.directory.get_alias("team@a.test"),
            ("x@a.test", "y@a.test", "z@a.test", "w@a.test"),
        )

    @deferred_test
    async def test_catch_all(self) -> None:
        """A catch-all alias has the key @domain."""
        await self.two_domains()
        await self.directory.add_alias("@b.test", ("alice@a.test",))
        self.assertEqual(await self.directory.get_alias("@b.test"), ("alice@a.test",))
        self.assertIs(await self.directory.get_alias("anyone@b.test"), None)

    @deferred_test
    async def test_list_aliases(self) -> None:
        """Aliases are listed sorted by key, all or one domain's."""
        await self.two_domains()
        await self.directory.add_alias("zed@a.test", ("z@a.test",))
        await self.directory.add_alias("@b.test", ("c@a.test",))
        await self.directory.add_alias("abe@a.test", ("b@a.test", "a@a.test"))
        await self.directory.add_alias("@a.test", ("d@a.test",))
        self.assertEqual(
            await self.directory.list_aliases(),
            [
                ("@a.test", ("d@a.test",)),
                ("@b.test", ("c@a.test",)),
                ("abe@a.test", ("b@a.test", "a@a.test")),
                ("zed@a.test", ("z@a.test",)),
            ],
        )
        self.assertEqual(
            await self.directory.list_aliases("b.test"), [("@b.test", ("c@a.test",))]
        )
        self.assertEqual(len(await self.directory.list_aliases("a.test")), 3)
        self.assertEqual(await self.directory.list_aliases("c.test"), [])

    @deferred_test
    async def test_add_alias_not_local(self) -> None:
        """An alias outside the local domains is refused, before the empty check."""
        await self.directory.add_domain("a.test")
        await self.refused(
            self.directory.add_alias("team@c.test", ("x@a.test",)),
            "c.test is not a local domain",
        )
        await self.refused(
            self.directory.add_alias("@c.test", ()), "c.test is not a local domain"
        )
        self.assertEqual(await self.directory.list_aliases(), [])

    @deferred_test
    async def test_add_alias_no_targets(self) -> None:
        """An alias needs a target; an existing one is left as it was."""
        await self.directory.add_domain("a.test")
        await self.refused(
            self.directory.add_alias("team@a.test", ()),
            "an alias needs at least one target",
        )
        await self.directory.add_alias("team@a.test", ("x@a.test",))
        await self.refused(
            self.directory.add_alias("team@a.test", ()),
            "an alias needs at least one target",
        )
        self.assertEqual(
            await self.directory.list_aliases(), [("team@a.test", ("x@a.test",))]
        )

    @deferred_test
    async def test_remove_whole_alias(self) -> None:
        """Removing an alias without targets removes all of it."""
        await self.two_domains()
        await self.directory.add_alias("team@a.test", ("x@a.test", "y@a.test"))
        await self.directory.add_alias("other@a.test", ("x@a.test",))
        await self.directory.remove_alias("team@a.test")
        self.assertIs(await self.directory.get_alias("team@a.test"), None)
        self.assertEqual(
            await self.directory.list_aliases(), [("other@a.test", ("x@a.test",))]
        )

    @deferred_test
    async def test_remove_some_targets(self) -> None:
        """Removing targets keeps the others in their order."""
        await self.directory.add_domain("a.test")
        await self.directory.add_alias(
            "team@a.test", ("w@a.test", "x@a.test", "y@a.test", "z@a.test")
        )
        await self.directory.remove_alias("team@a.test", ("y@a.test", "w@a.test"))
        self.assertEqual(
            await self.directory.get_alias("team@a.test"), ("x@a.test", "z@a.test")
        )
        await self.directory.add_alias("team@a.test", ("w@a.test",))
        self.assertEqual(
            await self.directory.get_alias("team@a.test"),
            ("x@a.test", "z@a.test", "w@a.test"),
        )

    @deferred_test
    async def test_remove_last_targets(self) -> None:
        """Removing every target removes the alias."""
        await self.directory.add_domain("a.test")
        await self.directory.add_alias("team@a.test", ("x@a.test", "y@a.test"))
        await self.directory.remove_alias("team@a.test", ("x@a.test", "y@a.test"))
        self.assertIs(await self.directory.get_alias("team@a.test"), None)
        self.assertEqual(await self.directory.list_aliases(), [])

    @deferred_test
    async def test_remove_missing_alias(self) -> None:
        """Removing an alias (or targets of one) that does not exist is refused."""
        await self.directory.add_domain("a.test")
        await self.refused(
            self.directory.remove_alias("team@a.test"), "no alias team@a.test"
        )
        await self.refused(
            self.directory.remove_alias("team@a.test", ("x@a.test",)),
            "no alias team@a.test",
        )

    @deferred_test
    async def test_remove_missing_target(self) -> None:
        """A target the alias lacks is refused, and no target is removed."""
        await self.directory.add_domain("a.test")
        await self.directory.add_alias("team@a.test", ("x@a.test", "y@a.test"))
        await self.refused(
            self.directory.remove_alias("team@a.test", ("x@a.test", "q@a.test")),
            "alias team@a.test has no target q@a.test",
        )
        self.assertEqual(
            await self.directory.get_alias("team@a.test"), ("x@a.test", "y@a.test")
        )

    @deferred_test
    async def test_reopen(self) -> None:
        """What was changed is there after stopping and opening again."""
        await self.two_domains()
        await self.directory.add_user(ALICE)
        await self.directory.add_user(BOB)
        await self.directory.add_user(CAROL)
        await self.directory.set_password("alice@a.test", "new")
        await self.directory.add_alias("team@a.test", ("alice@a.test", "|prog x"))
        await self.directory.add_alias("@b.test", ("carol@b.test",))
        await self.directory.remove_user("bob@a.test")
        before = await snapshot(self.directory)
        await self.directory.stop()
        again = self.reopen_directory()
        await again.start()
        self.addCleanup(again.stop)
        self.assertEqual(await snapshot(again), before)


class MemoryDirectoryTests(DirectoryContractMixin, TestCase):
    """The contract against the reference backend."""

    def make_directory(self) -> IDirectoryAdmin:
        return MemoryDirectory()

    def reopen_directory(self) -> IDirectoryAdmin:
        # Memory is its own storage: "reopening" is keeping the object.
        return self.directory


class SQLiteDirectoryTests(DirectoryContractMixin, TestCase):
    """The contract against SQLite, through adbapi on the real reactor."""

    def make_directory(self) -> IDirectoryAdmin:
        self.path = self.mktemp()
        return SQLiteDirectory(self.path, _reactor())

    def reopen_directory(self) -> IDirectoryAdmin:
        return SQLiteDirectory(self.path, _reactor())


class FilesDirectoryTests(DirectoryContractMixin, TestCase):
    """The contract against the three plain files (which start missing)."""

    def make_directory(self) -> IDirectoryAdmin:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        return self.reopen_directory()

    def reopen_directory(self) -> IDirectoryAdmin:
        return FilesDirectory(
            os.path.join(self.folder, "domains"),
            os.path.join(self.folder, "users"),
            os.path.join(self.folder, "aliases"),
            Clock(),
            2.0,
        )
