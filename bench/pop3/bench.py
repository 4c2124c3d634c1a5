"""The POP3 benchmark: twistedmail against Dovecot and twisted.mail, side
by side, on the same realistic Maildir (see bench/pop3/README.md).

Each server gets its own hard-linked copy of one generated corpus, so every
server serves the same bytes.  The client is Python's poplib, used the
ordinary way (no socket tricks).  Measured, each as the median of
``--runs``:

  - login + STAT + LIST + UIDL + QUIT: the first time on a fresh Maildir
    (each server builds its index then) and again once it is warm;
  - RETR of every message in one session (messages/s);
  - DELE of every message then QUIT (the UPDATE removes the files), on a
    fresh copy each run, login not counted;
  - memory (PSS of the server's processes) with ``--sessions`` sessions
    logged in at once, each to its own small maildrop.

Processes started here are stopped here, by their own process IDs.
"""

from __future__ import annotations

import argparse
import email.policy
import os
import platform
import poplib
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import partial
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MAIL_UID = 65534
PASSWORD = "pass"
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his "
    "from at which but have an they you were her she there been one all we their "
    "meeting report budget quarter review draft invoice schedule project update "
    "attached please thanks regards tomorrow deadline customer release server"
).split()


# The corpus.


def _text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    line: list[str] = []
    while length < size:
        w = rng.choice(WORDS)
        line.append(w)
        length += len(w) + 1
        if len(line) > rng.randint(8, 14):
            out.append(" ".join(line))
            line = []
            if rng.random() < 0.15:
                out.append("")
            if rng.random() < 0.01:
                out.append(".")  # a lone dot: the server must byte-stuff it
    out.append(" ".join(line))
    return "\n".join(out) + "\n"


def make_message(rng: random.Random, n: int) -> bytes:
    """One realistic message (CRLF): 70 % short text, 20 % text+HTML, 9 %
    with an attachment of 20-120 KB, 1 % with one of 300-600 KB."""
    m = EmailMessage()
    m["From"] = f"Sender {n % 97} <sender{n % 97}@example.net>"
    m["To"] = "pop@bench.test"
    m["Subject"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
    m["Date"] = f"Mon, 02 Mar 2026 10:{n // 60 % 60:02d}:{n % 60:02d} +0000"
    m["Message-ID"] = f"<{n}.{rng.getrandbits(48):x}@example.net>"
    kind = rng.random()
    body = _text(rng, rng.randint(600, 6000))
    m.set_content(body)
    if kind >= 0.70:
        html = (
            "<html><body><p>" + body.replace("\n\n", "</p><p>") + "</p></body></html>"
        )
        m.add_alternative(html, subtype="html")
    if kind >= 0.90:
        size = (
            rng.randint(300_000, 600_000)
            if kind >= 0.99
            else rng.randint(20_000, 120_000)
        )
        m.add_attachment(
            rng.randbytes(size),
            maintype="application",
            subtype="octet-stream",
            filename=f"file{n}.bin",
        )
    return m.as_bytes(policy=email.policy.SMTP)


def ensure_corpus(base: str, count: int) -> str:
    """Generate (once) ``count`` messages into base/corpus-<count>/new."""
    corpus = os.path.join(base, f"corpus-{count}")
    stamp = os.path.join(corpus, ".done-v1")
    if os.path.exists(stamp):
        return corpus
    shutil.rmtree(corpus, ignore_errors=True)
    new = os.path.join(corpus, "new")
    os.makedirs(new)
    rng = random.Random(20260302 + count)
    t0 = time.perf_counter()
    for n in range(count):
        data = make_message(rng, n)
        # Dovecot-style name: ,S= (file size) and ,W= (size with CRLF; the
        # files are CRLF so both are the same).
        name = f"{1772400000 + n}.M{n:06d}P1.bench,S={len(data)},W={len(data)}"
        path = os.path.join(new, name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (1772400000 + n, 1772400000 + n))
        os.chown(path, MAIL_UID, MAIL_UID)
    print(
        f"corpus: {count} messages in {time.perf_counter() - t0:.0f} s,"
        f" {du(new) / 1e6:.0f} MB",
        file=sys.stderr,
    )
    with open(stamp, "w"):
        pass
    return corpus


def du(directory: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(directory))


def link_maildir(corpus: str, maildir: str, limit: int | None = None) -> None:
    """A fresh Maildir at ``maildir`` hard-linking the corpus's messages."""
    shutil.rmtree(maildir, ignore_errors=True)
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub))
    names = sorted(os.listdir(os.path.join(corpus, "new")))
    for name in names[:limit]:
        os.link(os.path.join(corpus, "new", name), os.path.join(maildir, "new", name))
    for d in (maildir, *(os.path.join(maildir, s) for s in ("new", "cur", "tmp"))):
        os.chown(d, MAIL_UID, MAIL_UID)


