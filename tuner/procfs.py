"""Every read of the kernel's own files (/proc, /sys) in one module, with one error policy.

Stdlib only: the probe's forked workers import it (through probes.kernel), and they must
stay lean; psutil and pyroute2 are used by callers in the parent process, never here.
tests/test_readings.py checks that importing this module pulls in neither, nor typer.

Error policy, the same for every reader here:

- a file this kernel (or this network namespace) does not have -> None (or, for the
  readers that return a dict, an empty dict): "n/a here", never an exception;
- a file the caller may not read (EACCES, EPERM: /proc/slabinfo is mode 0400) ->
  `Unreadable`, a PermissionError naming the path, which callers record as
  "unreadable" (the report's status) instead of failing;
- anything else (EIO, a file that does not parse) propagates: it is a real fault.

Values come back in the kernel's own units unless a name says otherwise (meminfo_kb is
in kB, sockstat's "mem" in pages).  Files under /proc/net and /proc/sys/net resolve
against the caller's network namespace when they are opened, so reading inside a
namespace (tuner.netns.in_netns, `ip netns exec`) describes that namespace.

Per-process readers (/proc/PID/...) for `tuner diagnose` go in a section of their own
at the end.
"""
from __future__ import annotations

import errno
import os
from typing import Dict, NamedTuple, Optional, Tuple

PROC_SYS = "/proc/sys"
_MISSING = (errno.ENOENT, errno.ENOTDIR)
_DENIED = (errno.EACCES, errno.EPERM)


class Unreadable(PermissionError):
    """A kernel file exists but this process may not read it (record it as unreadable)."""

    def __init__(self, path: str):
        super().__init__(errno.EACCES, f"{path} is not readable without root", path)
        self.path = path


