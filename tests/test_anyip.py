"""AnyIP source prefixes (issue 20), for real: two namespaces joined by a veth pair with
ULA IPv6 and private IPv4 addresses.  `tuner apply --anyip-net` adds one local route in
the client namespace (the server namespace routes the prefix back, as docs/anyip.md
says), the split probe verifies more connections to one server ADDR:PORT than one
source address's cut port range holds, with no address added, and revert leaves both
namespaces exactly as they were (addresses, routes, sysctls).  Only addresses inside
the namespaces made here."""
from __future__ import annotations

import json
import subprocess

import pytest

from applyhelp import tuner
from conftest import make_netns, remove_netns, run_tuner
from test_probe_split import tuner_in, wait_listening

PORT = 7000
N = 40_000
LOW, HIGH = 40000, 41999          # 2,000 ports: one source address cannot hold N
FAMILIES = {
    6: {"server": "fd00:77::1", "client": "fd00:77::2", "plen": 64, "prefix": "fd00:77:1::/64",
        "endpoint": f"[fd00:77::1]:{PORT}"},
    4: {"server": "10.77.0.1", "client": "10.77.0.2", "plen": 24, "prefix": "10.77.1.0/24",
        "endpoint": f"10.77.0.1:{PORT}"},
}


def ip(*args):
    subprocess.run(["ip", *args], check=True)


@pytest.fixture
def pair():
    """(server namespace, client namespace) joined by veth with both families' addresses."""
    made = []
    try:
        server, client = make_netns("tuner-asrv"), make_netns("tuner-acli")
        made += [server, client]
        ip("-n", server, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", client)
        for ns, end in ((server, "server"), (client, "client")):
            for fam in FAMILIES.values():
                ip("-n", ns, "addr", "add", f"{fam[end]}/{fam['plen']}", "dev", "eth0",
                   *(["nodad"] if ":" in fam[end] else []))
            ip("-n", ns, "link", "set", "eth0", "up")
        subprocess.run(["ip", "netns", "exec", client, "sysctl", "-qw",
                        f"net.ipv4.ip_local_port_range={LOW} {HIGH}"], check=True)
        yield server, client
    finally:
        for ns in made:
            remove_netns(ns)


def state(ns):
    """Everything an apply could touch in a namespace: addresses, every route of both
    families in every table, and the sysctls of /proc/sys/net that are settings."""
    out = [subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=True).stdout
           for args in (["-o", "addr"], ["-4", "route", "show", "table", "all"], ["-6", "route", "show", "table", "all"])]
    sysctls = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-a", "-r", r"^net\.(ipv4|ipv6|core)"],
                             capture_output=True, text=True).stdout
    # Link-local addresses and their routes come by themselves once the link is up.
    out = ["".join(line for line in text.splitlines(True) if "fe80:" not in line) for text in out]
    return out + [sysctls]


# 40,000 in both families; 200,000 (the figure, ~30 s here) over IPv6 once.
@pytest.mark.parametrize("version, n", [(6, N), (4, N), (6, 200_000)])
def test_anyip_prefix_carries_more_than_one_address_and_reverts(capsys, jpath, pair, version, n):
    server, client = pair
    fam = FAMILIES[version]
    before = state(client), state(server)
    rc, out, err = tuner(capsys, "apply", "-n", n, "--role", "client", "--netns", client,
                         "--anyip-net", fam["prefix"], "--yes", "--journal", jpath, "--json")
    assert rc == 0, err
    changes = json.loads(out)["plan"]["changes"]
    assert [c["detail"] for c in changes if c["kind"] == "route"] == [{"network": fam["prefix"], "dev": "lo"}]
    # IPv6's bind() takes only interface addresses: the plan turns ip_nonlocal_bind on there.
    nonlocal_bind = [c for c in changes if c["knob"].endswith("ip_nonlocal_bind")]
    assert len(nonlocal_bind) == (1 if version == 6 else 0)
    # The server is tuned for n as a server would be (its accept queues: a burst of n
    # into the default 4,096 drops SYNs), and routes the prefix back (docs/anyip.md).
    server_journal = jpath + ".server"
    rc, out, err = tuner(capsys, "apply", "-n", n, "--role", "server", "--netns", server, "--yes",
                         "--journal", server_journal)
    assert rc in (0, 3), err     # 3: RLIMIT_NOFILE is capped here, and the probe shards for it
    ip("-n", server, f"-{version}", "route", "add", fam["prefix"], "via", fam["client"])
    # The server holds longer than the client: it ends once the clients have checked and
    # closed theirs (a server that ended first would fail their second check).
    serve = tuner_in(server, "probe", "--serve", fam["endpoint"], "--expect", n, "--hold", 20, "--json")
    try:
        wait_listening(server, PORT)
        connect = tuner_in(client, "probe", "--connect", fam["endpoint"], "-n", n,
                           "--source-net", fam["prefix"], "--hold", 1, "--json")
        got_out, got_err = connect.communicate(timeout=120)
        try:
            served = json.loads(serve.communicate(timeout=60)[0])
        except subprocess.TimeoutExpired:
            said = json.loads(got_out)
            raise AssertionError(f"the server did not end; the client: " + str(
                {k: said.get(k) for k in ("verified", "established", "unaccepted", "stopped_by", "errors")}))
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    result = json.loads(got_out)
    assert result["ok"] and result["verified"] == n, got_err
    assert served["verified"] == n
    # More sources than one cut range needs, all inside the prefix; none was added as an address.
    assert result["source_addresses"] > n // (HIGH - LOW + 1)
    assert state(client)[0] == before[0][0]
    ip("-n", server, f"-{version}", "route", "del", fam["prefix"], "via", fam["client"])
    for journal in (jpath, server_journal):
        rc, out, err = tuner(capsys, "revert", "--yes", "--journal", journal)
        assert rc == 0, out
    assert (state(client), state(server)) == before


