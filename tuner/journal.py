"""The write-ahead journal: what tuner changed, what was there before, crash-safe.

Before each write, apply records the setting's original value and the value it is
about to write (state "pending"), and saves the journal atomically: a temp file in the
same directory, fsync, rename over the old one, fsync the directory.  After the write
is verified the entry becomes "done".  A crash at any point leaves a journal that
names every setting that may have changed, so revert can always find its way back.

Apply and revert hold a host-wide lock (/run/tuner.lock, or $TUNER_LOCK) and the
journal's own (PATH.lock) while they run; a second one is refused with exit 5.

One entry per setting (its `key`): a second apply that changes the same setting again
updates `new` but keeps `original`, so revert returns to the state before tuner's first
apply, not to the first apply's values.

Schema (tuner.journal/1):
    {"schema": "tuner.journal/1", "created": ISO time, "updated": ISO time,
     "applies": [{"at": ISO time, "argv": [...], "target": N, "role": str, "netns": str|null}],
     "entries": [{"key": str, "knob": str, "kind": a setting kind (tuner/settings/),
                  "scope": str, "netns": str|null, "detail": {...}, "why": str,
                  "original": value before tuner's first write,
                  "before": value right before the latest write,
                  "new": value tuner wrote last,
                  "state": "pending|done", "command": shell equivalent of the write}]}
Values and details are the kind's (tuner/settings/<kind>.py): sysctl text ("32768
60999"); rlimit int; alias bool (present); file text or null (absent).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import tempfile
from typing import Any, Dict, Iterator, List, Optional

from .errors import EXIT_BUSY, EXIT_FAILED, TunerError

SCHEMA = "tuner.journal/1"
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
        """The journal at `path`, None when there is none; CorruptJournal if unreadable."""
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TunerError(f"cannot read journal {path}: {e.strerror}") from None
        try:
            data = json.loads(text)
            _validate(data)
        except (ValueError, TypeError, KeyError) as e:
            raise CorruptJournal(
                f"journal {path} is corrupt ({e}); nothing was changed: inspect it, restore "
                f"the settings it lists by hand, then move it away") from None
        return cls(path, data)

    def save(self) -> None:
        self.data["updated"] = now()
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".journal-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        _fsync_dir(os.path.dirname(self.path))


def _validate(data: Any) -> None:
    """Every field revert and apply will touch, checked before either touches anything:
    a bad entry found half-way through a revert would leave the host half-restored."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} document")
    if not isinstance(data.get("entries"), list) or not isinstance(data.get("applies"), list):
        raise ValueError("'entries' and 'applies' must be lists")
    if not all(isinstance(a, dict) for a in data["applies"]):
        raise ValueError("every 'applies' item must be an object")
    keys: Dict[str, int] = {}
    for i, e in enumerate(data["entries"]):
        try:
            _validate_entry(e)
        except ValueError as err:
            key = e.get("key") if isinstance(e, dict) and isinstance(e.get("key"), str) else None
            raise ValueError(f"entry {i}{f' ({key})' if key else ''}: {err}") from None
        if e["key"] in keys:
            # One entry per setting: two would hold two "originals" for it.
            raise ValueError(f"entry {i}: key {e['key']!r} is also entry {keys[e['key']]}'s")
        keys[e["key"]] = i


_STATES = ("pending", "done")


def _check(ok: bool, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{what} is {value!r}")


def _text(d: Dict[str, Any], name: str) -> str:
    value = d.get(name)
    _check(isinstance(value, str) and value != "", name, value)
    return value


def _netns_name(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v not in ("", ".", "..") and "/" not in v)


def _validate_entry(e: Any) -> None:
    """The fields every entry has; the kind checks its detail and values."""
    from . import settings

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
    _check(isinstance(e["kind"], str) and e["kind"] in settings.KINDS, "kind", e["kind"])
    kind = settings.kind(e["kind"])
    _check(e["state"] in _STATES, "state", e["state"])
    _check(_netns_name(e["netns"]), "netns", e["netns"])
    _check(isinstance(e["detail"], dict), "detail", e["detail"])
    kind.check_detail(e["detail"])
    for name in ("original", "before", "new"):
        if not kind.valid_value(e[name]):
            raise ValueError(f"{name} must be {kind.value_doc} for a {kind.name} entry, "
                             f"not {e[name]!r}")


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    opens the path again.
    """
    os.makedirs(os.path.dirname(lock), mode=0o700, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise TunerError(f"another tuner apply or revert{holder} holds {lock}; "
                                 f"wait for it to finish", EXIT_BUSY) from None
            raise
        try:
            mine = os.path.samestat(os.stat(lock), os.fstat(fd))
        except FileNotFoundError:
            mine = False
        if mine:
            break
        os.close(fd)
    try:
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
