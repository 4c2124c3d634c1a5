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
import sqlite3
import stat
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from twistedmail.aliases.directory import MemoryDirectory, open_directory
from twistedmail.aliases.files import (
    DirectoryFileError,
    FilesDirectory,
    format_aliases,
    format_domains,
    format_users,
    parse_aliases,
    parse_domains,
    parse_users,
)
from twistedmail.aliases.sql import (
    CHECK_INTERVAL,
    MIGRATIONS,
    SQLDialect,
    SQLiteDirectory,
)
from twistedmail.config import DirectorySettings, ServerSettings, Settings
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
    async def test_generation_moves_with_changes(self) -> None:
        """generation() (for the alias expander's cache) gives a number that
        moves with every change and stays put without one."""
        d: Any = self.directory
        seen = [d.generation()]
        self.assertEqual(d.generation(), seen[0])
        for change in (
            lambda: d.add_domain("a.test"),
            lambda: d.add_user(ALICE),
            lambda: d.set_password(ALICE.address, "x"),
            lambda: d.set_enabled(ALICE.address, False),
            lambda: d.add_alias("list@a.test", (ALICE.address,)),
            lambda: d.remove_alias("list@a.test"),
            lambda: d.remove_user(ALICE.address),
            lambda: d.remove_domain("a.test"),
        ):
            await change()
            seen.append(d.generation())
        self.assertNotIn(None, seen)
        self.assertEqual(len(set(seen)), len(seen), seen)

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
        """An empty MemoryDirectory."""
        return MemoryDirectory()

    def reopen_directory(self) -> IDirectoryAdmin:
        """The same object: memory is its own storage."""
        return self.directory


class SQLiteDirectoryTests(DirectoryContractMixin, TestCase):
    """The contract against SQLite, through adbapi on the real reactor."""

    def make_directory(self) -> IDirectoryAdmin:
        """A directory in a new SQLite file."""
        self.path = self.mktemp()
        return SQLiteDirectory(self.path, _reactor())

    def reopen_directory(self) -> IDirectoryAdmin:
        """Another directory on the same SQLite file."""
        return SQLiteDirectory(self.path, _reactor())


class FilesDirectoryTests(DirectoryContractMixin, TestCase):
    """The contract against the three plain files (which start missing)."""

    def make_directory(self) -> IDirectoryAdmin:
        """A directory over three files in a new, empty folder."""
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        return self.reopen_directory()

    def reopen_directory(self) -> IDirectoryAdmin:
        """Another directory over the same three files."""
        return FilesDirectory(
            os.path.join(self.folder, "domains"),
            os.path.join(self.folder, "users"),
            os.path.join(self.folder, "aliases"),
            Clock(),
            2.0,
        )


def _versions(path: str) -> list[int]:
    """The schema steps recorded in a SQLite directory file."""
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT version FROM schema_version")]


