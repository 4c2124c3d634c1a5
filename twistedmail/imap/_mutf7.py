# -*- test-case-name: tests.test_imap_parser -*-
"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3), for the IMAP step of the flow.

IMAP4rev1 carries mailbox names in a 7-bit form of UTF-7: printable US-ASCII
characters other than ``&`` stand for themselves, ``&`` is written ``&-``, and
every other run of characters is UTF-16BE in BASE64 (with ``,`` for ``/`` and no
padding) between ``&`` and ``-``.  The parser decodes names once, at the wire;
the server encodes them again when it answers.

Decoding is strict: only the one canonical encoding of a name is accepted (no
BASE64 for printable ASCII, no adjacent shifted runs, no stray bits), so two
spellings can never name the same mailbox.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["MailboxNameError", "decode_mailbox_name", "encode_mailbox_name"]


class MailboxNameError(ValueError):
    """A mailbox name is not valid modified UTF-7 (or cannot be encoded)."""


_B64 = re.compile(rb"[A-Za-z0-9+,]*\Z")


def _shift(run: list[str]) -> bytes:
    data = "".join(run).encode("utf-16-be")
    return b"&" + base64.b64encode(data).rstrip(b"=").replace(b"/", b",") + b"-"


def encode_mailbox_name(name: str) -> bytes:
    """Encode a mailbox name as modified UTF-7 (RFC 3501 §5.1.3).

    @raise MailboxNameError: the name holds a lone surrogate, which UTF-16
        cannot carry.
    """
    out = bytearray()
    run: list[str] = []
    for ch in name:
        code = ord(ch)
        if 0x20 <= code <= 0x7E:
            if run:
                out += _shift(run)
                run = []
            out += b"&-" if ch == "&" else ch.encode("ascii")
        elif 0xD800 <= code <= 0xDFFF:
            raise MailboxNameError("lone surrogate in mailbox name")
        else:
            run.append(ch)
    if run:
        out += _shift(run)
    return bytes(out)


def decode_mailbox_name(data: bytes) -> str:
    """Decode a modified UTF-7 mailbox name (RFC 3501 §5.1.3).

    @raise MailboxNameError: 8-bit or control octets, an unterminated or
        malformed shifted run, or any other spelling than the canonical one.
    """
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x26:  # "&"
            end = data.find(b"-", i + 1)
            if end < 0:
                raise MailboxNameError("unterminated '&' in mailbox name")
            chunk = data[i + 1 : end]
            i = end + 1
            if not chunk:
                out.append("&")
                continue
            if not _B64.match(chunk) or len(chunk) % 4 == 1:
                raise MailboxNameError("bad modified BASE64 in mailbox name")
            try:
                raw = base64.b64decode(
                    chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4),
                    validate=True,
                )
                if len(raw) % 2:
                    raise MailboxNameError("odd UTF-16 length in mailbox name")
                out.append(raw.decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError):
                raise MailboxNameError("bad UTF-16 in mailbox name") from None
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
            i += 1
        else:
            raise MailboxNameError("8-bit or control octet in mailbox name")
    name = "".join(out)
    if encode_mailbox_name(name) != data:
        raise MailboxNameError("mailbox name is not canonical modified UTF-7")
    return name
