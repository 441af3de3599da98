"""`tuner diagnose` against real servers: a stock asyncio server, `tuner probe --serve`'s
SO_REUSEPORT workers, a server in another network namespace, a systemd-style unit
cgroup, and the bad inputs (one line, documented exit code).

Servers run in throwaway network namespaces; the burst comes from `tuner probe
--connect` without --rate.  The JVM cases are in test_diagnose_java.py.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest

from conftest import remove_cgroup, run_tuner
from tuner.host.procfs import read_sysctl
from tuner.host.netns import in_netns

SERVERS = os.path.join(os.path.dirname(__file__), "servers")


def in_ns(ns, *argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def asyncio_server(ns: str, port: int, stall: float = 0.0) -> subprocess.Popen:
    proc = in_ns(ns, sys.executable, os.path.join(SERVERS, "asyncio_wire.py"), port, stall)
    assert proc.stdout.readline().startswith("listening"), proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def diagnose_json(*args, rc=0) -> dict:
    proc = run_tuner("diagnose", *args, "--json")
    assert proc.returncode == rc, (proc.returncode, proc.stderr)
    return json.loads(proc.stdout)


def wire_clients(ns: str, port: int, n: int) -> list:
    """n verified connections held by this test (the wire exchange by hand)."""
    socks = []
    with in_netns(ns):
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
    for s in socks:
        idx = s.recv(4, socket.MSG_WAITALL)
        s.sendall(idx)
        assert s.recv(1) == b"\x06"
    return socks


def test_asyncio_default_backlog_burst_watch_names_the_listen_backlog(netns):
    """asyncio listens with backlog 100; a burst while its loop is blocked overflows that
    queue. diagnose shows 100 against the namespace's somaxconn; --watch shows
    ListenOverflows rising and names the application's listen backlog and its setting."""
    port = 7300
    srv = asyncio_server(netns, port, stall=2.5)
    try:
        d = diagnose_json("--pid", srv.pid)
        row = next(r for r in d["limits"] if r["name"] == "listen backlog")
        somaxconn = next(r for r in d["limits"] if r["name"] == "net.core.somaxconn")["current"][0]
        assert row["current"] == [100] and d["listeners"][0]["backlog"] == 100
        assert somaxconn > 100
        watch = subprocess.Popen([sys.executable, "-m", "tuner", "diagnose", "--pid", str(srv.pid),
                                  "--watch", "7", "--interval", "0.5", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        burst = run_tuner("probe", "--connect", f"127.0.0.1:{port}", "-n", 600, "--netns", netns,
                          "--timeout", 4, "--json", timeout=60)
        assert burst.returncode in (0, 3), burst.stderr
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, err
        lines = [json.loads(l) for l in out.splitlines()]
        samples, summary = lines[:-1], lines[-1]
        assert all(s["schema"] == "tuner.diagnose.watch/1" for s in lines)
        events = [e for s in samples for e in s["events"] if e["counter"] == "ListenOverflows"]
        assert events and all(e["limit"] == "listen backlog" for e in events)
        assert "backlog=N" in events[0]["fix"]          # asyncio's own setting, named
        assert max(s["accept_queue"] for s in samples) >= 100
        overflows = [s["counters"]["ListenOverflows"] for s in samples]
        assert overflows[-1] > overflows[0]
        assert summary["summary"] and summary["moved"]["ListenOverflows"] == overflows[-1] - overflows[0]
        assert "listen backlog" in summary["limits_hit"]
    finally:
        stop(srv)


def test_watch_plain_lines_end_with_a_summary_on_ctrl_c(netns):
    srv = asyncio_server(netns, 7301)
    try:
        watch = subprocess.Popen([sys.executable, "-m", "tuner", "diagnose", "--port", "7301",
                                  "--netns", netns, "--watch", "--interval", "0.2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        socks = []
        time.sleep(1.5)
        socks = wire_clients(netns, 7301, 20)
        time.sleep(1.0)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("stalls at ")
        assert any(" conns 20 " in l for l in lines), out
        assert "ended by Ctrl-C" in out and "peak 20 connections" in out
        assert "no limit counter moved" in out
        for s in socks:
            s.close()
    finally:
        stop(srv)


def test_serve_reuseport_workers_found_by_port_and_summed(netns):
    port = 7400
    serve = in_ns(netns, sys.executable, "-m", "tuner", "probe", "--serve", f"127.0.0.1:{port}",
                  "--workers", 3, "--timeout", 120)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            d = run_tuner("diagnose", "--port", port, "--netns", netns, "--json")
            if d.returncode == 0 and len(json.loads(d.stdout)["pids"]) == 3:
                break
            time.sleep(0.3)
        socks = wire_clients(netns, port, 90)
        d = diagnose_json("--port", port, "--netns", netns)
        assert len(d["pids"]) == 3 and serve.pid not in d["pids"]
        assert len(d["listeners"]) == 3
        assert all(l["reuseport_siblings"] == 2 and len(l["pids"]) == 1 for l in d["listeners"])
        assert d["connections"]["held"] == 90 and d["connections"]["by_port"] == {str(port): 90}
        assert sum(d["connections"]["shares"].values()) == 90
        # The service's capacity is the sum of its workers': each can open its soft limit
        # minus what it holds now, plus the 90 they hold between them.
        procs = d["processes"]
        headroom = sum(p["nofile_soft"] - p["fds"] for p in procs)
        assert d["binding_limit"] == "RLIMIT_NOFILE.soft"
        assert d["max_connections"] == 90 + headroom
        assert sorted(d["binding_pids"]) == sorted(d["pids"])
        rows = [r for r in d["limits"] if r["name"] == "RLIMIT_NOFILE.soft"]
        assert sorted(r["pid"] for r in rows) == sorted(d["pids"])
        for s in socks:
            s.close()
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=20)
        finally:
            stop(serve)


def test_a_process_in_another_namespace_uses_that_namespaces_knobs(netns):
    """somaxconn and the port range are per namespace: diagnose reads the process's."""
    host_somax = int(read_sysctl("net.core.somaxconn"))
    ns_somax = 512 if host_somax != 512 else 384
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"net.core.somaxconn={ns_somax}",
                    "net.ipv4.ip_local_port_range=40000 40999"], check=True)
    code = ("import socket,time;s=socket.socket();s.bind(('127.0.0.1',7500));s.listen(4096);"
            "print('listening',flush=True);time.sleep(60)")
    srv = in_ns(netns, sys.executable, "-c", code)
    try:
        assert srv.stdout.readline().startswith("listening")
        d = diagnose_json("--pid", srv.pid, "--target", 2000, rc=0)
        rows = {r["name"]: r for r in d["limits"]}
        assert rows["net.core.somaxconn"]["current"] == [ns_somax]
        assert rows["net.ipv4.ip_local_port_range"]["current"] == [40000, 40999]
        assert read_sysctl("net.ipv4.ip_local_port_range") != "40000 40999"
        # listen(4096) was capped by the namespace's somaxconn at listen() time.
        assert d["listeners"][0]["backlog"] == ns_somax
        assert d["netns"] == netns
        # The fix for a bigger burst targets that namespace, not the host.
        assert any((f["command"] or "").endswith(f"--netns {netns}") for f in d["fix"]), d["fix"]
    finally:
        stop(srv)


@pytest.fixture
def unit_cgroup():
    """A unit's cgroup as systemd lays it out (name=systemd v1 hierarchy, or v2), made
    and removed by the test: this machine runs no systemd."""
    name = f"tuner-t-{uuid.uuid4().hex[:8]}.service"
    for base in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(base, "cgroup.procs")):
            path = os.path.join(base, name)
            try:
                os.mkdir(path)
            except OSError:
                continue
            break
    else:
        pytest.skip("no writable cgroup hierarchy to lay out a unit's cgroup in")
    try:
        yield name, path
    finally:
        remove_cgroup(path)


