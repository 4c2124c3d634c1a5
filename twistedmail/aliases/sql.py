# -*- test-case-name: tests.test_directory -*-
"""The SQL directory backend: domains, users and aliases in a database.

This is the directory (the seed's "Database") that the SMTP server asks at
RCPT, the alias expander reads while expanding and the cred checker reads at
login.  SQLite is the embedded default; every query runs in
L{twisted.enterprise.adbapi}'s thread pool, so none blocks the reactor.

What a PostgreSQL backend would add, without touching callers: an
L{SQLDialect} (DB-API module, parameter style, pool arguments, connection
set-up) and a small constructor like L{SQLiteDirectory}.  Everything else is
shared:

  - L{MIGRATIONS}: the one schema, as numbered steps.  Each step runs in its
    own transaction at L{SQLDirectory.start}, and its number is recorded in
    the C{schema_version} table (the on-disk format's version field); a
    database whose version is newer than this code knows is refused.
  - C{_QUERIES}: every statement the backend runs, in portable SQL with
    C{{name}} placeholders that the dialect turns into its parameter style.

Schema (migration 1)::

    domains(name PK)
    users(address PK, domain -> domains, password_hash, mailbox, enabled, quota)
    aliases(address, domain -> domains, position, target; PK (address, position))

C{users.domain} and C{aliases.domain} are the domain part of the key, kept in
a column so that per-domain listings need no string matching.  Alias targets
are ordered by C{position}.

Behaviour matches L{twistedmail.aliases.directory.MemoryDirectory} exactly:
the same L{DirectoryError} cases and messages, the same ordering, the same
alias merge and removal rules.  Each change checks and writes inside one
transaction, so a refused change changes nothing.

The lookup cache.  Every message asks the directory several times (the
domain at RCPT, then the expander's alias and user lookups, at RCPT and again
in the queue runner), and each query is a trip through the thread pool that
costs far more CPU than the query.  So the answers of C{is_local_domain},
C{get_user} and C{get_alias} (found or not) are kept, up to C{cache_size}
of them, for as long as the database is unchanged:

  - A change made through this directory object drops the whole cache when
    it finishes, so its caller's next lookup sees it.
  - A change made by another connection (the admin CLI, another process)
    is noticed through the dialect's C{change_counter} statement, run on a
    connection of its own on the reactor thread (SQLite's C{PRAGMA
    data_version}: a number that changes whenever another connection
    commits).  It reads shared memory (the WAL index) and never waits for a
    lock (that connection's busy timeout is 0): a few microseconds, but the
    sqlite3 module lets go of the GIL for it, which is dear in a busy
    process, so it is asked at most once per C{check_interval} seconds
    (0.1 by default) and not per lookup.  Such a change is therefore seen
    within C{check_interval} of its commit; when the counter moved, the
    whole cache is dropped.
  - When the counter cannot be read, nothing is cached and every lookup
    goes to the database.  An answer is kept only if no change was noticed
    between the lookup's start and its answer.

A dialect without a change counter caches nothing.
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

from twisted.enterprise.adbapi import ConnectionPool, Transaction
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail.aliases.directory import domain_of
from twistedmail.interfaces import DirectoryError, IDirectoryAdmin, User

__all__ = [
    "CACHE_SIZE",
    "CHECK_INTERVAL",
    "MIGRATIONS",
    "SQLITE",
    "Migration",
    "SQLDialect",
    "SQLDirectory",
    "SQLiteDirectory",
]

_T = TypeVar("_T")

#: A database row as the DB-API module returns it.
_Row = tuple[Any, ...]

#: One schema step: its number and the statements that make it.
Migration = tuple[int, tuple[str, ...]]

#: The schema, step by step.  Never edit a released step: add the next one.
MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        (
            "CREATE TABLE domains ( name VARCHAR(255) NOT NULL PRIMARY KEY)",
            "CREATE TABLE users ("
            " address VARCHAR(320) NOT NULL PRIMARY KEY,"
            " domain VARCHAR(255) NOT NULL REFERENCES domains (name),"
            " password_hash TEXT NOT NULL,"
            " mailbox TEXT NOT NULL,"
            " enabled BOOLEAN NOT NULL,"
            " quota BIGINT)",
            "CREATE INDEX users_domain ON users (domain)",
            "CREATE TABLE aliases ("
            " address VARCHAR(320) NOT NULL,"
            " domain VARCHAR(255) NOT NULL REFERENCES domains (name),"
            " position INTEGER NOT NULL,"
            " target TEXT NOT NULL,"
            " PRIMARY KEY (address, position))",
            "CREATE INDEX aliases_domain ON aliases (domain)",
        ),
    ),
)

_USER_COLUMNS = "address, password_hash, mailbox, enabled, quota"

# Every statement the backend runs.  Portable SQL only; {name} is a parameter.
_QUERIES: Mapping[str, str] = MappingProxyType(
    {
        "create_version_table": (
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER NOT NULL PRIMARY KEY,"
            " applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
        ),
        "applied_versions": "SELECT version FROM schema_version",
        "record_version": "INSERT INTO schema_version (version) VALUES ({version})",
        "find_domain": "SELECT name FROM domains WHERE name = {domain}",
        "list_domains": "SELECT name FROM domains",
        "insert_domain": "INSERT INTO domains (name) VALUES ({domain})",
        "delete_domain": "DELETE FROM domains WHERE name = {domain}",
        "domain_in_use": (
            "SELECT address FROM users WHERE domain = {domain}"
            " UNION ALL SELECT address FROM aliases WHERE domain = {domain}"
        ),
        "get_user": f"SELECT {_USER_COLUMNS} FROM users WHERE address = {{address}}",
        "list_users": f"SELECT {_USER_COLUMNS} FROM users",
        "list_domain_users": (
            f"SELECT {_USER_COLUMNS} FROM users WHERE domain = {{domain}}"
        ),
        "insert_user": (
            "INSERT INTO users"
            " (address, domain, password_hash, mailbox, enabled, quota)"
            " VALUES ({address}, {domain}, {password_hash}, {mailbox},"
            " {enabled}, {quota})"
        ),
        "set_password": (
            "UPDATE users SET password_hash = {password_hash} WHERE address = {address}"
        ),
        "set_enabled": "UPDATE users SET enabled = {enabled} WHERE address = {address}",
        "delete_user": "DELETE FROM users WHERE address = {address}",
        "get_alias": (
            "SELECT target FROM aliases WHERE address = {address} ORDER BY position"
        ),
        "list_aliases": (
            "SELECT address, target FROM aliases ORDER BY address, position"
        ),
        "list_domain_aliases": (
            "SELECT address, target FROM aliases WHERE domain = {domain}"
            " ORDER BY address, position"
        ),
        "delete_alias": "DELETE FROM aliases WHERE address = {address}",
        "insert_alias_target": (
            "INSERT INTO aliases (address, domain, position, target)"
            " VALUES ({address}, {domain}, {position}, {target})"
        ),
    }
)

ParamStyle = Literal["qmark", "numeric", "named", "format", "pyformat"]


@dataclass(frozen=True)
class _Statement:
    """A query compiled for one parameter style."""

    sql: str
    names: tuple[str, ...]
    by_name: bool

    def args(
        self, params: Mapping[str, object]
    ) -> Sequence[object] | dict[str, object]:
        """The parameters in the form the DB-API module wants."""
        if self.by_name:
            return {n: params[n] for n in self.names}
        return tuple(params[n] for n in self.names)


@dataclass(frozen=True)
class SQLDialect:
    """What differs between databases, and nothing else.

    @ivar module: the DB-API 2.0 module name given to adbapi.
    @ivar paramstyle: the module's parameter style (PEP 249).
    @ivar begin: the statement that opens a write transaction, or None when
        the module opens transactions by itself.
    @ivar connection_setup: statements run on every new connection.
    @ivar pool_args: keyword arguments for the adbapi C{ConnectionPool}
        (the module's C{connect} arguments and C{cp_*} pool settings).
    @ivar change_counter: a statement answering one number that changes
        whenever another connection commits a change, or None when the
        database has none; with one, lookups are cached (module docstring).
    @ivar change_counter_setup: statements run on the connection that asks
        the change counter (it runs on the reactor thread, so it must never
        wait).
    """

    module: str
    paramstyle: ParamStyle
    begin: str | None = None
    connection_setup: tuple[str, ...] = ()
    pool_args: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({})
    )
    change_counter: str | None = None
    change_counter_setup: tuple[str, ...] = ()

    def compile(self, template: str) -> _Statement:
        """Turn a C{{name}} query template into this dialect's SQL."""
        out: list[str] = []
        names: list[str] = []
        percent = self.paramstyle in ("format", "pyformat")
        for literal, name, _, _ in string.Formatter().parse(template):
            out.append(literal.replace("%", "%%") if percent else literal)
            if name is None:
                continue
            names.append(name)
            out.append(
                {
                    "qmark": "?",
                    "numeric": f":{len(names)}",
                    "named": f":{name}",
                    "format": "%s",
                    "pyformat": f"%({name})s",
                }[self.paramstyle]
            )
        by_name = self.paramstyle in ("named", "pyformat")
        return _Statement("".join(out), tuple(names), by_name)


#: SQLite: one connection (SQLite has one writer), write-ahead logging so that
#: readers in other processes (the admin CLI) do not block, foreign keys on,
#: and transactions opened explicitly (autocommit mode in the module) so that
#: schema steps are atomic too.
SQLITE = SQLDialect(
    module="sqlite3",
    paramstyle="qmark",
    begin="BEGIN IMMEDIATE",
    connection_setup=(
        "PRAGMA busy_timeout = 5000",
        "PRAGMA foreign_keys = ON",
        "PRAGMA journal_mode = WAL",
    ),
    pool_args=MappingProxyType(
        {
            "check_same_thread": False,
            "isolation_level": None,
            "cp_min": 1,
            "cp_max": 1,
        }
    ),
    change_counter="PRAGMA data_version",
    change_counter_setup=("PRAGMA busy_timeout = 0",),
)

#: How many lookup answers L{SQLDirectory} keeps at most.
CACHE_SIZE = 10_000

#: At most how often (seconds) L{SQLDirectory} asks the change counter.
CHECK_INTERVAL = 0.1

_MISSING = object()


def _user(row: _Row) -> User:
    return User(
        address=row[0],
        password_hash=row[1],
        mailbox=row[2],
        enabled=bool(row[3]),
        quota=None if row[4] is None else int(row[4]),
    )


def _group(rows: list[_Row]) -> list[tuple[str, tuple[str, ...]]]:
    """(address, target) rows in position order to sorted (key, targets)."""
    grouped: dict[str, list[str]] = {}
    for address, target in rows:
        grouped.setdefault(address, []).append(target)
    return [(k, tuple(t)) for k, t in sorted(grouped.items())]


@implementer(IDirectoryAdmin)
class SQLDirectory:
    """A directory in an SQL database, reached through adbapi.

    @param dialect: what is specific to the database.
    @param connect_args: positional arguments for the module's C{connect}.
    @param reactor: runs the pool's results back on the reactor thread.
    @param migrations: the schema steps (for tests; L{MIGRATIONS} otherwise).
    @param cache_size: how many lookup answers to keep at most (0: none);
        see the module docstring.
    @param check_interval: at most how often, in seconds, to ask whether
        another connection changed the database (module docstring).
    @param clock: times L{check_interval} (default: C{reactor}).
    """

    def __init__(
        self,
        dialect: SQLDialect,
        connect_args: tuple[object, ...],
        reactor: IReactorCore,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        cache_size: int = CACHE_SIZE,
        check_interval: float = CHECK_INTERVAL,
        clock: IReactorTime | None = None,
    ) -> None:
        numbers = [n for n, _ in migrations]
        if numbers != sorted(set(numbers)) or any(n <= 0 for n in numbers):
            raise ValueError("migration numbers must be positive and increasing")
        self._dialect = dialect
        self._connect_args = connect_args
        self._reactor = reactor
        self._migrations = tuple(migrations)
        self._statements = {k: dialect.compile(v) for k, v in _QUERIES.items()}
        self._pool: ConnectionPool | None = None
        self._cache_size = cache_size
        self._cache: dict[tuple[str, str], object] = {}
        # Moves whenever the cache is dropped (see generation()).
        self._generation = 0
        # The change counter's connection and its last answer (None: unknown).
        self._counter: Any = None
        self._version: object = None
        self._check_interval = check_interval
        self._clock: IReactorTime = clock or cast(IReactorTime, reactor)
        # When the counter was last asked (None: ask on the next lookup).
        self._checked_at: float | None = None

    # Plumbing

    def _setup_connection(self, connection: Any) -> None:
        cursor = connection.cursor()
        try:
            for statement in self._dialect.connection_setup:
                cursor.execute(statement)
                cursor.fetchall()
        finally:
            cursor.close()

    def _execute(self, trans: Transaction, name: str, **params: object) -> None:
        statement = self._statements[name]
        trans.execute(statement.sql, statement.args(params))

    def _rows(self, trans: Transaction, name: str, **params: object) -> list[_Row]:
        self._execute(trans, name, **params)
        return list(trans.fetchall())

    def _begin(self, trans: Transaction) -> None:
        if self._dialect.begin:
            trans.execute(self._dialect.begin)

    def _interact(self, interaction: Callable[..., _T], *args: object) -> Deferred[_T]:
        if self._pool is None:
            return fail(DirectoryError("the directory is not started"))
        integrity = self._pool.dbapi.IntegrityError
        d: Deferred[_T] = self._pool.runInteraction(interaction, *args)

        def conflict(f: Failure) -> Failure:
            # Only reachable when another process changed the database between
            # our check and our write; report it like the checks do.
            if f.check(integrity):
                raise DirectoryError(f"conflicting change: {f.value}")
            return f

        d.addErrback(conflict)
        return d

    # The lookup cache (module docstring)

    def _open_counter(self, trans: Transaction) -> Any:
        """Open the change counter's connection (in a pool thread)."""
        assert self._dialect.change_counter is not None
        module = importlib.import_module(self._dialect.module)
        kwargs = {
            k: v for k, v in self._dialect.pool_args.items() if not k.startswith("cp_")
        }
        connection = module.connect(*self._connect_args, **kwargs)
        try:
            cursor = connection.cursor()
            for statement in self._dialect.change_counter_setup:
                cursor.execute(statement)
                cursor.fetchall()
            cursor.close()
        except BaseException:
            connection.close()
            raise
        return connection

    def _cache_usable(self) -> bool:
        """Ask the change counter when due; drop the cache when the database
        changed.

        @return: whether cached answers may be used and new ones kept.
        """
        connection = self._counter
        if connection is None:
            return False
        now = self._clock.seconds()
        checked = self._checked_at
        if checked is not None and 0 <= now - checked < self._check_interval:
            return self._version is not None
        self._checked_at = now
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._dialect.change_counter)
                version = cursor.fetchall()[0][0]
            finally:
                cursor.close()
        except Exception:
            version = None
        if version is None or version != self._version:
            self._cache.clear()
            self._generation += 1
            self._version = version
        return version is not None

    def generation(self) -> int | None:
        """A number that changes whenever an answer may have changed, for
        the alias expander's cache; None while answers are not cached
        (nothing may be kept then).  It moves when the lookup cache is
        dropped: after a change through this object, and when the change
        counter shows another connection's commit (checked as for lookups,
        at most every C{check_interval})."""
        if not self._cache_usable():
            return None
        return self._generation

    def _lookup(
        self, kind: str, key: str, interaction: Callable[[Transaction, str], _T]
    ) -> Deferred[_T]:
        """A cached answer, or the query's (kept when still valid)."""
        if not self._cache_usable():
            return self._interact(interaction, key)
        hit = self._cache.get((kind, key), _MISSING)
        if hit is not _MISSING:
            return succeed(hit)  # type: ignore[arg-type]
        version = self._version
        d = self._interact(interaction, key)

        def keep(value: _T) -> _T:
            # Kept under the counter's value from before the query: if a
            # commit came since, the next lookup sees a new value and drops
            # it, so a stale answer is never used.
            if self._version == version:
                if len(self._cache) >= self._cache_size:
                    # Evict the oldest answer (dicts keep insertion order).
                    del self._cache[next(iter(self._cache))]
                self._cache[(kind, key)] = value
            return value

        return d.addCallback(keep)

    def _change(self, interaction: Callable[..., _T], *args: object) -> Deferred[_T]:
        """Run a change; drop the cache when it is done (or failed)."""

        def forget(result: object) -> object:
            self._cache.clear()
            self._generation += 1
            self._version = None
            self._checked_at = None
            return result

        d = self._interact(interaction, *args)
        d.addBoth(forget)
        return d

    # Lifecycle

    def start(self) -> Deferred[None]:
        """Open the pool and bring the schema up to date.

        @raise DirectoryError: (through the Deferred) when the database has
            a newer schema than this code knows.
        """
        if self._pool is not None:
            return succeed(None)
        pool = ConnectionPool(
            self._dialect.module,
            *self._connect_args,
            cp_reactor=self._reactor,
            cp_openfun=self._setup_connection,
            **self._dialect.pool_args,
        )
        pool.start()
        self._pool = pool
        d = Deferred.fromCoroutine(self._start())

        def failed(f: Failure) -> Failure:
            self._close()
            return f

        d.addErrback(failed)
        return d

    def stop(self) -> Deferred[None]:
        """Close the pool (waits for the query in flight, if any)."""
        self._close()
        return succeed(None)

    def _close(self) -> None:
        counter, self._counter = self._counter, None
        self._cache.clear()
        self._generation += 1
        self._version = None
        self._checked_at = None
        if counter is not None:
            counter.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def _start(self) -> None:
        await self._migrate()
        if self._dialect.change_counter is not None and self._cache_size > 0:
            self._counter = await self._interact(self._open_counter)

    async def _migrate(self) -> None:
        applied = await self._interact(self._prepare_versions)
        known = max((n for n, _ in self._migrations), default=0)
        current = max(applied, default=0)
        if current > known:
            raise DirectoryError(
                f"the database schema is version {current}, newer than this"
                f" twistedmail knows ({known}); upgrade twistedmail"
            )
        for number, statements in self._migrations:
            if number > current:
                await self._interact(self._apply, number, statements)

    def _prepare_versions(self, trans: Transaction) -> list[int]:
        self._begin(trans)
        self._execute(trans, "create_version_table")
        return [int(r[0]) for r in self._rows(trans, "applied_versions")]

    def _apply(
        self, trans: Transaction, number: int, statements: tuple[str, ...]
    ) -> None:
        self._begin(trans)
        applied = {int(r[0]) for r in self._rows(trans, "applied_versions")}
        if number in applied:
            return  # another process applied it first
        for statement in statements:
            trans.execute(statement)
        self._execute(trans, "record_version", version=number)

    # IDirectory

    def is_local_domain(self, domain: str) -> Deferred[bool]:
        """Whether the domain is in the domains table."""
        return self._lookup("domain", domain, self._is_local_domain)

    def _is_local_domain(self, trans: Transaction, domain: str) -> bool:
        return bool(self._rows(trans, "find_domain", domain=domain))

    def list_domains(self) -> Deferred[list[str]]:
        """All local domains, sorted."""
        return self._interact(self._list_domains)

    def _list_domains(self, trans: Transaction) -> list[str]:
        return sorted(r[0] for r in self._rows(trans, "list_domains"))

    def get_user(self, address: str) -> Deferred[User | None]:
        """The user with this key, or None."""
        return self._lookup("user", address, self._get_user)

    def _get_user(self, trans: Transaction, address: str) -> User | None:
        rows = self._rows(trans, "get_user", address=address)
        return _user(rows[0]) if rows else None

    def list_users(self, domain: str | None = None) -> Deferred[list[User]]:
        """All users (of one domain when given), sorted by address."""
        return self._interact(self._list_users, domain)

    def _list_users(self, trans: Transaction, domain: str | None) -> list[User]:
        if domain is None:
            rows = self._rows(trans, "list_users")
        else:
            rows = self._rows(trans, "list_domain_users", domain=domain)
        # Sorted here, not by ORDER BY, so that every database's collation
        # gives the order MemoryDirectory gives.
        return sorted((_user(r) for r in rows), key=lambda u: u.address)

    def get_alias(self, address: str) -> Deferred[tuple[str, ...] | None]:
        """The alias's targets in order, or None."""
        return self._lookup("alias", address, self._get_alias)

    def _get_alias(self, trans: Transaction, address: str) -> tuple[str, ...] | None:
        rows = self._rows(trans, "get_alias", address=address)
        return tuple(r[0] for r in rows) or None

    def list_aliases(
        self, domain: str | None = None
    ) -> Deferred[list[tuple[str, tuple[str, ...]]]]:
        """All aliases (of one domain when given) as (key, targets), sorted."""
        return self._interact(self._list_aliases, domain)

    def _list_aliases(
        self, trans: Transaction, domain: str | None
    ) -> list[tuple[str, tuple[str, ...]]]:
        if domain is None:
            return _group(self._rows(trans, "list_aliases"))
        return _group(self._rows(trans, "list_domain_aliases", domain=domain))

    # IDirectoryAdmin

    def add_domain(self, domain: str) -> Deferred[None]:
        """Make a domain local; refused when it is already."""
        return self._change(self._add_domain, domain)

    def _add_domain(self, trans: Transaction, domain: str) -> None:
        self._begin(trans)
        if self._is_local_domain(trans, domain):
            raise DirectoryError(f"domain {domain} exists already")
        self._execute(trans, "insert_domain", domain=domain)

    def remove_domain(self, domain: str) -> Deferred[None]:
        """Remove a domain; refused while users or aliases remain in it."""
        return self._change(self._remove_domain, domain)

    def _remove_domain(self, trans: Transaction, domain: str) -> None:
        self._begin(trans)
        if not self._is_local_domain(trans, domain):
            raise DirectoryError(f"no domain {domain}")
        if self._rows(trans, "domain_in_use", domain=domain):
            raise DirectoryError(f"domain {domain} still has users or aliases")
        self._execute(trans, "delete_domain", domain=domain)

    def add_user(self, user: User) -> Deferred[None]:
        """Add a user in a local domain."""
        return self._change(self._add_user, user)

    def _add_user(self, trans: Transaction, user: User) -> None:
        self._begin(trans)
        if not self._is_local_domain(trans, user.domain):
            raise DirectoryError(f"{user.domain} is not a local domain")
        if self._get_user(trans, user.address) is not None:
            raise DirectoryError(f"user {user.address} exists already")
        self._execute(
            trans,
            "insert_user",
            address=user.address,
            domain=user.domain,
            password_hash=user.password_hash,
            mailbox=user.mailbox,
            enabled=user.enabled,
            quota=user.quota,
        )

    def set_password(self, address: str, password_hash: str) -> Deferred[None]:
        """Replace a user's password hash."""
        return self._change(
            self._change_user, address, "set_password", {"password_hash": password_hash}
        )

    def set_enabled(self, address: str, enabled: bool) -> Deferred[None]:
        """Enable or disable a user."""
        return self._change(
            self._change_user, address, "set_enabled", {"enabled": enabled}
        )

    def _change_user(
        self,
        trans: Transaction,
        address: str,
        query: str,
        values: dict[str, object],
    ) -> None:
        self._begin(trans)
        if self._get_user(trans, address) is None:
            raise DirectoryError(f"no user {address}")
        self._execute(trans, query, address=address, **values)

    def remove_user(self, address: str) -> Deferred[None]:
        """Remove a user (the mailbox on disk is left alone)."""
        return self._change(self._remove_user, address)

    def _remove_user(self, trans: Transaction, address: str) -> None:
        self._begin(trans)
        if self._get_user(trans, address) is None:
            raise DirectoryError(f"no user {address}")
        self._execute(trans, "delete_user", address=address)

    def add_alias(self, address: str, targets: tuple[str, ...]) -> Deferred[None]:
        """Append the targets not there yet, creating the alias when missing."""
        return self._change(self._add_alias, address, tuple(targets))

    def _add_alias(
        self, trans: Transaction, address: str, targets: tuple[str, ...]
    ) -> None:
        self._begin(trans)
        domain = domain_of(address)
        if not self._is_local_domain(trans, domain):
            raise DirectoryError(f"{domain} is not a local domain")
        if not targets:
            raise DirectoryError("an alias needs at least one target")
        old = self._get_alias(trans, address) or ()
        self._replace_targets(
            trans, address, old + tuple(t for t in targets if t not in old)
        )

    def remove_alias(
        self, address: str, targets: tuple[str, ...] = ()
    ) -> Deferred[None]:
        """Remove some targets of an alias, or the whole alias when none."""
        return self._change(self._remove_alias, address, tuple(targets))

    def _remove_alias(
        self, trans: Transaction, address: str, targets: tuple[str, ...]
    ) -> None:
        self._begin(trans)
        old = self._get_alias(trans, address)
        if old is None:
            raise DirectoryError(f"no alias {address}")
        missing = [t for t in targets if t not in old]
        if missing:
            raise DirectoryError(f"alias {address} has no target {missing[0]}")
        rest = tuple(t for t in old if t not in targets) if targets else ()
        self._replace_targets(trans, address, rest)

    def _replace_targets(
        self, trans: Transaction, address: str, targets: tuple[str, ...]
    ) -> None:
        self._execute(trans, "delete_alias", address=address)
        domain = domain_of(address)
        for position, target in enumerate(targets):
            self._execute(
                trans,
                "insert_alias_target",
                address=address,
                domain=domain,
                position=position,
                target=target,
            )


class SQLiteDirectory(SQLDirectory):
    """The embedded default: a directory in one SQLite file.

    @param path: the database file (made on first start).
    @param reactor: the reactor the pool reports back to.
    @param migrations: the schema steps (for tests; L{MIGRATIONS} otherwise).
    @param cache_size: how many lookup answers to keep at most (0: none).
    @param check_interval: at most how often to ask whether another
        connection changed the file (seconds).
    @param clock: times C{check_interval} (default: C{reactor}).
    """

    def __init__(
        self,
        path: str,
        reactor: IReactorCore,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        cache_size: int = CACHE_SIZE,
        check_interval: float = CHECK_INTERVAL,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(
            SQLITE,
            (path,),
            reactor,
            migrations=migrations,
            cache_size=cache_size,
            check_interval=check_interval,
            clock=clock,
        )
        self.path = path
