"""What every setting kind provides, the errors its writes raise, and the Change record.

A setting kind (sysctl, rlimit, address alias, persisted file) is one class holding,
side by side, everything tuner does with one setting of that kind: plan it from a knob,
read it (the original is read right before writing, as tuned does), write it and
verify with the same normalisation, undo it, check a journal entry of it, describe a
value for people, the shell command that does the same, and where it lives.  Plan,
journal, apply, revert and render ask the kind; none of them knows the kinds apart.

Values, as the kinds hold them in memory: text for a sysctl ("32768 60999"), an int
for an rlimit, a bool (present) for an alias, text or None (absent) for a file.  In JSON
(command output and the journal on disk) every value is one type, a list or null, as
`tuner report --json` gives a knob's value: `to_json`/`from_json` convert, and the
journal reads and writes through them (docs/json.md).
"""
from __future__ import annotations

import errno
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from tuner.host.errors import TunerError
from ..knobs import BY_NAME
from tuner.host.netns import exists
from tuner.host.numfmt import values

# Test hook: SIGKILL this process at a named point inside a write (for example
# "file-temp": a persisted file's temp copy written, not yet renamed) to prove that a
# crash there leaves nothing revert cannot clean up. Unset in normal runs.
KILL_AT_ENV = "TUNER_TEST_KILL_AT"


