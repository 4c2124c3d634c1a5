# -*- test-case-name: tests.test_config -*-
"""Configuration: one TOML file parsed into typed, frozen settings.

Every key has a default, so the server runs with no file at all.  Each section
is a frozen dataclass; the loader checks every value against its annotation and
the field's ``check`` metadata, and refuses unknown sections and keys: an error
names the file, the key and what is wrong, and nothing is half-loaded.

Adding a setting is adding a field (with a default and a docstring line in
``etc/twistedmail.toml``) to one of the section classes below.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from twistedmail.address import Address, AddressError, normalize_domain

__all__ = [
    "AliasSettings",
    "AuthSettings",
    "ConfigError",
    "DNSSettings",
    "DeliverySettings",
    "DirectorySettings",
    "IMAPSettings",
    "ListenerSettings",
    "MaildirSettings",
    "RelaySettings",
    "POP3Settings",
    "QueueSettings",
    "SRSSettings",
    "SMTPSettings",
    "ServerSettings",
    "Settings",
    "SpoolSettings",
    "TLSSettings",
    "load_settings",
    "settings_from_dict",
]


class ConfigError(Exception):
    """A configuration value is wrong; ``str()`` names file, key and problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(
            f"{source}: {key}: {problem}" if key else f"{source}: {problem}"
        )
        self.source = source
        self.key = key
        self.problem = problem


Check = Callable[[Any], str | None]


def _setting(default: Any, check: Check | None = None) -> Any:
    """A dataclass field with a default and an optional check.

    @param check: called with the converted value; returns a problem
        description, or None when the value is fine.
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for list defaults")
    return field(default=default, metadata={"check": check} if check else {})


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than zero"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


def _endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    from twisted.internet import endpoints

    try:
        # The endpoint only records the reactor; nothing listens here.
        endpoints.serverFromString(object(), value)
    except (ValueError, KeyError, TypeError, OSError) as e:
        return f"not a valid Twisted endpoint description ({e or type(e).__name__})"
    return None


def _domain_or_empty(value: str) -> str | None:
    if not value:
        return None
    try:
        normalize_domain(value)
    except AddressError as e:
        return str(e)
    return None


def _domains(values: tuple[str, ...]) -> str | None:
    for v in values:
        problem = _domain_or_empty(v) if v else "empty domain"
        if problem:
            return f"{v!r}: {problem}"
    return None


def _address_or_empty(value: str) -> str | None:
    if not value:
        return None
    try:
        Address.parse(value, utf8=True)
    except AddressError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: identity and where data lives."""

    hostname: str = _setting("localhost", _domain_or_empty)
    data_dir: str = _setting("var")
    demo_account: bool = _setting(True)


@dataclass(frozen=True)
class ListenerSettings:
    """``[listeners]``: one Twisted endpoint description per role, or false.

    The ``submissions``, ``pop3s`` and ``imaps`` roles are implicit TLS: a
    ``tcp:`` description is wrapped in the server's TLS context (reloaded on
    SIGHUP); an ``ssl:`` description is used as it is.
    """

    smtp: str | None = _setting("tcp:port=8025:interface=127.0.0.1", _endpoint)
    submission: str | None = _setting("tcp:port=8587:interface=127.0.0.1", _endpoint)
    submissions: str | None = _setting("tcp:port=8465:interface=127.0.0.1", _endpoint)
    pop3: str | None = _setting("tcp:port=8110:interface=127.0.0.1", _endpoint)
    pop3s: str | None = _setting("tcp:port=8995:interface=127.0.0.1", _endpoint)
    imap: str | None = _setting("tcp:port=8143:interface=127.0.0.1", _endpoint)
    imaps: str | None = _setting("tcp:port=8993:interface=127.0.0.1", _endpoint)
    #: LMTP (RFC 2033) for a front MTA handing over local mail; off by default.
    lmtp: str | None = _setting(None, _endpoint)

    @classmethod
    def only(cls, **roles: str) -> ListenerSettings:
        """Listeners for the given roles only, every other role off.

        ``ListenerSettings.only(smtp="tcp:port=0:interface=127.0.0.1")``
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(roles) - names)
        if unknown:
            raise ValueError(f"unknown listener role {unknown[0]!r}")
        return cls(**{name: roles.get(name) for name in names})

    def roles(self) -> dict[str, str]:
        """The enabled roles and their descriptions."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class TLSSettings:
    """``[tls]``: the server certificate.

    With no certificate and key configured, a self-signed certificate for the
    server's hostname is generated under ``data_dir/tls/`` on first start and
    reused after.
    """

    certificate: str = _setting("")
    key: str = _setting("")
    min_version: Literal["TLSv1.2", "TLSv1.3"] = _setting("TLSv1.2")
    ciphers: str = _setting(
        "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"
    )

    def __post_init__(self) -> None:
        if bool(self.certificate) != bool(self.key):
            raise ConfigError("", "tls", "certificate and key must be set together")


