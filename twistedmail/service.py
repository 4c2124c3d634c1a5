# -*- test-case-name: tests.test_service -*-
"""Service assembly: the whole mail server as one Twisted MultiService.

``makeService(settings, reactor)`` builds every part of the flow from one
L{Settings}: the directory, the cred portal, the TLS context and a listener per
configured role.  The twistd plugin and embedders both call it; nothing here
installs a reactor, signal handlers or log observers, and two services can run
in one process.

Start-up order: listeners bind in C{privilegedStartService} (so a server
started as root can bind port 25 before twistd drops privileges); the
directory opens in C{startService}, and on a first start with an empty
directory a demo account is made (``[server] demo_account``).  ``ready`` fires
when all of that is done.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IResolver,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from twistedmail.aliases.directory import default_mailbox, open_directory
from twistedmail.aliases.expander import AliasExpander, include_reader
from twistedmail.auth.passwords import hash_password
from twistedmail.auth.realm import make_portal
from twistedmail.auth.throttle import LoginThrottle
from twistedmail.config import Settings
from twistedmail.delivery.local import LocalDelivery
from twistedmail.interfaces import IDirectoryAdmin, User
from twistedmail.maildir import MaildirStore
from twistedmail.maildir.watch import make_watcher
from twistedmail.smtp.mx import MXResolver, make_resolver
from twistedmail.smtp.routing import make_router
from twistedmail.spool.dsn import Notifier
from twistedmail.spool.relay import RelayRunner, SMTPTransport
from twistedmail.spool.runner import EntryLocks, QueueRunner
from twistedmail.spool.srs import SRS, SRSExpander, load_secret
from twistedmail.spool.store import Spool
from twistedmail.spool.tools import QueueControlService, control_path
from twistedmail.tls import ServerTLS, make_server_tls

__all__ = ["Components", "ListenerService", "MailService", "makeService"]

log = Logger()

#: Roles whose listeners are implicit TLS (a tcp: description is wrapped).
IMPLICIT_TLS_ROLES = frozenset({"submissions", "pop3s", "imaps"})

DEMO_ACCOUNT_FILE = "demo-account.txt"

#: Threads for file I/O and fsync (spool commits share directory fsyncs, but
#: each message file still needs one: more threads, more commits in flight).
IO_THREADS = 16
#: Threads for password checks (argon2id holds 64 MiB each while it runs).
AUTH_THREADS = 4


@dataclass
class Components:
    """The shared parts every protocol factory is built from.

    Role builders get this and return a protocol factory; tests and embedders
    may read it (for example to add users to the directory).
    """

    settings: Settings
    reactor: Any
    directory: IDirectoryAdmin
    portal: Portal
    throttle: LoginThrottle
    expander: Any
    tls: ServerTLS | None
    store: MaildirStore
    spool: Spool
    local_delivery: LocalDelivery
    run_in_thread: Callable[..., Deferred[Any]]
    pools: list[ThreadPool] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


RoleBuilder = Callable[[Components], IProtocolFactory]


class ListenerService(Service):
    """Listen on one endpoint with one factory, for one role.

    @ivar role: the listener role (``smtp``, ``pop3s``...).
    @ivar port: the listening port once bound, else None.
    """

    def __init__(self, role: str, endpoint: Any, factory: IProtocolFactory) -> None:
        self.role = role
        self.setName(f"listener-{role}")
        self._endpoint = endpoint
        self._factory = factory
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        """Bind the port (before twistd drops privileges, when it does)."""
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """Bind the port unless L{privilegedStartService} did already."""
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening is None:
            self._listening = self._endpoint.listen(self._factory)
            self._listening.addCallback(self._bound)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once bound (fails if binding failed)."""
        if self._listening is None:
            self._listen()
        assert self._listening is not None
        result: Deferred[IListeningPort] = Deferred()

        def bound(port: IListeningPort) -> IListeningPort:
            result.callback(port)
            return port

        def failed(failure: Failure) -> None:
            result.errback(failure)

        self._listening.addCallbacks(bound, failed)
        return result

    def stopService(self) -> Deferred[None] | None:
        """Stop listening; open connections are left to finish."""
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        listening.cancel()
        return None


