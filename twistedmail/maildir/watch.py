# -*- test-case-name: tests.test_maildir_watch -*-
"""Noticing changes that other programs make to a Maildir folder (the
Maildir step of the flow: how IMAP sessions learn of mail that another MTA,
a second twistedmail or a user's MUA put into or took out of a folder).

A L{FolderWatcher} watches a folder's ``new/`` and ``cur/`` directories and
calls back, in the reactor thread, when either may have changed: a message
arrived, was removed, or was renamed (flags).  It says only *that* a folder
changed; the listener then refreshes its L{Mailbox} snapshot, which is cheap
(L{Mailbox.refresh} compares directory times before it lists anything).

Two kinds:

- L{InotifyWatcher} (Linux): one inotify descriptor for every watched
  folder, through C{twisted.internet.inotify}.  Events of one read are
  coalesced into one call per folder.  Folders it cannot watch (no inotify,
  out of watches) fall back to a L{DirectoryPoller}.
- L{DirectoryPoller}: every C{interval} seconds, ``stat`` of ``new/`` and
  ``cur/`` of each watched folder; a call when their times changed.  This is
  also the choice for folders on NFS shared by several hosts (inotify only
  sees changes made through the local kernel).

Both start timers or descriptors only while something is watched: the
function that L{FolderWatcher.watch} returns stops the watch, and the last
stop releases the descriptor or the timer.  L{make_watcher} picks one.

Caveats: inotify queue overflows (``IN_Q_OVERFLOW``) are not reported by
C{twisted.internet.inotify}, so a flood of changes could be missed until the
next event on that folder; the inotify watcher therefore also calls every
listener every C{sweep_interval} seconds (default a minute: a refresh that
finds nothing changed costs a few ``stat`` calls), which bounds the delay;
C{twisted.internet.inotify} closes the whole descriptor when a watched
directory is deleted, so the watcher then opens a new one, watches every
folder again and calls every listener (events may have been lost).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Literal, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

__all__ = [
    "DirectoryPoller",
    "FolderWatcher",
    "InotifyWatcher",
    "WatchMode",
    "make_watcher",
]

WatchMode = Literal["auto", "poll", "off"]

#: The directories of a folder that hold messages.
_SUBDIRS = ("new", "cur")
# A directory time this close to the present may change again within the
# same file system timestamp tick (1 s on some file systems), unseen.
_SLACK_NS = 2_000_000_000

try:
    from twisted.internet import inotify as _inotify
except ImportError:  # not Linux, or a C library without inotify
    _inotify = None  # type: ignore[assignment]

_MASK = (
    0
    if _inotify is None
    else _inotify.IN_CREATE
    | _inotify.IN_MOVED_TO
    | _inotify.IN_MOVED_FROM
    | _inotify.IN_DELETE
)

log = Logger()


class FolderWatcher(Protocol):
    """Something that tells when a folder's messages may have changed."""

    def watch(self, folder: str, changed: Callable[[], None]) -> Callable[[], None]:
        """Start watching a folder.

        @param folder: the folder's directory (the Maildir, or a ``.Name``
            in it), absolute.
        @param changed: called with no arguments, in the reactor thread,
            after ``new/`` or ``cur/`` changed (perhaps more than once per
            change; never raising into the watcher: errors are logged).
        @return: a function that stops this watch (calling it twice is
            harmless).
        """


def _call(changed: Callable[[], None]) -> None:
    try:
        changed()
    except Exception:
        log.failure("Maildir folder watcher callback failed")


class _Watches:
    """Callbacks per folder, with a stop function for each watch."""

    def __init__(self) -> None:
        self.by_folder: dict[str, list[Callable[[], None]]] = {}

    def add(
        self, folder: str, changed: Callable[[], None], emptied: Callable[[str], None]
    ) -> Callable[[], None]:
        callbacks = self.by_folder.setdefault(folder, [])
        # A wrapper, so that the same callback watched twice stops twice.
        entry = _Entry(changed)
        callbacks.append(entry)

        def stop() -> None:
            current = self.by_folder.get(folder)
            if current is None or entry not in current:
                return
            current.remove(entry)
            if not current:
                del self.by_folder[folder]
                emptied(folder)

        return stop

    def fire(self, folder: str) -> None:
        for entry in list(self.by_folder.get(folder, ())):
            _call(entry)


