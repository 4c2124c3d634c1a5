# -*- test-case-name: tests.test_maildir_store -*-
"""Keyword names for the letters ``a``..``z`` in a folder's file names (the
Maildir step of the flow).

Each folder maps up to 26 IMAP keywords (RFC 3501 §2.3.2, e.g. ``$Junk``)
to the letters ``a``..``z`` in the file name info.  The map lives in
``twistedmail-keywords`` and uses Dovecot's ``dovecot-keywords`` format::

    <index> <keyword>

where index 0 is ``a``, 1 is ``b`` and so on; lines may come in any order.
When a folder has no file of ours but has ``dovecot-keywords`` (a migrated
Maildir), Dovecot's map is taken over as it is, so the letters already in
the file names keep their meaning; Dovecot's file is only read.

A letter, once given, keeps its keyword.  Keywords compare without regard
to case (the first spelling is kept).  Writers hold the folder lock and
replace the file whole (L{write_file_atomic}).
"""

from __future__ import annotations

import os

from twistedmail.maildir.names import MaildirError
from twistedmail.maildir.uidlist import write_file_atomic

__all__ = ["KEYWORDS_NAME", "KeywordMap", "KeywordError", "valid_keyword"]

KEYWORDS_NAME = "twistedmail-keywords"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# RFC 3501 atom-specials and the flag prefix; a keyword is an atom.
_NOT_IN_KEYWORD = frozenset('(){ %*"\\]') | {chr(i) for i in range(0x21)} | {"\x7f"}


class KeywordError(MaildirError):
    """A keyword that is malformed, or a folder that has used all 26
    letters."""


def valid_keyword(name: str) -> bool:
    """Whether a name can be a keyword: a non-empty IMAP atom, ASCII."""
    return bool(name) and name.isascii() and not _NOT_IN_KEYWORD.intersection(name)


class KeywordMap:
    """The keyword names of one folder's letters.

    @param names: index (0 for ``a``) to keyword.
    """

    def __init__(self, names: dict[int, str] | None = None) -> None:
        self.names: dict[int, str] = dict(names or {})

    @classmethod
    def parse(cls, data: bytes) -> KeywordMap:
        """Parse the ``dovecot-keywords`` format; malformed lines are skipped."""
        names: dict[int, str] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            index, _, name = line.partition(" ")
            if index.isdigit() and int(index) < 26 and valid_keyword(name):
                names[int(index)] = name
        return cls(names)

    def to_bytes(self) -> bytes:
        """Render in the ``dovecot-keywords`` format."""
        return "".join(f"{i} {n}\n" for i, n in sorted(self.names.items())).encode()

    @classmethod
    def load(cls, folder: str) -> KeywordMap:
        """Read a folder's map (ours, else Dovecot's, else empty)."""
        for name in (KEYWORDS_NAME, "dovecot-keywords"):
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    return cls.parse(f.read())
            except FileNotFoundError:
                continue
        return cls()

    def save(self, folder: str) -> None:
        """Replace the folder's file (the caller holds the folder lock)."""
        write_file_atomic(os.path.join(folder, KEYWORDS_NAME), self.to_bytes())

    def name_of(self, letter: str) -> str | None:
        """The keyword of a letter, or None when it has none."""
        return self.names.get(ord(letter) - ord("a"))

    def letter_of(self, keyword: str) -> str | None:
        """The letter of a keyword, or None when it has none yet."""
        folded = keyword.casefold()
        for i, n in self.names.items():
            if n.casefold() == folded:
                return _LETTERS[i]
        return None

    def add(self, keyword: str) -> str:
        """The letter of a keyword, giving it the first free one if needed.

        @raise KeywordError: when the keyword is not an atom or no letter is
            free.
        """
        if not valid_keyword(keyword) or keyword.startswith("\\"):
            raise KeywordError(f"not a valid keyword: {keyword!r}")
        letter = self.letter_of(keyword)
        if letter is not None:
            return letter
        for i in range(26):
            if i not in self.names:
                self.names[i] = keyword
                return _LETTERS[i]
        raise KeywordError("this folder cannot hold more than 26 keywords")
