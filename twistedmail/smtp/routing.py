# -*- test-case-name: tests.test_mx -*-
"""Routing: where to send mail for a domain, and how (the relay step).

Placeholder while the client lands; see L{parse_host_port}.
"""

from __future__ import annotations

import ipaddress

from twistedmail.address import AddressError, normalize_domain

__all__ = ["parse_host_port"]


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Parse ``host``, ``host:port``, ``[literal]:port`` or ``[v6]:port``.

    Brackets around a name or address mean the same as in Postfix: use it
    as it is, never look up MX records (a relay is always that).

    @return: (host name or address without brackets, port).
    @raise ValueError: for an empty host, a bad name or a bad port.
    """
    host, port_text = text, ""
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"unbalanced brackets in {text!r}")
        host, port_text = inner, rest[1:]
        if host[:5].lower() == "ipv6:":
            host = host[5:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    port = default_port
    if port_text or text.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {text!r}")
        port = int(port_text)
    if not host:
        raise ValueError(f"no host in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = normalize_domain(host)
        except AddressError as e:
            raise ValueError(f"bad host {host!r}: {e}") from None
    return host, port
