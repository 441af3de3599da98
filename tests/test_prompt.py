"""apply and revert ask before changing the host, on a real terminal (a pseudo-terminal
from python's pty module); a "no" exits 6 (EXIT_DECLINED: nothing changed, nothing
failed), --yes skips the question, and without a terminal --yes is required (one line,
exit 2, nothing changed).
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from applyhelp import netns_values, tuner
from tuner.host import errors

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="apply and revert need root")


def answered(args, answer: str, env=None, seconds: float = 60) -> tuple:
    """`tuner ARGS` with stdin, stdout and stderr on one pseudo-terminal; `answer` is
    typed once the question shows. Returns (exit code, everything it printed)."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, env=env or os.environ, close_fds=True)
    os.close(slave)
    out, typed, deadline = b"", False, time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:   # EIO: the other end closed
                break
            if not data:
                break
            out += data
        if not typed and b"[y/N]" in out:
            os.write(master, answer.encode() + b"\n")
            typed = True
        if proc.poll() is not None and not ready:
            break
    os.close(master)
    return proc.wait(timeout=10), out.decode().replace("\r\n", "\n")


def somaxconn(ns) -> str:
    return netns_values(ns)["net.core.somaxconn"]


def test_apply_no_changes_nothing_and_exits_declined(netns, jpath, own_lock):
    before = somaxconn(netns)
    rc, out = answered(["apply", "-n", "1M", "--netns", netns, "--journal", jpath], "n",
                       env=dict(os.environ, TUNER_LOCK=own_lock))
    assert rc == errors.EXIT_DECLINED == 6, out
    assert "Apply these" in out and "nothing was changed (you answered no)" in out
    assert somaxconn(netns) == before and not os.path.exists(jpath)


def test_revert_shows_what_it_will_undo_and_asks(capsys, netns, jpath, own_lock):
    before = somaxconn(netns)
    assert tuner(capsys, "apply", "-n", "1M", "--netns", netns, "--yes", "--journal", jpath)[0] in (0, 3)
    applied = somaxconn(netns)
    assert applied != before
    env = dict(os.environ, TUNER_LOCK=own_lock)

    # No terminal, no --yes: refused in one line, nothing restored.
    p = subprocess.run([sys.executable, "-m", "tuner", "revert", "--journal", jpath], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, env=env)
    assert p.returncode == errors.EXIT_USAGE and p.stdout == "", p
    assert p.stderr.count("\n") == 1 and "pass --yes" in p.stderr, p.stderr
    assert somaxconn(netns) == applied and os.path.exists(jpath)

    # On a terminal: the table of what it will restore, then the question; "no" keeps all.
    rc, out = answered(["revert", "--journal", jpath], "n", env=env)
    assert rc == errors.EXIT_DECLINED, out
    assert "tuner revert will:" in out and "would restore" in out and "Restore these" in out, out
    assert somaxconn(netns) == applied and os.path.exists(jpath)

    rc, out = answered(["revert", "--journal", jpath], "y", env=env)
    assert rc == 0, out
    assert "everything tuner changed is back as it was" in out
    assert somaxconn(netns) == before and not os.path.exists(jpath)


def test_nothing_to_revert_does_not_ask(jpath):
    p = subprocess.run([sys.executable, "-m", "tuner", "revert", "--journal", jpath], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "nothing to revert" in p.stdout, p


def test_the_exit_code_is_documented():
    from tuner import manpages  # noqa: F401  (the pages render errors.EXIT_CODES)

    assert "answered no" in errors.EXIT_CODES[errors.EXIT_DECLINED]
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "commands.md")) as f:
        assert "| 6 | you answered no" in f.read()
