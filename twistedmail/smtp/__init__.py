"""SMTP: receiving (the Receive step) and sending (the Relay step).

Receiving: L{twistedmail.smtp.server.SMTPServerFactory} is the public entry
point for the smtp, submission, submissions and lmtp listener roles;
``_parser`` and ``_machine`` are the sans-I/O protocol code it drives.
"""
