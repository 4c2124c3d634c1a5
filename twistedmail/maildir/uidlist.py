# -*- test-case-name: tests.test_maildir_uidlist -*-
"""The per-folder UID list and index (the Maildir step of the flow).

Each folder keeps ``twistedmail-uidlist`` next to its ``cur/``, ``new/`` and
``tmp/``.  It gives every message (keyed by its base name, the file name
before ``:2,``) a UID that never changes, plus the internal date and size, so
that opening a folder needs neither ``stat`` nor ``open`` on its messages.

On-disk format, version 1 (UTF-8 text, ``\\n`` line ends)::

    twistedmail-uidlist 1 V<uidvalidity> N<limit> G<token> U<next-uid>
    <uid> <internal-date> <size> <base name>
    ...

- the first line is the header: magic word, format version, UIDVALIDITY,
  ``N``, then ``G<token>``, 16 random hex digits new at each rewrite, and
  ``U<next-uid>``, the next UID to assign (RFC 3501 §2.3.1.1); later fields
  are ``<letter><value>`` and readers ignore those they do not know;
- then one line per message, in ascending UID order; internal date is whole
  POSIX seconds, size is octets; the base name is the rest of the line (it
  may contain spaces, never a line break: such files are not served).

Unknown internal dates: a folder's first indexing (and any other listing
that finds a thousand or more messages no list has; fewer, such as a
delivery, are ``stat``-ed at once and appended with their dates) writes
L{UNKNOWN_DATE}, ``0``, as the internal date instead of ``stat``-ing every
file; the date is the file's
mtime (whole seconds), taken when something first needs it (IMAP FETCH
INTERNALDATE, SEARCH BEFORE/ON/SINCE, COPY) for every message of the folder
still without one, and written back by rewriting the list.  A file whose
mtime really is the epoch keeps ``0`` and is ``stat``-ed again when asked
for.  ``0`` parses as a date, so older versions of twistedmail read these
lists unchanged (no new UIDVALIDITY); until a newer version has resolved the
dates they show such messages as received on 1970-01-01.

Appending: a list is rewritten whole only when messages leave it (or it is
new, imported or full); new messages are appended as lines at the end (one
``write`` and an ``fdatasync``, no rename), so a delivery into a folder of
100,000 messages writes one line, not 100,000.  Every UID appended is below
``N`` (the limit): a rewrite sets ``N`` to the next UID plus
L{APPEND_RESERVE} and the first append that would reach it rewrites the
list instead (the periodic compaction).  The next UID is ``U``, or one more
than the last line's UID when that is higher (appends do not touch the
header).  Lists written before ``U`` existed have ``N`` as their next UID
and no reserve; they are read as they are.  Older versions of twistedmail
read these lists unchanged (every UID is below ``N``; their next UID is
``N``, a few thousand UIDs ahead, which IMAP allows), so an upgrade or a
downgrade never changes UIDVALIDITY.  A reader that knows a list (by its
token, inode and length) reads only what was appended since.

Rules: UIDs only grow (``U`` never goes down, even when the highest message is
expunged); a new list (a new folder, or a lost list) gets a new UIDVALIDITY;
a rewrite goes to a temporary file, fsynced, renamed over the old one and
the folder fsynced; all writes happen under the folder's L{FolderLock}.  A
crash leaves either the old or the new list, or, during an append, a last
line without its line break: readers ignore such a partial line and the
next writer rewrites the list.  Leftover temporary files
(``twistedmail-uidlist.tmp.*``) are ignored and removed the next time the
list is rewritten.  A list that cannot be parsed is kept aside as
``twistedmail-uidlist.broken.<time>`` (never deleted) and replaced.

L{read_dovecot_uidlist} imports Dovecot's ``dovecot-uidlist`` (versions 1
and 3) when a folder has one and no list of ours, so migrated folders keep
their UIDs and UIDVALIDITY; Dovecot's file is only read.
"""

