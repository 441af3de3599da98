"""What a hostile local user's service can make root's `tuner diagnose` print (issue 24):
a test user made here, real processes under its uid (Python with its comm set by
prctl(PR_SET_NAME), its argv by `exec -a`), a real pty to read exactly what reaches a
terminal, and piped output.  The "Redis" is a small Python server on 127.0.0.1 (the
point is an answer no real Redis gives: a fake is the only way to have one); the fake
`redis-server` and `haproxy` binaries are copies of Python in the user's home, which is
what such a user would run.

Each case failed before: raw ESC/BEL/CR on the terminal, RecursionError (exit 1), a fix
telling root to start /home/USER/haproxy with the user's argv.
"""
from __future__ import annotations

import fcntl
import os
import pty
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import tty

import pytest

from tests.realservers import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes a user and runs processes as it")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"
# A comm (15 bytes at most): a window title (OSC ... BEL), a screen clear, a carriage return.
COMM = b"\x1b]0;T\x07\x1b[2J\rX"
ESCAPED_COMM = r"\x1b]0;T\x07\x1b[2J\rX"
OUR_COLOUR = re.compile(rb"\x1b\[(?:31|33|0)m")      # tuner.style's red, yellow, reset

SERVER = r'''
import ctypes, socket, sys
mode, port, comm = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
if comm:
    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(comm), 0, 0, 0)   # PR_SET_NAME
answers = {"listen": b"",
           "redis-deep": b"*1\r\n" * 16000,
           "redis-error": b"-ERR \x1b]0;T\x07\x1b[2J\rgone [blink]x[/blink] \xe2\x80\xae\r\n"}
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(64)
held = []
while True:
    c, _ = s.accept()
    if answers[mode]:
        c.settimeout(2)
        try:
            c.recv(4096)
            c.sendall(answers[mode])
        except OSError:
            pass
        c.close()
    else:
        held.append(c)
'''


@pytest.fixture(scope="module")
def user():
    """A throwaway user with a home of its own; removed (with its processes) afterwards."""
    name = f"tuneredge{os.getpid() % 100000}"
    subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    started: list = []
    try:
        pw = pwd.getpwnam(name)
        script = os.path.join(pw.pw_dir, "server.py")
        with open(script, "w") as f:
            f.write(SERVER)
        os.chown(script, pw.pw_uid, pw.pw_gid)
        yield pw, started
    finally:
        for p in started:
            p.kill()
            p.wait()
        subprocess.run(["userdel", "--remove", name], capture_output=True)


