"""Tests for the twistd plugin and L{twistedmail.tap}."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import cast

from twisted.application.service import Application, IServiceCollection, MultiService
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from twistedmail.logs import TextLogObserver
from twistedmail.service import MailService
from twistedmail.tap import Options, TwistdService, text_log_observer

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


class _Reactor:
    """Runs what is handed over from another thread (a signal handler) at once."""

    def callFromThread(self, f: Callable[[], object]) -> None:
        """Call C{f} now."""
        f()


class TextLogTests(SynchronousTestCase):
    """The plugin gives twistd a TextLogObserver where twistd would write text."""

    def _options(self, *twistd_args: str) -> Options:
        """Our options, parsed by twistd as its subcommand's."""
        config = ServerOptions()
        config.parseOptions([*twistd_args, "twistedmail"])
        options = config.subOptions
        assert isinstance(options, Options)
        return options

    def _keep_sigusr1(self) -> None:
        """Put back the SIGUSR1 handler as it was after the test."""
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))

    def test_logfile(self) -> None:
        """--logfile: lines go to that file, and SIGUSR1 rotates it."""
        self._keep_sigusr1()
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        path = os.path.abspath(self.mktemp())
        options = self._options("-n", "--logfile", path)
        observer = text_log_observer(options, _Reactor())
        self.assertIsInstance(observer, TextLogObserver)
        assert observer is not None
        observer(
            {
                "log_format": "hello",
                "log_time": 0.0,
                "log_level": LogLevel.info,
                "log_namespace": "ns",
            }
        )
        with open(path) as f:
            self.assertEqual(f.read(), "1970-01-01T00:00:00+0000 [ns#info] hello\n")
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler)
        handler(signal.SIGUSR1, None)
        self.assertTrue(os.path.exists(path + ".1"))
        observer({"log_format": "again", "log_time": 0.0, "log_system": "s"})
        with open(path) as f:
            self.assertEqual(f.read(), "1970-01-01T00:00:00+0000 [s] again\n")

    def test_sigusr1_kept(self) -> None:
        """A SIGUSR1 handler already in place is left alone, as twistd does."""
        self._keep_sigusr1()

        def mine(signum: int, frame: object) -> None:
            """Someone else's handler."""

        signal.signal(signal.SIGUSR1, mine)
        path = os.path.abspath(self.mktemp())
        text_log_observer(self._options("--logfile", path), Clock())
        self.assertIs(signal.getsignal(signal.SIGUSR1), mine)

    def test_stdout(self) -> None:
        """-n without --logfile, or --logfile -, writes to standard output."""
        for args in (["-n"], ["-n", "--logfile", "-"]):
            observer = text_log_observer(self._options(*args), Clock())
            self.assertIsInstance(observer, TextLogObserver)

    def test_twistd_choice_stands(self) -> None:
        """--logger, --syslog, a daemon on stdout, or no twistd: no observer."""
        cases = [
            ["-n", "--logger", "twistedmail.logs.json_observer"],
            ["-n", "--syslog"],
            ["--logfile", "-"],
        ]
        for args in cases:
            self.assertIsNone(text_log_observer(self._options(*args), Clock()), args)
        alone = Options()
        alone.parseOptions([])
        self.assertIsNone(text_log_observer(alone, Clock()))

    def test_application_component(self) -> None:
        """Joining the application sets the observer as its ILogObserver."""
        observer = TextLogObserver(sys.stdout)
        mail = cast(MailService, MultiService())
        application = Application("twistedmail")
        service = TwistdService(mail, observer)
        service.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
        self.assertIs(service.mail, mail)
        self.assertIn(service, list(IServiceCollection(application)))
        bare = Application("twistedmail")
        TwistdService(mail, None).setServiceParent(bare)
        self.assertIsNone(bare.getComponent(ILogObserver))


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
