# -*- test-case-name: tests.test_directory -*-
"""The plain-files directory backend: a domains file, a users file, an aliases file.

This is the directory (the seed's "Database") that the SMTP server asks at
RCPT, the alias expander reads while expanding and the cred checker reads at
login, kept in three text files an operator can edit by hand.  The files are
re-read when they change (polled every C{reload_interval} seconds on the
injected clock); admin changes rewrite the affected file.

File formats (UTF-8; a line whose first non-blank character is C{#} is a
comment; blank lines are ignored; a missing file is an empty one):

  - B{domains}: one local domain per line; C{#} also starts a comment at the
    end of a line.  Domains are stored as IDNA A-labels, lower case.
  - B{users}, passwd style, one user per line::

        address:password_hash:mailbox:enabled:quota

    C{enabled} is C{1}, C{0} or empty (enabled); C{quota} is a whole number
    of bytes or empty (none).  The address must be in a local domain.
  - B{aliases}, aliases(5) style::

        key: target, target
            target            # a line starting with blank space continues

    A key is a full address (C{team@example.test}), a catch-all
    (C{@example.test}) or a bare local part (C{root}), which applies to every
    local domain: C{get_alias("root@any-local-domain")} finds it when that
    domain has no key of its own.  Targets are kept as written (addresses,
    C{|command}, C{/path}, C{:include:/path}); a target with blank space or a
    comma in it is written in double quotes (C{"|/usr/bin/prog arg"}), with
    C{\\"} and C{\\\\} for a quote and a backslash inside.

Addresses and domains in the files are normalised to lookup keys
(L{twistedmail.address.Address.key}, L{normalize_domain}).  A mistake raises
L{DirectoryFileError} naming the file, the line and the problem, and nothing is
half-loaded: at start the error fails C{start()}; on a reload the previous
contents stay in use and the error is logged, and admin changes are refused
until the file is fixed (so an edit in progress is never overwritten).

Rewrites go through a temporary file in the same folder, fsync and rename, so
a reader sees either the old file or the new one.  Comments are not kept; the
files are written sorted.  The behaviour of every change (the refusals and
their messages, the alias merge and removal rules) is
L{twistedmail.aliases.directory.MemoryDirectory}'s, which does the bookkeeping.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail.address import Address, AddressError, normalize_domain
from twistedmail.aliases.directory import MemoryDirectory, domain_of
from twistedmail.interfaces import DirectoryError, IDirectoryAdmin, User

__all__ = [
    "BlockingRunner",
    "DirectoryFileError",
    "FilesDirectory",
    "format_aliases",
    "format_domains",
    "format_users",
    "parse_aliases",
    "parse_domains",
    "parse_users",
    "run_in_thread_pool",
]

_T = TypeVar("_T")
_log = Logger()

#: What identifies a version of a file: (mtime_ns, size, inode), or None
#: when the file does not exist.
_Stat = tuple[int, int, int] | None

_DIGITS = re.compile(r"[0-9]+\Z")
_WRAP = 78


class DirectoryFileError(DirectoryError):
    """A directory file cannot be read or parsed.

    @ivar path: the file.
    @ivar line: the 1-based line number, or 0 for the file as a whole.
    @ivar problem: what is wrong, without the place.
    """

    def __init__(self, path: str, line: int, problem: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class BlockingRunner(Protocol):
    """Runs blocking file work and reports its result on the reactor thread."""

    def __call__(self, work: Callable[[], _T]) -> Deferred[_T]:
        """Run C{work()}; the Deferred fires with its result or failure."""


def _run_here(work: Callable[[], _T]) -> Deferred[_T]:
    """The default runner: do the work at once (files are small)."""
    try:
        return succeed(work())
    except BaseException:
        return fail()


def run_in_thread_pool(reactor: IReactorThreads) -> BlockingRunner:
    """A runner that does the work in the reactor's thread pool."""

    def run(work: Callable[[], _T]) -> Deferred[_T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    return run


# Parsing


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines that are neither blank nor comments (ends stripped)."""
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, line


def parse_domains(text: str, path: str) -> tuple[str, ...]:
    """Parse a domains file: one domain per line.

    @param path: the file's name, for errors.
    @return: the normalised domains, in file order.
    @raise DirectoryFileError: on a bad or repeated domain.
    """
    seen: dict[str, int] = {}
    for number, line in _lines(text):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        try:
            domain = normalize_domain(word)
        except AddressError as e:
            raise DirectoryFileError(
                path, number, f"bad domain {word!r}: {e}"
            ) from None
        if domain in seen:
            raise DirectoryFileError(
                path, number, f"domain {domain} repeated (first on line {seen[domain]})"
            )
        seen[domain] = number
    return tuple(seen)


def _address_key(text: str, path: str, number: int) -> str:
    try:
        return Address.parse(text, utf8=True).key
    except AddressError as e:
        raise DirectoryFileError(path, number, f"bad address {text!r}: {e}") from None


def _check_local(
    domain: str, domains: frozenset[str], what: str, path: str, number: int
) -> None:
    if domain not in domains:
        raise DirectoryFileError(
            path, number, f"{what}: {domain} is not a local domain"
        )


def parse_users(
    text: str, path: str, domains: frozenset[str] | tuple[str, ...]
) -> tuple[User, ...]:
    """Parse a users file: ``address:password_hash:mailbox:enabled:quota`` lines.

    @param path: the file's name, for errors.
    @param domains: the local domains; every user must be in one.
    @return: the users, in file order.
    @raise DirectoryFileError: on a bad line, address, flag or quota, a user
        outside the local domains, or a repeated user.
    """
    local = frozenset(domains)
    users: dict[str, tuple[int, User]] = {}
    for number, line in _lines(text):
        # rsplit: a quoted local part may hold a colon, the other fields not.
        fields = [f.strip() for f in line.strip().rsplit(":", 4)]
        if len(fields) != 5:
            raise DirectoryFileError(
                path,
                number,
                f"expected address:password_hash:mailbox:enabled:quota,"
                f" found {len(fields)} field(s)",
            )
        address, password_hash, mailbox, enabled, quota = fields
        key = _address_key(address, path, number)
        _check_local(domain_of(key), local, f"user {key}", path, number)
        if enabled not in ("", "1", "0"):
            raise DirectoryFileError(
                path, number, f"enabled must be 1, 0 or empty, not {enabled!r}"
            )
        if quota and not _DIGITS.match(quota):
            raise DirectoryFileError(
                path,
                number,
                f"quota must be a whole number of bytes or empty, not {quota!r}",
            )
        if key in users:
            raise DirectoryFileError(
                path, number, f"user {key} repeated (first on line {users[key][0]})"
            )
        users[key] = (
            number,
            User(
                address=key,
                password_hash=password_hash,
                mailbox=mailbox,
                enabled=enabled != "0",
                quota=int(quota) if quota else None,
            ),
        )
    return tuple(u for _, u in users.values())


def _split_quoted(text: str, separator: str) -> tuple[list[str], bool]:
    """Split at separators outside double quotes; also say if a quote is open."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for c in text:
        if quoted:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == separator:
            pieces.append("".join(current))
            current = []
            continue
        current.append(c)
    pieces.append("".join(current))
    return pieces, quoted


def _closing_quote(text: str) -> int:
    """The index of the quote closing the one at index 0 (text has it)."""
    escaped = False
    for i in range(1, len(text)):
        if escaped:
            escaped = False
        elif text[i] == "\\":
            escaped = True
        elif text[i] == '"':
            return i
    return -1


def _target(piece: str, path: str, number: int) -> str:
    if piece.startswith('"') and _closing_quote(piece) == len(piece) - 1:
        target = re.sub(r"\\(.)", r"\1", piece[1:-1])
        if not target:
            raise DirectoryFileError(path, number, "empty quoted target")
        return target
    outside = "".join(
        p for i, p in enumerate(re.split(r'("(?:[^"\\]|\\.)*")', piece)) if i % 2 == 0
    )
    if any(c.isspace() for c in outside):
        raise DirectoryFileError(
            path,
            number,
            f"blank space in target {piece!r}: put the target in double quotes",
        )
    return piece


def _targets(text: str, path: str, number: int) -> list[str]:
    pieces, open_quote = _split_quoted(text, ",")
    if open_quote:
        raise DirectoryFileError(path, number, "unterminated double quote")
    return [_target(p.strip(), path, number) for p in pieces if p.strip()]


def _alias_key(text: str, path: str, number: int) -> str:
    if not text:
        raise DirectoryFileError(path, number, "empty alias key before ':'")
    if text.startswith("@"):
        try:
            return "@" + normalize_domain(text[1:])
        except AddressError as e:
            raise DirectoryFileError(
                path, number, f"bad catch-all key {text!r}: {e}"
            ) from None
    if "@" in text:
        return _address_key(text, path, number)
    try:
        # A bare local part: checked as the local part of a mailbox.
        return Address.parse(f"{text}@localhost", utf8=True).local.lower()
    except AddressError as e:
        raise DirectoryFileError(path, number, f"bad alias key {text!r}: {e}") from None


def parse_aliases(
    text: str, path: str, domains: frozenset[str] | tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    """Parse an aliases(5) file.

    @param path: the file's name, for errors.
    @param domains: the local domains; full and catch-all keys must be in one.
    @return: key to targets, in file order; keys are C{local@domain},
        C{@domain} or a bare local part.
    @raise DirectoryFileError: on a line with no C{:} after its key, a
        continuation line with no key before it, a bad key, a key outside
        the local domains, a repeated key, an alias with no targets, blank
        space outside quotes in a target, or an unterminated quote.
    """
    local = frozenset(domains)
    entries: dict[str, tuple[int, list[str]]] = {}
    current: list[str] | None = None
    for number, line in _lines(text):
        if line[0].isspace():
            if current is None:
                raise DirectoryFileError(
                    path, number, "continuation line without an alias key before it"
                )
            current.extend(_targets(line.strip(), path, number))
            continue
        pieces, _ = _split_quoted(line, ":")
        if len(pieces) == 1:
            raise DirectoryFileError(
                path, number, f"missing ':' after the alias key in {line.strip()!r}"
            )
        key = _alias_key(pieces[0].strip(), path, number)
        if "@" in key:
            _check_local(domain_of(key), local, f"alias {key}", path, number)
        if key in entries:
            raise DirectoryFileError(
                path, number, f"alias {key} repeated (first on line {entries[key][0]})"
            )
        current = _targets(":".join(pieces[1:]).strip(), path, number)
        entries[key] = (number, current)
    for key, (number, targets) in entries.items():
        if not targets:
            raise DirectoryFileError(path, number, f"alias {key} has no targets")
    return {k: tuple(t) for k, (_, t) in entries.items()}


# Formatting


def format_domains(domains: tuple[str, ...] | list[str]) -> str:
    """The text of a domains file holding these domains, sorted."""
    lines = ["# twistedmail local domains, one per line."]
    lines.extend(sorted(domains))
    return "\n".join(lines) + "\n"


def format_users(users: tuple[User, ...] | list[User]) -> str:
    """The text of a users file holding these users, sorted by address."""
    lines = ["# twistedmail users: address:password_hash:mailbox:enabled:quota"]
    for u in sorted(users, key=lambda u: u.address):
        quota = "" if u.quota is None else str(u.quota)
        enabled = "1" if u.enabled else "0"
        lines.append(f"{u.address}:{u.password_hash}:{u.mailbox}:{enabled}:{quota}")
    return "\n".join(lines) + "\n"


def _quote(target: str) -> str:
    # A continuation line starting with # would read as a comment.
    if (
        target
        and not target.startswith("#")
        and not any(c.isspace() or c in ',"\\' for c in target)
    ):
        return target
    escaped = target.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def format_aliases(aliases: Mapping[str, tuple[str, ...]]) -> str:
    """The text of an aliases file holding these aliases, sorted by key.

    Long target lists are wrapped onto continuation lines.
    """
    lines = ["# twistedmail aliases: key: target, target (aliases(5) format)"]
    for key, targets in sorted(aliases.items()):
        line = f"{key}:"
        quoted = [_quote(t) for t in targets]
        for i, t in enumerate(quoted):
            piece = f" {t}" + ("," if i < len(quoted) - 1 else "")
            if len(line) + len(piece) > _WRAP and not line.endswith(":"):
                lines.append(line)
                line = "   "
            line += piece
        lines.append(line)
    return "\n".join(lines) + "\n"


# Reading and writing files


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _stat(path: str) -> _Stat:
    try:
        return _stat_key(os.stat(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DirectoryFileError(path, 0, f"cannot read: {e.strerror}") from None


def _read(path: str) -> tuple[str, _Stat]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return "", None
    except OSError as e:
        raise DirectoryFileError(path, 0, f"cannot read: {e.strerror}") from None
    with f:
        try:
            version = _stat_key(os.fstat(f.fileno()))
            data = f.read()
        except OSError as e:
            raise DirectoryFileError(path, 0, f"cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8"), version
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DirectoryFileError(path, line, "not valid UTF-8") from None


def _write_atomic(path: str, text: str) -> tuple[int, int, int]:
    """Replace a file's contents via temp file, fsync and rename.

    The file keeps its permission bits; a new file is readable by its owner
    only (the users file holds password hashes).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(temp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return _stat_key(os.stat(path))


@dataclass(frozen=True)
class _Contents:
    """Everything the three files hold."""

    domains: tuple[str, ...] = ()
    users: tuple[User, ...] = ()
    aliases: Mapping[str, tuple[str, ...]] | None = None

    def memory(self) -> MemoryDirectory:
        """A MemoryDirectory holding these contents."""
        return MemoryDirectory(self.domains, self.users, dict(self.aliases or {}))

    @classmethod
    def of(cls, memory: MemoryDirectory) -> _Contents:
        """What a MemoryDirectory holds."""
        domains: list[str] = _settled(memory.list_domains())
        users: list[User] = _settled(memory.list_users())
        aliases: list[tuple[str, tuple[str, ...]]] = _settled(memory.list_aliases())
        return cls(tuple(domains), tuple(users), dict(aliases))


def _settled(d: Deferred[_T]) -> _T:
    """The result of a Deferred that has fired (MemoryDirectory's do)."""
    results: list[_T | Failure] = []
    d.addBoth(results.append)
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


@dataclass(frozen=True)
class _Paths:
    domains: str
    users: str
    aliases: str

    def all(self) -> tuple[str, str, str]:
        """The domains, users and aliases paths, in that order."""
        return (self.domains, self.users, self.aliases)


_Stats = tuple[_Stat, _Stat, _Stat]


def _load(paths: _Paths) -> tuple[_Contents, _Stats]:
    """Read and parse all three files (blocking)."""
    domains_text, domains_stat = _read(paths.domains)
    users_text, users_stat = _read(paths.users)
    aliases_text, aliases_stat = _read(paths.aliases)
    domains = parse_domains(domains_text, paths.domains)
    contents = _Contents(
        domains,
        parse_users(users_text, paths.users, domains),
        parse_aliases(aliases_text, paths.aliases, domains),
    )
    return contents, (domains_stat, users_stat, aliases_stat)


def _refresh(
    paths: _Paths, seen: _Stats | None
) -> tuple[_Stats, _Contents | DirectoryFileError] | None:
    """Reload when a file differs from the versions seen (blocking).

    @return: None when nothing changed, else the versions now seen and the
        new contents or the error that stops them loading.
    """
    try:
        now: _Stats = (
            _stat(paths.domains),
            _stat(paths.users),
            _stat(paths.aliases),
        )
    except DirectoryFileError as e:
        return seen or (None, None, None), e
    if now == seen:
        return None
    try:
        contents, versions = _load(paths)
    except DirectoryFileError as e:
        return now, e
    return versions, contents


@implementer(IDirectoryAdmin)
class FilesDirectory:
    """A directory kept in a domains file, a users file and an aliases file.

    @param domains_path: the domains file.
    @param users_path: the passwd-style users file.
    @param aliases_path: the aliases(5) file.
    @param clock: schedules the checks for changed files.
    @param reload_interval: seconds between those checks.
    @param run_blocking: runs file reads and writes; the default runs them at
        once, L{run_in_thread_pool} keeps them off the reactor thread.
    """

    def __init__(
        self,
        domains_path: str,
        users_path: str,
        aliases_path: str,
        clock: IReactorTime,
        reload_interval: float,
        *,
        run_blocking: BlockingRunner = _run_here,
    ) -> None:
        self.domains_path = domains_path
        self.users_path = users_path
        self.aliases_path = aliases_path
        self._paths = _Paths(domains_path, users_path, aliases_path)
        self._clock = clock
        self._interval = reload_interval
        self._run = run_blocking
        self._lock = DeferredLock()
        self._contents = _Contents()
        self._memory = self._contents.memory()
        self._seen: _Stats | None = None
        self._broken: DirectoryFileError | None = None
        self._loop: LoopingCall | None = None
        self._generation = 0

    def generation(self) -> int:
        """A number that changes whenever an answer may have changed (each
        reload of the files and each change moves it), for the alias
        expander's cache."""
        return self._generation

    # Lifecycle

    def start(self) -> Deferred[None]:
        """Read the files and start watching them for changes.

        @raise DirectoryFileError: (through the Deferred) when a file cannot
            be read or parsed; nothing is loaded then.
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        async with self._lock:
            contents, seen = await self._run(lambda: _load(self._paths))
            self._use(contents, seen)
        loop = LoopingCall(self.check)
        loop.clock = self._clock
        loop.start(self._interval, now=False)
        self._loop = loop

    def stop(self) -> Deferred[None]:
        """Stop watching the files (after a check or change in progress)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self._lock.run(lambda: None)

    def _use(self, contents: _Contents, seen: _Stats) -> None:
        self._generation += 1
        self._contents = contents
        self._memory = contents.memory()
        self._seen = seen
        self._broken = None

    def check(self) -> Deferred[None]:
        """Reload the files if one changed since it was last read.

        A file that does not parse is logged and the previous contents stay.
        Called every C{reload_interval} seconds once started.
        """
        d = self._lock.run(lambda: Deferred.fromCoroutine(self._check()))
        d.addErrback(lambda f: _log.failure("checking the directory files failed", f))
        return d

    async def _check(self) -> None:
        paths, seen = self._paths, self._seen
        result = await self._run(lambda: _refresh(paths, seen))
        if result is None:
            return
        versions, loaded = result
        if isinstance(loaded, DirectoryFileError):
            self._seen = versions
            if str(loaded) != str(self._broken):
                _log.error(
                    "{error}; keeping the directory as it was before",
                    error=str(loaded),
                )
            self._broken = loaded
            return
        self._use(loaded, versions)
        _log.info("reloaded the directory files")

    # IDirectory

    def is_local_domain(self, domain: str) -> Deferred[bool]:
        """Whether the domain is in the domains file."""
        return self._memory.is_local_domain(domain)

    def list_domains(self) -> Deferred[list[str]]:
        """All local domains, sorted."""
        return self._memory.list_domains()

    def get_user(self, address: str) -> Deferred[User | None]:
        """The user with this key, or None."""
        return self._memory.get_user(address)

    def list_users(self, domain: str | None = None) -> Deferred[list[User]]:
        """All users (of one domain when given), sorted by address."""
        return self._memory.list_users(domain)

    def get_alias(self, address: str) -> Deferred[tuple[str, ...] | None]:
        """The alias with this key; else, for an address in a local domain,
        the bare local-part alias of its local part."""
        aliases = self._contents.aliases or {}
        targets = aliases.get(address)
        if targets is None:
            local, at, domain = address.rpartition("@")
            if local and at and domain in self._contents.domains:
                targets = aliases.get(local)
        return succeed(targets)

    def list_aliases(
        self, domain: str | None = None
    ) -> Deferred[list[tuple[str, tuple[str, ...]]]]:
        """All aliases (of one domain when given) as (key, targets), sorted.

        Bare local-part keys belong to no one domain: they are listed only
        when no domain is given.
        """
        return succeed(
            [
                (k, t)
                for k, t in _settled(self._memory.list_aliases())
                if domain is None or ("@" in k and domain_of(k) == domain)
            ]
        )

    # IDirectoryAdmin

    def add_domain(self, domain: str) -> Deferred[None]:
        """Make a domain local (rewrites the domains file)."""
        return self._change(0, lambda m: m.add_domain(domain))

    def remove_domain(self, domain: str) -> Deferred[None]:
        """Remove a domain; refused while users or aliases remain in it."""
        return self._change(0, lambda m: m.remove_domain(domain))

    def add_user(self, user: User) -> Deferred[None]:
        """Add a user in a local domain (rewrites the users file)."""
        return self._change(1, lambda m: m.add_user(user))

    def set_password(self, address: str, password_hash: str) -> Deferred[None]:
        """Replace a user's password hash (rewrites the users file)."""
        return self._change(1, lambda m: m.set_password(address, password_hash))

    def set_enabled(self, address: str, enabled: bool) -> Deferred[None]:
        """Enable or disable a user (rewrites the users file)."""
        return self._change(1, lambda m: m.set_enabled(address, enabled))

    def remove_user(self, address: str) -> Deferred[None]:
        """Remove a user (rewrites the users file; the mailbox stays)."""
        return self._change(1, lambda m: m.remove_user(address))

    def add_alias(self, address: str, targets: tuple[str, ...]) -> Deferred[None]:
        """Add targets to an alias (rewrites the aliases file)."""
        return self._change(2, lambda m: m.add_alias(address, tuple(targets)))

    def remove_alias(
        self, address: str, targets: tuple[str, ...] = ()
    ) -> Deferred[None]:
        """Remove some targets of an alias, or all (rewrites the aliases file)."""
        return self._change(2, lambda m: m.remove_alias(address, tuple(targets)))

    def _change(
        self, which: int, change: Callable[[MemoryDirectory], Deferred[None]]
    ) -> Deferred[None]:
        return self._lock.run(
            lambda: Deferred.fromCoroutine(self._apply(which, change))
        )

    async def _apply(
        self, which: int, change: Callable[[MemoryDirectory], Deferred[None]]
    ) -> None:
        # Pick up (or refuse to overwrite) an edit made since the last check.
        await self._check()
        if self._broken is not None:
            raise DirectoryError(
                f"{self._broken}; fix the file before changing the directory"
            )
        memory = self._contents.memory()
        _settled(change(memory))
        new = _Contents.of(memory)
        path = self._paths.all()[which]
        text = _render(new, which)
        _verify(new, which, text, path)
        try:
            version = await self._run(lambda: _write_atomic(path, text))
        except OSError as e:
            raise DirectoryError(f"cannot write {path}: {e.strerror}") from None
        seen = list(self._seen or (None, None, None))
        seen[which] = version
        self._use(new, (seen[0], seen[1], seen[2]))


def _render(contents: _Contents, which: int) -> str:
    if which == 0:
        return format_domains(contents.domains)
    if which == 1:
        return format_users(contents.users)
    return format_aliases(contents.aliases or {})


def _verify(contents: _Contents, which: int, text: str, path: str) -> None:
    """Refuse a change that would not read back as it is (before writing)."""
    try:
        if which == 0:
            same = parse_domains(text, path) == contents.domains
        elif which == 1:
            same = parse_users(text, path, contents.domains) == contents.users
        else:
            back = parse_aliases(text, path, contents.domains)
            same = back == dict(contents.aliases or {})
    except DirectoryFileError as e:
        raise DirectoryError(f"cannot be written to {path}: {e.problem}") from None
    if not same:
        raise DirectoryError(
            f"cannot be written to {path} so that it reads back the same"
            " (not in normalised form, or a line that would read as a comment)"
        )
