# -*- test-case-name: tests.test_smtp_server -*-
"""The ESMTP and LMTP server: the Receive step of the flow, on Twisted.

A thin adapter around the sans-I/O L{SMTPMachine}: it feeds the machine the
peer's bytes, writes the replies the machine hands out, and answers the
machine's questions through the rest of the system:

  - RCPT: local domains go through the alias expander at RCPT time (unknown
    user 550 5.1.1, so spam is refused rather than bounced); other domains
    are relayed only for authenticated users and trusted networks.
  - MAIL on the submission roles: the sender must be the authenticated user
    or an address that expands to that user (553 5.7.1 otherwise).
  - AUTH: L{twistedmail.auth.throttle.login} through the portal.
  - RCPT of the bare ``<Postmaster>`` (RFC 5321 §4.5.1: always accepted,
    no domain): it goes to ``postmaster@<hostname>`` when the hostname is a
    local domain (the alias expander then picks the configured postmaster or
    the domain's built-in postmaster mailbox), otherwise to the configured
    C{[aliases] postmaster}, otherwise to ``postmaster@`` the first local
    domain (sorted); with no local domain at all it gets 451 4.3.5.  The
    envelope recipient is rewritten to that address before the agent sees it.
  - The message: a Received: trace header (RFC 5321 §4.4, RFC 3848 ``with``
    keyword, TLS version and cipher, the agent's queue id when it has one)
    and then the text are streamed into a fresh L{IDeliveryAgent};
    ``250 2.0.0 OK queued as <id>`` is sent only after C{commit()} fires.

Roles: C{smtp} (MX; AUTH only when C{[smtp] mx_auth}), C{submission} (AUTH
required before MAIL, TLS before AUTH), C{submissions} (the same, for a
listener wrapped in implicit TLS by the service) and C{lmtp} (RFC 2033).

Timeouts run on the injected clock: C{command_timeout} between commands and
C{data_timeout} for a whole message counted from its start (so a client that
dribbles bytes cannot hold the connection), both answered with 421 4.4.2.
Connections beyond C{max_connections}, or C{max_connections_per_ip} from one
address, get 421 4.7.0 at once.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import re
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from twistedmail.address import Address, AddressError, normalize_domain
from twistedmail.aliases.expander import AliasExpander, LocalMailbox
from twistedmail.auth.throttle import LoginThrottle, login
from twistedmail.config import Settings
from twistedmail.interfaces import (
    IDeliveryAgent,
    IDirectory,
    IPerRecipientDeliveryAgent,
    ISubmissionSender,
    Recipient,
)
from twistedmail.logs import (
    FastLogger,
    log_connection_closed,
    log_connection_opened,
    new_session_id,
    preformatted,
)
from twistedmail.replies import MailError, Reply
from twistedmail.sending import send_buffered_now
from twistedmail.smtp._machine import (
    AuthRequested,
    BodyReceived,
    CloseRequested,
    Event,
    MachineConfig,
    MailRequested,
    MessageAborted,
    MessageCompleted,
    MessageStarted,
    RcptRequested,
    Refused,
    Session,
    SMTPMachine,
    TLSRequested,
    VrfyRequested,
)
from twistedmail.tls import ServerTLS

__all__ = ["ROLES", "SMTPServerFactory", "SMTPServerProtocol", "received_header"]

#: The listener roles this module serves.
ROLES = frozenset({"smtp", "submission", "submissions", "lmtp"})

SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RELAY_DENIED = Reply(550, "5.7.1", "Relay access denied")
NOT_YOUR_SENDER = Reply(
    553, "5.7.1", "Sender address not owned by the authenticated user"
)
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
VRFY_OK = Reply(250, "2.1.5", "OK")
NO_POSTMASTER = Reply(451, "4.3.5", "No postmaster mailbox configured")

_HELO_TOKEN = re.compile(r"[A-Za-z0-9.\-_:\[\]]{1,255}\Z")

_log = FastLogger()

#: The attributes of Twisted's TCP transport that L{SMTPServerProtocol}
#: reads to decide whether a reply may go straight to the socket.
_DIRECT_SEND_STATE = (
    "TLS",
    "dataBuffer",
    "_tempDataBuffer",
    "connected",
    "disconnecting",
    "_writeDisconnected",
    "socket",
)


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    session_id: str,
    tls: str | None,
    recipients: list[str],
    when: float,
    queue_id: str | None = None,
) -> bytes:
    """The Received: trace header to prepend (RFC 5321 §4.4), CRLF ended.

    @param protocol: the RFC 3848 ``with`` keyword (ESMTPSA and so on).
    @param tls: e.g. ``TLSv1.3 TLS_AES_256_GCM_SHA384``, stated as a comment.
    @param recipients: a ``for`` clause is added for exactly one recipient
        (more would disclose the other recipients).
    @param queue_id: the id the message gets in our queue; the ``id`` clause
        names it (so a trace header leads to the queue entry and the log),
        or the session id when the agent has no queue id.
    """
    name = helo if _HELO_TOKEN.match(helo) else "unknown"
    literal = _address_literal(client_ip)
    date = _date_header(int(when))
    lines = [
        f"Received: from {name} ({literal})",
        f"\tby {hostname} (twistedmail) with {protocol}" + (f" ({tls})" if tls else ""),
        f"\tid {queue_id or session_id}",
    ]
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>")
    lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


@functools.lru_cache(maxsize=256)
def _address_literal(client_ip: str) -> str:
    """The address literal of a client IP for the trace header (RFC 5321
    §4.1.3); cached, since busy clients come back again and again."""
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        return "[unknown]"
    return f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"


@functools.lru_cache(maxsize=4)
def _date_header(second: int) -> str:
    """An RFC 5322 date-time in UTC; cached, since every message arriving
    in the same second has the same one and formatting dates is slow."""
    return email.utils.format_datetime(datetime.fromtimestamp(second, UTC))


def _peer_ip(peer: IAddress | None) -> str:
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else ""


class SMTPServerProtocol(Protocol):
    """One SMTP, submission or LMTP connection; see the module docstring."""

    factory: SMTPServerFactory

    def __init__(self, factory: SMTPServerFactory) -> None:
        self.factory = factory
        self.session_id = new_session_id()
        self._machine: SMTPMachine | None = None
        self._agent: IDeliveryAgent | None = None
        self._agent_broken = False
        self._counted = False
        self._closed = False
        self._close_reason = ""
        self._wrote = False
        self._command_timer: Any = None
        self._data_timer: Any = None
        self._logouts: list[Callable[[], None]] = []
        self._peer = ""
        self._peer_address: IAddress | None = None
        self._direct = False
        # The transaction's bare <Postmaster>: (the machine's address for it,
        # the address it is delivered to).
        self._postmaster: tuple[str, Address] | None = None

    @property
    def _transport(self) -> Any:
        # Any: the transport may be TCP, TLS (getHandle) or startTLS-capable.
        assert self.transport is not None
        return self.transport

    # Twisted's side.

    def connectionMade(self) -> None:
        """Greet the client, or refuse it when the limits are reached."""
        f = self.factory
        peer = self._peer_address = self._transport.getPeer()
        self._peer = _peer_ip(peer)
        log_connection_opened(_log, f.role, peer, self.session_id)
        refusal = f.connection_opened(self._peer)
        if refusal is not None:
            self._close_reason = "too many connections"
            self._closed = True
            self._transport.write(refusal.to_bytes())
            self._transport.loseConnection()
            return
        self._counted = True
        self._direct = self._can_send_direct(self.transport)
        tls_active = ISSLTransport.providedBy(self._transport)
        self._machine = SMTPMachine(
            f.machine_config(tls_active),
            Session(peer=self._peer, tls_active=tls_active),
        )
        self._machine.greet("LMTP ready" if f.role == "lmtp" else "ESMTP ready")
        self._flush()
        self._send_now()

    def dataReceived(self, data: bytes) -> None:
        """Feed the machine."""
        if self._machine is None or self._closed:
            return
        self._run(self._machine.receive_data(data))

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Abort any message in flight and release the connection's slot."""
        self._cancel_timers()
        if self._machine is not None:
            self._closed = True
            self._run(self._machine.connection_lost())
        self._closed = True
        self._abort_agent()
        for logout in self._logouts:
            logout()
        if self._counted:
            self.factory.connection_closed(self._peer)
            self._counted = False
        peer = self._peer_address
        log_connection_closed(
            _log,
            self.factory.role,
            self._transport.getPeer() if peer is None else peer,
            self.session_id,
            self._close_reason or "connection lost",
        )

    # The machine's side.

    def _run(self, events: Iterable[Event]) -> None:
        machine = self._machine
        assert machine is not None
        queue = list(events)
        queue.reverse()
        while queue:
            event = queue.pop()
            decision = self._dispatch(event)
            if decision is None:
                continue
            if isinstance(decision, list):
                queue.extend(reversed(decision))
                continue
            box: list[list[Event]] = []
            waiting = [True]

            def resumed(
                evs: list[Event], box: list[list[Event]] = box, w: list[bool] = waiting
            ) -> None:
                if w[0]:
                    box.append(evs)
                else:
                    self._run(evs)

            decision.addCallback(resumed)
            decision.addErrback(self._log_failure)
            waiting[0] = False
            if box:
                queue.extend(reversed(box[0]))
        self._flush()
        self._send_now()
        self._update_timers()

    def _decide(
        self, decision: Coroutine[Any, Any, list[Event]]
    ) -> Deferred[list[Event]] | list[Event]:
        """Run a decision; its events at once when it needs no waiting.

        Most decisions await Deferreds that have fired already (an
        in-memory directory, a cached message), so the first step usually
        finishes the coroutine; only one that has to wait is handed to
        L{Deferred.fromCoroutine}, which resumes it where it stopped.
        """
        try:
            decision.send(None)
        except StopIteration as done:
            events: list[Event] = done.value
            return events
        except Exception:
            self._log_failure(Failure())
            return []
        return Deferred.fromCoroutine(decision)

    def _dispatch(self, event: Event) -> Deferred[list[Event]] | list[Event] | None:
        if isinstance(event, MailRequested):
            return self._decide(self._decide_mail(event))
        if isinstance(event, RcptRequested):
            return self._decide(self._decide_rcpt(event))
        if isinstance(event, AuthRequested):
            return self._decide(self._decide_auth(event))
        if isinstance(event, VrfyRequested):
            return self._decide(self._decide_vrfy(event))
        if isinstance(event, MessageCompleted):
            return self._decide(self._commit(event))
        if isinstance(event, MessageStarted):
            self._start_agent(event)
        elif isinstance(event, BodyReceived):
            self._feed_agent(event.data)
        elif isinstance(event, MessageAborted):
            self._abort_agent()
        elif isinstance(event, TLSRequested):
            self._start_tls()
        elif isinstance(event, CloseRequested):
            self._flush()
            self._close_reason = self._close_reason or "closed by server"
            self._closed = True
            self._cancel_timers()
            self._transport.loseConnection()
        elif isinstance(event, Refused):
            _log.debug(
                "refused: session={session} reply={reply} reason={reason}",
                session=self.session_id,
                reply=str(event.reply),
                reason=event.reason,
            )
        return None

    def _flush(self) -> None:
        if self._machine is None:
            return
        data = self._machine.data_to_send()
        if data:
            rest = self._send_direct(data)
            if rest:
                self._wrote = True
                self._transport.write(rest)
            self._restart_command_timer()

    def _send_direct(self, data: bytes) -> bytes:
        """Send straight to the socket what it takes now; return the rest.

        Going through C{transport.write} costs two C{epoll_ctl} calls per
        reply (start, then stop, watching for writability) and a trip
        through Twisted's write path, for replies that almost always fit in
        the socket buffer at once.  So on a plain TCP connection (not TLS,
        not closing) with nothing queued in the transport, the reply goes
        to C{socket.send} directly; whatever the socket does not take (or
        everything, on any error, for the transport to find and report)
        goes the usual way, behind nothing, so the order is kept.
        """
        if not self._direct:
            return data
        t = self._transport
        if (
            t.TLS
            or t.dataBuffer
            or t._tempDataBuffer
            or not t.connected
            or t.disconnecting
            or t._writeDisconnected
            or t.socket is None
        ):
            return data
        try:
            sent = t.socket.send(data)
        except OSError:
            return data
        return data[sent:]

    @staticmethod
    def _can_send_direct(transport: object) -> bool:
        """Whether replies may go straight to this transport's socket: a
        plain TCP server connection with all of Twisted's state that
        L{_send_direct} reads (should a later Twisted rename any of it,
        every reply takes the usual path)."""
        return type(transport) is tcp.Server and all(
            hasattr(transport, name) for name in _DIRECT_SEND_STATE
        )

    def _send_now(self) -> None:
        """Hand what was written since the last call to the socket now, not
        on the reactor's next turn (L{send_buffered_now})."""
        if not self._wrote:
            return
        self._wrote = False
        send_buffered_now(self._transport)

    def _answer(
        self, reply: Reply, *, auth_user: str | None = None, reset: bool = False
    ) -> list[Event]:
        if self._closed or self._machine is None or not self._machine.pending:
            return []
        return self._machine.answer(reply, auth_user=auth_user, reset=reset)

    def _internal_error(self, what: str, failure: Failure | None = None) -> Reply:
        _log.failure(
            "internal error in {what}: session={session}",
            failure,
            what=what,
            session=self.session_id,
        )
        return Reply(451, "4.3.0", f"Internal error (session {self.session_id})")

    def _log_failure(self, failure: Failure) -> None:
        self._internal_error("SMTP session", failure)

    # Decisions.

    async def _decide_mail(self, event: MailRequested) -> list[Event]:
        self._postmaster = None
        try:
            reply = await self.factory.check_sender(
                event.command.sender, self._session()
            )
        except MailError as e:
            reply = e.reply
        except Exception:
            return self._answer(self._internal_error("MAIL"), reset=True)
        return self._answer(reply)

    async def _decide_rcpt(self, event: RcptRequested) -> list[Event]:
        try:
            if event.command.recipient is None:
                target = await self.factory.postmaster_address()
                if target is None:
                    return self._answer(NO_POSTMASTER)
                self._postmaster = (str(event.address), target)
                return self._answer(RECIPIENT_OK)
            reply = await self.factory.check_recipient(event.address, self._session())
        except MailError as e:
            reply = e.reply
        except Exception:
            return self._answer(self._internal_error("RCPT"))
        return self._answer(reply)

    async def _decide_vrfy(self, event: VrfyRequested) -> list[Event]:
        try:
            address = Address.parse(event.argument.strip("<>"), utf8=True)
        except ValueError:
            return self._answer(Reply(252, "2.5.0", "Cannot VRFY that"))
        try:
            reply = await self.factory.check_recipient(address, self._session())
        except Exception:
            return self._answer(self._internal_error("VRFY"))
        if reply.code == 250:
            reply = Reply(250, "2.1.5", f"<{address}>")
        return self._answer(reply)

    async def _decide_auth(self, event: AuthRequested) -> list[Event]:
        f = self.factory
        if f.portal is None or f.throttle is None:
            return self._answer(AUTH_TEMPORARY)
        try:
            iface, avatar, logout = await login(
                f.portal,
                f.throttle,
                protocol="smtp",
                client_ip=self._peer,
                username=event.username,
                password=event.password,
                interface=ISubmissionSender,
                session_id=self.session_id,
                log=_log,
            )
        except UnauthorizedLogin:
            return self._answer(AUTH_FAILED)
        except Exception:
            # login() has logged it already.
            return self._answer(AUTH_TEMPORARY)
        self._logouts.append(logout)
        user = ISubmissionSender(avatar).user
        return self._answer(AUTH_OK, auth_user=user.address)

    def _session(self) -> Session:
        assert self._machine is not None
        return self._machine.session

    # The delivery agent.

    def _start_agent(self, event: MessageStarted) -> None:
        machine = self._machine
        assert machine is not None
        self._agent_broken = False
        try:
            recipients = self._rewrite_postmaster(event.envelope.recipients)
            # The recipients are handed over one by one, as IDeliveryAgent
            # says; an envelope holding them too would list each twice.
            envelope = replace(
                event.envelope,
                recipients=(),
                tls=self._tls_description(),
                received_at=self.factory.reactor.seconds(),
            )
            agent = self._agent = self.factory.delivery_agent_factory()
            agent.start(envelope)
            for r in recipients:
                agent.add_recipient(r)
            queue_id = getattr(agent, "queue_id", None)
            agent.body(
                received_header(
                    helo=envelope.client_name,
                    client_ip=envelope.client_address,
                    hostname=self.factory.settings.server.hostname,
                    protocol=envelope.protocol,
                    session_id=self.session_id,
                    tls=envelope.tls,
                    recipients=[r.address for r in recipients],
                    when=envelope.received_at,
                    queue_id=queue_id if isinstance(queue_id, str) else None,
                )
            )
        except Exception:
            self._agent_failed("starting delivery")

    def _rewrite_postmaster(
        self, recipients: tuple[Recipient, ...]
    ) -> tuple[Recipient, ...]:
        """Give the bare <Postmaster> the address it is delivered to."""
        if self._postmaster is None:
            return recipients
        machine_form, target = self._postmaster
        return tuple(
            replace(r, address=str(target)) if r.address == machine_form else r
            for r in recipients
        )

    def _feed_agent(self, data: bytes) -> None:
        if self._agent is None or self._agent_broken:
            return
        try:
            self._agent.body(data)
        except Exception:
            self._agent_failed("writing the message")

    def _agent_failed(self, what: str) -> None:
        _log.failure(
            "delivery agent failed {what}: session={session}",
            what=what,
            session=self.session_id,
        )
        self._agent_broken = True
        self._abort_agent()

    def _abort_agent(self) -> None:
        agent, self._agent = self._agent, None
        if agent is not None:
            try:
                agent.abort()
            except Exception:
                _log.failure(
                    "delivery agent abort failed: session={session}",
                    session=self.session_id,
                )

    async def _commit(self, event: MessageCompleted) -> list[Event]:
        agent, self._agent = self._agent, None
        lmtp = self.factory.role == "lmtp"
        internal = Reply(451, "4.3.0", f"Internal error (session {self.session_id})")
        if agent is None or self._agent_broken:
            return self._answer_message([internal] * event.recipients, lmtp)
        try:
            if lmtp and IPerRecipientDeliveryAgent.providedBy(agent):
                replies = await agent.commit_each()
                if len(replies) != event.recipients:
                    raise ValueError("commit_each gave the wrong number of replies")
            else:
                queue_id = await agent.commit()
                replies = [
                    Reply(250, "2.0.0", f"OK queued as {queue_id}")
                ] * event.recipients
                _log.info(
                    preformatted(
                        f"message accepted: session={self.session_id}"
                        f" id={queue_id} recipients={event.recipients}"
                    ),
                    session=self.session_id,
                    queue_id=queue_id,
                    n=event.recipients,
                )
        except MailError as e:
            _log.info(
                "message refused: session={session} reason={reason}",
                session=self.session_id,
                reason=e.reason,
            )
            replies = [e.reply] * event.recipients
        except Exception:
            replies = [self._internal_error("commit")] * event.recipients
        return self._answer_message(replies, lmtp)

    def _answer_message(self, replies: list[Reply], lmtp: bool) -> list[Event]:
        if self._closed or self._machine is None or not self._machine.pending:
            return []
        if lmtp:
            return self._machine.answer_each(replies)
        return self._machine.answer(replies[0])

    # TLS.

    def _start_tls(self) -> None:
        tls = self.factory.tls
        assert tls is not None and self._machine is not None
        self._flush()
        self._transport.startTLS(tls.connection_creator())
        self._run(self._machine.tls_started())

    def _tls_description(self) -> str | None:
        if not ISSLTransport.providedBy(self.transport):
            return None
        try:
            conn = self._transport.getHandle()
            version = conn.get_protocol_version_name()
            cipher = conn.get_cipher_name()
        except Exception:
            return "TLS"
        return f"{version} {cipher}" if version and cipher else "TLS"

    # Timers.

    def _cancel_timers(self) -> None:
        for name in ("_command_timer", "_data_timer"):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)

    def _restart_command_timer(self) -> None:
        if self._closed:
            return
        if self._command_timer is not None and self._command_timer.active():
            self._command_timer.reset(self.factory.smtp.command_timeout)
        else:
            self._command_timer = self.factory.reactor.callLater(
                self.factory.smtp.command_timeout, self._timed_out, "command timeout"
            )

    def _update_timers(self) -> None:
        machine = self._machine
        if machine is None or self._closed:
            return
        if machine.in_message:
            if self._data_timer is None:
                self._data_timer = self.factory.reactor.callLater(
                    self.factory.smtp.data_timeout, self._timed_out, "data timeout"
                )
        elif self._data_timer is not None:
            if self._data_timer.active():
                self._data_timer.cancel()
            self._data_timer = None
        if self._command_timer is None:
            self._restart_command_timer()

    def _timed_out(self, why: str) -> None:
        machine = self._machine
        if machine is None or self._closed:
            return
        if why == "command timeout":
            self._command_timer = None
            if machine.in_message:
                return  # the data timer is in charge
        else:
            self._data_timer = None
        if machine.pending:
            # We are the slow one; give the decision time, then look again.
            timer = self.factory.reactor.callLater(
                self.factory.smtp.command_timeout, self._timed_out, why
            )
            if why == "command timeout":
                self._command_timer = timer
            else:
                self._data_timer = timer
            return
        self._close_reason = why
        hostname = self.factory.settings.server.hostname
        self._run(
            machine.close(
                Reply(421, "4.4.2", f"{hostname} Timeout, closing connection")
            )
        )


