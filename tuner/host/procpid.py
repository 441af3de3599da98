"""One process's kernel files (/proc/PID/..., and its cgroups), for `tuner diagnose`
and `tuner metrics` (tuner/diagnose/service.py) and the probe's own task limit.

Each reader is O(1) or O(what is asked) in the process's size: a process holding a
million sockets must not pay for being looked at.  Listing /proc/PID/fd makes the kernel
build a proc inode (~700 B) and a dentry (~190 B) per descriptor, so descriptors are
counted with stat() and looked up one number at a time, never listed.

Error policy, the same for every reader here (the host's files, tuner/host/procfs.py, have
their own: None or `Unreadable`):

- the process has gone, or belongs to someone else: the OSError propagates
  (FileNotFoundError / ProcessLookupError, PermissionError), and callers turn it into
  tuner's own errors (tuner.diagnose.service: ProcessGone, PermissionNeeded);
- what a live process simply lacks is None (a descriptor number not open, a cgroup file
  its hierarchy does not have, an exe link the kernel hides from us);
- a file that does not parse raises ValueError: a real fault.

Stdlib only, like tuner/host/procfs.py (the probe reads its own task limit through it).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

PF_KTHREAD = 0x00200000          # task flag of kernel threads (include/linux/sched.h)
FD_LIST_FALLBACK_MAX = 65536     # pre-6.2 kernels: list /proc/PID/fd only below this
ENVIRON_MAX = 1 << 20            # /proc/PID/environ read this far at most (an environment is small)


def _pid_path(pid: int, *parts: str) -> str:
    return os.path.join("/proc", str(int(pid)), *parts)


def _read_text(path: str) -> str:
    # newline="": no \r turned into a line break; surrogateescape: a comm or cgroup name
    # that is not UTF-8 still reads (what a process chose is shown, escaped, not fatal).
    with open(path, newline="", errors="surrogateescape") as f:
        return f.read()


def proc_status(pid: int) -> Dict[str, str]:
    """/proc/PID/status as {"Name": "java", "State": "S (sleeping)", "Threads": "23", ...}."""
    out = {}
    # "\n" only: Name is the comm the process chose, and splitlines() also splits at
    # its \r, \x1c-\x1e, \x85 (a comm of "x\rUid:\t0" is one line here).
    for line in _read_text(_pid_path(pid, "status")).split("\n"):
        key, _, rest = line.partition(":")
        out[key] = rest.strip(" \t")
    return out


def proc_flags(pid: int) -> int:
    """The task flags (field 9 of /proc/PID/stat); the command name may hold spaces."""
    text = _read_text(_pid_path(pid, "stat"))
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[6])


def is_kernel_thread(pid: int) -> bool:
    return bool(proc_flags(pid) & PF_KTHREAD)


def proc_limits(pid: int) -> Dict[str, Tuple[Optional[int], Optional[int]]]:
    """/proc/PID/limits as {"Max open files": (soft, hard), ...}; None is unlimited.

    Readable for any process its owner (or root) may ptrace-read, without psutil."""
    out = {}
    lines = _read_text(_pid_path(pid, "limits")).splitlines()
    for line in lines[1:]:
        # Columns are fixed-width: name (26), soft (21), hard (21), units.
        name, soft, hard = line[:26].strip(), line[26:47].strip(), line[47:68].strip()
        out[name] = tuple(None if v == "unlimited" else int(v) for v in (soft, hard))
    return out


def fd_count(pid: int) -> int:
    """Open descriptors of a process: st_size of /proc/PID/fd on Linux 6.2+ (O(1)).

    Older kernels report 0 there; only then is the directory listed, and only for
    processes whose limit keeps the listing small (ValueError otherwise)."""
    path = _pid_path(pid, "fd")
    size = os.stat(path).st_size
    if size:
        return size
    soft = proc_limits(pid).get("Max open files", (None, None))[0]
    if soft is not None and soft > FD_LIST_FALLBACK_MAX:
        raise ValueError(f"cannot count descriptors of pid {pid} cheaply on this kernel "
                         f"(before 6.2), and listing {soft:,} may cost it kernel memory")
    return len(os.listdir(path))


def fd_target(pid: int, fd: int) -> Optional[str]:
    """What descriptor `fd` of a process points at ("socket:[123]", "anon_inode:[eventpoll]"),
    None when that number is not open. One lookup, not a listing."""
    try:
        return os.readlink(_pid_path(pid, "fd", str(int(fd))))
    except FileNotFoundError:
        if not os.path.exists(_pid_path(pid)):
            raise ProcessLookupError(pid) from None
        return None


def low_fds(pid: int, highest: int, wanted: int) -> Dict[int, str]:
    """Targets of descriptors 0..highest-1, stopping once `wanted` open ones were seen
    (a process cannot have more than its open count): listeners and epoll instances
    are opened early, so their numbers are low."""
    out: Dict[int, str] = {}
    for fd in range(highest):
        if len(out) >= wanted:
            break
        target = fd_target(pid, fd)
        if target is not None:
            out[fd] = target
    return out


def socket_inode(target: str) -> Optional[int]:
    """'socket:[1234]' -> 1234."""
    if target.startswith("socket:["):
        return int(target[8:-1])
    return None


def epoll_watches(pid: int, fd: int) -> int:
    """Descriptors an epoll instance watches: one 'tfd:' line each in /proc/PID/fdinfo/FD
    (never the first line, which is 'pos:').

    Read only for the few epoll descriptors found; the file is O(watches) long, counted
    in 1 MiB chunks without splitting lines in Python."""
    count, tail = 0, b""
    with open(_pid_path(pid, "fdinfo", str(int(fd))), "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return count
            data = tail + chunk
            count += data.count(b"\ntfd:")
            tail = data[-4:]   # a match cut by the chunk boundary (4 bytes hold none whole)


def all_pids() -> List[int]:
    return sorted(int(d) for d in os.listdir("/proc") if d.isdigit())


def pids_holding(inodes: Set[int], ns_inode: int, first: int = 64,
                 furthest: int = 1024) -> Dict[int, Set[int]]:
    """Processes (in that network namespace) whose low descriptors hold these socket
    inodes: {pid: inodes}. Each candidate's descriptors are looked up one number at a
    time, at most as many as it has open and never beyond `furthest` (the first `first`
    of every candidate before any further)."""
    found: Dict[int, Set[int]] = {}
    me = os.getpid()
    candidates = []
    for pid in all_pids():
        if pid == me:
            continue
        try:
            if netns_inode(pid) != ns_inode or is_kernel_thread(pid):
                continue
            if proc_status(pid).get("State", "").startswith(("Z", "X")):
                continue
            candidates.append((pid, fd_count(pid)))
        except (OSError, ValueError):
            continue  # gone, or not ours to read: it cannot be matched
    # First the lowest descriptors of every candidate; further only while a listener is
    # still unmatched (so a load generator's 20,000 sockets are not looked up one by one).
    for highest in (first, furthest):
        if highest > first and inodes <= set().union(set(), *found.values()):
            break
        for pid, count in candidates:
            try:
                low = low_fds(pid, highest, count)
            except OSError:
                continue
            held = {socket_inode(t) for t in low.values()} & inodes
            if held:
                found.setdefault(pid, set()).update(held)
    return found


def map_count(pid: int) -> int:
    """Memory mappings of a process (lines of /proc/PID/maps), against the kernel's per-process
    map limit (the knob table names it)."""
    count = 0
    with open(_pid_path(pid, "maps"), "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return count
            count += chunk.count(b"\n")


def cmdline(pid: int) -> List[str]:
    with open(_pid_path(pid, "cmdline"), "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def environ(pid: int, names: Sequence[str]) -> Dict[str, str]:
    """The values of `names` in /proc/PID/environ, as the process was started (readable by
    its owner and root only): PGDATA, JAVA_TOOL_OPTIONS, ERL_MAX_PORTS for tuner/apps."""
    wanted = {n.encode(): n for n in names}
    out: Dict[str, str] = {}
    with open(_pid_path(pid, "environ"), "rb") as f:
        for item in f.read(ENVIRON_MAX).split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key in wanted:
                out[wanted[key]] = value.decode(errors="replace")
    return out


def exe(pid: int) -> Optional[str]:
    try:
        return os.readlink(_pid_path(pid, "exe"))
    except (FileNotFoundError, PermissionError):
        return None


def netns_inode(pid: int) -> int:
    """Inode of the process's network namespace (equal inodes: same namespace)."""
    return os.stat(_pid_path(pid, "ns", "net")).st_ino


