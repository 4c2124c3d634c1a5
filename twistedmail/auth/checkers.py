# -*- test-case-name: tests.test_auth -*-
"""The credentials checker: the login step that asks the directory.

L{DirectoryChecker} checks username/password credentials against the users in
an L{IDirectory}.  A user logs in with the full address, or with the local
part alone when a default domain is configured (``[auth] default_domain``);
either way the lookup is case-insensitive the way the directory keys are
(L{twistedmail.address.Address.key}).

Failures do not tell an attacker which usernames exist: an unknown user, a
disabled user, a user without a usable hash and a wrong password all raise
L{UnauthorizedLogin}, and each of them has run exactly one full password
verification first (against L{twistedmail.auth.passwords.dummy_hash} when
there is no real hash to check), so they take the same time.  The
verification is CPU-bound, so it runs through the injected C{run_in_thread}
(normally L{thread_runner}: a thread pool), never on the reactor thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from argon2 import PasswordHasher
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from twistedmail.address import Address, AddressError
from twistedmail.auth.passwords import dummy_hash, is_known_hash, verify_password
from twistedmail.interfaces import IDirectory

__all__ = ["DirectoryChecker", "thread_runner"]

RunInThread = Callable[..., Deferred[Any]]
Verify = Callable[[str, bytes], bool]


def thread_runner(reactor: IReactorFromThreads, threadpool: ThreadPool) -> RunInThread:
    """A C{run_in_thread} for L{DirectoryChecker} that uses a thread pool.

    @return: C{run(f, *args)} giving a Deferred that fires, in the reactor
        thread, with C{f(*args)} computed in one of C{threadpool}'s threads.
    """
    return functools.partial(deferToThreadPool, reactor, threadpool)


def _text(value: str | bytes) -> str | None:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _secret(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogatepass")


@implementer(ICredentialsChecker)
class DirectoryChecker:
    """Checks L{IUsernamePassword} credentials against the directory.

    @param directory: where users are looked up.
    @param default_domain: the domain for logins by local part alone; ``""``
        makes such logins fail.
    @param run_in_thread: C{run(f, *args) -> Deferred} running C{f} off the
        reactor thread (L{thread_runner}); tests pass a synchronous runner.
    @param hasher: the argon2 parameters new hashes are made with (None:
        the defaults); the dummy hash uses them too.
    @param verify: C{verify(stored_hash, password) -> bool}; by default
        L{verify_password} with C{hasher}.
    @param failure_hash: the hash verified against when the user has none
        (unknown, or no usable hash); by default C{dummy_hash(hasher)}, made
        on first need, in C{run_in_thread}.  It should have the parameters
        of real hashes so every failure costs the same.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        directory: IDirectory,
        default_domain: str,
        run_in_thread: RunInThread,
        *,
        hasher: PasswordHasher | None = None,
        verify: Verify | None = None,
        failure_hash: str | None = None,
    ) -> None:
        self._directory = directory
        self._default_domain = default_domain
        self._run_in_thread = run_in_thread
        self._hasher = hasher
        self._verify: Verify = verify or functools.partial(
            verify_password, hasher=hasher
        )
        self._failure_hash = failure_hash

    def lookup_key(self, username: str) -> str | None:
        """The directory key a login name stands for, or None.

        ``Alice@Example.TEST`` gives ``alice@example.test``; ``alice`` gives
        ``alice@<default_domain>`` when a default domain is configured.
        Names that are not addresses give None.
        """
        if "@" not in username:
            if not self._default_domain:
                return None
            username = f"{username}@{self._default_domain}"
        try:
            return Address.parse(username, utf8=True).key
        except AddressError:
            return None

    def _verify_failure(self, password: bytes) -> bool:
        # Runs in the thread: making the dummy hash the first time is slow.
        stored = self._failure_hash
        if stored is None:
            stored = self._failure_hash = dummy_hash(self._hasher)
        self._verify(stored, password)
        return False

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """Check the credentials.

        @param credentials: an L{IUsernamePassword} provider (username and
            password as bytes, UTF-8; text is accepted too).
        @return: a Deferred firing with the user's address key, UTF-8
            encoded (``b"alice@example.test"``), or failing with
            L{UnauthorizedLogin}.  A directory error fails the Deferred with
            that error (not counted as a wrong password).
        """
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: Any) -> bytes | tuple[()]:
        password = _secret(credentials.password)
        name = _text(credentials.username)
        key = self.lookup_key(name) if name is not None else None
        user = await self._directory.get_user(key) if key is not None else None
        if user is not None and is_known_hash(user.password_hash):
            # A disabled user's own hash is checked too, for the same cost.
            ok = await self._run_in_thread(self._verify, user.password_hash, password)
            if not user.enabled:
                raise UnauthorizedLogin("user disabled")
            if ok:
                return user.address.encode("utf-8")
            raise UnauthorizedLogin("wrong password")
        await self._run_in_thread(self._verify_failure, password)
        if user is None:
            raise UnauthorizedLogin("no such user")
        raise UnauthorizedLogin("user has no usable password hash")
