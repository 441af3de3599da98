"""The protocol registry (probes/protocols) is the one home of what each --connect
scheme is: every list of schemes or of their options is read from it, and a stale copy
fails here.  No network."""
import json
import os
import re
import subprocess
import sys

from probes import protocols
from tuner import cli, collection, manpages, schemas

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_protocol_module_declares_a_scheme():
    modules = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "probes", "protocols"))
                     if f.endswith(".py") and f not in ("__init__.py", "base.py"))
    declared = {s.build.__module__.rsplit(".", 1)[1] for s in protocols.schemes()}
    assert declared == set(modules)
    orders = [s.order for s in protocols.schemes()]
    assert len(set(orders)) == len(orders), "two schemes share an order"
    assert [s.name for s in protocols.schemes()][0] == protocols.bare().name


def test_docs_table_is_current():
    with open(os.path.join(REPO, manpages.DOCS_PROTOCOLS)) as f:
        text = f.read()
    assert manpages.with_protocols_table(text) == text, "run: python -m tuner.manpages man"
    for s in protocols.schemes():
        assert f"`{s.usage}`" in text


def test_schema_enum_is_current():
    doc = schemas.load("tuner.probe.connect/3")
    assert doc["properties"]["protocol"]["enum"] == schemas.protocol_enum() \
        == [s.name for s in protocols.schemes()], "run: python -m tuner.schemas"


def test_cli_help_and_checks_come_from_the_registry():
    out = subprocess.run([sys.executable, "-m", "tuner", "probe", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"}, cwd=REPO).stdout
    for s in protocols.schemes():
        assert s.usage in out
    for o in protocols.options():
        assert o.flag in out
        if not o.shared:
            assert cli._connect_only()[o.name] == o.flag
    page = manpages.render_pages()["tuner-probe.1"]
    for s in protocols.schemes():
        assert manpages._roff_escape(s.usage) in page.split(".SH PROTOCOLS\n", 1)[1]


def test_an_option_of_another_scheme_is_refused_in_one_line():
    r = subprocess.run([sys.executable, "-m", "tuner", "probe", "--connect", "redis://127.0.0.1:1",
                        "-n", "1", "--method", "POST"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--method do(es) not apply to redis://" in r.stderr


def test_the_ansible_probe_modules_connect_options_are_current(tmp_path):
    """The probe module's mode=connect options (argument_spec and documentation, both
    generated into ansible/) are the registry's and the ramp's, as the CLI takes them."""
    assert collection.stale() == [], "run: python -m tuner.manpages man"
    opts = {o.name: o for o in collection.options()}
    assert list(opts) == ["server", *(o.name for o in protocols.options()), *cli._RAMP_OPTIONS]
    for s in protocols.schemes():
        assert s.usage in opts["server"].description
    for o in protocols.options():
        assert o.help.split(" (")[0].rstrip(".") in opts[o.name].description
    # A credential is kept out of logs and results; a path that only looks like one says so.
    assert [name for name, o in opts.items() if o.no_log] == [o.name for o in protocols.options() if o.secret] \
        == ["password"]
    assert opts["key"].no_log is False
    assert (opts["step"].type, opts["settle"].default, opts["keepalive"].type) == ("int", 1.0, "int")
    assert (opts["alpn"].type, opts["alpn"].elements, opts["insecure"].type) == ("list", "str", "bool")
    # Stale is seen: a generated file edited by hand differs from what the walk writes.
    for rel, text in collection.render().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert collection.stale(str(tmp_path)) == []
    (tmp_path / collection.SPEC_FILE).write_text(collection.render()[collection.SPEC_FILE].replace("'ca'", "'cafile'"))
    assert collection.stale(str(tmp_path)) == [os.path.join("ansible", collection.SPEC_FILE)]


def test_a_protocol_the_registry_gains_reaches_the_ansible_module(monkeypatch):
    """Adding a protocol touches its module and its test: the scheme it declares is one
    of the module's URL forms and its options are module options (argument_spec and
    documentation), with no edit to tuner/collection.py or the module."""
    protocols.schemes()
    selector = protocols.Option("selector", "--selector", "TEXT", "the selector sent.")
    monkeypatch.setitem(protocols._REGISTRY, "gopher", protocols.Scheme(
        name="gopher", order=99, usage="gopher://HOST[:PORT]", does="a selector", second="again",
        build=lambda target, options: None, default_port=70, options=(selector,)))
    opts = {o.name: o for o in collection.options()}
    assert "gopher://HOST[:PORT]" in opts["server"].description
    assert opts["selector"].description == "C(mode=connect) to gopher://: the selector sent."
    rendered = collection.render()
    assert "'selector': {'type': 'str'}," in rendered[collection.SPEC_FILE]
    assert "  selector:\n" in rendered[collection.DOC_FILE]


def code_files():
    """Python files of tuner/ and probes/ (comments and docstrings included), and the
    Ansible collection's Python and YAML but its generated files."""
    for top in ("tuner", "probes", "ansible"):
        for root, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith((".py", ".yml", ".yaml")) and not generated(os.path.join(root, f)):
                    yield os.path.relpath(os.path.join(root, f), REPO)


def generated(path: str) -> bool:
    """A file tuner writes from the registry (its first line says so): it lists every scheme."""
    with open(path) as f:
        return f.readline().rstrip("\n") == collection.GENERATED


def without_examples(text: str) -> str:
    """An Ansible module's text but its EXAMPLES: an example names the scheme it uses, as
    the docs' examples do (the docs are not searched); a list of schemes is what goes
    stale, and lists live in the code and the DOCUMENTATION."""
    return re.sub(r'^EXAMPLES = r?"""(.*?)"""', "", text, flags=re.S | re.M)


# Not a probe's scheme: the metrics endpoint's own URL.
NOT_A_PROBE = {("http", os.path.join("tuner", "metrics.py"))}


def test_a_scheme_is_named_only_in_its_module():
    """`git grep NAME://` in the code finds only the protocol's own module: everything
    else asks the registry."""
    homes = {s.name: os.path.join("probes", "protocols", s.build.__module__.rsplit(".", 1)[1] + ".py")
             for s in protocols.schemes()}
    found = []
    for path in code_files():
        with open(os.path.join(REPO, path)) as f:
            text = without_examples(f.read())
        for name, home in homes.items():
            if path != home and (name, path) not in NOT_A_PROBE and re.search(rf"(?<![\w+.-]){re.escape(name)}://", text):
                found.append((name, path))
    assert found == []