def netns_path(pid: int) -> str:
    return _pid_path(pid, "ns", "net")


CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_root() -> str:
    """Where this process reads the cgroup hierarchy: /sys/fs/cgroup, or, where nothing
    is mounted there, the same directory as seen by PID 1 or else the nearest ancestor
    that sees it.  `ip netns exec` runs its command in a mount namespace of its own with
    a fresh /sys, whose fs/cgroup is an empty directory; the cgroups are still this
    process's, and the mount namespace it came from still shows them.  Only a process
    owned by root, in this process's cgroup namespace (so the paths /proc/PID/cgroup
    gives mean the same there), is looked through, and only to read."""
    try:
        if os.listdir(CGROUP_ROOT):
            return CGROUP_ROOT
        mine = os.stat("/proc/self/ns/cgroup")
    except OSError:
        return CGROUP_ROOT
    for pid in [1] + _ancestors():
        try:
            ns = os.stat(_pid_path(pid, "ns", "cgroup"))
            if os.stat(_pid_path(pid)).st_uid != 0 or (ns.st_dev, ns.st_ino) != (mine.st_dev, mine.st_ino):
                continue
            seen = _pid_path(pid, "root") + CGROUP_ROOT
            if os.listdir(seen):
                return seen
        except OSError:
            continue   # PID 1 may be out of reach (another user namespace), an ancestor gone
    return CGROUP_ROOT


def _ancestors(limit: int = 64) -> List[int]:
    """This process's parent, its parent, ... (PPid of /proc/PID/status), up to PID 1."""
    out, pid = [], os.getppid()
    while pid > 1 and len(out) < limit:
        out.append(pid)
        try:
            pid = int(proc_status(pid).get("PPid", "0"))
        except (OSError, ValueError):
            break
    return out


