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

Text output is L{TextLogObserver}: the lines of Twisted's
C{textFileLogObserver}, byte for byte, made faster for the few events a
message logs (a timestamp formatted once per second, plain format strings
filled without Twisted's pure-Python formatter); anything it cannot format
that way goes through Twisted's own formatter.  The twistd plugin
(L{twistedmail.tap}) hands it to twistd for the usual text log.
L{FastLogger} is a L{Logger} whose events are the same but cheaper to emit.
"""

from __future__ import annotations

import json
import math
import secrets
import sys
from string import Formatter
from time import time
from typing import IO, Any

from twisted.internet.interfaces import IAddress
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.compat import ioType
from zope.interface import implementer

__all__ = [
    "FastLogger",
    "TextLogObserver",
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
        return TextLogObserver(out)
    if format == "json":
        return FileLogObserver(out, json_line)
    raise ValueError(f"unknown log format {format!r} (known: json, text)")


#: Each log level, for an O(1) check of the level an event is emitted at.
_LEVELS = frozenset(LogLevel.iterconstants())

#: Parses format strings (the public face of CPython's C parser).
_FORMATTER = Formatter()

#: Parsed format strings with fields (see L{TextLogObserver}) kept at most.
_MAX_FORMATS = 512

_Parts = tuple[tuple[str, str | None], ...]


class FastLogger(Logger):
    """A L{Logger} whose C{emit} is cheaper and otherwise the same.

    Twisted's checks the level against C{LogLevel.iterconstants()}, which
    sorts the five levels on every event; this checks a frozenset.  The
    events are the same dicts with the same keys.
    """

    def emit(
        self, level: LogLevel, format: str | None = None, **kwargs: object
    ) -> None:
        """Emit a log event to the observer; see L{Logger.emit}."""
        if level not in _LEVELS or "log_trace" in kwargs:
            # An invalid level is reported, and a trace recorded, by Twisted.
            Logger.emit(self, level, format, **kwargs)
            return
        kwargs.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time(),
        )
        self.observer(kwargs)


@implementer(ILogObserver)
class TextLogObserver:
    """Twisted's classic text log lines on a file, cheaper per event.

    Each event becomes exactly what C{textFileLogObserver(out, time_format)}
    writes (C{formatEventAsClassicLogText}): C{"<time> [<system>] <text>"},
    continuation lines indented by a tab.  Like Twisted's observer it writes
    each line at once (encoded as UTF-8 when C{out} takes bytes) and then
    flushes C{out}, so lines appear as promptly as before.

    Three things are cheaper than Twisted's formatter for the common event
    (a C{str} format, no failure, a C{float} time, a known level):

      - the timestamp is formatted once per second, not per event;
      - a format without braces (the L{preformatted} lines) is the text;
      - a format whose fields are plain names (C{"{id}: {dest}"}) is filled
        with C{format(value, "")} from its parsed form, kept per format
        string, instead of Twisted's pure-Python C{string.Formatter}.

    Any other event, or one whose fast formatting fails, is formatted by
    C{formatEventAsClassicLogText} itself.

    @param out: a file-like object with C{write} and C{flush} (a twistd
        C{LogFile}, standard output...).
    @param time_format: a C{strftime} format, as Twisted's; L{None} writes
        C{-} for the time.
    """

    def __init__(
        self, out: IO[Any], time_format: str | None = timeFormatRFC3339
    ) -> None:
        self._out = out
        self._encode = ioType(out) is not str
        self._time_format = time_format
        # Sub-second directives would differ within a second: no cache then.
        self._per_second = time_format is not None and "%f" not in time_format
        self._second = -1
        self._stamp = ""
        self._formats: dict[str, _Parts | None] = {}

    def __call__(self, event: LogEvent) -> None:
        """Write one event's line, if it has one."""
        text = self.format_event(event)
        if text:
            if self._encode:
                self._out.write(text.encode("utf-8"))
            else:
                self._out.write(text)
            self._out.flush()

    def format_event(self, event: LogEvent) -> str | None:
        """The event's line (newline included), or L{None} for no output."""
        line = self._fast_line(event)
        if line is None:
            time_format = self._time_format
            return formatEventAsClassicLogText(
                event, formatTime=lambda when: formatTime(when, time_format)
            )
        return line or None

    def _fast_line(self, event: LogEvent) -> str | None:
        """The line, C{""} for no output, or L{None} to take the slow path."""
        if "log_failure" in event or "log_flattened" in event:
            return None
        format = event.get("log_format")
        if type(format) is not str:
            return None
        if "{" in format or "}" in format:
            text = self._fill(format, event)
            if text is None:
                return None
        else:
            text = format
        if not text:
            return ""
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            namespace = event.get("log_namespace", "-")
            if level not in _LEVELS or type(namespace) is not str:
                return None
            system = f"{namespace}#{level.name}"  # type: ignore[union-attr]
        elif type(system) is not str:
            return None
        when = event.get("log_time")
        if (
            self._per_second
            and type(when) is float
            and 0.0 <= when < 1e11
            # Close to the next second, rounding to microseconds could show it.
            and when - int(when) < 0.999
        ):
            second = int(when)
            if second != self._second:
                self._stamp = formatTime(when, self._time_format)
                self._second = second
            stamp = self._stamp
        else:
            stamp = formatTime(when, self._time_format)
        line = f"{stamp} [{system}] {text}"
        if "\n" in line:
            line = line.replace("\n", "\n\t")
        return line + "\n"

    def _fill(self, log_format: str, event: LogEvent) -> str | None:
        """The format filled from the event, or L{None} if it needs Twisted's."""
        try:
            parts = self._formats[log_format]
        except KeyError:
            parts = _parse_format(log_format)
            if len(self._formats) < _MAX_FORMATS:
                self._formats[log_format] = parts
        if parts is None:
            return None
        pieces = []
        try:
            for literal, name in parts:
                pieces.append(literal)
                if name is not None:
                    value = event[name]
                    pieces.append(value if type(value) is str else format(value, ""))
        except Exception:
            return None
        return "".join(pieces)


def _parse_format(log_format: str) -> _Parts | None:
    """A format string's (literal, field name) pairs, or L{None} when a field
    is more than a plain name (attributes, indexes, calls, conversions,
    format specifications) or the format is malformed."""
    try:
        parsed = list(_FORMATTER.parse(log_format))
    except ValueError:
        return None
    parts = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (
            not name.isidentifier() or spec or conversion is not None
        ):
            return None
        parts.append((literal, name))
    return tuple(parts)


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
