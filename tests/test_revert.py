"""`tuner revert` on the real kernel: after a kill -9 at every step of apply, after drift,
with a corrupt or missing journal, and when what a change belonged to has gone.

The crash is real: apply runs as its own process and the TUNER_TEST_KILL_AFTER hook
SIGKILLs it right after its k-th write, before the journal marks that write done (the
worst moment).  Host values are restored after each test by `host_restored`.
"""
import json
import os
import subprocess

import pytest

from tuner import journal as journal_mod

from applyhelp import (add_veth, addresses, child_with_nofile, host_values, netns_values,
                       nofile, tree, tuner)
from conftest import make_netns, remove_netns, run_tuner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="revert changes kernel settings: needs root")


def _changes(capsys, args):
    rc, out, err = tuner(capsys, "apply", "--dry-run", "--json", *args)
    assert rc == 0, err
    return json.loads(out)["plan"]["changes"]


def _kill_every_step_then_revert(capsys, jpath, args, state, least=5):
    """For every k: apply is killed after its k-th write; revert must restore `state()`.
    `least`: the changes the plan must have for the crash points to mean something."""
    before = state()
    changes = _changes(capsys, args)
    assert len(changes) >= least, changes
    for k in range(1, len(changes) + 1):
        proc = run_tuner("apply", "--yes", "--journal", jpath, *args,
                          env_extra={"TUNER_TEST_KILL_AFTER": str(k)})
        assert proc.returncode == -9, (k, proc.stderr)
        entries = journal_mod.Journal.load(jpath).entries
        assert len(entries) == k and entries[-1]["state"] == "pending", k
        assert entries[-1]["key"] == changes[k - 1]["key"]
        assert state() != before, k        # the crash really left the host changed
        rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
        assert rc == 0, (k, out, err)
        assert state() == before, (k, out)
        assert not os.path.exists(jpath)


def test_kill_9_after_every_change_on_host_then_revert(capsys, jpath, tmp_path, host_restored):
    root = tmp_path / "root"
    root.mkdir()
    with child_with_nofile(1024, 20000) as pid:
        args = ["-n", "1M", "--pid", str(pid), "--persist", "--root-dir", str(root),
                "--unit", "loadgen"]
        _kill_every_step_then_revert(capsys, jpath, args,
                                     lambda: (host_values(), nofile(pid), tree(root)))


def test_kill_9_after_every_change_in_namespace_with_aliases(capsys, jpath, netns):
    add_veth(netns)
    args = ["-n", "200k", "--role", "client", "--netns", netns, "--alias-dev", "veth0",
            "--alias-net", "10.9.0.0/24"]
    _kill_every_step_then_revert(capsys, jpath, args,
                                 lambda: (netns_values(netns), addresses(netns, "veth0")))


def _routes(ns):
    """Every route of both families; the link-local ones come by themselves meanwhile."""
    return [[line for line in subprocess.run(["ip", "-n", ns, f"-{v}", "route", "show", "table", "all"],
                                             capture_output=True, text=True, check=True).stdout.splitlines()
             if "fe80:" not in line] for v in (4, 6)]


@pytest.mark.parametrize("prefix", ["fd00:77:1::/64", "10.77.1.0/24"])
def test_kill_9_after_every_change_in_namespace_with_an_anyip_route(capsys, jpath, netns, prefix):
    """The route kind (and, for IPv6, ip_nonlocal_bind) crashed at every step: revert
    leaves the namespace's routes, addresses and sysctls as they were."""
    add_veth(netns)
    args = ["-n", "200k", "--role", "client", "--netns", netns, "--anyip-net", prefix]
    # A client raises no listener knob (issue 28): the route and a few sysctls remain.
    assert any(c["kind"] == "route" for c in _changes(capsys, args))
    _kill_every_step_then_revert(capsys, jpath, args,
                                 lambda: (netns_values(netns), addresses(netns, "veth0"), _routes(netns)), least=3)


def test_apply_again_after_a_crash_keeps_the_first_originals(capsys, jpath, netns):
    before = netns_values(netns)
    args = ["-n", "1M", "--netns", netns]
    proc = run_tuner("apply", "--yes", "--journal", jpath, *args,
                      env_extra={"TUNER_TEST_KILL_AFTER": "2"})
    assert proc.returncode == -9
    assert tuner(capsys, "apply", "--yes", "--journal", jpath, *args)[0] == 0
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


