"""A persisted file (--persist): a sysctl.d, limits.d or systemd drop-in file that sets
at boot what apply set now.

Value: the file's text, or None when it does not exist.  Files live only at the
locations below under --root-dir; a journal entry naming any other path is refused.
A write goes through a temp file next to the target, whose name is a function of
the target's (`.NAME.tuner-tmp`), and creates missing directories, which the journal
records before the first write: revert (and a rolled-back apply) removes both, so a
crash at any point inside a write leaves nothing behind after `tuner revert`.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import glob
import errno
import os
import re
import shlex
import stat
from dataclasses import replace
from typing import Dict, List, Optional

from tuner.host.errors import UsageError
from ..inputs import UNIT_CHARS, UNIT_NAME
from ..knobs import KNOBS
from . import rlimit
from .base import Change, Kind, check, crash_point, fsync_dir

SYSCTL_FILE = "etc/sysctl.d/99-tuner.conf"
LIMITS_FILE = "etc/security/limits.d/99-tuner.conf"
UNIT_DIR = "etc/systemd/system"
DROPIN_NAME = "99-tuner.conf"
# Two short lines: the plan shows files verbatim, and they fit a narrow terminal.
FILE_HEADER = "# Written by 'tuner apply'; 'tuner revert' removes it\n# (or restores what was here).\n"
TEMP_SUFFIX = ".tuner-tmp"

_UNIT = rf"{UNIT_CHARS}+"
# Every path tuner writes: ROOT/<one of these>, ROOT being --root-dir ("" for "/").
_LOCATIONS = re.compile(rf"^(?P<root>(/[^/]+)*)/(?P<rel>{re.escape(SYSCTL_FILE)}|"
                        rf"{re.escape(LIMITS_FILE)}|{re.escape(UNIT_DIR)}/{_UNIT}\.d/"
                        rf"{re.escape(DROPIN_NAME)})$")


def check_unit(unit: Optional[str]) -> Optional[str]:
    if unit is not None and (not UNIT_NAME.match(unit) or unit.startswith(".")):
        raise UsageError(f"--unit {unit!r} is not a systemd unit name (e.g. nginx or nginx.service)")
    return unit


def unit_dropin(root_dir: str, unit: str) -> str:
    name = unit if "." in unit else unit + ".service"
    return os.path.join(root_dir, UNIT_DIR, name + ".d", DROPIN_NAME)


def temp_path(path: str) -> str:
    """Where a write of `path` stages its content: same directory, a name tuner knows."""
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + TEMP_SUFFIX)


def missing_dirs(path: str) -> List[str]:
    """Parent directories of `path` that do not exist yet, outermost first."""
    out = []
    d = os.path.dirname(path)
    while d and d != "/" and not os.path.isdir(d):
        out.append(d)
        d = os.path.dirname(d)
    return list(reversed(out))


def read_text(path: str, follow: bool = False) -> Optional[str]:
    """A file's text, None when absent.  tuner's own files are read without following a
    symlink: under a --root-dir another user can write, a link planted at the path would
    have root copy any file into the journal (and revert write it back, mode 0644).
    Other packages' files (`follow=True`, read only to warn) may be links, as Debian's
    99-sysctl.conf is."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"{path} is a symbolic link: tuner replaces its own files and "
                             f"does not write through links; remove it") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UsageError(f"{path} is not a regular file: remove it or choose another --root-dir")
        return f.read().decode()


def assignments(text: Optional[str]) -> Dict[str, str]:
    """'key = value' lines of a sysctl.d file (comments and blank lines skipped)."""
    out: Dict[str, str] = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = " ".join(value.split())
    return out


def limit_lines(text: Optional[str]) -> Dict[str, str]:
    """'domain type item' -> value of a limits.conf file ('*     hard nofile 4096')."""
    out: Dict[str, str] = {}
    for line in (text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 4:
            out[" ".join(fields[:3])] = fields[3]
    return out


# Where each persisted file's kind is read at boot (or login), relative to the root,
# earliest first. sysctl.d(5) and systemd's drop-ins: a file name in an earlier
# directory masks the same name in later ones, then every file applies in lexical order
# of its name, so a later one wins. pam_limits reads limits.d in lexical order after
# limits.conf, a later line for the same domain, type and item winning.
SYSCTL_DIRS = ("etc/sysctl.d", "run/sysctl.d", "usr/local/lib/sysctl.d", "usr/lib/sysctl.d")
LIMITS_DIRS = ("etc/security/limits.d",)
UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/local/lib/systemd/system",
             "usr/lib/systemd/system")


