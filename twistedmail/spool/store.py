# -*- test-case-name: tests.test_spool -*-
"""The queue store (the seed's Spool): the only code that writes queue entries.

Step of the flow: the SMTP server (and ``twistedmail sendmail``) hand a
message here; once it is durable the server answers ``250``, and the
L{twistedmail.spool.runner.QueueRunner} takes it on to alias expansion and
delivery.

On-disk layout (under the spool directory)::

    tmp/          files being written (never read as entries)
    queue/<id>    one entry file per message
    queue/<id>.status   the entry's current status record, once it changed
    incoming/<id> entries dropped by ``sendmail`` while the server may be down
    quarantine/   broken files, moved here and never deleted
    spare/<id>    spent entry files, overwritten by the next new entries

Queue ids are 23 upper-case hex digits: 13 for the arrival time in
microseconds, 4 for a per-process sequence number, 6 random; sorting them
sorts the queue by arrival.

Entry file format, version 1 (``queue/<id>`` and ``incoming/<id>``)::

    TWISTEDMAIL-QUEUE 1\\n           magic and format version
    {envelope record}\\n             one line of JSON (ASCII)
    <message bytes>                  exactly as received (CRLF line ends)
    END <n>\\n                       n = the number of message bytes

The envelope record holds ``id``, ``sender`` (``""`` for the null sender),
``body_type``, ``smtputf8``, ``ret``, ``envid``, ``client_address``,
``client_name``, ``auth_user``, ``tls``, ``received_at`` (POSIX time),
``protocol`` and ``recipients``: a list of recipient records, each with
``address``, ``notify`` (list), ``orcpt``, ``status``, ``reason``, ``reply``
(``{"code", "status", "text"}`` or null), ``attempts``, ``last_attempt``,
``next_attempt``, ``done`` (the destinations already delivered to, see the
runner) and ``parent`` (the envelope recipient a record was expanded from, or
null for envelope recipients).

Recipient statuses: ``pending`` (not tried yet), ``deferred`` (a temporary
failure: ``reason``, ``reply`` and ``next_attempt`` say why and when),
``delivered``, ``expanded`` (an alias whose targets are all recorded as their
own records), ``remote`` (waiting for the outbound queue manager), ``failed``
(a permanent failure: ``reply``; kept until the bounce code has reported it
and marks it ``bounced``).

Status file format, version 1 (``queue/<id>.status``), rewritten as a whole
through a temporary file, fsync and rename::

    TWISTEDMAIL-STATUS 1\\n
    {"id": ..., "held": false, "recipients": [...]}\\n
    END\\n

When it exists its recipient list replaces the one in the entry file, which
is never rewritten.  A file without its END line (a crash while writing, a
full disk) is moved to ``quarantine/`` and logged, never deleted.  A file with
a newer version number is left alone and logged.

Durability: an entry is written to ``tmp/``, fsynced, renamed into
``queue/``, and ``queue/`` is fsynced before the transaction's commit fires.
Commits handed over while a batch is running (or within one reactor turn)
form the next batch (group commit): one thread-pool job writes every file
of the batch, then fsyncs each, then closes them, then renames them, and
fsyncs ``queue/`` once, so many concurrent SMTP transactions cost one
directory fsync and one trip to the thread pool, not one each.

Spare files: a removed entry's file is renamed into ``spare/`` (up to
L{MAX_SPARES} of them) instead of being unlinked, and the next new entry
file written whole, or the temporary file of the next status rewrite (the
relay's attempt record), is a spare overwritten where it lies in ``spare/``
(then cut to its length, fsynced and renamed into place as a new file in
``tmp/`` would be: one rename, not one into ``tmp/`` and one out of it).
Creating a file costs the kernel an inode allocation, and on ext4
without a journal that allocation skips every inode freed in the last few
minutes one by one, which on a busy queue (a file created and one deleted
per message) cost more CPU than the rest of the file's system calls
together.  A spare is only ever renamed and overwritten, so the durability
rules do not change: the new entry is fsynced before its rename
into ``queue/``.  Spares left by an earlier run are used again.  Status
rewrites and removals ride in the same batches.  The batch goes step by step
rather than file by file because each of those system calls hands the GIL
to the reactor thread, and taking it back can cost up to a switch interval
(5 ms) while the reactor is busy; with every file written before the first
fsync, the fsyncs that follow find most of the journal work done (see
``bench/outbound/commit.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail.interfaces import Envelope, IDeliveryAgent, Recipient
from twistedmail.logs import FastLogger
from twistedmail.replies import PermanentError, Reply, TemporaryError

__all__ = [
    "BOUNCED",
    "DELIVERED",
    "DEFERRED",
    "DONE_STATUSES",
    "EXPANDED",
    "FAILED",
    "FORMAT_VERSION",
    "BrokenEntry",
    "NewerVersion",
    "PENDING",
    "QueueEntry",
    "RecipientRecord",
    "REMOTE",
    "Spool",
    "SpoolDeliveryAgent",
    "fast_replace",
    "ThreadRunner",
    "make_queue_id",
    "read_entry_file",
    "read_message_file",
    "read_status_file",
    "submit_incoming",
]

log = FastLogger()

FORMAT_VERSION = 1
_ENTRY_MAGIC = b"TWISTEDMAIL-QUEUE"
_STATUS_MAGIC = b"TWISTEDMAIL-STATUS"
_MAX_RECORD = 16 * 1024 * 1024
_TAIL = 64

PENDING = "pending"
DEFERRED = "deferred"
DELIVERED = "delivered"
EXPANDED = "expanded"
REMOTE = "remote"
FAILED = "failed"
BOUNCED = "bounced"
#: Statuses after which a recipient needs nothing more.
DONE_STATUSES = frozenset({DELIVERED, EXPANDED, BOUNCED})
_STATUSES = frozenset({PENDING, DEFERRED, REMOTE, FAILED}) | DONE_STATUSES

QUEUE_WRITE_ERROR = Reply(451, "4.3.0", "Error writing the queue file")
QUEUE_FULL = Reply(452, "4.3.1", "Insufficient system storage")
NO_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")

_T = TypeVar("_T")


class ThreadRunner(Protocol):
    """Runs a blocking call off the reactor thread: ``run(f) -> Deferred``."""

    def __call__(self, f: Callable[[], _T], /) -> Deferred[_T]:
        """Call C{f} in a worker thread; fire with its result."""


class BrokenEntry(Exception):
    """A queue file that cannot be read (no END line, bad record)."""


class NewerVersion(Exception):
    """A queue file written by a newer twistedmail (left alone)."""


@dataclass(frozen=True)
class RecipientRecord:
    """One recipient's delivery state in a queue entry.

    @ivar address: the recipient address (RCPT TO, or an alias target).
    @ivar notify: DSN NOTIFY values (RFC 3461 §4.1).
    @ivar orcpt: DSN ORCPT (RFC 3461 §4.2) as ``type;xtext``, or None.
    @ivar status: one of the statuses in the module docstring.
    @ivar reason: why it is deferred or failed (for the log and queue tools).
    @ivar reply: the reply that deferred or failed it.
    @ivar attempts: how many delivery attempts were recorded.
    @ivar last_attempt: POSIX time of the last recorded attempt.
    @ivar next_attempt: when a deferred recipient is due again.
    @ivar done: destination keys already delivered to (the runner skips them
        on a retry, so programs and files get the message once).
    @ivar parent: the envelope recipient this record was expanded from.
    """

    address: str
    notify: tuple[str, ...] = ()
    orcpt: str | None = None
    status: str = PENDING
    reason: str = ""
    reply: Reply | None = None
    attempts: int = 0
    last_attempt: float | None = None
    next_attempt: float | None = None
    done: tuple[str, ...] = ()
    parent: str | None = None

    @property
    def is_done(self) -> bool:
        """Nothing more is needed for this recipient."""
        return self.status in DONE_STATUSES

    def to_json(self) -> dict[str, object]:
        """The JSON form used on disk."""
        reply = self.reply
        return {
            "address": self.address,
            "notify": list(self.notify),
            "orcpt": self.orcpt,
            "status": self.status,
            "reason": self.reason,
            "reply": None
            if reply is None
            else {"code": reply.code, "status": reply.status, "text": reply.text},
            "attempts": self.attempts,
            "last_attempt": self.last_attempt,
            "next_attempt": self.next_attempt,
            "done": list(self.done),
            "parent": self.parent,
        }

    @classmethod
    def from_json(cls, data: object) -> RecipientRecord:
        """Read the JSON form; raise L{BrokenEntry} when it is malformed."""
        if not isinstance(data, dict):
            raise BrokenEntry("recipient record is not an object")
        try:
            reply = data.get("reply")
            status = data.get("status", PENDING)
            if status not in _STATUSES:
                raise BrokenEntry(f"unknown recipient status {status!r}")
            return cls(
                address=_str(data["address"]),
                notify=tuple(_str(n) for n in data.get("notify", ())),
                orcpt=_opt_str(data.get("orcpt")),
                status=status,
                reason=_str(data.get("reason", "")),
                reply=None
                if reply is None
                else Reply(
                    _int(reply["code"]), _str(reply["status"]), _str(reply["text"])
                ),
                attempts=_int(data.get("attempts", 0)),
                last_attempt=_opt_float(data.get("last_attempt")),
                next_attempt=_opt_float(data.get("next_attempt")),
                done=tuple(_str(d) for d in data.get("done", ())),
                parent=_opt_str(data.get("parent")),
            )
        except (KeyError, TypeError) as e:
            raise BrokenEntry(f"bad recipient record: {e!r}") from None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class QueueEntry:
    """A queue entry's envelope record and current recipient states.

    @ivar queue_id: the entry's id.
    @ivar envelope: the envelope as received; its C{recipients} are the
        envelope recipients (records without a parent).
    @ivar recipients: every recipient record, expanded ones included.
    @ivar size: the message size in bytes.
    @ivar held: held by an operator (the runner leaves it alone).
    """

    queue_id: str
    envelope: Envelope
    recipients: tuple[RecipientRecord, ...]
    size: int = 0
    held: bool = False

    @property
    def is_done(self) -> bool:
        """Every recipient is done: the entry may be removed."""
        return all(r.is_done for r in self.recipients)

    def envelope_json(self) -> dict[str, object]:
        """The envelope record as written in the entry file."""
        e = self.envelope
        return {
            "id": self.queue_id,
            "sender": e.sender,
            "body_type": e.body_type,
            "smtputf8": e.smtputf8,
            "ret": e.ret,
            "envid": e.envid,
            "client_address": e.client_address,
            "client_name": e.client_name,
            "auth_user": e.auth_user,
            "tls": e.tls,
            "received_at": e.received_at,
            "protocol": e.protocol,
            "recipients": [r.to_json() for r in self.recipients],
        }

    @classmethod
    def from_json(cls, data: object, size: int) -> QueueEntry:
        """Read an envelope record; raise L{BrokenEntry} when malformed."""
        if not isinstance(data, dict):
            raise BrokenEntry("envelope record is not an object")
        try:
            records = tuple(RecipientRecord.from_json(r) for r in data["recipients"])
            envelope = Envelope(
                sender=_str(data["sender"]),
                recipients=tuple(
                    Recipient(r.address, r.notify, r.orcpt)
                    for r in records
                    if r.parent is None
                ),
                body_type=_str(data.get("body_type", "7BIT")),
                smtputf8=bool(data.get("smtputf8", False)),
                ret=_opt_str(data.get("ret")),
                envid=_opt_str(data.get("envid")),
                client_address=_str(data.get("client_address", "")),
                client_name=_str(data.get("client_name", "")),
                auth_user=_opt_str(data.get("auth_user")),
                tls=_opt_str(data.get("tls")),
                received_at=_opt_float(data.get("received_at")) or 0.0,
                protocol=_str(data.get("protocol", "ESMTP")),
            )
            return cls(_str(data["id"]), envelope, records, size)
        except (KeyError, TypeError) as e:
            raise BrokenEntry(f"bad envelope record: {e!r}") from None

    @classmethod
    def new(cls, queue_id: str, envelope: Envelope) -> QueueEntry:
        """A fresh entry: every envelope recipient pending."""
        return cls(
            queue_id,
            envelope,
            tuple(
                RecipientRecord(r.address, r.notify, r.orcpt)
                for r in envelope.recipients
            ),
        )


def make_queue_id(now: float, sequence: int, node: str | None = None) -> str:
    """A new queue id: sortable by time, unique across processes.

    @param now: the arrival time (POSIX seconds).
    @param sequence: a per-process counter (ties within one microsecond).
    @param node: 6 random hex digits chosen once per spool (fresh ones when
        not given); they keep two processes' ids apart.
    """
    micros = max(0, int(now * 1_000_000)) & (16**13 - 1)
    node = node or os.urandom(3).hex().upper()
    return f"{micros:013X}{sequence & 0xFFFF:04X}{node}"


def _entry_header(entry: QueueEntry) -> bytes:
    record = json.dumps(entry.envelope_json(), separators=(",", ":"))
    return b"%s %d\n%s\n" % (_ENTRY_MAGIC, FORMAT_VERSION, record.encode("ascii"))


def _trailer(size: int) -> bytes:
    return b"END %d\n" % size


def _status_bytes(entry: QueueEntry) -> bytes:
    record = json.dumps(
        {
            "id": entry.queue_id,
            "held": entry.held,
            "recipients": [r.to_json() for r in entry.recipients],
        },
        separators=(",", ":"),
    )
    return b"%s %d\n%s\nEND\n" % (_STATUS_MAGIC, FORMAT_VERSION, record.encode("ascii"))


def _check_magic(line: bytes, magic: bytes) -> None:
    parts = line.rstrip(b"\n").split(b" ")
    if not line.endswith(b"\n") or len(parts) != 2 or parts[0] != magic:
        raise BrokenEntry("bad first line")
    try:
        version = int(parts[1])
    except ValueError:
        raise BrokenEntry("bad version") from None
    if version > FORMAT_VERSION:
        raise NewerVersion(f"format version {version}")
    if version < 1:
        raise BrokenEntry("bad version")


def _parse_json_line(line: bytes) -> object:
    if not line.endswith(b"\n"):
        raise BrokenEntry("record line not terminated")
    try:
        return json.loads(line)
    except ValueError as e:
        raise BrokenEntry(f"record is not JSON: {e}") from None


def read_entry_file(path: str) -> tuple[QueueEntry, int]:
    """Read and check an entry file (blocking).

    @return: the entry (recipients as first written) and the offset of the
        message bytes.
    @raise BrokenEntry: no END line, a wrong size or a bad record.
    @raise NewerVersion: written by a newer version.
    @raise OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        _check_magic(f.readline(64), _ENTRY_MAGIC)
        data = _parse_json_line(f.readline(_MAX_RECORD))
        offset = f.tell()
        total = os.fstat(f.fileno()).st_size
        f.seek(max(offset, total - _TAIL))
        tail = f.read()
    if not tail.endswith(b"\n"):
        raise BrokenEntry("no END line")
    last = tail[: len(tail) - 1].rpartition(b"\n")[2] + b"\n"
    size = _end_size(last)
    if offset + size + len(last) != total:
        raise BrokenEntry("message size does not match the END line")
    return QueueEntry.from_json(data, size), offset


