# -*- test-case-name: tests.test_tap -*-
"""The twistd plugin's options and service: ``twistd -n twistedmail``.

This is the application layer: it turns command-line options into
L{Settings}, calls L{twistedmail.service.makeService}, and is the one place
that installs a SIGHUP handler (re-reading the TLS certificate and key).
JSON log lines come from twistd's own option:
``twistd --logger twistedmail.logs.json_observer -n twistedmail``.

The text log: where twistd would write its usual text log (C{--logfile},
or standard output with C{-n}), the plugin hands twistd a
L{TextLogObserver} on the same file instead, through the application's
C{ILogObserver} component (twistd's documented hook): the same lines, at a
fraction of the CPU per line.  It opens the file as twistd would (a
C{LogFile} rotated at 1 MB, SIGUSR1 rotating it when nothing else handles
that signal).  With C{--logger} or C{--syslog}, twistd's choice stands.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from typing import IO, Any

from twisted.application.service import IServiceCollection, MultiService
from twisted.cred import strcred
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from twistedmail.config import ConfigError, Settings, load_settings
from twistedmail.logs import TextLogObserver
from twistedmail.service import MailService
from twistedmail.service import makeService as make_mail_service

__all__ = ["Options", "TwistdService", "makeService", "text_log_observer"]


class Options(usage.Options, strcred.AuthOptionMixin):
    """Options for ``twistd twistedmail``."""

    synopsis = "[options]"
    longdesc = (
        "Run the twistedmail mail server (ESMTP, submission, POP3, IMAP) on the "
        "configured listeners. With no --config the embedded defaults apply: "
        "SQLite directory and Maildir under ./var, loopback ports, a self-signed "
        "certificate and a demo account."
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            "The TOML configuration file (default: none, built-in defaults).",
        ],
        ["data-dir", "d", None, "Overrides [server] data_dir."],
        ["hostname", None, None, "Overrides [server] hostname."],
    ]
    # Checkers from --auth are added to the directory's checker; they must
    # give avatar IDs that are address keys in the directory.
    supportedInterfaces = ()

    settings: Settings

    def postOptions(self) -> None:
        """Load and check the configuration; a bad one stops twistd here."""
        try:
            settings = load_settings(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        server = settings.server
        if self["data-dir"]:
            server = dataclasses.replace(server, data_dir=self["data-dir"])
        if self["hostname"]:
            server = dataclasses.replace(server, hostname=self["hostname"])
        self.settings = dataclasses.replace(settings, server=server)


class TwistdService(MultiService):
    """What twistd runs: the mail service, and the log observer for twistd.

    @ivar mail: the L{MailService}.
    @ivar log_observer: set as the application's C{ILogObserver} component
        when the service joins it, so twistd logs through it; L{None} leaves
        twistd's own.
    """

    def __init__(self, mail: MailService, log_observer: ILogObserver | None) -> None:
        super().__init__()
        self.mail = mail
        self.log_observer = log_observer
        mail.setServiceParent(self)

    def setServiceParent(self, parent: IServiceCollection) -> None:
        """Join C{parent}; on a twistd application, offer the log observer."""
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)


def text_log_observer(options: Options, reactor: Any) -> ILogObserver | None:
    """A L{TextLogObserver} on the file twistd would write its text log to.

    Reads twistd's own options (the parent of ours): C{--logfile} (C{-} is
    standard output) and C{-n}.  L{None} when twistd's choice must stand:
    not run by twistd, C{--logger}, C{--syslog}, or C{--logfile -} without
    C{-n} (twistd refuses that).

    @param reactor: rotates the file on SIGUSR1, as twistd does.
    """
    twistd = getattr(options, "parent", None)
    if not isinstance(twistd, usage.Options) or "nodaemon" not in twistd:
        return None
    if twistd.get("logger") or twistd.get("syslog"):
        return None
    name, nodaemon = twistd.get("logfile"), twistd.get("nodaemon")
    out: IO[Any]
    if name == "-" or (nodaemon and not name):
        if not nodaemon:
            return None
        out = sys.stdout
    else:
        log_file = LogFile.fromFullPath(name or "twistd.log")
        if not signal.getsignal(signal.SIGUSR1):

            def rotate(signum: int, frame: object) -> None:
                reactor.callFromThread(log_file.rotate)

            signal.signal(signal.SIGUSR1, rotate)
        out = log_file
    return TextLogObserver(out)


def makeService(options: Options, reactor: Any = None) -> TwistdService:
    """Build the mail service for twistd from parsed L{Options}.

    @param reactor: the reactor (default: the global one, as twistd runs it).
    @return: the L{MailService} (as C{.mail}) in a L{TwistdService} that
        gives twistd the text log observer (L{text_log_observer}).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    service = make_mail_service(options.settings, reactor)
    for checker in options.get("credCheckers", []):
        service.components.portal.registerChecker(checker)
    tls = service.components.tls
    if tls is not None:
        from twistedmail.tls import install_sighup_reload

        install_sighup_reload(reactor, tls.reload)

    def failed(failure: Any) -> None:
        # twistd has no other way to hear that start-up failed.
        if reactor.running:
            reactor.stop()

    service.ready.addErrback(failed)
    return TwistdService(service, text_log_observer(options, reactor))
