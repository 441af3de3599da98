"""The Ansible collection (ansible/) on namespace hosts: apply and facts modules, check
mode, diff mode and idempotence, run through `ansible-playbook` as a user would.

One server and three load hosts (tests/fleetrig.py); each load host has only 1,000
usable ephemeral ports, so its 20,000 connections need the source aliases that the
apply module adds.  Host-global settings are guarded by conftest's host_guard; every
namespace's sysctls and addresses are compared with the state before the plays.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from fleetrig import ALIAS_DEV, load_addresses, namespace_fleet, state
from test_probe_split import addresses
from tuner.host.procfs import read_sysctl
from tuner.host.netns import in_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespace hosts need root")

PER_HOST = 20000
USABLE_PORTS = 1000
LOAD_ADDRESSES = load_addresses(PER_HOST, USABLE_PORTS)

APPLY = """
- name: tune every host for its share
  hosts: tuner_server:tuner_load
  gather_facts: false
  environment: "{{ tuner_env }}"
  tasks:
    - name: capacity before
      tuner.tuner.facts:
        target: "{{ tuner_target }}"
        role: "{{ tuner_role }}"
        source_dev: "{{ tuner_alias_dev | default(omit) }}"
    - name: apply
      tuner.tuner.apply:
        target: "{{ tuner_target }}"
        role: "{{ tuner_role }}"
        alias_dev: "{{ tuner_alias_dev | default(omit) }}"
        alias_net: "{{ tuner_alias_net | default(omit) }}"
        persist: "{{ tuner_root_dir is defined }}"
        root_dir: "{{ tuner_root_dir | default('/') }}"
"""

REVERT = """
- name: put every host back
  hosts: tuner_server:tuner_load
  gather_facts: false
  environment: "{{ tuner_env }}"
  tasks:
    - name: revert
      tuner.tuner.apply:
        state: reverted