def _tables(path: str) -> set[str]:
    """The tables in a SQLite file."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows}


class SQLiteMigrationTests(TestCase):
    """Schema steps are applied once, in order, atomically, and recorded."""

    def setUp(self) -> None:
        """A path for the database file."""
        self.path = self.mktemp()

    async def open(
        self, migrations: tuple[tuple[int, tuple[str, ...]], ...] = MIGRATIONS
    ) -> SQLiteDirectory:
        """A started directory on self.path, stopped after the test."""
        directory = SQLiteDirectory(self.path, _reactor(), migrations=migrations)
        await directory.start()
        self.addCleanup(directory.stop)
        return directory

    @deferred_test
    async def test_recorded_once(self) -> None:
        """A new file gets every step, recorded; reopening adds none, keeps data."""
        directory = await self.open()
        self.assertEqual(_versions(self.path), [n for n, _ in MIGRATIONS])
        self.assertEqual(
            _tables(self.path), {"schema_version", "domains", "users", "aliases"}
        )
        await directory.add_domain("a.test")
        await directory.stop()
        again = await self.open()
        self.assertEqual(_versions(self.path), [n for n, _ in MIGRATIONS])
        self.assertEqual(await again.list_domains(), ["a.test"])

    @deferred_test
    async def test_later_step(self) -> None:
        """A step added later is applied to an existing database, then never again."""
        first = await self.open()
        await first.add_domain("a.test")
        await first.stop()
        later = (*MIGRATIONS, (2, ("CREATE TABLE notes (id INTEGER)",)))
        second = await self.open(later)
        await second.stop()
        third = await self.open(later)
        self.assertEqual(_versions(self.path), [1, 2])
        self.assertIn("notes", _tables(self.path))
        self.assertEqual(await third.list_domains(), ["a.test"])

    @deferred_test
    async def test_failed_step_is_atomic(self) -> None:
        """A step that fails leaves no trace and fails start()."""
        broken = (*MIGRATIONS, (2, ("CREATE TABLE notes (id INTEGER)", "NOT SQL")))
        directory = SQLiteDirectory(self.path, _reactor(), migrations=broken)
        try:
            await directory.start()
        except sqlite3.OperationalError:
            pass
        else:
            self.fail("start() succeeded")
        self.assertEqual(_versions(self.path), [1])
        self.assertNotIn("notes", _tables(self.path))
        good = await self.open()
        self.assertEqual(await good.list_domains(), [])

    @deferred_test
    async def test_newer_database(self) -> None:
        """A database from a newer twistedmail is refused, not guessed at."""
        directory = await self.open()
        await directory.stop()
        with sqlite3.connect(self.path) as db:
            db.execute("INSERT INTO schema_version (version) VALUES (99)")
        newer = SQLiteDirectory(self.path, _reactor())
        try:
            await newer.start()
        except DirectoryError as e:
            self.assertIn("version 99", str(e))
        else:
            self.fail("start() succeeded")
        # A failed start closes the pool: nothing is left to stop.
        await self.assertFailure(newer.list_domains(), DirectoryError)

    @deferred_test
    async def test_wal_and_foreign_keys(self) -> None:
        """The file uses WAL; the pool's connection enforces foreign keys."""
        await self.open()
        with sqlite3.connect(self.path) as db:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")
        orphan = (
            *MIGRATIONS,
            (
                2,
                (
                    "INSERT INTO users (address, domain, password_hash, mailbox,"
                    " enabled) VALUES ('a@nowhere.test', 'nowhere.test', '', 'x', 1)",
                ),
            ),
        )
        directory = SQLiteDirectory(self.path, _reactor(), migrations=orphan)
        try:
            await directory.start()
        except DirectoryError as e:
            self.assertIn("FOREIGN KEY", str(e))
        else:
            self.fail("start() succeeded")
        self.assertEqual(_versions(self.path), [1])

    @deferred_test
    async def test_not_started(self) -> None:
        """Queries before start() fail with DirectoryError."""
        directory = SQLiteDirectory(self.path, _reactor())
        await self.assertFailure(directory.list_domains(), DirectoryError)
        self.assertFalse(os.path.exists(self.path))

    def test_migration_numbers(self) -> None:
        """Step numbers must be positive and strictly increasing."""
        for bad in [
            ((2, ()), (1, ())),
            ((1, ()), (1, ())),
            ((0, ()),),
        ]:
            self.assertRaises(
                ValueError, SQLiteDirectory, self.path, _reactor(), migrations=bad
            )


def _insert_user(path: str, user: User) -> None:
    """Add a user the way another process would: its own connection, commit."""
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO users (address, domain, password_hash, mailbox, enabled,"
            " quota) VALUES (?, ?, ?, ?, ?, ?)",
            (
                user.address,
                user.domain,
                user.password_hash,
                user.mailbox,
                user.enabled,
                user.quota,
            ),
        )
    db.close()


