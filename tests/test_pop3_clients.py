"""Interoperability: fetchmail and getmail6 (Debian packages ``fetchmail``
and ``getmail6``) retrieve mail from the POP3 server over STLS and over
POP3S, once keeping and once deleting, and what arrives is compared byte
for byte with what was stored.

Both programs hand mail on with LF line ends (fetchmail to its MDA,
getmail6 to its Maildir), so the stored CRLF messages are compared with
CRLF made LF; getmail6 also puts a ``Return-Path`` line first, which is
checked and removed.  getmail6 (6.18) has no STLS: it is tested over POP3S
and over plain POP3 with ``allow_plaintext_auth`` on loopback.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.pop3_helpers import PASSWORD, make_message, make_world
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.pop3.server import SYNC_READ_LIMIT
from twistedmail.testing import make_test_certificate
from twistedmail.tls import ServerTLS

USER = "alice@example.test"

# An MDA for fetchmail: each message into the next numbered file.
_SAVE = """\
import os, sys
directory = sys.argv[1]
data = sys.stdin.buffer.read()
n = 0
while True:
    try:
        fd = os.open(os.path.join(directory, "%06d" % n),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        break
    except FileExistsError:
        n += 1
os.write(fd, data)
os.close(fd)
"""


#: getmail6's own race (see ClientTests.getmail): its messages, and how
#: many runs a test allows.
_GETMAIL_RACE = (b"_ForkingBase__orig_handler", b"waiting child pid")
_GETMAIL_TRIES = 3


def messages() -> list[bytes]:
    """Realistic mail: plain, MIME with an attachment, dot lines, and one
    big enough to be read in a thread."""
    mime = (
        b"From: Sender <sender@example.test>\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: =?utf-8?q?r=C3=A9sum=C3=A9?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n'
        b"\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"Voil=C3=A0.\r\n"
        b".\r\n"
        b"--b1\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        + b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n" * 40
        + b"--b1--\r\n"
    )
    big = b"From: big@example.test\r\nSubject: big\r\n\r\n" + b"".join(
        b"%sline %d of a long message\r\n" % (b"." if i % 5 == 0 else b"", i)
        for i in range(40000)
    )
    assert len(big) > SYNC_READ_LIMIT
    return [make_message(1), mime, big, make_message(4, body_lines=40)]


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


class ClientTests(TestCase):
    """fetchmail and getmail6 against a server on 127.0.0.1, port 0."""

    def setUp(self) -> None:
        for program in ("fetchmail", "getmail"):
            if shutil.which(program) is None:
                self.fail(
                    f"{program} is not installed (apt-get install fetchmail getmail6)"
                )
        cert, key = make_test_certificate(os.path.abspath(self.mktemp()))
        self.cert = cert
        self.world = make_world(
            self.mktemp(),
            tls=ServerTLS(cert, key),
            run_in_thread=None,
            reactor=reactor,
            allow_plaintext_auth=False,
        )
        self.world.throttle = LoginThrottle(reactor, 0.0, 0.0)
        self.messages = messages()
        for m in self.messages:
            self.world.deliver(m)

    def listen(self, implicit: bool, plaintext: bool = False) -> int:
        """A POP3 (STLS) or POP3S listener; its port number."""
        world = self.world
        if plaintext:
            world = make_world(
                self.world.root,
                tls=self.world.tls,
                run_in_thread=None,
                reactor=reactor,
                allow_plaintext_auth=True,
            )
            world.throttle = LoginThrottle(reactor, 0.0, 0.0)
        factory: Any = world.factory(implicit_tls=implicit, reactor=reactor)
        if implicit:
            assert world.tls is not None
            factory = world.tls.wrap_implicit(factory, reactor)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[no-any-return]

    def left_on_server(self) -> int:
        """How many messages the maildrop still holds."""
        md = self.world.maildir()
        return len(os.listdir(os.path.join(md, "new"))) + len(
            os.listdir(os.path.join(md, "cur"))
        )

    async def run_client(
        self, program: str, args: list[str], home: str, *, check: bool = True
    ) -> bytes:
        """Run a client with a private HOME; fail the test if it fails
        (unless C{check} is false: then a failure's output is returned,
        starting with C{b"exit <code>\\n"})."""
        env = {
            "HOME": home,
            "FETCHMAILHOME": home,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
        }
        path = shutil.which(program)
        assert path is not None
        out, err, code = await getProcessOutputAndValue(
            path, args, env=env, path=home, reactor=reactor
        )
        if not check and code != 0:
            return b"exit %d\n" % code + out + err
        self.assertIn(code, (0,), f"{program} failed ({code}):\n{out!r}\n{err!r}")
        return out + err

    # fetchmail

    async def fetchmail(self, implicit: bool, keep: bool) -> None:
        port = self.listen(implicit)
        home = os.path.abspath(self.mktemp())
        out_dir = os.path.join(home, "out")
        os.makedirs(out_dir)
        save = os.path.join(home, "save.py")
        with open(save, "w") as f:
            f.write(_SAVE)
        tls = "ssl" if implicit else 'sslproto "TLS1.2+"'
        rc = os.path.join(home, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(
                "set no syslog\nset no bouncemail\n"
                f"poll localhost via 127.0.0.1 with proto POP3 port {port}\n"
                f'  user "{USER}" there with password "{PASSWORD}" is "nobody" here\n'
                f'  {tls} sslcertck sslcommonname "localhost"'
                f' sslcertfile "{self.cert}"\n'
                f"  {'keep' if keep else 'no keep'} fetchall\n"
                f'  mda "{sys.executable} {save} {out_dir}"\n'
            )
        os.chmod(rc, 0o600)
        # As root fetchmail's lock file is /var/run/fetchmail.pid whatever
        # HOME says: each run names its own, and its own id file, so runs
        # in parallel (trial -j) do not see "another fetchmail is running".
        log = await self.run_client(
            "fetchmail",
            [
                "-v",
                "-f",
                rc,
                "--nodetach",
                "--invisible",
                "--norewrite",
                "--pidfile",
                os.path.join(home, "fetchmail.pid"),
                "--idfile",
                os.path.join(home, "fetchids"),
            ],
            home,
        )
        if not implicit:
            self.assertIn(b"POP3> STLS", log)
        received = []
        for name in sorted(os.listdir(out_dir)):
            with open(os.path.join(out_dir, name), "rb") as f:
                received.append(f.read())
        # Compared as sets of messages: the server's order is the store's
        # UID order, which for mail delivered in one second is its own.
        self.assertEqual(sorted(received), sorted(_lf(m) for m in self.messages))
        self.assertEqual(self.left_on_server(), len(self.messages) if keep else 0)

    def test_fetchmail_stls_keep(self) -> None:
        """fetchmail over STLS, keeping the mail: all of it arrives intact."""
        return Deferred.fromCoroutine(self.fetchmail(False, True))  # type: ignore[return-value]

    def test_fetchmail_stls_delete(self) -> None:
        """fetchmail over STLS, deleting: all arrives, the maildrop empties."""
        return Deferred.fromCoroutine(self.fetchmail(False, False))  # type: ignore[return-value]

    def test_fetchmail_pop3s_keep(self) -> None:
        """fetchmail over POP3S, keeping the mail."""
        return Deferred.fromCoroutine(self.fetchmail(True, True))  # type: ignore[return-value]

    def test_fetchmail_pop3s_delete(self) -> None:
        """fetchmail over POP3S, deleting."""
        return Deferred.fromCoroutine(self.fetchmail(True, False))  # type: ignore[return-value]

    # getmail6

    async def getmail(self, implicit: bool, keep: bool) -> None:
        port = self.listen(implicit, plaintext=not implicit)
        home = os.path.abspath(self.mktemp())
        maildir = os.path.join(home, "Maildir")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, sub))
        user_line = ""
        if os.geteuid() == 0:
            # getmail refuses to deliver as root; it can switch to a user.
            user_line = "user = nobody\n"
            # mktemp's parent is private (0700); nobody must get through it.
            os.chmod(os.path.dirname(home), 0o711)
            for d in (
                home,
                maildir,
                *(os.path.join(maildir, s) for s in ("new", "cur", "tmp")),
            ):
                os.chmod(d, 0o777)
        if implicit:
            retriever = (
                "type = SimplePOP3SSLRetriever\n"
                f"ca_certs = {self.cert}\nssl_cert_hostname = localhost\n"
            )
        else:
            retriever = "type = SimplePOP3Retriever\n"
        rc = os.path.join(home, "getmailrc")
        with open(rc, "w") as f:
            f.write(
                f"[retriever]\n{retriever}server = 127.0.0.1\nport = {port}\n"
                f"username = {USER}\npassword = {PASSWORD}\n"
                f"[destination]\ntype = Maildir\npath = {maildir}/\n{user_line}"
                "[options]\nread_all = true\n"
                f"delete = {'false' if keep else 'true'}\n"
                "delivered_to = false\nreceived = false\n"
            )
        for _ in range(_GETMAIL_TRIES):
            log = await self.run_client(
                "getmail", ["--getmaildir", home, "--rcfile", rc], home, check=False
            )
            if not log.startswith(b"exit "):
                break
            # getmail6 forks a child to deliver each message and sets up its
            # SIGCHLD handler only after the fork: a child that finishes
            # first crashes getmail (or leaves it waiting).  That is
            # getmail's race, not ours: start again from an empty Maildir
            # (nothing was deleted on the server without QUIT).
            if not any(sign in log for sign in _GETMAIL_RACE):
                self.fail(f"getmail failed:\n{log!r}")
            for name in os.listdir(os.path.join(maildir, "new")):
                os.unlink(os.path.join(maildir, "new", name))
        else:
            self.fail(f"getmail failed {_GETMAIL_TRIES} times:\n{log!r}")
        received = []
        for name in os.listdir(os.path.join(maildir, "new")):
            with open(os.path.join(maildir, "new", name), "rb") as f:
                data = f.read()
            first, _, rest = data.partition(b"\n")
            self.assertTrue(first.startswith(b"Return-Path: "), first)
            received.append(rest)
        self.assertEqual(sorted(received), sorted(_lf(m) for m in self.messages))
        self.assertEqual(self.left_on_server(), len(self.messages) if keep else 0)

    def test_getmail_pop3s_keep(self) -> None:
        """getmail6 over POP3S, keeping the mail: all of it arrives intact."""
        return Deferred.fromCoroutine(self.getmail(True, True))  # type: ignore[return-value]

    def test_getmail_pop3s_delete(self) -> None:
        """getmail6 over POP3S, deleting: all arrives, the maildrop empties."""
        return Deferred.fromCoroutine(self.getmail(True, False))  # type: ignore[return-value]

    def test_getmail_plain_delete(self) -> None:
        """getmail6 over plain POP3 (plaintext logins allowed), deleting."""
        return Deferred.fromCoroutine(self.getmail(False, False))  # type: ignore[return-value]
