"""Real kernel NAT between the parts, inside the test's own network namespaces.

Used by ``tests/e2e/test_nat.py`` and ``bench/nat_connect.py``.  Must run inside
``tests/netns-run`` (a loopback-only network namespace with a private mount
namespace): :class:`Topology` mounts a tmpfs on ``/run/netns`` there and
creates its namespaces with ``ip netns add``, so nothing it builds is visible
outside, and nothing in it can reach another machine::

                       "public" 203.0.113.0/24 (bridge in ns pub)
          coordinator + coturn: 203.0.113.10 (ns pub, default route on the bridge)
               |                                          |
      home router 203.0.113.2 (ns rhome)        client router 203.0.113.3 (ns rclient)
      nftables masquerade [fully-random]        nftables masquerade [fully-random]
               |                                          |
      home server 10.1.0.2 (ns home)            client 10.2.0.2 (ns client)

Cone NAT is ``masquerade`` (the kernel keeps the source port when it can, and
one mapping serves every destination); symmetric NAT is ``masquerade
fully-random`` (a new random port per flow).  Each router's firewall lets in
only replies (``ct state established,related``), to the LAN and to itself.  ``udp_timeout`` sets the
router's UDP conntrack timeouts (both unreplied and "stream").

IPv6 is off in every namespace unless a topology asks for it (``ipv6=True``).
Then the same namespaces are also dual-stack, as a DS-Lite or mobile network is:
IPv6 routed, no NAT, and each router's IPv6 firewall lets in only replies
(``ct state established,related``) and neighbour discovery to itself::

      coordinator 2001:db8::10 (ns pub, 2001:db8::/64 on the bridge)
      home router 2001:db8::2, home 2001:db8:1::2 (2001:db8:1::/64)
      client router 2001:db8::3, client 2001:db8:2::2 (2001:db8:2::/64)

``ipv6_only=("home",)`` gives that side's LAN no IPv4 at all.  Every address is
added without duplicate address detection (``nodad``, and DAD and router
advertisements off before any link exists): an address that becomes valid a
second after "link up" is a network change to Chromium (ERR_NETWORK_CHANGED).
The name :data:`COORDINATOR_NAME` resolves to both of the coordinator's addresses
in every namespace (an ``/etc/hosts`` bind-mounted in this private mount namespace).
"""

import os
import shutil
import subprocess
import uuid

PUBLIC_HOST = "203.0.113.10"
ROUTER_WAN = {"home": "203.0.113.2", "client": "203.0.113.3"}
LAN = {"home": ("10.1.0.1", "10.1.0.2"), "client": ("10.2.0.1", "10.2.0.2")}
# IPv6 (opt-in per topology): routed, no NAT.
PUBLIC_HOST6 = "2001:db8::10"
ROUTER_WAN6 = {"home": "2001:db8::2", "client": "2001:db8::3"}
LAN6 = {"home": ("2001:db8:1::1", "2001:db8:1::2"), "client": ("2001:db8:2::1", "2001:db8:2::2")}
COORDINATOR_NAME = "coordinator.test"


class TopologyError(Exception):
    pass


def _run(*argv, input=None, check=True):
    result = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise TopologyError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


def _loopback_only():
    import socket
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _ensure_netns_dir():
    """A tmpfs on /run/netns, private to this mount namespace (tests/netns-run)."""
    os.makedirs("/run/netns", exist_ok=True)
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split()[4] == "/run/netns" for line in f)
    if not mounted:
        _run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/netns")


def _nat_rules(nat):
    masquerade = "masquerade fully-random" if nat == "symmetric" else "masquerade"
    # 'fwd' is an nft keyword: name the chains otherwise.
    return f"""
table ip homechannel_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" {masquerade}
  }}
  chain forward_filter {{
    type filter hook forward priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }}
  # Unsolicited packets to the router itself are dropped, as home routers do.
  # (Dropped before conntrack confirms them: an unanswered probe from a peer
  # leaves no entry that would make the router pick another port later.)
  chain input_filter {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }}
}}
"""


