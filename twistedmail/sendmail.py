# -*- test-case-name: tests.test_sendmail -*-
"""``twistedmail sendmail``: the local submission command (the seed's UA → Spool).

Reads one message on standard input and drops it into the spool's
``incoming/`` folder (L{twistedmail.spool.store.submit_incoming}), fsynced,
so it works whether or not the server runs: the running server's queue
runner picks it up within a second, a stopped one on its next start.

Compatible with the sendmail options programs use (as Postfix's sendmail):

 - ``-t``: recipients from the To, Cc and Bcc header fields (or the Resent-
   ones when any Resent- field is present), added to those on the command
   line; the Bcc fields are removed;
 - ``-f sender`` (also ``-r``): the envelope sender (``-f '<>'`` for the null
   sender); by default the login name at the server's hostname;
 - ``-F name``: the full name for an added From field;
 - ``-i`` / ``-oi``: a line with a lone dot does not end the message (by
   default it does, as in SMTP);
 - ``-N notify``, ``-R ret``, ``-V envid``: DSN parameters (RFC 3461);
 - ``-C path`` / ``--config path``: the configuration file (it says where
   the data folder is);
 - ``-bm``, ``-o...``, ``-v``, ``-U``, ``-m``, ``-n``, ``-B type``, ``-h n``:
   accepted and ignored.

Date, Message-ID and From fields are added when missing, and a Received
field is prepended.  Line ends become CRLF, as for SMTP.

Exit codes (sysexits(3)): 0 queued, 64 usage error, 65 bad message or
addresses, 75 the spool cannot be written (try again), 78 bad configuration.
"""

from __future__ import annotations

import email.utils
import getopt
import getpass
import os
import re
import sys
from collections.abc import Callable, Sequence
from email.parser import HeaderParser
from email.policy import compat32
from typing import BinaryIO, TextIO

from twisted.internet.interfaces import IReactorTime
from twisted.python.runtime import seconds

from twistedmail.address import Address, AddressError
from twistedmail.config import ConfigError, load_settings
from twistedmail.interfaces import Envelope, Recipient
from twistedmail.spool.store import make_queue_id, submit_incoming

__all__ = [
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_OK",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "build_message",
    "main",
]

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_TEMPFAIL = 75
EX_CONFIG = 78

_SHORT = "tif:r:F:C:N:R:V:o:b:B:h:vUmn"
_LONG = ["config="]
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
_USAGE = "usage: twistedmail sendmail [-t] [-i] [-f sender] [-F name] [recipient ...]"


class _Usage(Exception):
    """A command-line problem (exit 64)."""


class _DataError(Exception):
    """A problem with the message or its addresses (exit 65)."""


class _SystemClock:
    """The wall clock, for when no clock is injected."""

    def seconds(self) -> float:
        return seconds()


def _read_lines(data: bytes, dot_ends: bool) -> list[bytes]:
    """The message's lines without line ends; stop at a lone dot if asked."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if dot_ends and line == b".":
            break
        out.append(line)
    return out


def _split_header(lines: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Header lines and body lines; a message that does not start with a
    header field has an empty header."""
    header: list[bytes] = []
    for i, line in enumerate(lines):
        if line == b"":
            return header, lines[i + 1 :]
        if _FIELD.match(line) or (header and line[:1] in (b" ", b"\t")):
            header.append(line)
            continue
        return header, lines[i:]
    return header, []


def _fields(header: list[bytes]) -> list[list[bytes]]:
    """Group header lines into fields (a field with its continuation lines)."""
    fields: list[list[bytes]] = []
    for line in header:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def _name(field: list[bytes]) -> str:
    return field[0].split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def _qualify(text: str, hostname: str) -> str:
    return text if "@" in text else f"{text}@{hostname}"


def _parse_address(text: str, hostname: str) -> str:
    return str(Address.parse(_qualify(text.strip(), hostname), utf8=True))


def build_message(
    data: bytes,
    *,
    sender: str,
    from_address: str,
    full_name: str | None,
    hostname: str,
    now: float,
    extract: bool,
    dot_ends: bool,
    login: str,
) -> tuple[bytes, list[str]]:
    """Turn the standard input into the message to queue.

    @param sender: the envelope sender (for nothing but the From default).
    @param from_address: the address for an added From field.
    @param extract: C{-t}: take recipients from the header and drop Bcc.
    @param dot_ends: a lone dot ends the message (no C{-i}).
    @return: the message (CRLF line ends) and the recipients found in the
        header (empty without C{extract}).
    @raise _DataError: when a header address cannot be parsed.
    """
    header, body = _split_header(_read_lines(data, dot_ends))
    fields = _fields(header)
    names = {_name(f) for f in fields}
    recipients: list[str] = []
    if extract:
        resent = any(n.startswith("resent-") for n in names)
        prefix = "resent-" if resent else ""
        wanted = {prefix + n for n in ("to", "cc", "bcc")}
        text = b"\r\n".join(header).decode("utf-8", "replace") + "\r\n\r\n"
        parsed = HeaderParser(policy=compat32).parsestr(text)
        values: list[str] = []
        for name in sorted(wanted):
            values.extend(str(v) for v in parsed.get_all(name, []))
        for _, address in email.utils.getaddresses(values):
            if not address:
                continue
            try:
                recipients.append(_parse_address(address, hostname))
            except AddressError as e:
                raise _DataError(f"bad address {address!r} in header: {e}") from None
        fields = [f for f in fields if _name(f) not in {"bcc", "resent-bcc"}]
    date = email.utils.formatdate(now, localtime=True)
    added: list[bytes] = []
    if "from" not in names:
        value = (
            email.utils.formataddr((full_name, from_address))
            if full_name
            else from_address
        )
        added.append(b"From: " + value.encode("utf-8"))
    if "date" not in names:
        added.append(b"Date: " + date.encode("ascii"))
    if "message-id" not in names:
        unique = make_queue_id(now, os.getpid())
        added.append(b"Message-ID: <%s@%s>" % (unique.encode(), hostname.encode()))
    received = (
        f"Received: by {hostname} (twistedmail sendmail, from user {login});\r\n"
        f"\t{date}"
    ).encode()
    lines = [received] + [line for f in fields for line in f] + added + [b""] + body
    return b"".join(line + b"\r\n" for line in lines), recipients


