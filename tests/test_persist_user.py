"""--persist's RLIMIT_NOFILE: limits.d scoped to one real user with --user, the soft limit
left at its default unless --raise-soft, the systemd drop-in alike; written for real
under a --root-dir of the test's own (the host's sysctls are changed and put back by
revert, then checked against the host_restored snapshot), undone by revert. The Ansible
apply module takes the same options."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys

import pytest

from applyhelp import host_values, tree, tuner
from tuner.settings.file import SOFT_DEFAULT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="apply and revert need root")

USER = "nobody"     # a user every Linux host has


def limits_of(root) -> str:
    return (root / "etc/security/limits.d/99-tuner.conf").read_text()


def setting_lines(text: str) -> list:
    return [l.split() for l in text.splitlines() if l.strip() and not l.startswith("#")]


def hard_needed(capsys, jpath) -> int:
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--dry-run", "--json", "--journal", jpath)
    assert rc == 0, err
    rows = {c["knob"]: c for c in json.loads(out)["plan"]["changes"]}
    # fs.nr_open is what the hard limit is raised to (a process's ceiling).
    return rows["fs.nr_open"]["new"][0] if "fs.nr_open" in rows else int(open("/proc/sys/fs/nr_open").read())


def test_user_scopes_limits_d_and_revert_removes_it(capsys, jpath, tmp_path, host_restored):
    pwd.getpwnam(USER)
    root = tmp_path / "root"
    root.mkdir()
    before = tree(root)
    hard = hard_needed(capsys, jpath)
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--persist", "--root-dir", root,
                         "--user", USER, "--journal", jpath, "--json")
    assert rc == 0, err
    limits = limits_of(root)
    # Only the user's hard limit: no '*', no root, no soft line (it stays at the default).
    assert setting_lines(limits) == [[USER, "hard", "nofile", str(hard)]], limits
    applied = {c["knob"]: c for c in json.loads(out)["applied"]}
    assert applied["limits.d"]["before"] is None and applied["limits.d"]["new"][-1] == f"{USER} hard nofile {hard}\n"
    with open(jpath) as f:
        entry = next(e for e in json.load(f)["entries"] if e["knob"] == "limits.d")
    assert "".join(entry["new"]) == limits and entry["original"] is None
    rc, out, err = tuner(capsys, "revert", "--yes", "--journal", jpath)
    assert rc == 0, out + err
    assert tree(root) == before and not os.path.exists(jpath)
    assert host_values() == host_restored


def test_raise_soft_and_the_drop_in(capsys, jpath, tmp_path, host_restored):
    """--raise-soft persists soft = hard, in limits.d and the unit's drop-in; without it
    the drop-in's soft limit is systemd's default."""
    root = tmp_path / "root"
    root.mkdir()
    hard = hard_needed(capsys, jpath)
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--dry-run", "--json", "--persist", "--root-dir",
                         root, "--unit", "web", "--journal", jpath)
    assert rc == 0, err
    files = {c["knob"]: "".join(c["new"]) for c in json.loads(out)["plan"]["changes"] if c["kind"] == "file"}
    assert f"LimitNOFILE={SOFT_DEFAULT}:{hard}\n" in files["systemd drop-in"]
    assert sorted(setting_lines(files["limits.d"])) == [["*", "hard", "nofile", str(hard)],
                                                        ["root", "hard", "nofile", str(hard)]]
    assert tree(root) == ({}, set())   # a dry run writes nothing
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--persist", "--root-dir", root, "--unit",
                         "web", "--user", USER, "--raise-soft", "--journal", jpath)
    assert rc == 0, err
    assert sorted(setting_lines(limits_of(root))) == [[USER, "hard", "nofile", str(hard)],
                                                      [USER, "soft", "nofile", str(hard)]]
    dropin = (root / "etc/systemd/system/web.service.d/99-tuner.conf").read_text()
    assert f"[Service]\nLimitNOFILE={hard}:{hard}\n" in dropin
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert tree(root) == ({}, set())
    assert host_values() == host_restored


def test_lines_of_other_users_stay_and_revert_restores_the_file_exactly(capsys, jpath, tmp_path,
                                                                       host_restored):
    """tuner's own limits.d file already holding lines (an earlier --user, the admin's, a
    soft limit this apply leaves alone): only the lines this apply writes are replaced,
    and revert gives back the file byte for byte (it had no final newline)."""
    root = tmp_path / "root"
    (root / "etc/security/limits.d").mkdir(parents=True)
    earlier = f"# kept by hand\nredis hard nofile 65536\n{USER} soft nofile 4096\n{USER} hard nofile 8192"
    (root / "etc/security/limits.d/99-tuner.conf").write_text(earlier)
    hard = hard_needed(capsys, jpath)
    rc, out, err = tuner(capsys, "apply", "-n", "1M", "--yes", "--persist", "--root-dir", root,
                         "--user", USER, "--journal", jpath)
    assert rc == 0, err
    assert "-nobody hard nofile 8192" in out and f"+{USER} hard nofile {hard}" in out   # the diff
    assert setting_lines(limits_of(root)) == [["redis", "hard", "nofile", "65536"],
                                              [USER, "soft", "nofile", "4096"],
                                              [USER, "hard", "nofile", str(hard)]]
    assert tuner(capsys, "revert", "--yes", "--journal", jpath)[0] == 0
    assert limits_of(root) == earlier
    assert host_values() == host_restored


@pytest.mark.parametrize("args,says", [
    (["--persist", "--user", "no-such-user-tuner"], "no such user on this host"),
    (["--persist", "--user", "a b"], "is not a user name"),
    (["--persist", "--user", "@wheel"], "is not a user name"),
    (["--persist", "--user", "*"], "is not a user name"),
    (["--persist", "--user", "-rf"], "is not a user name"),
    (["--user", USER], "add --persist"),
    (["--raise-soft"], "add --persist"),
])
def test_bad_user_is_one_line_exit_2_nothing_written(tmp_path, jpath, args, says):
    """As a real process: one line, exit 2, no file, no journal, no sysctl changed."""
    root = tmp_path / "root"
    root.mkdir()
    before = host_values()
    proc = subprocess.run([sys.executable, "-m", "tuner", "apply", "-n", "1M", "--yes", "--root-dir",
                           str(root), "--journal", jpath, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("tuner: error: ") and proc.stderr.count("\n") == 1 and says in proc.stderr
    assert tree(root) == ({}, set()) and not os.path.exists(jpath) and host_values() == before


def test_ansible_apply_module_takes_user_and_raise_soft(tmp_path, jpath):
    """Check mode through ansible-playbook: the limits.d text for the user, nothing
    written; an unknown user fails the task with tuner's line and rc 2."""
    from fleetrig import ansible_bin, ansible_env

    root = tmp_path / "root"
    root.mkdir()
    record = tmp_path / "record.jsonl"
    play = tmp_path / "play.yml"
    task = ("  - tuner.tuner.apply: {target: 1M, persist: true, root_dir: '%s', journal: '%s', "
            "user: %s, raise_soft: %s}\n    ignore_errors: true\n")
    play.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                    + task % (root, jpath, USER, "true") + task % (root, jpath, "no-such-user-tuner", "false"))
    env = dict(ansible_env(str(tmp_path)), TUNER_RECORD=str(record),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, TUNER_LOCK=str(tmp_path / "lock"))
    proc = subprocess.run([ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", "--check",
                           str(play)], capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok, bad = [json.loads(line) for line in record.read_text().splitlines()]
    assert ok["status"] == "ok", ok
    limits = next(c for c in ok["result"]["changes"] if c["knob"] == "limits.d")
    lines = setting_lines("".join(limits["after"]))
    assert {(who, which) for who, which, _, _ in lines} == {(USER, "soft"), (USER, "hard")}
    assert bad["status"] == "failed" and bad["result"]["rc"] == 2
    assert "no such user on this host" in bad["result"]["msg"]
    assert tree(root) == ({}, set()) and not os.path.exists(jpath)
