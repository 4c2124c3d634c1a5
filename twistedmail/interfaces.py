# -*- test-case-name: tests.test_directory -*-
"""The seams between twistedmail's components.

The directory (the seed's "Database") answers who and what exists: local
domains, users and aliases.  The cred realm hands out one avatar per protocol
(submission, POP3, IMAP); they are thin here and grow with the protocols.
Every directory call returns a Deferred so that SQL and file backends never
block the reactor.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from twistedmail.replies import Reply

__all__ = [
    "DirectoryError",
    "Envelope",
    "IDeliveryAgent",
    "IPerRecipientDeliveryAgent",
    "Recipient",
    "IDirectory",
    "IDirectoryAdmin",
    "IIMAPAccount",
    "IPOP3Maildrop",
    "ISubmissionSender",
    "User",
]


@dataclass(frozen=True)
class User:
    """A user account in the directory.

    @ivar address: the user's address in lookup form (``local@domain``, local
        part case-folded, domain as A-labels); see L{Address.key}.
    @ivar password_hash: a PHC-format hash (``$argon2id$...``) or a bcrypt
        ``$2b$`` hash; ``""`` means the account cannot log in.
    @ivar mailbox: where the Maildir lives, relative to the data folder's
        ``mail/`` directory unless absolute.
    @ivar enabled: a disabled user cannot log in and receives no mail.
    @ivar quota: the mailbox quota in bytes, or ``None`` for none.
    """

    address: str
    password_hash: str
    mailbox: str
    enabled: bool = True
    quota: int | None = None

    @property
    def domain(self) -> str:
        """The domain part of the address."""
        return self.address.rpartition("@")[2]


class DirectoryError(Exception):
    """A directory change that cannot be made (a duplicate, a missing entry,
    a user in a domain that is not local); the message says which."""


class IDirectory(Interface):
    """Read access to domains, users and aliases.

    Keys are lookup forms: ``local@domain`` with the local part case-folded and
    the domain normalised (L{twistedmail.address.Address.key}); a catch-all
    alias has the key ``@domain``.
    """

    def start() -> Deferred[None]:
        """Open the backend (connect, apply migrations, first read)."""

    def stop() -> Deferred[None]:
        """Close the backend."""

    def is_local_domain(domain: str) -> Deferred[bool]:
        """Whether mail for this (normalised) domain is ours to deliver."""

    def list_domains() -> Deferred[list[str]]:
        """All local domains, sorted."""

    def get_user(address: str) -> Deferred[User | None]:
        """The user with this exact key, or None."""

    def list_users(domain: str | None = None) -> Deferred[list[User]]:
        """All users (of one domain when given), sorted by address."""

    def get_alias(address: str) -> Deferred[tuple[str, ...] | None]:
        """The targets of the alias with this exact key, or None.

        Targets are kept as written: addresses, ``|command``, ``/path`` or
        ``:include:/path``.
        """

    def list_aliases(
        domain: str | None = None,
    ) -> Deferred[list[tuple[str, tuple[str, ...]]]]:
        """All aliases (of one domain when given) as (key, targets), sorted."""


class IDirectoryAdmin(IDirectory):
    """Changes to the directory, for the admin CLI and for tests.

    Each method fails with L{DirectoryError} when the change cannot be made,
    and changes nothing then.
    """

    def add_domain(domain: str) -> Deferred[None]:
        """Make a domain local."""

    def remove_domain(domain: str) -> Deferred[None]:
        """Remove a domain; refused while users or aliases remain in it."""

    def add_user(user: User) -> Deferred[None]:
        """Add a user in a local domain."""

    def set_password(address: str, password_hash: str) -> Deferred[None]:
        """Replace a user's password hash."""

    def set_enabled(address: str, enabled: bool) -> Deferred[None]:
        """Enable or disable a user."""

    def remove_user(address: str) -> Deferred[None]:
        """Remove a user (the mailbox on disk is left alone)."""

    def add_alias(address: str, targets: tuple[str, ...]) -> Deferred[None]:
        """Add targets to an alias, creating it when missing."""

    def remove_alias(address: str, targets: tuple[str, ...] = ()) -> Deferred[None]:
        """Remove some targets of an alias, or the whole alias when none."""


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient, with its DSN parameters (RFC 3461 §4).

    @ivar address: the mailbox as given in RCPT TO (no angle brackets).
    @ivar notify: NOTIFY values, upper case (``SUCCESS``, ``FAILURE``,
        ``DELAY`` or ``NEVER``); empty when not given.
    @ivar orcpt: the ORCPT parameter as ``addr-type;xtext``, or None.
    """

    address: str
    notify: tuple[str, ...] = ()
    orcpt: str | None = None


@dataclass(frozen=True)
class Envelope:
    """What an SMTP transaction knows besides the message bytes.

    @ivar sender: the reverse path without brackets; ``""`` is the null sender.
    @ivar recipients: the accepted recipients, in RCPT order.
    @ivar body_type: ``7BIT``, ``8BITMIME`` or ``BINARYMIME`` (RFC 6152, 3030).
    @ivar smtputf8: the transaction declared SMTPUTF8 (RFC 6531).
    @ivar ret: DSN RET (``FULL`` or ``HDRS``) or None.
    @ivar envid: DSN ENVID (xtext-decoded) or None.
    @ivar client_address: the peer's IP address.
    @ivar client_name: the name the client gave in EHLO/HELO/LHLO.
    @ivar auth_user: the authenticated user's address, or None.
    @ivar tls: e.g. ``"TLSv1.3 TLS_AES_256_GCM_SHA384"``, or None without TLS.
    @ivar received_at: POSIX time of the MAIL command.
    @ivar protocol: the RFC 3848 ``with`` keyword (``ESMTPSA`` and so on).
    """

    sender: str
    recipients: tuple[Recipient, ...] = ()
    body_type: str = "7BIT"
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    client_address: str = ""
    client_name: str = ""
    auth_user: str | None = None
    tls: str | None = None
    received_at: float = 0.0
    protocol: str = "ESMTP"


class IDeliveryAgent(Interface):
    """Takes one message the way an SMTP transaction hands it over.

    The SMTP server makes one agent per transaction (from a factory it is
    given) and calls L{start}, L{add_recipient} for each accepted recipient,
    L{body} with the message bytes (CRLF line ends, dot-stuffing removed, the
    trace header first), then L{commit} or L{abort}.  The spool is one agent
    (commit = the queue entry fsynced); LMTP delivers straight to Maildir.
    """

    def start(envelope: Envelope) -> None:
        """Begin a transaction (sender and session facts known)."""

    def add_recipient(recipient: Recipient) -> None:
        """Add one accepted recipient."""

    def body(data: bytes) -> None:
        """Append message bytes; may be called many times."""

    def commit() -> Deferred[str]:
        """Make the message durable; fires with its queue id.

        Fails with L{twistedmail.replies.MailError} (whose reply goes to the
        peer) when the message cannot be taken.
        """

    def abort() -> None:
        """Drop the transaction and anything written for it."""


class IPerRecipientDeliveryAgent(IDeliveryAgent):
    """A delivery agent that can succeed or fail for each recipient alone.

    Optional: the LMTP server (RFC 2033 §4.2) calls L{commit_each} instead of
    L{commit} when its agent provides this, and sends the replies after DATA,
    one per recipient.  Agents without it get one L{commit} and every
    recipient the same reply.
    """

    def commit_each() -> Deferred[list[Reply]]:
        """Deliver; fire with one reply per recipient, in L{add_recipient}
        order (e.g. ``250 2.0.0`` for one, ``452 4.2.2`` for a full mailbox).
        """


class IAvatar(Interface):
    """What every protocol avatar has: the logged-in user."""

    user = Attribute("The L{User} who logged in.")


class ISubmissionSender(IAvatar):
    """The avatar of an authenticated SMTP submission session."""


class IPOP3Maildrop(IAvatar):
    """The avatar of a POP3 session: the user's INBOX maildrop."""

    mailbox_path = Attribute("The absolute path of the user's Maildir.")


class IIMAPAccount(IAvatar):
    """The avatar of an IMAP session: the user's mailbox tree."""

    mailbox_path = Attribute("The absolute path of the user's Maildir.")
