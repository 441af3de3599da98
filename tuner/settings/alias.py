"""A /32 source-address alias tuner adds on a device (--alias-dev, from --alias-net).

Value: True when the address is on the device, False when it is not.  Revert removes
only the aliases tuner added: an address someone else put there has no entry.
"""
from __future__ import annotations

import errno
import ipaddress
import shlex
from typing import List, Optional

from tuner.host.errors import UsageError
from tuner.host.localnet import link_up
from tuner.host.netns import in_netns
from .base import Change, Presence, WriteError, check, device_field, is_int, netns_gone, text_field


def _link_index(ipr, dev: str) -> Optional[int]:
    found = ipr.link_lookup(ifname=dev)
    return found[0] if found else None


class Alias(Presence):
    name = "alias"
    knob_kinds = ("addresses",)

    def key(self, netns, detail) -> str:
        return f"alias:{netns or ''}:{detail['dev']}:{detail['address']}/{detail['prefixlen']}"

    def where(self, netns, detail) -> str:
        return (f"{detail['address']}/{detail['prefixlen']} on {detail['dev']}"
                + (f" in netns {netns}" if netns else ""))

    def command(self, netns, detail, value) -> str:
        prefix = f"ip -n {shlex.quote(netns)} " if netns else "ip "
        return (f"{prefix}addr {'add' if value else 'del'} {detail['address']}/"
                f"{detail['prefixlen']} dev {shlex.quote(detail['dev'])}")

    def check_detail(self, d) -> None:
        device_field(d)
        address = text_field(d, "address")
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ValueError(f"detail.address is {address!r}") from None
        pl = d.get("prefixlen")
        check(is_int(pl) and 0 <= pl <= 32, "detail.prefixlen", pl)

    def _read(self, netns, detail) -> bool:
        # Here: pyroute2's netlink loads only when an alias is read (start-up time).
        from pyroute2 import IPRoute

        netns_gone(netns)
        with in_netns(netns), IPRoute() as ipr:
            index = _link_index(ipr, detail["dev"])
            if index is None:
                return False  # the device is gone, and its addresses with it
            return any((a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")) == detail["address"]
                       and a["prefixlen"] == detail["prefixlen"]
                       for a in ipr.get_addr(index=index))

    def _write(self, netns, detail, present: bool) -> None:
        # Here: pyroute2's netlink loads only when an alias is written (start-up time).
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        netns_gone(netns)
        with in_netns(netns), IPRoute() as ipr:
            index = _link_index(ipr, detail["dev"])
            if index is None:
                if not present:
                    return
                raise WriteError(f"device {detail['dev']} does not exist")
            try:
                ipr.addr("add" if present else "del", index=index, address=detail["address"],
                         prefixlen=detail["prefixlen"])
            except NetlinkError as e:
                raise WriteError(f"{errno.errorcode.get(e.code, e.code)}: {e.args[-1]}") from None

    def plan_first(self, planning) -> List[Change]:
        req = planning.req
        if req.alias_dev is not None:
            with in_netns(req.netns):
                up = link_up(req.alias_dev)
            if up is False:
                ip = f"ip -n {shlex.quote(req.netns)}" if req.netns else "ip"
                dev = shlex.quote(req.alias_dev)
                planning.notes.append(f"{req.alias_dev} is down: addresses on it carry no traffic "
                                      f"until `{ip} link set {dev} up`.")
        if req.alias_dev == "lo" and req.role != "loopback":
            planning.notes.append(f"127.0.0.0/8 on lo reaches only this host: no source address "
                                  f"for role {req.role}'s connections to others, not counted.")
        return []

    def plan(self, knob, planning) -> List[Change]:
        req, sim = planning.req, planning.sim
        state = planning.needed(knob)
        if state is None:
            return []
        ctx, needed = state
        dev = ctx.source_dev or ("lo" if req.role == "loopback" else "non-loopback interfaces and AnyIP prefixes")
        if needed is None:
            if req.role != "server":
                local = " (all of 127.0.0.0/8 is local on lo)" if dev == "lo" and req.role == "loopback" else ""
                planning.notes.append(f"source addresses: {ctx.sources:,} usable on {dev}{local}; "
                                      f"nothing to add for {req.target:,}.")
            return []
        missing = needed[0] - ctx.sources
        if req.alias_net is None:
            planning.notes.append(
                f"source addresses: {needed[0]:,} needed, {ctx.sources:,} on {dev}: add "
                f"{missing:,} more with {knob.fix.render()} (each 'ip addr add A/32 dev DEV').")
            return []
        taken = {str(a["address"]) for a in sim.addresses}
        net = ipaddress.ip_network(req.alias_net, strict=False)
        picked: List[str] = []
        for host in (net.hosts() if net.num_addresses > 1 else iter([net.network_address])):
            if str(host) not in taken:
                picked.append(str(host))
                if len(picked) == missing:
                    break
        if len(picked) < missing:
            raise UsageError(f"--alias-net {req.alias_net} has {len(picked):,} free addresses, "
                             f"{missing:,} are needed for {req.target:,}: use a larger network")
        out = []
        for address in picked:
            out.append(self.change(knob, req.netns, False, True,
                                   {"dev": req.alias_dev, "address": address, "prefixlen": 32}))
            sim.addresses.append({"ifname": req.alias_dev, "address": address, "prefixlen": 32,
                                  "family": 4})
        return out


KIND = Alias()
