"""The POP3 and POP3S server (the last step of the flow: a user's Maildir
INBOX to their mail client, RFC 1939).

L{twistedmail.pop3.server.POP3ServerFactory} is the public entry point; the
``pop3s`` listener is the same factory (built with C{implicit_tls=True})
wrapped in TLS by L{twistedmail.tls.ServerTLS.wrap_implicit}.
``_machine`` is the sans-I/O protocol code it drives.

APOP is not offered: it needs the user's password in the clear on the
server (the digest is MD5 of a timestamp and the shared secret), and the
directory keeps only argon2id or bcrypt hashes.  Clients log in with
USER/PASS or SASL PLAIN, over TLS.  See ``docs/pop3.md``.
"""
