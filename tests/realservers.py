"""Real servers that none of us wrote, started by a test and stopped even when it fails.

nginx, redis-server, haproxy, PostgreSQL 15, Mosquitto and a Node WebSocket server on the real `ws`
package (tests/servers/node/ws_server.js), each with its own config in a temp dir, a known
cap and a known RLIMIT_NOFILE, on 127.0.0.1/::1 or inside a network namespace:

    def test_x(real_server):                      # the fixture stops what it started
        srv = real_server("nginx", workers=2, worker_connections=512, nofile=4096)
        sock = srv.connect()                      # in srv.netns when it has one
        srv.pid, srv.port, srv.config

or, outside pytest, `with nginx(workers=2) as srv: ...`.

One core (start: run, wait until it listens, stop the whole process group) and a small
config writer per server. A binary that is missing is installed from Debian's packages
when we are root (services kept from starting by a policy-rc.d that exits 101), `ws` by
npm into tests/servers/node/; what cannot be had skips the test with the reason (and
under CI a skip is a failure: tests/conftest.py).
"""
from __future__ import annotations

import base64
import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import pytest

from tuner.host import netns as netns_home

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "servers", "node")
PG_BIN = "/usr/lib/postgresql/15/bin"
LOOPBACK = ("127.0.0.1", "::1")
POLICY_RC_D = "/usr/sbin/policy-rc.d"

# What a test may need -> (where Debian puts it, the Debian package that has it).
PACKAGES = {
    "nginx": ("/usr/sbin/nginx", "nginx"),
    "redis-server": ("/usr/bin/redis-server", "redis-server"),
    "haproxy": ("/usr/sbin/haproxy", "haproxy"),
    "postgres": (f"{PG_BIN}/postgres", "postgresql-15"),
    "initdb": (f"{PG_BIN}/initdb", "postgresql-15"),
    "node": ("/usr/bin/node", "nodejs"),
    "npm": ("/usr/bin/npm", "npm"),
    "promtool": ("/usr/bin/promtool", "prometheus"),
    "groff": ("/usr/bin/groff", "groff-base"),
    "javac": ("/usr/bin/javac", "default-jdk-headless"),
    "java": ("/usr/bin/java", "default-jdk-headless"),
    "go": ("/usr/bin/go", "golang-go"),
    "erl": ("/usr/bin/erl", "erlang-base"),
    "erlc": ("/usr/bin/erlc", "erlang-base"),
    "mosquitto": ("/usr/sbin/mosquitto", "mosquitto"),
    "gcc": ("/usr/bin/gcc", "gcc"),            # tests/test_trust.py's pause() program
    "strace": ("/usr/bin/strace", "strace"),   # what root opened (tests/test_trust.py)
}

_apt_updated = False
_install_lock = threading.Lock()


# --- having the binary -------------------------------------------------------------------

def _found(name: str) -> Optional[str]:
    path = PACKAGES.get(name, (None,))[0]
    if path and os.access(path, os.X_OK):
        return path
    return shutil.which(name)


class _ServicesKeptDown:
    """A policy-rc.d that exits 101 while packages install (their services must not start),
    put in place only when there is none, and removed after."""

    def __enter__(self):
        self.made = not os.path.lexists(POLICY_RC_D)
        if self.made:
            with open(POLICY_RC_D, "w") as f:
                f.write("#!/bin/sh\n# tests/realservers.py: no service starts while tests install\nexit 101\n")
            os.chmod(POLICY_RC_D, 0o755)

    def __exit__(self, *exc):
        if self.made:
            os.unlink(POLICY_RC_D)


def apt_install(*packages: str) -> None:
    """apt-get install PACKAGES (apt-get update once per session first), services kept down."""
    global _apt_updated
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with _install_lock, _ServicesKeptDown():
        if not _apt_updated:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True, timeout=600)
            _apt_updated = True
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                       env=env, capture_output=True, check=True, timeout=1200)


