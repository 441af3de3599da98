"""The committed man pages are what the typer app generates now."""
import os

from tuner import errors, knobs, manpages

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
