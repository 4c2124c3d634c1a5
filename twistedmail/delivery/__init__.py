"""Delivery: local mailboxes, programs and files (and, later, relay)."""
