"""`tuner apply` on the real kernel: plans, round trips, namespaces, aliases, rlimits, files,
refused writes, the lock, privileges and bad input.

Host-global values a test changes are put back by `host_restored` after each test (and
by conftest's session guard); per-namespace changes happen in throwaway namespaces.
Nothing is faked: the one stand-in is --root-dir, which aims --persist at a temp tree
instead of the real /etc (writing there would change how this machine boots).
"""
import json
import os

import pytest

from tuner import journal as journal_mod
from tuner.host.procfs import read_sysctl

from applyhelp import (add_veth, addresses, child_with_nofile, host_values, netns_values,
                       nofile, tree, tuner, tuner_as_nobody)
from conftest import run_tuner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="apply changes kernel settings: needs root")


def plan_of(capsys, *args):
    rc, out, err = tuner(capsys, "apply", "--dry-run", "--json", *args)
    assert rc == 0, err
    return json.loads(out)


# ---------------------------------------------------------------- plan

def test_dry_run_shows_plan_and_commands_and_changes_nothing(capsys, jpath):
    before = host_values()
    rc, out, err = tuner(capsys, "apply", "--target", "1M", "--dry-run", "--journal", jpath)
    assert rc == 0, err
    assert "equivalent shell commands:" in out
    assert "sysctl -w net.core.somaxconn=65535" in out
    assert "127.0.0.0/8" in out                   # loopback: no aliases needed, and it says why
    assert "--shrink-buffers would lower" in out  # worst-case buffer memory is explained
    assert host_values() == before
    assert not os.path.exists(jpath)


def test_plan_follows_table_order_and_only_raises(capsys, jpath):
    from tuner import knobs

    data = plan_of(capsys, "--target", "1M", "--journal", jpath)
    names = [c["knob"] for c in data["plan"]["changes"]]
    order = [k.name for k in knobs.KNOBS]
    assert names == sorted(names, key=order.index)
    for c in data["plan"]["changes"]:
        assert c["new"] >= c["current"], c   # lists of integers, as the report gives them
        assert c["command"].startswith("sysctl -w ")
    # A target the host already allows plans nothing.
    assert plan_of(capsys, "--target", "100", "--journal", jpath)["plan"]["changes"] == []


def test_shrink_buffers_lowers_defaults_with_memory_before_after(capsys, jpath, netns):
    before = netns_values(netns)
    data = plan_of(capsys, "--target", "1M", "--netns", netns, "--shrink-buffers", "--journal", jpath)
    changes = {c["knob"]: c for c in data["plan"]["changes"]}
    rmem = [int(x) for x in before["net.ipv4.tcp_rmem"].split()]
    assert changes["net.ipv4.tcp_rmem"]["new"] == [rmem[0], 4096, rmem[2]]
    mem = data["plan"]["memory"]
    assert mem["worst_case_buffer_bytes_after"] < mem["worst_case_buffer_bytes_before"]
    rc, out, err = tuner(capsys, "apply", "--target", "1M", "--netns", netns, "--shrink-buffers",
                         "--yes", "--journal", jpath)
    assert rc == 0, err
    assert netns_values(netns)["net.ipv4.tcp_rmem"] == f"{rmem[0]} 4096 {rmem[2]}"
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


# ---------------------------------------------------------------- round trip

