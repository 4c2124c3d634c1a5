# -*- test-case-name: tests.test_replies -*-
"""Protocol replies and the errors that carry them.

Every step of the flow (RCPT checks, alias expansion, delivery, relay) reports a
refusal as a :class:`MailError` holding a :class:`Reply`: the reply goes to the
peer unchanged and generic, the reason goes to the log.  Enhanced status codes
follow RFC 3463; they are sent as RFC 2034 describes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MailError",
    "PermanentError",
    "Reply",
    "TemporaryError",
    "ALIAS_INCLUDE_UNAVAILABLE",
    "ALIAS_LOOP",
    "ALIAS_TOO_DEEP",
    "BAD_ALIAS_TARGET",
    "INTERNAL_ERROR",
    "MAILBOX_FULL",
    "MAILBOX_UNAVAILABLE",
    "OK",
    "TARGET_REFUSED",
    "UNKNOWN_USER",
]


@dataclass(frozen=True)
class Reply:
    """One SMTP-style reply.

    @ivar code: the three-digit reply code (RFC 5321 §4.2).
    @ivar status: the enhanced status code ``class.subject.detail`` (RFC 3463),
        or ``""`` where none applies (the greeting, for example).
    @ivar text: human-readable text, one line, no CR or LF.
    """

    code: int
    status: str
    text: str

    @property
    def is_permanent(self) -> bool:
        """True for 5xx replies."""
        return 500 <= self.code < 600

    @property
    def is_temporary(self) -> bool:
        """True for 4xx replies."""
        return 400 <= self.code < 500

    def to_bytes(self, continued: bool = False) -> bytes:
        """Render as one SMTP reply line, CRLF included.

        @param continued: use ``-`` after the code (a multiline reply's
            non-final line, RFC 5321 §4.2.1).
        """
        sep = "-" if continued else " "
        body = f"{self.status} {self.text}" if self.status else self.text
        return f"{self.code}{sep}{body}\r\n".encode()

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8").rstrip("\r\n")


class MailError(Exception):
    """A refusal with the reply to give the peer and a reason for the log."""

    def __init__(self, reply: Reply, reason: str = "") -> None:
        super().__init__(reason or reply.text)
        self.reply = reply
        self.reason = reason or reply.text


class PermanentError(MailError):
    """A failure that will not go away by retrying (5xx): bounce."""


class TemporaryError(MailError):
    """A failure that may go away (4xx): keep the message and retry."""


OK = Reply(250, "2.0.0", "OK")
UNKNOWN_USER = Reply(550, "5.1.1", "No such user here")
MAILBOX_UNAVAILABLE = Reply(550, "5.2.1", "Mailbox unavailable")
ALIAS_LOOP = Reply(550, "5.4.6", "Alias expansion loop")
ALIAS_TOO_DEEP = Reply(550, "5.4.6", "Alias expansion too deep")
# An alias target that is not an address, program, file or include: the
# alias is misconfigured (RFC 3463 X.3.5).
BAD_ALIAS_TARGET = Reply(550, "5.3.5", "System incorrectly configured")
# An :include: file that cannot be read now; it may be back later.
ALIAS_INCLUDE_UNAVAILABLE = Reply(451, "4.3.0", "Alias list temporarily unavailable")
TARGET_REFUSED = Reply(550, "5.7.1", "Delivery to this destination is not permitted")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
