"""Tests for L{twistedmail.auth}: hashes, checker, realm, throttle, login."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, cast

import bcrypt
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.auth import passwords
from twistedmail.auth.checkers import DirectoryChecker, thread_runner
from twistedmail.auth.passwords import (
    dummy_hash,
    hash_password,
    is_known_hash,
    needs_rehash,
    verify_password,
)
from twistedmail.auth.realm import (
    IMAPAccount,
    MailRealm,
    POP3Maildrop,
    SubmissionSender,
    make_portal,
)
from twistedmail.auth.throttle import LoginThrottle, escape_for_log, login
from twistedmail.config import AuthSettings, ServerSettings, Settings
from twistedmail.interfaces import (
    IIMAPAccount,
    IPOP3Maildrop,
    ISubmissionSender,
    User,
)

# Cheap argon2id parameters so the tests stay fast.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
DOMAIN = "example.test"


def bcrypt_hash(password: bytes, prefix: bytes = b"$2b$") -> str:
    """A cheap bcrypt hash with the given variant prefix."""
    made = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4))
    return (prefix + made[4:]).decode("ascii")


def run_now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A C{run_in_thread} that runs the function at once, in this thread."""
    return maybeDeferred(f, *args)


class CountingVerify:
    """A verify function that records each stored hash it checks."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    def __call__(self, stored_hash: str, password: bytes) -> bool:
        self.checked.append(stored_hash)
        return verify_password(stored_hash, password, FAST)


@implementer(ILogObserver)
class Events:
    """A log observer keeping every event."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        """The formatted text of each event."""
        return [formatEvent(e) for e in self.events]


class FailingDirectory(MemoryDirectory):
    """A directory whose user lookups fail, as a broken database would."""

    def get_user(self, address: str) -> Deferred[User | None]:
        return fail(OSError("database is gone"))


class ThreadReactor:
    """The part of a reactor that deferToThreadPool uses, run by hand.

    Calls from the pool's threads are queued; L{drain} runs them in the test's
    thread, the way the reactor would.
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool
        self.calls: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.calls.append((f, args))

    def getThreadPool(self) -> ThreadPool:
        return self.pool

    def drain(self) -> None:
        """Wait for the pool's work to finish, then deliver its results."""
        self.pool.stop()
        for f, args in self.calls:
            f(*args)


def make_directory() -> MemoryDirectory:
    """Users: alice (argon2id), dave (bcrypt), bob (disabled), carol (no hash)."""
    return MemoryDirectory(
        domains=(DOMAIN, "other.test"),
        users=(
            User(
                "alice@example.test", hash_password("right", FAST), "example.test/alice"
            ),
            User("dave@example.test", bcrypt_hash(b"right"), "example.test/dave"),
            User(
                "bob@example.test",
                hash_password("right", FAST),
                "example.test/bob",
                enabled=False,
            ),
            User("carol@example.test", "", "example.test/carol"),
            User("erin@other.test", hash_password("right", FAST), "/srv/mail/erin"),
        ),
    )


