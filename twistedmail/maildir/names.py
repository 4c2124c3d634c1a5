# -*- test-case-name: tests.test_maildir_names -*-
"""Maildir file and folder names (the Maildir step of the flow).

A message file name is ``<base>`` in ``new/`` and ``<base>:2,<letters>`` in
``cur/`` (Dovecot also flags messages it leaves in ``new/``; such info is
honoured wherever it is).  The base name identifies the message for its whole life (UIDs and
POP3 UIDL key on it); the info after ``:2,`` holds the flags as upper-case
letters and keywords as lower-case letters, all in ASCII order:

- ``D`` draft, ``F`` flagged, ``P`` passed (resent/forwarded), ``R`` replied,
  ``S`` seen, ``T`` trashed (IMAP ``\\Deleted``);
- ``a``..``z`` keywords, named by the folder's keyword file (L{keywords}).

Base names we make follow the qmail rules (time, then a unique part with
microseconds, process id and a counter, then the host name) and carry
``,S=<size>`` as Dovecot does, so sizes need no ``stat``.

Folders follow Maildir++: the INBOX is the Maildir itself, a folder ``A.B`` is
the directory ``.A.B`` in it, ``.`` separating the hierarchy.
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = [
    "FLAG_LETTERS",
    "Flag",
    "FolderNameError",
    "IMAP_SYSTEM_FLAGS",
    "MaildirError",
    "delivery_order",
    "escape_hostname",
    "folder_directory",
    "folder_from_directory",
    "format_filename",
    "make_base",
    "parse_filename",
    "size_from_base",
]

FLAG_LETTERS = "DFPRST"


class MaildirError(Exception):
    """Something the Maildir store refuses or cannot do; ``str()`` says what.

    The text is meant for logs and for protocol replies such as IMAP ``NO``;
    it never holds a file system path outside the user's Maildir.
    """


class FolderNameError(MaildirError):
    """A folder name that is not allowed (it could leave the Maildir, or is
    malformed)."""


class Flag(StrEnum):
    """The Maildir flag letters (the info suffix after ``:2,``)."""

    DRAFT = "D"
    FLAGGED = "F"
    PASSED = "P"
    REPLIED = "R"
    SEEN = "S"
    TRASHED = "T"


#: IMAP system flags (RFC 3501 §2.3.2) and the Maildir letter of each.
IMAP_SYSTEM_FLAGS: dict[str, str] = {
    "\\Answered": "R",
    "\\Deleted": "T",
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Seen": "S",
}

_SIZE = re.compile(r",S=([0-9]+)(?=,|$)")


def parse_filename(filename: str) -> tuple[str, frozenset[str], frozenset[str]]:
    """Split a message file name into its base name, flags and keyword letters.

    @param filename: a name from ``new/`` or ``cur/``.
    @return: ``(base, flags, keyword_letters)``; flags are upper-case letters
        from L{FLAG_LETTERS} (unknown upper-case letters are dropped), keyword
        letters are ``a``..``z``.  A name without ``:2,`` (as in ``new/``, or
        written by twisted.mail) has no flags.
    """
    base, sep, info = filename.partition(":")
    if not sep or not info.startswith("2,"):
        # "1," experimental info or no info: no flags we understand.
        return base, frozenset(), frozenset()
    letters = info[2:]
    flags = frozenset(c for c in letters if c in FLAG_LETTERS)
    keywords = frozenset(c for c in letters if "a" <= c <= "z")
    return base, flags, keywords


def format_filename(
    base: str,
    flags: frozenset[str] | set[str],
    keyword_letters: frozenset[str] | set[str] = frozenset(),
) -> str:
    """The ``cur/`` file name for a base name with these flags and keywords.

    @raise ValueError: for a flag that is not one of L{FLAG_LETTERS} or a
        keyword letter outside ``a``..``z``.
    """
    for f in flags:
        if len(f) != 1 or f not in FLAG_LETTERS:
            raise ValueError(f"unknown Maildir flag {f!r}")
    for k in keyword_letters:
        if len(k) != 1 or not "a" <= k <= "z":
            raise ValueError(f"not a keyword letter {k!r}")
    return f"{base}:2,{''.join(sorted(set(flags) | set(keyword_letters)))}"


def size_from_base(base: str) -> int | None:
    """The message size from a ``,S=<size>`` field in a base name, or None."""
    m = _SIZE.search(base)
    return int(m.group(1)) if m else None


def escape_hostname(hostname: str) -> str:
    """The host name part of a Maildir name.

    ``/`` and ``:`` would break the name (qmail writes them as ``\\057`` and
    ``\\072``); ``,`` would start a field, and control characters or spaces
    have no place in a file name, so they are escaped the same way.
    """
    out = []
    for c in hostname or "localhost":
        if c in "/:,\\" or ord(c) < 0x21 or ord(c) == 0x7F:
            out.append(f"\\{ord(c):03o}")
        else:
            out.append(c)
    return "".join(out)


def make_base(
    seconds: float,
    pid: int,
    counter: int,
    hostname: str,
    size: int,
    token: str = "",
) -> str:
    """A new base name by the qmail rules, with Dovecot's ``,S=`` size field.

    ``<sec>.M<usec>P<pid>Q<counter>[U<token>].<host>,S=<size>``

    @param seconds: the current time (from the injected clock).
    @param token: a stable delivery token (hex), embedded so a delivery can
        be traced back to its queue entry; empty for APPEND and COPY.
    """
    sec = int(seconds)
    usec = int(round((seconds - sec) * 1_000_000)) % 1_000_000
    # Zero-padded, so that names made within one second also sort in
    # delivery order as text (older names have no padding; see
    # delivery_order).
    unique = f"M{usec:06d}P{pid}Q{counter}"
    if token:
        unique += f"U{token}"
    return f"{sec}.{unique}.{escape_hostname(hostname)},S={size}"


#: ``<seconds>.`` then, in the unique part, Dovecot's and our
#: ``M<microseconds>`` and our ``Q<counter>`` (qmail's own names,
#: ``<seconds>.<pid>.<host>``, have neither).
_ORDER = re.compile(r"([0-9]+)\.(?:[^.]*?M([0-9]+))?(?:[^.]*?Q([0-9]+))?")


def delivery_order(base: str, mtime: int) -> tuple[int, int, int, str]:
    """A sort key putting base names in delivery order: the time fields of
    the name compared as numbers (``M5`` before ``M40``, as written before
    microseconds were zero-padded), then our counter, then the name.

    @param mtime: the file's time, for names that carry none.
    """
    m = _ORDER.match(base)
    if m is None:
        return (mtime, 0, 0, base)
    sec, usec, counter = m.groups()
    return (int(sec), int(usec or 0), int(counter or 0), base)


_FORBIDDEN_FOLDER_CHARS = (
    frozenset("/\\\x00") | frozenset(chr(i) for i in range(0x20)) | {"\x7f"}
)


def folder_directory(name: str) -> str | None:
    """The directory (relative to the Maildir) of a folder, or None for INBOX.

    ``INBOX`` (any case) is the Maildir itself; ``Sent`` is ``.Sent`` and
    ``Archive.2024`` is ``.Archive.2024``.

    @raise FolderNameError: for an empty name or component (which covers
        ``..``, leading, trailing or doubled dots), ``/``, ``\\``, NUL or
        other control characters, a name below INBOX, lone surrogates, or
        a name too long for a directory entry.
    """
    if name.upper() == "INBOX":
        return None
    if not name:
        raise FolderNameError("empty folder name")
    bad = _FORBIDDEN_FOLDER_CHARS.intersection(name)
    if bad:
        raise FolderNameError(
            "folder names may not contain '/', '\\', NUL or control characters"
        )
    parts = name.split(".")
    if any(not p for p in parts):
        raise FolderNameError(
            "folder names may not start or end with '.' or contain '..'"
        )
    if parts[0].upper() == "INBOX":
        raise FolderNameError("folders below INBOX are not supported")
    directory = "." + name
    try:
        encoded = directory.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (undecodable bytes smuggled through a decoder).
        raise FolderNameError("folder names must be valid Unicode") from None
    if len(encoded) > 255:
        raise FolderNameError("folder name too long")
    return directory


def folder_from_directory(entry: str) -> str | None:
    """The folder name of a Maildir++ directory entry, or None when the entry
    is not a valid folder directory (``.``, ``..``, ``tmp``, odd names)."""
    if not entry.startswith(".") or entry in (".", ".."):
        return None
    name = entry[1:]
    try:
        folder_directory(name)
    except FolderNameError:
        return None
    if name.upper() == "INBOX":
        return None
    return name
