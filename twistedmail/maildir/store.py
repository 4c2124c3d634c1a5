# -*- test-case-name: tests.test_maildir_store -*-
"""The mailbox store on Maildir (the Maildir step of the flow): the one
module that owns the on-disk format.  Local delivery writes through
L{MaildirStore.deliver}; POP3 and IMAP read and change mail through
L{Mailbox} objects from L{MaildirStore.open_mailbox}.

Layout (Maildir++)::

    <maildir>/cur new tmp            INBOX
    <maildir>/.Sent/cur new tmp      folder "Sent" (with a maildirfolder file)
    <maildir>/.A.B/...               folder "A.B" ("." is the separator)
    <maildir>/subscriptions          subscribed folder names, one a line
    <folder>/twistedmail-uidlist     UIDs and index (L{uidlist})
    <folder>/twistedmail-keywords    keyword letters (L{keywords})
    <folder>/twistedmail-cache.sqlite  parsed-message cache (L{cache})
    <maildir>/twistedmail-delivered  delivery journal (L{delivery})

Threads: every method here except L{MaildirStore.deliver} blocks on the file
system; protocols call them through L{MaildirStore.run_in_thread} where that
matters.  One L{Mailbox} object must not be used by two threads at once.
Change notifications run in the thread that made the change
(L{MaildirStore.deliver}'s run in the reactor thread).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import gc
import itertools
import operator
import os
import re
import shutil
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, NamedTuple, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from twistedmail.interfaces import User
from twistedmail.maildir.cache import MessageCache
from twistedmail.maildir.delivery import (
    Delivery,
    DeliveryBatches,
    DeliveryJournal,
    SizeCache,
    deliver_batch,
    ensure_maildir,
    find_delivered,
    write_message,
)
from twistedmail.maildir.keywords import KeywordMap
from twistedmail.maildir.lock import FolderLock
from twistedmail.maildir.names import (
    FLAG_LETTERS,
    FolderNameError,
    MaildirError,
    delivery_order,
    folder_directory,
    folder_from_directory,
    format_filename,
    make_base,
    parse_filename,
    size_from_base,
)
from twistedmail.maildir.uidlist import (
    UIDLIST_NAME,
    UNKNOWN_DATE,
    UIDEntry,
    UIDList,
    UIDListError,
    fsync_directory,
    read_dovecot_uidlist,
    read_uidlist,
    save_uidlist,
    write_file_atomic,
    write_uidlist,
)
from twistedmail.maildir.watch import FolderWatcher
from twistedmail.replies import INTERNAL_ERROR, TemporaryError

__all__ = [
    "FolderExistsError",
    "Mailbox",
    "MaildirStore",
    "MessageInfo",
    "NoSuchFolderError",
    "NoSuchMessageError",
    "dates_unknown",
    "gc_paused",
]

_T = TypeVar("_T")
_LOCK_NAME = "twistedmail-uidlist.lock"
_SUBSCRIPTIONS = "subscriptions"
# A directory mtime this close to the present may still change within the
# same file system timestamp tick, so a scan made now is not trusted later.
_MTIME_SLACK_NS = 2_000_000_000
# The same for an mtime that shows a fine-grained file system (see
# _settled): far more than the kernel's timestamp tick (at most 10 ms).
_FINE_SLACK_NS = 100_000_000
_TMP_MAX_AGE = 36 * 3600
# New messages found by a listing of a folder already indexed are stat-ed
# for their dates at once when there are fewer than this many (a delivery, a
# few moves): leaving them unknown would cost a rewrite of the whole UID
# list when a client first asks for their dates (L{Mailbox.with_dates}).
_LAZY_DATES_FROM = 1000

log = Logger()


class NoSuchFolderError(MaildirError):
    """The folder does not exist."""


class FolderExistsError(MaildirError):
    """The folder already exists."""


class NoSuchMessageError(MaildirError, KeyError):
    """No message with that UID (it was never there, or it is gone)."""


class MessageInfo(NamedTuple):
    """What the store knows of one message without reading it (immutable;
    a named tuple because a folder may hold 100,000 of them).

    @ivar uid: the UID, stable for the folder's UIDVALIDITY.
    @ivar base: the base name (POP3 UIDL uses it; never changes).
    @ivar filename: ``new/<name>`` or ``cur/<name>``, relative to the folder.
    @ivar size: octets in the file.
    @ivar internal_date: POSIX seconds (IMAP INTERNALDATE; the file's mtime
        when it was first seen), or L{UNKNOWN_DATE} for a message found by
        listing the folder whose file was not ``stat``-ed yet: what clients
        see goes through L{Mailbox.with_dates}.
    @ivar flags: Maildir flag letters (L{names.Flag}).
    @ivar keywords: keyword names (``$Junk``...).
    """

    uid: int
    base: str
    filename: str
    size: int
    internal_date: int
    flags: frozenset[str]
    keywords: frozenset[str]

    @property
    def recent(self) -> bool:
        """Whether the message is still in ``new/`` (no client saw it)."""
        return self.filename.startswith("new/")


#: C{MessageInfo} from a tuple without a Python-level call (fast for
#: 100,000 messages).
_make_info = cast(
    Callable[[tuple[Any, ...]], MessageInfo],
    functools.partial(tuple.__new__, MessageInfo),
)
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
_third = operator.itemgetter(2)
_fourth = operator.itemgetter(3)
_starts_new = operator.methodcaller("startswith", "new/")
#: The info part of each line of file names (``:2,S``, or empty).
_SUFFIX = re.compile(r"^[^:\n]*(.*)$", re.MULTILINE)
#: The base name of each ``/``-terminated file name.
_BASE = re.compile(r"([^/:]*)[^/]*/")


_info_date = operator.attrgetter("internal_date")


def dates_unknown(infos: Iterable[MessageInfo]) -> bool:
    """Whether some of these messages have an unknown internal date
    (L{Mailbox.with_dates} gives them theirs)."""
    return UNKNOWN_DATE in map(_info_date, infos)


def _parse_suffix(
    suffix: str, keywords: KeywordMap
) -> tuple[frozenset[str], frozenset[str]]:
    """Flags and keyword names of an info suffix (``:2,RSa``)."""
    _, flags, letters = parse_filename(suffix)
    names = keywords.names
    return flags, frozenset(names[ord(c) - 97] for c in letters if ord(c) - 97 in names)


def _infos_of(
    c: _Columns,
    files: list[str],
    flags_of: Callable[[str], tuple[frozenset[str], frozenset[str]]],
) -> list[MessageInfo]:
    """The L{MessageInfo} of each message of a snapshot's columns and file
    names."""
    # Every step is a pass in C (map, zip, one regular expression); only
    # the few distinct info suffixes (":2,S", ":2,RS"...) are parsed in
    # Python.
    if not c.uids:
        return []
    suffixes = _SUFFIX.findall("\n".join(files))
    parsed = {s: flags_of(s) for s in set(suffixes)}
    known = list(map(parsed.__getitem__, suffixes))
    return list(
        map(
            _make_info,
            zip(
                c.uids,
                c.bases,
                files,
                c.sizes,
                c.dates,
                map(_first, known),
                map(_second, known),
                strict=True,
            ),
        )
    )


#: Per line of base names: the digits of the first ``,S=<size>`` field
#: (L{names.size_from_base}), or empty.
_SIZES = re.compile(r"^(?:[^\n]*?,S=([0-9]+)(?=,|$))?[^\n]*$", re.MULTILINE)
#: Per line of base names: the groups of L{names.delivery_order}'s
#: expression (seconds, microseconds, counter), empty where absent.
_ORDERS = re.compile(
    r"^(?:([0-9]+)\.(?:[^.\n]*?M([0-9]+))?(?:[^.\n]*?Q([0-9]+))?)?[^\n]*$",
    re.MULTILINE,
)
#: Per line of base names of the usual form (``<sec>.M<usec>P<pid>[Q<n>
#: [U<token>]].<host>,S=<size>...``, ours and Dovecot's): what L{_ORDERS}
#: and L{_SIZES} give for it, in one pass (a line of another form does not
#: match: the first M and Q of the part after the seconds are the ones
#: matched, and the first comma starts a well-formed ``,S=``).
_COMMON = re.compile(
    r"^([0-9]+)\.M([0-9]+)P[0-9]+(?:Q([0-9]+)(?:U[^.\n]*)?)?"
    r"\.[^,\n]*?,S=([0-9]+)(?=,|$)",
    re.MULTILINE,
)
_st_mtime = operator.attrgetter("st_mtime")
_st_size = operator.attrgetter("st_size")


def _in_new(files: list[str]) -> list[int]:
    """The positions of the file names in ``new/``."""
    # One search of the joined names spares a test per name when none is
    # (the usual case for a big folder).
    if not files or ("\nnew/" not in "\n".join(files) and files[0][:4] != "new/"):
        return []
    return list(itertools.compress(itertools.count(), map(_starts_new, files)))


def _numbers(texts: list[str]) -> Iterable[int]:
    """Digit strings as numbers, empty ones as 0 (a pass in C; none at
    all when every one is empty, as counters in other programs' names)."""
    if all(texts):
        return map(int, texts)
    if not any(texts):
        return itertools.repeat(0, len(texts))
    return map(int, map("0".__add__, texts))


class _Columns:
    """A snapshot's columns, in UID order (never changed in place; the file
    names, which flag changes rename, are kept apart by each mailbox).

    @ivar source: the UID list these columns are (not a filtered copy of),
        or None.
    @ivar cur: the listing of ``cur/`` the snapshot was made from.
    @ivar in_new: the positions of messages that were in ``new/``.
    """

    __slots__ = ("bases", "cur", "dates", "in_new", "sizes", "source", "uids")

    def __init__(
        self,
        uids: list[int],
        bases: list[str],
        dates: list[int],
        sizes: list[int],
        source: UIDList | None,
    ) -> None:
        self.uids = uids
        self.bases = bases
        self.dates = dates
        self.sizes = sizes
        self.source = source
        self.cur: dict[str, str] | None = None
        self.in_new: list[int] = []

    @classmethod
    def empty(cls) -> _Columns:
        """No messages."""
        return cls([], [], [], [], None)


class _Shared:
    """A folder's snapshot as of one disk state (L{Mailbox._disk_signature}),
    shared by the mailboxes of that folder in this process: a second
    session opening a big folder copies it instead of listing the folder
    and reading the UID list again.  Never changed once made."""

    __slots__ = (
        "__weakref__",
        "columns",
        "files",
        "keywords",
        "signature",
        "uidlist",
        "uidlist_stat",
    )

    def __init__(
        self,
        signature: tuple[object, ...],
        uidlist: UIDList,
        uidlist_stat: tuple[int, int, int] | None,
        keywords: KeywordMap,
        columns: _Columns,
        files: list[str],
    ) -> None:
        self.signature = signature
        self.uidlist = uidlist
        self.uidlist_stat = uidlist_stat
        self.keywords = keywords
        self.columns = columns
        self.files = files


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a snapshot of a big
    folder is built, and resume it after (only if it was running).

    Building one makes some hundred thousand container objects that all
    live on; each allocation burst would trigger collections that walk
    every tracked object, a fifth of the time spent.  Reference counting
    still frees everything as usual; only cycles wait until the collector
    runs again.  The switch is process-wide: a pause in one thread also
    delays (never loses) collection for the others.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _settled(mtime_ns: int, before_ns: int) -> bool:
    """Whether a directory whose time was C{mtime_ns} when it was looked at
    (C{stat}, then list) cannot change again without its time changing, so
    that the listing stays good while the time stays the same.

    A change gets the kernel's coarse clock time (behind the real time by
    at most one tick, 1 to 10 ms) cut to the file system's granularity, so
    a change after the look began (at C{before_ns}, taken before the
    C{stat}) gets a time later than C{mtime_ns} once C{before_ns} is more
    than a tick and a granule past it: 0.1 s is allowed.  The granularity
    is known to be fine when the time is not a whole millisecond (file
    systems keep nanoseconds, 100 ns or microseconds, or whole 10 ms,
    seconds or two seconds: exFAT, ext3, HFS+, FAT).  Any other time, and
    a time ahead of the clock (a file server's clock), counts as settled
    only two seconds away from C{before_ns}, as it always did.  Both rules
    take the file system's clock to be this machine's, or one kept close
    to it (a file server's, within the allowance).

    @param mtime_ns: the directory's C{st_mtime_ns}.
    @param before_ns: the clock's time in nanoseconds, taken before the
        C{stat}.
    """
    age = before_ns - mtime_ns
    if age >= _MTIME_SLACK_NS or age <= -_MTIME_SLACK_NS:
        return True
    return age >= _FINE_SLACK_NS and mtime_ns % 1_000_000 != 0


def _default_opener(path: str) -> IO[bytes]:
    return open(path, "rb")


class MaildirStore:
    """The Maildir store: delivery, mailboxes, folders and notifications.

    @param mail_root: the directory relative mailbox paths are under.
    @param hostname: the host name in new file names.
    @param clock: the reactor: time for names and UIDVALIDITY, and (for the
        default L{run_in_thread}) its thread pool.
    @param run_in_thread: called with one zero-argument callable, runs it
        off the reactor thread and returns a Deferred of its result (the
        spool's C{ThreadRunner} shape); defaults to the reactor's thread
        pool.  Tests pass a synchronous runner.
    @param opener: opens a message file for reading (tests count calls).
    @param watcher: tells of changes other programs make to folders that
        have listeners (L{subscribe}); see L{watch.make_watcher}.  Without
        one, listeners hear only of changes made through this store.
    """

    def __init__(
        self,
        mail_root: str,
        hostname: str,
        clock: IReactorTime,
        run_in_thread: Callable[..., Deferred[Any]] | None = None,
        *,
        opener: Callable[[str], IO[bytes]] = _default_opener,
        watcher: FolderWatcher | None = None,
    ) -> None:
        self.mail_root = os.path.abspath(mail_root)
        self.hostname = hostname
        self._clock = clock
        self._run_in_thread = run_in_thread
        self.opener = opener
        self._counter = itertools.count(1)
        self._journals: dict[str, DeliveryJournal] = {}
        # Deliveries made while others run share a thread job and fsyncs.
        self._batches = DeliveryBatches(self.run_in_thread, self._deliver_many)
        self._sizes = SizeCache()
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._watcher = watcher
        # The newest UID list of each folder, while a mailbox uses it.
        self._lists: weakref.WeakValueDictionary[str, UIDList] = (
            weakref.WeakValueDictionary()
        )
        # The last snapshot of each folder, while a mailbox uses it.
        self._shared: weakref.WeakValueDictionary[str, _Shared] = (
            weakref.WeakValueDictionary()
        )
        self._watches: dict[str, Callable[[], None]] = {}

    # Threads and time

    def run_in_thread(
        self, f: Callable[..., _T], *args: object, **kwargs: object
    ) -> Deferred[_T]:
        """Run a blocking callable off the reactor thread; a Deferred of its
        result."""
        if self._run_in_thread is not None:
            return self._run_in_thread(functools.partial(f, *args, **kwargs))
        reactor = cast(IReactorThreads, self._clock)
        return deferToThreadPool(
            reactor,
            reactor.getThreadPool(),
            f,
            *args,
            **kwargs,
        )

    def now(self) -> float:
        """The injected clock's time."""
        return self._clock.seconds()

    def new_base(self, size: int, token: str = "", now: float | None = None) -> str:
        """A fresh base name made now (see L{names.make_base})."""
        return make_base(
            self.now() if now is None else now,
            os.getpid(),
            next(self._counter),
            self.hostname,
            size,
            token,
        )

    # Paths

    def mailbox_path(self, user: User) -> str:
        """The absolute Maildir path of a user.

        @raise MaildirError: when a relative path would leave the mail root
            (``..``) or the path holds NUL.
        """
        if "\0" in user.mailbox or not user.mailbox:
            raise MaildirError("bad mailbox path")
        full = os.path.normpath(os.path.join(self.mail_root, user.mailbox))
        if not os.path.isabs(user.mailbox):
            if (
                os.path.commonpath([self.mail_root, full]) != self.mail_root
                or full == self.mail_root
            ):
                raise MaildirError("mailbox path leaves the mail root")
        return full

    def folder_path(self, path: str, folder: str = "INBOX") -> str:
        """The directory of a folder in the Maildir at ``path``.

        @raise FolderNameError: for a name that is not allowed.
        """
        directory = folder_directory(folder)
        return path if directory is None else os.path.join(path, directory)

    # Delivery

    def deliver(
        self, path: str, message: bytes, unique: str, quota: int | None = None
    ) -> Deferred[str]:
        """Deliver a message into the INBOX of the Maildir at ``path``,
        exactly once per ``unique``.

        @param unique: a stable token for this delivery (queue id and
            recipient); a second call with the same token returns the first
            delivery's base name and writes nothing.
        @param quota: the mailbox quota in octets, or None.
        @return: a Deferred firing with the message's base name, or failing
            with L{TemporaryError} (L{MAILBOX_FULL} when over quota,
            L{INTERNAL_ERROR} when the file system fails).  Listeners of
            the INBOX are told after success.
        """
        d = self._batches.deliver(path, Delivery(message, unique, quota, self.now()))

        def delivered(base: str) -> str:
            self.notify(path, "INBOX")
            return base

        return d.addCallback(delivered)

    def deliver_sync(
        self,
        path: str,
        message: bytes,
        unique: str,
        quota: int | None = None,
        now: float | None = None,
    ) -> str:
        """L{deliver}, blocking, without notifying (for threads)."""
        now = self.now() if now is None else now
        item = Delivery(message, unique, quota, now)
        result = self._deliver_many([(path, item)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _deliver_many(self, pairs: list[tuple[str, Delivery]]) -> list[str | Exception]:
        """Deliver (Maildir path, item) pairs, a batch per Maildir (blocking;
        see L{delivery.deliver_batch}); a base name or a L{TemporaryError}
        for each pair."""
        by_path: dict[str, list[int]] = {}
        for i, (path, _) in enumerate(pairs):
            by_path.setdefault(path, []).append(i)
        results: list[str | Exception] = [""] * len(pairs)
        for path, indexes in by_path.items():
            journal = self._journals.get(path)
            if journal is None:
                journal = self._journals[path] = DeliveryJournal(path)
            done = deliver_batch(
                path,
                [pairs[i][1] for i in indexes],
                journal,
                self.new_base,
                self.mailbox_size,
                self._sizes.added,
            )
            for i, result in zip(indexes, done, strict=True):
                if isinstance(result, OSError):
                    error = TemporaryError(
                        INTERNAL_ERROR, f"Maildir delivery failed: {result}"
                    )
                    error.__cause__ = result
                    result = error
                results[i] = result
        return results

    def mailbox_size(self, path: str) -> int:
        """The octets used by every message in the Maildir (all folders)."""
        return self._sizes.total(path, self._folder_directories)

    # Change notification

    def _key(self, path: str, folder: str) -> str:
        return os.path.normpath(os.path.abspath(self.folder_path(path, folder)))

    def subscribe(
        self, path: str, folder: str, callback: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``callback()`` after each change to a folder: those made
        through this store (delivery, add, copy into it, flag change,
        expunge; called in the thread that made the change), and, with a
        watcher, those made by other programs (called in the reactor
        thread).  The folder is watched while it has listeners; subscribe
        and unsubscribe in the reactor thread when there is a watcher.

        @return: a function that unsubscribes (calling it twice is
            harmless).
        """
        key = self._key(path, folder)
        callbacks = self._listeners.setdefault(key, [])
        callbacks.append(callback)
        if len(callbacks) == 1 and self._watcher is not None:
            self._watches[key] = self._watcher.watch(
                key, functools.partial(self._notify_key, key)
            )
        done = False

        def unsubscribe() -> None:
            nonlocal done
            if done:
                return
            done = True
            callbacks = self._listeners.get(key, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._listeners.pop(key, None)
                stop = self._watches.pop(key, None)
                if stop is not None:
                    stop()

        return unsubscribe

    @property
    def watcher(self) -> FolderWatcher | None:
        """The watcher given at creation, or None."""
        return self._watcher

    @property
    def watched(self) -> list[str]:
        """The folder directories the watcher watches now (for tests and
        status)."""
        return sorted(self._watches)

    def stop_watching(self) -> None:
        """Stop every watch (the service stops); listeners stay, and hear
        only of this store's own changes from now on."""
        watches, self._watches = self._watches, {}
        for stop in watches.values():
            stop()

    def notify(self, path: str, folder: str = "INBOX") -> None:
        """Tell a folder's listeners that it changed (errors are logged)."""
        self._notify_key(self._key(path, folder))

    def _notify_key(self, key: str) -> None:
        for callback in list(self._listeners.get(key, [])):
            try:
                callback()
            except Exception:
                log.failure("Maildir change listener failed")

    # Mailboxes and folders

    def open_mailbox(self, path: str, folder: str = "INBOX") -> Mailbox:
        """Open a folder for reading and changing (blocking).

        The INBOX (the Maildir) is created when missing.

        @raise FolderNameError: for a name that is not allowed.
        @raise NoSuchFolderError: when a folder other than INBOX is missing.
        """
        directory = self.folder_path(path, folder)
        if directory == path:
            ensure_maildir(path)
            name = "INBOX"
        else:
            if not os.path.isdir(os.path.join(directory, "cur")):
                raise NoSuchFolderError(f"no folder {folder!r}")
            ensure_maildir(directory)
            name = folder
        self._clean_tmp(directory)
        mailbox = Mailbox(self, path, name, directory)
        mailbox.refresh()
        return mailbox

    def _clean_tmp(self, directory: str) -> None:
        """Remove files left in ``tmp/`` for over 36 hours (the qmail rule:
        a delivery that old died)."""
        tmp = os.path.join(directory, "tmp")
        limit = self.now() - _TMP_MAX_AGE
        for name in os.listdir(tmp):
            full = os.path.join(tmp, name)
            try:
                if os.lstat(full).st_mtime < limit:
                    os.unlink(full)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue

    def _folder_directories(self, path: str) -> list[str]:
        try:
            entries = os.listdir(path)
        except FileNotFoundError:
            return []
        return [
            e
            for e in entries
            if folder_from_directory(e) is not None
            and os.path.isdir(os.path.join(path, e, "cur"))
        ]

    def list_folders(self, path: str) -> list[str]:
        """Every folder of the Maildir, ``INBOX`` first, then sorted."""
        names = sorted(d[1:] for d in self._folder_directories(path))
        return ["INBOX", *names]

    def create_folder(self, path: str, folder: str) -> None:
        """Create a folder (its parents need not exist, as in Maildir++).

        @raise FolderNameError: for a name that is not allowed.
        @raise FolderExistsError: when it exists (INBOX always does).
        """
        self._make_folder(path, folder)
        fsync_directory(path)

    def create_folders(self, path: str, folders: Iterable[str]) -> list[str]:
        """Create the folders of these that do not exist yet, with one
        ``fsync`` of the Maildir for all (a first IMAP login makes five).

        @return: the names created, in order.
        @raise FolderNameError: for a name that is not allowed (the names
            before it are created).
        """
        made = []
        try:
            for folder in folders:
                try:
                    self._make_folder(path, folder)
                except FolderExistsError:
                    continue
                made.append(folder)
        finally:
            if made:
                fsync_directory(path)
        return made

    def _make_folder(self, path: str, folder: str) -> None:
        """L{create_folder} but for the final ``fsync``."""
        directory = self.folder_path(path, folder)
        if directory == path:
            raise FolderExistsError("INBOX always exists")
        ensure_maildir(path)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            raise FolderExistsError(f"folder {folder!r} exists") from None
        ensure_maildir(directory)
        with open(os.path.join(directory, "maildirfolder"), "wb"):
            pass

    def delete_folder(self, path: str, folder: str) -> None:
        """Delete a folder and its messages (its subfolders stay).

        @raise FolderNameError: for INBOX or a name that is not allowed.
        @raise NoSuchFolderError: when it does not exist.
        """
        directory = self.folder_path(path, folder)
        if directory == path:
            raise FolderNameError("INBOX cannot be deleted")
        # Renamed first (to a name that is not a folder) so the folder
        # vanishes at once even if removing its files is slow or fails.
        doomed = os.path.join(path, f"..deleted-{os.getpid()}-{next(self._counter)}")
        try:
            os.rename(directory, doomed)
        except FileNotFoundError:
            raise NoSuchFolderError(f"no folder {folder!r}") from None
        fsync_directory(path)
        shutil.rmtree(doomed, ignore_errors=True)

    def rename_folder(self, path: str, old: str, new: str) -> None:
        """Rename a folder and its subfolders (UIDs and UIDVALIDITY go
        with them).  Renaming INBOX moves its messages into a new folder
        and leaves INBOX empty (RFC 3501 §6.3.5): their flags and keywords
        go with them, and the new folder's UIDs follow delivery order.

        @raise FolderNameError: for names that are not allowed, or a new
            name of INBOX.
        @raise NoSuchFolderError: when ``old`` does not exist.
        @raise FolderExistsError: when ``new`` exists.
        """
        old_dir = self.folder_path(path, old)
        new_dir = self.folder_path(path, new)
        if new_dir == path:
            raise FolderNameError("cannot rename to INBOX")
        if os.path.lexists(new_dir):
            raise FolderExistsError(f"folder {new!r} exists")
        if old_dir == path:
            self.create_folder(path, new)
            # The letters in the names keep their meaning: the new folder
            # gets INBOX's keyword map before any message moves.
            keywords = KeywordMap.load(path)
            if keywords.names:
                keywords.save(new_dir)
            for sub in ("new", "cur"):
                for name in os.listdir(os.path.join(path, sub)):
                    os.rename(
                        os.path.join(path, sub, name), os.path.join(new_dir, sub, name)
                    )
                fsync_directory(os.path.join(new_dir, sub))
            self.notify(path, "INBOX")
            return
        if not os.path.isdir(old_dir):
            raise NoSuchFolderError(f"no folder {old!r}")
        prefix = os.path.basename(old_dir) + "."
        children = [e for e in os.listdir(path) if e.startswith(prefix)]
        os.rename(old_dir, new_dir)
        for child in children:
            target = os.path.basename(new_dir) + child[len(prefix) - 1 :]
            if not os.path.lexists(os.path.join(path, target)):
                os.rename(os.path.join(path, child), os.path.join(path, target))
        fsync_directory(path)

    def subscriptions(self, path: str) -> list[str]:
        """The subscribed folder names (the Maildir++ ``subscriptions``
        file, one name a line), in file order."""
        try:
            with open(os.path.join(path, _SUBSCRIPTIONS), "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line for line in data.split("\n") if line]

    def set_subscribed(self, path: str, folder: str, subscribed: bool) -> None:
        """Subscribe to a folder or unsubscribe from it (the folder need not
        exist, RFC 3501 §6.3.6).

        @raise FolderNameError: for a name that is not allowed.
        """
        self.set_subscribed_many(path, [folder], subscribed)

    def set_subscribed_many(
        self, path: str, folders: Iterable[str], subscribed: bool
    ) -> None:
        """L{set_subscribed} for several folders with one write of the
        subscriptions file (a first IMAP login subscribes six).

        @raise FolderNameError: for a name that is not allowed (then none
            is changed).
        """
        wanted = []
        for folder in folders:
            self.folder_path(path, folder)
            wanted.append("INBOX" if folder.upper() == "INBOX" else folder)
        ensure_maildir(path)
        with FolderLock(os.path.join(path, _LOCK_NAME)):
            names = self.subscriptions(path)
            before = list(names)
            for folder in wanted:
                if subscribed and folder not in names:
                    names.append(folder)
                elif not subscribed and folder in names:
                    names.remove(folder)
            if names == before:
                return
            data = "".join(n + "\n" for n in names).encode()
            write_file_atomic(os.path.join(path, _SUBSCRIPTIONS), data)


class Mailbox:
    """One open folder: a snapshot of its messages, and the changes to them.

    L{messages} is a snapshot taken by L{refresh}: messages delivered or
    expunged by others appear or vanish at the next L{refresh}, so that a
    protocol decides when to tell its client.  Changes made through this
    object (L{set_flags}, L{expunge}) update the snapshot at once; messages
    it adds (L{add}, L{copy} into it) appear at the next L{refresh}.

    The snapshot is kept column by column (UIDs, base names, file names,
    dates, sizes: lists shared with the UID list where they can be); the
    L{MessageInfo} objects are made when first asked for (L{get} makes one,
    L{messages} all of them), so that opening a folder of 100,000 messages
    makes no object per message beyond the file names.

    Made by L{MaildirStore.open_mailbox}.
    """

    def __init__(self, store: MaildirStore, maildir: str, name: str, path: str) -> None:
        self.store = store
        self.maildir = maildir
        self.name = name
        self.path = path
        self._cache = MessageCache(path)
        self._uidlist = UIDList(0)
        self._uidlist_stat: tuple[int, int, int] | None = None
        self._keywords = KeywordMap()
        self._signature: tuple[object, ...] | None = None
        self._columns = _Columns.empty()
        # File names changed since the columns were made (flag changes).
        self._files: list[str] = []
        self._infos: list[MessageInfo] | None = None
        self._suffixes: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        # The list last remembered (the store holds lists weakly).
        self._list_ref: UIDList | None = None
        # The last listing of new/ and cur/ with the directory's time then,
        # and whether that time can be trusted (see _scan_one).
        self._listed: dict[str, tuple[int, dict[str, str], bool]] = {}
        # Changes whenever the snapshot does (see generation).
        self._generation = 0
        # Keeps the snapshot this mailbox published or adopted alive for
        # other mailboxes of the folder (the store holds it weakly).
        self._shared: _Shared | None = None

    # State

    @property
    def uidvalidity(self) -> int:
        """UIDVALIDITY (RFC 3501 §2.3.1.1) as of the last refresh."""
        return self._uidlist.uidvalidity

    @property
    def next_uid(self) -> int:
        """UIDNEXT as of the last refresh."""
        return self._uidlist.next_uid

    @property
    def generation(self) -> int:
        """A number that changes whenever the snapshot changes: a refresh
        that finds a change (messages, file names, keywords, UIDVALIDITY),
        a flag change, an expunge, a message claimed as recent.  Whoever
        saw the snapshot at one generation has nothing new to learn from it
        while the number stays the same (IMAP's poll then stops early)."""
        return self._generation

    def __len__(self) -> int:
        """How many messages the snapshot holds."""
        return len(self._columns.uids)

    def uids(self) -> list[int]:
        """The snapshot's UIDs, ascending (no per-message object made)."""
        return list(self._columns.uids)

    def columns(self) -> tuple[list[int], list[str], list[int]]:
        """The snapshot's UIDs, base names and sizes, as three lists in UID
        order (no per-message object made: what POP3's listing needs of a
        folder of 100,000 messages)."""
        c = self._columns
        return list(c.uids), list(c.bases), list(c.sizes)

    def messages(self) -> list[MessageInfo]:
        """The snapshot's messages in UID order."""
        if self._infos is None:
            with gc_paused():
                self._infos = self._make_infos()
        return list(self._infos)

    def _make_infos(self) -> list[MessageInfo]:
        return _infos_of(self._columns, self._files, self._flags_of)

    def messages_later(self) -> Callable[[], list[MessageInfo]]:
        """A function that returns L{messages} as the snapshot is now, made
        only when first called (a session's view of a folder of 100,000
        messages needs them for FETCH or SEARCH, not for SELECT).  Later
        refreshes and changes of this mailbox do not change its result.
        Call it from one thread at a time."""
        if self._infos is not None:
            infos = list(self._infos)
            return lambda: list(infos)
        columns = self._columns
        files = list(self._files)
        keywords = self._keywords
        suffixes = dict(self._suffixes)
        made: list[list[MessageInfo]] = []

        def flags_of(suffix: str) -> tuple[frozenset[str], frozenset[str]]:
            parsed = suffixes.get(suffix)
            if parsed is None:
                parsed = suffixes[suffix] = _parse_suffix(suffix, keywords)
            return parsed

        def later() -> list[MessageInfo]:
            if not made:
                with gc_paused():
                    made.append(_infos_of(columns, files, flags_of))
            return list(made[0])

        return later

    def flag_sets(
        self,
    ) -> tuple[list[str], dict[str, tuple[frozenset[str], frozenset[str]]]]:
        """Each message's flags without a per-message object: the info
        suffix of each file name (``:2,RS``, or empty), in UID order, and
        the flag letters and keyword names of each distinct suffix."""
        suffixes = _SUFFIX.findall("\n".join(self._files)) if self._files else []
        parsed = {s: self._flags_of(s) for s in set(suffixes)}
        return suffixes, parsed

    def _flags_of(self, suffix: str) -> tuple[frozenset[str], frozenset[str]]:
        """Flags and keyword names of an info suffix (``:2,RSa``)."""
        parsed = self._suffixes.get(suffix)
        if parsed is None:
            parsed = self._suffixes[suffix] = _parse_suffix(suffix, self._keywords)
        return parsed

    def _position(self, uid: int) -> int | None:
        uids = self._columns.uids
        i = bisect.bisect_left(uids, uid)
        if i < len(uids) and uids[i] == uid:
            return i
        return None

    def _info_at(self, i: int) -> MessageInfo:
        if self._infos is not None:
            return self._infos[i]
        c = self._columns
        filename = self._files[i]
        flags, keywords = self._flags_of(filename[filename.find(":") :])
        if ":" not in filename:
            flags, keywords = frozenset(), frozenset()
        return MessageInfo(
            c.uids[i], c.bases[i], filename, c.sizes[i], c.dates[i], flags, keywords
        )

    def get(self, uid: int) -> MessageInfo:
        """The snapshot's message with this UID.

        @raise NoSuchMessageError: when there is none.
        """
        i = self._position(uid)
        if i is None:
            raise NoSuchMessageError(f"no message with UID {uid}")
        return self._info_at(i)

    def with_dates(self, infos: Iterable[MessageInfo]) -> list[MessageInfo]:
        """These messages with their internal dates known (blocking).

        A message found by a listing (a folder's first indexing) has
        L{UNKNOWN_DATE} until its date is needed: then every message of
        the snapshot still without one gets its file's mtime (one ``stat``
        each, once per folder), and the dates are written into the UID
        list.  What IMAP shows (FETCH INTERNALDATE, SEARCH BEFORE/ON/SINCE)
        and COPY must come through here.

        @return: the messages in the same order, those with an unknown date
            replaced by copies with it.
        """
        infos = list(infos)
        if not dates_unknown(infos):
            return infos
        with gc_paused():
            c = self._columns
            column = self._resolve_dates()
            # Column by column (passes in C): a FETCH may ask for 100,000.
            fields = [list(map(operator.itemgetter(k), infos)) for k in range(7)]
            if fields[0] == c.uids:
                fields[4] = column  # the whole snapshot, in order
            else:
                known = dict(zip(c.bases, column, strict=True))
                bases = fields[1]
                dates = fields[4] = list(map(known.get, bases, fields[4]))
                for i, date in enumerate(dates):
                    if date == UNKNOWN_DATE and bases[i] not in known:
                        # Not in the snapshot (gone since the caller's).
                        dates[i] = self._stat_date(bases[i], fields[2][i])
            return list(map(_make_info, zip(*fields, strict=True)))

    def _resolve_dates(self) -> list[int]:
        """The snapshot's dates column with every unknown date taken
        (L{with_dates}); the snapshot keeps it."""
        c = self._columns
        if UNKNOWN_DATE not in c.dates:
            return c.dates
        dates = list(c.dates)
        # Another mailbox of this process may have taken them already.
        newest = self.store._lists.get(self.path)
        if newest is not None and newest is not c.source:
            listed = dict(zip(newest.bases, newest.dates, strict=True))
            dates = list(map(listed.get, c.bases, dates))
        stated = False
        if UNKNOWN_DATE in dates:
            stated = self._stat_dates(c.bases, dates)
        columns = _Columns(c.uids, c.bases, dates, c.sizes, c.source)
        columns.cur = c.cur
        columns.in_new = c.in_new
        self._columns = columns
        self._infos = None
        if stated:
            self._persist_dates(columns)
        return dates

    def _stat_dates(self, bases: list[str], dates: list[int]) -> bool:
        """Fill in C{dates} where unknown with each file's mtime (a file
        renamed meanwhile is looked up again); whether a date other than
        the epoch was found (worth writing down)."""
        files = self._files
        folder = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            stat = functools.partial(os.stat, dir_fd=folder)
            if not any(dates):
                # The usual case (a first indexing): all of them, in C.
                try:
                    dates[:] = map(int, map(_st_mtime, map(stat, files)))
                    return any(dates)
                except FileNotFoundError:
                    pass
            positions = [i for i, d in enumerate(dates) if d == UNKNOWN_DATE]
            missing: list[int] = []
            for i in positions:
                try:
                    dates[i] = int(stat(files[i]).st_mtime)
                except FileNotFoundError:
                    missing.append(i)
            if missing:
                # Renamed since the snapshot (flag changes): list once.
                now = self._scan(cached=False)
                for i in missing:
                    dates[i] = self._stat_date(bases[i], now.get(bases[i]))
        finally:
            os.close(folder)
        return any(dates[i] for i in positions)

    def _stat_date(self, base: str, filename: str | None) -> int:
        """One message's file's mtime; a message whose file is gone
        (expunged) gets the time in its name (its delivery time)."""
        if filename is not None:
            try:
                return int(os.stat(os.path.join(self.path, filename)).st_mtime)
            except FileNotFoundError:
                pass
        return delivery_order(base, UNKNOWN_DATE)[0]

    def _persist_dates(self, columns: _Columns) -> None:
        """Write the snapshot's dates (just taken by ``stat``) into the UID
        list, rewritten whole under the lock, unless the list is gone or
        broken meanwhile (a later listing makes a new one).  When the list
        holds just the snapshot's messages, the snapshot takes the new list
        as its own: the rewrite is no change on disk for this mailbox."""
        with self._lock():
            try:
                ul = self._read_list()
            except UIDListError:
                return
            if ul is None or UNKNOWN_DATE not in ul.dates:
                return
            same = ul.uids == columns.uids and ul.bases == columns.bases
            if same:
                dates = list(columns.dates)
            else:
                found = dict(zip(columns.bases, columns.dates, strict=True))
                dates = list(map(found.get, ul.bases, ul.dates))
            if dates == ul.dates:
                return
            ul = ul.copy()
            ul.dates = dates
            self._save(ul, True)
            written = self._list_stat()
        if not same or self._columns is not columns:
            return
        adopted = _Columns(ul.uids, ul.bases, ul.dates, ul.sizes, ul)
        adopted.cur = columns.cur
        adopted.in_new = columns.in_new
        self._columns = adopted
        was = self._uidlist_stat
        self._uidlist = ul
        self._uidlist_stat = written
        signature = self._signature
        if signature is not None and signature[2] == was and written is not None:
            self._signature = (*signature[:2], written, *signature[3:])
            self._publish(self._signature)

    def keywords(self) -> list[str]:
        """The keyword names this folder has letters for."""
        return [n for _, n in sorted(self._keywords.names.items())]

    # Sync with the disk

    def _lock(self) -> FolderLock:
        return FolderLock(os.path.join(self.path, _LOCK_NAME))

    def changed_on_disk(self) -> bool:
        """Whether the folder may have changed since the snapshot (a few
        ``stat`` calls; True when that cannot be told: a change so recent
        that another may follow within the same timestamp tick (the last
        0.1 s on a file system with fine time stamps, else the last two
        seconds; L{_settled}), or the folder gone)."""
        try:
            signature = self._disk_signature()
        except NoSuchFolderError:
            return True
        return signature is None or signature != self._signature

    def _disk_signature(self) -> tuple[object, ...] | None:
        parts: list[object] = []
        before = self._now_ns()
        for sub in ("new", "cur"):
            try:
                st = os.stat(os.path.join(self.path, sub))
            except FileNotFoundError:
                raise NoSuchFolderError(f"folder {self.name!r} is gone") from None
            if not _settled(st.st_mtime_ns, before):
                return None
            parts.append(st.st_mtime_ns)
        for name in (UIDLIST_NAME, "twistedmail-keywords"):
            try:
                st = os.stat(os.path.join(self.path, name))
                parts.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                parts.append(None)
        return tuple(parts)

    def _recent(self, mtime_ns: int) -> bool:
        return abs(self._now_ns() - mtime_ns) < _MTIME_SLACK_NS

    def _now_ns(self) -> int:
        return int(self.store.now() * 1e9)

    def _list_stat(self) -> tuple[int, int, int] | None:
        # The list is replaced by rename (a new inode) or appended to (a
        # new size).
        try:
            st = os.stat(os.path.join(self.path, UIDLIST_NAME))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _scan(self, cached: bool = True) -> dict[str, str]:
        """Base name to file name relative to the folder (``new/<name>`` or
        ``cur/<name>``) for every message file.

        ``new/`` is read before ``cur/`` so a message moving from one to the
        other during the scan is seen at least once (``cur/`` wins when it
        is seen in both).  A directory whose time has not changed since it
        was last listed (and was settled then, L{_settled}) is not listed
        again: a delivery into ``new/`` of a 100,000-message folder lists
        only ``new/``.  One listed again with the same names as last time
        keeps the part made then (compared, not parsed again).

        @param cached: whether unchanged directories may be taken from the
            last listing.
        """
        files: dict[str, str] = {}
        for sub in ("new", "cur"):
            part = self._scan_one(sub, cached)
            if files:
                files.update(part)
            else:
                files = dict(part)
        return files

    def _scan_one(self, sub: str, cached: bool) -> dict[str, str]:
        """One directory's part of L{_scan} (never to be changed)."""
        directory = os.path.join(self.path, sub)
        before = self._now_ns()
        try:
            mtime = os.stat(directory).st_mtime_ns
        except FileNotFoundError:
            raise NoSuchFolderError(f"folder {self.name!r} is gone") from None
        known = self._listed.get(sub)
        if cached and known is not None and known[2] and known[0] == mtime:
            return known[1]
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            raise NoSuchFolderError(f"folder {self.name!r} is gone") from None
        # Hidden files (NFS's .nfs*, editors') and names with line breaks
        # (they would break the UID list) are not messages; one check
        # over all names spares a test per name in the usual case.
        joined = "/".join(names) + "/"
        if "\n" in joined or "\r" in joined or "/." in joined or joined[0] == ".":
            names = [
                n for n in names if n[:1] != "." and "\n" not in n and "\r" not in n
            ]
            joined = "/".join(names) + "/"
        part: dict[str, str] = {}
        if names:
            filenames = list(map((sub + "/").__add__, names))
            if (
                known is not None
                and len(known[1]) == len(filenames)
                and list(known[1].values()) == filenames
            ):
                # The same names as last time (a directory listed again
                # within its timestamp tick, usually unchanged): the same
                # part, compared in C instead of parsed again.  The same
                # object also tells _found that nothing moved.
                part = known[1]
            else:
                # One pass in C: each match is one name, its group the base.
                bases = _BASE.findall(joined)
                part = dict(zip(bases, filenames, strict=True))
        # A directory time too recent may change again within this
        # timestamp tick, unseen: the listing is kept only to be compared.
        self._listed[sub] = (mtime, part, _settled(mtime, before))
        return part

    def _candidate(self) -> UIDList | None:
        """The newest UID list of this folder this process knows (to read
        only what was appended to it since)."""
        mine = self._uidlist if self._uidlist.token else None
        other = self.store._lists.get(self.path)
        if mine is None or (other is not None and other.length > mine.length):
            return other
        return mine

    def _remember(self, ul: UIDList) -> None:
        """Offer a list as read or written (never to be changed again) to
        the folder's other mailboxes in this process."""
        if ul.token:
            self.store._lists[self.path] = ul
            self._list_ref = ul

    def _read_list(self) -> UIDList | None:
        ul = read_uidlist(self.path, self._candidate())
        if ul is not None:
            self._remember(ul)
        return ul

    def _load_locked(self) -> tuple[UIDList, dict[str, int], bool]:
        """Read the UID list under the lock; make one when missing or broken.

        @return: a copy of the list to change, UIDs to import from Dovecot,
            and whether the list must be rewritten.
        """
        try:
            ul = self._read_list()
        except UIDListError as e:
            broken = os.path.join(self.path, UIDLIST_NAME)
            aside = f"{broken}.broken.{int(self.store.now())}.{os.getpid()}"
            log.warn(
                "Unreadable UID list in {path} ({error}); kept as {aside}",
                path=self.path,
                error=str(e),
                aside=aside,
            )
            os.rename(broken, aside)
            ul = None
        if ul is not None:
            return ul.copy(), {}, False
        imported = read_dovecot_uidlist(self.path)
        if imported is not None:
            validity, next_uid, uids = imported
            return UIDList(validity, next_uid), uids, True
        validity = max(1, int(self.store.now()), self._uidlist.uidvalidity + 1)
        return UIDList(validity), {}, True

    def _save(self, ul: UIDList, rewrite: bool) -> None:
        """Write a changed list (under the lock) and remember it."""
        if rewrite:
            write_uidlist(self.path, ul)
        else:
            save_uidlist(self.path, ul)
        self._remember(ul)

    def refresh(self, force: bool = False) -> bool:
        """Bring the snapshot up to date with the disk.

        Cheap when nothing changed (a few ``stat`` calls); otherwise the
        changed directories are listed, the lines appended to the UID list
        are read, and new messages get UIDs (their files are ``stat``-ed
        once, never opened).  The garbage collector is paused meanwhile
        (L{gc_paused}).

        @param force: list the directories again even when they look
            unchanged.
        @return: whether the snapshot changed.
        @raise NoSuchFolderError: when the folder was deleted.
        """
        signature = self._disk_signature()
        if not force and signature is not None:
            if signature == self._signature:
                return False
            shared = self.store._shared.get(self.path)
            if shared is not None and shared.signature == signature:
                return self._adopt(shared)
        with gc_paused():
            changed = self._refresh(signature, force)
        if self._signature is not None:
            self._publish(self._signature)
        return changed

    def _refresh(self, signature: tuple[object, ...] | None, force: bool) -> bool:
        ul: UIDList | None = None
        if self._uidlist_stat is not None and self._uidlist_stat == self._list_stat():
            ul = self._uidlist  # unchanged since we read or wrote it
        else:
            before = self._list_stat()
            try:
                ul = self._read_list()
            except UIDListError:
                pass
            self._uidlist_stat = before if before == self._list_stat() else None
        if self._uidlist_stat is not None and self._recent(self._uidlist_stat[1]):
            # An inode number reused within one timestamp tick could fool us.
            self._uidlist_stat = None
        found: list[str | None] | None = None
        # Without a list, _sync lists the folder under the lock (a folder
        # met for the first time is listed once, not twice).
        files = {} if ul is None else self._scan(cached=not force)
        if ul is not None and len(ul.bases) == len(files):
            # Every listed message on disk, and as many files: the same set.
            found = self._found(ul, files)
            if None in found:
                found = None
        if ul is None or found is None:
            ul, files = self._sync(files)
            found = list(map(files.get, ul.bases))
            if signature is not None and self._uidlist_stat is not None:
                # The list as read or written under the lock (by a first
                # indexing, say): the snapshot is of that list, so the
                # signature taken before must not call it a change.
                signature = (*signature[:2], self._uidlist_stat, *signature[3:])
        keywords = KeywordMap.load(self.path)
        if keywords.names != self._keywords.names:
            self._suffixes = {}
            self._infos = None
            self._generation += 1
        if ul.uidvalidity != self._uidlist.uidvalidity:
            self._generation += 1
        self._keywords = keywords
        self._uidlist = ul
        self._signature = signature
        return self._rebuild(ul, found)

    def _found(self, ul: UIDList, files: dict[str, str]) -> list[str | None]:
        """Each listed message's file name (None: not on disk); only the
        rows appended since the snapshot are looked up when the rest
        cannot have changed (same list, ``cur/`` not listed again, and
        the snapshot's messages in ``new/`` still there)."""
        old = self._columns
        n = len(old.uids)
        if (
            n
            and old.source is not None
            and old.source.token == ul.token
            and old.source.inode == ul.inode
            and len(ul.uids) >= n
            and old.uids is not ul.uids
            and ul.uids[n - 1] == old.uids[-1]
            and len(old.source.uids) == n
            and self._listed.get("cur") is not None
            and self._listed["cur"][1] is old.cur
        ):
            fresh = list(map(files.get, itertools.islice(ul.bases, n, None)))
            in_new = [
                i for i in old.in_new if files.get(old.bases[i]) == self._files[i]
            ]
            if len(in_new) == len(old.in_new):
                return [*self._files, *fresh]
        return list(map(files.get, ul.bases))

    def _publish(self, signature: tuple[object, ...]) -> None:
        """Offer this snapshot to other mailboxes of the folder in this
        process (L{refresh} takes it instead of listing the folder)."""
        shared = _Shared(
            signature,
            self._uidlist,
            self._uidlist_stat,
            self._keywords,
            self._columns,
            list(self._files),
        )
        self._shared = shared
        self.store._shared[self.path] = shared

    def _adopt(self, shared: _Shared) -> bool:
        """Take another mailbox's snapshot of the same disk state."""
        changed = (
            shared.columns.uids != self._columns.uids
            or shared.files != self._files
            or shared.uidlist.uidvalidity != self._uidlist.uidvalidity
        )
        self._uidlist = shared.uidlist
        self._uidlist_stat = shared.uidlist_stat
        if shared.keywords.names != self._keywords.names:
            self._suffixes = {}
            changed = True
        self._keywords = shared.keywords
        self._signature = shared.signature
        self._columns = shared.columns
        self._files = list(shared.files)
        self._infos = None
        self._shared = shared
        if changed:
            self._generation += 1
        return changed

    def _sync(self, files: dict[str, str]) -> tuple[UIDList, dict[str, str]]:
        with self._lock():
            ul, imported, dirty = self._load_locked()
            files = self._scan()
            # Set operations (in C): a folder may hold 100,000 messages.
            listed = set(ul.bases)
            gone = list(listed - files.keys())
            if gone:
                # A rename between our two listdir calls can hide a file once.
                again = self._scan(cached=False)
                for b, where in again.items():
                    files.setdefault(b, where)
                gone = [b for b in gone if b not in files]
            fresh = []
            vanished: list[str] = []
            added = None if imported else self._fresh_columns(files, listed)
            if added is not None and added[0]:
                bases, dates, sizes = added
                first = ul.next_uid
                ul.extend_columns(
                    list(range(first, first + len(bases))), dates, sizes, bases
                )
            for base in files.keys() - listed if added is None else ():
                filename = files[base]
                try:
                    st = os.stat(os.path.join(self.path, filename))
                except FileNotFoundError:
                    vanished.append(base)
                    continue
                size = size_from_base(base)
                date = int(st.st_mtime)
                fresh.append(
                    (
                        delivery_order(base, date),
                        base,
                        date,
                        st.st_size if size is None else size,
                    )
                )
            # UIDs in delivery order (the time in the name, read as numbers).
            fresh.sort()
            taken = set(ul.uids) if imported else set()
            for _, base, date, size in fresh:
                uid = imported.get(base)
                if uid is not None and uid < ul.next_uid and uid not in taken:
                    # Dovecot's UID, kept so that clients need not resync.
                    ul.insert(UIDEntry(uid, date, size, base))
                    taken.add(uid)
                else:
                    ul.add_new(base, date, size)
            ul.remove(gone)
            if dirty or fresh or (added and added[0]) or gone:
                self._save(ul, dirty)
            self._uidlist_stat = self._list_stat()
        if gone:
            self._cache.forget(gone)
        if dirty:
            # A new list: entries of messages expunged meanwhile are orphans.
            self._cache.retain(ul.bases)
        for base in vanished:
            del files[base]
        return ul, files

    def _fresh_columns(
        self, files: dict[str, str], listed: set[str]
    ) -> tuple[list[str], list[int], list[int]] | None:
        """The messages on disk that the UID list lacks, in delivery order,
        as columns: base names, dates, sizes; None when a file vanished
        meanwhile or few are new (the caller then goes file by file).

        What the file-by-file way gives, made by passes in C for 100,000
        messages, but with the internal date left unknown
        (L{UNKNOWN_DATE}: L{with_dates} takes it when it is first needed):
        each size from ``,S=`` and the order of L{delivery_order} from the
        name.  Only a file whose name lacks either is ``stat``-ed (relative
        to the folder's descriptor); its date is then known too.  This is
        for a folder's first indexing and for many new messages at once:
        fewer than L{_LAZY_DATES_FROM} new to a folder with a UID list (a
        delivery) give None, and the caller ``stat``s them, so that their
        dates are known and the list is appended to, never rewritten for
        them later.
        """
        if listed and len(files) - len(listed) < _LAZY_DATES_FROM:
            # At most that many new (files also holds the listed ones).
            return None
        # Sorted as text first: names of one form then sort in delivery
        # order already, and the sort by key below is not needed.
        bases = sorted(files.keys() - listed if listed else files)
        if not bases:
            return [], [], []
        joined = "\n".join(bases)
        common = _COMMON.findall(joined)
        if len(common) == len(bases):
            # Every name has the usual form: one expression gives it all.
            size_texts = list(map(_fourth, common))
            orders = common
        else:
            size_texts = _SIZES.findall(joined)
            orders = _ORDERS.findall(joined)
        del common
        if len(size_texts) != len(bases) or len(orders) != len(bases):
            return None  # cannot happen: one match per line
        # Columns by item getters: zip(*rows) over 100,000 rows is slower.
        secs = list(map(_first, orders))
        usecs = list(map(_second, orders))
        counters = list(map(_third, orders))
        del orders
        dates = [UNKNOWN_DATE] * len(bases)
        if all(size_texts) and all(secs):
            sizes = list(map(int, size_texts))
            firsts = list(map(int, secs))
        else:
            stated = self._stat_unnamed(bases, files, size_texts, secs, dates)
            if stated is None:
                return None
            sizes, firsts = stated
        # The key of delivery_order but for the base name: the names are
        # in text order, so when the keys are too, so is the whole key.
        keys = list(zip(firsts, _numbers(usecs), _numbers(counters), strict=True))
        if all(map(operator.le, keys, itertools.islice(keys, 1, None))):
            return bases, dates, sizes
        # Base names are unique: the sort never compares past them.
        rows = sorted(zip(keys, bases, dates, sizes, strict=True))
        return (
            list(map(_second, rows)),
            list(map(_third, rows)),
            list(map(_fourth, rows)),
        )

    def _stat_unnamed(
        self,
        bases: list[str],
        files: dict[str, str],
        size_texts: list[str],
        secs: Sequence[str],
        dates: list[int],
    ) -> tuple[list[int], list[int]] | None:
        """Sizes and delivery seconds for L{_fresh_columns} when some names
        lack them: those files are ``stat``-ed (their dates are set in
        C{dates}); None when one vanished."""
        sizes: list[int] = []
        firsts: list[int] = []
        folder = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, (base, size, sec) in enumerate(
                zip(bases, size_texts, secs, strict=True)
            ):
                if size and sec:
                    sizes.append(int(size))
                    firsts.append(int(sec))
                    continue
                st = os.stat(files[base], dir_fd=folder)
                dates[i] = int(st.st_mtime)
                sizes.append(int(size) if size else st.st_size)
                firsts.append(int(sec) if sec else dates[i])
        except FileNotFoundError:
            return None
        finally:
            os.close(folder)
        return sizes, firsts

    def _rebuild(self, ul: UIDList, found: list[str | None]) -> bool:
        """Make the snapshot from the UID list and each listed message's
        file name (None: not on disk)."""
        # Columns shared with the UID list unless messages are missing.
        if None in found:
            keep = [f is not None for f in found]
            columns = _Columns(
                list(itertools.compress(ul.uids, keep)),
                list(itertools.compress(ul.bases, keep)),
                list(itertools.compress(ul.dates, keep)),
                list(itertools.compress(ul.sizes, keep)),
                None,
            )
            filenames = cast(list[str], [f for f in found if f is not None])
        else:
            columns = _Columns(ul.uids, ul.bases, ul.dates, ul.sizes, ul)
            filenames = cast(list[str], found)
        listed = self._listed.get("cur")
        columns.cur = None if listed is None else listed[1]
        columns.in_new = _in_new(filenames)
        changed = columns.uids != self._columns.uids or filenames != self._files
        # Dates found since (L{with_dates}) are no change a client sees.
        dated = columns.dates is not self._columns.dates and (
            columns.dates != self._columns.dates
        )
        self._columns = columns
        self._files = filenames
        if changed or dated:
            self._infos = None
            self._generation += 1
        return changed

    # Reading

    def get_file(self, uid: int) -> str:
        """The absolute path of a message's file (it may be renamed by a
        flag change at any time; prefer L{read})."""
        return os.path.join(self.path, self.get(uid).filename)

    def read(self, uid: int) -> bytes:
        """A message's bytes.

        @raise NoSuchMessageError: when it is not in the snapshot or its
            file is gone.
        """
        info = self.get(uid)
        try:
            with self.store.opener(os.path.join(self.path, info.filename)) as f:
                return f.read()
        except FileNotFoundError:
            pass
        # Renamed by another session since our snapshot: find it again.
        where = find_delivered(self.path, info.base)
        if where is None:
            raise NoSuchMessageError(f"message with UID {uid} is gone")
        self._replace(info._replace(filename=where))
        with self.store.opener(os.path.join(self.path, where)) as f:
            return f.read()

    def cache_get(self, base: str, key: str) -> bytes | None:
        """A value cached for a message (L{cache.MessageCache}), or None."""
        return self._cache.get(base, key)

    def cache_get_many(self, bases: Sequence[str], key: str) -> dict[str, bytes]:
        """The values cached for many messages (those that have one), by
        base name, read in a few queries."""
        return self._cache.get_many(bases, key)

    def cache_put(
        self,
        base: str,
        key: str,
        value: bytes,
        fields: Mapping[str, bytes | None] | None = None,
    ) -> None:
        """Cache a value for a message across restarts, and index its
        C{fields} when given (L{cache.MessageCache.put})."""
        self._cache.put(base, key, value, fields)

    def cache_put_fields(
        self, entries: Sequence[tuple[str, Mapping[str, bytes | None]]]
    ) -> None:
        """Index the fields of many messages (L{cache.MessageCache.put_fields})."""
        self._cache.put_fields(entries)

    def cache_match(
        self, field: str, needle: bytes, bases: Sequence[str]
    ) -> tuple[set[str], list[str]]:
        """The indexed messages whose field contains C{needle}, and those
        of C{bases} not indexed (L{cache.MessageCache.match})."""
        return self._cache.match(field, needle, bases)

    # Changing

    def _replace(self, info: MessageInfo) -> None:
        i = self._position(info.uid)
        if i is None:
            return
        self._files[i] = info.filename
        if self._infos is not None:
            self._infos[i] = info
        self._changed_here()

    def _changed_here(self) -> None:
        """The snapshot's file names were changed by this mailbox: the
        last listings no longer match them, even if the folder comes to
        hold the same names again (another program undoing the change):
        _found must not take a listing's part for the snapshot's."""
        self._listed.clear()
        self._generation += 1

    def _letters(self, keywords: Iterable[str]) -> frozenset[str]:
        keywords = list(keywords)
        letters = [self._keywords.letter_of(k) for k in keywords]
        if all(letters):
            return frozenset(cast(list[str], letters))
        with self._lock():
            kmap = KeywordMap.load(self.path)
            letters = [kmap.add(k) for k in keywords]
            kmap.save(self.path)
        self._keywords = kmap
        self._suffixes = {}
        self._generation += 1
        return frozenset(cast(list[str], letters))

    def set_flags(
        self, uid: int, flags: Iterable[str], keywords: Iterable[str] = ()
    ) -> MessageInfo:
        """Replace a message's flags and keywords (its UID stays).

        @param flags: Maildir letters (L{names.Flag}); see
            L{names.IMAP_SYSTEM_FLAGS} for IMAP's names.
        @param keywords: keyword names; letters are given as needed.
        @return: the updated message.
        @raise NoSuchMessageError: when the message is gone.
        @raise MaildirError: for an unknown flag letter or too many keywords.
        """
        info = self._set_flags(uid, flags, keywords)
        self.store.notify(self.maildir, self.name)
        return info

    def set_flags_many(
        self, changes: Iterable[tuple[int, Iterable[str], Iterable[str]]]
    ) -> list[MessageInfo]:
        """L{set_flags} for many messages, with one change notification at
        the end (a STORE on 100,000 messages would otherwise wake every
        listener 100,000 times).  Messages that are gone are left out.

        @param changes: (UID, flag letters, keyword names) each.
        @return: the updated messages, in the order given.
        @raise MaildirError: for an unknown flag letter or too many
            keywords (the changes made before it stay, and are notified).
        """
        done: list[MessageInfo] = []
        try:
            for uid, flags, keywords in changes:
                try:
                    done.append(self._set_flags(uid, flags, keywords))
                except NoSuchMessageError:
                    continue
        finally:
            if done:
                self.store.notify(self.maildir, self.name)
        return done

    def _set_flags(
        self, uid: int, flags: Iterable[str], keywords: Iterable[str]
    ) -> MessageInfo:
        info = self.get(uid)
        flags = frozenset(flags)
        if not flags <= frozenset(FLAG_LETTERS):
            raise MaildirError(f"unknown flags {''.join(sorted(flags))!r}")
        letters = self._letters(keywords)
        filename = "cur/" + format_filename(info.base, flags, letters)
        if filename != info.filename:
            try:
                os.rename(
                    os.path.join(self.path, info.filename),
                    os.path.join(self.path, filename),
                )
            except FileNotFoundError:
                where = find_delivered(self.path, info.base)
                if where is None:
                    raise NoSuchMessageError(
                        f"message with UID {uid} is gone"
                    ) from None
                os.rename(
                    os.path.join(self.path, where), os.path.join(self.path, filename)
                )
        names = frozenset(
            n for n in (self._keywords.name_of(c) for c in letters) if n is not None
        )
        info = info._replace(filename=filename, flags=flags, keywords=names)
        self._replace(info)
        return info

    def _assign(self, added: list[tuple[str, int, int]]) -> list[int]:
        """Give new messages UIDs in this order; appended to the list.

        The files are on disk before the lock is taken, so another process
        listing the folder meanwhile may have given them UIDs already:
        those are kept (a message never gets two).
        """
        with self._lock():
            ul, imported, dirty = self._load_locked()
            if {base for base, _, _ in added}.isdisjoint(ul.bases):
                uids = [ul.add_new(b, date, size).uid for b, date, size in added]
            else:
                uids = [ul.assign(b, date, size).uid for b, date, size in added]
            if dirty or len(ul.uids) != ul.stored:
                self._save(ul, dirty)
        return uids

    def add(
        self,
        message: bytes,
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        internal_date: float | None = None,
        *,
        recent: bool = False,
    ) -> int:
        """Store a message (IMAP APPEND) in ``cur/`` with these flags.

        @param internal_date: POSIX seconds; now when None.
        @param recent: store it in ``new/`` (with its flags in the name)
            instead, so that the next session to look claims it as
            ``\\Recent`` (L{take_recent}; RFC 3501 §2.3.2, §6.3.11).
        @return: its UID (it appears in L{messages} at the next refresh).
        """
        flags = frozenset(flags)
        if not flags <= frozenset(FLAG_LETTERS):
            raise MaildirError(f"unknown flags {''.join(sorted(flags))!r}")
        letters = self._letters(keywords)
        now = self.store.now()
        date = now if internal_date is None else internal_date
        base = self.store.new_base(len(message), now=now)
        tmp = os.path.join(self.path, "tmp", base)
        write_message(tmp, message, date)
        sub = "new" if recent else "cur"
        try:
            os.link(
                tmp,
                os.path.join(self.path, sub, format_filename(base, flags, letters)),
            )
        finally:
            os.unlink(tmp)
        fsync_directory(os.path.join(self.path, sub))
        [uid] = self._assign([(base, int(date), len(message))])
        self.store.notify(self.maildir, self.name)
        return uid

    def copy(
        self, uids: Iterable[int], target: Mailbox, *, recent: bool = False
    ) -> dict[int, int]:
        """Copy messages into another folder (hard links where possible),
        with their flags, keywords (mapped to the target's letters) and
        internal dates, in UID order.

        @param recent: put the copies in the target's ``new/`` (flags in
            their names), so that the next session to look claims them as
            ``\\Recent`` (IMAP COPY and MOVE, RFC 3501 §6.4.7).

        @return: source UID to new UID (IMAP COPYUID), for the messages that
            were still there.
        """
        added: list[tuple[int, str, int, int]] = []
        sub = "new" if recent else "cur"
        positions = (self._position(uid) for uid in sorted(set(uids)))
        chosen = [self._info_at(i) for i in positions if i is not None]
        for info in self.with_dates(chosen):
            uid = info.uid
            letters = target._letters(info.keywords)
            base = self.store.new_base(info.size)
            dst = os.path.join(
                target.path, sub, format_filename(base, info.flags, letters)
            )
            src = os.path.join(self.path, info.filename)
            try:
                try:
                    os.link(src, dst)
                except FileNotFoundError:
                    where = find_delivered(self.path, info.base)
                    if where is None:
                        continue
                    os.link(os.path.join(self.path, where), dst)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                tmp = os.path.join(target.path, "tmp", base)
                write_message(tmp, self.read(uid), info.internal_date)
                try:
                    os.link(tmp, dst)
                finally:
                    os.unlink(tmp)
            added.append((uid, base, info.internal_date, info.size))
        if not added:
            return {}
        fsync_directory(os.path.join(target.path, sub))
        new_uids = target._assign([(b, d, s) for _, b, d, s in added])
        self.store.notify(target.maildir, target.name)
        return {old: new for (old, _, _, _), new in zip(added, new_uids, strict=True)}

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove messages for good.

        @return: the UIDs removed (those in the snapshot), ascending.
        """
        gone: list[MessageInfo] = []
        for uid in sorted(set(uids)):
            i = self._position(uid)
            if i is None:
                continue
            info = self._info_at(i)
            try:
                os.unlink(os.path.join(self.path, info.filename))
            except FileNotFoundError:
                where = find_delivered(self.path, info.base)
                if where is not None:
                    os.unlink(os.path.join(self.path, where))
            gone.append(info)
        if not gone:
            return []
        bases = [i.base for i in gone]
        with self._lock():
            ul, imported, dirty = self._load_locked()
            ul.remove(bases)
            self._save(ul, True)
        self._cache.forget(bases)
        removed = {i.uid for i in gone}
        c = self._columns
        keep = [u not in removed for u in c.uids]
        self._columns = _Columns(
            list(itertools.compress(c.uids, keep)),
            list(itertools.compress(c.bases, keep)),
            list(itertools.compress(c.dates, keep)),
            list(itertools.compress(c.sizes, keep)),
            None,
        )
        self._files = list(itertools.compress(self._files, keep))
        if self._infos is not None:
            self._infos = list(itertools.compress(self._infos, keep))
        self._changed_here()
        self.store.notify(self.maildir, self.name)
        return sorted(removed)

    def take_recent(self) -> list[int]:
        """Claim the snapshot's messages still in ``new/`` by moving them to
        ``cur/``: the caller is the one session that reports them as
        ``\\Recent`` (RFC 3501 §2.3.2).  A message another session moved
        first is not returned.

        @return: the UIDs claimed, ascending.
        """
        taken = []
        for i in _in_new(self._files):
            info = self._info_at(i)
            name = info.filename[4:]
            if not name[len(info.base) :].startswith(":2,"):
                name = format_filename(info.base, info.flags)
            # Others (Dovecot) may have flagged it in new/: its info, with
            # keyword letters, goes along unchanged.
            filename = "cur/" + name
            try:
                os.rename(
                    os.path.join(self.path, info.filename),
                    os.path.join(self.path, filename),
                )
            except FileNotFoundError:
                continue
            self._replace(info._replace(filename=filename))
            taken.append(info.uid)
        return taken

    def close(self) -> None:
        """Release what the mailbox holds open (the cache database)."""
        self._shared = None
        self._list_ref = None
        self._cache.close()