def test_round_trip_host_and_namespace(capsys, jpath, netns, host_restored):
    """apply --target 1M on the host and in a namespace (one journal), then one revert:
    every global and per-namespace value equals the snapshot taken before."""
    host_before, ns_before = host_restored, netns_values(netns)
    rc, out, err = tuner(capsys, "apply", "--target", "1M", "--yes", "--journal", jpath)
    assert rc == 0, err
    assert read_sysctl("net.core.somaxconn") == "65535"
    assert int(read_sysctl("fs.nr_open")) >= 2_000_000
    # The report after apply: reachable, and it names the per-process cap that still binds.
    assert "after apply: target 1,000,000 reachable: yes" in out
    assert "still binding: RLIMIT_NOFILE.hard" in out
    rc, out, err = tuner(capsys, "apply", "--target", "1M", "--yes", "--netns", netns,
                         "--journal", jpath, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["after"]["reachable"] is True
    assert netns_values(netns)["net.ipv4.tcp_max_tw_buckets"] == "1100000"
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
    assert rc == 0, out + err
    assert host_values() == host_before
    assert netns_values(netns) == ns_before
    assert not os.path.exists(jpath)


def test_netns_changes_only_that_namespace_and_lists_host_knobs(capsys, jpath, netns, host_restored):
    ns_before = netns_values(netns)
    rc, out, err = tuner(capsys, "apply", "--target", "1M", "--yes", "--netns", netns,
                         "--journal", jpath)
    assert rc == 0, err
    assert host_values() == host_restored           # not one host value moved
    after = netns_values(netns)
    assert after["net.core.somaxconn"] == "65535"
    assert after["net.ipv4.tcp_max_syn_backlog"] == "65535"
    assert "not changed: fs.nr_open" in out and "exists only in the initial namespace" in out
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == ns_before


def test_second_apply_keeps_first_originals(capsys, jpath, netns):
    before = netns_values(netns)
    assert tuner(capsys, "apply", "-n", "10k", "--yes", "--netns", netns, "--journal", jpath)[0] == 0
    assert netns_values(netns)["net.core.somaxconn"] == "10000"
    assert tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jpath)[0] == 0
    entry = journal_mod.Journal.load(jpath).find(f"sysctl:{netns}:net.core.somaxconn")
    assert (entry["original"], entry["before"], entry["new"]) == (before["net.core.somaxconn"], "10000", "65535")
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


# ---------------------------------------------------------------- aliases and rlimits

def test_client_aliases_on_veth_in_namespace(capsys, jpath, netns):
    add_veth(netns)
    # An address someone else added is neither counted twice nor removed by revert.
    import subprocess
    subprocess.run(["ip", "-n", netns, "addr", "add", "10.9.0.200/32", "dev", "veth0"], check=True)
    addrs_before, before = addresses(netns, "veth0"), netns_values(netns)
    rc, out, err = tuner(capsys, "apply", "-n", "200k", "--role", "client", "--netns", netns,
                         "--alias-dev", "veth0", "--alias-net", "10.9.0.0/24", "--yes",
                         "--journal", jpath)
    assert rc == 0, err
    # 220,000 with headroom / (64,512 ports x 90%, fast with a per-socket port range on
    # this 6.18 kernel; half before 6.3) = 4 source addresses; 2 are there, 2 added as /32.
    added = sorted(set(addresses(netns, "veth0")) - set(addrs_before))
    assert added == [f"10.9.0.{i}/32" for i in range(2, 4)]
    assert f"ip -n {netns} addr add 10.9.0.2/32 dev veth0" in out
    assert "source addresses for outbound connections on veth0: 4" in out
    assert "after apply: target 200,000 reachable: yes" in out
    assert netns_values(netns)["net.ipv4.ip_local_port_range"] == "1024 65535"
    assert netns_values(netns)["net.ipv4.tcp_tw_reuse"] == "1"
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert addresses(netns, "veth0") == addrs_before
    assert netns_values(netns) == before


def test_after_report_counts_the_alias_device_even_with_no_addresses(capsys, jpath, netns):
    """A server needs no aliases, so --alias-dev may name a device with no address at all.
    The after-apply report used to catch the report's "no addresses on device" and quietly
    count every interface instead; it counts that device, and says what it counted."""
    import subprocess
    subprocess.run(["ip", "-n", netns, "link", "add", "veth0", "type", "veth", "peer", "name",
                    "veth1"], check=True)
    before = netns_values(netns)
    rc, out, err = tuner(capsys, "apply", "-n", "10k", "--role", "server", "--netns", netns,
                         "--alias-dev", "veth0", "--alias-net", "10.9.0.0/24", "--yes",
                         "--journal", jpath, "--json")
    assert rc == 0, err
    after = json.loads(out)["after"]
    assert after["source_addresses"] == {"dev": "veth0", "count": 0}
    assert after["reachable"] is True
    assert addresses(netns, "veth0") == []
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


