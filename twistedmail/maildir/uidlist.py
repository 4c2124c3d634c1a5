# -*- test-case-name: tests.test_maildir_uidlist -*-
"""The per-folder UID list and index (the Maildir step of the flow).

Each folder keeps ``twistedmail-uidlist`` next to its ``cur/``, ``new/`` and
``tmp/``.  It gives every message (keyed by its base name, the file name
before ``:2,``) a UID that never changes, plus the internal date and size, so
that opening a folder needs neither ``stat`` nor ``open`` on its messages.

On-disk format, version 1 (UTF-8 text, ``\\n`` line ends)::

    twistedmail-uidlist 1 V<uidvalidity> N<next-uid> G<token>
    <uid> <internal-date> <size> <base name>
    ...

- the first line is the header: magic word, format version, UIDVALIDITY and
  the next UID to assign (RFC 3501 §2.3.1.1), then ``G<token>``, 16 random
  hex digits new at each write (a reader that knows the token knows the
  rest of the file without reading it; optional when reading); later
  versions may add ``<letter><value>`` fields after these, which version-1
  readers ignore;
- then one line per message, in ascending UID order; internal date is whole
  POSIX seconds, size is octets; the base name is the rest of the line (it
  may contain spaces, never a line break: such files are not served).

Rules: UIDs only grow (N never goes down, even when the highest message is
expunged); a new list (a new folder, or a lost list) gets a new UIDVALIDITY;
the file is only ever replaced whole: written to a temporary file, fsynced,
renamed over the old one and the folder fsynced, all under the folder's
L{FolderLock}.  A crash leaves either the old or the new list; leftover
temporary files (``twistedmail-uidlist.tmp.*``) are ignored and removed the
next time the list is written.  A list that cannot be parsed is kept aside
as ``twistedmail-uidlist.broken.<time>`` (never deleted) and replaced.

L{read_dovecot_uidlist} imports Dovecot's ``dovecot-uidlist`` (versions 1
and 3) when a folder has one and no list of ours, so migrated folders keep
their UIDs and UIDVALIDITY; Dovecot's file is only read.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

__all__ = [
    "UIDEntry",
    "UIDList",
    "UIDListError",
    "UIDLIST_NAME",
    "UIDLIST_VERSION",
    "fsync_directory",
    "parse_uidlist",
    "format_uidlist",
    "read_dovecot_uidlist",
    "read_uidlist",
    "read_uidlist_token",
    "write_file_atomic",
    "write_uidlist",
]

UIDLIST_NAME = "twistedmail-uidlist"
UIDLIST_VERSION = 1
_MAGIC = "twistedmail-uidlist"


class UIDListError(ValueError):
    """A UID list that cannot be parsed."""


class UIDEntry(NamedTuple):
    """One message in the UID list.

    @ivar uid: its UID.
    @ivar internal_date: POSIX seconds (IMAP INTERNALDATE).
    @ivar size: octets.
    @ivar base: the base name (file name before ``:2,``).
    """

    uid: int
    internal_date: int
    size: int
    base: str


@dataclass
class UIDList:
    """A folder's UID list in memory.

    @ivar uidvalidity: the UIDVALIDITY value (RFC 3501 §2.3.1.1).
    @ivar next_uid: the UID the next new message gets.
    @ivar entries: base name to entry, in ascending UID order.
    @ivar token: the random ``G`` field of the file this was read from or
        written to (empty for a list never written): each write makes a
        new one, so a reader that finds the token it knows in the header
        line knows the rest without reading it.
    """

    uidvalidity: int
    next_uid: int = 1
    entries: dict[str, UIDEntry] = field(default_factory=dict)
    token: str = ""

    def copy(self) -> UIDList:
        """A copy to change (the entries themselves are immutable)."""
        return UIDList(self.uidvalidity, self.next_uid, dict(self.entries), self.token)

    def assign(self, base: str, internal_date: int, size: int) -> UIDEntry:
        """Give a new base name the next UID (or return its existing entry)."""
        old = self.entries.get(base)
        if old is not None:
            return old
        entry = UIDEntry(self.next_uid, internal_date, size, base)
        self.entries[base] = entry
        self.next_uid += 1
        return entry

    def remove(self, bases: Iterable[str]) -> None:
        """Forget these base names; ``next_uid`` stays where it is."""
        for b in bases:
            self.entries.pop(b, None)


#: One message line: UID, internal date, size, base name (anchored at a line
#: start, so a line that does not match whole is never half-matched).
_LINE = re.compile(r"^([0-9]+) ([0-9]+) ([0-9]+) ([^\n]*)$", re.MULTILINE)
#: C{UIDEntry} from a tuple without a Python-level call.
_make_entry = cast(
    Callable[[tuple[int, int, int, str]], UIDEntry],
    functools.partial(tuple.__new__, UIDEntry),
)


_first = operator.itemgetter(0)


def parse_uidlist(data: bytes) -> UIDList:
    """Parse a version-1 UID list.

    @raise UIDListError: when it is not one (wrong magic, unknown version,
        malformed line, UIDs not ascending or not below next UID).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UIDListError("not UTF-8") from e
    if not text.endswith("\n"):
        raise UIDListError("truncated")
    first = text.index("\n")
    header = text[:first].split(" ")
    if len(header) < 4 or header[0] != _MAGIC:
        raise UIDListError("bad header")
    if header[1] != str(UIDLIST_VERSION):
        raise UIDListError(f"unknown version {header[1]!r}")
    fields = {h[0]: h[1:] for h in header[2:] if h}
    try:
        ul = UIDList(int(fields["V"]), int(fields["N"]), token=fields.get("G", ""))
    except (KeyError, ValueError) as e:
        raise UIDListError("bad header fields") from e
    # Built for 100,000 lines: the regular expression and the column-wise
    # conversions run in C, with no Python-level step per line.
    rows = _LINE.findall(text, first + 1)
    if len(rows) != text.count("\n", first + 1):
        raise UIDListError("bad line")
    if not rows:
        return ul
    uid_texts, date_texts, size_texts, bases = zip(*rows, strict=True)
    uids = list(map(int, uid_texts))
    if uids[0] < 1 or uids[-1] >= ul.next_uid:
        raise UIDListError("UID out of range")
    if not all(map(operator.lt, uids, itertools.islice(uids, 1, None))):
        raise UIDListError("UIDs out of order")
    columns = zip(uids, map(int, date_texts), map(int, size_texts), bases, strict=True)
    ul.entries = dict(zip(bases, map(_make_entry, columns), strict=True))
    return ul


