"""Tests for L{twistedmail.spool.store}."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from dataclasses import dataclass, field, replace

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.spool_helpers import FsyncRecorder, ManualThreads
from twistedmail.interfaces import Envelope, IDeliveryAgent, Recipient
from twistedmail.replies import PermanentError, Reply, TemporaryError
from twistedmail.spool.store import (
    _OPEN_FILES,
    DEFERRED,
    FAILED,
    MAX_SPARES,
    QueueEntry,
    RecipientRecord,
    Spool,
    fast_replace,
    make_queue_id,
    read_entry_file,
    submit_incoming,
)

MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"

ENVELOPE = Envelope(
    sender="alice@example.org",
    body_type="8BITMIME",
    smtputf8=True,
    ret="HDRS",
    envid="env-1",
    client_address="192.0.2.7",
    client_name="mx.example.org",
    auth_user="alice@example.org",
    tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
    received_at=1700000000.25,
    protocol="ESMTPSA",
)


def _commit(
    spool: Spool,
    recipients: tuple[Recipient, ...] = (Recipient("bob@example.com"),),
    body: tuple[bytes, ...] = (MESSAGE,),
    envelope: Envelope = ENVELOPE,
) -> Deferred[str]:
    agent = spool.agent()
    agent.start(envelope)
    for r in recipients:
        agent.add_recipient(r)
    for chunk in body:
        agent.body(chunk)
    return agent.commit()


class SpoolTestCase(SynchronousTestCase):
    """Gives each test a spool in a temporary folder with a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.fsync = FsyncRecorder()
        self.path = self.mktemp()
        self.spool = Spool(self.path, self.clock, fsync=self.fsync)
        self.spool.prepare()

    def commit(self, *args: object, **kwargs: object) -> str:
        """Commit one message and run the reactor turn that makes it durable."""
        d = _commit(self.spool, *args, **kwargs)  # type: ignore[arg-type]
        self.clock.advance(0)
        return self.successResultOf(d)

    def files(self, sub: str) -> list[str]:
        """The names in one of the spool's folders."""
        return sorted(os.listdir(os.path.join(self.path, sub)))


class FormatTests(SpoolTestCase):
    """The entry format round trips and is checked when read."""

    def test_round_trip(self) -> None:
        """Every envelope field and DSN parameter comes back from disk."""
        recipients = (
            Recipient(
                "bob@example.com", ("SUCCESS", "DELAY"), "rfc822;bob@example.com"
            ),
            Recipient("carol@example.com"),
        )
        queue_id = self.commit(recipients)
        entry = self.successResultOf(self.spool.load(queue_id))
        self.assertEqual(entry.envelope, replace(ENVELOPE, recipients=recipients))
        self.assertEqual([r.status for r in entry.recipients], ["pending", "pending"])
        self.assertEqual(entry.size, len(MESSAGE))
        spool2 = Spool(self.path, self.clock)
        self.assertEqual(self.successResultOf(spool2.read_message(queue_id)), MESSAGE)

    def test_layout(self) -> None:
        """The file has the magic and version line, one JSON line, the message,
        and the END line with the message size."""
        queue_id = self.commit()
        with open(os.path.join(self.path, "queue", queue_id), "rb") as f:
            content = f.read()
        self.assertTrue(content.startswith(b"TWISTEDMAIL-QUEUE 1\n{"))
        self.assertTrue(content.endswith(MESSAGE + b"END %d\n" % len(MESSAGE)))
        self.assertEqual(self.files("tmp"), [])

    def test_streamed(self) -> None:
        """A body over the flush threshold is written in pieces and reads back
        whole."""
        spool = Spool(self.path, self.clock, flush_threshold=10)
        chunks = tuple(b"line %d\r\n" % i for i in range(50))
        d = _commit(spool, body=chunks)
        self.clock.advance(0)
        queue_id = self.successResultOf(d)
        fresh = Spool(self.path, self.clock)
        self.assertEqual(
            self.successResultOf(fresh.read_message(queue_id)), b"".join(chunks)
        )

    def test_status_round_trip(self) -> None:
        """update_status rewrites the recipients; load reads them back."""
        queue_id = self.commit()
        record = RecipientRecord(
            "bob@example.com",
            status=DEFERRED,
            reason="mailbox full",
            reply=Reply(452, "4.2.2", "Mailbox full"),
            attempts=2,
            last_attempt=1700000001.0,
            next_attempt=1700000301.0,
            done=("mailbox:x@example.com",),
        )
        d = self.spool.update_status(queue_id, [record], held=True)
        self.clock.advance(0)
        updated = self.successResultOf(d)
        entry = self.successResultOf(Spool(self.path, self.clock).load(queue_id))
        self.assertEqual(entry, updated)
        self.assertEqual(entry.recipients, (record,))
        self.assertTrue(entry.held)
        with open(os.path.join(self.path, "queue", queue_id + ".status"), "rb") as f:
            self.assertTrue(f.read().endswith(b"}\nEND\n"))

    @given(
        address=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"])),
        reason=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"])),
        attempts=st.integers(0, 1000),
        when=st.none() | st.floats(0, 1e10),
        notify=st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY", "NEVER"])),
    )
    def test_record_json(
        self,
        address: str,
        reason: str,
        attempts: int,
        when: float | None,
        notify: list[str],
    ) -> None:
        """A recipient record survives its JSON form unchanged."""
        record = RecipientRecord(
            address,
            tuple(notify),
            status=FAILED,
            reason=reason,
            reply=Reply(550, "5.1.1", reason),
            attempts=attempts,
            next_attempt=when,
            parent=address or None,
        )
        self.assertEqual(RecipientRecord.from_json(record.to_json()), record)

    def test_ids_sort_by_time(self) -> None:
        """Queue ids are unique and sort in arrival order."""
        ids = [make_queue_id(1700000000 + i / 10, i) for i in range(20)]
        self.assertEqual(sorted(ids), ids)
        self.assertEqual(len(set(ids)), 20)
        same = {make_queue_id(1.0, 0) for _ in range(50)}
        self.assertEqual(len(same), 50)