class SQLiteCacheTests(TestCase):
    """Lookups are cached until the database changes, whoever changes it."""

    async def open(self, cache_size: int = 100) -> SQLiteDirectory:
        """A started directory with a.test local and ALICE, stopped after.

        Its change counter is timed by C{self.clock}.
        """
        self.path = self.mktemp()
        self.clock = Clock()
        directory = SQLiteDirectory(
            self.path, _reactor(), cache_size=cache_size, clock=self.clock
        )
        await directory.start()
        self.addCleanup(directory.stop)
        await directory.add_domain("a.test")
        await directory.add_user(ALICE)
        return directory

    @deferred_test
    async def test_repeated_lookups_answer_at_once(self) -> None:
        """A second lookup of the same key (found or not) needs no query."""
        directory = await self.open()
        for lookup in (
            lambda: directory.get_user(ALICE.address),
            lambda: directory.get_user("nobody@a.test"),
            lambda: directory.get_alias("alias@a.test"),
            lambda: directory.is_local_domain("a.test"),
            lambda: directory.is_local_domain("b.test"),
        ):
            first = lookup()
            self.assertFalse(first.called)
            expected = await first
            again = lookup()
            self.assertTrue(again.called)
            self.assertEqual(await again, expected)

    @deferred_test
    async def test_change_by_another_connection(self) -> None:
        """A user added by another process is found check_interval later."""
        directory = await self.open()
        self.assertIsNone(await directory.get_user(BOB.address))
        _insert_user(self.path, BOB)
        self.clock.advance(CHECK_INTERVAL / 2)
        self.assertIsNone(await directory.get_user(BOB.address))
        self.clock.advance(CHECK_INTERVAL / 2)
        self.assertEqual(await directory.get_user(BOB.address), BOB)

    @deferred_test
    async def test_unchanged_database_keeps_cache(self) -> None:
        """When nothing changed, asking the counter again keeps the answers."""
        directory = await self.open()
        await directory.get_user(ALICE.address)
        self.clock.advance(CHECK_INTERVAL * 3)
        self.assertTrue(directory.get_user(ALICE.address).called)

    @deferred_test
    async def test_change_by_another_directory(self) -> None:
        """Changes through another directory object on the file are seen."""
        directory = await self.open()
        other = SQLiteDirectory(self.path, _reactor())
        await other.start()
        self.addCleanup(other.stop)
        self.assertFalse(await directory.is_local_domain("b.test"))
        self.assertIsNone(await directory.get_alias("list@a.test"))
        await other.add_domain("b.test")
        await other.add_alias("list@a.test", ("alice@a.test",))
        self.clock.advance(CHECK_INTERVAL)
        self.assertTrue(await directory.is_local_domain("b.test"))
        self.assertEqual(await directory.get_alias("list@a.test"), ("alice@a.test",))
        await other.set_enabled(ALICE.address, False)
        self.clock.advance(CHECK_INTERVAL)
        user = await directory.get_user(ALICE.address)
        assert user is not None
        self.assertFalse(user.enabled)

    @deferred_test
    async def test_change_by_itself(self) -> None:
        """The directory's own changes are seen by its next lookup at once."""
        directory = await self.open()
        self.assertTrue((await directory.get_user(ALICE.address) or BOB).enabled)
        await directory.set_enabled(ALICE.address, False)
        self.assertFalse((await directory.get_user(ALICE.address) or ALICE).enabled)
        await directory.remove_user(ALICE.address)
        self.assertIsNone(await directory.get_user(ALICE.address))
        self.assertFalse(await directory.is_local_domain("b.test"))
        await directory.add_domain("b.test")
        self.assertTrue(await directory.is_local_domain("b.test"))

    @deferred_test
    async def test_own_change_during_lookup(self) -> None:
        """A lookup in flight while the directory changes is not kept."""
        directory = await self.open()
        in_flight = directory.get_user(BOB.address)
        change = directory.add_user(BOB)
        self.assertIsNone(await in_flight)
        await change
        self.assertEqual(await directory.get_user(BOB.address), BOB)

    @deferred_test
    async def test_change_during_lookup(self) -> None:
        """A commit while a lookup is in flight: the next lookup sees it."""
        directory = await self.open()
        in_flight = directory.get_user(BOB.address)
        _insert_user(self.path, BOB)
        await in_flight  # either answer: the query raced the commit
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(await directory.get_user(BOB.address), BOB)
        self.assertEqual(await directory.get_user(BOB.address), BOB)

    @deferred_test
    async def test_bounded(self) -> None:
        """At most cache_size answers are kept; the oldest goes first."""
        directory = await self.open(cache_size=2)
        for key in ("x@a.test", "y@a.test", "z@a.test"):
            await directory.get_user(key)
        self.assertTrue(directory.get_user("z@a.test").called)
        self.assertTrue(directory.get_user("y@a.test").called)
        late = directory.get_user("x@a.test")
        self.assertFalse(late.called)
        await late

    @deferred_test
    async def test_generation_follows_other_connections(self) -> None:
        """Another connection's commit moves generation() once the change
        counter shows it (check_interval later), as it drops the cache."""
        directory = await self.open()
        before = directory.generation()
        _insert_user(self.path, BOB)
        self.assertEqual(directory.generation(), before)
        self.clock.advance(CHECK_INTERVAL)
        after = directory.generation()
        self.assertIsNotNone(after)
        self.assertNotEqual(after, before)
        self.assertEqual(directory.generation(), after)

    @deferred_test
    async def test_no_generation_without_cache(self) -> None:
        """With cache_size 0 generation() is None: nothing may be kept."""
        directory = await self.open(cache_size=0)
        self.assertIsNone(directory.generation())

    @deferred_test
    async def test_off(self) -> None:
        """With cache_size 0 every lookup is a query."""
        directory = await self.open(cache_size=0)
        await directory.get_user(ALICE.address)
        again = directory.get_user(ALICE.address)
        self.assertFalse(again.called)
        self.assertEqual(await again, ALICE)

    @deferred_test
    async def test_restart(self) -> None:
        """Stopping drops the cache; a restarted directory reads again."""
        directory = await self.open()
        await directory.get_user(BOB.address)
        await directory.stop()
        _insert_user(self.path, BOB)
        await directory.start()
        self.assertEqual(await directory.get_user(BOB.address), BOB)