@dataclass(frozen=True)
class DirectorySettings:
    """``[directory]``: where domains, users and aliases come from."""

    backend: Literal["sqlite", "files"] = _setting("sqlite")
    sqlite_path: str = _setting("directory.sqlite")
    domains_file: str = _setting("domains")
    users_file: str = _setting("users")
    aliases_file: str = _setting("aliases")
    reload_interval: float = _setting(2.0, _positive)


@dataclass(frozen=True)
class AliasSettings:
    """``[aliases]``: how recipients are expanded."""

    subaddress_separator: str = _setting("+")
    max_depth: int = _setting(20, _positive)
    allow_programs: bool = _setting(False)
    allow_files: bool = _setting(False)
    postmaster: str = _setting("", _address_or_empty)


@dataclass(frozen=True)
class AuthSettings:
    """``[auth]``: logins."""

    default_domain: str = _setting("", _domain_or_empty)
    failure_delay: float = _setting(1.0, _not_negative)
    failure_delay_max: float = _setting(30.0, _not_negative)
    failure_window: float = _setting(900.0, _positive)


def _networks(values: tuple[str, ...]) -> str | None:
    import ipaddress

    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{v!r} is not an IP network (CIDR)"
    return None


@dataclass(frozen=True)
class SMTPSettings:
    """``[smtp]``: limits and policy of the SMTP, submission and LMTP listeners."""

    max_message_size: int = _setting(35 * 1024 * 1024, _positive)
    max_recipients: int = _setting(100, _positive)
    max_connections: int = _setting(500, _positive)
    max_connections_per_ip: int = _setting(20, _positive)
    max_errors: int = _setting(20, _positive)
    command_timeout: float = _setting(300.0, _positive)
    data_timeout: float = _setting(600.0, _positive)
    bare_line_endings: Literal["reject", "normalize"] = _setting("reject")
    vrfy: bool = _setting(False)
    allow_plaintext_auth: bool = _setting(False)
    mx_auth: bool = _setting(False)
    trusted_networks: tuple[str, ...] = _setting((), _networks)


@dataclass(frozen=True)
class POP3Settings:
    """``[pop3]``: limits and policy of the pop3 and pop3s listeners."""

    allow_plaintext_auth: bool = _setting(False)
    idle_timeout: float = _setting(600.0, _positive)
    login_timeout: float = _setting(60.0, _positive)
    max_errors: int = _setting(10, _positive)
    max_connections: int = _setting(500, _positive)
    max_connections_per_ip: int = _setting(20, _positive)


@dataclass(frozen=True)
class IMAPSettings:
    """``[imap]``: limits of the imap and imaps listeners.

    ``max_line`` bounds one command's text (RFC 7162 §4 asks for at least
    8192 octets); ``max_literal`` bounds the literal octets of one command
    (an APPENDed message), refused before any is read.  The rest is the
    server's policy: LOGIN/AUTHENTICATE without TLS, the autologout timers
    (RFC 3501 §5.4: at least 30 minutes once logged in; before login a
    deadline from the connection's start), the IDLE keep-alive period, how
    often a session looks for changes made outside this process when the
    store has no watcher (``[maildir] watch = "off"``), BAD responses
    before a disconnect, and connection limits.
    """

    max_line: int = _setting(64 * 1024, _positive)
    max_literal: int = _setting(35 * 1024 * 1024, _positive)
    allow_plaintext_auth: bool = _setting(False)
    idle_timeout: float = _setting(1800.0, _positive)
    login_timeout: float = _setting(60.0, _positive)
    idle_keepalive: float = _setting(120.0, _positive)
    check_interval: float = _setting(1.0, _positive)
    max_errors: int = _setting(20, _positive)
    max_connections: int = _setting(500, _positive)
    max_connections_per_ip: int = _setting(20, _positive)


