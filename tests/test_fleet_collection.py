"""The collection as a user installs it: it builds with ansible-galaxy, every module's
documentation parses (ansible-doc), and the playbook passes ansible's syntax check."""
from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile

import yaml

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
    assert "plugins/doc_fragments/common.py" in names
    # The probe module's generated connect options: its argument_spec and its docs.
    assert {"plugins/module_utils/probe_connect.py", "plugins/doc_fragments/probe_connect.py"} <= set(names)


def test_module_docs_parse_and_name_every_option(tmp_path):
    proc = run(tmp_path, ansible_bin("ansible-doc"), "--json", *(f"tuner.tuner.{m}" for m in MODULES))
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    for m in MODULES:
        doc = docs[f"tuner.tuner.{m}"]["doc"]
        assert doc["options"] and docs[f"tuner.tuner.{m}"]["examples"].strip(), m
    assert set(docs["tuner.tuner.apply"]["doc"]["options"]["state"]["choices"]) == {"present", "reverted"}


def text(description) -> str:
    """ansible-doc gives a description as a string or a list of paragraphs."""
    return description if isinstance(description, str) else " ".join(description)


def test_shared_options_are_written_once_and_rendered_in_each_module(tmp_path):
    """plugins/doc_fragments/common.py holds what the modules share; ansible-doc renders
    it inside each module (as a user reads it), merged with the module's own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tuner_doc_fragment", os.path.join(COLLECTION, "plugins", "doc_fragments", "common.py"))
    fragment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fragment)
    shared = yaml.safe_load(fragment.ModuleDocFragment.CAPACITY)["options"]
    [requirement] = yaml.safe_load(fragment.ModuleDocFragment.DOCUMENTATION)["requirements"]

    proc = run(tmp_path, ansible_bin("ansible-doc"), "--json", *(f"tuner.tuner.{m}" for m in MODULES))
    assert proc.returncode == 0, proc.stderr
    docs = {m: json.loads(proc.stdout)[f"tuner.tuner.{m}"]["doc"] for m in MODULES}
    for m in ("apply", "facts"):
        for name, option in shared.items():
            assert text(docs[m]["options"][name]["description"]) == option["description"], (m, name)
            assert docs[m]["options"][name]["type"] == option["type"], (m, name)
    # Each module's own options and requirements are kept next to the shared ones.
    assert {"state", "journal", "alias_net", "allow_public_aliases"} <= set(docs["apply"]["options"])
    assert "source_dev" in docs["facts"]["options"]
    # probe's netns is where the probe runs: its own text, not the fragment's.
    assert text(docs["probe"]["options"]["netns"]["description"]) != shared["netns"]["description"]
    for m in MODULES:
        assert requirement in docs[m]["requirements"], m
    assert any(r.startswith("root") for r in docs["apply"]["requirements"])
    # The documentation names exactly what each module accepts (its argument_spec):
    # its own options, and probe's generated ones (mode=connect's) with their types.
    generated = connect_options()
    for m in MODULES:
        source = open(os.path.join(COLLECTION, "plugins", "modules", f"{m}.py")).read()
        spec_names = set(re.findall(r"^ {8,12}(\w+)=dict\(", source, re.M)) - {"argument_spec"}
        if m == "probe":
            assert not spec_names & set(generated), "written by hand and generated"
            spec_names |= set(generated)
        assert spec_names == set(docs[m]["options"]), m
    for name, spec in generated.items():
        doc = docs["probe"]["options"][name]
        assert (doc["type"], doc.get("elements"), doc.get("default")) == \
            (spec["type"], spec.get("elements"), spec.get("default")), name


def connect_options() -> dict:
    """The probe module's generated argument_spec for mode=connect (module_utils)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tuner_probe_connect", os.path.join(COLLECTION, "plugins", "module_utils", "probe_connect.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CONNECT_OPTIONS


def test_playbook_syntax(tmp_path):
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"children": {
        "tuner_server": {"hosts": {"srv": {}}}, "tuner_load": {"hosts": {"load1": {"tuner_target": 10}}}}}}))
    proc = run(tmp_path, ansible_bin("ansible-playbook"), "-i", str(inventory), "--syntax-check",
               os.path.join(PLAYBOOKS, "million.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
