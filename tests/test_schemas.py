"""Every command's --json, run for real, matches the JSON Schema it names; the schema files
are valid, each is exercised by a command here, and docs/json.md is generated from them.

A command added later (diagnose, metrics) adds its schema file to tuner/schemas/ and one
row to COMMANDS: a function that runs it for real and returns the documents it printed,
and the schema ids they must carry.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Tuple

import jsonschema
import pytest

from conftest import run_tuner, wait_gone
from tuner import schemas

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@dataclass
class Host:
    """What a row may use: a throwaway namespace (lo up) and a journal path of its own."""

    netns: str
    journal: str

    def json(self, *args, rc=(0,)) -> dict:
        """`tuner ARGS` as a process; its stdout parsed as one JSON document."""
        proc = run_tuner(*args, timeout=120)
        assert proc.returncode in rc, (args, proc.returncode, proc.stderr)
        return json.loads(proc.stdout)

    def in_netns(self, *args) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-m", "tuner",
                                 *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, PYTHONPATH=ROOT))


def _report(h: Host) -> List[dict]:
    return [h.json("report", "--target", "1M", "--json", rc=(0, 3)),
            h.json("report", "--netns", h.netns, "--role", "client", "--target", "100k", "--json",
                   rc=(0, 3))]


def _apply_dry_run(h: Host) -> List[dict]:
    doc = h.json("apply", "--target", "100k", "--netns", h.netns, "--journal", h.journal,
                 "--dry-run", "--json")
    assert doc["dry_run"] and doc["plan"]["changes"], doc
    assert not os.path.exists(h.journal)
    return [doc]


def _apply_then_revert(h: Host) -> List[dict]:
    """Inside the namespace only: apply writes per-namespace sysctls there, revert undoes
    them; the journal file between the two is a document too."""
    applied = h.json("apply", "--target", "100k", "--netns", h.netns, "--journal", h.journal,
                     "--yes", "--json")
    assert applied["applied"], applied
    with open(h.journal) as f:
        journal = json.load(f)
    reverted = h.json("revert", "--yes", "--journal", h.journal, "--json")
    assert reverted["complete"] and len(reverted["rows"]) == len(applied["applied"]), reverted
    nothing = h.json("revert", "--yes", "--journal", h.journal, "--json")
    assert nothing["found"] is False
    return [applied, journal, reverted, nothing]


def _probe(h: Host) -> List[dict]:
    doc = h.json("probe", "-n", 500, "--netns", h.netns, "--json")
    assert doc["ok"] and doc["verified"] == 500 and doc["refused"] is False
    return [doc]


def _probe_refused(h: Host) -> List[dict]:
    """Pre-flight refuses (exit 3): stdout is still one document, with the reason; stderr
    the usual one line."""
    proc = run_tuner("probe", "-n", "500M", "--netns", h.netns, "--json", timeout=60)
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["refused"] is True and doc["ok"] is False and "500,000,000" in doc["reason"]
    assert doc["reason"] in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    return [doc]


def _probe_split(h: Host) -> List[dict]:
    port = 7931
    # The server's hold outlasts the client's, whose second check is at the end of its own;
    # the server ends once the client has closed.
    srv = h.in_netns("probe", "--serve", f"127.0.0.1:{port}", "--expect", 40, "--hold", 10,
                     "--timeout", 30, "--json")
    client = None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listening = subprocess.run(["ip", "netns", "exec", h.netns, "ss", "-Hltn", f"sport = :{port}"],
                                       capture_output=True, text=True).stdout
            if listening.strip():
                break
            time.sleep(0.05)
        client = h.in_netns("probe", "--connect", f"127.0.0.1:{port}", "-n", 40, "--hold", 1, "--json")
        served, err = srv.communicate(timeout=30)
        connected, cerr = client.communicate(timeout=30)
    finally:
        for p in (srv, client):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert srv.returncode == 0 and client.returncode == 0, (err, cerr)
    return [json.loads(served), json.loads(connected)]


def _diagnose(h) -> List[dict]:
    """diagnose of a real process (a sleep tuner did not start)."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        out = subprocess.run([sys.executable, "-m", "tuner", "diagnose", "--pid", str(proc.pid), "--json"],
                             capture_output=True, text=True)
    finally:
        proc.kill()
        proc.wait()
    assert out.returncode == 0, out.stderr
    return [json.loads(out.stdout)]


