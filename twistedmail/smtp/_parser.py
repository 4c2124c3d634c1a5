# -*- test-case-name: tests.test_smtp_parser -*-
"""ESMTP command lines to typed commands (the Receive step, first stage).

Sans-I/O: L{parse_command} takes one command line (bytes, CRLF removed) and
returns one of the command values below, or raises L{ProtocolError} carrying
the exact reply for the peer.  Nothing here raises anything else, whatever the
bytes (a hypothesis test holds it to that).

Grammar followed:

  - RFC 5321 §4.1.1 (verbs) and §4.1.2 (paths).  Source routes
    (``<@a,@b:user@d>``) are accepted and the route is dropped, as RFC 5321
    §3.6.1 and appendix C tell a server to do: so ``<@local:user@foreign>``
    is a relay attempt to ``user@foreign``.
  - RFC 1869/5321 §4.1.2 ESMTP parameters: ``keyword[=value]``.
  - RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8 (UTF-8 addresses only
    when the transaction declared it), RFC 3461 RET, ENVID, NOTIFY, ORCPT
    (xtext), RFC 4954 AUTH (on MAIL, accepted and recorded), RFC 3030 BDAT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twistedmail.address import Address, AddressError, normalize_domain
from twistedmail.replies import MailError, Reply

__all__ = [
    "AUTH_LINE_LIMIT",
    "COMMAND_LINE_LIMIT",
    "Auth",
    "Bdat",
    "Command",
    "Data",
    "Hello",
    "Help",
    "Mail",
    "Noop",
    "NotImplementedCommand",
    "ProtocolError",
    "Quit",
    "Rcpt",
    "Rset",
    "StartTLS",
    "Vrfy",
    "BAD_RECIPIENT",
    "BAD_SENDER",
    "NON_ASCII_ADDRESS",
    "NOT_IMPLEMENTED",
    "SYNTAX_ERROR",
    "UNKNOWN_COMMAND",
    "UNKNOWN_PARAMETER",
    "parse_command",
    "xtext_decode",
    "xtext_encode",
]

#: RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF.
COMMAND_LINE_LIMIT = 512
#: RFC 4954 §4: AUTH lines (command with initial response, and responses)
#: may be up to 12288 octets.
AUTH_LINE_LIMIT = 12288

UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command not recognized")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter")
NON_ASCII_ADDRESS = Reply(
    553, "5.6.7", "Non-ASCII address not permitted without SMTPUTF8"
)
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")


class ProtocolError(MailError):
    """A command that cannot be accepted as sent: a syntax error, a bad
    sequence or an unknown parameter.  C{reply} is what the peer gets."""


@dataclass(frozen=True)
class Hello:
    """EHLO, HELO or LHLO (RFC 5321 §4.1.1.1, RFC 2033 §4.1).

    @ivar verb: ``EHLO``, ``HELO`` or ``LHLO``.
    @ivar name: the client's name for itself, as sent.
    """

    verb: str
    name: str


@dataclass(frozen=True)
class Mail:
    """MAIL FROM (RFC 5321 §4.1.1.2) with its ESMTP parameters.

    @ivar sender: the reverse path, or None for the null path ``<>``.
    @ivar size: RFC 1870 SIZE, or None.
    @ivar body: RFC 6152 BODY (``7BIT`` or ``8BITMIME``), or None.
    @ivar smtputf8: RFC 6531 SMTPUTF8 was given.
    @ivar ret: RFC 3461 RET (``FULL`` or ``HDRS``), or None.
    @ivar envid: RFC 3461 ENVID, xtext-decoded, or None.
    @ivar auth: RFC 4954 §5 AUTH= (xtext-decoded; ``<>`` when unknown), or None.
    @ivar has_params: any ESMTP parameter was given (refused after HELO).
    """

    sender: Address | None
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    has_params: bool = False

    @property
    def sender_text(self) -> str:
        """The reverse path without brackets; ``""`` for the null path."""
        return "" if self.sender is None else str(self.sender)


@dataclass(frozen=True)
class Rcpt:
    """RCPT TO (RFC 5321 §4.1.1.3) with its DSN parameters (RFC 3461 §4).

    @ivar recipient: the forward path (source route dropped), or None for
        the bare ``<Postmaster>`` that every server must accept.
    @ivar notify: NOTIFY values, upper case, in the order given.
    @ivar orcpt: ORCPT as ``addr-type;xtext`` (as sent, addr-type kept), or
        None.
    @ivar has_params: any ESMTP parameter was given (refused after HELO).
    """

    recipient: Address | None
    notify: tuple[str, ...] = ()
    orcpt: str | None = None
    has_params: bool = False


@dataclass(frozen=True)
class Data:
    """DATA (RFC 5321 §4.1.1.4)."""


@dataclass(frozen=True)
class Bdat:
    """BDAT (RFC 3030 §2): a chunk of exactly C{size} octets follows.

    @ivar size: the chunk size in octets.
    @ivar last: this is the last chunk of the message.
    """

    size: int
    last: bool


@dataclass(frozen=True)
class Rset:
    """RSET (RFC 5321 §4.1.1.5)."""


@dataclass(frozen=True)
class Noop:
    """NOOP (RFC 5321 §4.1.1.9); the argument is ignored."""


@dataclass(frozen=True)
class Quit:
    """QUIT (RFC 5321 §4.1.1.10)."""


@dataclass(frozen=True)
class Vrfy:
    """VRFY (RFC 5321 §4.1.1.6).

    @ivar argument: the string to verify, as sent.
    """

    argument: str


@dataclass(frozen=True)
class Help:
    """HELP (RFC 5321 §4.1.1.8).

    @ivar topic: the optional argument.
    """

    topic: str = ""


@dataclass(frozen=True)
class StartTLS:
    """STARTTLS (RFC 3207 §4)."""


@dataclass(frozen=True)
class Auth:
    """AUTH (RFC 4954 §4).

    @ivar mechanism: the SASL mechanism name, upper case.
    @ivar initial: the initial response as sent (base64 or ``=``), or None.
    """

    mechanism: str
    initial: str | None = None


@dataclass(frozen=True)
class NotImplementedCommand:
    """A command we know of but do not offer (EXPN, TURN, ETRN, ...).

    @ivar verb: the verb, upper case.
    """

    verb: str


Command = (
    Hello
    | Mail
    | Rcpt
    | Data
    | Bdat
    | Rset
    | Noop
    | Quit
    | Vrfy
    | Help
    | StartTLS
    | Auth
    | NotImplementedCommand
)

# RFC 5321 §4.1.2: esmtp-keyword and esmtp-value (value widened to UTF-8 by
# RFC 6531 §3.3).
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
_MECHANISM = re.compile(r"[A-Za-z0-9_-]{1,20}\Z")
_BASE64_OR_EQ = re.compile(r"(?:[A-Za-z0-9+/]*={0,2}|=)\Z")
# RFC 3461 §4: xtext.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+\Z")
_HELO_NAME = re.compile(r"[\x21-\x7e\u0080-\U0010ffff]+\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_NOT_IMPLEMENTED = frozenset({"EXPN", "TURN", "ETRN", "SEND", "SOML", "SAML", "ATRN"})


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX`` hex escapes).

    @raise ProtocolError: 501 5.5.4 when the text is not xtext.
    """
    if not _XTEXT.match(text):
        raise ProtocolError(SYNTAX_ERROR, f"not xtext: {text!r}")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    """Encode printable ASCII as RFC 3461 xtext; the inverse of L{xtext_decode}.

    Characters outside ``!``..``~`` and ``+`` and ``=`` become ``+XX``; code
    points above 0xFF cannot be encoded and raise ValueError.
    """
    out = []
    for ch in text:
        o = ord(ch)
        if o > 0xFF:
            raise ValueError("xtext encodes octets only")
        if 0x21 <= o <= 0x7E and ch not in "+=":
            out.append(ch)
        else:
            out.append(f"+{o:02X}")
    return "".join(out)