@dataclass(frozen=True)
class SpoolSettings:
    """``[spool]``: the queue and the service that delivers from it."""

    directory: str = _setting("spool")
    max_active_deliveries: int = _setting(20, _positive)
    retry_delay: float = _setting(300.0, _positive)
    retry_delay_max: float = _setting(3600.0, _positive)
    incoming_poll_interval: float = _setting(1.0, _positive)


def _schedule(values: tuple[float, ...]) -> str | None:
    if not values:
        return "must list at least one delay"
    return None if all(v > 0 for v in values) else "delays must be positive"


@dataclass(frozen=True)
class QueueSettings:
    """``[queue]``: the outbound queue (relay retries, expiry, notices)."""

    retry_schedule: tuple[float, ...] = _setting(
        (300.0, 600.0, 1200.0, 2400.0, 7200.0), _schedule
    )
    max_lifetime: float = _setting(5 * 86400.0, _positive)
    delay_warning: float = _setting(4 * 3600.0, _not_negative)
    max_concurrency: int = _setting(20, _positive)
    max_per_domain: int = _setting(5, _positive)
    connection_reuse: int = _setting(100, _positive)


@dataclass(frozen=True)
class SRSSettings:
    """``[srs]``: the Sender Rewriting Scheme for forwarded mail."""

    enabled: bool = _setting(True)
    secret: str = _setting("")
    domain: str = _setting("", _domain_or_empty)
    max_age: int = _setting(21, _positive)


@dataclass(frozen=True)
class DeliverySettings:
    """``[delivery]``: local delivery to programs and files."""

    program_timeout: float = _setting(300.0, _positive)
    program_shell: bool = _setting(False)
    program_path: str = _setting("/usr/local/bin:/usr/bin:/bin")


@dataclass(frozen=True)
class MaildirSettings:
    """``[maildir]``: the mailbox store."""

    watch: Literal["auto", "poll", "off"] = _setting("auto")
    poll_interval: float = _setting(1.0, _positive)


def _nameservers(values: tuple[str, ...]) -> str | None:
    from twistedmail.smtp.mx import parse_nameserver

    for v in values:
        try:
            parse_nameserver(v)
        except ValueError:
            return f"{v!r} is not an IP address with an optional :port"
    return None


def _tries(values: tuple[float, ...]) -> str | None:
    if not values:
        return "must list at least one timeout"
    return None if all(v > 0 for v in values) else "timeouts must be positive"


@dataclass(frozen=True)
class DNSSettings:
    """``[dns]``: the resolver used to find mail servers (MX records)."""

    nameservers: tuple[str, ...] = _setting((), _nameservers)
    timeout: tuple[float, ...] = _setting((1.0, 3.0, 11.0, 45.0), _tries)


TLSPolicy = Literal["opportunistic", "required", "verify"]


def _smarthost(value: str) -> str | None:
    if not value:
        return None
    from twistedmail.smtp.routing import parse_host_port

    try:
        parse_host_port(value, 25)
    except ValueError as e:
        return str(e)
    return None


def _policy_domains(values: dict[str, str]) -> str | None:
    return _domains(tuple(values))