# Servers.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pss_kib(pid: int) -> int:
    """Proportional set size of a process tree (shared pages counted once)."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


@dataclass
class Server:
    """One server under test."""

    name: str
    maildir_of: Callable[[str], str]  # user -> Maildir path
    login_of: Callable[[str], str]
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    prepare: Callable[[], None] = lambda: None
    cmd: list[str] = field(default_factory=list)
    retr_cap: int | None = None
    trash: bool = False  # twisted.mail's DELE moves messages to .Trash/cur

    def fresh_maildir(self, corpus: str, user: str) -> None:
        path = self.maildir_of(user)
        link_maildir(corpus, path)
        if self.trash:
            for sub in ("new", "cur", "tmp"):
                os.makedirs(os.path.join(path, ".Trash", sub))

    def start(self) -> None:
        self.prepare()
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        if not self.port:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode()
            if not line.startswith("port "):
                raise RuntimeError(f"{self.name} did not start: {line!r}")
            self.port = int(line.split()[1])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} is not listening on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def connect(self, user: str) -> poplib.POP3:
        c = poplib.POP3("127.0.0.1", self.port, timeout=600)
        c.user(self.login_of(user))
        c.pass_(PASSWORD)
        return c


def twistedmail_server(base: str, repo: str, users: list[str]) -> Server:
    data = os.path.join(base, "twistedmail")
    mail = os.path.join(data, "mail")
    return Server(
        "twistedmail",
        lambda u: os.path.join(mail, u),
        lambda u: f"{u}@bench.test",
        cmd=[
            os.path.join(repo, ".venv", "bin", "python"),
            os.path.join(HERE, "serve_twistedmail.py"),
            "--data-dir",
            data,
            *(f"{u}={u}" for u in users),
        ],
    )


def twisted_mail_server(base: str, repo: str, users: list[str], cap: int) -> Server:
    root = os.path.join(base, "twisted.mail")
    return Server(
        "twisted.mail",
        lambda u: os.path.join(root, u),
        lambda u: f"{u}@bench.test",
        cmd=[
            os.path.join(repo, ".venv", "bin", "python"),
            os.path.join(HERE, "peer_twisted_mail.py"),
            "--root",
            root,
            *(f"{u}={u}" for u in users),
        ],
        retr_cap=cap,
        trash=True,
    )


def dovecot_server(base: str, users: list[str]) -> Server:
    home = os.path.join(base, "dovecot")
    mail = os.path.join(home, "mail")
    conf = os.path.join(home, "etc", "dovecot.conf")
    port = free_port()

    def prepare() -> None:
        for d in ("etc", "run", "state", "log"):
            os.makedirs(os.path.join(home, d), exist_ok=True)
        os.makedirs(mail, exist_ok=True)
        os.chown(mail, MAIL_UID, MAIL_UID)
        with open(os.path.join(home, "etc", "passwd"), "w") as f:
            for u in users:
                f.write(
                    f"{u}:{{PLAIN}}{PASSWORD}:{MAIL_UID}:{MAIL_UID}::{mail}/{u}::\n"
                )
        with open(conf, "w") as f:
            f.write(
                f"""# twistedmail POP3 benchmark peer: loopback only, plaintext logins
