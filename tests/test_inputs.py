"""What users type, refused before tuner touches anything: namespace names, alias
networks, numbers. Each refusal is one line on stderr, exit 2, and nothing changed.

Everything runs against the real host: namespaces listed by `ip netns list`, mounts in
/proc/self/mountinfo, veth devices in throwaway namespaces.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tuner import cli
from tuner.host import netns as netns_home

from applyhelp import host_values

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and veth devices need root")


def tuner(capsys, *args):
    """`tuner ARGS` in this process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuner: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- namespace names

def ip_netns_list():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def mount_points():
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


def run_dir_listing():
    try:
        return sorted(os.listdir(netns_home.RUN_DIR))
    except FileNotFoundError:
        return None


def unmount_under(root):
    """Teardown: a namespace file bind-mounted under root (what the bug made) goes away."""
    for point in reversed(mount_points()):
        if point.startswith(str(root)):
            subprocess.run(["umount", "-l", point], check=False)


# Every command that has --netns, and the least argv that makes it run.
NETNS_COMMANDS = {
    "report": ["report"],
    "metrics": ["metrics"],
    "apply": ["apply", "-n", "1000", "--dry-run"],
    "probe": ["probe", "-n", "10"],
    "probe --serve": ["probe", "--serve", "127.0.0.1:0"],
    "probe --connect": ["probe", "--connect", "127.0.0.1:9", "-n", "1"],
    "diagnose": ["diagnose", "--port", "9"],
}


def test_every_netns_option_is_covered():
    """A new command with --netns joins NETNS_COMMANDS (and so every test below)."""
    import typer.main

    group = typer.main.get_command(cli.app)
    with_netns = {name for name, cmd in group.commands.items()
                  if any("--netns" in p.opts for p in cmd.params)}
    assert with_netns == {c.split()[0] for c in NETNS_COMMANDS}


@pytest.fixture
def bait(tmp_path, monkeypatch):
    """The attack from issue 8: /var/run/netns/../../tmp/BAIT exists (here a file in
    /tmp), so a check that joins the name onto /var/run/netns finds it; run from a
    directory two levels down, pyroute2 resolves the same name against the working
    directory instead, where nothing exists, and creates a namespace there."""
    name = f"tuner-bait-{uuid.uuid4().hex[:8]}"
    planted = f"/tmp/{name}"
    with open(planted, "w"):
        pass
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    try:
        yield f"../../tmp/{name}", tmp_path
    finally:
        unmount_under(tmp_path)
        os.unlink(planted)


def _nothing_created(tmp_path, before):
    assert (ip_netns_list(), run_dir_listing(), mount_points()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]          # no tmp_path/tmp
    assert list((tmp_path / "a" / "b").iterdir()) == []


@needs_root
def test_report_netns_path_creates_nothing(bait):
    """`tuner report --netns ../../tmp/bait`, a read-only command, as a real process."""
    name, tmp_path = bait
    before = ip_netns_list(), run_dir_listing(), mount_points()
    proc = subprocess.run([sys.executable, "-m", "tuner", "report", "--netns", name],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path / "a" / "b")
    assert proc.returncode == 2, proc.stderr
    assert "not a namespace name" in one_error_line(proc.stderr)
    assert proc.stdout == ""
    _nothing_created(tmp_path, before)


@needs_root
@pytest.mark.parametrize("command", NETNS_COMMANDS)
@pytest.mark.parametrize("bad", ["BAIT", "", ".", "..", "/", "../../etc", "a/b", "lo\0x"])
def test_netns_that_is_not_a_name_is_refused_before_any_namespace_call(capsys, bait, command, bad):
    name, tmp_path = bait
    bad = name if bad == "BAIT" else bad
    before = ip_netns_list(), run_dir_listing(), mount_points()
    values = host_values()
    rc, out, err = tuner(capsys, *NETNS_COMMANDS[command], "--netns", bad)
    assert rc == 2, err
    line = one_error_line(err)
    assert "not a namespace name" in line and "ip netns list" in line
    assert out == ""
    _nothing_created(tmp_path, before)
    assert host_values() == values


