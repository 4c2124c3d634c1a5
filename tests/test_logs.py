"""Tests for L{twistedmail.logs}."""

from __future__ import annotations

import io
import json
import re
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twistedmail.logs import (
    FastLogger,
    TextLogObserver,
    json_line,
    json_observer,
    log_connection_closed,
    log_connection_opened,
    make_observer,
    new_session_id,
    preformatted,
)

_PEER = IPv4Address("TCP", "127.0.0.1", 52344)


def _capture() -> tuple[Logger, list[LogEvent]]:
    events: list[LogEvent] = []
    return Logger(
        namespace="twistedmail.test", observer=cast(ILogObserver, events.append)
    ), events


class ConnectionLineTests(SynchronousTestCase):
    """One uniform line per connection open and close."""

    def test_opened(self) -> None:
        """The open line names role, peer host and port, and session."""
        log, events = _capture()
        log_connection_opened(log, "smtp", _PEER, "abc123")
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["connection opened: role=smtp rhost=127.0.0.1 rport=52344 session=abc123"],
        )
        self.assertEqual(events[0]["log_level"].name, "info")
        self.assertEqual(
            (events[0]["role"], events[0]["rhost"], events[0]["rport"]),
            ("smtp", "127.0.0.1", "52344"),
        )

    def test_closed(self) -> None:
        """The close line is the same, with the reason last when there is one."""
        log, events = _capture()
        log_connection_closed(log, "pop3s", _PEER, "abc123")
        log_connection_closed(log, "pop3s", _PEER, "abc123", "idle timeout")
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "connection closed: role=pop3s rhost=127.0.0.1 rport=52344"
                " session=abc123",
                "connection closed: role=pop3s rhost=127.0.0.1 rport=52344"
                " session=abc123 reason=idle timeout",
            ],
        )

    def test_ipv6(self) -> None:
        """An IPv6 peer's host is written as it is."""
        log, events = _capture()
        log_connection_opened(log, "imap", IPv6Address("TCP", "::1", 993), "s1")
        self.assertEqual(
            formatEvent(events[0]),
            "connection opened: role=imap rhost=::1 rport=993 session=s1",
        )

    def test_unix_and_unknown_peer(self) -> None:
        """A UNIX socket peer gives its path; no peer gives dashes."""
        log, events = _capture()
        log_connection_opened(log, "smtp", UNIXAddress(b"/run/mail.sock"), "s1")
        log_connection_opened(log, "smtp", None, "s2")
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "connection opened: role=smtp rhost=/run/mail.sock rport=- session=s1",
                "connection opened: role=smtp rhost=- rport=- session=s2",
            ],
        )

    def test_reason_cannot_forge_lines(self) -> None:
        """Control characters in a reason are escaped: one event, one line."""
        log, events = _capture()
        log_connection_closed(log, "smtp", _PEER, "s1", "bad\r\nconnection opened: x")
        text = formatEvent(events[0])
        self.assertNotIn("\n", text)
        self.assertTrue(text.endswith("reason=bad\\x0d\\x0aconnection opened: x"), text)


class SessionIdTests(SynchronousTestCase):
    """Session IDs are short random hex."""

    def test_format(self) -> None:
        """Twelve lower-case hex digits, different each time."""
        ids = {new_session_id() for _ in range(100)}
        self.assertEqual(len(ids), 100)
        for i in ids:
            self.assertRegex(i, r"\A[0-9a-f]{12}\Z")