instance_name = twistedmail-bench-pop3
base_dir = {home}/run
state_dir = {home}/state
listen = 127.0.0.1
protocols = pop3
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = {home}/log/dovecot.log
first_valid_uid = 100
last_valid_uid = 0
mail_location = maildir:~/Maildir
default_internal_user = dovecot
default_login_user = dovenull
default_process_limit = 1200
default_client_limit = 4000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {home}/etc/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {home}/etc/passwd
}}
protocol pop3 {{
  mail_max_userip_connections = 1200
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  client_limit = 4000
}}
"""
            )

    def maildir_of(user: str) -> str:
        home_dir = os.path.join(mail, user)
        os.makedirs(home_dir, exist_ok=True)
        os.chown(home_dir, MAIL_UID, MAIL_UID)
        return os.path.join(home_dir, "Maildir")

    return Server(
        "Dovecot",
        maildir_of,
        lambda u: u,
        port=port,
        prepare=prepare,
        cmd=["dovecot", "-F", "-c", conf],
    )


# Measurements.


def timed(f: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def listing(server: Server, user: str) -> None:
    c = server.connect(user)
    c.stat()
    c.list()
    c.uidl()
    c.quit()


def retr_all(server: Server, user: str, count: int) -> float:
    """Seconds to RETR messages 1..count in one session."""
    c = server.connect(user)
    t = timed(lambda: [c.retr(n) for n in range(1, count + 1)])
    c.quit()
    return t


def dele_all(server: Server, user: str, count: int) -> float:
    """Seconds for DELE of every message and the QUIT that removes them."""
    c = server.connect(user)
    c.stat()

    def run() -> None:
        for n in range(1, count + 1):
            c.dele(n)
        c.quit()

    return timed(run)


def memory(server: Server, users: list[str]) -> tuple[int, int]:
    """PSS (KiB) with no session, and with one session per user open."""
    assert server.proc is not None
    idle = pss_kib(server.proc.pid)
    clients = []
    for u in users:
        c = server.connect(u)
        c.stat()
        clients.append(c)
    time.sleep(1)  # let the server's processes settle before reading /proc
    busy = pss_kib(server.proc.pid)
    for c in clients:
        c.quit()
    return idle, busy


def bench_all(
    servers: list[Server],
    corpus: str,
    count: int,
    runs: int,
    sessions: list[str],
    small: str,
) -> list[dict[str, Any]]:
    """Measure every server, interleaving the runs (server A, B, C, then A,
    B, C again...) so that load from elsewhere on the machine falls on all
    of them alike."""
    results: dict[str, dict[str, Any]] = {s.name: {"name": s.name} for s in servers}
    samples: dict[tuple[str, str], list[float]] = {}

    def sample(server: Server, key: str, value: float) -> None:
        samples.setdefault((server.name, key), []).append(value)

    for server in servers:
        server.fresh_maildir(corpus, "pop")
        for u in sessions:
            server.fresh_maildir(small, u)
    try:
        for server in servers:
            server.start()
        for server in servers:
            results[server.name]["list_cold"] = timed(partial(listing, server, "pop"))
        for _ in range(runs):
            for server in servers:
                sample(server, "list_warm", timed(partial(listing, server, "pop")))
        for _ in range(runs):
            for server in servers:
                n = min(count, server.retr_cap or count)
                results[server.name]["retr_n"] = n
                sample(server, "retr", n / retr_all(server, "pop", n))
        for _ in range(runs):
            for server in servers:
                server.fresh_maildir(corpus, "pop")
                listing(server, "pop")  # index built, outside the timing
                sample(server, "dele", dele_all(server, "pop", count))
        for server in servers:
            idle, busy = memory(server, sessions)
            results[server.name]["mem_idle"] = idle
            results[server.name]["mem_busy"] = busy
    finally:
        for server in servers:
            server.stop()
    for (name, key), values in samples.items():
        results[name][key] = statistics.median(values)
    for r in results.values():
        print(f"{r['name']}: {r}", file=sys.stderr)
    return [results[s.name] for s in servers]


# Report.


def versions(repo: str) -> str:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    twisted = out(
        [
            os.path.join(repo, ".venv", "bin", "python"),
            "-c",
            "import twisted; print(twisted.__version__)",
        ]
    )
    return (
        f"Python {platform.python_version()}, Twisted {twisted}, Dovecot"
        f" {out(['dovecot', '--version']).split()[0]}, {os.cpu_count()} CPUs,"
        f" Linux {platform.release()}"
    )


#: The text at the top of the "## POP3" section, above one subsection per
#: maildrop size.
INTRO = """\
`bench/pop3/run` (see bench/pop3/README.md): realistic messages (70 % short
text, 20 % text+HTML, 9 % with a 20-120 KB attachment, 1 % with a 300-600 KB
one), the same files hard-linked into each server's Maildir.  Client:
Python's poplib on the same machine, plaintext logins on loopback.

The runs are interleaved (each server in turn, then all of them again), so
load from elsewhere falls on every server alike, and each figure is the
median of the runs.  The machine has 2 cores, and other work (other
builds, tests and benchmarks) ran on it at the same time: the client and
the server competed with it, so the absolute figures only orient; the
ratios are what to read.  Each subsection gives the load average at its
start and end.

Targets (issue 5): RETR at least 0.75x Dovecot's rate; login+STAT+LIST+UIDL
within 2x of Dovecot's time, at 10,000 and at 100,000 messages."""


def _niceness() -> str:
    """How the run was prioritised against the machine's other work (every
    server and the client inherit it alike)."""
    n = os.nice(0)
    return f"; run at nice {n} (client and all servers alike)" if n else ""


