"""Redis's own cap (tuner/apps/redis.py) against real redis-server (tests/realservers.py):
predicted by the adapter, then measured by opening connections and sending each a PING
until Redis refuses ("-ERR max number of clients reached"); after the fix the adapter
prints is applied, measured again."""
from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess

import pytest

from conftest import run_tuner
from tuner.apps import base, find, redis

PING = b"*1\r\n$4\r\nPING\r\n"


pytestmark = pytest.mark.usefixtures("nofile_raised")


def measure(srv, n: int, password: str = "") -> int:
    """Connections Redis serves at once: open n, PING each in turn (after AUTH when it
    wants a password), count the answered (the rest get Redis's refusal and are closed)."""
    request, expected = PING, b"+PONG\r\n"
    if password:
        request = redis.command("AUTH", password) + PING
        expected = b"+OK\r\n" + expected
    held = []
    try:
        for _ in range(n):
            s = socket.create_connection((srv.host, srv.port), timeout=5)
            held.append(s)
            s.sendall(request)
            answer = b""
            while len(answer) < len(expected) and not answer.startswith(b"-"):
                chunk = s.recv(256)
                if not chunk:
                    break
                answer += chunk
            if answer != expected:
                assert b"max number of clients" in answer, answer
                return len(held) - 1
        return len(held)
    finally:
        for s in held:
            s.close()


