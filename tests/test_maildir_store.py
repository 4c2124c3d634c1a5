"""Tests for L{twistedmail.maildir.store}: mailboxes, flags, folders,
notifications, the cache, and reading Maildirs written by others."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.maildir_helpers import CountingOpener, make_store, write_file
from tests.test_maildir_names import BAD_FOLDER_NAMES
from twistedmail.imap._message import CACHE_KEY, Structure, cached_structure
from twistedmail.maildir import (
    UNKNOWN_DATE,
    FolderExistsError,
    FolderNameError,
    KeywordError,
    Mailbox,
    MaildirError,
    NoSuchFolderError,
    NoSuchMessageError,
    dates_unknown,
)
from twistedmail.maildir.names import delivery_order, size_from_base
from twistedmail.maildir.uidlist import UIDLIST_NAME, read_uidlist, read_uidlist_token


class StoreCase(SynchronousTestCase):
    """A store with a Maildir at ``self.path``."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1_790_000_000)
        self.opener = CountingOpener()
        self.store = make_store(self.root, self.clock, self.opener)
        self.path = os.path.join(self.root, "example.test", "alice")

    def deliver(self, message: bytes, unique: str) -> str:
        return self.successResultOf(self.store.deliver(self.path, message, unique))

    def restart(self) -> None:
        """A new store object, as after a server restart."""
        self.store = make_store(self.root, self.clock, self.opener)


