"""`tuner probe`: the CLI front over probes/ — pre-flight, output, exit codes."""
import io
import json
import subprocess

import pytest

from tuner.probing import run as preflight
from tuner.probing.progress import Progress
from tuner.host.procfs import sockstat as read_sockstat

from conftest import run_tuner


def _tcp_inuse():
    return read_sockstat()["TCP"]["inuse"]


def test_probe_json_verifies_and_carries_preflight_estimate():
    proc = run_tuner("probe", "--connections", "5000", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema"] == "tuner.probe/1"
    assert data["ok"] and data["verified"] == data["requested"] == 5000 and data["mismatches"] == 0
    pre = data["preflight"]
    assert pre["ok"] and pre["estimate_kernel_bytes_per_conn"] > 4000
    # Measured slab growth per connection lands near the model's estimate (loose: 5k is
    # small), unless the probe itself says other work on the host made it unmeasurable.
    if data["kernel_figures_reliable"]:
        assert 0.5 < data["kernel_slab_bytes_per_conn"] / pre["estimate_kernel_bytes_per_conn"] < 1.5
    else:
        assert data["kernel_figures_note"]
    # Not a terminal: progress comes as plain lines on stderr, the plan first.
    assert "plan:" in proc.stderr and "probe" in proc.stderr


def test_probe_table_output():
    proc = run_tuner("probe", "-n", "2000")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("all connections verified")
    assert "2,000 of 2,000" in proc.stdout and "report estimated" in proc.stdout


def test_unmeasurable_kernel_figures_are_not_printed_as_numbers():
    """A real run's result, marked as the probe marks it when the host was busy."""
    from probes import ProbeResult
    from tuner import render

    data = json.loads(run_tuner("probe", "-n", "1000", "--json").stdout)
    data.update(kernel_figures_reliable=False, kernel_figures_note="slab shrank during the run",
                kernel_slab_bytes_per_conn=-21073)
    text = render.probe_text(ProbeResult.from_dict(data), preflight.check(1000))
    assert "not measurable (host busy: slab shrank during the run)" in text
    assert "-21,073" not in text


def test_preflight_refuses_what_the_model_says_is_impossible():
    pre = preflight.check(2 ** 40)
    assert not pre.ok and pre.report.binding in pre.problems[0]
    before = _tcp_inuse()
    proc = run_tuner("probe", "--connections", str(2 ** 40))
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to probe" in lines[0] and "--force" in lines[0]
    # The fix is the knob table's value for the binding knob and the apply that sets it.
    binding = pre.report.binding
    assert f"fix: {binding} needs " in lines[0] and f"tuner apply --target {2 ** 40} " in lines[0]
    assert proc.stdout == "" and _tcp_inuse() <= before + 2  # nothing was opened


def test_preflight_in_a_namespace_reads_that_namespace(netns):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.core.somaxconn=64"], check=True)
    pre = preflight.check(1000, netns)
    assert pre.report.netns == netns
    assert pre.report.row("net.core.somaxconn").current == [64]


def test_preflight_describes_the_probe_it_will_run():
    """Sources and listeners as the probe will use them: one source address and one
    listener reach one port range; more workers are more destinations."""
    one = preflight.check(30000, source_net="127.0.0.2/32", workers=1)
    assert not one.ok and "net.ipv4.ip_local_port_range" in one.problems[0]
    assert "tuner apply --target 30000" in one.problems[0]
    assert preflight.check(30000, source_net="127.0.0.2/32", workers=2).ok
    assert preflight.check(30000).ok  # 127.0.0.0/8: sixteen million sources


def test_probe_refused_in_a_namespace_with_few_ports_then_spread_succeeds(netns):
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv4.ip_local_port_range=40000 40099"], check=True)
    proc = run_tuner("probe", "--netns", netns, "-n", "500", "--source-net", "none")
    assert proc.returncode == 3 and "refusing to probe 500" in proc.stderr
    assert "net.ipv4.ip_local_port_range" in proc.stderr
    # Forced, it falls short where the model said, and the fix is the table's value.
    short = run_tuner("probe", "--netns", netns, "-n", "500", "--source-net", "none", "--force")
    assert short.returncode == 3
    assert "EADDRNOTAVAIL" in short.stdout
    assert "fix: net.ipv4.ip_local_port_range needs" in short.stdout
    assert f"tuner apply --target 500 --netns {netns}" in short.stdout
    ok = run_tuner("probe", "--netns", netns, "-n", "500", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verified"] == 500


@pytest.mark.parametrize("args, message", [
    (["--connections", "0"], "at least 1"),
    (["--connections", "many"], "not a whole number"),
    (["--workers", "x"], "--workers"),
    (["--source-net", "not-a-net"], "--source-net"),
    (["--port", "70000"], "port"),
    (["--netns", "tuner-no-such-ns"], "no network namespace"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    proc = run_tuner("probe", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_progress_plain_lines_are_rate_limited():
    out = io.StringIO()
    with Progress(100, "probe", stream=out, interval=3600, live=False) as bar:
        for i in range(100):
            bar.update(i, "establish", established=i)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "probe establish 0/100" in lines[0]


def test_progress_live_bar_renders_on_a_terminal():
    out = io.StringIO()
    with Progress(10, "probe", stream=out, live=True) as bar:
        bar.update(5, "exchange", established=10)
        bar._bar.refresh()  # draw now rather than on the refresh thread's next tick
    text = out.getvalue()
    assert "probe exchange" in text and "5/10" in text and "established=10" in text
    assert "\x1b[" in text  # drawn with terminal control sequences, not plain lines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:  # a real pty would do; what Progress asks is only this
        return True


@pytest.mark.parametrize("env, live", [({"TERM": "xterm"}, True), ({"TERM": "dumb"}, False),
                                       ({"TERM": "xterm", "NO_COLOR": "1"}, False)])
def test_progress_on_a_terminal_falls_back_to_plain_lines_for_dumb_or_no_color(monkeypatch, env, live):
    monkeypatch.delenv("NO_COLOR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = _Terminal()
    with Progress(10, "probe", stream=out) as bar:
        bar.update(5, "exchange", established=10)
    assert ("\x1b[" in out.getvalue()) is live
    if not live:
        assert "probe exchange 5/10 established=10" in out.getvalue()


def test_json_timeline_samples_every_phase_and_the_teardown(netns):
    proc = run_tuner("probe", "--netns", netns, "-n", 2000, "--hold", 2.5, "--json")
    assert proc.returncode == 0, proc.stderr
    timeline = json.loads(proc.stdout)["timeline"]
    phases = [s["phase"] for s in timeline]
    assert phases[0] == "establish" and phases[-1] == "done"
    assert "hold" in phases and "close" in phases and phases.index("hold") < phases.index("close")
    assert phases.count("hold") >= 3  # about one a second while holding, plus its start
    assert [s["t"] for s in timeline] == sorted(s["t"] for s in timeline)
    held = [s for s in timeline if s["phase"] == "hold"]
    assert all(s["verified"] == 2000 and s["sockets"] >= 4000 for s in held)
    assert timeline[-1]["sockets"] == 0 and timeline[-1]["worker_cpu_seconds"] > 0


def test_probes_never_import_the_cli():
    # Imported for real (test_layers reads the files): of tuner, the probe loads only the
    # bottom layer, and nothing of typer, rich or click.
    from test_layers import LAYERS
    bottom = dict(LAYERS)["bottom"]
    code = ("import importlib, pkgutil, sys, probes\n"
            "for m in pkgutil.iter_modules(probes.__path__):\n"
            "    importlib.import_module('probes.' + m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tuner', 'typer', 'rich', 'click')\n"
            f"       and m != 'tuner' and not any(m == b or m.startswith(b + '.') for b in {bottom!r})]\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)")
    import sys
    # The bottom layer is a package now (tuner.host): its modules are the bottom layer too.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