def boot_sources(path: str) -> Optional[tuple]:
    """(directories in precedence order, the parser of their files) for a file tuner
    persists at `path` (ROOT/etc/sysctl.d/99-tuner.conf, ...); None for any other path."""
    m = _LOCATIONS.match(path)
    if m is None:
        return None
    root, rel = m.group("root") or "/", m.group("rel")
    if rel == SYSCTL_FILE:
        return [os.path.join(root, d) for d in SYSCTL_DIRS], assignments
    if rel == LIMITS_FILE:
        return [os.path.join(root, d) for d in LIMITS_DIRS], limit_lines
    unit_d = os.path.basename(os.path.dirname(rel))
    return [os.path.join(root, d, unit_d) for d in UNIT_DIRS], assignments


def boot_files(directories) -> List[str]:
    """The *.conf files of `directories` in the order they are applied (a name in an
    earlier directory masks the same name in later ones)."""
    chosen: Dict[str, str] = {}
    for d in directories:
        for p in sorted(glob.glob(os.path.join(glob.escape(d), "*.conf"))):
            chosen.setdefault(os.path.basename(p), p)
    return [chosen[name] for name in sorted(chosen)]


def boot_values(path: str, after: bool = False) -> Dict[str, tuple]:
    """What a boot (or login) ends up with for each key the files beside `path` set:
    key -> (value, the file that sets it last); `after`: only from files applied after
    `path`'s name. Other packages' files may be links (Debian's 99-sysctl.conf is); one
    that cannot be read is skipped."""
    directories, parse = boot_sources(path)
    out: Dict[str, tuple] = {}
    for p in boot_files(directories):
        if after and os.path.basename(p) <= os.path.basename(path):
            continue
        try:
            text = read_text(p, follow=True)
        except (OSError, UnicodeDecodeError, UsageError):
            continue
        for key, value in parse(text).items():
            out[key] = (value, p)
    return out


def overridden(path: str, ours: Dict[str, str]) -> Dict[str, tuple]:
    """Of `ours` (key -> value, what tuner's file at `path` sets), the keys a file
    applied after it sets to another value: key -> (value, that file)."""
    later = boot_values(path, after=True)
    return {k: later[k] for k in ours if k in later and later[k][0] != ours[k]}


def _warn_overridden(planning, path: str, ours: Dict[str, str]) -> None:
    """A file applied after ours at boot (sysctl.d, limits.d) that sets the same key
    to another value wins over tuner's: say which."""
    by_file: Dict[str, List[str]] = {}
    for key, (_, other) in overridden(path, ours).items():
        by_file.setdefault(other, []).append(key)
    for other, both in sorted(by_file.items()):
        planning.notes.append(
            f"{other} is applied after {os.path.basename(path)} and also sets {', '.join(sorted(both))}: "
            f"it is read later (at boot or login), so its value wins over tuner's; remove "
            f"{'them' if len(both) > 1 else 'it'} there, or the persisted setting has no "
            f"effect")


def _keep_others(text: Optional[str], replaced) -> List[str]:
    """The setting lines of tuner's limits.d file that this apply does not replace (its
    `replaced` (domain, type) pairs of nofile): another user's (an earlier apply's
    --user, or a line added by hand), a soft limit this apply leaves alone, another
    item. Comments go; the header is written again."""
    out = []
    for line in (text or "").splitlines(True):
        fields = line.split("#", 1)[0].split()
        if fields and not (len(fields) == 4 and (fields[0], fields[1]) in replaced
                           and fields[2] == "nofile"):
            out.append(line if line.endswith("\n") else line + "\n")
    return out


# The soft RLIMIT_NOFILE systemd gives every service and login (systemd.exec(5)):
# select() cannot watch a descriptor above FD_SETSIZE - 1 = 1023.
SOFT_DEFAULT = 1024
# A limits.conf domain tuner writes: a user name (useradd's NAME_REGEX, with the
# upper case and dots other distributions allow); never a group (@), wildcard or
# anything limits.conf would read as another field.
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")


def check_user(user: Optional[str]) -> Optional[str]:
    """--user NAME: a user name that exists on this host (checked with pwd before
    anything is written), else one line, exit 2."""
    if user is None:
        return None
    if not _USER_RE.match(user):
        raise UsageError(f"--user {user!r} is not a user name (letters, digits, '_', '.', '-'; "
                         f"a group or '*' is not offered: leave --user out for every user)")
    # Here: pwd loads only for --user (start-up time).
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"--user {user}: no such user on this host (getent passwd {user}); "
                         f"limits.d names the user the service runs as") from None
    return user


def settings_in(text: Optional[str]) -> List[str]:
    return [l for l in (text or "").splitlines() if l.strip() and not l.lstrip().startswith("#")]



def host_sysctls_set(planning) -> Dict[str, str]:
    """Sysctls tuner has set in the initial namespace: earlier applies' (the journal's)
    and this plan's, the later winning."""
    values: Dict[str, str] = {}
    for e in planning.journal_entries:
        if e["kind"] == "sysctl" and not e["netns"]:
            values[e["detail"]["name"]] = e["new"]
    for c in planning.changes:
        if c.kind == "sysctl" and c.netns is None:
            values[c.detail["name"]] = c.new
    return values


