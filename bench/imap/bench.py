"""The IMAP benchmark: twistedmail against Dovecot and pymap, side by side,
on the same realistic Maildir folders (see bench/imap/README.md).

Each server gets its own hard-linked copy of one generated corpus per run, so
every server serves the same bytes and every run starts from a folder no
server has seen.  The client is Python's imaplib, used the ordinary way.
Measured per folder size, each as the median of ``--runs`` interleaved runs
(twistedmail, Dovecot, pymap, then again):

  - connect + LOGIN + SELECT: the first time (the server indexes the
    folder), again warm, and once more after a server restart;
  - FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE), right after the first
    SELECT and again warm;
  - FETCH 1:* (ENVELOPE BODYSTRUCTURE), cold (first time) and warm;
  - FETCH of 1,000 full bodies (BODY.PEEK[] of the last 1,000 messages);
  - UID SEARCH SUBJECT (a header) and UID SEARCH BODY (body text);
  - STORE +FLAGS (\\Flagged) on every message.

Then memory: each server is restarted, ``--sessions`` sessions log in and
stay idle, and the growth of the resident set (RSS) and of the proportional
set size (PSS) of all the server's processes is divided by the sessions.

Processes started here are stopped here, by their own process IDs.
"""

from __future__ import annotations

import argparse
import email.policy
import imaplib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MAIL_UID = 65534
PASSWORD = "pass"
CORPUS_VERSION = "v1"
#: Rare words the SEARCH commands look for (no other word contains them).
SUBJECT_WORD = "zephyr"
BODY_WORD = "kumquat"
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his "
    "from at which but have an they you were her she there been one all we their "
    "meeting report budget quarter review draft invoice schedule project update "
    "attached please thanks regards tomorrow deadline customer release server"
).split()
ACCENTED = ["café", "Grüße", "naïve", "Zürich", "señor", "año", "crème"]
FIRST = "Anna Ben Chloé Dmitri Elena Farid Grace Hiro Ines Jonas Katrin Luis".split()
LAST = "Meyer Okafor Rossi Nakamura Dubois Novak Silva Larsen Kowalski Brown".split()
DOMAINS = "example.net example.org mail.example.com lists.example.net".split()


# The corpus.


def _text(rng: random.Random, size: int, extra: str | None) -> str:
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
    if extra is not None:
        out.insert(rng.randint(0, len(out)), extra)
    out.append(" ".join(line))
    return "\n".join(out) + "\n"


