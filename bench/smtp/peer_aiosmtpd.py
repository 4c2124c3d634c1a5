"""Benchmark peer: aiosmtpd on loopback, delivering each message into a Maildir.

Run with the benchmark's own virtualenv (not the project's):

    python peer_aiosmtpd.py --port PORT --maildir DIR --domain bench.test

The handler is the obvious one: recipients outside the domain are refused,
and each accepted message is added with the standard library's
C{mailbox.Maildir.add}, which writes into tmp/, fsyncs the file and moves it
into new/ (no directory fsync).  It runs inside the event loop, as a plain
aiosmtpd handler would.
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import signal

from aiosmtpd.smtp import SMTP


class DeliverToMaildir:
    """aiosmtpd handler: accept mail for one domain, store it in a Maildir."""

    def __init__(self, maildir: str, domain: str) -> None:
        self.box = mailbox.Maildir(maildir, factory=None, create=True)
        self.suffix = "@" + domain.lower()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not address.lower().endswith(self.suffix):
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        trace = b"Delivered-To: " + envelope.rcpt_tos[0].encode() + b"\r\n"
        self.box.add(trace + envelope.original_content)
        return "250 2.0.0 OK"


async def serve(port: int, maildir: str, domain: str) -> None:
    loop = asyncio.get_running_loop()
    handler = DeliverToMaildir(maildir, domain)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench-aiosmtpd.localdomain"),
        host="127.0.0.1",
        port=port,
        backlog=1024,
    )
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    print(f"aiosmtpd listening on 127.0.0.1:{port}", flush=True)
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--domain", default="bench.test")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.maildir, args.domain))


if __name__ == "__main__":
    main()
