"""What this network namespace treats as local, and how many source addresses that gives.

Two netlink dumps, decoded by pyroute2's message classes: the interface addresses
(RTM_GETADDR) and the routes of type `local` in the local table (RTM_GETROUTE, table
255) -- what bind() accepts as a source.  The local routes include AnyIP prefixes
(`ip route add local 10.0.0.0/24 dev lo table local`) that no interface address shows.

`tuner report` (through readings' snapshot) and the probe (`--source-net`, probes.wire)
count source addresses with the same function, `source_networks`, so they agree.

Only pyroute2's netlink message modules are imported, never its package: pyroute2's
__init__ imports every protocol family it supports (~0.3 s, more than the rest of
`tuner report`).  Used in the parent process only; the forked probe workers never
import this module.
"""
from __future__ import annotations

import fcntl
import importlib
import importlib.util
import ipaddress
import socket
import struct
import sys
from typing import Dict, Iterator, List, Optional, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
RT_TABLE_LOCAL = 255
RTN_LOCAL = 2
SIOCGIFFLAGS, IFF_UP = 0x8913, 0x1   # <linux/sockios.h>, <linux/if.h>
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_messages = None


def _pyroute2_messages():
    """pyroute2's rtmsg/ifaddrmsg classes and netlink constants, imported without
    running pyroute2/__init__.py.  The package is registered only while its submodules
    load; a later `import pyroute2` (apply's writers) runs the real __init__, which
    reuses the submodules already loaded."""
    global _messages
    if _messages is None:
        names = ("pyroute2.netlink", "pyroute2.netlink.rtnl", "pyroute2.netlink.rtnl.rtmsg",
                 "pyroute2.netlink.rtnl.ifaddrmsg")
        stub = "pyroute2" not in sys.modules
        if stub:
            spec = importlib.util.find_spec("pyroute2")
            sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
        try:
            mods = [importlib.import_module(name) for name in names]
        finally:
            if stub:
                del sys.modules["pyroute2"]
        _messages = mods
    return _messages


def _dump(msg_class, msg_type: int, family: int) -> Iterator:
    """Every message of one netlink dump request, decoded by msg_class."""
    netlink = _pyroute2_messages()[0]
    request = msg_class()
    request["family"] = family
    request["header"]["type"] = msg_type
    request["header"]["flags"] = netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP
    request["header"]["sequence_number"] = 1
    request.encode()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       netlink.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(request.data)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
                if kind == netlink.NLMSG_DONE:
                    return
                if kind == netlink.NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                    raise OSError(code, f"netlink dump {msg_type} failed")
                msg = msg_class(data[offset:offset + length])
                msg.decode()
                yield msg
                offset += (length + 3) & ~3