def _person(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return f"{first} {last} <{first.lower()}.{last.lower()}@{rng.choice(DOMAINS)}>"


def make_message(rng: random.Random, n: int) -> tuple[bytes, bool, bool]:
    """One realistic message (CRLF) and whether its subject holds
    L{SUBJECT_WORD} and its body L{BODY_WORD}.

    70 % short text, 20 % text and HTML, 9 % with an attachment of 20-120
    KB, 1 % with one of 300-600 KB; a Received chain, Cc, threading and
    list headers on some, non-ASCII names and subjects (RFC 2047 encoded
    words) and quoted-printable text on others.
    """
    m = EmailMessage()
    hops = rng.randint(1, 3)
    for hop in range(hops):
        m["Received"] = (
            f"from mx{hop}.example.net (mx{hop}.example.net [192.0.2.{hop + 1}])"
            f" by mx.bench.test with ESMTPS id {rng.getrandbits(40):x}"
            f" for <user@bench.test>; Mon, 02 Mar 2026 10:{n // 60 % 60:02d}:{n % 60:02d} +0000"
        )
    m["From"] = _person(rng)
    m["To"] = "User <user@bench.test>" + (
        ", " + _person(rng) if rng.random() < 0.3 else ""
    )
    if rng.random() < 0.25:
        m["Cc"] = ", ".join(_person(rng) for _ in range(rng.randint(1, 4)))
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
    if rng.random() < 0.1:
        words.insert(rng.randint(0, len(words)), rng.choice(ACCENTED))
    has_subject_word = rng.random() < 0.01
    if has_subject_word:
        words.insert(rng.randint(0, len(words)), SUBJECT_WORD.capitalize())
    subject = " ".join(words)
    if rng.random() < 0.3:
        subject = "Re: " + subject
        m["In-Reply-To"] = f"<{rng.getrandbits(48):x}@example.net>"
        m["References"] = " ".join(
            f"<{rng.getrandbits(48):x}@example.net>" for _ in range(rng.randint(1, 5))
        )
    m["Subject"] = subject
    m["Date"] = f"Mon, 02 Mar 2026 10:{n // 60 % 60:02d}:{n % 60:02d} +0000"
    m["Message-ID"] = f"<{n}.{rng.getrandbits(48):x}@example.net>"
    if rng.random() < 0.2:
        m["List-Id"] = "Project list <project.lists.example.net>"
        m["List-Unsubscribe"] = "<mailto:leave@lists.example.net>"
    has_body_word = rng.random() < 0.005
    body = _text(
        rng,
        rng.randint(600, 6000),
        f"the {BODY_WORD} order is ready" if has_body_word else None,
    )
    if rng.random() < 0.1:
        body = f"{rng.choice(ACCENTED)} " + body  # quoted-printable text
    kind = rng.random()
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
    return m.as_bytes(policy=email.policy.SMTP), has_subject_word, has_body_word


def _flags(rng: random.Random, n: int, count: int) -> str:
    """Maildir flags: older mail read (some answered or flagged), the newest
    5 % unread."""
    if n >= count * 0.95:
        return ""
    letters = "S"
    if rng.random() < 0.1:
        letters = "RS"
    if rng.random() < 0.03:
        letters = "F" + letters
    return letters


def ensure_corpus(base: str, count: int) -> str:
    """Generate (once) ``count`` messages into base/corpus-<count>-v1/cur;
    the expected SEARCH results go to expected.json beside it."""
    corpus = os.path.join(base, f"corpus-{count}-{CORPUS_VERSION}")
    stamp = os.path.join(corpus, ".done")
    if os.path.exists(stamp):
        return corpus
    shutil.rmtree(corpus, ignore_errors=True)
    cur = os.path.join(corpus, "cur")
    os.makedirs(cur)
    rng = random.Random(20260302 + count)
    expected: dict[str, list[int]] = {"subject": [], "body": []}
    t0 = time.perf_counter()
    for n in range(count):
        data, in_subject, in_body = make_message(rng, n)
        if in_subject:
            expected["subject"].append(n + 1)
        if in_body:
            expected["body"].append(n + 1)
        # Dovecot-style name: ,S= (file size) and ,W= (size with CRLF; the
        # files are CRLF so both are the same).
        name = (
            f"{1772400000 + n}.M{n:06d}P1.bench,S={len(data)},W={len(data)}"
            f":2,{_flags(rng, n, count)}"
        )
        path = os.path.join(cur, name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (1772400000 + n, 1772400000 + n))
        os.chown(path, MAIL_UID, MAIL_UID)
    with open(os.path.join(corpus, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(
        f"corpus: {count} messages in {time.perf_counter() - t0:.0f} s,"
        f" {du(cur) / 1e6:.0f} MB",
        file=sys.stderr,
    )
    with open(stamp, "w"):
        pass
    return corpus


def du(directory: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(directory))


def link_maildir(corpus: str | None, maildir: str) -> None:
    """A fresh Maildir at ``maildir`` hard-linking the corpus's messages
    (``cur/`` sorted by name, so every server numbers them alike); empty
    when ``corpus`` is None."""
    shutil.rmtree(maildir, ignore_errors=True)
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub))
    if corpus is not None:
        source = os.path.join(corpus, "cur")
        for name in sorted(os.listdir(source)):
            os.link(os.path.join(source, name), os.path.join(maildir, "cur", name))
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


def memory_kib(pid: int) -> tuple[int, int, int]:
    """RSS and PSS (KiB) summed over a process tree, and its process count."""
    rss = pss = 0
    pids = descendants(pid)
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss, len(pids)


@dataclass
class Server:
    """One server under test."""

    name: str
    maildir_of: Callable[[str], str]  # user -> Maildir path
    login_of: Callable[[str], str]
    cmd: list[str]
    timeout: float
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    fixed_port: bool = False
    prepare: Callable[[], None] = lambda: None
    cleanup: Callable[[str], None] = lambda path: None

    def fresh_maildir(self, corpus: str | None, user: str) -> None:
        path = self.maildir_of(user)
        link_maildir(corpus, path)
        self.cleanup(path)

    def start(self) -> None:
        self.prepare()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            cwd=HERE,
        )
        if not self.fixed_port:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode()
            if not line.startswith("port "):
                raise RuntimeError(f"{self.name} did not start: {line!r}")
            self.port = int(line.split()[1])
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                    s.recv(100)  # the greeting: the server is ready
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} is not listening on {self.port}")

    def stop(self, grace: float = 20) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def connect(self, user: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=self.timeout)
        c.login(self.login_of(user), PASSWORD)
        return c