class QuarantineTests(SpoolTestCase):
    """Files without their END line are moved aside, never deleted."""

    def test_truncated_entry(self) -> None:
        """A truncated entry file goes to quarantine/ with its bytes intact."""
        queue_id = self.commit()
        path = os.path.join(self.path, "queue", queue_id)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 3)
            f.seek(0)
            truncated = f.read()
        self.assertEqual(self.successResultOf(self.spool.open_entries()), [])
        self.assertEqual(self.files("queue"), [])
        self.assertEqual(self.files("quarantine"), [queue_id])
        with open(os.path.join(self.path, "quarantine", queue_id), "rb") as f:
            self.assertEqual(f.read(), truncated)

    def test_wrong_size(self) -> None:
        """An END line whose size does not match the message is refused."""
        queue_id = self.commit()
        path = os.path.join(self.path, "queue", queue_id)
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content.replace(MESSAGE, MESSAGE[5:]))
        self.failureResultOf(self.spool.load(queue_id))
        self.assertEqual(self.files("quarantine"), [queue_id])

    def test_truncated_status(self) -> None:
        """A status file without END is quarantined; the entry stays, with the
        recipients it was first written with."""
        queue_id = self.commit()
        status = os.path.join(self.path, "queue", queue_id + ".status")
        with open(status, "wb") as f:
            f.write(b'TWISTEDMAIL-STATUS 1\n{"id": "x", "recipients": []}\n')
        entries = self.successResultOf(self.spool.open_entries())
        self.assertEqual([e.queue_id for e in entries], [queue_id])
        self.assertEqual(entries[0].recipients[0].status, "pending")
        self.assertEqual(self.files("quarantine"), [queue_id + ".status"])

    def test_orphan_status(self) -> None:
        """A status file whose entry is gone is quarantined."""
        with open(os.path.join(self.path, "queue", "ABC.status"), "wb") as f:
            f.write(b"TWISTEDMAIL-STATUS 1\n{}\nEND\n")
        self.assertEqual(self.successResultOf(self.spool.open_entries()), [])
        self.assertEqual(self.files("quarantine"), ["ABC.status"])

    def test_newer_version_left_alone(self) -> None:
        """A file from a newer format version is neither read nor moved."""
        with open(os.path.join(self.path, "queue", "ABC"), "wb") as f:
            f.write(b"TWISTEDMAIL-QUEUE 2\n{}\nEND 0\n")
        self.assertEqual(self.successResultOf(self.spool.open_entries()), [])
        self.assertEqual(self.files("queue"), ["ABC"])
        self.assertEqual(self.files("quarantine"), [])

    def test_same_name_twice(self) -> None:
        """A second broken file of the same name does not overwrite the first."""
        for _ in range(2):
            with open(os.path.join(self.path, "queue", "ABC"), "wb") as f:
                f.write(b"garbage")
            self.successResultOf(self.spool.open_entries())
        self.assertEqual(self.files("quarantine"), ["ABC", "ABC.1"])