class PasswordTests(SynchronousTestCase):
    """Hashing and verifying passwords."""

    def test_argon2_round_trip(self) -> None:
        """A new hash is an argon2id PHC string that verifies its password."""
        stored = hash_password("s3cret", FAST)
        self.assertTrue(stored.startswith("$argon2id$v=19$m=8,t=1,p=1$"), stored)
        self.assertTrue(verify_password(stored, "s3cret", FAST))

    def test_default_parameters(self) -> None:
        """Without a hasher, argon2-cffi's default parameters are used."""
        self.assertTrue(passwords.DEFAULT_HASHER.type.name == "ID")
        self.assertEqual(passwords.DEFAULT_HASHER.memory_cost, 65536)

    def test_wrong_password(self) -> None:
        """A different password does not verify."""
        stored = hash_password("s3cret", FAST)
        self.assertFalse(verify_password(stored, "s3cret ", FAST))
        self.assertFalse(verify_password(stored, "", FAST))

    def test_text_and_bytes(self) -> None:
        """Text passwords are UTF-8: the text and its bytes are one password."""
        stored = hash_password("pässwörd", FAST)
        self.assertTrue(verify_password(stored, "pässwörd".encode(), FAST))
        self.assertFalse(verify_password(stored, "pässwörd".encode("latin-1"), FAST))

    def test_bcrypt_accepted(self) -> None:
        """$2b$, $2a$ and $2y$ bcrypt hashes from old user files verify."""
        for prefix in (b"$2b$", b"$2a$", b"$2y$"):
            stored = bcrypt_hash(b"legacy", prefix)
            self.assertTrue(verify_password(stored, "legacy"), stored)
            self.assertFalse(verify_password(stored, "Legacy"), stored)

    def test_bcrypt_long_password(self) -> None:
        """bcrypt only ever used 72 bytes; a longer password still verifies
        against a hash made the old way, and the first 72 bytes must match."""
        long = b"x" * 72 + b"tail"
        stored = bcrypt_hash(long[:72])
        self.assertTrue(verify_password(stored, long))
        self.assertFalse(verify_password(stored, b"y" + long[1:]))

    def test_empty_hash_never_verifies(self) -> None:
        """An empty hash verifies no password, not even the empty one."""
        self.assertFalse(verify_password("", ""))
        self.assertFalse(verify_password("", "anything"))
        self.assertFalse(is_known_hash(""))

    def test_garbage_hash(self) -> None:
        """Malformed or unknown formats never verify and never raise."""
        for stored in (
            "$argon2id$garbage",
            "$argon2id$v=19$m=8,t=1,p=1$AAAA$AAAA",
            "$2b$04$garbage",
            "$2b$04$" + "\u00e9" * 53,
            "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            "$1$salt$hash",
            "{SSHA}abcdef",
            "plaintext",
            "right",
        ):
            self.assertFalse(verify_password(stored, "right", FAST), stored)

    def test_needs_rehash(self) -> None:
        """bcrypt, other argon2 parameters and garbage need a new hash."""
        fast = hash_password("pw", FAST)
        self.assertFalse(needs_rehash(fast, FAST))
        self.assertTrue(needs_rehash(fast))
        self.assertTrue(needs_rehash(bcrypt_hash(b"pw"), FAST))
        self.assertTrue(needs_rehash("$argon2id$garbage", FAST))
        self.assertTrue(needs_rehash("", FAST))

    def test_dummy_hash(self) -> None:
        """The dummy hash is made once per parameter set, with those
        parameters, and no likely password verifies against it."""
        first = dummy_hash(FAST)
        self.assertIs(dummy_hash(FAST), first)
        self.assertFalse(needs_rehash(first, FAST))
        for guess in ("", "password", "right"):
            self.assertFalse(verify_password(first, guess, FAST))

    def test_module_dummy_hash(self) -> None:
        """DUMMY_HASH is the default-parameter dummy hash, made on first use."""
        self.assertEqual(passwords.DUMMY_HASH, dummy_hash())
        self.assertFalse(needs_rehash(passwords.DUMMY_HASH))
        with self.assertRaises(AttributeError):
            passwords.NO_SUCH_NAME  # noqa: B018