def snapshot(repo: str, base: str) -> tuple[str, str]:
    """Export the committed twistedmail package (HEAD) to base/snapshot-<rev>
    once; its directory and the revision.  The checkout is shared with work
    in progress, and each run starts a fresh server process: running from a
    snapshot keeps every run on the same, committed code."""
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
            ["git", "-C", repo, "archive", "HEAD", "twistedmail"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", partial], input=archive, check=True)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(partial, target)
    return target, rev


def twistedmail_server(
    base: str, repo: str, users: list[str], timeout: float, source: str | None
) -> Server:
    """twistedmail's server; its package from C{source} (a snapshot) when
    given, else from the repository's working tree."""
    data = os.path.join(base, "twistedmail")
    mail = os.path.join(data, "mail")
    env = None
    if source is not None:
        env = {**os.environ, "PYTHONPATH": source}
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
        timeout=timeout,
        env=env,
    )


def dovecot_server(base: str, users: list[str], timeout: float) -> Server:
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
                f"""# twistedmail IMAP benchmark peer: loopback only, plaintext logins
instance_name = twistedmail-bench-imap
base_dir = {home}/run
state_dir = {home}/state
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {home}/log/dovecot.log
first_valid_uid = 100
last_valid_uid = 0
mail_location = maildir:~/Maildir
default_internal_user = dovecot
default_login_user = dovenull
default_process_limit = 2500
default_client_limit = 6000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {home}/etc/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {home}/etc/passwd
}}
protocol imap {{
  mail_max_userip_connections = 2500
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  client_limit = 6000
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
        cmd=["dovecot", "-F", "-c", conf],
        timeout=timeout,
        port=port,
        fixed_port=True,
        prepare=prepare,
    )


def pymap_server(base: str, users: list[str], timeout: float) -> Server:
    """pymap's maildir backend (from its own venv under the bench base).

    Users are in passwd/shadow-style files in its mail folder; the hash is
    PBKDF2 with one round, so LOGIN costs about as little as Dovecot's
    ``{PLAIN}`` passwords.  ``FQDN`` is set so that the greeting does not
    look the host name up on each connection.
    """
    home = os.path.join(base, "pymap")
    mail = os.path.join(home, "mail")
    venv = os.path.join(base, "pymap-venv")
    port = free_port()

    def prepare() -> None:
        os.makedirs(mail, exist_ok=True)
        digest = subprocess.run(
            [
                os.path.join(venv, "bin", "python"),
                "-c",
                "from pysasl.hashing import BuiltinHash;"
                f" print(BuiltinHash(rounds=1).hash({PASSWORD!r}))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        with (
            open(os.path.join(mail, "pymap-etc-passwd"), "w") as passwd,
            open(os.path.join(mail, "pymap-etc-shadow"), "w") as shadow,
            open(os.path.join(mail, "pymap-etc-group"), "w"),
        ):
            for u in users:
                passwd.write(f"{u}:x::::{u}:\r\n")
                shadow.write(f"{u}:{digest}:::::::\r\n")

    return Server(
        "pymap",
        lambda u: os.path.join(mail, u),
        lambda u: u,
        cmd=[
            os.path.join(venv, "bin", "pymap"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-tls",
            "maildir",
            mail,
        ],
        timeout=timeout,
        env={**os.environ, "FQDN": "localhost"},
        port=port,
        fixed_port=True,
        prepare=prepare,
    )


# Measurements.

#: The operations, in the order they run and are reported.
OPERATIONS = [
    ("select_first", "LOGIN+SELECT, first time (folder indexed)"),
    ("meta_first", "FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE), after it"),
    ("envelope_cold", "FETCH 1:* (ENVELOPE BODYSTRUCTURE), cold"),
    ("envelope_warm", "FETCH 1:* (ENVELOPE BODYSTRUCTURE), warm"),
    ("bodies", "FETCH 1,000 full bodies (BODY.PEEK[])"),
    ("search_header", f"UID SEARCH SUBJECT {SUBJECT_WORD}"),
    ("search_body", f"UID SEARCH BODY {BODY_WORD}"),
    ("store", "STORE 1:* +FLAGS (\\Flagged)"),
    ("select_warm", "LOGIN+SELECT, warm"),
    ("meta_warm", "FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE), warm"),
    ("select_restart", "LOGIN+SELECT after a server restart"),
]
#: Operations the targets of issue 6 are about (within 3x of Dovecot).
TARGETED = {
    "select_warm",
    "meta_warm",
    "meta_first",
    "search_header",
    "search_body",
    "store",
}
_FETCH_START = re.compile(rb"^\d+ \(")


class Failed(Exception):
    """A command did not give the expected answer."""


def _responses(data: list[Any]) -> int:
    """How many FETCH responses imaplib's data holds."""
    count = 0
    for item in data:
        head = item[0] if isinstance(item, tuple) else item
        if isinstance(head, bytes) and _FETCH_START.match(head):
            count += 1
    return count


