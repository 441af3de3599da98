"""A probe's timeline (`tuner probe --json`'s "timeline", for loopback, --serve and
--connect) and `tuner plot`, which draws it.

The runs are real probes in throwaway network namespaces; the plots are drawn from them.
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import run_tuner, wait_gone
from test_probe_split import split_pair
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
def test_serve_and_connect_timelines_reach_n_and_mark_their_phases(netns, tmp_path):
    n, port, marker = 3000, 7460, "31.0417"
    srv, client = split_pair(netns, port, ["--expect", n, "--hold", 4, "--timeout", marker, "--json"],
                             ["-n", n, "--hold", 1.5, "--json"], timeout=60)
    out, c_out = srv.stdout_text, client.stdout_text
    assert client.returncode == 0, client.stderr_text
    connected = check_timeline(json.loads(c_out), n, "establish")
    assert any(s["phase"] == "hold" and s["verified"] == n for s in connected)
    assert connected[-1]["orphans"] == 0
    result = json.loads(out)
    served = check_timeline(result, n, "serve")
    # --serve has no hold phase of its own: it serves until its clients leave (before --hold 4)
    assert {s["phase"] for s in served} == {"serve", "close", "done"}
    assert result["stopped_by"] == "clients closed" and 1.0 <= result["held_seconds"] < 4
    at_most = max(s["sockets"] for s in served)
    assert at_most >= 2 * n  # both ends are in this namespace
    # it ended once its clients had left: the samples from then on hold none of them
    left = [s for s in served if s["phase"] != "serve" and s["t"] > served[0]["t"] and s["sockets"] < n]
    assert left and left[0]["verified"] == n and served[-1]["sockets"] <= left[0]["sockets"]
    assert wait_gone(marker) == []
    # The picture of each end names its mode and N in the default title.
    for doc, mode in ((out, "serve"), (c_out, "connect")):
        run = tmp_path / f"{mode}.json"
        run.write_text(doc)
        proc = plot(run, "-o", tmp_path / f"{mode}.svg")
        assert proc.returncode == 0, proc.stderr
        assert f"tuner probe, {mode}: 3,000 connections on {os.uname().nodename}" in svg_texts(tmp_path / f"{mode}.svg")


# ---------------------------------------------------------------- tuner plot

SVG = "{http://www.w3.org/2000/svg}"
PANELS = ("connections", "rate", "slab", "available")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real probe runs (the kernel picking sources, and spread over 127/8), as
    `tuner probe --json` wrote them."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    from conftest import make_netns, remove_netns

    out, paths = tmp_path_factory.mktemp("runs"), []
    ns = make_netns("tuner-plot")
    try:
        for source in ("none", "127.0.0.0/8"):
            proc = run_tuner("probe", "--netns", ns, "-n", 4000, "--source-net", source, "--json")
            assert proc.returncode == 0, proc.stderr
            path = out / f"{'none' if source == 'none' else 'spread'}.json"
            path.write_text(proc.stdout)
            paths.append(str(path))
    finally:
        remove_netns(ns)
    return paths


def plot(*args, env=None):
    return run_tuner("plot", *args, env=env)


def svg_texts(path) -> str:
    import xml.etree.ElementTree as ET
    return " ".join("".join(t.itertext()) for t in ET.parse(path).getroot().iter(SVG + "text"))


def last_point(line) -> tuple:
    """The last (x, y) a line's SVG path goes through (y grows downwards)."""
    x, y = line.find(SVG + "path").get("d").split()[-2:]
    return float(x), float(y)