class SQLDialectTests(SynchronousTestCase):
    """Query templates become each DB-API parameter style."""

    template = "SELECT a FROM t WHERE b = {b} AND c LIKE '%x' AND d = {b} OR e = {e}"

    def compiled(self, style: Any) -> tuple[str, object]:
        """The SQL and the arguments for b=1, e=2."""
        statement = SQLDialect("m", style).compile(self.template)
        return statement.sql, statement.args({"b": 1, "e": 2, "unused": 3})

    def test_qmark(self) -> None:
        """qmark (SQLite): ? and a tuple in order, repeats repeated."""
        self.assertEqual(
            self.compiled("qmark"),
            (
                "SELECT a FROM t WHERE b = ? AND c LIKE '%x' AND d = ? OR e = ?",
                (1, 1, 2),
            ),
        )

    def test_pyformat(self) -> None:
        """pyformat (psycopg): %(name)s, a dict, and literal % doubled."""
        self.assertEqual(
            self.compiled("pyformat"),
            (
                "SELECT a FROM t WHERE b = %(b)s AND c LIKE '%%x' AND d = %(b)s"
                " OR e = %(e)s",
                {"b": 1, "e": 2},
            ),
        )

    def test_format(self) -> None:
        """format: %s and a tuple, literal % doubled."""
        self.assertEqual(
            self.compiled("format"),
            (
                "SELECT a FROM t WHERE b = %s AND c LIKE '%%x' AND d = %s OR e = %s",
                (1, 1, 2),
            ),
        )

    def test_named_and_numeric(self) -> None:
        """named gives :name and a dict; numeric gives :1, :2..."""
        self.assertEqual(
            self.compiled("named")[0],
            "SELECT a FROM t WHERE b = :b AND c LIKE '%x' AND d = :b OR e = :e",
        )
        self.assertEqual(
            self.compiled("numeric"),
            (
                "SELECT a FROM t WHERE b = :1 AND c LIKE '%x' AND d = :2 OR e = :3",
                (1, 1, 2),
            ),
        )


class FilesTestMixin:
    """Three directory files in a temporary folder, and a fake clock."""

    mktemp: Callable[[], str]
    addCleanup: Callable[..., None]
    successResultOf: Callable[..., Any]
    failureResultOf: Callable[..., Any]

    interval = 5.0

    def setUp(self) -> None:
        """Make the folder and the clock."""
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.clock = Clock()

    def path(self, name: str) -> str:
        """The path of one of the files: domains, users or aliases."""
        return os.path.join(self.folder, name)

    def write(self, name: str, text: str | bytes) -> None:
        """Write a file in place (as an editor that keeps the inode might)."""
        data = text.encode() if isinstance(text, str) else text
        with open(self.path(name), "wb") as f:
            f.write(data)

    def read(self, name: str) -> str:
        """A file's text."""
        with open(self.path(name), encoding="utf-8") as f:
            return f.read()

    def make(self) -> FilesDirectory:
        """A directory over the three files (not started)."""
        return FilesDirectory(
            self.path("domains"),
            self.path("users"),
            self.path("aliases"),
            self.clock,
            self.interval,
        )

    def started(self) -> FilesDirectory:
        """A started directory, stopped after the test."""
        directory = self.make()
        self.successResultOf(directory.start())
        self.addCleanup(directory.stop)
        return directory