class Topology:
    """Build with :meth:`up`, always :meth:`down` (or use it as a context manager)."""

    def __init__(self, home_nat="cone", client_nat="cone", udp_timeout=None, wan=None,
                 ipv6=False, ipv6_only=()):
        """*wan* (a :class:`wan.Wan`): the client router's link to the public side is
        an emulated WAN link (delay, loss, rate), see ``tests/support/wan.py``.
        *ipv6*: every namespace dual-stack (IPv6 routed behind stateful firewalls);
        *ipv6_only*: the sides ("home", "client") whose LAN has no IPv4."""
        for nat in (home_nat, client_nat):
            if nat not in ("cone", "symmetric"):
                raise ValueError(f"unknown NAT kind {nat!r}")
        if set(ipv6_only) - {"home", "client"} or (ipv6_only and not ipv6):
            raise ValueError("ipv6_only takes sides (\"home\", \"client\") and needs ipv6=True")
        if ipv6 and wan is not None:
            raise ValueError("the WAN emulator carries IPv4 only")
        self.nat = {"home": home_nat, "client": client_nat}
        self.udp_timeout = udp_timeout
        self.wan = wan
        self.ipv6 = ipv6
        self.ipv6_only = tuple(ipv6_only)
        self._hosts = None          # the /etc/hosts this topology bind-mounted
        tag = uuid.uuid4().hex[:6]
        names = ["pub", "rhome", "home", "rclient", "client"] + (["wan"] if wan else [])
        self.ns = {name: f"hc{tag}-{name}" for name in names}
        self.public_address = dict(ROUTER_WAN)
        self._made = []
        self._procs = []
        self._wire = None

    # -- building --------------------------------------------------------------------

    @staticmethod
    def check_environment():
        """None when a topology can be built here, else the reason it cannot."""
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                return f"{tool} not found (Debian packages iproute2, nftables)"
        if os.geteuid() != 0:
            return "building NAT namespaces needs root (run under tests/netns-run as root)"
        if not _loopback_only():
            return "not in a loopback-only network namespace: run under tests/netns-run"
        return None

    def ip(self, ns, *args):
        return _run("ip", "-n", self.ns[ns], *args)

    def exec_prefix(self, ns):
        """argv prefix that runs a command inside namespace *ns*."""
        return ["ip", "netns", "exec", self.ns[ns]]

    def run(self, ns, *argv, check=True, input=None):
        return _run(*self.exec_prefix(ns), *argv, check=check, input=input)

    def popen(self, ns, argv, **kw):
        return subprocess.Popen(self.exec_prefix(ns) + list(argv), **kw)

    def up(self):
        why = self.check_environment()
        if why:
            raise TopologyError(why)
        _ensure_netns_dir()
        try:
            for name in self.ns.values():
                _run("ip", "netns", "add", name)
                self._made.append(name)
                if self.ipv6:
                    _run("ip", "netns", "exec", name, "sysctl", "-qw", *IPV6_QUIET)
                else:
                    # IPv4 only, and no IPv6 at all: a link-local address finishing
                    # duplicate address detection a second after "link up" is a network
                    # change to Chromium, which fails its page loads in flight with
                    # ERR_NETWORK_CHANGED (seen in CI).  Off before any link exists.
                    _run("ip", "netns", "exec", name, "sysctl", "-qw",
                         "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1", check=False)
                _run("ip", "-n", name, "link", "set", "lo", "up")
            self.ip("pub", "link", "add", "br0", "type", "bridge")
            self.ip("pub", "link", "set", "br0", "up")
            self.ip("pub", "addr", "add", f"{PUBLIC_HOST}/24", "dev", "br0")
            # coturn drops allocations on "network unreachable": give the public host
            # a default route (nothing is behind it).
            self.ip("pub", "route", "add", "default", "dev", "br0")
            for side, router in (("home", "rhome"), ("client", "rclient")):
                self._router(side, router)
            if self.ipv6:
                self._ipv6_up()
        except BaseException:
            self.down()
            raise
        return self

    def _router(self, side, router):
        ns = self.ns
        port = f"{side[:1]}wan"
        if side == "client" and self.wan is not None:
            # router --veth-- [wan: wana, wire, wanb] --veth-- public bridge
            import wan as wan_
            _run("ip", "link", "add", "wan", "netns", ns[router], "type", "veth",
                 "peer", "name", "wana", "netns", ns["wan"])
            _run("ip", "link", "add", "wanb", "netns", ns["wan"], "type", "veth",
                 "peer", "name", port, "netns", ns["pub"])
            self._wire = wan_.build(self, "wan", self.wan, "wana", "wanb")
            self._procs.append(self._wire)
        else:
            _run("ip", "link", "add", "wan", "netns", ns[router], "type", "veth",
                 "peer", "name", port, "netns", ns["pub"])
        self.ip("pub", "link", "set", port, "master", "br0")
        self.ip("pub", "link", "set", port, "up")
        self.ip(router, "addr", "add", f"{self.public_address[side]}/24", "dev", "wan")
        self.ip(router, "link", "set", "wan", "up")
        self.ip(router, "route", "add", "default", "via", PUBLIC_HOST)
        gateway, host = LAN[side]
        _run("ip", "link", "add", "lan", "netns", ns[router], "type", "veth",
             "peer", "name", "eth0", "netns", ns[side])
        if side not in self.ipv6_only:
            self.ip(router, "addr", "add", f"{gateway}/24", "dev", "lan")
        self.ip(router, "link", "set", "lan", "up")
        if side not in self.ipv6_only:
            self.ip(side, "addr", "add", f"{host}/24", "dev", "eth0")
        self.ip(side, "link", "set", "eth0", "up")
        if side not in self.ipv6_only:
            self.ip(side, "route", "add", "default", "via", gateway)
        self.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.run(router, "nft", "-f", "-", input=_nat_rules(self.nat[side]))
        if self.udp_timeout is not None:
            t = int(self.udp_timeout)
            self.run(router, "sysctl", "-qw", f"net.netfilter.nf_conntrack_udp_timeout={t}",
                     f"net.netfilter.nf_conntrack_udp_timeout_stream={t}")

    def set_wan(self, wan):
        """Change the emulated WAN link (a :class:`wan.Wan`) of a topology built with
        one; connections through it stay up."""
        import wan as wan_

        if self.wan is None:
            raise TopologyError("this topology has no WAN link (Topology(wan=Wan()))")
        wan_.change(self, "wan", self._wire, wan, ("wana", "wanb"))
        self.wan = wan

    def forward_port(self, side, port, to_port=None):
        """The router of *side* forwards TCP *port* on its public address to its LAN
        host's *to_port* (default: the same), as a home router's port forward does: a
        plain-TCP path across the same links, for references (ssh, VNC) to compare with."""
        router = "rhome" if side == "home" else "rclient"
        host = LAN[side][1]
        nft = ("nft", "add", "chain", "ip", "homechannel_nat", "prerouting",
               "{ type nat hook prerouting priority dstnat; policy accept; }")
        self.run(router, *nft)
        self.run(router, "nft", "add", "rule", "ip", "homechannel_nat", "prerouting",
                 "iifname", "wan", "tcp", "dport", str(port), "dnat", "to",
                 f"{host}:{to_port or port}")
        self.run(router, "nft", "insert", "rule", "ip", "homechannel_nat", "forward_filter",
                 "iifname", "wan", "ct", "status", "dnat", "accept")

    def _ipv6_up(self):
        """The IPv6 half of a dual-stack topology (see the module docstring)."""
        self.ip("pub", "addr", "add", f"{PUBLIC_HOST6}/64", "dev", "br0", "nodad")
        self.run("pub", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for side, router in (("home", "rhome"), ("client", "rclient")):
            gateway, host = LAN6[side]
            self.ip(router, "addr", "add", f"{ROUTER_WAN6[side]}/64", "dev", "wan", "nodad")
            self.ip(router, "route", "add", "default", "via", PUBLIC_HOST6)
            self.ip(router, "addr", "add", f"{gateway}/64", "dev", "lan", "nodad")
            self.ip(side, "addr", "add", f"{host}/64", "dev", "eth0", "nodad")
            self.ip(side, "route", "add", "default", "via", gateway)
            self.ip("pub", "route", "add", f"{gateway.rsplit(':', 1)[0]}:/64", "via",
                    ROUTER_WAN6[side])
            self.run(router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            self.run(router, "nft", "-f", "-", input=FIREWALL6)
        self._hosts = _bind_hosts({COORDINATOR_NAME: (PUBLIC_HOST, PUBLIC_HOST6)})

    def unsolicited_counter(self, side, source, port):
        """Count, at the router of *side*, the IPv6 datagrams from *source*:*port* that
        its firewall drops (not replies to anything the LAN sent); returns a function
        that reads the count."""
        router = "rhome" if side == "home" else "rclient"
        self.run(router, "nft", "insert", "rule", "ip6", "homechannel_fw6", "forward_filter",
                 "iifname", "wan", "ip6", "saddr", source, "udp", "sport", str(port), "ct",
                 "state", "!=", "{", "established,", "related", "}", "counter")

        def read():
            out = self.run(router, "nft", "list", "chain", "ip6", "homechannel_fw6",
                           "forward_filter").stdout
            line = next(line for line in out.splitlines() if source in line)
            return int(line.split("packets")[1].split()[0])
        return read

    def down(self):
        if self._hosts is not None:
            _unbind_hosts(self._hosts)
            self._hosts = None
        for proc in self._procs:
            proc.kill()
            proc.wait()
        self._procs = []
        for name in reversed(self._made):
            _run("ip", "netns", "pids", name, check=False)
            _run("ip", "netns", "del", name, check=False)
        self._made = []

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()

    def block_outbound(self, side, port=None, protocols=("tcp", "udp")):
        """The router of *side* drops what its LAN sends out on *protocols* (to *port*,
        or to every port): a network whose firewall lets no TURN out, or no UDP."""
        router = "rhome" if side == "home" else "rclient"
        match = ["meta", "l4proto", "{", ", ".join(protocols), "}"]
        if port is not None:
            match += ["th", "dport", str(port)]
        self.run(router, "nft", "add", "rule", "ip", "homechannel_nat", "forward_filter",
                 "oifname", "wan", *match, "drop")

    # -- events ----------------------------------------------------------------------

    def change_public_address(self, side="home", new=None):
        """The router of *side* gets a new public address (an ISP reconnect): every
        mapping through it is gone (masquerade forgets them with the old address)."""
        router = "rhome" if side == "home" else "rclient"
        old = self.public_address[side]
        new = new or ("203.0.113.4" if side == "home" else "203.0.113.5")
        if new == old:
            new = ROUTER_WAN[side]
        self.ip(router, "addr", "del", f"{old}/24", "dev", "wan")
        self.ip(router, "addr", "add", f"{new}/24", "dev", "wan")
        self.ip(router, "route", "replace", "default", "via", PUBLIC_HOST)
        self.public_address[side] = new
        return new

    @property
    def home_host(self):
        return LAN["home"][1]

    @property
    def client_host(self):
        return LAN["client"][1]


# -- IPv6 ------------------------------------------------------------------------------------

# A namespace with IPv6: no duplicate address detection, no router advertisements or
# autoconfiguration (every address is static), set before any link exists.
IPV6_QUIET = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
              "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0",
              "net.ipv6.conf.default.autoconf=0")

# Each router's IPv6 firewall: routed, no NAT; in from the WAN only replies to what
# went out (and, to the router itself, neighbour discovery, without which nothing
# reaches it at all).  What a home router's IPv6 firewall does by default.
FIREWALL6 = """
table ip6 homechannel_fw6 {
  chain forward_filter {
    type filter hook forward priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" drop
  }
  chain input_filter {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
    iifname "wan" drop
  }
}
"""


def _bind_hosts(names):
    """``/etc/hosts`` with *names* (name -> addresses) added, bind-mounted over the real
    one in this private mount namespace (tests/netns-run), so every namespace's
    resolver (``ip netns exec`` keeps the mount) finds them; returns the copy's path."""
    import tempfile
    with open("/etc/hosts") as f:
        text = f.read()
    fd, path = tempfile.mkstemp(prefix="hc-hosts-")
    with os.fdopen(fd, "w") as f:
        f.write(text.rstrip("\n") + "\n")
        for name, addresses in names.items():
            for address in addresses:
                f.write(f"{address} {name}\n")
    os.chmod(path, 0o644)
    _run("mount", "--bind", path, "/etc/hosts")
    return path


def _unbind_hosts(path):
    _run("umount", "/etc/hosts", check=False)
    os.unlink(path)


def chromium_wrapper(topology, ns, directory, chromium="/usr/bin/chromium"):
    """A script that starts *chromium* inside namespace *ns*, for Playwright's
    ``executable_path`` (Playwright talks to it over inherited pipes)."""
    path = os.path.join(directory, f"chromium-in-{ns}")
    prefix = " ".join(topology.exec_prefix(ns))
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec {prefix} {chromium} "$@"\n')
    os.chmod(path, 0o755)
    return path


# -- a coordinator and a home server in the topology -------------------------------------

WEB_PORT = 8080
UDP_PORT = 7777


def coordinator_status(pair):
    """The coordinator's admin ``/status`` (servers, UDP counters), through its admin
    UNIX socket (a file: reachable from any network namespace)."""
    import json
    import os

    from homechannel.cli.coordinator import _UnixHTTPConnection
    conn = _UnixHTTPConnection(os.path.join(pair.base, "coordinator", "admin.sock"), 10)
    try:
        conn.request("GET", "/status", headers={"Host": "localhost"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def nat_pair(tmp_path, topology, coordinator=None, server=None, host=PUBLIC_HOST,
             udp_interface="0.0.0.0"):
    """Keys, password and configs for a coordinator on the public host and a home
    server behind the home router: no ICE settings anywhere unless *coordinator*
    or *server* (tables merged into the configs) add them.  Returns a
    ``daemons.Pair`` whose ``url`` and ``link`` use the public address *host*."""
    from daemons import make_pair

    return make_pair(tmp_path, web_port=WEB_PORT, udp_port=UDP_PORT, host=host,
                     udp_interface=udp_interface, advertise_loopback=False,
                     coordinator_extra=coordinator, server_extra=server)


def start_dual_stack_pair(start, tmp_path, topology, coordinator_host=COORDINATOR_NAME,
                          coordinator=None, server=None):
    """``start_nat_pair`` with the coordinator on both families (UDP on ``::``, the web
    on every address; its URL the IPv4 one) and the home server registering with
    *coordinator_host* (by default the name with both addresses)."""
    from homechannel.testing.local import merge

    return start_nat_pair(start, tmp_path, topology,
                          coordinator=merge({"web": {"listen": f"tcp:{WEB_PORT}"}},
                                            coordinator),
                          server=merge({"coordinator": {"host": coordinator_host}}, server),
                          udp_interface="::")


def start_nat_pair(start, tmp_path, topology, coordinator=None, server=None, **kw):
    """Start the coordinator (ns pub) and the home server (ns home) with
    *start* (the ``twistd`` fixture, or a function with its signature);
    returns ``(pair, coordinator, server)`` once the server has registered.
    *kw*: ``nat_pair``'s *host* and *udp_interface*."""
    pair = nat_pair(tmp_path, topology, coordinator, server, **kw)
    c = start("homechannel-coordinator", pair.coordinator_config,
              prefix=topology.exec_prefix("pub"))
    c.wait_for_log("coordinator: UDP")
    s = start("homechannel-server", pair.server_config, prefix=topology.exec_prefix("home"))
    s.wait_for_log("registered with coordinator", timeout=30)
    return pair, c, s
