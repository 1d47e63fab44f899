"""The one URL parser of the registry client: every origin decision and every connection use it.

A credential may go only to its registry's origin (scheme, host, port), so the
client must read a URL exactly as the connection will. Two parsers that
disagree (``urllib.parse`` and urllib3 read a backslash, userinfo or control
characters differently) let a redirect look like the registry while the socket
goes elsewhere (issue 19). Here a URL is parsed once, with urllib3's own
``parse_url``; the resulting ``Target`` carries the origin the decisions are
made on *and* the host, port and request path the transport connects to, so
there is nothing left to re-parse.

A URL that two reasonable parsers could read differently is refused with
``UnsafeURLError``, never followed: control characters, whitespace, a backslash,
anything outside printable ASCII, userinfo (``@``), a ``%`` in the host, a host
that is not a DNS name or IP literal, a scheme other than http(s), or any
disagreement between urllib3 and ``urllib.parse`` about scheme, host or port.

This module must never do I/O, and never put a query string in a log line
(a signed blob URL carries its own secret there): use ``Target.loggable``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse

import urllib3.util

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Printable ASCII without space and backslash: anything else is read differently by
# different parsers (urllib3 percent-encodes it, urlsplit strips or keeps it, browsers
# turn "\" into "/").
_UNSAFE_CHARS = re.compile(r"[^\x21-\x5b\x5d-\x7e]")
_MAX_URL = 8192
# A DNS name or IPv4 address (letters, digits, '.', '-', '_'), or an IPv6 literal.
_HOST = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")


class UnsafeURLError(ValueError):
    """A URL (or redirect ``Location``) the client refuses to use; the message says why."""


@dataclasses.dataclass(frozen=True)
class Origin:
    """Scheme, host (lower case, IPv6 in brackets) and port, as the connection uses them."""

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        """``host:port``, for messages and the insecure-registry list."""
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Target:
    """A URL decided on: the origin it belongs to and the request path sent to it."""

    origin: Origin
    request_uri: str  # path and query, as urllib3 sends them

    @property
    def url(self) -> str:
        """The absolute URL (for joining a relative ``Location`` onto it)."""
        return f"{self.origin.scheme}://{self.origin.netloc}{self.request_uri}"

    @property
    def loggable(self) -> str:
        """Scheme, host, port and path only: a query could carry anything."""
        path = self.request_uri.split("?", 1)[0]
        return f"{self.origin.scheme}://{self.origin.netloc}{path}"


def parse(url: str) -> Target:
    """The ``Target`` of an absolute http(s) URL, read as urllib3 reads it.

    Raises ``UnsafeURLError`` saying what is wrong when two parsers could disagree
    about where it goes, or it is not an absolute http(s) URL with a host.
    """
    if len(url) > _MAX_URL:
        raise UnsafeURLError(f"URL longer than {_MAX_URL} characters")
    bad = _UNSAFE_CHARS.search(url)
    if bad is not None:
        raise UnsafeURLError(
            f"URL holds {_describe(bad.group())} at position {bad.start()}, which URL "
            "parsers read differently"
        )
    try:
        parsed = urllib3.util.parse_url(url)
    except urllib3.exceptions.LocationParseError:
        raise UnsafeURLError("URL cannot be parsed (bad host or port)") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeURLError(f"scheme {scheme[:20]!r} is not http or https")
    authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0]
    if parsed.auth is not None or "@" in authority:
        raise UnsafeURLError("URL holds userinfo ('@' before the host)")
    if "%" in authority:
        raise UnsafeURLError("host holds a percent-encoded character")
    host = (parsed.host or "").lower()
    if not host:
        raise UnsafeURLError("URL has no host")
    if not _HOST.fullmatch(host):
        raise UnsafeURLError("host holds characters no registry host name has")
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[scheme]
    origin = Origin(scheme, host, port)
    if _stdlib_origin(url) != origin:
        raise UnsafeURLError("URL parsers disagree about its host or port")
    return Target(origin, parsed.request_uri)


def join(base: Target, location: str) -> Target:
    """The ``Target`` a redirect's ``Location`` names, relative to ``base``.

    Scheme-relative (``//host/path``) and relative forms are resolved as RFC 3986
    says; the raw value is checked before joining so that joining cannot hide
    a character the check refuses. Raises ``UnsafeURLError``.
    """
    if not location:
        raise UnsafeURLError("redirect without a Location")
    bad = _UNSAFE_CHARS.search(location)
    if bad is not None:
        raise UnsafeURLError(
            f"Location holds {_describe(bad.group())} at position {bad.start()}, which URL "
            "parsers read differently"
        )
    try:
        joined = urllib.parse.urljoin(base.url, location)
    except ValueError as e:  # e.g. "Invalid IPv6 URL" for an unclosed "["
        raise UnsafeURLError(f"Location cannot be parsed ({e})") from None
    return parse(joined)


def _stdlib_origin(url: str) -> Origin | None:
    """The origin ``urllib.parse`` reads, to refuse URLs on which the two disagree."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    hostname = (parts.hostname or "").lower()
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return Origin(scheme, hostname, port if port is not None else _DEFAULT_PORTS.get(scheme, 0))


def _describe(char: str) -> str:
    if char == "\\":
        return "a backslash"
    if char == " ":
        return "a space"
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"control character 0x{ord(char):02x}"
    return f"non-ASCII or whitespace character U+{ord(char):04X}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses, with or without a port (plain http
    is allowed there, as Docker allows it)."""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
