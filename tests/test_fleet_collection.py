"""The collection as a user installs it: it builds with ansible-galaxy, every module's
documentation parses (ansible-doc), and the playbook passes ansible's syntax check."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile

from fleetrig import COLLECTION, PLAYBOOKS, ansible_bin, ansible_env

MODULES = ("apply", "facts", "probe")


def run(tmp_path, *argv):
    return subprocess.run(argv, capture_output=True, text=True, env=ansible_env(str(tmp_path)),
                          cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)


def test_collection_builds_with_every_module_and_the_playbook(tmp_path):
    proc = run(tmp_path, ansible_bin("ansible-galaxy"), "collection", "build", COLLECTION,
               "--output-path", str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr
    [built] = os.listdir(tmp_path / "dist")
    assert built.startswith("tuner-tuner-")
    with tarfile.open(tmp_path / "dist" / built) as tar:
        names = tar.getnames()
    for m in MODULES:
        assert f"plugins/modules/{m}.py" in names
    assert "plugins/module_utils/tuner_common.py" in names and "playbooks/million.yml" in names


def test_module_docs_parse_and_name_every_option(tmp_path):
    proc = run(tmp_path, ansible_bin("ansible-doc"), "--json", *(f"tuner.tuner.{m}" for m in MODULES))
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    for m in MODULES:
        doc = docs[f"tuner.tuner.{m}"]["doc"]
        assert doc["options"] and docs[f"tuner.tuner.{m}"]["examples"].strip(), m
    assert set(docs["tuner.tuner.apply"]["doc"]["options"]["state"]["choices"]) == {"present", "reverted"}


def test_playbook_syntax(tmp_path):
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"children": {
        "tuner_server": {"hosts": {"srv": {}}}, "tuner_load": {"hosts": {"load1": {"tuner_target": 10}}}}}}))
    proc = run(tmp_path, ansible_bin("ansible-playbook"), "-i", str(inventory), "--syntax-check",
               os.path.join(PLAYBOOKS, "million.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
