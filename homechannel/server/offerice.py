"""The ICE servers a coordinator's offer brings, checked before the home server uses
them (docs/security.md, "What the coordinator cannot do").

The coordinator adds a TURN entry to each relayed offer (its credential for the
home server's side of that connect).  Nothing the client proves covers it, so a
hostile coordinator could point the home server's STUN or TURN client anywhere:
at a service on the home network.  :class:`OfferIcePolicy` keeps only the URLs
whose host is one the home server's own configuration names
(``webrtc.offer_ice_hosts``; by default the coordinator's host(s) and the hosts
of ``webrtc.ice_servers``).  A name is resolved here, once, and must resolve only
to public addresses (or ones the operator listed); the URL then names the
checked address (so aiortc does not resolve it again, and a DNS answer that
changes between the check and the use cannot lead elsewhere), except for
``turns:``, whose TLS certificate is for the name (a name that resolves
elsewhere later meets a certificate check it cannot pass).  Literal addresses
must be listed themselves.  What is dropped is logged.
"""

import asyncio
import socket

from homechannel.protocol.ice import AllowedHosts, url_host, with_host
from homechannel.ops.logsafe import Logger

log = Logger()


async def getaddrinfo_resolve(host):
    """Every address *host* has (asyncio's resolver, in a thread: never blocking)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class OfferIcePolicy:
    """*allowed*: the configuration's hosts (names, addresses, networks), or a callable
    returning them (the coordinator registered with now: it follows a move);
    *resolve*: ``async resolve(host) -> [address, ...]``."""

    def __init__(self, allowed, resolve=getaddrinfo_resolve):
        self._allowed = allowed if callable(allowed) else (lambda entries=tuple(allowed):
                                                            entries)
        self._resolve = resolve
        self.dropped = 0

    @property
    def allowed(self):
        return AllowedHosts(self._allowed())

    async def check(self, servers):
        """The entries of *servers* (validated RTCIceServer dicts) with only allowed
        URLs, each naming a checked address; entries left without URLs go."""
        kept = []
        for entry in servers:
            urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
            good = []
            for url in urls:
                checked = await self._check_url(url)
                if checked is None:
                    self.dropped += 1
                else:
                    good.append(checked)
            if good:
                kept.append(dict(entry, urls=good))
        return tuple(kept)

    async def _check_url(self, url):
        host = url_host(url)
        allowed = self.allowed
        if allowed.listed(host):
            return url                      # an address the operator wrote down
        if not allowed.name_allowed(host):
            log.warn("ignoring the ICE server {url} the coordinator offered: {host} is not "
                     "one of this home server's allowed hosts (webrtc.offer_ice_hosts)",
                     url=url, host=host)
            return None
        try:
            addresses = await self._resolve(host)
        except OSError as e:
            log.warn("ignoring the ICE server {url}: {host} does not resolve ({error})",
                     url=url, host=host, error=e)
            return None
        refused = [a for a in addresses if not allowed.address_allowed(a)]
        if not addresses or refused:
            log.warn("ignoring the ICE server {url}: {host} resolves to {address}, not a public "
                     "address (list it in webrtc.offer_ice_hosts if it is yours)",
                     url=url, host=host, address=(refused or ["nothing"])[0])
            return None
        if url.startswith("turns:"):
            return url
        ipv4 = [a for a in addresses if ":" not in a]
        if not ipv4:
            # aiortc's ICE URLs take no IPv6 literal (docs/architecture.md, the stack).
            log.warn("ignoring the ICE server {url}: {host} has no IPv4 address",
                     url=url, host=host)
            return None
        return with_host(url, ipv4[0])
