"""One number format for people: every amount in a table, tuple, message or progress line
is grouped by thousands (tuner/host/numfmt.py); only JSON, shell commands and the files tuner
writes keep raw numbers.

Each test runs a real command on this host (a namespace of its own where it changes
anything) and scans its human output for a bare number of five or more digits, outside
ports, PIDs, addresses, paths and commands.
"""
from __future__ import annotations

import os
import re
import pytest

from applyhelp import tuner
from conftest import run_tuner
from test_diagnose import asyncio_server, stop
from test_probe_split import split_pair
from tuner.host import numfmt

root = pytest.mark.skipif(os.geteuid() != 0, reason="reads root-only files / changes a namespace")

# A run of 5+ digits that is not part of a word, a grouped number, a decimal, an address
# (1.2.3.4, a:b), a port (:PORT, 20000-20002), a path (/proc/12345) or an option (x=NNN);
# after a count's slash ("1,024/20000") it is the total of a progress line.
BARE = re.compile(r"(?:(?<=\d/)|(?<![\w.,:/=+-]))\d{5,}(?![\w.,:/])")
# A command quoted in prose runs to the end of its clause: its numbers are what the
# kernel reads (sysctl -w fs.nr_open=2000064, tuner apply --target 30000000).
COMMAND = re.compile(r"\b(?:tuner|sysctl|prlimit|ip|ulimit|mkdir|cat|rm)\s+-?-?[\w.-]+[^;)\n]*")


def human_part(text: str) -> str:
    """The text a person reads as prose or tables: without the shell commands (and the
    files written by them) that close apply's plan, unified diffs of persisted files,
    and commands quoted inside sentences."""
    text = text.split("equivalent shell commands:")[0]
    text = re.sub(r"^.* changes:\n(?:[-+@ ].*\n?)*", "", text, flags=re.M)
    return COMMAND.sub("", text)


def port_range(out: str) -> list:
    """The numbers of the port-range row: ports are names, in the current and the needed
    column alike."""
    return re.findall(r"\d+", re.search(r"^net\.ipv4\.ip_local_port_range.*$", out, re.M).group())


def bare_numbers(text: str, names=()) -> list:
    """Lines holding an ungrouped amount; `names` are numbers that are names (a PID, a
    port) and may stand bare."""
    allowed = {str(n) for n in names}
    return [line for line in human_part(text).splitlines()
            if any(m.group() not in allowed for m in BARE.finditer(line))]


# ---------------------------------------------------------------- the formatter itself

@pytest.mark.parametrize("raw, unit, shown", [
    ([4096, 87380, 6291456], "bytes", "4,096 87,380 6,291,456"),
    ("4096\t131072\t33554432", "bytes", "4,096 131,072 33,554,432"),
    ("32768\t60999", "ports", "32768 60999"),          # ports are names
    ([1048576], "descriptors", "1,048,576"),
    ([25165824], "bytes", "24.0 MiB"),                 # one byte amount reads as a size
    (["unlimited"], "", "unlimited"),
    (None, "", "-"),
])
def test_values(raw, unit, shown):
    assert numfmt.values(raw, unit) == shown


def test_number_progress_rate_and_seconds():
    assert numfmt.number(66001577) == "66,001,577"
    assert numfmt.number("-1234567") == "-1,234,567"
    assert numfmt.of(1024, 20000) == "1,024/20,000"
    assert numfmt.of(5633, None) == "5,633"
    assert numfmt.rate(12302.4) == "12,302/s"
    assert numfmt.seconds(12345.678) == "12,345.68 s"


def test_the_scanner_finds_bare_numbers_and_spares_names():
    assert bare_numbers("needs 66001577 for 30,000,000")
    assert bare_numbers("net.ipv4.tcp_mem  287898 383866 575796")
    assert bare_numbers("1024/20000 established")
    assert not bare_numbers("listeners 127.0.0.1:20000-20002, /proc/123456/fd, 32768 60999",
                            names=[32768, 60999])
    assert not bare_numbers("fix: tuner apply --target 30000000 --source-net 127.0.0.0/8")
    assert not bare_numbers("service: 123456 (python3)", names=[123456])


# ---------------------------------------------------------------- the commands

