"""The write-ahead journal: what tuner changed, what was there before, crash-safe.

Before each write, apply records the setting's original value and the value it is
about to write (state "pending"), and saves the journal atomically: a temp file in the
same directory, fsync, rename over the old one, fsync the directory.  After the write
is verified the entry becomes "done".  A crash at any point leaves a journal that
names every setting that may have changed, so revert can always find its way back.

One entry per setting (its `key`): a second apply that changes the same setting again
updates `new` but keeps `original`, so revert returns to the state before tuner's first
apply, not to the first apply's values.

Schema (tuner.journal/1):
    {"schema": "tuner.journal/1", "created": ISO time, "updated": ISO time,
     "applies": [{"at": ISO time, "argv": [...], "target": N, "role": str, "netns": str|null}],
     "entries": [{"key": str, "knob": str, "kind": "sysctl|rlimit|alias|file",
                  "scope": str, "netns": str|null, "detail": {...}, "why": str,
                  "original": value before tuner's first write,
                  "before": value right before the latest write,
                  "new": value tuner wrote last,
                  "state": "pending|done", "command": shell equivalent of the write}]}
Values: sysctl text ("32768 60999"); rlimit int; alias bool (present); file text or null
(absent).
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
ENTRY_FIELDS = ("key", "knob", "kind", "netns", "detail", "original", "new", "state")


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
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} document")
    if not isinstance(data.get("entries"), list) or not isinstance(data.get("applies"), list):
        raise ValueError("'entries' and 'applies' must be lists")
    for i, e in enumerate(data["entries"]):
        missing = [k for k in ENTRY_FIELDS if not isinstance(e, dict) or k not in e]
        if missing:
            raise ValueError(f"entry {i} lacks {', '.join(missing)}")
        if e["kind"] not in ("sysctl", "rlimit", "alias", "file") or e["state"] not in ("pending", "done"):
            raise ValueError(f"entry {i} has an unknown kind or state")


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold the journal's lock (`PATH.lock`, flock) or fail at once with exit 5.

    flock is released by the kernel when the process dies, so a killed apply never
    leaves a stale lock behind.  The lock file stays (removing it would race with
    another tuner opening it).
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise TunerError(f"another tuner apply or revert holds {path}.lock; "
                                 f"wait for it to finish", EXIT_BUSY) from None
            raise
        yield
    finally:
        os.close(fd)