class MailboxTests(StoreCase):
    """Listing and reading messages."""

    def test_open_creates_inbox(self) -> None:
        """Opening INBOX of a new user makes the Maildir; it is empty."""
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(mailbox.messages(), [])
        self.assertEqual(mailbox.name, "INBOX")
        self.assertEqual(mailbox.uidvalidity, 1_790_000_000)
        self.assertEqual(mailbox.next_uid, 1)
        self.assertTrue(os.path.isdir(os.path.join(self.path, "cur")))

    def test_delivered_messages(self) -> None:
        """Delivered messages get UIDs in delivery order (not file time
        order), sizes, dates (the file's time); they are recent and
        unflagged."""
        bases = [self.deliver(b"m%d" % i, f"Q{i}") for i in range(3)]
        os.utime(
            os.path.join(self.path, "new", bases[1]), (1_700_000_000, 1_700_000_000)
        )
        mailbox = self.store.open_mailbox(self.path)
        infos = mailbox.with_dates(mailbox.messages())
        self.assertEqual([i.uid for i in infos], [1, 2, 3])
        self.assertEqual([i.base for i in infos], bases)
        self.assertEqual([i.size for i in infos], [2, 2, 2])
        self.assertEqual(infos[1].internal_date, 1_700_000_000)
        self.assertTrue(all(i.recent and not i.flags for i in infos))
        self.assertEqual(mailbox.next_uid, 4)

    def test_columns(self) -> None:
        """L{Mailbox.columns} gives the UIDs, base names and sizes that
        L{Mailbox.messages} has, column by column; expunged messages leave
        them."""
        bases = [self.deliver(b"m" * (i + 1), f"Q{i}") for i in range(3)]
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(mailbox.columns(), ([1, 2, 3], bases, [1, 2, 3]))
        infos = mailbox.messages()
        self.assertEqual(
            mailbox.columns(),
            ([i.uid for i in infos], [i.base for i in infos], [i.size for i in infos]),
        )
        mailbox.expunge([2])
        self.assertEqual(mailbox.columns(), ([1, 3], [bases[0], bases[2]], [1, 3]))

    def test_read(self) -> None:
        """read() gives the bytes through the opener; get_file() the path."""
        self.deliver(b"hello", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(self.opener.opened, [])
        self.assertEqual(mailbox.read(1), b"hello")
        self.assertEqual(len(self.opener.opened), 1)
        with open(mailbox.get_file(1), "rb") as f:
            self.assertEqual(f.read(), b"hello")

    def test_read_after_external_rename(self) -> None:
        """A message renamed by another client since the snapshot is still
        found."""
        base = self.deliver(b"hello", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        os.rename(
            os.path.join(self.path, "new", base),
            os.path.join(self.path, "cur", base + ":2,S"),
        )
        self.assertEqual(mailbox.read(1), b"hello")

    def test_no_such_message(self) -> None:
        """Unknown UIDs raise NoSuchMessageError (a KeyError)."""
        mailbox = self.store.open_mailbox(self.path)
        self.assertRaises(NoSuchMessageError, mailbox.read, 1)
        self.assertRaises(KeyError, mailbox.get, 7)

    def test_refresh(self) -> None:
        """New and removed files are noticed by refresh(), not before."""
        a = self.deliver(b"a", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        self.assertFalse(mailbox.refresh())
        self.deliver(b"b", "Q2")
        self.assertEqual(len(mailbox.messages()), 1)
        self.assertTrue(mailbox.refresh())
        self.assertEqual([i.uid for i in mailbox.messages()], [1, 2])
        os.unlink(os.path.join(self.path, "new", a))
        self.assertTrue(mailbox.refresh())
        self.assertEqual([i.uid for i in mailbox.messages()], [2])
        self.assertFalse(mailbox.refresh())

    def test_second_mailbox_shares_snapshot(self) -> None:
        """A second mailbox of an unchanged folder takes the first one's
        snapshot; changes made through either stay its own until the
        other refreshes, and then show."""
        for i in range(3):
            self.deliver(b"m%d" % i, f"Q{i}")
        self.store.open_mailbox(self.path).close()  # UIDs given, list written
        first = self.store.open_mailbox(self.path)
        second = self.store.open_mailbox(self.path)
        self.assertIs(second._shared, first._shared)
        self.assertEqual(second.messages(), first.messages())
        first.set_flags(1, {"S"})
        first.expunge([2])
        self.assertEqual(second.get(1).flags, frozenset())
        self.assertEqual([i.uid for i in second.messages()], [1, 2, 3])
        self.assertTrue(second.refresh())
        self.assertEqual(second.get(1).flags, {"S"})
        self.assertEqual(second.messages(), first.messages())
        third = make_store(self.root, self.clock).open_mailbox(self.path)
        self.assertIsNot(third._shared, first._shared)
        self.assertEqual(third.messages(), first.messages())

    def test_take_recent(self) -> None:
        """Recent messages go to exactly one session: the first to claim
        them moves them to cur/."""
        for i in range(2):
            self.deliver(b"m", f"Q{i}")
        first = self.store.open_mailbox(self.path)
        second = self.store.open_mailbox(self.path)
        self.assertEqual(first.take_recent(), [1, 2])
        self.assertEqual(second.take_recent(), [])
        self.assertFalse(any(i.recent for i in first.messages()))
        self.assertEqual(second.read(2), b"m")
        self.deliver(b"n", "Q3")
        second.refresh()
        self.assertEqual(second.take_recent(), [3])
        self.assertEqual(len(os.listdir(os.path.join(self.path, "cur"))), 3)

    def test_stale_tmp_removed(self) -> None:
        """Files in tmp/ older than 36 hours are removed on open; newer ones
        (a delivery in progress) stay."""
        self.store.open_mailbox(self.path)
        now = self.clock.seconds()
        write_file(os.path.join(self.path, "tmp", "old"), b"x", now - 37 * 3600)
        write_file(os.path.join(self.path, "tmp", "young"), b"x", now - 3600)
        self.store.open_mailbox(self.path)
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), ["young"])

    def test_ignores_dot_files(self) -> None:
        """Hidden files in cur/ and new/ are not messages."""
        self.store.open_mailbox(self.path)
        write_file(os.path.join(self.path, "new", ".nfs000"), b"x")
        self.assertEqual(self.store.open_mailbox(self.path).messages(), [])

    def test_cache(self) -> None:
        """Cached values last across restarts and go with expunge."""
        self.deliver(b"a", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        base = mailbox.get(1).base
        self.assertIsNone(mailbox.cache_get(base, "envelope"))
        mailbox.cache_put(base, "envelope", b"(NIL)")
        mailbox.close()
        self.restart()
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(mailbox.cache_get(base, "envelope"), b"(NIL)")
        mailbox.expunge([1])
        self.assertIsNone(mailbox.cache_get(base, "envelope"))
        mailbox.close()


class StructureCacheTests(StoreCase):
    """IMAP's parsed structures (L{cached_structure}) kept in the folder
    cache: across restarts, and gone with their messages."""

    MESSAGE = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n"

    def structure(self, mailbox: Mailbox, uid: int, loads: list[int]) -> Structure:
        """The message's structure through the cache; ``loads`` counts
        the times the message had to be read."""

        def load() -> bytes:
            loads.append(uid)
            return mailbox.read(uid)

        return cached_structure(mailbox, mailbox.get(uid).base, load)

    def test_kept_across_restart(self) -> None:
        """Parsed once; a new store on the same folder (a restart) finds it
        without reading the message."""
        self.deliver(self.MESSAGE, "Q1")
        loads: list[int] = []
        mailbox = self.store.open_mailbox(self.path)
        first = self.structure(mailbox, 1, loads)
        self.assertEqual(self.structure(mailbox, 1, loads), first)
        mailbox.close()
        self.restart()
        self.opener.opened.clear()
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(self.structure(mailbox, 1, loads), first)
        self.assertEqual(loads, [1])
        self.assertEqual(self.opener.opened, [])
        self.assertIn(b"hi", first.envelope)
        mailbox.close()

    def test_removed_by_another_program(self) -> None:
        """A message another program deleted loses its entry at the next
        refresh that notices."""
        base = self.deliver(self.MESSAGE, "Q1")
        self.deliver(self.MESSAGE, "Q2")
        mailbox = self.store.open_mailbox(self.path)
        self.structure(mailbox, 1, [])
        self.structure(mailbox, 2, [])
        os.unlink(os.path.join(self.path, "new", base))
        self.assertTrue(mailbox.refresh(force=True))
        self.assertIsNone(mailbox.cache_get(base, CACHE_KEY))
        self.assertIsNotNone(mailbox.cache_get(mailbox.get(2).base, CACHE_KEY))
        mailbox.close()

    def test_orphans_after_lost_list(self) -> None:
        """When the UID list is lost, entries of messages removed meanwhile
        go; the others stay."""
        base = self.deliver(self.MESSAGE, "Q1")
        self.deliver(self.MESSAGE, "Q2")
        mailbox = self.store.open_mailbox(self.path)
        self.structure(mailbox, 1, [])
        self.structure(mailbox, 2, [])
        kept = mailbox.get(2).base
        mailbox.close()
        os.unlink(os.path.join(self.path, "new", base))
        os.unlink(os.path.join(self.path, UIDLIST_NAME))
        self.restart()
        mailbox = self.store.open_mailbox(self.path)
        self.assertIsNone(mailbox.cache_get(base, CACHE_KEY))
        self.assertIsNotNone(mailbox.cache_get(kept, CACHE_KEY))
        mailbox.close()


class FlagTests(StoreCase):
    """Flags and keywords in file names; UIDs kept."""

    def test_set_flags(self) -> None:
        """Flags move the file to cur/ with a sorted info suffix; the UID
        stays, also after a restart."""
        base = self.deliver(b"a", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        info = mailbox.set_flags(1, {"S", "F"})
        self.assertEqual(info.filename, f"cur/{base}:2,FS")
        self.assertEqual(info.flags, {"F", "S"})
        self.assertFalse(info.recent)
        self.assertEqual(os.listdir(os.path.join(self.path, "cur")), [base + ":2,FS"])
        self.assertEqual(mailbox.get(1), info)
        self.restart()
        again = self.store.open_mailbox(self.path).messages()
        self.assertEqual([(i.uid, i.flags) for i in again], [(1, {"F", "S"})])

    def test_keywords(self) -> None:
        """Keywords become letters through the keyword file, which uses the
        dovecot-keywords format."""
        base = self.deliver(b"a", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        info = mailbox.set_flags(1, {"S"}, {"$Junk", "$Label1"})
        self.assertEqual(info.keywords, {"$Junk", "$Label1"})
        self.assertEqual(info.filename, f"cur/{base}:2,Sab")
        with open(os.path.join(self.path, "twistedmail-keywords"), "rb") as f:
            self.assertIn(f.read(), (b"0 $Junk\n1 $Label1\n", b"0 $Label1\n1 $Junk\n"))
        mailbox.set_flags(1, set(), {"$junk"})
        self.restart()
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(mailbox.get(1).keywords, {"$Junk"})
        self.assertEqual(sorted(mailbox.keywords()), ["$Junk", "$Label1"])

    def test_bad_flags_and_keywords(self) -> None:
        """Unknown letters, malformed keywords and a 27th keyword are
        refused."""
        self.deliver(b"a", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        self.assertRaises(MaildirError, mailbox.set_flags, 1, {"X"})
        self.assertRaises(KeywordError, mailbox.set_flags, 1, set(), {"a b"})
        self.assertRaises(KeywordError, mailbox.set_flags, 1, set(), {"\\Seen"})
        mailbox.set_flags(1, set(), {f"k{i}" for i in range(26)})
        self.assertRaises(KeywordError, mailbox.set_flags, 1, set(), {"k26"})

    def test_external_rename_keeps_uid(self) -> None:
        """Another program changing flags (renaming the file) keeps the UID."""
        bases = [self.deliver(b"m", f"Q{i}") for i in range(2)]
        mailbox = self.store.open_mailbox(self.path)
        uid = {i.base: i.uid for i in mailbox.messages()}[bases[1]]
        os.rename(
            os.path.join(self.path, "new", bases[1]),
            os.path.join(self.path, "cur", bases[1] + ":2,RS"),
        )
        mailbox.refresh(force=True)
        self.assertEqual(mailbox.get(uid).flags, {"R", "S"})
        self.assertEqual(mailbox.get(uid).base, bases[1])

    def test_set_flags_after_external_rename(self) -> None:
        """set_flags finds a file renamed since the snapshot."""
        base = self.deliver(b"m", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        os.rename(
            os.path.join(self.path, "new", base),
            os.path.join(self.path, "cur", base + ":2,S"),
        )
        mailbox.set_flags(1, {"T"})
        self.assertEqual(os.listdir(os.path.join(self.path, "cur")), [base + ":2,T"])

    def test_flag_sets(self) -> None:
        """flag_sets gives each message's info suffix in UID order and the
        flags and keyword names of each distinct one, as messages() has
        them."""
        for i in range(4):
            self.deliver(b"m", f"Q{i}")
        mailbox = self.store.open_mailbox(self.path)
        mailbox.set_flags(1, {"S"}, {"$Junk"})
        mailbox.set_flags(2, {"S", "R"})
        mailbox.set_flags(3, {"S"}, {"$Junk"})
        suffixes, parsed = mailbox.flag_sets()
        self.assertEqual(suffixes, [":2,Sa", ":2,RS", ":2,Sa", ""])
        self.assertEqual(
            [parsed[s] for s in suffixes],
            [(i.flags, i.keywords) for i in mailbox.messages()],
        )
        empty = self.store.open_mailbox(self.store.folder_path(self.path), "INBOX")
        empty.expunge([1, 2, 3, 4])
        self.assertEqual(empty.flag_sets(), ([], {}))

    def test_messages_later(self) -> None:
        """messages_later's function gives messages() as it was when it was
        made, also when flags change, messages are expunged or the mailbox
        refreshes meanwhile, whether or not messages() had been made."""
        for i in range(3):
            self.deliver(b"m", f"Q{i}")
        mailbox = self.store.open_mailbox(self.path)
        mailbox.set_flags(2, {"F"}, {"$Label1"})
        before = mailbox.messages()
        later = mailbox.messages_later()
        other = self.store.open_mailbox(self.path)
        other_later = other.messages_later()
        mailbox.set_flags(1, {"S"})
        other.set_flags(3, {"D"})
        mailbox.expunge([2])
        mailbox.refresh(force=True)
        other.refresh(force=True)
        self.assertEqual(later(), before)
        self.assertEqual(other_later(), before)
        self.assertIsNot(later(), later())
        self.assertEqual(len(mailbox.messages()), 2)

    def test_set_flags_gone(self) -> None:
        """set_flags on a message deleted by someone else fails cleanly."""
        base = self.deliver(b"m", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        os.unlink(os.path.join(self.path, "new", base))
        self.assertRaises(NoSuchMessageError, mailbox.set_flags, 1, {"S"})


class ChangeTests(StoreCase):
    """APPEND, COPY and EXPUNGE; UIDs only grow."""

    def test_add(self) -> None:
        """add() stores in cur/ with flags and internal date and returns the
        UID; the message appears at the next refresh."""
        mailbox = self.store.open_mailbox(self.path)
        uid = mailbox.add(b"appended", {"S"}, {"$Sent"}, internal_date=1_600_000_000)
        self.assertEqual(uid, 1)
        self.assertEqual(mailbox.messages(), [])
        mailbox.refresh()
        [info] = mailbox.messages()
        self.assertEqual(
            (info.uid, info.flags, info.keywords, info.internal_date, info.size),
            (1, {"S"}, {"$Sent"}, 1_600_000_000, 8),
        )
        self.assertEqual(mailbox.read(1), b"appended")
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])

    def test_expunge(self) -> None:
        """expunge() removes files and UIDs; UIDs are never reused."""
        for i in range(3):
            self.deliver(b"m", f"Q{i}")
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(mailbox.expunge([3, 1, 9]), [1, 3])
        self.assertEqual([i.uid for i in mailbox.messages()], [2])
        self.assertEqual(len(os.listdir(os.path.join(self.path, "new"))), 1)
        self.assertEqual(mailbox.add(b"x"), 4)
        self.restart()
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual([i.uid for i in mailbox.messages()], [2, 4])
        self.assertEqual(mailbox.next_uid, 5)

    def test_external_delete_of_highest(self) -> None:
        """A message deleted by another program leaves its UID used."""
        base = self.deliver(b"m", "Q1")
        self.store.open_mailbox(self.path)
        os.unlink(os.path.join(self.path, "new", base))
        self.deliver(b"n", "Q2")
        self.assertEqual(
            [i.uid for i in self.store.open_mailbox(self.path).messages()], [2]
        )

    def test_copy(self) -> None:
        """copy() gives the target new UIDs with the same flags, keywords,
        dates and bytes."""
        self.deliver(b"one", "Q1")
        self.deliver(b"two", "Q2")
        self.store.create_folder(self.path, "Archive")
        source = self.store.open_mailbox(self.path)
        source.set_flags(2, {"S"}, {"$Work"})
        target = self.store.open_mailbox(self.path, "Archive")
        target.add(b"existing")
        self.assertEqual(source.copy([2, 1, 42], target), {1: 2, 2: 3})
        target.refresh()
        infos = target.messages()
        self.assertEqual([i.uid for i in infos], [1, 2, 3])
        self.assertEqual(infos[2].flags, {"S"})
        self.assertEqual(infos[2].keywords, {"$Work"})
        self.assertEqual(infos[2].internal_date, source.get(2).internal_date)
        self.assertEqual(target.read(2), b"one")
        self.assertEqual(target.read(3), b"two")
        self.assertNotEqual(infos[1].base, source.get(1).base)

    def test_notifications(self) -> None:
        """Flag changes, appends, copies and expunges notify the folder's
        listeners."""
        self.deliver(b"m", "Q1")
        self.store.create_folder(self.path, "Archive")
        events: list[str] = []
        self.store.subscribe(self.path, "inbox", lambda: events.append("INBOX"))
        self.store.subscribe(self.path, "Archive", lambda: events.append("Archive"))
        inbox = self.store.open_mailbox(self.path)
        archive = self.store.open_mailbox(self.path, "Archive")
        inbox.set_flags(1, {"S"})
        inbox.add(b"x")
        inbox.copy([1], archive)
        inbox.expunge([1])
        self.assertEqual(events, ["INBOX", "INBOX", "Archive", "INBOX"])


class UIDValidityTests(StoreCase):
    """UIDVALIDITY changes only when the UID list is lost."""

    def test_stable_across_restart(self) -> None:
        """A restart keeps UIDVALIDITY and UIDs."""
        for i in range(3):
            self.deliver(b"m", f"Q{i}")
        first = self.store.open_mailbox(self.path)
        self.clock.advance(3600)
        self.restart()
        second = self.store.open_mailbox(self.path)
        self.assertEqual(second.uidvalidity, first.uidvalidity)
        self.assertEqual(second.messages(), first.messages())

    def test_lost_list(self) -> None:
        """A deleted list means a new UIDVALIDITY."""
        self.deliver(b"m", "Q1")
        first = self.store.open_mailbox(self.path).uidvalidity
        os.unlink(os.path.join(self.path, UIDLIST_NAME))
        self.clock.advance(10)
        mailbox = self.store.open_mailbox(self.path)
        self.assertGreater(mailbox.uidvalidity, first)
        self.assertEqual([i.uid for i in mailbox.messages()], [1])

    def test_lost_list_same_second(self) -> None:
        """Even within the same second an open mailbox sees a new value."""
        self.deliver(b"m", "Q1")
        mailbox = self.store.open_mailbox(self.path)
        first = mailbox.uidvalidity
        os.unlink(os.path.join(self.path, UIDLIST_NAME))
        mailbox.refresh(force=True)
        self.assertGreater(mailbox.uidvalidity, first)

    def test_broken_list_kept_aside(self) -> None:
        """An unreadable list is renamed aside (never deleted) and replaced."""
        self.deliver(b"m", "Q1")
        self.store.open_mailbox(self.path)
        write_file(os.path.join(self.path, UIDLIST_NAME), b"garbage\n")
        self.clock.advance(10)
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(mailbox.uidvalidity, 1_790_000_010)
        aside = [n for n in os.listdir(self.path) if ".broken." in n]
        self.assertEqual(len(aside), 1)
        with open(os.path.join(self.path, aside[0]), "rb") as f:
            self.assertEqual(f.read(), b"garbage\n")

    def test_crash_during_write(self) -> None:
        """A temporary file left by a crash mid-write is ignored, and
        removed by the next rewrite (appends leave it)."""
        for i in range(2):
            self.deliver(b"m", f"Q{i}")
        before = self.store.open_mailbox(self.path).messages()
        leftover = os.path.join(self.path, UIDLIST_NAME + ".tmp.99999")
        write_file(leftover, b"twistedmail-uidlist 1 V1 N9\n1 0 1 tor")
        self.restart()
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(mailbox.messages(), before)
        mailbox.add(b"x")
        self.assertTrue(os.path.exists(leftover))
        ul = read_uidlist(self.path)
        assert ul is not None
        self.assertEqual(ul.uids, [1, 2, 3])
        mailbox.expunge([1])
        self.assertFalse(os.path.exists(leftover))
        ul = read_uidlist(self.path)
        assert ul is not None
        self.assertEqual(ul.uids, [2, 3])


class FolderTests(StoreCase):
    """Maildir++ folders and subscriptions."""

    def test_create_list_delete(self) -> None:
        """Folders are dot directories with maildirfolder; INBOX first."""
        self.store.create_folder(self.path, "Sent")
        self.store.create_folder(self.path, "Archive.2024")
        self.assertEqual(
            self.store.list_folders(self.path), ["INBOX", "Archive.2024", "Sent"]
        )
        self.assertTrue(
            os.path.exists(os.path.join(self.path, ".Sent", "maildirfolder"))
        )
        self.assertRaises(
            FolderExistsError, self.store.create_folder, self.path, "Sent"
        )
        self.assertRaises(
            FolderExistsError, self.store.create_folder, self.path, "inbox"
        )
        self.store.delete_folder(self.path, "Sent")
        self.assertEqual(self.store.list_folders(self.path), ["INBOX", "Archive.2024"])
        self.assertRaises(
            NoSuchFolderError, self.store.delete_folder, self.path, "Sent"
        )
        self.assertRaises(FolderNameError, self.store.delete_folder, self.path, "INBOX")
        self.assertEqual(sorted(os.listdir(self.path))[:2], [".Archive.2024", "cur"])

    def test_open_missing(self) -> None:
        """Opening a folder that does not exist fails."""
        self.assertRaises(NoSuchFolderError, self.store.open_mailbox, self.path, "Nope")

    def test_bad_names_refused(self) -> None:
        """Names that could leave the Maildir are refused by every folder
        operation, and nothing is created anywhere."""
        self.store.open_mailbox(self.path)
        before = sorted(os.listdir(self.path))
        parent = sorted(os.listdir(os.path.dirname(self.path)))
        for name in BAD_FOLDER_NAMES:
            self.assertRaises(
                FolderNameError, self.store.create_folder, self.path, name
            )
            self.assertRaises(FolderNameError, self.store.open_mailbox, self.path, name)
            self.assertRaises(
                FolderNameError, self.store.delete_folder, self.path, name
            )
            self.assertRaises(
                FolderNameError, self.store.rename_folder, self.path, "INBOX", name
            )
            self.assertRaises(
                FolderNameError, self.store.set_subscribed, self.path, name, True
            )
            self.assertRaises(
                FolderNameError, self.store.subscribe, self.path, name, lambda: None
            )
        self.assertEqual(sorted(os.listdir(self.path)), before)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.path))), parent)

    def test_rename_with_children(self) -> None:
        """Renaming moves subfolders along, with their UIDs."""
        self.store.create_folder(self.path, "Work")
        self.store.create_folder(self.path, "Work.Projects")
        self.store.create_folder(self.path, "Workshop")
        box = self.store.open_mailbox(self.path, "Work.Projects")
        box.add(b"x")
        validity = self.store.open_mailbox(self.path, "Work.Projects").uidvalidity
        self.store.rename_folder(self.path, "Work", "Job")
        self.assertEqual(
            self.store.list_folders(self.path),
            ["INBOX", "Job", "Job.Projects", "Workshop"],
        )
        moved = self.store.open_mailbox(self.path, "Job.Projects")
        self.assertEqual(moved.uidvalidity, validity)
        self.assertEqual([i.uid for i in moved.messages()], [1])
        self.assertRaises(
            NoSuchFolderError, self.store.rename_folder, self.path, "Work", "X"
        )
        self.assertRaises(
            FolderExistsError, self.store.rename_folder, self.path, "Job", "Workshop"
        )

    def test_rename_inbox(self) -> None:
        """Renaming INBOX moves its messages to a new folder and leaves it
        empty (RFC 3501 §6.3.5)."""
        self.deliver(b"a", "Q1")
        inbox = self.store.open_mailbox(self.path)
        inbox.set_flags(1, {"S"}, {"$Work"})
        self.deliver(b"b", "Q2")
        self.deliver(b"c", "Q3")
        inbox.refresh()
        inbox.set_flags(3, set(), {"$Later"})
        inbox.close()
        self.store.rename_folder(self.path, "INBOX", "Old")
        self.assertEqual(self.store.open_mailbox(self.path).messages(), [])
        moved = self.store.open_mailbox(self.path, "Old")
        old = moved.messages()
        self.assertEqual([moved.read(i.uid) for i in old], [b"a", b"b", b"c"])
        self.assertEqual(
            [i.flags for i in old], [frozenset({"S"}), frozenset(), frozenset()]
        )
        self.assertEqual(
            [i.keywords for i in old],
            [frozenset({"$Work"}), frozenset(), frozenset({"$Later"})],
        )

    def test_subscriptions(self) -> None:
        """Subscriptions live in the Maildir++ subscriptions file."""
        self.assertEqual(self.store.subscriptions(self.path), [])
        self.store.set_subscribed(self.path, "Sent", True)
        self.store.set_subscribed(self.path, "inbox", True)
        self.store.set_subscribed(self.path, "Sent", True)
        self.assertEqual(self.store.subscriptions(self.path), ["Sent", "INBOX"])
        self.store.set_subscribed(self.path, "Sent", False)
        self.assertEqual(self.store.subscriptions(self.path), ["INBOX"])
        with open(os.path.join(self.path, "subscriptions"), "rb") as f:
            self.assertEqual(f.read(), b"INBOX\n")

    def test_create_folders(self) -> None:
        """create_folders makes the missing ones of several folders (each a
        Maildir++ folder, as create_folder makes it) and names them; INBOX
        and existing ones are skipped; a bad name stops it there (the ones
        before it are made)."""
        self.store.create_folder(self.path, "Sent")
        made = self.store.create_folders(self.path, ["Sent", "Trash", "INBOX", "A.B"])
        self.assertEqual(made, ["Trash", "A.B"])
        self.assertEqual(
            self.store.list_folders(self.path), ["INBOX", "A.B", "Sent", "Trash"]
        )
        for name in (".Trash", ".A.B"):
            for sub in ("cur", "new", "tmp", "maildirfolder"):
                self.assertTrue(os.path.exists(os.path.join(self.path, name, sub)))
        self.assertRaises(
            FolderNameError, self.store.create_folders, self.path, ["Junk", "a..b", "X"]
        )
        self.assertIn("Junk", self.store.list_folders(self.path))
        self.assertNotIn("X", self.store.list_folders(self.path))
        self.assertEqual(self.store.create_folders(self.path, ["Junk"]), [])

    def test_subscriptions_many(self) -> None:
        """set_subscribed_many changes several names in one write, in
        order, INBOX in any case; a bad name changes none; nothing to
        change writes nothing."""
        many = self.store.set_subscribed_many
        many(self.path, ["Sent", "inbox", "Trash", "Sent"], True)
        self.assertEqual(
            self.store.subscriptions(self.path), ["Sent", "INBOX", "Trash"]
        )
        self.assertRaises(FolderNameError, many, self.path, ["Junk", "a..b"], True)
        self.assertEqual(
            self.store.subscriptions(self.path), ["Sent", "INBOX", "Trash"]
        )
        subscriptions = os.path.join(self.path, "subscriptions")
        inode = os.stat(subscriptions).st_ino
        many(self.path, ["Sent", "Trash"], True)
        many(self.path, ["Junk"], False)
        self.assertEqual(os.stat(subscriptions).st_ino, inode)
        many(self.path, ["Trash", "INBOX", "Junk"], False)
        self.assertEqual(self.store.subscriptions(self.path), ["Sent"])


class FirstIndexTests(StoreCase):
    """The first indexing of a folder gives its messages UIDs in delivery
    order, dates and sizes by passes over all of them; the result is what
    one look at each file (L{delivery_order}, L{size_from_base}, the
    file's mtime and size) gives."""

    NAMES = (
        "1700000005.M000002P1Q3.host,S=4",
        "1700000005.M10P1Q1.host,S=999",  # unpadded M: read as a number
        "1700000005.M9P1Q2.host,S=7,W=8",
        "1700000004.12345.qmail",  # qmail: no M, no Q, no size
        "1700000004.M5.x,S=12x,S=3",  # the first well-formed ,S= counts
        "weird-name",  # no time in the name: the file's time
        "a name with spaces,S=2",
        "1699999999.P1Q10M4.odd,S=1",
        "",  # a file named ":2,S": an empty base name
    )

    def make_folder(self, names: tuple[str, ...], in_new: bool = False) -> None:
        os.makedirs(self.path)
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(self.path, sub))
        for i, base in enumerate(names):
            name = f"new/{base}" if in_new and base else f"cur/{base}:2,S"
            write_file(os.path.join(self.path, name), b"x" * (i + 1), 1_600_000_000 + i)

    def expected(self, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
        rows = []
        for i, base in enumerate(names):
            date = 1_600_000_000 + i
            size = size_from_base(base)
            rows.append(
                (
                    delivery_order(base, date),
                    base,
                    date,
                    i + 1 if size is None else size,
                )
            )
        rows.sort()
        return [(base, date, size) for _, base, date, size in rows]

    def test_order_dates_sizes(self) -> None:
        """UIDs follow delivery_order; dates are the files' mtimes; sizes
        come from ,S= or else the file; the UID list says the same after a
        restart."""
        self.make_folder(self.NAMES)
        mailbox = self.store.open_mailbox(self.path)
        dated = mailbox.with_dates(mailbox.messages())
        got = [(i.base, i.internal_date, i.size) for i in dated]
        self.assertEqual(got, self.expected(self.NAMES))
        self.assertEqual([i.uid for i in mailbox.messages()], list(range(1, 10)))
        self.restart()
        again = self.store.open_mailbox(self.path).messages()
        self.assertEqual([(i.base, i.internal_date, i.size) for i in again], got)

    @settings(max_examples=30, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.integers(1_699_999_998, 1_700_000_001),
                st.text(alphabet="MPQ0123456789", max_size=8),
                st.sampled_from(["", ",S=7", ",S=12,W=13"]),
            ),
            unique=True,
            min_size=1,
            max_size=8,
        )
    )
    def test_order_generated(self, parts: list[tuple[int, str, str]]) -> None:
        """For generated names (in delivery order as text or not), the
        first indexing's UID order and sizes are what delivery_order and
        size_from_base give name by name."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.restart()
        names = tuple(f"{sec}.{mid}.h{size}" for sec, mid, size in parts)
        self.make_folder(names)
        mailbox = self.store.open_mailbox(self.path)
        got = [(i.base, i.size) for i in mailbox.messages()]
        self.assertEqual(got, [(b, s) for b, _, s in self.expected(names)])
        mailbox.close()

    @settings(max_examples=30, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.integers(1_699_999_998, 1_700_000_001),
                st.text(alphabet="0123456789", min_size=1, max_size=7),
                st.sampled_from(["", "Q1", "Q10", "Q2Uab", "Q3U,S=9"]),
                st.sampled_from([",S=7", ",S=12,W=13", ",S=5x,S=6"]),
            ),
            unique=True,
            min_size=1,
            max_size=8,
        )
    )
    def test_order_generated_usual_form(
        self, parts: list[tuple[int, str, str, str]]
    ) -> None:
        """Names of the usual form (read by one expression when all are)
        give the UID order and sizes of delivery_order and size_from_base
        too, microseconds padded or not."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.restart()
        names = tuple(
            f"{sec}.M{usec}P7{q}.h.example{size}" for sec, usec, q, size in parts
        )
        self.make_folder(names)
        mailbox = self.store.open_mailbox(self.path)
        got = [(i.base, i.size) for i in mailbox.messages()]
        self.assertEqual(got, [(b, s) for b, _, s in self.expected(names)])
        mailbox.close()

    def test_new_messages_later(self) -> None:
        """Messages found later (new/ and cur/) get the next UIDs in
        delivery order after the listed ones."""
        self.make_folder(self.NAMES[:3])
        mailbox = self.store.open_mailbox(self.path)
        for i, base in enumerate(self.NAMES[3:6]):
            write_file(
                os.path.join(self.path, "new", base), b"y" * (i + 1), 1_600_000_100
            )
        mailbox.refresh(force=True)
        infos = mailbox.with_dates(mailbox.messages())
        self.assertEqual([i.uid for i in infos], list(range(1, 7)))
        later = [(b, 1_600_000_100, s) for b, _, s in self.expected(self.NAMES[3:6])]
        self.assertEqual(
            [(i.base, i.internal_date) for i in infos[3:]],
            [(b, d) for b, d, _ in later],
        )
        self.assertEqual(mailbox.next_uid, 7)
        # Only messages after the first are in new/: they are found.
        self.assertEqual(mailbox.take_recent(), [4, 5, 6])
        self.assertEqual(mailbox.take_recent(), [])