class _Entry:
    """One watch's callback (compared by identity)."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.changed = changed

    def __call__(self) -> None:
        self.changed()


class DirectoryPoller:
    """Watch folders by looking at the times of their ``new/`` and ``cur/``
    every C{interval} seconds (one timer for all folders, running only while
    some folder is watched).

    A directory whose time is within two seconds of the clock's present may
    still change unseen within the same timestamp tick, so its folder is
    reported once more at the next look after that.

    @param clock: the reactor's time (tests pass a C{Clock}).
    @param interval: seconds between looks.
    """

    def __init__(self, clock: IReactorTime, interval: float = 1.0) -> None:
        self._clock = clock
        self.interval = interval
        self._watches = _Watches()
        self._seen: dict[str, tuple[object, ...] | None] = {}
        self._loop: LoopingCall | None = None

    @property
    def watching(self) -> list[str]:
        """The folders being watched."""
        return list(self._watches.by_folder)

    def watch(self, folder: str, changed: Callable[[], None]) -> Callable[[], None]:
        """See L{FolderWatcher.watch}."""
        if folder not in self._seen:
            self._seen[folder] = self._signature(folder)
        stop = self._watches.add(folder, changed, self._emptied)
        if self._loop is None:
            loop = self._loop = LoopingCall(self.poll)
            loop.clock = self._clock
            loop.start(self.interval, now=False).addErrback(self._loop_failed)
        return stop

    def _emptied(self, folder: str) -> None:
        self._seen.pop(folder, None)
        if not self._watches.by_folder and self._loop is not None:
            loop, self._loop = self._loop, None
            loop.stop()

    def _loop_failed(self, failure: Failure) -> None:
        log.failure("Maildir folder poller failed", failure)

    def _signature(self, folder: str) -> tuple[object, ...] | None:
        """The times of ``new/`` and ``cur/``; None while they may still
        change within their timestamp tick (so the next look reports)."""
        now_ns = int(self._clock.seconds() * 1e9)
        parts: list[object] = []
        for sub in _SUBDIRS:
            try:
                st = os.stat(os.path.join(folder, sub))
            except OSError:
                parts.append(None)
                continue
            if abs(now_ns - st.st_mtime_ns) < _SLACK_NS:
                return None
            parts.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(parts)

    def poll(self) -> None:
        """Look at every watched folder once (the timer calls this)."""
        for folder in list(self._watches.by_folder):
            signature = self._signature(folder)
            before = self._seen.get(folder)
            if folder not in self._seen:
                continue  # stopped by an earlier callback of this look
            self._seen[folder] = signature
            if signature is None or signature != before:
                self._watches.fire(folder)


class InotifyWatcher:
    """Watch folders with inotify (Linux): one descriptor for all folders,
    opened at the first watch and closed after the last.

    @param reactor: the reactor (it reads the descriptor).
    @param fallback: watches the folders inotify cannot (no inotify on this
        system, the per-user watch limit reached, a folder that vanished).
    @param sweep_interval: seconds between the calls of every listener that
        cover events inotify dropped (queue overflow).
    @param clock: the clock of that sweep (the reactor when None).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        fallback: FolderWatcher,
        sweep_interval: float = 60.0,
        clock: IReactorTime | None = None,
    ) -> None:
        self._reactor = reactor
        self._fallback = fallback
        self._sweep_interval = sweep_interval
        self._clock = reactor if clock is None else clock
        self._sweeper: LoopingCall | None = None
        self._usable = _inotify is not None
        self._inotify: Any = None
        self._watches = _Watches()
        # Watched directory (bytes path) to its folder.
        self._dirs: dict[bytes, str] = {}
        self._pending: set[str] = set()
        self._fallback_stops: dict[str, Callable[[], None]] = {}

    @property
    def available(self) -> bool:
        """Whether inotify can be used on this system."""
        return self._usable

    @property
    def watching(self) -> list[str]:
        """The folders being watched through inotify."""
        return sorted(set(self._dirs.values()))

    def watch(self, folder: str, changed: Callable[[], None]) -> Callable[[], None]:
        """See L{FolderWatcher.watch}."""
        first = folder not in self._watches.by_folder
        stop = self._watches.add(folder, changed, self._emptied)
        if first:
            self._start(folder)
        return stop

    def _start(self, folder: str) -> None:
        if not self._add(folder):
            self._fallback_stops[folder] = self._fallback.watch(
                folder, functools.partial(self._watches.fire, folder)
            )

    def _open(self) -> Any:
        if self._inotify is not None or not self._usable:
            return self._inotify
        assert _inotify is not None
        try:
            descriptor = _inotify.INotify(reactor=self._reactor)
        except (_inotify.INotifyError, OSError) as e:
            log.warn("inotify is not usable ({error}); polling", error=str(e))
            self._usable = False
            return None
        descriptor.startReading()
        self._inotify = descriptor
        sweeper = self._sweeper = LoopingCall(self._sweep)
        sweeper.clock = self._clock
        sweeper.start(self._sweep_interval, now=False)
        return descriptor

    def _sweep(self) -> None:
        """Call every listener of the folders inotify watches, in case
        their events were dropped."""
        for folder in sorted(set(self._dirs.values())):
            self._watches.fire(folder)

    def _add(self, folder: str) -> bool:
        """Watch a folder's directories through inotify; False when that
        cannot be done."""
        descriptor = self._open()
        if descriptor is None:
            return False
        assert _inotify is not None
        added = []
        try:
            for sub in _SUBDIRS:
                path = FilePath(os.path.join(folder, sub).encode())
                descriptor.watch(path, _MASK, callbacks=[self._event])
                added.append(path)
                self._dirs[path.path] = folder
        except (_inotify.INotifyError, OSError) as e:
            log.warn(
                "inotify cannot watch {folder} ({error}); polling it",
                folder=folder,
                error=str(e),
            )
            for path in added:
                self._forget(path)
            if not self._dirs:
                self._close()
            return False
        return True

    def _forget(self, path: FilePath[bytes]) -> None:
        self._dirs.pop(path.path, None)
        descriptor = self._inotify
        if descriptor is not None:
            try:
                descriptor.ignore(path)
            except KeyError:
                pass

    def _emptied(self, folder: str) -> None:
        self._pending.discard(folder)
        stop = self._fallback_stops.pop(folder, None)
        if stop is not None:
            stop()
            return
        for sub in _SUBDIRS:
            self._forget(FilePath(os.path.join(folder, sub).encode()))
        if not self._dirs:
            self._close()

    def _close(self) -> None:
        descriptor, self._inotify = self._inotify, None
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper.running:
            sweeper.stop()
        self._dirs.clear()
        if descriptor is not None:
            descriptor.loseConnection()

    def _event(self, ignored: object, path: FilePath[bytes], mask: int) -> None:
        assert _inotify is not None
        if mask & _inotify.IN_DELETE_SELF:
            # twisted.internet.inotify closes the whole descriptor when a
            # watched directory is deleted (and so drops every watch):
            # start over on a new one.
            folder = self._dirs.get(path.path)
            self._close()
            self._reactor.callLater(0, self._rewatch, folder)
            return
        folder = self._dirs.get(path.path) or self._dirs.get(path.dirname())
        if folder is None or folder in self._pending:
            return
        # One call per folder for everything read at once.
        self._pending.add(folder)
        self._reactor.callLater(0, self._fire, folder)

    def _fire(self, folder: str) -> None:
        if folder in self._pending:
            self._pending.discard(folder)
            self._watches.fire(folder)

    def _rewatch(self, deleted: str | None) -> None:
        """Watch every folder again on a new descriptor and tell every
        listener: what happened since the old one closed is unknown."""
        folders = [f for f in self._watches.by_folder if f not in self._fallback_stops]
        for folder in folders:
            if folder == deleted or not self._add(folder):
                self._fallback_stops[folder] = self._fallback.watch(
                    folder, functools.partial(self._watches.fire, folder)
                )
            self._watches.fire(folder)


def make_watcher(
    reactor: IReactorTime, mode: WatchMode = "auto", interval: float = 1.0
) -> FolderWatcher | None:
    """The watcher for a setting.

    @param mode: ``auto``: inotify where the system has it, else polling;
        ``poll``: polling only (folders on NFS shared by several hosts);
        ``off``: none (the store then only knows its own changes).
    @param interval: the polling interval in seconds.
    """
    if mode == "off":
        return None
    poller = DirectoryPoller(reactor, interval)
    if mode == "poll":
        return poller
    watcher = InotifyWatcher(reactor, poller)
    return watcher if watcher.available else poller