"""


@pytest.fixture
def fleet(tmp_path):
    root = tmp_path / "server-root"
    root.mkdir()
    host_vars = {"server": {"tuner_target": 3 * PER_HOST, "tuner_role": "server",
                            "tuner_root_dir": str(root)}}
    host_vars.update({f"load{i}": {"tuner_role": "client"} for i in (1, 2, 3)})
    with namespace_fleet(str(tmp_path / "fleet"), loads=3, per_host=PER_HOST, usable_ports=USABLE_PORTS,
                         host_vars=host_vars) as f:
        for name, text in (("apply.yml", APPLY), ("revert.yml", REVERT)):
            (tmp_path / "fleet" / name).write_text(text)
        f.root_dir = str(root)
        yield f


def read_in(ns: str, name: str) -> str:
    with in_netns(ns):
        return " ".join(read_sysctl(name).split())


def plain(values: list) -> str:
    """A sysctl value as JSON gives it ([60000]) as the kernel holds it ("60000")."""
    return " ".join(map(str, values))


def shown(values: list) -> str:
    """... and as the plan (and the diff) shows it ("60,000"): the sysctl kind describes."""
    from tuner import settings

    return settings.kind("sysctl").describe(plain(values))


def files_under(root: str) -> dict:
    out = {}
    for base, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(base, n)) as f:
                out[os.path.relpath(os.path.join(base, n), root)] = f.read()
    return out


def test_check_mode_diff_mode_and_idempotence(fleet, host_restored):
    before = state(fleet)

    # Check mode: the plan with its diff, and nothing written anywhere.
    check = fleet.playbook("apply.yml", "--check", "--diff")
    assert check.proc.returncode == 0, check.output
    assert state(fleet) == before
    assert not any(os.path.exists(j) for j in fleet.journals.values())
    assert files_under(fleet.root_dir) == {}
    planned = check.results("apply")
    assert set(planned) == set(fleet.hosts)
    for host, rec in planned.items():
        res = rec["result"]
        assert rec["status"] == "ok" and res["changed"] is True and res["applied"] == []
        assert res["diff"], host
    facts = check.results("facts")
    for i in (1, 2, 3):
        # One source address of 1,000 ports cannot carry 20,000: the facts said so first.
        f = facts[f"load{i}"]["result"]["ansible_facts"]
        assert f["tuner_reachable"] is False and f["tuner_max_connections"] == USABLE_PORTS
        assert f["tuner_knobs"]["source addresses"]["status"] in ("raise", "binds")
    # The screen shows the planned values, as a diff.
    server_rows = planned["server"]["result"]["changes"]
    somaxconn = next(r for r in server_rows if r["knob"] == "net.core.somaxconn")
    assert f"+net.core.somaxconn [host]: {shown(somaxconn['after'])}" in check.proc.stdout
    assert f"-net.core.somaxconn [host]: {shown(somaxconn['before'])}" in check.proc.stdout
    # Persisted files: a unified diff from nothing to the boot-time settings.
    sysctl_file = next(r for r in server_rows if r["kind"] == "file" and r["where"].endswith("99-tuner.conf")
                       and "sysctl.d" in r["where"])
    assert sysctl_file["before"] is None
    assert f"+net.core.somaxconn = {plain(somaxconn['after'])}" in check.proc.stdout
    diff_files = [d for d in planned["server"]["result"]["diff"] if d["after_header"] == sysctl_file["where"]]
    assert len(diff_files) == 1 and diff_files[0]["after"] == "".join(sysctl_file["after"])

    # Apply with --diff: what the check predicted is what the hosts now hold.
    applied = fleet.playbook("apply.yml", "--diff")
    assert applied.proc.returncode == 0, applied.output
    done = applied.results("apply")
    for host, ns in fleet.hosts.items():
        res = done[host]["result"]
        assert res["changed"] is True and res["after"]["reachable"] is True, host
        assert [(r["knob"], r["after"]) for r in res["changes"]] == \
            [(r["knob"], r["after"]) for r in planned[host]["result"]["changes"]]
        for row in planned[host]["result"]["changes"]:
            if row["kind"] == "sysctl":
                assert read_in(ns, row["knob"]) == plain(row["after"]), (host, row)
            elif row["kind"] == "alias":
                address = row["where"].split()[0]   # "10.77.1.2/32 on eth0"
                assert row["after"] == ["present"] and address in addresses(ns, ALIAS_DEV), (host, row)
    for i, ns in enumerate(fleet.loads, 1):
        aliases = [r for r in done[f"load{i}"]["result"]["changes"] if r["kind"] == "alias"]
        # 20,000 x 1.1 headroom / (1,000 ports x the planned share of each range) addresses.
        assert len(aliases) == LOAD_ADDRESSES - 1 and len(addresses(ns, ALIAS_DEV)) == LOAD_ADDRESSES
        assert all(r["where"].startswith(f"10.77.{i}.") for r in aliases)
    assert files_under(fleet.root_dir)["etc/sysctl.d/99-tuner.conf"] == "".join(sysctl_file["after"])

    # Again: nothing to write, so nothing changed.
    again = fleet.playbook("apply.yml", "--diff")
    assert again.proc.returncode == 0, again.output
    for host, rec in again.results("apply").items():
        assert rec["result"]["changed"] is False and rec["result"]["changes"] == [], host
    assert "changed=0" in again.proc.stdout and "changed=1" not in again.proc.stdout

    # Revert: check mode lists it and changes nothing; then every host is as before.
    after_apply = state(fleet)
    would = fleet.playbook("revert.yml", "--check", "--diff")
    assert would.proc.returncode == 0, would.output
    assert all(r["result"]["changed"] for r in would.results("apply").values())
    assert state(fleet) == after_apply
    reverted = fleet.playbook("revert.yml", "--diff")
    assert reverted.proc.returncode == 0, reverted.output
    assert all(r["result"]["changed"] for r in reverted.results("apply").values())
    assert state(fleet) == before
    assert files_under(fleet.root_dir) == {}
    assert not any(os.path.exists(j) for j in fleet.journals.values())
    twice = fleet.playbook("revert.yml")
    assert twice.proc.returncode == 0, twice.output
    assert not any(r["result"]["changed"] for r in twice.results("apply").values())


def test_bad_input_fails_with_tuners_reason_and_exit_class(fleet):
    """A module failure is tuner's own line and exit-code class, and nothing changes."""
    from tuner.apply import validate
    from tuner.host.errors import UsageError
    from tuner.plan import Request

    before = state(fleet)
    bad = "10.77.300.0/24"
    with pytest.raises(UsageError) as expected:
        validate(Request(target=PER_HOST, role="client", alias_dev=ALIAS_DEV, alias_net=bad))
    play = fleet.playbook("apply.yml", "--limit", "load2", "-e", json.dumps({"tuner_alias_net": bad}))
    assert play.proc.returncode == 2, play.output  # ansible-playbook: a host failed
    res = play.results("apply")["load2"]["result"]
    assert play.results("apply")["load2"]["status"] == "failed" and res["msg"] == str(expected.value)
    assert (res["rc"], res["exit_class"]) == (2, "usage") and res["changed"] is False
    assert state(fleet) == before


