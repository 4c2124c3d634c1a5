# -*- test-case-name: tests.test_auth -*-
r"""Login back-off and the one login call every protocol makes.

The last part of the login step.  L{login} runs C{portal.login} with the
client's username and password and writes one log line per attempt.  After a
failure it answers only once the client's back-off delay has passed: per
client address, the n-th failure in a row waits C{base_delay * 2 ** (n - 1)}
seconds, at most C{max_delay} (``[auth] failure_delay``,
``failure_delay_max``).  An address is forgotten after C{failure_window}
seconds without a failure, or at once after a successful login.  The table is
bounded: expired entries are pruned as failures come in, and beyond
C{max_entries} addresses the longest-quiet one is dropped.

Log lines (twisted.logger events, namespace ``twistedmail.auth.throttle``;
``info`` for a login, ``warn`` for a failure)::

    login: protocol=imap rhost=192.0.2.7 user=alice@example.test
    auth failure: protocol=imap rhost=192.0.2.7 user=alice@example.test

``user`` is the name as the client sent it and comes last.  It is escaped by
L{escape_for_log}: a backslash becomes ``\\``, a space ``\x20``, CR and LF
``\r`` and ``\n``, any other non-printable character ``\xNN``, ``\uNNNN`` or
``\UNNNNNNNN``, and a name longer than 256 characters is cut and ends in
``...``.  So the line is always one line and a username can never add
fields.  The failure is logged as soon as it is known, before the back-off
delay.  Errors other than bad credentials (the directory cannot be read) are
logged as ``login error: ...`` with a traceback and are not counted.

fail2ban: in twistd's default text log (not the JSON one from
``--logger twistedmail.logs.json_observer``) a line reads::

    2024-05-01T12:00:00+0000 [twistedmail.auth.throttle#warn] auth failure: protocol=imap rhost=192.0.2.7 user=alice

and a filter such as ``etc/fail2ban-twistedmail.conf`` matches it (fail2ban
removes the time stamp before matching)::

    [Definition]
    failregex = ^\s*(?:\[[^\]]*\]\s*)?auth failure: protocol=\S+ rhost=<HOST> user=\S*\s*$
    ignoreregex =

Check it against a log with
``fail2ban-regex var/twistd.log etc/fail2ban-twistedmail.conf``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import cast

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Interface

from twistedmail.config import AuthSettings

__all__ = ["LoginThrottle", "escape_for_log", "login"]

_log = Logger()

LoginResult = tuple[type[Interface], object, Callable[[], None]]

MAX_LOGGED_NAME = 256
"""Longest username (in characters) logged before it is cut."""


def escape_for_log(text: str, limit: int = MAX_LOGGED_NAME) -> str:
    r"""Make client-supplied text safe for one log field.

    A backslash becomes ``\\``; space, CR, LF, tab and every other
    non-printable character (Unicode line separators and lone surrogates
    included) become Python-style escapes (``\x20``, ``\r``, ``\n``,
    ``\t``, ``\xNN``, ``\uNNNN``, ``\UNNNNNNNN``).  The result is one
    token without spaces; input longer than C{limit} characters is cut and
    ends in ``...``.
    """
    cut = len(text) > limit
    out = []
    for c in text[:limit]:
        if c == "\\":
            out.append("\\\\")
        elif c.isprintable() and c != " ":
            out.append(c)
        elif c in "\r\n\t":
            out.append({"\r": "\\r", "\n": "\\n", "\t": "\\t"}[c])
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out) + ("..." if cut else "")


class LoginThrottle:
    """Failed-login counts per client address, and the delay they cost.

    @param clock: gives the time and runs the delays.
    @param base_delay: seconds after the first failure.
    @param max_delay: the longest delay.
    @param window: seconds without a failure after which an address is
        forgotten.
    @param max_entries: the most addresses remembered at once.
    """

    def __init__(
        self,
        clock: IReactorTime,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        window: float = 900.0,
        max_entries: int = 100_000,
    ) -> None:
        self.clock = clock
        self._base = base_delay
        self._max = max_delay
        self._window = window
        self._max_entries = max_entries
        # address -> (failures in a row, time of the last); oldest first.
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: AuthSettings, clock: IReactorTime
    ) -> LoginThrottle:
        """A throttle with the ``[auth]`` delays and window."""
        return cls(
            clock,
            settings.failure_delay,
            settings.failure_delay_max,
            settings.failure_window,
        )

    def __len__(self) -> int:
        """How many addresses are remembered now."""
        return len(self._entries)

    def _prune(self, now: float) -> None:
        while self._entries:
            _, (_, last) = next(iter(self._entries.items()))
            if now - last < self._window:
                break
            self._entries.popitem(last=False)

    def failures(self, client_ip: str) -> int:
        """The failures in a row remembered for this address."""
        entry = self._entries.get(client_ip)
        if entry is None or self.clock.seconds() - entry[1] >= self._window:
            return 0
        return entry[0]

    def delay_for(self, failures: int) -> float:
        """The seconds to wait after the given number of failures in a row."""
        if failures <= 0:
            return 0.0
        # Past 2**63 the cap has long been reached; keep the float finite.
        return min(self._max, self._base * 2.0 ** min(failures - 1, 63))

    def failed(self, client_ip: str) -> float:
        """Record a failed login; return the seconds to wait before answering."""
        now = self.clock.seconds()
        count = self.failures(client_ip) + 1
        self._entries.pop(client_ip, None)
        self._prune(now)
        self._entries[client_ip] = (count, now)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return self.delay_for(count)

    def succeeded(self, client_ip: str) -> None:
        """Forget this address's failures after a successful login."""
        self._entries.pop(client_ip, None)


