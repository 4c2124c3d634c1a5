# -*- test-case-name: tests.test_expander -*-
"""Alias expansion: the "expand" step of the flow.

The SMTP server asks at RCPT whether a recipient exists, and the QueueRunner
asks, after spooling, where a recipient's copy must go.  Both call
L{AliasExpander.expand}, which asks the directory and answers with an
L{Expansion}: typed destinations (a local mailbox, a remote address, a
program, a file), typed failures (each with the exact reply for the peer) and
the steps taken, which the admin CLI's ``resolve`` prints.

Rules, for an address in a local domain, in order:

 1. an alias with the exact key (L{Address.key}: local part case-folded,
    domain normalised) expands to its targets;
 2. a user with the exact key is a mailbox (a disabled user is a failure:
    it receives no mail);
 3. with subaddressing (``user+tag@domain``; the separator characters come
    from the settings, ``""`` turns it off) rules 1 and 2 for the base
    address ``user@domain``;
 4. the domain's catch-all alias ``@domain``;
 5. ``postmaster@domain``, which always exists (RFC 5321 §4.5.1): to the
    configured postmaster address when one is set, otherwise to the domain's
    built-in postmaster mailbox;
 6. otherwise the user is unknown.

An address in any other domain is a remote address.  Alias targets are
addresses (a bare local part is qualified with the alias's domain),
``|command``, ``/path`` (a file) or ``:include:/path`` (a file listing more
targets, one per line or comma separated, ``#`` comments).  Expansion is
depth first and recursive.  Each alias, catch-all or include counts one step
against C{max_depth}; a target naming an address on the current path is the
sendmail "alias to self" idiom (``alice: alice, bob``) when that address is a
real user, and an alias loop otherwise.  An alias that has already been
expanded at the same or a smaller depth is not expanded again (its
destinations are already listed), which bounds the work on any alias graph.
Duplicate destinations are dropped (the first wins, compared by key), and
program and file targets are refused unless the settings allow them.

Directory errors are not expansion results: they fail the returned Deferred,
and the caller answers ``451 4.3.0``.

Each recipient is expanded twice on its way in: at RCPT by the SMTP server,
then by the queue runner after spooling, a few milliseconds later.  So the
expander keeps its answers (at most C{cache_size}) when the directory can
tell that nothing changed since: a directory with a C{generation()} method
returns a number that moves whenever any of its answers may have changed
(or None while it cannot tell), and a kept expansion is used only under the
number it was made under.  Expansions that read (or failed to read) an
include file are never kept (the file can change without the directory),
nor are expansions of a directory without C{generation()}.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from twistedmail.address import Address, AddressError
from twistedmail.config import AliasSettings
from twistedmail.interfaces import IDirectory, User
from twistedmail.replies import (
    ALIAS_INCLUDE_UNAVAILABLE,
    ALIAS_LOOP,
    ALIAS_TOO_DEEP,
    BAD_ALIAS_TARGET,
    MAILBOX_UNAVAILABLE,
    TARGET_REFUSED,
    UNKNOWN_USER,
    Reply,
)

__all__ = [
    "CACHE_SIZE",
    "MAX_INCLUDE_SIZE",
    "AliasExpander",
    "AliasLoop",
    "BadTarget",
    "BlockingRunner",
    "Destination",
    "DisabledUser",
    "Expansion",
    "Failure",
    "FileTarget",
    "How",
    "IncludeReader",
    "IncludeUnreadable",
    "LocalMailbox",
    "ProgramTarget",
    "RemoteAddress",
    "Step",
    "TargetRefused",
    "TooDeep",
    "UnknownUser",
    "include_reader",
    "parse_targets",
    "read_include_file",
]

# An include file is a mailing list, not a database: anything bigger is
# refused rather than read into memory.
MAX_INCLUDE_SIZE = 1024 * 1024

#: How many expansions the expander keeps by default (module docstring).
CACHE_SIZE = 4096

_INCLUDE = ":include:"


# Destinations


@dataclass(frozen=True)
class LocalMailbox:
    """A local user's mailbox.

    @ivar address: the user's key (``local@domain``), or
        ``postmaster@domain`` for a domain's built-in postmaster mailbox.
    @ivar user: the user, or None for the built-in postmaster mailbox.
    """

    address: str
    user: User | None

    @property
    def key(self) -> str:
        """What duplicates are compared by."""
        return self.address.lower()

    def __str__(self) -> str:
        if self.user is None:
            return f"mailbox {self.address} (built-in postmaster)"
        return f"mailbox {self.address}"


@dataclass(frozen=True)
class RemoteAddress:
    """An address in a domain that is not local: the relay's business.

    @ivar address: the address as written (domain normalised).
    """

    address: str

    @property
    def key(self) -> str:
        """What duplicates are compared by (local part case-folded)."""
        local, _, domain = self.address.rpartition("@")
        return f"{local.lower()}@{domain}"

    def __str__(self) -> str:
        return f"remote {self.address}"


@dataclass(frozen=True)
class ProgramTarget:
    """A command that gets the message on its standard input.

    @ivar command: the command line, without the leading ``|``.
    @ivar alias: the key of the alias that named it.
    """

    command: str
    alias: str

    @property
    def key(self) -> str:
        """What duplicates are compared by."""
        return f"|{self.command}"

    def __str__(self) -> str:
        return f"program |{self.command} (alias {self.alias})"


@dataclass(frozen=True)
class FileTarget:
    """A file the message is appended to.

    @ivar path: the absolute path.
    @ivar alias: the key of the alias that named it.
    """

    path: str
    alias: str

    @property
    def key(self) -> str:
        """What duplicates are compared by."""
        return self.path

    def __str__(self) -> str:
        return f"file {self.path} (alias {self.alias})"


Destination: TypeAlias = LocalMailbox | RemoteAddress | ProgramTarget | FileTarget


# Failures


@dataclass(frozen=True)
class UnknownUser:
    """No alias, user, catch-all or postmaster rule matches the address."""

    address: str
    reply: ClassVar[Reply] = UNKNOWN_USER

    def __str__(self) -> str:
        return f"unknown user {self.address}"


@dataclass(frozen=True)
class DisabledUser:
    """The user exists but is disabled, and so receives no mail."""

    address: str
    reply: ClassVar[Reply] = MAILBOX_UNAVAILABLE

    def __str__(self) -> str:
        return f"user {self.address} is disabled"


@dataclass(frozen=True)
class AliasLoop:
    """An alias leads back to itself through addresses that are not users.

    @ivar chain: the keys around the loop, the repeated one first and last.
    """

    chain: tuple[str, ...]
    reply: ClassVar[Reply] = ALIAS_LOOP

    def __str__(self) -> str:
        return "alias loop: " + " -> ".join(self.chain)


@dataclass(frozen=True)
class TooDeep:
    """Expanding one more alias would exceed the depth limit.

    @ivar chain: the keys from the recipient to the alias not expanded.
    """

    chain: tuple[str, ...]
    reply: ClassVar[Reply] = ALIAS_TOO_DEEP

    def __str__(self) -> str:
        return "alias expansion too deep: " + " -> ".join(self.chain)


@dataclass(frozen=True)
class TargetRefused:
    """A program or file target that the settings do not allow.

    @ivar target: the target as written.
    @ivar why: the reason, for the log.
    """

    target: str
    why: str
    reply: ClassVar[Reply] = TARGET_REFUSED

    def __str__(self) -> str:
        return f"{self.target} refused: {self.why}"


@dataclass(frozen=True)
class BadTarget:
    """An alias target that is not an address, program, file or include.

    @ivar target: the target as written.
    @ivar why: what is wrong with it.
    """

    target: str
    why: str
    reply: ClassVar[Reply] = BAD_ALIAS_TARGET

    def __str__(self) -> str:
        return f"bad alias target {self.target!r}: {self.why}"


@dataclass(frozen=True)
class IncludeUnreadable:
    """An include file could not be read; temporary, as the file may return.

    @ivar path: the include file's path.
    @ivar why: the reason, for the log.
    """

    path: str
    why: str
    reply: ClassVar[Reply] = ALIAS_INCLUDE_UNAVAILABLE

    def __str__(self) -> str:
        return f"cannot read include file {self.path}: {self.why}"


Failure: TypeAlias = (
    UnknownUser
    | DisabledUser
    | AliasLoop
    | TooDeep
    | TargetRefused
    | BadTarget
    | IncludeUnreadable
)


# Steps and the result


class How(enum.StrEnum):
    """How one step resolved an address or target."""

    ALIAS = "alias"
    USER = "user"
    SUBADDRESS = "subaddress"
    CATCH_ALL = "catch-all"
    POSTMASTER = "postmaster"
    INCLUDE = "include"
    REMOTE = "remote"
    PROGRAM = "program"
    FILE = "file"
    SEEN = "already expanded"
    FAILED = "failed"


@dataclass(frozen=True)
class Step:
    """One step of an expansion.

    @ivar depth: how many alias steps led here (0 for the recipient).
    @ivar address: the address or target resolved.
    @ivar how: how it was resolved.
    @ivar result: what it resolved to (targets, a destination, a failure).
    """

    depth: int
    address: str
    how: How
    result: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{'  ' * self.depth}{self.address}: {self.how}"
        if self.result:
            text += " -> " + ", ".join(self.result)
        return text


@dataclass(frozen=True)
class Expansion:
    """Where one recipient's mail goes.

    @ivar destinations: without duplicates, in the order first reached.
    @ivar failures: what could not be resolved, in the order met.
    @ivar steps: every step taken, in order, for people to read.
    """

    destinations: tuple[Destination, ...]
    failures: tuple[Failure, ...]
    steps: tuple[Step, ...]

    def rcpt_reply(self) -> Reply | None:
        """The refusal to give at RCPT, or None when the recipient is accepted.

        A recipient with at least one destination is accepted (failures of
        some list members are reported later, by bounce).  Otherwise the first
        failure's reply; an alias that lists nothing at all is unknown.
        """
        if self.destinations:
            return None
        if self.failures:
            return self.failures[0].reply
        return UNKNOWN_USER

    def describe(self) -> list[str]:
        """Lines for people: the steps indented by depth, then the result."""
        lines = [str(step) for step in self.steps]
        lines.append("destinations:" if self.destinations else "destinations: none")
        lines.extend(f"  {d}" for d in self.destinations)
        if self.failures:
            lines.append("failures:")
            lines.extend(f"  {f.reply} ({f})" for f in self.failures)
        return lines


# Include files


def parse_targets(text: str) -> tuple[str, ...]:
    """Split an include file into targets.

    One target per line or several separated by commas; a ``#`` at the start
    of a target or after white space starts a comment (``#`` is legal inside
    a local part, so ``a#b@example.com`` stays whole).  Double quotes protect
    commas and ``#`` (``"|/usr/bin/prog a,b"``); the quotes are kept.
    """
    targets: list[str] = []
    for line in text.splitlines():
        item: list[str] = []
        quoted = escaped = False
        for c in line:
            if escaped:
                escaped = False
            elif quoted and c == "\\":
                escaped = True
            elif c == '"':
                quoted = not quoted
            elif not quoted and c == ",":
                targets.append("".join(item))
                item = []
                continue
            elif not quoted and c == "#" and (not item or item[-1].isspace()):
                break
            item.append(c)
        targets.append("".join(item))
    return tuple(t.strip() for t in targets if t.strip())


def read_include_file(path: str) -> str:
    """Read an include file (blocking): at most L{MAX_INCLUDE_SIZE}, UTF-8.

    @raise OSError: when the file cannot be read.
    @raise ValueError: when it is too big or not UTF-8.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_INCLUDE_SIZE + 1)
    if len(data) > MAX_INCLUDE_SIZE:
        raise ValueError(f"larger than {MAX_INCLUDE_SIZE} bytes")
    return data.decode("utf-8")