def cgroups(pid: int) -> Dict[str, str]:
    """/proc/PID/cgroup as {controller: path}; the v2 hierarchy under key ""."""
    out = {}
    for line in _read_text(_pid_path(pid, "cgroup")).split("\n"):   # a delegated cgroup's name may hold \r
        if not line:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _cg_value(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cg_int(text: Optional[str]) -> Optional[int]:
    return int(text) if text not in (None, "", "max") else None


def v2_base() -> Optional[str]:
    root = cgroup_root()
    for base in (root, os.path.join(root, "unified")):
        if os.path.exists(os.path.join(base, "cgroup.controllers")):
            return base
    return None


def _cgroup_dirs(pid: int, controller: str, v1_dir: str) -> List[Tuple[int, str]]:
    """Candidate cgroup directories of a process for one controller: (version, dir)."""
    groups = cgroups(pid)
    out = []
    v2 = v2_base()
    if v2 and "" in groups:
        out.append((2, v2 + groups[""].rstrip("/")))
    if controller in groups:
        # A container may see its own cgroup as the mount's root.
        root = cgroup_root()
        for base in (os.path.join(root, v1_dir) + groups[controller].rstrip("/"),
                     os.path.join(root, v1_dir)):
            out.append((1, base))
    return out


def process_cgroup_memory(pid: int) -> Dict[str, Optional[int]]:
    """Memory limit and usage of the process's cgroup, v2 then v1 (None: unlimited).

    The nearest limit up the tree binds, so ancestors are read too."""
    for version, base in _cgroup_dirs(pid, "memory", "memory"):
        names = (("memory.max", "memory.current") if version == 2
                 else ("memory.limit_in_bytes", "memory.usage_in_bytes"))
        if _cg_value(os.path.join(base, names[0])) is None:
            continue
        path, limit = base, None
        while True:
            raw = _cg_int(_cg_value(os.path.join(path, names[0])))
            if raw is not None and raw < 1 << 60 and (limit is None or raw < limit[0]):
                limit = (raw, path)
            parent = os.path.dirname(path)
            if len(parent) <= len(cgroup_root()) or parent == path:
                break
            path = parent
        usage = _cg_int(_cg_value(os.path.join(limit[1] if limit else base, names[1])))
        return {"version": version, "limit": limit[0] if limit else None, "usage": usage,
                "path": (limit[1] if limit else base)}
    return {"version": None, "limit": None, "usage": None, "path": None}


def process_cgroup_pids(pid: int) -> Dict[str, Optional[int]]:
    """pids.max and pids.current of the process's cgroup (the tightest up the tree):
    every thread is a task, so thread-per-connection servers stop here."""
    for version, base in _cgroup_dirs(pid, "pids", "pids"):
        if _cg_value(os.path.join(base, "pids.current")) is None:
            continue
        best, path, root = None, base, cgroup_root()
        while len(path) > len(root):
            limit = _cg_int(_cg_value(os.path.join(path, "pids.max")))
            current = _cg_int(_cg_value(os.path.join(path, "pids.current")))
            if limit is not None and current is not None and (best is None or limit - current < best[0] - best[1]):
                best = (limit, current, path)
            path = os.path.dirname(path)
        if best:
            return {"version": version, "limit": best[0], "current": best[1], "path": best[2]}
        return {"version": version, "limit": None,
                "current": _cg_int(_cg_value(os.path.join(base, "pids.current"))), "path": base}
    return {"version": None, "limit": None, "current": None, "path": None}


def cgroup_procs(cgroup_dir: str) -> List[int]:
    """PIDs in a cgroup directory (cgroup.procs)."""
    return [int(p) for p in _read_text(os.path.join(cgroup_dir, "cgroup.procs")).split()]


def smaps_rollup(pid: int, keys: Dict[str, str]) -> Dict[str, int]:
    """/proc/PID/smaps_rollup's fields named in `keys` ({"Pss:": "pss"}), in bytes, under
    the names given; 0 for one it does not show (a kernel thread's)."""
    out = {name: 0 for name in keys.values()}
    with open(_pid_path(pid, "smaps_rollup"), "rb") as f:
        for line in f.read().splitlines():
            parts = line.split()
            name = keys.get(parts[0].decode("ascii", "replace")) if len(parts) > 1 else None
            if name:
                out[name] = int(parts[1]) * 1024
    return out


def maps(pid: int, limit: int) -> bytes:
    """/proc/PID/maps as the kernel writes it (one line per mapping), at most `limit` bytes."""
    with open(_pid_path(pid, "maps"), "rb") as f:
        return f.read(limit)


def children(pid: int) -> List[int]:
    """Direct children of a process, from /proc/PID/task/TID/children (every thread's:
    a child belongs to the thread that forked it)."""
    out: List[int] = []
    base = _pid_path(pid, "task")
    for tid in os.listdir(base):
        try:
            with open(os.path.join(base, tid, "children"), "rb") as f:
                out.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            continue   # the thread ended while listed
    return out
