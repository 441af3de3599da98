"""A fix as a value: what to run or change, why, what it needs, and where it applies.

One module builds every Suggestion from facts, for the capacity model, diagnose, its
--watch and the probe: tuner/fixes.py.  `render` (the text a user reads and pastes)
and `to_dict` (the JSON: `command` that same text when it runs as written, else null)
are the only places that spell one.  Nothing reads a rendered command back: code that
needs to know what a suggestion does asks its fields (`verb`, `option("--pid")`,
`scope`, `needs`).

Adding a kind of suggestion: a verb constant below, a constructor for it, and its
spelling in `_SPELL`; `is_command` says whether it is shaped as a command,
`runs_as_written` whether it runs as pasted (no Placeholder left to fill).
"""
from __future__ import annotations

import shlex
from typing import Any, Callable, Dict, FrozenSet, Optional, Sequence, Tuple

from tuner.host.numfmt import target_word

# The verbs.  A tuner command's verb is its subcommand; its args are its options in order.
APPLY, DIAGNOSE, PROBE, REPORT = "tuner apply", "tuner diagnose", "tuner probe", "tuner report"
TUNER_VERBS = (APPLY, DIAGNOSE, PROBE, REPORT)
SETTING = "setting"    # a setting kind's own command (tuner/settings/: sysctl -w ...)
WRITE = "write"        # a value written to a file (a cgroup's pids.max)
CONFIG = "config"      # an application's config lines, then the reload or restart taking them
ADVICE = "advice"      # words for a person, where no one command does it
EITHER = "either"      # one of two suggestions, the second named ("one AnyIP prefix")

# What a suggestion needs besides being run.
ROOT, RESTART, RELOAD = "root", "restart", "reload"

# Where it applies (`scope`, and `at` names which one).
HOST, NETNS, PIDS, UNIT, CGROUP, APPLICATION = "host", "netns", "pid", "unit", "cgroup", "application"


class Count(int):
    """A number of connections spelled as a user types it (1000000 as 1M: numfmt.target_word);
    a plain int is spelled in digits."""


class Placeholder(str):
    """A word the user puts a value in place of before running (DEV, CIDR, PREFIX):
    spelled as it is, and a command holding one does not run as written (its JSON
    `command` is null; the text wraps as a command still)."""


