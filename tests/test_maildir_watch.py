"""Tests for L{twistedmail.maildir.watch}: changes made to a folder by other
programs reach the store's listeners, by inotify or by polling, and watches
end with their last listener."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.maildir_helpers import make_store, write_file
from twistedmail.config import MaildirSettings, ServerSettings, Settings
from twistedmail.maildir.store import MaildirStore
from twistedmail.maildir.watch import (
    DirectoryPoller,
    InotifyWatcher,
    make_watcher,
)
from twistedmail.service import makeService

#: Directory times far from any clock used here, so no look is "too soon".
OLD = 1_600_000_000


def make_folder(root: str) -> str:
    """An empty Maildir folder (cur, new, tmp) with old directory times."""
    folder = os.path.abspath(root)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(folder, sub))
    age(folder)
    return folder


def age(folder: str, when: float = OLD) -> None:
    """Set the times of a folder's cur/ and new/ (a change by another
    program moves them on; this puts them back in the past)."""
    for sub in ("cur", "new"):
        os.utime(os.path.join(folder, sub), (when, when))


def deliver_outside(folder: str, name: str, data: bytes = b"m") -> None:
    """What another MTA does: write in tmp/, rename into new/ (plain system
    calls, nothing of ours)."""
    tmp = os.path.join(folder, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(folder, "new", name))


class FakeWatcher:
    """A watcher that records its watches and fires on demand."""

    def __init__(self) -> None:
        self.watches: dict[str, list[Callable[[], None]]] = {}
        self.stopped: list[str] = []

    def watch(self, folder: str, changed: Callable[[], None]) -> Callable[[], None]:
        """Record the watch; the stop function records the stop."""
        self.watches.setdefault(folder, []).append(changed)

        def stop() -> None:
            self.watches[folder].remove(changed)
            if not self.watches[folder]:
                del self.watches[folder]
            self.stopped.append(folder)

        return stop

    def change(self, folder: str) -> None:
        """Pretend another program changed the folder."""
        for changed in list(self.watches.get(folder, [])):
            changed()


class StoreWatchTests(SynchronousTestCase):
    """The store watches folders while they have listeners."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        self.watcher = FakeWatcher()
        self.store = MaildirStore(
            self.root,
            "mx.example.test",
            self.clock,
            make_store(self.root).run_in_thread,
            watcher=self.watcher,
        )
        self.path = os.path.join(self.root, "alice")
        self.store.open_mailbox(self.path)
        self.store.create_folder(self.path, "Sent")

    def test_one_watch_per_folder(self) -> None:
        """The first listener of a folder starts one watch; more listeners
        share it; the last one leaving stops it."""
        calls: list[str] = []
        first = self.store.subscribe(self.path, "INBOX", lambda: calls.append("a"))
        second = self.store.subscribe(self.path, "inbox", lambda: calls.append("b"))
        self.assertEqual(list(self.watcher.watches), [self.path])
        self.assertEqual(self.store.watched, [self.path])
        self.watcher.change(self.path)
        self.assertEqual(calls, ["a", "b"])
        first()
        first()
        self.assertEqual(self.watcher.stopped, [])
        second()
        self.assertEqual(self.watcher.stopped, [self.path])
        self.assertEqual(self.watcher.watches, {})
        self.assertEqual(self.store.watched, [])

    def test_only_that_folder(self) -> None:
        """A change in one folder reaches only that folder's listeners."""
        calls: list[str] = []
        self.store.subscribe(self.path, "INBOX", lambda: calls.append("inbox"))
        self.store.subscribe(self.path, "Sent", lambda: calls.append("sent"))
        sent = os.path.join(self.path, ".Sent")
        self.assertEqual(sorted(self.watcher.watches), [self.path, sent])
        self.watcher.change(sent)
        self.assertEqual(calls, ["sent"])

    def test_listener_error_logged(self) -> None:
        """A listener that raises is logged; the others still hear."""
        calls: list[str] = []

        def broken() -> None:
            raise RuntimeError("boom")

        self.store.subscribe(self.path, "INBOX", broken)
        self.store.subscribe(self.path, "INBOX", lambda: calls.append("ok"))
        self.watcher.change(self.path)
        self.assertEqual(calls, ["ok"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_watching(self) -> None:
        """stop_watching() ends every watch; unsubscribing later is
        harmless."""
        unsubscribe = self.store.subscribe(self.path, "INBOX", lambda: None)
        self.store.subscribe(self.path, "Sent", lambda: None)
        self.store.stop_watching()
        self.assertEqual(self.watcher.watches, {})
        unsubscribe()
        self.assertEqual(len(self.watcher.stopped), 2)

    def test_own_changes_still_notify(self) -> None:
        """Changes made through the store notify as before."""
        calls: list[str] = []
        self.store.subscribe(self.path, "INBOX", lambda: calls.append("x"))
        self.store.deliver(self.path, b"m", "Q1")
        self.assertEqual(calls, ["x"])


class DirectoryPollerTests(SynchronousTestCase):
    """Polling the times of new/ and cur/ with a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        self.poller = DirectoryPoller(self.clock, 2.0)
        self.folder = make_folder(self.mktemp())
        self.calls: list[str] = []

    def listen(self, folder: str, label: str = "x") -> Callable[[], None]:
        return self.poller.watch(folder, lambda: self.calls.append(label))

    def test_quiet(self) -> None:
        """Nothing changed: no call, however long."""
        self.listen(self.folder)
        for _ in range(5):
            self.clock.advance(2)
        self.assertEqual(self.calls, [])

    def test_new_message(self) -> None:
        """A message moved into new/ by another program is reported at the
        next look, once."""
        self.listen(self.folder)
        deliver_outside(self.folder, "1.M1P1.other")
        age(self.folder, OLD + 10)
        self.clock.advance(1)
        self.assertEqual(self.calls, [])
        self.clock.advance(1)
        self.assertEqual(self.calls, ["x"])
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x"])

    def test_removed_and_renamed(self) -> None:
        """Removals and flag renames in cur/ are reported."""
        write_file(os.path.join(self.folder, "cur", "1.M1P1.other:2,"), b"m")
        age(self.folder)
        self.listen(self.folder)
        os.rename(
            os.path.join(self.folder, "cur", "1.M1P1.other:2,"),
            os.path.join(self.folder, "cur", "1.M1P1.other:2,S"),
        )
        age(self.folder, OLD + 1)
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x"])
        os.unlink(os.path.join(self.folder, "cur", "1.M1P1.other:2,S"))
        age(self.folder, OLD + 2)
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x", "x"])

    def test_same_tick(self) -> None:
        """A directory time within two seconds of now may still change
        unseen, so the folder is reported at each look until it settles."""
        self.listen(self.folder)
        age(self.folder, self.clock.seconds() + 2)
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x"])
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x", "x"])
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x", "x"])

    def test_folder_deleted(self) -> None:
        """A folder that vanishes is reported once (its listeners find it
        gone when they refresh)."""
        self.listen(self.folder)
        shutil.rmtree(self.folder)
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x"])

    def test_timer_only_while_watching(self) -> None:
        """The timer starts with the first watch and stops with the last;
        a second folder keeps it going."""
        self.assertEqual(self.clock.getDelayedCalls(), [])
        other = make_folder(self.mktemp())
        stop_first = self.listen(self.folder, "first")
        stop_other = self.listen(other, "other")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(sorted(self.poller.watching), sorted([self.folder, other]))
        stop_first()
        stop_first()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        deliver_outside(other, "1.M1P1.other")
        age(other, OLD + 5)
        self.clock.advance(2)
        self.assertEqual(self.calls, ["other"])
        stop_other()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.poller.watching, [])

    def test_callback_error_logged(self) -> None:
        """A callback that raises is logged and polling goes on."""

        def broken() -> None:
            raise RuntimeError("boom")

        self.poller.watch(self.folder, broken)
        self.listen(self.folder)
        age(self.folder, OLD + 1)
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x"])
        age(self.folder, OLD + 2)
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x", "x"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_through_the_store(self) -> None:
        """A store with a poller tells its listeners of a delivery made by
        another program, and stops polling when they leave."""
        root = os.path.abspath(self.mktemp())
        store = MaildirStore(
            root,
            "mx.example.test",
            self.clock,
            make_store(root).run_in_thread,
            watcher=self.poller,
        )
        path = os.path.join(root, "alice")
        mailbox = store.open_mailbox(path)
        age(path)
        unsubscribe = store.subscribe(path, "INBOX", lambda: self.calls.append("x"))
        deliver_outside(path, "1700000000.M1P1.other,S=1")
        age(path, OLD + 3)
        self.clock.advance(2)
        self.assertEqual(self.calls, ["x"])
        self.assertTrue(mailbox.refresh())
        self.assertEqual(len(mailbox.messages()), 1)
        unsubscribe()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class MakeWatcherTests(SynchronousTestCase):
    """make_watcher picks by setting."""

    def test_modes(self) -> None:
        """off: none; poll: a poller; auto: inotify here (Linux)."""
        clock = Clock()
        self.assertIsNone(make_watcher(clock, "off"))
        poller = make_watcher(clock, "poll", 3.0)
        assert isinstance(poller, DirectoryPoller)
        self.assertEqual(poller.interval, 3.0)
        self.assertIsInstance(make_watcher(clock, "auto"), InotifyWatcher)


class ServiceTests(SynchronousTestCase):
    """The assembled service gives its store the configured watcher."""

    def test_settings(self) -> None:
        """[maildir] watch picks the watcher; poll_interval its interval."""
        found = {}
        for mode in ("auto", "poll", "off"):
            settings = Settings(
                server=ServerSettings(data_dir=self.mktemp()),
                maildir=MaildirSettings(watch=mode, poll_interval=7.0),
            )
            service = makeService(settings, Clock(), roles={})
            found[mode] = service.components.store.watcher
        self.assertIsInstance(found["auto"], InotifyWatcher)
        assert isinstance(found["poll"], DirectoryPoller)
        self.assertEqual(found["poll"].interval, 7.0)
        self.assertIsNone(found["off"])


class InotifyTests(TestCase):
    """Real inotify on the real reactor: another program's changes, made
    with plain system calls, reach the listeners."""

    #: A notice that never comes fails the test soon.
    timeout = 10

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock: IReactorTime = reactor
        self.poller = DirectoryPoller(self.clock, 3600.0)
        self.watcher = InotifyWatcher(self.clock, self.poller)
        self.store = MaildirStore(
            self.root, "mx.example.test", self.clock, watcher=self.watcher
        )
        self.path = os.path.join(self.root, "alice")
        self.store.open_mailbox(self.path)
        self.addCleanup(self.store.stop_watching)

    def next_change(self, folder: str = "INBOX") -> Deferred[None]:
        """A Deferred that fires at the folder's next change notice (and
        then unsubscribes)."""
        d: Deferred[None] = Deferred()

        def changed() -> None:
            unsubscribe()
            if not d.called:
                d.callback(None)

        unsubscribe = self.store.subscribe(self.path, folder, changed)
        return d

    async def test_delivered_outside(self) -> None:
        """A file moved into new/ by plain os calls is noticed; after the
        last listener leaves, the inotify descriptor is closed."""
        d = self.next_change()
        self.assertEqual(self.watcher.watching, [self.path])
        deliver_outside(self.path, "1700000000.M1P1.other,S=1")
        await d
        self.assertEqual(self.watcher.watching, [])
        self.assertIsNone(self.watcher._inotify)
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(len(mailbox.messages()), 1)

    async def test_removed_and_renamed_outside(self) -> None:
        """A flag rename and an unlink in cur/ are both noticed."""
        name = os.path.join(self.path, "cur", "1700000000.M1P1.other,S=1:2,")
        write_file(name, b"m")
        d = self.next_change()
        os.rename(name, name + "S")
        await d
        d = self.next_change()
        os.unlink(name + "S")
        await d

    async def test_coalesced(self) -> None:
        """A burst of deliveries gives far fewer calls than files."""
        calls: list[None] = []
        unsubscribe = self.store.subscribe(
            self.path, "INBOX", lambda: calls.append(None)
        )
        self.addCleanup(unsubscribe)
        d = self.next_change()
        for i in range(50):
            deliver_outside(self.path, f"1700000000.M{i}P1.other,S=1")
        await d
        await deferLater(reactor, 0.05)
        self.assertGreaterEqual(len(calls), 1)
        self.assertLess(len(calls), 50)

    async def test_folder_deleted(self) -> None:
        """Deleting a watched folder (which closes Twisted's inotify
        descriptor) tells its listeners, and the other folders stay
        watched on a new descriptor."""
        self.store.create_folder(self.path, "Trash")
        trash = self.next_change("Trash")
        inbox_calls: list[None] = []
        unsubscribe = self.store.subscribe(
            self.path, "INBOX", lambda: inbox_calls.append(None)
        )
        self.addCleanup(unsubscribe)
        shutil.rmtree(os.path.join(self.path, ".Trash"))
        await trash
        # The rewatch calls every listener once.
        while not inbox_calls:
            await deferLater(reactor, 0.01)
        self.assertEqual(self.watcher.watching, [self.path])
        d = self.next_change()
        deliver_outside(self.path, "1700000000.M1P1.other,S=1")
        await d

    def test_sweep(self) -> None:
        """Every listener is called each sweep interval (events inotify
        dropped in a queue overflow are not lost for good), and the sweep
        stops with the last watch."""
        clock = Clock()
        watcher = InotifyWatcher(reactor, self.poller, sweep_interval=60.0, clock=clock)
        calls: list[str] = []
        stop = watcher.watch(self.path, lambda: calls.append("inbox"))
        clock.advance(59)
        self.assertEqual(calls, [])
        clock.advance(1)
        self.assertEqual(calls, ["inbox"])
        clock.advance(60)
        self.assertEqual(calls, ["inbox", "inbox"])
        stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(120)
        self.assertEqual(calls, ["inbox", "inbox"])

    def test_unwatchable_folder_polled(self) -> None:
        """A folder inotify cannot watch (here: its directories are
        missing) is handed to the fallback poller, and leaves it too."""
        missing = os.path.join(self.root, "nowhere")
        stop = self.watcher.watch(missing, lambda: None)
        self.assertEqual(self.watcher.watching, [])
        self.assertEqual(self.poller.watching, [missing])
        stop()
        self.assertEqual(self.poller.watching, [])
        self.assertIsNone(self.watcher._inotify)
