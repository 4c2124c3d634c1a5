# -*- test-case-name: tests.test_maildir_delivery -*-
"""Writing messages into a Maildir exactly once (the Maildir step of the
flow: the end of local delivery).

The qmail rules: the message is written into ``tmp/`` under a name made at
call time, fsynced, hard-linked into ``new/``, the ``new/`` directory is
fsynced, and the ``tmp/`` name is removed.

Exactly once: each delivery carries a stable token from the caller (queue id
and recipient).  Before the message is linked, the token's hash and the
chosen base name are appended to the Maildir's delivery journal,
``twistedmail-delivered``, and the journal is fsynced.  A retry of the same
delivery (after a crash, or after the queue lost the result) finds the token
there and either returns the earlier message's base name (when the message is
in ``new/`` or ``cur/``, whatever its flags) or writes the message again under
that same base name (when the crash came before the link).  The link fails
if the name exists, so two racing attempts also make one message.

Journal on-disk format, version 1 (UTF-8 text, one record a line)::

    twistedmail-delivered 1
    <token hash> <base name>

The hash is the first 20 hex digits of SHA-256 of the token (its first 8
are in the base name after ``U``, to trace a file to its delivery).  Records are appended under
``twistedmail-deliver.lock``; a torn last line (crash while appending) is
ignored.  When the journal passes 1 MiB, or twice its size after the last
rewrite (a busy mailbox keeps more than 1 MiB of recent records, and must
not rewrite them on every delivery), it is rewritten (temp, fsync, rename)
keeping the records of the last 30 days, far longer than the queue retries
a message.  A message expunged by the user after delivery and
before a retry would be delivered again: the journal does not know of
expunges.

Batches: L{deliver_batch} delivers several messages into one Maildir with
the same steps, sharing what can be shared: the lock is taken once, the
journal gets all the batch's records with one write and one fsync, every
message file is written and then each is fsynced (step by step, so that
one journal commit of the file system carries most of the batch), and
``new/`` is fsynced once after the last link.  Each message still reaches ``new/`` only after its file and
its journal record are on disk, so a batch is exactly as durable as single
deliveries.  L{DeliveryBatches} gathers the deliveries that arrive while a
batch runs into the next one (group commit), so concurrent deliveries cost
one trip to the thread pool and a few fsyncs between them instead of three
fsyncs each.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twistedmail.maildir.lock import FolderLock
from twistedmail.maildir.names import parse_filename, size_from_base
from twistedmail.maildir.uidlist import fsync_directory, write_file_atomic
from twistedmail.replies import MAILBOX_FULL, TemporaryError

__all__ = [
    "DELIVER_LOCK_NAME",
    "JOURNAL_NAME",
    "Delivery",
    "DeliveryBatches",
    "DeliveryJournal",
    "SizeCache",
    "deliver_batch",
    "ensure_maildir",
    "find_delivered",
    "token_hash",
    "write_message",
]

JOURNAL_NAME = "twistedmail-delivered"
DELIVER_LOCK_NAME = "twistedmail-deliver.lock"
_HEADER = b"twistedmail-delivered 1\n"
_COMPACT_SIZE = 1 << 20
_KEEP_SECONDS = 30 * 86400


def token_hash(unique: str) -> str:
    """The journal and base-name form of a delivery token."""
    return hashlib.sha256(unique.encode("utf-8")).hexdigest()[:20]


def ensure_maildir(path: str) -> None:
    """Create a Maildir (and ``cur/``, ``new/``, ``tmp/``) when missing, mode
    0700; parents are created as needed."""
    for sub in ("cur", "new", "tmp"):
        full = os.path.join(path, sub)
        if not os.path.isdir(full):
            os.makedirs(path, 0o700, exist_ok=True)
            try:
                os.mkdir(full, 0o700)
            except FileExistsError:
                pass


def write_message(path: str, data: bytes, mtime: float | None = None) -> None:
    """Write a new file (it must not exist), fsync it, and set its mtime."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def find_delivered(folder: str, base: str) -> str | None:
    """Where a message with this base name is now (``new/<name>`` or
    ``cur/<name>``), or None.  Reads ``cur/`` when the message is not in
    ``new/``; used on retries only."""
    if os.path.exists(os.path.join(folder, "new", base)):
        return "new/" + base
    for sub in ("cur", "new"):
        try:
            names = os.listdir(os.path.join(folder, sub))
        except FileNotFoundError:
            continue
        for name in names:
            if name == base or (name.startswith(base) and name[len(base)] == ":"):
                return f"{sub}/{name}"
    return None


