"""The outbound benchmark: twistedmail's relay against Postfix's, into smtp-sink.

Started by ``bench/outbound/run`` (which installs what this needs).  Standard
library only.  Two servers, each started by this script with its own data
folder under the base folder, on loopback:

  - twistedmail (``twistd -n twistedmail``) from a snapshot of the committed
    code (``git archive HEAD``, so work in progress in the shared checkout
    cannot change a run; ``--worktree`` or ``--source`` say otherwise), the test
    domains routed to the sink by ``[relay] smarthost`` and
    ``smarthost_domains``; ``[queue] max_concurrency`` and ``max_per_domain``
    both set to the run's concurrency;
  - a private Postfix instance (``postfix -c``), the test domains routed to
    the sink by ``transport_maps`` (``smtp:[127.0.0.1]:port``);
    ``default_destination_concurrency_limit`` and the smtp service's process
    limit both set to the run's concurrency.

Both accept relaying from 127.0.0.0/8 without AUTH (trusted networks,
``mynetworks``).  The receiving end is Postfix's ``smtp-sink`` on
127.0.0.1, run with ``-c`` (running counters): a run is over when it has
counted all the messages.  A fresh sink is started for each run, on the same
port.

Load: Postfix's ``smtp-source``, 10 KiB messages, one recipient each, spread
round robin over the run's destination domains (1 or 20), 20 processes of
one connection each (one message per connection).  Each server and each
concurrency (1, 10, 50) is measured two ways:

  - **relay**: messages relayed from the spool.  The messages are injected
    while nothing listens on the sink's port (every attempt is refused and
    the messages wait in the queue), then the sink starts and the queue is
    flushed (``postqueue -f``; twistedmail's control socket, the same request
    ``twistedmail queue flush`` sends).  msgs/s: N over the time from the
    flush request until the sink has counted N messages.
  - **flow**: the whole flow.  The sink listens from the start; the wall time
    runs from starting smtp-source until the sink has counted N messages
    (submit, spool, relay, deliver).

CPU: utime+stime (and cutime+cstime, for reaped children) of the server's
process tree from /proc, from the start of the measured part until the
server is idle after it, per message.

Runs interleave the servers (order rotated per repetition); each figure is
the median of the repetitions.  The servers are restarted for each
concurrency (the limit is configuration) and warmed up after each start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")
SENDER = "load@client.example"
MESSAGE_BYTES = 10 * 1024
#: smtp-source processes injecting at once (one connection each).
SOURCES = 20
CONCURRENCIES = (1, 10, 50)
DOMAIN_COUNTS = (1, 20)
MODES = ("relay", "flow")
#: Where the issue sets the target: twistedmail's relay within 2x of
#: Postfix's (ratio of msgs/s at least 0.5) at concurrency 10.
TARGET_CONCURRENCY = 10
TARGET_RATIO = 0.5
#: Longest wait for any one phase of a run.
PHASE_TIMEOUT = 600.0


def domains_for(n: int) -> list[str]:
    """The destination domains of a run with n domains."""
    return [f"dest{i}.test" for i in range(1, n + 1)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Wait until an SMTP server greets on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(512)
                s.sendall(b"QUIT\r\n")
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def port_closed(port: int) -> bool:
    """Whether a connection to 127.0.0.1:port is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


# /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """The root and every live descendant."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process tree, reaped children included."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime: fields 14-17 of proc(5) stat.
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / TICK


def settle_cpu(root: int, quiet: float = 0.3, limit: float = 10.0) -> float:
    """Wait until the tree's CPU time stops moving; return it."""
    deadline = time.monotonic() + limit
    last = tree_cpu_seconds(root)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = tree_cpu_seconds(root)
        if now - last < 2 / TICK:
            return now
        last = now
    return last


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def count_files(folder: str, skip_dotted: bool = False) -> int:
    """Files under a folder (recursively); optionally only names without a dot."""
    n = 0
    for _, _, files in os.walk(folder):
        if skip_dotted:
            n += sum(1 for f in files if "." not in f)
        else:
            n += len(files)
    return n


