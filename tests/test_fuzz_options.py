"""Generated bad values for every numeric option of every command.

The options are found in the typer command tree: every option whose parser is an
inputs.Number (the one way tuner reads a number), so an option added later is fuzzed
without touching this file; test_every_numeric_looking_option_is_a_number catches a
numeric option declared without one. Each value must give exit 2, exactly one line on
stderr starting 'tuner: error:' that names the option, no traceback, nothing on stdout,
and no host setting changed. Most runs are in-process (cli.main, the same entry point
as the console script); a sample runs as real processes.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main

from tuner import cli, inputs

from applyhelp import host_values

# Valid argv for each command, so the one bad value is the only thing wrong. Cheap if a
# bad value were wrongly accepted: a 10-connection probe, an apply that needs nothing.
BASE = {
    "report": {},
    "metrics": {},
    "apply": {"--target": "1000", "--yes": None},
    "revert": {"--dry-run": None},
    "probe": {"--connections": "10", "--timeout": "5"},
    "diagnose": {"--pid": str(os.getpid())},
}
# Options that only one mode reads are fuzzed in that mode.
MODE = {"--expect": {"--serve": "127.0.0.1:0", "--timeout": "2"},
        "--echo-timeout": {"--serve": "127.0.0.1:0", "--timeout": "2"},
        "--interval": {"--watch": "1"}}


def _command_tree():
    return typer.main.get_command(cli.app).commands


def parser_of(param):
    """The parser= an option was declared with (typer 0.28 wraps it in a FuncParamType;
    0.29 keeps it in the type descriptor)."""
    described = getattr(param, "type_descriptor", None)
    if described is not None:
        return described.parameter_info.parser
    return getattr(getattr(param, "type", None), "func", None)


def numeric_options():
    """(command, option, Number) for every option read by an inputs.Number."""
    out = []
    for name, cmd in sorted(_command_tree().items()):
        for param in cmd.params:
            parser = parser_of(param)
            if isinstance(parser, inputs.Number):
                out.append((name, param.opts[0], parser))
    return out


def bad_values(number: inputs.Number):
    """(label, text) of values every Number must refuse, given its bounds."""
    values = [("negative", "-1"), ("empty", ""), ("space", " "), ("nan", "nan"), ("inf", "inf"),
              ("-inf", "-inf"), ("Infinity", "Infinity"), ("overflow", "1e999"),
              ("superscript", "²"), ("arabic-indic", "٣"), ("fullwidth", "１"),
              ("fullwidth-target", "１０００"), ("devanagari", "५"),
              ("5000 digits", "9" * 5000), ("2^64", str(2 ** 64)), ("words", "many"),
              ("hex", "0x10"), ("nul", "1\0")]
    if not (number.low < 0 or number.low == 0 and not number.low_open):
        values.append(("zero", "0"))
    if number.low == 0 and not number.low_open:
        values.append(("tiny negative", "-0.001"))
    huge = number.high * 10 if number.kind != "target" else number.high + 1
    values.append(("huge", str(int(huge))))
    if number.kind == "float":
        values.append(("1e300", "1e300"))
    return values


CASES = [(cmd, opt, label, text) for cmd, opt, number in numeric_options()
         for label, text in bad_values(number)]


def _argv(command, option, value):
    base = dict(BASE[command])
    base.update(MODE.get(option, {}))
    base.pop(option, None)
    argv = [command]
    for opt, val in base.items():
        argv += [opt] if val is None else [opt, val]
    return argv + [option, value]


def test_every_command_with_numbers_is_fuzzed():
    fuzzed = {cmd for cmd, _, _ in numeric_options()}
    assert fuzzed <= set(BASE), f"add a valid argv to BASE for {fuzzed - set(BASE)}"
    assert {"report", "apply", "probe"} <= fuzzed
    assert len(numeric_options()) >= 12


def test_every_numeric_looking_option_is_a_number():
    """An int/float option, or one whose placeholder is a number, is read by an
    inputs.Number: typer's own int() and float() take '٣', 'nan' and 'inf'."""
    numeric_metavars = {"N", "PID", "PORT", "SECONDS", "[SECONDS]", "RATE", "auto|K", "K", "MS"}
    checked = 0
    for name, cmd in _command_tree().items():
        for param in cmd.params:
            if getattr(param, "is_flag", False):
                continue
            described = getattr(param, "type_descriptor", None)
            annotation = str(getattr(described, "annotation", "")) if described else ""
            click_type = type(getattr(param, "type", None)).__name__
            looks = (click_type in ("IntParamType", "FloatParamType", "IntRange", "FloatRange")
                     or any(t in annotation for t in ("int", "float"))
                     or param.metavar in numeric_metavars)
            if looks:
                checked += 1
                assert isinstance(parser_of(param), inputs.Number), (name, param.opts)
    assert checked == len(numeric_options())


@pytest.fixture(scope="module")
def host_before():
    return host_values()


@pytest.mark.parametrize("command, option, label, text", CASES,
                         ids=[f"{c}{o}-{lbl}" for c, o, lbl, _ in CASES])
def test_bad_number_is_one_line_exit_2_nothing_changed(capsys, tmp_path, monkeypatch, host_before,
                                                       command, option, label, text):
    monkeypatch.setenv("TUNER_JOURNAL", str(tmp_path / "journal.json"))
    capsys.readouterr()
    rc = cli.main(_argv(command, option, text))
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuner: error: "), err
    assert option in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "journal.json").exists()
    assert host_values() == host_before


# A sample as real processes: the console script's exit status and stderr, byte for byte.
SAMPLE = [("probe", "--rate", "nan"), ("probe", "--timeout", "inf"), ("probe", "--workers", "²"),
          ("probe", "--echo-timeout", "nan"), ("report", "--target", "9" * 5000),
          ("apply", "--pid", "1099511627776"), ("report", "--destinations", "٣"),
          ("probe", "--connections", "１")]


@pytest.mark.parametrize("command, option, text", SAMPLE, ids=[f"{c}{o}" for c, o, _ in SAMPLE])
def test_bad_number_as_a_real_process(tmp_path, host_before, command, option, text):
    env = dict(os.environ, TUNER_JOURNAL=str(tmp_path / "journal.json"))
    proc = subprocess.run([sys.executable, "-m", "tuner", *_argv(command, option, text)],
                          capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"tuner: error: {option} ")
    assert host_values() == host_before


@pytest.mark.parametrize("argv, says", [
    (["probe", "-n", "10", "--expect", "5"], "--expect is for --serve or --connect only"),
    (["probe", "-n", "10", "--echo-timeout", "3"], "--echo-timeout is for --serve only"),
    (["probe", "--connect", "127.0.0.1:9", "-n", "1", "--expect", "5"], "--expect"),
    (["probe", "-n", "10", "--source-net", ""], "--source-net"),
    (["probe", "--connect", "127.0.0.1:9", "-n", "1", "--source-net", ""], "--source-net"),
    (["apply", "-n", "1000", "--dry-run", "--source-net", ""], "--source-net"),
])
def test_options_that_would_be_ignored_or_defaulted_are_refused(capsys, argv, says):
    """probe --expect without --serve used to be accepted and ignored; --source-net ''
    silently became the default network."""
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("tuner: error: ") and says in err
    assert out == ""


@pytest.mark.parametrize("argv", [
    ["probe", "-n", "1", "--hold", "0", "--rate", "0.5", "--timeout", "30", "--workers", "1"],
])
def test_edge_values_that_are_valid_still_run(capsys, argv):
    """The bounds are not too tight: --hold 0 and a slow rate are real probes."""
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "1 of 1" in out