from __future__ import annotations

import itertools
import operator
import os
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "APPEND_RESERVE",
    "UIDEntry",
    "UIDList",
    "UIDListError",
    "UIDLIST_NAME",
    "UIDLIST_VERSION",
    "UNKNOWN_DATE",
    "format_uidlist",
    "fsync_directory",
    "parse_uidlist",
    "read_dovecot_uidlist",
    "read_uidlist",
    "read_uidlist_token",
    "save_uidlist",
    "write_file_atomic",
    "write_uidlist",
]

UIDLIST_NAME = "twistedmail-uidlist"
UIDLIST_VERSION = 1
#: The internal date of a message not yet ``stat``-ed (see the module's
#: docstring): its file's mtime is taken when first needed.
UNKNOWN_DATE = 0
#: UIDs a rewrite leaves room for appending below ``N``.
APPEND_RESERVE = 10_000
_MAGIC = "twistedmail-uidlist"
_UID_MAX = 2**32 - 1


class UIDListError(ValueError):
    """A UID list that cannot be parsed."""


class UIDEntry(NamedTuple):
    """One message in the UID list.

    @ivar uid: its UID.
    @ivar internal_date: POSIX seconds (IMAP INTERNALDATE), or
        L{UNKNOWN_DATE}.
    @ivar size: octets.
    @ivar base: the base name (file name before ``:2,``).
    """

    uid: int
    internal_date: int
    size: int
    base: str


def _ascending(values: list[int]) -> bool:
    return all(map(operator.lt, values, itertools.islice(values, 1, None)))


