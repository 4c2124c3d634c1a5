"""Test helpers for the SMTP tests: a driver for the sans-I/O machine."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twistedmail.replies import Reply
from twistedmail.smtp._machine import (
    AuthRequested,
    BodyReceived,
    Event,
    MachineConfig,
    MailRequested,
    MessageAborted,
    MessageCompleted,
    MessageStarted,
    RcptRequested,
    Session,
    SMTPMachine,
    TLSRequested,
    VrfyRequested,
)

__all__ = ["Driver", "default_policy"]


def default_policy(event: Event, lmtp: bool) -> Reply | list[Reply] | tuple[Reply, str]:
    """Answers for decisions: users named ``unknown`` do not exist, the
    password ``secret`` is right, messages are queued as ``Q1``."""
    if isinstance(event, MailRequested):
        return Reply(250, "2.1.0", "Sender OK")
    if isinstance(event, RcptRequested):
        if event.address.local.lower() == "unknown":
            return Reply(550, "5.1.1", "No such user here")
        return Reply(250, "2.1.5", "Recipient OK")
    if isinstance(event, AuthRequested):
        if event.password == "secret":
            return Reply(235, "2.7.0", "Authentication successful"), event.username
        return Reply(535, "5.7.8", "Authentication credentials invalid")
    if isinstance(event, VrfyRequested):
        return Reply(252, "2.5.0", "Maybe")
    if isinstance(event, MessageCompleted):
        if lmtp:
            return [Reply(250, "2.0.0", f"OK {i}") for i in range(event.recipients)]
        return Reply(250, "2.0.0", "OK queued as Q1")
    raise AssertionError(f"not a decision: {event}")


Policy = Callable[[Event, bool], "Reply | list[Reply] | tuple[Reply, str]"]


@dataclass
class Driver:
    """Runs a machine, answering decisions at once with a policy.

    @ivar output: every byte the machine wanted to send, in order.
    @ivar events: every event, in order.
    @ivar flushes: the separate writes (to check batching).
    """

    config: MachineConfig = field(default_factory=MachineConfig)
    policy: Policy = default_policy
    tls_active: bool = False
    output: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    flushes: list[bytes] = field(default_factory=list)
    machine: SMTPMachine = field(init=False)

    def __post_init__(self) -> None:
        self.machine = SMTPMachine(
            self.config, Session(peer="192.0.2.9", tls_active=self.tls_active)
        )
        self.machine.greet()
        self._flush()

    def _flush(self) -> None:
        data = self.machine.data_to_send()
        if data:
            self.output += data
            self.flushes.append(data)

    def _run(self, events: Iterable[Event]) -> None:
        queue = list(events)
        while queue:
            event = queue.pop(0)
            self.events.append(event)
            if isinstance(event, TLSRequested):
                self._flush()
                queue.extend(self.machine.tls_started())
                continue
            if isinstance(
                event,
                MailRequested
                | RcptRequested
                | AuthRequested
                | VrfyRequested
                | MessageCompleted,
            ):
                answer = self.policy(event, self.machine.config.lmtp)
                if isinstance(answer, list):
                    queue.extend(self.machine.answer_each(answer))
                elif isinstance(answer, tuple):
                    queue.extend(self.machine.answer(answer[0], auth_user=answer[1]))
                else:
                    queue.extend(self.machine.answer(answer))
        self._flush()

    def feed(self, *chunks: bytes) -> bytes:
        """Feed chunks; return what was sent meanwhile."""
        start = len(self.output)
        for chunk in chunks:
            self._run(self.machine.receive_data(chunk))
        return bytes(self.output[start:])

    def body(self) -> bytes:
        """The message bytes handed over so far."""
        return b"".join(e.data for e in self.events if isinstance(e, BodyReceived))

    def completed(self) -> list[bytes]:
        """The bodies of the messages that reached MessageCompleted."""
        bodies: list[bytes] = []
        current: list[bytes] | None = None
        for e in self.events:
            if isinstance(e, MessageStarted):
                current = []
            elif isinstance(e, BodyReceived) and current is not None:
                current.append(e.data)
            elif isinstance(e, MessageAborted):
                current = None
            elif isinstance(e, MessageCompleted) and current is not None:
                bodies.append(b"".join(current))
                current = None
        return bodies

    def count(self, kind: type) -> int:
        """How many events of a kind were seen."""
        return sum(isinstance(e, kind) for e in self.events)

    def started(self) -> list[MessageStarted]:
        """The MessageStarted events."""
        return [e for e in self.events if isinstance(e, MessageStarted)]

    def aborted(self) -> int:
        """How many messages were aborted."""
        return self.count(MessageAborted)