class DurabilityTests(SpoolTestCase):
    """The commit fires only after the file and folder fsyncs."""

    def test_commit_after_fsyncs(self) -> None:
        """Order: file fsync, folder fsync, then the commit's callback."""
        d = _commit(self.spool)
        d.addCallback(lambda _: self.fsync.events.append("committed"))
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertEqual(self.fsync.events, ["file", "dir", "committed"])

    def test_no_recipients(self) -> None:
        """A transaction without recipients is refused and leaves nothing."""
        d = _commit(self.spool, recipients=())
        self.clock.advance(0)
        self.failureResultOf(d, PermanentError)
        self.assertEqual(self.files("queue"), [])

    def test_fsync_failure(self) -> None:
        """A full disk gives 452 4.3.1 and removes the temporary file."""
        self.fsync.fail = OSError(errno.ENOSPC, "full")
        d = _commit(self.spool)
        self.clock.advance(0)
        failure = self.failureResultOf(d, TemporaryError)
        self.assertEqual(failure.value.reply.status, "4.3.1")
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(self.files("queue"), [])

    def test_abort(self) -> None:
        """Abort after part of the body was written removes the temporary file."""
        spool = Spool(self.path, self.clock, flush_threshold=4)
        agent = spool.agent()
        agent.start(ENVELOPE)
        agent.add_recipient(Recipient("bob@example.com"))
        agent.body(b"0123456789")
        self.assertEqual(len(self.files("tmp")), 1)
        agent.abort()
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(self.files("queue"), [])

    def test_agent_interface(self) -> None:
        """The agent provides IDeliveryAgent."""
        self.assertTrue(verifyObject(IDeliveryAgent, self.spool.agent()))

    def test_remove(self) -> None:
        """remove() deletes the entry and its status file."""
        queue_id = self.commit()
        self.spool.update_status(queue_id, [RecipientRecord("x@example.com")])
        self.clock.advance(0)
        self.successResultOf(self.spool.remove(queue_id))
        self.assertEqual(self.files("queue"), [])
        self.assertEqual(self.successResultOf(self.spool.list()), [])

    def test_remove_without_status(self) -> None:
        """An entry this spool committed and never updated is removed whole
        (it has no status file to remove)."""
        queue_id = self.commit()
        self.successResultOf(self.spool.remove(queue_id))
        self.assertEqual(self.files("queue"), [])

    def test_remove_after_restart(self) -> None:
        """A spool that did not commit the entry (after a restart) also
        removes the status file an earlier run wrote."""
        queue_id = self.commit()
        self.spool.update_status(queue_id, [RecipientRecord("x@example.com")])
        self.clock.advance(0)
        self.assertEqual(self.files("queue"), [queue_id, f"{queue_id}.status"])
        later = Spool(self.path, self.clock, fsync=self.fsync)
        self.successResultOf(later.remove(queue_id))
        self.assertEqual(self.files("queue"), [])

    def test_remove_after_status_written_later(self) -> None:
        """A status file written after the commit is removed with the entry."""
        queue_id = self.commit()
        entry = self.successResultOf(self.spool.load(queue_id))
        d = self.spool.update(replace(entry, held=True))
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertIn(f"{queue_id}.status", self.files("queue"))
        self.successResultOf(self.spool.remove(queue_id))
        self.assertEqual(self.files("queue"), [])


