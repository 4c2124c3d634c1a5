"""Test helpers for tests that drive the assembled service with a real
client program (swaks, msmtp): the service with two users on loopback."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.flow_helpers import start_instance
from twistedmail.aliases.directory import MemoryDirectory
from twistedmail.auth.passwords import hash_password
from twistedmail.config import ListenerSettings, ServerSettings, Settings
from twistedmail.interfaces import User
from twistedmail.service import MailService

__all__ = ["DOMAIN", "PASSWORD", "start_service"]

DOMAIN = "example.test"
PASSWORD = "correct horse battery"
_LOOPBACK = "tcp:port=0:interface=127.0.0.1"


async def start_service(
    case: TestCase, data: str, roles: tuple[str, ...]
) -> tuple[MailService, dict[str, int]]:
    """Start the service for C{DOMAIN} with bob (who logs in with
    C{PASSWORD}) and carol (no password), the given roles listening on
    127.0.0.1 port 0; it stops at the test's cleanup.

    @return: the service and each role's port.
    """
    settings = Settings(
        server=ServerSettings(
            hostname="mx.example.test", data_dir=data, demo_account=False
        ),
        listeners=ListenerSettings.only(**{role: _LOOPBACK for role in roles}),
    )
    directory = MemoryDirectory(
        (DOMAIN,),
        (
            User(f"bob@{DOMAIN}", hash_password(PASSWORD), f"{DOMAIN}/bob"),
            User(f"carol@{DOMAIN}", "", f"{DOMAIN}/carol"),
        ),
    )
    instance = await start_instance(case, reactor, settings, directory)
    return instance.service, instance.ports