@dataclass(frozen=True)
class RelaySettings:
    """``[relay]``: sending mail to other servers (MX hosts or a smarthost)."""

    helo_name: str = _setting("", _domain_or_empty)
    port: int = _setting(25, _positive)
    tls: TLSPolicy = _setting("opportunistic")
    tls_policy: dict[str, TLSPolicy] = field(
        default_factory=dict, metadata={"check": _policy_domains}
    )
    ca_file: str = _setting("")
    smarthost: str = _setting("", _smarthost)
    smarthost_domains: tuple[str, ...] = _setting((), _domains)
    smarthost_tls: Literal["opportunistic", "required", "verify", "implicit"] = (
        _setting("required")
    )
    smarthost_username: str = _setting("")
    smarthost_password: str = _setting("")
    smarthost_password_file: str = _setting("")
    allow_plaintext_auth: bool = _setting(False)
    chunking: bool = _setting(False)
    connect_timeout: float = _setting(30.0, _positive)
    greeting_timeout: float = _setting(300.0, _positive)
    command_timeout: float = _setting(300.0, _positive)
    mail_timeout: float = _setting(300.0, _positive)
    rcpt_timeout: float = _setting(300.0, _positive)
    data_init_timeout: float = _setting(120.0, _positive)
    data_block_timeout: float = _setting(180.0, _positive)
    data_done_timeout: float = _setting(600.0, _positive)


@dataclass(frozen=True)
class Settings:
    """The whole configuration; each attribute is one TOML table."""

    server: ServerSettings = field(default_factory=ServerSettings)
    listeners: ListenerSettings = field(default_factory=ListenerSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    aliases: AliasSettings = field(default_factory=AliasSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    srs: SRSSettings = field(default_factory=SRSSettings)
    smtp: SMTPSettings = field(default_factory=SMTPSettings)
    pop3: POP3Settings = field(default_factory=POP3Settings)
    imap: IMAPSettings = field(default_factory=IMAPSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    maildir: MaildirSettings = field(default_factory=MaildirSettings)
    dns: DNSSettings = field(default_factory=DNSSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    source: str = field(default="<defaults>", compare=False)

    def data_path(self, *parts: str) -> str:
        """A path under the data folder (absolute paths in parts win)."""
        return os.path.join(self.server.data_dir, *parts)

    def with_changes(self, **sections: Any) -> Settings:
        """A copy with some sections replaced (for tests and embedders)."""
        return dataclasses.replace(self, **sections)


def _type_name(t: Any) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }
    return names.get(t, getattr(t, "__name__", str(t)))


def _convert(value: Any, annotation: Any) -> Any:
    """Convert a TOML value to the annotated type, or raise ValueError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if type(None) in args and value is False:
            return None
        if len(non_none) == 1:
            try:
                return _convert(value, non_none[0])
            except ValueError as e:
                raise ValueError(f"{e} (or false to disable)") from None
        raise TypeError(f"unsupported union {annotation}")
    if origin is Literal:
        if value not in args:
            raise ValueError("must be one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError("must be a table")
        return {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError("must be a list")
        return tuple(_convert(v, args[0]) for v in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    raise TypeError(f"unsupported setting type {annotation}")


def _section(cls: type, table: Any, source: str, name: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(source, f"[{name}]", "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            source,
            f"[{name}] {unknown[0]}",
            "unknown key (known: " + ", ".join(sorted(fields)) + ")",
        )
    values: dict[str, Any] = {}
    for key, raw in table.items():
        f = fields[key]
        try:
            value = _convert(raw, hints[key])
        except ValueError as e:
            raise ConfigError(source, f"[{name}] {key}", str(e)) from None
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(source, f"[{name}] {key}", problem)
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(source, f"[{name}]", e.problem) from None


def settings_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Settings:
    """Build L{Settings} from a parsed TOML document.

    @param source: the name used in error messages (the file's path).
    @raise ConfigError: on the first unknown or bad key.
    """
    hints = typing.get_type_hints(Settings)
    sections = {f.name for f in dataclasses.fields(Settings) if f.name != "source"}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ConfigError(
            source,
            f"[{unknown[0]}]",
            "unknown section (known: " + ", ".join(sorted(sections)) + ")",
        )
    built = {name: _section(hints[name], data[name], source, name) for name in data}
    settings = Settings(**built, source=source)
    if not settings.server.hostname:
        raise ConfigError(source, "[server] hostname", "must not be empty")
    return settings


def load_settings(path: str | None) -> Settings:
    """Read and check a configuration file; None gives the defaults.

    @raise ConfigError: when the file cannot be read, is not TOML, or has a
        bad key.  The message names the file (and the line for syntax errors).
    """
    if path is None:
        return Settings()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    return settings_from_dict(data, path)


def default_hostname() -> str:
    """The machine's fully qualified name, for configurations that want it."""
    return socket.getfqdn()
