"""A credential given to `tuner probe` is in no command line: the orchestrator reads its
settings from a pipe (probes/launch.py), its workers get them by fork, and the password
itself can come from a file (--password-file, read as tuner reads its own files:
tuner.host.trust.read_secret) or a pipe (--password-file -).  For real: while `tuner probe --connect mqtt://` runs
against a Mosquitto that checks passwords, a process of user nobody reads every
/proc/PID/cmdline and /proc/PID/environ it may, and finds the password in none."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import run_tuner
from procscan import Scan
from realservers import real_server  # noqa: F401 (a fixture)
from probes import ProbeConfig, launch
from probes.connect import ConnectConfig
from probes.serve import ServeConfig
from tuner.host import trust

SECRET = "pw-of-the-probe-7f3a9c"
FLAG = "--password-file"


def secret_file(tmp_path, mode: int = 0o600, text: str = SECRET + "\n", name: str = "mqtt.pw") -> str:
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


# -- the file, as tuner reads its own ------------------------------------------------------

def test_the_password_is_the_files_text_one_newline_dropped(tmp_path):
    assert trust.read_secret(secret_file(tmp_path), FLAG) == SECRET
    assert trust.read_secret(secret_file(tmp_path, 0o400, SECRET + "\r\n", "b"), FLAG) == SECRET
    assert trust.read_secret(secret_file(tmp_path, text=" a b \n\n", name="c"), FLAG) == " a b \n"


def test_a_file_on_a_way_another_user_could_change_is_refused(tmp_path):
    """O_NOFOLLOW guards the last component alone: a directory another user owns or may
    write (or a link of theirs to a directory) on the way could hand root any
    root-owned mode-600 file of that name; each is refused, the file itself root's."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    secret_file(theirs)
    os.chown(theirs, 65534, 65534)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    secret_file(open_dir)
    os.chmod(open_dir, 0o777)
    root_dir = tmp_path / "root"
    root_dir.mkdir()
    secret_file(root_dir)
    os.symlink(root_dir, tmp_path / "link")
    os.lchown(tmp_path / "link", 65534, 65534)
    for way in (theirs, open_dir, tmp_path / "link"):
        with pytest.raises(trust.UntrustedFile, match="keep it in a directory only root") as e:
            trust.read_secret(str(way / "mqtt.pw"), FLAG)
        assert SECRET not in str(e.value) and "\n" not in str(e.value)
    assert trust.read_secret(str(root_dir / "mqtt.pw"), FLAG) == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o666])
def test_a_file_others_may_read_is_refused_saying_chmod_600(tmp_path, mode):
    path = secret_file(tmp_path, mode)
    with pytest.raises(trust.UntrustedFile) as e:
        trust.read_secret(path, FLAG)
    assert f"is mode {mode:04o}" in str(e.value) and f"; chmod 600 {path} " in str(e.value)
    assert "\n" not in str(e.value) and SECRET not in str(e.value)


def test_a_symlink_another_users_file_a_fifo_and_a_directory_are_refused(tmp_path):
    real = secret_file(tmp_path)
    os.symlink(real, tmp_path / "link")
    with pytest.raises(trust.UntrustedFile, match="is a symlink"):
        trust.read_secret(str(tmp_path / "link"), FLAG)
    theirs = secret_file(tmp_path, name="theirs")
    os.chown(theirs, 65534, 65534)
    with pytest.raises(trust.UntrustedFile, match="owned by uid 65534"):
        trust.read_secret(theirs, FLAG)
    os.mkfifo(tmp_path / "fifo", 0o600)   # nobody writes it: a blocking open would hang here
    with pytest.raises(trust.UntrustedFile, match="not a regular file"):
        trust.read_secret(str(tmp_path / "fifo"), FLAG)
    with pytest.raises(trust.UntrustedFile, match="not a regular file"):
        trust.read_secret(str(tmp_path), FLAG)
    with pytest.raises(trust.UntrustedFile, match="No such file"):
        trust.read_secret(str(tmp_path / "absent"), FLAG)
    with pytest.raises(trust.UntrustedFile, match="larger than"):
        trust.read_secret(secret_file(tmp_path, text="x" * (trust.SECRET_MAX + 1), name="big"), FLAG)
    with pytest.raises(trust.UntrustedFile, match="holds no password"):
        trust.read_secret(secret_file(tmp_path, text="\n", name="empty"), FLAG)


@pytest.mark.parametrize("case", ["0644", "symlink", "both"])
def test_the_cli_refuses_in_one_line_with_exit_2_and_opens_nothing(tmp_path, case):
    path = secret_file(tmp_path, 0o644 if case == "0644" else 0o600)
    if case == "symlink":
        os.symlink(path, tmp_path / "link")
        path = str(tmp_path / "link")
    extra = ["--password", "x"] if case == "both" else []
    proc = run_tuner("probe", "--connect", "mqtt://127.0.0.1:1", "-n", 1, "--username", "u", FLAG, path, *extra)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    words = {"0644": f"chmod 600 {path}", "symlink": "is a symlink", "both": "--password and --password-file"}
    assert words[case] in proc.stderr, proc.stderr


@pytest.mark.parametrize("stdin,words", [("", "--password-file - (stdin) holds no password"),
                                         (SECRET, "--password and --password-file both given")])
