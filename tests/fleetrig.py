"""A fleet of namespace hosts for the Ansible collection: one server and N load hosts.

Each host is a throwaway network namespace joined to a bridge in the server's one by a
veth pair (as in test_probe_split.py, whose helpers this reuses).  Ansible reaches a
host with `ansible_connection: local` and an `ansible_python_interpreter` that is a
two-line wrapper running this venv's python inside the host's namespace, so every
module runs "on" that host.  Each host gets its own tuner journal and lock
(TUNER_JOURNAL, TUNER_LOCK through the play's `environment`), as separate machines have.

Ansible itself is kept inside the rig's temporary directory: the collection is found
through ANSIBLE_COLLECTIONS_PATH (a symlink to the repository's ansible/), and its
temp, async and home directories are there too, so nothing is written under ~/.ansible.
Every task result is recorded as a JSON line (tests/ansible_plugins/tuner_record.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from conftest import make_netns, remove_netns
from tuner.host import procpid
from test_probe_split import SERVER_IP, addresses, ip, shrink_ports

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
COLLECTION = os.path.join(ROOT, "ansible")
PLAYBOOKS = os.path.join(COLLECTION, "playbooks")
ALIAS_DEV = "eth0"


@dataclass
class Fleet:
    dir: str
    server: str                       # namespace names
    loads: List[str]
    hosts: Dict[str, str]             # inventory name -> namespace
    inventory: str
    env: Dict[str, str]
    record: str
    runs: int = 0
    journals: Dict[str, str] = field(default_factory=dict)

    def alias_net(self, i: int) -> str:
        return f"10.77.{i}.0/24"

    def playbook(self, playbook: str, *args: str, timeout: float = 300) -> "Play":
        """`ansible-playbook -i INVENTORY PLAYBOOK ARGS` with the rig's environment."""
        self.runs += 1
        record = f"{self.record}.{self.runs}"
        env = dict(self.env, TUNER_RECORD=record)
        proc = subprocess.run([ansible_bin("ansible-playbook"), "-i", self.inventory, playbook, *args],
                              capture_output=True, text=True, env=env, cwd=self.dir, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        lines = []
        if os.path.exists(record):
            with open(record) as f:
                lines = [json.loads(line) for line in f]
        return Play(proc, lines)


@dataclass
class Play:
    proc: subprocess.CompletedProcess
    records: List[dict]

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def results(self, action: str, host: Optional[str] = None) -> Dict[str, dict]:
        """{host: the record} of every task whose module is `action` ('apply', 'async_status':
        short or fully qualified; the last one wins)."""
        return {r["host"]: r for r in self.records
                if r["action"].split(".")[-1] == action and host in (None, r["host"])}


def ansible_bin(name: str) -> str:
    """ansible-playbook from this interpreter's environment (the venv the tests run in)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def interpreter(dirname: str, ns: str) -> str:
    """A python for Ansible that runs inside namespace `ns`."""
    path = os.path.join(dirname, f"python-{ns}")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec ip netns exec {ns} {sys.executable} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def ansible_env(dirname: str) -> Dict[str, str]:
    collections = os.path.join(dirname, "collections")
    link = os.path.join(collections, "ansible_collections", "tuner", "tuner")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link))
        os.symlink(COLLECTION, link)
    tmp = {name: os.path.join(dirname, "ansible", name) for name in ("home", "local", "remote", "async")}
    for d in tmp.values():
        os.makedirs(d, exist_ok=True)
    cfg = os.path.join(dirname, "ansible.cfg")
    with open(cfg, "w") as f:
        f.write("# the fleet rig's: everything is set through ANSIBLE_* below\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({
        "LC_ALL": "C.UTF-8",                # ansible-core refuses a non-UTF-8 locale
        "ANSIBLE_CONFIG": cfg,              # no ansible.cfg from the cwd or ~ steers the test
        "ANSIBLE_HOME": tmp["home"],
        "ANSIBLE_LOCAL_TEMP": tmp["local"],
        "ANSIBLE_REMOTE_TEMP": tmp["remote"],
        "ANSIBLE_ASYNC_DIR": tmp["async"],
        "ANSIBLE_COLLECTIONS_PATH": collections,
        "ANSIBLE_CALLBACK_PLUGINS": os.path.join(TESTS, "ansible_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "tuner_record",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_FORKS": "8",               # every host of a task at once
    })
    env.pop("TUNER_LOCK", None)   # each host has its own (inventory), as machines do
    env.pop("TUNER_JOURNAL", None)
    return env


@contextlib.contextmanager
def namespace_fleet(dirname: str, loads: int = 3, per_host: int = 20000,
                    usable_ports: Optional[int] = None, port: int = 7400,
                    host_vars: Optional[Dict[str, dict]] = None):
    """Namespaces, wrappers and an inventory for one server and `loads` load hosts;
    removed whatever happens.  usable_ports cuts each load host's ephemeral ports (so
    its share needs the aliases apply adds); host_vars override per inventory host."""
    os.makedirs(dirname, exist_ok=True)
    made: List[str] = []
    try:
        server = make_netns("tuner-fsrv")
        made.append(server)
        ip("-n", server, "link", "add", "br0", "type", "bridge")
        ip("-n", server, "addr", "add", f"{SERVER_IP}/16", "dev", "br0")
        ip("-n", server, "link", "set", "br0", "up")
        load_ns = []
        for i in range(1, loads + 1):
            ns = make_netns("tuner-fload")
            made.append(ns)
            ip("-n", server, "link", "add", f"vc{i}", "type", "veth", "peer", "name", ALIAS_DEV, "netns", ns)
            ip("-n", server, "link", "set", f"vc{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"10.77.{i}.1/16", "dev", ALIAS_DEV)
            ip("-n", ns, "link", "set", ALIAS_DEV, "up")
            if usable_ports:
                shrink_ports(ns, usable_ports)
            load_ns.append(ns)

        def host(name, ns, **extra):
            state = os.path.join(dirname, "state", name)
            journals[name] = os.path.join(state, "journal.json")
            return {"ansible_python_interpreter": interpreter(dirname, ns), "tuner_host_netns": ns,
                    "tuner_env": {"TUNER_JOURNAL": journals[name],
                                  "TUNER_LOCK": os.path.join(state, "tuner.lock")},
                    **extra, **(host_vars or {}).get(name, {})}

        journals: Dict[str, str] = {}
        hosts = {"server": server, **{f"load{i}": ns for i, ns in enumerate(load_ns, 1)}}
        inventory = {"all": {
            "vars": {"ansible_connection": "local", "tuner_server_address": SERVER_IP,
                     "tuner_port": port},
            "children": {
                "tuner_server": {"hosts": {"server": host("server", server)}},
                "tuner_load": {"hosts": {
                    f"load{i}": host(f"load{i}", ns, tuner_target=per_host, tuner_alias_dev=ALIAS_DEV,
                                     tuner_alias_net=f"10.77.{i}.0/24")
                    for i, ns in enumerate(load_ns, 1)}},
            }}}
        path = os.path.join(dirname, "inventory.json")
        with open(path, "w") as f:
            json.dump(inventory, f, indent=2)
        yield Fleet(dirname, server, load_ns, hosts, path, ansible_env(dirname),
                    os.path.join(dirname, "record"), journals=journals)
    finally:
        for ns in made:
            remove_netns(ns)


def processes_left(fleet: Fleet, seconds: float = 15.0) -> Dict[str, List[str]]:
    """{host: command lines} of processes still inside a host's namespace after up to
    `seconds` ({} when every one has ended).  Ansible's async watcher polls its job every
    5 s, so it may outlive the job by that long; tuner's own probes must be gone.  Read
    before the rig removes the namespaces, which kills whatever is left."""
    deadline = time.monotonic() + seconds
    while True:
        left = {}
        for name, ns in fleet.hosts.items():
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            cmds = []
            for pid in pids:
                try:
                    cmds.append(" ".join(procpid.cmdline(int(pid))))
                except OSError:   # ended meanwhile
                    pass
            if cmds:
                left[name] = cmds
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def state(fleet: Fleet) -> Dict[str, dict]:
    """Every namespace's knob sysctls and addresses: what a play must leave as found."""
    from applyhelp import netns_values

    out = {}
    for name, ns in fleet.hosts.items():
        dev = "br0" if ns == fleet.server else ALIAS_DEV
        out[name] = {"sysctls": netns_values(ns), "addresses": addresses(ns, dev)}
    return out


def load_addresses(per_host: int, usable_ports: int) -> int:
    """Source addresses the client plan gives a load host of `per_host` connections over
    `usable_ports` ports per address: N plus the table's headroom, over the share of each
    range it plans (most of it where sockets carry their own port range, Linux 6.3+)."""
    import math

    from probes.config import port_share
    from probes.kernel import own_port_range
    from tuner.knobs import HEADROOM_PERCENT

    wanted = per_host + -(-per_host * HEADROOM_PERCENT // 100)
    return math.ceil(wanted / math.ceil(usable_ports * port_share(own_port_range())))