def near(measured: int, predicted: int) -> bool:
    return abs(measured - predicted) <= max(3, predicted // 100)


def read(srv) -> base.AppCap:
    view = base.view(srv.pid, [(h, srv.port) for h in srv.hosts])
    assert find(view) is redis.ADAPTER
    return redis.ADAPTER.read(view)


def test_maxclients_600_read_from_the_server_then_raised_live(real_server):
    srv = real_server("redis", maxclients=600, nofile=4096)
    cap = read(srv)
    assert (cap.allows, cap.sureness) == (600, base.READ), cap
    assert cap.where.startswith("INFO clients over 127.0.0.1:"), cap.where
    measured = measure(srv, 700)
    assert near(measured, cap.allows), (measured, cap)
    # The fix it prints: CONFIG SET up to the descriptors it has (4,096 - 32), live.
    fix = cap.fix
    assert fix and fix.action == base.RELOAD and fix.lines == ["maxclients 4064"], fix
    assert fix.nofile == 4096
    # A shell command: CONFIG SET, then CONFIG REWRITE into the file INFO server names.
    subprocess.run(["sh", "-c", fix.command], check=True, capture_output=True, timeout=30)
    again = read(srv)
    assert again.allows == 4064, again
    measured = measure(srv, 4200)
    assert near(measured, 4064), measured


def test_default_maxclients_lowered_to_nofile_minus_32_then_restarted_higher(real_server):
    srv = real_server("redis", nofile=(1024, 1024))
    cap = read(srv)
    assert cap.allows == 992 and "1,024 - 32" in cap.why, cap
    measured = measure(srv, 1100)
    assert near(measured, 992), measured
    # Redis's default (10,000) needs 10,032 descriptors: beyond the hard limit, a restart.
    fix = cap.fix
    assert fix and fix.action == base.RESTART and fix.lines == ["maxclients 10000"], fix
    assert fix.nofile == 10032 and "10032" in fix.command, fix
    srv.stop()
    srv = real_server("redis", maxclients=10000, nofile=fix.nofile)
    again = read(srv)
    assert again.allows == 10000, again
    measured = measure(srv, 10100)
    assert near(measured, 10000), measured


def test_password_protected_says_it_could_not_read_and_how_to_tell_tuner(real_server):
    srv = real_server("redis", maxclients=600, requirepass="s3cret", nofile=4096)
    cap = read(srv)
    assert cap.allows is None and cap.sureness == base.UNKNOWN, cap
    assert any("NOAUTH" in u and "password" in u for u in cap.unread), cap.unread
    assert "--app-limit N" in cap.why, cap.why


def test_config_file_read_when_the_server_wants_a_password(real_server):
    """With `set-proc-title no` the config file stays on the command line: read under the
    trust rules (root-owned, not writable by others), maxclients from its line."""
    srv = real_server("redis", maxclients=700, requirepass="s3cret", nofile=4096,
                      args=["--set-proc-title", "no"])
    cap = read(srv)
    line = next(n for n, l in enumerate(open(srv.config).read().splitlines(), 1) if l.startswith("maxclients"))
    assert (cap.allows, cap.sureness, cap.where) == (700, base.READ, f"{srv.config}:{line}"), cap
    assert any("NOAUTH" in u for u in cap.unread), cap.unread
    measured = measure(srv, 800, password="s3cret")
    assert near(measured, 700), measured


def test_config_file_writable_by_others_is_not_read(real_server):
    srv = real_server("redis", maxclients=700, requirepass="s3cret", nofile=4096,
                      args=["--set-proc-title", "no"])
    os.chmod(srv.config, 0o666)
    cap = read(srv)
    assert cap.allows is None, cap
    assert any(srv.config in u and "writable by others" in u for u in cap.unread), cap.unread
    assert stat.S_IMODE(os.stat(srv.config).st_mode) == 0o666   # read, never changed


# ---------------------------------------------------------------- through tuner diagnose

def diagnose(srv, *args) -> dict:
    out = run_tuner("diagnose", "--port", srv.port, *args, "--json")
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def test_diagnose_predicts_maxclients_600_and_names_it(real_server):
    srv = real_server("redis", maxclients=600, nofile=4096)
    d = diagnose(srv)
    assert d["max_connections"] == 600, d["verdict"]
    assert d["binding_limit"].startswith("redis maxclients 600 (INFO clients over"), d["binding_limit"]
    assert d["application"]["sureness"] == base.READ
    assert near(measure(srv, 700), d["max_connections"])


def test_diagnose_predicts_992_under_nofile_1024_and_prints_the_restart(real_server):
    srv = real_server("redis", nofile=(1024, 1024))
    d = diagnose(srv)
    assert d["max_connections"] == 992 and d["binding_limit"].startswith("redis maxclients 992"), d["verdict"]
    app_fix = next(f for f in d["fix"] if f["kind"] == "application")
    assert "maxclients" in app_fix["text"] and "restart" in app_fix["text"], app_fix
    # Not one command: the config line to write, then the restart (issue 28).
    assert app_fix["command"] is None and any(l.startswith("maxclients ") for l in app_fix["lines"]), app_fix
    assert near(measure(srv, 1100), 992)


def test_diagnose_of_a_password_protected_redis_is_an_upper_bound_until_told(real_server):
    srv = real_server("redis", maxclients=600, requirepass="s3cret", nofile=4096)
    d = diagnose(srv)
    assert d["application"]["allows"] is None and "--app-limit" in d["verdict"], d["verdict"]
    assert d["max_connections"] > 600                     # the descriptors: an upper bound
    told = diagnose(srv, "--app-limit", 600)
    assert told["max_connections"] == 600 and told["application"]["sureness"] == base.GIVEN
    assert near(measure(srv, 700, password="s3cret"), 600)


def test_a_full_redis_refusing_the_question_says_it_is_full(real_server):
    srv = real_server("redis", maxclients=5, nofile=4096)
    held = [socket.create_connection((srv.host, srv.port), timeout=5) for _ in range(5)]
    try:
        for s in held:
            s.sendall(PING)
            assert s.recv(64) == b"+PONG\r\n"
        cap = read(srv)
        assert cap.allows is None and any("is full" in u for u in cap.unread), cap
    finally:
        for s in held:
            s.close()


def test_apply_pid_plans_a_listening_redis_as_a_server_and_names_its_cap(real_server, jpath):
    """apply --pid P --target 5000 --dry-run on a Redis started with maxclients 600: the
    role is the server's (it listens; told so), and the plan says maxclients 600 stops it
    at 600 whatever apply changes, with Redis's own fix (issue 28: it planned the loopback
    role and said nothing of maxclients)."""
    srv = real_server("redis", maxclients=600, nofile=4096)
    out = run_tuner("apply", "--pid", srv.pid, "--target", 5000, "--dry-run", "--journal", jpath, "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["plan"]["role"] == "server" and f"pid {srv.pid} listens on port {srv.port}" in d["role_chosen"]
    assert d["application"]["allows"] == 600 and "maxclients 600" in d["application"]["knob"]
    assert "maxclients" in d["application"]["fix"]
    text = run_tuner("apply", "--pid", srv.pid, "--target", 5000, "--dry-run", "--journal", jpath).stdout
    assert f"role server: pid {srv.pid} listens on port {srv.port}" in " ".join(text.split())
    assert "not reachable while the application's cap binds" in text and "holds 600, below the target 5,000" in text
    # Told otherwise, the role is the user's.
    told = json.loads(run_tuner("apply", "--pid", srv.pid, "--target", 5000, "--role", "loopback", "--dry-run",
                                "--journal", jpath, "--json").stdout)
    assert told["plan"]["role"] == "loopback" and told["role_chosen"] is None


def test_under_a_hard_limit_the_fix_is_the_most_that_fits_set_live(real_server):
    # nofile 2,000:2,000 and a target of 5,000: 5,032 descriptors are refused by its hard
    # limit, so the fix is maxclients 2,000 - 32, live, and it says what the rest needs.
    srv = real_server("redis", maxclients=1000, nofile=(2000, 2000))
    d = diagnose(srv, "--target", 5000)
    fix = d["application"]["fix"]
    assert (fix["lines"], fix["action"], fix["allows"]) == (["maxclients 1968"], "reload", 1968), fix
    assert fix["file"] == srv.config, fix                      # from INFO server's config_file
    assert fix["command"] == (f"redis-cli -p {srv.port} CONFIG SET maxclients 1968 && "
                              f"redis-cli -p {srv.port} CONFIG REWRITE"), fix
    assert "5,000 needs a hard RLIMIT_NOFILE of 5,032" in fix["why"], fix
    subprocess.run(["sh", "-c", fix["command"]], check=True, capture_output=True, timeout=30)
    assert near(measure(srv, 2100), 1968)
    with open(srv.config) as f:
        assert "maxclients 1968" in f.read()


def test_a_config_file_gone_since_the_start_is_said_so(real_server):
    srv = real_server("redis", maxclients=600, nofile=4096)
    os.rename(srv.config, srv.config + ".moved")
    cap = read(srv)
    assert cap.allows == 600 and any("config_file" in u and "does not exist" in u for u in cap.unread), cap
    assert cap.fix.file is None and "put the line in its config file too" in cap.fix.why, cap.fix


def test_the_listen_backlog_fix_is_redis_own_setting(real_server):
    """A target past Redis's listen backlog: the fix names tcp-backlog, its own setting,
    not a listen(fd, N) no Redis user can call (issue 28)."""
    srv = real_server("redis", maxclients=6000, nofile=8192)
    d = diagnose(srv, "--target", 5000)
    backlog = [f for f in d["fix"] if "listen backlog" in f["text"]]
    assert backlog and backlog[0]["text"].startswith("Redis: tcp-backlog N in its config"), d["fix"]
    assert backlog[0]["command"] is None     # words for a person, not a command
    # Every fix's command is a shell command that runs as written, or absent (issue 28).
    for f in d["fix"]:
        assert f["command"] is None or shlex.split(f["command"])[0] in ("tuner", "sysctl", "echo", "ip", "prlimit"), f
    assert "listen(fd, N)" not in json.dumps(d["fix"])


def test_a_fix_names_the_config_file_redis_says_not_an_argument(monkeypatch):
    """Where Redis answered INFO that it runs without a config file, an absolute first
    argument on its command line (a script a hostile 'redis-server' runs under an
    interpreter: a fake, since a real Redis retitles itself) is not named as its config
    file, nor does the fix promise CONFIG REWRITE keeps it; the command line is the
    fallback only when Redis could not be asked."""
    from tuner.apps import redis
    from tuner.apps.base import ProcView

    proc = ProcView(pid=1, ppid=0, name="redis-server", exe="/usr/bin/python3",
                    cmdline=("python3", "/home/u/redis-server", "--port", "7000"), uid=1000, gid=1000,
                    nofile_soft=1024, nofile_hard=1024, netns_inode=None)
    for said, named in ((redis.NO_FILE, None), ("/etc/redis/redis.conf", "/etc/redis/redis.conf"),
                        (None, "/home/u/redis-server")):
        monkeypatch.setattr(redis, "config_from_info", lambda *a, said=said: said)
        assert redis.config_file(proc, 7000, []) == named
    monkeypatch.setattr(redis, "config_from_info", lambda *a: redis.NO_FILE)
    fix = redis.clients_fix(100, 2000.0, redis.config_file(proc, 7000, []), 7000)
    assert "CONFIG REWRITE" not in fix.command and fix.file is None
