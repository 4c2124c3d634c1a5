"""Restart safety (issue 3, point 11): kill -9 under load, restart, drain.

The real server runs as a child process (``twistd -n twistedmail`` from the
virtualenv, with a temporary data folder and configuration).  Several
smtplib connections send messages at once; once enough have been
acknowledged the server gets SIGKILL in the middle of the load.  It is
started again on the same data, the queue drains, and the Maildirs are
counted by Message-ID:

  - every message that got its 250 is in each local recipient's Maildir
    exactly once (the recipients are an alias to two users and a third
    user);
  - a message that was sent but whose 250 never arrived (in flight when the
    server died) may or may not be delivered, but never twice;
  - nothing else is delivered, and nothing is left in the queue.

The port: a child process cannot listen on port 0 and tell us the port
cheaply, so the test binds port 0 itself, notes the port, closes the socket
and configures the server with it.  Another process could take the port in
between (a tiny race); the server then fails to start and the test fails
with its log rather than hanging.

Blocking code on purpose (the reactor plays no part): the server is another
process, the clients are threads.  Waiting is on events (a log line, an
acknowledgement count) with deadlines, never a fixed sleep.
"""

from __future__ import annotations

import os
import queue
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
D = "example.test"
CLIENTS = 4
PER_CLIENT = 60
KILL_AFTER = 40  # acknowledged messages before SIGKILL
USERS = ("bob", "carol", "dave")
DEADLINE = 25.0  # seconds for the whole test's waiting