@root
@pytest.mark.parametrize("args", [
    ["report", "-n", "1M"], ["report", "-n", "1M", "--wide"], ["report", "-n", "30M"],
    ["report", "-n", "1M", "--role", "client"], ["report", "-n", "1M", "--role", "server"],
])
def test_report(capsys, args):
    rc, out, err = tuner(capsys, *args)
    assert rc in (0, 3), err
    ports = port_range(out)
    assert "1,000,000" in out or "30,000,000" in out
    assert not bare_numbers(out, names=ports), out


@root
def test_apply_plan_with_files_and_buffers(capsys, tmp_path, jpath):
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--dry-run", "--persist", "--root-dir",
                         tmp_path, "--shrink-buffers", "--journal", jpath)
    assert rc == 0, err
    # The tuples are grouped in the table, raw in the commands the kernel reads.
    assert re.search(r"net\.ipv4\.tcp_mem\s+\S+\s+[\d,]+,\d{3} [\d,]+,\d{3} [\d,]+,\d{3}", out), out
    assert re.search(r"^sysctl -w net\.ipv4\.tcp_mem='\d+ \d+ \d+'$", out, re.M), out
    assert not bare_numbers(out), out


@root
def test_apply_plan_of_a_client_keeps_ports_as_ports(capsys, jpath):
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--dry-run", "--role", "client",
                         "--source-net", "10.0.0.0/30", "--journal", jpath)
    assert rc == 0, err
    row = re.search(r"^net\.ipv4\.ip_local_port_range\s+\S+\s+(\d+) (\d+)\s+(\d+) (\d+)", out, re.M)
    assert row, out
    assert not bare_numbers(out, names=row.groups()), out


@root
def test_apply_and_revert_in_a_namespace(capsys, jpath, netns):
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--netns", netns, "--yes", "--journal", jpath)
    assert rc in (0, 3), err
    assert "65,535" in out and not bare_numbers(out), out
    for args in (["--dry-run"], ["--yes"]):
        rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath, *args)
        assert rc == 0, err
        # somaxconn: 65,535 written, 4,096 before (a new namespace's default).
        assert re.search(r"net\.core\.somaxconn.*65,535\s+4,096", out), out
        assert not bare_numbers(out), out


@root
def test_probe_refused_by_preflight_names_the_fix_grouped():
    p = run_tuner("probe", "-n", "30M")
    assert p.returncode == 3, p.stderr
    assert re.search(r"needs [\d,]+,\d{3} for 30,000,000: tuner apply --target 30000000", p.stderr), p.stderr
    assert not bare_numbers(p.stderr), p.stderr


@root
def test_probe_summary_and_progress_lines():
    p = run_tuner("probe", "-n", "20000", timeout=300)
    assert p.returncode == 0, p.stderr
    # stderr is a pipe: plain progress lines, counted like the table counts.
    assert re.search(r"probe \w+ [\d,]+/20,000 ", p.stderr), p.stderr
    ports = re.findall(r":(\d+)", p.stderr)
    assert "20,000 of 20,000" in p.stdout
    assert not bare_numbers(p.stdout + p.stderr, names=ports), p.stdout + p.stderr


@root
def test_diagnose(capsys, netns):
    port = 7311
    srv = asyncio_server(netns, port)
    try:
        rc, out, err = tuner(capsys, "diagnose", "--pid", srv.pid, "-n", "100000")
        rc_wide, wide, err_wide = tuner(capsys, "diagnose", "--pid", srv.pid, "-n", "100000", "--wide")
    finally:
        stop(srv)
    assert rc in (0, 3) and rc_wide == rc, err + err_wide
    assert "100,000" in out
    for text in (out, wide):
        assert not bare_numbers(text, names=[srv.pid, port] + port_range(text)), text


@root
def test_split_probe_serve_and_connect(netns):
    port = 7312
    serve, client = split_pair(netns, port, ["--expect", 12000, "--hold", 30, "--timeout", 120],
                               ["-n", 12000, "--timeout", 120], timeout=150)
    (s_out, s_err), (c_out, c_err) = (serve.stdout_text, serve.stderr_text), (client.stdout_text, client.stderr_text)
    assert client.returncode == 0 and serve.returncode == 0, (c_err, s_err)
    names = [port] + re.findall(r":(\d+)", c_err + s_err + s_out + c_out)
    for text in (c_out, c_err, s_out, s_err):
        assert "12,000" in text, text
        assert not bare_numbers(text, names=names), text
