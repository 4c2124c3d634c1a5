"""Tests for L{twistedmail.config}."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from twistedmail.config import ConfigError, Settings, load_settings, settings_from_dict


class DefaultsTests(SynchronousTestCase):
    """The server runs with no configuration file at all."""

    def test_no_file(self) -> None:
        """No path gives the embedded defaults: loopback, unprivileged ports, ./var."""
        s = load_settings(None)
        self.assertEqual(s, Settings())
        self.assertEqual(s.server.data_dir, "var")
        for role, desc in s.listeners.roles().items():
            self.assertIn("interface=127.0.0.1", desc, role)
            port = int(desc.split("port=")[1].split(":")[0])
            self.assertGreater(port, 1024, role)

    def test_example_file_loads(self) -> None:
        """The commented example in etc/ is valid and matches the defaults."""
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        s = load_settings(os.path.join(here, "etc", "twistedmail.toml"))
        self.assertEqual(s, Settings())


class ErrorTests(SynchronousTestCase):
    """Each bad key gives a message naming the file, the key and the problem."""

    def assertProblem(self, data: dict[str, object], key: str, words: str) -> None:
        with self.assertRaises(ConfigError) as cm:
            settings_from_dict(data, "mail.toml")
        message = str(cm.exception)
        self.assertTrue(message.startswith(f"mail.toml: {key}: "), message)
        self.assertIn(words, message)

    def test_unknown_section(self) -> None:
        """An unknown table is refused, with the known ones listed."""
        self.assertProblem({"smpt": {}}, "[smpt]", "unknown section")

    def test_unknown_key(self) -> None:
        """An unknown key is refused rather than ignored."""
        self.assertProblem(
            {"server": {"hostnme": "x"}}, "[server] hostnme", "unknown key"
        )

    def test_wrong_type(self) -> None:
        """A string where an integer belongs is refused."""
        self.assertProblem(
            {"aliases": {"max_depth": "20"}}, "[aliases] max_depth", "integer"
        )

    def test_bool_is_not_int(self) -> None:
        """true is not an integer."""
        self.assertProblem(
            {"aliases": {"max_depth": True}}, "[aliases] max_depth", "integer"
        )

    def test_range(self) -> None:
        """A depth of zero is refused."""
        self.assertProblem(
            {"aliases": {"max_depth": 0}}, "[aliases] max_depth", "greater than zero"
        )

    def test_literal(self) -> None:
        """A backend outside the known ones is refused, listing the choices."""
        self.assertProblem(
            {"directory": {"backend": "ldap"}}, "[directory] backend", "'sqlite'"
        )

    def test_bad_endpoint(self) -> None:
        """A listener that is not an endpoint description is refused."""
        self.assertProblem(
            {"listeners": {"smtp": "bogus:25"}}, "[listeners] smtp", "endpoint"
        )

    def test_bad_hostname(self) -> None:
        """A hostname that is not a domain is refused."""
        self.assertProblem(
            {"server": {"hostname": "bad_host!"}}, "[server] hostname", "label"
        )

    def test_bad_postmaster(self) -> None:
        """The postmaster must be an address."""
        self.assertProblem(
            {"aliases": {"postmaster": "nobody"}}, "[aliases] postmaster", "local part"
        )

    def test_tls_pair(self) -> None:
        """A certificate without a key is refused."""
        self.assertProblem({"tls": {"certificate": "c.pem"}}, "[tls]", "together")

    def test_section_not_table(self) -> None:
        """A section given as a value is refused."""
        self.assertProblem({"server": 3}, "[server]", "table")

    def test_only_listeners(self) -> None:
        """ListenerSettings.only keeps the named roles and turns the rest off."""
        from twistedmail.config import ListenerSettings

        only = ListenerSettings.only(smtp="tcp:port=0")
        self.assertEqual(only.roles(), {"smtp": "tcp:port=0"})
        with self.assertRaises(ValueError):
            ListenerSettings.only(smpt="tcp:port=0")

    def test_disable_listener(self) -> None:
        """false disables a role."""
        s = settings_from_dict({"listeners": {"pop3": False}})
        self.assertNotIn("pop3", s.listeners.roles())


class FileTests(SynchronousTestCase):
    """Reading the file itself."""

    def test_missing(self) -> None:
        """A missing file names the file."""
        path = self.mktemp()
        with self.assertRaises(ConfigError) as cm:
            load_settings(path)
        self.assertIn(path, str(cm.exception))
        self.assertIn("cannot read", str(cm.exception))

    def test_syntax(self) -> None:
        """A TOML syntax error names the file and the line."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nhostname = \n")
        with self.assertRaises(ConfigError) as cm:
            load_settings(path)
        self.assertIn(path, str(cm.exception))
        self.assertIn("line 2", str(cm.exception))

    def test_values(self) -> None:
        """Values in the file reach the settings."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nhostname = "mx.example.org"\ndata_dir = "/srv/mail"\n')
        s = load_settings(path)
        self.assertEqual(s.server.hostname, "mx.example.org")
        self.assertEqual(s.data_path("spool"), "/srv/mail/spool")
        self.assertEqual(s.source, path)
