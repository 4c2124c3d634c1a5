# -*- test-case-name: tests.test_imap_server -*-
"""LIST and LSUB (RFC 3501 §6.3.8-9, RFC 5258, RFC 6154, RFC 3348) over the
Maildir++ folder tree: the IMAP step of the flow.

Pure functions: the server reads the folder names and subscriptions from
the store (in a thread) and these pick and describe the matches.  The
hierarchy separator is ``.``; a folder whose parent does not exist (Maildir++
allows ``A.B`` without ``A``) makes the parent appear as ``\\Noselect``
(``\\NonExistent`` too, in extended LIST).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "SPECIAL_USE",
    "ListEntry",
    "list_entries",
    "lsub_entries",
    "pattern_matcher",
]

SEPARATOR = "."

#: The special-use folders made on first login and their attributes
#: (RFC 6154 §2).
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


@dataclass
class ListEntry:
    """One LIST or LSUB response: the name, its attributes, and extended
    data (RFC 5258 ``CHILDINFO``)."""

    name: str
    attributes: list[str]
    child_info: bool = False
    selectable: bool = True
    extra: list[str] = field(default_factory=list)


def pattern_matcher(reference: str, pattern: str) -> re.Pattern[str]:
    """A regular expression for ``reference`` + ``pattern``: ``*`` matches
    anything, ``%`` anything but the separator."""
    parts = []
    for ch in reference + pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "%":
            parts.append("[^.]*")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _matches(matchers: Sequence[re.Pattern[str]], name: str) -> bool:
    if name == "INBOX":
        # INBOX is case-insensitive (RFC 3501 §5.1).
        return any(re.match(m.pattern, name, re.IGNORECASE) for m in matchers)
    return any(m.match(name) for m in matchers)


def _tree(folders: Iterable[str]) -> tuple[set[str], set[str]]:
    """The existing names and the implied (missing) parents."""
    existing = set(folders)
    implied: set[str] = set()
    for name in existing:
        parts = name.split(SEPARATOR)
        for i in range(1, len(parts)):
            parent = SEPARATOR.join(parts[:i])
            if parent not in existing:
                implied.add(parent)
    return existing, implied


def _has_children(name: str, names: Iterable[str]) -> bool:
    prefix = name + SEPARATOR
    return any(n.startswith(prefix) for n in names)


def list_entries(
    folders: Sequence[str],
    subscribed: Sequence[str],
    reference: str,
    patterns: Sequence[str],
    *,
    select_options: frozenset[str] = frozenset(),
    return_options: frozenset[str] = frozenset(),
    extended: bool = False,
) -> list[ListEntry]:
    """The LIST responses, in folder order.

    @param folders: every folder (``INBOX`` included), from the store.
    @param subscribed: the subscribed names.
    """
    matchers = [pattern_matcher(reference, p) for p in patterns]
    existing, implied = _tree(folders)
    every = existing | implied
    subs = set(subscribed)
    want_subscribed = "SUBSCRIBED" in select_options
    recursive = "RECURSIVEMATCH" in select_options
    only_special = "SPECIAL-USE" in select_options
    show_subscribed = want_subscribed or "SUBSCRIBED" in return_options
    candidates = sorted(every | (subs if want_subscribed else set()), key=_order)
    entries = []
    for name in candidates:
        if not _matches(matchers, name):
            continue
        special = SPECIAL_USE.get(name) if name in existing else None
        if only_special and special is None:
            continue
        child_info = False
        if want_subscribed:
            child_info = recursive and _has_children(name, subs)
            if name not in subs and not child_info:
                continue
        attrs: list[str] = []
        if name not in existing:
            attrs.append("\\NonExistent" if extended else "\\Noselect")
        if _has_children(name, every):
            attrs.append("\\HasChildren")
        else:
            attrs.append("\\HasNoChildren")
        if special is not None:
            attrs.append(special)
        if show_subscribed and name in subs:
            attrs.append("\\Subscribed")
        entries.append(ListEntry(name, attrs, child_info, selectable=name in existing))
    return entries


def _order(name: str) -> tuple[int, str]:
    return (0 if name == "INBOX" else 1, name)


def lsub_entries(
    folders: Sequence[str],
    subscribed: Sequence[str],
    reference: str,
    pattern: str,
) -> list[ListEntry]:
    """The LSUB responses (RFC 3501 §6.3.9): subscribed names that match,
    and, for ``%``, unsubscribed parents of subscribed names as
    ``\\Noselect``."""
    matcher = pattern_matcher(reference, pattern)
    existing = set(folders)
    subs = set(subscribed)
    out: dict[str, ListEntry] = {}
    for name in sorted(subs, key=_order):
        if _matches([matcher], name):
            attrs = [] if name in existing else ["\\Noselect"]
            out[name] = ListEntry(name, attrs, selectable=name in existing)
            continue
        parts = name.split(SEPARATOR)
        for i in range(len(parts) - 1, 0, -1):
            parent = SEPARATOR.join(parts[:i])
            if parent not in subs and parent not in out and matcher.match(parent):
                out[parent] = ListEntry(parent, ["\\Noselect"], selectable=False)
                break
    return [out[k] for k in sorted(out, key=_order)]
