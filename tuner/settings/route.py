"""A local route tuner adds for an AnyIP prefix (--anyip-net, on --anyip-dev, lo by default).

`ip route add local PREFIX dev lo` makes the kernel take every address of PREFIX as its
own: one route gives a client a /64's worth of source addresses (or a /24's, in IPv4),
where aliases add one address per change.  IPv4's bind() accepts them at once; IPv6's
needs ip_nonlocal_bind (knobs.NONLOCAL_BIND, planned here too, through the sysctl kind) or
IP_FREEBIND on the socket (tuner probe sets it).

Value: True when the route is in the namespace's local table, False when it is not.
Revert removes only the route tuner added: one that was there before has no entry.
"""
from __future__ import annotations

import errno
import ipaddress
import shlex
from typing import List

from tuner.host.errors import UsageError
from ..knobs import BY_NAME, NONLOCAL_BIND
from tuner.host.localnet import read_local_routes
from tuner.host.netns import in_netns
from .base import KINDS, Change, Presence, WriteError, check, device_field, netns_gone, text_field

RT_TABLE_LOCAL = 255
RT_SCOPE_HOST = 254


def _network(text: str):
    return ipaddress.ip_network(text, strict=True)


class Route(Presence):
    name = "route"

    def key(self, netns, detail) -> str:
        return f"route:{netns or ''}:local:{detail['network']}"

    def where(self, netns, detail) -> str:
        return (f"local {detail['network']} dev {detail['dev']}"
                + (f" in netns {netns}" if netns else ""))

    def command(self, netns, detail, value) -> str:
        prefix = f"ip -n {shlex.quote(netns)} " if netns else "ip "
        family = "-6 " if ":" in detail["network"] else ""
        return (f"{prefix}{family}route {'add' if value else 'del'} local {detail['network']} "
                f"dev {shlex.quote(detail['dev'])}")

    def check_detail(self, d) -> None:
        device_field(d)
        network = text_field(d, "network")
        try:
            net = _network(network)
        except ValueError:
            raise ValueError(f"detail.network is {network!r}") from None
        # What apply could have added: a prefix, never a default route or one address.
        check(0 < net.prefixlen < net.max_prefixlen and str(net) == network, "detail.network", network)

    def _read(self, netns, detail) -> bool:
        netns_gone(netns)
        with in_netns(netns):
            return any(r["network"] == detail["network"] and r["ifname"] == detail["dev"]
                       for r in read_local_routes())

    def _write(self, netns, detail, present: bool) -> None:
        # Here: pyroute2's netlink loads only when a route is written (start-up time).
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        netns_gone(netns)
        net = _network(detail["network"])
        with in_netns(netns), IPRoute() as ipr:
            found = ipr.link_lookup(ifname=detail["dev"])
            if not found:
                if not present:
                    return  # the device is gone, and its routes with it
                raise WriteError(f"device {detail['dev']} does not exist")
            extra = {"scope": RT_SCOPE_HOST} if net.version == 4 else {}
            try:
                ipr.route("add" if present else "del", dst=str(net), type="local", table=RT_TABLE_LOCAL,
                          oif=found[0], **extra)
            except NetlinkError as e:
                raise WriteError(f"{errno.errorcode.get(e.code, e.code)}: {e.args[-1]}") from None

    def plan_first(self, planning) -> List[Change]:
        """The route before any knob is planned, so the source-address count the knobs see
        includes the prefix (and nothing asks for aliases besides it)."""
        req, sim = planning.req, planning.sim
        if req.anyip_net is None:
            return []
        net = ipaddress.ip_network(req.anyip_net, strict=False)
        detail = {"network": str(net), "dev": req.anyip_dev or "lo"}
        _refuse_overlap(net, sim)
        if any(r["network"] == str(net) for r in sim.local_routes):
            planning.notes.append(f"AnyIP: {net} is already local here; nothing to add.")
            out = []
        else:
            out = [self.change(BY_NAME["source addresses"], req.netns, False, True, detail,
                               why=f"one local route makes all {net.num_addresses:,} addresses of "
                                   f"{net} source addresses, without an address per ~32,000 "
                                   f"connections")]
            sim.local_routes.append({"ifname": detail["dev"], "network": str(net), "family": net.version})
        name = NONLOCAL_BIND[6]
        if net.version == 6 and sim.sysctls.get(name) not in (None, "1"):
            # IPv6's bind() takes only interface addresses: without this, only sockets with
            # IP_FREEBIND (tuner probe's) could use the prefix.
            out.append(KINDS["sysctl"].change(
                name, req.netns, sim.sysctls[name], "1", {"name": name}, scope="netns",
                why=f"IPv6 bind() accepts an AnyIP address of {net} only with this on (or "
                    f"IP_FREEBIND per socket); it lets this namespace bind any address"))
            sim.sysctls[name] = "1"
        return out


def _refuse_overlap(net, sim) -> None:
    """A local route over a network an interface is on would make the kernel answer for
    that network's other hosts (they become unreachable from here), and one over another
    local prefix would be undone with it: refused, naming what it covers."""
    for a in sim.addresses:
        own = ipaddress.ip_network(f"{a['address']}/{a['prefixlen']}", strict=False)
        if own.version == net.version and own.overlaps(net) and not own.is_loopback:
            raise UsageError(
                f"--anyip-net {net} overlaps {a['address']}/{a['prefixlen']} on {a['ifname']}: a local "
                f"route would take that network's other hosts for this one; pick a prefix outside "
                f"every interface's network (the server must route it back to this host)")
    for r in sim.local_routes:
        other = ipaddress.ip_network(r["network"], strict=False)
        if other.version == net.version and other != net and other.overlaps(net) \
                and other.num_addresses > 1 and not other.is_loopback:
            raise UsageError(f"--anyip-net {net} overlaps the local route {other} on {r['ifname']}; "
                             f"use that prefix, or one outside it")


KIND = Route()