class SMTPServerFactory(Factory):
    """Builds L{SMTPServerProtocol}s for one listener role.

    @param settings: the whole configuration (C{[smtp]}, C{[server]}).
    @param reactor: the clock for timeouts and trace header dates.
    @param role: ``smtp``, ``submission``, ``submissions`` or ``lmtp``.
    @param delivery_agent_factory: makes one agent per message.
    @param expander: checks local recipients at RCPT time.
    @param directory: says which domains are local.
    @param portal: for AUTH; without one AUTH is not offered.
    @param throttle: the login back-off (needed with a portal).
    @param tls: for STARTTLS; without one STARTTLS is not offered.
    @param trusted_networks: CIDR networks allowed to relay without AUTH,
        added to C{[smtp] trusted_networks}.
    """

    # One log line per connection comes from the protocol; no "Starting factory".
    noisy = False

    protocol = SMTPServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        settings: Settings,
        reactor: IReactorTime,
        *,
        role: str,
        delivery_agent_factory: Callable[[], IDeliveryAgent],
        expander: AliasExpander,
        directory: IDirectory,
        portal: Portal | None = None,
        throttle: LoginThrottle | None = None,
        tls: ServerTLS | None = None,
        trusted_networks: Iterable[str] = (),
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown SMTP role {role!r}")
        self.settings = settings
        self.smtp = settings.smtp
        self.reactor = reactor
        self.role = role
        self.delivery_agent_factory = delivery_agent_factory
        self.expander = expander
        self.directory = directory
        self.portal = portal
        self.throttle = throttle
        self.tls = tls
        self.trusted_networks = tuple(
            ipaddress.ip_network(n, strict=False)
            for n in (*settings.smtp.trusted_networks, *trusted_networks)
        )
        self.connections = 0
        self._per_ip: dict[str, int] = {}
        self._machine_configs: dict[bool, MachineConfig] = {}

    def buildProtocol(self, addr: IAddress | None) -> SMTPServerProtocol:  # type: ignore[override]
        """A protocol for one connection."""
        return SMTPServerProtocol(self)

    def machine_config(self, tls_active: bool) -> MachineConfig:
        """The protocol options for this role (made once; the settings do
        not change while the factory lives)."""
        config = self._machine_configs.get(tls_active)
        if config is None:
            config = self._machine_configs[tls_active] = self._make_config()
        return config

    def _make_config(self) -> MachineConfig:
        s = self.smtp
        submission = self.role in ("submission", "submissions")
        can_auth = self.portal is not None and self.throttle is not None
        return MachineConfig(
            hostname=self.settings.server.hostname,
            lmtp=self.role == "lmtp",
            max_message_size=s.max_message_size,
            max_recipients=s.max_recipients,
            max_errors=s.max_errors,
            bare_line_endings=s.bare_line_endings,
            vrfy=s.vrfy,
            starttls=self.tls is not None and self.role != "lmtp",
            auth=can_auth and (submission or (self.role == "smtp" and s.mx_auth)),
            auth_plaintext=s.allow_plaintext_auth,
            auth_required=submission,
        )

    # Connection limits.

    def connection_opened(self, ip: str) -> Reply | None:
        """Count a new connection; the refusal when over a limit."""
        if (
            self.connections >= self.smtp.max_connections
            or self._per_ip.get(ip, 0) >= self.smtp.max_connections_per_ip
        ):
            return TOO_MANY_CONNECTIONS
        self.connections += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return None

    def connection_closed(self, ip: str) -> None:
        """Release a counted connection."""
        self.connections -= 1
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    # Policy.

    def is_trusted(self, ip: str) -> bool:
        """Whether a client address is in a trusted (relaying) network."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_networks)

    async def check_sender(self, sender: Address | None, session: Session) -> Reply:
        """The reply to MAIL FROM (after the machine's own checks).

        On the submission roles the sender must be the authenticated user or
        an address that expands to that user's mailbox.
        """
        if self.role not in ("submission", "submissions"):
            return SENDER_OK
        user = session.auth_user
        if user is None or sender is None:
            return NOT_YOUR_SENDER
        if sender.key == user.lower():
            return SENDER_OK
        if not await self.directory.is_local_domain(sender.domain):
            return NOT_YOUR_SENDER
        expansion = await self.expander.expand(sender)
        for d in expansion.destinations:
            if isinstance(d, LocalMailbox) and d.key == user.lower():
                return SENDER_OK
        return NOT_YOUR_SENDER

    async def postmaster_address(self) -> Address | None:
        """Where mail to the bare ``<Postmaster>`` goes (RFC 5321 §4.5.1).

        ``postmaster@<hostname>`` when the hostname is a local domain (the
        expander resolves it to the configured postmaster or the built-in
        mailbox); else C{[aliases] postmaster} when set; else
        ``postmaster@`` the first local domain; None with no local domain.
        """
        try:
            hostname = normalize_domain(self.settings.server.hostname)
        except AddressError:
            hostname = self.settings.server.hostname.lower()
        own = Address("postmaster", hostname)
        if await self.directory.is_local_domain(own.domain):
            return own
        configured = self.settings.aliases.postmaster
        if configured:
            return Address.parse(configured, utf8=True)
        domains = await self.directory.list_domains()
        if domains:
            return Address("postmaster", domains[0])
        return None

    async def check_recipient(self, address: Address, session: Session) -> Reply:
        """The reply to RCPT TO (after the machine's own checks).

        Local domains: the alias expander's verdict.  Other domains: relayed
        only for authenticated users and trusted networks, never on LMTP.
        (The bare ``<Postmaster>`` does not come here: see
        L{postmaster_address}.)
        """
        if await self.directory.is_local_domain(address.domain):
            expansion = await self.expander.expand(address)
            return expansion.rcpt_reply() or RECIPIENT_OK
        if self.role != "lmtp" and (
            session.auth_user is not None or self.is_trusted(session.peer)
        ):
            return RECIPIENT_OK
        return RELAY_DENIED
