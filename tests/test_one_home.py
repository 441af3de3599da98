"""Each kind of knowledge has one home (issue 9, "Done when"): a sysctl's name appears
only in the knob table (tuner/knobs.py) and the kernel-reader module (tuner/host/procfs.py).
Every other module asks them: which knob an errno or a rising counter means, which
sysctl caps a hard RLIMIT_NOFILE or a listen backlog, what a host needs for N.

The search is the issue's grep, run over the code: every Python file outside tests/,
comments and docstrings included, the CI script and the Ansible playbooks.  Docs (the
*.md files, docs/, contrib/'s alert texts and dashboards, the JSON schemas'
descriptions), tests and the generated man pages may name sysctls; they are not
searched.

A sysctl name is a dotted name (net.core.somaxconn) or a /proc/sys path that is a
sysctl or a sysctl directory on this kernel, or one the knob table reads; so a name
assembled in an f-string from its directory (f"net.ipv4.{x}") is found too.
"""
import os
import re

from tuner import knobs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOMES = {os.path.join("tuner", "knobs.py"), os.path.join("tuner", "host", "procfs.py")}
SKIP_DIRS = {"tests", "docs", "man", "contrib", "build", "dist", "__pycache__"}

DOTTED = re.compile(r"(?<![\w.])(?:net|fs|kernel|vm)(?:\.[A-Za-z0-9_-]+)+")
PATH = re.compile(r"/proc/sys/([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+)")
TABLE = ({k.name for k in knobs.ALL if k.is_sysctl} | set(knobs.sysctl_names("host"))
         | set(knobs.sysctl_names("netns")) | set(knobs.THREAD_SYSCTLS))


def is_sysctl(dotted: str) -> bool:
    name = dotted.rstrip("-.")
    return name in TABLE or any(t.startswith(name + ".") for t in TABLE) or \
        os.path.exists("/proc/sys/" + name.replace(".", "/"))


def names_in(text: str) -> list:
    found = [m.group(0) for m in DOTTED.finditer(text) if is_sysctl(m.group(0))]
    found += [m.group(0) for m in PATH.finditer(text) if is_sysctl(m.group(1).rstrip("/").replace("/", "."))]
    return found


def code_files():
    for top, dirs, files in os.walk(REPO):
        rel_top = os.path.relpath(top, REPO)
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
                   and (not d.startswith(".") or d == ".ci")
                   and not os.path.exists(os.path.join(top, d, "pyvenv.cfg"))]
        for f in files:
            rel = os.path.normpath(os.path.join(rel_top, f))
            if f.endswith(".py") or rel_top == ".ci" or (rel.startswith("ansible") and f.endswith((".yml", ".yaml"))):
                yield rel


def test_the_search_finds_sysctl_names_where_they_are():
    """Not vacuous: the knob table's own file names every sysctl knob, in both forms the
    search knows, and prose words that only look dotted are not names."""
    with open(os.path.join(REPO, "tuner", "knobs.py")) as f:
        in_table = set(names_in(f.read()))
    assert {k.name for k in knobs.KNOBS if k.is_sysctl} <= in_table
    assert names_in('x = f"net.ipv4.{name}"; open("/proc/sys/fs/file-max")') == ["net.ipv4", "/proc/sys/fs/file-max"]
    assert names_in("net.version, kernel.snapshot(), fs.py, knobs.net_of_use, /proc/sys/") == []


def test_sysctl_names_live_only_in_the_knob_table_and_the_kernel_reader():
    files = sorted(code_files())
    assert os.path.join("probes", "classify.py") in files and os.path.join("bench", "bench_probe.py") in files
    found = {}
    for rel in files:
        if rel in HOMES:
            continue
        with open(os.path.join(REPO, rel), errors="replace") as f:
            for number, line in enumerate(f, 1):
                for name in names_in(line):
                    found.setdefault(f"{rel}:{number}", []).append(name)
    assert not found, ("sysctl names outside tuner/knobs.py and tuner/host/procfs.py (ask the knob "
                       f"table instead): {found}")
