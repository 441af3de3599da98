"""Human output fits the terminal it is shown on; piped output keeps every field.

Each command runs as a process whose stdout is a real pseudo-terminal (python's pty
module) of 60, 80 and 100 columns; no line it prints may be wider. The same command
piped keeps its tables whole (one row per line, every column), whatever COLUMNS says.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import subprocess
import sys
import termios

import pytest

from applyhelp import tuner
from test_diagnose import asyncio_server, stop
from tuner import fit, style

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reads root-only files / changes a namespace")
WIDTHS = (60, 80, 100)


def on_terminal(args, columns: int, env_columns: bool = True, env=None, rcs=(0, 3)) -> str:
    """`tuner ARGS` with stdout on a pseudo-terminal `columns` wide (stderr a pipe);
    returns what it printed, newlines as written."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = dict(env or os.environ)
    env.pop("COLUMNS", None)
    if env_columns:
        env["COLUMNS"] = str(columns)
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError as e:   # EIO: the terminal's other end closed
            assert e.errno == errno.EIO
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in rcs, err
    return b"".join(chunks).decode().replace("\r\n", "\n")


def too_wide(text: str, columns: int) -> list:
    """Lines wider than the terminal, as it shows them (colour codes take no column)."""
    return [line for line in style.plain(text).splitlines() if len(line) > columns]


def piped(*args) -> str:
    p = subprocess.run([sys.executable, "-m", "tuner", *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="60"), timeout=120)
    assert p.returncode in (0, 3), p.stderr
    return p.stdout


def header(text: str, *columns: str) -> bool:
    """A table header line holding exactly these columns, in order, on one line."""
    return any(line.split() == " ".join(columns).split() for line in text.splitlines())


# ---------------------------------------------------------------- the layouts themselves

def test_a_table_narrows_wraps_then_stacks_and_never_breaks_a_number():
    rows = [["net.ipv4.tcp_mem", "host", "287,898 383,866 575,796", "550,000 733,338 1,100,000", "raise",
             "Pages all TCP buffers may use (low, pressure, high); past high, sends stall."]]
    headers = ["knob", "scope", "current", "needed", "status", "why"]
    whole = fit.table(rows, headers)
    assert len(whole.splitlines()) == 3 and fit.widest(whole) > 100
    for width in (100, 60, 40, 30):
        text = fit.table(rows, headers, width, note=5, note_title="why:", tag=4)
        assert fit.widest(text) <= width, (width, text)
        # Every figure is still there, whole (a number is never cut).
        for figure in ("287,898", "1,100,000", "raise", "host"):
            assert re.search(rf"(?<![\d,]){re.escape(figure)}(?![\d,])", text), (width, text)
        assert "why:\n  net.ipv4.tcp_mem: Pages all" in text
    assert header(fit.table(rows, headers, 100, note=5), "knob", "scope", "current", "needed", "status")
    stacked = fit.table(rows, headers, 40, note=5, tag=4)
    assert stacked.startswith("net.ipv4.tcp_mem (raise)\n  scope: host")


def test_a_long_command_wraps_with_backslashes_and_runs_the_same():
    cmd = "sysctl -w net.ipv4.tcp_mem='550000 733338 1100000' && echo 'a b   c' done"
    wrapped = fit.command(cmd, 30)
    assert fit.widest(wrapped) <= 48  # the quoted word is never broken
    assert all(line.endswith(" \\") for line in wrapped.splitlines()[:-1])
    # The shell reads the wrapped text as the same words.
    echo = lambda text: subprocess.run(["sh", "-c", text.replace("sysctl -w", "printf '%s|'")],
                                       capture_output=True, text=True).stdout
    assert echo(wrapped) == echo(cmd) and "550000 733338 1100000|" in echo(cmd)
    heredoc = "cat > /etc/sysctl.d/99-tuner.conf <<'EOF'\n# a line of file content kept whole\nEOF"
    assert fit.command(heredoc, 20).endswith("\n# a line of file content kept whole\nEOF")


# ---------------------------------------------------------------- the commands

@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.parametrize("args", [["report", "-n", "1M"], ["report", "-n", "1M", "--wide"],
                                  ["report", "-n", "1M", "--role", "client"]])
def test_report_fits(args, columns):
    text = on_terminal(args, columns)
    assert re.search(r"binding\s+limit:", text) and "\nnext: " in text
    assert not too_wide(text, columns), text


