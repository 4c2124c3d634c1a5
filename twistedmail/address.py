# -*- test-case-name: tests.test_address -*-
"""Mail addresses and domains: parsing, normalising and comparing.

Pure code used by every step of the flow.  The mailbox grammar is RFC 5321
§4.1.2 (``Local-part "@" ( Domain / address-literal )``), widened to UTF-8 as
RFC 6531 §3.3 allows when the caller says so.  Domains are compared
case-insensitively and stored as IDNA A-labels (RFC 5890) so that
``Bücher.example`` and ``xn--bcher-kva.example`` are one domain.  Local parts
keep their case for display but compare case-insensitively, as operators
expect (RFC 5321 §2.4 permits either).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

__all__ = ["Address", "AddressError", "normalize_domain"]

# RFC 5322 §3.2.3 atext.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_DOT_STRING_UTF8 = re.compile(
    rf"(?:[{_ATEXT}]|[^\x00-\x7f])+(?:\.(?:[{_ATEXT}]|[^\x00-\x7f])+)*\Z"
)
# RFC 5321 §4.1.2 qtextSMTP / quoted-pairSMTP.
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_QUOTED_UTF8 = re.compile(
    r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*"\Z'
)
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")

# RFC 5321 §4.5.3.1.1 and §4.5.3.1.2.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255


class AddressError(ValueError):
    """The text is not a valid mailbox or domain; the message says why."""


def normalize_domain(text: str, *, utf8: bool = True) -> str:
    """Return the lower-case A-label form of a domain, or an address literal.

    @param text: a domain such as ``Example.COM``, ``bücher.example`` or an
        address literal such as ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``.
    @param utf8: accept U-labels (non-ASCII); when false only LDH is accepted.
    @raise AddressError: when the domain is malformed.
    """
    if not text:
        raise AddressError("empty domain")
    if text.startswith("["):
        return _normalize_literal(text)
    if text.endswith("."):
        raise AddressError("domain ends with a dot")
    if len(text) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if not text.isascii():
        if not utf8:
            raise AddressError("non-ASCII domain without SMTPUTF8")
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            raise AddressError(f"invalid internationalised domain: {e}") from None
    labels = text.split(".")
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise AddressError(f"invalid domain label {label!r}")
    return text.lower()


def _normalize_literal(text: str) -> str:
    if not text.endswith("]"):
        raise AddressError("unbalanced brackets in address literal")
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError(f"invalid address literal {text!r}") from None


@dataclass(frozen=True)
class Address:
    """A mailbox ``local@domain``.

    @ivar local: the local part as given (quoted form kept, quotes included).
    @ivar domain: the normalised domain (lower-case A-labels or a literal).
    """

    local: str
    domain: str

    @classmethod
    def parse(cls, text: str, *, utf8: bool = False) -> Address:
        """Parse an RFC 5321 mailbox (no angle brackets, no source route).

        @param utf8: allow UTF-8 in the local part and domain (RFC 6531).
        @raise AddressError: with the reason when the text is not a mailbox.
        """
        if not utf8 and not text.isascii():
            raise AddressError("non-ASCII address without SMTPUTF8")
        at = text.rfind("@")
        if at <= 0:
            raise AddressError("address has no local part and domain")
        local, domain = text[:at], text[at + 1 :]
        if local.startswith('"'):
            pattern = _QUOTED_UTF8 if utf8 else _QUOTED
        else:
            pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
        if not pattern.match(local):
            raise AddressError(f"invalid local part {local!r}")
        if len(local.encode("utf-8")) > MAX_LOCAL_PART:
            raise AddressError("local part too long")
        return cls(local, normalize_domain(domain, utf8=utf8))

    @property
    def key(self) -> str:
        """The case-folded form used to look the address up."""
        return f"{self.local.lower()}@{self.domain}"

    def split_detail(self, separator: str) -> tuple[Address, str] | None:
        """Split a subaddress: ``user+tag@d`` gives ``(user@d, "tag")``.

        @param separator: the configured separator characters (each one
            separates; the first one found in the local part wins); ``""``
            disables subaddressing.
        @return: ``None`` when the local part carries no detail.
        """
        if not separator or self.local.startswith('"'):
            return None
        positions = [p for p in (self.local.find(c) for c in separator) if p > 0]
        if not positions:
            return None
        p = min(positions)
        return Address(self.local[:p], self.domain), self.local[p + 1 :]

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"
