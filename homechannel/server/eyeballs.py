"""Happy Eyeballs (RFC 8305) for the home server's registration, sans I/O.

A coordinator's name may have IPv6 and IPv4 addresses, and a dual-stack home
network reaches both.  The home server registers once, over one of them: IPv6
when it works, IPv4 otherwise, and it races only the first step to find out.

* :func:`interleave` orders a name's addresses as RFC 8305 section 4 does, IPv6
  first: IPv6, IPv4, IPv6, ... (the resolver's order kept within each family).
* A registration starts with HELLO to the preferred (IPv6) address.  If no
  COOKIE came back within :data:`HEAD_START` (RFC 8305's "Connection Attempt
  Delay", 250 ms), the same HELLO goes to the first address of the other family
  too, and every resend goes to both.  HELLO costs the coordinator nothing (it
  answers with a stateless cookie bound to the source address), so racing it
  leaves no state anywhere.
* The first COOKIE decides: the rest of the handshake, the registration and
  every keepalive go to the address it came from, and only there, so the home
  NAT or firewall keeps exactly that one mapping open.  When both families work,
  IPv6 wins (its HELLO left first; its COOKIE arrives first unless IPv6 is more
  than the head start slower); a COOKIE from the other address after that is
  dropped, and nothing was registered there.
* The race runs once per resolution of the name.  Then the link keeps its
  address: a handshake that starts over goes there again.  When that address
  stops answering (pings missed, the registration lost), the links fail over to
  the name's next address, the other family included, and register there before
  they leave the old one (:mod:`homechannel.server.links`); the address that
  stopped answering is tried last from then on.

:class:`Race` is the race of one link; :class:`~homechannel.server.links.Links`
keeps it while the link's registrant is in its first HELLO step.
"""

from itertools import zip_longest

from homechannel.protocol.hostport import ip_family

HEAD_START = 0.25


def interleave(ips):
    """*ips* (each once) as IPv6, IPv4, IPv6, IPv4, ...: IPv6 first."""
    seen = []
    for ip in ips:
        if ip not in seen:
            seen.append(ip)
    v6 = [ip for ip in seen if ip_family(ip) == "IPv6"]
    v4 = [ip for ip in seen if ip_family(ip) != "IPv6"]
    return [ip for pair in zip_longest(v6, v4) for ip in pair if ip is not None]


def other_family(ips, ip, skip=()):
    """The first of *ips* of the other family than *ip*, not in *skip*; or None."""
    family = ip_family(ip) == "IPv6"
    return next((other for other in ips
                 if (ip_family(other) == "IPv6") != family and other not in skip), None)


class Race:
    """The HELLO step of one registration, over two addresses of different families."""

    def __init__(self, preferred, alternate, now, head_start=HEAD_START):
        self.preferred = preferred      # (ip, port): HELLO goes here first
        self.alternate = alternate      # (ip, port): and here after the head start
        self.deadline = now + head_start
        self.joined = False             # the alternate gets the HELLOs too
        self._hello = None              # the last HELLO sent, for the alternate

    def send(self, datagrams):
        """This step's datagrams (HELLOs), addressed: ``[(datagram, addr)]``."""
        if datagrams:
            self._hello = datagrams[-1]
        out = [(d, self.preferred) for d in datagrams]
        if self.joined:
            out += [(d, self.alternate) for d in datagrams]
        return out

    def poll(self, now):
        """At the end of the head start: the last HELLO, for the alternate address."""
        if self.joined or now < self.deadline:
            return []
        self.joined = True
        return [(self._hello, self.alternate)] if self._hello is not None else []

    def next_deadline(self):
        return None if self.joined else self.deadline

    def __contains__(self, addr):
        """Whether a COOKIE from *addr* answers this race."""
        return addr == self.preferred or (self.joined and addr == self.alternate)