class FilesLoadTests(FilesTestMixin, SynchronousTestCase):
    """Reading the three files."""

    def test_formats(self) -> None:
        """Comments, blanks, optional fields, continuations and quotes."""
        self.write(
            "domains",
            "# local domains\n\nA.test   # the first\nBücher.example\n",
        )
        self.write(
            "users",
            "# address:hash:mailbox:enabled:quota\n"
            "Alice@A.TEST:$argon2id$x:a/alice::\n"
            "\n"
            "  bob@a.test : $2b$12$y : a/bob : 0 : 1000  \n"
            "carol@xn--bcher-kva.example:h:/srv/carol:1:\r\n",
        )
        self.write(
            "aliases",
            "# aliases(5)\n"
            "Team@A.test: alice@a.test,\n"
            "    bob@a.test\n"
            "# a comment inside an entry\n"
            '\t"|/usr/bin/prog arg, more", /var/log/x\n'
            "@A.TEST: alice\n"
            "ROOT: :include:/etc/admins\n"
            'q@a.test: "a \\"b\\" \\\\c", "x y"@a.test\n',
        )
        directory = self.started()
        self.assertEqual(
            self.successResultOf(directory.list_domains()),
            ["a.test", "xn--bcher-kva.example"],
        )
        self.assertEqual(
            self.successResultOf(directory.list_users()),
            [
                User("alice@a.test", "$argon2id$x", "a/alice", True, None),
                User("bob@a.test", "$2b$12$y", "a/bob", False, 1000),
                User("carol@xn--bcher-kva.example", "h", "/srv/carol", True, None),
            ],
        )
        self.assertEqual(
            self.successResultOf(directory.list_aliases()),
            [
                ("@a.test", ("alice",)),
                ("q@a.test", ('a "b" \\c', '"x y"@a.test')),
                ("root", (":include:/etc/admins",)),
                (
                    "team@a.test",
                    (
                        "alice@a.test",
                        "bob@a.test",
                        "|/usr/bin/prog arg, more",
                        "/var/log/x",
                    ),
                ),
            ],
        )

    def test_missing_files(self) -> None:
        """Missing files are empty ones."""
        directory = self.started()
        self.assertEqual(self.successResultOf(directory.list_domains()), [])
        self.assertEqual(self.successResultOf(directory.list_aliases()), [])

    def test_bare_local_part(self) -> None:
        """A bare local part applies to every local domain without its own key."""
        self.write("domains", "a.test\nb.test\n")
        self.write("aliases", "root: admin@a.test\nroot@b.test: other@b.test\n")
        directory = self.started()
        self.assertEqual(
            self.successResultOf(directory.get_alias("root@a.test")),
            ("admin@a.test",),
        )
        self.assertEqual(
            self.successResultOf(directory.get_alias("root@b.test")),
            ("other@b.test",),
        )
        self.assertIsNone(self.successResultOf(directory.get_alias("root@c.test")))
        self.assertIsNone(self.successResultOf(directory.get_alias("@a.test")))
        self.assertEqual(self.successResultOf(directory.list_aliases("a.test")), [])
        self.assertEqual(
            [k for k, _ in self.successResultOf(directory.list_aliases())],
            ["root", "root@b.test"],
        )
        self.successResultOf(directory.remove_alias("root"))
        self.assertIsNone(self.successResultOf(directory.get_alias("root@a.test")))
        self.assertEqual(
            self.read("aliases").splitlines()[1:], ["root@b.test: other@b.test"]
        )

    def assertFileError(
        self, name: str, text: str | bytes, line: int, words: str
    ) -> None:
        """start() fails naming the file and line, and nothing is loaded."""
        good = {
            "domains": "# local\na.test\nb.test\n",
            "users": "alice@a.test:h:a/alice::\n",
            "aliases": "team@a.test: alice@a.test\n",
        }
        for other, content in good.items():
            self.write(other, content)
        self.write(name, text)
        directory = self.make()
        error = self.failureResultOf(directory.start(), DirectoryFileError).value
        self.assertEqual((error.path, error.line), (self.path(name), line))
        self.assertTrue(
            str(error).startswith(f"{self.path(name)}:{line}: "), str(error)
        )
        self.assertIn(words, str(error))
        self.assertEqual(self.successResultOf(directory.list_domains()), [])
        self.assertEqual(self.successResultOf(directory.list_users()), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_domain(self) -> None:
        """A malformed domain."""
        self.assertFileError("domains", "a.test\n\n# x\nbad_domain!\n", 4, "bad domain")

    def test_repeated_domain(self) -> None:
        """A domain listed twice (after normalisation)."""
        self.assertFileError(
            "domains", "a.test\nA.TEST\n", 2, "repeated (first on line 1)"
        )

    def test_bad_user_address(self) -> None:
        """A malformed user address."""
        self.assertFileError(
            "users", "# c\nalice@a.test:h:m::\nnot an address:h:m::\n", 3, "bad address"
        )

    def test_bad_enabled(self) -> None:
        """An enabled flag other than 1, 0 or empty."""
        self.assertFileError(
            "users", "alice@a.test:h:m:yes:\n", 1, "enabled must be 1, 0 or empty"
        )

    def test_bad_quota(self) -> None:
        """A quota that is not a whole number of bytes."""
        self.assertFileError("users", "alice@a.test:h:m:1:10MB\n", 1, "quota must be")
        self.assertFileError("users", "alice@a.test:h:m:1:-5\n", 1, "quota must be")

    def test_missing_fields(self) -> None:
        """A users line with too few colons."""
        self.assertFileError(
            "users", "\nalice@a.test:h:m\n", 2, "expected address:password_hash"
        )

    def test_user_not_local(self) -> None:
        """A user outside the local domains."""
        self.assertFileError(
            "users", "x@c.test:h:m::\n", 1, "c.test is not a local domain"
        )

    def test_repeated_user(self) -> None:
        """The same user twice, differing only in case."""
        self.assertFileError(
            "users",
            "alice@a.test:h:m::\nALICE@a.test:h:m::\n",
            2,
            "user alice@a.test repeated (first on line 1)",
        )

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8, on the line where they are."""
        self.assertFileError(
            "users", b"alice@a.test:h:m::\n\xff:h:m::\n", 2, "not valid UTF-8"
        )

    def test_missing_colon(self) -> None:
        """An alias line with no colon after the key."""
        self.assertFileError(
            "aliases", "team@a.test: x\nother@a.test x@a.test\n", 2, "missing ':'"
        )

    def test_continuation_without_key(self) -> None:
        """A continuation line before any key."""
        self.assertFileError(
            "aliases", "# c\n   x@a.test\n", 2, "continuation line without an alias key"
        )

    def test_bad_alias_key(self) -> None:
        """Malformed full, catch-all and bare keys."""
        self.assertFileError("aliases", "a b@a.test: x\n", 1, "bad address")
        self.assertFileError("aliases", "@-bad-: x\n", 1, "bad catch-all key")
        self.assertFileError("aliases", "a..b: x\n", 1, "bad alias key")
        self.assertFileError("aliases", ": x\n", 1, "empty alias key")

    def test_alias_not_local(self) -> None:
        """Full and catch-all keys must be in a local domain."""
        self.assertFileError(
            "aliases", "x@c.test: y\n", 1, "c.test is not a local domain"
        )
        self.assertFileError("aliases", "@c.test: y\n", 1, "c.test is not a local")

    def test_repeated_alias(self) -> None:
        """The same key twice."""
        self.assertFileError(
            "aliases",
            "root: x\n\nROOT: y\n",
            3,
            "alias root repeated (first on line 1)",
        )

    def test_alias_without_targets(self) -> None:
        """A key with nothing after the colon (nor continued)."""
        self.assertFileError(
            "aliases", "x: y\nteam@a.test:  ,\n", 2, "alias team@a.test has no targets"
        )

    def test_unquoted_space(self) -> None:
        """A program with arguments must be quoted."""
        self.assertFileError(
            "aliases", "x: y\n  |/bin/prog arg\n", 2, "put the target in double quotes"
        )

    def test_unterminated_quote(self) -> None:
        """A quote left open at the end of the line."""
        self.assertFileError(
            "aliases", 'x: "|/bin/prog\n', 1, "unterminated double quote"
        )

    def test_unreadable(self) -> None:
        """A path that cannot be read is an error for the whole file (line 0)."""
        for name in ("domains", "users", "aliases"):
            self.write(name, "")
        os.remove(self.path("users"))
        os.makedirs(self.path("users"))
        error = self.failureResultOf(self.make().start(), DirectoryFileError).value
        self.assertEqual((error.path, error.line), (self.path("users"), 0))
        self.assertIn("cannot read", str(error))


class FilesReloadTests(FilesTestMixin, SynchronousTestCase):
    """Noticing changed files on the clock, and surviving bad edits."""

    def test_reload_on_change(self) -> None:
        """A change is picked up at the next check, not before."""
        self.write("domains", "a.test\n")
        directory = self.started()
        self.write("domains", "a.test\nb.test\n")
        self.clock.advance(self.interval - 1)
        self.assertFalse(self.successResultOf(directory.is_local_domain("b.test")))
        self.clock.advance(1)
        self.assertTrue(self.successResultOf(directory.is_local_domain("b.test")))

    def test_reload_moves_generation(self) -> None:
        """A reload moves generation(); a check that finds nothing new does
        not."""
        self.write("domains", "a.test\n")
        directory = self.started()
        first = directory.generation()
        self.clock.advance(self.interval)
        self.assertEqual(directory.generation(), first)
        self.write("domains", "a.test\nb.test\n")
        self.clock.advance(self.interval)
        self.assertNotEqual(directory.generation(), first)

    def test_reload_on_new_inode(self) -> None:
        """A file replaced by one of the same size and mtime is noticed too."""
        self.write("domains", "a.test\n")
        directory = self.started()
        before = os.stat(self.path("domains"))
        with open(self.path("other"), "w") as f:
            f.write("b.test\n")
        os.utime(self.path("other"), ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(self.path("other"), self.path("domains"))
        self.clock.advance(self.interval)
        self.assertEqual(self.successResultOf(directory.list_domains()), ["b.test"])

    def test_file_created_and_removed(self) -> None:
        """A file that appears is read; one that goes away empties its part."""
        directory = self.started()
        self.write("domains", "a.test\n")
        self.clock.advance(self.interval)
        self.assertEqual(self.successResultOf(directory.list_domains()), ["a.test"])
        os.remove(self.path("domains"))
        self.clock.advance(self.interval)
        self.assertEqual(self.successResultOf(directory.list_domains()), [])

    def test_reload_error_keeps_old(self) -> None:
        """A bad edit is logged once; the old data stays; a fix is picked up."""
        self.write("domains", "a.test\n")
        self.write("users", "alice@a.test:h:m::\n")
        directory = self.started()
        self.write("users", "alice@a.test:h:m::\nbob@a.test:h:m:maybe:\n")
        with capturedLogs() as events:
            self.clock.advance(self.interval)
            self.clock.advance(self.interval)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn(f"{self.path('users')}:2: enabled", errors[0]["error"])
        self.assertEqual(
            [u.address for u in self.successResultOf(directory.list_users())],
            ["alice@a.test"],
        )
        # Changes are refused while the file is broken: the edit is kept.
        failure = self.failureResultOf(directory.add_domain("b.test"), DirectoryError)
        self.assertIn(f"{self.path('users')}:2:", str(failure.value))
        self.assertEqual(self.read("domains"), "a.test\n")
        self.write("users", "alice@a.test:h:m::\nbob@a.test:h:m:0:\n")
        self.clock.advance(self.interval)
        self.assertEqual(
            [u.address for u in self.successResultOf(directory.list_users())],
            ["alice@a.test", "bob@a.test"],
        )
        self.successResultOf(directory.add_domain("b.test"))

    def test_change_sees_edit_first(self) -> None:
        """An admin change made before the next check keeps an outside edit."""
        self.write("domains", "a.test\n")
        directory = self.started()
        self.write("domains", "a.test\nb.test\n")
        self.successResultOf(directory.add_domain("c.test"))
        self.assertEqual(
            parse_domains(self.read("domains"), "domains"),
            ("a.test", "b.test", "c.test"),
        )

    def test_own_write_is_not_reloaded(self) -> None:
        """The directory's own rewrite does not count as a change."""
        directory = self.started()
        self.successResultOf(directory.add_domain("a.test"))
        with capturedLogs() as events:
            self.clock.advance(self.interval)
        self.assertEqual([e for e in events if "reloaded" in e["log_format"]], [])
        self.write("domains", "a.test\nb.test\n")
        with capturedLogs() as events:
            self.clock.advance(self.interval)
        self.assertEqual(len([e for e in events if "reloaded" in e["log_format"]]), 1)

    def test_stop(self) -> None:
        """Stopping cancels the checks."""
        directory = self.make()
        self.successResultOf(directory.start())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(directory.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FilesWriteTests(FilesTestMixin, SynchronousTestCase):
    """Admin changes rewrite one file, atomically, sorted and readable."""

    def test_atomic_rename(self) -> None:
        """The file is replaced by rename: old readers keep the old text,
        the mode is kept, no temporary file is left behind."""
        self.write("domains", "b.test\n")
        os.chmod(self.path("domains"), 0o640)
        directory = self.started()
        before = os.stat(self.path("domains"))
        with open(self.path("domains")) as old:
            self.successResultOf(directory.add_domain("a.test"))
            self.assertEqual(old.read(), "b.test\n")
        after = os.stat(self.path("domains"))
        self.assertNotEqual(before.st_ino, after.st_ino)
        self.assertEqual(stat.S_IMODE(after.st_mode), 0o640)
        self.assertEqual(sorted(os.listdir(self.folder)), ["domains"])
        self.assertEqual(
            self.read("domains"),
            "# twistedmail local domains, one per line.\na.test\nb.test\n",
        )

    def test_new_files_private(self) -> None:
        """A file made by a change is readable by its owner only."""
        directory = self.started()
        self.successResultOf(directory.add_domain("a.test"))
        self.successResultOf(directory.add_user(ALICE))
        self.assertEqual(stat.S_IMODE(os.stat(self.path("users")).st_mode), 0o600)

    def test_texts(self) -> None:
        """The files written are sorted, one entry a line, quoted as needed."""
        directory = self.started()
        self.successResultOf(directory.add_domain("b.test"))
        self.successResultOf(directory.add_domain("a.test"))
        self.successResultOf(directory.add_user(BOB))
        self.successResultOf(directory.add_user(ALICE))
        self.successResultOf(
            directory.add_alias("team@a.test", ("bob@a.test", "|/bin/prog a,b"))
        )
        many = tuple(f"member{i:02d}@a.test" for i in range(8))
        self.successResultOf(directory.add_alias("all@a.test", many))
        self.assertEqual(
            self.read("users").splitlines()[1:],
            [
                f"{ALICE.address}:{ALICE.password_hash}:a/alice:1:",
                "bob@a.test:$2b$12$abcdefghijklmnopqrstuv:a/bob:0:1000",
            ],
        )
        lines = self.read("aliases").splitlines()
        self.assertEqual(lines[-1], 'team@a.test: bob@a.test, "|/bin/prog a,b"')
        self.assertTrue(all(len(line) <= 78 for line in lines))
        self.assertTrue(lines[1].startswith("all@a.test: member00@a.test,"))
        self.assertTrue(lines[2].startswith("    member"))

    def test_refuses_what_cannot_be_written(self) -> None:
        """Values the files cannot hold are refused and nothing is written."""
        directory = self.started()
        self.successResultOf(directory.add_domain("a.test"))
        (domains,) = os.listdir(self.folder)
        for change in [
            directory.add_domain("A.TEST"),
            directory.add_user(User("Alice@a.test", "h", "m")),
            directory.add_user(User("alice@a.test", "h:colon", "m")),
            directory.add_user(User("alice@a.test", "h", "line\nbreak")),
            directory.add_alias("team@a.test", ("two\nlines",)),
            directory.add_user(User("#x@a.test", "h", "m")),
        ]:
            failure = self.failureResultOf(change, DirectoryError)
            self.assertIn("cannot be written to", str(failure.value))
        self.assertEqual(os.listdir(self.folder), [domains])
        self.assertEqual(self.successResultOf(directory.list_users()), [])
        self.assertEqual(self.successResultOf(directory.list_aliases()), [])


_LOCAL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
# A line starting with # is a comment, so no written key may start with one.
_unhashed = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_LOCAL_CHARS.replace("#", "")),
    st.text(alphabet=_LOCAL_CHARS, max_size=11),
)
_addresses = st.builds(lambda local: f"{local}@a.test", _unhashed)
_field = st.text(alphabet="abcdefghijklmnopqrstuvwxyz$0123456789./=+,-_", max_size=20)
_users = st.lists(
    st.builds(
        User,
        address=_addresses,
        password_hash=_field,
        mailbox=_field,
        enabled=st.booleans(),
        quota=st.none() | st.integers(min_value=0, max_value=2**53),
    ),
    unique_by=lambda u: u.address,
    max_size=5,
)
_targets = st.text(
    alphabet=st.sampled_from(list('abc@.|/:, \t"\\#-+éß')), min_size=1, max_size=15
)
_alias_keys = _addresses | st.just("@a.test") | _unhashed
_aliases = st.dictionaries(
    _alias_keys, st.lists(_targets, min_size=1, max_size=6).map(tuple), max_size=5
)


