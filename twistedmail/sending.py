# -*- test-case-name: tests.test_sending,tests.test_pop3_loopback,tests.test_smtp_loopback -*-
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

L{write_now} goes one step further for a plain TCP connection with nothing
buffered: the pieces of a reply go to the socket in one C{sendmsg} call
(no copy into one buffer, no registering for writability and back), and
only what the socket does not take is buffered by the transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.tcp import Connection

__all__ = ["MAX_PIECES", "send_buffered_now", "write_now"]

#: At most this many pieces go to one C{sendmsg} (Linux allows 1,024, the
#: C{IOV_MAX}); more (a burst of pipelined replies) are joined first.
MAX_PIECES = 64


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


def write_now(transport: Any, pieces: Sequence[bytes]) -> bool:
    """Write C{pieces} (one output, in order) to C{transport}, and on a
    plain TCP connection hand them to the socket at once.

    When C{transport} is a TCP connection (not a TLS wrapper, and not
    after STARTTLS) that is open and has nothing buffered, the pieces go
    out in one C{sendmsg} system call; what the socket does not take is
    given to the transport's C{writeSequence}, which sends it the usual
    way (and pauses a registered producer when it is much).  Anywhere else
    (TLS, a test transport, output already buffered, a Twisted whose
    connection keeps its state under other names) the pieces are simply
    written to the transport.  A socket error is left for the reactor to
    find: the pieces are written to the transport then, whose own send
    fails and closes the connection as usual.

    @param transport: Any: a TCP, TLS or test transport.
    @return: True when the socket took everything (nothing is left for
        L{send_buffered_now}); False when something was written to the
        transport.
    """
    if not pieces:
        return True
    sock = getattr(transport, "socket", None)
    if (
        not isinstance(transport, Connection)
        or sock is None
        or getattr(transport, "TLS", True) is not False
        or not getattr(transport, "connected", False)
        or getattr(transport, "disconnecting", True)
        or getattr(transport, "_writeDisconnected", True)
        or getattr(transport, "_tempDataLen", 1) != 0
        or len(getattr(transport, "dataBuffer", b"?"))
        != getattr(transport, "offset", 0)
    ):
        _write(transport, pieces)
        return False
    if len(pieces) > MAX_PIECES:
        pieces = [b"".join(pieces)]
    try:
        sent = sock.sendmsg(pieces)
    except BlockingIOError:
        sent = 0
    except OSError:
        _write(transport, pieces)
        return False
    for i, piece in enumerate(pieces):
        if sent < len(piece):
            rest = [piece[sent:], *pieces[i + 1 :]] if sent else list(pieces[i:])
            transport.writeSequence(rest)
            return False
        sent -= len(piece)
    return True


def _write(transport: Any, pieces: Sequence[bytes]) -> None:
    if len(pieces) == 1:
        transport.write(pieces[0])
    else:
        transport.writeSequence(pieces)
