"""``HOST:PORT``: the one way an address is written, on the command line and in a config.

- ``name.example.org:7777`` or ``192.0.2.1:7777``: a DNS name (ASCII: the IDNA
  form of an international one) or an IPv4 address;
- ``[2001:db8::1]:7777``: an IPv6 address in brackets (RFC 3986), given back
  without them;
- an IPv6 address without brackets (``2001:db8::1:7777``) is refused with the
  advice to add them: where its port starts is a guess.

Used for the home server's ``--coordinator`` and ``coordinator.addresses``, the
CLI's ``migrate --to`` and the native client's ``--listen``; each caller words
its own error (what the value is for, an example) and adds the parser's hint
(:meth:`HostPortError.explain`).  :func:`format_host_port` writes one back.

And the two facts about an IP address that both daemons' dual-stack sockets need:
:func:`ip_family` (``"IPv6"``, ``"IPv4"`` or None) and :func:`unmapped` (an IPv4
address that a dual-stack socket reports as ``::ffff:a.b.c.d`` written as IPv4).
Pure: text in, ``(host, port)`` out.
"""

import ipaddress
import re

from homechannel.errors import ProtocolError

_PORT = re.compile(r"[0-9]{1,5}")
# A DNS name or an IPv4 address (its syntax is checked where it is resolved).
_NAME = re.compile(r"[A-Za-z0-9._-]+")
IPV6_HINT = "write an IPv6 address in brackets, e.g. [2001:db8::1]:7777"


class HostPortError(ProtocolError):
    """Not ``HOST:PORT``.  ``hint`` says what is wrong when it is more than that
    (an IPv6 address without brackets, a host that is not ASCII); else ""."""

    def __init__(self, hint: str = "") -> None:
        super().__init__(hint or "expected HOST:PORT")
        self.hint = hint

    def explain(self, message: str) -> str:
        """The caller's own *message*, with the hint (if any) after it."""
        return f"{message}; {self.hint}" if self.hint else message


def parse_host_port(text: object, *, default_host: str | None = None,
                    port_zero: bool = False) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` or ``[IPV6]:PORT``; :class:`HostPortError`
    otherwise.  The port is 1-65535 (0 too with *port_zero*: "any free port");
    an empty host is *default_host* when one is given, else an error."""
    if not isinstance(text, str):
        raise HostPortError()
    head, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not (0 if port_zero else 1) <= int(port) < 65536:
        if ":" in head and not head.startswith("["):
            raise HostPortError(IPV6_HINT)
        raise HostPortError()
    if head.startswith("[") or head.endswith("]"):
        host = head[1:-1]
        if not (head.startswith("[") and head.endswith("]")) or not _is_ipv6(host):
            raise HostPortError(f"{head} is not an IPv6 address in brackets")
        return host, int(port)
    if ":" in head:
        raise HostPortError(IPV6_HINT)
    if not head:
        if default_host is None:
            raise HostPortError()
        return default_host, int(port)
    if not head.isascii():
        raise HostPortError("the host must be ASCII (use the IDNA form)")
    if not _NAME.fullmatch(head):
        raise HostPortError(f"{head!r} is not a host name or address")
    return head, int(port)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address (what
    :func:`parse_host_port` reads back)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ip_family(host: str) -> str | None:
    """``"IPv6"`` or ``"IPv4"`` for an IP address (an IPv4-mapped IPv6 address is
    IPv4: it travels as IPv4), None for anything else (a name)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except (ValueError, AttributeError):
        return None
    if ip.version == 6 and ip.ipv4_mapped is None:
        return "IPv6"
    return "IPv4"


def unmapped(host: str) -> str:
    """*host* with an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, how a dual-stack
    socket reports an IPv4 peer) written as the IPv4 address; anything else unchanged."""
    if not host.startswith("::ffff:") and not host.startswith("::FFFF:"):
        return host
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return str(mapped) if mapped is not None else host


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
