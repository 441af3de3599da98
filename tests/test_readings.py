"""Readings against independent reads of the same kernel state (sysctl(8), psutil,
setrlimit, nstat, ip, /sys/kernel/slab), and tuner.host.procfs's one error policy."""
import os
import socket
import subprocess
import sys

import psutil
import pytest

from probes import connect, kernel
from probes.config import ProbeConfigError
from tuner import assess, knobs, readings
from tuner.host import localnet, procfs
from tuner.host.netns import in_netns
from tuner.readings import Snapshot


def _sysctl_cli(name, netns=None):
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["sysctl", "-n", name]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return " ".join(proc.stdout.split()) if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def snap():
    return assess.snapshot()


def test_every_sysctl_matches_sysctl_command(snap):
    names = knobs.sysctl_names("host") + knobs.sysctl_names("netns")
    assert "fs.nr_open" in names and "net.ipv4.tcp_mem" in names
    volatile = {"fs.file-nr", "net.netfilter.nf_conntrack_count"}
    for name in names:
        if name in volatile:
            continue
        assert snap.sysctls[name] == _sysctl_cli(name), name


def test_rlimit_matches_psutil(snap):
    assert (snap.nofile_soft, snap.nofile_hard) == psutil.Process().rlimit(psutil.RLIMIT_NOFILE)


def test_cap_sys_resource_matches_what_the_kernel_allows(snap):
    """Raising the hard limit by one succeeds exactly when CAP_SYS_RESOURCE is held."""
    code = ("import resource,sys\n"
            "s,h=resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "try:\n resource.setrlimit(resource.RLIMIT_NOFILE,(s,h+1))\nexcept (ValueError,OSError):\n sys.exit(1)\n")
    raisable = subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert snap.cap_sys_resource == raisable


def test_meminfo_and_sockstat_are_parsed(snap):
    assert snap.meminfo_kb["MemTotal"] * 1024 == psutil.virtual_memory().total
    assert "inuse" in snap.sockstat["TCP"] and "used" in snap.sockstat["sockets"]


def test_slabinfo_geometry_as_root(snap):
    if os.geteuid() != 0:
        pytest.skip("slabinfo is root-only")
    objsize, per_slab, pages = snap.slab["TCP"]
    assert 1500 < objsize < 4096 and per_slab > 0 and pages > 0


def test_lo_counts_the_whole_127_prefix(snap):
    # 127.0.0.1/8 on lo makes all of 127.0.0.0/8 local: 2^24 - 2 usable sources.
    assert readings.source_address_count(snap, "lo") == 2 ** 24 - 2
    fake = [{"ifname": "eth9", "address": "192.0.2.1", "prefixlen": 24, "family": 4},
            {"ifname": "eth9", "address": "192.0.2.2", "prefixlen": 24, "family": 4}]
    assert readings.source_address_count(Snapshot(addresses=fake), "eth9") == 2
    # Sixteen aliases side by side are sixteen sources (not a /28 short of two).
    aliases = [{"ifname": "eth9", "address": f"10.9.0.{i}", "prefixlen": 32, "family": 4}
               for i in range(16)]
    assert readings.source_address_count(Snapshot(addresses=aliases), "eth9") == 16


def _ip_json(*args, netns=None):
    import json
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + list(args)
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout or "[]")


def test_addresses_and_local_routes_match_ip(snap):
    """The netlink reads (pyroute2's message classes) see what ip(8) sees."""
    ours = sorted((a["ifname"], a["address"], a["prefixlen"]) for a in snap.addresses)
    theirs = sorted((link["ifname"], a["local"], a["prefixlen"]) for link in _ip_json("addr")
                    for a in link.get("addr_info", []))
    assert ours == theirs
    routes = sorted((r["ifname"], r["network"]) for r in snap.local_routes)
    local = sorted((r["dev"], r["dst"] if "/" in r["dst"] else r["dst"] + ("/32" if family == "-4" else "/128"))
                   for family in ("-4", "-6")
                   for r in _ip_json(family, "route", "show", "table", "local") if r.get("type") == "local")
    assert routes == local and ("lo", "127.0.0.0/8") in routes and ("lo", "::1/128") in routes


def test_anyip_local_route_counts_for_report_and_probe_alike(netns):
    """An AnyIP prefix (a local route, no interface address) is as good a source as an
    address: bind() accepts every address in it.  The report counts it, and the probe's
    --source-net finds it, through the same tuner.host.localnet function."""
    subprocess.run(["ip", "-n", netns, "route", "add", "local", "10.77.5.0/24", "dev", "lo",
                    "table", "local"], check=True)
    inside = assess.snapshot(netns)
    assert readings.source_address_count(inside, "lo") == (2 ** 24 - 2) + 254
    with in_netns(netns):
        found, _ = connect.sources_for(connect.ConnectConfig("10.79.0.1:7", source_net="10.77.5.0/24"),
                                       "10.79.0.1")
        with pytest.raises(ProbeConfigError, match="no local address inside it"):
            connect.sources_for(connect.ConnectConfig("10.79.0.1:7", source_net="10.78.0.0/16"), "10.79.0.1")
        # Each counted address really binds here (the first and the last of the prefix).
        for address in (found[0], found[-1]):
            with socket.socket() as s:
                s.bind((address, 0))
    assert found[0] == "10.77.5.1" and found[-1] == "10.77.5.254" and len(found) == 254
    # The report's figure for the probe's --source-net is the same count.
    nets = localnet.source_networks(inside.addresses, inside.local_routes, within="10.77.5.0/24")
    assert localnet.source_count(nets) == len(found)
    # And the source-addresses knob in `tuner report` shows it.
    rows = {r.name: r for r in assess.build(target=1000, netns=netns, snap=inside).rows}
    assert rows["source addresses"].current == [(2 ** 24 - 2) + 254]


