"""Issue 24, the file and socket side: root reads only what the service's own user could.

A test user made here (useradd, removed in teardown), real processes under its uid (a
tiny pause() program compiled here and named redis-server, postgres, nginx or haproxy,
as a hostile user would), real files, directories, FIFOs and symlinks.  What root opened
is proven with strace (-y: the file behind each descriptor it got), and a canary value
(31337) that only a root-only file holds: it can reach the output only if root read it.
Each test is a row of the issue's table that concerns files.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from realservers import need
from tuner.apps import base, redis
from tuner.host import trust

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a test user and its processes need root")

CANARY = "31337"
PAUSE_C = r"""
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    const char *name = strrchr(argv[0], '/');
    prctl(PR_SET_NAME, name ? name + 1 : argv[0], 0, 0, 0);
    pause();
    return 0;
}
"""
# Exchanges ./cur and ./alt in a loop (renameat2 RENAME_EXCHANGE), says so after 1000.
SWAPPER_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    for (long n = 1;; n++) {
        syscall(SYS_renameat2, AT_FDCWD, "cur", AT_FDCWD, "alt", 2 /* RENAME_EXCHANGE */);
        if (n == 1000) { puts("swapping"); fflush(stdout); }
    }
}
"""


class Hostile:
    """A user of its own, its home, a root-only directory, and the programs it runs."""

    def __init__(self, root_dir: str, name: str):
        self.dir, self.name = root_dir, name
        pw = pwd.getpwnam(name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.home = os.path.join(root_dir, "home")
        os.mkdir(self.home, 0o700)
        os.chown(self.home, self.uid, self.gid)
        self.secret = os.path.join(root_dir, "rootonly")
        os.mkdir(self.secret, 0o700)
        with open(os.path.join(self.secret, "db.conf"), "w") as f:
            f.write(f"maxclients {CANARY}\nmax_connections = {CANARY}\nmaxconn {CANARY}\n")
        with open(os.path.join(self.secret, "zz-secret-name.conf"), "w") as f:
            f.write(f"max_connections = {CANARY}\n")
        with open(os.path.join(self.secret, "zz-secret-name.cfg"), "w") as f:
            f.write(f"global\n    maxconn {CANARY}\n")
        with open(os.path.join(self.secret, "big.conf"), "w") as f:
            f.write("#" * 5000123)
        self.bin = os.path.join(root_dir, "bin")
        os.mkdir(self.bin, 0o755)
        self.procs: list = []
        self._compile()

    def _compile(self) -> None:
        need("gcc")
        for name, code in (("pause", PAUSE_C), ("swapper", SWAPPER_C)):
            src = os.path.join(self.dir, name + ".c")
            with open(src, "w") as f:
                f.write(code)
            subprocess.run(["gcc", "-O", "-o", os.path.join(self.bin, name), src], check=True,
                           capture_output=True)
        pause = os.path.join(self.bin, "pause")
        for name in ("redis-server", "postgres", "nginx", "haproxy"):
            shutil.copy(pause, os.path.join(self.bin, name))

    def write(self, name: str, text: str, mode: int = 0o600) -> str:
        """A file of the user's, in its home."""
        path = os.path.join(self.home, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        os.chown(path, self.uid, self.gid)
        return path

    def mkdir(self, name: str) -> str:
        path = os.path.join(self.home, name)
        os.mkdir(path, 0o700)
        os.chown(path, self.uid, self.gid)
        return path

    def run(self, program: str, *argv: str, cwd: str = None, as_root: bool = False) -> subprocess.Popen:
        """The pause program named `program`, argv[0] `argv[0]`, under the user's uid."""
        ids = {} if as_root else dict(user=self.uid, group=self.gid, extra_groups=[])
        p = subprocess.Popen(list(argv), executable=os.path.join(self.bin, program), cwd=cwd or "/",
                             stdin=subprocess.DEVNULL, **ids)
        self.procs.append(p)
        return p

    def swapper(self, cwd: str) -> subprocess.Popen:
        p = subprocess.Popen([os.path.join(self.bin, "swapper")], cwd=cwd, user=self.uid, group=self.gid,
                             extra_groups=[], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs.clear()


@pytest.fixture(scope="module")
def hostile():
    name = f"tuner24t{os.getpid() % 100000}"
    root_dir = tempfile.mkdtemp(prefix="tuner-trust-")
    os.chmod(root_dir, 0o755)
    subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "-U", name],
                   check=True, capture_output=True)
    user = None
    try:
        user = Hostile(root_dir, name)
        yield user
    finally:
        if user is not None:
            user.stop()
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(root_dir, ignore_errors=True)


@pytest.fixture
def user(hostile):
    yield hostile
    hostile.stop()


OPEN = re.compile(r"^(\d+)\s+(?:open|openat|openat2)\((.*)\)\s+=\s+(\d+)<(.*)>$")


def diagnose_traced(pid: int, tmp_path) -> tuple:
    """`tuner diagnose --pid PID --json` and its text, the JSON run under strace -f -y:
    (json, text output, [(open's arguments, the file behind the descriptor)])."""
    need("strace")
    log = tmp_path / "strace.log"
    cmd = [sys.executable, "-m", "tuner", "diagnose", "--pid", str(pid)]
    traced = subprocess.run(["strace", "-f", "-qq", "-y", "-s", "256", "-e", "trace=open,openat,openat2",
                             "-o", str(log), *cmd, "--json"], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert traced.returncode in (0, 1), traced.stderr
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert text.returncode in (0, 1), text.stderr
    assert "Traceback" not in text.stderr + traced.stderr
    opens = [(m.group(2), m.group(4)) for m in map(OPEN.match, log.read_text().splitlines()) if m]
    return json.loads(traced.stdout), text.stdout + text.stderr, opens


def read_opens(opens, prefix: str) -> list:
    """The opens for reading (not O_PATH) whose file is under `prefix`."""
    return [o for o in opens if "O_PATH" not in o[0] and o[1].startswith(prefix)]


def app_of(d: dict) -> dict:
    assert d["application"] is not None, d
    return d["application"]


# ---------------------------------------------------------------- bounded work

def test_redis_config_including_itself_50_times_is_read_once(user, tmp_path):
    conf = os.path.join(user.home, "redis.conf")
    user.write("redis.conf", f"include {conf}\n" * 50 + "maxclients 4321\n")
    p = user.run("redis-server", "redis-server", conf)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    app = app_of(d)
    # At most once for its cap and once for the fix diagnose sizes (each its own pass, as
    # PostgreSQL's below), not 51 times each.
    assert 1 <= len(read_opens(opens, conf)) <= 2, read_opens(opens, conf)
    assert app["allows"] == 4321
    assert sum("read once already" in u for u in app["unread"]) == 1, app["unread"]


def test_postgresql_config_including_itself_50_times_is_read_once(user, tmp_path):
    data = user.mkdir("pgdata")
    conf = os.path.join(data, "postgresql.conf")
    user.write("pgdata/postgresql.conf", "include 'postgresql.conf'\n" * 50 + "max_connections = 77\n")
    p = user.run("postgres", "postgres", "-D", data, cwd=data)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    app = app_of(d)
    assert app["app"] == "postgresql"
    # Once for its cap and once for the fix diagnose asks for (each its own pass), not 51 times each.
    assert len(read_opens(opens, conf)) == 2, read_opens(opens, conf)
    assert app["allows"] == 77 - 3
    assert sum("read once already" in u for u in app["unread"]) == 1, app["unread"]


def test_includes_past_the_budget_are_named_not_followed(user, tmp_path):
    """Many distinct files (not a loop): the total of includes is bounded, not only the depth."""
    for i in range(300):
        user.write(f"part{i}.conf", "# nothing\n")
    conf = user.write("many.conf", "".join(f"include {user.home}/part{i}.conf\n" for i in range(300)))
    p = user.run("redis-server", "redis-server", conf)
    cap = redis.read(base.view(p.pid))
    assert any("tuner follows at most 256 includes" in u or "tuner reads at most 128 files" in u
               for u in cap.unread), cap.unread


# ---------------------------------------------------------------- what the user could not read

def test_include_of_root_only_file_and_shadow_is_not_read(user, tmp_path):
    secret = os.path.join(user.secret, "db.conf")
    conf = user.write("redis.conf", f"include {secret}\ninclude /etc/shadow\nmaxclients 500\n")
    p = user.run("redis-server", "redis-server", conf)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    refusal = f"not readable by the service's user (uid {user.uid})"
    app = app_of(d)
    assert f"{secret} not read: {refusal}" in app["unread"]
    assert f"/etc/shadow not read: {refusal}" in app["unread"]
    assert not read_opens(opens, user.secret) and not read_opens(opens, "/etc/shadow")
    assert CANARY not in json.dumps(d) and "31,337" not in text + json.dumps(d)


def test_include_dir_into_root_only_directory_prints_no_names(user, tmp_path):
    data = user.mkdir("pgdir")
    user.write("pgdir/postgresql.conf", f"include_dir '{user.secret}'\nmax_connections = 50\n")
    p = user.run("postgres", "postgres", "-D", data, cwd=data)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    out = json.dumps(d) + text
    assert "zz-secret-name" not in out and CANARY not in out
    assert f"{user.secret} not read: not readable by the service's user (uid {user.uid})" in app_of(d)["unread"]
    assert not read_opens(opens, user.secret)


def test_haproxy_f_directory_into_root_only_directory_prints_no_names(user, tmp_path):
    p = user.run("haproxy", "haproxy", "-f", user.secret)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    out = json.dumps(d) + text
    assert "zz-secret-name" not in out and CANARY not in out
    assert any(f"not readable by the service's user (uid {user.uid})" in u for u in app_of(d)["unread"])
    assert not read_opens(opens, user.secret)


def test_nginx_wildcard_include_lists_only_what_the_user_may(user, tmp_path):
    """`include DIR/*.conf`: the directory is listed as the master's user could; its own
    directory's files are read, a root-only one's names never leave tuner."""
    user.mkdir("conf.d")
    user.write("conf.d/a.conf", "events { worker_connections 333; }\n")
    conf = user.write("nginx.conf", f"include {user.home}/conf.d/*.conf;\ninclude {user.secret}/*.conf;\n")
    p = user.run("nginx", "nginx", "-c", conf)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    out = json.dumps(d) + text
    assert "zz-secret-name" not in out and CANARY not in out and not read_opens(opens, user.secret)
    app = app_of(d)
    assert f"{user.secret}/*.conf not read: not readable by the service's user (uid {user.uid})" in app["unread"]
    assert "worker_connections 333" in app["setting"]


def test_nginx_dash_c_shadow_is_not_opened(user, tmp_path):
    p = user.run("nginx", "nginx", "-c", "/etc/shadow")
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    assert app_of(d)["unread"] == [f"/etc/shadow not read: not readable by the service's user (uid {user.uid})"]
    assert not read_opens(opens, "/etc/shadow")


def test_no_size_or_existence_oracle(user, tmp_path):
    big, missing = os.path.join(user.secret, "big.conf"), os.path.join(user.secret, "missing.conf")
    conf = user.write("redis.conf", f"include {big}\ninclude {missing}\ninclude /root/nothing-here\n"
                                    f"include {user.home}/not-there.conf\n")
    p = user.run("redis-server", "redis-server", conf)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    refusal = f"not readable by the service's user (uid {user.uid})"
    unread = app_of(d)["unread"]
    assert f"{big} not read: {refusal}" in unread and f"{missing} not read: {refusal}" in unread
    assert f"/root/nothing-here not read: {refusal}" in unread
    # What the user can see for itself is said: a file missing from its own directory.
    assert f"{user.home}/not-there.conf not read: it does not exist" in unread
    out = json.dumps(d) + text
    assert "5000123" not in out and "5,000,123" not in out
    assert json.dumps(d).count("does not exist") == json.dumps(d).count("not-there.conf not read: it does not exist")


# ---------------------------------------------------------------- devices, /proc, FIFOs

def test_kmsg_tty_and_fifo_are_never_opened_for_reading(user, tmp_path):
    fifo = os.path.join(user.home, "fifo.conf")
    os.mkfifo(fifo, 0o644)
    os.chown(fifo, user.uid, user.gid)
    conf = user.write("redis.conf", f"include /proc/kmsg\ninclude /dev/tty5\ninclude {fifo}\nmaxclients 9\n")
    p = user.run("redis-server", "redis-server", conf)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    for path in ("/proc/kmsg", "/dev/tty5", fifo):
        assert not read_opens(opens, path), (path, read_opens(opens, path))
    assert f"{fifo} not read: is not a regular file" in app_of(d)["unread"]


def test_root_service_including_kmsg_and_a_tty_opens_neither(user, tmp_path):
    """A service running as root may read anything, so only the file-type rule stands
    between tuner and the kernel log: it must hold on its own."""
    conf = os.path.join(user.dir, "root-redis.conf")
    with open(conf, "w") as f:
        f.write("include /proc/kmsg\ninclude /dev/tty5\nmaxclients 600\n")
    p = user.run("redis-server", "redis-server", conf, as_root=True)
    d, text, opens = diagnose_traced(p.pid, tmp_path)
    assert not read_opens(opens, "/proc/kmsg") and not read_opens(opens, "/dev/tty5")
    app = app_of(d)
    assert "/proc/kmsg not read: is not a regular file" in app["unread"]
    assert "/dev/tty5 not read: is not a regular file" in app["unread"]
    assert app["allows"] == 600


# ---------------------------------------------------------------- the swap race

def test_swapping_a_directory_for_a_link_never_reads_the_root_only_file(user):
    """The user exchanges `cur` (its own directory) with `alt` (a link to a root-only
    directory holding db.conf with the canary) in a loop; 40 reads never see the canary."""
    cur = user.mkdir("cur")
    user.write("cur/db.conf", "maxclients 100\n", 0o644)
    alt = os.path.join(user.home, "alt")
    os.symlink(user.secret, alt)
    os.lchown(alt, user.uid, user.gid)
    swapper = user.swapper(user.home)
    assert swapper.stdout.readline().strip() == "swapping"
    seen = set()
    try:
        for _ in range(40):
            p = user.run("redis-server", "redis-server", os.path.join(cur, "db.conf"))
            cap = redis.read(base.view(p.pid))
            p.kill()
            p.wait()
            assert cap.allows != int(CANARY) and not any(CANARY in u for u in cap.unread), cap
            seen.add(cap.allows)
        assert swapper.poll() is None     # it swapped all along
    finally:
        swapper.kill()
        swapper.wait()
        for name in ("cur", "alt"):
            path = os.path.join(user.home, name)
            os.unlink(path) if os.path.islink(path) else shutil.rmtree(path)
    assert seen <= {100, None}


def test_swapping_a_socket_directory_never_reaches_roots_socket(user):
    """The same race against unix_connect: `cur` holds the user's own socket, `alt` is a
    link to a root-only directory whose socket root listens on.  40 connects as the
    user could: root's socket never accepts one."""
    import socket  # only the socket tests make sockets
    cur = user.mkdir("cur")
    mine = socket.socket(socket.AF_UNIX)
    mine.bind(os.path.join(cur, "s.sock"))
    os.chown(os.path.join(cur, "s.sock"), user.uid, user.gid)
    mine.listen(64)
    roots = socket.socket(socket.AF_UNIX)
    roots.bind(os.path.join(user.secret, "s.sock"))
    roots.listen(64)
    roots.setblocking(False)
    os.symlink(user.secret, os.path.join(user.home, "alt"))
    os.lchown(os.path.join(user.home, "alt"), user.uid, user.gid)
    swapper = user.swapper(user.home)
    assert swapper.stdout.readline().strip() == "swapping"
    creds = trust.Creds(user.uid, user.gid)
    try:
        for _ in range(40):
            try:
                trust.unix_connect(os.path.join(cur, "s.sock"), creds, (0, user.uid)).close()
            except (trust.Unreadable, OSError):
                pass
        with pytest.raises(BlockingIOError):
            roots.accept()
        assert swapper.poll() is None
    finally:
        swapper.kill()
        swapper.wait()
        mine.close()
        roots.close()
        os.unlink(os.path.join(user.secret, "s.sock"))
        for name in ("cur", "alt"):
            path = os.path.join(user.home, name)
            os.unlink(path) if os.path.islink(path) else shutil.rmtree(path)


# ---------------------------------------------------------------- the layer's own rules

def test_credentials_are_the_service_users_not_roots(user):
    p = user.run("redis-server", "redis-server")
    creds = trust.Creds.of_pid(p.pid)
    assert (creds.uid, creds.gid, creds.groups, creds.reads_all) == (user.uid, user.gid, (), False)
    assert trust.Creds.of_pid(os.getpid()).reads_all
    with pytest.raises(trust.Unreadable, match=f"uid {user.uid}"):
        trust.read_file(os.path.join(user.secret, "db.conf"), creds)
    assert trust.read_text(os.path.join(user.secret, "db.conf")).startswith("maxclients")


def test_group_and_supplementary_groups_count(user, tmp_path):
    """A root:GROUP 0640 file is read for a service in GROUP (as Debian's redis.conf)."""
    d = tempfile.mkdtemp(dir=user.dir)
    os.chmod(d, 0o755)
    path = os.path.join(d, "g.conf")
    with open(path, "w") as f:
        f.write("maxclients 7\n")
    os.chown(path, 0, user.gid)
    os.chmod(path, 0o640)
    creds = trust.Creds(user.uid + 1, user.gid + 1)
    with pytest.raises(trust.Unreadable):
        trust.read_file(path, creds)
    assert trust.read_text(path, trust.Creds(user.uid + 1, 12345, (user.gid,))) == "maxclients 7\n"
    assert trust.read_text(path, trust.Creds(user.uid + 1, user.gid)) == "maxclients 7\n"


def test_budget_counts_files_bytes_and_time(user):
    paths = [user.write(f"b{i}.conf", "x" * 1000, 0o644) for i in range(3)]
    creds, owners = trust.Creds(user.uid, user.gid), (0, user.uid)
    budget = trust.Budget(files=2)
    for p in paths[:2]:
        trust.read_file(p, creds, budget, owners)
    with pytest.raises(trust.OverBudget, match="at most 2 files"):
        trust.read_file(paths[2], creds, budget, owners)
    with pytest.raises(trust.OverBudget, match="ran out"):
        trust.read_file(paths[0], creds, trust.Budget(seconds=0.0, deadline=1.0), owners)
    with pytest.raises(trust.OverBudget, match="at most 1,500 bytes"):
        trust.read_file(paths[0], creds, trust.Budget(bytes=1500, spent=1500), owners)
    b = trust.Budget()
    trust.read_file(paths[0], creds, b, owners)
    with pytest.raises(trust.Unreadable, match="read once already"):
        trust.read_file(paths[0], creds, b, owners)


def test_socket_is_connected_as_the_service_user_could(user, tmp_path):
    import socket  # only this test makes sockets
    d = tempfile.mkdtemp(dir=user.dir)
    os.chmod(d, 0o755)
    path = os.path.join(d, "s.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    try:
        os.chmod(path, 0o600)
        trust.unix_connect(path).close()                       # root's own
        with pytest.raises(trust.Unreadable, match=f"uid {user.uid}"):
            trust.unix_connect(path, trust.Creds(user.uid, user.gid))
        os.chmod(d, 0o700)
        with pytest.raises(trust.Unreadable, match=f"not readable by the service's user \\(uid {user.uid}\\)"):
            trust.unix_connect(path, trust.Creds(user.uid, user.gid))
    finally:
        srv.close()
