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
        return sorted(os.listdir("/var/run/netns"))
    except FileNotFoundError:
        return None


def unmount_under(root):
    """Teardown: a namespace file bind-mounted under root (what the bug made) goes away."""
    for point in reversed(mount_points()):
        if point.startswith(str(root)):
            subprocess.run(["umount", "-l", point], check=False)


# Every command that has --netns, and the least argv that makes it run.
NETNS_COMMANDS = {
    "report": [],
    "metrics": [],
    "apply": ["-n", "1000", "--dry-run"],
    "probe": ["-n", "10"],
    "probe --serve": ["--serve", "127.0.0.1:0"],
    "probe --connect": ["--connect", "127.0.0.1:9", "-n", "1"],
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
    rc, out, err = tuner(capsys, *command.split(), *NETNS_COMMANDS[command], "--netns", bad)
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
    rc, out, err = tuner(capsys, *command.split(), *NETNS_COMMANDS[command], "--netns", missing)
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