def read_text(path: str) -> Optional[str]:
    """The whole file as text; None when it does not exist; Unreadable when denied."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        if e.errno in _MISSING:
            return None
        if e.errno in _DENIED:
            raise Unreadable(path) from None
        raise


# ---------------------------------------------------------------- /proc/sys

def sysctl_path(name: str) -> str:
    """net.ipv4.tcp_mem -> /proc/sys/net/ipv4/tcp_mem (dots only: no name is a path)."""
    return os.path.join(PROC_SYS, *name.split("."))


def read_sysctl(name: str) -> Optional[str]:
    """A sysctl's text with whitespace folded to single spaces ("4096 131072 6291456");
    None when this kernel or namespace lacks it."""
    text = read_text(sysctl_path(name))
    return None if text is None else " ".join(text.split())


def sysctl_ints(name: str) -> Optional[Tuple[int, ...]]:
    text = read_sysctl(name)
    return None if text is None else tuple(int(v) for v in text.split())


def sysctl_int(name: str) -> Optional[int]:
    values = sysctl_ints(name)
    return values[0] if values else None


def port_range() -> Optional[Tuple[int, int]]:
    """net.ipv4.ip_local_port_range of this namespace: the ports connect() picks from."""
    values = sysctl_ints("net.ipv4.ip_local_port_range")
    return None if not values else (values[0], values[1])


def reserved_ports_text() -> str:
    """net.ipv4.ip_local_reserved_ports ("" when none, or when the kernel lacks it)."""
    return read_sysctl("net.ipv4.ip_local_reserved_ports") or ""


def tcp_mem() -> Optional[Tuple[int, ...]]:
    """net.ipv4.tcp_mem in pages (low, pressure, high)."""
    return sysctl_ints("net.ipv4.tcp_mem")


def nr_open() -> Optional[int]:
    """fs.nr_open: the ceiling on any RLIMIT_NOFILE."""
    return sysctl_int("fs.nr_open")


def conntrack_count() -> Optional[int]:
    """Connections conntrack tracks now in this namespace, None when it is not loaded."""
    return sysctl_int("net.netfilter.nf_conntrack_count")


def conntrack() -> Optional[Tuple[int, int]]:
    """(nf_conntrack_count, nf_conntrack_max), or None when conntrack is not loaded."""
    count = sysctl_int("net.netfilter.nf_conntrack_count")
    limit = sysctl_int("net.netfilter.nf_conntrack_max")
    return None if count is None or limit is None else (count, limit)


def ports_in(text: str, low: int, high: int) -> int:
    """How many ports of low..high a port list ("1000,2000-2009", the format of
    ip_local_reserved_ports) names; ports outside low..high do not count."""
    count = 0
    for part in text.replace(",", " ").split():
        first, _, last = part.partition("-")
        count += max(0, min(int(last or first), high) - max(int(first), low) + 1)
    return count


# ---------------------------------------------------------------- memory

def meminfo_kb() -> Dict[str, int]:
    """/proc/meminfo as {"MemAvailable": kB, "Slab": kB, ...} (HugePages_* are counts)."""
    out: Dict[str, int] = {}
    for line in (read_text("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0])
    return out


class SlabCache(NamedTuple):
    """One line of /proc/slabinfo: counts and object geometry of a slab cache."""

    active_objs: int
    num_objs: int
    objsize: int         # bytes of one object
    objperslab: int
    pagesperslab: int


def slabinfo() -> Optional[Dict[str, SlabCache]]:
    """Every slab cache by name; None when the kernel has no /proc/slabinfo.  Raises
    Unreadable without root (the file is mode 0400)."""
    text = read_text("/proc/slabinfo")
    if text is None:
        return None
    caches: Dict[str, SlabCache] = {}
    for line in text.splitlines()[2:]:  # a version line and a header
        parts = line.split()
        if len(parts) >= 6:
            caches[parts[0]] = SlabCache(*(int(p) for p in parts[1:6]))
    return caches


def cgroup_memory() -> Dict[str, Optional[int]]:
    """Memory limit and usage of this process's cgroup (v2 first, then v1), in bytes.

    "limit" None means unlimited.  Kernel socket memory is charged to the cgroup, so a
    container's limit caps connections even on a big host.
    """
    result: Dict[str, Optional[int]] = {"version": None, "limit": None, "usage": None}
    try:
        text = read_text("/proc/self/cgroup")
    except Unreadable:
        return result
    entries = [line.split(":", 2) for line in (text or "").splitlines() if line.count(":") >= 2]
    for _, controllers, path in entries:
        if controllers == "":  # v2 unified hierarchy
            base = cgroup_root() + path
            limit = _first_word(os.path.join(base, "memory.max"))
            if limit is not None:
                result.update(version=2, limit=_int_or_none(limit),
                              usage=_int_or_none(_first_word(os.path.join(base, "memory.current"))))
                return result
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            # The v1 mount may show our cgroup as its root (a container) or the full path.
            for base in (cgroup_root() + "/memory" + path, cgroup_root() + "/memory"):
                limit = _first_word(os.path.join(base, "memory.limit_in_bytes"))
                if limit is not None:
                    value = int(limit)
                    # v1 says "unlimited" with a huge page-aligned number.
                    result.update(version=1, limit=None if value >= 1 << 60 else value,
                                  usage=_int_or_none(_first_word(os.path.join(base, "memory.usage_in_bytes"))))
                    return result
    return result


def _first_word(path: str) -> Optional[str]:
    try:
        text = read_text(path)
    except Unreadable:
        return None
    return None if text is None else text.strip()


def _int_or_none(text: Optional[str]) -> Optional[int]:
    return int(text) if text not in (None, "", "max") else None


# ---------------------------------------------------------------- /proc/net (this namespace)

def sockstat(path: str = "/proc/net/sockstat") -> Dict[str, Dict[str, int]]:
    """/proc/net/sockstat as {"sockets": {"used": ..}, "TCP": {"inuse": .., "mem": pages}}:
    O(1) in the number of sockets, never a per-socket scan."""
    out: Dict[str, Dict[str, int]] = {}
    for line in (read_text(path) or "").splitlines():
        proto, _, rest = line.partition(":")
        words = rest.split()
        out[proto.strip()] = {k: int(v) for k, v in zip(words[::2], words[1::2])}
    return out


def net_counters(group: str, path: str = "/proc/net/netstat") -> Dict[str, int]:
    """One group of counters from /proc/net/netstat ("TcpExt": ListenOverflows,
    ListenDrops, TCPMemoryPressures, ...) or /proc/net/snmp ("Tcp", "Ip", ...): both
    files pair a line of names with a line of values."""
    lines = (read_text(path) or "").splitlines()
    out: Dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names.split(":", 1)[0] == group:
            out.update(zip(names.split()[1:], (int(v) for v in values.split()[1:])))
    return out


# ---------------------------------------------------------------- this process

def capabilities(pid: str = "self") -> int:
    """The effective capability mask of a process (CapEff in /proc/PID/status); 0 when
    the process is gone."""
    for line in (read_text(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


CAP_SYS_RESOURCE = 24


def has_capability(cap: int, pid: str = "self") -> bool:
    return bool(capabilities(pid) >> cap & 1)


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- per process (tuner diagnose)


def task_limit_hit() -> tuple:
    """(limit, detail) a fork() that failed with EAGAIN most likely hit: the pids.max of
    this process's cgroup or an ancestor with the least room (cgroup v2, or the v1 pids
    hierarchy; process_cgroup_pids, as diagnose reads it), RLIMIT_NPROC, or
    kernel.threads-max.  Read once, at the failure, by the probe."""
    import resource

    try:
        pids = process_cgroup_pids(os.getpid())
    except OSError:
        pids = {"limit": None}
    if pids["limit"] is not None:
        base = _v2_base() if pids["version"] == 2 else os.path.join(cgroup_root(), "pids")
        where = pids["path"][len(base or ""):]
        return "pids.max", (f"cgroup {where or '/'} has pids.max {pids['limit']} "
                            f"({pids['current']} tasks in it)")
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and os.geteuid() != 0:
        return "RLIMIT_NPROC", f"RLIMIT_NPROC is {soft}"
    return "kernel.threads-max", "the host's task limit (or its memory for new tasks)"


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of process pid so far (/proc/PID/stat), None once it is gone."""
    text = read_text(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- one process ---
# Readers of one process's kernel files (/proc/PID/...), for `tuner diagnose`.  Each is
# O(1) or O(what is asked) in the process's size: a process holding a million sockets
# must not pay for being looked at.  Listing /proc/PID/fd makes the kernel build a proc
# inode (~700 B) and a dentry (~190 B) per descriptor, so descriptors are counted with
# stat() and looked up one number at a time, never listed.  OSError propagates:
# FileNotFoundError / ProcessLookupError mean the process has gone, PermissionError
# that it belongs to someone else; callers turn them into tuner's own errors.

import os as _os
from typing import Dict as _Dict, List as _List, Optional as _Optional, Tuple as _Tuple

PF_KTHREAD = 0x00200000          # task flag of kernel threads (include/linux/sched.h)
FD_LIST_FALLBACK_MAX = 65536     # pre-6.2 kernels: list /proc/PID/fd only below this


def _pid_path(pid: int, *parts: str) -> str:
    return _os.path.join("/proc", str(int(pid)), *parts)


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def proc_status(pid: int) -> _Dict[str, str]:
    """/proc/PID/status as {"Name": "java", "State": "S (sleeping)", "Threads": "23", ...}."""
    out = {}
    for line in _read_text(_pid_path(pid, "status")).splitlines():
        key, _, rest = line.partition(":")
        out[key] = rest.strip()
    return out


def proc_flags(pid: int) -> int:
    """The task flags (field 9 of /proc/PID/stat); the command name may hold spaces."""
    text = _read_text(_pid_path(pid, "stat"))
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[6])