def _check(result: tuple[str, list[Any]], what: str) -> list[Any]:
    typ, data = result
    if typ != "OK":
        raise Failed(f"{what}: {typ} {data!r:.200}")
    return data


def _select(server: Server, user: str, count: int) -> imaplib.IMAP4:
    c = server.connect(user)
    data = _check(c.select("INBOX"), "SELECT")
    if int(data[0]) != count:
        raise Failed(f"SELECT: {data[0]!r} messages, not {count}")
    return c


def _fetch(c: imaplib.IMAP4, spec: str, items: str, expect: int) -> None:
    data = _check(c.fetch(spec, items), f"FETCH {items}")
    got = _responses(data)
    if got != expect:
        raise Failed(f"FETCH {items}: {got} responses, not {expect}")


def _search(c: imaplib.IMAP4, key: str, word: str, expect: list[int]) -> None:
    data = _check(c.uid("SEARCH", key, word), f"UID SEARCH {key}")
    got = len(data[0].split()) if data and data[0] else 0
    if got != len(expect):
        raise Failed(f"UID SEARCH {key} {word}: {got} matches, not {len(expect)}")


class Run:
    """One run of every operation on one server, on a fresh folder.

    A command that takes longer than the server's timeout (pymap's are
    short) is recorded as timed out and skipped in later runs; the server is
    then restarted so it stops working on it, and the next operation logs in
    again (untimed).
    """

    def __init__(
        self,
        server: Server,
        user: str,
        count: int,
        expected: dict[str, list[int]],
        skip: set[str],
    ) -> None:
        self.server = server
        self.user = user
        self.count = count
        self.expected = expected
        self.skip = skip
        self.samples: dict[str, float] = {}
        self.timed_out: list[str] = []
        self.failed: dict[str, str] = {}
        self.client: imaplib.IMAP4 | None = None

    def _session(self) -> imaplib.IMAP4:
        if self.client is None:
            self.client = _select(self.server, self.user, self.count)
        return self.client

    def _close(self) -> None:
        if self.client is not None:
            try:
                self.client.logout()
            except (OSError, imaplib.IMAP4.error):
                pass
            self.client = None

    def step(self, key: str, f: Callable[[], Any]) -> None:
        if key in self.skip:
            return
        t0 = time.perf_counter()
        try:
            f()
        except TimeoutError:
            self.skip.add(key)
            self.timed_out.append(key)
            if self.client is not None:
                self.client.shutdown()
                self.client = None
            self.server.stop(grace=1)
            self.server.start()
            self._log(key, "timed out")
            return
        except (Failed, imaplib.IMAP4.error, OSError) as e:
            # Recorded, not fatal: the other figures of a long run stay.
            self.failed[key] = str(e)[:200]
            self._close()
            self._log(key, f"failed: {e!s:.200}")
            return
        self.samples[key] = time.perf_counter() - t0
        self._log(key, f"{self.samples[key]:.3f} s")

    def _log(self, key: str, what: str) -> None:
        print(
            f"  {self.count} {self.server.name} {key}: {what}",
            file=sys.stderr,
            flush=True,
        )

    def run(self) -> None:
        n = self.count
        last = f"{max(1, n - 999)}:{n}"

        def first_select() -> None:
            self.client = _select(self.server, self.user, n)

        self.step("select_first", first_select)
        self.step(
            "meta_first",
            lambda: _fetch(
                self._session(), "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)", n
            ),
        )
        envelope = "(ENVELOPE BODYSTRUCTURE)"
        self.step("envelope_cold", lambda: _fetch(self._session(), "1:*", envelope, n))
        self.step("envelope_warm", lambda: _fetch(self._session(), "1:*", envelope, n))
        self.step(
            "bodies",
            lambda: _fetch(self._session(), last, "(BODY.PEEK[])", min(n, 1000)),
        )
        self.step(
            "search_header",
            lambda: _search(
                self._session(), "SUBJECT", SUBJECT_WORD, self.expected["subject"]
            ),
        )
        self.step(
            "search_body",
            lambda: _search(self._session(), "BODY", BODY_WORD, self.expected["body"]),
        )
        self.step(
            "store",
            lambda: _check(
                self._session().store("1:*", "+FLAGS", "(\\Flagged)"), "STORE"
            ),
        )
        self._close()

        def warm_select() -> None:
            self.client = _select(self.server, self.user, n)

        self.step("select_warm", warm_select)
        self.step(
            "meta_warm",
            lambda: _fetch(
                self._session(), "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)", n
            ),
        )
        self._close()
        self.server.restart()

        def restart_select() -> None:
            self.client = _select(self.server, self.user, n)

        self.step("select_restart", restart_select)
        self._close()


