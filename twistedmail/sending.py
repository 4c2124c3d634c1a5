# -*- test-case-name: tests.test_pop3_loopback,tests.test_smtp_loopback -*-
"""Sending a connection's buffered output at once (the server protocols of
every step of the flow that reads a command and answers it: ESMTP, POP3).

A TCP transport only buffers on C{write} and sends once the reactor next
finds the socket writable: one more poll and two more C{epoll_ctl} calls
for every reply, while the client waits.  L{send_buffered_now} calls the
transport's C{doWrite} (L{IWriteDescriptor}) instead, which sends at once;
what the socket does not take stays buffered and goes the usual way, and an
error is left for the reactor's own C{doWrite} to report.  A TLS wrapper
(implicit TLS) passes C{doWrite} on to the TCP connection below it, which
then sends what the wrapper encrypted; under STARTTLS the transport is
still the TCP connection, which sends what TLS put in its buffer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["send_buffered_now"]


def send_buffered_now(transport: Any) -> None:
    """Send what C{transport} has buffered now.  Nothing is done while the
    transport or the descriptor below it is closing (the reactor's
    C{doWrite} finishes the close then), or for transports without
    C{doWrite} (test transports).

    @param transport: Any: a TCP, TLS or test transport.
    """
    do_write = getattr(transport, "doWrite", None)
    descriptor = getattr(do_write, "__self__", None)
    if do_write is None or descriptor is None:
        return
    for t in (transport, descriptor):
        if not getattr(t, "connected", False) or getattr(t, "disconnecting", True):
            return
    do_write()