class FileFormatPropertyTests(SynchronousTestCase):
    """The file formats read back what they write; bad text only raises
    DirectoryFileError."""

    @given(_users)
    def test_users_round_trip(self, users: list[User]) -> None:
        """parse_users(format_users(u)) gives the users, sorted."""
        text = format_users(users)
        self.assertEqual(
            parse_users(text, "users", ("a.test",)),
            tuple(sorted(users, key=lambda u: u.address)),
        )

    @given(_aliases)
    def test_aliases_round_trip(self, aliases: dict[str, tuple[str, ...]]) -> None:
        """parse_aliases(format_aliases(a)) gives the aliases back."""
        text = format_aliases(aliases)
        self.assertEqual(parse_aliases(text, "aliases", ("a.test",)), aliases)

    @given(
        st.lists(
            st.sampled_from(["a.test", "b.test", "xn--bcher-kva.example"]), unique=True
        )
    )
    def test_domains_round_trip(self, domains: list[str]) -> None:
        """parse_domains(format_domains(d)) gives the domains, sorted."""
        self.assertEqual(
            parse_domains(format_domains(domains), "domains"), tuple(sorted(domains))
        )

    @given(st.text(alphabet=st.sampled_from(list('ab@.:, \t\n"\\#|-0')), max_size=60))
    def test_any_text(self, text: str) -> None:
        """Any text parses or raises DirectoryFileError naming a real line."""
        lines = len(text.split("\n"))
        for parse in (
            lambda: parse_domains(text, "f"),
            lambda: parse_users(text, "f", ("a.test",)),
            lambda: parse_aliases(text, "f", ("a.test",)),
        ):
            try:
                parse()
            except DirectoryFileError as e:
                self.assertEqual(e.path, "f")
                self.assertTrue(1 <= e.line <= lines, (e.line, text))


