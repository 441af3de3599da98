"""The committed man pages are what the typer app generates now."""
import os
import re

from tuner.host import errors
from tuner import knobs, manpages

MAN_DIR = os.path.join(os.path.dirname(__file__), "..", "man")


def test_committed_pages_are_up_to_date():
    pages = manpages.render_pages()
    assert "tuner.1" in pages and "tuner-report.1" in pages
    committed = {name for name in os.listdir(MAN_DIR) if name.endswith(".1")}
    assert committed == set(pages), "run: python -m tuner.manpages man"
    for name, text in pages.items():
        with open(os.path.join(MAN_DIR, name)) as f:
            assert f.read() == text, f"man/{name} is stale: run python -m tuner.manpages man"


def test_pages_carry_options_knobs_and_exit_codes():
    pages = manpages.render_pages()
    report = pages["tuner-report.1"]
    assert r"\-\-target" in report and r"\-\-json" in report
    for knob in knobs.KNOBS:
        assert manpages._roff_escape(knob.name) in report
    for code in errors.EXIT_CODES:
        assert f"\\fB{code}\\fP" in pages["tuner.1"]


COMMON_SECTIONS = ("EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO")


def _section(page: str, title: str) -> str:
    """The roff body of `.SH title` up to the next section."""
    assert f".SH {title}\n" in page, f"no {title} section"
    return page.split(f".SH {title}\n", 1)[1].split("\n.SH ", 1)[0]


def test_every_page_has_environment_files_examples_and_see_also():
    pages = manpages.render_pages()
    for name, page in pages.items():
        for title in COMMON_SECTIONS:
            _section(page, title)
        see = _section(page, "SEE ALSO")
        for ref in ("sysctl(8)", "prlimit(1)", "ss(8)", "sysctl.d(5)", "limits.conf(5)", "systemd.exec(5)"):
            assert ref in see, (name, ref)
        # Every other tuner page is named, the page itself is not.
        own = name[:-2]
        for other in pages:
            assert (f"{_esc(other[:-2])}(1)" in see) == (other != name), (name, other)
        assert _section(page, "EXAMPLES").count(".TP") >= 2, name


def _esc(text):
    return manpages._roff_escape(text)


def _example_args(line: str):
    """The tuner argv of an example line: shell pipes/redirections cut off, leading VAR=value
    assignments dropped."""
    import shlex

    words = []
    for w in shlex.split(line, comments=False):
        if w in ("|", ">", ">>"):
            break
        words.append(w)
    while "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)
    assert words[0] == "tuner", line
    return words[1:]


def test_every_example_parses_against_the_real_cli(monkeypatch):
    """An example that names a missing option, a bad value type, or a command that does
    not exist fails here (click parses without running the command)."""
    import typer

    from tuner.host import netns
    from tuner.cli import app

    # --netns is checked against the namespaces that exist when it is parsed; the
    # examples' "demo" is a placeholder for one the reader made, so it exists here.
    real = netns.names
    monkeypatch.setattr(netns, "names", lambda: sorted(set(real()) | {"demo"}))

    root = typer.main.get_command(app)
    paths = {ctx.command_path for _, ctx in manpages._commands()}
    assert set(manpages.EXAMPLES) <= paths, "EXAMPLES names a command that does not exist"
    for path, examples in manpages.EXAMPLES.items():
        for line, text in examples:
            assert text, line
            args = _example_args(line)
            assert " ".join(["tuner"] + args).startswith(path), (path, line)
            ctx = root.make_context("tuner", list(args))
            if args and not args[0].startswith("-"):
                name, cmd, rest = root.resolve_command(ctx, list(args))
                cmd.make_context(name, rest, parent=ctx)


def test_a_command_added_later_gets_every_section():
    """diagnose/metrics and later commands: a page with generated examples from their own
    options, the common sections, and a place in every other page's SEE ALSO."""
    from typing import Optional

    import typer

    from tuner.cli import app

    later = typer.Typer()
    later.registered_commands = list(app.registered_commands)
    later.registered_callback = app.registered_callback
    later.info = app.info

    @later.command("someday")
    def someday(pid: int = typer.Option(..., "--pid", metavar="PID", help="Process to look at."),
                 json_out: bool = typer.Option(False, "--json"), port: Optional[int] = None) -> None:
        """Why this process stopped accepting connections."""

    pages = manpages.render_pages(later)
    page = pages["tuner-someday.1"]
    for title in COMMON_SECTIONS:
        _section(page, title)
    examples = _section(page, "EXAMPLES")
    assert r"\fBtuner someday \-\-pid PID\fP" in examples
    assert r"\fBtuner someday \-\-pid PID \-\-json\fP" in examples
    assert "Why this process stopped accepting connections" in examples
    assert r"tuner\-someday(1)" in _section(pages["tuner.1"], "SEE ALSO")
    assert "tuner-someday.1" not in manpages.render_pages()