def test_client_without_alias_dev_says_how_many_and_how(capsys, jpath, netns):
    add_veth(netns)
    data = plan_of(capsys, "-n", "1M", "--role", "client", "--netns", netns, "--journal", jpath)
    assert any("19 needed" in n and "--alias-dev" in n for n in data["plan"]["notes"]), data["plan"]["notes"]
    assert not any(c["kind"] == "alias" for c in data["plan"]["changes"])


def test_client_alias_dev_lo_keeps_the_port_range_and_down_link_is_named(capsys, jpath, netns):
    """--alias-dev lo for a client counted lo's 127.0.0.0/8 (16,777,214 sources), said
    'nothing to add' and dropped the port range the report marks as binding; and a DOWN
    --alias-dev got aliases with no word about the link.  Dry runs: nothing applied."""
    import subprocess
    subprocess.run(["ip", "-n", netns, "link", "add", "dum0", "type", "veth", "peer", "name", "dum1"], check=True)
    before, lo_before = netns_values(netns), addresses(netns, "lo")
    data = plan_of(capsys, "-n", "1M", "--role", "client", "--netns", netns, "--alias-dev", "lo",
                   "--alias-net", "10.99.0.0/24", "--journal", jpath)
    plan = data["plan"]
    knobs = [c["knob"] for c in plan["changes"]]
    assert "net.ipv4.ip_local_port_range" in knobs, knobs
    assert knobs.count("source addresses") == 19, knobs
    assert not any("16,777,214" in n for n in plan["notes"]), plan["notes"]
    assert any("127.0.0.0/8 on lo reaches only this host" in n for n in plan["notes"])
    rc, out, err = tuner(capsys, "apply", "--dry-run", "-n", "1M", "--role", "client", "--netns",
                         netns, "--alias-dev", "dum0", "--alias-net", "10.99.0.0/24",
                         "--journal", jpath)
    assert rc == 0, err
    assert f"dum0 is down: addresses on it carry no traffic until `ip -n {netns} link set dum0 up`" in out
    assert "10.99.0.19/32 on dum0" in out and "ip_local_port_range" in out
    subprocess.run(["ip", "-n", netns, "link", "set", "dum0", "up"], check=True)
    data = plan_of(capsys, "-n", "1M", "--role", "client", "--netns", netns, "--alias-dev", "dum0",
                   "--alias-net", "10.99.0.0/24", "--journal", jpath)
    assert not any("is down" in n for n in data["plan"]["notes"]), data["plan"]["notes"]
    assert netns_values(netns) == before and addresses(netns, "lo") == lo_before
    assert addresses(netns, "dum0") == []


def test_pid_raises_child_soft_limit_and_says_hard_is_capped(capsys, jpath):
    with child_with_nofile(1024, 20000) as pid:
        rc, out, err = tuner(capsys, "apply", "-n", "1M", "--pid", pid, "--yes", "--journal", jpath)
        assert rc == 0, err
        assert f"prlimit --pid {pid} --nofile=20000:20000" in out
        assert nofile(pid) == (20000, 20000)
        # No CAP_SYS_RESOURCE here: the plan says the hard limit stays and what to do.
        assert "cannot raise it (no CAP_SYS_RESOURCE)" in out and "LimitNOFILE=" in out
        rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
        assert rc == 0, out + err
        assert nofile(pid) == (1024, 20000)