def boot_limits(planning) -> tuple:
    """({"soft"/"hard": value} the target needs, the hard limit then) for processes
    started later: evaluated with CAP_SYS_RESOURCE, which pam_limits at login and
    systemd starting a unit hold even where tuner does not."""
    boot = replace(copy.deepcopy(planning.sim), cap_sys_resource=True)
    limits: Dict[str, int] = {}
    for knob in KNOBS:
        if knob.kind not in rlimit.KIND.knob_kinds:
            continue
        _, which = rlimit.parts(knob)
        needed = knob.needs(planning.ctx(boot))
        if needed is not None:
            setattr(boot, rlimit.FIELDS[which], needed[0])
            limits[which] = needed[0]
    return limits, boot.nofile_hard


def _limits_to_persist(planning, limits: Dict[str, int], hard: int) -> bool:
    """Whether the nofile limits need persisting (a note says why not)."""
    req = planning.req
    if not limits:
        if req.unit:
            planning.notes.append(f"--unit {req.unit}: RLIMIT_NOFILE already suffices; no "
                                  f"drop-in needed.")
        return False
    if "hard" not in limits and not req.raise_soft:
        planning.notes.append(
            f"persisted RLIMIT_NOFILE: the hard limit {hard:,} already suffices and a "
            f"program raises its own soft limit up to it; for one that does not, "
            f"--raise-soft persists soft = hard.")
        return False
    return True


def _note_soft_and_capability(planning, soft: Optional[int], hard: int) -> None:
    """What the persisted limits leave to others: the soft limit, and who may raise."""
    if soft is None:
        planning.notes.append(
            f"persisted RLIMIT_NOFILE: hard {hard:,}; the soft limit stays as login and "
            f"systemd set it ({SOFT_DEFAULT:,} by default: select() handles no descriptor "
            f"above 1023, see systemd.exec(5)), and a program raises its own up to the hard "
            f"one (the JVM, Go, nginx's worker_rlimit_nofile do); for one that does not, "
            f"add --raise-soft.")
    if not planning.snap.cap_sys_resource:
        planning.notes.append(
            "tuner lacks CAP_SYS_RESOURCE: the persisted nofile limits take effect only "
            "for processes started by something that holds it (systemd, login).")