def _ifname(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def read_addresses() -> List[Dict[str, object]]:
    """IPv4/IPv6 addresses of every interface of this namespace."""
    _, rtnl, _, ifaddrmsg = _pyroute2_messages()
    out = []
    for msg in _dump(ifaddrmsg.ifaddrmsg, rtnl.RTM_GETADDR, socket.AF_UNSPEC):
        out.append({
            "ifname": _ifname(msg["index"]),
            "address": msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"),
            "prefixlen": msg["prefixlen"],
            "family": 6 if msg["family"] == socket.AF_INET6 else 4,
        })
    return out


def read_local_routes() -> List[Dict[str, object]]:
    """IPv4 and IPv6 routes of type local in the local table: every prefix the kernel
    takes packets for as its own here, AnyIP prefixes included.  (IPv4's bind() accepts
    all of them; IPv6's only interface addresses, unless ip_nonlocal_bind or
    IP_FREEBIND: see anyip_prefixes.)"""
    _, rtnl, rtmsg, _ = _pyroute2_messages()
    out = []
    for family, version, default in ((socket.AF_INET, 4, "0.0.0.0"), (socket.AF_INET6, 6, "::")):
        for msg in _dump(rtmsg.rtmsg, rtnl.RTM_GETROUTE, family):
            table = msg.get_attr("RTA_TABLE") or msg["table"]
            if msg["type"] != RTN_LOCAL or table != RT_TABLE_LOCAL:
                continue
            out.append({"ifname": _ifname(msg.get_attr("RTA_OIF") or 0),
                        "network": f"{msg.get_attr('RTA_DST') or default}/{msg['dst_len']}",
                        "family": version})
    return out


RT_TABLE_MAIN = 254
RTN_UNICAST = 1


def read_routes(version: int) -> List[Dict[str, object]]:
    """Unicast routes of the main table of one IP version: where replies to a network
    leave (read for `tuner report --role server --client-net`, not for every report: a
    router's table can be large)."""
    _, rtnl, rtmsg, _ = _pyroute2_messages()
    family, default = (socket.AF_INET, "0.0.0.0") if version == 4 else (socket.AF_INET6, "::")
    out = []
    for msg in _dump(rtmsg.rtmsg, rtnl.RTM_GETROUTE, family):
        table = msg.get_attr("RTA_TABLE") or msg["table"]
        if msg["type"] != RTN_UNICAST or table != RT_TABLE_MAIN:
            continue
        out.append({"network": f"{msg.get_attr('RTA_DST') or default}/{msg['dst_len']}",
                    "gateway": msg.get_attr("RTA_GATEWAY"), "ifname": _ifname(msg.get_attr("RTA_OIF") or 0)})
    return out


def route_for(routes, prefix: str) -> Optional[Dict[str, object]]:
    """The most specific route covering all of `prefix`, None when none does."""
    net = ipaddress.ip_network(prefix, strict=False)
    best = None
    for r in routes:
        covering = ipaddress.ip_network(r["network"], strict=False)
        if covering.version == net.version and net.subnet_of(covering) and \
                (best is None or covering.prefixlen > best[0].prefixlen):
            best = (covering, r)
    return None if best is None else best[1]


# ---------------------------------------------------------------- counting (pure)

def source_networks(addresses, local_routes, ifname: Optional[str] = None,
                    within: Optional[str] = None, version: int = 4,
                    remote: bool = False) -> List[Network]:
    """The networks of one IP version outbound sockets can take source addresses from,
    disjoint.

    ifname: only those on this device; None: every device but lo (outbound to another
    host never leaves from a loopback address) -- unless `within` is given, which
    looks on every device and keeps only what lies inside that network (the probe's
    --source-net; its version then decides).  An address on lo makes its whole prefix
    local (Linux answers for all of 127.0.0.0/8), elsewhere an address is itself only;
    local routes count whole (they are what the kernel answers for).  IPv6 link-local
    and loopback addresses are no source for another host.  remote: the sockets reach
    another host, so loopback networks count on no device, a named lo included (its
    127.0.0.0/8 answers only this host).
    """
    inside = None if within is None else ipaddress.ip_network(within, strict=False)
    version = inside.version if inside is not None else version
    nets = []
    for a in addresses:
        if a["family"] == version and _on(a["ifname"], ifname, within):
            prefix = a["prefixlen"] if a["ifname"] == "lo" and version == 4 else (32 if version == 4 else 128)
            nets.append(ipaddress.ip_network(f"{a['address']}/{prefix}", strict=False))
    for r in local_routes:
        net = ipaddress.ip_network(r["network"], strict=False)
        # An AnyIP prefix sits on lo but is no loopback network: it is a source for others.
        anyip = ifname is None and r["ifname"] == "lo" and not net.is_loopback
        if r["family"] == version and (anyip or _on(r["ifname"], ifname, within)):
            nets.append(net)
    if version == 6 and inside is None:
        nets = [n for n in nets if not (n.is_link_local or n.is_loopback)]
    if remote:
        nets = [n for n in nets if not n.is_loopback]
    # CIDR networks are nested or disjoint: keep the outermost ones (127.0.0.1/32 lies in
    # 127.0.0.0/8).  No merging of neighbours: 16 aliases side by side are 16 sources,
    # not a /28 without its first and last address.
    outer: List[Network] = []
    for net in sorted(set(nets), key=lambda n: (n.prefixlen, n)):
        if not any(net.subnet_of(o) for o in outer):
            outer.append(net)
    outer.sort()
    if inside is None:
        return outer
    # The overlap of two CIDR networks is the smaller one.
    return [net if net.subnet_of(inside) else inside for net in outer if net.overlaps(inside)]


def anyip_prefixes(addresses, local_routes) -> List[Network]:
    """Local-route prefixes (IPv4 and IPv6) wider than one address that no interface
    address accounts for: AnyIP, as `ip route add local PREFIX dev lo` makes it (the
    127.0.0.0/8 the kernel puts on lo aside)."""
    own = {ipaddress.ip_network(f"{a['address']}/{a['prefixlen']}", strict=False) for a in addresses}
    out = []
    for r in local_routes:
        net = ipaddress.ip_network(r["network"], strict=False)
        if net.num_addresses > 1 and not net.is_loopback and net not in own:
            out.append(net)
    return sorted(out, key=lambda n: (n.version, n))


def link_up(ifname: str) -> Optional[bool]:
    """Whether interface `ifname` of this namespace is administratively UP (IFF_UP, as
    `ip link` shows it); None when there is no such interface.  An ioctl on a socket
    reads the namespace the caller is in (sysfs would show the one it was mounted in)."""
    ifreq = struct.pack("16sH22x", ifname.encode()[:15], 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        except OSError:
            return None
    return bool(flags & IFF_UP)


def _on(dev: str, ifname: Optional[str], within: Optional[str]) -> bool:
    if ifname is not None:
        return dev == ifname
    return within is not None or dev != "lo"


def usable(net: Network) -> range:
    """Addresses of net usable as sources, as integers: an IPv4 network's own address and
    its broadcast address are not, except in /31 and /32 (the probe's Sources agrees);
    nor is an IPv6 prefix's first address (the subnet-router anycast address)."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4 and net.prefixlen <= 30:
        first, last = first + 1, last - 1
    elif net.version == 6 and net.prefixlen <= 126:
        first += 1
    return range(first, last + 1)


def source_count(networks: List[Network]) -> int:
    # range.stop - range.start: len() of a /64's range overflows a C ssize_t.
    return sum(r.stop - r.start for r in map(usable, networks))


def source_addresses(networks: List[Network], limit: int) -> List[str]:
    """The first `limit` usable addresses of networks, in order."""
    out: List[str] = []
    for net in networks:
        for value in usable(net)[:limit - len(out)]:
            out.append(str(ipaddress.ip_address(value) if net.version == 4
                           else ipaddress.IPv6Address(value)))
        if len(out) >= limit:
            break
    return out
