"""twistd plugin: ``twistd -n twistedmail`` (ServiceMaker only)."""

from twisted.application.service import ServiceMaker

twistedmail = ServiceMaker(
    "twistedmail",
    "twistedmail.tap",
    "A complete mail server: ESMTP, submission, POP3(S), IMAP4(S) on Maildir.",
    "twistedmail",
)