def _end_size(last: bytes) -> int:
    """The message size an entry file's last line (``END <size>\\n``) states.

    @raise BrokenEntry: not an END line, or no number in it.
    """
    if not last.startswith(b"END "):
        raise BrokenEntry("no END line")
    try:
        return int(last[4:-1])
    except ValueError:
        raise BrokenEntry("bad END line") from None


def read_message_file(path: str) -> bytes:
    """The message bytes of an entry file (blocking): one open and read,
    the first line and the END line checked, the envelope record left
    unparsed (L{read_entry_file} reads that).

    @raise BrokenEntry: no END line, or a size that does not match it.
    @raise NewerVersion: written by a newer version.
    @raise OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        _check_magic(f.readline(64), _ENTRY_MAGIC)
        record = f.readline(_MAX_RECORD)
        rest = f.read()
    if not record.endswith(b"\n"):
        raise BrokenEntry("record line not terminated")
    if not rest.endswith(b"\n"):
        raise BrokenEntry("no END line")
    cut = rest.rfind(b"\n", 0, len(rest) - 1) + 1
    if _end_size(rest[cut:]) != cut:
        raise BrokenEntry("message size does not match the END line")
    return rest[:cut]


def read_status_file(path: str) -> tuple[tuple[RecipientRecord, ...], bool]:
    """Read and check a status file (blocking): (recipients, held)."""
    with open(path, "rb") as f:
        content = f.read(_MAX_RECORD + 64)
    first, _, rest = content.partition(b"\n")
    _check_magic(first + b"\n", _STATUS_MAGIC)
    line, _, end = rest.partition(b"\n")
    if end != b"END\n":
        raise BrokenEntry("no END line")
    data = _parse_json_line(line + b"\n")
    if not isinstance(data, dict) or not isinstance(data.get("recipients"), list):
        raise BrokenEntry("bad status record")
    records = tuple(RecipientRecord.from_json(r) for r in data["recipients"])
    return records, bool(data.get("held", False))


def _fsync_dir(path: str, fsync: Callable[[int], None]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def _write_file(
    path: str, parts: Sequence[bytes], fsync: Callable[[int], None]
) -> None:
    # One write call: a buffered file would split a message of a few
    # kilobytes into several system calls.
    data = b"".join(parts)
    fd = _open_new(path)
    try:
        _write_all(fd, data)
        fsync(fd)
    finally:
        os.close(fd)


#: The most files a group commit batch keeps open at once.
_OPEN_FILES = 256

_D = TypeVar("_D")

#: Per class: its field names when L{fast_replace} may copy them, else None.
_PLAIN_FIELDS: dict[type, frozenset[str] | None] = {}


def _plain_fields(cls: type) -> frozenset[str] | None:
    """The field names of a dataclass whose instances are just their fields
    (no C{__post_init__}, no C{__slots__}, no init-only or class
    variables, every field set by C{__init__}); None for anything else."""
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__"):
        return None
    if "__slots__" in vars(cls):
        return None
    fields = dataclasses.fields(cls)
    if len(fields) != len(cls.__dataclass_fields__) or not all(f.init for f in fields):
        return None
    return frozenset(f.name for f in fields)


def fast_replace(obj: _D, /, **changes: Any) -> _D:
    """L{dataclasses.replace}, cheaper for plain dataclasses.

    C{dataclasses.replace} reads every field and calls C{__init__} again
    (7 to 11 us for the queue's records); for a dataclass whose instances
    are nothing but their fields (see L{_plain_fields}) this copies the
    fields and sets the changed ones (2 to 3 us).  Anything else, and any
    change naming something that is not a field, goes to
    C{dataclasses.replace}.
    """
    cls = type(obj)
    try:
        names = _PLAIN_FIELDS[cls]
    except KeyError:
        names = _PLAIN_FIELDS[cls] = _plain_fields(cls)
    if names is None or not changes.keys() <= names:
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    state = obj.__dict__
    new = object.__new__(cls)
    values = new.__dict__
    for name in names:
        values[name] = state[name]
    values.update(changes)
    return new


#: Spent entry files kept in ``spare/`` for reuse (see the module docstring).
MAX_SPARES = 64


def _open_new(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


def _open_spare(spare: str, path: str) -> tuple[int, str]:
    """Open a spare file where it is, for overwriting; a new file at
    C{path} when the spare cannot be used.

    @return: the descriptor and the path of the file opened (the spare's,
        or C{path}).
    """
    try:
        return os.open(spare, os.O_WRONLY | os.O_CLOEXEC), spare
    except OSError:
        return _open_new(path), path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _error_reply(e: BaseException) -> Reply:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return QUEUE_FULL
    return QUEUE_WRITE_ERROR


def submit_incoming(
    spool_path: str,
    envelope: Envelope,
    message: bytes,
    *,
    now: float,
    fsync: Callable[[int], None] = os.fsync,
) -> str:
    """Drop a message into the spool's ``incoming/`` folder (blocking).

    For ``sendmail``: works whether or not the server runs.  The file is
    written in ``tmp/``, fsynced, renamed into ``incoming/`` and the folder
    fsynced before this returns; the running server's runner moves it into
    the queue.

    @param now: the current POSIX time (for the queue id).
    @return: the queue id the message will keep.
    @raise OSError: when the spool cannot be written.
    """
    for sub in ("tmp", "incoming"):
        os.makedirs(os.path.join(spool_path, sub), exist_ok=True)
    queue_id = make_queue_id(now, os.getpid())
    entry = QueueEntry.new(queue_id, envelope)
    tmp = os.path.join(spool_path, "tmp", queue_id + ".incoming")
    try:
        _write_file(tmp, [_entry_header(entry), message, _trailer(len(message))], fsync)
        os.rename(tmp, os.path.join(spool_path, "incoming", queue_id))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.join(spool_path, "incoming"), fsync)
    return queue_id


class _GroupCommit:
    """Batches the queue's file work so that it shares one folder fsync and
    one trip to the thread pool.

    Each item has new files to write (path and bytes), an optional
    C{prepare} step (finish a file written in parts, or unlink files) and
    renames into the folder.  Items handed over in one reactor turn, or
    while the previous batch runs, go into the next batch.  One thread job
    does the batch step by step (one item's failure touches no other): it
    writes every new file, fsyncs each, closes them, then runs each item's
    C{prepare} and renames in order, fsyncs the folder once when an item
    that asked for it succeeded, and then each caller's Deferred fires.
    Items that need no folder fsync (removals) start a batch at once when
    none runs.
    """

    def __init__(
        self,
        directory: str,
        clock: IReactorTime,
        run: ThreadRunner,
        fsync: Callable[[int], None],
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._run = run
        self._fsync = fsync
        self._waiting: list[_Batched] = []
        self._busy = False
        self._scheduled: IDelayedCall | None = None
        #: How many folder fsyncs were done (for tests and statistics).
        self.flushes = 0

    def commit(
        self,
        renames: list[tuple[str, str]],
        prepare: Callable[[], None] | None = None,
        *,
        sync: bool = True,
        writes: Sequence[tuple[str, bytes]] = (),
        spare: str | None = None,
    ) -> Deferred[None]:
        """Write and fsync the new files C{writes} (path, bytes), run
        C{prepare}, rename (source, target) pairs and (when C{sync}) fsync
        the folder; fire after, or fail with the first error (a file that
        was written stays for the caller to remove).

        @param spare: a spent file to overwrite where it is instead of
            creating the first write's file, and to rename instead of it
            (a rename whose source is that write's path takes the spare).
            Should the item fail, the spare stays in ``spare/`` for a later
            run to adopt.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append(_Batched(prepare, renames, sync, d, writes, spare))
        if not self._busy:
            if not sync:
                self._flush()
            elif self._scheduled is None:
                self._scheduled = self._clock.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        if self._scheduled is not None:
            if self._scheduled.active():
                self._scheduled.cancel()
            self._scheduled = None
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        self._busy = True
        if any(item.sync for item in batch):
            self.flushes += 1
        run = self._run(lambda: self._apply(batch))
        run.addCallbacks(
            lambda errors: self._finished(batch, errors),
            lambda f: self._finished(batch, [f.value] * len(batch)),
        )

    def _apply(self, batch: list[_Batched]) -> list[BaseException | None]:
        errors: list[BaseException | None] = [None] * len(batch)
        # The new files in slices of at most _OPEN_FILES open at once.
        start = 0
        while start < len(batch):
            end, files = start, 0
            while end < len(batch) and (end == start or files < _OPEN_FILES):
                files += len(batch[end].writes)
                end += 1
            self._write_files(batch, range(start, end), errors)
            start = end
        synced = False
        for n, item in enumerate(batch):
            if errors[n] is not None:
                continue
            try:
                if item.prepare is not None:
                    item.prepare()
                for source, target in item.renames:
                    os.rename(item.moved.get(source, source), target)
            except Exception as e:
                errors[n] = e
            else:
                synced = synced or item.sync
        if synced:
            _fsync_dir(self._directory, self._fsync)
        return errors

    def _write_files(
        self,
        batch: list[_Batched],
        items: range,
        errors: list[BaseException | None],
    ) -> None:
        """Write the items' new files, then fsync each, then close them;
        an item's first error goes into C{errors}."""
        opened: list[tuple[int, int]] = []
        try:
            for n in items:
                spare = batch[n].spare
                for path, data in batch[n].writes:
                    if errors[n] is not None:
                        break
                    try:
                        if spare is None:
                            fd = _open_new(path)
                        else:
                            fd, at = _open_spare(spare, path)
                            if at != path:
                                batch[n].moved[path] = at
                    except Exception as e:
                        errors[n] = e
                        break
                    opened.append((n, fd))
                    try:
                        _write_all(fd, data)
                        if spare is not None:
                            os.ftruncate(fd, len(data))
                    except Exception as e:
                        errors[n] = e
                    spare = None
            for n, fd in opened:
                if errors[n] is None:
                    try:
                        self._fsync(fd)
                    except Exception as e:
                        errors[n] = e
        finally:
            for n, fd in opened:
                try:
                    os.close(fd)
                except Exception as e:
                    if errors[n] is None:
                        errors[n] = e

    def _finished(
        self, batch: list[_Batched], errors: Sequence[BaseException | None]
    ) -> None:
        self._busy = False
        for item, error in zip(batch, errors, strict=True):
            if error is None:
                item.done.callback(None)
            else:
                item.done.errback(Failure(error))
        if self._waiting and not self._busy:
            self._flush()


@dataclass
class _Batched:
    """One item of a L{_GroupCommit} batch."""

    prepare: Callable[[], None] | None
    renames: list[tuple[str, str]]
    sync: bool
    done: Deferred[None]
    writes: Sequence[tuple[str, bytes]] = ()
    spare: str | None = None
    #: A write's path -> the spare overwritten in its place (renamed to
    #: that write's rename target instead).
    moved: dict[str, str] = field(default_factory=dict)


class _ReadBatch:
    """Runs short blocking reads in the thread pool, many to a trip.

    A trip to the pool costs far more than reading a queue file from the
    page cache: a few hand-offs of the GIL, locks and a wake-up of the
    reactor.  So a read starts a thread job at once when none runs, and
    reads asked for meanwhile go together into the next job (no timer: an
    idle spool reads at once, a busy one in batches).  Each read's
    exception goes to its own caller.
    """

    def __init__(self, run: ThreadRunner) -> None:
        self._run = run
        self._waiting: list[tuple[Callable[[], object], Deferred[object]]] = []
        self._busy = False

    def __call__(self, f: Callable[[], _T]) -> Deferred[_T]:
        """Call C{f} in a worker thread; fire with its result."""
        d: Deferred[_T] = Deferred()
        self._waiting.append((f, d))  # type: ignore[arg-type]
        if not self._busy:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._busy = True
        job = self._run(lambda: [_attempt(f) for f, _ in batch])
        job.addBoth(self._finished, batch)

    def _finished(
        self,
        results: list[tuple[bool, object]] | Failure,
        batch: list[tuple[Callable[[], object], Deferred[object]]],
    ) -> None:
        # Reads the callers ask for next wait for the end of this loop, so
        # that they share one job.
        for n, (_, d) in enumerate(batch):
            if isinstance(results, Failure):
                d.errback(results)
                continue
            ok, value = results[n]
            if ok:
                d.callback(value)
            else:
                d.errback(Failure(value))
        self._busy = False
        if self._waiting:
            self._start()


def _attempt(f: Callable[[], object]) -> tuple[bool, object]:
    try:
        return True, f()
    except Exception as e:
        return False, e


class Spool:
    """The queue folder: commits, reads, status updates and removal.

    @param path: the spool folder (made on L{prepare}).
    @param clock: for queue ids and for batching commits.
    @param run_in_thread: runs a blocking call in the thread pool; by default
        the reactor's pool when C{clock} is a reactor, else inline.
    @param fsync: the fsync function (tests inject a recorder).
    @param cache_bytes: how many bytes of recently committed small messages
        to keep in memory for the runner.
    @param flush_threshold: body bytes an agent buffers before writing them.
    """

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        run_in_thread: ThreadRunner | None = None,
        *,
        fsync: Callable[[int], None] = os.fsync,
        cache_bytes: int = 16 * 1024 * 1024,
        flush_threshold: int = 1024 * 1024,
    ) -> None:
        self.path = path
        self.clock = clock
        self.run: ThreadRunner = run_in_thread or _default_runner(clock)
        self.fsync = fsync
        self.flush_threshold = flush_threshold
        self._cache_bytes = cache_bytes
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._cached = 0
        self._sequence = itertools.count()
        # Chosen once: os.urandom per message costs more than the rest of
        # making an id.
        self._node = os.urandom(3).hex().upper()
        self._tmp_sequence = itertools.count()
        self._observers: list[Callable[[QueueEntry], None]] = []
        self._committer = _GroupCommit(self.queue_dir, clock, self.run, fsync)
        self._read = _ReadBatch(self.run)
        self._prepared = False
        # Entries committed by this spool whose status file was never
        # written: their removal skips unlinking a file that is not there.
        self._no_status: set[str] = set()
        # Spent entry files in spare/, and how many removals may add one.
        self._spares: list[str] = []
        self._spares_coming = 0

    @property
    def queue_dir(self) -> str:
        """The folder holding the entries."""
        return os.path.join(self.path, "queue")

    @property
    def commits(self) -> int:
        """How many folder fsyncs group commit has done."""
        return self._committer.flushes

    def prepare(self) -> None:
        """Make the spool's folders (blocking; at start-up)."""
        for sub in ("tmp", "queue", "incoming", "quarantine", "spare"):
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)
        self._prepared = True
        spare = os.path.join(self.path, "spare")
        known = set(self._spares)
        for name in os.listdir(spare):
            path = os.path.join(spare, name)
            if path in known:
                continue
            # A spare with a second name (after a crash lost spare/'s side
            # of its rename into the queue) is that entry: never overwrite
            # it, just drop the spare name.
            if (
                len(self._spares) + self._spares_coming < MAX_SPARES
                and os.stat(path).st_nlink == 1
            ):
                self._spares.append(path)
            else:
                os.unlink(path)

    def agent(self) -> SpoolDeliveryAgent:
        """A new delivery agent for one SMTP transaction."""
        return SpoolDeliveryAgent(self)

    def new_id(self) -> str:
        """A new, unique queue id."""
        return make_queue_id(self.clock.seconds(), next(self._sequence), self._node)

    def add_observer(self, observer: Callable[[QueueEntry], None]) -> None:
        """Call C{observer(entry)} for each entry once it is committed."""
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[QueueEntry], None]) -> None:
        """Stop calling an observer."""
        self._observers.remove(observer)

    def tmp_path(self, name: str) -> str:
        """A unique path in ``tmp/`` for a file being written."""
        if not self._prepared:
            self.prepare()
        return os.path.join(self.path, "tmp", f"{name}.{next(self._tmp_sequence)}")

    def entry_path(self, queue_id: str) -> str:
        """The entry file of an id."""
        return os.path.join(self.queue_dir, queue_id)

    def status_path(self, queue_id: str) -> str:
        """The status file of an id."""
        return os.path.join(self.queue_dir, queue_id + ".status")

    # Writing

    def commit_file(
        self,
        tmp: str,
        entry: QueueEntry,
        message: bytes | None,
        write: Callable[[], None] | None = None,
        *,
        data: bytes | None = None,
    ) -> Deferred[str]:
        """Rename a written, fsynced entry file into the queue and announce it.

        @param message: the message bytes to cache, when at hand.
        @param write: writes and fsyncs the file first (blocking; run in the
            group commit's thread job, so a message costs one trip to the
            thread pool).
        @param data: the whole file, for the group commit to write as a new
            file at C{tmp} and fsync (with the rest of its batch).
        """
        spare = self._spares.pop() if data is not None and self._spares else None
        d = self._committer.commit(
            [(tmp, self.entry_path(entry.queue_id))],
            write,
            writes=() if data is None else [(tmp, data)],
            spare=spare,
        )

        def committed(_: None) -> str:
            self._no_status.add(entry.queue_id)
            if message is not None:
                self._remember(entry.queue_id, message)
            self._announce(entry)
            return entry.queue_id

        return d.addCallback(committed)

    def _announce(self, entry: QueueEntry) -> None:
        for observer in list(self._observers):
            try:
                observer(entry)
            except Exception:
                log.failure("queue observer failed for {id}", id=entry.queue_id)

    def update(self, entry: QueueEntry) -> Deferred[None]:
        """Rewrite an entry's status record atomically (temp, fsync, rename,
        folder fsync); the temporary file is a spare when there is one (the
        relay rewrites a status file per message sent)."""
        tmp = self.tmp_path(entry.queue_id + ".status")
        self._no_status.discard(entry.queue_id)
        return self._committer.commit(
            [(tmp, self.status_path(entry.queue_id))],
            writes=[(tmp, _status_bytes(entry))],
            spare=self._spares.pop() if self._spares else None,
        )

    def update_status(
        self,
        queue_id: str,
        recipients: Sequence[RecipientRecord],
        held: bool | None = None,
    ) -> Deferred[QueueEntry]:
        """Replace an entry's recipient records (and hold flag); fire with the
        new entry."""

        async def go() -> QueueEntry:
            entry = await self.load(queue_id)
            new = fast_replace(
                entry,
                recipients=tuple(recipients),
                held=entry.held if held is None else held,
            )
            await self.update(new)
            return new

        return Deferred.fromCoroutine(go())

    def remove(self, queue_id: str) -> Deferred[None]:
        """Remove an entry (its entry file first, then its status file)."""
        self._forget(queue_id)
        paths = [self.entry_path(queue_id)]
        if queue_id in self._no_status:
            self._no_status.discard(queue_id)
        else:
            paths.append(self.status_path(queue_id))

        spare: str | None = None
        if self._prepared and len(self._spares) + self._spares_coming < MAX_SPARES:
            spare = os.path.join(self.path, "spare", queue_id)
            self._spares_coming += 1
        kept: list[str] = []

        def unlink() -> None:
            for n, path in enumerate(paths):
                try:
                    if n == 0 and spare is not None:
                        # The entry file: kept as a spare.
                        os.rename(path, spare)
                        kept.append(spare)
                    else:
                        os.unlink(path)
                except FileNotFoundError:
                    pass

        def done(result: object) -> object:
            if spare is not None:
                self._spares_coming -= 1
                self._spares.extend(kept)
            return result

        # Batched with the commits (no folder fsync: a removal lost in a
        # crash only means a delivery is retried, and deliveries are
        # idempotent).
        return self._committer.commit([], unlink, sync=False).addBoth(done)

    # Reading

    def load(self, queue_id: str) -> Deferred[QueueEntry]:
        """Read one entry with its current status.

        Fails with L{BrokenEntry} (after quarantining the files) when it is
        broken, and with L{KeyError} when there is no such entry.
        """
        return self._read(lambda: self._load(queue_id))

    def read_status(
        self, queue_id: str
    ) -> Deferred[tuple[tuple[RecipientRecord, ...], bool]]:
        """Read an entry's status file alone: (recipients, held); fails as
        L{read_status_file} does (OSError when there is none)."""
        path = self.status_path(queue_id)
        return self._read(lambda: read_status_file(path))

    def _load(self, queue_id: str) -> QueueEntry:
        path = self.entry_path(queue_id)
        try:
            entry, _ = read_entry_file(path)
            if entry.queue_id != queue_id:
                raise BrokenEntry(f"file holds entry {entry.queue_id}")
        except FileNotFoundError:
            raise KeyError(queue_id) from None
        except BrokenEntry as e:
            self._quarantine(path, str(e))
            self._quarantine(self.status_path(queue_id), "its entry is broken")
            raise
        try:
            recipients, held = read_status_file(self.status_path(queue_id))
        except FileNotFoundError:
            return entry
        except BrokenEntry as e:
            # The entry file is sound: keep it with its first recipients
            # rather than lose the message; the status file goes aside.
            self._quarantine(self.status_path(queue_id), str(e))
            return entry
        return fast_replace(entry, recipients=recipients, held=held)

    def open_entries(self) -> Deferred[list[QueueEntry]]:
        """Every readable entry, oldest first; broken files are quarantined,
        status files without an entry too."""

        def scan() -> list[QueueEntry]:
            try:
                names = os.listdir(self.queue_dir)
            except FileNotFoundError:
                return []
            ids = {n for n in names if "." not in n}
            for n in names:
                if n.endswith(".status") and n[: -len(".status")] not in ids:
                    self._quarantine(os.path.join(self.queue_dir, n), "no entry file")
            entries = []
            for queue_id in sorted(ids):
                try:
                    entries.append(self._load(queue_id))
                except (BrokenEntry, KeyError):
                    pass
                except NewerVersion as e:
                    log.warn("queue entry {id} left alone: {e}", id=queue_id, e=e)
            return entries

        return self.run(scan)

    def read_message(self, queue_id: str) -> Deferred[bytes]:
        """The message bytes of an entry."""
        cached = self._cache.get(queue_id)
        if cached is not None:
            self._cache.move_to_end(queue_id)
            return succeed(cached)

        path = self.entry_path(queue_id)
        return self._read(lambda: read_message_file(path))

    def _remember(self, queue_id: str, message: bytes) -> None:
        if len(message) > self._cache_bytes // 4:
            return
        self._cache[queue_id] = message
        self._cached += len(message)
        while self._cached > self._cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    def _forget(self, queue_id: str) -> None:
        old = self._cache.pop(queue_id, None)
        if old is not None:
            self._cached -= len(old)

    def _quarantine(self, path: str, reason: str) -> None:
        """Move a broken file into ``quarantine/`` (blocking); never delete."""
        if not os.path.exists(path):
            return
        folder = os.path.join(self.path, "quarantine")
        os.makedirs(folder, exist_ok=True)
        base = os.path.basename(path)
        target = os.path.join(folder, base)
        n = 0
        while os.path.exists(target):
            n += 1
            target = os.path.join(folder, f"{base}.{n}")
        os.rename(path, target)
        log.error(
            "quarantined broken queue file {path} as {target}: {reason}",
            path=path,
            target=target,
            reason=reason,
        )

    def sweep_tmp(self, max_age: float = 3600.0) -> Deferred[int]:
        """Quarantine files in ``tmp/`` older than C{max_age} seconds (left by
        a crash mid-write; younger ones may belong to a running ``sendmail``).

        @return: how many files were moved.
        """
        folder = os.path.join(self.path, "tmp")
        cutoff = self.clock.seconds() - max_age

        def sweep() -> int:
            moved = 0
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return 0
            for name in names:
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    continue
                self._quarantine(path, "left in tmp/ by an interrupted write")
                moved += 1
            return moved

        return self.run(sweep)

    # The sendmail drop

    def pickup_incoming(self) -> Deferred[list[QueueEntry]]:
        """Move complete files from ``incoming/`` into the queue.

        Each file is checked (broken ones are quarantined), renamed into
        ``queue/`` under its own id (so a crash in the middle never makes two
        entries), both folders are fsynced, then observers hear of each entry.
        """
        incoming = os.path.join(self.path, "incoming")

        def scan() -> list[QueueEntry]:
            try:
                names = sorted(os.listdir(incoming))
            except FileNotFoundError:
                return []
            found = []
            for name in names:
                path = os.path.join(incoming, name)
                try:
                    entry, _ = read_entry_file(path)
                    if entry.queue_id != name:
                        raise BrokenEntry(f"file holds entry {entry.queue_id}")
                except BrokenEntry as e:
                    self._quarantine(path, str(e))
                except NewerVersion as e:
                    log.warn("incoming {name} left alone: {e}", name=name, e=e)
                except OSError as e:
                    log.warn("cannot read incoming {name}: {e}", name=name, e=e)
                else:
                    found.append(entry)
            return found

        async def go() -> list[QueueEntry]:
            entries = await self.run(scan)
            if not entries:
                return []
            await self._committer.commit(
                [
                    (os.path.join(incoming, e.queue_id), self.entry_path(e.queue_id))
                    for e in entries
                ]
            )
            await self.run(lambda: _fsync_dir(incoming, self.fsync))
            for e in entries:
                self._announce(e)
            return entries

        return Deferred.fromCoroutine(go())

    # Defined last: the name shadows the builtin in the class body.

    def list(self) -> Deferred[list[str]]:
        """The ids in the queue, sorted (oldest first)."""

        def scan() -> list[str]:
            try:
                names = os.listdir(self.queue_dir)
            except FileNotFoundError:
                return []
            return sorted(n for n in names if "." not in n)

        return self.run(scan)