class SpareTests(SpoolTestCase):
    """Removed entry files are kept in spare/ and overwritten by new ones."""

    def entry_file(self, queue_id: str) -> str:
        """The path of an entry's file."""
        return os.path.join(self.path, "queue", queue_id)

    def test_removed_entry_becomes_spare(self) -> None:
        """remove() renames the entry file into spare/ (its status file goes)."""
        queue_id = self.commit()
        self.spool.update_status(queue_id, [RecipientRecord("x@example.com")])
        self.clock.advance(0)
        inode = os.stat(self.entry_file(queue_id)).st_ino
        self.successResultOf(self.spool.remove(queue_id))
        self.assertEqual(self.files("queue"), [])
        self.assertEqual(self.files("spare"), [queue_id])
        self.assertEqual(os.stat(self.path + "/spare/" + queue_id).st_ino, inode)

    def test_new_entry_overwrites_spare(self) -> None:
        """The next entry is the spare's file, cut to its own length, fsynced,
        and reads back exactly."""
        big = self.commit(body=(b"x" * 5000 + b"\r\n",))
        inode = os.stat(self.entry_file(big)).st_ino
        self.successResultOf(self.spool.remove(big))
        fsyncs = self.fsync.events.count("file")
        small = self.commit()
        self.assertEqual(self.files("spare"), [])
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(os.stat(self.entry_file(small)).st_ino, inode)
        self.assertEqual(self.fsync.events.count("file"), fsyncs + 1)
        fresh = Spool(self.path, self.clock)
        self.assertEqual(self.successResultOf(fresh.read_message(small)), MESSAGE)
        entry, _ = read_entry_file(self.entry_file(small))
        self.assertEqual(entry.queue_id, small)
        with open(self.entry_file(small), "rb") as f:
            self.assertTrue(f.read().endswith(b"END %d\n" % len(MESSAGE)))

    def folders_at_fsync(self) -> list[tuple[list[str], list[str]]]:
        """Make the spool record, at each file fsync, the names in ``tmp/``
        and ``spare/``; the list they go into."""
        seen: list[tuple[list[str], list[str]]] = []
        spool = self.spool

        class Looking(FsyncRecorder):
            def __call__(self, fd: int) -> None:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    tmp = sorted(os.listdir(os.path.join(spool.path, "tmp")))
                    spare = sorted(os.listdir(os.path.join(spool.path, "spare")))
                    seen.append((tmp, spare))
                super().__call__(fd)

        self.spool = Spool(self.path, self.clock, fsync=Looking())
        self.spool.prepare()
        return seen

    def test_spare_overwritten_in_place(self) -> None:
        """A new entry's spare is written and fsynced where it lies in
        ``spare/`` (never renamed into ``tmp/``), then renamed into the
        queue."""
        first = self.commit()
        self.successResultOf(self.spool.remove(first))
        seen = self.folders_at_fsync()
        inode = os.stat(os.path.join(self.path, "spare", first)).st_ino
        second = self.commit()
        self.assertEqual(seen, [([], [first])])
        self.assertEqual(self.files("spare"), [])
        self.assertEqual(os.stat(self.entry_file(second)).st_ino, inode)
        fresh = Spool(self.path, self.clock)
        self.assertEqual(self.successResultOf(fresh.read_message(second)), MESSAGE)

    def test_status_rewrite_spare_in_place(self) -> None:
        """A status rewrite's spare is also written in ``spare/`` and
        renamed straight over the status file."""
        first = self.commit()
        second = self.commit()
        self.successResultOf(self.spool.remove(first))
        seen = self.folders_at_fsync()
        record = RecipientRecord("x@example.com", attempts=2)
        d = self.spool.update_status(second, [record])
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(seen, [([], [first])])
        self.assertEqual(self.files("spare"), [])
        self.assertEqual(self.files("tmp"), [])
        fresh = Spool(self.path, self.clock)
        self.assertEqual(
            self.successResultOf(fresh.read_status(second)), ((record,), False)
        )

    def test_failed_spare_write_stays_spare(self) -> None:
        """When the spare's fsync fails, the commit fails, nothing reaches
        the queue or ``tmp/``, and the spare stays in ``spare/`` (a later
        run adopts it)."""
        first = self.commit()
        self.successResultOf(self.spool.remove(first))
        failing = Spool(self.path, self.clock, fsync=FsyncRecorder(OSError(5, "EIO")))
        failing.prepare()
        d = _commit(failing)
        self.clock.advance(0)
        self.failureResultOf(d)
        self.assertEqual(self.files("queue"), [])
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(self.files("spare"), [first])
        later = Spool(self.path, self.clock, fsync=self.fsync)
        d = _commit(later)
        self.clock.advance(0)
        queue_id = self.successResultOf(d)
        self.assertEqual(self.files("spare"), [])
        self.assertEqual(self.successResultOf(later.read_message(queue_id)), MESSAGE)

    def test_spare_that_is_also_an_entry(self) -> None:
        """A file in ``spare/`` that is also an entry's file (a crash kept
        both names of a rename) is not adopted: its spare name goes, and the
        entry keeps its bytes when the next entry is written."""
        queue_id = self.commit()
        os.link(self.entry_file(queue_id), os.path.join(self.path, "spare", "old"))
        with open(self.entry_file(queue_id), "rb") as f:
            before = f.read()
        later = Spool(self.path, self.clock, fsync=self.fsync)
        later.prepare()
        self.assertEqual(self.files("spare"), [])
        d = _commit(later, body=(b"other\r\n",))
        self.clock.advance(0)
        self.successResultOf(d)
        with open(self.entry_file(queue_id), "rb") as f:
            self.assertEqual(f.read(), before)

    def test_vanished_spare(self) -> None:
        """A spare someone removed meanwhile: the entry is a new file."""
        first = self.commit()
        self.successResultOf(self.spool.remove(first))
        os.unlink(os.path.join(self.path, "spare", first))
        second = self.commit()
        fresh = Spool(self.path, self.clock)
        self.assertEqual(self.successResultOf(fresh.read_message(second)), MESSAGE)

    def test_at_most_max_spares(self) -> None:
        """Beyond MAX_SPARES, removed entry files are unlinked."""
        ds = [_commit(self.spool) for _ in range(MAX_SPARES + 3)]
        self.clock.advance(0)
        ids = [self.successResultOf(d) for d in ds]
        for queue_id in ids:
            self.successResultOf(self.spool.remove(queue_id))
        self.assertEqual(len(self.files("spare")), MAX_SPARES)
        self.assertEqual(self.files("queue"), [])

    def test_spares_of_an_earlier_run(self) -> None:
        """A new spool uses the spares an earlier one left, and unlinks those
        beyond MAX_SPARES."""
        spare = os.path.join(self.path, "spare")
        for n in range(MAX_SPARES + 2):
            with open(os.path.join(spare, f"old{n}"), "wb") as f:
                f.write(b"spent")
        later = Spool(self.path, self.clock, fsync=self.fsync)
        later.prepare()
        self.assertEqual(len(self.files("spare")), MAX_SPARES)
        d = _commit(later)
        self.clock.advance(0)
        queue_id = self.successResultOf(d)
        self.assertEqual(len(self.files("spare")), MAX_SPARES - 1)
        self.assertEqual(self.successResultOf(later.read_message(queue_id)), MESSAGE)