class UIDList:
    """A folder's UID list in memory, column by column (a folder may hold
    100,000 messages: parallel lists cost a few objects per message, and
    are built by passes in C).

    The columns are in ascending UID order and never changed in place
    (L{assign} appends, L{remove} makes new lists), so other snapshots may
    share them.

    @ivar uidvalidity: the UIDVALIDITY value (RFC 3501 §2.3.1.1).
    @ivar next_uid: the UID the next new message gets.
    @ivar uids: the UIDs.
    @ivar dates: internal dates, POSIX seconds (L{UNKNOWN_DATE} where not
        known yet).
    @ivar sizes: sizes, octets.
    @ivar bases: base names.
    @ivar token: the ``G`` field of the file this was read from or written
        to (empty for a list never written); a rewrite makes a new one.
    @ivar limit: ``N`` of that file: appended UIDs stay below it.
    @ivar length: the octets of that file this list holds (its header and
        whole lines).
    @ivar inode: that file's inode number.
    @ivar stored: how many of the rows that file holds (a prefix of ours),
        or -1 when it must be rewritten (rows were removed).
    """

    def __init__(
        self,
        uidvalidity: int,
        next_uid: int = 1,
        entries: Iterable[UIDEntry] = (),
    ) -> None:
        self.uidvalidity = uidvalidity
        self.next_uid = next_uid
        rows = list(entries)
        self.uids: list[int] = [e[0] for e in rows]
        self.dates: list[int] = [e[1] for e in rows]
        self.sizes: list[int] = [e[2] for e in rows]
        self.bases: list[str] = [e[3] for e in rows]
        self.token = ""
        self.limit = 0
        self.length = 0
        self.inode = 0
        self.stored = -1
        self._index: dict[str, int] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UIDList):
            return NotImplemented
        return (
            self.uidvalidity == other.uidvalidity
            and self.next_uid == other.next_uid
            and self.uids == other.uids
            and self.dates == other.dates
            and self.sizes == other.sizes
            and self.bases == other.bases
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"<UIDList V{self.uidvalidity} N{self.next_uid}"
            f" {len(self.uids)} messages G{self.token}>"
        )

    def __len__(self) -> int:
        return len(self.uids)

    def entries(self) -> list[UIDEntry]:
        """Every entry, in UID order (one object each: for small lists and
        tests)."""
        return list(
            map(
                UIDEntry._make,
                zip(self.uids, self.dates, self.sizes, self.bases, strict=True),
            )
        )

    def entry(self, base: str) -> UIDEntry | None:
        """The entry of a base name, or None."""
        i = self._positions().get(base)
        if i is None:
            return None
        return UIDEntry(self.uids[i], self.dates[i], self.sizes[i], self.bases[i])

    def _positions(self) -> dict[str, int]:
        if self._index is None:
            self._index = dict(zip(self.bases, itertools.count()))
        return self._index

    def copy(self) -> UIDList:
        """A copy to change (it remembers the same file)."""
        other = UIDList(self.uidvalidity, self.next_uid)
        other.uids = list(self.uids)
        other.dates = list(self.dates)
        other.sizes = list(self.sizes)
        other.bases = list(self.bases)
        other.token = self.token
        other.limit = self.limit
        other.length = self.length
        other.inode = self.inode
        other.stored = self.stored
        return other

    def assign(self, base: str, internal_date: int, size: int) -> UIDEntry:
        """Give a new base name the next UID (or return its existing entry)."""
        old = self.entry(base)
        if old is not None:
            return old
        return self.add_new(base, internal_date, size)

    def add_new(self, base: str, internal_date: int, size: int) -> UIDEntry:
        """Give a base name the next UID; the caller knows it is not listed."""
        entry = UIDEntry(self.next_uid, internal_date, size, base)
        self.insert(entry)
        return entry

    def insert(self, entry: UIDEntry) -> None:
        """Add an entry with a UID of its own (above the others, or kept in
        order when imported); ``next_uid`` moves past it."""
        uid, date, size, base = entry
        if self.uids and uid < self.uids[-1]:
            rows = sorted([*self.entries(), entry])
            self.uids, self.dates, self.sizes, self.bases = (
                list(c) for c in zip(*rows, strict=True)
            )
            self._index = None
            self.stored = -1
        else:
            self.uids.append(uid)
            self.dates.append(date)
            self.sizes.append(size)
            self.bases.append(base)
            if self._index is not None:
                self._index[base] = len(self.bases) - 1
        self.next_uid = max(self.next_uid, uid + 1)

    def remove(self, bases: Iterable[str]) -> None:
        """Forget these base names; ``next_uid`` stays where it is."""
        drop = set(bases)
        if drop.isdisjoint(self.bases):
            return
        keep = [b not in drop for b in self.bases]
        self.uids = list(itertools.compress(self.uids, keep))
        self.dates = list(itertools.compress(self.dates, keep))
        self.sizes = list(itertools.compress(self.sizes, keep))
        self.bases = list(itertools.compress(self.bases, keep))
        self._index = None
        self.stored = -1

    def extend_columns(
        self, uids: list[int], dates: list[int], sizes: list[int], bases: list[str]
    ) -> None:
        """Add rows read from an appended part (UIDs above the others)."""
        self.uids += uids
        self.dates += dates
        self.sizes += sizes
        self.bases += bases
        self._index = None
        if uids:
            self.next_uid = max(self.next_uid, uids[-1] + 1)


#: One message line: UID, internal date, size, base name (anchored at a line
#: start, so a line that does not match whole is never half-matched).
_LINE = re.compile(r"^([0-9]+) ([0-9]+) ([0-9]+) ([^\n]*)$", re.MULTILINE)


#: Whole lines whose base names have no space (L{_split_rows}).
_SPACELESS = re.compile(r"(?:[0-9]+ [0-9]+ [0-9]+ [^ \n]*\n)*")