def test_svg_draws_one_line_per_run_in_each_panel(runs, tmp_path):
    import xml.etree.ElementTree as ET

    out = tmp_path / "runs.svg"
    proc = plot(*runs, "-o", out, "--label", "kernel picks", "--label", "spread")
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(out).getroot()  # raises unless it is well-formed XML
    assert root.tag == SVG + "svg"
    axes = [g for g in root.iter(SVG + "g") if g.get("id", "").startswith("axes_")]
    assert len(axes) == len(PANELS)
    for ax, panel in zip(axes, PANELS):
        lines = sorted(g.get("id") for g in ax.iter(SVG + "g") if g.get("id", "").startswith("run"))
        # the first panel also has each run's sockets open now
        extra = ["run1-open", "run2-open"] if panel == "connections" else []
        assert lines == sorted([f"run1-{panel}", f"run2-{panel}"] + extra)
    # each line goes through every sample of its run's timeline
    line = {g.get("id"): g for g in root.iter(SVG + "g") if g.get("id", "").startswith("run")}
    for i, path in enumerate(runs, 1):
        samples = len(json.loads(open(path).read())["timeline"])
        for name in ("connections", "open"):
            assert line[f"run{i}-{name}"].find(SVG + "path").get("d").count("L") == samples - 1
        # established stays at N to the end; the sockets open now fall as the run closes
        assert last_point(line[f"run{i}-open"])[1] > last_point(line[f"run{i}-connections"])[1] + 20
    texts = svg_texts(out)
    assert "kernel picks" in texts and "spread" in texts  # the legend names each run
    assert "TCP sockets open now" in texts and "established so far" in texts  # and each line style
    # N, the mode and the host in the default title; every run's phases named
    assert f"tuner probe, loopback: 4,000 connections on {os.uname().nodename} (2 runs)" in texts
    phases = [t.text.strip() for t in root.iter(SVG + "text") if t.text and t.text.strip() in
              ("open", "verify", "hold", "close", "exited")]
    assert phases.count("open") == 2 and phases.count("close") == 2 and phases.count("exited") == 2


def test_one_run_s_legend_says_what_its_lines_are(runs, tmp_path):
    out = tmp_path / "one.svg"
    proc = plot(runs[0], "-o", out, "--title", "before apply")
    assert proc.returncode == 0, proc.stderr
    texts = svg_texts(out)
    assert "TCP sockets open now" in texts and "established so far" in texts
    assert "before apply" in texts and "tuner probe, loopback" not in texts  # --title replaces it
    assert "none.json" not in texts  # one run: no legend entry that only repeats its file name


