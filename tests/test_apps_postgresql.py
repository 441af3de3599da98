"""PostgreSQL's own cap (tuner/apps/postgresql.py) against a real PostgreSQL 15 (initdb in a
temp dir as the postgres user, tests/realservers.py): predicted from its data directory
and command line, measured by opening connections as an ordinary role and counting the
startups PostgreSQL answers with ReadyForQuery; after the printed fix (max_connections,
restart), measured again."""
from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import time

import realservers
from conftest import run_tuner
from tuner.apps import base, find, postgresql

AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]

ROLE = "tuner_app"


def startup(host: str, port: int) -> socket.socket:
    body = struct.pack("!I", 196608) + f"user\0{ROLE}\0database\0postgres\0\0".encode()
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    return s


def answered(s: socket.socket) -> bool:
    """True at ReadyForQuery ('Z'), False at an ErrorResponse ('E': too many clients)."""
    buf = b""
    while True:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
            chunk = s.recv(4096)
            if not chunk:
                return False
            buf += chunk
        kind, size = buf[:1], struct.unpack("!I", buf[1:5])[0]
        message, buf = buf[:1 + size], buf[1 + size:]
        if kind == b"Z":
            return True
        if kind == b"E":
            assert b"too many clients" in message or b"reserved" in message, message
            return False


def measure(srv, n: int) -> int:
    held = []
    try:
        for _ in range(n):
            s = startup(srv.host, srv.port)
            held.append(s)
            if not answered(s):
                return len(held) - 1
        return len(held)
    finally:
        for s in held:
            s.close()


def psql(srv, sql: str) -> None:
    subprocess.run(AS_POSTGRES + [os.path.join(realservers.PG_BIN, "psql"), "-h", srv.extra["socket_dir"], "-p", str(srv.port),
                    "-U", "postgres", "-d", "postgres", "-qAtc", sql], check=True, capture_output=True,
                   timeout=60)


def read(srv) -> base.AppCap:
    view = base.view(srv.pid, [(h, srv.port) for h in srv.hosts])
    assert find(view) is postgresql.ADAPTER
    assert not any(find(c) is postgresql.ADAPTER for c in view.children)   # its backends are not
    return postgresql.ADAPTER.read(view)


def near(measured: int, predicted: int) -> bool:
    return abs(measured - predicted) <= max(3, predicted // 100)


def test_max_connections_less_reserved_predicted_measured_then_raised(real_server):
    srv = real_server("postgres", max_connections=20, superuser_reserved_connections=3)
    psql(srv, f"CREATE ROLE {ROLE} LOGIN")
    cap = read(srv)
    assert (cap.allows, cap.sureness) == (17, base.READ), cap
    assert cap.where == f"command line of pid {srv.pid}", cap.where
    out = run_tuner("diagnose", "--port", srv.port, "--json")
    d = json.loads(out.stdout)
    assert d["max_connections"] == 17 and d["binding_limit"] == cap.label, d["verdict"]
    measured = measure(srv, 30)
    assert near(measured, cap.allows), (measured, cap)
    # The printed fix: max_connections on its command line, a restart.
    fix = cap.fix
    assert fix.action == base.RESTART and fix.nofile is None, fix
    want = int(re.fullmatch(r"max_connections = (\d+)", fix.lines[0]).group(1))
    assert want - 3 == fix.allows > cap.allows, fix
    srv.stop()
    srv = real_server("postgres", max_connections=want, superuser_reserved_connections=3)
    psql(srv, f"CREATE ROLE {ROLE} LOGIN")
    again = read(srv)
    assert again.allows == fix.allows, again
    measured = measure(srv, fix.allows + 10)
    assert near(measured, fix.allows), measured


def postgres_from_files(max_connections: int, reserved: int):
    """PostgreSQL 15 whose caps are in postgresql.conf, not on its command line (realservers
    passes them as -c): initdb as the postgres user, the settings appended to the file."""
    d, hosts, port = realservers._prepare("postgres", ("127.0.0.1",), None, None, owner="postgres")
    data = os.path.join(d, "data")
    subprocess.run(AS_POSTGRES + [os.path.join(realservers.PG_BIN, "initdb"), "-D", data, "-A", "trust",
                                  "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"],
                   check=True, capture_output=True, timeout=120)
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"max_connections = {max_connections}\nsuperuser_reserved_connections = {reserved}\n"
                f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{d}'\n")
    srv = realservers.start("postgres", [os.path.join(realservers.PG_BIN, "postgres"), "-D", data],
                            port=port, hosts=hosts, config=os.path.join(data, "postgresql.conf"), dir=d,
                            user="postgres", stop_signal=signal.SIGINT, ready=realservers._postmaster_ready)
    srv.extra.update(data=data, socket_dir=d)
    return srv


def as_postgres_write(path: str, text: str, mode: str = "a") -> None:
    with open(path, mode) as f:
        f.write(text)
    uid = pwd.getpwnam("postgres").pw_uid
    os.chown(path, uid, uid)


def test_files_includes_auto_conf_then_command_line_in_postgres_order():
    """postgresql.conf with include_dir (conf.d) and include_if_exists of a missing file;
    postgresql.auto.conf (ALTER SYSTEM) after it; a file another user can write is named
    as not read."""
    srv = postgres_from_files(30, 3)
    try:
        data = srv.extra["data"]
        confd = os.path.join(data, "conf.d")
        os.mkdir(confd, 0o700)
        os.chown(confd, pwd.getpwnam("postgres").pw_uid, -1)
        as_postgres_write(os.path.join(confd, "10-more.conf"), "superuser_reserved_connections = 5   # conf.d\n", "w")
        as_postgres_write(os.path.join(data, "postgresql.conf"), "include_dir 'conf.d'\ninclude_if_exists 'absent.conf'\n")
        cap = read(srv)
        assert cap.allows == 25 and "10-more.conf:1" in cap.why, cap
        assert cap.where.endswith("postgresql.conf:" + str(len(open(srv.config).read().splitlines()) - 6)), cap.where
        time.sleep(1.1)              # postmaster.pid has the start time in whole seconds
        as_postgres_write(os.path.join(data, "postgresql.auto.conf"), "max_connections = '40'\n")
        cap = read(srv)
        assert cap.allows == 35 and "postgresql.auto.conf:" in cap.where, cap
        assert cap.fix.lines[0].startswith("ALTER SYSTEM SET max_connections = "), cap.fix
        assert any("changed after the server started" in n for n in cap.notes), cap.notes
        os.chmod(os.path.join(confd, "10-more.conf"), 0o666)
        cap = read(srv)
        assert any("10-more.conf" in u and "writable by others" in u for u in cap.unread), cap.unread
        assert cap.allows == 37       # 40 - the default 3: what it could read, and it says what not
    finally:
        srv.stop()


def test_command_line_wins_over_the_files(real_server):
    srv = real_server("postgres", max_connections=20, superuser_reserved_connections=2)
    as_postgres_write(os.path.join(srv.extra["data"], "postgresql.auto.conf"), "max_connections = 50\n")
    cap = read(srv)
    assert cap.allows == 18 and cap.where == f"command line of pid {srv.pid}", cap
    assert "command line" in cap.fix.why, cap.fix