def wait_until(test: object, what: str, timeout: float = PHASE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


# The sink


class Sink:
    """Postfix's smtp-sink on 127.0.0.1:port with running counters (-c)."""

    _MESSAGES = re.compile(rb"mesg=(\d+)")

    def __init__(self, base: str, port: int) -> None:
        self.port = port
        self.path = os.path.join(base, "sink.out")
        self.proc: subprocess.Popen[bytes] | None = None
        self._out = None
        self._tail = b""
        self._count = 0

    def start(self) -> None:
        self.stop()
        self._out = open(self.path, "wb")
        self._reader = open(self.path, "rb")
        self._tail, self._count = b"", 0
        self.proc = subprocess.Popen(
            [
                "smtp-sink",
                "-c",
                "-u",
                "nobody",
                f"127.0.0.1:{self.port}",
                "1024",
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def count(self) -> int:
        """Messages received so far (counted at each final dot)."""
        data = self._tail + self._reader.read()
        found = self._MESSAGES.findall(data)
        if found:
            self._count = int(found[-1])
        # Keep a partial counter line for the next read.
        self._tail = data[-32:]
        return self._count

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        for f in (self._out, getattr(self, "_reader", None)):
            if f is not None:
                f.close()
        self._out = None
        self._reader = None  # type: ignore[assignment]


# Servers


class Server:
    """One server under test."""

    name = ""
    note = ""

    def __init__(self, args: argparse.Namespace, sink_port: int) -> None:
        self.args = args
        self.sink_port = sink_port
        self.data = os.path.join(args.base, "data", self.name)
        self.port = free_port()
        self.concurrency = 0

    def root_pid(self) -> int:
        raise NotImplementedError

    def start(self, concurrency: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def queued(self) -> int:
        """Messages in the queue."""
        raise NotImplementedError

    def waiting(self) -> int:
        """Messages the server has tried and put back to wait for a retry."""
        raise NotImplementedError

    def flush(self) -> None:
        """Ask the running server to try every queued message now."""
        raise NotImplementedError

    def idle(self) -> None:
        """Wait until the queue is empty."""
        wait_until(lambda: self.queued() == 0, f"{self.name}'s queue to empty")


class Twistedmail(Server):
    name = "twistedmail"
    note = (
        "`twistd -n twistedmail` (see the revision): the smtp listener (trusted "
        "networks 127.0.0.0/8, so loopback relays without AUTH; 250 after the "
        "spool file and folder fsync), the queue runner, the relay "
        "(`[relay] smarthost` for the test domains, `[queue] max_concurrency` "
        "= `max_per_domain` = the concurrency, connection_reuse 100)"
    )
    proc: subprocess.Popen[bytes] | None = None

    @property
    def spool(self) -> str:
        return os.path.join(self.data, "var", "spool", "queue")

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, concurrency: int) -> None:
        self.concurrency = concurrency
        os.makedirs(self.data, exist_ok=True)
        config = os.path.join(self.data, "twistedmail.toml")
        domains = ", ".join(f'"{d}"' for d in domains_for(max(DOMAIN_COUNTS)))
        with open(config, "w") as f:
            f.write(
                f"""# written by bench/outbound/bench.py
[server]
hostname = "bench-twistedmail.localdomain"
data_dir = "{self.data}/var"
demo_account = false

[listeners]
smtp = "tcp:port={self.port}:interface=127.0.0.1:backlog=1024"
submission = false
submissions = false
pop3 = false
pop3s = false
imap = false
imaps = false

[smtp]
max_connections_per_ip = 200
trusted_networks = ["127.0.0.0/8"]

[queue]
max_concurrency = {concurrency}
max_per_domain = {concurrency}

[relay]
smarthost = "[127.0.0.1]:{self.sink_port}"
smarthost_domains = [{domains}]
smarthost_tls = "opportunistic"
"""
            )
        venv = os.path.join(self.args.repo, ".venv", "bin")
        # The source tree first on the path: the plugin and the package come
        # from there (the venv's editable install points at the checkout).
        env = dict(
            os.environ, PYTHONPATH=getattr(self.args, "source", "") or self.args.repo
        )
        self._log = open(os.path.join(self.data, "server.log"), "ab")
        self.proc = subprocess.Popen(
            [
                os.path.join(venv, "twistd"),
                "-n",
                "--pidfile=",
                "--logfile",
                os.path.join(self.data, "twistd.log"),
                "twistedmail",
                "--config",
                config,
            ],
            cwd=self.data,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"twistedmail did not start; see {self.data}") from None
        control = os.path.join(self.data, "var", "queue.control")
        wait_until(lambda: os.path.exists(control), "the control socket", 30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def queued(self) -> int:
        try:
            names = os.listdir(self.spool)
        except FileNotFoundError:
            return 0
        return sum(1 for n in names if "." not in n)

    def waiting(self) -> int:
        # A message whose attempt was refused has the reply in its status
        # record (and the relay has scheduled its retry).
        try:
            names = os.listdir(self.spool)
        except FileNotFoundError:
            return 0
        n = 0
        for name in names:
            if not name.endswith(".status"):
                continue
            try:
                with open(os.path.join(self.spool, name), "rb") as f:
                    f.readline()
                    record = json.loads(f.readline())
            except (OSError, ValueError):
                continue
            if all(r["reply"] is not None for r in record["recipients"]):
                n += 1
        return n

    def flush(self) -> None:
        path = os.path.join(self.data, "var", "queue.control")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(b"flush\r\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(512)
                if not chunk:
                    break
                reply += chunk
        if not reply.startswith(b"OK"):
            raise RuntimeError(f"twistedmail flush: {reply!r}")

    @staticmethod
    def version(repo: str, source: str, snapshot_rev: str) -> str:
        python = os.path.join(repo, ".venv", "bin", "python")
        twisted = subprocess.run(
            [python, "-c", "import twisted; print(twisted.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if snapshot_rev:
            return f"git {snapshot_rev}, committed code run from a snapshot, Twisted {twisted}"
        tree = source or repo
        rev = subprocess.run(
            ["git", "-C", tree, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", tree, "status", "--porcelain", "--", "twistedmail"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        where = f"the tree {tree}" if source else "the working tree"
        return (
            f"git {rev or 'unknown'}{' with uncommitted changes' if dirty else ''} "
            f"({where}), Twisted {twisted}"
        )


def snapshot(repo: str, base: str) -> tuple[str, str]:
    """Export the committed code (HEAD's twistedmail package and its twistd
    plugin) to base/snapshot-<rev> once; return its folder and the revision.

    The checkout is shared with work in progress and each run starts a fresh
    server: running a snapshot keeps every run on one, committed revision."""
    rev = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = os.path.join(base, f"snapshot-{rev}")
    if not os.path.isdir(os.path.join(target, "twistedmail")):
        partial = target + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        archive = subprocess.run(
            ["git", "-C", repo, "archive", "HEAD", "twistedmail", "twisted/plugins"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", partial], input=archive, check=True)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(partial, target)
    return target, rev


class Postfix(Server):
    name = "postfix"
    note = (
        "Debian's Postfix, a private instance (`postfix -c`): smtpd "
        "(mynetworks 127.0.0.0/8), cleanup (queue file fsync before 250), "
        "qmgr, smtp(8) with `transport_maps` sending the test domains to "
        "`smtp:[127.0.0.1]:port`, `default_destination_concurrency_limit` = "
        "the smtp service's process limit = the concurrency; everything else "
        "default (connection cache on demand, concurrency slow start)"
    )
    _master = 0

    @property
    def conf(self) -> str:
        return os.path.join(self.data, "etc")

    def root_pid(self) -> int:
        return self._master

    @staticmethod
    def version() -> str:
        out = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True
        )
        return "Postfix " + out.stdout.strip()

    def start(self, concurrency: int) -> None:
        self.concurrency = concurrency
        d = self.data
        for sub in ("etc", "spool", "data", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        shutil.chown(os.path.join(d, "data"), "postfix", "postfix")
        with open(os.path.join(self.conf, "transport"), "w") as f:
            for domain in domains_for(max(DOMAIN_COUNTS)):
                f.write(f"{domain} smtp:[127.0.0.1]:{self.sink_port}\n")
        main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": f"{d}/spool",
            "data_directory": f"{d}/data",
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
            "shlib_directory": "/usr/lib/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "bench-postfix.localdomain",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "smtputf8_enable": "no",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            # The test domains go to the sink; anything else is refused.
            "transport_maps": f"texthash:{self.conf}/transport",
            "default_transport": "error:benchmark instance",
            "relay_transport": "error:benchmark instance",
            "relay_domains": "",
            "default_destination_concurrency_limit": str(concurrency),
            # 20 injecting clients from one address.
            "default_process_limit": "200",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
            "maillog_file_prefixes": "/tmp, /var",
            "maillog_file": f"{d}/log/maillog",
        }
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write("# written by bench/outbound/bench.py\n")
            for k, v in main_cf.items():
                f.write(f"{k} = {v}\n")
        services = [
            # service, type, private, unpriv, chroot, wakeup, maxproc, command
            (f"127.0.0.1:{self.port}", "inet", "n", "-", "n", "-", "-", "smtpd"),
            ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
            ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
            ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
            ("smtp", "unix", "-", "-", "n", "-", str(concurrency), "smtp"),
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write("# written by bench/outbound/bench.py\n")
            for row in services:
                f.write("  ".join(row) + "\n")
        self._log = open(os.path.join(d, "server.log"), "ab")
        for command in ("check", "start"):
            subprocess.run(
                ["postfix", "-c", self.conf, command],
                check=True,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        pidfile = os.path.join(d, "spool", "pid", "master.pid")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self._master:
            try:
                with open(pidfile) as f:
                    self._master = int(f.read().strip() or 0)
            except (FileNotFoundError, ValueError):
                time.sleep(0.1)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._master:
            subprocess.run(
                ["postfix", "-c", self.conf, "stop"],
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            wait_until(
                lambda: not os.path.exists(f"/proc/{self._master}"),
                "postfix to stop",
                60,
            )
            self._master = 0

    def _count(self, *folders: str) -> int:
        spool = os.path.join(self.data, "spool")
        return sum(count_files(os.path.join(spool, f)) for f in folders)

    def queued(self) -> int:
        return self._count("maildrop", "incoming", "active", "deferred", "hold")

    def waiting(self) -> int:
        return self._count("deferred")

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", self.conf, "-f"], check=True)


# One run


@dataclass
class Result:
    server: str
    mode: str
    domains: int
    concurrency: int
    repetition: int
    ok: bool
    seconds: float = 0.0
    per_s: float = 0.0
    accepted_s: float = 0.0
    cpu_ms_per_msg: float = 0.0
    error: str = ""

    @property
    def scenario(self) -> str:
        return scenario_name(self.mode, self.domains, self.concurrency)


def scenario_name(mode: str, domains: int, concurrency: int) -> str:
    return f"{mode} d={domains} c={concurrency}"


def inject(server: Server, domains: int, count: int) -> list[subprocess.Popen[bytes]]:
    """Start SOURCES smtp-source processes sending count messages in all,
    each to one recipient, the domains taken round robin."""
    names = domains_for(domains)
    procs = []
    for i in range(SOURCES):
        n = count // SOURCES + (1 if i < count % SOURCES else 0)
        if not n:
            continue
        procs.append(
            subprocess.Popen(
                [
                    "smtp-source",
                    "-s",
                    "1",
                    "-m",
                    str(n),
                    "-l",
                    str(MESSAGE_BYTES),
                    "-M",
                    "client.example",
                    "-f",
                    SENDER,
                    "-t",
                    f"user{i}@{names[i % len(names)]}",
                    f"127.0.0.1:{server.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    return procs


def sources_done(procs: list[subprocess.Popen[bytes]]) -> bool:
    if any(p.poll() is None for p in procs):
        return False
    for p in procs:
        if p.returncode != 0:
            assert p.stderr is not None
            err = p.stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"smtp-source failed: {err[-300:]}")
    return True


def run_relay(server: Server, sink: Sink, domains: int, count: int) -> Result:
    """Pre-spool with the sink down, then flush; time the relay alone."""
    sink.stop()
    wait_until(lambda: port_closed(sink.port), "the sink's port to close", 30)
    procs = inject(server, domains, count)
    wait_until(lambda: sources_done(procs), "smtp-source")
    wait_until(lambda: server.waiting() >= count, f"{count} messages waiting")
    root = server.root_pid()
    settle_cpu(root)
    sink.start()
    cpu_before = tree_cpu_seconds(root)
    start = time.monotonic()
    server.flush()
    wait_until(lambda: sink.count() >= count, f"the sink to count {count}")
    seconds = time.monotonic() - start
    cpu = settle_cpu(root) - cpu_before
    server.idle()
    return Result(
        server.name,
        "relay",
        domains,
        server.concurrency,
        0,
        True,
        seconds=seconds,
        per_s=count / seconds,
        cpu_ms_per_msg=cpu * 1000 / count,
    )


def run_flow(server: Server, sink: Sink, domains: int, count: int) -> Result:
    """Inject with the sink up; time submit, relay and deliver together."""
    sink.start()
    root = server.root_pid()
    cpu_before = tree_cpu_seconds(root)
    start = time.monotonic()
    procs = inject(server, domains, count)
    accepted = None
    deadline = start + PHASE_TIMEOUT
    while time.monotonic() < deadline:
        if accepted is None and sources_done(procs):
            accepted = time.monotonic() - start
        if sink.count() >= count:
            break
        time.sleep(0.01)
    else:
        raise RuntimeError(f"timed out: the sink counted {sink.count()} of {count}")
    seconds = time.monotonic() - start
    wait_until(lambda: sources_done(procs), "smtp-source")
    if accepted is None:
        accepted = seconds
    cpu = settle_cpu(root) - cpu_before
    server.idle()
    return Result(
        server.name,
        "flow",
        domains,
        server.concurrency,
        0,
        True,
        seconds=seconds,
        per_s=count / seconds,
        accepted_s=accepted,
        cpu_ms_per_msg=cpu * 1000 / count,
    )


def run_one(
    server: Server, sink: Sink, mode: str, domains: int, count: int, rep: int
) -> Result:
    try:
        run = run_relay if mode == "relay" else run_flow
        r = run(server, sink, domains, count)
    except Exception as e:
        r = Result(server.name, mode, domains, server.concurrency, rep, False)
        r.error = str(e)[-300:]
        try:
            server.flush()
            sink.start()
            server.idle()
        except Exception:
            pass
    r.repetition = rep
    return r


# Report


@dataclass
class Summary:
    count: int
    repetitions: int
    date: str
    machine: str
    load: str
    command: str
    servers: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    medians: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def summarise(
    results: list[Result], summary: Summary, scenarios: list[tuple[str, int, int]]
) -> None:
    for r in results:
        if not r.ok:
            summary.failures.append(
                f"{r.server} {r.scenario} #{r.repetition}: {r.error}"
            )
    for mode, domains, concurrency in scenarios:
        name = scenario_name(mode, domains, concurrency)
        row: dict[str, dict[str, float]] = {}
        for server in summary.servers:
            runs = [
                r for r in results if r.ok and r.server == server and r.scenario == name
            ]
            if runs:
                row[server] = {
                    key: statistics.median(getattr(r, key) for r in runs)
                    for key in ("seconds", "per_s", "accepted_s", "cpu_ms_per_msg")
                }
                row[server]["runs"] = len(runs)
        summary.medians[name] = row


def _ratio(row: dict[str, dict[str, float]]) -> float | None:
    ours, peer = row.get("twistedmail"), row.get("postfix")
    if ours is None or peer is None or not peer["per_s"]:
        return None
    return ours["per_s"] / peer["per_s"]


def tables(summary: Summary, scenarios: list[tuple[str, int, int]]) -> str:
    relay = [s for s in scenarios if s[0] == "relay"]
    flow = [s for s in scenarios if s[0] == "flow"]
    lines: list[str] = []
    if relay:
        lines += [
            f"Relay from the spool ({summary.count:,} queued messages, flush to "
            "last message at the sink):",
            "",
            "| domains | concurrency | twistedmail msgs/s | Postfix msgs/s | "
            "ratio | twistedmail CPU ms/msg | Postfix CPU ms/msg |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, domains, c in relay:
            row = summary.medians.get(scenario_name(mode, domains, c), {})
            tm, pf = row.get("twistedmail"), row.get("postfix")
            ratio = _ratio(row)
            mark = ""
            if ratio is not None and c == TARGET_CONCURRENCY:
                mark = " ok" if ratio >= TARGET_RATIO else " missed"
            lines.append(
                f"| {domains} | {c} | {_f(tm, 'per_s')} | {_f(pf, 'per_s')} | "
                + (f"{ratio:.2f}x{mark}" if ratio is not None else "n/a")
                + f" | {_f(tm, 'cpu_ms_per_msg', 2)} | {_f(pf, 'cpu_ms_per_msg', 2)} |"
            )
    if flow:
        lines += [
            "",
            f"The whole flow ({summary.count:,} messages submitted by smtp-source, "
            "spooled, relayed, counted at the sink): wall time in seconds "
            "(all accepted by the server, in brackets), msgs/s, CPU of the "
            "server for both halves:",
            "",
            "| domains | concurrency | twistedmail s | Postfix s | twistedmail msgs/s "
            "| Postfix msgs/s | ratio | twistedmail CPU ms/msg | Postfix CPU ms/msg |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, domains, c in flow:
            row = summary.medians.get(scenario_name(mode, domains, c), {})
            tm, pf = row.get("twistedmail"), row.get("postfix")
            ratio = _ratio(row)
            lines.append(
                f"| {domains} | {c} | {_wall(tm)} | {_wall(pf)} | {_f(tm, 'per_s')} "
                f"| {_f(pf, 'per_s')} | "
                + (f"{ratio:.2f}x" if ratio is not None else "n/a")
                + f" | {_f(tm, 'cpu_ms_per_msg', 2)} | {_f(pf, 'cpu_ms_per_msg', 2)} |"
            )
    return "\n".join(lines)


def _f(m: dict[str, float] | None, key: str, digits: int = 0) -> str:
    return "n/a" if m is None else f"{m[key]:.{digits}f}"


def _wall(m: dict[str, float] | None) -> str:
    return "n/a" if m is None else f"{m['seconds']:.1f} ({m['accepted_s']:.1f})"


SECTION = "## Outbound"


def section_text(summary: Summary, body: str, notes: str) -> str:
    servers = "\n".join(
        f"- **{name}** ({summary.versions.get(name, '')}): {summary.notes[name]}."
        for name in summary.servers
    )
    failures = ""
    if summary.failures:
        failures = (
            "\nFailed runs (left out of the medians):\n\n"
            + "\n".join(f"- {f}" for f in summary.failures)
            + "\n"
        )
    return f"""{SECTION}

Command: `{summary.command}` ({summary.count:,} messages per run, median of
{summary.repetitions}; see bench/outbound/README.md). Measured {summary.date} on
{summary.machine}. The machine was shared: {summary.load}

Load: Postfix's `smtp-source`, 20 processes of one connection each, one
message per connection, {MESSAGE_BYTES} bytes of body plus smtp-source's
headers, one recipient per message, the destination domains (1 or 20) taken
round robin. Each server relays the test domains to one Postfix `smtp-sink`
on 127.0.0.1, started fresh for each run; a run ends when the sink has
counted every message (`smtp-sink -c`). "Concurrency" is each server's
outbound connection limit, in total and per destination. **Relay**: the
messages are spooled while the sink's port is closed (each server tries
once and keeps them), then the sink starts and the queue is flushed; msgs/s
is N over the time from the flush request to the sink's last message.
**Flow**: the sink listens from the start, and the wall time runs from
starting smtp-source to the sink's last message. CPU: user+system time of
the server's process tree (reaped children included) per message, until it
is idle again. The two servers run one at a time, interleaved run by run.

{servers}

{body}

Target (issue 4): twistedmail's relay within 2x of Postfix at concurrency
{TARGET_CONCURRENCY} (ratio at least {TARGET_RATIO}).
{failures}
{notes}"""


def write_docs(path: str, text: str) -> None:
    """Replace the text from the SECTION heading to the next '## ' heading."""
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        lines.append("\n")
        start = end = len(lines)
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
            len(lines),
        )
    tail = lines[end:]
    new = "".join(lines[:start]) + text.strip("\n") + "\n" + ("\n" if tail else "")
    with open(path, "w") as f:
        f.write(new + "".join(tail))


def render(args: argparse.Namespace) -> None:
    """Write the docs section from a results.json of an earlier run."""
    with open(args.render) as f:
        saved = json.load(f)
    summary = Summary(**saved["summary"])
    results = [Result(**r) for r in saved["runs"]]
    scenarios: list[tuple[str, int, int]] = []
    for r in results:
        key = (r.mode, r.domains, r.concurrency)
        if key not in scenarios:
            scenarios.append(key)
    scenarios.sort(key=lambda k: (MODES.index(k[0]), k[1], k[2]))
    summary.medians, summary.failures = {}, []
    summarise(results, summary, scenarios)
    body = tables(summary, scenarios)
    print(body)
    notes = ""
    if args.notes:
        with open(args.notes) as f:
            notes = f.read()
    path = os.path.join(args.repo, "docs", "performance.md")
    write_docs(path, section_text(summary, body, notes))
    print(f"\nwrote the Outbound section of {path}")


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--concurrency",
        default=",".join(map(str, CONCURRENCIES)),
        help="comma-separated connection limits",
    )
    parser.add_argument(
        "--domains", default=",".join(map(str, DOMAIN_COUNTS)), help="comma-separated"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="relay,flow")
    parser.add_argument("--servers", default="twistedmail,postfix")
    parser.add_argument(
        "--source",
        default="",
        help="run twistedmail from this source tree instead of a snapshot of HEAD",
    )
    parser.add_argument(
        "--worktree",
        action="store_true",
        help="run twistedmail from the checkout's working tree, not a snapshot of HEAD",
    )
    parser.add_argument(
        "--quick", action="store_true", help="300 messages, one repetition, c=10"
    )
    parser.add_argument(
        "--write", action="store_true", help="update docs/performance.md"
    )
    parser.add_argument("--notes", default="", help="a file whose text goes last")
    parser.add_argument(
        "--render",
        default="",
        help="write the docs section from a saved results.json (runs nothing)",
    )
    args = parser.parse_args()
    if args.render:
        render(args)
        return
    if args.quick:
        args.count, args.repetitions, args.concurrency = 300, 1, "10"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    domain_counts = [int(d) for d in args.domains.split(",")]
    modes = [m for m in MODES if m in args.modes.split(",")]
    scenarios = [(m, d, c) for m in modes for d in domain_counts for c in concurrencies]

    data = os.path.join(args.base, "data")
    if os.path.exists(data):
        shutil.rmtree(data)
    os.makedirs(data)
    snapshot_rev = ""
    if not args.source and not args.worktree and "twistedmail" in args.servers:
        args.source, snapshot_rev = snapshot(args.repo, args.base)
        print(f"twistedmail {snapshot_rev} from {args.source}", flush=True)
    sink = Sink(args.base, free_port())
    wanted = args.servers.split(",")
    servers: list[Server] = [
        cls(args, sink.port) for cls in (Twistedmail, Postfix) if cls.name in wanted
    ]
    own = sys.argv[sys.argv.index("--base") + 2 :]
    summary = Summary(
        count=args.count,
        repetitions=args.repetitions,
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        machine=f"{os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}",
        load="",
        command=" ".join(["bench/outbound/run", *own]),
    )
    summary.versions = {
        "twistedmail": Twistedmail.version(args.repo, args.source, snapshot_rev),
        "postfix": Postfix.version(),
    }
    summary.servers = [s.name for s in servers]
    summary.notes = {s.name: s.note for s in servers}
    loads = [load_average()]
    results: list[Result] = []
    try:
        for rep in range(1, args.repetitions + 1):
            for c in concurrencies:
                for s in servers:
                    s.start(c)
                    # Warm up (imports, caches, first connections), not measured.
                    warm = run_one(s, sink, "flow", 1, min(200, args.count), 0)
                    if not warm.ok:
                        print(f"warm-up of {s.name} failed: {warm.error}", flush=True)
                for mode in modes:
                    for domains in domain_counts:
                        shift = (rep - 1) % len(servers)
                        for s in servers[shift:] + servers[:shift]:
                            r = run_one(s, sink, mode, domains, args.count, rep)
                            results.append(r)
                            if r.ok:
                                extra = (
                                    f" (accepted in {r.accepted_s:5.1f} s)"
                                    if mode == "flow"
                                    else ""
                                )
                                print(
                                    f"#{rep} {r.scenario:>18} {s.name:>11}: "
                                    f"{r.seconds:6.2f} s {r.per_s:6.0f} msgs/s "
                                    f"cpu {r.cpu_ms_per_msg:5.2f} ms/msg{extra}",
                                    flush=True,
                                )
                            else:
                                print(f"#{rep} {r.scenario} {s.name}: FAILED {r.error}")
                loads.append(load_average())
                for s in servers:
                    s.stop()
    finally:
        for s in servers:
            s.stop()
        sink.stop()
    along = ""
    if len(loads) > 2:
        along = f" ({'; '.join(loads[1:-1])} along the run, after each concurrency)"
    summary.load = (
        f"load average (1, 5, 15 min) {loads[0]} at the start, {loads[-1]} at "
        f"the end{along}, with other work running on the machine."
    )
    summarise(results, summary, scenarios)
    with open(os.path.join(args.base, "results.json"), "w") as f:
        json.dump(
            {"summary": asdict(summary), "runs": [asdict(r) for r in results]},
            f,
            indent=1,
        )
    body = tables(summary, scenarios)
    print()
    print(body)
    if summary.failures:
        print("\nfailed runs:\n" + "\n".join(summary.failures))
    if args.write:
        notes = ""
        if args.notes:
            with open(args.notes) as f:
                notes = f.read()
        path = os.path.join(args.repo, "docs", "performance.md")
        write_docs(path, section_text(summary, body, notes))
        print(f"\nwrote the Outbound section of {path}")


if __name__ == "__main__":
    main()
