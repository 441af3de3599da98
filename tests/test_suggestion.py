"""A fix is a value (issue 25): tuner.suggestion.Suggestion is built from facts and
spelled only by its render/to_dict; nothing in tuner/ or probes/ reads a command string
back, and a printed fix, run as written, changes the limit it names."""
from __future__ import annotations

import os
import re
import subprocess

from tuner import suggestion as sg
from tuner.settings.sysctl import KIND as SYSCTL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ways code read a command back: by its first words, by an option found in its text,
# by splitting it, by patching a sentence built elsewhere.
READ_BACK = [
    re.compile(r"""startswith\(\s*f?["']tuner\b"""),
    re.compile(r"""["']--?[a-z][a-z-]*["']\s+in\s+\w+(\.\w+)*\.command\b"""),
    re.compile(r"""\bcommand\.(split|partition|rpartition|startswith|endswith)\("""),
    re.compile(r"""\bsentence["']?\]?\.replace\("""),
    re.compile(r"""\.command\s*\.\s*split"""),
    re.compile(r"""endpoint["']?\]?\s*\.\s*(r?partition|r?split)\("""),
]


def _sources():
    for package in ("tuner", "probes"):
        for top, dirs, files in os.walk(os.path.join(REPO, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(top, f)


def test_no_command_string_is_read_back():
    found = []
    for path in _sources():
        with open(path) as fh:
            for number, line in enumerate(fh, 1):
                if any(p.search(line) for p in READ_BACK):
                    found.append(f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}")
    assert not found, "a command string is parsed back; ask the Suggestion's fields:\n" + "\n".join(found)


def test_the_read_back_patterns_catch_what_they_name():
    """The patterns above do match the code issue 25 removed (else the test proves nothing)."""
    removed = ['any(f.command.startswith("tuner apply --pid") for f in earlier)',
               'f.command.startswith("tuner apply") and "--target" in f.command',
               'stalled["sentence"] = stalled["sentence"].replace("the server ", "x", 1)',
               'shell = f.command.split(" ", 1)[0] in SHELL_WORDS',
               'host, _, port_text = endpoint.rpartition(":")']
    for line in removed:
        assert any(p.search(line) for p in READ_BACK), line


def test_spelling():
    apply = sg.tuner(sg.APPLY, ("--pid", 812), ("--pid", 813), ("--target", 5000), ("--role", "server"),
                     ("--netns", "blue ns"))
    assert apply.render() == "tuner apply --pid 812 --pid 813 --target 5000 --role server --netns 'blue ns'"
    assert apply.option("--pid") == (812, 813) and apply.is_command
    short = sg.tuner(sg.APPLY, ("--target", sg.Count(1_000_000)), ("--shrink-buffers", None))
    assert short.render() == "tuner apply --target 1M --shrink-buffers"
    assert sg.setting(SYSCTL, "ns1", "net.ipv4.ip_local_port_range", "1024 65535").render() == \
        "ip netns exec ns1 sysctl -w net.ipv4.ip_local_port_range='1024 65535'"
    assert sg.write("/sys/fs/cgroup/a b/pids.max", 900).render() == "echo 900 > '/sys/fs/cgroup/a b/pids.max'"
    conf = sg.config(["maxclients 600"], "/etc/redis/redis.conf:12", "kill -HUP 9", "reload", "why")
    assert conf.render() == "in /etc/redis/redis.conf:12: maxclients 600 then kill -HUP 9 (reload)"
    assert not conf.is_command and sg.RELOAD in conf.needs and conf.scope == sg.APPLICATION
    # Not a command as written (a line to write first): its JSON command is null, its text
    # the sentence, and the parts apart (issue 28).
    assert conf.to_dict() == {"command": None, "text": conf.render(), "why": "why", "kind": "application",
                              "lines": ["maxclients 600"], "file": "/etc/redis/redis.conf:12",
                              "then": "kill -HUP 9", "action": "reload"}
    assert apply.to_dict()["command"] == apply.to_dict()["text"] == apply.render()
    words = sg.advice("raise pids.max", "it binds", "cgroup")
    assert words.render() == "raise pids.max" and not words.is_command


def test_one_step_whatever_the_reason():
    a = sg.tuner(sg.APPLY, ("--target", 10), why="one reason")
    b = sg.tuner(sg.APPLY, ("--target", 10), why="another")
    assert a.step == b.step and a != b


def test_a_printed_sysctl_fix_run_as_written_changes_the_limit(netns):
    """The report's fix for a namespace's sysctl, pasted into a shell, sets what the
    target needs there (and only there: the host's value is untouched)."""
    from tuner import assess
    from tuner.host.procfs import read_sysctl
    from tuner.host.netns import in_netns

    name = "net.core.somaxconn"
    with in_netns(netns):
        subprocess.run(["sysctl", "-qw", f"{name}=128"], check=True)
    host_before = read_sysctl(name)
    row = assess.build(100_000, "server", netns).row(name)
    assert row.status == "raise" and row.fix.scope == sg.NETNS and row.fix.at == netns, row
    command = row.fix.render()
    assert command.startswith(f"ip netns exec {netns} sysctl -w {name}="), command
    subprocess.run(["sh", "-c", command], check=True, capture_output=True)
    with in_netns(netns):
        assert int(read_sysctl(name)) == row.needed[0] > 128
    assert read_sysctl(name) == host_before
    assert assess.build(100_000, "server", netns).row(name).status == "ok"


# ---------------------------------------------------------------- one fix builder

# Where a Suggestion may be made: its own module (the value and its constructors), the one
# fix builder (issue 25: "one fix builder"), and the knob table, whose entries declare their
# own fix as a value (Knob.fix: data of the table, not a builder).
BUILDERS = {"tuner/suggestion.py", "tuner/fixes.py", "tuner/knobs.py"}
# The suggestion module's names that make one (a constructor, the class, a changed copy).
MAKERS = {"Suggestion", "tuner", "setting", "write", "config", "advice", "either", "Placeholder"}


def _suggestion_names(tree) -> tuple:
    """(names bound to a maker of tuner.suggestion, names bound to the module itself)."""
    import ast

    makers, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "suggestion":
            makers |= {a.asname or a.name for a in node.names if a.name in MAKERS}
        elif isinstance(node, ast.ImportFrom) and any(a.name == "suggestion" for a in node.names):
            modules |= {a.asname or a.name for a in node.names if a.name == "suggestion"}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name == "tuner.suggestion" and a.asname}
    return makers, modules


def fixes_built(source: str) -> list:
    """Lines of `source` that make a Suggestion: a call of a maker imported from
    tuner.suggestion (by name or through the module), or `.but(...)` (a changed copy)."""
    import ast

    tree = ast.parse(source)
    makers, modules = _suggestion_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Name) and f.id in makers
                or isinstance(f, ast.Attribute) and f.attr in MAKERS and isinstance(f.value, ast.Name)
                and f.value.id in modules
                or isinstance(f, ast.Attribute) and f.attr == "but"):
            found.append(node.lineno)
    return found


