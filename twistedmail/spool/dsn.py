# -*- test-case-name: tests.test_dsn -*-
"""Delivery status notifications (RFC 3464): bounces, delay warnings and
success reports.

Step of the flow: after an attempt (local by the
L{twistedmail.spool.runner.QueueRunner}, remote by the
L{twistedmail.spool.relay.RelayRunner}) L{Notifier.settle} looks at an
entry's recipient records and tells the sender what happened:

 - ``failed`` records (a permanent failure, or a temporary one that outlived
   ``[queue] max_lifetime``) get a bounce, and are then marked ``bounced``;
 - ``deferred`` local records and ``remote`` records that failed for now get
   one delay warning once the message has waited ``[queue] delay_warning``
   seconds (recorded as ``notice:delay`` in the record's ``done`` list);
 - ``delivered`` records whose NOTIFY asks for SUCCESS get a success report
   (``notice:success``): ``delivered`` for local deliveries, ``relayed``
   for mail handed to a server that does not offer DSN (the relay records
   ``notice:success`` itself when the server offers DSN: NOTIFY was passed
   on and the report is that server's business).

NOTIFY (RFC 3461 §4.1) is honoured per recipient: NEVER sends nothing;
an explicit list sends only what it names; no NOTIFY means FAILURE and
DELAY.  ENVID becomes ``Original-Envelope-Id`` and ORCPT
``Original-Recipient``.

Each notice is a ``multipart/report; report-type=delivery-status`` message
(RFC 6522) from the null sender ``<>`` with ``Auto-Submitted:
auto-replied`` (RFC 3834 §5): a human-readable part, a
``message/delivery-status`` part and the original message as RET asks:
``RET=FULL`` returns the whole message (``message/rfc822``) unless it is
larger than L{MAX_FULL_RETURN}; ``RET=HDRS`` returns the header only
(``text/rfc822-headers``); without RET the whole message is returned when it
is at most L{DEFAULT_FULL_RETURN} bytes, the header otherwise.  Binary
(BINARYMIME) messages are always returned as their header.

The notice is written into the spool through its delivery agent (so it is
as durable as any accepted message) before the records are marked; a crash
between the two sends it again on restart (at least once, never lost).

Mail from the null sender is never bounced (RFC 5321 §4.5.5, RFC 3464 §2):
its failures go once to the postmaster as a "double bounce" (itself from
``<>``); when a message from ``<>`` to the postmaster fails, it is dropped
with a log line, which ends any loop.
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twistedmail.address import Address, AddressError
from twistedmail.config import QueueSettings
from twistedmail.interfaces import Envelope, Recipient
from twistedmail.replies import Reply
from twistedmail.spool.store import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    FAILED,
    REMOTE,
    QueueEntry,
    RecipientRecord,
    Spool,
)

__all__ = [
    "DEFAULT_FULL_RETURN",
    "DELAYED",
    "DELIVERED_ACTION",
    "EXPIRED",
    "FAILED_ACTION",
    "MAX_FULL_RETURN",
    "NOTICE_DELAY",
    "NOTICE_SUCCESS",
    "Notifier",
    "RELAYED",
    "RecipientReport",
    "Report",
    "build_report",
    "remote_mta",
    "remote_reason",
    "wants",
    "xtext_decode",
]

log = Logger()

#: Without RET, messages up to this size are returned whole.
DEFAULT_FULL_RETURN = 256 * 1024
#: With RET=FULL, messages larger than this are returned as their header.
MAX_FULL_RETURN = 10 * 1024 * 1024

#: RFC 3464 §2.3.3 actions.
FAILED_ACTION = "failed"
DELAYED = "delayed"
DELIVERED_ACTION = "delivered"
RELAYED = "relayed"

#: Keys in a record's ``done`` list saying which notices were sent.
NOTICE_DELAY = "notice:delay"
NOTICE_SUCCESS = "notice:success"

#: The reply recorded when a message outlived the queue lifetime without a
#: reply of its own (RFC 3463 X.4.7).
EXPIRED = Reply(451, "4.4.7", "Delivery time expired")

_SAID = " said: "


def remote_reason(host: str, reply: Reply) -> str:
    """The reason recorded for a remote server's reply; L{remote_mta} reads
    the host back (the queue entry has no field of its own for it)."""
    return f"host {host}{_SAID}{reply}"


def remote_mta(reason: str) -> str | None:
    """The remote host named in a reason made by L{remote_reason}, or None."""
    head, said, _ = reason.partition(_SAID)
    if not said or not head.startswith("host ") or " " in head[5:]:
        return None
    return head[5:] or None


def wants(record: RecipientRecord, what: str) -> bool:
    """Whether a recipient's NOTIFY asks for a notice (``SUCCESS``,
    ``FAILURE`` or ``DELAY``); no NOTIFY means FAILURE and DELAY."""
    notify = {n.upper() for n in record.notify}
    if "NEVER" in notify:
        return False
    if not notify:
        return what in ("FAILURE", "DELAY")
    return what in notify


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX`` hex escapes); bad escapes are kept
    as they are."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "+" and _is_hex(text[i + 1 : i + 3]):
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789ABCDEFabcdef" for c in s)


def _xtext_encode(text: str) -> str:
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in text
    )


@dataclass(frozen=True)
class RecipientReport:
    """One recipient's block in a delivery-status part (RFC 3464 §2.3).

    @ivar final_recipient: the address the attempt was made for.
    @ivar action: L{FAILED_ACTION}, L{DELAYED} or L{DELIVERED_ACTION}.
    @ivar status: the RFC 3463 status code (``5.1.1``).
    @ivar original_recipient: the ORCPT value (``type;address``, decoded).
    @ivar diagnostic: the reply that decided it (Diagnostic-Code).
    @ivar remote_mta: the server that gave the reply, if remote.
    @ivar last_attempt: POSIX time of the last attempt.
    @ivar will_retry_until: for delayed recipients, when we give up.
    @ivar parent: the envelope recipient an alias expanded to this one.
    @ivar reason: why, for the human-readable part.
    """

    final_recipient: str
    action: str
    status: str
    original_recipient: str | None = None
    diagnostic: Reply | None = None
    remote_mta: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None
    parent: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Report:
    """A whole delivery status notification.

    @ivar reporting_mta: our host name.
    @ivar to: who gets it (the envelope sender, or the postmaster).
    @ivar original_sender: the reported message's envelope sender.
    @ivar envid: the DSN ENVID of the message, if any.
    @ivar arrival: when the message arrived (POSIX time).
    @ivar recipients: one block per reported recipient.
    @ivar now: when the report is made.
    @ivar queue_id: the reported message's queue id.
    @ivar double_bounce: a report to the postmaster about a message from the
        null sender.
    """

    reporting_mta: str
    to: str
    original_sender: str
    envid: str | None
    arrival: float
    recipients: tuple[RecipientReport, ...]
    now: float
    queue_id: str = ""
    double_bounce: bool = False


def _date(t: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(t, UTC))


def _address_field(address: str) -> str:
    # RFC 6533 §3: "utf-8" addresses for internationalised ones.
    kind = "rfc822" if address.isascii() else "utf-8"
    return f"{kind};{address}"


def _status_of(reply: Reply | None, fallback: str) -> str:
    if reply is not None and reply.status:
        return reply.status
    if reply is not None:
        return f"{reply.code // 100}.0.0"
    return fallback


def _header_block(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    if end < 0:
        if message.startswith(b"\r\n"):
            return b""
        return message if message.endswith(b"\r\n") else message + b"\r\n"
    return message[: end + 2]


def _subject(report: Report) -> str:
    actions = {r.action for r in report.recipients}
    if report.double_bounce:
        return "Undelivered Mail Returned to Sender (double bounce)"
    if FAILED_ACTION in actions:
        return "Undelivered Mail Returned to Sender"
    if DELAYED in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _human(report: Report) -> str:
    actions = {r.action for r in report.recipients}
    lines = [f"This is the mail system at host {report.reporting_mta}.", ""]
    if report.double_bounce:
        lines += [
            "A message from the null sender (itself a delivery report) could",
            "not be delivered; it is reported to the postmaster and dropped.",
        ]
    elif FAILED_ACTION in actions:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ]
    elif DELAYED in actions:
        until = min(
            (r.will_retry_until for r in report.recipients if r.will_retry_until),
            default=None,
        )
        lines += [
            "Your message could not be delivered yet to one or more recipients.",
            "This is only a warning: the mail system will keep trying"
            + (f" until {_date(until)}." if until else "."),
            "You do not need to send the message again.",
        ]
    else:
        lines += ["Your message was delivered to the recipients listed below."]
    lines.append("")
    for r in report.recipients:
        who = f"<{r.final_recipient}>"
        if r.parent:
            who += f" (expanded from <{r.parent}>)"
        why = r.reason or (str(r.diagnostic) if r.diagnostic else r.action)
        lines.append(f"{who}: {why}")
    return "\r\n".join(lines) + "\r\n"


def _status_part(report: Report) -> str:
    fields = [f"Reporting-MTA: dns;{report.reporting_mta}"]
    if report.envid is not None:
        envid = report.envid
        if not (envid.isascii() and envid.isprintable()):
            envid = _xtext_encode(envid)
        fields.append(f"Original-Envelope-Id: {envid}")
    if report.queue_id:
        fields.append(f"X-Twistedmail-Queue-ID: {report.queue_id}")
    fields.append(f"Arrival-Date: {_date(report.arrival)}")
    blocks = ["\r\n".join(fields)]
    for r in report.recipients:
        lines = []
        if r.original_recipient:
            lines.append(f"Original-Recipient: {r.original_recipient}")
        lines += [
            f"Final-Recipient: {_address_field(r.final_recipient)}",
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns;{r.remote_mta}")
        if r.diagnostic is not None:
            lines.append(f"Diagnostic-Code: smtp;{r.diagnostic}")
        if r.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")
        blocks.append("\r\n".join(lines))
    return "\r\n\r\n".join(blocks) + "\r\n"


def _return_full(ret: str | None, size: int, body_type: str) -> bool:
    if body_type.upper() == "BINARYMIME":
        return False
    if ret is not None and ret.upper() == "HDRS":
        return False
    if ret is not None and ret.upper() == "FULL":
        return size <= MAX_FULL_RETURN
    return size <= DEFAULT_FULL_RETURN


def build_report(
    report: Report,
    original: bytes,
    *,
    ret: str | None = None,
    body_type: str = "7BIT",
    boundary: str | None = None,
) -> tuple[bytes, bool]:
    """Render a notification as message bytes (CRLF line ends).

    @param original: the reported message as spooled.
    @param ret: the message's DSN RET (``FULL``, ``HDRS`` or None); see the
        module docstring for what is returned.
    @param body_type: the original's body type (BINARYMIME: header only).
    @param boundary: the MIME boundary (random when not given).
    @return: the message and whether it holds 8-bit data (so it must be sent
        as 8BITMIME).
    """
    full = _return_full(ret, len(original), body_type)
    returned = original if full else _header_block(original)
    while boundary is None or boundary.encode() in returned:
        boundary = f"=_twistedmail_{secrets.token_hex(12)}"
    human = _human(report).encode("utf-8")
    status = _status_part(report).encode("utf-8")
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(_header_block(original))
        message_id = headers.get("Message-ID")
    except Exception:
        message_id = None
    to = report.to
    header_lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{report.reporting_mta}>",
        f"To: <{to}>",
        f"Subject: {_subject(report)}",
        f"Date: {_date(report.now)}",
        f"Message-ID: <{int(report.now)}.{report.queue_id or 'dsn'}."
        f"{secrets.token_hex(4)}@{report.reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]
    if message_id and "\n" not in str(message_id):
        header_lines.append(f"In-Reply-To: {str(message_id).strip()}")
        header_lines.append(f"References: {str(message_id).strip()}")
    eight_bit = any(b >= 0x80 for b in human + status + returned) or not to.isascii()

    def cte(data: bytes) -> bytes:
        return b"8bit" if any(b >= 0x80 for b in data) else b"7bit"

    b = boundary.encode()
    parts = [
        "\r\n".join(header_lines).encode("utf-8"),
        b"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n",
        b"--" + b + b"\r\n",
        b"Content-Description: Notification\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Transfer-Encoding: " + cte(human) + b"\r\n\r\n",
        human,
        b"\r\n--" + b + b"\r\n",
        b"Content-Description: Delivery report\r\n",
        b"Content-Type: message/delivery-status\r\n",
        b"Content-Transfer-Encoding: " + cte(status) + b"\r\n\r\n",
        status,
        b"\r\n--" + b + b"\r\n",
    ]
    if full:
        parts += [
            b"Content-Description: Undelivered Message\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"Content-Transfer-Encoding: " + cte(returned) + b"\r\n\r\n",
        ]
    else:
        parts += [
            b"Content-Description: Undelivered Message Headers\r\n",
            b"Content-Type: text/rfc822-headers\r\n",
            b"Content-Transfer-Encoding: " + cte(returned) + b"\r\n\r\n",
        ]
    parts.append(returned)
    if not returned.endswith(b"\r\n"):
        parts.append(b"\r\n")
    parts.append(b"\r\n--" + b + b"--\r\n")
    return b"".join(parts), eight_bit


def _is_postmaster(address: str, postmaster: str) -> bool:
    try:
        a = Address.parse(address, utf8=True)
    except AddressError:
        return False
    return a.key == postmaster.lower() or a.local.lower() == "postmaster"


class Notifier:
    """Sends the notices an entry's records call for (module docstring).

    @param spool: where notices are injected (as new entries).
    @param clock: for the dates and the delay and lifetime limits.
    @param hostname: our host name (Reporting-MTA, the From: domain).
    @param settings: the ``[queue]`` settings.
    @param postmaster: where failures of null-sender mail go; by default
        ``postmaster@hostname``.
    """

    def __init__(
        self,
        spool: Spool,
        clock: IReactorTime,
        hostname: str,
        settings: QueueSettings | None = None,
        postmaster: str = "",
    ) -> None:
        self._spool = spool
        self._clock = clock
        self._hostname = hostname
        self._settings = settings or QueueSettings()
        self.postmaster = postmaster or f"postmaster@{hostname}"

    def settle(self, entry: QueueEntry) -> Deferred[QueueEntry]:
        """Expire, bounce, warn and report as the records call for; fire with
        the entry with those notices recorded (the caller writes it).

        Most calls find nothing to send: the entry (expired where due) then
        comes back at once, without running the notice steps."""
        entry = self.expire(entry)
        if not self._may_notify(entry):
            return succeed(entry)
        return Deferred.fromCoroutine(self._notify(entry))

    def _may_notify(self, entry: QueueEntry) -> bool:
        """Whether a notice step of L{_notify} might send or record a notice
        for the (already expired) entry; C{False} only when none would."""
        sender = entry.envelope.sender
        for r in entry.recipients:
            if r.status == FAILED:
                return True
            if sender and r.status == DELIVERED and NOTICE_SUCCESS not in r.done:
                return True
        limit = self._settings.delay_warning
        if limit and sender:
            now = self._clock.seconds()
            if entry.envelope.received_at + limit <= now < self.deadline(entry):
                return True
        return False

    def deadline(self, entry: QueueEntry) -> float:
        """When the entry's undelivered recipients expire."""
        return entry.envelope.received_at + self._settings.max_lifetime

    def expire(self, entry: QueueEntry) -> QueueEntry:
        """Mark records that failed for now and outlived the queue lifetime
        ``failed`` (their last reply kept for the bounce)."""
        now = self._clock.seconds()
        if now < self.deadline(entry):
            return entry
        days = self._settings.max_lifetime / 86400
        records = list(entry.recipients)
        changed = False
        for i, r in enumerate(records):
            waiting = r.status == DEFERRED or (
                r.status == REMOTE and r.attempts > 0 and r.reply is not None
            )
            if not waiting:
                continue
            changed = True
            last = r.reason or (str(r.reply) if r.reply else "")
            records[i] = replace(
                r,
                status=FAILED,
                reply=r.reply if r.reply is not None else EXPIRED,
                reason=f"gave up after {days:g} days: {last}"
                if last
                else f"gave up after {days:g} days",
                next_attempt=None,
            )
        return replace(entry, recipients=tuple(records)) if changed else entry

    async def _notify(self, entry: QueueEntry) -> QueueEntry:
        entry = await self._bounce(entry)
        entry = await self._warn(entry)
        entry = await self._report_success(entry)
        return entry

    def _record_report(
        self, entry: QueueEntry, r: RecipientRecord, action: str
    ) -> RecipientReport:
        fallback = {FAILED_ACTION: "5.0.0", DELAYED: "4.0.0"}.get(action, "2.0.0")
        status = _status_of(r.reply, fallback)
        if action == FAILED_ACTION and status.startswith("2"):
            status = "5.0.0"
        orcpt = None
        if r.orcpt:
            kind, _, value = r.orcpt.partition(";")
            orcpt = f"{kind};{xtext_decode(value)}"
        return RecipientReport(
            final_recipient=r.address,
            action=action,
            status=status,
            original_recipient=orcpt,
            diagnostic=r.reply if action != DELIVERED_ACTION else None,
            remote_mta=remote_mta(r.reason),
            last_attempt=r.last_attempt,
            will_retry_until=self.deadline(entry) if action == DELAYED else None,
            parent=r.parent,
            reason=r.reason,
        )

    async def _bounce(self, entry: QueueEntry) -> QueueEntry:
        failed = [i for i, r in enumerate(entry.recipients) if r.status == FAILED]
        if not failed:
            return entry
        sender = entry.envelope.sender
        records = list(entry.recipients)
        reported: list[RecipientRecord] = []
        for i in failed:
            r = records[i]
            if sender and not wants(r, "FAILURE"):
                log.info(
                    "{id}: no bounce for {rcpt} (NOTIFY={notify})",
                    id=entry.queue_id,
                    rcpt=r.address,
                    notify=",".join(r.notify),
                )
            elif not sender and _is_postmaster(r.address, self.postmaster):
                log.warn(
                    "{id}: dropping a message from <> that failed for the "
                    "postmaster <{rcpt}>: {reason}",
                    id=entry.queue_id,
                    rcpt=r.address,
                    reason=r.reason,
                )
            else:
                reported.append(r)
        if reported:
            to = sender or self.postmaster
            await self._send(
                entry,
                to,
                [self._record_report(entry, r, FAILED_ACTION) for r in reported],
                double_bounce=not sender,
            )
            log.info(
                "{id}: bounce for {rcpts} sent to <{to}>",
                id=entry.queue_id,
                rcpts=", ".join(r.address for r in reported),
                to=to,
            )
        for i in failed:
            records[i] = replace(records[i], status=BOUNCED)
        return replace(entry, recipients=tuple(records))

    async def _warn(self, entry: QueueEntry) -> QueueEntry:
        limit = self._settings.delay_warning
        sender = entry.envelope.sender
        now = self._clock.seconds()
        if not limit or not sender or now < entry.envelope.received_at + limit:
            return entry
        if now >= self.deadline(entry):
            return entry
        due = [
            i
            for i, r in enumerate(entry.recipients)
            if (
                r.status == DEFERRED
                or (r.status == REMOTE and r.reply is not None and r.attempts > 0)
            )
            and NOTICE_DELAY not in r.done
            and wants(r, "DELAY")
        ]
        if not due:
            return entry
        records = list(entry.recipients)
        await self._send(
            entry,
            sender,
            [self._record_report(entry, records[i], DELAYED) for i in due],
        )
        log.info(
            "{id}: delay warning for {rcpts} sent to <{to}>",
            id=entry.queue_id,
            rcpts=", ".join(records[i].address for i in due),
            to=sender,
        )
        for i in due:
            records[i] = replace(records[i], done=(*records[i].done, NOTICE_DELAY))
        return replace(entry, recipients=tuple(records))

    async def _report_success(self, entry: QueueEntry) -> QueueEntry:
        sender = entry.envelope.sender
        if not sender:
            return entry
        due = [
            i
            for i, r in enumerate(entry.recipients)
            if r.status == DELIVERED
            and NOTICE_SUCCESS not in r.done
            and wants(r, "SUCCESS")
        ]
        if not due:
            return entry
        records = list(entry.recipients)
        await self._send(
            entry,
            sender,
            [
                self._record_report(
                    entry,
                    records[i],
                    RELAYED if remote_mta(records[i].reason) else DELIVERED_ACTION,
                )
                for i in due
            ],
        )
        for i in due:
            records[i] = replace(records[i], done=(*records[i].done, NOTICE_SUCCESS))
        return replace(entry, recipients=tuple(records))

    async def _send(
        self,
        entry: QueueEntry,
        to: str,
        recipients: Sequence[RecipientReport],
        double_bounce: bool = False,
    ) -> str:
        now = self._clock.seconds()
        envelope = entry.envelope
        report = Report(
            reporting_mta=self._hostname,
            to=to,
            original_sender=envelope.sender,
            envid=envelope.envid,
            arrival=envelope.received_at,
            recipients=tuple(recipients),
            now=now,
            queue_id=entry.queue_id,
            double_bounce=double_bounce,
        )
        original = await self._spool.read_message(entry.queue_id)
        data, eight_bit = build_report(
            report, original, ret=envelope.ret, body_type=envelope.body_type
        )
        return await self.inject(to, data, eight_bit=eight_bit)

    def inject(self, to: str, data: bytes, *, eight_bit: bool = False) -> Deferred[str]:
        """Queue a message from the null sender to one recipient through the
        spool's agent; fire with its queue id once it is durable."""
        agent = self._spool.agent()
        agent.start(
            Envelope(
                sender="",
                body_type="8BITMIME" if eight_bit else "7BIT",
                smtputf8=not to.isascii(),
                client_name=self._hostname,
                received_at=self._clock.seconds(),
                protocol="local",
            )
        )
        agent.add_recipient(Recipient(to))
        agent.body(data)
        return agent.commit()