def _free_port() -> int:
    """A port that was free a moment ago (see the module docstring)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Server:
    """The server as a child process, its log read by a thread."""

    def __init__(self, root: str, config: str) -> None:
        self.root = root
        self.config = config
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []

    def start(self) -> None:
        """Start twistd in the foreground, logging to its standard output."""
        self.process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "--logfile=-",
                "twistedmail",
                "--config",
                self.config,
            ],
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, condition: Callable[[], bool], deadline: float) -> None:
        """Read log lines until C{condition()} holds (checked after each line
        and at least every 0.1 s); fail with the log when the deadline
        passes or the server exits."""
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out; server log:\n" + "".join(self.log))
            try:
                line = self.lines.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("server exited; log:\n" + "".join(self.log))
            self.log.append(line)

    def logged(self, text: str) -> Callable[[], bool]:
        """A condition: some log line so far contains C{text}."""
        seen = len(self.log)

        def check() -> bool:
            return any(text in line for line in self.log[seen:])

        return check

    def kill(self) -> None:
        """SIGKILL, and reap the process and its log."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._drain_log()

    def stop(self) -> None:
        """SIGTERM (a clean stop), and reap."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._drain_log()

    def _drain_log(self) -> None:
        while True:
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                return
            if line is None:
                return
            self.log.append(line)


class _Load:
    """Clients sending messages at once, recording what was acknowledged."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.attempted: set[str] = set()
        self.acked: set[str] = set()
        self.enough = threading.Event()
        self.finished = 0
        self.threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True)
            for n in range(CLIENTS)
        ]

    def start(self) -> None:
        """Start every client."""
        for t in self.threads:
            t.start()

    def join(self) -> None:
        """Wait for every client to stop (the server's death stops them)."""
        for t in self.threads:
            t.join(timeout=20)

    def _client(self, n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as c:
                c.ehlo("load.test")
                for i in range(PER_CLIENT):
                    mid = f"restart-{n}-{i}@load.test"
                    message = (
                        f"From: load@load.test\r\nTo: team@{D}\r\n"
                        f"Message-ID: <{mid}>\r\nSubject: {mid}\r\n\r\n"
                        + f"body of {mid}\r\n"
                        * 20
                    )
                    with self.lock:
                        self.attempted.add(mid)
                    c.sendmail("load@load.test", [f"team@{D}", f"dave@{D}"], message)
                    with self.lock:
                        self.acked.add(mid)
                        if len(self.acked) >= KILL_AFTER:
                            self.enough.set()
        except (OSError, smtplib.SMTPException):
            pass  # the server was killed under us
        finally:
            # Clients that all ran out of messages (or failed) must not leave
            # the test waiting for the kill.
            with self.lock:
                self.finished += 1
                if self.finished == CLIENTS:
                    self.enough.set()


def _count(maildir: str) -> dict[str, int]:
    """Message-ID -> how many copies in a Maildir's new/ and cur/."""
    counts: dict[str, int] = {}
    for sub in ("new", "cur"):
        folder = os.path.join(maildir, sub)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            with open(os.path.join(folder, name), "rb") as f:
                for line in f:
                    if line.lower().startswith(b"message-id:"):
                        mid = line.split(b":", 1)[1].strip().strip(b"<>").decode()
                        counts[mid] = counts.get(mid, 0) + 1
                        break
    return counts


class RestartSafetyTests(SynchronousTestCase):
    """SIGKILL in the middle of a load loses and doubles nothing."""

    def setUp(self) -> None:
        """Write a data folder with a files directory and a configuration."""
        self.root = os.path.abspath(self.mktemp())
        self.data = os.path.join(self.root, "data")
        os.makedirs(self.data)
        with open(os.path.join(self.data, "domains"), "w") as f:
            f.write(f"{D}\n")
        with open(os.path.join(self.data, "users"), "w") as f:
            for u in USERS:
                f.write(f"{u}@{D}::{D}/{u}:1:\n")
        with open(os.path.join(self.data, "aliases"), "w") as f:
            f.write(f"team@{D}: bob@{D}, carol@{D}\n")
        self.port = _free_port()
        off = "\n".join(
            f"{role} = false"
            for role in (
                "submission",
                "submissions",
                "pop3",
                "pop3s",
                "imap",
                "imaps",
                "lmtp",
            )
        )
        self.config = os.path.join(self.root, "twistedmail.toml")
        with open(self.config, "w") as f:
            f.write(
                "[server]\n"
                'hostname = "mx.example.test"\n'
                f'data_dir = "{self.data}"\n'
                "demo_account = false\n"
                "[listeners]\n"
                f'smtp = "tcp:port={self.port}:interface=127.0.0.1"\n'
                f"{off}\n"
                "[directory]\n"
                'backend = "files"\n'
            )

    def queued(self) -> list[str]:
        """The queue entries left."""
        folder = os.path.join(self.data, "spool", "queue")
        if not os.path.isdir(folder):
            return []
        return [n for n in os.listdir(folder) if "." not in n]

    def test_kill_during_load(self) -> None:
        """Acknowledged: delivered exactly once to bob, carol and dave.
        Unacknowledged: at most once.  Nothing else, nothing left queued."""
        deadline = time.monotonic() + DEADLINE
        server = _Server(self.root, self.config)
        self.addCleanup(server.stop)
        server.start()
        server.wait_for(server.logged("Listening: smtp"), deadline)

        load = _Load(self.port)
        load.start()
        self.assertTrue(load.enough.wait(timeout=deadline - time.monotonic()))
        server.kill()
        load.join()
        with load.lock:
            acked, attempted = set(load.acked), set(load.attempted)
        self.assertGreaterEqual(len(acked), KILL_AFTER)

        again = _Server(self.root, self.config)
        self.addCleanup(again.stop)
        again.start()
        again.wait_for(again.logged("Listening: smtp"), deadline)
        again.wait_for(lambda: not self.queued(), deadline)
        again.stop()

        for user in USERS:
            counts = _count(os.path.join(self.data, "mail", D, user))
            missing = sorted(acked - set(counts))
            self.assertEqual(missing, [], f"{user}: acknowledged but not delivered")
            doubled = sorted(m for m, n in counts.items() if n > 1)
            self.assertEqual(doubled, [], f"{user}: delivered twice")
            stray = sorted(set(counts) - attempted)
            self.assertEqual(stray, [], f"{user}: delivered but never sent")
        self.assertEqual(self.queued(), [])
