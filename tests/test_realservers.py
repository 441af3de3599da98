"""tests/realservers.py starts real servers that answer, with the cap and the descriptor
limit asked for, and stop() leaves no process: each proved by a real exchange over a socket."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

import pytest

import mqtthold
from realservers import haproxy_command, process_group

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="servers run under prlimit/setpriv as root")


def recv_until(sock: socket.socket, marker: bytes, start: bytes = b"") -> bytes:
    data = start
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}; got {data!r}")
        data += chunk
    return data


def http_get(sock: socket.socket, path: str = "/") -> tuple:
    """One HTTP/1.1 keep-alive GET on sock: (status, body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = recv_until(sock, b"\r\n\r\n")
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def nofile_of(pid: int) -> tuple:
    with open(f"/proc/{pid}/limits") as f:
        line = next(l for l in f if l.startswith("Max open files"))
    return tuple(int(x) for x in line.split()[3:5])


def assert_stops(srv) -> None:
    pid, port = srv.pid, srv.port
    srv.stop()
    assert process_group(pid) == [], "stop() left processes of the server's group"
    with pytest.raises(OSError):
        srv.connect(timeout=1).close()
    assert not os.path.exists(srv.dir)


def test_nginx_answers_with_its_workers_and_limits(real_server):
    srv = real_server("nginx", workers=2, worker_connections=64, worker_rlimit_nofile=300, nofile=1024)
    for host in ("127.0.0.1", "::1"):
        with srv.connect(host) as s:
            assert http_get(s) == (200, b"ok\n")
            assert http_get(s) == (200, b"ok\n"), "keep-alive: a second request on the same connection"
    workers = srv.children()
    assert len(workers) == 2
    assert nofile_of(srv.pid) == (1024, 1024)
    assert all(nofile_of(w) == (300, 300) for w in workers), "worker_rlimit_nofile sets the workers' limit"
    assert "worker_connections 64;" in open(srv.config).read()
    assert_stops(srv)


def test_nginx_as_debian_ships_it(real_server):
    srv = real_server("nginx-packaged", nofile=4096)
    conf = open(srv.config).read()
    assert "worker_connections 768;" in conf and "worker_processes auto;" in conf
    with srv.connect() as s:
        assert http_get(s) == (200, b"ok\n")
    assert len(srv.children()) == os.cpu_count(), "worker_processes auto: one per CPU"
    assert_stops(srv)


def test_redis_pongs_and_refuses_beyond_maxclients(real_server):
    srv = real_server("redis", maxclients=3, nofile=4096)
    held = [srv.connect() for _ in range(3)]
    for s in held:
        s.sendall(b"PING\r\n")
        assert recv_until(s, b"\r\n") == b"+PONG\r\n"
    with srv.connect("::1") as extra:
        assert recv_until(extra, b"\r\n").startswith(b"-ERR max number of clients reached")
    for s in held:
        s.close()
    assert_stops(srv)


def test_redis_lowers_default_maxclients_under_a_low_nofile(real_server):
    srv = real_server("redis", nofile=1024)
    with srv.connect() as s:
        s.sendall(b"CONFIG GET maxclients\r\n")
        answer = recv_until(s, b"\r\n", recv_until(s, b"maxclients\r\n"))
        while answer.count(b"\r\n") < 5:
            answer += s.recv(100)
    assert answer.split(b"\r\n")[4] == b"992", "Redis keeps 32 descriptors: 1,024 - 32"
    assert_stops(srv)


def test_mosquitto_caps_each_listener_and_closes_beyond(real_server):
    # Each `listener` block counts its own clients (net.c: client_count > max_connections).
    srv = real_server("mosquitto", max_connections=3, nofile=4096)
    assert nofile_of(srv.pid) == (4096, 4096)
    assert mqtthold.held(srv, 5).held == 3
    v6 = real_server("mosquitto", max_connections=2, hosts=("::1",), nofile=4096)
    got = mqtthold.held(v6, 4)
    assert (got.held, got.codes.get(0)) == (2, 2), got
    assert_stops(srv)


def test_mosquitto_without_a_cap_stops_at_its_descriptors(real_server):
    # Without max_connections, accept() failing with EMFILE stops it; Debian's build asks
    # libwrap about each new connection, which opens /etc/hosts.allow: one descriptor
    # more than the connection itself ("denied access by tcpd" in its log past it).
    srv = real_server("mosquitto", nofile=200, hosts=("127.0.0.1",))
    at_rest = len(os.listdir(f"/proc/{srv.pid}/fd"))
    assert mqtthold.held(srv, 260).held == 200 - at_rest - 1
    with open(os.path.join(srv.dir, "server.log"), errors="replace") as f:
        assert "denied access by tcpd" in f.read()
    assert_stops(srv)


def test_haproxy_answers_and_reports_its_maxconn(real_server):
    srv = real_server("haproxy", maxconn=700, frontend_maxconn=500, stats_socket=True, nofile=4096)
    with srv.connect("::1") as s:
        assert http_get(s) == (200, b"ok")
        assert http_get(s) == (200, b"ok")
    info = haproxy_command(srv, "show info")
    assert "Maxconn: 700" in info and "Ulimit-n:" in info
    assert_stops(srv)


def test_haproxy_without_maxconn_computes_its_own(real_server):
    srv = real_server("haproxy", stats_socket=True, nofile=4096)
    info = dict(l.split(": ", 1) for l in haproxy_command(srv, "show info").splitlines() if ": " in l)
    assert 0 < int(info["Maxconn"]) < 4096, "derived from the descriptor limit"
    assert_stops(srv)


def ws_handshake(sock: socket.socket, protocol: str = None) -> tuple:
    """The RFC 6455 opening handshake: (status line, headers, bytes after them)."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else ""
    sock.sendall((f"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head, rest = recv_until(sock, b"\r\n\r\n").split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert headers["sec-websocket-accept"] == accept.decode()
    return lines[0], headers, rest


def test_ws_server_handshakes_pongs_and_closes_beyond_its_cap(real_server):
    srv = real_server("ws", max_open=1, close_code=1013, close_reason="full", protocol="chat", nofile=2048)
    first = srv.connect()
    status, headers, _ = ws_handshake(first, "chat")
    assert status.startswith("HTTP/1.1 101") and headers["sec-websocket-protocol"] == "chat"
    first.sendall(b"\x89\x80" + os.urandom(4))          # a masked ping, no payload
    assert recv_until(first, b"\x8a\x00")[:2] == b"\x8a\x00"
    with srv.connect("::1") as second:
        status, _, rest = ws_handshake(second)
        frame = recv_until(second, b"full", rest)
    assert status.startswith("HTTP/1.1 101")
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1013 and frame[4:] == b"full"
    first.close()
    assert nofile_of(srv.pid) == (2048, 2048)
    assert_stops(srv)


def test_postgres_answers_as_its_own_user(real_server):
    srv = real_server("postgres", max_connections=20, superuser_reserved_connections=2, nofile=1024)
    with srv.connect() as s:
        s.sendall(struct.pack("!II", 8, 80877103))     # SSLRequest
        assert s.recv(1) == b"N", "no SSL configured: the server says N"
        params = b"user\0postgres\0database\0postgres\0\0"
        s.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        answer = recv_until(s, b"R")
        while len(answer) < 9:
            answer += s.recv(9 - len(answer))
        assert answer[:1] == b"R" and struct.unpack("!I", answer[5:9])[0] == 0, "trust: AuthenticationOk"
    with open(f"/proc/{srv.pid}/status") as f:
        uid = next(l for l in f if l.startswith("Uid:")).split()[1]
    assert int(uid) != 0
    assert "max_connections=20" in open(os.path.join(srv.extra["data"], "postmaster.opts")).read()
    assert_stops(srv)


def test_a_server_inside_a_namespace(real_server, netns):
    srv = real_server("redis", maxclients=10, netns=netns)
    with srv.connect() as s:
        s.sendall(b"PING\r\n")
        assert recv_until(s, b"\r\n") == b"+PONG\r\n"
    assert os.readlink(f"/proc/{srv.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert_stops(srv)


def test_a_server_that_fails_to_start_leaves_nothing(real_server):
    with pytest.raises(RuntimeError, match="exited"):
        real_server("nginx", worker_connections=1)