def test_password_file_dash_reads_stdin_and_refuses_what_a_file_would(stdin, words):
    extra = ["--password", "x"] if stdin else []
    proc = subprocess.run([sys.executable, "-m", "tuner", "probe", "--connect", "mqtt://127.0.0.1:1", "-n", "1",
                           "--username", "u", FLAG, "-", *extra], input=stdin, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert words in proc.stderr


# -- the orchestrator's command line ----------------------------------------------------------

@pytest.mark.parametrize("config", [
    ConnectConfig(target="mqtt://127.0.0.1:1883", timeout=12.3457, options={"username": "u", "password": SECRET}),
    ServeConfig(listen="127.0.0.1:7000", expect=5, timeout=12.3457),
    ProbeConfig(connections=5, timeout=12.3457, netns="ns-of-the-test"),
], ids=["connect", "serve", "local"])
def test_every_modes_settings_go_through_stdin_not_argv(config):
    argv, settings = launch.command(config, netns="ns-x" if config.MODE != "local" else None)
    assert argv[-2:] == ["--config", "-"] and "12.3457" not in " ".join(argv) and SECRET not in " ".join(argv)
    assert json.loads(settings)["timeout"] == 12.3457
    # `ip netns exec` still wraps it (the local probe's own netns setting, or the caller's).
    assert argv[:4] == ["ip", "netns", "exec", "ns-of-the-test" if config.MODE == "local" else "ns-x"]


def test_the_password_file_is_read_once_and_handed_on_as_text(tmp_path):
    cfg = ConnectConfig(target="mqtt://127.0.0.1:1883", options={"username": "u", "password_file": secret_file(tmp_path)})
    cfg.validate()
    os.unlink(tmp_path / "mqtt.pw")   # the orchestrator reads no file: it gets the text
    argv, settings = launch.command(cfg)
    assert json.loads(settings)["options"] == {"username": "u", "password": SECRET}
    assert SECRET not in " ".join(argv) and "mqtt.pw" not in " ".join(argv)


def test_the_orchestrator_imports_no_probes_package_from_the_working_directory(tmp_path):
    """`python -m probes` put the working directory first on sys.path: root running tuner
    from a directory another user writes ran their probes/__main__.py (found for real
    with an unprivileged user's /tmp directory).  The planted one must not run."""
    planted = tmp_path / "probes"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nraise SystemExit(9)\n")
    # tuner as root runs it: its entry point, which puts no working directory on sys.path.
    tuner = os.path.join(os.path.dirname(sys.executable), "tuner")
    proc = subprocess.run([tuner, "probe", "-n", "10", "--json"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert not (tmp_path / "ran").exists(), proc.stderr
    assert proc.returncode == 0 and json.loads(proc.stdout)["verified"] == 10, proc.stderr


def test_the_orchestrator_takes_its_settings_from_stdin_and_refuses_a_bad_one():
    env = dict(os.environ, PYTHONPATH=launch.PACKAGE_ROOT)
    proc = subprocess.run([sys.executable, "-m", "probes", "--jsonl", "--config", "-"], input="{not json",
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and json.loads(proc.stdout.splitlines()[0])["event"] == "error"


# -- for real: Mosquitto that checks the password ---------------------------------------------

def probe_in_scan(srv, *args, stdin=None):
    """`tuner probe --connect mqtt://…` with ARGS (and stdin) under a Scan: (exit code,
    document, stderr, scan)."""
    url = f"mqtt://127.0.0.1:{srv.port}"
    argv = ["probe", "--connect", url, "-n", 100, "--hold", 2, "--timeout", 20, "--workers", 2, "--json", "-q",
            "--username", "probe", *args]
    with Scan(SECRET, url) as scan:
        proc = subprocess.run([sys.executable, "-m", "tuner", *map(str, argv)], input=stdin or "",
                              capture_output=True, text=True, timeout=120)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr, scan


def test_no_process_shows_the_password_while_the_probe_holds_a_brokers_connections(real_server, tmp_path):
    srv = real_server("mosquitto", users={"probe": SECRET}, hosts=("127.0.0.1",))
    rc, doc, err, scan = probe_in_scan(srv, FLAG, secret_file(tmp_path))
    assert rc == 0 and doc["verified"] == 100 and doc["checked_twice"], err   # the broker took the password
    assert len(scan.probes) >= 3, scan.probes   # the orchestrator and both workers were seen, and read
    assert scan.found == [] and SECRET not in err and SECRET not in json.dumps(doc)
    # Piped in (a secrets manager's output): the same.
    rc, doc, err, scan = probe_in_scan(srv, FLAG, "-", stdin=SECRET + "\n")
    assert rc == 0 and doc["verified"] == 100, err
    assert len(scan.probes) >= 3 and scan.found == []
    # The broker does check it: a wrong one is refused in its words.
    rc, doc, err, _ = probe_in_scan(srv, FLAG, secret_file(tmp_path, text="wrong\n", name="wrong"))
    assert rc == 3 and doc["verified"] == 0, err
    assert {w["words"] for w in doc["server"]["words"]} == {"CONNACK 5 not authorized"}


def test_password_on_the_command_line_still_works_and_is_only_in_tuners_own(real_server):
    """--password stays (its help says others see it in ps): the scan finds it in the
    command line it was typed on, and in no process tuner started."""
    srv = real_server("mosquitto", users={"probe": SECRET}, hosts=("127.0.0.1",))
    rc, doc, err, scan = probe_in_scan(srv, "--password", SECRET)
    assert rc == 0 and doc["verified"] == 100, err
    assert len(scan.probes) >= 3
    assert scan.found and all("-m tuner probe" in line for _, _, line in scan.found), scan.found
    assert not set(scan.probes) & {pid for pid, _, _ in scan.found}