def need(name: str) -> str:
    """The path of binary `name`, installed from its Debian package when missing and we are
    root; skips the test (with the reason) when it cannot be had."""
    path = _found(name)
    if path:
        return path
    package = PACKAGES.get(name, (None, None))[1]
    if package is None:
        pytest.skip(f"{name} is not installed and tests/realservers.py knows no package for it")
    if os.geteuid() != 0:
        pytest.skip(f"{name} is not installed; installing it (apt-get install {package}) needs root")
    try:
        apt_install(package)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()[-3:]
        pytest.skip(f"{name}: apt-get install {package} failed: {e} {' '.join(detail)}")
    path = _found(name)
    if not path:
        pytest.skip(f"{name}: apt-get install {package} succeeded but {name} is still not there")
    return path


def need_ws() -> str:
    """The Node `ws` package in tests/servers/node/node_modules (npm ci from the lock file)."""
    need("node")
    if not os.path.exists(os.path.join(NODE_DIR, "node_modules", "ws", "package.json")):
        npm = need("npm")
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"npm ci in {NODE_DIR} failed: {proc.stderr.strip()[-300:]}")
    return NODE_DIR


# --- network namespaces: tuner's own home for entering one ------------------------------

def in_netns(name: Optional[str], fn: Callable):
    """fn() run inside network namespace `name` (None: here). A socket keeps the namespace
    it was made in, so fn may return sockets made there."""
    with netns_home.in_netns(name):
        return fn()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(hosts: Sequence[str] = LOOPBACK, netns: Optional[str] = None) -> int:
    """A TCP port free on every one of hosts (in netns): bound, checked, released."""
    def pick():
        for _ in range(50):
            socks = []
            try:
                first = socket.socket(_family(hosts[0]))
                socks.append(first)
                first.bind((hosts[0], 0))
                port = first.getsockname()[1]
                for host in hosts[1:]:
                    s = socket.socket(_family(host))
                    socks.append(s)
                    s.bind((host, port))
                return port
            except OSError:
                continue
            finally:
                for s in socks:
                    s.close()
        raise RuntimeError(f"no port free on all of {hosts}")
    return in_netns(netns, pick)


def connect(host: str, port: int, netns: Optional[str] = None, timeout: float = 5.0) -> socket.socket:
    """A TCP socket connected to host:port (made in netns when given)."""
    def make():
        s = socket.socket(_family(host))
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s
    return in_netns(netns, make)


# --- the core: one server process group ---------------------------------------------------