class LazyDateTests(StoreCase):
    """A folder's first indexing leaves internal dates unknown (no
    ``stat``); L{Mailbox.with_dates} takes them (the files' mtimes, whole
    seconds, what the indexing used to record) and keeps them in the UID
    list."""

    NAMES = tuple(f"17000000{i:02d}.M{i}P1Q{i}.host,S={i + 1}" for i in range(6))

    def make_folder(self, names: tuple[str, ...] = NAMES) -> None:
        os.makedirs(self.path)
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(self.path, sub))
        for i, base in enumerate(names):
            write_file(
                os.path.join(self.path, "cur", f"{base}:2,S"),
                b"x" * (i + 1),
                1_600_000_000.75 + i,
            )

    def mtimes(self) -> dict[str, int]:
        """Each message's file's mtime in whole seconds, by base name."""
        out = {}
        for name in os.listdir(os.path.join(self.path, "cur")):
            st = os.stat(os.path.join(self.path, "cur", name))
            out[name.partition(":")[0]] = int(st.st_mtime)
        return out

    def listed_dates(self) -> list[int]:
        ul = read_uidlist(self.path)
        assert ul is not None
        return ul.dates

    def test_first_index_leaves_dates_unknown(self) -> None:
        """Names with their time and size are not stat-ed: the messages and
        the UID list on disk have L{UNKNOWN_DATE} (0, which older versions
        parse)."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        infos = mailbox.messages()
        self.assertTrue(dates_unknown(infos))
        self.assertEqual({i.internal_date for i in infos}, {UNKNOWN_DATE})
        self.assertEqual(self.listed_dates(), [0] * 6)
        with open(os.path.join(self.path, UIDLIST_NAME), "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[1], b"1 0 1 " + self.NAMES[0].encode())
        self.assertEqual(mailbox.get(1).internal_date, UNKNOWN_DATE)

    def test_few_new_messages_dated_at_once(self) -> None:
        """Messages another program delivers into a folder already
        indexed (fewer than a thousand) are stat-ed when listed: their dates
        are known at once and the UID list is appended to, never rewritten
        for their dates later."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        mailbox.with_dates(mailbox.messages())
        token = read_uidlist_token(self.path)
        later = ("1700000100.M100P1Q100.host,S=3", "1700000101.M101P1Q101.host,S=4")
        for i, base in enumerate(later):
            write_file(
                os.path.join(self.path, "cur", f"{base}:2,"),
                b"y" * (3 + i),
                1_650_000_000.5 + i,
            )
        self.assertTrue(mailbox.refresh(force=True))
        got = {i.base: i.internal_date for i in mailbox.messages()}
        self.assertEqual([got[b] for b in later], [1_650_000_000, 1_650_000_001])
        self.assertFalse(dates_unknown(mailbox.messages()))
        self.assertEqual(self.listed_dates()[-2:], [1_650_000_000, 1_650_000_001])
        mailbox.with_dates(mailbox.messages())
        self.assertEqual(read_uidlist_token(self.path), token)

    def test_names_without_time_or_size_are_stated(self) -> None:
        """A name without its delivery time or size is stat-ed as before,
        and its date is known at once."""
        self.make_folder(("weird", "1700000000.x", "1700000001.M1.h,S=2"))
        mailbox = self.store.open_mailbox(self.path)
        got = {i.base: i.internal_date for i in mailbox.messages()}
        self.assertEqual(
            got,
            {
                "weird": 1_600_000_000,
                "1700000000.x": 1_600_000_001,
                "1700000001.M1.h,S=2": UNKNOWN_DATE,
            },
        )

    def test_with_dates(self) -> None:
        """with_dates gives the files' mtimes (whole seconds), for all or
        some messages, in the order given; known dates are kept."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        mtimes = self.mtimes()
        infos = mailbox.messages()
        dated = mailbox.with_dates(infos)
        self.assertEqual(
            [i.internal_date for i in dated], [mtimes[b] for b in self.NAMES]
        )
        self.assertEqual([i._replace(internal_date=0) for i in dated], infos)
        self.assertFalse(dates_unknown(dated))
        some = mailbox.with_dates([infos[4], infos[1]])
        self.assertEqual(
            [i.internal_date for i in some],
            [mtimes[self.NAMES[4]], mtimes[self.NAMES[1]]],
        )
        self.assertEqual(mailbox.with_dates(dated), dated)
        # The snapshot has them now too.
        self.assertEqual(mailbox.messages(), dated)
        self.assertEqual(mailbox.get(3), dated[2])

    def test_own_rewrite_no_change(self) -> None:
        """The list rewritten with the dates is this mailbox's own: no
        change on disk for it (a session would look again for nothing);
        another mailbox of the folder in this process adopts it."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        other = self.store.open_mailbox(self.path)
        dated = mailbox.with_dates(mailbox.messages())
        self.assertFalse(mailbox.changed_on_disk())
        self.assertFalse(mailbox.refresh())
        self.assertEqual(mailbox.messages(), dated)
        self.assertTrue(other.changed_on_disk())
        self.assertFalse(other.refresh())
        self.assertEqual(other.messages(), dated)

    def test_some_dates_known(self) -> None:
        """A snapshot with some dates known (names without their time) and
        others not: only the unknown ones are taken."""
        names = ("weird", *self.NAMES[:3])
        self.make_folder(names)
        mailbox = self.store.open_mailbox(self.path)
        self.assertEqual(
            [i.internal_date for i in mailbox.messages()][1:], [UNKNOWN_DATE] * 3
        )
        mtimes = self.mtimes()
        dated = mailbox.with_dates(mailbox.messages())
        self.assertEqual(
            {i.base: i.internal_date for i in dated}, {b: mtimes[b] for b in names}
        )
        self.assertEqual(sorted(self.listed_dates()), sorted(mtimes.values()))

    def test_dates_persisted(self) -> None:
        """The dates taken go into the UID list (rewritten once): after a
        restart they are known without asking, and a file's mtime changed
        later does not change them; UIDVALIDITY and UIDs stay."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        validity = mailbox.uidvalidity
        dated = mailbox.with_dates(mailbox.messages())
        token = read_uidlist_token(self.path)
        self.assertEqual(self.listed_dates(), [i.internal_date for i in dated])
        mailbox.with_dates(mailbox.messages())
        self.assertEqual(read_uidlist_token(self.path), token)
        for name in os.listdir(os.path.join(self.path, "cur")):
            os.utime(os.path.join(self.path, "cur", name), (1_000, 1_000))
        self.restart()
        again = self.store.open_mailbox(self.path)
        self.assertEqual(again.uidvalidity, validity)
        self.assertEqual(again.messages(), dated)
        self.assertEqual(again.with_dates(again.messages()), dated)

    def test_other_mailbox_takes_persisted_dates(self) -> None:
        """A second mailbox of the folder, opened before the dates were
        taken, gets them from the list the first one wrote (no stat: a
        file's mtime changed meanwhile does not show); after its next
        refresh its own snapshot has them."""
        self.make_folder()
        first = self.store.open_mailbox(self.path)
        second = self.store.open_mailbox(self.path)
        dated = first.with_dates(first.messages())
        for name in os.listdir(os.path.join(self.path, "cur")):
            os.utime(os.path.join(self.path, "cur", name), (1_000, 1_000))
        self.assertEqual(second.with_dates(second.messages()), dated)
        third = self.store.open_mailbox(self.path)
        third.refresh(force=True)
        self.assertEqual(third.messages(), dated)

    def test_lines_appended_meanwhile_kept(self) -> None:
        """Messages added to the list by others since the snapshot are kept
        when the dates are written (their own dates too)."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        other = self.store.open_mailbox(self.path)
        uid = other.add(b"appended", internal_date=1_234_567_890)
        dated = mailbox.with_dates(mailbox.messages())
        self.restart()
        again = self.store.open_mailbox(self.path)
        infos = again.messages()
        self.assertEqual(infos[:6], dated)
        self.assertEqual((infos[6].uid, infos[6].internal_date), (uid, 1_234_567_890))

    def test_renamed_and_gone_files(self) -> None:
        """A file renamed since the snapshot (a flag change by another
        program) is found again; one deleted gets the time in its name."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        mtimes = self.mtimes()
        cur = os.path.join(self.path, "cur")
        os.rename(
            os.path.join(cur, f"{self.NAMES[1]}:2,S"),
            os.path.join(cur, f"{self.NAMES[1]}:2,FS"),
        )
        os.unlink(os.path.join(cur, f"{self.NAMES[2]}:2,S"))
        dated = mailbox.with_dates(mailbox.messages())
        self.assertEqual(dated[1].internal_date, mtimes[self.NAMES[1]])
        self.assertEqual(dated[2].internal_date, 1_700_000_002)
        self.assertEqual(dated[3].internal_date, mtimes[self.NAMES[3]])

    def test_messages_not_in_snapshot(self) -> None:
        """Messages the snapshot no longer has (expunged by another since
        the caller took them) get the time in their names."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        infos = mailbox.messages()
        self.restarted_mailbox().expunge([2])
        mailbox.refresh(force=True)
        mtimes = self.mtimes()
        dated = mailbox.with_dates(infos)
        self.assertEqual(
            [i.internal_date for i in dated],
            [
                mtimes[self.NAMES[0]],
                1_700_000_001,
                *(mtimes[b] for b in self.NAMES[2:]),
            ],
        )

    def test_epoch_mtime(self) -> None:
        """A file whose mtime is the epoch keeps date 0 (it is what the
        file says) and the list is not rewritten for it again and again."""
        self.make_folder(self.NAMES[:2])
        os.utime(os.path.join(self.path, "cur", f"{self.NAMES[0]}:2,S"), (0, 0))
        mailbox = self.store.open_mailbox(self.path)
        dated = mailbox.with_dates(mailbox.messages())
        self.assertEqual(dated[0].internal_date, 0)
        self.assertEqual(dated[1].internal_date, 1_600_000_001)
        token = read_uidlist_token(self.path)
        self.assertEqual(mailbox.with_dates(mailbox.messages()), dated)
        self.assertEqual(read_uidlist_token(self.path), token)

    def test_list_lost_meanwhile(self) -> None:
        """When the UID list is gone before the dates are written, they are
        still given but no list is made (that is for the next listing, which
        then picks a new UIDVALIDITY)."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        os.unlink(os.path.join(self.path, UIDLIST_NAME))
        dated = mailbox.with_dates(mailbox.messages())
        self.assertFalse(dates_unknown(dated))
        self.assertFalse(os.path.exists(os.path.join(self.path, UIDLIST_NAME)))

    def test_unchanged_after_first_index(self) -> None:
        """The UID list the first indexing wrote is no change on disk for
        the mailbox that wrote it (a session would look again at once);
        one appended by another afterwards is."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        self.assertFalse(mailbox.changed_on_disk())
        self.assertFalse(mailbox.refresh())
        other = self.restarted_mailbox()
        other.add(b"appended")
        self.assertTrue(mailbox.changed_on_disk())

    def restarted_mailbox(self) -> Mailbox:
        """The folder opened through another store (another process)."""
        return make_store(self.root, self.clock, self.opener).open_mailbox(self.path)

    def test_copy_takes_dates(self) -> None:
        """COPY gives the copies their real dates in the target's list,
        also when the source's were unknown."""
        self.make_folder()
        mailbox = self.store.open_mailbox(self.path)
        self.store.create_folder(self.path, "Archive")
        target = self.store.open_mailbox(self.path, "Archive")
        mapping = mailbox.copy([2, 5], target)
        target.refresh()
        mtimes = self.mtimes()
        self.assertEqual(
            [i.internal_date for i in target.messages()],
            [mtimes[self.NAMES[1]], mtimes[self.NAMES[4]]],
        )
        self.assertEqual(sorted(mapping), [2, 5])


class MigrationTests(StoreCase):
    """Maildirs written by Dovecot and by twisted.mail are readable, and
    their own files are left alone."""

    def test_dovecot(self) -> None:
        """Dovecot's UIDs, UIDVALIDITY, flags, keywords and sizes are used;
        its files are not changed."""
        os.makedirs(self.path)
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(self.path, sub))
        names = {
            "cur/1700000000.M1P10.old,S=5,W=6:2,S": b"1234\n",
            "cur/1700000001.M2P10.old,S=5,W=6:2,FSb": b"abcd\n",
            "new/1700000002.M3P10.old,S=3,W=3": b"new",
        }
        for name, data in names.items():
            write_file(os.path.join(self.path, name), data, 1_700_000_000)
        dovecot = {
            "dovecot-uidlist": (
                b"3 V1234567 N20 Gabcdef\n"
                b"7 :1700000000.M1P10.old,S=5,W=6\n"
                b"12 W6 :1700000001.M2P10.old,S=5,W=6:2,FSb\n"
            ),
            "dovecot-keywords": b"0 $Junk\n1 $Important\n",
        }
        for name, data in dovecot.items():
            write_file(os.path.join(self.path, name), data)
        mailbox = self.store.open_mailbox(self.path)
        infos = mailbox.messages()
        self.assertEqual(mailbox.uidvalidity, 1234567)
        self.assertEqual([i.uid for i in infos], [7, 12, 20])
        self.assertEqual([i.flags for i in infos], [{"S"}, {"F", "S"}, set()])
        self.assertEqual(infos[1].keywords, {"$Important"})
        self.assertEqual([i.size for i in infos], [5, 5, 3])
        self.assertEqual(mailbox.read(12), b"abcd\n")
        self.assertEqual(mailbox.next_uid, 21)
        for name, data in dovecot.items():
            with open(os.path.join(self.path, name), "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertTrue(os.path.exists(os.path.join(self.path, UIDLIST_NAME)))

    def test_twisted_mail(self) -> None:
        """twisted.mail's names (no info suffix, no size) are served, sizes
        from stat."""
        os.makedirs(self.path)
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(self.path, sub))
        write_file(os.path.join(self.path, "cur", "1700000000.1234_1.host"), b"hello")
        write_file(os.path.join(self.path, "new", "1700000001.1234_2.host"), b"hi")
        mailbox = self.store.open_mailbox(self.path)
        infos = mailbox.messages()
        self.assertEqual([(i.size, i.flags) for i in infos], [(5, set()), (2, set())])
        self.assertEqual(mailbox.read(infos[0].uid), b"hello")
        mailbox.set_flags(infos[0].uid, {"S"})
        self.assertEqual(
            os.listdir(os.path.join(self.path, "cur")), ["1700000000.1234_1.host:2,S"]
        )


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "maildir")


