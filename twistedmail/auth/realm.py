# -*- test-case-name: tests.test_auth -*-
"""The realm: the login step that hands a logged-in user to a protocol.

L{MailRealm} turns the avatar id the checker produced (the user's address key)
into one avatar per protocol interface from L{twistedmail.interfaces}:

  - L{ISubmissionSender}: L{SubmissionSender}, for SMTP submission;
  - L{IPOP3Maildrop}: L{POP3Maildrop}, the user's INBOX Maildir;
  - L{IIMAPAccount}: L{IMAPAccount}, the user's Maildir tree.

They are thin now (the user and, for the mail stores, the absolute Maildir
path) and grow with the protocols.  L{make_portal} wires the realm and
L{DirectoryChecker} into a L{Portal} from the settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from argon2 import PasswordHasher
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from twistedmail.auth.checkers import DirectoryChecker, thread_runner
from twistedmail.config import Settings
from twistedmail.interfaces import (
    IDirectory,
    IIMAPAccount,
    IPOP3Maildrop,
    ISubmissionSender,
    User,
)

__all__ = [
    "IMAPAccount",
    "MailRealm",
    "POP3Maildrop",
    "SubmissionSender",
    "make_portal",
]

AvatarResult = tuple[type[Interface], object, Callable[[], None]]


@implementer(ISubmissionSender)
class SubmissionSender:
    """An authenticated submission session's avatar.

    @ivar user: the L{User} who logged in.
    """

    def __init__(self, user: User) -> None:
        self.user = user


@implementer(IPOP3Maildrop)
class POP3Maildrop:
    """A POP3 session's avatar: the user's INBOX maildrop.

    @ivar user: the L{User} who logged in.
    @ivar mailbox_path: the absolute path of the user's Maildir.
    """

    def __init__(self, user: User, mailbox_path: str) -> None:
        self.user = user
        self.mailbox_path = mailbox_path


@implementer(IIMAPAccount)
class IMAPAccount:
    """An IMAP session's avatar: the user's mailbox tree.

    @ivar user: the L{User} who logged in.
    @ivar mailbox_path: the absolute path of the user's Maildir.
    """

    def __init__(self, user: User, mailbox_path: str) -> None:
        self.user = user
        self.mailbox_path = mailbox_path


def _logout() -> None:
    """Nothing to release yet; avatars gain state with the protocols."""


@implementer(IRealm)
class MailRealm:
    """Gives each logged-in user the avatar its protocol asks for.

    @param directory: where the user is read again (for the current mailbox
        location).
    @param mail_root: the folder relative mailbox paths are under (the data
        folder's ``mail/``); made absolute when the realm is made.
    """

    def __init__(self, directory: IDirectory, mail_root: str) -> None:
        self._directory = directory
        self._mail_root = os.path.abspath(mail_root)

    def mailbox_path(self, user: User) -> str:
        """The absolute path of the user's Maildir.

        C{user.mailbox} is taken relative to the mail root unless absolute.
        """
        return os.path.normpath(os.path.join(self._mail_root, user.mailbox))

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: type[Interface]
    ) -> Deferred[AvatarResult]:
        """Make the avatar for the first of C{interfaces} this realm serves.

        @param avatarId: the address key from L{DirectoryChecker}, UTF-8
            (text is accepted too).
        @return: a Deferred firing with C{(interface, avatar, logout)}; it
            fails with L{UnauthorizedLogin} when the user is gone (removed
            since the password was checked) and with C{NotImplementedError}
            when no interface is served, as twisted.cred expects.
        """
        return Deferred.fromCoroutine(self._avatar(avatarId, interfaces))

    async def _avatar(
        self, avatar_id: object, interfaces: tuple[type[Interface], ...]
    ) -> AvatarResult:
        chosen = next(
            (
                i
                for i in interfaces
                if i in (ISubmissionSender, IPOP3Maildrop, IIMAPAccount)
            ),
            None,
        )
        if chosen is None:
            raise NotImplementedError(
                "no avatar for " + ", ".join(i.__name__ for i in interfaces)
            )
        if isinstance(avatar_id, bytes):
            key = avatar_id.decode("utf-8")
        elif isinstance(avatar_id, str):
            key = avatar_id
        else:
            raise UnauthorizedLogin("anonymous login is not served")
        user = await self._directory.get_user(key)
        if user is None:
            raise UnauthorizedLogin(f"user {key} no longer exists")
        avatar: object
        if chosen is ISubmissionSender:
            avatar = SubmissionSender(user)
        elif chosen is IPOP3Maildrop:
            avatar = POP3Maildrop(user, self.mailbox_path(user))
        else:
            avatar = IMAPAccount(user, self.mailbox_path(user))
        return chosen, avatar, _logout


def make_portal(
    directory: IDirectory,
    settings: Settings,
    reactor: IReactorThreads,
    threadpool: ThreadPool | None = None,
    *,
    hasher: PasswordHasher | None = None,
) -> Portal:
    """The portal every protocol logs in through.

    @param directory: the user directory.
    @param settings: gives ``[auth] default_domain`` and the mail root
        (C{settings.data_path("mail")}).
    @param reactor: runs the password checks in C{threadpool}.
    @param threadpool: where argon2 runs; the reactor's pool when None.  Each
        argon2id check with the default parameters holds 64 MiB while it
        runs, so a small dedicated pool (started and stopped by the service)
        bounds that memory.
    @param hasher: argon2 parameters (None: the defaults).
    """
    pool = threadpool if threadpool is not None else reactor.getThreadPool()
    checker = DirectoryChecker(
        directory,
        settings.auth.default_domain,
        thread_runner(reactor, pool),
        hasher=hasher,
    )
    realm = MailRealm(directory, settings.data_path("mail"))
    return Portal(realm, [checker])