class OpenDirectoryTests(TestCase):
    """open_directory builds the configured backend under the data folder."""

    def settings(self, **directory: Any) -> Settings:
        """Settings with a fresh data folder (not made yet)."""
        self.data = os.path.abspath(self.mktemp())
        return Settings(
            server=ServerSettings(data_dir=self.data),
            directory=DirectorySettings(**directory),
        )

    @deferred_test
    async def test_sqlite(self) -> None:
        """The default is SQLite in data_dir/directory.sqlite."""
        directory = open_directory(self.settings(), _reactor())
        assert isinstance(directory, SQLiteDirectory)
        self.assertEqual(directory.path, os.path.join(self.data, "directory.sqlite"))
        await directory.start()
        self.addCleanup(directory.stop)
        await directory.add_domain("a.test")
        self.assertEqual(_versions(directory.path), [1])

    @deferred_test
    async def test_files(self) -> None:
        """The files backend reads and writes in threads, under data_dir."""
        absolute = os.path.abspath(self.mktemp())
        settings = self.settings(backend="files", aliases_file=absolute)
        directory = open_directory(settings, _reactor())
        assert isinstance(directory, FilesDirectory)
        self.assertEqual(
            (directory.domains_path, directory.users_path, directory.aliases_path),
            (
                os.path.join(self.data, "domains"),
                os.path.join(self.data, "users"),
                absolute,
            ),
        )
        self.assertTrue(os.path.isdir(self.data))
        await directory.start()
        self.addCleanup(directory.stop)
        await directory.add_domain("a.test")
        await directory.add_alias("team@a.test", ("x@a.test",))
        self.assertEqual(
            parse_aliases(open(absolute).read(), absolute, ("a.test",)),
            {"team@a.test": ("x@a.test",)},
        )


class ExampleFilesTests(SynchronousTestCase):
    """The example files in etc/ are valid for the files backend."""

    def test_examples_parse(self) -> None:
        """etc/domains, etc/users and etc/aliases load and say what they show."""
        from twistedmail.aliases.files import parse_aliases, parse_domains, parse_users

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

        def read(name: str) -> str:
            with open(os.path.join(here, "etc", name)) as f:
                return f.read()

        domains = parse_domains(read("domains"), "etc/domains")
        self.assertEqual(domains, ("example.org", "lists.example.org"))
        users = parse_users(read("users"), "etc/users", domains)
        self.assertEqual(
            [u.address for u in users], ["alice@example.org", "bob@example.org"]
        )
        self.assertEqual(users[1].quota, 1073741824)
        aliases = parse_aliases(read("aliases"), "etc/aliases", domains)
        self.assertEqual(
            aliases["team@example.org"],
            ("alice@example.org", "bob@example.org", "carol@partner.example.net"),
        )
        self.assertEqual(aliases["@lists.example.org"], ("alice@example.org",))
        self.assertEqual(aliases["root"], ("alice@example.org",))
