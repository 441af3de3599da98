"""The README and docs/: every link lands on a file and heading that exist, every page in
docs/ is reachable from the README, the README's first screen has what tuner is and its
two commands, and no line tells a reader to do what cannot work."""
from __future__ import annotations

import os
import re

import pytest

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DOCS = os.path.join(REPO, "docs")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FIRST_SCREEN = 24   # lines of an 80x24 terminal


def pages() -> list:
    return ["README.md"] + sorted(os.path.join("docs", n) for n in os.listdir(DOCS) if n.endswith(".md"))


def read(page: str) -> str:
    with open(os.path.join(REPO, page)) as f:
        return f.read()


def prose(text: str) -> str:
    """The text outside fenced code blocks (links and headings live there)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(text: str) -> set:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("page", pages())
def test_every_link_lands_on_a_file_and_heading_that_exist(page):
    here = os.path.dirname(os.path.join(REPO, page))
    for target in LINK.findall(prose(read(page))):
        if re.match(r"^[a-z]+:", target):
            continue   # a web address: not checked here
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(here, path)) if path else os.path.join(REPO, page)
        assert os.path.exists(full), f"{page}: link to {target}: no such file"
        if anchor and full.endswith(".md"):
            with open(full) as f:
                assert anchor in anchors(f.read()), f"{page}: link to {target}: no such heading"


def test_every_page_in_docs_is_linked_from_the_readme():
    linked = {os.path.normpath(t.partition("#")[0]) for t in LINK.findall(prose(read("README.md")))}
    for page in pages()[1:]:
        assert page in linked, f"{page} is not linked from README.md"


def test_the_first_screen_says_what_tuner_is_and_its_two_commands():
    first = read("README.md").splitlines()[:FIRST_SCREEN]
    block = first[first.index("```sh") + 1:first.index("```sh") + 3]
    assert block[0].endswith("tuner report --target 1000000") and "pip install ." in block[0]
    assert block[1].endswith("python -m pytest") and "pip install '.[test]'" in block[1]
    assert any("connections" in line for line in first[:first.index("```sh")])


@pytest.mark.parametrize("page", pages())
def test_nothing_a_reader_cannot_do(page):
    text = read(page)
    # tuner is on no package index: installed from a clone (`pip install .`)
    assert not re.search(r"pip install (-U )?['\"]?tuner\b", text), page
    assert "the issue" not in text.lower(), page


def test_what_the_readme_says_of_json_is_what_the_commands_take():
    """README: every command that prints a table has --json, metrics and plot named as the
    two that do not (issue 28: it said every command, and two refused --json)."""
    from tuner import manpages

    text = " ".join(read("README.md").split())
    assert "Every command that prints a table has `--json` (`metrics` prints" in text
    without = {"metrics", "plot"}
    for command, ctx in manpages._commands()[1:]:
        has_json = any("--json" in getattr(p, "opts", ()) for p in command.params)
        assert has_json == (ctx.info_name not in without), ctx.command_path


def test_every_application_adapter_has_its_section():
    """docs/applications.md has a section for every adapter in tuner/apps/, its heading
    naming the adapter as `name` (issue 28: Redis, PostgreSQL and the runtimes had none)."""
    from tuner.apps import ADAPTERS

    headings = re.findall(r"^## (.+)$", prose(read("docs/applications.md")), flags=re.M)
    for name in ADAPTERS:
        assert any(f"`{name}`" in h for h in headings), f"docs/applications.md has no section for `{name}`"
