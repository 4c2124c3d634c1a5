# -*- test-case-name: tests.test_logs -*-
"""Log output and the log lines every protocol shares.

Not a step of the mail flow but its record: each listener (SMTP, submission,
POP3, IMAP) logs one line when a connection opens and one when it closes,
through L{log_connection_opened} and L{log_connection_closed}, so the lines
look the same whatever the protocol and tools such as fail2ban can match
them::

    connection opened: role=smtp rhost=127.0.0.1 rport=52344 session=3f2a9c1b7d04
    connection closed: role=smtp rhost=127.0.0.1 rport=52344 session=3f2a9c1b7d04 reason=...

The fields (C{role}, C{rhost}, C{rport}, C{session}, C{reason}) are also event
keys, so JSON output carries them as they are.

Output: L{make_observer} builds a text or JSON observer on a file;
L{json_observer} is the factory for ``twistd --logger
twistedmail.logs.json_observer``.  JSON output is one JSON object per line
(newline-delimited JSON, what log shippers read), not Twisted's default
record-separator format: see L{json_line} for the keys.
"""

from __future__ import annotations

import json
import math
import secrets
import sys
from typing import IO, Any

from twisted.internet.interfaces import IAddress
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    formatEvent,
    textFileLogObserver,
)

__all__ = [
    "json_line",
    "json_observer",
    "log_connection_closed",
    "log_connection_opened",
    "make_observer",
    "new_session_id",
    "preformatted",
]


def _scalar(value: Any) -> Any:
    """A JSON-ready value: JSON scalars as they are, anything else as str()."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_scalar(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _scalar(v) for k, v in value.items()}
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def json_line(event: LogEvent) -> str:
    """Format one event as one line of JSON (ending in a newline).

    The keys: C{log_time} (seconds since the epoch), C{log_level} (C{"info"},
    C{"error"}...), C{log_namespace}, C{log_system}, C{log_text} (the
    formatted message), C{log_failure} (the traceback, when the event has one)
    and then every field of the event whose name does not start with
    C{log_}, with values that are not JSON types given as their C{str()}.
    Control characters are escaped, so one event is always one line.
    """
    record: dict[str, Any] = {
        "log_time": _scalar(event.get("log_time")),
        "log_level": getattr(event.get("log_level"), "name", None),
        "log_namespace": event.get("log_namespace"),
        "log_system": _scalar(event.get("log_system")),
        "log_text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["log_failure"] = failure.getTraceback()
        except Exception:
            record["log_failure"] = _scalar(failure)
    for key, value in event.items():
        if not key.startswith("log_"):
            record[key] = _scalar(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


def make_observer(format: str, out: IO[str]) -> ILogObserver:
    """An observer writing events to C{out} as text or JSON lines.

    @param format: C{"text"} (Twisted's usual timestamped lines) or
        C{"json"} (one JSON object per line, see L{json_line}).
    @raise ValueError: for another format.
    """
    if format == "text":
        return textFileLogObserver(out)
    if format == "json":
        return FileLogObserver(out, json_line)
    raise ValueError(f"unknown log format {format!r} (known: json, text)")


def json_observer() -> ILogObserver:
    """JSON lines on standard output, for ``twistd --logger``.

    twistd calls this with no arguments; with ``-n`` standard output is the
    terminal (or whatever runs the server, such as systemd's journal).
    """
    return make_observer("json", sys.stdout)


def new_session_id() -> str:
    """A short random hex ID naming one connection in every log line about it."""
    return secrets.token_hex(6)


def preformatted(text: str) -> str:
    """A log format string that renders as C{text} exactly.

    Twisted formats C{log_format} with a pure-Python C{string.Formatter} on
    every event; on busy paths (a few lines per message) that costs more
    than the rest of the line's work.  Render the text with an f-string,
    pass it through this, and give the fields as keywords as well: the text
    output is the same, JSON output still carries each field, and the
    formatter only copies one literal.
    """
    return text.replace("{", "{{").replace("}", "}}")


def _clean(text: str) -> str:
    """The text with control characters escaped, so one event stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _peer_fields(peer: IAddress | None) -> tuple[str, str]:
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if host is None:
        name = getattr(peer, "name", None)
        host = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
    return _clean(str(host or "-")), str(port if port is not None else "-")


def log_connection_opened(
    log: Logger, role: str, peer: IAddress | None, session_id: str
) -> None:
    """Log the one line for a new connection.

    @param role: the listener's role (C{smtp}, C{submission}, C{pop3s}...).
    @param peer: the client's address (C{transport.getPeer()}); hosts and
        ports come from IPv4 and IPv6 addresses, a path from UNIX ones.
    @param session_id: from L{new_session_id}; later lines about the
        connection carry it too.
    """
    rhost, rport = _peer_fields(peer)
    role, session = _clean(role), _clean(session_id)
    log.info(
        preformatted(
            f"connection opened: role={role} rhost={rhost} rport={rport}"
            f" session={session}"
        ),
        role=role,
        rhost=rhost,
        rport=rport,
        session=session,
    )


def log_connection_closed(
    log: Logger,
    role: str,
    peer: IAddress | None,
    session_id: str,
    reason: str = "",
) -> None:
    """Log the one line for a closed connection.

    @param reason: why it closed (C{"QUIT"}, C{"idle timeout"}, the error),
        last on the line; left out when empty.  Control characters are
        escaped so a peer cannot forge log lines.
    """
    rhost, rport = _peer_fields(peer)
    role, session = _clean(role), _clean(session_id)
    text = (
        f"connection closed: role={role} rhost={rhost} rport={rport} session={session}"
    )
    if reason:
        reason = _clean(reason)
        log.info(
            preformatted(f"{text} reason={reason}"),
            role=role,
            rhost=rhost,
            rport=rport,
            session=session,
            reason=reason,
        )
    else:
        log.info(
            preformatted(text), role=role, rhost=rhost, rport=rport, session=session
        )