def test_every_fix_is_built_in_the_one_home():
    found = []
    for path in _sources():
        rel = os.path.relpath(path, REPO)
        if rel in BUILDERS or not rel.startswith("tuner" + os.sep):
            continue
        with open(path) as fh:
            found += [f"{rel}:{n}" for n in fixes_built(fh.read())]
    assert not found, "a fix is built outside tuner/fixes.py; add a builder there:\n" + "\n".join(found)


def test_the_one_home_check_sees_a_fix_being_built():
    """The check above finds what it names (else it proves nothing): each way of making one."""
    for code in ['from tuner.suggestion import APPLY, tuner\nx = tuner(APPLY, ("--target", 5))',
                 'from .suggestion import advice as a\nx = a("raise it")',
                 'from tuner import suggestion\nx = suggestion.tuner(suggestion.APPLY)',
                 'import tuner.suggestion as sg\nx = sg.Suggestion("advice")',
                 'x = row.fix.but(why="it binds")']:
        assert fixes_built(code), code
    assert not fixes_built('from tuner.suggestion import APPLY\nok = fix.verb == APPLY and fix.render()')


# ---------------------------------------------------------------- the knob table's fixes

def test_the_knob_tables_fixes_are_values():
    """Knob.fix is a Suggestion (or none), never text; and no word of the table (a hint,
    a why) writes out a tuner command: a sentence that names one takes it from a value
    (knobs.HINT_COMMANDS, spelled where the words are composed)."""
    from tuner import knobs

    assert all(k.fix is None or isinstance(k.fix, sg.Suggestion) for k in knobs.ALL), \
        [k.name for k in knobs.ALL if k.fix is not None and not isinstance(k.fix, sg.Suggestion)]
    words = [k.why for k in knobs.ALL] + [text for k in knobs.ALL for _, text in k.signs.hints]
    written = [w for w in words if re.search(r"\btuner (apply|report|probe|diagnose) -", w)]
    assert not written, written


