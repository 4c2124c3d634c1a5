"""The SMTP benchmark: twistedmail against three peers, driven by smtp-source.

Started by ``bench/smtp/run`` (which installs what this needs).  Standard
library only.  For each server (twistedmail from this checkout, durable;
twisted.mail's ESMTP server into Maildir; aiosmtpd with a Maildir handler; a
private Postfix instance), each with its own data folder under the base
folder, on loopback:

  - load: Postfix's ``smtp-source``, 10 KiB messages, N per run (2,000), one
    message per connection at concurrency 1, 10 and 50, and once more over
    10 persistent connections (``-d``);
  - accepted msgs/s: N over the time until smtp-source exits (every message
    got its 250);
  - delivered msgs/s: N over the time until the recipient's Maildir ``new/``
    holds all N files (counted);
  - CPU ms/msg: utime+stime (and cutime+cstime, for reaped children) of the
    server's process tree from /proc, before the run and after it settles;
  - peak memory: for a single process its peak RSS (VmHWM, reset before
    each run); for a process tree (Postfix) the largest sum of PSS
    (proportional set size: shared pages split between the processes that
    map them), sampled every 0.1 s during the run, since a plain sum of RSS
    would count Postfix's shared libraries once per process.

Runs interleave the servers (order rotated per repetition); each figure is
the median of the repetitions.  The Maildir is emptied between runs; every
other piece of state (queues, journals, caches) carries over as it would in
a running server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
DOMAIN = "bench.test"
USER = "smtp"
RECIPIENT = f"{USER}@{DOMAIN}"
SENDER = "load@client.example"
MESSAGE_BYTES = 10 * 1024

#: (name, concurrency, persistent connections)
SCENARIOS = [
    ("c=1", 1, False),
    ("c=10", 10, False),
    ("c=50", 50, False),
    ("10 persistent", 10, True),
]
#: Where the issue sets targets, and the targets (twistedmail / peer).
TARGET_SCENARIOS = ("c=10", "c=50")
TARGET_RATIOS = {"twisted.mail": 1.25, "postfix": 1.5, "aiosmtpd": 2.0}
TARGET_CPU_MS = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(512)  # the greeting
                s.sendall(b"QUIT\r\n")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


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
        if not name.isdigit():
            continue
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
    """CPU seconds of a process tree: each live process's own time plus the
    time of the children it reaped (so exited workers still count)."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of stat(5).
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / TICK


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_kib(root: int) -> int:
    """The memory a server uses now: RSS for one process, the sum of PSS for
    a process tree."""
    tree = process_tree(root)
    if len(tree) == 1:
        return _status_kib(root, "VmRSS")
    return sum(_pss_kib(pid) for pid in tree)


def reset_peak_rss(root: int) -> None:
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # proc(5): reset the peak RSS (VmHWM)
        except OSError:
            pass


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# Servers