def _split_path(rest: str, error: Reply) -> tuple[str, str]:
    """Split ``<path> params`` into the path (brackets included) and params.

    Quoted local parts may hold ``>`` and spaces, so the closing bracket is
    found by scanning with quotes and backslash escapes in mind.
    """
    if not rest.startswith("<"):
        raise ProtocolError(error, "path not in angle brackets")
    quoted = False
    i = 1
    n = len(rest)
    while i < n:
        c = rest[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            params = rest[i + 1 :]
            if params and not params.startswith(" "):
                raise ProtocolError(error, "junk after path")
            return rest[: i + 1], params.strip(" ")
        elif c == "<":
            raise ProtocolError(error, "unbalanced angle brackets")
        i += 1
    raise ProtocolError(error, "unbalanced angle brackets")


def _parse_mailbox(path: str, error: Reply, utf8: bool) -> Address:
    """Parse ``<[route:]mailbox>`` (brackets included); drop the route."""
    inner = path[1:-1]
    if inner.startswith("@"):
        # RFC 5321 §4.1.2 A-d-l: "@" Domain *( "," "@" Domain ) ":".
        route, colon, mailbox = inner.partition(":")
        if not colon:
            raise ProtocolError(error, "source route without colon")
        for hop in route.split(","):
            if not hop.startswith("@"):
                raise ProtocolError(error, "bad source route")
            try:
                normalize_domain(hop[1:], utf8=utf8)
            except AddressError as e:
                raise ProtocolError(error, f"bad source route: {e}") from None
        inner = mailbox
    if not utf8 and not inner.isascii():
        raise ProtocolError(NON_ASCII_ADDRESS, "UTF-8 address without SMTPUTF8")
    try:
        return Address.parse(inner, utf8=utf8)
    except AddressError as e:
        raise ProtocolError(error, str(e)) from None


def _parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters: keyword (upper-cased) to value (None when absent)."""
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key):
            raise ProtocolError(SYNTAX_ERROR, f"bad parameter keyword {key!r}")
        if eq and not _VALUE.match(value):
            raise ProtocolError(SYNTAX_ERROR, f"bad parameter value {value!r}")
        key = key.upper()
        if key in params:
            raise ProtocolError(SYNTAX_ERROR, f"duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def _need_value(key: str, value: str | None) -> str:
    if value is None:
        raise ProtocolError(SYNTAX_ERROR, f"{key} needs a value")
    return value


def _no_value(key: str, value: str | None) -> None:
    if value is not None:
        raise ProtocolError(SYNTAX_ERROR, f"{key} takes no value")


def _parse_mail(rest: str) -> Mail:
    if rest[:5].upper() != "FROM:":
        raise ProtocolError(SYNTAX_ERROR, "expected FROM:")
    path, param_text = _split_path(rest[5:].lstrip(" "), BAD_SENDER)
    params = _parse_params(param_text)
    size = body = ret = envid = auth = None
    smtputf8 = False
    for key, value in params.items():
        if key == "SIZE":
            v = _need_value(key, value)
            if not _DIGITS.match(v):
                raise ProtocolError(SYNTAX_ERROR, "bad SIZE")
            size = int(v)
        elif key == "BODY":
            v = _need_value(key, value).upper()
            if v not in ("7BIT", "8BITMIME"):
                raise ProtocolError(UNKNOWN_PARAMETER, f"unsupported BODY={v}")
            body = v
        elif key == "SMTPUTF8":
            _no_value(key, value)
            smtputf8 = True
        elif key == "RET":
            v = _need_value(key, value).upper()
            if v not in ("FULL", "HDRS"):
                raise ProtocolError(SYNTAX_ERROR, f"bad RET={v}")
            ret = v
        elif key == "ENVID":
            v = _need_value(key, value)
            envid = xtext_decode(v)
            if len(v) > 100 or not envid.isascii() or not envid.isprintable():
                raise ProtocolError(SYNTAX_ERROR, "bad ENVID")
        elif key == "AUTH":
            v = _need_value(key, value)
            auth = v if v == "<>" else xtext_decode(v)
        else:
            raise ProtocolError(UNKNOWN_PARAMETER, f"unknown MAIL parameter {key}")
    sender = None if path == "<>" else _parse_mailbox(path, BAD_SENDER, smtputf8)
    return Mail(
        sender=sender,
        size=size,
        body=body,
        smtputf8=smtputf8,
        ret=ret,
        envid=envid,
        auth=auth,
        has_params=bool(params),
    )


def _parse_orcpt(value: str) -> str:
    addr_type, semi, text = value.partition(";")
    if not semi or not _ADDR_TYPE.match(addr_type) or not text:
        raise ProtocolError(SYNTAX_ERROR, "bad ORCPT")
    if addr_type.lower() == "utf-8":
        # RFC 6533 utf-8-addr-xtext: printable UTF-8 with \x{HEX} escapes.
        if not _VALUE.match(text) or "+" in text:
            raise ProtocolError(SYNTAX_ERROR, "bad ORCPT")
    else:
        decoded = xtext_decode(text)
        if not decoded.isascii():
            raise ProtocolError(SYNTAX_ERROR, "bad ORCPT")
    return value


def _parse_rcpt(rest: str, smtputf8: bool) -> Rcpt:
    if rest[:3].upper() != "TO:":
        raise ProtocolError(SYNTAX_ERROR, "expected TO:")
    path, param_text = _split_path(rest[3:].lstrip(" "), BAD_RECIPIENT)
    params = _parse_params(param_text)
    notify: tuple[str, ...] = ()
    orcpt = None
    for key, value in params.items():
        if key == "NOTIFY":
            items = tuple(_need_value(key, value).upper().split(","))
            if items != ("NEVER",) and (
                not set(items) <= _NOTIFY or len(set(items)) != len(items)
            ):
                raise ProtocolError(SYNTAX_ERROR, "bad NOTIFY")
            notify = items
        elif key == "ORCPT":
            orcpt = _parse_orcpt(_need_value(key, value))
        else:
            raise ProtocolError(UNKNOWN_PARAMETER, f"unknown RCPT parameter {key}")
    if path.lower() == "<postmaster>":
        recipient = None
    else:
        recipient = _parse_mailbox(path, BAD_RECIPIENT, smtputf8)
    return Rcpt(recipient, notify=notify, orcpt=orcpt, has_params=bool(params))


def _no_argument(verb: str, rest: str, command: Command) -> Command:
    if rest:
        raise ProtocolError(SYNTAX_ERROR, f"{verb} takes no argument")
    return command


def _parse_bdat(rest: str) -> Bdat:
    parts = rest.split(" ")
    if not 1 <= len(parts) <= 2 or not _DIGITS.match(parts[0]):
        raise ProtocolError(SYNTAX_ERROR, "bad BDAT size")
    if len(parts) == 2 and parts[1].upper() != "LAST":
        raise ProtocolError(SYNTAX_ERROR, "bad BDAT argument")
    return Bdat(int(parts[0]), last=len(parts) == 2)


def _parse_auth(rest: str) -> Auth:
    parts = rest.split(" ")
    if not 1 <= len(parts) <= 2 or not _MECHANISM.match(parts[0]):
        raise ProtocolError(SYNTAX_ERROR, "bad AUTH mechanism")
    initial = None
    if len(parts) == 2:
        if not parts[1] or not _BASE64_OR_EQ.match(parts[1]):
            raise ProtocolError(SYNTAX_ERROR, "bad AUTH initial response")
        initial = parts[1]
    return Auth(parts[0].upper(), initial)


def parse_command(line: bytes, *, smtputf8: bool = False) -> Command:
    """Parse one command line.

    @param line: the line without its CRLF.
    @param smtputf8: the current transaction declared SMTPUTF8, so RCPT may
        carry UTF-8 addresses (MAIL decides from its own parameters).
    @raise ProtocolError: with the reply to send.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(UNKNOWN_COMMAND, "command line is not UTF-8") from None
    if _CONTROL.search(text):
        raise ProtocolError(UNKNOWN_COMMAND, "control character in command line")
    verb, _, rest = text.partition(" ")
    verb = verb.upper()
    rest = rest.strip(" ")
    if verb in ("EHLO", "HELO", "LHLO"):
        if not _HELO_NAME.match(rest):
            raise ProtocolError(SYNTAX_ERROR, f"{verb} needs one name")
        return Hello(verb, rest)
    if verb == "MAIL":
        return _parse_mail(rest)
    if verb == "RCPT":
        return _parse_rcpt(rest, smtputf8)
    if verb == "DATA":
        return _no_argument(verb, rest, Data())
    if verb == "BDAT":
        return _parse_bdat(rest)
    if verb == "RSET":
        return _no_argument(verb, rest, Rset())
    if verb == "NOOP":
        return Noop()
    if verb == "QUIT":
        return _no_argument(verb, rest, Quit())
    if verb == "VRFY":
        if not rest:
            raise ProtocolError(SYNTAX_ERROR, "VRFY needs an argument")
        return Vrfy(rest)
    if verb == "HELP":
        return Help(rest)
    if verb == "STARTTLS":
        return _no_argument(verb, rest, StartTLS())
    if verb == "AUTH":
        return _parse_auth(rest)
    if verb in _NOT_IMPLEMENTED:
        return NotImplementedCommand(verb)
    raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {verb[:20]!r}")