def bench_size(
    servers: list[Server], corpus: str, count: int, runs: int
) -> dict[str, dict[str, Any]]:
    """Every operation on every server, ``runs`` times, interleaved (server
    A, B, C, then A, B, C again) so that load from elsewhere on the machine
    falls on all of them alike.  Each run is on a fresh hard-linked copy and
    a freshly started server."""
    with open(os.path.join(corpus, "expected.json")) as f:
        expected = json.load(f)
    user = f"m{count}"
    samples: dict[tuple[str, str], list[float]] = {}
    timed_out: dict[str, set[str]] = {s.name: set() for s in servers}
    failed: dict[str, dict[str, str]] = {s.name: {} for s in servers}
    for r in range(runs):
        for server in servers:
            server.fresh_maildir(corpus, user)
            server.start()
            run = Run(server, user, count, expected, timed_out[server.name])
            try:
                run.run()
            finally:
                server.stop()
            for key, value in run.samples.items():
                samples.setdefault((server.name, key), []).append(value)
            failed[server.name].update(run.failed)
            print(
                f"{count} run {r + 1} {server.name}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in run.samples.items())
                + (f"; timed out: {', '.join(run.timed_out)}" if run.timed_out else ""),
                file=sys.stderr,
                flush=True,
            )
    results: dict[str, dict[str, Any]] = {
        s.name: {"timed_out": timed_out[s.name], "failed": failed[s.name], "runs": {}}
        for s in servers
    }
    for (name, key), values in samples.items():
        results[name][key] = statistics.median(values)
        results[name]["runs"][key] = len(values)
    return results


def memory(server: Server, sessions: int) -> dict[str, float]:
    """Restart the server, log 10 sessions in and out (code paths loaded),
    then measure its processes before and after ``sessions`` idle
    authenticated sessions."""
    server.fresh_maildir(None, "idle")
    server.restart()
    assert server.proc is not None
    for c in [server.connect("idle") for _ in range(10)]:
        c.logout()
    time.sleep(1)
    rss0, pss0, procs0 = memory_kib(server.proc.pid)
    clients = [server.connect("idle") for _ in range(sessions)]
    time.sleep(2)  # let the server's processes settle before reading /proc
    rss1, pss1, procs1 = memory_kib(server.proc.pid)
    for c in clients:
        c.logout()
    server.stop()
    return {
        "rss_per_session": (rss1 - rss0) / sessions,
        "pss_per_session": (pss1 - pss0) / sessions,
        "rss_before": rss0,
        "rss_after": rss1,
        "processes": procs1 - procs0,
    }


# Report.


def versions(repo: str, base: str) -> str:
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
    pymap = out(
        [
            os.path.join(base, "pymap-venv", "bin", "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('pymap'))",
        ]
    )
    dovecot = (out(["dovecot", "--version"]) or "?").split()[0]
    return (
        f"Python {platform.python_version()}, Twisted {twisted}, Dovecot {dovecot},"
        f" pymap {pymap or '?'}, {os.cpu_count()} CPUs, Linux {platform.release()}"
    )


def revision(repo: str) -> str:
    """The twistedmail commit measured, and whether its code had changes
    not yet committed (the checkout is shared with other work)."""
    rev = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", repo, "status", "--porcelain", "twistedmail"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"twistedmail {rev or '?'}" + (
        " with uncommitted changes in twistedmail/" if dirty else ""
    )