def copy_maildir(name: str, target: str) -> dict[str, bytes]:
    """Copy a Maildir from tests/data/maildir (making the empty cur/, new/
    and tmp/ git does not keep); return every file's bytes by relative
    path."""
    shutil.copytree(os.path.join(DATA, name), target)
    files: dict[str, bytes] = {}
    for folder in [target] + [
        os.path.join(target, e) for e in os.listdir(target) if e.startswith(".")
    ]:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for directory, _, names in os.walk(target):
        for n in names:
            full = os.path.join(directory, n)
            with open(full, "rb") as f:
                files[os.path.relpath(full, target)] = f.read()
    return files


class RealMigrationTests(StoreCase):
    """Maildirs written by the real Dovecot and twisted.mail (fixtures in
    tests/data/maildir, made as its README says)."""

    def test_dovecot(self) -> None:
        """Dovecot's UIDs, UIDVALIDITY, flags (also on messages it left in
        new/), keywords and sizes; every file of Dovecot's unchanged after
        reading and changing flags; our list beside theirs."""
        before = copy_maildir("dovecot", self.path)
        inbox = self.store.open_mailbox(self.path)
        infos = inbox.messages()
        self.assertEqual(inbox.uidvalidity, 1795435604)
        self.assertEqual([i.uid for i in infos], [1, 2, 4])
        self.assertEqual(inbox.next_uid, 5)
        self.assertEqual([i.flags for i in infos], [{"S"}, {"F", "R"}, set()])
        self.assertEqual(
            [i.keywords for i in infos], [{"$Junk"}, {"$Important"}, set()]
        )
        for info in infos:
            data = inbox.read(info.uid)
            self.assertEqual(len(data), info.size)
            self.assertEqual(data, before[info.filename])
        self.assertIn(b"Subject: two", inbox.read(2))
        trash = self.store.open_mailbox(self.path, "Trash")
        [deleted] = trash.messages()
        self.assertEqual((deleted.uid, deleted.flags), (1, {"T"}))
        self.assertEqual(trash.uidvalidity, 1795435605)
        self.assertEqual(trash.next_uid, 2)
        inbox.set_flags(4, {"S"}, {"$Junk"})
        inbox.take_recent()
        self.restart()
        again = self.store.open_mailbox(self.path)
        self.assertEqual([i.uid for i in again.messages()], [1, 2, 4])
        self.assertEqual(again.get(4).keywords, {"$Junk"})
        self.assertEqual(
            [(i.flags, i.keywords, i.recent) for i in again.messages()[:2]],
            [({"S"}, {"$Junk"}, False), ({"F", "R"}, {"$Important"}, False)],
        )
        self.assertEqual(again.uidvalidity, 1795435604)
        dovecot_files = [p for p in before if "dovecot" in os.path.basename(p)]
        self.assertEqual(len(dovecot_files), 10)
        for relative in dovecot_files:
            with open(os.path.join(self.path, relative), "rb") as f:
                self.assertEqual(f.read(), before[relative], relative)
        for folder in (self.path, os.path.join(self.path, ".Trash")):
            self.assertTrue(os.path.exists(os.path.join(folder, UIDLIST_NAME)))

    def test_twisted_mail(self) -> None:
        """twisted.mail's messages (no size, no info) are served in name
        order, sizes from stat; its .Trash is a folder."""
        before = copy_maildir("twisted-mail", self.path)
        for name in os.listdir(os.path.join(self.path, "new")):
            os.utime(os.path.join(self.path, "new", name), (1_700_000_000,) * 2)
        mailbox = self.store.open_mailbox(self.path)
        infos = mailbox.with_dates(mailbox.messages())
        self.assertEqual([i.uid for i in infos], [1, 2, 3])
        self.assertEqual(
            [i.filename for i in infos], sorted(p for p in before if "new/" in p)
        )
        for info in infos:
            self.assertEqual(mailbox.read(info.uid), before[info.filename])
            self.assertEqual(info.size, len(before[info.filename]))
            self.assertEqual(info.flags, frozenset())
        self.assertIn(b"Subject: two", mailbox.read(2))
        self.assertEqual(self.store.list_folders(self.path), ["INBOX", "Trash"])
        mailbox.set_flags(1, {"S"})
        self.restart()
        self.assertEqual(self.store.open_mailbox(self.path).get(1).flags, {"S"})