def _split_rows(
    text: str, start: int, lines: int
) -> tuple[list[str], list[str], list[str], list[str]] | None:
    """The four columns of the whole lines of C{text} from C{start} on,
    by splitting at spaces (faster than L{_LINE}: no tuple per line), or
    None when a base name has a space or a line does not match (L{_LINE}
    must then tell the fields apart, or reject the line)."""
    body = text[start:] if start else text
    if body.count(" ") != 3 * lines or _SPACELESS.fullmatch(body) is None:
        return None
    fields = body.replace("\n", " ").split(" ")
    fields.pop()  # after the last line break
    return fields[0::4], fields[1::4], fields[2::4], fields[3::4]


def _parse_rows(
    text: str, start: int
) -> tuple[list[int], list[int], list[int], list[str]]:
    """The columns of the whole lines of ``text`` from ``start`` on."""
    # Built for 100,000 lines: the splitting or the regular expression and
    # the column-wise conversions run in C, with no Python-level step per
    # line.
    lines = text.count("\n", start)
    columns: Sequence[Sequence[str]] | None = None
    if lines:
        columns = _split_rows(text, start, lines)
    if columns is None:
        rows = _LINE.findall(text, start)
        if len(rows) != lines:
            raise UIDListError("bad line")
        if not rows:
            return [], [], [], []
        columns = list(zip(*rows, strict=True))
        del rows
    uid_texts, date_texts, size_texts, bases = columns
    uids = list(map(int, uid_texts))
    if uids[0] < 1 or not _ascending(uids):
        raise UIDListError("UIDs out of order")
    return (
        uids,
        list(map(int, date_texts)),
        list(map(int, size_texts)),
        list(bases),
    )


def _whole_lines(data: bytes) -> tuple[str, int]:
    """The text of the complete lines in ``data`` and their length in
    octets (a partial last line, left by a crash during an append, is
    ignored)."""
    end = data.rfind(b"\n") + 1
    try:
        return data[:end].decode("utf-8"), end
    except UnicodeDecodeError as e:
        raise UIDListError("not UTF-8") from e


def parse_uidlist(data: bytes) -> UIDList:
    """Parse a version-1 UID list.

    @raise UIDListError: when it is not one (wrong magic, unknown version,
        malformed line, UIDs not ascending or not below ``N``).
    """
    text, length = _whole_lines(data)
    if not text:
        raise UIDListError("truncated")
    first = text.index("\n")
    header = text[:first].split(" ")
    if len(header) < 4 or header[0] != _MAGIC:
        raise UIDListError("bad header")
    if header[1] != str(UIDLIST_VERSION):
        raise UIDListError(f"unknown version {header[1]!r}")
    fields = {h[0]: h[1:] for h in header[2:] if h}
    try:
        limit = int(fields["N"])
        ul = UIDList(int(fields["V"]), int(fields.get("U", limit)))
    except (KeyError, ValueError) as e:
        raise UIDListError("bad header fields") from e
    ul.token = fields.get("G", "")
    ul.limit = limit
    ul.length = length
    ul.uids, ul.dates, ul.sizes, ul.bases = _parse_rows(text, first + 1)
    if ul.uids and ul.uids[-1] >= limit:
        raise UIDListError("UID out of range")
    ul.next_uid = max(ul.next_uid, ul.uids[-1] + 1 if ul.uids else 1)
    ul.stored = len(ul.uids)
    return ul


def _format_rows(ul: UIDList, start: int = 0) -> str:
    columns = (ul.uids, ul.dates, ul.sizes, ul.bases)
    if start:
        columns = tuple(c[start:] for c in columns)  # type: ignore[assignment]
    uids, dates, sizes, bases = columns
    # One C-level pass over the columns; a first indexing's dates are all
    # unknown, and one field fewer to format is a fifth faster.
    if not any(dates):
        return "".join(
            map("%d 0 %d %s\n".__mod__, zip(uids, sizes, bases, strict=True))
        )
    return "".join(map("%d %d %d %s\n".__mod__, zip(*columns, strict=True)))


