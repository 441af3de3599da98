"""The tests' one helper module: run tuner (in-process, as a process, as nobody), read
the state back (sysctls, addresses, limits, files), and put host sysctls back.

Everything here reads or changes the real kernel: host values through /proc/sys, a
namespace's through tuner.host.netns.in_netns, addresses through `ip`, limits through psutil.
conftest.py's session guard uses host_values/restore/addresses from here too.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys

import psutil
import pytest

from tuner import cli, knobs
from tuner.host.procfs import read_sysctl, sysctl_path
from tuner.host.netns import in_netns

HOST_NAMES = [n for n in knobs.sysctl_names("host") if n != "fs.file-nr"]
NETNS_NAMES = [n for n in knobs.sysctl_names("netns") if n != "net.netfilter.nf_conntrack_count"]


def host_values():
    """Every host-global and initial-namespace value the knob table can change (fs.file-nr
    and nf_conntrack_count are counters, not settings)."""
    return {n: read_sysctl(n) for n in HOST_NAMES + NETNS_NAMES}


@pytest.fixture
def host_restored():
    """Host values as before the test, even when it fails half-way."""
    before = host_values()
    yield before
    restore(before)


@pytest.fixture
def jpath(tmp_path):
    """A journal of the test's own, never /var/lib/tuner."""
    return str(tmp_path / "state" / "journal.json")


@pytest.fixture(autouse=True)
def own_lock(tmp_path, monkeypatch):
    """A host-wide lock of the test's own (TUNER_LOCK), never /run/tuner.lock: nothing is
    left in /run, and a tuner run elsewhere on this machine does not make a test busy."""
    path = tmp_path / "lock" / "tuner.lock"
    monkeypatch.setenv("TUNER_LOCK", str(path))
    return str(path)


def netns_values(ns):
    with in_netns(ns):
        return {n: read_sysctl(n) for n in NETNS_NAMES}


def restore(values, ns=None):
    """Write back what differs (os.write, so a refused value raises instead of vanishing)."""
    with in_netns(ns):
        for name, value in values.items():
            if value is not None and read_sysctl(name) != value:
                fd = os.open(sysctl_path(name), os.O_WRONLY)
                try:
                    os.write(fd, value.encode())
                finally:
                    os.close(fd)


def tuner(capsys, *args):
    """`tuner ARGS` in this process (fast); returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# Python and tuner live under /root, which nobody cannot read, so the child imports
# as root and then drops to uid/gid 65534 (all groups cleared) before tuner parses
# anything; from there on it is an ordinary unprivileged process.
_AS_NOBODY = (
    "import contextlib, io, os, sys, psutil, pyroute2, pyroute2.netns, tuner.cli, tuner.apply, tuner.revert\n"
    # typer and the commands import parts of themselves lazily: run each once as root.
    "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
    "    for warm in (['apply', '--bogus'], ['revert', '--help'], ['report'], ['report', '--json'],\n"
    "                 ['report', '--bogus']):\n"
    "        tuner.cli.main(warm)\n"
    "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
    "sys.exit(tuner.cli.main(sys.argv[1:]))\n")


def tuner_as_nobody(*args):
    """`tuner ARGS` as uid 65534 (no capabilities); returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-c", _AS_NOBODY, *map(str, args)],
                          capture_output=True, text=True, cwd="/", timeout=60)


def addresses(ns, dev):
    """IPv4 addresses on `dev` in namespace `ns` (None: the initial one), as 'A/P', sorted."""
    where = ["-n", ns] if ns else []
    out = subprocess.run(["ip", *where, "-4", "-j", "addr", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return sorted(f"{a['local']}/{a['prefixlen']}" for link in json.loads(out)
                  for a in link.get("addr_info", []))


def add_veth(ns, address="10.9.0.1/24"):
    """A veth pair inside `ns` (this kernel has no dummy module), veth0 up with `address`."""
    for cmd in (["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
                ["link", "set", "veth0", "up"], ["link", "set", "veth1", "up"],
                ["addr", "add", address, "dev", "veth0"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)


@contextlib.contextmanager
def child_with_nofile(soft, hard):
    """A running child process with the given RLIMIT_NOFILE, killed afterwards."""
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    proc = subprocess.Popen(["sleep", "600"], preexec_fn=limit)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def nofile(pid):
    return tuple(psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE))


def tree(root):
    """{relative path: content} of every file under root, and the directories."""
    files, dirs = {}, set()
    for base, dnames, fnames in os.walk(root):
        dirs.update(os.path.relpath(os.path.join(base, d), root) for d in dnames)
        for f in fnames:
            with open(os.path.join(base, f)) as fh:
                files[os.path.relpath(os.path.join(base, f), root)] = fh.read()
    return files, dirs
