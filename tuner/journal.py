"""The write-ahead journal: what tuner changed, what was there before, crash-safe.

Before each write, apply records the setting's original value and the value it is
about to write (state "pending"), and saves the journal atomically: a temp file in the
same directory, fsync, rename over the old one, fsync the directory.  After the write
is verified the entry becomes "done".  A crash at any point leaves a journal that
names every setting that may have changed, so revert can always find its way back.

Trust: tuner runs as root and acts on what the journal says, so the journal, its temp
file and the locks must be files nobody else can write (the root-owned-file rule of
tuner/host/trust.py): owned by root (or by the
invoking user when not root), not group/world-writable, in a directory others cannot
write to (a sticky one such as /tmp is fine: others cannot replace our file there),
opened without following symlinks and checked on the open file (fstat).  Anything
else is refused with one line (exit 1) before anything is changed.  What is read is
capped (MAX_BYTES) and must be a regular file, so a FIFO or /dev/zero cannot hang or
exhaust tuner.  The temp file of a save is `.NAME.tuner-tmp` next to the journal: a
save killed half-way leaves at most that one file, which the next run removes.

Apply and revert hold a host-wide lock (/run/tuner.lock, or $TUNER_LOCK) and the
journal's own (PATH.lock) while they run; a second one is refused with exit 5.

One entry per setting (its `key`): a second apply that changes the same setting again
updates `new` but keeps `original`, so revert returns to the state before tuner's first
apply, not to the first apply's values.

Schema (tuner.journal/2, tuner/schemas/tuner.journal-2.json):
    {"schema": "tuner.journal/2", "created": ISO time, "updated": ISO time,
     "applies": [{"at": ISO time, "argv": [...], "target": N, "role": str, "netns": str|null}],
     "entries": [{"key": str, "knob": str, "kind": a setting kind (tuner/settings/),
                  "scope": str, "netns": str|null, "detail": {...}, "why": str,
                  "original": value before tuner's first write,
                  "before": value right before the latest write,
                  "new": value tuner wrote last,
                  "state": "pending|done", "command": shell equivalent of the write}]}
Values are lists, as every JSON document of tuner gives them (a sysctl [32768, 60999],
an rlimit [1024], an alias ["present"], a file its lines or null); in memory they are
the kind's own (tuner/settings/<kind>.py), converted on load and save.  A
tuner.journal/1 (the same, with the kinds' own values: "32768 60999", 1024, true, the
file's text), written before tuner was upgraded, is still read, so revert works across
an upgrade; the next save writes it as /2.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
from typing import Any, Dict, Iterator, List, Optional

from . import settings
from tuner.host.errors import EXIT_BUSY, EXIT_FAILED, TunerError, UsageError
from tuner.host.netns import check_syntax
# The root-owned-file rule lives in the trust layer; the journal and its lock follow it.
from tuner.host.trust import UntrustedFile, open_nofollow
from tuner.host.trust import own_dir as check_dir, own_file as check_file
from .settings.base import crash_point, fsync_dir, os_reason

SCHEMA = "tuner.journal/2"
# Journals older tuners wrote, still read (revert must work after an upgrade).
OLD_SCHEMAS = ("tuner.journal/1",)
DEFAULT_PATH = "/var/lib/tuner/journal.json"
ENV_VAR = "TUNER_JOURNAL"
DEFAULT_LOCK = "/run/tuner.lock"
LOCK_ENV_VAR = "TUNER_LOCK"
ENTRY_FIELDS = ("key", "knob", "kind", "netns", "detail", "original", "before", "new", "state")


def resolve_path(path: Optional[str] = None) -> str:
    """--journal, else $TUNER_JOURNAL, else /var/lib/tuner/journal.json."""
    return os.path.abspath(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class CorruptJournal(TunerError):
    exit_code = EXIT_FAILED


class JournalWriteError(TunerError):
    """The journal could not be saved (a full or read-only filesystem, ...)."""

    exit_code = EXIT_FAILED


MAX_BYTES = 16 << 20   # a journal of thousands of entries is well under 1 MiB
TEMP_SUFFIX = ".tuner-tmp"


def temp_path(path: str) -> str:
    """The one temp file a save of `path` uses: next to it, named after it."""
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + TEMP_SUFFIX)


class Journal:
    def __init__(self, path: str, data: Optional[Dict[str, Any]] = None):
        self.path = path
        self.data = data or {"schema": SCHEMA, "created": now(), "updated": None,
                             "applies": [], "entries": []}

    @property
    def entries(self) -> List[Dict[str, Any]]:
        return self.data["entries"]

    def find(self, key: str) -> Optional[Dict[str, Any]]:
        return next((e for e in self.entries if e["key"] == key), None)

    @classmethod
    def load(cls, path: str) -> Optional["Journal"]:
        """The journal at `path`, None when there is none; CorruptJournal if unreadable,
        UntrustedFile if someone else could have written it."""
        directory = os.path.dirname(path)
        try:
            check_dir(directory)
        except FileNotFoundError:
            return None
        try:
            fd = open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TunerError(f"cannot read journal {path}: {os_reason(e)}") from None
        try:
            check_file(fd, path)
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise TunerError(f"cannot read journal {path}: {os_reason(e)}") from None
        finally:
            os.close(fd)
        if len(raw) > MAX_BYTES:
            raise CorruptJournal(f"journal {path} is larger than {MAX_BYTES:,} bytes, so it is "
                                 f"not one tuner wrote; nothing was changed: inspect it, then "
                                 f"move it away")
        try:
            data = json.loads(raw.decode())
            _validate(data)
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            raise CorruptJournal(
                f"journal {path} is corrupt ({reason}); nothing was changed: inspect it, restore "
                f"the settings it lists by hand, then move it away") from None
        return cls(path, data)

    def text(self) -> str:
        return json.dumps(_on_disk(self.data), indent=2) + "\n"

    def save(self) -> None:
        """Write atomically (temp file, fsync, rename, fsync the directory); raise
        JournalWriteError naming the reason when the filesystem refuses."""
        self.data["updated"] = now()
        try:
            directory = self._directory()
            tmp = temp_path(self.path)
            self._write_temp(tmp, self.text().encode())
            crash_point("journal-temp")
            os.replace(tmp, self.path)
            fsync_dir(directory)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temp_path(self.path))
            raise JournalWriteError(f"writing journal {self.path} failed: {os_reason(e)}") from None

    def check_room(self, extra: List[Dict[str, Any]]) -> None:
        """That the journal can be written, and with `extra` entries added still fits
        next to its previous copy (a save holds both for a moment): written for real,
        then removed, so a full or read-only filesystem is found before any change."""
        projected = json.dumps(_on_disk({**self.data, "entries": self.entries + extra}), indent=2)
        current = 0
        with contextlib.suppress(OSError):
            current = os.stat(self.path).st_size
        # Room for the journal to grow to its largest and for a temp copy of that beside
        # it (a save holds both for a moment), plus slack for values read at write time
        # that are longer than the plan's.
        size = 2 * len(projected) - current + len(projected) // 10 + 256
        tmp = temp_path(self.path)
        try:
            self._directory()
            self._write_temp(tmp, b" " * max(size, 1))
        except OSError as e:
            raise JournalWriteError(
                f"journal {self.path} cannot be written ({os_reason(e)}): nothing was changed; "
                f"free space there or point --journal elsewhere") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _directory(self) -> str:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        check_dir(directory)
        return directory

    @staticmethod
    def _write_temp(tmp: str, data: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)   # a killed save's leftover: ours by its name
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "journal temp file")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path(self.path))
        fsync_dir(os.path.dirname(self.path))


VALUE_FIELDS = ("original", "before", "new")


def _on_disk(data: Dict[str, Any]) -> Dict[str, Any]:
    """The journal as saved: every value in JSON's form (the kind's to_json)."""
    def entry(e):
        kind = settings.kind(e["kind"])
        return {**e, **{name: kind.to_json(e[name]) for name in VALUE_FIELDS}}

    return {**data, "schema": SCHEMA, "entries": [entry(e) for e in data["entries"]]}


def _validate(data: Any) -> None:
    """Every field revert and apply will touch, checked before either touches anything:
    a bad entry found half-way through a revert would leave the host half-restored.
    Values become the kinds' own (from the lists of /2, checked as they are in /1)."""
    if not isinstance(data, dict) or data.get("schema") not in (SCHEMA,) + OLD_SCHEMAS:
        raise ValueError(f"not a {SCHEMA} document")
    if not isinstance(data.get("entries"), list) or not isinstance(data.get("applies"), list):
        raise ValueError("'entries' and 'applies' must be lists")
    if not all(isinstance(a, dict) for a in data["applies"]):
        raise ValueError("every 'applies' item must be an object")
    keys: Dict[str, int] = {}
    lists = data["schema"] == SCHEMA
    for i, e in enumerate(data["entries"]):
        try:
            _validate_entry(e, lists)
        except ValueError as err:
            key = e.get("key") if isinstance(e, dict) and isinstance(e.get("key"), str) else None
            raise ValueError(f"entry {i}{f' ({key})' if key else ''}: {err}") from None
        if e["key"] in keys:
            # One entry per setting: two would hold two "originals" for it.
            raise ValueError(f"entry {i}: key {e['key']!r} is also entry {keys[e['key']]}'s")
        keys[e["key"]] = i
    data["schema"] = SCHEMA  # values are now in memory's form; a save writes /2


