# -*- test-case-name: tests.test_cli -*-
"""The ``twistedmail`` admin command: domains, users, aliases, checks.

    twistedmail [--config FILE] domain add|del|list [DOMAIN]
    twistedmail [--config FILE] user add|passwd|del|enable|disable|list ...
    twistedmail [--config FILE] alias add|del|list ...
    twistedmail [--config FILE] check-config
    twistedmail [--config FILE] resolve ADDRESS
    twistedmail [--config FILE] sendmail [sendmail options] [RECIPIENT...]
    twistedmail [--config FILE] queue list|show|flush|hold|release|delete [ID]

It works on the configured directory (the same one the server uses; safe
while the server runs).  Passwords come from a prompt on a terminal, or the
first line of standard input otherwise, never from the command line.

Exit codes: 0 done; 1 the directory refused the change (a duplicate, a
missing entry); 2 bad input (usage, a bad address or value, a bad
configuration), and then nothing is written.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred

from twistedmail.address import Address, AddressError, normalize_domain
from twistedmail.config import ConfigError, Settings, load_settings
from twistedmail.interfaces import DirectoryError, IDirectoryAdmin, User

__all__ = ["execute", "main", "sendmail_main"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class UsageProblem(Exception):
    """Bad input: reported on stderr, exit 2, nothing written."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's hook; never returns
        raise UsageProblem(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="twistedmail", description="Administer a twistedmail server.")
    p.add_argument(
        "--config", "-c", help="the TOML configuration file (default: built-in)"
    )
    p.add_argument("--data-dir", help="overrides [server] data_dir")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    domain = sub.add_parser("domain", help="local domains").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    domain.add_parser("add", help="make a domain local").add_argument("domain")
    domain.add_parser("del", help="remove a domain (it must be empty)").add_argument(
        "domain"
    )
    domain.add_parser("list", help="list local domains")

    user = sub.add_parser("user", help="user accounts").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    add = user.add_parser("add", help="add a user (password from prompt or stdin)")
    add.add_argument("address")
    add.add_argument("--mailbox", help="Maildir path, relative to data_dir/mail")
    add.add_argument("--quota", help="mailbox quota: bytes, or with K, M or G")
    add.add_argument("--disabled", action="store_true", help="add the user disabled")
    add.add_argument(
        "--no-password", action="store_true", help="no password: the user cannot log in"
    )
    user.add_parser("passwd", help="set a password (prompt or stdin)").add_argument(
        "address"
    )
    user.add_parser("del", help="remove a user (the Maildir stays)").add_argument(
        "address"
    )
    user.add_parser("enable", help="enable a user").add_argument("address")
    user.add_parser("disable", help="disable a user").add_argument("address")
    user.add_parser("list", help="list users").add_argument("domain", nargs="?")

    alias = sub.add_parser("alias", help="aliases").add_subparsers(
        dest="action", required=True, parser_class=_Parser
    )
    aadd = alias.add_parser("add", help="add targets to an alias (@domain: catch-all)")
    aadd.add_argument("address")
    aadd.add_argument("targets", nargs="+")
    adel = alias.add_parser("del", help="remove targets, or the whole alias")
    adel.add_argument("address")
    adel.add_argument("targets", nargs="*")
    alias.add_parser("list", help="list aliases").add_argument("domain", nargs="?")

    sub.add_parser("check-config", help="check the configuration and the directory")
    sub.add_parser(
        "sendmail", help="queue a message from standard input (sendmail(8) options)"
    ).add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser(
        "queue", help="the mail queue: list, show, flush, hold, release, delete"
    ).add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("resolve", help="show how an address expands").add_argument(
        "address"
    )
    return p


def _address_key(text: str) -> str:
    try:
        return Address.parse(text, utf8=True).key
    except AddressError as e:
        raise UsageProblem(f"bad address {text!r}: {e}") from None


def _alias_key(text: str) -> str:
    if text.startswith("@"):
        return "@" + _domain(text[1:])
    return _address_key(text)


def _domain(text: str) -> str:
    try:
        return normalize_domain(text)
    except AddressError as e:
        raise UsageProblem(f"bad domain {text!r}: {e}") from None


