# -*- test-case-name: tests.test_auth -*-
"""Authentication: who may log in to submission, POP3 and IMAP.

The login step of the flow, before any mailbox is opened:

  - L{twistedmail.auth.passwords}: argon2id hashes (bcrypt accepted for
    migration);
  - L{twistedmail.auth.checkers}: the twisted.cred checker over the directory;
  - L{twistedmail.auth.realm}: the realm handing out one avatar per protocol,
    and L{make_portal} wiring both;
  - L{twistedmail.auth.throttle}: the per-address back-off and L{login}, the
    one call every protocol makes (it also writes the fail2ban log line).
"""

from twistedmail.auth.checkers import DirectoryChecker
from twistedmail.auth.passwords import hash_password, needs_rehash, verify_password
from twistedmail.auth.realm import (
    IMAPAccount,
    MailRealm,
    POP3Maildrop,
    SubmissionSender,
    make_portal,
)
from twistedmail.auth.throttle import LoginThrottle, login

__all__ = [
    "DirectoryChecker",
    "IMAPAccount",
    "LoginThrottle",
    "MailRealm",
    "POP3Maildrop",
    "SubmissionSender",
    "hash_password",
    "login",
    "make_portal",
    "needs_rehash",
    "verify_password",
]