def run_as(user, argv, port):
    """argv under the user's uid (no groups of root's), once it listens on `port`."""
    pw, started = user
    p = subprocess.Popen(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd=pw.pw_dir,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started.append(p)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p
        except OSError:
            assert p.poll() is None, p.stderr.read().decode()
            time.sleep(0.05)
    raise AssertionError(f"{argv} did not listen on {port}")


def server(user, mode, comm=b"", argv0=None, exe=PY, extra=()):
    pw, _ = user
    port = free_port()
    argv = [exe, os.path.join(pw.pw_dir, "server.py"), mode, str(port), comm.hex(), *extra]
    if argv0 is not None:     # what `exec -a NAME` gives: argv[0] the user's words
        argv = ["bash", "-c", 'exec -a "$0" "$@"', argv0] + argv
    return run_as(user, argv, port), port


def fake_binary(user, name):
    """A copy of Python called `name` in the user's home, owned by the user: what a
    hostile user runs to look like a server tuner knows (its exe's name is what the
    adapters recognise)."""
    pw, _ = user
    fake = os.path.join(pw.pw_dir, name)
    if os.path.exists(fake):      # running already, for an earlier test
        return fake
    shutil.copy(os.path.realpath(PY), fake)
    os.chown(fake, pw.pw_uid, pw.pw_gid)
    return fake


def on_pty(args, columns=250):
    """`python -m tuner ARGS` on a real pty (raw: no newline translation, so every byte
    read is one tuner wrote), its bytes and exit code."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "TERM")}
    env["TERM"] = "xterm-256color"
    p = subprocess.Popen([sys.executable, "-m", "tuner", *args], stdin=slave, stdout=slave,
                         stderr=slave, cwd=ROOT, env=env, start_new_session=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:        # EIO: every writer closed the pty
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return out, p.wait(timeout=120)


def piped(args):
    p = subprocess.run([sys.executable, "-m", "tuner", *args], cwd=ROOT, capture_output=True,
                       timeout=120)
    return p.stdout + p.stderr, p.returncode


def no_service_controls(out: bytes) -> None:
    """Nothing but tuner's own colours: no ESC, BEL or CR the service chose."""
    rest = OUR_COLOUR.sub(b"", out)
    assert b"\x1b" not in rest and b"\x07" not in rest and b"\r" not in rest, out[:3000]
    assert "\u202e".encode() not in rest


def test_comm_with_escapes_is_shown_escaped_on_a_terminal_and_piped(user):
    p, _ = server(user, "listen", COMM)
    out, code = on_pty(["diagnose", "--pid", str(p.pid), "--target", "1000000"])
    assert code in (0, 3), out
    no_service_controls(out)
    assert ESCAPED_COMM.encode() in out
    assert OUR_COLOUR.search(out), "tuner's own status colours are gone on a terminal"
    out, code = piped(["diagnose", "--pid", str(p.pid), "--target", "1000000"])
    assert b"\x1b" not in out and b"\x07" not in out and b"\r" not in out
    assert ESCAPED_COMM.encode() in out
    # --json keeps its own escaping: the comm is there, escaped by JSON, nothing raw.
    out, _ = piped(["diagnose", "--pid", str(p.pid), "--json"])
    assert b"\x1b" not in out and b"\\u001b]0;T\\u0007" in out


def test_redis_error_reply_with_escapes_and_markup(user):
    p, port = server(user, "redis-error", exe=fake_binary(user, "redis-server"))
    out, code = on_pty(["diagnose", "--pid", str(p.pid)])
    assert code == 0, out
    no_service_controls(out)
    assert rb"ERR \x1b]0;T\x07\x1b[2J\rgone" in out and rb"\u202e" in out
    # --watch on a terminal draws with rich: the service's '[blink]' is text, not markup.
    out, code = on_pty(["diagnose", "--pid", str(p.pid), "--watch", "1"])
    assert code == 0, out
    assert b"\x1b]0;" not in out and b"\x07" not in out and b"\xe2\x80\xae" not in out
    assert b"[blink]x[/blink]" in out and rb"\x1b]0;T\x07" in out


def test_redis_answer_nested_16000_deep_is_not_read_not_a_crash(user):
    p, port = server(user, "redis-deep", exe=fake_binary(user, "redis-server"))
    out, code = piped(["diagnose", "--pid", str(p.pid)])
    assert code == 0 and b"RecursionError" not in out, out
    assert b"nested deeper than 32 arrays: not read" in out


def test_nginx_g_with_3000_nested_blocks_is_not_read_not_a_crash(user):
    """A process whose argv says it is an nginx master with `-g 'a { a { ...'` 3,000 deep
    (the adapter reads -g from argv), and the packaged nginx.conf as its -c."""
    argv0 = "nginx: master process nginx -c /etc/nginx/nginx.conf -g " + "a { " * 3000
    p, _ = server(user, "listen", argv0=argv0)
    out, code = piped(["diagnose", "--pid", str(p.pid), "--target", "100000"])
    assert code in (0, 3) and b"RecursionError" not in out, out[-2000:]
    assert b"-g (command line): nested deeper than 32 blocks: not read" in out


def test_fake_haproxy_in_a_home_gets_no_command_naming_it(user):
    """A copy of Python named haproxy in the user's home, with -n 10: the fix raises
    maxconn but names nothing to run, only that its owner restarts it."""
    pw, _ = user
    p, _ = server(user, "listen", exe=fake_binary(user, "haproxy"), extra=("-n", "10"))
    out, code = piped(["diagnose", "--pid", str(p.pid), "--target", "1000"])
    text = out.decode()
    assert code == 3, text
    fix = text.split("\nfix:\n", 1)[1]
    assert fix.count(pw.pw_dir) == 0, fix
    assert f"restart it as its owner (uid {pw.pw_uid}) does" in fix, fix


def test_root_haproxy_of_a_trusted_binary_is_named_with_its_argv_quoted(real_server):
    """The other side of the rule: root's own HAProxy, run from the packaged root-owned
    binary, gets the command that starts it again (its argv, each word quoted)."""
    srv = real_server("haproxy", maxconn=100)
    out, code = piped(["diagnose", "--pid", str(srv.pid), "--target", "1000"])
    text = out.decode()
    assert code == 3, text
    fix = text.split("\nfix:\n", 1)[1]
    assert f"kill {srv.pid}, then start it again: {os.path.realpath('/usr/sbin/haproxy')} -db -f " \
           f"{srv.config}" in fix, fix
    assert "restart it as its owner" not in fix


@pytest.mark.parametrize("raw, shown", [
    ("plain words / paths:1", "plain words / paths:1"),
    ("\x1b]0;title\x07", r"\x1b]0;title\x07"),
    ("a\x9bb\x7f", r"a\x9bb\x7f"),                          # C1 CSI, DEL
    ("\u202eevil\u2066x\u2069\u200b", r"\u202eevil\u2066x\u2069\u200b"),
    ("line\u2028next\nthird\r\t", r"line\u2028next\nthird\r\t"),
    ("bad \udcff byte", r"bad \xff byte"),                 # os.fsdecode's undecodable byte
    ("[bold]ünïcode ok[/bold]", "[bold]ünïcode ok[/bold]"),
])
def test_safe_text_escapes_what_moves_a_terminal(raw, shown):
    from tuner.host.trust import safe_text

    assert safe_text(raw) == shown


def test_safe_text_cuts_long_strings_with_a_marker():
    from tuner.host.trust import safe_text

    assert safe_text("x" * 1000, 10) == "x" * 10 + "…[990 more characters]"
    # The cut counts what is printed: an escape is four characters of it, never split.
    assert safe_text("\x1b" * 5, 10) == r"\x1b\x1b" + "…[3 more characters]"


@pytest.mark.parametrize("path, unit", [
    ("/system.slice/nginx.service", "nginx.service"),
    ("/system.slice/app.service/worker.service", "app.service"),      # a delegated subtree's name: not it
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service", None),
    ("/system.slice/x;reboot.service", None),
    ("/user.slice/user-1000.slice/session-3.scope", None),
])
def test_a_fix_names_only_a_unit_the_system_manager_made(path, unit):
    """Pure: the rule on cgroup paths (this host has no systemd to make such cgroups)."""
    from tuner.diagnose.service import system_unit

    assert system_unit(path) == unit