def test_unit_found_by_its_cgroup_and_persist_fix_named(netns, unit_cgroup):
    name, path = unit_cgroup
    code = ("import resource,socket,time;resource.setrlimit(resource.RLIMIT_NOFILE,(256,20000));"
            "s=socket.socket();s.bind(('127.0.0.1',7600));s.listen(128);print('listening',flush=True);"
            "time.sleep(60)")
    srv = subprocess.Popen(["sh", "-c", f"echo $$ > {path}/cgroup.procs; exec ip netns exec {netns} "
                                        f"{sys.executable} -c \"{code}\""],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().startswith("listening"), srv.stderr.read()
        d = diagnose_json("--unit", name[:-len(".service")], "--target", 1000, rc=3)
        assert d["pids"] == [srv.pid]
        assert d["processes"][0]["unit"] == name
        assert d["binding_limit"] == "RLIMIT_NOFILE.soft"
        commands = [f["command"] for f in d["fix"]]
        assert f"tuner apply --pid {srv.pid} --target 1000 --role server --netns {netns}" in commands
        assert f"tuner apply --persist --unit {name} --target 1000 --role server" in commands
    finally:
        stop(srv)


# ---------------------------------------------------------------- bad input

def one_line_error(proc, rc: int, *words: str) -> None:
    assert proc.returncode == rc, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuner: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert proc.stdout == ""


def free_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid   # reaped: nothing has this pid until the kernel wraps around


def test_bad_targets_are_one_line_usage_errors():
    one_line_error(run_tuner("diagnose", "--pid", free_pid()), 2, "no process with pid")
    one_line_error(run_tuner("diagnose", "--pid", 1), 2, "pid 1 is the init process")
    one_line_error(run_tuner("diagnose", "--pid", 2), 2, "kernel thread")
    one_line_error(run_tuner("diagnose", "--port", 1), 2, "nothing listens on TCP port 1")
    one_line_error(run_tuner("diagnose", "--port", 70000), 2, "from 1 to 65,535")
    one_line_error(run_tuner("diagnose"), 2, "one of --pid PID, --port PORT or --unit NAME")
    one_line_error(run_tuner("diagnose", "--pid", os.getpid(), "--port", 80), 2, "one of")
    one_line_error(run_tuner("diagnose", "--unit", "../etc"), 2, "not a systemd unit name")
    one_line_error(run_tuner("diagnose", "--unit", f"tuner-none-{uuid.uuid4().hex[:6]}"), 2,
                   "no systemd unit")
    one_line_error(run_tuner("diagnose", "--pid", os.getpid(), "--interval", 2), 2, "--watch only")


def test_a_zombie_is_refused():
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while not open(f"/proc/{child}/stat").read().split(") ")[1].startswith("Z"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        one_line_error(run_tuner("diagnose", "--pid", child), 2, "zombie", f"pid {child}")
    finally:
        os.waitpid(child, 0)


def test_a_process_exiting_mid_read_is_one_line(monkeypatch, capsys):
    """The process exits between two reads (made to happen at a fixed point: it is killed
    and reaped right before its descriptors are counted)."""
    from tuner import cli
    from tuner.host import procpid

    victim = subprocess.Popen(["sleep", "60"])
    real = procpid.fd_count

    def exit_first(pid):
        victim.kill()
        victim.wait()
        return real(pid)

    monkeypatch.setattr(procpid, "fd_count", exit_first)
    rc = cli.main(["diagnose", "--pid", str(victim.pid)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == (f"tuner: error: pid {victim.pid} exited while it was being read: "
                      f"run again against the running service")


def test_another_users_process_needs_root():
    """tuner run as an unprivileged user (a forked child that drops to nobody, tuner
    already imported) cannot look up a root process's descriptors: exit 4, one line."""
    from tuner.diagnose import evaluate as diagnose, service  # noqa: F401  (loaded before dropping root)
    from tuner.host.errors import TunerError
    from pyroute2.netlink.diag import DiagSocket  # noqa: F401

    target = subprocess.Popen(["sleep", "60"])
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            sys.stderr = open(w, "w")   # pytest captures sys.stderr, not descriptor 2
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            # The library call the command makes, and the command's mapping of its error
            # (the full CLI would lazily import modules that /root hides from nobody).
            try:
                service.read_process(target.pid)
                rc = 0
            except TunerError as e:
                print(f"tuner: error: {e}", file=sys.stderr)
                rc = e.exit_code
            sys.stderr.flush()
        except BaseException:
            rc = 99
        os._exit(rc)
    os.close(w)
    try:
        _, status = os.waitpid(child, 0)
        err = os.read(r, 4096).decode().strip().splitlines()
        assert os.waitstatus_to_exitcode(status) == 4, err
        assert len(err) == 1 and "needs root" in err[0] and str(target.pid) in err[0]
    finally:
        os.close(r)
        target.kill()
        target.wait()


def test_watch_notices_a_descriptor_walker_and_prices_it(netns):
    """Something listing /proc/PID/fd (here the test itself, as lsof would) pins a proc
    inode per descriptor; --watch sees proc_inode_cache grow with the connections and
    says what it costs per connection."""
    srv = asyncio_server(netns, 7302)
    try:
        watch = subprocess.Popen([sys.executable, "-m", "tuner", "diagnose", "--pid", str(srv.pid),
                                  "--watch", "--interval", "0.3", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        socks = wire_clients(netns, 7302, 1500)
        fd_dir = f"/proc/{srv.pid}/fd"
        walked = [os.lstat(os.path.join(fd_dir, name)) for name in os.listdir(fd_dir)]
        assert len(walked) > 1500
        # Held open (O_PATH) until the watch has sampled: unused proc inodes may be reclaimed
        # before a sample sees them (in the full suite it once saw 271 B per connection
        # where a proc inode is ~700 B).
        pinned = [os.open(os.path.join(fd_dir, name), os.O_PATH | os.O_NOFOLLOW) for name in os.listdir(fd_dir)]
        time.sleep(2.0)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
        for fd in pinned:
            os.close(fd)
        summary = json.loads(out.splitlines()[-1])
        walker = summary["fd_walker"]
        assert walker["walked"] is True, walker
        assert walker["connections_grown"] >= 1500
        # A proc inode is ~700 B here; at least half of the walked descriptors' worth.
        assert walker["bytes_per_connection"]["proc_inode_cache"] > 300
        for s in socks:
            s.close()
    finally:
        stop(srv)


def test_prefork_master_holding_the_listener_is_not_summed(netns):
    """A pre-fork server (as gunicorn or nginx: the master listens, its children accept):
    --port finds all three, and only the children's descriptors count."""
    code = ("import os,socket,time\n"
            "s=socket.socket();s.bind(('127.0.0.1',7303));s.listen(128)\n"
            "for i in range(2):\n"
            "    if os.fork()==0:\n"
            "        held=[]\n"
            "        while True: held.append(s.accept()[0])\n"
            "print('listening',flush=True);time.sleep(60)\n")
    srv = in_ns(netns, sys.executable, "-c", code)
    try:
        assert srv.stdout.readline().startswith("listening")
        socks = []
        with in_netns(netns):
            socks = [socket.create_connection(("127.0.0.1", 7303)) for _ in range(30)]
        deadline = time.monotonic() + 10
        while (d := diagnose_json("--port", 7303, "--netns", netns))["connections"]["held"] < 30:
            assert time.monotonic() < deadline, d["connections"]
            time.sleep(0.2)
        assert srv.pid not in d["pids"] and len(d["pids"]) == 2
        assert sorted(d["listeners"][0]["pids"]) == sorted([srv.pid] + d["pids"])
        assert any(f"pid {srv.pid}" in n and "pre-fork master" in n for n in d["notes"])
        procs = d["processes"]
        assert d["max_connections"] == 30 + sum(p["nofile_soft"] - p["fds"] for p in procs)
        for s in socks:
            s.close()
    finally:
        stop(srv)


def test_listeners_found_after_the_report_loaded_pyroute2_lean():
    """metrics --port reads the host first (tuner.host.localnet loads pyroute2's netlink modules
    without the package, for start-up time), then the service's listeners: sock_diag must
    still import and find a real listener (it ended in a circular ImportError)."""
    code = (
        "import socket\n"
        "from tuner.host import localnet\nfrom tuner.diagnose import service\n"
        "localnet.read_addresses()\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(17)\n"
        "port = s.getsockname()[1]\n"
        "print([l.backlog for l in service.listeners() if l.port == port])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[17]"


def test_connections_are_counted_in_each_family_the_listeners_accept(netns):
    """A dual-stack IPv6 listener holds IPv4 clients as v4-mapped AF_INET6 sockets, an
    IPv4 listener only AF_INET ones: service.counted dumps just the families the
    listeners have, and must still count every held connection of both (real sockets
    in a throwaway namespace; the raw sock_diag reader in tuner/host/sockdiag.py)."""
    from tuner.diagnose import service

    with in_netns(netns):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        dual = socket.socket(socket.AF_INET6)
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen(64)
        only4 = socket.socket()
        only4.bind(("127.0.0.1", 0))
        only4.listen(64)
        p6, p4 = dual.getsockname()[1], only4.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", p6)) for _ in range(3)]
        clients += [socket.create_connection(("::1", p6)) for _ in range(2)]
        clients += [socket.create_connection(("127.0.0.1", p4)) for _ in range(4)]
        accepted = [dual.accept()[0] for _ in range(5)] + [only4.accept()[0] for _ in range(4)]
        listening = [l for l in service.listeners() if l.port in (p6, p4)]
        assert sorted(l.family for l in listening) == [4, 6]
        assert service.counted([p6], [l for l in listening if l.port == p6]).by_port == {p6: 5}
        only = service.counted([p4], [l for l in listening if l.port == p4])
        assert (only.held, only.by_port) == (4, {p4: 4})
        both = service.counted([p6, p4], listening)
        assert (both.held, both.peers) == (9, 2)   # 127.0.0.1 (mapped or not) and ::1
        for s in clients + accepted + [dual, only4]:
            s.close()


def test_a_service_on_two_ports_is_diagnosed_with_both_counted(netns):
    """A service listening on two ports (80 and 443, say) is diagnosed through the CLI:
    the kernel-side filter for more than one port is accepted (it was refused with
    EINVAL, a traceback) and each port's held connections are counted."""
    code = ("import socket, sys, time\n"
            "ls = [socket.create_server(('127.0.0.1', 0)) for _ in range(2)]\n"
            "print(*[l.getsockname()[1] for l in ls], flush=True)\n"
            "held = []\n"
            "for i, l in enumerate(ls):\n"
            "    for _ in range(i + 2):\n"
            "        held.append(l.accept()[0])\n"
            "print('accepted', flush=True)\n"
            "time.sleep(60)\n")
    srv = in_ns(netns, sys.executable, "-c", code)
    try:
        ports = [int(p) for p in srv.stdout.readline().split()]
        with in_netns(netns):
            clients = [socket.create_connection(("127.0.0.1", p)) for i, p in enumerate(ports)
                       for _ in range(i + 2)]
        assert srv.stdout.readline().strip() == "accepted"
        d = diagnose_json("--pid", srv.pid)
        assert d["connections"]["by_port"] == {str(ports[0]): 2, str(ports[1]): 3}
        assert d["connections"]["held"] == 5
        for c in clients:
            c.close()
    finally:
        stop(srv)