def _target(text: str) -> str:
    if text.startswith(("|", "/", ":include:")):
        if text.startswith(":include:") and not text[len(":include:") :].startswith(
            "/"
        ):
            raise UsageProblem(
                f"bad target {text!r}: an include needs an absolute path"
            )
        return text
    try:
        return str(Address.parse(text, utf8=True))
    except AddressError as e:
        raise UsageProblem(f"bad target {text!r}: {e}") from None


_QUOTA = re.compile(r"(\d+)([KMG]?)\Z", re.I)


def _quota(text: str | None) -> int | None:
    if text is None:
        return None
    m = _QUOTA.match(text.strip())
    if not m:
        raise UsageProblem(f"bad quota {text!r}: use bytes, or a number with K, M or G")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
    return int(m.group(1)) * scale


def _read_password(stdin: IO[str], stderr: Any, confirm: bool) -> str:
    if stdin.isatty():
        first = getpass.getpass("Password: ", stream=stderr)
        if confirm and getpass.getpass("Again: ", stream=stderr) != first:
            raise UsageProblem("the passwords differ")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageProblem("empty password")
    return password


def _settings(args: argparse.Namespace) -> Settings:
    import dataclasses

    settings = load_settings(args.config)
    if args.data_dir:
        settings = dataclasses.replace(
            settings,
            server=dataclasses.replace(settings.server, data_dir=args.data_dir),
        )
    return settings