class ObserverTests(SynchronousTestCase):
    """make_observer writes text or JSON lines."""

    def test_text(self) -> None:
        """Text output is Twisted's usual line with the message."""
        out = io.StringIO()
        log = Logger(namespace="twistedmail.smtp", observer=make_observer("text", out))
        log_connection_opened(log, "smtp", _PEER, "abc123")
        line = out.getvalue()
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertRegex(
            line,
            re.escape("[twistedmail.smtp#info] connection opened: role=smtp")
            + r" rhost=127\.0\.0\.1 rport=52344 session=abc123\n\Z",
        )

    def test_json(self) -> None:
        """JSON output: one object per line carrying the message and the fields."""
        out = io.StringIO()
        log = Logger(namespace="twistedmail.smtp", observer=make_observer("json", out))
        log_connection_opened(log, "smtp", _PEER, "abc123")
        log_connection_closed(log, "smtp", _PEER, "abc123", "QUIT")
        lines = out.getvalue().split("\n")
        self.assertEqual(lines[-1], "")
        records = [json.loads(line) for line in lines[:-1]]
        self.assertEqual(len(records), 2)
        first, second = records
        self.assertEqual(
            {k: first[k] for k in ("role", "rhost", "rport", "session")},
            {
                "role": "smtp",
                "rhost": "127.0.0.1",
                "rport": "52344",
                "session": "abc123",
            },
        )
        self.assertEqual(
            first["log_text"],
            "connection opened: role=smtp rhost=127.0.0.1 rport=52344 session=abc123",
        )
        self.assertEqual(first["log_level"], "info")
        self.assertEqual(first["log_namespace"], "twistedmail.smtp")
        self.assertIsInstance(first["log_time"], float)
        self.assertEqual(second["reason"], "QUIT")
        self.assertNotIn("log_format", first)
        self.assertNotIn("\x1e", out.getvalue())

    def test_json_odd_values(self) -> None:
        """Values JSON cannot hold are written as text; newlines stay escaped."""
        line = json_line(
            {
                "log_format": "peer {peer} said {what}",
                "log_time": 1.5,
                "peer": _PEER,
                "what": "a\nb",
                "count": 3,
                "items": (1, "x"),
                "ratio": float("nan"),
            }
        )
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["peer"], str(_PEER))
        self.assertEqual(record["what"], "a\nb")
        self.assertEqual(record["count"], 3)
        self.assertEqual(record["items"], [1, "x"])
        self.assertEqual(record["ratio"], "nan")
        self.assertEqual(record["log_text"], f"peer {_PEER} said a\nb")
        self.assertIsNone(record["log_level"])

    def test_json_failure(self) -> None:
        """A logged failure carries its traceback as text."""
        out = io.StringIO()
        log = Logger(namespace="twistedmail.smtp", observer=make_observer("json", out))
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("delivery failed", Failure(), session="s1")
        record = json.loads(out.getvalue())
        self.assertEqual(record["log_level"], "critical")
        self.assertIn("ValueError: boom", record["log_failure"])
        self.assertEqual(record["session"], "s1")

    def test_json_observer(self) -> None:
        """The twistd --logger factory takes no arguments and gives an observer."""
        self.assertTrue(verifyObject(ILogObserver, json_observer()))

    def test_unknown_format(self) -> None:
        """Another format is refused."""
        with self.assertRaises(ValueError):
            make_observer("xml", io.StringIO())


class PreformattedTests(SynchronousTestCase):
    """Lines rendered before logging keep their text and their fields."""

    def test_braces(self) -> None:
        """Braces in the text come out as they are; the fields stay keys."""
        log, events = _capture()
        log.info(preformatted("reason={x} {0} {} }{"), reason="{x}")
        self.assertEqual(formatEvent(events[0]), "reason={x} {0} {} }{")
        self.assertEqual(events[0]["reason"], "{x}")

    def test_connection_reason_with_braces(self) -> None:
        """A close reason holding braces is logged as it is."""
        log, events = _capture()
        log_connection_closed(log, "smtp", _PEER, "s1", "bad {line}")
        self.assertEqual(
            formatEvent(events[0]),
            "connection closed: role=smtp rhost=127.0.0.1 rport=52344 session=s1"
            " reason=bad {line}",
        )
        self.assertEqual(events[0]["reason"], "bad {line}")


class _Odd:
    """A value with its own text, and one whose formatting fails."""

    def __init__(self, fails: bool) -> None:
        self.fails = fails

    def __format__(self, spec: str) -> str:
        if self.fails:
            raise RuntimeError("no text")
        return f"odd<{spec}>"

    def __repr__(self) -> str:
        return "_Odd()"