REFUSED = """
- name: connect to a server that is not there
  hosts: load1
  gather_facts: false
  tasks:
    - name: connect
      tuner.tuner.probe:
        mode: connect
        server: "{{ tuner_server_address }}:7499"
        connections: 50
        timeout: 5
"""


def test_a_short_probe_fails_with_the_limit_and_exit_class(fleet):
    """Nothing listens on the server's port: the connect side falls short (rc 3, class
    'short'), says how far it got, and still returns the probe's result."""
    (Path(fleet.dir) / "refused.yml").write_text(REFUSED)
    play = fleet.playbook("refused.yml")
    assert play.proc.returncode == 2, play.output
    rec = play.results("probe")["load1"]
    res = rec["result"]
    assert rec["status"] == "failed" and (res["rc"], res["exit_class"]) == (3, "short")
    assert res["msg"].startswith("verified 0 of 50 to 10.77.0.1:7499") and res["ok"] is False
    assert res["probe"]["verified"] == 0 and res["probe"]["errors"]


PUBLIC = """
- name: aliases from a public network
  hosts: load1
  gather_facts: false
  environment: "{{ tuner_env }}"
  tasks:
    - name: apply
      tuner.tuner.apply:
        target: "{{ tuner_target }}"
        role: client
        alias_dev: "{{ tuner_alias_dev }}"
        alias_net: 198.51.100.0/24
        allow_public_aliases: "{{ allow_public | default(false) }}"
"""


def test_a_public_alias_network_needs_allow_public_aliases(fleet):
    """198.51.100.0/24 (TEST-NET-2) is not a private network: without
    allow_public_aliases the plan is refused with tuner's reason (usage); with it, check
    mode plans aliases from it.  Check mode only: nothing is added, nothing is sent."""
    (Path(fleet.dir) / "public.yml").write_text(PUBLIC)
    before = state(fleet)
    refused = fleet.playbook("public.yml", "--check")
    assert refused.proc.returncode == 2, refused.output
    rec = refused.results("apply")["load1"]
    assert rec["status"] == "failed" and (rec["result"]["rc"], rec["result"]["exit_class"]) == (2, "usage")
    assert "198.51.100.0/24" in rec["result"]["msg"] and "allow-public-aliases" in rec["result"]["msg"]

    allowed = fleet.playbook("public.yml", "--check", "-e", "allow_public=true")
    assert allowed.proc.returncode == 0, allowed.output
    res = allowed.results("apply")["load1"]["result"]
    aliases = [r for r in res["changes"] if r["kind"] == "alias"]
    assert res["changed"] and res["applied"] == [] and len(aliases) == LOAD_ADDRESSES - 1
    assert all(r["where"].startswith("198.51.100.") and r["where"].endswith(f"on {ALIAS_DEV}") for r in aliases)
    assert state(fleet) == before and not os.path.exists(fleet.journals["load1"])