_STATES = ("pending", "done")


def _check(ok: bool, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{what} is {value!r}")


def _text(d: Dict[str, Any], name: str) -> str:
    value = d.get(name)
    _check(isinstance(value, str) and value != "", name, value)
    return value


def _netns_name(v: Any) -> bool:
    """None (the host) or a namespace name as `--netns` accepts it (tuner.host.netns' one
    check: a name, not a path)."""
    if v is None:
        return True
    if not isinstance(v, str):
        return False
    try:
        check_syntax(v)
    except UsageError:
        return False
    return True


def _validate_entry(e: Any, lists: bool = True) -> None:
    """The fields every entry has; the kind checks its detail and values (`lists`: in
    /2's JSON form, converted to the kind's own here; else /1's, the kind's own)."""
    if not isinstance(e, dict):
        raise ValueError(f"not an object: {e!r}")
    missing = [k for k in ENTRY_FIELDS if k not in e]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    _text(e, "key")
    _text(e, "knob")
    for name in ("scope", "why", "command"):
        if name in e:
            _check(isinstance(e[name], str), name, e[name])
    _check(isinstance(e["kind"], str) and e["kind"] in settings.all_kinds(), "kind", e["kind"])
    kind = settings.kind(e["kind"])
    _check(e["state"] in _STATES, "state", e["state"])
    _check(_netns_name(e["netns"]), "netns", e["netns"])
    _check(isinstance(e["detail"], dict), "detail", e["detail"])
    kind.check_detail(e["detail"])
    for name in VALUE_FIELDS:
        if lists:
            try:
                e[name] = kind.from_json(e[name])
            except ValueError:
                raise ValueError(f"{name} must be {kind.json_doc} for a {kind.name} entry, "
                                 f"not {e[name]!r}") from None
        if not kind.valid_value(e[name]):
            raise ValueError(f"{name} must be {kind.value_doc} for a {kind.name} entry, "
                             f"not {e[name]!r}")


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold the host-wide lock, then the journal's (`PATH.lock`), or fail at once with
    exit 5.

    The host-wide one is what keeps two applies apart: with different journals
    (--journal, TUNER_JOURNAL) each would otherwise record the other's value as the
    original.  The journal's own keeps its file whole even where the host-wide one
    is aimed elsewhere (TUNER_LOCK, as the tests do).
    """
    with _flock(lock_path()), _flock(path + ".lock"):
        # A save killed half-way left its temp file; it is ours by name, and no one
        # else can be saving while we hold the lock.
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(temp_path(path))
        yield


def lock_path() -> str:
    """$TUNER_LOCK, else /run/tuner.lock: one per host."""
    return os.path.abspath(os.environ.get(LOCK_ENV_VAR) or DEFAULT_LOCK)


@contextlib.contextmanager
def _flock(lock: str) -> Iterator[None]:
    """flock `lock`, writing this pid into it; the file goes when the lock is released.

    flock is released by the kernel when the process dies, so a killed apply never
    leaves a held lock behind (only a file, which the next tuner takes over).  Removing
    the file on release is safe because a taker checks, once it holds the lock, that
    the path still names the file it locked; if a releaser removed it in between, it
    opens the path again.  The lock is opened without following a symlink and must be
    a regular file of ours in a directory others cannot write: a planted link would
    otherwise have root write a pid into its target.
    """
    directory = os.path.dirname(lock)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        check_dir(directory, "lock")
        while True:
            fd = open_nofollow(lock, os.O_RDWR | os.O_CREAT, "lock")
            try:
                check_file(fd, lock, "lock")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise TunerError(f"another tuner apply or revert{holder} holds {lock}; "
                                     f"wait for it to finish", EXIT_BUSY) from None
                raise
            except BaseException:
                os.close(fd)
                raise
            try:
                mine = os.path.samestat(os.stat(lock), os.fstat(fd))
            except FileNotFoundError:
                mine = False
            if mine:
                break
            os.close(fd)
    except OSError as e:
        raise TunerError(f"cannot take the lock {lock}: {os_reason(e)}") from None
    try:
        # The pid only names the holder in a busy message: a full disk must not stop a
        # revert that needs no space.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _holder(fd: int) -> str:
    """' (pid N)' from what the lock's holder wrote into it, or '' if it has not yet."""
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""
