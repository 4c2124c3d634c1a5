# -*- test-case-name: tests.test_directory -*-
"""The directory database (the seed's "Database"): domains, users, aliases.

L{MemoryDirectory} keeps everything in dictionaries; tests and embedders use
it, and it is the reference behaviour the SQLite and file backends match
(``tests.test_directory`` runs one suite against all of them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from twistedmail.interfaces import DirectoryError, IDirectoryAdmin, User

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorCore

    from twistedmail.aliases.files import FilesDirectory
    from twistedmail.aliases.sql import SQLiteDirectory
    from twistedmail.config import Settings

__all__ = ["MemoryDirectory", "domain_of", "open_directory"]


def domain_of(key: str) -> str:
    """The domain of an address key or a catch-all key ``@domain``."""
    return key.rpartition("@")[2]


@implementer(IDirectoryAdmin)
class MemoryDirectory:
    """A directory held in memory.

    @param domains: initial local domains (normalised).
    @param users: initial users.
    @param aliases: initial aliases, key to targets.
    """

    def __init__(
        self,
        domains: tuple[str, ...] = (),
        users: tuple[User, ...] = (),
        aliases: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._domains: set[str] = set(domains)
        self._users: dict[str, User] = {u.address: u for u in users}
        self._aliases: dict[str, tuple[str, ...]] = dict(aliases or {})
        self._generation = 0

    def generation(self) -> int:
        """A number that changes whenever an answer may have changed (every
        change through the admin methods moves it), for the alias
        expander's cache."""
        return self._generation

    def start(self) -> Deferred[None]:
        """Nothing to open; here for symmetry with the other backends."""
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Nothing to close."""
        return succeed(None)

    # IDirectory

    def is_local_domain(self, domain: str) -> Deferred[bool]:
        return succeed(domain in self._domains)

    def list_domains(self) -> Deferred[list[str]]:
        return succeed(sorted(self._domains))

    def get_user(self, address: str) -> Deferred[User | None]:
        return succeed(self._users.get(address))

    def list_users(self, domain: str | None = None) -> Deferred[list[User]]:
        users = [
            u for k, u in sorted(self._users.items()) if domain in (None, u.domain)
        ]
        return succeed(users)

    def get_alias(self, address: str) -> Deferred[tuple[str, ...] | None]:
        return succeed(self._aliases.get(address))

    def list_aliases(
        self, domain: str | None = None
    ) -> Deferred[list[tuple[str, tuple[str, ...]]]]:
        return succeed(
            [
                (k, t)
                for k, t in sorted(self._aliases.items())
                if domain in (None, domain_of(k))
            ]
        )

    # IDirectoryAdmin

    def add_domain(self, domain: str) -> Deferred[None]:
        self._generation += 1
        if domain in self._domains:
            return fail(DirectoryError(f"domain {domain} exists already"))
        self._domains.add(domain)
        return succeed(None)

    def remove_domain(self, domain: str) -> Deferred[None]:
        self._generation += 1
        if domain not in self._domains:
            return fail(DirectoryError(f"no domain {domain}"))
        if any(u.domain == domain for u in self._users.values()) or any(
            domain_of(k) == domain for k in self._aliases
        ):
            return fail(DirectoryError(f"domain {domain} still has users or aliases"))
        self._domains.discard(domain)
        return succeed(None)

    def add_user(self, user: User) -> Deferred[None]:
        self._generation += 1
        if user.domain not in self._domains:
            return fail(DirectoryError(f"{user.domain} is not a local domain"))
        if user.address in self._users:
            return fail(DirectoryError(f"user {user.address} exists already"))
        self._users[user.address] = user
        return succeed(None)

    def _change_user(self, address: str, **changes: object) -> Deferred[None]:
        from dataclasses import replace

        self._generation += 1
        user = self._users.get(address)
        if user is None:
            return fail(DirectoryError(f"no user {address}"))
        self._users[address] = replace(user, **changes)  # type: ignore[arg-type]
        return succeed(None)

    def set_password(self, address: str, password_hash: str) -> Deferred[None]:
        return self._change_user(address, password_hash=password_hash)

    def set_enabled(self, address: str, enabled: bool) -> Deferred[None]:
        return self._change_user(address, enabled=enabled)

    def remove_user(self, address: str) -> Deferred[None]:
        self._generation += 1
        if self._users.pop(address, None) is None:
            return fail(DirectoryError(f"no user {address}"))
        return succeed(None)

    def add_alias(self, address: str, targets: tuple[str, ...]) -> Deferred[None]:
        self._generation += 1
        if domain_of(address) not in self._domains:
            return fail(DirectoryError(f"{domain_of(address)} is not a local domain"))
        if not targets:
            return fail(DirectoryError("an alias needs at least one target"))
        old = self._aliases.get(address, ())
        self._aliases[address] = old + tuple(t for t in targets if t not in old)
        return succeed(None)

    def remove_alias(
        self, address: str, targets: tuple[str, ...] = ()
    ) -> Deferred[None]:
        self._generation += 1
        old = self._aliases.get(address)
        if old is None:
            return fail(DirectoryError(f"no alias {address}"))
        if not targets:
            del self._aliases[address]
            return succeed(None)
        missing = [t for t in targets if t not in old]
        if missing:
            return fail(DirectoryError(f"alias {address} has no target {missing[0]}"))
        rest = tuple(t for t in old if t not in targets)
        if rest:
            self._aliases[address] = rest
        else:
            del self._aliases[address]
        return succeed(None)


_MAILBOX_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._+-=")


def default_mailbox(address: str) -> str:
    """The Maildir path (relative to the mail root) for a new user.

    ``alice@example.test`` gives ``example.test/alice``.  Characters that are
    not safe in a file name (``/`` is legal in a local part) become ``%XX``,
    and a leading dot is escaped, so no local part can name a path outside
    its domain's folder.
    """
    local, _, domain = address.rpartition("@")
    safe = "".join(
        c if c in _MAILBOX_SAFE else "".join(f"%{b:02X}" for b in c.encode())
        for c in local
    )
    if safe.startswith("."):
        safe = "%2E" + safe[1:]
    return f"{domain}/{safe}"


def open_directory(
    settings: Settings, reactor: IReactorCore
) -> SQLiteDirectory | FilesDirectory:
    """The directory backend the configuration names (not started yet).

    Relative paths in C{[directory]} are relative to C{server.data_dir},
    which is made when missing.  The files backend does its file reads and
    writes in the reactor's thread pool.

    @param reactor: the reactor the backend reports to (and schedules its
        checks for changed files on).
    """
    import os

    from twisted.internet.interfaces import IReactorThreads, IReactorTime

    from twistedmail.aliases.files import (
        FilesDirectory,
        run_in_thread_pool,
    )
    from twistedmail.aliases.sql import SQLiteDirectory

    config = settings.directory
    os.makedirs(settings.server.data_dir, exist_ok=True)
    if config.backend == "sqlite":
        path = settings.data_path(config.sqlite_path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return SQLiteDirectory(path, reactor)
    return FilesDirectory(
        settings.data_path(config.domains_file),
        settings.data_path(config.users_file),
        settings.data_path(config.aliases_file),
        IReactorTime(reactor),
        config.reload_interval,
        run_blocking=run_in_thread_pool(IReactorThreads(reactor)),
    )