def test_netns_plan_keeps_hard_limit_under_host_nr_open():
    """With CAP_SYS_RESOURCE, 1M loopback connections in one process need a hard
    RLIMIT_NOFILE of 2,000,064, above this fs.nr_open (1,048,576). apply --netns leaves
    fs.nr_open alone (host-wide), so it must not plan a hard limit the kernel refuses
    (EPERM at write time): it plans up to fs.nr_open and says why that is all. This
    machine has no CAP_SYS_RESOURCE, so the capability is set in a snapshot of it and
    the plan is built from that, without writing."""
    from dataclasses import replace

    from tuner import assess, knobs, plan

    snap = assess.snapshot()
    snap = replace(snap, cap_sys_resource=True, sysctls={**snap.sysctls, "fs.nr_open": "1048576"})
    procs = {4242: {"soft": 1024, "hard": 4096, "create_time": 1.0}}

    in_ns = plan.build_plan(snap, plan.Request(1_000_000, netns="tuner-t-fixed"), procs)
    rl = {c.knob: c.new for c in in_ns.changes if c.kind == "rlimit"}
    assert rl == {"RLIMIT_NOFILE.hard": 1_048_576, "RLIMIT_NOFILE.soft": 1_048_576}
    skipped = {s["knob"]: s for s in in_ns.skipped}
    assert skipped["fs.nr_open"]["needed"] == [2_000_064]
    assert any("fs.nr_open (1048576) caps it" in n and "without --netns" in n
               for n in in_ns.notes), in_ns.notes

    # On the host the plan raises fs.nr_open first, then the hard limit to what N needs.
    on_host = plan.build_plan(snap, plan.Request(1_000_000), procs)
    new = {c.knob: c.new for c in on_host.changes}
    assert new["fs.nr_open"] == "2000064" and new["RLIMIT_NOFILE.hard"] == 2_000_064
    # The report still shows what N needs, whatever apply --netns can do.
    rows = {r.name: r for r in assess.build(1_000_000, snap=snap).rows}
    assert rows["RLIMIT_NOFILE.hard"].needed == [2_000_064]
    assert knobs.BY_NAME["RLIMIT_NOFILE.hard"].needs(
        knobs.Ctx(snap, target=1_000_000, host_changes=False)) == [1_048_576]


# ---------------------------------------------------------------- persistence

def test_persist_into_temp_root(capsys, jpath, tmp_path, host_restored):
    root = tmp_path / "root"
    (root / "etc/security/limits.d").mkdir(parents=True)
    theirs = "# the admin's own\n*  soft  nofile  4096\n"
    (root / "etc/security/limits.d/99-tuner.conf").write_text(theirs)
    files_before, dirs_before = tree(root)
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--persist", "--root-dir", root,
                         "--unit", "loadgen", "--journal", jpath)
    assert rc == 0, err
    sysctl_conf = (root / "etc/sysctl.d/99-tuner.conf").read_text()
    assert "net.core.somaxconn = 65535" in sysctl_conf
    assert "fs.nr_open = 2000064" in sysctl_conf
    limits = (root / "etc/security/limits.d/99-tuner.conf").read_text()
    # Hard limits only (soft stays at its default: tests/test_persist_user.py); the
    # admin's soft line in tuner's file stays.
    assert "*     hard nofile 2000064" in limits and "root  hard nofile 2000064" in limits
    assert "*  soft  nofile  4096" in limits and "root  soft" not in limits
    dropin = (root / "etc/systemd/system/loadgen.service.d/99-tuner.conf").read_text()
    assert "[Service]\nLimitNOFILE=1024:2000064\n" in dropin
    # A second apply (nothing left to raise) keeps the sysctls in the persisted file,
    # and writes nothing: the files already hold what it would write.
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--persist", "--root-dir", root,
                         "--journal", jpath, "--json")
    assert rc == 0 and json.loads(out)["applied"] == [], out + err
    assert (root / "etc/sysctl.d/99-tuner.conf").read_text() == sysctl_conf
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
    assert rc == 0, out + err
    assert tree(root) == (files_before, dirs_before)   # created removed, changed restored
    assert host_values() == host_restored