class Server:
    """One server under test: start, stop, where its mail lands."""

    name = ""
    note = ""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        slug = "".join(c if c.isalnum() else "-" for c in self.name)
        self.data = os.path.join(args.base, "data", slug)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = None

    @property
    def maildir(self) -> str:
        raise NotImplementedError

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        raise NotImplementedError

    def _spawn(self, argv: list[str], **kw: object) -> None:
        self.log = open(os.path.join(self.data, "server.log"), "ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **kw,  # type: ignore[arg-type]
        )
        try:
            wait_for_port(self.port)
        except RuntimeError:
            where = self.log.name
            self.stop()
            raise RuntimeError(f"{self.name} did not start; see {where}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def idle(self) -> None:
        """Wait until the server has nothing left in flight."""

    def clear_maildir(self) -> None:
        for sub in ("new", "cur"):
            folder = os.path.join(self.maildir, sub)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for n in names:
                os.unlink(os.path.join(folder, n))

    def delivered(self) -> int:
        try:
            return len(os.listdir(os.path.join(self.maildir, "new")))
        except FileNotFoundError:
            return 0


class Twistedmail(Server):
    """twistedmail from a source tree (this checkout unless told otherwise),
    with the SQLite (default) or the files directory backend."""

    name = "twistedmail"
    note = (
        "this checkout, `twistd -n twistedmail`, the SQLite directory (the "
        "default); 250 only after the spool file and folder fsync (group "
        "commit); the queue runner delivers into Maildir with file, journal "
        "and new/ fsyncs"
    )

    def __init__(
        self,
        args: argparse.Namespace,
        name: str = "twistedmail",
        directory: str = "sqlite",
        source: str | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.source = source or args.repo
        if directory != "sqlite":
            self.note = (
                f"the same with the {directory} directory backend (users and "
                "aliases read from text files into memory, as Postfix's "
                "texthash tables are)"
            )
        if source is not None:
            self.note = f"twistedmail from {source}, {directory} directory"
        super().__init__(args)

    def _env(self) -> dict[str, str]:
        # The source tree first on the path: twistd's plugin and the package
        # come from there (the venv's editable install points at the repo).
        env = dict(os.environ)
        env["PYTHONPATH"] = self.source
        return env

    @property
    def maildir(self) -> str:
        return os.path.join(self.data, "var", "mail", DOMAIN, USER)

    def start(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        config = os.path.join(self.data, "twistedmail.toml")
        with open(config, "w") as f:
            f.write(
                f"""# written by bench/smtp/bench.py
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

[directory]
backend = "{self.directory}"

[smtp]
# smtp-source opens up to 50 connections from 127.0.0.1 (the default is 20).
max_connections_per_ip = 200
"""
            )
        venv = os.path.join(self.args.repo, ".venv", "bin")
        admin = [os.path.join(venv, "twistedmail"), "--config", config]
        if not os.path.exists(os.path.join(self.data, "var")):
            env = self._env()
            subprocess.run([*admin, "domain", "add", DOMAIN], check=True, env=env)
            subprocess.run(
                [*admin, "user", "add", RECIPIENT],
                input=b"bench-password\n",
                check=True,
                env=env,
            )
        self._spawn(
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
            env=self._env(),
        )

    def idle(self) -> None:
        queue = os.path.join(self.data, "var", "spool", "queue")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if not os.listdir(queue):
                    return
            except FileNotFoundError:
                return
            time.sleep(0.05)


class TwistedMail(Server):
    name = "twisted.mail"
    note = (
        "twisted.mail's ESMTP server and MaildirDirdbmDomain (Twisted 26.10, "
        "three Python 3 fixes, see peer_twisted_mail.py); delivers while reading "
        "DATA, renames into new/ at the end; no fsync at all"
    )

    @property
    def maildir(self) -> str:
        return os.path.join(self.data, DOMAIN, USER)

    def start(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        self._spawn(
            [
                self.args.peer_python,
                os.path.join(HERE, "peer_twisted_mail.py"),
                "--port",
                str(self.port),
                "--root",
                self.data,
                "--domain",
                DOMAIN,
                "--user",
                USER,
            ]
        )


class Aiosmtpd(Server):
    name = "aiosmtpd"
    note = (
        "aiosmtpd 1.4 with a handler calling mailbox.Maildir.add (file fsync, "
        "no folder fsync) inside the event loop"
    )

    @property
    def maildir(self) -> str:
        return os.path.join(self.data, "Maildir")

    def start(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        self._spawn(
            [
                self.args.peer_python,
                os.path.join(HERE, "peer_aiosmtpd.py"),
                "--port",
                str(self.port),
                "--maildir",
                self.maildir,
                "--domain",
                DOMAIN,
            ]
        )


class Postfix(Server):
    name = "postfix"
    note = (
        "Debian's Postfix, a private instance (`postfix -c`): smtpd, cleanup "
        "(queue file fsync before 250), qmgr, virtual(8) into Maildir"
    )

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.conf = os.path.join(self.data, "etc")
        self._master = 0

    @property
    def maildir(self) -> str:
        return os.path.join(self.data, "mail", USER)

    def root_pid(self) -> int:
        return self._master

    @staticmethod
    def version() -> str:
        out = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True
        )
        return out.stdout.strip()

    def start(self) -> None:
        d = self.data
        for sub in ("etc", "spool", "data", "mail", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        shutil.chown(os.path.join(d, "data"), "postfix", "postfix")
        os.chown(os.path.join(d, "mail"), 65534, 65534)
        with open(os.path.join(self.conf, "vmailbox"), "w") as f:
            f.write(f"{RECIPIENT} {USER}/\n")
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
            # The test domain: virtual(8) into Maildir (the trailing "/").
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": f"{d}/mail",
            "virtual_mailbox_maps": f"texthash:{self.conf}/vmailbox",
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            "virtual_minimum_uid": "100",
            # Nothing ever leaves this instance.
            "default_transport": "error:benchmark instance",
            "relay_transport": "error:benchmark instance",
            "relay_domains": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "reject_unauth_destination",
            # 50 concurrent clients from one address.
            "default_process_limit": "200",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
            "maillog_file_prefixes": "/tmp, /var",
            "maillog_file": f"{d}/log/maillog",
        }
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write("# written by bench/smtp/bench.py\n")
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
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write("# written by bench/smtp/bench.py\n")
            for row in services:
                f.write("  ".join(row) + "\n")
        self.log = open(os.path.join(d, "server.log"), "ab")
        for command in ("check", "start"):
            subprocess.run(
                ["postfix", "-c", self.conf, command],
                check=True,
                stdout=self.log,
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
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and os.path.exists(
                f"/proc/{self._master}"
            ):
                time.sleep(0.1)
            self._master = 0
        if self.log is not None:
            self.log.close()
            self.log = None

    def idle(self) -> None:
        deadline = time.monotonic() + 60
        folders = ("incoming", "active", "deferred", "maildrop")
        while time.monotonic() < deadline:
            n = 0
            for sub in folders:
                for _, _, files in os.walk(os.path.join(self.data, "spool", sub)):
                    n += len(files)
            if n == 0:
                return
            time.sleep(0.05)


PEERS = ("twisted.mail", "postfix", "aiosmtpd")


def make_servers(args: argparse.Namespace) -> list[Server]:
    """The servers to run, ours first, each with its own data folder."""
    wanted = set(args.servers.split(","))
    servers: list[Server] = []
    if "twistedmail" in wanted:
        if args.directory in ("sqlite", "both"):
            servers.append(Twistedmail(args))
        if args.directory in ("files", "both"):
            servers.append(Twistedmail(args, "twistedmail (files)", "files"))
    if args.baseline:
        backend = "sqlite" if args.directory == "sqlite" else "files"
        servers.append(Twistedmail(args, "baseline", backend, args.baseline))
    for cls in (TwistedMail, Postfix, Aiosmtpd):
        if cls.name in wanted:
            servers.append(cls(args))
    return servers


# One run


@dataclass
class Result:
    server: str
    scenario: str
    repetition: int
    ok: bool
    accepted_per_s: float = 0.0
    delivered_per_s: float = 0.0
    cpu_ms_per_msg: float = 0.0
    peak_rss_mib: float = 0.0
    error: str = ""


def run_once(
    server: Server, scenario: tuple[str, int, bool], count: int, repetition: int
) -> Result:
    name, concurrency, persistent = scenario
    server.idle()
    server.clear_maildir()
    root = server.root_pid()
    reset_peak_rss(root)
    cpu_before = tree_cpu_seconds(root)
    argv = [
        "smtp-source",
        "-s",
        str(concurrency),
        "-m",
        str(count),
        "-l",
        str(MESSAGE_BYTES),
        "-M",
        "client.example",
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
    ]
    if persistent:
        argv.append("-d")
    argv.append(f"127.0.0.1:{server.port}")
    start = time.monotonic()
    source = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    accepted_at = delivered_at = None
    peak_rss = 0
    next_sample = start
    deadline = start + 600
    while time.monotonic() < deadline:
        if accepted_at is None and source.poll() is not None:
            accepted_at = time.monotonic()
            if source.returncode != 0:
                err = source.stderr.read().decode(errors="replace").strip()
                return Result(server.name, name, repetition, False, error=err[-300:])
        if delivered_at is None and server.delivered() >= count:
            delivered_at = time.monotonic()
        if time.monotonic() >= next_sample:
            # Walking /proc costs CPU on a small machine: 10 times a second.
            peak_rss = max(peak_rss, tree_memory_kib(root))
            next_sample = time.monotonic() + 0.1
        if accepted_at is not None and delivered_at is not None:
            break
        time.sleep(0.01)
    else:
        source.kill()
        source.wait()
        return Result(
            server.name,
            name,
            repetition,
            False,
            error=f"timed out: {server.delivered()} of {count} delivered",
        )
    # Let the server finish what it does after the last file lands (queue
    # removal, status files): wait until its CPU time stops moving.
    settle_deadline = time.monotonic() + 5
    last = tree_cpu_seconds(root)
    while time.monotonic() < settle_deadline:
        time.sleep(0.2)
        now = tree_cpu_seconds(root)
        if now - last < 2 / TICK:
            break
        last = now
    cpu = tree_cpu_seconds(root) - cpu_before
    if len(process_tree(root)) == 1:
        peak_rss = max(peak_rss, _status_kib(root, "VmHWM"))
    return Result(
        server.name,
        name,
        repetition,
        True,
        accepted_per_s=count / (accepted_at - start),
        delivered_per_s=count / (max(accepted_at, delivered_at) - start),
        cpu_ms_per_msg=cpu * 1000 / count,
        peak_rss_mib=peak_rss / 1024,
    )


# Report


@dataclass
class Summary:
    count: int
    repetitions: int
    date: str
    machine: str
    command: str
    load: str = ""
    servers: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    medians: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def summarise(results: list[Result], summary: Summary) -> None:
    for r in results:
        if not r.ok:
            summary.failures.append(
                f"{r.server} {r.scenario} #{r.repetition}: {r.error}"
            )
    for scenario, _, _ in SCENARIOS:
        row: dict[str, dict[str, float]] = {}
        for name in summary.servers:
            runs = [
                r
                for r in results
                if r.ok and r.server == name and r.scenario == scenario
            ]
            if not runs:
                continue
            row[name] = {
                key: statistics.median(getattr(r, key) for r in runs)
                for key in (
                    "accepted_per_s",
                    "delivered_per_s",
                    "cpu_ms_per_msg",
                    "peak_rss_mib",
                )
            }
            row[name]["runs"] = len(runs)
        summary.medians[scenario] = row


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def table(summary: Summary) -> str:
    lines = [
        "| load | server | accepted msgs/s | delivered msgs/s | CPU ms/msg | peak memory MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scenario, row in summary.medians.items():
        for server, m in row.items():
            lines.append(
                f"| {scenario} | {server} | {m['accepted_per_s']:.0f} | "
                f"{m['delivered_per_s']:.0f} | {m['cpu_ms_per_msg']:.2f} | "
                f"{m['peak_rss_mib']:.0f} |"
            )
    ours = [n for n in summary.servers if n not in PEERS]
    peers = [n for n in PEERS if n in summary.servers]
    if not ours:
        return "\n".join(lines)
    lines += [
        "",
        "Ratios ours / peer: delivered msgs/s (accepted msgs/s in brackets). "
        "Targets at c=10 and c=50: "
        + ", ".join(f"{p} {t}x" for p, t in TARGET_RATIOS.items())
        + f"; CPU at most {TARGET_CPU_MS} ms/msg.",
        "",
        "| load | ours | " + " | ".join(f"vs {p}" for p in peers) + " | CPU ms/msg |",
        "|---|---|" + "---:|" * (len(peers) + 1),
    ]
    for scenario, row in summary.medians.items():
        for name in ours:
            tm = row.get(name)
            if tm is None:
                continue
            cells = []
            for peer in peers:
                m = row.get(peer)
                if m is None:
                    cells.append("n/a")
                    continue
                d = tm["delivered_per_s"] / m["delivered_per_s"]
                mark = ""
                if scenario in TARGET_SCENARIOS:
                    mark = " ok" if d >= TARGET_RATIOS[peer] else " missed"
                accepted = ratio(tm["accepted_per_s"], m["accepted_per_s"])
                cells.append(f"{d:.2f}x ({accepted}){mark}")
            cpu = f"{tm['cpu_ms_per_msg']:.2f}"
            if scenario in TARGET_SCENARIOS:
                cpu += " ok" if tm["cpu_ms_per_msg"] <= TARGET_CPU_MS else " missed"
            lines.append(
                f"| {scenario} | {name} | " + " | ".join(cells) + f" | {cpu} |"
            )
    return "\n".join(lines)


#: The heading of this benchmark's section of docs/performance.md; the
#: script replaces the text from it to the next "## " heading, nothing else.
SECTION = "## SMTP"


def _is_section_heading(line: str) -> bool:
    text = line.rstrip()
    return text == SECTION or text.startswith(SECTION + " ")


def target_lines(summary: Summary) -> str:
    """One line per target (c=10 and c=50, each of our servers): met or
    missed, and by how much."""
    ours = [n for n in summary.servers if n not in PEERS]
    lines = []
    for scenario in TARGET_SCENARIOS:
        row = summary.medians.get(scenario, {})
        for name in ours:
            tm = row.get(name)
            if tm is None:
                continue
            parts = []
            for peer, target in TARGET_RATIOS.items():
                m = row.get(peer)
                if m is None or not m["delivered_per_s"]:
                    continue
                got = tm["delivered_per_s"] / m["delivered_per_s"]
                verdict = (
                    "met"
                    if got >= target
                    else f"missed, {target / got:.1f}x short"
                    if got
                    else "missed"
                )
                parts.append(f"{got:.2f}x {peer} (target {target}x: {verdict})")
            cpu = tm["cpu_ms_per_msg"]
            cpu_verdict = (
                "met"
                if cpu <= TARGET_CPU_MS
                else f"missed, {cpu / TARGET_CPU_MS:.1f}x the target"
            )
            parts.append(
                f"{cpu:.2f} ms CPU/msg (target {TARGET_CPU_MS} ms: {cpu_verdict})"
            )
            lines.append(f"- {scenario}, {name}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def section_text(summary: Summary, notes: str) -> str:
    servers = "\n".join(
        f"- **{name}** ({summary.versions.get(name.split()[0], '')}): "
        f"{summary.notes[name]}."
        for name in summary.servers
    )
    failures = ""
    if summary.failures:
        failures = "\nFailed runs (left out of the medians):\n\n" + "\n".join(
            f"- {f}" for f in summary.failures
        )
    return f"""{SECTION}

Command: `{summary.command}` (about {summary.count:,} messages per run, median of
{summary.repetitions}). Measured {summary.date} on {summary.machine}.
The machine was shared with other jobs while this ran (load average
{summary.load}): absolute rates are low and noisy, the ratios between servers
measured side by side are what the table is for.

Load: Postfix's `smtp-source`, 10 KiB messages ({MESSAGE_BYTES} bytes of body plus
smtp-source's headers), one recipient, {summary.count:,} messages per run; one message
per connection at concurrency 1, 10 and 50, then 10 persistent connections
(`smtp-source -d`). Servers run one at a time, interleaved run by run, all on
127.0.0.1, each with its own data folder under /tmp. Accepted: messages over the
time until smtp-source has its last 250. Delivered: messages over the time until the
recipient's Maildir `new/` holds all of them (counted). CPU: user+system time of
the server's whole process tree (/proc, reaped children included) per message,
from before the run until it is idle after it. Peak memory: a single process's
peak RSS (VmHWM, reset before each run); for Postfix's process tree the largest
sum of PSS (shared pages split between the processes mapping them) sampled every
0.1 s.

{servers}

{table(summary)}

Targets (issue 3), delivered msgs/s ratios:

{target_lines(summary)}
{failures}
{notes}
"""


def write_docs(path: str, text: str) -> None:
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = "# Performance\n\nBenchmarks of twistedmail against other servers; each section\nsays how to rerun it.\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _is_section_heading(line)), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
            len(lines),
        )
        tail = "".join(lines[end:])
        new = (
            "".join(lines[:start])
            + text.rstrip("\n")
            + "\n"
            + ("\n" + tail if tail else "")
        )
    with open(path, "w") as f:
        f.write(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--peer-python", required=True)
    parser.add_argument(
        "--quick", action="store_true", help="300 messages, one repetition, no docs"
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--servers",
        default="twistedmail,twisted.mail,postfix,aiosmtpd",
        help="comma-separated",
    )
    parser.add_argument(
        "--directory",
        choices=("sqlite", "files", "both"),
        default="both",
        help="twistedmail's directory backend(s)",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="also run twistedmail from this source tree (before/after figures)",
    )
    parser.add_argument("--scenarios", default=",".join(s[0] for s in SCENARIOS))
    parser.add_argument(
        "--no-docs", action="store_true", help="do not write docs/performance.md"
    )
    parser.add_argument(
        "--notes", default="", help="a file whose text goes under the table"
    )
    parser.add_argument(
        "--render",
        default="",
        metavar="RESULTS_JSON",
        help="run nothing: write the docs section from a saved results.json",
    )
    args = parser.parse_args()
    if args.render:
        render(args)
        return
    if args.quick:
        args.count, args.repetitions, args.no_docs = 300, 1, True
    scenarios = [s for s in SCENARIOS if s[0] in set(args.scenarios.split(","))]

    data = os.path.join(args.base, "data")
    if os.path.exists(data):
        shutil.rmtree(data)
    servers = make_servers(args)
    own = sys.argv[sys.argv.index("--peer-python") + 2 :]
    command = " ".join(["bench/smtp/run", *own])
    summary = Summary(
        count=args.count,
        repetitions=args.repetitions,
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        machine=f"{os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}, "
        f"{_fs_type(args.base)} on the data folders",
        command=command,
    )
    summary.versions = versions(args)
    summary.servers = [s.name for s in servers]
    load_before = _load_average()
    summary.notes = {s.name: s.note for s in servers}
    results: list[Result] = []
    try:
        for s in servers:
            print(f"starting {s.name} on 127.0.0.1:{s.port}", flush=True)
            s.start()
            # Warm up (imports, caches, first Maildir), not measured.
            run_once(s, ("warm-up", 10, False), min(200, args.count), 0)
        for rep in range(1, args.repetitions + 1):
            for scenario in scenarios:
                shift = (rep - 1) % len(servers)
                for s in servers[shift:] + servers[:shift]:
                    r = run_once(s, scenario, args.count, rep)
                    results.append(r)
                    if r.ok:
                        print(
                            f"#{rep} {scenario[0]:>13} {s.name:>12}: accepted "
                            f"{r.accepted_per_s:6.0f}/s delivered {r.delivered_per_s:6.0f}/s "
                            f"cpu {r.cpu_ms_per_msg:5.2f} ms/msg rss {r.peak_rss_mib:5.0f} MiB",
                            flush=True,
                        )
                    else:
                        print(
                            f"#{rep} {scenario[0]} {s.name}: FAILED {r.error}",
                            flush=True,
                        )
    finally:
        for s in servers:
            s.stop()
    summary.load = f"{load_before} at the start, {_load_average()} at the end"
    summarise(results, summary)
    with open(os.path.join(args.base, "results.json"), "w") as f:
        json.dump(
            {"summary": asdict(summary), "runs": [asdict(r) for r in results]},
            f,
            indent=1,
        )
    print()
    print(table(summary))
    if summary.failures:
        print("\nfailed runs:\n" + "\n".join(summary.failures))
    if not args.no_docs:
        _write_section(args, summary)


def _write_section(args: argparse.Namespace, summary: Summary) -> None:
    notes = ""
    if args.notes:
        with open(args.notes) as f:
            notes = f.read()
    path = os.path.join(args.repo, "docs", "performance.md")
    write_docs(path, section_text(summary, notes))
    print(f"\nwrote the SMTP section of {path}")


def render(args: argparse.Namespace) -> None:
    """Write the docs section from a results.json an earlier run saved."""
    with open(args.render) as f:
        saved = json.load(f)["summary"]
    summary = Summary(**saved)
    print(table(summary))
    _write_section(args, summary)


def _load_average() -> str:
    """The 1-, 5- and 15-minute load averages."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _fs_type(path: str) -> str:
    best, kind = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if path.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


def versions(args: argparse.Namespace) -> dict[str, str]:
    def py(python: str, code: str) -> str:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True)
        return out.stdout.strip()

    repo_python = os.path.join(args.repo, ".venv", "bin", "python")
    rev = subprocess.run(
        ["git", "-C", args.repo, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", args.repo, "status", "--porcelain", "--", "twistedmail"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if dirty:
        rev += " with uncommitted changes"
    return {
        "twistedmail": f"git {rev}, Twisted "
        + py(repo_python, "import twisted; print(twisted.__version__)"),
        "twisted.mail": "Twisted "
        + py(args.peer_python, "import twisted; print(twisted.__version__)"),
        "aiosmtpd": "aiosmtpd "
        + py(args.peer_python, "import aiosmtpd; print(aiosmtpd.__version__)"),
        "postfix": "Postfix " + Postfix.version(),
    }


if __name__ == "__main__":
    main()
