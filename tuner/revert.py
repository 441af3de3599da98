"""`tuner revert`: put back what the journal says tuner changed, newest change first.

For each entry: if the setting still holds what tuner wrote, restore the original; if
it already holds the original (or what it belonged to is gone: an exited process, a
deleted namespace), there is nothing to do; if it holds anything else, someone changed
it after tuner did, so leave it and say so, unless --force.  Each restored entry leaves
the journal at once, so a revert interrupted half-way can simply be run again; what is
left (drifted, failed) stays for a later `revert --force`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, List, Optional

from . import hostlog, settings
from .apply import check_root
from .journal import Journal, JournalWriteError, locked, resolve_path

SCHEMA = "tuner.revert/2"

RESTORED, ALREADY, GONE, DRIFTED, FAILED = "restored", "already original", "gone", "drifted", "failed"
WOULD_RESTORE = "would restore"
OK_ACTIONS = (RESTORED, ALREADY, GONE, WOULD_RESTORE)


@dataclass
class Row:
    knob: str
    kind: str
    where: str
    current: Any
    wrote: Any
    original: Any
    action: str
    reason: str = ""

    def to_dict(self) -> dict:
        """JSON (tuner.revert/2): values as lists, as every document gives them."""
        kind = settings.kind(self.kind)
        return {**asdict(self), **{name: kind.to_json(getattr(self, name))
                                   for name in ("current", "wrote", "original")}}


@dataclass
class Outcome:
    journal: str
    found: bool
    dry_run: bool
    force: bool
    rows: List[Row] = field(default_factory=list)
    # Set when the journal could not be rewritten after a restore (a full disk): it
    # still lists settings that are back to their originals (the next revert drops them).
    journal_error: Optional[str] = None

    @property
    def complete(self) -> bool:
        return all(r.action in OK_ACTIONS for r in self.rows)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "journal": self.journal, "found": self.found,
                "dry_run": self.dry_run, "force": self.force, "complete": self.complete,
                "journal_error": self.journal_error, "rows": [r.to_dict() for r in self.rows]}


def where(entry) -> str:
    return settings.kind(entry["kind"]).where(entry["netns"], entry["detail"])


def run(journal_path: Optional[str] = None, force: bool = False, dry_run: bool = False,
        confirm: Optional[Callable[[Outcome], None]] = None) -> Outcome:
    """Revert (or, dry_run, say what would be). `confirm` sees what a revert would
    restore, under the lock, before anything is touched, and may raise to stop there; it
    is not asked when there is nothing to restore."""
    path = resolve_path(journal_path)
    if not dry_run:
        check_root("revert")
        with locked(path):
            if confirm is not None:
                preview = _revert(path, force, True)
                if any(r.action == WOULD_RESTORE for r in preview.rows):
                    confirm(preview)
            return _revert(path, force, dry_run)
    return _revert(path, force, dry_run)


def _revert(path: str, force: bool, dry_run: bool) -> Outcome:
    journal = Journal.load(path)  # corrupt or untrusted: raises before anything is touched
    out = Outcome(path, journal is not None, dry_run, force)
    if journal is None:
        return out
    unrecorded = None
    for entry in list(reversed(journal.entries)):
        row = _restore(entry, force, dry_run)
        out.rows.append(row)
        if row.action in (RESTORED, ALREADY, GONE) and not dry_run:
            journal.entries.remove(entry)
            if journal.entries:
                try:
                    journal.save()
                    unrecorded = None
                except JournalWriteError as e:
                    # Restoring matters more than recording it: go on with the rest.
                    unrecorded = str(e)
    if not dry_run and not journal.entries:
        journal.delete()  # unlinking needs no space, even on a full filesystem
    elif unrecorded:
        out.journal_error = unrecorded
    return out


def _restore(entry, force: bool, dry_run: bool) -> Row:
    kind, netns, detail = settings.kind(entry["kind"]), entry["netns"], entry["detail"]
    row = Row(entry["knob"], kind.name, where(entry), None, entry["new"], entry["original"], "")
    row.current, failed, reason = settings.read_entry(entry)
    if failed is not None:
        row.action, row.reason = (GONE, f"{reason}: nothing to restore") if failed is settings.Gone else (FAILED, reason)
        return row
    if kind.same(row.current, entry["original"]):
        row.action = ALREADY
        if not dry_run:
            kind.settle(netns, detail, entry["original"])  # what a killed write left behind
        return row
    # A write recorded as pending may or may not have happened before a crash.
    ours = [entry["new"]] + ([entry["before"]] if entry["state"] == "pending" else [])
    if not any(kind.same(row.current, v) for v in ours) and not force:
        row.action = DRIFTED
        row.reason = ("changed since tuner wrote it (by someone else?): left alone; "
                      "'tuner revert --force' restores the original anyway")
        return row
    if dry_run:
        row.action = WOULD_RESTORE
        return row
    try:
        kind.undo(netns, detail, entry["original"])
        row.action = RESTORED
        hostlog.change("revert", row.knob, row.where, kind.describe(row.current, row.knob),
                       kind.describe(entry["original"], row.knob), "tuner revert" + (" --force" if force else ""))
    except settings.Gone as e:
        row.action, row.reason = GONE, f"{e}: nothing to restore"
    except settings.WriteError as e:
        row.action, row.reason = FAILED, str(e)
    return row