class MailService(MultiService):
    """The whole server: directory plus one listener per configured role.

    @ivar components: the shared parts (directory, portal, TLS...).
    @ivar ready: fires with None once the directory is open, the demo account
        made when needed and every listener bound; fails if any of it failed.
    """

    def __init__(self, components: Components, roles: dict[str, RoleBuilder]) -> None:
        super().__init__()
        self.components = components
        self.ready: Deferred[None] = Deferred()
        self._listeners: dict[str, ListenerService] = {}
        settings = components.settings
        for role, description in settings.listeners.roles().items():
            builder = roles.get(role)
            if builder is None:
                continue
            factory = builder(components)
            if role in IMPLICIT_TLS_ROLES and description.startswith("tcp"):
                if components.tls is None:
                    raise ValueError(f"role {role} needs TLS")
                factory = components.tls.wrap_implicit(factory)
            endpoint = endpoints.serverFromString(components.reactor, description)
            listener = ListenerService(role, endpoint, factory)
            listener.setServiceParent(self)
            self._listeners[role] = listener
        self.unavailable_roles = sorted(set(settings.listeners.roles()) - set(roles))

    def startService(self) -> None:
        """Open the directory, then the listeners; see L{ready}."""
        settings = self.components.settings
        os.makedirs(settings.server.data_dir, exist_ok=True)
        for pool in self.components.pools:
            pool.start()
        self.components.spool.prepare()
        # Listeners bind at once (privileged phase); the directory opens next.
        for listener in self._listeners.values():
            listener.privilegedStartService()
        d = self.components.directory.start()
        d.addCallback(lambda _: self._ensure_demo_account())
        d.addCallback(lambda _: super(MailService, self).startService())
        d.addCallback(lambda _: Deferred.fromCoroutine(self._wait_listening()))
        d.addCallback(lambda _: self._report())
        d.addBoth(self._fire_ready)

    def _fire_ready(self, result: Any) -> None:
        if isinstance(result, Failure):
            log.failure("Mail service failed to start", result)
            self.ready.errback(result)
        else:
            self.ready.callback(None)

    async def _wait_listening(self) -> None:
        for listener in self._listeners.values():
            await listener.listening()

    def addresses(self) -> dict[str, IAddress]:
        """The bound address of each listening role (after L{ready})."""
        return {
            role: listener.port.getHost()
            for role, listener in self._listeners.items()
            if listener.port is not None
        }

    def stopService(self) -> Deferred[None]:
        """Stop the listeners, then close the directory."""
        if not self.running:
            return succeed(None)
        d: Deferred[Any] = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        await MultiService.stopService(self)
        # Sessions still open keep their listeners but lose the watches.
        self.components.store.stop_watching()
        await self.components.directory.stop()
        for pool in self.components.pools:
            await deferToThreadPool(
                self.components.reactor,
                self.components.reactor.getThreadPool(),
                pool.stop,
            )

    def _ensure_demo_account(self) -> Deferred[None]:
        settings = self.components.settings
        if not settings.server.demo_account:
            return succeed(None)
        return Deferred.fromCoroutine(self._demo_account())

    async def _demo_account(self) -> None:
        directory = self.components.directory
        settings = self.components.settings
        if await directory.list_domains():
            return
        domain = settings.server.hostname.lower()
        address = f"demo@{domain}"
        password = secrets.token_urlsafe(12)
        await directory.add_domain(domain)
        await directory.add_user(
            User(address, hash_password(password), default_mailbox(address))
        )
        path = settings.data_path(DEMO_ACCOUNT_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{address}\n{password}\n")
        log.info(
            "Made demo account {address} in new domain {domain}",
            address=address,
            domain=domain,
        )

    def _report(self) -> None:
        settings = self.components.settings
        log.info("Data folder: {path}", path=os.path.abspath(settings.server.data_dir))
        for role, address in sorted(self.addresses().items()):
            host = getattr(address, "host", "?")
            port = getattr(address, "port", "?")
            log.info(
                "Listening: {role} on {host} port {port}",
                role=role,
                host=host,
                port=port,
            )
        for role in self.unavailable_roles:
            log.warn(
                "Role {role} is configured but not served by this version", role=role
            )
        demo = settings.data_path(DEMO_ACCOUNT_FILE)
        if os.path.exists(demo):
            with open(demo) as f:
                lines = f.read().split("\n")
            if len(lines) >= 2:
                log.info(
                    "Demo account: {address} password {password} (delete {path} to stop "
                    "showing it)",
                    address=lines[0],
                    password=lines[1],
                    path=demo,
                )


def _smtp_role(role: str) -> RoleBuilder:
    def build(c: Components) -> IProtocolFactory:
        from twistedmail.smtp.server import SMTPServerFactory

        return SMTPServerFactory(
            c.settings,
            c.reactor,
            role=role,
            delivery_agent_factory=c.spool.agent,
            expander=c.expander,
            directory=c.directory,
            portal=c.portal,
            throttle=c.throttle,
            tls=c.tls,
        )

    return build


def _lmtp_role(c: Components) -> IProtocolFactory:
    from twistedmail.delivery.lmtp import LMTPDeliveryAgent
    from twistedmail.smtp.server import SMTPServerFactory

    # One agent per message: straight into the Maildirs, one reply per
    # recipient (RFC 2033 §4.2); only what is left over goes to the spool.
    return SMTPServerFactory(
        c.settings,
        c.reactor,
        role="lmtp",
        delivery_agent_factory=lambda: LMTPDeliveryAgent(
            c.spool, c.expander, c.local_delivery
        ),
        expander=c.expander,
        directory=c.directory,
    )


def _pop3_role(role: str) -> RoleBuilder:
    def build(c: Components) -> IProtocolFactory:
        from twistedmail.pop3.server import POP3ServerFactory

        return POP3ServerFactory(
            c.settings,
            c.reactor,
            portal=c.portal,
            throttle=c.throttle,
            store=c.store,
            tls=c.tls,
            implicit_tls=role in IMPLICIT_TLS_ROLES,
        )

    return build


def _imap_role(role: str) -> RoleBuilder:
    def build(c: Components) -> IProtocolFactory:
        from twistedmail.imap.server import IMAPServerFactory

        return IMAPServerFactory(
            c.settings,
            c.reactor,
            portal=c.portal,
            throttle=c.throttle,
            store=c.store,
            tls=c.tls,
            implicit_tls=role in IMPLICIT_TLS_ROLES,
        )

    return build


def default_roles() -> dict[str, RoleBuilder]:
    """The role builders this version serves."""
    roles = {role: _smtp_role(role) for role in ("smtp", "submission", "submissions")}
    roles["lmtp"] = _lmtp_role
    roles.update({role: _imap_role(role) for role in ("imap", "imaps")})
    roles.update({role: _pop3_role(role) for role in ("pop3", "pop3s")})
    return roles


def makeService(
    settings: Settings,
    reactor: Any,
    *,
    directory: IDirectoryAdmin | None = None,
    portal: Portal | None = None,
    roles: dict[str, RoleBuilder] | None = None,
    resolver: IResolver | None = None,
) -> MailService:
    """Build the whole mail server.

    @param settings: the configuration (L{twistedmail.config.load_settings}).
    @param reactor: the reactor to listen and schedule on.
    @param directory: a directory to use instead of the configured backend.
    @param portal: a cred portal to use instead of the directory's.
    @param roles: role builders to use instead of L{default_roles}.
    @param resolver: the DNS resolver for MX lookups (default: from
        C{[dns]}: the configured nameservers or the system's).
    @return: a L{MailService}; add it to an application or start it.
    """
    os.makedirs(settings.server.data_dir, exist_ok=True)
    # Files, fsyncs and argon2 run in pools of their own, started and stopped
    # with the service, so the server never resizes the reactor's pool.
    io_pool = ThreadPool(minthreads=0, maxthreads=IO_THREADS, name="twistedmail-io")
    pools = [io_pool]

    def run_in_thread(
        f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        return deferToThreadPool(reactor, io_pool, f, *args, **kwargs)

    if directory is None:
        directory = open_directory(settings, reactor)
    if portal is None:
        # argon2id holds 64 MiB per check: a small pool bounds that memory.
        auth_pool = ThreadPool(
            minthreads=0, maxthreads=AUTH_THREADS, name="twistedmail-auth"
        )
        pools.append(auth_pool)
        portal = make_portal(directory, settings, reactor, auth_pool)
    throttle = LoginThrottle(
        reactor,
        settings.auth.failure_delay,
        settings.auth.failure_delay_max,
        settings.auth.failure_window,
    )
    tls = make_server_tls(settings) if settings.listeners.roles() else None
    expander: Any = AliasExpander(
        directory, settings.aliases, include_reader(run_in_thread)
    )
    srs = None
    if settings.srs.enabled:
        srs = SRS(
            load_secret(settings),
            settings.srs.domain or settings.server.hostname,
            reactor,
            settings.srs.max_age,
        )
        # Bounces to our SRS addresses are verified and go back to the sender.
        expander = SRSExpander(expander, srs, directory)
    store = MaildirStore(
        settings.data_path("mail"),
        settings.server.hostname,
        reactor,
        run_in_thread,
        watcher=make_watcher(
            reactor, settings.maildir.watch, settings.maildir.poll_interval
        ),
    )
    spool = Spool(settings.data_path(settings.spool.directory), reactor, run_in_thread)
    local = LocalDelivery(
        store, reactor, reactor, settings.delivery, run_in_thread=run_in_thread
    )
    components = Components(
        settings=settings,
        reactor=reactor,
        directory=directory,
        portal=portal,
        throttle=throttle,
        expander=expander,
        tls=tls,
        store=store,
        spool=spool,
        local_delivery=local,
        run_in_thread=run_in_thread,
        pools=pools,
    )
    service = MailService(components, default_roles() if roles is None else roles)

    # Outbound: the relay takes remote recipients from the runner, finds the
    # MX hosts and delivers; the notifier bounces, warns and reports (RFC 3464).
    locks = EntryLocks()
    notifier = Notifier(
        spool,
        reactor,
        settings.server.hostname,
        settings.queue,
        settings.aliases.postmaster,
    )
    mx = MXResolver(resolver or make_resolver(settings.dns, reactor), reactor)
    router = make_router(settings, mx, is_local=directory.is_local_domain)
    runner_box: list[QueueRunner] = []
    relay = RelayRunner(
        spool,
        SMTPTransport(reactor, router),
        reactor,
        notifier,
        locks,
        settings.queue,
        directory=directory,
        rewrite_sender=srs.forward if srs is not None else None,
        kick=lambda queue_id=None: runner_box[0].flush(queue_id),
    )
    runner = QueueRunner(
        spool,
        expander,
        local,
        reactor,
        settings.spool,
        locks=locks,
        settled=relay.settled,
        backoff=relay.backoff,
    )
    runner_box.append(runner)
    runner.setName("queue-runner")
    runner.setServiceParent(service)
    relay.setName("relay")
    relay.setServiceParent(service)
    control = QueueControlService(control_path(settings), reactor, relay)
    control.setName("queue-control")
    control.setServiceParent(service)
    components.extra.update(queue_runner=runner, relay=relay, router=router, srs=srs)
    return service
