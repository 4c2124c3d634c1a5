"""Tests for the admin command L{twistedmail.cli}."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from twistedmail.cli import execute


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


class CLITests(TestCase):
    """Each command against a SQLite directory in a temporary data folder."""

    def setUp(self) -> None:
        self.data = self.mktemp()
        os.makedirs(self.data)

    async def run_cli(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await execute(
            ["--data-dir", self.data, *argv], reactor, _Stdin(stdin), out, err
        )
        return code, out.getvalue(), err.getvalue()

    async def assertRuns(self, *argv: str, stdin: str = "") -> str:
        code, out, err = await self.run_cli(*argv, stdin=stdin)
        self.assertEqual((code, err), (0, ""))
        return out

    async def test_domains(self) -> None:
        """domain add, list and del."""
        await self.assertRuns("domain", "add", "Example.TEST")
        await self.assertRuns("domain", "add", "other.test")
        self.assertEqual(
            await self.assertRuns("domain", "list"), "example.test\nother.test\n"
        )
        await self.assertRuns("domain", "del", "other.test")
        self.assertEqual(await self.assertRuns("domain", "list"), "example.test\n")

    async def test_duplicate_domain(self) -> None:
        """Adding a domain twice is refused with exit 1."""
        await self.assertRuns("domain", "add", "example.test")
        code, _, err = await self.run_cli("domain", "add", "example.test")
        self.assertEqual(code, 1)
        self.assertIn("exists", err)

    async def test_users(self) -> None:
        """user add (password from stdin), list, disable, passwd, del."""
        from twistedmail.auth.passwords import verify_password

        await self.assertRuns("domain", "add", "example.test")
        await self.assertRuns(
            "user", "add", "Alice@example.test", "--quota", "10M", stdin="s3cret\n"
        )
        out = await self.assertRuns("user", "list")
        self.assertEqual(
            out,
            f"alice@example.test\tenabled\tquota={10 * 1024 * 1024}\texample.test/alice\n",
        )
        await self.assertRuns("user", "disable", "alice@example.test")
        self.assertIn("disabled", await self.assertRuns("user", "list", "example.test"))
        await self.assertRuns("user", "passwd", "alice@example.test", stdin="n3w\n")
        user = await self._directory_user("alice@example.test")
        self.assertTrue(verify_password(user.password_hash, "n3w"))
        await self.assertRuns("user", "del", "alice@example.test")
        self.assertEqual(await self.assertRuns("user", "list"), "")

    async def _directory_user(self, key: str) -> Any:
        from twistedmail.aliases.sql import SQLiteDirectory

        d = SQLiteDirectory(os.path.join(self.data, "directory.sqlite"), reactor)
        await d.start()
        try:
            return await d.get_user(key)
        finally:
            await d.stop()

    async def test_aliases(self) -> None:
        """alias add, list and del, catch-all included."""
        await self.assertRuns("domain", "add", "example.test")
        await self.assertRuns(
            "alias", "add", "team@example.test", "a@example.test", "b@remote.test"
        )
        await self.assertRuns("alias", "add", "@example.test", "a@example.test")
        out = await self.assertRuns("alias", "list")
        self.assertEqual(
            out,
            "@example.test: a@example.test\nteam@example.test: a@example.test, b@remote.test\n",
        )
        await self.assertRuns("alias", "del", "team@example.test", "a@example.test")
        self.assertIn(
            "team@example.test: b@remote.test", await self.assertRuns("alias", "list")
        )
        await self.assertRuns("alias", "del", "team@example.test")
        self.assertNotIn("team@", await self.assertRuns("alias", "list"))

    async def test_resolve(self) -> None:
        """resolve prints the expansion step by step."""
        await self.assertRuns("domain", "add", "example.test")
        await self.assertRuns("user", "add", "alice@example.test", stdin="pw\n")
        await self.assertRuns(
            "alias", "add", "team@example.test", "alice@example.test", "x@remote.test"
        )
        out = await self.assertRuns("resolve", "team+tag@example.test")
        self.assertIn("alice@example.test", out)
        self.assertIn("x@remote.test", out)
        code, out, _ = await self.run_cli("resolve", "nobody@example.test")
        self.assertEqual(code, 1)
        self.assertIn("nobody@example.test", out)

    async def test_check_config(self) -> None:
        """check-config reports the configuration and the directory."""
        out = await self.assertRuns("check-config")
        self.assertIn("<defaults>: OK", out)
        self.assertIn("listener smtp:", out)

    async def test_bad_config(self) -> None:
        """A bad configuration: exit 2, file and key named."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[aliases]\nmax_depth = -1\n")
        code, _, err = await self.run_cli("--config", path, "check-config")
        self.assertEqual(code, 2)
        self.assertIn(f"{path}: [aliases] max_depth:", err)

    async def test_bad_input_writes_nothing(self) -> None:
        """Bad addresses, domains, quotas, passwords: exit 2 and nothing written."""
        await self.assertRuns("domain", "add", "example.test")
        bad = [
            (("domain", "add", "bad_domain!"), ""),
            (("user", "add", "not-an-address"), "pw\n"),
            (("user", "add", "a..b@example.test"), "pw\n"),
            (("user", "add", "alice@example.test", "--quota", "lots"), "pw\n"),
            (("user", "add", "alice@example.test"), ""),
            (("user", "add", "alice@example.test", "--mailbox", "../../etc"), "pw\n"),
            (("alias", "add", "team@example.test", "not an address"), ""),
            (("alias", "add", "team@example.test", ":include:relative"), ""),
            (("resolve", "@@"), ""),
            (("user",), ""),
            (("frobnicate",), ""),
        ]
        for argv, stdin in bad:
            code, out, err = await self.run_cli(*argv, stdin=stdin)
            self.assertEqual(code, 2, argv)
            self.assertTrue(err.startswith("twistedmail: "), (argv, err))
        self.assertEqual(await self.assertRuns("domain", "list"), "example.test\n")
        self.assertEqual(await self.assertRuns("user", "list"), "")
        self.assertEqual(await self.assertRuns("alias", "list"), "")

    def test_console_script(self) -> None:
        """The installed console script runs and exits 2 on a bad address."""
        script = os.path.join(os.path.dirname(sys.executable), "twistedmail")
        done = subprocess.run(
            [script, "--data-dir", self.data, "user", "add", "nope"],
            capture_output=True,
            text=True,
            input="pw\n",
            timeout=120,
        )
        self.assertEqual(done.returncode, 2)
        self.assertIn("bad address 'nope'", done.stderr)
        done = subprocess.run(
            [script, "--data-dir", self.data, "domain", "add", "example.test"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))