def _default_runner(clock: IReactorTime) -> ThreadRunner:
    get_pool = getattr(clock, "getThreadPool", None)
    if get_pool is None:

        def inline(f: Callable[[], _T]) -> Deferred[_T]:
            return maybeDeferred(f)

        return inline
    from twisted.internet.threads import deferToThreadPool

    def threaded(f: Callable[[], _T]) -> Deferred[_T]:
        return deferToThreadPool(clock, get_pool(), f)  # type: ignore[arg-type]

    return threaded


class _Transaction:
    """One transaction's message file: buffered chunks, the temporary file
    and the chain of thread jobs writing it (run one after another)."""

    def __init__(self, spool: Spool, queue_id: str, envelope: Envelope) -> None:
        self.spool = spool
        self.queue_id = queue_id
        self.envelope = envelope
        self.recipients: list[Recipient] = list(envelope.recipients)
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.size = 0
        self.streamed = False
        self.entry: QueueEntry | None = None
        self.header = b""
        self.tmp = ""
        self.file: IO[bytes] | None = None
        self.io: Deferred[None] = succeed(None)
        self.error: BaseException | None = None

    def freeze(self) -> QueueEntry:
        """The entry record; fixed once the first bytes are written."""
        if self.entry is None:
            envelope = fast_replace(self.envelope, recipients=tuple(self.recipients))
            self.entry = QueueEntry.new(self.queue_id, envelope)
            self.header = _entry_header(self.entry)
            self.tmp = self.spool.tmp_path(self.queue_id)
        return self.entry

    def queue_io(self, job: Callable[[], None]) -> None:
        """Run a blocking job after the earlier ones; remember a failure."""

        def run(_: None) -> Deferred[None] | None:
            if self.error is not None:
                return None
            return self.spool.run(job)

        def failed(f: Failure) -> None:
            self.error = f.value

        self.io.addCallback(run).addErrback(failed)

    def open(self) -> IO[bytes]:
        """The temporary file, created with the header on first use
        (called in a worker thread)."""
        if self.file is None:
            self.file = open(self.tmp, "xb")
            self.file.write(self.header)
        return self.file

    def flush(self) -> None:
        """Hand the buffered chunks to a thread job."""
        self.freeze()
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        self.streamed = True

        def write() -> None:
            f = self.open()
            for c in chunks:
                f.write(c)

        self.queue_io(write)

    def finish(self) -> tuple[Callable[[], None] | None, bytes | None]:
        """The final write and fsync of a message written in parts
        (blocking, for the group commit's thread job, after the jobs queued
        so far; None when the message never left memory), and the whole
        message when it never left memory (for the spool's cache; the group
        commit writes it, L{file_bytes})."""
        self.freeze()
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        size, fsync = self.size, self.spool.fsync
        if not self.streamed:
            return None, b"".join(chunks)

        def write() -> None:
            f = self.open()
            self.file = None
            try:
                for c in chunks:
                    f.write(c)
                f.write(_trailer(size))
                f.flush()
                fsync(f.fileno())
            finally:
                f.close()

        return write, None

    def file_bytes(self, message: bytes) -> bytes:
        """The whole entry file of a message that never left memory."""
        return b"".join((self.header, message, _trailer(self.size)))

    def discard(self) -> None:
        """Close and remove the temporary file once pending jobs are done."""

        def remove() -> None:
            if self.file is not None:
                self.file.close()
                self.file = None
            if self.tmp:
                try:
                    os.unlink(self.tmp)
                except FileNotFoundError:
                    pass

        def after(_: object) -> Deferred[None]:
            return self.spool.run(remove)

        self.io.addBoth(after).addErrback(
            lambda f: log.failure("cannot remove {tmp}", f, tmp=self.tmp)
        )