def login(
    portal: Portal,
    throttle: LoginThrottle,
    *,
    protocol: str,
    client_ip: str,
    username: str | bytes,
    password: str | bytes,
    interface: type[Interface],
    session_id: str = "",
    log: Logger | None = None,
) -> Deferred[LoginResult]:
    """Log a client in, with back-off and one log line per attempt.

    @param portal: from L{twistedmail.auth.realm.make_portal}.
    @param throttle: shared by all the server's protocols.
    @param protocol: ``smtp``, ``pop3`` or ``imap``, for the log line.
    @param client_ip: the peer's address (the throttle's key).
    @param username: as the client sent it (bytes are taken as UTF-8).
    @param password: as the client sent it (text is encoded as UTF-8).
    @param interface: the avatar interface wanted (e.g. L{IIMAPAccount}).
    @param session_id: the connection's id (L{twistedmail.logs.new_session_id});
        carried as the event key C{session}, so JSON logs have it, but kept
        out of the text so the line format stays fixed.
    @param log: where the lines go; this module's logger when None.
    @return: a Deferred firing with C{(interface, avatar, logout)}.  On bad
        credentials it fails with L{UnauthorizedLogin}, after the back-off
        delay.  Other errors (a directory that cannot be read) are logged
        with their traceback and passed on at once, uncounted: the protocol
        answers those with a temporary failure.
    """
    logger = log if log is not None else _log
    name_bytes = (
        username
        if isinstance(username, bytes)
        else username.encode("utf-8", "surrogatepass")
    )
    name_text = (
        username
        if isinstance(username, str)
        else username.decode("utf-8", "surrogateescape")
    )
    secret = (
        password
        if isinstance(password, bytes)
        else password.encode("utf-8", "surrogatepass")
    )
    fields = dict(
        protocol=escape_for_log(protocol),
        rhost=escape_for_log(client_ip),
        user=escape_for_log(name_text),
        session=escape_for_log(session_id),
    )

    def succeeded(result: LoginResult) -> LoginResult:
        throttle.succeeded(client_ip)
        logger.info("login: protocol={protocol} rhost={rhost} user={user}", **fields)
        return result

    def failed(reason: Failure) -> Deferred[LoginResult] | Failure:
        if not reason.check(UnauthorizedLogin):
            logger.failure(
                "login error: protocol={protocol} rhost={rhost} user={user}",
                reason,
                LogLevel.error,
                **fields,
            )
            return reason
        delay = throttle.failed(client_ip)
        logger.warn(
            "auth failure: protocol={protocol} rhost={rhost} user={user}", **fields
        )

        def refuse() -> LoginResult:
            raise UnauthorizedLogin()

        return cast("Deferred[LoginResult]", deferLater(throttle.clock, delay, refuse))

    d = portal.login(UsernamePassword(name_bytes, secret), None, interface)
    d.addCallbacks(succeeded, failed)
    return d