def test_drift_is_left_alone_unless_forced(capsys, jpath, netns):
    before = netns_values(netns)
    assert tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jpath)[0] == 0
    # Someone else changes a value tuner wrote.
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", "net.core.somaxconn=5000"],
                   check=True)
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath, "--json")
    assert rc == 1
    rows = {r["knob"]: r for r in json.loads(out)["rows"]}
    assert rows["net.core.somaxconn"]["action"] == "drifted"
    assert all(r["action"] == "restored" for k, r in rows.items() if k != "net.core.somaxconn")
    now = netns_values(netns)
    assert now["net.core.somaxconn"] == "5000"
    assert {k: v for k, v in now.items() if k != "net.core.somaxconn"} == \
           {k: v for k, v in before.items() if k != "net.core.somaxconn"}
    assert [e["knob"] for e in journal_mod.Journal.load(jpath).entries] == ["net.core.somaxconn"]
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)     # the table says so too
    assert rc == 1 and "drifted" in out and "--force" in out
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath, "--force")
    assert rc == 0, out
    assert netns_values(netns) == before and not os.path.exists(jpath)


@pytest.mark.parametrize("text", ["{not json", '{"schema": "something else", "entries": []}',
                                  '{"schema": "tuner.journal/1", "applies": [], "entries": [{"key": 1}]}'])
def test_corrupt_journal_is_one_line_and_changes_nothing(capsys, jpath, text):
    os.makedirs(os.path.dirname(jpath))
    with open(jpath, "w") as f:
        f.write(text)
    before = host_values()
    for args in (["apply", "-n", "1M", "--yes"], ["revert", "--yes"], ["revert", "--dry-run"], ["revert", "--yes", "--force"]):
        rc, out, err = tuner(capsys, *args, "--journal", jpath)
        assert rc == 1, (args, err)
        assert "is corrupt" in err and err.count("\n") == 1 and "Traceback" not in err
    assert host_values() == before
    with open(jpath) as f:
        assert f.read() == text


RLIMIT_ENTRY = {"key": "rlimit:1:1.0:RLIMIT_NOFILE.soft", "knob": "RLIMIT_NOFILE.soft",
                "kind": "rlimit", "scope": "process", "netns": None, "why": "",
                "detail": {"pid": 1, "create_time": 1.0, "resource": "RLIMIT_NOFILE",
                           "which": "soft"},
                "original": [1024], "before": [1024], "new": [20000], "state": "done", "command": ""}
ALIAS_ENTRY = {"key": "alias::lo:10.9.0.2/32", "knob": "source addresses", "kind": "alias",
               "scope": "netns", "netns": None, "why": "",
               "detail": {"dev": "lo", "address": "10.9.0.2", "prefixlen": 32},
               "original": ["absent"], "before": ["absent"], "new": ["present"], "state": "done",
               "command": ""}


ROUTE_ENTRY = {**ALIAS_ENTRY, "key": "route::local:fd00:77:1::/64", "kind": "route",
               "detail": {"network": "fd00:77:1::/64", "dev": "lo"}}


def _with(entry, **over):
    out = {**json.loads(json.dumps(entry)), **over}
    return {k: v for k, v in out.items() if v is not _DROP}


def _with_detail(entry, **over):
    return _with(entry, detail={**entry["detail"], **over})


_DROP = object()


# Each is a well-formed JSON entry that revert could not act on; the first four are
# changed from the journal's own (a sysctl entry), the others are other kinds.
BAD_ENTRIES = {
    "detail is text": lambda e: _with(e, detail="oops"),
    "unknown kind": lambda e: _with(e, kind="registry"),
    "unknown state": lambda e: _with(e, state="maybe"),
    "sysctl value not a list": lambda e: _with(e, new="65535"),
    "sysctl value in /1's form": lambda e: _with(e, original=" ".join(map(str, e["original"]))),
    "sysctl name a path": lambda e: _with_detail(e, name="../../../etc/passwd"),
    "no before": lambda e: _with(e, before=_DROP),
    "netns not text": lambda e: _with(e, netns=7),
    # The journal checks a namespace name as --netns does (tuner.inputs): a name, not a path.
    "netns a path": lambda e: _with(e, netns="../../run/netns/x"),
    "netns with a NUL": lambda e: _with(e, netns="ns\u0000x"),
    "key not text": lambda e: _with(e, key=None),
    "duplicate key": lambda e: e,
    "rlimit pid text": lambda e: _with_detail(RLIMIT_ENTRY, pid="1"),
    "rlimit value text": lambda e: _with(RLIMIT_ENTRY, original=["1024"]),
    "rlimit two values": lambda e: _with(RLIMIT_ENTRY, new=[1024, 20000]),
    "rlimit unknown resource": lambda e: _with_detail(RLIMIT_ENTRY, resource="RLIMIT_CORE"),
    "alias prefixlen text": lambda e: _with_detail(ALIAS_ENTRY, prefixlen="32"),
    "alias address bad": lambda e: _with_detail(ALIAS_ENTRY, address="10.9.0.300"),
    "alias value not present/absent": lambda e: _with(ALIAS_ENTRY, new=["yes"]),
    "route network not a prefix": lambda e: _with_detail(ROUTE_ENTRY, network="fd00:77:1::5/64"),
    "route network a default route": lambda e: _with_detail(ROUTE_ENTRY, network="::/0"),
    "route network one address": lambda e: _with_detail(ROUTE_ENTRY, network="10.77.1.5/32"),
    "route network text": lambda e: _with_detail(ROUTE_ENTRY, network="lo"),
    "route dev a path": lambda e: _with_detail(ROUTE_ENTRY, dev="../lo"),
    "route dev too long": lambda e: _with_detail(ROUTE_ENTRY, dev="x" * 16),
    "route value not present/absent": lambda e: _with(ROUTE_ENTRY, new=[True]),
    "file lines not text": lambda e: _with({**ALIAS_ENTRY, "kind": "file", "original": None,
                                            "before": None, "new": [1]},
                                           detail={"path": "/etc/sysctl.d/99-tuner.conf"}),
    "file path relative": lambda e: _with({**ALIAS_ENTRY, "kind": "file", "original": None,
                                           "before": None, "new": ["x\n"]},
                                          detail={"path": "etc/x.conf"}),
}


