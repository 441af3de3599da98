"""Mosquitto's own cap (tuner/apps/mosquitto.py) against the real broker from Debian's
package (tests/realservers.py): predicted by the adapter and by `tuner diagnose`, then
measured by a plain MQTT client (tests/mqtthold.py: CONNECT on many sockets, CONNACK 0
still open counts); the printed fix applied as it says (edit, then restart) and measured
again.  The config reader is also run on config files written here, read the same way
(as root, through base.read_trusted), with what Mosquitto's conf.c does in each case."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import tempfile

import pytest

import mqtthold
from realservers import free_port
from conftest import run_tuner
from tuner.apps import base, find, mosquitto

pytestmark = pytest.mark.usefixtures("nofile_raised")


def near(measured: int, predicted: int) -> bool:
    """The issue's tolerance: max(3, 1%)."""
    return abs(measured - predicted) <= max(3, predicted // 100)


def view(srv) -> base.ProcView:
    v = base.view(srv.pid, [(h, srv.port) for h in srv.hosts])
    assert find(v) is mosquitto.ADAPTER
    return v


def diagnose(srv, *args) -> dict:
    out = run_tuner("diagnose", "--port", srv.port, *args, "--json")
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


# ---------------------------------------------------------------- the config, as conf.c reads it

@pytest.fixture
def confdir():
    d = tempfile.mkdtemp(prefix="tuner-mosq-conf-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


def write(d: str, name: str, text: str) -> str:
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def proc_for(path=None, *args) -> base.ProcView:
    cmd = ("/usr/sbin/mosquitto",) + (("-c", path) if path else ()) + args
    return base.ProcView(pid=os.getpid(), ppid=1, name="mosquitto", exe=None, cmdline=cmd, uid=0,
                         gid=0, nofile_soft=1024, nofile_hard=1024, netns_inode=None)


def test_each_listener_block_counts_alone_and_the_default_listener_only_when_asked(confdir):
    path = write(confdir, "m.conf", "max_connections 9\n# max_connections 1\n"
                 "listener 1884 127.0.0.1\nmax_connections 10\nlistener 1885\n"
                 "listener 1886 ::1\nmax_connections 12\n")
    conf = mosquitto.read_config(proc_for(path))
    got = [(l.port, l.host, l.max_connections) for l in conf.listeners]
    # The first line belongs to the default listener (port 1883, every address), which
    # it creates; listener 1885 has no max_connections of its own: unlimited.
    assert got == [(1884, "127.0.0.1", 10), (1885, None, -1), (1886, "::1", 12), (1883, None, 9)]
    cap = mosquitto.read(proc_for(path))
    assert cap.allows is None and cap.capless, cap          # 1885 is unlimited
    assert "listener 1885 unlimited" in cap.notes[0], cap.notes


def test_zero_and_negative_are_unlimited_and_local_only_mode_takes_the_p_ports(confdir):
    path = write(confdir, "m.conf", "listener 1884 127.0.0.1\nmax_connections 0\n"
                 "listener 1885 127.0.0.1\nmax_connections -7\n")
    assert not any(l.capped for l in mosquitto.read_config(proc_for(path)).listeners)
    empty = write(confdir, "e.conf", "persistence false\n")
    conf = mosquitto.read_config(proc_for(empty, "-p", "1999"))
    assert conf.local_only and [(l.port, l.host) for l in conf.listeners] == [(1999, "127.0.0.1"), (1999, "::1")]
    assert mosquitto.read_config(proc_for(None)).local_only


def test_include_dir_files_in_mosquittos_order_each_starting_at_the_default_listener(confdir):
    inc = os.path.join(confdir, "conf.d")
    os.mkdir(inc, 0o755)
    write(inc, "b.conf", "listener 1885 127.0.0.1\nmax_connections 5\n")
    write(inc, "A.conf", "listener 1884 127.0.0.1\nmax_connections 4\n")
    write(inc, "c.conf", "max_connections 3\n")      # no listener line in this file: the default one
    write(inc, ".conf", "max_connections 1\n")       # too short a name: skipped by Mosquitto
    write(inc, "d.txt", "max_connections 1\n")
    path = write(confdir, "m.conf", f"include_dir {inc}\nlistener 1886 127.0.0.1\nmax_connections 6\n")
    conf = mosquitto.read_config(proc_for(path))
    got = [(l.port, l.max_connections, os.path.basename(l.max_where)) for l in conf.listeners]
    assert got == [(1884, 4, "A.conf:2"), (1885, 5, "b.conf:2"), (1886, 6, "m.conf:3"), (1883, 3, "c.conf:1")]
    cap = mosquitto.read(proc_for(path))
    assert (cap.allows, cap.sureness) == (18, base.READ), cap


def test_a_config_others_may_write_is_not_read(confdir):
    path = write(confdir, "m.conf", "listener 1884 127.0.0.1\nmax_connections 10\n")
    os.chmod(path, 0o666)
    cap = mosquitto.read(proc_for(path))
    assert cap.allows is None and cap.sureness == base.UNKNOWN, cap
    assert any("writable by others" in u for u in cap.unread), cap.unread


# ---------------------------------------------------------------- the real broker

def test_max_connections_on_two_listeners_predicted_measured_and_raised_by_the_printed_fix(real_server):
    srv = real_server("mosquitto", max_connections=40, nofile=4096)
    d = diagnose(srv)
    assert d["max_connections"] == 80, d["verdict"]
    assert d["binding_limit"] == f"mosquitto max_connections 40 x 2 listeners ({srv.config}:5,7)", d["verdict"]
    assert near(mqtthold.held(srv, 120, every_host=True).held, 80)
    # The fix for a target of 300: the line, where, and a restart (not SIGHUP).
    d = diagnose(srv, "--target", 300)
    fix = d["application"]["fix"]
    assert (fix["lines"], fix["file"], fix["action"]) == (["max_connections 150"], f"{srv.config}:5,7", "restart"), fix
    # It dropped to the `mosquitto` user, who owns its argv: not repeated as root's command.
    assert fix["command"].startswith(f"kill {srv.pid}, then start it again as it was started"), fix
    assert "a reload (SIGHUP, systemctl reload) drops every listener's cap" in fix["why"], fix
    # Why restart: a SIGHUP (Debian's `systemctl reload`) sets each listener block back to
    # its defaults and skips max_connections (conf.c): the caps are gone, not kept.
    os.kill(srv.pid, signal.SIGHUP)
    assert mqtthold.held(srv, 120, every_host=True).held == 120
    with open(srv.config) as f:
        text = f.read()
    with open(srv.config, "w") as f:
        f.write(re.sub(r"(?m)^max_connections 40$", fix["lines"][0], text))
    srv.restart()
    assert diagnose(srv)["max_connections"] == 300
    assert near(mqtthold.held(srv, 360, every_host=True).held, 300)


def test_without_a_cap_its_descriptors_bind_one_short_for_libwrap_then_apply_raises_them(
        real_server, netns, tmp_path):
    # In a namespace of its own, so the apply the fix prints changes nothing of the host's.
    # It stays root (`user root`): prlimit on another user's process needs CAP_SYS_RESOURCE,
    # which root here lacks, so `tuner apply --pid` could not raise a `mosquitto` user's.
    srv = real_server("mosquitto", nofile=(300, 2048), hosts=("127.0.0.1",), lines=["user root"],
                      netns=netns)
    d = diagnose(srv, "--netns", netns)
    # 300 - stdin, stdout, stderr, the spare socket, epoll, one listener - 1 for tcpd's check.
    assert (d["max_connections"], d["binding_limit"]) == (293, "RLIMIT_NOFILE.soft"), d["verdict"]
    assert "1 kept free for what it opens on each accept" in d["verdict"]
    assert d["application"]["setting"] == "max_connections -1 (unlimited)"
    assert mqtthold.held(srv, 360).held == 293
    fix = next(f for f in d["fix"] if (f["command"] or "").startswith("tuner apply --pid"))
    journal = str(tmp_path / "journal.json")
    out = run_tuner(*shlex.split(fix["command"])[1:], "--yes", "--journal", journal)
    assert out.returncode in (0, 3), out.stdout + out.stderr
    try:
        again = diagnose(srv, "--netns", netns)
        assert again["max_connections"] == 2048 - 6 - 1, again["verdict"]
        assert near(mqtthold.held(srv, 2100).held, 2041)
    finally:
        run_tuner("revert", "--yes", "--journal", journal)


def test_read_from_the_running_broker_with_an_include_dir(real_server):
    other = free_port(("127.0.0.1",))
    srv = real_server("mosquitto", max_connections=20, hosts=("127.0.0.1",), nofile=4096,
                      conf_d={"extra.conf": f"listener {other} 127.0.0.1\nmax_connections 7\n"})
    cap = mosquitto.ADAPTER.read(view(srv))
    assert cap.allows == 27 and cap.where == f"{srv.dir}/conf.d/extra.conf:2, {srv.config}:6", cap
    assert cap.accept_fds == 1 and any("libwrap" in n for n in cap.notes), cap      # Debian's build
