# -*- test-case-name: tests.test_tap -*-
"""The twistd plugin's options and service: ``twistd -n twistedmail``.

This is the application layer: it turns command-line options into
L{Settings}, calls L{twistedmail.service.makeService}, and is the one place
that installs a SIGHUP handler (re-reading the TLS certificate and key).
JSON log lines come from twistd's own option:
``twistd --logger twistedmail.logs.json_observer -n twistedmail``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.cred import strcred
from twisted.python import usage

from twistedmail.config import ConfigError, Settings, load_settings
from twistedmail.service import MailService
from twistedmail.service import makeService as make_mail_service

__all__ = ["Options", "makeService"]


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


def makeService(options: Options, reactor: Any = None) -> MailService:
    """Build the mail service for twistd from parsed L{Options}.

    @param reactor: the reactor (default: the global one, as twistd runs it).
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
    return service