class GroupCommitTests(SpoolTestCase):
    """Concurrent commits share folder fsyncs."""

    def test_same_turn(self) -> None:
        """Ten commits ready in one reactor turn cost one folder fsync."""
        ds = [_commit(self.spool) for _ in range(10)]
        self.clock.advance(0)
        ids = [self.successResultOf(d) for d in ds]
        self.assertEqual(len(set(ids)), 10)
        self.assertEqual(self.fsync.dirs, 1)
        self.assertEqual(self.spool.commits, 1)
        self.assertEqual(self.successResultOf(self.spool.list()), sorted(ids))

    def test_while_fsync_runs(self) -> None:
        """Commits that become ready while a batch runs share the next one:
        five commits, two thread jobs, two folder fsyncs."""
        threads = ManualThreads()
        spool = Spool(self.path, self.clock, threads, fsync=self.fsync)
        first = _commit(spool)
        self.clock.advance(0)  # its batch starts: one thread job
        self.assertEqual(len(threads.jobs), 1)
        others = [_commit(spool) for _ in range(4)]
        self.clock.advance(0)
        self.assertEqual(len(threads.jobs), 1)  # they wait for the batch
        threads.run_one()  # the first batch; the second one starts
        self.successResultOf(first)
        self.assertEqual(len(threads.jobs), 1)
        threads.run_one()
        for d in others:
            self.successResultOf(d)
        self.assertEqual(self.fsync.events.count("file"), 5)
        self.assertEqual(self.fsync.dirs, 2)
        self.assertEqual(threads.jobs, [])

    def test_one_failure(self) -> None:
        """A commit whose file fsync fails is refused alone (451, its
        temporary file removed); the others in its batch are committed."""
        calls: list[int] = []

        def flaky(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.EIO, "bad block")
            os.fsync(fd)

        spool = Spool(self.path, self.clock, fsync=flaky)
        ds = [_commit(spool) for _ in range(3)]
        self.clock.advance(0)
        first, third = self.successResultOf(ds[0]), self.successResultOf(ds[2])
        failure = self.failureResultOf(ds[1], TemporaryError)
        self.assertEqual(failure.value.reply.code, 451)
        self.assertEqual(len(calls), 4)  # three files, one folder
        self.assertEqual(self.files("queue"), sorted([first, third]))
        self.assertEqual(self.files("tmp"), [])

    def test_batch_step_by_step(self) -> None:
        """A batch writes every new file before the first fsync and renames
        none before the last: five messages and five status rewrites handed
        over in one turn are all in tmp/, whole, at each file fsync, and
        none is in the queue yet."""
        first = [self.commit() for _ in range(5)]
        seen: list[tuple[list[str], list[str]]] = []

        def watching(fd: int) -> None:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                tmp = os.path.join(self.path, "tmp")
                sizes = [os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp)]
                self.assertNotIn(0, sizes)
                seen.append((sorted(os.listdir(tmp)), self.files("queue")))
            os.fsync(fd)

        spool = Spool(self.path, self.clock, fsync=watching)
        queued = self.files("queue")
        ds = [_commit(spool) for _ in range(5)]
        updates = [
            spool.update_status(queue_id, [RecipientRecord("x@example.com")])
            for queue_id in first
        ]
        self.clock.advance(0)
        for d in ds:
            self.successResultOf(d)
        for u in updates:
            self.successResultOf(u)
        self.assertEqual(len(seen), 10)
        for tmp, queue in seen:
            self.assertEqual(len(tmp), 10)
            self.assertEqual(queue, queued)
        self.assertEqual(self.files("tmp"), [])
        self.assertEqual(len(self.files("queue")), 15)

    def test_many_files(self) -> None:
        """A batch of more new files than it keeps open at once
        (_OPEN_FILES) commits them all, with one folder fsync."""
        ds = [_commit(self.spool) for _ in range(_OPEN_FILES + 10)]
        self.clock.advance(0)
        ids = [self.successResultOf(d) for d in ds]
        self.assertEqual(self.files("queue"), sorted(ids))
        self.assertEqual(self.fsync.events.count("file"), _OPEN_FILES + 10)
        self.assertEqual(self.fsync.dirs, 1)

    def test_removal_batched(self) -> None:
        """Removals handed over while a batch runs go into the next one, with
        no folder fsync of their own."""
        queue_id = self.commit()
        threads = ManualThreads()
        spool = Spool(self.path, self.clock, threads, fsync=self.fsync)
        pending = _commit(spool)
        self.clock.advance(0)
        removed = spool.remove(queue_id)
        self.assertEqual(len(threads.jobs), 1)
        threads.run_one()
        self.successResultOf(pending)
        self.assertNoResult(removed)
        dirs = self.fsync.dirs
        threads.run_one()
        self.successResultOf(removed)
        self.assertEqual(self.fsync.dirs, dirs)
        self.assertNotIn(queue_id, self.files("queue"))