async def execute(
    argv: Sequence[str], reactor: Any, stdin: IO[str], stdout: IO[str], stderr: IO[str]
) -> int:
    """Run one admin command; the exit code is returned, never raised.

    @param reactor: the running reactor (the SQLite backend needs its threads).
    """
    try:
        args = _parser().parse_args(list(argv))
        settings = _settings(args)
        if args.command == "queue":
            # The queue tools talk to the running server (or the files) and
            # need no directory.
            from twistedmail.spool.tools import queue_command

            return queue_command(args.args, settings, stdout, stderr)
        work = _plan(args, stdin, stderr)
    except UsageProblem as e:
        print(f"twistedmail: {e}", file=stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"twistedmail: {e}", file=stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return int(e.code or 0)

    from twistedmail.aliases.directory import open_directory

    try:
        directory = open_directory(settings, reactor)
        await directory.start()
    except (DirectoryError, OSError) as e:
        print(f"twistedmail: {e}", file=stderr)
        return EXIT_USAGE if isinstance(e, DirectoryError) else EXIT_REFUSED
    try:
        return await work(directory, settings, stdout)
    except DirectoryError as e:
        print(f"twistedmail: {e}", file=stderr)
        return EXIT_REFUSED
    finally:
        await directory.stop()


def _plan(args: argparse.Namespace, stdin: IO[str], stderr: IO[str]) -> Any:
    """Check all input first, then return the coroutine function that acts.

    Everything that can be wrong with the input is found here, before the
    directory is opened, so bad input writes nothing.
    """
    command, action = args.command, getattr(args, "action", None)

    if command == "domain":
        if action == "list":

            async def domain_list(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
                for name in await d.list_domains():
                    print(name, file=out)
                return EXIT_OK

            return domain_list
        domain = _domain(args.domain)

        async def domain_change(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
            await (d.add_domain(domain) if action == "add" else d.remove_domain(domain))
            return EXIT_OK

        return domain_change

    if command == "user":
        if action == "list":
            domain_filter = _domain(args.domain) if args.domain else None

            async def user_list(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
                for u in await d.list_users(domain_filter):
                    state = "enabled" if u.enabled else "disabled"
                    quota = "-" if u.quota is None else str(u.quota)
                    print(f"{u.address}\t{state}\tquota={quota}\t{u.mailbox}", file=out)
                return EXIT_OK

            return user_list
        key = _address_key(args.address)
        if action == "add":
            from twistedmail.aliases.directory import default_mailbox
            from twistedmail.auth.passwords import hash_password

            quota = _quota(args.quota)
            mailbox = args.mailbox or default_mailbox(key)
            if ".." in mailbox.split("/"):
                raise UsageProblem(f"bad mailbox path {mailbox!r}")
            hashed = (
                ""
                if args.no_password
                else hash_password(_read_password(stdin, stderr, True))
            )
            user = User(key, hashed, mailbox, enabled=not args.disabled, quota=quota)

            async def user_add(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
                await d.add_user(user)
                return EXIT_OK

            return user_add
        if action == "passwd":
            from twistedmail.auth.passwords import hash_password

            hashed = hash_password(_read_password(stdin, stderr, True))

            async def user_passwd(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
                await d.set_password(key, hashed)
                return EXIT_OK

            return user_passwd

        async def user_change(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
            if action == "del":
                await d.remove_user(key)
            else:
                await d.set_enabled(key, action == "enable")
            return EXIT_OK

        return user_change

    if command == "alias":
        if action == "list":
            domain_filter = _domain(args.domain) if args.domain else None

            async def alias_list(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
                for source, targets in await d.list_aliases(domain_filter):
                    print(f"{source}: {', '.join(targets)}", file=out)
                return EXIT_OK

            return alias_list
        source = _alias_key(args.address)
        targets = tuple(_target(t) for t in args.targets)

        async def alias_change(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
            if action == "add":
                await d.add_alias(source, targets)
            else:
                await d.remove_alias(source, targets)
            return EXIT_OK

        return alias_change

    if command == "check-config":

        async def check(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
            domains = await d.list_domains()
            print(f"{s.source}: OK", file=out)
            print(f"data folder: {s.server.data_dir}", file=out)
            print(
                f"directory: {s.directory.backend}, {len(domains)} domain(s)", file=out
            )
            for role, description in s.listeners.roles().items():
                print(f"listener {role}: {description}", file=out)
            return EXIT_OK

        return check

    if command == "resolve":
        try:
            address = Address.parse(args.address, utf8=True)
        except AddressError as e:
            raise UsageProblem(f"bad address {args.address!r}: {e}") from None

        async def resolve(d: IDirectoryAdmin, s: Settings, out: IO[str]) -> int:
            from twistedmail.aliases.expander import AliasExpander

            expansion = await AliasExpander(d, s.aliases).expand(address)
            for line in expansion.describe():
                print(line, file=out)
            return EXIT_OK if expansion.destinations else EXIT_REFUSED

        return resolve

    if command == "sendmail":
        raise UsageProblem("sendmail reads binary standard input: run it as a command")
    raise UsageProblem(f"unknown command {command}")


def _sendmail_argv(arguments: list[str]) -> list[str] | None:
    """The sendmail arguments when the command is ``sendmail``, else None.

    ``twistedmail --config F sendmail -t`` becomes ``sendmail -C F -t``.
    """
    config: list[str] = []
    i = 0
    while i < len(arguments):
        word = arguments[i]
        if word in ("--config", "-c") and i + 1 < len(arguments):
            config = ["-C", arguments[i + 1]]
            i += 2
        elif word.startswith("--config="):
            config = ["-C", word.split("=", 1)[1]]
            i += 1
        elif word.startswith("-"):
            return None
        else:
            return config + arguments[i + 1 :] if word == "sendmail" else None
    return None


def sendmail_main() -> None:
    """The ``twistedmail-sendmail`` console script: sendmail(8) compatible."""
    from twistedmail.sendmail import main as sendmail

    sys.exit(sendmail(sys.argv[1:]))


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: run L{execute} on the global reactor and exit."""
    from twisted.internet import task

    arguments = list(sys.argv[1:] if argv is None else argv)
    sendmail_argv = _sendmail_argv(arguments)
    if sendmail_argv is not None:
        from twistedmail.sendmail import main as sendmail

        sys.exit(sendmail(sendmail_argv))

    def run(reactor: Any) -> Deferred[None]:
        async def go() -> None:
            code = await execute(arguments, reactor, sys.stdin, sys.stdout, sys.stderr)
            if code:
                raise SystemExit(code)

        return Deferred.fromCoroutine(go())

    task.react(run)
