"""Tests for the twistd plugin and L{twistedmail.tap}."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.tap import Options

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OptionsTests(SynchronousTestCase):
    """Command-line options become settings."""

    def test_defaults(self) -> None:
        """No options: the embedded defaults."""
        o = Options()
        o.parseOptions([])
        self.assertEqual(o.settings.server.data_dir, "var")

    def test_overrides(self) -> None:
        """--data-dir and --hostname override the file."""
        o = Options()
        o.parseOptions(["--data-dir", "/tmp/x", "--hostname", "mx.example.org"])
        self.assertEqual(o.settings.server.data_dir, "/tmp/x")
        self.assertEqual(o.settings.server.hostname, "mx.example.org")

    def test_bad_config(self) -> None:
        """A bad configuration stops twistd with the file, key and problem."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nhostname = 3\n")
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--config", path])
        self.assertEqual(
            str(cm.exception), f"{path}: [server] hostname: must be a string"
        )


class PluginTests(SynchronousTestCase):
    """twistd finds the plugin."""

    def _twistd(self, *args: str) -> str:
        # No PYTHONPATH: twistd must find the plugin through the install.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "twistd"), *args],
            capture_output=True,
            text=True,
            cwd="/",
            env=env,
            timeout=120,
        )
        return out.stdout + out.stderr

    def test_listed(self) -> None:
        """twistd --help lists twistedmail among its plugins."""
        self.assertIn("twistedmail", self._twistd("--help"))

    def test_plugin_help(self) -> None:
        """twistd twistedmail --help lists the plugin's options."""
        out = self._twistd("twistedmail", "--help")
        for option in ("--config", "--data-dir", "--hostname", "--auth"):
            self.assertIn(option, out)