def format_uidlist(ul: UIDList) -> bytes:
    """Render a UID list in the version-1 format (``N`` is the list's
    limit, at least its next UID)."""
    if not _ascending(ul.uids):
        raise ValueError("UIDs out of order")
    limit = max(ul.limit, ul.next_uid)
    header = f"{_MAGIC} {UIDLIST_VERSION} V{ul.uidvalidity} N{limit}"
    if ul.token:
        header += f" G{ul.token}"
    if limit != ul.next_uid:
        header += f" U{ul.next_uid}"
    return (header + "\n" + _format_rows(ul)).encode()


def read_uidlist(folder: str, known: UIDList | None = None) -> UIDList | None:
    """Read a folder's UID list; None when it has none.

    @param known: a list read from or written to this folder before; when
        the file is still that one (same token and inode) and has only
        grown, only the lines appended since are read and a new list is
        returned (or C{known} itself when nothing was appended).
    @raise UIDListError: when the file exists but cannot be parsed.
    """
    try:
        f = open(os.path.join(folder, UIDLIST_NAME), "rb")
    except FileNotFoundError:
        return None
    with f:
        st = os.fstat(f.fileno())
        if (
            known is not None
            and known.token
            and known.inode == st.st_ino
            and known.length <= st.st_size
            and known.stored == len(known.uids)
            and _token_of(f.readline(256)) == known.token
        ):
            if known.length == st.st_size:
                return known
            f.seek(known.length)
            text, length = _whole_lines(f.read())
            if not length:
                return known
            uids, dates, sizes, bases = _parse_rows(text, 0)
            if uids and (
                (known.uids and uids[0] <= known.uids[-1]) or uids[-1] >= known.limit
            ):
                raise UIDListError("UID out of range")
            ul = known.copy()
            ul.extend_columns(uids, dates, sizes, bases)
            ul.length += length
            ul.stored = len(ul.uids)
            return ul
        f.seek(0)
        ul = parse_uidlist(f.read())
    ul.inode = st.st_ino
    return ul


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
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_directory(directory or ".")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_uidlist(folder: str, ul: UIDList) -> None:
    """Replace a folder's UID list whole (the caller holds the folder
    lock); the list gets a new token and room for L{APPEND_RESERVE}
    appended UIDs."""
    ul.token = os.urandom(8).hex()
    ul.limit = min(_UID_MAX, ul.next_uid + APPEND_RESERVE)
    data = format_uidlist(ul)
    path = os.path.join(folder, UIDLIST_NAME)
    write_file_atomic(path, data)
    ul.length = len(data)
    ul.inode = os.stat(path).st_ino
    ul.stored = len(ul.uids)


def save_uidlist(folder: str, ul: UIDList) -> None:
    """Write a changed list (the caller holds the folder lock): its new
    rows are appended when the file on disk is the one it was read from
    and only rows were added below the limit; otherwise it is rewritten
    (L{write_uidlist})."""
    path = os.path.join(folder, UIDLIST_NAME)
    if (
        ul.token
        and 0 <= ul.stored < len(ul.uids)
        and ul.uids[-1] < ul.limit
        and _ascending(ul.uids[max(0, ul.stored - 1) :])
    ):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                if st.st_ino == ul.inode and st.st_size == ul.length:
                    data = _format_rows(ul, ul.stored).encode()
                    _write_all(fd, data)
                    os.fdatasync(fd)
                    ul.length += len(data)
                    ul.stored = len(ul.uids)
                    return
            finally:
                os.close(fd)
    write_uidlist(folder, ul)


def _token_of(line: bytes) -> str | None:
    for part in line.split():
        if part.startswith(b"G") and len(part) > 1:
            return part[1:].decode("ascii", "replace")
    return None


def read_uidlist_token(folder: str) -> str | None:
    """The token in a folder's UID list header (reads the first line only);
    None when there is no list, or no token in it."""
    try:
        with open(os.path.join(folder, UIDLIST_NAME), "rb") as f:
            line = f.readline(256)
    except FileNotFoundError:
        return None
    return _token_of(line)


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
