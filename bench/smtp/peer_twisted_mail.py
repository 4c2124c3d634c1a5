"""Benchmark peer: twisted.mail's ESMTP server delivering into Maildir.

Run with the benchmark's own virtualenv (twisted.mail is never imported by
twistedmail itself):

    python peer_twisted_mail.py --port PORT --root DIR --domain bench.test --user smtp

Everything that handles mail is twisted.mail's own code: C{MailService},
its ESMTP factory, C{MaildirDirdbmDomain} and C{MaildirMessage} (written to
tmp/, renamed into new/ at the end of data; it never fsyncs).  Three spots
of twisted.mail 26.10 do not work on Python 3 and get the smallest change
that makes them work:

  - users must be added with bytes names (the DirDBM keys are bytes);
  - the ESMTP server looks the recipient's domain up as bytes, so the
    domain is registered under its bytes name;
  - C{AbstractMaildirDomain.startMessage} joins bytes and str paths and
    opens the file in text mode; the override below builds the same paths
    as str and opens the file in binary mode, then hands it to the stock
    C{MaildirMessage}.
"""

from __future__ import annotations

import argparse
import os

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.internet import endpoints, reactor
from twisted.mail import mail, maildir


class BytesSafeMaildirDomain(maildir.MaildirDirdbmDomain):
    """The stock DirDBM Maildir domain with a Python 3 safe startMessage."""

    def startMessage(self, user):
        if isinstance(user, str):
            local, domain = (part.encode() for part in user.split("@", 1))
        else:
            local, domain = user.dest.local, user.dest.domain
        folder = os.fsdecode(self.userDirectory(local))
        name = os.fsdecode(maildir._generateMaildirName())
        temporary = os.path.join(folder, "tmp", name)
        final = os.path.join(folder, "new", name)
        return maildir.MaildirMessage(
            local + b"@" + domain, open(temporary, "wb"), temporary, final
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--domain", default="bench.test")
    parser.add_argument("--user", action="append", default=[])
    parser.add_argument("--hostname", default="bench-twisted-mail.localdomain")
    args = parser.parse_args()

    service = mail.MailService()
    root = os.path.join(os.path.abspath(args.root), args.domain)
    domain = BytesSafeMaildirDomain(service, root)
    for user in args.user or ["smtp"]:
        domain.addUser(user.encode(), b"unused")
    service.addDomain(args.domain.encode(), domain)
    # As the stock plugin does unless --disable-anonymous: unauthenticated
    # clients may send to the service's domains.
    service.smtpPortal.registerChecker(AllowAnonymousAccess())
    factory = service.getESMTPFactory()
    factory.domain = args.hostname

    endpoint = endpoints.TCP4ServerEndpoint(
        reactor, args.port, backlog=1024, interface="127.0.0.1"
    )
    endpoint.listen(factory)
    print(f"twisted.mail listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