#: Text with the characters that matter to formatting and to lines.
_TEXT = st.text(alphabet="ab {}}{:!.[]()0\n\r\té€", max_size=12)
_NAMES = st.sampled_from(["id", "dest", "n", "log_level", "missing", "ünï"])
_VALUES = st.one_of(
    st.text(alphabet="xy {}\n€", max_size=6),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.builds(_Odd, st.booleans()),
    st.tuples(st.integers(0, 3)),
)
_FIELD = st.one_of(
    _NAMES.map(lambda n: "{" + n + "}"),
    st.sampled_from(
        ["{}", "{0}", "{id!r}", "{id:>4}", "{n.real}", "{dest[0]}", "{id()}", "{{"]
    ),
)
_FORMATS = st.one_of(
    st.none(),
    st.binary(max_size=4),
    st.integers(),
    st.lists(st.one_of(_TEXT, _FIELD), max_size=5).map("".join),
)
_TIMES = st.one_of(
    st.floats(min_value=0, max_value=4e9),
    st.integers(0, 10**6).map(lambda s: s + 0.9999996),
    st.integers(0, 10**6).map(lambda s: s + 0.999),
    st.integers(0, 10**6).map(lambda s: s + 0.9989),
    st.integers(0, 2**32),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
)
_MISSING = object()


@st.composite
def _events(draw: st.DrawFn) -> LogEvent:
    """Events of many shapes: formats, fields, times, levels, systems."""
    event: LogEvent = {}
    for key, strategy in (
        ("log_format", _FORMATS),
        ("log_time", _TIMES),
        ("log_level", st.one_of(st.sampled_from(list(LogLevel.iterconstants())))),
        ("log_namespace", st.one_of(_TEXT, st.none())),
        ("log_system", st.one_of(st.none(), _TEXT, st.integers())),
    ):
        value = draw(st.one_of(st.just(_MISSING), strategy))
        if value is not _MISSING:
            event[key] = value
    for name in draw(st.lists(_NAMES, max_size=4)):
        if name not in event:
            event[name] = draw(_VALUES)
    if draw(st.integers(0, 9)) == 0:
        try:
            raise ValueError("boom")
        except ValueError:
            event["log_failure"] = Failure()
    return event