class IncomingTests(SpoolTestCase):
    """The sendmail drop works without the server and is picked up once."""

    def test_submit_and_pickup(self) -> None:
        """A dropped message becomes a queue entry with the same id; observers
        hear of it; incoming/ is empty after."""
        envelope = Envelope("root@localhost", (Recipient("bob@example.com"),))
        queue_id = submit_incoming(self.path, envelope, MESSAGE, now=1700000000.0)
        self.assertEqual(self.files("incoming"), [queue_id])
        seen: list[QueueEntry] = []
        self.spool.add_observer(seen.append)
        d = self.spool.pickup_incoming()
        self.clock.advance(0)
        self.assertEqual([e.queue_id for e in self.successResultOf(d)], [queue_id])
        self.assertEqual([e.queue_id for e in seen], [queue_id])
        self.assertEqual(self.files("incoming"), [])
        self.assertEqual(self.files("queue"), [queue_id])
        self.assertEqual(
            self.successResultOf(self.spool.read_message(queue_id)), MESSAGE
        )

    def test_without_spool_folders(self) -> None:
        """submit_incoming makes the folders it needs."""
        path = self.mktemp()
        submit_incoming(path, Envelope("a@b.example"), b"x\r\n", now=0.0)
        entry, offset = read_entry_file(
            os.path.join(
                path, "incoming", os.listdir(os.path.join(path, "incoming"))[0]
            )
        )
        self.assertEqual(entry.size, 3)

    def test_broken_incoming(self) -> None:
        """A broken file in incoming/ is quarantined, not queued."""
        with open(os.path.join(self.path, "incoming", "XYZ"), "wb") as f:
            f.write(b"TWISTEDMAIL-QUEUE 1\n{}\n")
        d = self.spool.pickup_incoming()
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.files("quarantine"), ["XYZ"])


