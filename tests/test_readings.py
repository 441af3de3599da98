"""Readings against independent reads of the same kernel state (sysctl(8), psutil, setrlimit)."""
import os
import subprocess
import sys

import psutil
import pytest

from tuner import knobs, readings, report


def _sysctl_cli(name, netns=None):
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["sysctl", "-n", name]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return " ".join(proc.stdout.split()) if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def snap():
    return report.snapshot()


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
    assert readings.source_address_count(snap.addresses, "lo") == 2 ** 24 - 2
    fake = [{"ifname": "eth9", "address": "192.0.2.1", "prefixlen": 24, "family": 4},
            {"ifname": "eth9", "address": "192.0.2.2", "prefixlen": 24, "family": 4}]
    assert readings.source_address_count(fake, "eth9") == 2


def test_per_netns_readings_come_from_inside(netns):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.core.somaxconn=1234",
                    "net.ipv4.ip_local_port_range=40000 40009"], check=True)
    inside = report.snapshot(netns)
    host = report.snapshot()
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
    from tuner.errors import UsageError
    with pytest.raises(UsageError, match="ip netns list"):
        report.snapshot("no-such-ns-x")
