"""The journal and the locks under attack and under faults (issue 8, items 1, 2, 5-8).

Everything is real: files owned by a real unprivileged user (nobody, uid 65534, via
os.chown), real symlinks and FIFOs, a real 8 KiB tmpfs that fills up, a read-only
tmpfs, and real kill -9 at named points inside a write (TUNER_TEST_KILL_AT).  Each
test would have failed before the fix it names.
"""
import json
import os
import stat
import subprocess
import sys

import pytest

from tuner import journal as journal_mod

from applyhelp import netns_values, tree, tuner
from conftest import run_tuner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="journal tests change kernel settings: needs root")

NOBODY = 65534


def _apply_in(capsys, netns, jpath, *extra):
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal",
                         jpath, *extra)
    assert rc == 0, err


def _refused_everywhere(capsys, jpath, netns, says):
    """Every command that reads the journal refuses it: one line, exit 1, nothing changed."""
    applied = netns_values(netns)
    for args in (["revert", "--yes"], ["revert", "--yes", "--force"], ["revert", "--dry-run"],
                 ["apply", "-n", "2M", "--yes", "--netns", netns],
                 ["apply", "-n", "2M", "--dry-run", "--netns", netns]):
        rc, out, err = tuner(capsys, *args, "--journal", jpath)
        assert rc == 1, (args, out, err)
        assert says in err and err.count("\n") == 1 and "internal error" not in err, (args, err)
        assert netns_values(netns) == applied, args


# ---------------------------------------------------------------- item 1: trust

@pytest.mark.parametrize("how", ["owned by nobody", "mode 0666", "mode 0660"])
def test_journal_another_user_can_write_is_refused(capsys, jpath, netns, how):
    before = netns_values(netns)
    _apply_in(capsys, netns, jpath)
    if how == "owned by nobody":
        os.chown(jpath, NOBODY, NOBODY)
    else:
        os.chmod(jpath, int(how.split()[1], 8))
    with open(jpath) as f:
        text = f.read()
    _refused_everywhere(capsys, jpath, netns, "other users can write" if "mode" in how
                        else f"owned by uid {NOBODY}")
    with open(jpath) as f:
        assert f.read() == text
    os.chown(jpath, 0, 0)
    os.chmod(jpath, 0o600)
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


def test_journal_symlink_is_not_followed(capsys, tmp_path, jpath, netns):
    """A symlink at the journal path, even to a good root-owned journal, is refused."""
    before = netns_values(netns)
    _apply_in(capsys, netns, jpath)
    link = tmp_path / "state" / "link.json"
    os.symlink(jpath, link)
    _refused_everywhere(capsys, str(link), netns, "is a symlink")
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


@pytest.mark.parametrize("how", ["owned by nobody", "world-writable"])
def test_journal_in_a_directory_others_can_write_is_refused(capsys, jpath, netns, how):
    before = netns_values(netns)
    _apply_in(capsys, netns, jpath)
    directory = os.path.dirname(jpath)
    if how == "owned by nobody":
        os.chown(directory, NOBODY, NOBODY)
    else:
        os.chmod(directory, 0o777)
    _refused_everywhere(capsys, jpath, netns, directory)
    os.chown(directory, 0, 0)
    os.chmod(directory, 0o700)
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