class SweepTests(SpoolTestCase):
    """Files left in tmp/ by a crash are moved aside after a while."""

    def test_sweep(self) -> None:
        """Old tmp files go to quarantine/; recent ones stay."""
        old = os.path.join(self.path, "tmp", "old")
        new = os.path.join(self.path, "tmp", "new")
        for path in (old, new):
            with open(path, "wb") as f:
                f.write(b"partial")
        os.utime(old, (self.clock.seconds() - 7200, self.clock.seconds() - 7200))
        os.utime(new, (self.clock.seconds() - 60, self.clock.seconds() - 60))
        self.assertEqual(self.successResultOf(self.spool.sweep_tmp(3600)), 1)
        self.assertEqual(self.files("tmp"), ["new"])
        self.assertEqual(self.files("quarantine"), ["old"])


@dataclass(frozen=True)
class _Checked:
    """A dataclass whose __post_init__ must run on every copy."""

    n: int
    seen: list[int] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        self.seen.append(self.n)


@dataclass(frozen=True, slots=True)
class _Slotted:
    """A dataclass without an instance dict."""

    a: int
    b: str = ""


class FastReplaceTests(SynchronousTestCase):
    """fast_replace gives what dataclasses.replace gives."""

    @given(
        address=st.text(max_size=5),
        attempts=st.integers(0, 9),
        last=st.one_of(st.none(), st.floats(allow_nan=False)),
        done=st.lists(st.text(max_size=3), max_size=3).map(tuple),
    )
    def test_records(
        self, address: str, attempts: int, last: float | None, done: tuple[str, ...]
    ) -> None:
        """Recipient records and entries: equal to replace(), same type."""
        record = RecipientRecord(address, attempts=attempts)
        for changes in (
            {},
            {"attempts": attempts + 1, "last_attempt": last},
            {"done": done, "status": DEFERRED},
        ):
            fast = fast_replace(record, **changes)
            self.assertEqual(fast, replace(record, **changes))
            self.assertIs(type(fast), RecipientRecord)
            self.assertEqual(hash(fast), hash(replace(record, **changes)))
        entry = QueueEntry.new("Q1", replace(ENVELOPE, recipients=()))
        for changes in ({"size": attempts}, {"recipients": (record,), "held": True}):
            self.assertEqual(fast_replace(entry, **changes), replace(entry, **changes))
        self.assertEqual(
            fast_replace(ENVELOPE, sender=address), replace(ENVELOPE, sender=address)
        )

    def test_original_unchanged(self) -> None:
        """The copy is a new object; the original keeps its values."""
        record = RecipientRecord("a@example.org")
        copy = fast_replace(record, attempts=3)
        self.assertIsNot(copy, record)
        self.assertEqual(record.attempts, 0)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            copy.attempts = 4  # type: ignore[misc]

    def test_not_a_field(self) -> None:
        """A change naming no field fails as replace() fails."""
        record = RecipientRecord("a@example.org")
        with self.assertRaises(TypeError):
            fast_replace(record, nonsense=1)

    def test_other_dataclasses(self) -> None:
        """__post_init__ still runs, and slots dataclasses still copy."""
        checked = _Checked(1)
        copy = fast_replace(checked, n=2)
        self.assertEqual(copy.n, 2)
        self.assertEqual(checked.seen, [1, 2])
        self.assertEqual(fast_replace(_Slotted(1, "x"), b="y"), _Slotted(1, "y"))
