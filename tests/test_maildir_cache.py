"""Tests for L{twistedmail.maildir.cache}: the per-folder parsed-message
cache."""

from __future__ import annotations

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from twistedmail.maildir.cache import CACHE_NAME, MessageCache


class MessageCacheTests(SynchronousTestCase):
    """The SQLite cache: values survive a reopen, other connections see
    them at once, and commits go through a write-ahead log."""

    def _cache(self) -> tuple[str, MessageCache]:
        folder = self.mktemp()
        os.makedirs(folder)
        cache = MessageCache(folder)
        self.addCleanup(cache.close)
        return folder, cache

    def test_no_file_until_written(self) -> None:
        """A get on a folder without a cache file finds nothing and
        creates nothing."""
        folder, cache = self._cache()
        self.assertIsNone(cache.get("base", "key"))
        self.assertFalse(os.path.exists(os.path.join(folder, CACHE_NAME)))

    def test_put_get_reopen(self) -> None:
        """A value put is there after the cache is closed and reopened."""
        folder, cache = self._cache()
        cache.put("base", "key", b"value")
        cache.put("base", "key", b"newer")
        cache.close()
        self.assertEqual(cache.get("base", "key"), b"newer")
        self.assertIsNone(cache.get("base", "other"))

    def test_other_connection_sees_put(self) -> None:
        """Each put is committed: a second cache on the same folder (another
        session, another process) reads it while the first stays open."""
        folder, cache = self._cache()
        cache.put("base", "key", b"value")
        other = MessageCache(folder)
        self.addCleanup(other.close)
        self.assertEqual(other.get("base", "key"), b"value")
        other.forget(["base"])
        self.assertIsNone(cache.get("base", "key"))

    def test_write_ahead_log(self) -> None:
        """The database is in WAL mode (commits need no fsync of the whole
        database and readers do not block the writer) and keeps its format
        version."""
        folder, cache = self._cache()
        cache.put("base", "key", b"value")
        db = sqlite3.connect(os.path.join(folder, CACHE_NAME))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], 3)
