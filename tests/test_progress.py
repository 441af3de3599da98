"""Progress that tells the truth: the plain lines of a real probe, read number by number.

A split probe (`--serve` and `--connect` in a namespace of the test's own, on loopback)
and a local probe with --hold print their progress lines on stderr (a pipe: plain
lines); each figure must be what it says.
"""
from __future__ import annotations

import os
import re

import pytest

from conftest import run_tuner
from test_probe_split import split_pair

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")

LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<label>[a-z ]+?) (?P<done>[\d,]+)(?:/(?P<total>[\d,]+))?"
                  r"(?P<figures>(?: \w+=\S+)*)(?: hold (?P<left>[\d.,]+) s left)?$")


def n(text: str) -> int:
    return int(text.replace(",", ""))


def progress(stderr: str) -> list:
    """Each progress line as {label, done, total, figures..., left}."""
    out = []
    for line in stderr.splitlines():
        m = LINE.match(line)
        if m:
            figures = dict(f.split("=", 1) for f in m["figures"].split())
            out.append({"label": m["label"], "done": n(m["done"]), "left": m["left"] and float(m["left"].replace(",", "")),
                        **figures})
    return out


def test_split_probe_lines_say_what_they_count(netns):
    port, conns = 7331, 9000
    # Paced: connections arrive over about three seconds, so several lines see them.  The
    # server's hold outlasts the client's, which checks every connection again at its end.
    serve, client = split_pair(netns, port, ["--expect", conns, "--hold", 6, "--timeout", 120],
                               ["-n", conns, "--rate", 3000, "--hold", 3.5, "--timeout", 120], timeout=120)
    s_err, c_err = serve.stderr_text, client.stderr_text
    assert client.returncode == 0 and serve.returncode == 0, (c_err, s_err)

    served = progress(s_err)
    assert len(served) >= 4, s_err
    # The label once: 'serve 1,234/9,000', never 'serve serve'.
    assert "serve serve" not in s_err and {p["label"] for p in served} <= {"serve", "serve close"}, s_err
    for p in served:
        # One moment's counts: held <= verified <= accepted.
        assert n(p["held"]) <= p["done"] <= n(p["accepted"]), (p, s_err)
    arriving = [p for p in served if 0 < p["done"] < conns]
    assert arriving and all(n(p["rate"].removesuffix("/s")) > 0 for p in arriving), s_err
    # The hold counts down once all are held.
    left = [p["left"] for p in served if p["left"] is not None]
    assert left and left == sorted(left, reverse=True) and left[0] <= 6, s_err
    # All are held when the hold begins; the clients' own hold (3.5 s) may end before the
    # server's (6 s), so later lines may count fewer: that is their closing, not a loss.
    assert n(next(p for p in served if p["left"] is not None)["held"]) == conns, s_err

    connected = progress(c_err)
    assert {p["label"] for p in connected} >= {"connect establish", "connect hold"}, c_err
    left = [p["left"] for p in connected if p["label"] == "connect hold"]
    assert len(left) >= 2 and left == sorted(left, reverse=True) and None not in left, c_err
    assert any(n(p["rate"].removesuffix("/s")) > 0 for p in connected if p["label"] == "connect establish"
               and 0 < p["done"] < conns), c_err


def test_local_probe_hold_counts_down_with_the_held(netns):
    p = run_tuner("probe", "--netns", netns, "-n", 3000, "--hold", 2.5, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [x for x in progress(p.stderr) if x["label"] == "probe hold"]
    assert len(lines) >= 2, p.stderr
    assert all(n(x["held"]) == 3000 and x["left"] is not None for x in lines), p.stderr
    assert [x["left"] for x in lines] == sorted((x["left"] for x in lines), reverse=True), p.stderr


def test_quiet_probe_prints_the_result_and_nothing_on_stderr(netns):
    """-q (cron, scripts keeping a log): a local probe and a split pair print no progress
    and no plan/listening lines on stderr, but the same result on stdout and exit code;
    an error still reaches stderr."""
    loud = run_tuner("probe", "--netns", netns, "-n", 2000, "--hold", 1.5, timeout=120)
    quiet = run_tuner("probe", "--netns", netns, "-n", 2000, "--hold", 1.5, "-q", timeout=120)
    assert loud.returncode == quiet.returncode == 0, (loud.stderr, quiet.stderr)
    assert progress(loud.stderr) and "plan:" in loud.stderr
    assert quiet.stderr == "", quiet.stderr
    assert quiet.stdout.splitlines()[0] == loud.stdout.splitlines()[0], (loud.stdout, quiet.stdout)

    port = 7332
    serve, client = split_pair(netns, port, ["--expect", 500, "--hold", 30, "--timeout", 60, "--quiet"],
                               ["-n", 500, "--hold", 1, "--timeout", 60, "-q"], timeout=60)
    (s_out, s_err), (c_out, c_err) = (serve.stdout_text, serve.stderr_text), (client.stdout_text, client.stderr_text)
    assert client.returncode == serve.returncode == 0, (c_err, s_err)
    assert (c_err, s_err) == ("", ""), (c_err, s_err)
    assert "500" in c_out and "500" in s_out, (c_out, s_out)

    bad = run_tuner("probe", "--netns", netns, "-n", 0, "-q")
    assert bad.returncode == 2 and bad.stderr.startswith("tuner: error:"), bad.stderr
