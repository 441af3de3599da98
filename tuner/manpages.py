"""Man pages for `tuner` and each subcommand, generated from the typer app.

click-man's ManPage does the roff; typer vendors its own click, so click-man's
walker (which checks isinstance against the real click) sees no options, and this
module walks typer's command tree itself.  The knob table and exit codes are
appended from the same sources the code uses, so the pages cannot drift from them
(tests/test_man.py regenerates and compares).

    python -m tuner.manpages man/     # rewrite the committed pages
"""
from __future__ import annotations

import os
import sys
from typing import Dict

import typer
from click_man.man import ManPage

from . import __date__, __version__, errors
from .cli import app
from .knobs import KNOBS

# Sections other modules add to a command's page (e.g. the probe's wire protocol),
# keyed by command path ("tuner", "tuner report", ...).
EXTRA_SECTIONS: Dict[str, Dict[str, str]] = {}


def wire_section() -> str:
    """probes.wire's docstring (the exchange --serve and --connect speak), as roff: the
    page says what the code documents, so the two cannot drift."""
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
    return text.replace("\\", "\\\\").replace("-", "\\-")


EXTRA_SECTIONS["tuner probe"] = {"WIRE PROTOCOL": wire_section()}


def knob_section() -> str:
    lines = []
    for k in KNOBS:
        lines += [".TP", f"\\fB{_roff_escape(k.name)}\\fP ({k.kind}, {k.scope}, {k.unit}; caps {k.caps})",
                  _roff_escape(k.why) + (f" Fix when it binds: {_roff_escape(k.fix)}." if k.fix else "")]
    return "\n".join(lines)


def exit_section() -> str:
    lines = []
    for code, text in errors.EXIT_CODES.items():
        lines += [".TP", f"\\fB{code}\\fP", _roff_escape(text)]
    return "\n".join(lines)


def _sections(path: str) -> Dict[str, str]:
    sections = {"EXIT STATUS": exit_section()}
    if path in ("tuner", "tuner report"):
        sections["KNOBS"] = knob_section()
    sections.update(EXTRA_SECTIONS.get(path, {}))
    return sections


def _page(command, ctx) -> str:
    page = ManPage(ctx.command_path)
    page.version = __version__
    page.date = __date__
    help_text = (command.help or "").strip()
    page.short_help = command.short_help or " ".join(help_text.split()).split(". ")[0].rstrip(".")
    page.description = help_text
    page.synopsis = " ".join(command.collect_usage_pieces(ctx))
    page.options = [rec for p in command.params
                    if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False)
                    for rec in [p.get_help_record(ctx)] if rec]
    subcommands = getattr(command, "commands", {}) or {}
    page.commands = [(name, sub.get_short_help_str(60)) for name, sub in subcommands.items()
                     if not sub.hidden]
    text = str(page)
    for title, body in _sections(ctx.command_path).items():
        text += f".SH {title}\n{body}\n"
    return text


def render_pages() -> Dict[str, str]:
    """{file name: roff text} for tuner and every visible subcommand."""
    root = typer.main.get_command(app)
    pages: Dict[str, str] = {}

    def walk(command, name, parent):
        ctx = command.context_class(command, info_name=name, parent=parent)
        pages[ctx.command_path.replace(" ", "-") + ".1"] = _page(command, ctx)
        for sub_name, sub in (getattr(command, "commands", {}) or {}).items():
            if not sub.hidden:
                walk(sub, sub_name, ctx)

    walk(root, "tuner", None)
    return pages


def write_pages(target_dir: str) -> list:
    os.makedirs(target_dir, exist_ok=True)
    written = []
    for name, text in render_pages().items():
        with open(os.path.join(target_dir, name), "w") as f:
            f.write(text)
        written.append(name)
    return written


if __name__ == "__main__":
    for name in write_pages(sys.argv[1] if len(sys.argv) > 1 else "man"):
        print(name)