class SendmailCommandTests(TestCase):
    """``twistedmail sendmail`` and ``twistedmail-sendmail`` queue a message."""

    def _spawn(
        self, argv: list[str], message: bytes
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, input=message, capture_output=True, timeout=120)

    def test_queues_without_server(self) -> None:
        """Both entry points drop the message into the spool's incoming folder."""
        data = self.mktemp()
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'[server]\ndata_dir = "{data}"\n')
        bindir = os.path.dirname(sys.executable)
        for argv in (
            [os.path.join(bindir, "twistedmail"), "--config", config, "sendmail", "-i"],
            [os.path.join(bindir, "twistedmail-sendmail"), "-C", config, "-i"],
        ):
            done = self._spawn([*argv, "bob@example.test"], b"Subject: hi\n\nbody\n")
            self.assertEqual((done.returncode, done.stderr), (0, b""), argv)
        incoming = os.path.join(data, "spool", "incoming")
        self.assertEqual(len(os.listdir(incoming)), 2)

    def test_bad_usage(self) -> None:
        """A bad option exits 64 (EX_USAGE) like sendmail."""
        script = os.path.join(os.path.dirname(sys.executable), "twistedmail")
        done = self._spawn([script, "sendmail", "--bogus"], b"")
        self.assertEqual(done.returncode, 64)


class QueueCommandTests(TestCase):
    """``twistedmail queue`` reaches the queue tools."""

    async def test_list_and_bad_id(self) -> None:
        """An empty queue lists nothing; an unknown id exits 1; no action exits 2."""
        data = self.mktemp()
        os.makedirs(data)
        out, err = io.StringIO(), io.StringIO()
        code = await execute(
            ["--data-dir", data, "queue", "list"], reactor, _Stdin(""), out, err
        )
        self.assertEqual((code, err.getvalue()), (0, ""))
        code = await execute(
            ["--data-dir", data, "queue", "show", "NOSUCHID"],
            reactor,
            _Stdin(""),
            out,
            err,
        )
        self.assertEqual(code, 1)
        code = await execute(
            ["--data-dir", data, "queue"], reactor, _Stdin(""), out, err
        )
        self.assertEqual(code, 2)
