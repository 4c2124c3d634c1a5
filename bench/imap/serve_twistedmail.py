"""twistedmail's IMAP server for the benchmark: one listener on loopback,
plaintext LOGIN allowed (as the peers are configured), users from the
command line.

Prints ``port <n>`` once listening.  Passwords are hashed with cheap argon2id
parameters so that the benchmark measures IMAP and not the password hash
(Dovecot's benchmark instance uses ``{PLAIN}`` passwords).  The factory is
built here directly (as tests/imap_server_helpers.py does) until the
``imap`` role of makeService is used instead.
"""

from __future__ import annotations

import argparse
import sys

from argon2 import PasswordHasher
from twisted.internet import reactor

from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.auth.passwords import hash_password
from twistedmail.auth.realm import make_portal
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.config import IMAPSettings, ServerSettings, Settings
from twistedmail.imap.server import IMAPServerFactory
from twistedmail.interfaces import User
from twistedmail.maildir import MaildirStore

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True, help="mailboxes are in mail/")
    parser.add_argument("--password", default="pass")
    parser.add_argument("users", nargs="+", help="NAME=MAILDIR (under mail/)")
    args = parser.parse_args()
    stored = hash_password(args.password, CHEAP)
    users = []
    for spec in args.users:
        name, _, path = spec.partition("=")
        users.append(User(f"{name}@bench.test", stored, path))
    directory = MemoryDirectory(domains=("bench.test",), users=tuple(users))
    settings = Settings().with_changes(
        server=ServerSettings(hostname="bench.test", data_dir=args.data_dir),
        imap=IMAPSettings(
            allow_plaintext_auth=True, max_connections=5000, max_connections_per_ip=5000
        ),
    )
    reactor.suggestThreadPoolSize(4)  # type: ignore[attr-defined]
    portal = make_portal(directory, settings, reactor, hasher=CHEAP)  # type: ignore[arg-type]
    store = MaildirStore(settings.data_path("mail"), "bench.test", reactor)  # type: ignore[arg-type]
    factory = IMAPServerFactory(
        settings,
        reactor,  # type: ignore[arg-type]
        portal=portal,
        throttle=LoginThrottle(reactor, 0.0, 0.0),  # type: ignore[arg-type]
        store=store,
        tls=None,
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"port {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