def report(
    results: list[dict[str, Any]],
    count: int,
    runs: int,
    sessions: int,
    env: str,
    load: tuple[float, float] = (0.0, 0.0),
) -> str:
    """The subsection for one maildrop size."""
    by = {r["name"]: r for r in results}
    ours = by["twistedmail"]
    lines = [
        f"### {count:,} messages",
        "",
        f"`bench/pop3/run --messages {count} --runs {runs} --sessions {sessions}`"
        f" ({ours.get('corpus_mb', 0):.0f} MB), {time.strftime('%Y-%m-%d')}:"
        f" median of {runs} interleaved runs; load average {load[0]:.1f} at the"
        f" start, {load[1]:.1f} at the end{_niceness()}.  {env}.",
        "",
        "| | login+STAT+LIST+UIDL, fresh Maildir | the same, warm | RETR all | DELE all + QUIT |"
        f" memory, {sessions} sessions (idle) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        retr = f"{r['retr']:,.0f} msgs/s"
        if r["retr_n"] < count:
            retr += f" (first {r['retr_n']})"
        lines.append(
            f"| {r['name']} | {r['list_cold']:.2f} s | {r['list_warm']:.3f} s | {retr} |"
            f" {r['dele']:.2f} s | {r['mem_busy'] / 1024:.0f} MiB ({r['mem_idle'] / 1024:.0f} MiB) |"
        )
    lines.append("")
    for peer in ("Dovecot", "twisted.mail"):
        if peer not in by:
            continue
        p = by[peer]
        lines.append(
            f"- twistedmail / {peer}: RETR {ours['retr'] / p['retr']:.2f}x the rate;"
            f" login+STAT+LIST+UIDL {ours['list_warm'] / p['list_warm']:.2f}x the time warm,"
            f" {ours['list_cold'] / p['list_cold']:.2f}x fresh;"
            f" DELE all + QUIT {ours['dele'] / p['dele']:.2f}x the time;"
            f" memory with sessions {ours['mem_busy'] / p['mem_busy']:.2f}x."
        )
    lines.append("")
    return "\n".join(lines)


def write_section(path: str, count: int, subsection: str) -> None:
    """Put one maildrop size's subsection into the "## POP3" section of
    docs/performance.md, keeping the other sizes' subsections; nothing
    outside that section (up to the next "## " heading) is touched."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Performance\n"
    start = text.find("## POP3\n")
    if start < 0:
        before, old, after = text.rstrip("\n") + "\n\n", "", ""
    else:
        end = text.find("\n## ", start + 1)
        end = len(text) if end < 0 else end + 1
        before, old, after = text[:start], text[start:end], text[end:]
    parts = re.split(r"^### ([0-9,]+) messages\n", old, flags=re.MULTILINE)
    subsections = {
        int(parts[i].replace(",", "")): f"### {parts[i]} messages\n" + parts[i + 1]
        for i in range(1, len(parts), 2)
    }
    subsections[count] = subsection
    body = "\n".join(subsections[n].rstrip("\n") + "\n" for n in sorted(subsections))
    section = f"## POP3\n\n{INTRO}\n\n{body}"
    tail = "\n" + after if after else ""
    with open(path, "w") as f:
        f.write(before + section + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument(
        "--twisted-mail-retr",
        type=int,
        default=300,
        help="messages twisted.mail's RETR rate is measured on",
    )
    parser.add_argument("--servers", default="twistedmail,Dovecot,twisted.mail")
    parser.add_argument(
        "--write", action="store_true", help="update docs/performance.md"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (Dovecot's mail user and private instance)")
    os.makedirs(args.base, exist_ok=True)
    corpus = ensure_corpus(args.base, args.messages)
    small = ensure_corpus(args.base, 10)
    sessions = [f"m{i:03d}" for i in range(args.sessions)]
    users = ["pop", *sessions]
    servers = {
        "twistedmail": lambda: twistedmail_server(args.base, args.repo, users),
        "Dovecot": lambda: dovecot_server(args.base, users),
        "twisted.mail": lambda: twisted_mail_server(
            args.base, args.repo, users, args.twisted_mail_retr
        ),
    }
    chosen = [servers[name]() for name in args.servers.split(",")]
    load_start = os.getloadavg()[0]
    results = bench_all(chosen, corpus, args.messages, args.runs, sessions, small)
    load = (load_start, os.getloadavg()[0])
    for r in results:
        r["corpus_mb"] = du(os.path.join(corpus, "new")) / 1e6
    section = report(
        results, args.messages, args.runs, args.sessions, versions(args.repo), load
    )
    print(section)
    if args.write:
        write_section(
            os.path.join(args.repo, "docs", "performance.md"), args.messages, section
        )


if __name__ == "__main__":
    main()
