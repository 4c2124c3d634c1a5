# -*- test-case-name: tests.test_auth -*-
"""Password hashes: the part of the login step that compares secrets.

New hashes are argon2id in the PHC string format (``$argon2id$v=19$m=...``),
made with argon2-cffi's L{PasswordHasher} (its defaults are RFC 9106's
low-memory profile).  bcrypt hashes (``$2b$``, ``$2a$``, ``$2y$``) from older
user files still verify, so an existing users file migrates as it is;
L{needs_rehash} says when a stored hash should be replaced after the next
successful login (a bcrypt hash, or argon2 parameters weaker than the
hasher's).  An empty hash, or one in any other format, never verifies.

Every function takes an optional C{hasher}, so tests (and small machines) can
use cheap parameters.  These functions are CPU-bound and take tens of
milliseconds with the default parameters: callers on the reactor thread run
them in a thread pool (see L{twistedmail.auth.checkers}).
"""

from __future__ import annotations

import secrets
import threading

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "DEFAULT_HASHER",
    "DUMMY_HASH",
    "dummy_hash",
    "hash_password",
    "is_known_hash",
    "needs_rehash",
    "verify_password",
]

DEFAULT_HASHER = PasswordHasher()
"""The hasher used when none is given: argon2id, argon2-cffi's defaults."""

_ARGON2ID_PREFIX = "$argon2id$"
_BCRYPT_PREFIXES = ("$2b$", "$2a$", "$2y$")
# bcrypt only ever hashed the first 72 bytes of a password; the bcrypt package
# now refuses longer input, so cut it the way the stored hash was made.
_BCRYPT_MAX_PASSWORD = 72

_dummy_lock = threading.Lock()
_dummy_hashes: dict[tuple[object, ...], str] = {}


def _as_bytes(password: str | bytes) -> bytes:
    if isinstance(password, bytes):
        return password
    # Lone surrogates (from a surrogateescape decode) must not raise here.
    return password.encode("utf-8", "surrogatepass")


def _is_argon2id(stored_hash: str) -> bool:
    return stored_hash.startswith(_ARGON2ID_PREFIX)


def _is_bcrypt(stored_hash: str) -> bool:
    return stored_hash.startswith(_BCRYPT_PREFIXES)


def is_known_hash(stored_hash: str) -> bool:
    """Whether the stored hash is in a format L{verify_password} can check.

    Says nothing about whether the hash is well formed inside; a malformed
    hash of a known format simply never verifies.
    """
    return _is_argon2id(stored_hash) or _is_bcrypt(stored_hash)


def hash_password(password: str | bytes, hasher: PasswordHasher | None = None) -> str:
    """Hash a new password with argon2id.

    @param password: the password; text is hashed as UTF-8.
    @param hasher: the argon2 parameters; L{DEFAULT_HASHER} when None.
    @return: the PHC string to store, e.g. ``$argon2id$v=19$m=65536,t=3,p=4$...``.
    """
    return (hasher or DEFAULT_HASHER).hash(_as_bytes(password))


def verify_password(
    stored_hash: str, password: str | bytes, hasher: PasswordHasher | None = None
) -> bool:
    """Check a password against a stored argon2id or bcrypt hash.

    @param stored_hash: the hash from the directory.
    @param password: what the client sent; text is taken as UTF-8.
    @param hasher: the argon2 hasher; L{DEFAULT_HASHER} when None (the
        parameters come from the stored hash, so this matters little).
    @return: True only when the password matches.  An empty hash, an unknown
        format or a malformed hash gives False; this never raises for bad
        input.
    """
    secret = _as_bytes(password)
    if _is_argon2id(stored_hash):
        try:
            return (hasher or DEFAULT_HASHER).verify(stored_hash, secret)
        except (VerificationError, InvalidHashError):
            return False
    if _is_bcrypt(stored_hash):
        try:
            return bcrypt.checkpw(
                secret[:_BCRYPT_MAX_PASSWORD], stored_hash.encode("ascii")
            )
        except (ValueError, UnicodeEncodeError):
            return False
    return False


def needs_rehash(stored_hash: str, hasher: PasswordHasher | None = None) -> bool:
    """Whether a stored hash should be replaced by L{hash_password}'s.

    True for bcrypt hashes, for argon2id hashes made with other parameters
    than the hasher's, and for anything that is not a usable hash.  Callers
    replace the hash after a successful login, when they have the password.
    """
    if not _is_argon2id(stored_hash):
        return True
    try:
        return (hasher or DEFAULT_HASHER).check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


def dummy_hash(hasher: PasswordHasher | None = None) -> str:
    """A hash of a random password, made with the hasher's parameters.

    Failed logins for users without a usable hash verify against it, so they
    cost as much as a wrong password for a real user.  It is made once per
    set of parameters, on first use (not at import: hashing takes time), and
    kept for the life of the process.  Safe to call from any thread.
    """
    h = hasher or DEFAULT_HASHER
    key = (h.time_cost, h.memory_cost, h.parallelism, h.hash_len, h.salt_len, h.type)
    with _dummy_lock:
        cached = _dummy_hashes.get(key)
        if cached is None:
            cached = _dummy_hashes[key] = h.hash(secrets.token_bytes(32))
        return cached


def __getattr__(name: str) -> str:
    # DUMMY_HASH is computed lazily on first access (PEP 562).
    if name == "DUMMY_HASH":
        return dummy_hash()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DUMMY_HASH: str
"""L{dummy_hash} with the default parameters, computed on first access."""
