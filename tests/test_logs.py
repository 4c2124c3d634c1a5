"""Tests for L{twistedmail.logs}."""

from __future__ import annotations

import io
import json
import re
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twistedmail.logs import (
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
