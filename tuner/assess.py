"""Assess this host (or a namespace) for `tuner report`, apply, probe and metrics: take
the snapshot the knob table asks for and run the capacity model on it."""
from __future__ import annotations

from typing import Optional, Tuple

from . import capacity, knobs, readings
from tuner.host.errors import UsageError
from .knobs import Ctx


def snapshot(netns: Optional[str] = None) -> readings.Snapshot:
    """Every reading the knob table asks for; per-netns ones from inside `netns`."""
    return readings.take_snapshot(knobs.sysctl_names("host"), knobs.sysctl_names("netns"), netns)


def build(target: Optional[int] = None, role: str = "loopback", netns: Optional[str] = None,
          destinations: int = 1, source_dev: Optional[str] = None,
          snap: Optional[readings.Snapshot] = None,
          source_count: Optional[int] = None, user_tls: Optional[Tuple[str, int, bool]] = None) -> capacity.Report:
    """user_tls: (version, bytes, asked): each connection also holds the probe's TLS state
    of that version (report --role client --tls)."""
    if snap is None:
        snap = snapshot(netns)
    if source_dev is not None and not any(a["ifname"] == source_dev for a in snap.addresses):
        raise UsageError(f"no addresses on device {source_dev!r}"
                         f"{' in namespace ' + repr(netns) if netns else ''}: "
                         f"list them with 'ip addr'")
    ctx = Ctx(snap, role=role, target=target, destinations=destinations, source_dev=source_dev,
              source_count=source_count, **_user_tls(user_tls))
    return capacity.evaluate(ctx)


def _user_tls(user_tls: Optional[Tuple[str, int, bool]]) -> dict:
    if user_tls is None:
        return {}
    version, size, asked = user_tls
    return {"user_bytes": size, "user_tls_version": version, "user_tls_version_asked": asked}


def client_route(netns: Optional[str], prefix: str) -> dict:
    """Where this host (a server) sends replies to a client's AnyIP prefix: the most
    specific route covering it.  Nobody on the link answers for such a prefix (it is a
    route on the client, not an address), so without a route of its own the replies
    follow the default route, or go nowhere.  For `tuner report --role server
    --client-net`."""
    # Here: only --client-net reads routes and addresses (start-up time).
    import ipaddress

    from tuner.host import localnet
    from tuner.host.netns import in_netns

    net = ipaddress.ip_network(prefix, strict=False)
    with in_netns(netns):
        route = localnet.route_for(localnet.read_routes(net.version), str(net))
    routed = route is not None and ipaddress.ip_network(route["network"]).prefixlen > 0
    family = "-6 " if net.version == 6 else ""
    return {"network": str(net), "routed": routed,
            "via": route["gateway"] if route else None, "dev": route["ifname"] if route else None,
            "fix": None if routed else f"ip {family}route add {net} via CLIENT_ADDRESS"}


def client_route_text(r: dict) -> str:
    if r["routed"]:
        return (f"client prefix {r['network']}: routed back via {r['via'] or 'the link'} "
                f"dev {r['dev']}")
    where = f"the default route (via {r['via']})" if r["via"] else "no route"
    return (f"client prefix {r['network']}: {where} here, so replies to it never reach the "
            f"client; route it back: {r['fix']}")
