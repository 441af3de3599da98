"""The capacity model on fixed snapshots: hosts that cannot be made real here.

These snapshots are fakes by necessity (an 8 GB desktop, a 64 GB server, a host with
conntrack rules loaded); the model is pure, so they exercise exactly the code that
runs on a live host.
"""
import math

import pytest

from tuner import capacity
from probes.config import FD_HEADROOM
from tuner.knobs import Ctx
from tuner.readings import Snapshot

GiB = 1 << 30
LO = {"ifname": "lo", "address": "127.0.0.1", "prefixlen": 8, "family": 4}


def host(mem_available=20 * GiB, **sysctls):
    base = {
        "fs.nr_open": "1048576", "fs.file-max": "9223372036854775807", "fs.file-nr": "1000 0 9223372036854775807",
        "net.ipv4.tcp_mem": "188232 250976 376464", "net.ipv4.tcp_max_orphans": "65536",
        "net.netfilter.nf_conntrack_max": "262144", "fs.epoll.max_user_watches": "7000000",
        "net.ipv4.ip_local_port_range": "32768 60999", "net.ipv4.ip_local_reserved_ports": "",
        "net.ipv4.tcp_rmem": "4096 131072 6291456", "net.ipv4.tcp_wmem": "4096 16384 4194304",
        "net.core.somaxconn": "4096", "net.ipv4.tcp_max_syn_backlog": "1024",
        "net.ipv4.tcp_max_tw_buckets": "65536", "net.ipv4.tcp_tw_reuse": "2",
        "net.netfilter.nf_conntrack_count": "0",
    }
    base.update({k.replace("__", "."): v for k, v in sysctls.items()})
    return Snapshot(sysctls=base, nofile_soft=1024, nofile_hard=1048576, cap_sys_resource=True,
                    meminfo_kb={"MemTotal": 2 * mem_available // 1024,
                                        "MemAvailable": mem_available // 1024},
                    slab=None, sockstat={"sockets": {"used": 100}, "TCP": {"inuse": 3, "mem": 1}},
                    cgroup_memory={"version": 2, "limit": None, "usage": None}, addresses=[LO])


def evaluate(snap, **kw):
    return capacity.evaluate(Ctx(snap, **kw))


def test_seed_8gb_box_is_bound_by_memory_near_what_the_post_reached():
    """The seed post: 8 GB Linux, nr_open and ulimit raised to 2^25, froze past ~840k."""
    snap = host(mem_available=7 * GiB, fs__nr_open="33554432")
    snap.nofile_soft = snap.nofile_hard = 33554432
    rep = evaluate(snap, role="loopback", target=1_000_000)
    assert rep.binding == "MemAvailable"
    assert 800_000 <= rep.max_connections <= 1_000_000
    assert rep.reachable is False
    assert rep.row("MemAvailable").status == "binds"
    assert rep.processes["processes"] == 1  # one JVM could hold it: the fd limits were raised
    # Worst case is the post's arithmetic: default rmem + wmem on both sockets.
    assert rep.memory["worst_bytes_per_connection"] - rep.memory["idle_bytes_per_connection"] \
        == 2 * (131072 + 16384)
    assert rep.memory["worst_fits_memory"] is False


def test_capped_hard_limit_gives_the_process_count():
    """This VM's situation: hard RLIMIT_NOFILE 20000, no CAP_SYS_RESOURCE."""
    snap = host()
    snap.nofile_soft = snap.nofile_hard = 20000
    snap.cap_sys_resource = False
    rep = evaluate(snap, target=1_000_000)
    per = (20000 - 64) // 2
    assert rep.processes["connections_per_process"] == per
    assert rep.processes["processes"] == math.ceil(1_000_000 / per) == 101
    # The probe sizes its workers with the same reserve: the same count for the same limit.
    from probes.config import make_plan, ProbeConfig
    plan = make_plan(ProbeConfig(connections=1_000_000, port=5000), nofile=20000)
    assert (plan.workers, plan.per_worker) == (101, 9901)
    assert rep.row("RLIMIT_NOFILE.hard").status == "capped"
    assert rep.row("RLIMIT_NOFILE.hard").needed is None  # cannot be raised: no change planned
    assert rep.row("CAP_SYS_RESOURCE").current == ["no"]
    # With the capability the same host needs one process, and the hard limit is planned up.
    snap.cap_sys_resource = True
    rep = evaluate(snap, target=1_000_000)
    assert rep.processes["processes"] == 2  # nr_open 1048576 caps one process at ~523k
    assert rep.row("RLIMIT_NOFILE.hard").needed == [2_000_000 + FD_HEADROOM]
    assert rep.row("fs.nr_open").needed == [2_000_000 + FD_HEADROOM]


def test_client_with_one_source_address_is_bound_by_ports():
    eth = {"ifname": "eth0", "address": "192.0.2.10", "prefixlen": 24, "family": 4}
    snap = host()
    snap.addresses = [LO, eth]
    rep = evaluate(snap, role="client")
    assert rep.max_connections == 60999 - 32768 + 1
    assert rep.binding == "net.ipv4.ip_local_port_range"
    rep = evaluate(snap, role="client", target=100_000)
    assert rep.row("net.ipv4.ip_local_port_range").needed == [1024, 65535]
    # Planned for fast connects: half of each address's ports (even ports go first).
    assert rep.row("source addresses").needed == [math.ceil(110_000 / (64512 / 2))] == [4]
    # A small target on one address: the range widens to twice what N uses.
    assert evaluate(snap, role="client", target=20_000).row("net.ipv4.ip_local_port_range").needed \
        == [60999 - 44000 + 1, 60999]
    # More destinations multiply what one source address reaches.
    assert evaluate(snap, role="client", destinations=4).max_connections == 4 * 28232


def test_reserved_ports_are_not_usable():
    eth = {"ifname": "eth0", "address": "192.0.2.10", "prefixlen": 24, "family": 4}
    snap = host(net__ipv4__ip_local_reserved_ports="40000-40999,50000")
    snap.addresses = [eth]
    assert evaluate(snap, role="client").max_connections == 28232 - 1001
    # Only the part inside ip_local_port_range (32768-60999) counts.
    snap.sysctls["net.ipv4.ip_local_reserved_ports"] = "8000-9000,30000-32770,60999-61010"
    assert evaluate(snap, role="client").max_connections == 28232 - 3 - 1
    snap.sysctls["net.ipv4.ip_local_reserved_ports"] = "1024-32767"
    rep = evaluate(snap, role="loopback", target=1000)
    assert rep.reachable and rep.row("net.ipv4.ip_local_port_range").allows > 0


def test_server_role_has_no_port_limit():
    rep = evaluate(host(), role="server", target=1_000_000)
    assert rep.row("net.ipv4.ip_local_port_range").allows is None
    assert rep.row("net.ipv4.ip_local_port_range").needed is None
    assert rep.memory["idle_breakdown"]["tcp_bind_bucket"] == 0  # accepted sockets bind no port


def test_conntrack_binds_only_while_tracking():
    idle = evaluate(host(), target=500_000)
    assert idle.row("net.netfilter.nf_conntrack_max").allows is None
    assert idle.row("net.netfilter.nf_conntrack_max").needed is None
    busy = evaluate(host(net__netfilter__nf_conntrack_count="1000"), target=500_000)
    assert busy.binding == "net.netfilter.nf_conntrack_max"
    assert busy.max_connections == 262144 - 1000
    assert busy.row("net.netfilter.nf_conntrack_max").needed == [1000 + 550_000]


def test_large_host_is_bound_by_descriptors_not_memory():
    snap = host(mem_available=60 * GiB)
    snap.sysctls["fs.file-max"] = "2000000"
    rep = evaluate(snap, target=1_000_000)
    assert rep.binding == "fs.file-max"
    assert rep.max_connections == (2_000_000 - 1000) // 2
    assert rep.row("fs.file-max").needed == [1000 + 2_200_000 + FD_HEADROOM]
    assert rep.row("MemAvailable").status == "ok"


def test_values_the_admin_set_higher_are_left_alone():
    rep = evaluate(host(net__core__somaxconn="100000", net__ipv4__tcp_max_orphans="5000000"),
                   target=1_000_000)
    assert rep.row("net.core.somaxconn").needed is None
    assert rep.row("net.core.somaxconn").status == "ok"
    assert rep.row("net.ipv4.tcp_max_orphans").needed is None
    assert rep.row("net.ipv4.tcp_max_syn_backlog").needed == [65535]


def test_tcp_mem_scales_keeping_its_proportions():
    rep = evaluate(host(), target=1_000_000)
    low, pressure, high = rep.row("net.ipv4.tcp_mem").needed
    assert high >= 1_100_000
    assert low / high == pytest.approx(188232 / 376464, rel=1e-4)
    assert pressure / high == pytest.approx(250976 / 376464, rel=1e-4)


def test_buffer_defaults_shrink_only_when_asked():
    assert evaluate(host(), target=1_000_000).row("net.ipv4.tcp_rmem").needed is None
    shrunk = evaluate(host(), target=1_000_000, shrink_buffers=True)
    assert shrunk.row("net.ipv4.tcp_rmem").needed == [4096, 4096, 6291456]
    assert shrunk.row("net.ipv4.tcp_rmem").status == "shrink"


def test_unreadable_and_missing_readings_are_reported_not_raised():
    snap = host()
    snap.sysctls["net.netfilter.nf_conntrack_max"] = None  # conntrack not built in
    snap.sysctls["fs.epoll.max_user_watches"] = None
    snap.unreadable = ["fs.epoll.max_user_watches", "/proc/slabinfo"]
    rep = evaluate(snap, target=10_000)
    assert rep.row("net.netfilter.nf_conntrack_max").status == "n/a"
    assert rep.row("fs.epoll.max_user_watches").status == "unreadable"
    assert rep.memory["source"].startswith("fallback")


def test_slab_geometry_drives_the_idle_estimate():
    snap = host()
    fallback = evaluate(snap).memory["idle_bytes_per_connection"]
    # TCP objects 13 to 8 pages: effective 2520 bytes, as slab growth shows.
    snap.slab = {"TCP": [2368, 13, 8], "sock_inode_cache": [832, 19, 4]}
    measured = evaluate(snap).memory
    assert measured["idle_breakdown"]["TCP"] == 2 * (8 * 4096 // 13)
    assert measured["idle_breakdown"]["sock_inode_cache"] == 2 * (4 * 4096 // 19)
    snap.slab = {"TCP": [4000, 8, 8]}
    assert evaluate(snap).memory["idle_bytes_per_connection"] > fallback


def test_cgroup_limit_caps_connections():
    snap = host()
    snap.cgroup_memory = {"version": 1, "limit": 2 * GiB, "usage": GiB}
    rep = evaluate(snap)
    assert rep.binding == "cgroup memory limit"
    assert rep.max_connections == GiB // rep.memory["idle_bytes_per_connection"]


def test_fill_status_is_one_rule_at_the_alerts_share():
    """near from NEAR_SHARE (the share tuner-alerts.yml fires at), full at 100%; full
    outranks what the target asks, near only replaces ok."""
    assert capacity.usage_status(None) is None
    assert capacity.usage_status(0.79) is None
    assert capacity.usage_status(capacity.NEAR_SHARE) == "near"
    assert capacity.usage_status(1.0) == "full"
    assert capacity.status("ok", 0.85) == "near" and capacity.status("raise", 0.85) == "raise"
    assert capacity.status("raise", 1.0) == "full" and capacity.status("n/a", 1.0) == "n/a"
    # TIME_WAIT sockets filling the table, in a snapshot: 52,429 of 65,536 is 80%.
    for tw, want in ((52_428, "ok"), (52_429, "near"), (65_536, "full")):
        snap = host()
        snap.sockstat["TCP"]["tw"] = tw
        row = evaluate(snap, target=1000).row("net.ipv4.tcp_max_tw_buckets")
        assert row.status == want, (tw, row)
        assert bool(row.fix) == (want != "ok")


def test_every_row_that_needs_action_carries_the_fix_apply_would_take():
    rep = evaluate(host(), target=1_000_000)
    for row in rep.rows:
        assert bool(row.fix) == (row.status in capacity.ACTION), row
    # The sysctl command apply's plan prints for the same value.
    assert rep.row("net.core.somaxconn").fix.render() == "sysctl -w net.core.somaxconn=65535"
    assert rep.row("net.ipv4.tcp_mem").fix.render().startswith("sysctl -w net.ipv4.tcp_mem='")