@implementer(IDeliveryAgent)
class SpoolDeliveryAgent:
    """The spool as the SMTP server's delivery agent: one per transaction.

    Body bytes are buffered and written to a temporary file in the thread
    pool once more than the spool's flush threshold has gathered, so a large
    message is never held whole in memory.  L{commit} writes the rest, fsyncs
    the file, renames it into the queue and fires (with the queue id) only
    after the queue folder's fsync.  The agent can be reused: L{start}
    begins the next transaction.

    @ivar queue_id: the id the message gets, known from L{start} on (for the
        Received: header).
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._tx: _Transaction | None = None
        self.queue_id: str | None = None

    def _current(self) -> _Transaction:
        if self._tx is None:
            raise RuntimeError("no transaction started")
        return self._tx

    def start(self, envelope: Envelope) -> None:
        """Begin a transaction and pick its queue id."""
        self.abort()
        self.queue_id = self._spool.new_id()
        self._tx = _Transaction(self._spool, self.queue_id, envelope)

    def add_recipient(self, recipient: Recipient) -> None:
        """Add an accepted recipient."""
        self._current().recipients.append(recipient)

    def body(self, data: bytes) -> None:
        """Append message bytes; past the threshold they go to disk."""
        tx = self._current()
        tx.chunks.append(data)
        tx.buffered += len(data)
        tx.size += len(data)
        if tx.buffered >= self._spool.flush_threshold:
            tx.flush()

    def commit(self) -> Deferred[str]:
        """Make the message durable; fire with the queue id after the fsyncs.

        Fails with L{TemporaryError} (451/452) when the file cannot be
        written, L{PermanentError} (554) without recipients.
        """
        tx, self._tx = self._tx, None
        if tx is None:
            return _failed(RuntimeError("commit without start"))
        if not tx.recipients:
            tx.discard()
            return _failed(PermanentError(NO_RECIPIENTS, "commit without recipients"))
        write, message = tx.finish()
        entry = fast_replace(tx.freeze(), size=tx.size)
        spool = self._spool

        async def go() -> str:
            await tx.io  # the writes of a large message's first parts
            error = tx.error
            if error is None:
                data = None if message is None else tx.file_bytes(message)
                try:
                    return await spool.commit_file(
                        tx.tmp, entry, message, write, data=data
                    )
                except OSError as e:
                    error = e
            tx.discard()
            log.error("cannot write queue file {tmp}: {e}", tmp=tx.tmp, e=error)
            raise TemporaryError(_error_reply(error), str(error))

        return Deferred.fromCoroutine(go())

    def abort(self) -> None:
        """Drop the transaction; its temporary file is removed once pending
        writes are done."""
        tx, self._tx = self._tx, None
        if tx is not None and tx.tmp:
            tx.discard()


def _failed(e: BaseException) -> Deferred[str]:
    d: Deferred[str] = Deferred()
    d.errback(Failure(e))
    return d