class CheckerTests(SynchronousTestCase):
    """L{DirectoryChecker} over a memory directory."""

    def setUp(self) -> None:
        self.verify = CountingVerify()
        self.failure_hash = dummy_hash(FAST)

    def checker(self, default_domain: str = DOMAIN, **kw: Any) -> DirectoryChecker:
        """A checker over L{make_directory} with a counting verify."""
        return DirectoryChecker(
            kw.pop("directory", make_directory()),
            default_domain,
            kw.pop("run_in_thread", run_now),
            verify=self.verify,
            failure_hash=self.failure_hash,
            **kw,
        )

    def check(self, checker: DirectoryChecker, user: bytes, pw: bytes) -> Any:
        """The fired result of checking the credentials (a Failure if failed)."""
        d = checker.requestAvatarId(UsernamePassword(user, pw))
        results: list[Any] = []
        d.addBoth(results.append)
        self.assertEqual(len(results), 1, "the Deferred did not fire")
        return results[0]

    def assertRefused(self, checker: DirectoryChecker, user: bytes, pw: bytes) -> None:
        """The credentials are refused with UnauthorizedLogin."""
        result = self.check(checker, user, pw)
        self.assertIsInstance(getattr(result, "value", None), UnauthorizedLogin)

    def test_interface(self) -> None:
        """The checker is an ICredentialsChecker for username/password."""
        checker = self.checker()
        self.assertTrue(verifyObject(ICredentialsChecker, checker))
        self.assertEqual(checker.credentialInterfaces, (IUsernamePassword,))

    def test_right_password(self) -> None:
        """The right password gives the address key as the avatar id."""
        result = self.check(self.checker(), b"alice@example.test", b"right")
        self.assertEqual(result, b"alice@example.test")
        self.assertEqual(len(self.verify.checked), 1)

    def test_wrong_password(self) -> None:
        """A wrong password is refused."""
        self.assertRefused(self.checker(), b"alice@example.test", b"wrong")

    def test_bcrypt_user(self) -> None:
        """A user with a bcrypt hash logs in."""
        result = self.check(self.checker(), b"dave@example.test", b"right")
        self.assertEqual(result, b"dave@example.test")

    def test_unknown_user(self) -> None:
        """An unknown user is refused."""
        self.assertRefused(self.checker(), b"mallory@example.test", b"right")

    def test_disabled_user(self) -> None:
        """A disabled user is refused even with the right password."""
        self.assertRefused(self.checker(), b"bob@example.test", b"right")

    def test_no_hash(self) -> None:
        """A user with an empty hash cannot log in, even with an empty password."""
        self.assertRefused(self.checker(), b"carol@example.test", b"")

    def test_case_insensitive(self) -> None:
        """The login name is matched the way directory keys are: ignoring case."""
        result = self.check(self.checker(), b"ALICE@Example.TEST", b"right")
        self.assertEqual(result, b"alice@example.test")

    def test_local_part_with_default_domain(self) -> None:
        """The local part alone logs in to the default domain."""
        self.assertEqual(
            self.check(self.checker(), b"Alice", b"right"), b"alice@example.test"
        )
        self.assertRefused(self.checker("other.test"), b"alice", b"right")

    def test_local_part_without_default_domain(self) -> None:
        """With no default domain, a bare local part never logs in."""
        self.assertRefused(self.checker(""), b"alice", b"right")

    def test_other_domain_by_address(self) -> None:
        """Users outside the default domain log in by full address."""
        result = self.check(self.checker(), b"erin@other.test", b"right")
        self.assertEqual(result, b"erin@other.test")

    def test_bad_names(self) -> None:
        """Names that are not addresses (or not UTF-8) are refused."""
        for name in (b"", b"@example.test", b"a b@example.test", b"\xff@example.test"):
            self.assertRefused(self.checker(), name, b"right")

    def test_same_work_on_every_failure(self) -> None:
        """Every failure, whether or not the user exists, runs exactly one
        full verification: the user's own hash when there is one, otherwise
        the dummy hash."""
        directory = make_directory()

        def stored(key: str) -> str:
            user = self.successResultOf(directory.get_user(key))
            assert user is not None
            return user.password_hash

        cases = [
            (b"mallory@example.test", self.failure_hash),
            (b"alice@example.test", stored("alice@example.test")),
            (b"bob@example.test", stored("bob@example.test")),
            (b"carol@example.test", self.failure_hash),
            (b"not an address", self.failure_hash),
        ]
        for name, expected in cases:
            self.verify.checked.clear()
            self.assertRefused(self.checker(directory=directory), name, b"wrong")
            self.assertEqual(self.verify.checked, [expected], name)

    def test_verification_runs_in_thread(self) -> None:
        """The hash check goes through run_in_thread; the answer waits for it."""
        pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

        def later(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((f, args, d))
            return d

        checker = self.checker(run_in_thread=later)
        d = checker.requestAvatarId(UsernamePassword(b"alice", b"right"))
        self.assertNoResult(d)
        self.assertEqual(self.verify.checked, [])
        f, args, inner = pending.pop()
        inner.callback(f(*args))
        self.assertEqual(self.successResultOf(d), b"alice@example.test")

    def test_default_failure_hash(self) -> None:
        """Without a failure hash, the checker makes the dummy hash for its
        hasher and verifies against it."""
        checker = DirectoryChecker(
            make_directory(), DOMAIN, run_now, hasher=FAST, verify=self.verify
        )
        self.assertRefused(checker, b"nobody", b"x")
        self.assertEqual(self.verify.checked, [dummy_hash(FAST)])

    def test_default_verify(self) -> None:
        """With only a hasher given, real verification is used."""
        checker = DirectoryChecker(make_directory(), DOMAIN, run_now, hasher=FAST)
        self.assertEqual(self.check(checker, b"alice", b"right"), b"alice@example.test")
        self.assertRefused(checker, b"alice", b"wrong")

    def test_directory_error(self) -> None:
        """A directory failure is passed on as itself, not as a wrong password."""
        checker = self.checker(directory=FailingDirectory(domains=(DOMAIN,)))
        result = self.check(checker, b"alice", b"right")
        self.assertIsInstance(result.value, OSError)

    def test_thread_runner(self) -> None:
        """thread_runner runs the function in the pool and answers through
        the reactor's callFromThread."""
        pool = ThreadPool(minthreads=0, maxthreads=1)
        reactor = ThreadReactor(pool)
        pool.start()
        self.addCleanup(lambda: pool.stop() if pool.started else None)
        d = thread_runner(cast(IReactorThreads, reactor), pool)(
            verify_password, hash_password("x", FAST), "x"
        )
        reactor.drain()
        self.assertIs(self.successResultOf(d), True)


class RealmTests(SynchronousTestCase):
    """L{MailRealm} hands out one avatar per protocol."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.realm = MailRealm(make_directory(), self.root)

    def avatar(self, avatar_id: Any, *interfaces: type[Interface]) -> Any:
        """The fired (interface, avatar, logout) for the id and interfaces."""
        return self.successResultOf(
            self.realm.requestAvatar(avatar_id, None, *interfaces)
        )

    def test_interface(self) -> None:
        """The realm is an IRealm."""
        self.assertTrue(verifyObject(IRealm, self.realm))

    def test_submission(self) -> None:
        """ISubmissionSender gives a SubmissionSender for the user."""
        iface, avatar, logout = self.avatar(b"alice@example.test", ISubmissionSender)
        self.assertIs(iface, ISubmissionSender)
        self.assertIsInstance(avatar, SubmissionSender)
        self.assertTrue(verifyObject(ISubmissionSender, avatar))
        self.assertEqual(avatar.user.address, "alice@example.test")
        self.assertIsNone(logout())

    def test_pop3(self) -> None:
        """IPOP3Maildrop gives the user's Maildir under the mail root."""
        iface, avatar, logout = self.avatar(b"alice@example.test", IPOP3Maildrop)
        self.assertIs(iface, IPOP3Maildrop)
        self.assertIsInstance(avatar, POP3Maildrop)
        self.assertTrue(verifyObject(IPOP3Maildrop, avatar))
        self.assertEqual(
            avatar.mailbox_path,
            os.path.join(os.path.abspath(self.root), "example.test", "alice"),
        )
        self.assertTrue(os.path.isabs(avatar.mailbox_path))
        self.assertIsNone(logout())

    def test_imap(self) -> None:
        """IIMAPAccount gives an IMAPAccount with the same Maildir path."""
        iface, avatar, logout = self.avatar(b"alice@example.test", IIMAPAccount)
        self.assertIs(iface, IIMAPAccount)
        self.assertIsInstance(avatar, IMAPAccount)
        self.assertTrue(verifyObject(IIMAPAccount, avatar))
        self.assertEqual(
            avatar.mailbox_path,
            os.path.join(os.path.abspath(self.root), "example.test", "alice"),
        )

    def test_absolute_mailbox(self) -> None:
        """An absolute mailbox location is used as it is."""
        _, avatar, _ = self.avatar(b"erin@other.test", IIMAPAccount)
        self.assertEqual(avatar.mailbox_path, "/srv/mail/erin")

    def test_first_served_interface(self) -> None:
        """Of several interfaces, the first one served is chosen."""
        iface, avatar, _ = self.avatar(b"alice@example.test", Interface, IIMAPAccount)
        self.assertIs(iface, IIMAPAccount)
        self.assertIsInstance(avatar, IMAPAccount)

    def test_text_avatar_id(self) -> None:
        """A text avatar id works too."""
        _, avatar, _ = self.avatar("alice@example.test", ISubmissionSender)
        self.assertEqual(avatar.user.address, "alice@example.test")

    def test_unknown_interface(self) -> None:
        """An interface the realm does not serve gives NotImplementedError."""
        d = self.realm.requestAvatar(b"alice@example.test", None, Interface)
        self.failureResultOf(d, NotImplementedError)

    def test_user_gone(self) -> None:
        """A user removed after the password check cannot log in."""
        d = self.realm.requestAvatar(b"gone@example.test", None, IIMAPAccount)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_anonymous(self) -> None:
        """The anonymous avatar id is refused."""
        d = self.realm.requestAvatar((), None, IIMAPAccount)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_make_portal(self) -> None:
        """make_portal wires checker and realm from the settings: local-part
        logins in the default domain, Maildirs under data_dir/mail, password
        checks in the given thread pool."""
        data_dir = self.mktemp()
        settings = Settings(
            server=ServerSettings(data_dir=data_dir),
            auth=AuthSettings(default_domain=DOMAIN),
        )
        pool = ThreadPool(minthreads=0, maxthreads=1)
        reactor = ThreadReactor(pool)
        pool.start()
        self.addCleanup(lambda: pool.stop() if pool.started else None)
        portal = make_portal(
            make_directory(), settings, cast(IReactorThreads, reactor), hasher=FAST
        )
        d = portal.login(UsernamePassword(b"alice", b"right"), None, IPOP3Maildrop)
        reactor.drain()
        iface, avatar, _ = self.successResultOf(d)
        self.assertIs(iface, IPOP3Maildrop)
        assert isinstance(avatar, POP3Maildrop)
        self.assertEqual(
            avatar.mailbox_path,
            os.path.join(os.path.abspath(data_dir), "mail", "example.test", "alice"),
        )


class ThrottleTests(SynchronousTestCase):
    """L{LoginThrottle}'s per-address back-off."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, 1.0, 30.0, 900.0)

    def test_delays_double(self) -> None:
        """Each failure in a row doubles the delay, from the base delay."""
        delays = [self.throttle.failed("192.0.2.7") for _ in range(5)]
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0])
        self.assertEqual(self.throttle.failures("192.0.2.7"), 5)

    def test_cap(self) -> None:
        """The delay stops growing at the maximum, however many failures."""
        delays = [self.throttle.failed("192.0.2.7") for _ in range(8)]
        self.assertEqual(delays[-3:], [30.0, 30.0, 30.0])
        self.assertEqual(self.throttle.delay_for(10_000), 30.0)

    def test_per_address(self) -> None:
        """Each client address has its own count."""
        self.throttle.failed("192.0.2.7")
        self.throttle.failed("192.0.2.7")
        self.assertEqual(self.throttle.failed("2001:db8::1"), 1.0)

    def test_forget_after_window(self) -> None:
        """An address is forgotten a window after its last failure."""
        self.throttle.failed("192.0.2.7")
        self.clock.advance(899)
        self.assertEqual(self.throttle.failed("192.0.2.7"), 2.0)
        self.clock.advance(899)
        self.assertEqual(self.throttle.failures("192.0.2.7"), 2)
        self.clock.advance(1)
        self.assertEqual(self.throttle.failures("192.0.2.7"), 0)
        self.assertEqual(self.throttle.failed("192.0.2.7"), 1.0)

    def test_expired_entries_pruned(self) -> None:
        """Forgotten addresses leave the table when failures come in."""
        for i in range(10):
            self.throttle.failed(f"192.0.2.{i}")
        self.assertEqual(len(self.throttle), 10)
        self.clock.advance(900)
        self.throttle.failed("198.51.100.1")
        self.assertEqual(len(self.throttle), 1)

    def test_success_resets(self) -> None:
        """A successful login forgets the address's failures."""
        self.throttle.failed("192.0.2.7")
        self.throttle.failed("192.0.2.7")
        self.throttle.succeeded("192.0.2.7")
        self.assertEqual(len(self.throttle), 0)
        self.assertEqual(self.throttle.failed("192.0.2.7"), 1.0)
        self.throttle.succeeded("203.0.113.1")

    def test_table_bounded(self) -> None:
        """Beyond max_entries the address quiet for longest is dropped."""
        throttle = LoginThrottle(self.clock, 1.0, 30.0, 900.0, max_entries=3)
        for i in range(5):
            throttle.failed(f"192.0.2.{i}")
            self.clock.advance(1)
        throttle.failed("192.0.2.2")
        self.assertEqual(len(throttle), 3)
        self.assertEqual(throttle.failures("192.0.2.0"), 0)
        self.assertEqual(throttle.failures("192.0.2.1"), 0)
        self.assertEqual(throttle.failures("192.0.2.2"), 2)
        throttle.failed("198.51.100.1")
        self.assertEqual(throttle.failures("192.0.2.3"), 0)
        self.assertEqual(throttle.failures("192.0.2.2"), 2)

    def test_zero_base(self) -> None:
        """A base delay of zero turns the back-off off."""
        throttle = LoginThrottle(self.clock, 0.0, 30.0, 900.0)
        self.assertEqual([throttle.failed("192.0.2.7") for _ in range(3)], [0.0] * 3)

    def test_from_settings(self) -> None:
        """from_settings takes the [auth] delays and window."""
        throttle = LoginThrottle.from_settings(
            AuthSettings(failure_delay=0.5, failure_delay_max=1.0, failure_window=10),
            self.clock,
        )
        self.assertEqual([throttle.failed("a") for _ in range(3)], [0.5, 1.0, 1.0])
        self.clock.advance(10)
        self.assertEqual(throttle.failed("a"), 0.5)


class EscapeTests(SynchronousTestCase):
    """L{escape_for_log} keeps client text on one line and in one field."""

    def test_plain(self) -> None:
        """Printable text, non-ASCII included, is kept."""
        self.assertEqual(escape_for_log("alice@example.test"), "alice@example.test")
        self.assertEqual(escape_for_log("jösé@bücher.example"), "jösé@bücher.example")

    def test_controls(self) -> None:
        """CR, LF, tab, space, NUL, DEL and backslash are escaped."""
        self.assertEqual(
            escape_for_log("a\r\nb\tc d\x00e\x7f\\"),
            "a\\r\\nb\\tc\\x20d\\x00e\\x7f\\\\",
        )

    def test_unicode_separators(self) -> None:
        """Unicode line separators and lone surrogates are escaped."""
        self.assertEqual(
            escape_for_log("a\u2028b\u0085c\udcff"), "a\\u2028b\\x85c\\udcff"
        )
        self.assertEqual(escape_for_log("\U000e0001"), "\\U000e0001")

    def test_cut(self) -> None:
        """Long text is cut and marked."""
        self.assertEqual(escape_for_log("a" * 300), "a" * 256 + "...")
        self.assertEqual(escape_for_log("abcd", limit=2), "ab...")

    @given(st.text(alphabet=st.characters(exclude_categories=())))
    def test_always_one_token(self, text: str) -> None:
        """Whatever the input, the output has no space or unprintable
        character, so it can neither end a line nor start a new field; and
        when nothing needed escaping the text is unchanged."""
        out = escape_for_log(text)
        self.assertTrue(all(c.isprintable() and c != " " for c in out), out)
        if len(text) <= 256 and all(c.isprintable() and c not in " \\" for c in text):
            self.assertEqual(out, text)


class LoginTests(SynchronousTestCase):
    """L{login}: portal login, back-off and one log line per attempt."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, 1.0, 30.0, 900.0)
        self.events = Events()
        self.log = Logger(namespace="twistedmail.auth.throttle", observer=self.events)
        self.portal = self.portal_for(make_directory())

    def portal_for(self, directory: MemoryDirectory) -> Any:
        """A portal over the directory with fast, synchronous checks."""
        from twisted.cred.portal import Portal

        checker = DirectoryChecker(directory, DOMAIN, run_now, hasher=FAST)
        return Portal(MailRealm(directory, self.mktemp()), [checker])

    def attempt(
        self,
        username: str | bytes,
        password: str | bytes,
        client_ip: str = "192.0.2.7",
        portal: Any = None,
    ) -> Deferred[Any]:
        """Log in over IMAP from the client address."""
        return login(
            portal or self.portal,
            self.throttle,
            protocol="imap",
            client_ip=client_ip,
            username=username,
            password=password,
            interface=IIMAPAccount,
            log=self.log,
        )

    def test_success(self) -> None:
        """The right password gives the avatar at once and logs one line."""
        iface, avatar, logout = self.successResultOf(
            self.attempt("alice@example.test", "right")
        )
        self.assertIs(iface, IIMAPAccount)
        self.assertEqual(avatar.user.address, "alice@example.test")
        self.assertEqual(
            self.events.texts(),
            ["login: protocol=imap rhost=192.0.2.7 user=alice@example.test"],
        )
        self.assertEqual(self.events.events[0]["log_level"], LogLevel.info)

    def test_failure_waits_and_logs(self) -> None:
        """A wrong password is refused only after the delay, and logged once
        at once, in the fail2ban line format."""
        d = self.attempt("alice@example.test", "wrong")
        self.assertEqual(
            self.events.texts(),
            ["auth failure: protocol=imap rhost=192.0.2.7 user=alice@example.test"],
        )
        self.assertEqual(self.events.events[0]["log_level"], LogLevel.warn)
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(len(self.events.events), 1)

    def test_unknown_user_same_path(self) -> None:
        """An unknown user gets the same delay and the same line."""
        d = self.attempt("mallory", "right")
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(
            self.events.texts(),
            ["auth failure: protocol=imap rhost=192.0.2.7 user=mallory"],
        )

    def test_delays_grow(self) -> None:
        """The second failure from one address waits twice as long; another
        address still waits the base delay."""
        d1 = self.attempt("alice", "wrong")
        self.clock.advance(1)
        self.failureResultOf(d1, UnauthorizedLogin)
        d2 = self.attempt("alice", "wrong")
        d3 = self.attempt("alice", "wrong", client_ip="198.51.100.2")
        self.clock.advance(1)
        self.assertNoResult(d2)
        self.failureResultOf(d3, UnauthorizedLogin)
        self.clock.advance(1)
        self.failureResultOf(d2, UnauthorizedLogin)

    def test_success_resets(self) -> None:
        """A successful login resets the address's back-off."""
        earlier = [self.attempt("alice", "wrong") for _ in range(3)]
        self.successResultOf(self.attempt("alice", "right"))
        self.assertEqual(self.throttle.failures("192.0.2.7"), 0)
        d = self.attempt("alice", "wrong")
        self.clock.advance(1)
        self.failureResultOf(d, UnauthorizedLogin)
        # The earlier refusals still come, after their own (longer) delays.
        self.clock.advance(4)
        for refused in earlier:
            self.failureResultOf(refused, UnauthorizedLogin)

    def test_bytes_credentials(self) -> None:
        """Bytes username and password (from SASL) work like text."""
        self.successResultOf(self.attempt(b"alice", b"right"))
        self.assertEqual(
            self.events.texts(),
            ["login: protocol=imap rhost=192.0.2.7 user=alice"],
        )

    def test_session_id_in_event(self) -> None:
        """The session id travels as an event key, outside the line's text."""
        login(
            self.portal,
            self.throttle,
            protocol="pop3",
            client_ip="192.0.2.7",
            username="alice",
            password="right",
            interface=IPOP3Maildrop,
            session_id="3f2a9c1b7d04",
            log=self.log,
        )
        (event,) = self.events.events
        self.assertEqual(event["session"], "3f2a9c1b7d04")
        self.assertEqual(
            formatEvent(event), "login: protocol=pop3 rhost=192.0.2.7 user=alice"
        )

    def test_log_injection(self) -> None:
        """A username with CR/LF and a fake field stays on one line, and the
        fields it imitates are escaped."""
        evil = "x\r\nauth failure: protocol=imap rhost=203.0.113.9 user=y"
        self.attempt(evil, "wrong")
        (text,) = self.events.texts()
        self.assertEqual(
            text,
            "auth failure: protocol=imap rhost=192.0.2.7 user="
            "x\\r\\nauth\\x20failure:\\x20protocol=imap\\x20rhost=203.0.113.9"
            "\\x20user=y",
        )

    def test_undecodable_username(self) -> None:
        """Invalid UTF-8 in a username is logged escaped, and refused."""
        d = self.attempt(b"al\xffice", "right")
        self.assertEqual(
            self.events.texts(),
            ["auth failure: protocol=imap rhost=192.0.2.7 user=al\\udcffice"],
        )
        self.clock.advance(1)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_directory_error(self) -> None:
        """A broken directory fails at once with its own error, logged with a
        traceback, and is not counted as a failed login."""
        d = self.attempt(
            "alice", "right", portal=self.portal_for(FailingDirectory((DOMAIN,)))
        )
        self.failureResultOf(d, OSError)
        self.assertEqual(self.throttle.failures("192.0.2.7"), 0)
        (event,) = self.events.events
        self.assertEqual(
            formatEvent(event), "login error: protocol=imap rhost=192.0.2.7 user=alice"
        )
        self.assertIn("log_failure", event)

    def test_fail2ban_filter(self) -> None:
        """The example fail2ban filter finds the client address in a failure
        line as twistd writes it, even when the username imitates another
        line, and does not match successful logins."""
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "etc", "fail2ban-twistedmail.conf")) as f:
            (failregex,) = re.findall(r"^failregex = (.*)$", f.read(), re.MULTILINE)
        # fail2ban's <HOST> stands for an address or host name.
        pattern = re.compile(failregex.replace("<HOST>", r"(?P<host>[\w.:-]+)"))

        def host_in(line: str) -> str | None:
            # fail2ban removes the time stamp (the first word) before matching.
            match = pattern.search(line.split(" ", 1)[1].rstrip("\n"))
            return match.group("host") if match else None

        self.attempt("alice", "right")
        self.attempt("alice", "wrong", client_ip="2001:db8::7")
        self.attempt("x rhost=203.0.113.9", "wrong")
        self.attempt("y\nauth failure: protocol=imap rhost=203.0.113.9 user=z", "w")
        lines = [formatEventAsClassicLogText(e) or "" for e in self.events.events]
        self.assertEqual(
            [host_in(line) for line in lines],
            [None, "2001:db8::7", "192.0.2.7", "192.0.2.7"],
        )
        self.assertTrue(all(line.count("\n") == 1 for line in lines))
