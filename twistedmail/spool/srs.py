# -*- test-case-name: tests.test_srs -*-
"""The Sender Rewriting Scheme: forwarding that passes SPF.

Step of the flow: relay (forwarded mail leaves with a rewritten envelope
sender) and receive (bounces to a rewritten sender come back, are checked
and go on to the original sender).

When an alias forwards mail from a foreign sender to a foreign address, the
next hop checks SPF against our address, not the sender's: the relay
(L{twistedmail.spool.relay.RelayRunner}, its C{rewrite_sender}) sends it
with the envelope sender rewritten by L{SRS.forward} into an address at our
SRS domain::

    alice@example.org  ->  SRS0=HHHH=TT=example.org=alice@our.domain

``TT`` is the day (days since the epoch, modulo 1024, two base32
characters) and ``HHHH`` the first four characters of the base64 HMAC-SHA1,
keyed with the secret, of ``TT``, the domain and the local part (lower
case, so that an MTA changing the case on the way does not break it; the
hash is compared without regard to case too).  An address that is already
SRS0 (another forwarder's) becomes SRS1, which names the first forwarder
and keeps its part intact, so that only it needs to check its own hash::

    SRS0=HHHH=TT=example.org=alice@fwd1.example
        -> SRS1=GGGG=fwd1.example==HHHH=TT=example.org=alice@our.domain

and an SRS1 address is re-hashed for our domain, keeping the first
forwarder.  The mail is never rewritten twice by us: our own SRS addresses
are left alone.

A bounce to an SRS address at one of our domains is checked by
L{SRS.reverse}: the hash must match (else 550 5.7.1, forged) and the day be
at most ``[srs] max_age`` days old (else 550 5.7.1, expired); SRS0 gives the
original sender, SRS1 the first forwarder's SRS0 address.  L{SRSExpander}
wraps the alias expander so that the SMTP server's RCPT check and the queue
runner both see an SRS address as a remote address (its original) or as an
unknown user (refused at RCPT with 550 5.1.1; the reason, forged or
expired, goes to the log).  L{check_srs_recipient} is the same check as a
bare hook returning the reply.

The key: ``[srs] secret``; when empty, L{load_secret} generates 32 random
bytes into ``data_dir/srs-secret`` (mode 0600) on first start and reads
them after.  Changing the key makes SRS addresses in flight invalid.

Known limit: RFC 5321 §4.5.3.1.1 allows local parts of 64 octets; SRS
addresses for long original addresses are longer, and an SMTP server that
enforces the limit (ours does, in L{twistedmail.address.Address.parse})
refuses bounces to them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twistedmail.address import Address, AddressError
from twistedmail.aliases.expander import (
    Expansion,
    How,
    RemoteAddress,
    Step,
    UnknownUser,
)
from twistedmail.config import Settings
from twistedmail.interfaces import IDirectory
from twistedmail.replies import PermanentError, Reply
from twistedmail.spool.runner import Expander

__all__ = [
    "HASH_LENGTH",
    "NOT_SRS",
    "SECRET_FILE",
    "SRS",
    "SRS_EXPIRED",
    "SRS_FORGED",
    "SRSExpander",
    "check_srs_recipient",
    "is_srs",
    "load_secret",
]

log = Logger()

HASH_LENGTH = 4
SECRET_FILE = "srs-secret"
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DAY = 86400
_TIME_SLOTS = 1024

SRS_FORGED = Reply(550, "5.7.1", "Invalid SRS address")
SRS_EXPIRED = Reply(550, "5.7.1", "SRS address has expired")
NOT_SRS = Reply(550, "5.1.1", "No such user here")


def is_srs(local_part: str) -> bool:
    """Whether a local part looks like an SRS0 or SRS1 address."""
    head = local_part[:5].upper()
    return len(head) == 5 and head[:4] in ("SRS0", "SRS1") and head[4] in "=+-"


def load_secret(settings: Settings) -> bytes:
    """The HMAC key: ``[srs] secret``, or the key file in the data folder,
    generated there on first use (blocking; call at start-up)."""
    if settings.srs.secret:
        return settings.srs.secret.encode("utf-8")
    path = settings.data_path(SECRET_FILE)
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    os.makedirs(settings.server.data_dir, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        # Two processes starting at once: the first file wins.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path, "rb") as f:
        return f.read().strip()


class SRS:
    """Rewrites and checks SRS addresses (module docstring).

    @param secret: the HMAC key.
    @param domain: the domain of the addresses we make (one of ours).
    @param clock: for the day stamp.
    @param max_age: days an address stays valid.
    """

    def __init__(
        self, secret: bytes, domain: str, clock: IReactorTime, max_age: int = 21
    ) -> None:
        if not secret:
            raise ValueError("SRS needs a secret")
        self._secret = secret
        self.domain = domain.lower()
        self._clock = clock
        self._max_age = max_age

    def _hash(self, *parts: str) -> str:
        data = "".join(parts).lower().encode("utf-8")
        digest = hmac.new(self._secret, data, hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[:HASH_LENGTH]

    def _check_hash(self, given: str, *parts: str) -> bool:
        return hmac.compare_digest(given.lower(), self._hash(*parts).lower())

    def _today(self) -> int:
        return int(self._clock.seconds() // _DAY) % _TIME_SLOTS

    def _stamp(self) -> str:
        t = self._today()
        return _BASE32[t >> 5] + _BASE32[t & 31]

    def _stamp_age(self, stamp: str) -> int | None:
        stamp = stamp.upper()
        if len(stamp) != 2 or any(c not in _BASE32 for c in stamp):
            return None
        then = (_BASE32.index(stamp[0]) << 5) | _BASE32.index(stamp[1])
        return (self._today() - then) % _TIME_SLOTS

    def forward(self, sender: str) -> str:
        """The envelope sender to forward mail from C{sender} with.

        Our own SRS addresses and the null sender are returned as they are.
        """
        if not sender:
            return sender
        local, at, domain = sender.rpartition("@")
        if not at or not local:
            return sender
        if domain.lower() == self.domain and is_srs(local):
            return sender
        head = local[:4].upper()
        if head == "SRS1" and is_srs(local):
            # SRS1=HASH=first==rest: keep the first forwarder and its part.
            _, sep, rest = local[5:].partition("=")
            first, sep2, opaque = rest.partition("==")
            if sep and sep2 and first and opaque:
                return self._srs1(first, opaque)
        if head == "SRS0" and is_srs(local):
            # The first forwarder's part ("HHHH=TT=domain=local") is kept.
            return self._srs1(domain, local[5:])
        stamp = self._stamp()
        h = self._hash(stamp, domain, local)
        return f"SRS0={h}={stamp}={domain}={local}@{self.domain}"

    def _srs1(self, first: str, opaque: str) -> str:
        h = self._hash(first, "=" + opaque)
        return f"SRS1={h}={first}=={opaque}@{self.domain}"

    def reverse(self, address: str) -> str:
        """The address a bounce to our SRS address must go on to.

        @raise PermanentError: 550 5.1.1 when it is not an SRS address of
            ours' shape, 550 5.7.1 when the hash is wrong (forged) or the day
            stamp too old (expired).
        """
        local, at, _ = address.rpartition("@")
        if not at or not is_srs(local):
            raise PermanentError(NOT_SRS, f"not an SRS address: {address}")
        kind, body = local[:4].upper(), local[5:]
        if kind == "SRS0":
            parts = body.split("=", 3)
            if len(parts) != 4 or not all(parts):
                raise PermanentError(SRS_FORGED, f"malformed SRS0 address {address}")
            h, stamp, domain, orig_local = parts
            if not self._check_hash(h, stamp, domain, orig_local):
                raise PermanentError(SRS_FORGED, f"bad SRS hash in {address}")
            age = self._stamp_age(stamp)
            if age is None:
                raise PermanentError(SRS_FORGED, f"bad SRS time stamp in {address}")
            if age > self._max_age:
                raise PermanentError(
                    SRS_EXPIRED, f"SRS address {address} is {age} days old"
                )
            return f"{orig_local}@{domain}"
        h, sep, rest = body.partition("=")
        first, sep2, opaque = rest.partition("==")
        if not (sep and sep2 and h and first and opaque):
            raise PermanentError(SRS_FORGED, f"malformed SRS1 address {address}")
        if not self._check_hash(h, first, "=" + opaque):
            raise PermanentError(SRS_FORGED, f"bad SRS hash in {address}")
        return f"SRS0={opaque}@{first}"


def _failed(address: Address, why: str) -> Expansion:
    log.info("refused SRS address {address}: {why}", address=str(address), why=why)
    return Expansion(
        (),
        (UnknownUser(str(address)),),
        (Step(0, str(address), How.FAILED, (why,)),),
    )


class SRSExpander:
    """The alias expander with SRS bounces resolved first.

    An SRS local part at one of our local domains resolves to the original
    address (a remote address), or to an unknown-user failure when it is
    forged or expired; everything else goes to the wrapped expander.  Give
    it to the SMTP server (RCPT checks) and to the queue runner in place of
    the plain expander.

    @param inner: the alias expander.
    @param srs: checks the addresses.
    @param directory: says which domains are ours.
    """

    def __init__(
        self,
        inner: Expander,
        srs: SRS,
        directory: IDirectory,
    ) -> None:
        self._inner = inner
        self._srs = srs
        self._directory = directory

    def expand(self, address: Address) -> Deferred[Expansion]:
        """Resolve one recipient (see the class docstring)."""
        if not is_srs(address.local):
            return self._inner.expand(address)
        return Deferred.fromCoroutine(self._expand(address))

    async def _expand(self, address: Address) -> Expansion:
        if not await self._directory.is_local_domain(address.domain):
            return await self._inner.expand(address)
        try:
            original = self._srs.reverse(str(address))
        except PermanentError as e:
            return _failed(address, e.reason)
        try:
            target = Address.parse(original, utf8=True)
        except AddressError as e:
            return _failed(address, f"bad original address {original!r}: {e}")
        remote = RemoteAddress(str(target))
        return Expansion(
            (remote,), (), (Step(0, str(address), How.REMOTE, (str(remote),)),)
        )


def check_srs_recipient(srs: SRS) -> Callable[[Address], Reply | None]:
    """A RCPT hook: None for addresses that are not SRS, else None when the
    SRS address is valid and the refusal (550 5.7.1 or 5.1.1) when not.
    The caller applies it to local domains only."""

    def check(address: Address) -> Reply | None:
        if not is_srs(address.local):
            return None
        try:
            srs.reverse(str(address))
        except PermanentError as e:
            log.info("refused SRS address {a}: {why}", a=str(address), why=e.reason)
            return e.reply
        return None

    return check