def test_our_journal_in_a_sticky_shared_directory_is_accepted(capsys, tmp_path, netns):
    """Like /tmp: others can write the directory, but not replace or remove our file."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    jpath = str(shared / "journal.json")
    before = netns_values(netns)
    _apply_in(capsys, netns, jpath)
    assert stat.S_IMODE(os.stat(jpath).st_mode) & 0o022 == 0
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert netns_values(netns) == before


def test_forged_file_entry_outside_tuners_locations_is_refused(capsys, tmp_path, jpath, netns):
    """A file entry may only name a sysctl.d, limits.d or drop-in file tuner writes; a
    root-owned journal naming any other file must still not make revert remove it."""
    victim = tmp_path / "victim.conf"
    victim.write_text("keep me\n")
    _apply_in(capsys, netns, jpath)
    with open(jpath) as f:
        data = json.load(f)
    data["entries"].insert(0, {
        "key": f"file:{victim}", "knob": "sysctl.d", "kind": "file", "scope": "file",
        "netns": None, "why": "", "command": "", "detail": {"path": str(victim)},
        "original": None, "before": None, "new": ["keep me\n"], "state": "done"})
    with open(jpath, "w") as f:
        json.dump(data, f)
    _refused_everywhere(capsys, jpath, netns, "is corrupt")
    assert victim.read_text() == "keep me\n"


# ---------------------------------------------------------------- item 2: locks

@pytest.mark.parametrize("which", ["journal lock", "host lock"])
def test_lock_symlink_is_not_followed(capsys, tmp_path, jpath, netns, own_lock, which):
    target = tmp_path / "precious"
    target.write_text("precious\n")
    lock = jpath + ".lock" if which == "journal lock" else own_lock
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    os.symlink(target, lock)
    before = netns_values(netns)
    for args in (["apply", "-n", "1M", "--yes", "--netns", netns], ["revert", "--yes"]):
        rc, out, err = tuner(capsys, *args, "--journal", jpath)
        assert rc == 1, (args, err)
        assert "is a symlink" in err and err.count("\n") == 1
    assert target.read_text() == "precious\n"
    assert os.path.islink(lock)
    assert netns_values(netns) == before and not os.path.exists(jpath)


def test_lock_owned_by_another_user_is_refused(capsys, jpath, netns, own_lock):
    os.makedirs(os.path.dirname(own_lock), exist_ok=True)
    with open(own_lock, "w"):
        pass
    os.chown(own_lock, NOBODY, NOBODY)
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jpath)
    assert rc == 1 and f"owned by uid {NOBODY}" in err and err.count("\n") == 1
    assert not os.path.exists(jpath)


# ---------------------------------------------------------------- item 5: --persist crash leftovers

@pytest.mark.parametrize("point", ["file-dirs", "file-temp"])
def test_kill_inside_a_persisted_file_write_then_revert_leaves_nothing(capsys, jpath, tmp_path,
                                                                        host_restored, point):
    """kill -9 after the drop-in's directories exist, or with its temp copy written and
    not yet renamed: revert must remove the temp file and the directories tuner created."""
    root = tmp_path / "root"
    root.mkdir()
    before = tree(root)
    proc = run_tuner("apply", "-n", "1M", "--yes", "--persist", "--root-dir", root,
                      "--unit", "loadgen", "--journal", jpath,
                      env_extra={"TUNER_TEST_KILL_AT": point})
    assert proc.returncode == -9, proc.stderr
    files, dirs = tree(root)
    assert dirs, "the kill came after tuner created directories"
    if point == "file-temp":
        assert any(".tuner-tmp" in f for f in files), files
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
    assert rc == 0, out + err
    assert tree(root) == before
    assert not os.path.exists(jpath)


# ---------------------------------------------------------------- item 6: a full filesystem

@pytest.fixture
def tiny_fs(tmp_path, request):
    """A real tmpfs of a few pages (8 KiB unless the test asks), unmounted afterwards."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    size = getattr(request, "param", "8k")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory):
    """Fill the filesystem to the last byte."""
    filler = os.path.join(directory, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_full_filesystem_under_the_journal_is_refused_before_any_change(capsys, tiny_fs, netns):
    """8 KiB: the journal's lock takes one page, the first save (about 2 KiB) the other,
    and the second save (old and new side by side) finds no room. apply used to write a
    change, then die with 'internal error: OSError' and leave it changed; it must
    refuse before the first change."""
    jpath = str(tiny_fs / "journal.json")
    before = netns_values(netns)
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jpath)
    assert rc == 1, err
    assert "ENOSPC" in err and jpath in err and err.count("\n") == 1 and "internal" not in err
    assert netns_values(netns) == before
    assert not os.path.exists(jpath)