IncludeReader: TypeAlias = Callable[[str], "Deferred[str]"]
BlockingRunner: TypeAlias = Callable[[Callable[[], str]], "Deferred[str]"]


def include_reader(run: BlockingRunner | None = None) -> IncludeReader:
    """An include reader over the file system.

    @param run: runs a blocking call off the reactor thread, for example
        C{lambda f: deferToThreadPool(reactor, pool, f)}.  Without one the
        file is read at once on the calling thread: include files are small.
    @return: a function from a path to a Deferred firing with the file's text,
        or failing with OSError or ValueError.
    """

    def read(path: str) -> Deferred[str]:
        if run is None:
            return maybeDeferred(read_include_file, path)
        return run(lambda: read_include_file(path))

    return read


# The expander


class _Run:
    """What one call to L{AliasExpander.expand} has found so far."""

    def __init__(self) -> None:
        self.destinations: dict[str, Destination] = {}
        self.failures: list[Failure] = []
        self.steps: list[Step] = []
        # Expansion key (alias, "@domain", ":include:path") -> the smallest
        # depth it has been expanded at.
        self.expanded: dict[str, int] = {}
        self.local_domains: dict[str, bool] = {}

    def step(self, depth: int, address: str, how: How, result: Iterable[str]) -> None:
        self.steps.append(Step(depth, address, how, tuple(result)))

    def deliver(self, depth: int, address: str, how: How, to: Destination) -> None:
        if to.key in self.destinations:
            self.step(depth, address, how, (f"{to} (duplicate)",))
        else:
            self.destinations[to.key] = to
            self.step(depth, address, how, (str(to),))

    def fail(self, depth: int, address: str, failure: Failure) -> None:
        self.step(depth, address, How.FAILED, (f"{failure}",))
        if failure not in self.failures:
            self.failures.append(failure)

    def result(self) -> Expansion:
        return Expansion(
            tuple(self.destinations.values()), tuple(self.failures), tuple(self.steps)
        )


