"""Man pages for `tuner` and each subcommand, generated from the typer app.

click-man's ManPage does the roff; typer vendors its own click, so click-man's
walker (which checks isinstance against the real click) sees no options, and this
module walks typer's command tree itself.  The knob table and exit codes are
appended from the same sources the code uses, so the pages cannot drift from them
(tests/test_man.py regenerates and compares).

Every page, including those of commands added later, gets EXIT STATUS, ENVIRONMENT,
FILES, EXAMPLES and SEE ALSO: the first three and SEE ALSO are the same for every
command (paths and variable names come from the modules that use them); EXAMPLES come
from the table below, or, for a command not in it yet, from its own options.

The committed pages in man/ are installed with the package into share/man/man1
(pyproject.toml's data-files), so `man tuner` finds them next to a venv's bin/.

    python -m tuner.manpages man/     # rewrite the committed pages
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Tuple

import typer
from click_man.man import ManPage

from probes import protocols
from tuner import __date__, __version__, apply as apply_mod, hostlog, journal, plan
from tuner.host import errors, netns
from .settings import base as settings_base
from .cli import app
from .knobs import KNOBS

# Sections other modules add to a command's page (e.g. the probe's wire protocol),
# keyed by command path ("tuner", "tuner report", ...).
EXTRA_SECTIONS: Dict[str, Dict[str, str]] = {}


def wire_section() -> str:
    """probes.wire's docstring (the exchange --serve and --connect speak), as roff: the
    page says what the code documents, so the two cannot drift."""
    # Here: only the probe's page documents its wire protocol (the generator's start-up).
    from probes import wire

    text = wire.__doc__.split("\n\n", 1)[1]
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if all(line.startswith("    ") for line in lines) and not lines[0].lstrip()[:2] == "1.":
            out += [".PP", ".nf", *(_roff_escape(line.strip()) for line in lines), ".fi"]
        elif lines[0].lstrip().startswith("1."):
            item = []
            for line in lines + ["0."]:
                head = line.strip().split(" ", 1)[0]
                if head.endswith(".") and head[:-1].isdigit():
                    if item:
                        out += [".IP " + item[0], _roff_escape(" ".join(item[1:]))]
                    item = [head] + line.strip().split(" ", 1)[1:]
                else:
                    item.append(line.strip())
        else:
            out += [".PP", _roff_escape(" ".join(line.strip() for line in lines))]
    return "\n".join(out)


def _roff_escape(text: str) -> str:
    """Text as roff prints it: backslashes and hyphen-minus escaped, and a line that starts
    with '.' or "'" (".svg", "... the processes") led by \\& so roff does not take it for a
    request (it would drop the line, warning of an undefined macro)."""
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


EXTRA_SECTIONS["tuner probe"] = {"WIRE PROTOCOL": wire_section()}


def _forms(scheme) -> list:
    return [*scheme.aliases, scheme.usage]


def protocols_section() -> str:
    """What --connect speaks: the protocol registry (probes/protocols), one entry per
    scheme, its options named."""
    lines = []
    for s in protocols.schemes():
        took = f" Options: {', '.join(o.flag for o in s.options)}." if s.options else ""
        lines += [".TP", "\\fB" + _roff_escape(", ".join(_forms(s))) + "\\fP",
                  _roff_escape(f"{_plain(s.does)}. Second check: {_plain(s.second)}.{took}")]
    return "\n".join(lines)


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


EXTRA_SECTIONS["tuner probe"]["PROTOCOLS"] = protocols_section()

# docs/probe-services.md's table of schemes lies between these lines; write_pages
# rewrites it from the registry (tests/test_protocols_registry.py checks it is current).
DOCS_PROTOCOLS = os.path.join("docs", "probe-services.md")
TABLE_BEGIN = "<!-- protocols: generated from probes/protocols by python -m tuner.manpages -->"
TABLE_END = "<!-- end of protocols -->"


def protocols_markdown() -> str:
    """The table of schemes for docs/probe-services.md, markers included."""
    rows = ["| URL | what a connection does | the second check |", "| --- | --- | --- |"]
    rows += [f"| {', '.join(f'`{form}`' for form in _forms(s))} | {s.does} | {s.second} |"
             for s in protocols.schemes()]
    return "\n".join([TABLE_BEGIN, *rows, TABLE_END])


def with_protocols_table(text: str) -> str:
    """A document's text with its table of schemes replaced by the registry's."""
    head, begin, rest = text.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise ValueError(f"{DOCS_PROTOCOLS} has no {TABLE_BEGIN!r} ... {TABLE_END!r}")
    return head + protocols_markdown() + tail


def metrics_section() -> str:
    """tuner.metrics.METRICS, the list the exporter itself walks."""
    # Here: only metrics' page lists its metrics (the generator's start-up).
    from . import metrics

    return metrics.roff_section(_roff_escape)


EXTRA_SECTIONS["tuner metrics"] = {"METRICS": metrics_section()}


def probe_metrics_section() -> str:
    # Here: only probe's page lists its metrics (the generator's start-up).
    from . import metrics

    return metrics.roff_section(_roff_escape, metrics.PROBE_METRICS)


EXTRA_SECTIONS.setdefault("tuner probe", {})["METRICS"] = probe_metrics_section()


def completion_section() -> str:
    """How to turn on shell completion (typer's, through click's _TUNER_COMPLETE)."""
    return _tp([
        ("tuner --install-completion", "Adds completion for the shell tuner runs from (bash, zsh or "
                                       "fish, detected) to that shell's start-up file; it takes "
                                       "effect in a new shell."),
        ("tuner --show-completion", "Prints that script instead, to put where you keep them."),
        ("_TUNER_COMPLETE=source_bash tuner > /etc/bash_completion.d/tuner",
         "The script for one shell named explicitly (source_bash, source_zsh, source_fish), e.g. "
         "system-wide for bash; zsh: into a directory on $fpath as _tuner; fish: "
         "~/.config/fish/completions/tuner.fish."),
        ("_TUNER_COMPLETE", "Set by the script when the shell asks tuner for completions "
                            "(complete_bash, complete_zsh, complete_fish); tuner then prints "
                            "them and exits without running a command."),
    ])


def knob_section() -> str:
    lines = []
    for k in KNOBS:
        lines += [".TP", f"\\fB{_roff_escape(k.name)}\\fP ({k.kind}, {k.scope}, {k.unit}; caps {k.caps})",
                  _roff_escape(k.why) + (f" Fix when it binds: {_roff_escape(k.fix.render())}." if k.fix else "")]
    return "\n".join(lines)


def _command_name(path: str) -> str:
    """ "tuner report" -> "report"; "tuner" stays "tuner" (the program as a whole)."""
    return path.split(" ", 1)[1] if " " in path else path


def exit_section(path: str) -> str:
    """The codes this command can return (errors.COMMAND_EXITS), with what each means for it."""
    return _tp((str(code), text) for code, text in errors.command_exits(_command_name(path)))


def _tp(pairs) -> str:
    """(term, text) pairs as a roff tagged list; terms in bold."""
    lines = []
    for term, text in pairs:
        lines += [".TP", f"\\fB{_roff_escape(term)}\\fP", _roff_escape(text)]
    return "\n".join(lines)


EXTRA_SECTIONS.setdefault("tuner", {})["SHELL COMPLETION"] = completion_section()


EVERY = ("*",)   # in ENVIRONMENT: read by every command

# Every environment variable tuner reads (tests/test_man.py greps tuner/ and probes/ for
# os.environ, getenv and envvar= and fails on one missing here), what it does, and the
# commands that read it. tuner's own page lists them all.
ENVIRONMENT: List[Tuple[str, str, Tuple[str, ...]]] = [
    (journal.ENV_VAR, f"Path of the write-ahead journal apply writes and revert reads "
                      f"(default {journal.DEFAULT_PATH}); --journal overrides it.", ("apply", "revert", "status")),
    (journal.LOCK_ENV_VAR, f"Path of the host-wide lock that keeps two applies or reverts apart "
                           f"(default {journal.DEFAULT_LOCK}).", ("apply", "revert")),
    (hostlog.ENV_VAR, f"The syslog socket each change apply makes, rolls back or revert restores "
                      f"is logged to (default {hostlog.DEFAULT_SOCKET}); a lost log line is not "
                      f"a failure.", ("apply", "revert")),
    ("NO_COLOR", "When set and not empty, status words are not coloured (as tuner --no-color); "
                 "the probe's progress is plain lines instead of a live bar (no-color.org).",
     ("report", "status", "diagnose", "probe")),
    ("TERM", "TERM=dumb: the probe's progress is plain lines instead of a live bar.", ("probe",)),
    ("COLUMNS", "The width tables and prose are fitted to on a terminal (default: the terminal's own width). Piped output is never narrowed, whatever COLUMNS says: scripts get whole rows.",
     ("report", "apply", "revert", "status", "probe", "diagnose")),
    ("TUNER_DEBUG", "When set, an internal error prints its Python traceback instead of one line.",
     EVERY),
    (apply_mod.KILL_AFTER_ENV, "For tuner's own crash tests only: SIGKILL apply after this many "
                               "changes. Never set it otherwise.", ("apply",)),
    (settings_base.KILL_AT_ENV, "For tuner's own crash tests only: SIGKILL tuner at this named "
                                "point inside a write. Never set it otherwise.", ("apply", "revert")),
    ("TUNER_SHARED_PORT_RANGE", "TUNER_SHARED_PORT_RANGE=1: the probe gives its sockets no port "
                                "range of their own (IP_LOCAL_PORT_RANGE) and plans fill half of "
                                "each range, as before Linux 6.3; the benchmark's reference.",
     ("report", "apply", "probe")),
    ("_TUNER_COMPLETE", "Set by the completion script when the shell asks for completions; see "
                        "SHELL COMPLETION.", ("tuner",)),
]


def environment_section(path: str) -> str:
    """The variables this command reads (all of them on tuner's own page)."""
    name = _command_name(path)
    return _tp((var, text) for var, text, readers in ENVIRONMENT
               if name == "tuner" or name in readers or readers == EVERY) or ".PP\nNone."


def _etc(rel: str) -> str:
    return "/" + rel


_CHANGERS = ("apply", "revert")
_READERS = ("report", "metrics", "apply", "revert", "probe", "diagnose")
_NETNS = ("report", "metrics", "apply", "probe", "diagnose")

# The files each command writes or reads (path, what it is, the commands that touch it);
# tuner's own page lists them all.
FILES: List[Tuple[str, str, Tuple[str, ...]]] = [
    (journal.DEFAULT_PATH, "The journal: each setting apply changed, its original value and what "
                           "tuner wrote, saved atomically before every write. revert reads it and "
                           "removes it once everything is restored; status reads it.", _CHANGERS + ("status",)),
    (journal.DEFAULT_PATH + ".lock", "The journal's own lock (next to whichever journal is used), "
                                     "held while apply or revert runs.", _CHANGERS),
    (journal.DEFAULT_LOCK, "The host-wide lock: holds the pid of the running apply or revert; "
                           "a second one exits 5.", _CHANGERS),
    (_etc(plan.SYSCTL_FILE), "Written by apply --persist: the sysctls tuner set, applied at boot by "
                             "systemd-sysctl (see sysctl.d(5)).", _CHANGERS + ("status",)),
    (_etc(plan.LIMITS_FILE), "Written by apply --persist: RLIMIT_NOFILE for new login sessions "
                             "(pam_limits, see limits.conf(5)).", _CHANGERS + ("status",)),
    (_etc(os.path.join(plan.UNIT_DIR, "UNIT.service.d", plan.DROPIN_NAME)),
     "Written by apply --persist --unit UNIT: LimitNOFILE= for that service (see "
     "systemd.exec(5)).", _CHANGERS + ("status",)),
    ("/etc, /run, /usr/local/lib, /usr/lib: sysctl.d/*.conf, systemd/system/UNIT.service.d/*.conf; "
     "/etc/security/limits.d/*.conf",
     "Read (never written) to tell which file wins at boot: a name in an earlier directory masks "
     "the same name in later ones, then files apply in lexical order and a later one wins "
     "(sysctl.d(5)); apply --persist warns and status reports when one applied after tuner's "
     "overrides it.", ("apply", "status")),
    ("/proc/sys/, /proc/slabinfo, /proc/meminfo, /proc/net/sockstat",
     "The kernel's limits and what is in use; /proc/slabinfo needs root (without it the "
     "memory estimate uses documented fallback figures).", _READERS + ("status",)),
    (f"{netns.RUN_DIR}/NAME", "The network namespace --netns NAME names (ip-netns(8)); status "
                              "enters those the journal names.", _NETNS + ("status",)),
]


def files_section(path: str) -> str:
    """The files this command touches (all of them on tuner's own page)."""
    name = _command_name(path)
    return _tp((f, text) for f, text, users in FILES if name == "tuner" or name in users) \
        or ".PP\nNone: it reads only the files named on its command line."


# Examples per command path: (command line, what it does).  Each command line is parsed
# against the real CLI in tests/test_man.py, so an example cannot name an option that
# does not exist.  A command missing here still gets examples built from its options.
EXAMPLES: Dict[str, List[Tuple[str, str]]] = {
    "tuner": [
        ("tuner report --target 1M", "What stands between this host and a million connections."),
        ("tuner apply --target 1M --dry-run", "The changes a million needs, and the equivalent shell "
                                              "commands; nothing is changed."),
        ("tuner apply --target 1M --yes", "Make them (as root), recording the originals in the journal."),
        ("tuner probe --connections 1M", "Prove it: open, verify and close a million loopback "
                                         "connections."),
        ("tuner revert", "Put back everything apply changed."),
    ],
    "tuner report": [
        ("tuner report", "How many connections the host holds now and which limit binds first."),
        ("tuner report --target 1M --wide", "What a million needs, with a why column for every knob."),
        ("tuner report -n 100000 --role client --source-dev eth0",
         "A load generator's view: outbound sockets from eth0's addresses to one server."),
        ("tuner report --netns demo --target 500k", "Per-namespace knobs as seen inside namespace demo."),
        ("tuner report --target 1M --json | jq -r '.rows[] | select(.status != \"ok\") | .name'",
         "The knobs that need attention, for a script."),
    ],
    "tuner apply": [
        ("tuner apply --target 1M --dry-run", "Show the plan and the shell commands; change nothing."),
        ("tuner apply --target 1M --yes", "Change the host without asking."),
        ("tuner apply --target 1M --persist --unit nginx --yes",
         "Also write sysctl.d, limits.d and a LimitNOFILE= drop-in for nginx.service."),
        ("tuner apply -n 100000 --role client --alias-dev eth0 --alias-net 10.77.1.0/24 --yes",
         "A load generator: widen the port range and add the /32 source aliases 100,000 need."),
        ("tuner apply --target 500k --netns demo --journal /root/demo-journal.json --yes",
         "Change only namespace demo's knobs, with a journal of its own."),
    ],
    "tuner revert": [
        ("tuner revert --dry-run", "What would be restored, and what changed since tuner wrote it."),
        ("tuner revert", "Restore the originals, newest change first."),
        ("tuner revert --force", "Restore even values someone changed since tuner wrote them."),
        ("TUNER_JOURNAL=/root/demo-journal.json tuner revert --json", "Undo a run that used "
                                                                      "another journal; JSON result."),
    ],
    "tuner probe": [
        ("tuner probe --connections 100k", "Open, verify, hold and close 100,000 loopback connections."),
        ("tuner probe -n 1M --hold 10 --json > run.json", "A million held ten seconds; the figures as "
                                                          "JSON."),
        ("tuner probe --netns demo -n 50000 --rate 5000", "50,000 inside namespace demo, 5,000 new "
                                                          "connections a second."),
        ("tuner probe --serve 10.77.0.1:7000 --expect 300000 --hold 2",
         "The server side of a test across hosts: stop once 300,000 are verified and held 2 s."),
        ("tuner probe --connect 10.77.0.1:7000 -n 100000 --source-net 10.77.1.0/24 --hold 6",
         "One load host's share, from the aliases apply added in 10.77.1.0/24."),
    ],
    "tuner metrics": [
        ("tuner metrics --textfile /var/lib/node_exporter/textfile_collector",
         "Write tuner.prom for node_exporter's textfile collector (run it from a timer)."),
        ("tuner metrics --listen 127.0.0.1:9858 --target 1M",
         "Serve /metrics on loopback only, re-reading the host at each scrape."),
        ("tuner metrics --role server | grep ^tuner_capacity",
         "Print one scrape of a server's figures."),
    ],
    "tuner diagnose": [
        ("tuner diagnose --pid 4242", "Where this running process stalls, which limit sets it, and the fix."),
        ("tuner diagnose --port 8080 --target 50000", "The service listening on 8080 (all its "
                                                     "SO_REUSEPORT workers summed): can it hold 50,000?"),
        ("tuner diagnose --unit gateway --json", "A systemd unit's processes, as JSON "
                                                 "(schema tuner.diagnose/3)."),
        ("tuner diagnose --port 7000 --netns demo", "A listener inside namespace demo, read with "
                                                    "that namespace's knobs."),
        ("tuner diagnose --pid 4242 --watch 60 --interval 0.5",
         "Live for a minute: connections, descriptors, accept queue, and the counters that say a "
         "limit bites; a bare --watch runs until Ctrl-C, which ends with a summary."),
    ],
    "tuner plot": [
        ("tuner plot run.json -o run.svg",
         "A run's sockets open and connections established, rate, kernel slab and MemAvailable "
         "over time, its phases named, as an SVG "
         "(run.json: the output of tuner probe --json)."),
        ("tuner plot before.json after.json --label 'before apply' --label 'after apply' -o runs.png",
         "Two runs overlaid, each named in the legend (pip install '.[plot]' in tuner's clone first)."),
    ],
}

SEE_ALSO_EXTERNAL = ["sysctl(8)", "prlimit(1)", "ss(8)", "sysctl.d(5)", "limits.conf(5)",
                     "systemd.exec(5)"]


def default_examples(command, ctx) -> List[Tuple[str, str]]:
    """For a command not in EXAMPLES: it run with its required options, and with --json
    where it has one."""
    base = [ctx.command_path]
    for p in command.params:
        if getattr(p, "param_type_name", "") == "option" and p.required:
            base += [p.opts[0], p.metavar or p.name.upper()]
        elif getattr(p, "param_type_name", "") == "argument":
            base.append((p.metavar or p.name).upper())
    out = [(" ".join(base), (command.short_help or (command.help or "").split(". ")[0]).strip())]
    if any("--json" in getattr(p, "opts", ()) for p in command.params):
        out.append((" ".join(base + ["--json"]), "The same, as JSON."))
    return out


def examples_section(command, ctx) -> str:
    examples = EXAMPLES.get(ctx.command_path) or default_examples(command, ctx)
    lines = []
    for cmd, text in examples:
        lines += [".TP", f"\\fB{_roff_escape(cmd)}\\fP", _roff_escape(text)]
    return "\n".join(lines)


def see_also_section(path: str, pages: List[str]) -> str:
    own = [f"{name[:-2]}(1)" for name in pages if name[:-2] != path.replace(" ", "-")]
    return ", ".join(f"\\fB{_roff_escape(ref)}\\fP" for ref in own + SEE_ALSO_EXTERNAL)


def _sections(path: str) -> Dict[str, str]:
    sections = {"EXIT STATUS": exit_section(path)}
    if path in ("tuner", "tuner report"):
        sections["KNOBS"] = knob_section()
    sections.update(EXTRA_SECTIONS.get(path, {}))
    sections["ENVIRONMENT"] = environment_section(path)
    sections["FILES"] = files_section(path)
    return sections


def _page(command, ctx, page_names: List[str]) -> str:
    page = ManPage(ctx.command_path)
    page.version = __version__
    page.date = __date__
    # click-man escapes the synopsis and option switches itself; every text we hand it
    # goes through _roff_escape, so no line of it can read as a roff request.
    help_text = (command.help or "").strip()
    page.short_help = _roff_escape(command.short_help
                                   or " ".join(help_text.split()).split(". ")[0].rstrip("."))
    page.description = _roff_escape(help_text)
    page.synopsis = " ".join(command.collect_usage_pieces(ctx))
    page.options = [(rec[0], _roff_escape(rec[1])) for p in command.params
                    if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False)
                    for rec in [p.get_help_record(ctx)] if rec]
    subcommands = getattr(command, "commands", {}) or {}
    page.commands = [(name, _roff_escape(sub.get_short_help_str(60))) for name, sub in subcommands.items()
                     if not sub.hidden]
    text = str(page)
    sections = _sections(ctx.command_path)
    sections["EXAMPLES"] = examples_section(command, ctx)
    sections["SEE ALSO"] = see_also_section(ctx.command_path, page_names)
    for title, body in sections.items():
        text += f".SH {title}\n{body}\n"
    return text