def test_reserved_ports_are_counted_alike_by_report_and_probe(netns):
    """ip_local_reserved_ports inside the range costs ports, outside it nothing; the
    report's port figure and the probe's plan use one parser (procfs.ports_in)."""
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv4.ip_local_port_range=40000 40999",
                    "net.ipv4.ip_local_reserved_ports=40000-40009,40500,50000-50100"], check=True)
    inside = assess.snapshot(netns)
    with in_netns(netns):
        probe_usable = 1000 - kernel.reserved_ports(*kernel.port_range())
    assert probe_usable == 1000 - 11
    rep = assess.build(target=1000, netns=netns, snap=inside, source_count=1)
    assert rep.row("net.ipv4.ip_local_port_range").allows == probe_usable


def test_procfs_readers_match_independent_tools():
    # meminfo: psutil reads the same file its own way.
    assert procfs.meminfo_kb()["MemTotal"] * 1024 == psutil.virtual_memory().total
    # TcpExt counters: nstat(8) names the same counters; values only grow.
    before = procfs.net_counters("TcpExt")
    out = subprocess.run(["nstat", "-asz"], check=True, capture_output=True, text=True).stdout
    theirs = {line.split()[0][len("TcpExt"):]: int(line.split()[1]) for line in out.splitlines()
              if line.startswith("TcpExt")}
    assert set(before) == set(theirs)
    assert all(before[k] <= theirs[k] for k in before)
    tcp = procfs.net_counters("Tcp", "/proc/net/snmp")
    assert tcp["MaxConn"] == -1 and "CurrEstab" in tcp
    # slabinfo geometry against SLUB's sysfs view of the same cache (root only).
    if os.geteuid() == 0 and os.path.exists("/sys/kernel/slab/TCP/slab_size"):
        sysfs = {}
        for name in ("slab_size", "objs_per_slab", "order"):
            with open(f"/sys/kernel/slab/TCP/{name}") as f:
                sysfs[name] = int(f.read())
        tcp = procfs.slabinfo()["TCP"]
        assert (tcp.objsize, tcp.objperslab, tcp.pagesperslab) == \
            (sysfs["slab_size"], sysfs["objs_per_slab"], 1 << sysfs["order"])


def test_procfs_error_policy_missing_is_none_denied_is_unreadable():
    """Missing: None, whatever the reader.  Denied: Unreadable (a PermissionError that
    names the file), which the snapshot records instead of failing."""
    assert procfs.read_sysctl("net.ipv4.no_such_knob") is None
    assert procfs.sysctl_ints("fs.no-such") is None
    assert procfs.read_text("/proc/no-such-file") is None
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root to start with")
    # Python and tuner live under /root (unreadable by nobody): import first, then drop.
    code = ("import os, sys\n"
            "from tuner import readings, knobs\nfrom tuner.host import procfs\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try:\n procfs.slabinfo()\nexcept procfs.Unreadable as e:\n print('unreadable', e.path)\n"
            "snap = readings.Snapshot()\n"
            "readings._read_slab(snap)\n"
            "print(snap.unreadable, snap.slab)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.splitlines() == ["unreadable /proc/slabinfo", "['/proc/slabinfo'] None"]


def test_procfs_and_the_probe_kernel_module_import_only_the_standard_library():
    """Forked probe workers import probes.kernel (and so tuner.host.procfs): neither may pull
    in psutil, pyroute2, typer or rich, which every worker would then carry."""
    code = ("import sys; import tuner.host.procfs, probes.kernel, probes.local_worker, probes.serve_worker, probes.connect_worker\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('psutil', 'pyroute2', 'typer', 'rich', 'click', 'pydantic', 'tabulate')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_per_netns_readings_come_from_inside(netns):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.core.somaxconn=1234",
                    "net.ipv4.ip_local_port_range=40000 40009"], check=True)
    inside = assess.snapshot(netns)
    host = assess.snapshot()
    assert inside.sysctls["net.core.somaxconn"] == "1234" == _sysctl_cli("net.core.somaxconn", netns)
    assert inside.sysctls["net.ipv4.ip_local_port_range"] == "40000 40009"
    assert host.sysctls["net.core.somaxconn"] == _sysctl_cli("net.core.somaxconn")
    # Host-only knobs are read on the host even with --netns (they are absent inside).
    assert inside.sysctls["net.ipv4.tcp_mem"] == host.sysctls["net.ipv4.tcp_mem"] is not None
    assert _sysctl_cli("net.ipv4.tcp_mem", netns) is None
    # Addresses and sockstat are the namespace's own: only lo, no sockets.
    assert {a["ifname"] for a in inside.addresses} == {"lo"}
    assert inside.sockstat["TCP"]["inuse"] == 0


def test_unknown_netns_is_a_usage_error():
    from tuner.host.errors import UsageError
    with pytest.raises(UsageError, match="ip netns list"):
        assess.snapshot("no-such-ns-x")