def _seconds(value: float | None, timed_out: bool, failed: bool, timeout: float) -> str:
    if value is None:
        if timed_out:
            return f"> {timeout:.0f} s"
        return "failed" if failed else "-"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def _ratio(r: float) -> str:
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def report_size(
    results: dict[str, dict[str, Any]],
    names: list[str],
    count: int,
    runs: int,
    corpus_mb: float,
    load: tuple[float, float],
    timeouts: dict[str, float],
    when: str,
    rev: str,
) -> str:
    ours = results.get("twistedmail", {})
    peers = [n for n in names if n != "twistedmail"]
    head = "| | " + " | ".join(names)
    rule = "| --- | " + " | ".join("---" for _ in names)
    for p in peers:
        head += f" | twistedmail / {p}"
        rule += " | ---"
    lines = [
        f"### {count:,} messages",
        "",
        f"`bench/imap/run --messages {count} --runs {runs}`, {when}: a {corpus_mb:.0f} MB"
        f" folder, median of {runs} run{'s' if runs > 1 else ''}"
        f" (load average {load[0]:.1f} before, {load[1]:.1f} after); {rev}.",
        "",
        head + " |",
        rule + " |",
    ]
    for key, label in OPERATIONS:
        row = f"| {label} |"
        for n in names:
            r = results.get(n, {})
            cell = _seconds(
                r.get(key),
                key in r.get("timed_out", ()),
                key in r.get("failed", {}),
                timeouts[n],
            )
            row += f" {cell} |"
        for p in peers:
            a, b = ours.get(key), results.get(p, {}).get(key)
            if a is not None and b is not None and b > 0:
                row += f" {_ratio(a / b)} |"
            elif a is not None and key in results.get(p, {}).get("timed_out", ()):
                row += f" < {_ratio(a / timeouts[p])} |"
            else:
                row += " - |"
        lines.append(row)
    short = [
        n
        for n in names
        if any(0 < v < runs for v in results.get(n, {}).get("runs", {}).values())
    ]
    if short:
        lines += [
            "",
            "Fewer samples than runs (an operation timed out or failed in a"
            " later run): " + ", ".join(short) + ".",
        ]
    for n in names:
        for key, why in results.get(n, {}).get("failed", {}).items():
            lines += ["", f"{n}, {key} failed (in at least one run): {why}"]
    lines.append("")
    return "\n".join(lines)