#: A directory time with a part below the millisecond (a file system with
#: fine time stamps), a hundred seconds after the test clock's start.
FINE_TIME = 1_790_000_100_123_456_789


class ChangeWindowTests(StoreCase):
    """How soon after a directory's last change its listing is trusted
    (L{Mailbox.changed_on_disk}, L{Mailbox.refresh}): a change made within
    the same timestamp tick as the one before it keeps the directory's
    time, and must never be missed."""

    def setUp(self) -> None:
        super().setUp()
        for i in range(3):
            self.deliver(b"Subject: %d\r\n\r\nbody\r\n" % i, f"Q{i}")
        mailbox = self.store.open_mailbox(self.path)
        mailbox.take_recent()
        mailbox.close()

    def set_times(self, mtime_ns: int, age: float) -> None:
        """Give new/ and cur/ this time, and move the clock C{age} seconds
        past it (forward only)."""
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), ns=(mtime_ns, mtime_ns))
        self.clock.advance(mtime_ns / 1e9 + age - self.clock.seconds())

    def open(self) -> Mailbox:
        mailbox = self.store.open_mailbox(self.path)
        self.addCleanup(mailbox.close)
        return mailbox

    def flag_outside(self, mtime_ns: int) -> str:
        """Another program sets \\Seen on one message; cur/ keeps (or gets)
        the time C{mtime_ns}.  Returns the message's new file name."""
        cur = os.path.join(self.path, "cur")
        name = sorted(os.listdir(cur))[0]
        self.assertTrue(name.endswith(":2,"))
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "S"))
        os.utime(cur, ns=(mtime_ns, mtime_ns))
        return "cur/" + name + "S"

    def seen(self, mailbox: Mailbox) -> list[str]:
        """The file names of the snapshot's \\Seen messages."""
        return [i.filename for i in mailbox.messages() if "S" in i.flags]

    def test_same_tick_change_seen(self) -> None:
        """A change 50 ms after the last one, with the same directory time
        (as within one timestamp tick), is found by the next look."""
        self.set_times(FINE_TIME, 0.05)
        mailbox = self.open()
        generation = mailbox.generation
        renamed = self.flag_outside(FINE_TIME)
        self.assertTrue(mailbox.changed_on_disk())
        self.assertTrue(mailbox.refresh())
        self.assertEqual(self.seen(mailbox), [renamed])
        self.assertNotEqual(mailbox.generation, generation)

    def test_own_change_undone_outside(self) -> None:
        """A flag change made through the mailbox and undone by another
        program within the same tick is seen, though the folder then holds
        the same names as when it was last listed."""
        self.set_times(FINE_TIME, 0.05)
        mailbox = self.open()
        info = mailbox.messages()[0]
        changed = mailbox.set_flags(info.uid, {"F"})
        os.rename(
            os.path.join(self.path, changed.filename),
            os.path.join(self.path, info.filename),
        )
        # A delivery that another mailbox gives a UID (appended to the
        # list: only the new rows would need looking up).
        self.deliver(b"Subject: 4\r\n\r\nbody\r\n", "Q4")
        other = self.open()
        self.assertEqual(len(other), 4)
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), ns=(FINE_TIME, FINE_TIME))
        self.assertTrue(mailbox.changed_on_disk())
        self.assertTrue(mailbox.refresh())
        self.assertEqual(mailbox.get(info.uid), info)
        self.assertEqual(len(mailbox), 4)

    def test_same_names_listed_again(self) -> None:
        """Within the window every look lists the folder again; finding the
        same names changes nothing (not the generation either)."""
        self.set_times(FINE_TIME, 0.05)
        mailbox = self.open()
        before = mailbox.messages()
        generation = mailbox.generation
        self.assertTrue(mailbox.changed_on_disk())
        self.assertFalse(mailbox.refresh())
        self.assertFalse(mailbox.refresh(force=True))
        self.assertEqual(mailbox.messages(), before)
        self.assertEqual(mailbox.generation, generation)

    def test_fine_time_settles_fast(self) -> None:
        """A fine-grained directory time 0.2 s old is trusted: nothing to
        look at while it stays; a change (a new time) is found."""
        self.set_times(FINE_TIME, 0.2)
        mailbox = self.open()
        generation = mailbox.generation
        self.assertFalse(mailbox.changed_on_disk())
        self.assertFalse(mailbox.refresh())
        self.assertEqual(mailbox.generation, generation)
        later = FINE_TIME + 300_000_000
        renamed = self.flag_outside(later)
        self.clock.advance(0.5)
        self.assertTrue(mailbox.changed_on_disk())
        self.assertTrue(mailbox.refresh())
        self.assertEqual(self.seen(mailbox), [renamed])

    def test_whole_millisecond_time(self) -> None:
        """A directory time in whole milliseconds may come from a file
        system with coarse time stamps: it is not trusted for two seconds,
        and a change within them with the same time is found."""
        coarse = FINE_TIME - FINE_TIME % 1_000_000_000
        self.set_times(coarse, 0.5)
        mailbox = self.open()
        self.assertTrue(mailbox.changed_on_disk())
        renamed = self.flag_outside(coarse)
        self.assertTrue(mailbox.refresh())
        self.assertEqual(self.seen(mailbox), [renamed])
        self.clock.advance(2)
        self.assertTrue(mailbox.changed_on_disk())  # not looked at since
        mailbox.refresh()
        self.assertFalse(mailbox.changed_on_disk())

    def test_time_ahead(self) -> None:
        """A directory time ahead of the clock (another machine's clock) is
        trusted only two seconds or more ahead, as before."""
        self.set_times(FINE_TIME + 1_000_000_000, -0.5)
        mailbox = self.open()
        self.assertTrue(mailbox.changed_on_disk())
        renamed = self.flag_outside(FINE_TIME + 1_000_000_000)
        self.assertTrue(mailbox.refresh())
        self.assertEqual(self.seen(mailbox), [renamed])
        self.set_times(FINE_TIME + 5_000_000_000, -3.0)
        mailbox.refresh()
        self.assertFalse(mailbox.changed_on_disk())


