# -*- test-case-name: tests.test_imap_server_sessions -*-
"""One session's view of its selected mailbox: the IMAP step of the flow.

Every session keeps its own list of UIDs (index + 1 is the message sequence
number the client knows), the flags it last told the client, and the
messages that are ``\\Recent`` for it.  The store's L{Mailbox} snapshot moves
on when others deliver, change flags or expunge; L{MailboxView.poll} (in a
thread) brings the snapshot and the mod-sequences up to date, and
L{MailboxView.apply} (on the reactor thread) turns the difference into the
untagged responses of RFC 3501 §7: ``EXPUNGE`` (or ``VANISHED`` with QRESYNC)
only when the command in progress allows them, then ``EXISTS`` and
``RECENT``, then ``FETCH (FLAGS ...)`` for flag changes.  Expunges that may
not be told yet stay in the view (the sequence numbers stay as the client
knows them) until a later command allows them.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twistedmail.imap._format import format_date_times, format_flags
from twistedmail.imap._modseq import ModSeqIndex, signature_of
from twistedmail.imap._sequence import SequenceSet
from twistedmail.imap._types import FetchItem
from twistedmail.maildir import Mailbox, MessageInfo

__all__ = [
    "LETTER_FLAGS",
    "FLAG_LETTERS",
    "METADATA_ITEMS",
    "MetadataLines",
    "MailboxView",
    "Snapshot",
    "UIDValidityChanged",
    "imap_flags",
    "ranges_to_set",
    "split_flags",
]

#: Maildir letters and the IMAP flag each stands for (``P``, passed, is the
#: ``$Forwarded`` keyword, as mbsync and others map it).
LETTER_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
#: IMAP flag names (upper-cased) to Maildir letters.
FLAG_LETTERS = {name.upper(): letter for letter, name in LETTER_FLAGS.items()}


def imap_flags(info: MessageInfo, recent: bool = False) -> list[str]:
    """A message's IMAP flags, system flags first."""
    return _flag_names(info.flags, info.keywords, recent)


def _flag_names(
    flags: frozenset[str], keywords: frozenset[str], recent: bool
) -> list[str]:
    names = [LETTER_FLAGS[c] for c in sorted(flags) if c in LETTER_FLAGS]
    names.extend(sorted(keywords))
    if recent:
        names.append("\\Recent")
    return names


#: The FETCH items L{MailboxView.metadata_lines} formats (what the store
#: knows of a message without reading it), and each one's part of the
#: response line.
METADATA_ITEMS: dict[FetchItem, bytes] = {
    FetchItem.UID: b"UID %d",
    FetchItem.FLAGS: b"FLAGS %s",
    FetchItem.INTERNALDATE: b"INTERNALDATE %s",
    FetchItem.RFC822_SIZE: b"RFC822.SIZE %d",
    FetchItem.MODSEQ: b"MODSEQ (%d)",
}


class _FlagLists(dict[tuple[frozenset[str], frozenset[str], bool], bytes]):
    """The FLAGS list of each distinct (letters, keywords, recent), made
    on first use: a folder's messages share a few."""

    def __missing__(self, key: tuple[frozenset[str], frozenset[str], bool]) -> bytes:
        text = format_flags(_flag_names(*key))
        self[key] = text
        return text