def process_group(pgid: int) -> list:
    """Live (not zombie) processes in process group pgid."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


@dataclass
class Server:
    """A server started by start(): pid is the master's (the process group's leader)."""
    name: str
    proc: subprocess.Popen
    port: int
    hosts: tuple
    config: str
    dir: str
    netns: Optional[str] = None
    stop_signal: int = signal.SIGTERM
    extra: dict = field(default_factory=dict)
    command: list = field(default_factory=list)   # what start() ran (its wrappers included)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def host(self) -> str:
        return self.hosts[0]

    def connect(self, host: Optional[str] = None, timeout: float = 5.0) -> socket.socket:
        return connect(host or self.host, self.port, self.netns, timeout)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def children(self) -> list:
        """The master's direct children (nginx workers, PostgreSQL's processes)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def stop(self, grace: float = 10.0, keep_dir: bool = False) -> None:
        """Stop the whole process group: its own stop signal, then SIGKILL; remove the dir."""
        for sig, wait in ((self.stop_signal, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            if self._gone_within(wait):
                break
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop it and run the same command again (its config as the test left it, the
        same wrappers and limits), in place: a fix that says "restart" done as an operator
        would; pid is the new process's."""
        self.stop(keep_dir=True)
        with open(os.path.join(self.dir, "server.log"), "ab") as log:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        _wait_listening(self, None, timeout)

    def _gone_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None or process_group(self.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _proc_net_hex(host: str) -> str:
    """host as /proc/net/tcp{,6} writes it: each 32-bit word in host byte order, in hex."""
    packed = socket.inet_pton(_family(host), host)
    return "".join("%08X" % struct.unpack("=I", packed[i:i + 4])[0] for i in range(0, len(packed), 4))


def _listening(srv: Server) -> bool:
    """Every host:port in LISTEN, read from the server's own /proc/PID/net (its namespace).
    Not by connecting: a probe connection would take one of the slots a test counts
    (Redis still counted two closed ones against maxclients 3 when the test connected)."""
    if srv.netns and os.stat(f"/proc/{srv.pid}/ns/net").st_ino != os.stat(os.path.join(netns_home.RUN_DIR, srv.netns)).st_ino:
        return False                     # `ip netns exec` has not entered it yet
    listening = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{srv.pid}/net/{table}") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            return False
        listening |= {row[1] for row in rows if row[3] == "0A"}
    return all(_listen_forms(h, srv.port) & listening for h in srv.hosts)


def _listen_forms(host: str, port: int) -> set:
    """How a listener on host:port shows in /proc/net/tcp{,6}: an IPv4 host also as its
    v4-mapped IPv6 address (a JVM listens on an IPv6 socket bound to ::ffff:127.0.0.1)."""
    forms = {_proc_net_hex(host)}
    if _family(host) == socket.AF_INET:
        forms.add(_proc_net_hex("::ffff:" + host))
    return {f"{x}:{port:04X}" for x in forms}


def workdir(name: str, owner: Optional[str] = None) -> str:
    """A temp dir for one server's config, logs and data (0755: workers that drop
    privileges may need to reach into it), owned by `owner` when given."""
    path = tempfile.mkdtemp(prefix=f"tuner-{name}-")
    os.chmod(path, 0o755)
    if owner:
        shutil.chown(path, owner, owner)
    return path


def _nofile_arg(nofile: Union[int, tuple]) -> str:
    soft, hard = (nofile, nofile) if isinstance(nofile, int) else nofile
    return f"--nofile={soft}:{hard}"


def start(name: str, argv: list, *, port: int, hosts: Sequence[str], config: str, dir: str,
          netns: Optional[str] = None, user: Optional[str] = None,
          nofile: Union[int, tuple, None] = None, stop_signal: int = signal.SIGTERM,
          ready: Optional[Callable[[Server], bool]] = None, timeout: float = 30.0) -> Server:
    """Run argv in its own process group (in netns, as user, with nofile as RLIMIT_NOFILE,
    each wrapper exec'ing in place so the pid is the server's), wait until it listens on
    every host (and ready(srv) holds), and return it; stopped again if it never does."""
    prefix = []
    if netns:
        prefix += ["ip", "netns", "exec", netns]
    if nofile is not None:
        prefix += ["prlimit", _nofile_arg(nofile), "--"]
    if user:
        prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
    with open(os.path.join(dir, "server.log"), "wb") as log:
        proc = subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=dir, start_new_session=True)
    srv = Server(name, proc, port, tuple(hosts), config, dir, netns, stop_signal, command=prefix + argv)
    try:
        _wait_listening(srv, ready, timeout)
    except BaseException:
        srv.stop()
        raise
    return srv


def _wait_listening(srv: Server, ready: Optional[Callable[[Server], bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (_listening(srv) and (ready is None or ready(srv))):
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{srv.name} exited {srv.proc.returncode} before listening: {srv.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{srv.name} not listening on {srv.hosts} port {srv.port} after "
                               f"{timeout}s: {srv.log()}")
        time.sleep(0.05)


def _prepare(name: str, hosts, port, netns, owner=None):
    d = workdir(name, owner)
    return d, tuple(hosts), port or free_port(hosts, netns)


def _write(path: str, text: str, owner: Optional[str] = None) -> str:
    with open(path, "w") as f:
        f.write(text)
    if owner:
        shutil.chown(path, owner, owner)
    return path


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- TLS: certificates made here, the way a test needs them ---------------------------------

@dataclass(frozen=True)
class Pair:
    cert: str
    key: str

    @property
    def combined(self) -> str:
        """cert and key in one PEM file beside them (HAProxy's `crt`)."""
        path = self.cert[:-len(".pem")] + "-combined.pem"
        if not os.path.exists(path):
            with open(path, "w") as out, open(self.cert) as c, open(self.key) as k:
                out.write(c.read() + k.read())
        return path


@dataclass(frozen=True)
class Certs:
    """A test CA and what it signed (each a Pair): `server` for localhost, 127.0.0.1 and
    ::1; `expired` the same names, expired yesterday; `other_name` for other.example only;
    `client` a client certificate (mutual TLS); `other_ca` a CA nobody trusts with a
    server certificate it signed (`stranger`, valid names)."""
    dir: str
    ca: str
    server: Pair
    expired: Pair
    other_name: Pair
    client: Pair
    other_ca: str
    stranger: Pair


LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def make_certs(d: str, rsa_bits: Optional[int] = None) -> Certs:
    """Self-signed CAs and the certificates a TLS test needs, written into d (the
    `cryptography` package: it can write the expired one); EC P-256 keys (fast), or RSA
    keys of rsa_bits (what most sites serve: the server's signature is the dear side)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem, cert, key):
        paths = Pair(os.path.join(d, stem + ".pem"), os.path.join(d, stem + "-key.pem"))
        _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM).decode())
        _write(paths.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode())
        os.chmod(paths.key, 0o644)      # servers that drop to their own user read it
        return paths

    def new_key():
        if rsa_bits:
            return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        return ec.generate_private_key(ec.SECP256R1())

    def ca(cn):
        key = new_key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - day)
                .not_valid_after(now + 30 * day).add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
                .sign(key, hashes.SHA256()))
        return cert, key

    def leaf(issuer, cn, names, before, after, usage):
        cert_ca, key_ca = issuer
        key = new_key()
        sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() or ":" in n else x509.DNSName(n)
                for n in names]
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(cert_ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(before).not_valid_after(after)
                .add_extension(x509.SubjectAlternativeName(sans), False)
                .add_extension(x509.ExtendedKeyUsage([usage]), False)
                .sign(key_ca, hashes.SHA256()))
        return cert, key

    root, other = ca("tuner test CA"), ca("a CA nobody trusts")
    ca_path, other_path = os.path.join(d, "ca.pem"), os.path.join(d, "other-ca.pem")
    _write(ca_path, root[0].public_bytes(serialization.Encoding.PEM).decode())
    _write(other_path, other[0].public_bytes(serialization.Encoding.PEM).decode())
    server = ExtendedKeyUsageOID.SERVER_AUTH
    return Certs(
        dir=d, ca=ca_path, other_ca=other_path,
        server=write("server", *leaf(root, "localhost", LOCAL_NAMES, now - day, now + 30 * day, server)),
        expired=write("expired", *leaf(root, "localhost", LOCAL_NAMES, now - 30 * day, now - day, server)),
        other_name=write("other-name", *leaf(root, "other.example", ("other.example",), now - day, now + 30 * day,
                                             server)),
        client=write("client", *leaf(root, "tuner client", ("tuner-client",), now - day, now + 30 * day,
                                     ExtendedKeyUsageOID.CLIENT_AUTH)),
        stranger=write("stranger", *leaf(other, "localhost", LOCAL_NAMES, now - day, now + 30 * day, server)))


@pytest.fixture(scope="session")
def tls_certs():
    """The certificates, in a directory servers that drop to their own user (Mosquitto)
    can read; removed after the session."""
    d = workdir("tls-certs")
    yield make_certs(d)
    shutil.rmtree(d, ignore_errors=True)


# --- nginx ----------------------------------------------------------------------------------

NGINX_SITE = """server {{
{listens}
    keepalive_timeout 3600s;
    keepalive_requests 1000000;
    location / {{
        default_type text/plain;
        return 200 "ok\\n";
    }}
}}
"""


def _nginx_site(hosts, port, tls: Optional[Pair] = None, client_ca: Optional[str] = None,
                extra: str = "") -> str:
    """The site: plain, or `listen ... ssl` with tls's certificate (client_ca: clients must
    present a certificate it signed); extra: more server-level lines."""
    ssl = " ssl" if tls else ""
    lines = [f"    listen {_addr(h, port)}{ssl};" for h in hosts]
    if tls:
        lines += [f"    ssl_certificate {tls.cert};", f"    ssl_certificate_key {tls.key};",
                  "    ssl_protocols TLSv1.2 TLSv1.3;"]
    if client_ca:
        lines += [f"    ssl_client_certificate {client_ca};", "    ssl_verify_client on;"]
    if extra:
        lines.append(extra)
    return NGINX_SITE.format(listens="\n".join(lines))


def nginx(*, workers: int = 1, worker_connections: int = 512, worker_rlimit_nofile: Optional[int] = None,
          hosts: Sequence[str] = LOOPBACK, port: Optional[int] = None, netns: Optional[str] = None,
          nofile: Union[int, tuple, None] = None, timeout: float = 30.0, tls: Optional[Pair] = None,
          client_ca: Optional[str] = None, site_extra: str = "", http_extra: str = "") -> Server:
    """nginx: `worker_processes workers; events { worker_connections C; }`, one location
    answering 200 "ok" with keep-alive; master in the foreground (daemon off), logs and pid
    file in its temp dir; ready when all its workers run.  tls: `listen ... ssl` with
    that certificate (client_ca: mutual TLS); site_extra / http_extra: more lines in the
    server / http block (a `location /ws` proxying WebSockets, ssl_buffer_size)."""
    binary = need("nginx")
    d, hosts, port = _prepare("nginx", hosts, port, netns)
    temp = "\n".join(f"    {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    rlimit = f"worker_rlimit_nofile {worker_rlimit_nofile};\n" if worker_rlimit_nofile else ""
    conf = _write(os.path.join(d, "nginx.conf"), f"""daemon off;
user www-data;
worker_processes {workers};
{rlimit}pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{
    worker_connections {worker_connections};
}}
http {{
    access_log {d}/access.log;
{temp}
{http_extra}
{_nginx_site(hosts, port, tls, client_ca, site_extra)}}}
""")
    return start("nginx", [binary, "-p", d + "/", "-e", f"{d}/error.log", "-c", conf], port=port,
                 hosts=hosts, config=conf, dir=d, netns=netns, nofile=nofile, timeout=timeout,
                 ready=lambda s: len(s.children()) >= workers)


def _absolute_modules(text: str, binary: str, d: str) -> str:
    """nginx.conf's `include .../modules-enabled/*.conf` copied into the temp dir with each
    relative `load_module modules/...` made absolute against nginx's own compiled prefix:
    under the test's `-p DIR/` a relative module path would be looked up in DIR (where
    Debian's nginx-light, or any libnginx-mod-* package, enables a module, the stock config
    failed to start in the tests, issue 28)."""
    version = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr
    prefix = re.search(r"--prefix=(\S+)", version)
    prefix = prefix.group(1) if prefix else "/usr/share/nginx"

    def expand(m):
        parts = []
        for path in sorted(glob.glob(m.group(2))):
            with open(path) as f:
                body = f.read()
            parts.append(re.sub(r"(?m)^(\s*load_module\s+)(?!/)([^;\s]+)", rf"\g<1>{prefix}/\g<2>", body))
        _write(os.path.join(d, "modules.conf"), "".join(parts))
        return f"{m.group(1)}include {d}/modules.conf;"
    return re.sub(r"(?m)^(\s*)include\s+(/etc/nginx/modules-enabled/\*\.conf);", expand, text)


def nginx_packaged(*, hosts: Sequence[str] = LOOPBACK, port: Optional[int] = None,
                   netns: Optional[str] = None, nofile: Union[int, tuple, None] = None,
                   timeout: float = 30.0) -> Server:
    """nginx as Debian ships it: a copy of /etc/nginx/nginx.conf (user www-data,
    worker_processes auto, worker_connections 768, ...) with only its pid and log paths
    moved into the temp dir and sites-enabled replaced by one site on our port."""
    binary = need("nginx")
    d, hosts, port = _prepare("nginx", hosts, port, netns)
    with open("/etc/nginx/nginx.conf") as f:
        text = f.read()
    site = _write(os.path.join(d, "site.conf"), _nginx_site(hosts, port))
    text = _absolute_modules(text, binary, d)
    for pattern, repl in ((r"(?m)^pid\s+[^;]+;", f"pid {d}/nginx.pid;"),
                          (r"(?m)^(\s*)error_log\s+[^;]+;", rf"\g<1>error_log {d}/error.log;"),
                          (r"(?m)^(\s*)access_log\s+[^;]+;", rf"\g<1>access_log {d}/access.log;"),
                          (r"(?m)^(\s*)include\s+/etc/nginx/sites-enabled/\*;", rf"\g<1>include {site};")):
        text, n = re.subn(pattern, repl, text)
        if n == 0:
            raise RuntimeError(f"/etc/nginx/nginx.conf has no line matching {pattern}")
    conf = _write(os.path.join(d, "nginx.conf"), text)
    return start("nginx", [binary, "-p", d + "/", "-e", f"{d}/error.log", "-c", conf, "-g", "daemon off;"],
                 port=port, hosts=hosts, config=conf, dir=d, netns=netns, nofile=nofile, timeout=timeout,
                 ready=lambda s: len(s.children()) >= 1)


# --- redis-server ---------------------------------------------------------------------------

def redis(*, maxclients: Optional[int] = None, requirepass: Optional[str] = None,
          hosts: Sequence[str] = LOOPBACK, port: Optional[int] = None, netns: Optional[str] = None,
          nofile: Union[int, tuple, None] = None, args: Sequence[str] = (), timeout: float = 30.0,
          tls: Optional[Pair] = None) -> Server:
    """redis-server with a config file in its temp dir: bind, port, maxclients (omitted: Redis's
    default 10,000, which Redis lowers to nofile - 32 at start), no persistence, optional
    requirepass; `args` are appended to its command line (the command line overrides the file).
    tls: `tls-port` on the port with that certificate (`port 0`: no plain listener; clients
    need no certificate)."""
    binary = need("redis-server")
    d, hosts, port = _prepare("redis", hosts, port, netns)
    listen = [f"port {port}"] if tls is None else [
        "port 0", f"tls-port {port}", f"tls-cert-file {tls.cert}", f"tls-key-file {tls.key}",
        f"tls-ca-cert-file {tls.cert}", "tls-auth-clients no"]
    lines = [*listen, f"bind {' '.join(hosts)}", 'save ""', "appendonly no", f"dir {d}",
             "daemonize no", 'logfile ""']
    if maxclients is not None:
        lines.append(f"maxclients {maxclients}")
    if requirepass:
        lines.append(f"requirepass {requirepass}")
    conf = _write(os.path.join(d, "redis.conf"), "\n".join(lines) + "\n")
    os.chmod(conf, 0o600)
    return start("redis-server", [binary, conf, *args], port=port, hosts=hosts, config=conf, dir=d,
                 netns=netns, nofile=nofile, timeout=timeout)


# --- haproxy --------------------------------------------------------------------------------

def haproxy(*, maxconn: Optional[int] = None, frontend_maxconn: Optional[int] = None,
            stats_socket: bool = False, hosts: Sequence[str] = LOOPBACK, port: Optional[int] = None,
            netns: Optional[str] = None, nofile: Union[int, tuple, None] = None,
            timeout: float = 30.0, tls: Optional[Pair] = None, global_extra: Sequence[str] = ()) -> Server:
    """haproxy -db (foreground, no master-worker: pid is the one process) with a frontend that
    answers HTTP itself (`http-request return status 200`); global maxconn omitted lets
    HAProxy compute its own from the descriptor limit; the stats socket (extra["stats_socket"])
    answers `show info`.  tls: `bind ... ssl crt` with that certificate; global_extra: more
    global lines (tune.bufsize, tune.ssl.*)."""
    binary = need("haproxy")
    d, hosts, port = _prepare("haproxy", hosts, port, netns)
    glob = ([f"    maxconn {maxconn}"] if maxconn is not None else []) + [f"    {g}" for g in global_extra]
    extra = {}
    if stats_socket:
        extra["stats_socket"] = os.path.join(d, "stats.sock")
        glob.append(f"    stats socket {extra['stats_socket']} mode 600 level admin")
    crt = f" ssl crt {tls.combined}" if tls else ""
    front = [f"    bind {_addr(h, port)}{crt}" for h in hosts]
    if frontend_maxconn is not None:
        front.append(f"    maxconn {frontend_maxconn}")
    conf = _write(os.path.join(d, "haproxy.cfg"), "\n".join([
        "global", *glob,
        "defaults", "    mode http", "    timeout connect 5s", "    timeout client 1h",
        "    timeout server 5s", "    timeout http-keep-alive 1h",
        "frontend fe", *front,
        '    http-request return status 200 content-type text/plain string "ok"', ""]))
    srv = start("haproxy", [binary, "-db", "-f", conf], port=port, hosts=hosts, config=conf, dir=d,
                netns=netns, nofile=nofile, timeout=timeout,
                ready=lambda s: not stats_socket or os.path.exists(extra["stats_socket"]))
    srv.extra.update(extra)
    return srv


def haproxy_command(srv: Server, command: str) -> str:
    """One command on srv's stats socket (`show info`), its answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(srv.extra["stats_socket"])
        s.sendall(command.encode() + b"\n")
        return _read_all(s).decode()


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- the Node `ws` server -------------------------------------------------------------------

def ws_server(*, max_open: Optional[int] = None, close_code: int = 1013,
              close_reason: str = "too many connections", protocol: Optional[str] = None,
              hosts: Sequence[str] = LOOPBACK, port: Optional[int] = None, netns: Optional[str] = None,
              nofile: Union[int, tuple, None] = None, timeout: float = 30.0, tls: Optional[Pair] = None) -> Server:
    """tests/servers/node/ws_server.js on the real `ws` package: holds WebSocket connections
    (ws answers pings), with max_open closes each one beyond that many open with close_code
    and close_reason, with protocol accepts that subprotocol; tls: Node's https with that
    certificate (wss://). Node has no cap of its own."""
    node = need("node")
    need_ws()
    d, hosts, port = _prepare("ws", hosts, port, netns)
    script = os.path.join(NODE_DIR, "ws_server.js")
    argv = [node, script, "--port", str(port)]
    for h in hosts:
        argv += ["--host", h]
    if max_open is not None:
        argv += ["--max-open", str(max_open), "--close-code", str(close_code), "--close-reason", close_reason]
    if protocol:
        argv += ["--protocol", protocol]
    if tls:
        argv += ["--cert", tls.cert, "--key", tls.key]
    return start("node-ws", argv, port=port, hosts=hosts, config=script, dir=d, netns=netns,
                 nofile=nofile, timeout=timeout)


# --- PostgreSQL 15 ----------------------------------------------------------------------------

def postgres(*, max_connections: int = 100, superuser_reserved_connections: int = 3,
             hosts: Sequence[str] = ("127.0.0.1",), port: Optional[int] = None,
             netns: Optional[str] = None, nofile: Union[int, tuple, None] = None,
             user: str = "postgres", timeout: float = 60.0) -> Server:
    """PostgreSQL 15 as `user` (it refuses root): initdb (trust auth) in a temp dir owned by
    it, then postgres -D with max_connections, superuser_reserved_connections, its Unix
    socket in the temp dir; ready when postmaster.pid says so. Stopped by SIGINT (fast
    shutdown: nothing of it is left in shared memory)."""
    binary, initdb = need("postgres"), need("initdb")
    d, hosts, port = _prepare("postgres", hosts, port, netns, owner=user)
    data = os.path.join(d, "data")
    proc = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                           initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
                           "--no-instructions", "-E", "UTF8", "--locale=C"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {proc.stderr.strip()}")
    argv = [binary, "-D", data, "-p", str(port), "-k", d,
            "-c", f"listen_addresses={','.join(hosts)}", "-c", f"max_connections={max_connections}",
            "-c", f"superuser_reserved_connections={superuser_reserved_connections}"]
    srv = start("postgres", argv, port=port, hosts=hosts, config=os.path.join(data, "postgresql.conf"),
                dir=d, netns=netns, user=user, nofile=nofile, stop_signal=signal.SIGINT,
                timeout=timeout, ready=_postmaster_ready)
    srv.extra.update(data=data, socket_dir=d)
    return srv


def _postmaster_ready(srv: Server) -> bool:
    """PostgreSQL 10+ writes its state as the last line of postmaster.pid."""
    try:
        with open(os.path.join(srv.dir, "data", "postmaster.pid")) as f:
            return f.read().split()[-1:] == ["ready"]
    except OSError:
        return False


# --- Mosquitto ---------------------------------------------------------------------------------

def mosquitto(*, max_connections: Optional[int] = None, hosts: Sequence[str] = LOOPBACK,
              port: Optional[int] = None, netns: Optional[str] = None,
              nofile: Union[int, tuple, None] = None, lines: Sequence[str] = (),
              conf_d: Optional[dict] = None, timeout: float = 30.0, tls: Optional[Pair] = None,
              users: Optional[dict] = None) -> Server:
    """mosquitto -c FILE: one `listener PORT HOST` block per host (tls: each with that
    certfile and keyfile, MQTT over TLS) (each block is its own
    listener with its own count: max_connections, when given, caps each one), anonymous
    clients allowed, no persistence, logs to stderr (server.log); `lines` go before the
    listener blocks (what Mosquitto calls the default listener's options and the global
    ones), `conf_d` {name: text} are files of an include_dir in the temp dir. Started as
    root it drops to the `mosquitto` user its package makes; SIGHUP reloads.  `users`
    {name: password}: those alone may connect (a password_file, anonymous refused)."""
    binary = need("mosquitto")
    d, hosts, port = _prepare("mosquitto", hosts, port, netns)
    text = ["persistence false", "log_dest stderr", "allow_anonymous true", *lines]
    if users:
        path = _write(os.path.join(d, "passwd"), "".join(f"{u}:{mosquitto_hash(p)}\n" for u, p in users.items()),
                      owner="mosquitto")
        os.chmod(path, 0o600)
        text += ["allow_anonymous false", f"password_file {path}"]
    if conf_d:
        inc = os.path.join(d, "conf.d")
        os.mkdir(inc, 0o755)
        for name, body in conf_d.items():
            _write(os.path.join(inc, name), body)
        text.append(f"include_dir {inc}")
    for h in hosts:
        text.append(f"listener {port} {h}")
        if max_connections is not None:
            text.append(f"max_connections {max_connections}")
        if tls:
            text += [f"certfile {tls.cert}", f"keyfile {tls.key}"]
    conf = _write(os.path.join(d, "mosquitto.conf"), "\n".join(text) + "\n")
    return start("mosquitto", [binary, "-c", conf], port=port, hosts=hosts, config=conf, dir=d,
                 netns=netns, nofile=nofile, timeout=timeout)


def mosquitto_hash(password: str, iterations: int = 101) -> str:
    """A password_file entry's hash as mosquitto_passwd writes it (Mosquitto 2.0: $7$,
    PBKDF2-SHA512 over a 12-byte salt), made here so the password is in no command line
    (mosquitto_passwd -b takes it in argv)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


STARTERS = {"nginx": nginx, "nginx-packaged": nginx_packaged, "redis": redis, "haproxy": haproxy,
            "ws": ws_server, "postgres": postgres, "mosquitto": mosquitto}


@pytest.fixture
def real_server():
    """real_server(kind, **options) starts one (kinds: STARTERS); all are stopped at teardown,
    also when the test fails."""
    started = []

    def run(kind: str, **options) -> Server:
        srv = STARTERS[kind](**options)
        started.append(srv)
        return srv

    yield run
    for srv in reversed(started):
        srv.stop()