def is_kernel_thread(pid: int) -> bool:
    return bool(proc_flags(pid) & PF_KTHREAD)


def proc_limits(pid: int) -> _Dict[str, _Tuple[_Optional[int], _Optional[int]]]:
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
    size = _os.stat(path).st_size
    if size:
        return size
    soft = proc_limits(pid).get("Max open files", (None, None))[0]
    if soft is not None and soft > FD_LIST_FALLBACK_MAX:
        raise ValueError(f"cannot count descriptors of pid {pid} cheaply on this kernel "
                         f"(before 6.2), and listing {soft:,} may cost it kernel memory")
    return len(_os.listdir(path))


def fd_target(pid: int, fd: int) -> _Optional[str]:
    """What descriptor `fd` of a process points at ("socket:[123]", "anon_inode:[eventpoll]"),
    None when that number is not open. One lookup, not a listing."""
    try:
        return _os.readlink(_pid_path(pid, "fd", str(int(fd))))
    except FileNotFoundError:
        if not _os.path.exists(_pid_path(pid)):
            raise ProcessLookupError(pid) from None
        return None


def low_fds(pid: int, highest: int, wanted: int) -> _Dict[int, str]:
    """Targets of descriptors 0..highest-1, stopping once `wanted` open ones were seen
    (a process cannot have more than its open count): listeners and epoll instances
    are opened early, so their numbers are low."""
    out: _Dict[int, str] = {}
    for fd in range(highest):
        if len(out) >= wanted:
            break
        target = fd_target(pid, fd)
        if target is not None:
            out[fd] = target
    return out