@pytest.mark.parametrize("tiny_fs", ["32k"], indirect=True)
def test_revert_completes_on_a_full_filesystem(capsys, tiny_fs, netns):
    jpath = str(tiny_fs / "journal.json")
    before = netns_values(netns)
    _apply_in(capsys, netns, jpath)
    # One value drifts (so the journal must keep an entry), then the disk fills.
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", "net.core.somaxconn=5000"],
                   check=True)
    _fill(tiny_fs)
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
    assert rc == 1, out + err
    assert "could not rewrite the journal" in out and "ENOSPC" in out
    now = netns_values(netns)
    assert now["net.core.somaxconn"] == "5000"
    assert {k: v for k, v in now.items() if k != "net.core.somaxconn"} == \
           {k: v for k, v in before.items() if k != "net.core.somaxconn"}
    # With room again, the drifted one is still recorded, and --force finishes.
    os.unlink(tiny_fs / "filler")
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath, "--force")
    assert rc == 0, out + err
    assert netns_values(netns) == before and not os.path.exists(jpath)


@pytest.mark.parametrize("tiny_fs", ["32k"], indirect=True)
def test_revert_on_a_full_filesystem_with_nothing_left_removes_the_journal(capsys, tiny_fs, netns):
    jpath = str(tiny_fs / "journal.json")
    before = netns_values(netns)
    _apply_in(capsys, netns, jpath)
    _fill(tiny_fs)
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
    assert rc == 0, out + err
    assert netns_values(netns) == before and not os.path.exists(jpath)


# ---------------------------------------------------------------- item 7: odd journal files

def test_read_only_journal_directory_is_one_line_before_any_change(capsys, tmp_path, netns):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=8k,mode=0700", "tmpfs", str(ro)], check=True)
    try:
        before = netns_values(netns)
        rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--netns", netns,
                             "--journal", ro / "journal.json")
        assert rc == 1 and "EROFS" in err and err.count("\n") == 1 and "internal" not in err, err
        assert netns_values(netns) == before
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


@pytest.mark.parametrize("make", ["fifo", "dev-zero symlink", "too large", "100,000-deep JSON"])
def test_odd_journal_files_are_one_line_at_once(tmp_path, make):
    """apply and revert used to hang on a FIFO forever, read /dev/zero until MemoryError,
    and die in RecursionError on deep JSON."""
    jdir = tmp_path / "state"
    jdir.mkdir(mode=0o700)
    jpath = jdir / "journal.json"
    if make == "fifo":
        os.mkfifo(jpath, 0o600)
    elif make == "dev-zero symlink":
        os.symlink("/dev/zero", jpath)
    elif make == "too large":
        with open(jpath, "w") as f:
            f.write('{"schema": "tuner.journal/1", "applies": [], "entries": [], "pad": "')
            f.write("x" * (journal_mod.MAX_BYTES + 1))
            f.write('"}')
    else:
        jpath.write_text("[" * 100_000 + "]" * 100_000)
    for args in (["revert", "--yes"], ["revert", "--dry-run"], ["apply", "-n", "1M", "--dry-run"]):
        proc = run_tuner(*args, "--journal", jpath, timeout=20)
        assert proc.returncode in (1, 2), (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "internal error" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- item 8: journal temp files

def test_killed_journal_saves_leave_one_known_temp_that_the_next_run_removes(capsys, jpath, netns):
    before = netns_values(netns)
    directory = os.path.dirname(jpath)
    for _ in range(3):
        proc = run_tuner("apply", "-n", "1M", "--yes", "--netns", netns, "--journal", jpath,
                          env_extra={"TUNER_TEST_KILL_AT": "journal-temp"})
        assert proc.returncode == -9, proc.stderr
        # Next to the journal, named after it, and never more than one.
        temps = [n for n in os.listdir(directory) if n.endswith(".tuner-tmp")]
        assert temps == [".journal.json.tuner-tmp"], os.listdir(directory)
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
    assert rc == 0, out + err
    assert netns_values(netns) == before
    assert [n for n in os.listdir(directory) if "tmp" in n] == []