class GenerationTests(StoreCase):
    """L{Mailbox.generation} changes with the snapshot, and only then."""

    def setUp(self) -> None:
        super().setUp()
        for i in range(3):
            self.deliver(b"Subject: %d\r\n\r\nbody\r\n" % i, f"Q{i}")
        self.mailbox = self.store.open_mailbox(self.path)
        self.addCleanup(self.mailbox.close)

    def assertChanges(self, f: Callable[[], object], changes: bool = True) -> None:
        """Whether calling C{f} changes the generation."""
        before = self.mailbox.generation
        f()
        if changes:
            self.assertNotEqual(self.mailbox.generation, before)
        else:
            self.assertEqual(self.mailbox.generation, before)

    def test_unchanged_refresh(self) -> None:
        """A refresh that finds nothing new keeps it, forced or not."""
        self.assertChanges(self.mailbox.refresh, changes=False)
        self.assertChanges(lambda: self.mailbox.refresh(force=True), changes=False)

    def test_own_changes(self) -> None:
        """Claiming recent messages, flag changes (even to the same flags)
        and expunges change it."""
        self.assertChanges(self.mailbox.take_recent)
        self.assertChanges(lambda: self.mailbox.set_flags(1, {"S"}))
        self.assertChanges(lambda: self.mailbox.set_flags(1, {"S"}))
        self.assertChanges(lambda: self.mailbox.set_flags_many([(2, {"F"}, ())]))
        self.assertChanges(lambda: self.mailbox.set_flags(3, (), {"$Work"}))
        self.assertChanges(lambda: self.mailbox.expunge([2]))

    def test_others_changes(self) -> None:
        """A delivery, and a flag change by another mailbox, change it at
        the next refresh."""
        self.deliver(b"Subject: 4\r\n\r\nbody\r\n", "Q4")
        self.assertChanges(self.mailbox.refresh)
        other = self.store.open_mailbox(self.path)
        self.addCleanup(other.close)
        other.set_flags(1, {"S"})
        self.assertChanges(self.mailbox.refresh)
        self.assertChanges(self.mailbox.refresh, changes=False)

    def test_new_uidvalidity(self) -> None:
        """A new UID list that gives the same UIDs to the same files under a
        new UIDVALIDITY changes it."""
        # Opened again once the list exists (the first snapshot's disk
        # state was taken before the list was written).
        self.restart()
        self.mailbox = self.store.open_mailbox(self.path)
        self.addCleanup(self.mailbox.close)
        validity = self.mailbox.uidvalidity
        os.unlink(os.path.join(self.path, UIDLIST_NAME))
        self.clock.advance(10)
        self.assertChanges(self.mailbox.refresh)
        self.assertNotEqual(self.mailbox.uidvalidity, validity)
        self.assertEqual(self.mailbox.uids(), [1, 2, 3])