def main(
    argv: Sequence[str],
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    *,
    clock: IReactorTime | None = None,
    login: str | None = None,
    fsync: Callable[[int], None] = os.fsync,
) -> int:
    """Run ``sendmail`` with the given arguments (without the program name).

    @param stdin: where the message comes from (default: standard input).
    @param clock: the time for Date and the queue id (default: the wall clock).
    @param login: the invoking user's name (default: the login name).
    @param fsync: the fsync the spool write uses.
    @return: the exit code (see the module docstring).
    """
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stderr = stderr if stderr is not None else sys.stderr
    try:
        return _run(argv, stdin, stderr, clock, login, fsync)
    except _Usage as e:
        print(f"sendmail: {e}\n{_USAGE}", file=stderr)
        return EX_USAGE
    except _DataError as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_DATAERR


def _run(
    argv: Sequence[str],
    stdin: BinaryIO,
    stderr: TextIO,
    clock: IReactorTime | None,
    login: str | None,
    fsync: Callable[[int], None],
) -> int:
    try:
        opts, args = getopt.gnu_getopt(list(argv), _SHORT, _LONG)
    except getopt.GetoptError as e:
        raise _Usage(str(e)) from None
    extract = False
    dot_ends = True
    sender_arg: str | None = None
    full_name: str | None = None
    config: str | None = None
    notify: tuple[str, ...] = ()
    ret: str | None = None
    envid: str | None = None
    for opt, value in opts:
        if opt == "-t":
            extract = True
        elif opt == "-i":
            dot_ends = False
        elif opt == "-o":
            if value == "i":
                dot_ends = False
        elif opt in ("-f", "-r"):
            sender_arg = value
        elif opt == "-F":
            full_name = value
        elif opt in ("-C", "--config"):
            config = value
        elif opt == "-b":
            if value != "m":
                raise _Usage(f"mode -b{value} is not supported")
        elif opt == "-N":
            notify = _notify(value)
        elif opt == "-R":
            if value.upper() not in ("FULL", "HDRS"):
                raise _Usage("-R takes full or hdrs")
            ret = value.upper()
        elif opt == "-V":
            envid = value

    try:
        settings = load_settings(config)
    except ConfigError as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_CONFIG
    hostname = settings.server.hostname
    login = login if login is not None else getpass.getuser()
    now = (clock or _SystemClock()).seconds()

    try:
        own = _parse_address(login, hostname)
        if sender_arg is None:
            sender = own
        elif sender_arg.strip() in ("", "<>"):
            sender = ""
        else:
            sender = _parse_address(sender_arg.strip().strip("<>"), hostname)
    except AddressError as e:
        raise _Usage(f"bad sender address: {e}") from None
    recipients: list[str] = []
    for piece in (p.strip() for arg in args for p in arg.split(",")):
        if not piece:
            continue
        address = email.utils.parseaddr(piece)[1]
        try:
            if not address:
                raise AddressError("not an address")
            recipients.append(_parse_address(address, hostname))
        except AddressError as e:
            raise _Usage(f"bad recipient {piece!r}: {e}") from None
    if not args and not extract:
        raise _Usage("no recipients given")

    message, found = build_message(
        stdin.read(),
        sender=sender,
        from_address=sender or own,
        full_name=full_name,
        hostname=hostname,
        now=now,
        extract=extract,
        dot_ends=dot_ends,
        login=login,
    )
    unique = list(dict.fromkeys(recipients + found))
    if not unique:
        raise _DataError("no recipient addresses found in the message header")
    envelope = Envelope(
        sender=sender,
        recipients=tuple(Recipient(r, notify) for r in unique),
        body_type="8BITMIME" if not message.isascii() else "7BIT",
        smtputf8=not all(a.isascii() for a in [sender, *unique]),
        ret=ret,
        envid=envid,
        client_name="localhost",
        received_at=now,
        protocol="local",
    )
    spool = settings.data_path(settings.spool.directory)
    try:
        submit_incoming(spool, envelope, message, now=now, fsync=fsync)
    except OSError as e:
        print(f"sendmail: cannot write to the spool {spool}: {e}", file=stderr)
        return EX_TEMPFAIL
    return EX_OK


def _notify(value: str) -> tuple[str, ...]:
    words = tuple(w.strip().upper() for w in value.split(",") if w.strip())
    allowed = {"NEVER", "SUCCESS", "FAILURE", "DELAY"}
    if not words or any(w not in allowed for w in words):
        raise _Usage("-N takes never or a list of success, failure, delay")
    if "NEVER" in words and len(words) > 1:
        raise _Usage("-N never cannot be combined")
    return words
