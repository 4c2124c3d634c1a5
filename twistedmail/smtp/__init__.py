"""The ESMTP/LMTP server (the Receive step of the flow).

L{twistedmail.smtp.server.SMTPServerFactory} is the public entry point;
``_parser`` and ``_machine`` are the sans-I/O protocol code it drives.
"""