def _commands(typer_app=app) -> List[Tuple[object, object]]:
    """(command, context) for tuner and every visible subcommand, depth first."""
    out = []

    def walk(command, name, parent):
        ctx = command.context_class(command, info_name=name, parent=parent)
        out.append((command, ctx))
        for sub_name, sub in (getattr(command, "commands", {}) or {}).items():
            if not sub.hidden:
                walk(sub, sub_name, ctx)

    walk(typer.main.get_command(typer_app), "tuner", None)
    return out


def render_pages(typer_app=app) -> Dict[str, str]:
    """{file name: roff text} for tuner and every visible subcommand of `typer_app`."""
    commands = _commands(typer_app)
    names = [ctx.command_path.replace(" ", "-") + ".1" for _, ctx in commands]
    return {name: _page(command, ctx, names) for name, (command, ctx) in zip(names, commands)}


COMMANDS_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "commands.md")
OPTIONS_MARK = "<!-- The rest of this page is generated from the typer app by `python -m tuner.manpages man`; edit cli.py, not this. -->"


def _md_cell(text: str) -> str:
    """One table cell: pipes escaped, lines joined (markdown tables hold one line)."""
    return " ".join(text.split()).replace("|", "\\|")


def options_markdown(typer_app=app) -> str:
    """docs/commands.md's option tables: every visible command, its synopsis and each
    option with its help, from the same typer walk as the man pages, so neither drifts."""
    out = ["## Every option of every command", "",
           "The same text as `tuner COMMAND --help` and the man pages (`man tuner-COMMAND`).", ""]
    for command, ctx in _commands(typer_app)[1:]:
        synopsis = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
        out += [f"### {ctx.command_path}", "", "```", synopsis, "```", ""]
        help_text = " ".join((command.help or "").split())
        if help_text:
            out += [help_text, ""]
        rows = [p.get_help_record(ctx) for p in command.params
                if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False)]
        out += ["| option | what it does |", "|---|---|"]
        out += [f"| `{_md_cell(r[0])}` | {_md_cell(r[1])} |" for r in rows if r]
        out.append("")
    return "\n".join(out)