def crash_point(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class WriteError(TunerError):
    """A write the kernel (or filesystem) refused; the message names the reason."""


class Gone(Exception):
    """The thing a setting belonged to no longer exists (process exited, netns deleted);
    nothing is left to restore."""


def fsync_dir(directory: str) -> None:
    """Make a rename or unlink in `directory` durable (the journal's and persisted files')."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_reason(e: OSError) -> str:
    """'ENOSPC: No space left on device': the errno's name first, for grepping."""
    name = errno.errorcode.get(e.errno or 0, "error")
    return f"{name}: {e.strerror}" if e.strerror else name


# Every setting kind by name: filled by the package (tuner/settings/__init__.py) when it
# finds the kinds' modules, held here so a Change can find its kind without importing
# the package that imports this module.
KINDS: Dict[str, "Kind"] = {}


@dataclass
class Change:
    """One write the plan makes. `key` names the setting, so a second apply finds the
    first's record in the journal; `detail` is what the kind needs to find it again."""

    knob: str
    kind: str            # a registered setting kind's name
    scope: str           # host | netns | process | file
    netns: Optional[str]
    key: str
    current: Any         # the kind's value representation (see the module docstring)
    new: Any
    why: str
    command: str         # the shell equivalent of the write
    detail: Dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return KINDS[self.kind].where(self.netns, self.detail)


def unit_of(knob: str) -> str:
    """The knob table's unit for a knob name ('' for what is not a knob: a file)."""
    row = BY_NAME.get(knob)
    return row.unit if row else ""


class Kind:
    """Base of every setting kind; subclasses override what differs.

    Class attributes: `name` (what the journal and plans call it), `knob_kinds` (the
    knob-table kinds it plans: a knob whose kind is listed here is planned by this
    kind), `value_doc` (the value representation, for journal errors).
    """

    name = ""
    knob_kinds: tuple = ()
    value_doc = ""

    # --- identity and text ---------------------------------------------------
    def key(self, netns: Optional[str], detail: Dict[str, Any]) -> str:
        raise NotImplementedError

    def where(self, netns: Optional[str], detail: Dict[str, Any]) -> str:
        return f"netns {netns}" if netns else "host"

    def describe(self, value: Any, knob: str = "") -> str:
        """A value as the plan and revert tables show it: amounts through the one number
        formatter (tuner/host/numfmt.py), in the unit of `knob` (a port range stays ports)."""
        if value is None or isinstance(value, bool):
            return "-" if value is None else str(value)
        return values(value if isinstance(value, str) else [value], unit_of(knob))

    def command(self, netns: Optional[str], detail: Dict[str, Any], value: Any) -> str:
        """The shell command that writes `value` (what the plan prints)."""
        raise NotImplementedError

    def diff(self, detail: Dict[str, Any], current: Any, new: Any) -> Optional[str]:
        """A change too big for a table cell, shown in full under the plan (None: the
        table's before/after says it all)."""
        return None

    # --- JSON -----------------------------------------------------------------------
    # What `from_json` accepts, for the journal's error message.
    json_doc = ""

    def to_json(self, value: Any) -> Optional[List[Any]]:
        """`value` as JSON gives every setting's value: a list of numbers and words (the
        report's form), or null."""
        raise NotImplementedError

    def from_json(self, values: Any) -> Any:
        """The inverse of to_json; ValueError when `values` is not one this kind gives."""
        raise NotImplementedError

    # --- the journal's checks --------------------------------------------------
    def valid_value(self, value: Any) -> bool:
        raise NotImplementedError

    def check_detail(self, detail: Dict[str, Any]) -> None:
        """Raise ValueError naming the field when a journal entry's detail is not one
        this kind could have written: revert acts on it as root."""
        raise NotImplementedError

    def record(self, detail: Dict[str, Any]) -> Dict[str, Any]:
        """The detail to journal before the first write: what undo needs beyond the
        plan's (a file records the directories it is about to create)."""
        return dict(detail)

    # --- read, write, undo ---------------------------------------------------------
    def normalise(self, value: Any) -> Any:
        return value

    def same(self, a: Any, b: Any) -> bool:
        return self.normalise(a) == self.normalise(b)

    def read(self, netns: Optional[str], detail: Dict[str, Any]) -> Any:
        """The current value; raises Gone when its process or namespace no longer exists."""
        try:
            return self.normalise(self._read(netns, detail))
        except OSError as e:
            raise WriteError(f"reading it failed: {os_reason(e)}") from None

    def write(self, netns: Optional[str], detail: Dict[str, Any], value: Any) -> None:
        """Write and verify; WriteError names the reason, Gone when there is nothing
        to write to."""
        try:
            self._write(netns, detail, value)
        except OSError as e:
            raise WriteError(os_reason(e)) from None
        got = self.read(netns, detail)
        if not self.same(got, value):
            raise WriteError(f"wrote {value!r} but it reads back as {got!r}")

    def settle(self, netns: Optional[str], detail: Dict[str, Any], value: Any) -> None:
        """After the setting holds `value` again (restored, or found already so): remove
        what an interrupted write of it may have left behind. Nothing, for most kinds."""

    def undo(self, netns: Optional[str], detail: Dict[str, Any], original: Any) -> bool:
        """Put `original` back unless it is there already, then settle; True if it wrote."""
        wrote = False
        if not self.same(self.read(netns, detail), original):
            self.write(netns, detail, original)
            wrote = True
        self.settle(netns, detail, original)
        return wrote

    def _read(self, netns, detail) -> Any:
        raise NotImplementedError

    def _write(self, netns, detail, value) -> None:
        raise NotImplementedError

    # --- planning ------------------------------------------------------------------
    def plan(self, knob, planning) -> List[Change]:
        """Changes knob (one of `knob_kinds`) needs under `planning` (tuner.plan.Planning).
        A kind records what it plans in planning.sim so later knobs see it."""
        return []

    def plan_first(self, planning) -> List[Change]:
        """Changes this kind makes before any knob is planned, so every knob's rule sees
        them (an AnyIP route: the knobs count its source addresses)."""
        return []

    def plan_after(self, planning) -> List[Change]:
        """Changes (or notes) this kind adds once every knob is planned."""
        return []

    def change(self, knob, netns: Optional[str], current: Any, new: Any,
               detail: Dict[str, Any], scope: Optional[str] = None, why: Optional[str] = None,
               command: Optional[str] = None) -> Change:
        return Change(knob.name if hasattr(knob, "name") else knob, self.name,
                      scope or knob.scope, netns, self.key(netns, detail), current, new,
                      why if why is not None else knob.why,
                      command if command is not None else self.command(netns, detail, new),
                      detail)


class Presence(Kind):
    """A kind whose value is whether something exists (an address alias, a local
    route): True or False, shown and kept in JSON as present/absent."""

    value_doc = "true or false"
    # As the report gives a word for a state (CAP_SYS_RESOURCE ["no"]).
    json_doc = '["present"] or ["absent"]'

    def describe(self, value, knob: str = "") -> str:
        return "present" if value else "absent"

    def valid_value(self, value) -> bool:
        return isinstance(value, bool)

    def to_json(self, value):
        return None if value is None else [self.describe(value)]

    def from_json(self, values):
        if values not in (["present"], ["absent"]):
            raise ValueError(f"not {self.json_doc}: {values!r}")
        return values == ["present"]


# ---------------------------------------------------------------- shared checks

IFNAMSIZ = 16   # a network device's name, its NUL included (linux/if.h)


def device_field(d: Dict[str, Any]) -> str:
    """detail.dev: a device name as the kernel takes one."""
    dev = text_field(d, "dev")
    check(len(dev) < IFNAMSIZ and "/" not in dev and dev.isprintable(), "detail.dev", dev)
    return dev


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def words(text: str) -> List[Any]:
    """'4096 87380 6291456' -> [4096, 87380, 6291456]: whitespace-separated, integers
    where a word is one as written (so '007' stays a word and joining gives it back)."""
    return [int(w) if _INT.match(w) else w for w in text.split()]


def is_words(values: Any) -> bool:
    """A list of integers and words without whitespace (what `words` gives)."""
    return isinstance(values, list) and all(
        is_int(v) or (isinstance(v, str) and v != "" and v.split() == [v]) for v in values)


_INT = re.compile(r"^-?(0|[1-9][0-9]*)$")


def check(ok: bool, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{what} is {value!r}")


def text_field(d: Dict[str, Any], name: str) -> str:
    value = d.get(name)
    check(isinstance(value, str) and value != "", f"detail.{name}", value)
    return value


def netns_gone(netns: Optional[str]) -> None:
    """Raise Gone when a setting's namespace has been deleted since it was written."""
    if netns is not None and not exists(netns):
        raise Gone(f"network namespace {netns} no longer exists")