def test_public_and_overlapping_prefixes_are_refused(capsys, jpath, pair):
    server, client = pair
    before = state(client)
    refusals = [
        (["--anyip-net", "2a00:1450::/64"], "--allow-public-aliases"),
        (["--anyip-net", "8.8.8.0/24"], "--allow-public-aliases"),
        # The veth's own network: a local route would take its other hosts for this one.
        (["--anyip-net", "fd00:77::/48"], "overlaps fd00:77::2/64 on eth0"),
        (["--anyip-net", "10.77.0.0/16"], "overlaps 10.77.0.2/24 on eth0"),
        (["--anyip-net", "127.9.0.0/16"], "loopback"),
        (["--anyip-net", "fd00:77:1::5/128"], "one address"),
        (["--anyip-net", "fd00:77:1::/64", "--role", "server"], "route the clients' prefix back"),
    ]
    for extra, words in refusals:
        args = ["apply", "-n", 1000, "--netns", client, "--yes", "--journal", jpath, *extra]
        if "--role" not in extra:
            args += ["--role", "client"]
        rc, out, err = tuner(capsys, *args)
        assert rc == 2 and words in err and err.count("\n") == 1, (extra, err)
    assert state(client) == before


def test_report_counts_anyip_prefixes_and_says_which(pair):
    server, client = pair
    ip("-n", client, "-6", "route", "add", "local", "fd00:77:1::/64", "dev", "lo")
    ip("-n", client, "route", "add", "local", "10.77.1.0/24", "dev", "lo")
    data = json.loads(run_tuner("report", "--role", "client", "--netns", client, "--json").stdout)
    row = next(r for r in data["rows"] if r["name"] == "source addresses")
    assert row["current"] == [2 ** 64]                 # the /64 (less its anycast address) + eth0's one
    assert "IPv4: 1 address(es), AnyIP 10.77.1.0/24 (254)" in row["why"]
    assert "AnyIP fd00:77:1::/64" in row["why"] and "IP_FREEBIND" in row["why"]


def test_server_report_says_whether_a_client_prefix_is_routed_back(pair):
    server, client = pair

    def back(prefix):
        proc = run_tuner("report", "--role", "server", "--netns", server, "--client-net", prefix, "--json")
        return json.loads(proc.stdout)["client_net"]

    assert back("fd00:77:1::/64") == {"network": "fd00:77:1::/64", "routed": False, "via": None, "dev": None,
                                      "fix": "ip -6 route add fd00:77:1::/64 via CLIENT_ADDRESS"}
    ip("-n", server, "-6", "route", "add", "fd00:77:1::/64", "via", "fd00:77::2")
    assert back("fd00:77:1::/64")["routed"] and back("fd00:77:1::/64")["via"] == "fd00:77::2"
    # A prefix on the link's own network is routed (on the link), a client one behind the
    # default route is not.
    ip("-n", server, "route", "add", "default", "via", "10.77.0.2")
    assert back("10.77.1.0/24") == {"network": "10.77.1.0/24", "routed": False, "via": "10.77.0.2",
                                    "dev": "eth0", "fix": "ip route add 10.77.1.0/24 via CLIENT_ADDRESS"}
    text = run_tuner("report", "--role", "server", "--netns", server, "--client-net", "10.77.1.0/24").stdout
    assert "client prefix 10.77.1.0/24: the default route (via 10.77.0.2) here" in text
    refused = run_tuner("report", "--role", "client", "--netns", client, "--client-net", "10.77.1.0/24")
    assert refused.returncode == 2 and "--role server" in refused.stderr