class File(Kind):
    name = "file"
    value_doc = "text or null"

    def key(self, netns, detail) -> str:
        return f"file:{detail['path']}"

    def where(self, netns, detail) -> str:
        return detail["path"]

    def describe(self, value, knob: str = "") -> str:
        return "absent" if value is None else f"{len(settings_in(value))} setting(s)"

    def command(self, netns, detail, value) -> str:
        path = detail["path"]
        if value is None:
            return f"rm -f {shlex.quote(path)}"
        return (f"mkdir -p {shlex.quote(os.path.dirname(path))} && "
                f"cat > {shlex.quote(path)} <<'EOF'\n{value}EOF")

    def diff(self, detail, current, new) -> Optional[str]:
        if current is None or new is None or current == new:
            return None  # a new file's content is in the shell commands below the plan
        path = detail["path"]
        return "".join(difflib.unified_diff(current.splitlines(True), new.splitlines(True),
                                            path, path + " (tuner)")).rstrip("\n")

    def valid_value(self, value) -> bool:
        return value is None or isinstance(value, str)

    # Its lines, each with its line break, so that joining them gives the text back
    # byte for byte (revert restores exactly what was there); null when absent.
    json_doc = "a list of its lines, or null when absent"

    def to_json(self, value):
        return None if value is None else value.splitlines(True)

    def from_json(self, values):
        if values is None:
            return None
        if not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise ValueError(f"not {self.json_doc}: {values!r}")
        text = "".join(values)
        if text.splitlines(True) != values:
            raise ValueError(f"not {self.json_doc} (a line break inside a line): {values!r}")
        return text

    def check_detail(self, d) -> None:
        path = d.get("path")
        ok = (isinstance(path, str) and os.path.isabs(path) and "\0" not in path
              and os.path.normpath(path) == path)
        match = _LOCATIONS.match(path) if ok else None
        # Only where tuner itself writes: a forged entry must not name /etc/shadow.
        check(match is not None, "detail.path (not a sysctl.d, limits.d or systemd drop-in "
                                 "file tuner writes)", path)
        etc = match.group("root") + "/etc"
        dirs = d.get("created_dirs", [])
        check(isinstance(dirs, list) and all(
            isinstance(x, str) and os.path.normpath(x) == x and
            (x == etc or x.startswith(etc + "/")) and path.startswith(x + "/") for x in dirs),
            "detail.created_dirs", dirs)

    def record(self, detail):
        return {**detail, "created_dirs": missing_dirs(detail["path"])}

    def _read(self, netns, detail) -> Optional[str]:
        return read_text(detail["path"])

    def _write(self, netns, detail, content: Optional[str]) -> None:
        path = detail["path"]
        if content is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        crash_point("file-dirs")
        tmp = temp_path(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a killed write's leftover: ours by its name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            crash_point("file-temp")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(directory)

    def settle(self, netns, detail, value) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path(detail["path"]))
        if value is None:
            # Directories tuner created for this file (a drop-in's NAME.service.d) go too.
            for d in reversed(detail.get("created_dirs", [])):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only when empty: someone else's files keep it

    # ------------------------------------------------------------ planning

    def plan_after(self, planning) -> List[Change]:
        """With --persist: files that set at boot what this plan (and earlier applies)
        set now.  A file that already holds what it would get is no change: a second
        apply writes nothing (the first apply's journal entry still restores it on
        revert)."""
        if not planning.req.persist:
            return []
        out = [c for c in [self._sysctl_file(planning)] if c] + self._limits(planning)
        return [c for c in out if c.current != c.new]

    def _sysctl_file(self, planning) -> Optional[Change]:
        """sysctl.d: every sysctl tuner has set in the initial namespace, merged into
        what the file already holds (None: there is none)."""
        path = os.path.join(planning.req.root_dir, SYSCTL_FILE)
        old = read_text(path)
        merged = {**assignments(old), **host_sysctls_set(planning)}
        if not merged:
            return None
        content = FILE_HEADER + "".join(f"{k} = {v}\n" for k, v in merged.items())
        change = self._change("sysctl.d", path, old, content,
                              "Sets the same sysctls at boot (systemd-sysctl reads sysctl.d).")
        _warn_overridden(planning, path, assignments(content))
        return change

    def _limits(self, planning) -> List[Change]:
        """limits.d (login sessions, pam_limits) and, with --unit, the service's drop-in.

        Only the hard limit goes up to what the target needs; the soft one stays where
        it starts (1,024) unless --raise-soft: select() cannot watch a descriptor above
        1023, so systemd.exec(5) keeps the soft limit there and expects a program that
        wants more to raise its own up to the hard limit (the JVM, Go since 1.19 and
        nginx's worker_rlimit_nofile do).  limits.d names --user only, or every user
        ('*', which does not cover root, and root) without it.
        """
        limits, hard = boot_limits(planning)
        if not _limits_to_persist(planning, limits, hard):
            return []
        soft = hard if planning.req.raise_soft else None
        out = [self._limits_file(planning, soft, hard)]
        if planning.req.unit:
            out.append(self._dropin(planning, soft, hard))
        else:
            planning.notes.append(
                "limits.d applies to login sessions (pam_limits), not to services: for a "
                "service, --unit NAME (a systemd drop-in) is the recommended path.")
        _note_soft_and_capability(planning, soft, hard)
        return out

    def _limits_file(self, planning, soft: Optional[int], hard: int) -> Change:
        """limits.d: nofile for --user, or for '*' and root, replacing only our lines."""
        req = planning.req
        path = os.path.join(req.root_dir, LIMITS_FILE)
        old = read_text(path)
        domains = [req.user] if req.user else ["*", "root"]
        ours = [(who, which, value) for who in domains
                for which, value in (("soft", soft), ("hard", hard)) if value is not None]
        content = FILE_HEADER + "".join(_keep_others(old, {(w, t) for w, t, _ in ours})) + "".join(
            f"{who:<5} {which:<4} nofile {value}\n" for who, which, value in ours)
        who = f"user {req.user}" if req.user else "every user ('*' does not cover root, so root has its own lines)"
        change = self._change("limits.d", path, old, content,
                              f"RLIMIT_NOFILE for new login sessions of {who} (pam_limits).")
        _warn_overridden(planning, path, limit_lines(content))
        return change

    def _dropin(self, planning, soft: Optional[int], hard: int) -> Change:
        """--unit: LimitNOFILE= in the service's own systemd drop-in."""
        unit = planning.req.unit
        path = unit_dropin(planning.req.root_dir, unit)
        content = FILE_HEADER + f"[Service]\nLimitNOFILE={soft or SOFT_DEFAULT}:{hard}\n"
        change = self._change("systemd drop-in", path, read_text(path), content,
                              f"RLIMIT_NOFILE for {unit} when systemd starts it.")
        planning.notes.append(f"the drop-in takes effect after 'systemctl daemon-reload "
                              f"&& systemctl restart {unit}'.")
        return change

    def _change(self, knob: str, path: str, old: Optional[str], content: str, why: str) -> Change:
        path = os.path.abspath(path)
        return self.change(knob, None, old, content, {"path": path}, scope="file", why=why)


KIND = File()
