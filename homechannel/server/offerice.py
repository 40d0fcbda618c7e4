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
elsewhere later meets a certificate check it cannot pass).  A name with addresses
of both families becomes one URL per family, the family the home server is
registered over first (the one it knows it can reach: an IPv6-only home cannot
use a relay's IPv4 address).  Literal addresses must be listed themselves.  What
is dropped is logged.
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
    *resolve*: ``async resolve(host) -> [address, ...]``; *family*: a callable giving
    the family the home server is registered over ("IPv6", "IPv4" or None)."""

    def __init__(self, allowed, resolve=getaddrinfo_resolve, family=lambda: None):
        self._allowed = allowed if callable(allowed) else (lambda entries=tuple(allowed):
                                                            entries)
        self._resolve = resolve
        self._family = family
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
                if not checked:
                    self.dropped += 1
                else:
                    good += [u for u in checked if u not in good]
            if good:
                kept.append(dict(entry, urls=good))
        return tuple(kept)

    async def _check_url(self, url):
        host = url_host(url)
        allowed = self.allowed
        if allowed.listed(host):
            return [url]                    # an address the operator wrote down
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
            return [url]
        # One address of each family (rtc/webrtc.py puts an IPv6 literal back for aiortc),
        # the family this server reaches its coordinator over first.
        ipv6 = [a for a in addresses if ":" in a][:1]
        ipv4 = [a for a in addresses if ":" not in a][:1]
        ordered = ipv6 + ipv4 if self._family() == "IPv6" else ipv4 + ipv6
        return [with_host(url, a) for a in ordered]