def socket_inode(target: str) -> _Optional[int]:
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


def map_count(pid: int) -> int:
    """Memory mappings of a process (lines of /proc/PID/maps), against vm.max_map_count."""
    count = 0
    with open(_pid_path(pid, "maps"), "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return count
            count += chunk.count(b"\n")


def cmdline(pid: int) -> _List[str]:
    with open(_pid_path(pid, "cmdline"), "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def exe(pid: int) -> _Optional[str]:
    try:
        return _os.readlink(_pid_path(pid, "exe"))
    except (FileNotFoundError, PermissionError):
        return None


def netns_inode(pid: int) -> int:
    """Inode of the process's network namespace (equal inodes: same namespace)."""
    return _os.stat(_pid_path(pid, "ns", "net")).st_ino


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
        if _os.listdir(CGROUP_ROOT):
            return CGROUP_ROOT
        mine = _os.stat("/proc/self/ns/cgroup")
    except OSError:
        return CGROUP_ROOT
    for pid in [1] + _ancestors():
        try:
            ns = _os.stat(_pid_path(pid, "ns", "cgroup"))
            if _os.stat(_pid_path(pid)).st_uid != 0 or (ns.st_dev, ns.st_ino) != (mine.st_dev, mine.st_ino):
                continue
            seen = _pid_path(pid, "root") + CGROUP_ROOT
            if _os.listdir(seen):
                return seen
        except OSError:
            continue   # PID 1 may be out of reach (another user namespace), an ancestor gone
    return CGROUP_ROOT


def _ancestors(limit: int = 64) -> _List[int]:
    """This process's parent, its parent, ... (PPid of /proc/PID/status), up to PID 1."""
    out, pid = [], _os.getppid()
    while pid > 1 and len(out) < limit:
        out.append(pid)
        try:
            pid = int(proc_status(pid).get("PPid", "0"))
        except (OSError, ValueError):
            break
    return out


def cgroups(pid: int) -> _Dict[str, str]:
    """/proc/PID/cgroup as {controller: path}; the v2 hierarchy under key ""."""
    out = {}
    for line in _read_text(_pid_path(pid, "cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _cg_value(path: str) -> _Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cg_int(text: _Optional[str]) -> _Optional[int]:
    return int(text) if text not in (None, "", "max") else None


def _v2_base() -> _Optional[str]:
    root = cgroup_root()
    for base in (root, _os.path.join(root, "unified")):
        if _os.path.exists(_os.path.join(base, "cgroup.controllers")):
            return base
    return None


def _cgroup_dirs(pid: int, controller: str, v1_dir: str) -> _List[_Tuple[int, str]]:
    """Candidate cgroup directories of a process for one controller: (version, dir)."""
    groups = cgroups(pid)
    out = []
    v2 = _v2_base()
    if v2 and "" in groups:
        out.append((2, v2 + groups[""].rstrip("/")))
    if controller in groups:
        # A container may see its own cgroup as the mount's root.
        root = cgroup_root()
        for base in (_os.path.join(root, v1_dir) + groups[controller].rstrip("/"),
                     _os.path.join(root, v1_dir)):
            out.append((1, base))
    return out


def process_cgroup_memory(pid: int) -> _Dict[str, _Optional[int]]:
    """Memory limit and usage of the process's cgroup, v2 then v1 (None: unlimited).

    The nearest limit up the tree binds, so ancestors are read too."""
    for version, base in _cgroup_dirs(pid, "memory", "memory"):
        names = (("memory.max", "memory.current") if version == 2
                 else ("memory.limit_in_bytes", "memory.usage_in_bytes"))
        if _cg_value(_os.path.join(base, names[0])) is None:
            continue
        path, limit = base, None
        while True:
            raw = _cg_int(_cg_value(_os.path.join(path, names[0])))
            if raw is not None and raw < 1 << 60 and (limit is None or raw < limit[0]):
                limit = (raw, path)
            parent = _os.path.dirname(path)
            if len(parent) <= len(cgroup_root()) or parent == path:
                break
            path = parent
        usage = _cg_int(_cg_value(_os.path.join(limit[1] if limit else base, names[1])))
        return {"version": version, "limit": limit[0] if limit else None, "usage": usage,
                "path": (limit[1] if limit else base)}
    return {"version": None, "limit": None, "usage": None, "path": None}


def process_cgroup_pids(pid: int) -> _Dict[str, _Optional[int]]:
    """pids.max and pids.current of the process's cgroup (the tightest up the tree):
    every thread is a task, so thread-per-connection servers stop here."""
    for version, base in _cgroup_dirs(pid, "pids", "pids"):
        if _cg_value(_os.path.join(base, "pids.current")) is None:
            continue
        best, path, root = None, base, cgroup_root()
        while len(path) > len(root):
            limit = _cg_int(_cg_value(_os.path.join(path, "pids.max")))
            current = _cg_int(_cg_value(_os.path.join(path, "pids.current")))
            if limit is not None and current is not None and (best is None or limit - current < best[0] - best[1]):
                best = (limit, current, path)
            path = _os.path.dirname(path)
        if best:
            return {"version": version, "limit": best[0], "current": best[1], "path": best[2]}
        return {"version": version, "limit": None,
                "current": _cg_int(_cg_value(_os.path.join(base, "pids.current"))), "path": base}
    return {"version": None, "limit": None, "current": None, "path": None}


def cgroup_procs(cgroup_dir: str) -> _List[int]:
    """PIDs in a cgroup directory (cgroup.procs)."""
    return [int(p) for p in _read_text(_os.path.join(cgroup_dir, "cgroup.procs")).split()]


def task_count() -> int:
    """Tasks (threads) on the host now: the total of /proc/loadavg's 'running/total'."""
    return int(_read_text("/proc/loadavg").split()[3].split("/")[1])


def slab_active(names) -> _Dict[str, _Tuple[int, int]]:
    """(active objects, object size) of these slab caches (root only: /proc/slabinfo).

    --watch compares proc_inode_cache and dentry growth with connection growth: a tool
    listing /proc/PID/fd (lsof, ss -p, an agent) pins a proc inode and a dentry per
    descriptor it looks at."""
    wanted, out = set(names), {}
    with open("/proc/slabinfo") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in wanted and len(parts) > 3:
                out[parts[0]] = (int(parts[1]), int(parts[3]))
    return out


def conntrack_stats(names) -> _Dict[str, int]:
    """Counters of /proc/net/stat/nf_conntrack (insert_failed, drop, ...) summed over
    CPUs (one hex row each); {} where conntrack is not loaded."""
    try:
        with open("/proc/net/stat/nf_conntrack") as f:
            head, *rows = f.read().split("\n")
    except OSError:
        return {}
    columns = head.split()
    out = {k: 0 for k in names if k in columns}
    for row in rows:
        vals = row.split()
        if len(vals) == len(columns):
            for k in out:
                out[k] += int(vals[columns.index(k)], 16)
    return out
