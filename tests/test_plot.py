"""A probe's timeline (`tuner probe --json`'s "timeline", for loopback, --serve and
--connect) and `tuner plot`, which draws it.

The runs are real probes in throwaway network namespaces; the plots are drawn from them.
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import run_tuner, wait_gone
from test_probe_split import tuner_in, wait_listening
from tuner import schemas

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
TEARDOWN = ("close", "done")


def check_timeline(doc: dict, n: int, first_phase: str) -> list:
    """What every timeline must show: it validates, time never goes back, established
    only grows and reaches n, the run's phases are marked in order and it ends with
    what the teardown left."""
    schemas.validate(doc)
    timeline = doc["timeline"]
    times = [s["t"] for s in timeline]
    assert times == sorted(times) and times[0] >= 0
    established = [s["established"] for s in timeline]
    assert established == sorted(established) and established[-1] == n
    phases = [s["phase"] for s in timeline]
    assert phases[0] == first_phase and phases[-1] == "done"
    assert phases.index("close") < phases.index("done")
    assert all(p in TEARDOWN for p in phases[phases.index("close"):]), phases
    cpu = [s["worker_cpu_seconds"] for s in timeline]
    assert cpu == sorted(cpu) and cpu[-1] > 0
    return timeline


@root_only
def test_loopback_timeline_follows_the_run_and_its_teardown(netns):
    n = 10000
    proc = run_tuner("probe", "--netns", netns, "-n", n, "--hold", 2.2, "--json")
    assert proc.returncode == 0, proc.stderr
    timeline = check_timeline(json.loads(proc.stdout), n, "establish")
    held = [s for s in timeline if s["phase"] == "hold"]
    # one at the phase change and about one a second after it
    assert len(held) >= 3 and all(s["verified"] == n and s["sockets"] >= 2 * n for s in held)
    assert all(s["rate"] == 0 for s in held[1:])  # nothing new for a second and more
    assert max(s["rate"] for s in timeline) > 0
    # The kernel's memory moved with the connections: more slab held than left at the end.
    assert max(s["slab_bytes"] for s in held) > timeline[-1]["slab_bytes"]
    teardown = [s for s in timeline if s["phase"] in TEARDOWN]
    sockets = [s["sockets"] for s in teardown]
    assert sockets == sorted(sockets, reverse=True) and sockets[0] >= 2 * n
    # Followed until the sockets are gone: none in use and no orphan still closing (the
    # workers reset their connections, so TIME_WAIT stays what the namespace had: none).
    assert teardown[-1]["sockets"] == 0 and teardown[-1]["orphans"] == 0
    assert teardown[-1]["time_wait"] == 0


@root_only
def test_serve_and_connect_timelines_reach_n_and_mark_their_phases(netns):
    n, port, marker = 3000, 7460, "31.0417"
    srv = tuner_in(netns, "probe", "--serve", f"127.0.0.1:{port}", "--expect", n, "--hold", 4,
                   "--timeout", marker, "--json")
    client = None
    try:
        wait_listening(netns, port)
        client = tuner_in(netns, "probe", "--connect", f"127.0.0.1:{port}", "-n", n, "--hold", 1.5,
                          "--json")
        c_out, c_err = client.communicate(timeout=60)
        out, err = srv.communicate(timeout=60)
    finally:
        for p in (srv, client):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert client.returncode == 0, c_err
    connected = check_timeline(json.loads(c_out), n, "establish")
    assert any(s["phase"] == "hold" and s["verified"] == n for s in connected)
    assert connected[-1]["orphans"] == 0
    served = check_timeline(json.loads(out), n, "serve")
    # --serve has no hold phase of its own: it serves until --hold after --expect is over
    assert {s["phase"] for s in served} == {"serve", "close", "done"}
    at_most = max(s["sockets"] for s in served)
    assert at_most >= 2 * n  # both ends are in this namespace
    # the server outlived its clients: its samples saw them leave before it closed
    left = [s for s in served if s["phase"] == "serve" and s["t"] > served[0]["t"] and s["sockets"] < n]
    assert left and left[-1]["verified"] == n and served[-1]["sockets"] <= left[-1]["sockets"]
    assert wait_gone(marker) == []
