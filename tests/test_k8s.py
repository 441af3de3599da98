"""`tuner report --json`'s k8s section against the kernel's own per-namespace visibility.

A pod gets its own network namespace, so only sysctls the kernel keeps per network
namespace can be set for one pod.  The test measures that in a fresh namespace, for
every sysctl of the knob table: absent there, or read-only there (the kernel shows the
host's), or written there and the host's value moves with it: host-wide, so "node
only".  Written there and the host's value stays: per namespace, so settable for a pod
(the kubelet's safe list decides whether the pod may ask itself or the node must allow
it as unsafe).  Host values touched by the last check are put back right away.
"""
from __future__ import annotations

import json
import os

import pytest

from applyhelp import restore
from conftest import run_tuner
from tuner import knobs
from tuner.host.procfs import read_sysctl, sysctl_path
from tuner.host.netns import in_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and sysctl writes need root")


def _write(name: str, value: str) -> None:
    fd = os.open(sysctl_path(name), os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _lower_last(text: str) -> str:
    """A different valid value: the last number one lower ('32768 60999' -> '32768 60998',
    tcp_tw_reuse 2 -> 1)."""
    parts = text.split()
    parts[-1] = str(int(parts[-1]) - 1)
    return " ".join(parts)


def measured_scope(name: str, ns: str) -> str:
    """'netns' or 'host', as the kernel behaves in the fresh namespace `ns`."""
    with in_netns(ns):
        inside = read_sysctl(name)
        if inside is None:
            return "host"                   # not there at all: only the initial namespace has it
        if not os.access(sysctl_path(name), os.W_OK) or \
                not os.stat(sysctl_path(name)).st_mode & 0o222:
            return "host"                   # the host's value, shown read-only
    host = read_sysctl(name)
    try:
        with in_netns(ns):
            _write(name, _lower_last(inside))
        return "host" if read_sysctl(name) != host else "netns"
    finally:
        restore({name: host})


def test_k8s_placement_follows_the_kernels_per_namespace_visibility(netns, host_restored):
    report = json.loads(run_tuner("report", "--role", "server", "--target", "1M", "--json").stdout)
    section = {row["knob"]: row for row in report["k8s"]}
    sysctls = [k.name for k in knobs.KNOBS if k.is_sysctl]
    assert sorted(section) == sorted(sysctls)
    measured = {name: measured_scope(name, netns) for name in sysctls}
    # The kernel agrees with the table's scope for every sysctl (tcp_mem, tcp_max_orphans
    # are absent in a namespace; nf_conntrack_max is read-only there; fs.* are global).
    assert measured == {name: knobs.BY_NAME[name].scope for name in sysctls}
    for name, row in section.items():
        if measured[name] == "host":
            assert row["placement"] == knobs.K8S_NODE_ONLY, name
        elif row["kubelet_safe_since"]:
            assert row["placement"] == knobs.K8S_POD, name
        else:
            assert row["placement"] == knobs.K8S_UNSAFE, name
    # What a pod can set for itself is per namespace: the port range is among them; the
    # accept queue is per namespace too, but not on the kubelet's safe list.
    assert section["net.ipv4.ip_local_port_range"]["placement"] == knobs.K8S_POD
    assert section["net.core.somaxconn"]["placement"] == knobs.K8S_UNSAFE
    assert section["net.ipv4.tcp_mem"]["placement"] == knobs.K8S_NODE_ONLY
    # The value the target needs rides along, for the pod spec or the node's DaemonSet.
    assert section["net.core.somaxconn"]["needed"] == report["rows"][
        [r["name"] for r in report["rows"]].index("net.core.somaxconn")]["needed"]