def test_placeholders_spell_as_they_are_and_do_not_run_as_written():
    from tuner import knobs

    fix = knobs.BY_NAME["source addresses"].fix
    assert fix.render() == ("tuner apply --alias-dev DEV --alias-net CIDR, or one AnyIP prefix: "
                            "tuner apply --anyip-net PREFIX")
    assert fix.to_dict() == {"command": None, "text": fix.render(), "why": "", "kind": "tuner"}
    first = fix.arg("first")
    assert first.is_command and not first.runs_as_written and first.option("--alias-net") == ("CIDR",)
    assert first.to_dict()["command"] is None and first.to_dict()["text"] == first.render()
    filled = first.but(args=(("--alias-dev", "eth1"), ("--alias-net", "10.9.0.0/24")))
    assert filled.runs_as_written and filled.to_dict()["command"] == \
        "tuner apply --alias-dev eth1 --alias-net 10.9.0.0/24"


def test_a_hint_names_its_command_from_the_value():
    """The client's port-range hint, as probes/signs.json has it, spells the apply that
    adds aliases from knobs.HINT_COMMANDS (the words around it unchanged)."""
    from tuner import knobs
    from tuner.probing import signs

    hint = dict(signs.table()["hints"]["net.ipv4.ip_local_port_range"])["client"]
    command = knobs.HINT_COMMANDS["client_aliases"].render()
    assert command == "tuner apply --role client --alias-dev DEV --alias-net CIDR"
    assert f"add source addresses ({command} adds them as aliases) and pass them" in hint


def test_a_target_left_to_the_user_is_a_placeholder():
    """`--target N` (no target given) reads as before but is not a command as written: the
    JSON's command is null, as for DEV and CIDR (running it would be a usage error)."""
    from tests.test_capacity import evaluate, host

    row = evaluate(host(mem_available=1 << 30), role="loopback").row("net.ipv4.tcp_rmem")
    assert row.status == "warn" and row.fix.render() == "tuner apply --target N --shrink-buffers"
    assert row.fix.is_command and not row.fix.runs_as_written and row.fix.to_dict()["command"] is None
    given = evaluate(host(mem_available=1 << 30), role="loopback", target=1_000_000).row("net.ipv4.tcp_rmem")
    assert given.fix.render() == "tuner apply --target 1M --shrink-buffers" and given.fix.runs_as_written


def test_an_application_whose_backlog_no_setting_changes_says_so():
    """PostgreSQL and Mosquitto pass their own backlog to listen(): the adapter says so in
    its own field (backlog_fixed), not as a 'none: ' prefix the fix read back. A fake
    diagnosis (only the application's name is read here)."""
    from types import SimpleNamespace

    from tuner import apps, fixes

    listener = {"address": "127.0.0.1", "port": 5432, "backlog": 200}
    for name, words in (("postgresql", "PostgreSQL passes twice max_connections"),
                        ("mosquitto", "Mosquitto passes 100 to listen()")):
        assert apps.ADAPTERS[name].backlog_setting is None
        fix = fixes.backlog_fix(SimpleNamespace(application={"app": name}), listener, 4096)
        assert fix.render().startswith("the listen backlog of 127.0.0.1:5432 (now 200; net.core.somaxconn "
                                       f"4,096 allows up to that) is the application's own: {words}"), fix
    assert not any((a.backlog_setting or "").startswith("none") for a in apps.ADAPTERS.values())


def test_the_next_step_between_two_hosts_names_the_serving_probe():
    """A server with nothing to change: report's next step names the probe's serving side
    (built in tuner/fixes.py), in the words it always had."""
    from tests.test_capacity import evaluate, host
    from tuner import capacity

    snap = host()
    snap.nofile_soft = snap.nofile_hard
    rep = evaluate(snap, role="server", target=1000)
    assert capacity.next_step(rep) == \
        "nothing to change: tuner probe --serve and --connect prove it between the two hosts"