def test_persist_plan_shows_a_diff_and_names_later_files_that_override(capsys, jpath, tmp_path):
    """An existing file's change is shown as a unified diff (not 'N setting(s)'), and a
    file that sorts later in sysctl.d or limits.d and sets the same key (so it wins at
    boot or login) is named. Dry run: nothing is written."""
    root = tmp_path / "root"
    (root / "etc/sysctl.d").mkdir(parents=True)
    (root / "etc/security/limits.d").mkdir(parents=True)
    (root / "etc/sysctl.d/99-tuner.conf").write_text("fs.nr_open = 1048576\n")
    (root / "etc/sysctl.d/zz-local.conf").write_text("net.core.somaxconn = 128\n")
    (root / "etc/sysctl.d/00-early.conf").write_text("net.ipv4.tcp_max_orphans = 7\n")
    (root / "etc/security/limits.d/zz-site.conf").write_text("*  hard  nofile  4096\n")
    # sysctl.d's other directories count too (sysctl.d(5)): a later name in /usr/lib wins;
    # a name /etc also has is masked there and never read.
    (root / "usr/lib/sysctl.d").mkdir(parents=True)
    (root / "usr/lib/sysctl.d/zzz-vendor.conf").write_text("net.ipv4.tcp_max_tw_buckets = 5\n")
    (root / "usr/lib/sysctl.d/zz-local.conf").write_text("net.ipv4.tcp_max_syn_backlog = 3\n")
    files_before = tree(root)
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--dry-run", "--persist", "--root-dir", root,
                         "--journal", jpath)
    assert rc == 0, err
    assert f"+++ {root}/etc/sysctl.d/99-tuner.conf (tuner)" in out
    assert "-fs.nr_open = 1048576\n+" in out and "+fs.nr_open = 2000064" in out
    assert f"{root}/etc/sysctl.d/zz-local.conf is applied after 99-tuner.conf and also sets " \
           f"net.core.somaxconn" in out
    assert f"{root}/usr/lib/sysctl.d/zzz-vendor.conf is applied after 99-tuner.conf and also sets " \
           f"net.ipv4.tcp_max_tw_buckets" in out
    assert "usr/lib/sysctl.d/zz-local.conf" not in out   # masked by /etc's zz-local.conf
    assert f"{root}/etc/security/limits.d/zz-site.conf is applied after 99-tuner.conf and also " \
           f"sets * hard nofile" in out
    assert "00-early.conf" not in out            # read before ours: tuner's value wins
    assert tree(root) == files_before


def test_each_change_and_its_revert_go_to_the_system_log(capsys, jpath, netns, tmp_path,
                                                       monkeypatch):
    """A real syslog socket of the test's own (TUNER_SYSLOG): one line per change with
    the knob, where, old -> new and why; revert logs what it put back."""
    import socket

    path = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(5)
    monkeypatch.setenv("TUNER_SYSLOG", path)
    before = netns_values(netns)
    try:
        assert tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jpath)[0] == 0
        lines = [sink.recv(4096).decode() for _ in range(3)]
        line = next(l for l in lines if "net.core.somaxconn" in l)
        assert line.startswith("<30>tuner: apply net.core.somaxconn")    # daemon.info
        assert f"(netns {netns}): {int(before['net.core.somaxconn']):,} -> 65,535; " \
               f"Cap on a listener's accept queue" in line
        assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
        lines = [sink.recv(4096).decode() for _ in range(3)]
        assert any(f"revert net.core.somaxconn (netns {netns}): 65,535 -> "
                   f"{int(before['net.core.somaxconn']):,}" in l for l in lines), lines
    finally:
        sink.close()
    assert netns_values(netns) == before


# ---------------------------------------------------------------- failures

def test_rejected_write_rolls_back_earlier_changes(capsys, jpath, netns):
    """2e9 connections: somaxconn and syn_backlog are written, then the kernel refuses
    tcp_max_tw_buckets = 2.2e9 (above INT_MAX: EINVAL); both must be rolled back, and a
    journal from an earlier apply must keep its originals."""
    before = netns_values(netns)
    assert tuner(capsys, "apply", "-n", "10k", "--yes", "--netns", netns, "--journal", jpath)[0] == 0
    after_first = netns_values(netns)
    journal_first = journal_mod.Journal.load(jpath).entries
    rc, out, err = tuner(capsys, "apply", "-n", "2000000000", "--yes", "--netns", netns,
                         "--journal", jpath)
    assert rc == 1
    assert err.count("\n") == 1 and "net.ipv4.tcp_max_tw_buckets" in err and "EINVAL" in err
    assert "rolled back 2 earlier change(s)" in err
    assert netns_values(netns) == after_first
    assert journal_mod.Journal.load(jpath).entries == journal_first
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