def test_png_is_a_png_matplotlib_reads_back_with_each_run_drawn(runs, tmp_path):
    import matplotlib.image
    from matplotlib.colors import to_rgb

    out = tmp_path / "runs.png"
    proc = plot(*runs, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(str(out))
    assert pixels.ndim == 3 and pixels.shape[0] > 400 and pixels.shape[1] > 400
    flat = {tuple(round(float(c), 2) for c in px[:3]) for px in pixels.reshape(-1, pixels.shape[2])}
    for color in ("C0", "C1"):  # run 1 and run 2, each in its own colour
        assert tuple(round(c, 2) for c in to_rgb(color)) in flat


def test_missing_matplotlib_is_one_line_naming_the_extra(runs, tmp_path):
    """matplotlib is installed here (the test extra), so its absence is made real for one
    process: a sys.meta_path finder in the subprocess refuses to import it, as Python does
    when the package is not installed."""
    import subprocess
    import sys

    out = tmp_path / "runs.svg"
    code = ("import sys\n"
            "class NoMatplotlib:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'matplotlib':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoMatplotlib())\n"
            "from tuner.cli import main\n"
            f"sys.exit(main(['plot', {runs[0]!r}, '-o', {str(out)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == ["tuner: error: tuner plot needs matplotlib, which is not "
                                        "installed: pip install '.[plot]' in tuner's clone (or pip "
                                        "install matplotlib jsonschema)"]
    assert not out.exists()


def test_a_file_that_is_not_a_probe_run_is_refused_and_nothing_is_written(runs, tmp_path):
    report = run_tuner("report", "--json")
    refused_probe = {"schema": "tuner.probe/1", "refused": True}
    older = json.loads(open(runs[0]).read())
    del older["timeline"]               # a probe from before the timeline
    broken = json.loads(open(runs[0]).read())
    broken["timeline"][1]["established"] = "many"
    cases = {"report.json": (report.stdout, "its schema is 'tuner.report/3'"),
             "refused.json": (json.dumps(refused_probe), "the pre-flight refused"),
             "older.json": (json.dumps(older), "'timeline' is a required property"),
             "broken.json": (json.dumps(broken), "at timeline/1/established"),
             "text.json": ("not json at all", "not JSON"),
             "deep.json": ("[" * 100000 + "]" * 100000, "nested too deeply")}
    out = tmp_path / "runs.svg"
    for name, (text, why) in cases.items():
        (tmp_path / name).write_text(text)
        proc = plot(runs[0], tmp_path / name, "-o", out)
        assert proc.returncode == 2, (name, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and why in proc.stderr, (name, proc.stderr)
        assert proc.stderr.startswith(f"tuner: error: {tmp_path / name}: ")
        assert not out.exists()
    for args, why in [((runs[0], "-o", tmp_path / "runs.pdf"), "name a .svg or .png file"),
                      ((runs[0], "-o", out, "--label", "a", "--label", "b"), "--label given 2 time(s) for 1 run"),
                      ((tmp_path, "-o", out), "not a regular file"),
                      ((tmp_path / "absent.json", "-o", out), "No such file")]:
        proc = plot(*args)
        assert proc.returncode == 2 and why in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert not out.exists()
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # nobody writes it: opened without blocking, refused at once
    proc = plot(fifo, "-o", out)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr


def test_an_unwritable_output_is_exit_1(runs, tmp_path):
    proc = plot(runs[0], "-o", tmp_path / "no" / "such" / "dir.svg")
    assert proc.returncode == 1 and proc.stderr.startswith("tuner: error: cannot write ")
    assert len(proc.stderr.splitlines()) == 1


def test_other_commands_never_import_matplotlib():
    import subprocess
    import sys

    code = ("import sys\nfrom tuner.cli import main\n"
            "try:\n    main(['report', '--json'])\nexcept SystemExit:\n    pass\n"
            "sys.exit(1 if [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'jsonschema')]\n"
            "         or 'tuner.plot' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_link_planted_at_the_output_is_not_followed(runs, tmp_path):
    """tuner plot runs as root: a symbolic link another user planted at the output name
    (a shared directory) must not make it overwrite the link's target; a FIFO there must
    not block it. One line, exit 1, the target untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "out.svg"
    link.symlink_to(victim)
    proc = plot(runs[0], "-o", link)
    assert proc.returncode == 1 and proc.stderr == f"tuner: error: cannot write {link}: it is a symbolic link\n"
    assert victim.read_text() == "precious\n"
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    proc = plot(runs[0], "-o", fifo)
    assert proc.returncode == 1 and proc.stderr == f"tuner: error: cannot write {fifo}: not a regular file\n"


def test_a_step_run_draws_memory_and_p99_against_connections_with_the_projection(real_server, tmp_path):
    """A real step run against Redis: the picture adds its cost panels (the service's
    memory and the p99 of its exchange against connections held) and marks where its
    memory limit would stop it (issue 26)."""
    srv = real_server("redis", hosts=("127.0.0.1",))
    proc = run_tuner("probe", "--connect", f"redis://127.0.0.1:{srv.port}", "-n", 1500, "--step", 500,
                     "--settle", 0.3, "--hold", 1, "--json", "-q", timeout=240)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "ramp.json"
    run.write_text(proc.stdout)
    doc = json.loads(proc.stdout)
    out = tmp_path / "ramp.svg"
    p = plot(str(run), "-o", str(out))
    assert p.returncode == 0, p.stderr
    svg = out.read_text()
    assert 'id="run1-memory"' in svg and 'id="run1-p99"' in svg
    projected = doc["service"]["projected_max"]
    if projected is not None:   # the words name the count and the limit
        assert f"memory binds at {projected:,}: {doc['service']['binding']}" in svg_texts(out)
    assert "service memory (MiB)" in svg_texts(out) and "p99 of its exchange (ms)" in svg_texts(out)
