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


def _free_port() -> int:
    """A port that was free a moment ago (the server binds it next)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SighupTests(SynchronousTestCase):
    """twistd re-reads the certificate on SIGHUP without dropping connections."""

    def test_reload_certificate(self) -> None:
        """After SIGHUP new connections get the new certificate; an open one goes on."""
        import signal
        import socket
        import ssl
        import time

        from twistedmail.testing import make_test_certificate

        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        cert, key = make_test_certificate(os.path.join(tmp, "old"))
        new_cert, new_key = make_test_certificate(os.path.join(tmp, "new"))
        live_cert, live_key = (
            os.path.join(tmp, "cert.pem"),
            os.path.join(tmp, "key.pem"),
        )
        for src, dst in ((cert, live_cert), (key, live_key)):
            with open(src, "rb") as f, open(dst, "wb") as g:
                g.write(f.read())
        port = _free_port()
        config = os.path.join(tmp, "mail.toml")
        with open(config, "w") as f:
            f.write(
                f'[server]\ndata_dir = "{tmp}/var"\ndemo_account = false\n'
                f'[tls]\ncertificate = "{live_cert}"\nkey = "{live_key}"\n'
                "[listeners]\nsmtp = false\nsubmission = false\npop3 = false\n"
                "pop3s = false\nimap = false\nimaps = false\n"
                f'submissions = "tcp:port={port}:interface=127.0.0.1"\n'
            )
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "twistedmail", "--config", config],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def connect() -> ssl.SSLSocket:
            deadline = time.monotonic() + 60
            while True:
                try:
                    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.1)
            tls = context.wrap_socket(raw)
            self.assertTrue(tls.recv(1024).startswith(b"220 "))
            return tls

        def der(path: str) -> bytes:
            with open(path) as f:
                return ssl.PEM_cert_to_DER_cert(f.read())

        first = connect()
        self.addCleanup(first.close)
        self.assertEqual(first.getpeercert(binary_form=True), der(cert))
        for src, dst in ((new_cert, live_cert), (new_key, live_key)):
            with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
                g.write(f.read())
            os.rename(dst + ".tmp", dst)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            second = connect()
            got = second.getpeercert(binary_form=True)
            second.close()
            if got == der(new_cert) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(got, der(new_cert))
        first.sendall(b"NOOP\r\n")
        self.assertTrue(first.recv(1024).startswith(b"250 "))