def report_memory(
    mem: dict[str, dict[str, float]], names: list[str], sessions: int, when: str
) -> str:
    lines = [
        "### Memory per idle authenticated session",
        "",
        f"`bench/imap/run ... --sessions {sessions}`, {when}: each server restarted,"
        f" 10 logins to warm it up, then {sessions} sessions logged in and left idle"
        " (no folder selected).  Growth of the resident set (RSS) and of the"
        " proportional set size (PSS, shared pages counted once) summed over all"
        " the server's processes, divided by the sessions.",
        "",
        "| | RSS per session | PSS per session | processes added | RSS before → after |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n in names:
        m = mem.get(n)
        if m is None:
            continue
        lines.append(
            f"| {n} | {m['rss_per_session']:.1f} KiB | {m['pss_per_session']:.1f} KiB |"
            f" {m['processes']:.0f} | {m['rss_before'] / 1024:.0f} →"
            f" {m['rss_after'] / 1024:.0f} MiB |"
        )
    lines.append("")
    return "\n".join(lines)


INTRO = """\
`bench/imap/run` (see bench/imap/README.md): twistedmail, Dovecot and pymap
side by side on hard-linked copies of one generated folder per size, the
client Python's imaplib on the same machine, plaintext LOGIN on loopback.
Each run starts on a fresh copy with a freshly started server; the runs are
interleaved.  "Cold" means the server has not seen the folder before; the
operating system's page cache is warm for every server alike (same files).
Times include imaplib's parsing of the responses, which is the same work for
every server.  The machine has 2 CPUs and other sessions ran tests meanwhile
(load averages below): the ratios matter more than the times.

Targets (issue 6): within 3x of Dovecot on SELECT, metadata FETCH, SEARCH
and STORE at 10,000 and 100,000 messages; SELECT after a restart at
100,000 under 1 s; at most 10 KiB per idle authenticated session.
"""


def write_subsection(path: str, heading: str, body: str, summary: str) -> None:
    """Replace (or add) the subsection ``heading`` (a "### " heading) inside
    the "## IMAP" section of docs/performance.md, keeping the others.  Only
    the text between "## IMAP" and the next "## " heading (or the end of the
    file) changes."""
    with open(path) as f:
        text = f.read()
    start = text.find("## IMAP\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n## IMAP\n"
        start = text.find("## IMAP\n")
    end = text.find("\n## ", start + 1)
    section = text[start : len(text) if end < 0 else end + 1]
    parts = re.split(r"(?m)^(?=### )", section)
    subsections = {p.split("\n", 1)[0]: p.rstrip("\n") + "\n\n" for p in parts[1:]}
    subsections[heading] = body.rstrip("\n") + "\n\n"
    order = sorted(subsections, key=_subsection_order)
    new = (
        "## IMAP\n\n"
        + INTRO
        + "\n"
        + (summary.rstrip("\n") + "\n\n" if summary else "")
        + "".join(subsections[h] for h in order)
    )
    text = text[:start] + new.rstrip("\n") + "\n" + ("" if end < 0 else text[end:])
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")


def _subsection_order(heading: str) -> tuple[int, int]:
    m = re.match(r"### ([\d,]+) messages", heading)
    if m:
        return (0, int(m.group(1).replace(",", "")))
    return (1, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument(
        "--messages", default="1000,10000", help="folder sizes, comma-separated"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--servers", default="twistedmail,Dovecot,pymap")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per command"
    )
    parser.add_argument(
        "--pymap-timeout",
        type=float,
        default=120,
        help="seconds per pymap command; longer ones are reported as timed out",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the idle-session memory"
    )
    parser.add_argument(
        "--live-tree",
        action="store_true",
        help="run twistedmail from the working tree, not a snapshot of HEAD",
    )
    parser.add_argument(
        "--write", action="store_true", help="update docs/performance.md"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (Dovecot's mail user and private instance)")
    limit = max(8192, args.sessions * 2 + 100)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    os.makedirs(args.base, exist_ok=True)
    sizes = [int(s) for s in args.messages.split(",")]
    users = [*(f"m{n}" for n in sizes), "idle"]
    timeouts = {
        "twistedmail": args.timeout,
        "Dovecot": args.timeout,
        "pymap": args.pymap_timeout,
    }
    source: str | None = None
    snap_rev = ""
    if not args.live_tree:
        source, snap_rev = snapshot(args.repo, args.base)
    makers = {
        "twistedmail": lambda: twistedmail_server(
            args.base, args.repo, users, args.timeout, source
        ),
        "Dovecot": lambda: dovecot_server(args.base, users, args.timeout),
        "pymap": lambda: pymap_server(args.base, users, args.pymap_timeout),
    }
    names = args.servers.split(",")
    servers = [makers[n]() for n in names]
    env = versions(args.repo, args.base)
    doc = os.path.join(args.repo, "docs", "performance.md")
    out: list[str] = []
    try:
        for count in sizes:
            corpus = ensure_corpus(args.base, count)
            load0 = os.getloadavg()[0]
            rev = (
                revision(args.repo)
                if source is None
                else f"twistedmail {snap_rev} (committed code, run from a snapshot)"
            )
            when = time.strftime("%Y-%m-%d")
            results = bench_size(servers, corpus, count, args.runs)
            load1 = os.getloadavg()[0]
            body = report_size(
                results,
                names,
                count,
                args.runs,
                du(os.path.join(corpus, "cur")) / 1e6,
                (load0, load1),
                timeouts,
                when,
                rev,
            )
            print(body, flush=True)
            out.append(body)
            if args.write:
                write_subsection(doc, body.split("\n", 1)[0], body, env + ".")
        if not args.no_memory:
            mem = {s.name: memory(s, args.sessions) for s in servers}
            body = report_memory(mem, names, args.sessions, time.strftime("%Y-%m-%d"))
            print(body, flush=True)
            if args.write:
                write_subsection(doc, body.split("\n", 1)[0], body, env + ".")
    finally:
        for server in servers:
            server.stop(grace=5)


if __name__ == "__main__":
    main()