class DeliveryJournal:
    """A Maildir's delivery journal, read incrementally.

    Use L{lookup} and L{record} only while holding the lock at
    L{lock_path}.
    """

    def __init__(self, maildir: str) -> None:
        self.maildir = maildir
        self.path = os.path.join(maildir, JOURNAL_NAME)
        self.lock_path = os.path.join(maildir, DELIVER_LOCK_NAME)
        self._inode: int | None = None
        self._offset = 0
        self._torn = False
        self._records: dict[str, str] = {}
        self._compact_at = _COMPACT_SIZE
        #: The Maildir's folders were found or made for an earlier batch
        #: (L{deliver_batch} then skips looking for them).
        self.made = False

    def lock(self) -> FolderLock:
        """A new (unlocked) lock object for this journal."""
        return FolderLock(self.lock_path)

    def _catch_up(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._inode, self._offset, self._records, self._torn = None, 0, {}, False
            return
        if st.st_ino != self._inode or st.st_size < self._offset:
            self._inode, self._offset, self._records = st.st_ino, 0, {}
        if st.st_size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._torn = end != len(data)
        for line in data[:end].split(b"\n")[:-1]:
            token, sep, base = line.decode("utf-8", "replace").partition(" ")
            if sep and len(token) == 20 and token != "twistedmail-delivered":
                self._records[token] = base
        self._offset += end

    def lookup(self, token: str, *, read: bool = True) -> str | None:
        """The base name recorded for a token hash, or None.

        @param read: read what was appended since the last look first; a
            later lookup under the same hold of the lock may skip that (no
            one else can append meanwhile).
        """
        if read:
            self._catch_up()
        return self._records.get(token)

    def record(self, token: str, base: str, now: float) -> None:
        """Append a record and fsync it (compacting first when large)."""
        self.record_many([(token, base)], now)

    def record_many(
        self, records: list[tuple[str, str]], now: float, *, read: bool = True
    ) -> None:
        """Append records with one write and one fsync (compacting first
        when large).

        @param read: read what was appended since the last look first
            (False: a lookup under the same hold of the lock just did).
        """
        if read:
            self._catch_up()
        if self._offset > self._compact_at:
            self._compact(now)
        created = self._inode is None
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            data = "".join(f"{token} {base}\n" for token, base in records).encode()
            if created:
                data = _HEADER + data
            elif self._torn:
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(self.maildir)
        self._records.update(records)
        if st.st_ino == self._inode and st.st_size == self._offset + len(data):
            # Only our own append since the last read (the lock is held):
            # no need to read back what was just written.
            self._offset = st.st_size
            self._torn = False
        else:
            self._catch_up()

    def _compact(self, now: float) -> None:
        keep = []
        for token, base in self._records.items():
            try:
                when = int(base.partition(".")[0])
            except ValueError:
                when = int(now)
            if when >= now - _KEEP_SECONDS:
                keep.append(f"{token} {base}\n".encode())
        write_file_atomic(self.path, _HEADER + b"".join(keep))
        self._inode = None
        self._catch_up()
        self._compact_at = max(_COMPACT_SIZE, 2 * self._offset)


@dataclass(frozen=True)
class Delivery:
    """One message for one Maildir's INBOX (an item of a batch).

    @ivar message: the bytes to store.
    @ivar unique: the delivery's stable token (queue id and recipient).
    @ivar quota: the mailbox quota in octets, or None.
    @ivar now: the time the name is made at (the caller's clock).
    """

    message: bytes
    unique: str
    quota: int | None = None
    now: float = 0.0


def deliver_batch(
    path: str,
    items: Sequence[Delivery],
    journal: DeliveryJournal,
    new_base: Callable[[int, str, float], str],
    mailbox_size: Callable[[str], int],
    added: Callable[[str, int], None] | None = None,
) -> list[str | Exception]:
    """Deliver messages into the INBOX of the Maildir at C{path}, each
    exactly once per its token (blocking; see the module docstring).

    @param journal: the Maildir's journal.
    @param new_base: makes a fresh base name from (size, the token's first
        eight hex digits, time).
    @param mailbox_size: the octets the Maildir uses (for quotas).
    @param added: told (``new/``, size) of each message linked into
        ``new/`` (L{SizeCache.added}).
    @return: for each item, in order, its base name or the exception that
        failed it (L{TemporaryError} with L{MAILBOX_FULL} over quota,
        L{OSError} from the file system).  When the journal cannot be
        written nothing is delivered and every item gets that error.
    """
    if not journal.made:
        return _deliver_batch(path, items, journal, new_base, mailbox_size, added)
    # The Maildir was there for an earlier batch: no stat of its three
    # folders unless something is missing now (then they are made again and
    # the items that failed for it go once more; the journal keeps that to
    # one copy each).
    done = _deliver_batch(
        path, items, journal, new_base, mailbox_size, added, ensure=False
    )
    missing = [i for i, r in enumerate(done) if isinstance(r, FileNotFoundError)]
    if missing:
        journal.made = False
        again = _deliver_batch(
            path, [items[i] for i in missing], journal, new_base, mailbox_size, added
        )
        for i, result in zip(missing, again, strict=True):
            done[i] = result
    return done


def _deliver_batch(
    path: str,
    items: Sequence[Delivery],
    journal: DeliveryJournal,
    new_base: Callable[[int, str, float], str],
    mailbox_size: Callable[[str], int],
    added: Callable[[str, int], None] | None = None,
    ensure: bool = True,
) -> list[str | Exception]:
    """L{deliver_batch}; with C{ensure}, making the Maildir's folders first
    when missing (and marking the journal's Maildir as made)."""
    results: list[str | Exception | None] = [None] * len(items)
    try:
        if ensure:
            ensure_maildir(path)
            journal.made = True
        todo = _claim_names(path, items, journal, new_base, mailbox_size, results)
    except OSError as e:
        return [e] * len(items)
    written = _write_files(
        [
            (
                i,
                base,
                os.path.join(
                    path, "tmp", new_base(len(items[i].message), token, items[i].now)
                ),
            )
            for i, base, token in todo
        ],
        items,
        results,
    )
    new = os.path.join(path, "new")
    linked: list[int] = []
    for i, base, tmp in written:
        try:
            os.link(tmp, os.path.join(new, base))
        except FileExistsError:
            pass  # a racing attempt of the same delivery linked it first
        except OSError as e:
            results[i] = e
            continue
        finally:
            _unlink_quietly(tmp)
        results[i] = base
        linked.append(i)
        if added is not None:
            added(new, len(items[i].message))
    if linked:
        try:
            fsync_directory(new)
        except OSError as e:
            for i in linked:
                results[i] = e
    done: list[str | Exception] = []
    for i, result in enumerate(results):
        if result is None:
            # A second item with a token already in this batch: it is the
            # same delivery, so it gets the first one's outcome.
            result = results[_first_with_token(items, i)]
            assert result is not None
        done.append(result)
    return done


def _write_files(
    todo: list[tuple[int, str, str]],
    items: Sequence[Delivery],
    results: list[str | Exception | None],
) -> list[tuple[int, str, str]]:
    """Write the batch's message files into ``tmp/``: every file first, then
    an fsync of each, then the closes (blocking).

    Step by step rather than file by file: with every file written before
    the first fsync, the file system commits most of the batch's metadata
    in one journal transaction, and the fsyncs that follow find little left
    to do (less system time, less waiting).  A failed item is unlinked and
    gets its error in C{results}; the others are returned as they came.

    @param todo: (item index, base name, ``tmp/`` path) to write.
    """
    opened: list[tuple[int, str, str, int]] = []
    failed: set[int] = set()
    try:
        for i, base, tmp in todo:
            try:
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
            except OSError as e:
                results[i] = e
                failed.add(i)
                continue
            opened.append((i, base, tmp, fd))
            try:
                view = memoryview(items[i].message)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as e:
                results[i] = e
                failed.add(i)
        for i, _, _, fd in opened:
            if i not in failed:
                try:
                    os.fsync(fd)
                except OSError as e:
                    results[i] = e
                    failed.add(i)
    finally:
        for i, _, tmp, fd in opened:
            try:
                os.close(fd)
            except OSError as e:
                if i not in failed:
                    results[i] = e
                    failed.add(i)
            if i in failed:
                _unlink_quietly(tmp)
    return [(i, base, tmp) for i, base, tmp, _ in opened if i not in failed]


def _claim_names(
    path: str,
    items: Sequence[Delivery],
    journal: DeliveryJournal,
    new_base: Callable[[int, str, float], str],
    mailbox_size: Callable[[str], int],
    results: list[str | Exception | None],
) -> list[tuple[int, str, str]]:
    """Under the lock: find deliveries already made, check quotas, pick
    and journal the new names.  Fills C{results} for items that are done
    (or over quota); returns (index, base name, short token) to write."""
    todo: list[tuple[int, str, str]] = []
    records: list[tuple[str, str]] = []
    tokens: set[str] = set()
    used: int | None = None
    with journal.lock():
        for i, item in enumerate(items):
            token = token_hash(item.unique)
            if token in tokens:
                continue  # resolved from the first item with this token
            # The journal is read once per batch: the lock keeps others out.
            base = journal.lookup(token, read=not tokens)
            tokens.add(token)
            size = len(item.message)
            if base is not None and find_delivered(path, base) is not None:
                results[i] = base
                continue
            if base is not None and size_from_base(base) not in (None, size):
                # Never linked, and this attempt's bytes differ in size: a
                # fresh name keeps ",S=" truthful.
                base = None
            if item.quota is not None:
                if used is None:
                    used = mailbox_size(path)
                if used + size > item.quota:
                    results[i] = TemporaryError(
                        MAILBOX_FULL,
                        f"quota {item.quota} exceeded ({used} used, {size} more)",
                    )
                    continue
                used += size
            if base is None:
                # Eight hex digits trace the file to its delivery; the
                # journal holds the full hash.  Short names suit POP3 UIDL
                # (at most 70 characters, RFC 1939 §7).
                base = new_base(size, token[:8], item.now)
                records.append((token, base))
            todo.append((i, base, token[:8]))
        if records:
            journal.record_many(records, max(item.now for item in items), read=False)
    return todo


def _first_with_token(items: Sequence[Delivery], index: int) -> int:
    token = items[index].unique
    return next(i for i, item in enumerate(items) if item.unique == token)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass
class _Waiting:
    """A delivery handed to L{DeliveryBatches}, waiting for its batch."""

    path: str
    item: Delivery
    done: Deferred[str] = field(default_factory=Deferred)


class DeliveryBatches:
    """Group commit for Maildir deliveries (see the module docstring).

    The first delivery starts a batch at once; deliveries handed over while
    it runs (or while its callbacks run) wait and form the next one.  One thread job runs each batch:
    C{work} gets (path, item) pairs and returns one result per pair (a base
    name or the exception that failed it).

    @param run_in_thread: runs a blocking callable off the reactor thread
        and returns a Deferred of its result.
    @param work: delivers a batch (blocking).
    """

    def __init__(
        self,
        run_in_thread: Callable[[Callable[[], Any]], Deferred[Any]],
        work: Callable[[list[tuple[str, Delivery]]], list[str | Exception]],
    ) -> None:
        self._run = run_in_thread
        self._work = work
        self._waiting: list[_Waiting] = []
        self._busy = False

    def deliver(self, path: str, item: Delivery) -> Deferred[str]:
        """Deliver one message; fire with its base name, or fail with the
        exception the batch gave it."""
        waiting = _Waiting(path, item)
        self._waiting.append(waiting)
        if not self._busy:
            self._start()
        return waiting.done

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        self._busy = True
        pairs = [(w.path, w.item) for w in batch]
        d = self._run(lambda: self._work(pairs))
        d.addCallbacks(
            lambda results: self._finished(batch, results),
            lambda f: self._finished(batch, [_exception(f)] * len(batch)),
        )

    def _finished(
        self, batch: list[_Waiting], results: Sequence[str | Exception]
    ) -> None:
        # Still busy while the callbacks run: the deliveries they hand over
        # (the queue runner moving on to its next entries) all wait for the
        # next batch, rather than the first of them going alone.
        try:
            for waiting, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    waiting.done.errback(Failure(result))
                else:
                    waiting.done.callback(result)
        finally:
            self._busy = False
        if self._waiting:
            self._start()


def _exception(failure: Failure) -> Exception:
    value = failure.value
    return value if isinstance(value, Exception) else RuntimeError(str(value))


class SizeCache:
    """The total size of a Maildir's messages, for quotas.

    Sizes come from ``,S=`` in the names (``stat`` otherwise); each
    ``new/`` and ``cur/`` directory is re-read only when its mtime changed.
    """

    def __init__(self) -> None:
        self._dirs: dict[str, tuple[int, int]] = {}

    def total(self, maildir: str, folders: Callable[[str], list[str]]) -> int:
        """The size of every message in the Maildir and its folders.

        @param folders: lists a Maildir's folder directories (relative).
        """
        total = 0
        for sub in ["", *folders(maildir)]:
            for part in ("new", "cur"):
                total += self._dir_total(os.path.join(maildir, sub, part))
        return total

    def added(self, path: str, size: int) -> None:
        """Count a message just linked into a directory without re-reading
        it (a change in the same timestamp tick as the last read would not
        show in the mtime, and big ``new/`` directories are slow to list).
        Another writer's change in that same tick is missed until the next
        change: the quota is approximate by that much."""
        cached = self._dirs.get(path)
        if cached is None:
            return
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return
        self._dirs[path] = (mtime, cached[1] + size)

    def _dir_total(self, path: str) -> int:
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return 0
        cached = self._dirs.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        total = 0
        for name in os.listdir(path):
            base = parse_filename(name)[0]
            size = size_from_base(base)
            if size is None:
                try:
                    size = os.stat(os.path.join(path, name)).st_size
                except FileNotFoundError:
                    size = 0
            total += size
        self._dirs[path] = (mtime, total)
        return total