@pytest.mark.parametrize("columns", (80, 200))
def test_report_says_the_verdict_and_the_next_command_first(columns):
    """The answer on the first screen at every width: the first three lines are the
    verdict (target, reachable, max now, binding limit) and the next command; at 80
    columns the table is the compact one (knob, current, needed, status)."""
    text = style.plain(on_terminal(["report", "-n", "1M"], columns))
    lines = text.splitlines()
    first = lines[:[i for i, line in enumerate(lines) if line.startswith("next: ")][0] + 1]
    assert len(first) <= 4, first   # the verdict (wrapped at 80 columns) and next: on the first screen
    verdict = " ".join(line.strip() for line in first if line and not line.startswith("next: "))
    assert re.fullmatch(r"target 1,000,000: (reachable|NOT reachable) now "
                        r"\(max [\d,]+; binding limit: \S+\)"
                        r"(; tuner apply (required|advised, not required \([\d,]+ settings? below what it wants, "
                        r"for headroom\)))?", verdict), first
    assert any(line.startswith("next: ") for line in first), first
    compact = header(text, "knob", "current", "needed", "status")
    assert compact == (columns == 80), text
    assert header(text, "knob", "scope", "current", "needed", "allows", "status") == (columns == 200)
    # Why-notes only for rows that are not ok.
    notes = text.split("\nwhy:\n", 1)[1].split("\n\n", 1)[0]
    assert "fs.file-max (ok)" not in notes and re.search(r"^  \S+ \((raise|binds|short|full|near|warn|capped)\):",
                                                         notes, re.M), notes


def test_status_words_are_coloured_on_a_terminal_only():
    coloured = on_terminal(["report", "-n", "10M"], 200)
    assert f"{style.RED}NOT reachable{style.RESET}" in coloured
    assert re.search(rf"^fs\.nr_open\s.*\s{re.escape(style.YELLOW)}raise{re.escape(style.RESET)}$", coloured, re.M)
    assert f"({style.RED}binds{style.RESET}):" in coloured      # the why-notes too
    for plain in (on_terminal(["report", "-n", "10M"], 200, env=dict(os.environ, NO_COLOR="1")),
                  on_terminal(["--no-color", "report", "-n", "10M"], 200), piped("report", "-n", "10M")):
        assert "\033[" not in plain and "NOT reachable" in plain


def test_the_terminals_own_size_counts_without_columns():
    text = on_terminal(["report", "-n", "1M"], 60, env_columns=False)
    assert not too_wide(text, 60), text


@pytest.mark.parametrize("columns", WIDTHS)
def test_apply_plan_fits(columns, tmp_path, jpath):
    # Short: a shell word (this path) is never broken, so one longer than the terminal
    # would stick out of it.
    root = f"/tmp/tf{os.getpid() % 10000}"
    os.makedirs(root, exist_ok=True)
    try:
        text = on_terminal(["apply", "-n", "1M", "--dry-run", "--persist", "--root-dir", root,
                            "--shrink-buffers", "--journal", jpath], columns)
    finally:
        os.rmdir(root)
    assert "equivalent shell commands:" in text
    assert not too_wide(text, columns), text


@pytest.mark.parametrize("columns", WIDTHS)
def test_apply_then_revert_in_a_namespace_fit(columns, netns, jpath, own_lock):
    env = dict(os.environ, TUNER_LOCK=own_lock)
    text = on_terminal(["apply", "-n", "1M", "--netns", netns, "--yes", "--journal", jpath], columns, env=env)
    assert "applied" in text and not too_wide(text, columns), text
    # A value changed behind tuner's back: the drifted row and its reason must fit too.
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.core.somaxconn=5000"], check=True)
    # Without --force the drifted one is left (exit 1); with it, all is restored.
    for args, rc in ((["--dry-run"], 1), (["--yes", "--force"], 0)):
        text = on_terminal(["revert", "--journal", jpath, *args], columns, env=env, rcs=(rc,))
        assert "somaxconn" in text and not too_wide(text, columns), text


@pytest.mark.parametrize("columns", WIDTHS)
def test_diagnose_fits(columns, netns):
    srv = asyncio_server(netns, 7321)
    try:
        for wide in ([], ["--wide"]):
            text = on_terminal(["diagnose", "--pid", srv.pid, "-n", "100000", *wide], columns)
            assert "fix:" in text and not too_wide(text, columns), text
    finally:
        stop(srv)


@pytest.mark.parametrize("columns", (60, 80))
def test_probe_summary_fits(columns):
    text = on_terminal(["probe", "-n", "2000"], columns)
    assert "all connections verified" in text and not too_wide(text, columns), text


# ---------------------------------------------------------------- piped: whole

def test_piped_output_keeps_every_field_whatever_columns_says(tmp_path, jpath, netns):
    text = piped("report", "-n", "1M", "--wide")
    assert header(text, "knob", "scope", "current", "needed", "allows", "status", "why")
    assert re.search(r"^net\.ipv4\.tcp_mem\s+host\s+[\d,]+ [\d,]+ [\d,]+\s+.*\S+\s+Pages all", text, re.M), text
    plan = piped("apply", "-n", "1M", "--dry-run", "--journal", jpath, "--netns", netns)
    assert header(plan, "knob", "where", "current", "new", "why")
    assert re.search(r"^net\.core\.somaxconn\s+netns \S+\s+4,096\s+65,535\s+Cap on", plan, re.M), plan
    assert max(len(line) for line in plan.splitlines()) > 100
