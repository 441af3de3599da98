"""The adapters' trust rules on real files, links, binaries and sockets (tuner/apps/base.py):
as root, tuner reads only what nobody but root (or a documented service uid) can have
written, follows no link another user could have planted, and runs only the very
root-owned binary a process executes."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from realservers import need
from tuner.apps import base
from tuner.host import trust
from tuner.apps.base import Untrusted, read_trusted

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root to chown")


@pytest.fixture
def tree(tmp_path):
    os.chmod(tmp_path, 0o755)
    conf = tmp_path / "conf"
    conf.mkdir(mode=0o755)
    (conf / "app.conf").write_text("maxconn 700\n")
    return conf


def test_root_owned_file_is_read(tree):
    assert read_trusted(str(tree / "app.conf")) == "maxconn 700\n"


def test_file_of_another_user_is_refused_unless_documented(tree):
    os.chown(tree / "app.conf", NOBODY, NOBODY)
    with pytest.raises(Untrusted, match="belongs to uid 65534"):
        read_trusted(str(tree / "app.conf"))
    assert read_trusted(str(tree / "app.conf"), owners=(0, NOBODY)) == "maxconn 700\n"


def test_writable_file_or_directory_is_refused(tree):
    os.chmod(tree / "app.conf", 0o664)
    with pytest.raises(Untrusted, match="writable by others"):
        read_trusted(str(tree / "app.conf"))
    os.chmod(tree / "app.conf", 0o644)
    os.chmod(tree, 0o777)
    with pytest.raises(Untrusted, match="writable by others"):
        read_trusted(str(tree / "app.conf"))


def test_directory_of_another_user_is_refused(tree):
    os.chown(tree, NOBODY, NOBODY)
    with pytest.raises(Untrusted, match="belongs to uid 65534"):
        read_trusted(str(tree / "app.conf"))


def test_link_planted_by_another_user_is_not_followed(tree, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, NOBODY, NOBODY)
    os.symlink(secret, shared / "app.conf")
    os.lchown(shared / "app.conf", NOBODY, NOBODY)
    with pytest.raises(Untrusted):
        read_trusted(str(shared / "app.conf"), owners=(0, NOBODY))
    # A root-owned link in a root-owned directory (Debian's sites-enabled) is followed.
    os.symlink(tree / "app.conf", tree / "enabled.conf")
    assert read_trusted(str(tree / "enabled.conf")) == "maxconn 700\n"


def test_sticky_shared_directory_passes_only_trusted_entries(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    mine = sticky / "mine"
    mine.mkdir(mode=0o755)
    (mine / "a.conf").write_text("x\n")
    assert read_trusted(str(mine / "a.conf")) == "x\n"
    os.chown(mine, NOBODY, NOBODY)
    with pytest.raises(Untrusted):
        read_trusted(str(mine / "a.conf"))


def test_missing_file_says_so(tree):
    with pytest.raises(FileNotFoundError) as e:
        read_trusted(str(tree / "nope.conf"))
    assert base.why_not("/x", e.value) == "/x not read: it does not exist"


def test_binary_must_be_the_running_root_owned_file(tmp_path):
    """A copy of `sleep` run from a directory another user owns is not executed; the
    system's own /usr/bin/sleep is."""
    own = subprocess.Popen(["sleep", "30"])
    bindir = tmp_path / "bin"
    bindir.mkdir(mode=0o755)
    shutil.copy("/usr/bin/sleep", bindir / "sleep")
    os.chown(bindir, NOBODY, NOBODY)
    planted = subprocess.Popen([str(bindir / "sleep"), "30"])
    try:
        assert base.trusted_binary(base.view(own.pid)) == os.path.realpath("/usr/bin/sleep")
        with pytest.raises(Untrusted):
            base.trusted_binary(base.view(planted.pid))
    finally:
        for p in (own, planted):
            p.kill()
            p.wait()


def test_view_reads_children_and_limits():
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess,time; c=subprocess.Popen(['sleep','30']); time.sleep(30)"])
    try:
        for _ in range(100):
            v = base.view(parent.pid)
            if v.children:
                break
            subprocess.run(["sleep", "0.05"])
        assert [c.exe_name for c in v.children] == ["sleep"]
        assert v.nofile_soft == int(open(f"/proc/{parent.pid}/limits").read().split("Max open files")[1].split()[0])
        assert v.option("-c") is not None
    finally:
        for c in base.view(parent.pid).children:
            os.kill(c.pid, 9)
        parent.kill()
        parent.wait()


def test_option_forms():
    argv = ["nginx", "-c", "/a.conf", "-g", "daemon off;", "-c/b.conf"]
    assert base.option(argv, "-c") == "/b.conf"
    assert base.option(["haproxy", "--conf=/x"], "--conf") == "/x"
    assert base.option(["x"], "-f") is None


def test_unix_socket_of_another_user_is_refused(tmp_path):
    path = tmp_path / "stats.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    try:
        base.unix_connect(str(path)).close()
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(Untrusted, match="belongs to uid"):
            base.unix_connect(str(path))
    finally:
        srv.close()


def test_read_as_the_service_user_not_as_root(tree, tmp_path):
    """Root may read a 0600 file; a service running as nobody may not, and what it
    cannot reach is described the same whether it exists or not (no oracle)."""
    os.chmod(tree / "app.conf", 0o600)
    nobody = trust.Creds(NOBODY, NOBODY)
    assert read_trusted(str(tree / "app.conf")) == "maxconn 700\n"
    with pytest.raises(Untrusted, match="not readable by the service's user \\(uid 65534\\)"):
        read_trusted(str(tree / "app.conf"), creds=nobody)
    os.chmod(tree, 0o700)
    for name in ("app.conf", "missing.conf"):
        with pytest.raises(Untrusted) as e:
            read_trusted(str(tree / name), creds=nobody)
        assert base.why_not(str(tree / name), e.value) == \
            f"{tree / name} not read: not readable by the service's user (uid 65534)"


def test_unix_connect_goes_through_the_held_descriptor(tmp_path):
    """strace shows the connect() address: /proc/self/fd/N of the walk's descriptor,
    never the socket's path (which a swap could redirect)."""
    need("strace")
    path = tmp_path / "stats.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    try:
        traced = subprocess.run(
            ["strace", "-f", "-qq", "-e", "trace=connect", sys.executable, "-c",
             f"from tuner.host import trust; trust.unix_connect({str(path)!r}).close()"],
            capture_output=True, text=True, timeout=60)
        assert traced.returncode == 0, traced.stderr
        connects = [line for line in traced.stderr.splitlines() if "AF_UNIX" in line]
        assert connects and all('sun_path="/proc/self/fd/' in c for c in connects), connects
    finally:
        srv.close()
