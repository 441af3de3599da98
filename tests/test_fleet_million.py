"""ansible/playbooks/million.yml on namespace hosts, through `ansible-playbook`: facts,
apply, the split probe across one server and three load hosts, the totals asserted,
and the revert that always runs.

Each load host has 1,000 usable ephemeral ports (tests/fleetrig.py), so its 20,000
connections need the aliases the apply module adds; the server expects their sum.
Afterwards every namespace and the host are as before (and conftest's host_guard
checks the host once more at the end of the session).
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import wait_gone
from fleetrig import PLAYBOOKS, load_addresses, namespace_fleet, processes_left, state
from realservers import real_server, tls_certs  # noqa: F401 (fixtures)
from test_probe_split import SERVER_IP

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespace hosts need root")

PER_HOST = 20000
USABLE_PORTS = 1000
LOAD_ADDRESSES = load_addresses(PER_HOST, USABLE_PORTS)
PORT = 7431   # this test's own: every probe process of the play names SERVER_IP:PORT
MILLION = os.path.join(PLAYBOOKS, "million.yml")


def test_million_playbook_proves_the_totals_and_leaves_every_host_as_found(tmp_path, host_restored):
    with namespace_fleet(str(tmp_path / "fleet"), loads=3, per_host=PER_HOST, usable_ports=USABLE_PORTS,
                         port=PORT) as fleet:
        before = state(fleet)
        play = fleet.playbook(MILLION, "-e", "tuner_client_hold=3 tuner_probe_timeout=60")
        assert play.proc.returncode == 0, play.output
        after = state(fleet)
        journals_left = [j for j in fleet.journals.values() if os.path.exists(j)]
        probes_left = wait_gone(f"{SERVER_IP}:{PORT}")   # before the namespaces (and their processes) go
        left = processes_left(fleet)

    [served] = [r["result"] for r in play.records if r["task"] == "Collect the server's result"
                and r["host"] == "server"]
    connected = {r["host"]: r["result"] for r in play.records if r["task"].startswith("Connect")
                 and r["host"].startswith("load")}
    assert set(connected) == {"load1", "load2", "load3"}
    for host, res in connected.items():
        assert res["ok"] and res["verified"] == res["probe"]["requested"] == PER_HOST, host
        # Its share went out over the aliases apply added: every address of its own network.
        assert res["probe"]["source_addresses"] == LOAD_ADDRESSES, host
    assert served["ok"] and served["verified"] == sum(r["verified"] for r in connected.values()) == 3 * PER_HOST
    assert served["probe"]["failed"] == 0 and served["probe"]["over_expect"] == 0
    # The load hosts checked each connection again at the end of their hold, then closed:
    # the server ended with them, well inside its own bound.
    assert served["probe"]["stopped_by"] == "clients closed"
    for i in (1, 2, 3):
        rows = [c for c in served["probe"]["clients"] if c["address"].startswith(f"10.77.{i}.")]
        assert sum(c["verified"] for c in rows) == PER_HOST and len(rows) == LOAD_ADDRESSES

    # The apply changed every host (the aliases are needed), the revert undid it all.
    applied = [r for r in play.records if r["task"].startswith("Apply")]
    assert len(applied) == 4 and all(r["result"]["changed"] for r in applied)
    reverted = {r["host"]: r for r in play.records if r["task"] == "Put every host back"}
    assert set(reverted) == set(fleet.hosts) and all(r["result"]["changed"] for r in reverted.values())
    assert after == before and journals_left == []
    assert probes_left == [] and left == {}   # every serve and connect process has ended
    # Nothing failed, so the always section found no server to stop.
    [stop] = [r for r in play.records if r["action"].endswith("probe") and r["host"] == "server"
              and r["task"].startswith("Stop")]
    assert stop["status"] == "ok" and stop["result"]["stopped"] == [] and not stop["result"]["changed"]


def test_a_bad_alias_network_fails_with_tuners_reason_and_reverts_everywhere(tmp_path, host_restored):
    """load2's alias network is not a network: its apply fails with tuner's reason, the
    play stops on every host (a partial fleet cannot bring what the server expects),
    and the always block reverts what the other hosts had applied."""
    from tuner.apply import validate
    from tuner.host.errors import UsageError
    from tuner.plan import Request

    bad = "10.77.300.0/24"
    with pytest.raises(UsageError) as expected:
        validate(Request(target=PER_HOST, role="client", alias_dev="eth0", alias_net=bad))
    with namespace_fleet(str(tmp_path / "fleet"), loads=3, per_host=PER_HOST, usable_ports=USABLE_PORTS,
                         host_vars={"load2": {"tuner_alias_net": bad}}) as fleet:
        before = state(fleet)
        play = fleet.playbook(MILLION, "-e", "tuner_probe_timeout=30")
        after = state(fleet)
        journals_left = [j for j in fleet.journals.values() if os.path.exists(j)]
        left = processes_left(fleet)

    assert play.proc.returncode != 0
    applied = {r["host"]: r for r in play.records if r["task"].startswith("Apply")}
    assert applied["load2"]["status"] == "failed"
    res = applied["load2"]["result"]
    assert res["msg"] == str(expected.value) and (res["rc"], res["exit_class"]) == (2, "usage")
    # The others had changed their hosts before load2 failed...
    assert all(applied[h]["result"]["changed"] for h in ("server", "load1", "load3"))
    # ...no probe ran (the always section had no server to stop), and the revert ran on
    # every host and undid it.
    assert not [r for r in play.records if r["action"].endswith("probe") and r["status"] != "skipped"]
    reverted = {r["host"]: r for r in play.records if r["task"] == "Put every host back"}
    assert set(reverted) == set(fleet.hosts) and all(r["status"] == "ok" for r in reverted.values())
    assert sorted(h for h, r in reverted.items() if r["result"]["changed"]) == ["load1", "load3", "server"]
    assert after == before and journals_left == [] and left == {}


def test_a_load_host_failing_while_the_server_serves_stops_the_server_before_the_revert(tmp_path, host_restored):
    """load2 connects to a port nobody serves: its connect fails (rc 3) while the server's
    async serve job waits for 3 x N.  The always section stops that job (Ansible would
    leave it running until its own timeout), shows the server's partial result, then
    reverts; afterwards no process is left in any namespace."""
    per_host, port = 2000, 7432
    with namespace_fleet(str(tmp_path / "fleet"), loads=3, per_host=per_host, port=port,
                         host_vars={"load2": {"tuner_port": port + 1}}) as fleet:
        before = state(fleet)
        play = fleet.playbook(MILLION, "-e", "tuner_client_hold=2 tuner_probe_timeout=120")
        after = state(fleet)
        journals_left = [j for j in fleet.journals.values() if os.path.exists(j)]
        left = processes_left(fleet)

    assert play.proc.returncode != 0
    connected = {r["host"]: r for r in play.records if r["task"].startswith("Connect") and r["host"] != "server"}
    assert connected["load2"]["status"] == "failed"
    assert connected["load2"]["result"]["msg"].startswith(f"verified 0 of {per_host:,} to {SERVER_IP}:{port + 1}")
    # The server was serving when load2 failed, and nothing collected it in the block.
    assert not [r for r in play.records if r["task"] == "Collect the server's result"]
    [stop] = [r for r in play.records if r["task"].startswith("Stop the server's probe")
              and r["host"] == "server"]
    assert stop["status"] == "ok" and stop["result"]["changed"] and len(stop["result"]["stopped"]) == 1
    assert stop["result"]["killed"] == []   # it ended on SIGTERM, and reported
    [served] = [r for r in play.records if r["task"].startswith("The server's result") and r["host"] == "server"]
    res = served["result"]
    assert res["finished"] and res["probe"]["stopped_by"] == "SIGTERM" and res["probe"]["interrupted"]
    assert res["probe"]["expect"] == 3 * per_host and res["probe"]["verified"] < 3 * per_host
    # The revert still ran everywhere, after the stop, and put every host back.
    order = [r["task"] for r in play.records if r["host"] == "server"]
    assert order.index(stop["task"]) < order.index("Put every host back")
    reverted = {r["host"]: r for r in play.records if r["task"] == "Put every host back"}
    assert set(reverted) == set(fleet.hosts) and all(r["status"] == "ok" and r["result"]["changed"]
                                                     for r in reverted.values())
    assert after == before and journals_left == [] and left == {}


def test_million_playbook_proves_a_tls_service_with_the_probes_options(tmp_path, host_restored, real_server,
                                                                        tls_certs):
    """tuner_url and tuner_probe_options: the playbook proves the user's own service, here
    nginx over TLS on the server host, its certificate verified against the test's CA
    under the name it carries (sni: the certificate names localhost, not the address
    the load hosts connect to); each load host's share verified twice, the server host
    tuned and put back like the others, and no probe of tuner's own served."""
    per_host = 300
    with namespace_fleet(str(tmp_path / "fleet"), loads=2, per_host=per_host, port=7433) as fleet:
        before = state(fleet)
        srv = real_server("nginx", worker_connections=2048, tls=tls_certs.server, hosts=(SERVER_IP,),
                          netns=fleet.server)
        options = {"ca": tls_certs.ca, "sni": "localhost", "tls_version": "1.3"}
        play = fleet.playbook(MILLION, "-e", json.dumps({
            "tuner_url": f"https://{SERVER_IP}:{srv.port}/", "tuner_probe_options": options,
            "tuner_client_hold": 1, "tuner_probe_timeout": 60}))
        srv.stop()
        after = state(fleet)
        left = processes_left(fleet)

    assert play.proc.returncode == 0, play.output
    connected = {r["host"]: r["result"] for r in play.records if r["task"].startswith("Connect")
                 and r["host"].startswith("load")}
    assert set(connected) == {"load1", "load2"}
    for host, res in connected.items():
        assert res["ok"] and res["verified"] == per_host and res["probe"]["checked_twice"], host
        tls = res["probe"]["tls"]
        assert tls["server_name"] == "localhost" and tls["ca"] == tls_certs.ca and tls["version_asked"] == "1.3"
        assert {k["version"] for k in tls["negotiated"]} == {"TLSv1.3"}, host
    assert not [r for r in play.records if r["action"].endswith("probe") and r["host"] == "server"
                and r["status"] != "skipped"]
    reverted = {r["host"]: r for r in play.records if r["task"] == "Put every host back"}
    assert set(reverted) == set(fleet.hosts) and all(r["status"] == "ok" for r in reverted.values())
    assert after == before and left == {}