def test_rejected_first_apply_leaves_no_journal(capsys, jpath, netns):
    before = netns_values(netns)
    rc, out, err = tuner(capsys, "apply", "-n", "2000000000", "--yes", "--netns", netns,
                         "--journal", jpath)
    assert rc == 1 and "EINVAL" in err
    assert netns_values(netns) == before
    assert not os.path.exists(jpath)


def test_lock_refuses_concurrent_apply_and_revert(capsys, jpath):
    before = host_values()
    with journal_mod.locked(jpath):   # as another tuner would hold it (own open file description)
        rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--journal", jpath)
        assert rc == 5 and "another tuner" in err and err.count("\n") == 1
        assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 5
    assert host_values() == before


def test_host_lock_refuses_apply_with_another_journal(capsys, tmp_path, netns, own_lock):
    """Two applies with different journals change the same settings and each would record
    the other's value as the original: one host-wide lock keeps them apart, and the
    refusal names the holder."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom tuner import journal\n"
         "with journal.locked(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()\n",
         str(tmp_path / "a" / "journal.json")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    before = netns_values(netns)
    jb = str(tmp_path / "b" / "journal.json")
    try:
        assert holder.stdout.readline() == "held\n"
        rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jb)
        assert rc == 5, err
        assert f"(pid {holder.pid}) holds {own_lock}" in err and err.count("\n") == 1
        rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jb)
        assert rc == 5 and f"pid {holder.pid}" in err
        assert netns_values(netns) == before and not os.path.exists(jb)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not os.path.exists(own_lock)     # released with its holder, file and all
    assert tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jb)[0] == 0
    assert not os.path.exists(own_lock)
    assert tuner(capsys, "revert", "--yes", "--journal", jb)[0] == 0
    assert netns_values(netns) == before


def test_without_tuner_lock_apply_and_revert_take_the_host_lock_in_run(capsys, tmp_path, jpath,
                                                                      netns, monkeypatch):
    """With TUNER_LOCK unset, a tuner holding /run/tuner.lock (with its own journal) makes
    apply and revert busy: the default lock really is host-wide, and it is released with
    its holder, file and all."""
    import subprocess
    import sys

    monkeypatch.delenv("TUNER_LOCK")
    if os.path.exists("/run/tuner.lock"):
        pytest.skip("another tuner on this machine holds /run/tuner.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom tuner import journal\n"
         "with journal.locked(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()\n",
         str(tmp_path / "other" / "journal.json")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    before = netns_values(netns)
    try:
        assert holder.stdout.readline() == "held\n"
        for args in (["apply", "-n", "1M", "--yes", "--netns", netns], ["revert", "--yes"]):
            rc, out, err = tuner(capsys, *args, "--journal", jpath)
            assert rc == 5, (args, err)
            assert f"(pid {holder.pid}) holds /run/tuner.lock" in err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert netns_values(netns) == before and not os.path.exists(jpath)
    assert not os.path.exists("/run/tuner.lock")


def test_non_root_is_refused_before_any_change(tmp_path):
    jdir = tmp_path / "j"
    before = host_values()
    for args in (["apply", "-n", "1M", "--yes"], ["revert", "--yes"]):
        proc = tuner_as_nobody(*args, "--journal", jdir / "j.json")
        assert proc.returncode == 4, proc.stderr
        assert proc.stderr.count("\n") == 1 and "needs root" in proc.stderr
    assert host_values() == before
    assert not jdir.exists()


# Bad apply input and what the one-line error says. "NS" stands for a real namespace
# the root test makes (entering one needs root, so the non-root test skips those rows).
BAD_INPUT = [
    (["-n", "lots"], "not a whole number"),
    (["-n", "1M", "--netns", "tuner-t-nonexistent"], "no network namespace"),
    (["-n", "1M", "--role", "client", "--alias-dev", "nosuchdev0", "--alias-net", "10.9.0.0/24"],
     "no such device"),
    (["-n", "1M", "--role", "client", "--alias-dev", "lo", "--alias-net", "10.9.0.0/33"],
     "not a network"),
    (["-n", "1M", "--alias-dev", "lo"], "go together"),
    (["-n", "1M", "--pid", "999999999"], "--pid '999999999' is out of range"),
    (["-n", "1M", "--persist", "--netns", "NS"], "cannot be combined with --netns"),
    (["-n", "1M", "--unit", "x"], "needs --persist"),
]


@pytest.mark.parametrize("args, says", [(a, w) for a, w in BAD_INPUT if "NS" not in a])
def test_bad_input_without_root_is_exit_2_not_4(tmp_path, args, says):
    """Bad input is exit 2 whoever runs it: input is checked before the root check (a
    bad --alias-dev or --pid used to be exit 4 for a non-root user)."""
    jdir = tmp_path / "j"
    before = host_values()
    proc = tuner_as_nobody("apply", "--yes", "--journal", jdir / "j.json", *args)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and proc.stderr.count("\n") == 1
    assert host_values() == before and not jdir.exists()


def test_no_terminal_and_no_yes_is_refused(jpath):
    before = host_values()
    proc = run_tuner("apply", "-n", "1M", "--journal", jpath)   # stdin is /dev/null
    assert proc.returncode == 2
    assert "pass --yes" in proc.stderr and proc.stderr.count("\n") == 1
    assert host_values() == before and not os.path.exists(jpath)


@pytest.mark.parametrize("args, says", BAD_INPUT)
def test_bad_input_is_one_line_exit_2_nothing_changed(capsys, jpath, netns, args, says):
    args = [netns if a == "NS" else a for a in args]
    before = host_values()
    rc, out, err = tuner(capsys, "apply", "--yes", "--journal", jpath, *args)
    assert rc == 2, err
    assert says in err and err.count("\n") == 1
    assert host_values() == before and not os.path.exists(jpath)


def test_persist_does_not_read_through_a_link_planted_at_its_file(capsys, tmp_path, jpath):
    """Under a --root-dir another user can write, a symlink at tuner's own sysctl.d file
    pointing at a secret would have root copy the secret into the journal as the file's
    'original' (and revert write it back world-readable). Refused, nothing written."""
    root = tmp_path / "root"
    (root / "etc/sysctl.d").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("root:$6$not-for-the-journal\n")
    os.symlink(secret, root / "etc/sysctl.d/99-tuner.conf")
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--dry-run", "--persist", "--root-dir", root,
                         "--journal", jpath)
    assert rc == 2, out + err
    assert "symbolic link" in err and "not-for-the-journal" not in out + err
    assert not os.path.exists(jpath)
    assert os.path.islink(root / "etc/sysctl.d/99-tuner.conf")


@pytest.mark.parametrize("role, extra", [("loopback", ()), ("server", ()), ("client", ()),
                                         ("client", ("--alias-dev", "lo", "--alias-net", "10.99.0.0/24"))])
@pytest.mark.parametrize("target", ["1M", "200k"])
def test_every_limit_the_report_says_binds_is_in_the_plan_or_said_why_not(capsys, netns, jpath, role, extra,
                                                                          target):
    """What report marks as stopping the target (binds, short, full) is in apply's plan for
    the same target and role: changed, listed as not changed with the reason, or named in
    its notes (issue 28: the port range report marked binding was dropped without a
    word).  Each case read in a fresh namespace, nothing applied."""
    report = json.loads(run_tuner("report", "--netns", netns, "--role", role, "-n", target, "--json").stdout)
    plan = plan_of(capsys, "-n", target, "--role", role, "--netns", netns, "--journal", jpath, *extra)["plan"]
    said = ({c["knob"] for c in plan["changes"]} | {s["knob"] for s in plan["skipped"]})
    for row in report["rows"]:
        if row["status"] in ("binds", "short", "full"):
            assert row["name"] in said or any(row["name"] in n for n in plan["notes"]), (row, plan)
