"""`tuner status`: is what tuner applied and persisted still in effect?

Read only. For each change the journal lists, the setting is read now through its
setting kind (tuner/settings/: the same read and normalisation apply verifies with)
and compared with what tuner wrote: in effect, drift (someone changed it since), gone
(its namespace or process no longer exists) or pending (an apply was interrupted
around this write). For each persisted file: whether it is still there as tuner wrote
it, and, for each of its settings, what a boot (or login) ends up with once the files
applied after it are read (settings/file.py: sysctl.d's directory precedence, limits.d,
a unit's drop-ins). The journal is read by tuner.journal, with its trust checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import settings
from tuner.host.errors import UsageError
from .journal import Journal, resolve_path
from .settings import file as file_kind

SCHEMA = "tuner.status/1"

IN_EFFECT, DRIFT, GONE, PENDING, UNREADABLE = "in effect", "drift", "gone", "pending", "unreadable"
EDITED, MISSING, OVERRIDDEN = "edited", "missing", "overridden"


@dataclass
class Change:
    knob: str
    kind: str
    where: str
    netns: Optional[str]
    wrote: Any
    now: Any
    status: str
    reason: str = ""
    # Host sysctls only: whether a boot sets what tuner wrote (None: not a boot setting,
    # a namespace's or a process's ends with it), the value it would set and from where.
    at_boot: Optional[bool] = None
    boot_value: Optional[str] = None
    boot_source: Optional[str] = None

    def to_dict(self) -> dict:
        kind = settings.kind(self.kind)
        boot = settings.kind("sysctl").to_json(self.boot_value)
        return {"knob": self.knob, "kind": self.kind, "where": self.where, "netns": self.netns,
                "wrote": kind.to_json(self.wrote), "now": kind.to_json(self.now), "status": self.status,
                "reason": self.reason, "at_boot": self.at_boot, "boot_value": boot,
                "boot_source": self.boot_source}


@dataclass
class Persisted:
    knob: str            # sysctl.d, limits.d, systemd drop-in
    path: str
    exists: bool
    status: str
    reason: str = ""
    # Each setting the file holds now: key, its value, and whether boot keeps it.
    settings: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class Status:
    journal: str
    found: bool
    applies: List[Dict[str, Any]] = field(default_factory=list)
    changes: List[Change] = field(default_factory=list)
    files: List[Persisted] = field(default_factory=list)

    @property
    def in_effect(self) -> bool:
        return all(c.status == IN_EFFECT for c in self.changes) and all(
            f.status == IN_EFFECT for f in self.files)

    def next_step(self) -> str:
        """What puts things right, for the first thing not in effect: a drifted value
        is set again by the apply that wrote it (or its original comes back with
        revert --force); a file applied later is edited; revert clears the rest."""
        states = {c.status for c in self.changes} | {f.status for f in self.files}
        if states & {DRIFT, EDITED, MISSING} and self.applies:
            argv = [a for a in self.applies[-1]["argv"] if a not in ("--yes", "-y")]
            return (f"tuner {' '.join(argv)} sets them again (or tuner revert --force "
                    f"restores the originals)")
        if OVERRIDDEN in states:
            return "remove those settings from the files applied later (or give them tuner's values)"
        return "tuner revert --dry-run (what revert would restore and drop)"

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "journal": self.journal, "found": self.found,
                "in_effect": self.in_effect,
                "next": None if self.in_effect else self.next_step(), "applies": self.applies,
                "changes": [c.to_dict() for c in self.changes],
                "files": [vars(f) for f in self.files]}


def build(journal_path: Optional[str] = None) -> Status:
    """The status of everything the journal at `journal_path` (else $TUNER_JOURNAL, else
    the default) lists; a journal that is corrupt or that others could have written
    raises, as for revert."""
    path = resolve_path(journal_path)
    journal = Journal.load(path)
    if journal is None:
        return Status(path, False)
    entries = journal.entries
    files = [e for e in entries if e["kind"] == "file"]
    boot = _sysctl_boot(files)
    return Status(path, True, list(journal.data.get("applies", [])),
                  [_change(e, boot) for e in entries if e["kind"] != "file"],
                  [_persisted(e) for e in files])


def _change(entry: Dict[str, Any], boot: Dict[str, tuple]) -> Change:
    kind, netns, detail = settings.kind(entry["kind"]), entry["netns"], entry["detail"]
    row = Change(entry["knob"], kind.name, kind.where(netns, detail), netns, entry["new"], None, IN_EFFECT)
    row.now, failed, reason = settings.read_entry(entry)
    if failed is not None:
        row.status, row.reason = (GONE, f"{reason}: the change went with it") if failed is settings.Gone \
            else (UNREADABLE, reason)
        return row
    if not kind.same(row.now, entry["new"]):
        if entry["state"] == "pending":
            row.status, row.reason = PENDING, "an apply was interrupted around this write: run 'tuner revert'"
        else:
            row.status = DRIFT
            row.reason = (f"now {kind.describe(row.now, row.knob)}, tuner wrote "
                          f"{kind.describe(entry['new'], row.knob)}: changed since (by someone else?)")
    if kind.name == "sysctl" and netns is None:
        name = detail["name"]
        row.boot_value, row.boot_source = boot.get(name, (None, None))
        row.at_boot = row.boot_value is not None and kind.same(row.boot_value, entry["new"])
    return row


def _sysctl_boot(files: List[Dict[str, Any]]) -> Dict[str, tuple]:
    """sysctl name -> (value at boot, the file that sets it), from the sysctl.d tuner
    persisted to (its --root-dir), else the host's own."""
    ours = [e["detail"]["path"] for e in files if e["knob"] == "sysctl.d"]
    return file_kind.boot_values(ours[-1] if ours else "/" + file_kind.SYSCTL_FILE)


def _persisted(entry: Dict[str, Any]) -> Persisted:
    kind, path = settings.kind("file"), entry["detail"]["path"]
    try:
        text = kind.read(None, entry["detail"])
    except (settings.WriteError, UsageError) as e:
        return Persisted(entry["knob"], path, False, UNREADABLE, str(e))
    row = Persisted(entry["knob"], path, text is not None, IN_EFFECT)
    if text is None and entry["new"] is not None:
        row.status, row.reason = MISSING, "removed since tuner wrote it: nothing of it applies at boot"
        return row
    if not kind.same(text, entry["new"]):
        row.status, row.reason = EDITED, "changed since tuner wrote it (by someone else?)"
    _, parse = file_kind.boot_sources(path)
    ours = parse(text)
    later = file_kind.overridden(path, ours)
    for key, value in ours.items():
        wins = later.get(key)
        row.settings.append({"key": key, "value": value, "at_boot": wins is None,
                             "boot_value": wins[0] if wins else value,
                             "boot_source": wins[1] if wins else path})
    if later and row.status == IN_EFFECT:
        row.status = OVERRIDDEN
        row.reason = "; ".join(f"{other} is applied later and sets {key} = {value}"
                               for key, (value, other) in later.items())
    return row