class AliasExpander:
    """Resolves recipient addresses to destinations by asking the directory.

    @param directory: where domains, users and aliases come from.
    @param settings: the ``[aliases]`` settings (separator, depth limit,
        program and file permission, the postmaster address).
    @param read_include: reads an include file given its path; fires with its
        text or fails with OSError or ValueError.  Defaults to
        C{include_reader()}, which reads on the calling thread; the service
        passes one that reads in a thread pool.
    @param cache_size: how many expansions to keep (module docstring); 0
        keeps none.
    @raise AddressError: when C{settings.postmaster} is not an address (the
        configuration loader checks this).
    """

    def __init__(
        self,
        directory: IDirectory,
        settings: AliasSettings,
        read_include: IncludeReader | None = None,
        *,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._directory = directory
        self._settings = settings
        self._read_include = read_include or include_reader()
        self._postmaster = (
            Address.parse(settings.postmaster, utf8=True)
            if settings.postmaster
            else None
        )
        generation = getattr(directory, "generation", None)
        self._generation: Callable[[], int | None] | None = (
            generation if callable(generation) and cache_size > 0 else None
        )
        self._cache_size = cache_size
        # The address as given -> (the directory's generation, its expansion).
        self._cache: dict[str, tuple[int, Expansion]] = {}

    def expand(self, address: Address) -> Deferred[Expansion]:
        """Resolve one recipient.

        @return: a Deferred firing with the L{Expansion}; it fails only when
            the directory fails.
        """
        if self._generation is None:
            return Deferred.fromCoroutine(self._expand(address))
        generation = self._generation()
        if generation is None:
            return Deferred.fromCoroutine(self._expand(address))
        # The form as given, not the key: the steps and remote destinations
        # show it.
        shown = str(address)
        hit = self._cache.get(shown)
        if hit is not None and hit[0] == generation:
            return succeed(hit[1])
        d = Deferred.fromCoroutine(self._expand(address))
        d.addCallback(self._keep, shown, generation)
        return d

    def _keep(self, expansion: Expansion, shown: str, generation: int) -> Expansion:
        """Keep an expansion made under C{generation}, unless the directory
        changed meanwhile or it read an include file."""
        assert self._generation is not None
        if (
            self._generation() != generation
            or any(step.how is How.INCLUDE for step in expansion.steps)
            or any(isinstance(f, IncludeUnreadable) for f in expansion.failures)
        ):
            return expansion
        cache = self._cache
        if shown not in cache and len(cache) >= self._cache_size:
            # Evict the oldest (dicts keep insertion order).
            del cache[next(iter(cache))]
        cache[shown] = (generation, expansion)
        return expansion

    async def _expand(self, address: Address) -> Expansion:
        # Depth first with an explicit stack rather than recursion, so that a
        # large max_depth cannot exhaust Python's stack.  A list's targets are
        # pushed in reverse: each one's whole subtree is done before the next
        # is popped, exactly as recursion would order the steps.
        run = _Run()
        stack = list(reversed(await self._address(run, address, (), 0)))
        while stack:
            pending = stack.pop()
            stack.extend(reversed(await self._target(run, pending)))
        return run.result()

    async def _is_local(self, run: _Run, domain: str) -> bool:
        if domain not in run.local_domains:
            run.local_domains[domain] = await self._directory.is_local_domain(domain)
        return run.local_domains[domain]

    async def _address(
        self, run: _Run, addr: Address, path: tuple[str, ...], depth: int
    ) -> list[_Pending]:
        """Resolve an address reached after C{depth} alias steps along C{path}.

        @return: the targets still to resolve.
        """
        key, shown = addr.key, str(addr)
        if not await self._is_local(run, addr.domain):
            run.deliver(depth, shown, How.REMOTE, RemoteAddress(shown))
            return []
        split = addr.split_detail(self._settings.subaddress_separator)
        base = split[0] if split else None
        if key in path:
            await self._on_path(run, addr, base, path, depth)
            return []
        found = await self._alias_or_user(run, addr, key, path, depth)
        if found is not None:
            return found
        here = path + (key,)
        if base is not None:
            run.step(depth, shown, How.SUBADDRESS, (str(base),))
            if base.key in path:
                await self._on_path(run, base, None, path, depth)
                return []
            found = await self._alias_or_user(run, base, base.key, here, depth)
            if found is not None:
                return found
        catch_all = f"@{addr.domain}"
        targets = await self._directory.get_alias(catch_all)
        if targets is not None:
            return self._expand_list(
                run, How.CATCH_ALL, catch_all, shown, targets, here, depth, addr.domain
            )
        if (base or addr).local.lower() == "postmaster":
            return self._postmaster_rule(run, addr, path, depth)
        run.fail(depth, shown, UnknownUser(shown))
        return []

    async def _alias_or_user(
        self, run: _Run, addr: Address, key: str, path: tuple[str, ...], depth: int
    ) -> list[_Pending] | None:
        """Rules 1 and 2 for one key; None when neither matches."""
        targets = await self._directory.get_alias(key)
        if targets is not None:
            return self._expand_list(
                run, How.ALIAS, key, str(addr), targets, path, depth, addr.domain
            )
        user = await self._directory.get_user(key)
        if user is not None:
            self._mailbox(run, str(addr), user, depth)
            return []
        return None

    def _mailbox(self, run: _Run, shown: str, user: User, depth: int) -> None:
        if user.enabled:
            run.deliver(depth, shown, How.USER, LocalMailbox(user.address, user))
        else:
            run.fail(depth, shown, DisabledUser(user.address))

    async def _on_path(
        self,
        run: _Run,
        addr: Address,
        base: Address | None,
        path: tuple[str, ...],
        depth: int,
    ) -> None:
        """An address already being expanded: its user's mailbox, or a loop."""
        for candidate in (addr, base):
            if candidate is None:
                continue
            user = await self._directory.get_user(candidate.key)
            if user is not None:
                self._mailbox(run, str(addr), user, depth)
                return
        start = path.index(addr.key)
        run.fail(depth, str(addr), AliasLoop(path[start:] + (addr.key,)))

    def _postmaster_rule(
        self, run: _Run, addr: Address, path: tuple[str, ...], depth: int
    ) -> list[_Pending]:
        """Rule 5: postmaster@ exists in every local domain (RFC 5321 §4.5.1)."""
        own = f"postmaster@{addr.domain}"
        configured = self._postmaster
        if configured is None or configured.key == own:
            run.deliver(depth, str(addr), How.POSTMASTER, LocalMailbox(own, None))
            return []
        if addr.key != own:
            path += (addr.key,)
        return self._expand_list(
            run,
            How.POSTMASTER,
            own,
            str(addr),
            (str(configured),),
            path,
            depth,
            addr.domain,
        )

    def _enter(
        self, run: _Run, ekey: str, shown: str, path: tuple[str, ...], depth: int
    ) -> bool:
        """Whether to expand C{ekey} now; records why not otherwise."""
        if ekey in path:
            start = path.index(ekey)
            run.fail(depth, shown, AliasLoop(path[start:] + (ekey,)))
            return False
        if run.expanded.get(ekey, depth + 1) <= depth:
            run.step(depth, shown, How.SEEN, ())
            return False
        if depth >= self._settings.max_depth:
            run.fail(depth, shown, TooDeep(path + (ekey,)))
            return False
        run.expanded[ekey] = depth
        return True

    def _expand_list(
        self,
        run: _Run,
        how: How,
        ekey: str,
        shown: str,
        targets: tuple[str, ...],
        path: tuple[str, ...],
        depth: int,
        domain: str,
    ) -> list[_Pending]:
        """Expand an alias, catch-all or postmaster redirect named C{ekey}."""
        if not self._enter(run, ekey, shown, path, depth):
            return []
        run.step(depth, shown, how, targets)
        inner = path + (ekey,)
        return [_Pending(t, inner, depth + 1, domain, ekey) for t in targets]

    async def _target(self, run: _Run, pending: _Pending) -> list[_Pending]:
        """Resolve one alias target; returns the targets still to resolve."""
        text, depth, owner = pending.text, pending.depth, pending.owner
        target = text.strip()
        inner = target[1:-1].strip() if len(target) > 1 else ""
        if (
            target.startswith('"')
            and target.endswith('"')
            and (inner[:1] in ("|", "/") or inner.lower().startswith(_INCLUDE))
        ):
            target = inner
        elif target.startswith("<") and target.endswith(">"):
            target = target[1:-1].strip()
        if not target:
            run.fail(depth, text, BadTarget(text, "empty target"))
        elif target.startswith("|"):
            command = target[1:].strip()
            if not command:
                run.fail(depth, text, BadTarget(text, "empty command"))
            elif not self._settings.allow_programs:
                reason = "program targets are not enabled (allow_programs)"
                run.fail(depth, text, TargetRefused(text, reason))
            else:
                run.deliver(depth, text, How.PROGRAM, ProgramTarget(command, owner))
        elif target.lower().startswith(_INCLUDE):
            file = target[len(_INCLUDE) :].strip()
            return await self._include(run, pending, file)
        elif target.startswith("/"):
            if not self._settings.allow_files:
                reason = "file targets are not enabled (allow_files)"
                run.fail(depth, text, TargetRefused(text, reason))
            else:
                run.deliver(depth, text, How.FILE, FileTarget(target, owner))
        else:
            if "@" not in target:
                target = f"{target}@{pending.domain}"
            try:
                addr = Address.parse(target, utf8=True)
            except AddressError as e:
                run.fail(depth, text, BadTarget(text, str(e)))
                return []
            return await self._address(run, addr, pending.path, depth)
        return []

    async def _include(self, run: _Run, pending: _Pending, file: str) -> list[_Pending]:
        """Expand an ``:include:`` target: the file's targets, one step deeper."""
        text, path, depth = pending.text, pending.path, pending.depth
        if not file.startswith("/"):
            run.fail(depth, text, BadTarget(text, "include path must be absolute"))
            return []
        ekey = f"{_INCLUDE}{file}"
        if not self._enter(run, ekey, text, path, depth):
            return []
        try:
            content = await self._read_include(file)
        except (OSError, ValueError) as e:
            del run.expanded[ekey]
            run.fail(depth, text, IncludeUnreadable(file, _reason(e)))
            return []
        targets = parse_targets(content)
        run.step(depth, text, How.INCLUDE, targets)
        inner = path + (ekey,)
        # Targets listed in an include belong to the alias that included it.
        return [
            _Pending(t, inner, depth + 1, pending.domain, pending.owner)
            for t in targets
        ]


@dataclass(frozen=True)
class _Pending:
    """An alias target waiting to be resolved.

    @ivar text: the target as written.
    @ivar path: the keys being expanded above it (for loop detection).
    @ivar depth: how many alias steps led to it.
    @ivar domain: qualifies a bare local part.
    @ivar owner: the alias that named it (for programs and files).
    """

    text: str
    path: tuple[str, ...]
    depth: int
    domain: str
    owner: str


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