def commands_doc(current: str, typer_app=app) -> str:
    """docs/commands.md with its generated part (after OPTIONS_MARK) made anew."""
    head = current.split(OPTIONS_MARK, 1)[0].rstrip("\n")
    return f"{head}\n\n{OPTIONS_MARK}\n\n{options_markdown(typer_app)}"


def write_commands_doc(path: str = COMMANDS_DOC) -> None:
    with open(path) as f:
        current = f.read()
    text = commands_doc(current)
    if text != current:
        with open(path, "w") as f:
            f.write(text)


def write_pages(target_dir: str) -> list:
    """The man pages into target_dir, and docs/probe-services.md's table of schemes
    (beside target_dir: the repository's docs/)."""
    os.makedirs(target_dir, exist_ok=True)
    written = []
    for name, text in render_pages().items():
        with open(os.path.join(target_dir, name), "w") as f:
            f.write(text)
        written.append(name)
    docs = os.path.join(os.path.dirname(os.path.abspath(target_dir)), DOCS_PROTOCOLS)
    if os.path.exists(docs):
        with open(docs) as f:
            text = f.read()
        with open(docs, "w") as f:
            f.write(with_protocols_table(text))
        written.append(docs)
    return written


if __name__ == "__main__":
    write_commands_doc()   # the same source as the pages: docs/commands.md's option tables
    from tuner import collection   # the probe module's options: the same registry and CLI
    for name in collection.write():
        print(name)
    for name in write_pages(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(name)