class Suggestion:
    """One fix. A plain class, not a dataclass: every report imports it, and a frozen
    dataclass's generated methods cost start-up time. Immutable by convention (`but`
    gives a changed copy); equal when every field but the setting kind object is."""

    __slots__ = ("verb", "args", "why", "kind", "needs", "scope", "at", "words", "setting")
    FIELDS = __slots__[:-1]          # what equality and hashing compare

    def __init__(self, verb: str, args: Tuple[Tuple[str, Any], ...] = (), why: str = "",
                 kind: str = "tuner", needs: FrozenSet[str] = frozenset(), scope: str = HOST,
                 at: Any = None, words: str = "", setting: Any = None) -> None:
        self.verb = verb
        # The verb's arguments, in order, as (name, value): a tuner command's options
        # (("--target", Count(5000)), ("--pid", 812)); a flag's value is None.
        self.args = args
        self.why = why
        self.kind = kind             # what it changes, as diagnose's JSON names it
        self.needs = needs           # ROOT, RESTART, RELOAD
        self.scope = scope           # where it applies
        self.at = at                 # which: the namespace, pids, unit, cgroup file, config file
        self.words = words           # ADVICE's sentence
        self.setting = setting       # SETTING: the settings kind whose command() spells it

    def but(self, **changes: Any) -> "Suggestion":
        """A copy with `changes` (why, kind, scope, at, ...)."""
        return Suggestion(**{**{k: getattr(self, k) for k in self.__slots__}, **changes})

    def _key(self) -> tuple:
        return tuple(getattr(self, k) for k in self.FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Suggestion) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Suggestion({self.verb!r}, {self.args!r}, why={self.why!r})"

    def option(self, name: str) -> Tuple[Any, ...]:
        """Every value given to `name` (("--pid", 1), ("--pid", 2) -> (1, 2))."""
        return tuple(v for k, v in self.args if k == name)

    def arg(self, name: str, default: Any = None) -> Any:
        return next((v for k, v in self.args if k == name), default)

    @property
    def step(self) -> tuple:
        """What is done, without why: two suggestions with the same step are one."""
        return (self.verb, self.args, self.words)

    @property
    def is_command(self) -> bool:
        """Shaped as a command: wrapped with '\\' when long, where advice wraps as prose."""
        return self.verb in TUNER_VERBS or self.verb in (SETTING, WRITE)

    @property
    def runs_as_written(self) -> bool:
        """A command with no Placeholder left to fill: what the JSON's `command` holds."""
        return self.is_command and not any(isinstance(v, Placeholder) for _, v in self.args)

    def render(self) -> str:
        return _SPELL[self.verb](self)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON: `command` is a shell command that runs as written, or null (an
        application's config lines, words for a person); `text` is what the text output
        says, for every kind (issue 28: a config fix's 'command' was a sentence)."""
        out: Dict[str, Any] = {"command": self.render() if self.runs_as_written else None, "text": self.render(),
                               "why": self.why, "kind": self.kind}
        if self.verb == CONFIG:   # what to write where, then how the application takes it
            out.update(lines=list(self.arg("lines")), file=self.arg("file"), then=self.arg("then"),
                       action=self.arg("action"))
        return out


# ---------------------------------------------------------------- constructors

def tuner(verb: str, *args: Tuple[str, Any], why: str = "", kind: str = "tuner",
          needs: Sequence[str] = (), scope: str = HOST, at: Any = None) -> Suggestion:
    """A tuner command: `tuner(APPLY, ("--target", Count(n)), ("--dry-run", None))`."""
    return Suggestion(verb, tuple(args), why, kind, frozenset(needs), scope, at)


def setting(kind_obj, netns: Optional[str], name: str, value: str, why: str = "",
            kind: str = "sysctl") -> Suggestion:
    """A setting kind's own command for one value (a sysctl: `sysctl -w name=value`,
    inside `ip netns exec` for a namespace's)."""
    return Suggestion(SETTING, (("name", name), ("value", value), ("netns", netns)), why, kind,
                      frozenset((ROOT,)), NETNS if netns else HOST, netns, setting=kind_obj)


def write(path: str, value: Any, why: str = "", kind: str = "cgroup") -> Suggestion:
    return Suggestion(WRITE, (("path", path), ("value", value)), why, kind, frozenset((ROOT,)),
                      CGROUP, path)


def config(lines: Sequence[str], file: Optional[str], then: str, action: str, why: str = "") -> Suggestion:
    """An application's own setting: its config lines (in `file`), then the reload or
    restart command that takes them (`action`: RELOAD or RESTART, the adapter's word)."""
    return Suggestion(CONFIG, (("lines", tuple(lines)), ("file", file), ("then", then), ("action", action)),
                      why, "application", frozenset((ROOT, action)), APPLICATION, file)


def advice(words: str, why: str = "", kind: str = "tuner", scope: str = HOST, at: Any = None) -> Suggestion:
    return Suggestion(ADVICE, (), why, kind, frozenset(), scope, at, words)


def either(first: Suggestion, second: Suggestion, second_is: str = "") -> Suggestion:
    """One of two ways, the second named by `second_is` (words, not a command): "first,
    or one AnyIP prefix: second". Not a command as written (the reader picks one)."""
    return Suggestion(EITHER, (("first", first), ("second", second), ("second_is", second_is)),
                      first.why, first.kind, first.needs | second.needs, first.scope, first.at)


# ---------------------------------------------------------------- spelling

def _value(v: Any) -> str:
    if isinstance(v, Placeholder):
        return str(v)
    return target_word(v) if isinstance(v, Count) else shlex.quote(str(v))


def _tuner(s: Suggestion) -> str:
    parts = [s.verb] + [k if v is None else f"{k} {_value(v)}" for k, v in s.args]
    return " ".join(parts)


def _setting(s: Suggestion) -> str:
    return s.setting.command(s.arg("netns"), {"name": s.arg("name")}, s.arg("value"))


def _write(s: Suggestion) -> str:
    return f"echo {s.arg('value')} > {shlex.quote(s.arg('path'))}"


def _config(s: Suggestion) -> str:
    where = f"in {s.arg('file')}: " if s.arg("file") else ""
    return f"{where}{' '.join(s.arg('lines'))} then {s.arg('then')} ({s.arg('action')})"


def _either(s: Suggestion) -> str:
    named = f"{s.arg('second_is')}: " if s.arg("second_is") else ""
    return f"{s.arg('first').render()}, or {named}{s.arg('second').render()}"


_SPELL: Dict[str, Callable[[Suggestion], str]] = {
    **{verb: _tuner for verb in TUNER_VERBS},
    SETTING: _setting, WRITE: _write, CONFIG: _config, ADVICE: lambda s: s.words, EITHER: _either,
}