def split_flags(flags: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """IMAP flag names as (Maildir letters, keywords); ``\\Recent`` is
    dropped (clients cannot set it, RFC 3501 §2.3.2)."""
    letters = set()
    keywords = set()
    for flag in flags:
        letter = FLAG_LETTERS.get(flag.upper())
        if letter is not None:
            letters.add(letter)
        elif flag.upper() == "\\RECENT" or flag.startswith("\\"):
            continue
        else:
            keywords.add(flag)
    return frozenset(letters), frozenset(keywords)


def ranges_to_set(numbers: Sequence[int]) -> bytes:
    """An ascending list of numbers as a compact sequence set."""
    return SequenceSet.from_numbers(numbers).to_bytes()


_uid = operator.attrgetter("uid")
_size = operator.attrgetter("size")
_internal_date = operator.attrgetter("internal_date")
_flags = operator.attrgetter("flags")
_keywords = operator.attrgetter("keywords")


def _first_of(suffixes: list[str], unseen: set[str]) -> int | None:
    """The sequence number of the first message whose info suffix is in
    C{unseen} (a pass in C), or None."""
    try:
        return list(map(unseen.__contains__, suffixes)).index(True) + 1
    except ValueError:
        return None


class UIDValidityChanged(Exception):
    """The folder got a new UIDVALIDITY while selected: the session must end."""


@dataclass(frozen=True)
class Snapshot:
    """What L{MailboxView.poll} found: the store's messages, the ones this
    session claimed as recent, and HIGHESTMODSEQ.

    @ivar generation: the store snapshot's L{Mailbox.generation}.
    @ivar unchanged: nothing changed since the view last took the store's
        snapshot (C{infos} is then empty, not made).
    """

    infos: list[MessageInfo]
    recent: list[int]
    highest: int
    uidvalidity: int
    generation: int = -1
    unchanged: bool = False


class MailboxView:
    """A selected mailbox as one session sees it (see the module docstring).

    @param mailbox: the open folder (owned by this view; closed by L{close}).
    @param read_only: EXAMINE (or no right to change): \\Recent is not
        claimed and flags are not changed.
    """

    def __init__(self, mailbox: Mailbox, read_only: bool) -> None:
        self.mailbox = mailbox
        self.read_only = read_only
        self.modseqs = ModSeqIndex(mailbox.path)
        self.uids: list[int] = []
        self._infos: dict[int, MessageInfo] | None = {}
        # Makes the messages of the snapshot SELECT took (see infos).
        self._later: Callable[[], list[MessageInfo]] | None = None
        self._infos_lock = threading.Lock()
        self.recent: set[int] = set()
        self.highest_modseq = 1
        self.uidvalidity = mailbox.uidvalidity
        self.gone: set[int] = set()
        self._last_sent_highest = 0
        # The store snapshot's generation the view last took in full (-1:
        # none yet).
        self._generation = -1
        #: The first unseen message's sequence number when opened.
        self.first_unseen: int | None = None

    # --- blocking part (a thread) ------------------------------------------------

    def poll(self, force: bool = False) -> Snapshot:
        """Refresh the store snapshot and the mod-sequences (blocking).

        When the store's snapshot is still the one the view last took
        (same L{Mailbox.generation}, no message claimed as recent) and no
        other connection wrote to the mod-sequence index since, the
        answer is an C{unchanged} snapshot: no per-message object is made
        and the index is not synced (a SELECT so soon after a change that
        the store cannot tell whether another followed, which must look
        again before its OK, then costs a listing of the folder and little
        more).

        Otherwise the session's own messages (L{infos}) are made here too
        when SELECT left them for later: L{apply}, on the reactor thread,
        needs them."""
        mailbox = self.mailbox
        mailbox.refresh(force)
        recent = [] if self.read_only else mailbox.take_recent()
        if (
            not recent
            and mailbox.generation == self._generation
            and self.modseqs.unchanged_since_sync()
        ):
            return Snapshot(
                [],
                [],
                self.highest_modseq,
                mailbox.uidvalidity,
                mailbox.generation,
                unchanged=True,
            )
        self.infos  # noqa: B018 (made now, in this thread)
        infos = mailbox.messages()
        highest = self.modseqs.sync(mailbox.uidvalidity, infos)
        return Snapshot(infos, recent, highest, mailbox.uidvalidity, mailbox.generation)

    def open(self) -> None:
        """Take the first snapshot (blocking; SELECT) from the mailbox as
        it was just opened (L{MaildirStore.open_mailbox} took a snapshot: a
        second one would list a folder changed within the last two seconds
        again; changes since are found by the session's next poll).

        SELECT needs no per-message object: UIDs, flags (one per distinct
        info suffix) and mod-sequences come column by column; the messages
        themselves (L{infos}) are made when a later command first needs
        them.
        """
        mailbox = self.mailbox
        recent = [] if self.read_only else mailbox.take_recent()
        uids = mailbox.uids()
        suffixes, parsed = mailbox.flag_sets()
        sig_of = {s: signature_of(f, k) for s, (f, k) in parsed.items()}
        sigs = list(map(sig_of.__getitem__, suffixes))
        self.highest_modseq = self.modseqs.sync_columns(
            mailbox.uidvalidity, list(uids), sigs
        )
        self.uids = uids
        self._later = mailbox.messages_later()
        self._infos = None
        self.recent = set(recent)
        self.uidvalidity = mailbox.uidvalidity
        self._generation = mailbox.generation
        unseen = {s for s, (f, _) in parsed.items() if "S" not in f}
        self.first_unseen = _first_of(suffixes, unseen)

    @property
    def infos_made(self) -> bool:
        """Whether L{infos} is made already (reading it then costs nothing
        more: the reactor thread may)."""
        return self._infos is not None

    @property
    def infos(self) -> dict[int, MessageInfo]:
        """The messages as this session knows them, by UID (made on first
        use after SELECT, in whichever thread asks first)."""
        infos = self._infos
        if infos is None:
            with self._infos_lock:
                infos = self._infos
                if infos is None:
                    assert self._later is not None
                    made = self._later()
                    # Passes in C: a folder may hold 100,000 messages.
                    infos = dict(zip(map(_uid, made), made, strict=True))
                    self._infos = infos
                    self._later = None
        return infos

    def close(self) -> None:
        """Release the folder and the index (blocking)."""
        self.modseqs.close()
        self.mailbox.close()

    # --- reactor part ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of a UID in this view, or None."""
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def flags_of(self, uid: int) -> list[str]:
        """The IMAP flags of a message as this session knows them."""
        return imap_flags(self.infos[uid], uid in self.recent)

    def modseq_of(self, uid: int) -> int:
        """A message's mod-sequence."""
        return self.modseqs.modseq(uid)

    def uids_for(self, sequence_set: SequenceSet, uid: bool) -> list[int]:
        """The UIDs a (UID) sequence set names, ascending.

        @raise ValueError: for message sequence numbers beyond the last.
        """
        if uid:
            return list(sequence_set.iter_uids(self.uids))
        if not sequence_set.is_within(len(self.uids)):
            raise ValueError("no such message")
        return [self.uids[n - 1] for n in sequence_set.iter_numbers(len(self.uids))]

    def metadata_lines(
        self, uids: list[int], items: Sequence[FetchItem]
    ) -> list[bytes]:
        """The ``* n FETCH (...)`` lines of a FETCH of these messages (UIDs
        of this view) whose items are all L{METADATA_ITEMS}, in the order
        given (see L{MetadataLines}; blocking when the messages are not
        made yet).

        @raise ValueError: for an item that is not one of them.
        """
        return MetadataLines(self, uids, items).lines(0, len(uids))

    def flag_line(self, uid: int, *, condstore: bool, with_uid: bool) -> bytes:
        """An unsolicited ``* n FETCH (FLAGS ...)`` line."""
        seq = self.seq_of(uid)
        items = [b"FLAGS " + format_flags(self.flags_of(uid))]
        if with_uid:
            items.insert(0, b"UID %d" % uid)
        if condstore:
            items.append(b"MODSEQ (%d)" % self.modseq_of(uid))
        return b"* %d FETCH (%s)\r\n" % (seq or 0, b" ".join(items))

    def changed(self, info: MessageInfo) -> None:
        """Record a change this session made (and tells the client itself)."""
        if info.uid in self.infos:
            self.infos[info.uid] = info

    def apply(
        self,
        snap: Snapshot,
        *,
        allow_expunge: bool,
        condstore: bool,
        qresync: bool,
    ) -> list[bytes]:
        """Turn a snapshot into untagged responses and update the view.

        @raise UIDValidityChanged: when the folder's UIDVALIDITY changed.
        """
        if snap.uidvalidity != self.uidvalidity:
            raise UIDValidityChanged()
        if snap.unchanged:
            # What the full way below would give for the same snapshot.
            if allow_expunge and self.gone:
                return self._expunge_lines(qresync)
            return []
        self._generation = snap.generation
        out: list[bytes] = []
        current = dict(zip(map(_uid, snap.infos), snap.infos, strict=True))
        self.recent.update(snap.recent)
        self.gone.update(u for u in self.uids if u not in current)
        if allow_expunge and self.gone:
            out.extend(self._expunge_lines(qresync))
        last = self.uids[-1] if self.uids else 0
        fresh = [i for i in snap.infos if i.uid > last]
        fresh_uids = {i.uid for i in fresh}
        for info in fresh:
            self.uids.append(info.uid)
            self.infos[info.uid] = info
        self.highest_modseq = snap.highest
        if fresh or snap.recent:
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        for uid in self.uids:
            new = current.get(uid)
            if new is None or uid in fresh_uids:
                continue
            old = self.infos[uid]
            if old.flags != new.flags or old.keywords != new.keywords:
                self.infos[uid] = new
                out.append(self.flag_line(uid, condstore=condstore, with_uid=qresync))
            elif old is not new:
                self.infos[uid] = new
        return out

    def expunge_now(self, qresync: bool) -> list[bytes]:
        """The responses for expunges held back so far (now allowed)."""
        return self._expunge_lines(qresync) if self.gone else []

    def _expunge_lines(self, qresync: bool) -> list[bytes]:
        gone = sorted(self.gone)
        self.gone = set()
        out: list[bytes] = []
        if qresync:
            out.append(b"* VANISHED " + ranges_to_set(gone) + b"\r\n")
        else:
            # Descending, so each number is still right when the client
            # applies the responses one by one (RFC 3501 §7.4.1).
            for uid in reversed(gone):
                seq = self.seq_of(uid)
                if seq is not None:
                    out.append(b"* %d EXPUNGE\r\n" % seq)
        drop = set(gone)
        self.uids = [u for u in self.uids if u not in drop]
        for uid in gone:
            self.infos.pop(uid, None)
            self.recent.discard(uid)
        return out


class MetadataLines:
    """The ``* n FETCH (...)`` lines of a FETCH whose items are all
    L{METADATA_ITEMS} (in the order given), made part by part so that the
    first part can go to the client while the next is made: the same
    octets as formatting each message item by item, made column by column
    (passes in C; each distinct flag set, and each day of the internal
    dates, formatted once) for a FETCH of a whole folder of 100,000
    messages.

    The view's messages (L{MailboxView.infos}) are made by the first
    L{lines} if no command needed them since SELECT: call it in a thread
    then.  Their internal dates must be known (L{Mailbox.with_dates}).
    The view must not change while the parts are made (the session runs
    one command at a time).

    @param view: the session's view of the folder.
    @param uids: UIDs of the view, ascending.
    @param items: the FETCH items.
    @raise ValueError: for an item that is not one of L{METADATA_ITEMS}.
    """

    def __init__(
        self, view: MailboxView, uids: list[int], items: Sequence[FetchItem]
    ) -> None:
        for item in items:
            if item not in METADATA_ITEMS:
                raise ValueError(f"not a metadata item: {item}")
        self._view = view
        self._uids = uids
        self._items = list(map(FetchItem, items))
        self._template = (
            b"* %d FETCH ("
            + b" ".join(METADATA_ITEMS[item] for item in items)
            + b")\r\n"
        )
        # Made by the first part (a pass over the view's UIDs).
        self._seqs: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self._uids)

    def _sequence_numbers(self) -> Sequence[int]:
        seqs = self._seqs
        if seqs is None:
            view, uids = self._view, self._uids
            if len(uids) == len(view.uids) and uids == view.uids:
                seqs = range(1, len(uids) + 1)
            else:
                seqs = [s or 0 for s in map(view.seq_of, uids)]
            self._seqs = seqs
        return seqs

    def lines(self, start: int, stop: int) -> list[bytes]:
        """The lines of the messages from position C{start} to C{stop}
        (excluded) of the UIDs (blocking the first time, see above)."""
        view = self._view
        uids = self._uids[start:stop]
        if not uids:
            return []
        infos = view.infos
        chosen = list(map(infos.__getitem__, uids))
        columns: list[Iterable[object]] = [self._sequence_numbers()[start:stop]]
        flag_lists: _FlagLists | None = None
        dates: list[bytes] | None = None
        for item in self._items:
            if item is FetchItem.UID:
                columns.append(uids)
            elif item is FetchItem.FLAGS:
                if flag_lists is None:
                    flag_lists = _FlagLists()
                recent = view.recent
                marks = (
                    map(recent.__contains__, uids)
                    if recent
                    else itertools.repeat(False, len(uids))
                )
                keys = zip(
                    map(_flags, chosen), map(_keywords, chosen), marks, strict=True
                )
                columns.append(list(map(flag_lists.__getitem__, keys)))
            elif item is FetchItem.INTERNALDATE:
                if dates is None:
                    dates = format_date_times(list(map(_internal_date, chosen)))
                columns.append(dates)
            elif item is FetchItem.RFC822_SIZE:
                columns.append(list(map(_size, chosen)))
            else:
                columns.append(list(map(view.modseq_of, uids)))
        return list(map(self._template.__mod__, zip(*columns, strict=True)))