@pytest.mark.parametrize("bad", sorted(BAD_ENTRIES))
def test_bad_entry_is_refused_before_anything_is_reverted_or_applied(capsys, jpath, netns, bad):
    """A journal that parses but holds one entry revert cannot act on: revert used to undo
    the entries before it and then crash (TypeError); apply went ahead. Both must refuse
    at load, with one line, and change nothing."""
    before = netns_values(netns)
    assert tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jpath)[0] == 0
    applied = netns_values(netns)
    with open(jpath) as f:
        good = f.read()
    data = json.loads(good)
    # Newest last and revert goes newest first: the bad entry is the last one it reaches.
    data["entries"].insert(0, BAD_ENTRIES[bad](data["entries"][0]))
    text = json.dumps(data)
    with open(jpath, "w") as f:
        f.write(text)
    for args in (["revert", "--yes"], ["revert", "--yes", "--force"], ["revert", "--dry-run"],
                 ["apply", "-n", "2M", "--yes", "--netns", netns],
                 ["apply", "-n", "2M", "--dry-run", "--netns", netns]):
        rc, out, err = tuner(capsys, *args, "--journal", jpath)
        assert rc == 1, (args, out, err)
        assert "is corrupt" in err and "entry 0" in err and err.count("\n") == 1, (args, err)
        assert netns_values(netns) == applied, args
        with open(jpath) as f:
            assert f.read() == text, args
    with open(jpath, "w") as f:
        f.write(good)
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


def test_nothing_to_revert(capsys, jpath):
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
    assert rc == 0 and out.startswith("nothing to revert")
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath, "--json")
    assert rc == 0 and json.loads(out)["found"] is False


def test_journal_from_env_and_dry_run(capsys, jpath, netns, monkeypatch):
    monkeypatch.setenv("TUNER_JOURNAL", jpath)
    before = netns_values(netns)
    assert tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns)[0] == 0
    assert os.path.exists(jpath)
    applied = netns_values(netns)
    rc, out, err = tuner(capsys, "revert", "--yes", "--dry-run", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["schema"] == "tuner.revert/2" and data["dry_run"] is True
    assert {r["action"] for r in data["rows"]} == {"would restore"}
    assert netns_values(netns) == applied and os.path.exists(jpath)
    assert tuner(capsys, "revert", "--yes")[0] == 0
    assert netns_values(netns) == before


def test_exited_process_and_deleted_namespace_are_nothing_to_restore(capsys, jpath, host_restored):
    ns = make_netns()
    try:
        with child_with_nofile(1024, 20000) as pid:
            # --netns leaves host knobs alone: the journal holds the pid's and the namespace's.
            assert tuner(capsys, "apply", "-n", "100k", "--pid", pid, "--netns", ns, "--yes",
                         "--journal", jpath)[0] == 0
            assert nofile(pid) == (20000, 20000)
    finally:
        remove_netns(ns)
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath, "--json")
    assert rc == 0, out
    rows = json.loads(out)["rows"]
    assert {r["action"] for r in rows} == {"gone"}
    assert any("has exited" in r["reason"] for r in rows)
    assert any("no longer exists" in r["reason"] for r in rows)
    assert host_values() == host_restored and not os.path.exists(jpath)