def format_uidlist(ul: UIDList) -> bytes:
    """Render a UID list in the version-1 format."""
    header = f"{_MAGIC} {UIDLIST_VERSION} V{ul.uidvalidity} N{ul.next_uid}"
    header += f" G{ul.token}\n" if ul.token else "\n"
    entries = list(ul.entries.values())
    uids = list(map(_first, entries))
    if not all(map(operator.lt, uids, itertools.islice(uids, 1, None))):
        entries.sort(key=_first)
    # One C-level pass: each entry is a (uid, date, size, base) tuple.
    return (header + "".join(map("%d %d %d %s\n".__mod__, entries))).encode()


def read_uidlist(folder: str) -> UIDList | None:
    """Read a folder's UID list; None when it has none.

    @raise UIDListError: when the file exists but cannot be parsed.
    """
    try:
        with open(os.path.join(folder, UIDLIST_NAME), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return parse_uidlist(data)


def fsync_directory(path: str) -> None:
    """fsync a directory so that entries created or renamed in it last."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace a file whole: temporary file, fsync, rename, fsync directory.

    The caller holds the lock that serialises writers.  Temporary files left
    by earlier crashes (``<name>.tmp.*``) are removed first.
    """
    directory, name = os.path.split(path)
    prefix = name + ".tmp."
    for entry in os.listdir(directory or "."):
        if entry.startswith(prefix):
            try:
                os.unlink(os.path.join(directory, entry))
            except FileNotFoundError:
                pass
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_directory(directory or ".")


def write_uidlist(folder: str, ul: UIDList) -> None:
    """Replace a folder's UID list (the caller holds the folder lock); the
    list gets a new token."""
    ul.token = os.urandom(8).hex()
    write_file_atomic(os.path.join(folder, UIDLIST_NAME), format_uidlist(ul))


def read_uidlist_token(folder: str) -> str | None:
    """The token in a folder's UID list header (reads the first line only);
    None when there is no list, or no token in it."""
    try:
        with open(os.path.join(folder, UIDLIST_NAME), "rb") as f:
            line = f.readline(256)
    except FileNotFoundError:
        return None
    for part in line.split():
        if part.startswith(b"G") and len(part) > 1:
            return part[1:].decode("ascii", "replace")
    return None


def read_dovecot_uidlist(folder: str) -> tuple[int, int, dict[str, int]] | None:
    """Read Dovecot's ``dovecot-uidlist`` (format version 1 or 3).

    @return: ``(uidvalidity, next_uid, {base name: uid})``, or None when there
        is no such file or it cannot be understood; ``next_uid`` is above
        every UID listed.
    """
    try:
        with open(os.path.join(folder, "dovecot-uidlist"), "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = text.split("\n")
    header = lines[0].split()
    uids: dict[str, int] = {}
    fields: dict[str, int] = {}
    try:
        if header[0] == "1" and len(header) >= 3:
            fields["V"], fields["N"] = int(header[1]), int(header[2])
            for line in lines[1:]:
                uid, _, name = line.partition(" ")
                if name:
                    uids[name.partition(":")[0]] = int(uid)
        elif header[0] == "3":
            for h in header[1:]:
                if h[0] in "VN":
                    fields[h[0]] = int(h[1:])
            for line in lines[1:]:
                head, sep, name = line.partition(" :")
                if sep and name:
                    uids[name.partition(":")[0]] = int(head.split(" ", 1)[0])
        else:
            return None
    except (IndexError, ValueError):
        return None
    if "V" not in fields or "N" not in fields:
        return None
    # Dovecot updates the header lazily: a message may already have the
    # UID that N names.
    next_uid = max(fields["N"], max(uids.values(), default=0) + 1)
    return fields["V"], next_uid, uids
