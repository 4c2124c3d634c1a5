"""Tests for L{twistedmail.address}."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.address import Address, AddressError, normalize_domain

_ATEXT = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=10)
_labels = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12
)


class ParseTests(SynchronousTestCase):
    """Parsing RFC 5321 mailboxes."""

    def test_simple(self) -> None:
        """local@domain splits at the last @ and lower-cases the domain."""
        a = Address.parse("Alice@Example.COM")
        self.assertEqual((a.local, a.domain), ("Alice", "example.com"))
        self.assertEqual(a.key, "alice@example.com")
        self.assertEqual(str(a), "Alice@example.com")

    def test_quoted(self) -> None:
        """A quoted local part may hold @ and spaces; it keeps its quotes."""
        a = Address.parse('"a b@c"@example.com')
        self.assertEqual(a.local, '"a b@c"')
        self.assertEqual(a.domain, "example.com")

    def test_refused(self) -> None:
        """Malformed mailboxes raise AddressError with a reason."""
        for bad in [
            "",
            "nobody",
            "@example.com",
            "a@",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a b@example.com",
            "a@example.com.",
            "a@-bad.example",
            "a@exa_mple.com",
            "a@[1.2.3]",
            "a@[1.2.3.4",
            '"unterminated@example.com',
            "x" * 65 + "@example.com",
        ]:
            with self.assertRaises(AddressError, msg=bad):
                Address.parse(bad)

    def test_literals(self) -> None:
        """Address literals are normalised (RFC 5321 §4.1.3)."""
        self.assertEqual(Address.parse("a@[192.0.2.1]").domain, "[192.0.2.1]")
        self.assertEqual(
            Address.parse("a@[IPv6:2001:DB8:0::1]").domain, "[IPv6:2001:db8::1]"
        )

    def test_utf8_only_when_declared(self) -> None:
        """Non-ASCII needs utf8=True (RFC 6531), and the domain becomes A-labels."""
        with self.assertRaises(AddressError):
            Address.parse("jörg@bücher.example")
        a = Address.parse("jörg@Bücher.example", utf8=True)
        self.assertEqual(a.local, "jörg")
        self.assertEqual(a.domain, "xn--bcher-kva.example")

    def test_subaddress(self) -> None:
        """user+tag splits at the first separator character."""
        a = Address.parse("bob+lists+x@example.com")
        base, detail = a.split_detail("+")  # type: ignore[misc]
        self.assertEqual((str(base), detail), ("bob@example.com", "lists+x"))
        self.assertIsNone(a.split_detail(""))
        self.assertIsNone(Address.parse("+x@example.com").split_detail("+"))
        base2, detail2 = Address.parse("bob-x@example.com").split_detail("+-")  # type: ignore[misc]
        self.assertEqual((str(base2), detail2), ("bob@example.com", "x"))

    @given(
        st.lists(_atoms, min_size=1, max_size=3),
        st.lists(_labels, min_size=1, max_size=4),
    )
    def test_round_trip(self, atoms: list[str], labels: list[str]) -> None:
        """parse(str(a)) == a for any dot-string at any LDH domain."""
        local = ".".join(atoms)
        if len(local) > 64:
            local = local[:64].rstrip(".")
        text = f"{local}@{'.'.join(labels)}"
        a = Address.parse(text)
        self.assertEqual(Address.parse(str(a)), a)

    @given(st.text(max_size=80))
    def test_any_text(self, text: str) -> None:
        """Any text parses or raises AddressError, nothing else."""
        for utf8 in (False, True):
            try:
                Address.parse(text, utf8=utf8)
            except AddressError:
                pass


class DomainTests(SynchronousTestCase):
    """Normalising domains."""

    def test_case(self) -> None:
        """Domains compare case-insensitively."""
        self.assertEqual(normalize_domain("MAIL.Example.ORG"), "mail.example.org")

    def test_idna(self) -> None:
        """U-labels become A-labels; refused without utf8."""
        self.assertEqual(normalize_domain("bücher.example"), "xn--bcher-kva.example")
        with self.assertRaises(AddressError):
            normalize_domain("bücher.example", utf8=False)

    def test_long(self) -> None:
        """Overlong domains and labels are refused."""
        with self.assertRaises(AddressError):
            normalize_domain("a" * 64 + ".example")
        with self.assertRaises(AddressError):
            normalize_domain(".".join(["abcdefgh"] * 40))
