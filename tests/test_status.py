"""`tuner status`: what the journal says tuner changed, still in effect or not, on the
real kernel (a throwaway namespace, a journal and lock of the test's own) and real
files under a root of the test's own."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from applyhelp import tuner
from conftest import run_tuner
from tuner import schemas

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="applies in a namespace")


def ns_sysctl(netns: str, name: str, value: str = None) -> str:
    if value is not None:
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{name}={value}"], check=True)
    return subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", name], capture_output=True,
                          text=True, check=True).stdout.strip()


def status(capsys, jpath, *extra):
    rc, out, err = tuner(capsys, "status", "--journal", jpath, *extra)
    return rc, out, err


def test_status_names_drift_on_a_changed_sysctl_until_revert(capsys, netns, jpath):
    applied = run_tuner("apply", "-n", "100k", "--netns", netns, "--yes", "--journal", jpath)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rc, out, _ = status(capsys, jpath)
    assert rc == 0 and out.startswith("in effect: all "), out
    doc = json.loads(status(capsys, jpath, "--json")[1])
    schemas.validate(doc)
    assert doc["in_effect"] and doc["found"] and doc["next"] is None
    somaxconn = next(c for c in doc["changes"] if c["knob"] == "net.core.somaxconn")
    assert somaxconn["status"] == "in effect" and somaxconn["now"] == somaxconn["wrote"] == [65535]
    assert somaxconn["at_boot"] is None          # a namespace's setting ends with it

    ns_sysctl(netns, "net.core.somaxconn", "5000")   # behind tuner's back
    rc, out, _ = status(capsys, jpath)
    assert rc == 1, out
    first = out.splitlines()[0]
    assert first.startswith("NOT in effect: 1 of ") and "net.core.somaxconn (drift)" in first, out
    assert "now 5,000, tuner wrote 65,535" in out
    assert out.splitlines()[1].startswith(f"next: tuner apply -n 100k --netns {netns} --journal ")
    doc = json.loads(status(capsys, jpath, "--json")[1])
    schemas.validate(doc)
    row = next(c for c in doc["changes"] if c["knob"] == "net.core.somaxconn")
    assert not doc["in_effect"] and row["status"] == "drift" and row["now"] == [5000]
    assert all(c["status"] == "in effect" for c in doc["changes"] if c is not row)

    rc, out, err = tuner(capsys, "revert", "--yes", "--force", "--journal", jpath)
    assert rc == 0, out + err
    rc, out, _ = status(capsys, jpath)
    assert rc == 0 and out.startswith("tuner has changed nothing here: no journal at"), out
    assert json.loads(status(capsys, jpath, "--json")[1])["found"] is False


def _journal_with_files(jpath: str, files: dict) -> None:
    """A journal (tuner.journal/2) as an apply --persist under a root of the test's own
    leaves it: one file entry per path, tuner's content as it wrote it. Hand-made: an
    apply with --persist would change the host's own sysctls."""
    entries = [{"key": f"file:{path}", "knob": knob, "kind": "file", "scope": "file", "netns": None,
                "detail": {"path": path, "created_dirs": []}, "why": "", "command": "", "state": "done",
                "original": None, "before": None, "new": content.splitlines(True)}
               for path, (knob, content) in files.items()]
    doc = {"schema": "tuner.journal/2", "created": "2026-12-04T10:00:00+00:00",
           "updated": "2026-12-04T10:00:00+00:00",
           "applies": [{"at": "2026-12-04T10:00:00+00:00", "argv": ["apply", "-n", "1M", "--persist", "--yes"],
                        "target": 1000000, "role": "loopback", "netns": None}], "entries": entries}
    os.makedirs(os.path.dirname(jpath), mode=0o700, exist_ok=True)
    with open(os.open(jpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        json.dump(doc, f)


def test_persisted_files_overridden_by_a_later_file_do_not_apply_at_boot(capsys, jpath, tmp_path):
    """sysctl.d's precedence: /etc, /run, /usr/local/lib, /usr/lib, a name in an earlier
    directory masking the same name later, then lexical by name, the later winning;
    limits.d lexical. Real files; nothing but status reads them."""
    root = tmp_path / "root"
    sysctl_d, limits_d = root / "etc/sysctl.d", root / "etc/security/limits.d"
    for d in (sysctl_d, limits_d, root / "usr/lib/sysctl.d", root / "run/sysctl.d"):
        d.mkdir(parents=True)
    ours = "# Written by 'tuner apply'\nnet.core.somaxconn = 65535\nfs.nr_open = 2000064\n"
    limits = "# Written by 'tuner apply'\n*     hard nofile 2000064\nroot  hard nofile 2000064\n"
    (sysctl_d / "99-tuner.conf").write_text(ours)
    (limits_d / "99-tuner.conf").write_text(limits)
    (root / "usr/lib/sysctl.d/00-early.conf").write_text("net.core.somaxconn = 128\n")   # read before ours
    (root / "run/sysctl.d/99-tuner.conf").write_text("fs.nr_open = 5\n")               # masked by /etc's
    _journal_with_files(jpath, {str(sysctl_d / "99-tuner.conf"): ("sysctl.d", ours),
                                str(limits_d / "99-tuner.conf"): ("limits.d", limits)})
    rc, out, _ = status(capsys, jpath)
    assert rc == 0, out
    doc = json.loads(status(capsys, jpath, "--json")[1])
    schemas.validate(doc)
    assert all(s["at_boot"] for f in doc["files"] for s in f["settings"]), doc

    # A vendor file in /usr/lib named after ours is applied later; so is a site limits file.
    (root / "usr/lib/sysctl.d/zz-vendor.conf").write_text("net.core.somaxconn = 4096\n")
    (limits_d / "zz-site.conf").write_text("*  hard  nofile  4096\n")
    rc, out, _ = status(capsys, jpath)
    assert rc == 1, out
    assert "sysctl.d (overridden)" in out.splitlines()[0] and "limits.d (overridden)" in out.splitlines()[0]
    assert f"{root}/usr/lib/sysctl.d/zz-vendor.conf is applied later and sets net.core.somaxconn = 4096" in out
    doc = json.loads(status(capsys, jpath, "--json")[1])
    schemas.validate(doc)
    sysctl = next(f for f in doc["files"] if f["knob"] == "sysctl.d")
    settings = {s["key"]: s for s in sysctl["settings"]}
    assert settings["net.core.somaxconn"]["at_boot"] is False
    assert settings["net.core.somaxconn"]["boot_value"] == "4096"
    assert settings["fs.nr_open"]["at_boot"] is True          # /run's same name never read

    # Edited by hand, then removed.
    (sysctl_d / "99-tuner.conf").write_text(ours + "vm.swappiness = 1\n")
    assert "sysctl.d (edited)" in status(capsys, jpath)[1]
    (sysctl_d / "99-tuner.conf").unlink()
    rc, out, _ = status(capsys, jpath)
    assert rc == 1 and "sysctl.d (missing)" in out.splitlines()[0], out


@pytest.mark.parametrize("args, message", [
    (["--journal", "/nonexistent-dir/j.json", "--bogus"], "No such option"),
])
def test_bad_input_is_one_line_exit_2(capsys, args, message):
    rc, out, err = tuner(capsys, "status", *args)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_a_journal_others_can_write_is_refused_with_one_line(capsys, tmp_path):
    jdir = tmp_path / "state"
    jdir.mkdir(mode=0o700)
    path = jdir / "journal.json"
    path.write_text("{}")
    path.chmod(0o666)
    rc, out, err = tuner(capsys, "status", "--journal", str(path))
    assert rc == 1 and out == "" and len(err.strip().splitlines()) == 1 and "mode 0666" in err
