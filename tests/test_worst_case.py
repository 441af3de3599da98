"""One worst-case memory figure with one label (issue 9, "Figures agree everywhere").

`tuner report` and `tuner apply`'s plan once showed two worst cases for the same host
and target (282.3 GiB with the slab objects, 274.7 GiB buffers only, unlabelled).
Both now come from tuner.capacity.worst_case_bytes and print tuner.host.memory.WORST_CASE,
which says what the figure includes.  Run inside a throwaway namespace whose buffer
defaults the test sets, so the figure is this test's own.
"""
import json
import os
import subprocess

from tuner.host.memory import WORST_CASE
from tuner.render import size

from conftest import run_tuner

N = 200_000


def test_report_and_apply_show_the_same_worst_case_with_the_same_label(netns, tmp_path):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.tcp_rmem=4096 65536 6291456",
                    "net.ipv4.tcp_wmem=4096 32768 4194304"], check=True)
    env = dict(os.environ, TUNER_LOCK=str(tmp_path / "lock"), TUNER_JOURNAL=str(tmp_path / "j.json"))
    report = json.loads(run_tuner("report", "--target", N, "--netns", netns, "--json", check_rc=0).stdout)
    plan = json.loads(run_tuner("apply", "--target", N, "--netns", netns, "--dry-run", "--json",
                                env=env, check_rc=0).stdout)["plan"]["memory"]
    worst = report["memory"]["worst_total_bytes"]
    # Slab objects plus both ends' default buffers (65536 + 32768 each), for N.
    assert worst == N * (report["memory"]["idle_bytes_per_connection"] + 2 * (65536 + 32768))
    assert plan["worst_total_bytes_before"] == worst
    assert plan["worst_total_bytes_before"] - plan["worst_case_buffer_bytes_before"] \
        == report["memory"]["idle_total_bytes"]

    # The text of both: the same label, the same number.
    shown = f"{WORST_CASE} {size(worst)}"
    assert shown in run_tuner("report", "--target", N, "--netns", netns, check_rc=0).stdout
    assert shown in run_tuner("apply", "--target", N, "--netns", netns, "--dry-run", env=env,
                              check_rc=0).stdout

    # After --shrink-buffers, the report shows what the plan said it would be.
    shrink = json.loads(run_tuner("apply", "--target", N, "--netns", netns, "--shrink-buffers",
                                  "--yes", "--json", env=env, check_rc=0).stdout)
    after = json.loads(run_tuner("report", "--target", N, "--netns", netns, "--json", check_rc=0).stdout)
    assert after["memory"]["worst_total_bytes"] == shrink["plan"]["memory"]["worst_total_bytes_after"] < worst