class TextLogObserverTests(SynchronousTestCase):
    """TextLogObserver writes exactly what Twisted's text observer writes."""

    def _both(self, events: list[LogEvent], out: type = io.StringIO) -> None:
        """Both observers write the same, and raise the same where one raises
        (times out of range, a level without a name: Twisted's own errors)."""
        ours, theirs = out(), out()
        observers = [TextLogObserver(ours), textFileLogObserver(theirs)]
        for event in events:
            outcomes = []
            for observer in observers:
                try:
                    observer(dict(event))
                except Exception as e:
                    outcomes.append(f"{type(e).__name__}: {e}")
                else:
                    outcomes.append("")
            self.assertEqual(outcomes[0], outcomes[1])
        self.assertEqual(ours.getvalue(), theirs.getvalue())

    @settings(max_examples=400)
    @given(st.lists(_events(), max_size=8))
    def test_same_lines(self, events: list[LogEvent]) -> None:
        """Over many event shapes, one observer's output equals Twisted's."""
        self._both(events)

    @given(st.lists(_events(), max_size=4))
    def test_same_bytes(self, events: list[LogEvent]) -> None:
        """On a binary file the output is Twisted's too (UTF-8)."""
        self._both(events, io.BytesIO)

    def test_same_second_and_next(self) -> None:
        """The cached timestamp holds within a second and moves with it."""
        base = 1_700_000_000.0
        # base + 0.9999997 is ...0.9999998: Twisted rounds it up to the next
        # second, so the cached stamp must not be used for it.
        times = [base + 0.1, base + 0.5, base + 0.9989, base + 0.9999997, base + 1.2]
        self._both(
            [
                {
                    "log_format": "t {i}",
                    "i": i,
                    "log_time": t,
                    "log_level": LogLevel.info,
                    "log_namespace": "x",
                }
                for i, t in enumerate(times)
            ]
        )

    def test_time_formats(self) -> None:
        """Other time formats, sub-second ones included, match as well."""
        for time_format in (None, "%H:%M:%S.%f", "%s"):
            ours, theirs = io.StringIO(), io.StringIO()
            observer = TextLogObserver(ours, time_format)
            twisted = textFileLogObserver(theirs, time_format)
            for t in (5.25, 5.5, 6.0):
                event = {"log_format": "x", "log_time": t, "log_system": "s"}
                observer(dict(event))
                twisted(dict(event))
            self.assertEqual(ours.getvalue(), theirs.getvalue())

    def test_fast_paths(self) -> None:
        """A preformatted line and a plain-field line are written as expected."""
        out = io.StringIO()
        log = FastLogger(namespace="twistedmail.x", observer=TextLogObserver(out))
        log.info(preformatted("a {b}"), b=1)
        log.warn("{id}: {n} {f}", id="Q1", n=3, f=1.5)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].endswith(" [twistedmail.x#info] a {b}"), lines[0])
        self.assertTrue(lines[1].endswith(" [twistedmail.x#warn] Q1: 3 1.5"), lines[1])

    def test_empty_text_no_line(self) -> None:
        """An event with no text (and no failure) writes nothing, as Twisted's."""
        out = io.StringIO()
        TextLogObserver(out)({"log_format": "", "log_time": 1.0})
        TextLogObserver(out)({"log_time": 1.0})
        self.assertEqual(out.getvalue(), "")

    def test_flushes(self) -> None:
        """Each line is flushed at once, as Twisted's observer does."""
        flushed: list[str] = []

        class Out(io.StringIO):
            def flush(self) -> None:
                flushed.append(self.getvalue())

        out = Out()
        observer = TextLogObserver(out)
        observer({"log_format": "one", "log_time": 1.0, "log_system": "s"})
        observer({"log_format": "two", "log_time": 1.0, "log_system": "s"})
        self.assertEqual(
            flushed,
            ["1970-01-01T00:00:01+0000 [s] one\n", out.getvalue()],
        )

    def test_provides(self) -> None:
        """It is a log observer."""
        self.assertTrue(verifyObject(ILogObserver, TextLogObserver(io.StringIO())))


class FastLoggerTests(SynchronousTestCase):
    """FastLogger's events are Twisted Logger's events."""

    def test_same_events(self) -> None:
        """The same keys and values (but the time) at every level."""
        ours: list[LogEvent] = []
        theirs: list[LogEvent] = []
        fast = FastLogger("ns", source=self, observer=cast(ILogObserver, ours.append))
        slow = Logger("ns", source=self, observer=cast(ILogObserver, theirs.append))
        for level in LogLevel.iterconstants():
            fast.emit(level, "x {y}", y=1)
            slow.emit(level, "x {y}", y=1)
        fast.failure("f", Failure(ValueError()))
        slow.failure("f", Failure(ValueError()))
        self.assertEqual(len(ours), len(theirs))
        for a, b in zip(ours, theirs, strict=True):
            self.assertIsInstance(a.pop("log_time"), float)
            b.pop("log_time")
            self.assertIs(a.pop("log_logger"), fast)
            self.assertIs(b.pop("log_logger"), slow)
            if "log_failure" in a:
                self.assertEqual(
                    a.pop("log_failure").value.__class__,
                    b.pop("log_failure").value.__class__,
                )
            self.assertEqual(a, b)

    def test_invalid_level(self) -> None:
        """An invalid level is reported as Twisted's Logger reports it."""
        events: list[LogEvent] = []
        log = FastLogger("ns", observer=cast(ILogObserver, events.append))
        log.emit(cast(LogLevel, "loud"), "x")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.critical)
        self.assertIn("invalid log level", formatEvent(events[0]))
