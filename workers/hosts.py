"""Checking test targets before they reach a tool's command line.

A target comes from configuration or from a request, and ends up as one element of a tool's
argument list. It is never given to a shell, but a value such as ``-oFoo`` would still be read
as an option, and ``10.0.0.1 ; rm`` or ``host\\n`` are never intended. So a target must be
exactly one of: an IPv4 literal, an IPv6 literal (optionally in brackets), or a DNS host name.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout

__all__ = ["validate_target", "ip_version", "own_address", "addresses"]

RESOLVE_TIMEOUT_S = 2.0
"""Longest wait for the resolver when a lock is named after a target's address."""
_resolver = ThreadPoolExecutor(max_workers=2, thread_name_prefix="resolve")

#: Longest DNS name in its text form, without a trailing dot (RFC 1035 2.3.4 / RFC 1123 2.1).
MAX_NAME_LENGTH = 253

# One RFC 1123 label: letters, digits and hyphens, 1..63 characters, no hyphen at either end.
# `\Z`, not `$`: `$` would also match before a trailing newline.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def validate_target(text: str) -> str:
    """Return ``text`` as a safe target: an IP literal or a DNS name; raise ValueError otherwise.

    IPv6 literals may come in brackets (``[::1]``); they are returned without them, and IP
    literals in their canonical form (``::1``, ``10.0.0.1``). DNS names are returned as given
    (one trailing dot, the DNS root, is allowed and kept).

    Rejected, among others: empty text, any whitespace or control character, shell
    metacharacters, ``host:port``, IPv6 zone ids (``fe80::1%eth0``: iperf3 reads ``%`` as a
    device name), labels over 63 characters, names over 253 characters, and names a resolver
    would silently read as an IPv4 address (``127.1``, ``0x7f000001``, ``1.2.3``).
    """
    if not isinstance(text, str):
        raise ValueError(f"not an IP address or DNS name: {text!r} (not a string)")
    if not text:
        raise ValueError("not an IP address or DNS name: empty target")

    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else None
    if inner is not None:
        address = _ip_literal(inner)
        if address is None or address.version != 6:
            raise ValueError(f"not an IP address or DNS name: {text!r} "
                             "(brackets are only for IPv6 literals)")
        return str(address)

    address = _ip_literal(text)
    if address is not None:
        return str(address)
    if "%" in text and ":" in text:
        raise ValueError(f"not an IP address or DNS name: {text!r} "
                         "(IPv6 zone ids are not supported)")
    _check_dns_name(text)
    return text


def ip_version(target: str) -> int | None:
    """4 or 6 if ``target`` is an IP literal (brackets allowed), None for a DNS name."""
    inner = target[1:-1] if target.startswith("[") and target.endswith("]") else target
    address = _ip_literal(inner)
    return None if address is None else address.version


def _ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``text`` spells, or None. Scoped IPv6 addresses (``%zone``) count as None."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if getattr(address, "scope_id", None):
        return None
    return address


def _check_dns_name(text: str) -> None:
    """Raise ValueError unless ``text`` is an RFC 1123 host name that is not an IPv4 in disguise."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"not an IP address or DNS name: {_shorten(text)!r} "
                         f"(a DNS name has 1 to {MAX_NAME_LENGTH} characters)")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(f"not an IP address or DNS name: {_shorten(text)!r} "
                             f"(bad label {_shorten(label)!r})")
    # getaddrinfo() hands all-numeric forms to inet_aton(), which reads "127.1" or "0x7f000001"
    # as IPv4 addresses. Such text is not a name; ipaddress (strict) already said it is not an
    # address either, so refuse the ambiguity. A numeric top-level label is never a real name.
    if labels[-1].isdigit() or _inet_aton_accepts(name):
        raise ValueError(f"not an IP address or DNS name: {text!r} "
                         "(reads as a non-standard IPv4 address)")


def _inet_aton_accepts(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def own_address(hostname: str | None = None) -> str:
    """The first address this host's name (``socket.gethostname()``, or ``hostname``) resolves
    to that other hosts could reach: not loopback, not link-local. In a container that is the
    container's address on its network (the runtime writes it into /etc/hosts); on a host it is
    whatever /etc/hosts or DNS says.

    Raises ValueError when the name does not resolve, or resolves only to loopback / link-local
    addresses (Debian maps the host name to 127.0.1.1 by default).
    """
    name = hostname or socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"this host's name {name!r} does not resolve ({exc})") from None
    found = [info[4][0] for info in infos]
    for text in found:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            return str(address)
    raise ValueError(f"this host's name {name!r} resolves only to "
                     f"{', '.join(dict.fromkeys(found))}, which other nodes cannot reach")


def addresses(target: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[str]:
    """The IP addresses `target` stands for, in the resolver's order: an IP literal is itself
    (canonical, without brackets), a DNS name what getaddrinfo says within `timeout_s`, else
    nothing. Locks are named after these, so that a test by name and a test by address of one
    server are one resource. getaddrinfo has no timeout of its own: it runs on a small pool and
    a slow answer is given up (its thread ends when the resolver does)."""
    version = ip_version(target)
    if version is not None:
        inner = target[1:-1] if target.startswith("[") else target
        return [str(ipaddress.ip_address(inner))]
    future = _resolver.submit(socket.getaddrinfo, target, None, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout_s)
    except (FutureTimeout, OSError, UnicodeError):
        future.cancel()
        return []
    found = (info[4][0].split("%", 1)[0] for info in infos)
    return list(dict.fromkeys(str(ipaddress.ip_address(a)) for a in found))
