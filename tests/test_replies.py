"""Tests for L{twistedmail.replies}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twistedmail.replies import MailError, PermanentError, Reply, TemporaryError


class ReplyTests(SynchronousTestCase):
    """Rendering replies."""

    def test_bytes(self) -> None:
        """A reply renders with its enhanced status code (RFC 2034)."""
        self.assertEqual(Reply(250, "2.1.0", "OK").to_bytes(), b"250 2.1.0 OK\r\n")
        self.assertEqual(Reply(250, "2.1.0", "OK").to_bytes(True), b"250-2.1.0 OK\r\n")
        self.assertEqual(Reply(220, "", "ready").to_bytes(), b"220 ready\r\n")

    def test_classes(self) -> None:
        """4xx is temporary and 5xx permanent."""
        self.assertTrue(Reply(451, "4.3.0", "x").is_temporary)
        self.assertFalse(Reply(451, "4.3.0", "x").is_permanent)
        self.assertTrue(Reply(550, "5.1.1", "x").is_permanent)

    def test_error(self) -> None:
        """MailError keeps the reply for the peer and the reason for the log."""
        r = Reply(550, "5.1.1", "No such user")
        e = PermanentError(r, "alice@example.com not in directory")
        self.assertIsInstance(e, MailError)
        self.assertIs(e.reply, r)
        self.assertEqual(e.reason, "alice@example.com not in directory")
        self.assertEqual(TemporaryError(r).reason, "No such user")