def ns_sysctl(netns: str, name: str, value: str = None) -> str:
    """A sysctl inside the namespace, read (and first written, with `value`) by sysctl(8)."""
    if value is not None:
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{name}={value}"], check=True)
    return subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", name], capture_output=True,
                          text=True, check=True).stdout.strip()


def journal_1(h: Host) -> Tuple[dict, dict]:
    """The host as an apply of tuner before tuner.journal/2 left it, and its journal: two
    sysctls of the namespace changed and a persisted file written (under a root of the
    test's own), with the originals as that version recorded them (sysctl text, the
    file's text, null for absent). Returns (the journal, {sysctl: original text})."""
    root = os.path.join(os.path.dirname(os.path.dirname(h.journal)), "root")
    path = os.path.join(root, "etc", "sysctl.d", "99-tuner.conf")
    originals = {"net.core.somaxconn": ns_sysctl(h.netns, "net.core.somaxconn"),
                 "net.ipv4.ip_local_port_range": ns_sysctl(h.netns, "net.ipv4.ip_local_port_range")}
    wrote = {"net.core.somaxconn": "5000", "net.ipv4.ip_local_port_range": "20000 60999"}
    content = "# Written by 'tuner apply'\nnet.core.somaxconn = 5000\n"
    entries = []
    for name, value in wrote.items():
        entries.append({"key": f"sysctl:{h.netns}:{name}", "knob": name, "kind": "sysctl",
                        "scope": "netns", "netns": h.netns, "detail": {"name": name}, "why": "",
                        "original": " ".join(originals[name].split()),
                        "before": " ".join(originals[name].split()), "new": value,
                        "state": "done", "command": ""})
        ns_sysctl(h.netns, name, value)
    entries.append({"key": f"file:{path}", "knob": "sysctl.d", "kind": "file", "scope": "file",
                    "netns": None, "why": "", "command": "", "state": "done",
                    "detail": {"path": path, "created_dirs": [os.path.join(root, "etc"),
                                                              os.path.dirname(path)]},
                    "original": None, "before": None, "new": content})
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(content)
    doc = {"schema": "tuner.journal/1", "created": "2026-11-01T00:00:00+00:00",
           "updated": "2026-11-01T00:00:00+00:00",
           "applies": [{"at": "2026-11-01T00:00:00+00:00", "argv": ["apply", "-n", "100k"],
                        "target": 100000, "role": "loopback", "netns": h.netns}],
           "entries": entries}
    os.makedirs(os.path.dirname(h.journal), mode=0o700, exist_ok=True)
    with open(os.open(h.journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        json.dump(doc, f)
    return doc, {**originals, "file": path}


def _revert_journal_1(h: Host) -> List[dict]:
    """tuner upgraded with a journal of the old version on the host: revert reads it and
    puts everything back."""
    old, originals = journal_1(h)
    reverted = h.json("revert", "--yes", "--journal", h.journal, "--json")
    assert reverted["complete"] and {r["action"] for r in reverted["rows"]} == {"restored"}, reverted
    rows = {r["knob"]: r for r in reverted["rows"]}
    assert rows["net.ipv4.ip_local_port_range"]["wrote"] == [20000, 60999]
    assert rows["sysctl.d"]["original"] is None and rows["sysctl.d"]["wrote"][-1] == "net.core.somaxconn = 5000\n"
    for name in ("net.core.somaxconn", "net.ipv4.ip_local_port_range"):
        assert ns_sysctl(h.netns, name) == originals[name]
        assert rows[name]["original"] == [int(v) for v in originals[name].split()]
    assert not os.path.exists(originals["file"]) and not os.path.exists(h.journal)
    return [old, reverted]


def _status(h: Host) -> List[dict]:
    """status after an apply in the namespace (in effect, exit 0), with one sysctl
    changed behind tuner's back (drift, exit 1), and with no journal left (found false)."""
    h.json("apply", "--target", "100k", "--netns", h.netns, "--journal", h.journal, "--yes", "--json")
    in_effect = h.json("status", "--journal", h.journal, "--json")
    ns_sysctl(h.netns, "net.core.somaxconn", "5000")
    drift = h.json("status", "--journal", h.journal, "--json", rc=(1,))
    h.json("revert", "--yes", "--force", "--journal", h.journal, "--json")
    nothing = h.json("status", "--journal", h.journal, "--json")
    assert in_effect["in_effect"] and not drift["in_effect"] and nothing["found"] is False
    return [in_effect, drift, nothing]


# (row name, function that runs the command(s) for real, the schema of each document returned)
COMMANDS: List[Tuple[str, Callable[[Host], List[dict]], List[str]]] = [
    ("report", _report, ["tuner.report/3", "tuner.report/3"]),
    ("apply --dry-run", _apply_dry_run, ["tuner.apply/2"]),
    ("apply, journal, revert", _apply_then_revert,
     ["tuner.apply/2", "tuner.journal/2", "tuner.revert/2", "tuner.revert/2"]),
    ("revert of a journal tuner.journal/1", _revert_journal_1, ["tuner.journal/1", "tuner.revert/2"]),
    ("probe", _probe, ["tuner.probe/1"]),
    ("probe refused by pre-flight", _probe_refused, ["tuner.probe/1"]),
    ("probe --serve / --connect", _probe_split, ["tuner.probe.serve/1", "tuner.probe.connect/3"]),
    ("diagnose", _diagnose, ["tuner.diagnose/3"]),
    ("status", _status, ["tuner.status/1"] * 3),
]


@pytest.fixture
def host(netns, tmp_path):
    return Host(netns, str(tmp_path / "state" / "journal.json"))


@pytest.mark.parametrize("name,run,expected", COMMANDS, ids=[row[0] for row in COMMANDS])
def test_command_output_matches_its_schema(host, name, run, expected):
    docs = run(host)
    assert [d["schema"] for d in docs] == expected
    for doc in docs:
        schemas.validate(doc)
    assert wait_gone(host.netns) == [], "a probe process outlived its run"


def test_every_schema_is_exercised_by_a_command():
    """A schema file no command row produces is documentation nobody checks."""
    produced = {sid for _, _, expected in COMMANDS for sid in expected}
    by_urn = {schemas.load(sid)["$id"]: sid for sid in schemas.ids()}

    def embedded(node):  # documents inside documents (apply's plan), by their $ref
        if isinstance(node, dict):
            if node.get("$ref") in by_urn:
                yield by_urn[node["$ref"]]
            for v in node.values():
                yield from embedded(v)
        elif isinstance(node, list):
            for v in node:
                yield from embedded(v)

    produced |= {inner for sid in list(produced) for inner in embedded(schemas.load(sid))}
    assert produced == set(schemas.ids())


def test_schema_files_are_valid_and_named_for_their_id():
    seen = set()
    for sid in schemas.ids():
        schema = schemas.load(sid)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schemas.file_name(sid) in os.listdir(schemas.SCHEMA_DIR)
        assert schema["$id"] not in seen
        seen.add(schema["$id"])
    jsonschema.Draft202012Validator.check_schema(schemas.common())


def test_a_changed_type_or_missing_key_fails_validation(host):
    """The schemas pin types and required keys: the report with a value as text (as apply/1
    gives it), or without its binding limit, is rejected."""
    doc = host.json("report", "--target", "1M", "--json", rc=(0, 3))
    as_text = copy.deepcopy(doc)
    as_text["rows"][0]["current"] = " ".join(str(v) for v in doc["rows"][0]["current"])
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(as_text)
    missing = copy.deepcopy(doc)
    del missing["binding"]
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(missing)
    with pytest.raises(KeyError):
        schemas.validate({**doc, "schema": "tuner.report/99"})


def test_docs_are_generated_from_the_schemas():
    with open(os.path.join(ROOT, "docs", "json.md")) as f:
        committed = f.read()
    assert committed == schemas.markdown(), "docs/json.md is stale: run python -m tuner.schemas"
    for sid in schemas.ids():
        assert f"## `{sid}`" in committed


def test_every_command_with_json_has_a_schema_and_a_row():
    """A command that grows --json (diagnose, ...) needs tuner/schemas/tuner.NAME-V.json and
    a COMMANDS row above; this names the one missing."""
    import typer

    from tuner.cli import app

    group = typer.main.get_command(app)
    rows = {sid.split("/")[0] for _, _, expected in COMMANDS for sid in expected}
    for name, command in group.commands.items():
        if any("--json" in getattr(p, "opts", ()) for p in command.params):
            assert any(sid.split("/")[0] == f"tuner.{name}" for sid in schemas.ids()), \
                f"tuner {name} --json has no schema: add tuner/schemas/tuner.{name}-1.json"
            assert f"tuner.{name}" in rows, f"tuner {name} --json: add a row to COMMANDS"


def test_apply_over_a_journal_1_keeps_its_originals_and_saves_it_as_2(host):
    """An apply after the upgrade finds the old journal: it keeps the originals the old
    version recorded (revert still returns to the state before tuner), saves /2."""
    _, originals = journal_1(host)
    applied = host.json("apply", "--target", "100k", "--netns", host.netns, "--journal", host.journal,
                        "--yes", "--json")
    somaxconn = next(c for c in applied["applied"] if c["knob"] == "net.core.somaxconn")
    assert somaxconn["before"] == [5000] and somaxconn["new"] > [5000]
    with open(host.journal) as f:
        saved = json.load(f)
    schemas.validate(saved)
    entries = {e["knob"]: e for e in saved["entries"]}
    assert saved["schema"] == "tuner.journal/2" and len(saved["applies"]) == 2
    assert entries["net.core.somaxconn"]["original"] == [int(originals["net.core.somaxconn"])]
    assert entries["net.core.somaxconn"]["before"] == [5000]
    assert entries["sysctl.d"]["new"] == ["# Written by 'tuner apply'\n", "net.core.somaxconn = 5000\n"]
    assert host.json("revert", "--yes", "--journal", host.journal, "--json")["complete"]
    for name in ("net.core.somaxconn", "net.ipv4.ip_local_port_range"):
        assert ns_sysctl(host.netns, name) == originals[name]
    assert not os.path.exists(originals["file"])


def test_a_value_has_one_type_in_every_document(host):
    """The report, the plan and the journal give the same knob's value as the same list."""
    report = host.json("report", "--netns", host.netns, "--target", "100k", "--json", rc=(0, 3))
    row = next(r for r in report["rows"] if r["name"] == "net.core.somaxconn")
    applied = host.json("apply", "--target", "100k", "--netns", host.netns, "--journal", host.journal,
                        "--yes", "--json")
    change = next(c for c in applied["plan"]["changes"] if c["knob"] == "net.core.somaxconn")
    done = next(c for c in applied["applied"] if c["knob"] == "net.core.somaxconn")
    with open(host.journal) as f:
        entry = next(e for e in json.load(f)["entries"] if e["knob"] == "net.core.somaxconn")
    assert row["current"] == change["current"] == done["before"] == entry["original"]
    assert row["needed"] == change["new"] == done["new"] == entry["new"]
    assert all(isinstance(v, int) for v in row["current"] + row["needed"])
    reverted = host.json("revert", "--yes", "--journal", host.journal, "--json")
    back = next(r for r in reverted["rows"] if r["knob"] == "net.core.somaxconn")
    assert (back["current"], back["wrote"], back["original"]) == (row["needed"], row["needed"], row["current"])


def _rejected(doc: dict, change) -> str:
    bad = copy.deepcopy(doc)
    change(bad)
    with pytest.raises(jsonschema.ValidationError) as err:
        schemas.validate(bad)
    return err.value.message


def test_a_value_of_another_type_fails_validation(host):
    """Where a value belongs, text (apply/1's and revert/1's form) or a value of another
    setting kind's form fails; the documents as printed pass."""
    doc = host.json("apply", "--target", "100k", "--netns", host.netns, "--journal", host.journal,
                    "--yes", "--json")
    with open(host.journal) as f:
        journal = json.load(f)
    reverted = host.json("revert", "--yes", "--journal", host.journal, "--json")
    for d in (doc, journal, reverted):
        schemas.validate(d)
    as_text = lambda v: " ".join(map(str, v))

    def first(key, field):
        return lambda d: d[key][0].__setitem__(field, as_text(d[key][0][field]))

    assert "is not of type 'array', 'null'" in _rejected(doc, first("applied", "before"))
    _rejected(doc, lambda d: d["plan"]["changes"][0].__setitem__("new", as_text(d["plan"]["changes"][0]["new"])))
    _rejected(journal, first("entries", "original"))
    _rejected(reverted, first("rows", "wrote"))
    _rejected(doc, lambda d: d["applied"][0].__setitem__("new", ["1 2"]))       # a word with a space
    # Each kind's own form: an rlimit is one integer, an alias present or absent.
    _rejected(doc, lambda d: d["applied"][0].update(kind="rlimit", new=[1024, 2048]))
    _rejected(doc, lambda d: d["applied"][0].update(kind="alias", new=[True]))
    _rejected(journal, lambda d: d["entries"][0].update(kind="file", new="text\n"))
    _rejected(reverted, lambda d: d["rows"].append({**d["rows"][0], "original": True}))