def test_installed_package_ships_every_page(tmp_path):
    """A wheel built from this tree and installed into a fresh venv puts tuner.1 and every
    subcommand's page in the venv's share/man/man1, and man-db finds them through PATH."""
    import shutil
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), "..")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(root, name), src / name if src.exists() else _mk(src) / name)
    for name in ("tuner", "probes", "man"):
        shutil.copytree(os.path.join(root, name), src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    wheel = next((tmp_path / "dist").glob("tuner-*.whl"))
    subprocess.run(pip + ["--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                          str(wheel)], check=True, capture_output=True)
    man1 = venv / "share" / "man" / "man1"
    committed = {name for name in os.listdir(MAN_DIR) if name.endswith(".1")}
    assert committed == set(manpages.render_pages())
    assert set(os.listdir(man1)) == committed
    for name in committed:
        with open(os.path.join(MAN_DIR, name)) as f:
            assert (man1 / name).read_text() == f.read()
    # The JSON Schemas ship as package data (tuner.schemas loads them from the install).
    shipped = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import os, tuner.schemas as s; print(s.SCHEMA_DIR); print(*s.ids())"],
                             capture_output=True, text=True, check=True, cwd=str(tmp_path)).stdout.split("\n")
    assert shipped[0].startswith(str(venv))
    from tuner import schemas
    assert shipped[1].split() == schemas.ids()
    if shutil.which("man") is None:
        return  # the files are checked above; finding them is man-db's part
    env = {k: v for k, v in os.environ.items() if k != "MANPATH"}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    found = subprocess.run(["man", "-w", "tuner", "tuner-probe"], env=env, capture_output=True,
                           text=True, cwd=str(tmp_path))
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(man1 / "tuner.1"), str(man1 / "tuner-probe.1")]


def _mk(path):
    path.mkdir(parents=True)
    return path


def test_dash_h_is_help_on_every_command():
    """-h is --help everywhere (a newcomer's first try; click offers only --help)."""
    from click.testing import CliRunner
    import typer

    from tuner.cli import app

    root = typer.main.get_command(app)
    runner = CliRunner()
    for path in [[]] + [[name] for name in root.commands]:
        short = runner.invoke(root, path + ["-h"], prog_name="tuner")
        long = runner.invoke(root, path + ["--help"], prog_name="tuner")
        assert short.exit_code == 0, (path, short.output)
        assert short.output == long.output and "Usage: tuner" in short.output, path


def _groff_warnings(path) -> str:
    """What `groff -ww -man -z` says about a page: every warning on, output discarded."""
    import subprocess

    from realservers import need

    proc = subprocess.run([need("groff"), "-ww", "-man", "-z", str(path)], capture_output=True,
                          text=True, timeout=60)
    return proc.stderr.strip() + ("" if proc.returncode == 0 else f" (exit {proc.returncode})")


def test_every_page_renders_without_a_warning(tmp_path):
    """groff -ww is silent for every page (a text line starting with '.' or "'" would be
    taken for a request and dropped: man tuner-plot once stopped at "does not end in")."""
    pages = manpages.render_pages()
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
        assert _groff_warnings(tmp_path / name) == "", name


def test_text_that_looks_like_roff_is_escaped_at_generation(tmp_path):
    """Help text of any command, also one added later, whose lines start with '.', "'" or
    '...' renders whole and without a warning."""
    import typer

    from tuner.cli import app

    later = _app_with(app)

    @later.command("someday")
    def someday(port: int = typer.Option(0, "--port", help="... the processes on this port."),
                unit: str = typer.Option("", "--unit", help="'quoted' first, then more.")) -> None:
        """Writes FILE, which must end in
        .svg or .png; a backslash \\ and 'quotes'
        ...and dots."""

    page = manpages.render_pages(later)["tuner-someday.1"]
    (tmp_path / "p.1").write_text(page)
    assert _groff_warnings(tmp_path / "p.1") == ""
    for line in page.splitlines():
        if line.startswith((".", "'")):
            assert line.split()[0] in (".TH", ".SH", ".TP", ".PP", ".B", ".IP", ".nf", ".fi"), line


def _app_with(app):
    import typer

    later = typer.Typer()
    later.registered_commands = list(app.registered_commands)
    later.registered_callback = app.registered_callback
    later.info = app.info
    return later


def _commands():
    return {manpages._command_name(ctx.command_path): name
            for name, (_, ctx) in zip((ctx.command_path.replace(" ", "-") + ".1"
                                       for _, ctx in manpages._commands()), manpages._commands())}


def test_exit_status_lists_only_the_codes_the_command_returns():
    pages = manpages.render_pages()
    commands = _commands()
    assert set(commands) <= set(errors.COMMAND_EXITS), \
        "a command without a row in errors.COMMAND_EXITS: say which codes it returns"
    for command, name in commands.items():
        listed = [int(c) for c in re.findall(r"^\\fB(\d+)\\fP$", _section(pages[name], "EXIT STATUS"), re.M)]
        assert listed == sorted(errors.COMMAND_EXITS[command]), name
    assert {130, 143} <= set(errors.COMMAND_EXITS["probe"])
    assert errors.EXIT_BUSY not in errors.COMMAND_EXITS["report"]
    assert errors.EXIT_DECLINED not in errors.COMMAND_EXITS["probe"]
    assert set(errors.COMMAND_EXITS["tuner"]) == set(errors.EXIT_CODES) \
        == set().union(*errors.COMMAND_EXITS.values())


# How tuner and probes/ read the environment; a module-level NAME = "VALUE" constant
# passed to one of them is resolved in the same file.
ENV_READS = re.compile(r"""(?:os\.environ\.get|os\.getenv|os\.environ\[|envvar=)\(?\s*([A-Za-z_"'][\w"']*)"""
                       r"""|["'](\w+)["']\s+(?:not\s+)?in\s+os\.environ""")
IMPLICIT_READS = {"get_terminal_size": "COLUMNS"}   # the standard library reads these for us


def _variables_read() -> dict:
    """{variable: first file reading it} over tuner/ and probes/."""
    root = os.path.join(os.path.dirname(__file__), "..")
    found = {}
    for top in ("tuner", "probes"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if not f.endswith(".py") or f == "manpages.py":
                    continue
                path = os.path.join(dirpath, f)
                text = open(path).read()
                consts = dict(re.findall(r'^\s*([A-Z_][A-Z0-9_]*)\s*=\s*"(\w+)"', text, re.M))
                for m in ENV_READS.finditer(text):
                    word = (m.group(1) or m.group(2)).strip("\"'")
                    var = consts.get(word, word)
                    if var != "os" and not var.islower():
                        found.setdefault(var, os.path.relpath(path, root))
                for call, var in IMPLICIT_READS.items():
                    if call in text:
                        found.setdefault(var, os.path.relpath(path, root))
    return found


def test_environment_lists_every_variable_tuner_reads():
    read = _variables_read()
    assert {"TUNER_JOURNAL", "TUNER_LOCK", "TUNER_SYSLOG", "TUNER_DEBUG", "NO_COLOR"} <= set(read), read
    documented = {var for var, _, _ in manpages.ENVIRONMENT}
    missing = {var: where for var, where in read.items() if var not in documented}
    assert not missing, f"read but not in tuner/manpages.py ENVIRONMENT: {missing}"
    pages = manpages.render_pages()
    commands = _commands()
    for var, _, readers in manpages.ENVIRONMENT:
        assert readers == manpages.EVERY or set(readers) <= set(commands) | {"tuner"}, var
        for command, name in commands.items():
            shown = f"\\fB{manpages._roff_escape(var)}\\fP" in _section(pages[name], "ENVIRONMENT")
            expected = command == "tuner" or readers == manpages.EVERY or command in readers
            assert shown == expected, (name, var)


def test_files_lists_what_the_command_touches():
    pages = manpages.render_pages()
    commands = _commands()
    for path, _, users in manpages.FILES:
        assert set(users) <= set(commands), path
        for command, name in commands.items():
            shown = f"\\fB{manpages._roff_escape(path)}\\fP" in _section(pages[name], "FILES")
            assert shown == (command == "tuner" or command in users), (name, path)
    for path in ("/var/lib/tuner/journal.json", "/run/tuner.lock", "/etc/sysctl.d/99\\-tuner.conf",
                 "/etc/security/limits.d/99\\-tuner.conf"):
        assert path in _section(pages["tuner-apply.1"], "FILES"), path
    assert "None" in _section(pages["tuner-plot.1"], "FILES")


def test_commands_doc_is_generated_from_the_same_app():
    """docs/commands.md's option tables are what the typer app says now (issue 28: the page
    "lists every option" had missed twenty)."""
    with open(manpages.COMMANDS_DOC) as f:
        committed = f.read()
    assert committed == manpages.commands_doc(committed), \
        "docs/commands.md is stale: run python -m tuner.manpages man"
    for command, ctx in manpages._commands()[1:]:
        for p in command.params:
            if getattr(p, "param_type_name", "") == "option" and not p.hidden:
                assert f"`{p.get_help_record(ctx)[0]}`".replace("|", "\\|") in committed, (ctx.command_path, p.opts)
