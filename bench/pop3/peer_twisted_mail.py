"""Benchmark peer: twisted.mail's POP3 server on Maildir mailboxes.

    python peer_twisted_mail.py --root DIR --password pass NAME=MAILDIR...

Prints ``port <n>`` once listening on 127.0.0.1.  The protocol and the
mailbox are twisted.mail's own (C{twisted.mail.pop3.POP3},
C{twisted.mail.maildir.MaildirMailbox}); the glue is a cred realm and a
factory, since twisted.mail ships no POP3 factory outside its ``mail``
service.  Two Python 3 bugs of twisted.mail 26.10's C{MaildirMailbox} get
the smallest change that makes them work:

  - C{getMessage} opens files in text mode, which makes RETR hang (the
    producer cannot write str): the subclass opens them in binary mode;
  - C{deleteMessage} joins the bytes Maildir path with str names (DELE
    fails with a TypeError and the connection drops): the subclass joins
    bytes.  As in the stock code, DELE moves the file into ``.Trash/cur``
    at once, and QUIT leaves it there.

twistedmail itself never imports twisted.mail.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import protocol, reactor
from twisted.mail import maildir, pop3
from zope.interface import implementer


class BinaryMaildirMailbox(maildir.MaildirMailbox):
    """The stock Maildir mailbox, reading messages as bytes."""

    def getMessage(self, i: int) -> Any:
        return open(self.list[i], "rb")

    def deleteMessage(self, i: int) -> None:
        path = self.list[i]
        trash = os.path.join(self.path, b".Trash", b"cur", os.path.basename(path))
        os.rename(path, trash)
        self.deleted[path] = trash
        self.list[i] = 0


@implementer(IRealm)
class Realm:
    """Each user's mailbox is a Maildir under the root."""

    def __init__(self, mailboxes: dict[bytes, str]) -> None:
        self.mailboxes = mailboxes

    def requestAvatar(self, avatar_id: bytes, mind: object, *interfaces: Any) -> Any:
        if pop3.IMailbox not in interfaces:
            raise NotImplementedError()
        # twisted.mail's Maildir code works on bytes paths.
        box = BinaryMaildirMailbox(os.fsencode(self.mailboxes[avatar_id]))
        return pop3.IMailbox, box, lambda: None


class POP3Factory(protocol.ServerFactory):
    """Makes twisted.mail POP3 protocols that log in through the portal."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal

    def buildProtocol(self, addr: Any) -> pop3.POP3:
        p = pop3.POP3()
        p.portal = self.portal
        p.factory = self
        return p


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--password", default="pass")
    parser.add_argument("users", nargs="+", help="NAME=MAILDIR (under root)")
    args = parser.parse_args()
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    mailboxes = {}
    for spec in args.users:
        name, _, path = spec.partition("=")
        login = f"{name}@bench.test".encode()
        checker.addUser(login, args.password.encode())
        mailboxes[login] = os.path.join(args.root, path)
    portal = Portal(Realm(mailboxes), [checker])
    port = reactor.listenTCP(0, POP3Factory(portal), interface="127.0.0.1")
    print(f"port {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
