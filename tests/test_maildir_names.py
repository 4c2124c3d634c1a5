"""Tests for L{twistedmail.maildir.names}: file names, flags and folder names."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.maildir.names import (
    FLAG_LETTERS,
    FolderNameError,
    folder_directory,
    folder_from_directory,
    format_filename,
    make_base,
    parse_filename,
    size_from_base,
)

BASE_CHARS = st.text(
    alphabet=st.sampled_from("abcXYZ0123456789.,=_-"), min_size=1, max_size=30
)
FLAGS = st.frozensets(st.sampled_from(FLAG_LETTERS))
KEYWORD_LETTERS = st.frozensets(st.sampled_from("abcdefghijklmnopqrstuvwxyz"))

#: Names that must never become a directory (they could leave the Maildir or
#: are malformed).
BAD_FOLDER_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "..x",
    "x..y",
    ".hidden",
    "trailing.",
    "/etc",
    "a/b",
    "a\\b",
    "a\0b",
    "new\nline",
    "tab\there",
    "INBOX.sub",
    "inbox.sub",
    "x" * 300,
    "bad\udcffbytes",
]


class FileNameTests(SynchronousTestCase):
    """Maildir file names."""

    @given(BASE_CHARS, FLAGS, KEYWORD_LETTERS)
    def test_round_trip(
        self, base: str, flags: frozenset[str], letters: frozenset[str]
    ) -> None:
        """parse(format(x)) == x for any base name, flags and keywords."""
        self.assertEqual(
            parse_filename(format_filename(base, flags, letters)),
            (base, flags, letters),
        )

    def test_sorted_letters(self) -> None:
        """Flags then keywords, in ASCII order."""
        self.assertEqual(format_filename("b", {"S", "D", "R"}, {"c", "a"}), "b:2,DRSac")

    def test_no_info(self) -> None:
        """Names without ':2,' (new/, twisted.mail) have no flags."""
        self.assertEqual(
            parse_filename("123.456_7.host"),
            ("123.456_7.host", frozenset(), frozenset()),
        )
        self.assertEqual(parse_filename("b:1,xyz")[1:], (frozenset(), frozenset()))

    def test_unknown_flag_refused(self) -> None:
        """Letters outside the set are refused when formatting."""
        self.assertRaises(ValueError, format_filename, "b", {"X"})
        self.assertRaises(ValueError, format_filename, "b", set(), {"A"})

    def test_size(self) -> None:
        """,S= gives the size, also with Dovecot's ,W= after it."""
        self.assertEqual(size_from_base("1.M1P2.host,S=1234"), 1234)
        self.assertEqual(size_from_base("1.M1P2.host,S=1234,W=1260"), 1234)
        self.assertIsNone(size_from_base("1.M1P2.host"))
        self.assertIsNone(size_from_base("1.M1P2.host,S=12x"))

    def test_make_base(self) -> None:
        """qmail's parts and the size."""
        self.assertEqual(
            make_base(1700000000.5, 42, 7, "mx.example", 99, "abc"),
            "1700000000.M500000P42Q7Uabc.mx.example,S=99",
        )


class FolderNameTests(SynchronousTestCase):
    """Maildir++ folder names."""

    def test_inbox(self) -> None:
        """INBOX in any case is the Maildir itself."""
        for name in ("INBOX", "inbox", "Inbox"):
            self.assertIsNone(folder_directory(name))

    def test_folders(self) -> None:
        """Folders are dot directories; '.' is the separator."""
        self.assertEqual(folder_directory("Sent"), ".Sent")
        self.assertEqual(folder_directory("Archive.2024"), ".Archive.2024")
        self.assertEqual(folder_directory("Entwürfe"), ".Entwürfe")

    def test_refused(self) -> None:
        """Names that could leave the Maildir or are malformed are refused
        with a reason."""
        for name in BAD_FOLDER_NAMES:
            with self.assertRaises(FolderNameError, msg=repr(name)) as cm:
                folder_directory(name)
            self.assertTrue(str(cm.exception))

    @given(st.text(alphabet=st.sampled_from("ab./\\\0\n.-~ \udcff"), max_size=12))
    def test_never_escapes(self, name: str) -> None:
        """Any accepted name is one directory entry starting with '.', and
        not '.' or '..'."""
        try:
            directory = folder_directory(name)
        except FolderNameError:
            return
        if directory is None:
            return
        self.assertTrue(directory.startswith("."))
        self.assertNotIn("/", directory)
        self.assertNotIn(directory, (".", ".."))
        self.assertNotIn("..", directory)

    def test_from_directory(self) -> None:
        """Directory entries map back to folder names; others are skipped."""
        self.assertEqual(folder_from_directory(".Sent"), "Sent")
        self.assertEqual(folder_from_directory(".A.B"), "A.B")
        for entry in (".", "..", "cur", "..deleted-1-2", ".INBOX", ".a..b"):
            self.assertIsNone(folder_from_directory(entry), entry)