@needs_root
@pytest.mark.parametrize("command", NETNS_COMMANDS)
def test_netns_not_in_ip_netns_list_is_refused(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    missing = f"tuner-t-{uuid.uuid4().hex[:8]}"
    (tmp_path / missing).mkdir()            # a directory by that name here is not a namespace
    before = ip_netns_list(), run_dir_listing(), mount_points()
    rc, out, err = tuner(capsys, *NETNS_COMMANDS[command], "--netns", missing)
    assert rc == 2, err
    assert f"no network namespace named {missing!r}" in one_error_line(err)
    assert (ip_netns_list(), run_dir_listing(), mount_points()) == before


@needs_root
def test_a_listed_namespace_is_entered_and_nothing_new_appears(capsys, netns):
    before = ip_netns_list(), mount_points()
    rc, out, err = tuner(capsys, "report", "--netns", netns, "--json")
    assert rc == 0, err
    assert f'"netns": "{netns}"' in out
    assert (ip_netns_list(), mount_points()) == before


# ---------------------------------------------------------------- --alias-net policy

from applyhelp import add_veth, addresses, netns_values  # noqa: E402

from tuner.host.errors import UsageError  # noqa: E402
from tuner.inputs import check_alias_net  # noqa: E402

# (network, device, what the refusal says); refused whether or not --allow-public-aliases.
NEVER = [
    ("224.0.0.0/24", "veth0", "multicast"),
    ("239.255.0.0/16", "veth0", "multicast"),
    ("0.0.0.0/24", "veth0", "this network"),
    ("240.0.0.0/24", "veth0", "reserved"),
    ("255.255.255.255/32", "veth0", "reserved"),
    ("127.0.0.0/24", "veth0", "loopback"),
    ("127.0.0.0/7", "lo", "loopback"),        # reaches past 127/8
]
# Refused unless --allow-public-aliases: not a network an operator plausibly owns.
NOT_PRIVATE = [
    ("8.8.8.0/24", "veth0"),
    ("198.51.100.0/24", "veth0"),      # documentation
    ("169.254.1.0/24", "veth0"),       # link-local
    ("10.0.0.0/7", "veth0"),           # 10/8 and 11/8: half public
    ("172.32.0.0/24", "veth0"),        # just past 172.16.0.0/12
    ("100.128.0.0/24", "veth0"),       # just past 100.64.0.0/10
    ("192.169.0.0/24", "veth0"),
]
PRIVATE = [
    ("10.9.0.0/24", "veth0"), ("172.16.0.0/12", "veth0"), ("172.31.255.0/24", "veth0"),
    ("192.168.7.0/24", "veth0"), ("100.64.0.0/10", "veth0"), ("100.127.0.0/24", "veth0"),
    ("127.0.0.0/8", "lo"), ("127.5.0.0/16", "lo"), ("10.9.0.0/24", "lo"),
    ("fd00:1::/64", "veth0"), ("::1/128", "lo"),
]


@pytest.mark.parametrize("net, dev", PRIVATE)
def test_private_networks_are_allowed(net, dev):
    assert str(check_alias_net(net, dev)) == net


@pytest.mark.parametrize("net, dev", NOT_PRIVATE)
def test_public_networks_need_the_flag(net, dev):
    with pytest.raises(UsageError, match="--allow-public-aliases"):
        check_alias_net(net, dev)
    assert check_alias_net(net, dev, allow_public=True).version == 4


@pytest.mark.parametrize("net, dev, says", NEVER)
@pytest.mark.parametrize("allow_public", [False, True])
def test_never_a_hosts_own_address(net, dev, says, allow_public):
    with pytest.raises(UsageError, match=says):
        check_alias_net(net, dev, allow_public=allow_public)


def _apply_aliases(capsys, ns, jpath, net, *extra):
    return tuner(capsys, "apply", "-n", "200k", "--role", "client", "--netns", ns,
                 "--alias-dev", "veth0", "--alias-net", net, "--yes", "--journal", jpath, *extra)


@needs_root
@pytest.mark.parametrize("net, extra", [(n, ()) for n, _ in NOT_PRIVATE[:3]] +
                         [(n, flag) for n, dev, _ in NEVER if dev == "veth0"
                          for flag in [(), ("--allow-public-aliases",)]])
def test_apply_refuses_an_alias_net_nobody_should_add_on_a_veth(capsys, jpath, netns, net, extra):
    """On a real veth in a throwaway namespace, with a target that needs aliases: the
    refusal is one line and exit 2, before any address, sysctl or journal is written."""
    add_veth(netns)
    addrs, values = addresses(netns, "veth0"), netns_values(netns)
    host = host_values()
    rc, out, err = _apply_aliases(capsys, netns, jpath, net, *extra)
    assert rc == 2, err
    assert f"--alias-net {net}" in one_error_line(err)
    assert out == ""
    assert addresses(netns, "veth0") == addrs and netns_values(netns) == values
    assert host_values() == host and not os.path.exists(jpath)


@needs_root
@pytest.mark.parametrize("net, flag", [("100.64.9.0/24", ()),
                                       ("198.51.100.0/24", ("--allow-public-aliases",))])
def test_apply_adds_aliases_from_an_allowed_network_and_revert_removes_them(capsys, jpath, netns,
                                                                            net, flag):
    prefix = net.rsplit(".", 1)[0]
    add_veth(netns, address=f"{prefix}.1/24")
    addrs, values = addresses(netns, "veth0"), netns_values(netns)
    rc, out, err = _apply_aliases(capsys, netns, jpath, net, *flag)
    assert rc == 0, err
    added = sorted(set(addresses(netns, "veth0")) - set(addrs))
    assert added and all(a.startswith(prefix + ".") and a.endswith("/32") for a in added)
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert addresses(netns, "veth0") == addrs and netns_values(netns) == values


@needs_root
def test_loopback_aliases_on_lo_are_allowed(capsys, jpath, netns):
    rc, out, err = tuner(capsys, "apply", "-n", "1000", "--netns", netns, "--alias-dev", "lo",
                         "--alias-net", "127.0.0.0/8", "--dry-run", "--journal", jpath)
    assert rc == 0, err
