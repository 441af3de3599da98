"""Shell completion (typer's, answered through click's _TUNER_COMPLETE protocol), asked
for the way the installed scripts ask: the installed `tuner` as a real process, with the
environment a shell gives it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

TUNER = shutil.which("tuner", path=os.path.dirname(sys.executable)) or shutil.which("tuner")


def complete(env: dict, *args: str) -> subprocess.CompletedProcess:
    assert TUNER, "the tuner console script is not installed next to this python"
    return subprocess.run([TUNER, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def bash(words: str) -> list:
    """What bash's completion function gets for the line `words` (the cursor at its end)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    out = complete({"_TUNER_COMPLETE": "complete_bash", "COMP_WORDS": words,
                    "COMP_CWORD": str(cword)})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_bash_script_is_produced_and_sources():
    out = complete({"_TUNER_COMPLETE": "source_bash"})
    assert out.returncode == 0, out.stderr
    assert "complete -o default -F _tuner_completion tuner" in out.stdout
    assert "_TUNER_COMPLETE=complete_bash" in out.stdout
    # bash itself accepts it and registers the function for tuner.
    check = subprocess.run(["bash", "-c", out.stdout + "\ncomplete -p tuner"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "_tuner_completion" in check.stdout, check.stderr


def test_show_completion_prints_the_script_for_a_named_shell():
    out = complete({"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}, "--show-completion", "zsh")
    assert out.returncode == 0, out.stderr
    assert "compdef _tuner_completion tuner" in out.stdout


def test_completing_a_command_name():
    assert bash("tuner ap") == ["apply"]
    assert bash("tuner re") == ["report", "revert"]


def test_completing_an_option_of_a_command():
    assert bash("tuner apply --per") == ["--persist"]
    assert "--json" in bash("tuner revert --")


@pytest.mark.parametrize("shell,env", [
    ("zsh", {"_TYPER_COMPLETE_ARGS": "tuner ap"}),
    ("fish", {"_TYPER_COMPLETE_ARGS": "tuner ap", "_TYPER_COMPLETE_FISH_ACTION": "get-args"}),
])
def test_zsh_and_fish_complete_too(shell, env):
    out = complete({"_TUNER_COMPLETE": f"complete_{shell}", **env})
    assert out.returncode == 0, out.stderr
    if shell == "fish":   # a line per candidate: name TAB help
        names = [line.split("\t")[0] for line in out.stdout.splitlines() if line]
    else:                 # _arguments '*: :(("name":"help" ...))'
        names = re.findall(r'"([a-z]+)":', out.stdout)
    assert names == ["apply"], out.stdout
