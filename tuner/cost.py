"""What holding connections costs a service, and where its memory stops it (issue 26).

From samples of the service at several connection counts (the probe's step rows, or two
samples of `tuner diagnose --watch`), a least-squares slope with its r^2: bytes per
connection of the service's own memory (PSS of its process tree) and of its sockets'
kernel memory (SKMEMINFO + the slab objects each pins), apart.  Then every memory limit
the service runs under, read for its processes, each turned into the connections it
allows, named like every other limit:

    cgroup      memory.max (v2) / memory.limit_in_bytes (v1), the tightest up the tree:
                counts the application and the kernel memory charged to it;
                allows = held + (limit - usage now) / (application + kernel slope)
    host        MemAvailable: held + MemAvailable / (application + kernel slope)
    tcp_mem     the kernel's cap on TCP buffer memory (its third value, pages), against
                the sockets' buffers alone: held + (tcp_mem - used) / buffer slope
    runtime     the heap cap its adapter reads (tuner/apps: -Xmx, --max-old-space-size,
                GOMEMLIMIT as soft): each of W connection-holding processes has its own
                heap, so allows = W * (cap - idle base) / application slope; or, where
                the adapter says the heap is V8's, / the V8 heap's own slope (heap_slope)
    its own     a cap the application sets against what it counts itself, not its PSS
                (Redis maxmemory-clients: it evicts clients past it; maxmemory, soft:
                writes fail past it): the probe reads its count at each step (the rows'
                service_own) and the line fitted to it meets the cap at allows; without
                such rows, what it counts per connection now

`project` takes the fewest (soft limits are listed, never binding) and says it in one
sentence: "the service would hold 412,000 on this host: its cgroup memory limit binds
first (9.8 KiB per connection: 6.2 application + 3.6 kernel; memory.max 4.0 GiB)".
Without a measured slope nothing is projected: the memory row is unknown, not zero.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from tuner.host import procfs, procpid
from tuner.host.numfmt import number, size

# Where a limit is set and what it counts.
CGROUP, HOST, TCP_MEM, RUNTIME, OWN_CAP = "cgroup", "host", "tcp_mem", "runtime", "application"
ALL, APPLICATION, BUFFERS, HEAP, OWN = "all", "application", "buffers", "heap", "own count"
# A slope is read only over at least this many connections between the first and last
# point: a handful of connections is within the noise of a process's own allocations.
MIN_SPAN = 16
# A step run's JSON (`diagnose --cost FILE`): a 1,000-step run is well under this.
RUN_MAX = 16 << 20


@dataclass
class Fit:
    """y = intercept + slope * x over `points` (x, y) pairs; r2 None when y is flat."""

    slope: float
    intercept: float
    r2: Optional[float]
    points: int


def fit(points: Sequence[Tuple[float, float]]) -> Optional[Fit]:
    """Least squares; None with fewer than two points or a connection span < MIN_SPAN."""
    pts = [(float(x), float(y)) for x, y in points if x is not None and y is not None]
    if len(pts) < 2 or max(x for x, _ in pts) - min(x for x, _ in pts) < MIN_SPAN:
        return None
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    slope = sxy / sxx
    intercept = my - slope * mx
    syy = sum((y - my) ** 2 for _, y in pts)
    r2 = None if syy == 0 else max(0.0, 1 - sum((y - intercept - slope * x) ** 2 for x, y in pts) / syy)
    return Fit(slope, intercept, None if r2 is None else round(r2, 4), n)


@dataclass
class MemoryLimit:
    """One memory limit the service runs under, and the connections it allows."""

    name: str                   # "memory.max", "MemAvailable", "tcp_mem", "--max-old-space-size=128 (...)"
    where: str                  # CGROUP, HOST, TCP_MEM, RUNTIME
    bytes: Optional[int]        # the limit
    headroom: Optional[int]     # what is left of it now (runtime: the limit less the idle base)
    source: str                 # the file or flag it was read from
    counts: str                 # ALL, APPLICATION or BUFFERS: which slope it is set against
    soft: bool = False          # passing it stops nothing (GOMEMLIMIT)
    processes: int = 1          # runtime: processes each with a heap of this size
    allows: Optional[int] = None
    young: int = 0              # HEAP: what the runtime commits beside the cap (V8's young generation)
    note: str = ""              # why it is set against another slope than its own
    # OWN: bytes per connection as the application counts them, the connections where it
    # was seen acting on the cap (Redis evicted clients), what it does past it.
    per_connection: Optional[int] = None
    acted_at: Optional[int] = None
    does: str = ""
    kind: str = ""              # OWN: the adapter's MemoryCap kind (what it counts)

    def to_dict(self) -> dict:
        return asdict(self)


def cgroup_limit(pids: Sequence[int]) -> Optional[MemoryLimit]:
    """The tightest memory cgroup limit over the service's processes (by headroom)."""
    best = None
    for pid in pids:
        try:
            cg = procpid.process_cgroup_memory(pid)
        except OSError:
            continue   # gone
        if cg.get("limit") is None or cg.get("usage") is None:
            continue
        name = "memory.max" if cg["version"] == 2 else "memory.limit_in_bytes"
        row = MemoryLimit(name, CGROUP, cg["limit"], cg["limit"] - cg["usage"],
                          os.path.join(cg["path"], name), ALL)
        if best is None or row.headroom < best.headroom:
            best = row
    return best


def host_limits() -> List[MemoryLimit]:
    """MemAvailable (everything the host can still give) and tcp_mem (sockets' buffers)."""
    out = []
    mem = procfs.meminfo_kb()
    if "MemAvailable" in mem:
        out.append(MemoryLimit("MemAvailable", HOST, mem["MemAvailable"] * 1024,
                               mem["MemAvailable"] * 1024, "/proc/meminfo", ALL))
    high = (procfs.tcp_mem() or (None,))[-1]
    if high:
        page = os.sysconf("SC_PAGE_SIZE")
        used = procfs.sockstat().get("TCP", {}).get("mem", 0)
        out.append(MemoryLimit("tcp_mem", TCP_MEM, high * page, (high - used) * page,
                               "tcp_mem: its third value, in pages (the knob table names it)", BUFFERS))
    return out


def runtime_limit(pids: Sequence[int]) -> Optional[MemoryLimit]:
    """The heap cap of the service's runtime, from the adapter that recognises one of its
    connection-holding processes (the tree's leaves: a master or cluster primary holds
    none), each of which has a heap of its own."""
    # Only a service sampled for its cost needs its runtime read: the adapters load here.
    from tuner import apps
    from tuner.apps import base
    leaves = holders(pids)
    for pid in leaves:
        proc = base.view(pid, depth=0)
        adapter = apps.find(proc)
        cap = adapter.memory_cap(proc) if adapter else None
        if cap is not None and cap.kind in (base.HEAP, base.SOFT) and cap.bytes:
            return MemoryLimit(cap.source, RUNTIME, cap.bytes, cap.bytes - cap.base, cap.source,
                               HEAP if cap.heap_pages else APPLICATION, soft=cap.kind == base.SOFT,
                               processes=len(leaves), young=cap.young)
    return None


def holders(pids: Sequence[int]) -> List[int]:
    """The processes of the service that hold its connections: those with no child in
    the service (workers), or the one process."""
    parents = set()
    for pid in pids:
        try:
            parents.add(int(procpid.proc_status(pid).get("PPid", "0")))
        except OSError:
            continue
    leaves = [p for p in pids if p not in parents]
    return leaves or list(pids)


def read_limits(pids: Sequence[int]) -> List[MemoryLimit]:
    """Every memory limit the service's processes run under, the cgroup's first."""
    out = [cgroup_limit(pids)] + host_limits() + [runtime_limit(pids)]
    return [l for l in out if l is not None]


def allows(limit: MemoryLimit, held: int, slopes: Dict[str, Optional[float]]) -> Optional[int]:
    """Connections the limit allows at these slopes (bytes per connection); None when
    the slope it is set against is unknown or does not grow."""
    if limit.counts == OWN:
        return limit.allows          # set from the application's own count (own_limits)
    slope = slopes.get(limit.counts)
    if slope is None or slope <= 0 or limit.headroom is None:
        return None
    if limit.where == RUNTIME:
        return max(int(limit.processes * limit.headroom / slope), 0)
    return max(held + int(limit.headroom / slope), held if limit.headroom >= 0 else 0)


def slopes_of(rows: Sequence[dict]) -> Tuple[Dict[str, Optional[float]], Dict[str, Optional[Fit]]]:
    """Bytes per connection from rows {connections, service_memory_bytes,
    service_kernel_bytes[, service_buffer_bytes]}: {application, kernel, buffers, all}
    and the fits behind them."""
    def line(key: str) -> Optional[Fit]:
        return fit([(r.get("connections"), r.get(key)) for r in rows])

    fits = {APPLICATION: line("service_memory_bytes"), "kernel": line("service_kernel_bytes"),
            BUFFERS: line("service_buffer_bytes")}
    slopes = {k: (f.slope if f else None) for k, f in fits.items()}
    app, kernel = slopes[APPLICATION], slopes["kernel"]
    slopes[ALL] = app + kernel if app is not None and kernel is not None else None
    return slopes, fits


def heap_fit(rows: Sequence[dict], young: int) -> Optional[Fit]:
    """The V8 heap's bytes per connection (service_heap_bytes, its committed pages) over
    the rows past its young generation's growth; None when that leaves too little.

    V8 grows its two semi-spaces (up to `young` together) while what it allocates
    survives, as every held connection's objects do: a ramp from an idle Node sees them
    fill in its first rows (2 to 32 MiB over the first 200 connections of 64 KiB), and
    that growth is no cost per connection: --max-old-space-size does not count it.  So
    the rows before the heap grew by `young` over the first row are left out, and the
    rest are used only when the heap grew by `young` again over them (old-generation
    pages arrive a semi-space at a time, when a scavenge promotes what survived)."""
    pts = sorted((r["connections"], r["service_heap_bytes"]) for r in rows
                 if r.get("connections") is not None and r.get("service_heap_bytes") is not None)
    if len(pts) < 2:
        return None
    kept = [(x, y) for x, y in pts if y - pts[0][1] >= young]
    if len(kept) < 2 or kept[-1][1] - kept[0][1] < young:
        return None
    return fit(kept)


def rate_heap(limits: List[MemoryLimit], rows: Sequence[dict], slopes: dict, fits: dict) -> None:
    """A runtime limit set against the V8 heap gets its slope (slopes[HEAP]); without one
    measurable it falls back to the whole process's (application) slope and says so."""
    for limit in limits:
        if limit.counts != HEAP:
            continue
        young = limit.young * limit.processes       # each worker has its own
        f = heap_fit(rows, young)
        if f is not None and f.slope > 0:
            slopes[HEAP], fits[HEAP] = f.slope, f
            continue
        limit.counts = APPLICATION
        each = f" in {limit.processes} processes" if limit.processes > 1 else ""
        limit.note = (f"the V8 heap's own growth was not measurable past its young generation "
                      f"({size(young)}{each}, which the cap does not count): ramp further; set "
                      f"against the whole process's memory instead, which counts that growth too")


WHO = {CGROUP: "its cgroup memory limit", HOST: "the host's available memory",
       TCP_MEM: "the kernel's TCP buffer memory limit (tcp_mem)", RUNTIME: "its runtime's heap limit",
       OWN_CAP: "its own client memory limit"}


def own_reading(cap) -> dict:
    """What a step row keeps of an adapter's own-counted cap (tuner.apps.base.MemoryCap)."""
    return {"name": cap.name, "kind": cap.kind, "bytes": cap.bytes, "source": cap.source, "does": cap.does,
            "used": cap.used, "connections": cap.connections, "evicted": cap.evicted}


def own_limits(rows: Sequence[dict], own: Optional[Sequence[dict]]) -> List[MemoryLimit]:
    """The caps the application sets against its own count (`own`: read now, else the last
    row's service_own), each with the connections it allows: where the line fitted to the
    rows' own count (before it first acted on the cap) meets it, else what it counts per
    connection now."""
    own = own if own is not None else ((rows[-1].get("service_own") if rows else None) or [])
    out = []
    for cap in own:
        if cap.get("used") is None or not cap.get("bytes"):
            continue
        readings = [r for row in rows for r in (row.get("service_own") or ()) if r.get("kind") == cap["kind"]]
        first = readings[0].get("evicted") if readings else None
        acted = next((r["connections"] for r in readings if (r.get("evicted") or 0) > (first or 0)), None)
        line = fit([(r["connections"], r["used"]) for r in readings if r.get("evicted") == first])
        if line is not None and line.slope > 0:
            per, allows = line.slope, int((cap["bytes"] - line.intercept) / line.slope)
        elif cap.get("connections") and cap["kind"] == "clients":
            # All it counts against this cap is its clients' (not so for maxmemory).
            per = cap["used"] / cap["connections"]
            allows = cap["connections"] + int((cap["bytes"] - cap["used"]) / per) if per > 0 else None
        else:
            continue
        out.append(MemoryLimit(cap["name"], OWN_CAP, cap["bytes"], cap["bytes"] - cap["used"], cap["source"],
                               OWN, soft=cap["kind"] == "data", allows=None if allows is None else max(allows, 0),
                               per_connection=_round(per), acted_at=acted, does=cap.get("does", ""),
                               kind=cap["kind"]))
    return out


def project(rows: Sequence[dict], pids: Sequence[int],
            limits: Optional[List[MemoryLimit]] = None, held: Optional[int] = None,
            own: Optional[Sequence[dict]] = None) -> dict:
    """The `service` object of the probe's connect document and of diagnose: bytes per
    connection (application and kernel apart, with their r^2), every memory limit with
    the connections it allows, the one that binds first and the sentence saying so.
    `own`: the application's own-counted caps read now (diagnose), else the rows'."""
    slopes, fits = slopes_of(rows)
    limits = read_limits(pids) if limits is None else limits
    rate_heap(limits, rows, slopes, fits)
    limits = limits + own_limits(rows, own)
    # What it holds when its limits were read: the last row's count for the probe, the
    # count now for diagnose (its limits' headroom is read now).
    held = max((r.get("connections") or 0 for r in rows), default=0) if held is None else held
    for limit in limits:
        limit.allows = allows(limit, held, slopes)
    rated = [(l.allows, i, l) for i, l in enumerate(limits) if l.allows is not None and not l.soft]
    binding = min(rated)[2] if rated else None
    out = {
        "pids": list(pids), "points": len(rows),
        "bytes_per_connection": {APPLICATION: _round(slopes[APPLICATION]), "kernel": _round(slopes["kernel"]),
                                 HEAP: _round(slopes.get(HEAP))},
        "fit_r2": {k: fits[k].r2 if fits.get(k) else None for k in (APPLICATION, "kernel", HEAP)},
        "memory_limit": None if binding is None else {"name": binding.name, "bytes": binding.bytes,
                                                      "source": binding.source},
        "projected_max": None if binding is None else binding.allows,
        "binding": None if binding is None else binding.name,
        "limits": [l.to_dict() for l in limits],
    }
    out["sentence"] = sentence(out, binding)
    return out


def rows_of_run(path: str) -> List[dict]:
    """The step rows of a `tuner probe --connect URL --step K --json` document (the file
    `tuner diagnose --cost FILE` names); ValueError saying what is wrong otherwise."""
    import json  # only --cost reads a run file

    from tuner.host import trust   # as root: a file only root or the invoker could have written

    try:
        fd = trust.open_nofollow(path, os.O_RDONLY, what="--cost file")
        try:
            trust.own_file(fd, path, what="--cost file")
            trust.trusted_way(fd, path, "--cost file")   # rule 8: the directories on the way too
            with os.fdopen(fd, "rb", closefd=False) as f:
                doc = json.loads(f.read(RUN_MAX + 1)[:RUN_MAX + 1])
        finally:
            os.close(fd)
    except trust.UntrustedFile as e:
        raise ValueError(str(e)) from None
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"--cost {path}: cannot read it as JSON ({e})") from None
    steps = doc.get("steps") if isinstance(doc, dict) else None
    keys = ("connections", "service_memory_bytes", "service_kernel_bytes")
    optional = ("service_buffer_bytes", "service_heap_bytes")   # a number or null when there

    def number_(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(steps, list) or not all(isinstance(r, dict) and all(number_(r.get(k)) for k in keys)
                                              and all(r.get(k) is None or number_(r[k]) for k in optional)
                                              and _own_ok(r.get("service_own"), number_)
                                              for r in steps):
        raise ValueError(f"--cost {path}: not a step run (write one with 'tuner probe --connect URL "
                         f"-n N --step K --json > FILE')")
    return steps


def _own_ok(own, number_) -> bool:
    """A row's service_own as the probe writes it (own_reading): absent, null, or a list of
    objects whose figures are numbers or null and whose words are text; anything else
    reached own_limits as an internal error instead of --cost's one line."""
    if own is None:
        return True
    figures, words = ("used", "bytes", "connections", "evicted"), ("name", "kind", "source", "does")
    return isinstance(own, list) and all(
        isinstance(r, dict) and all(r.get(k) is None or number_(r[k]) for k in figures)
        and all(isinstance(r.get(k, ""), str) for k in words) for r in own)


def _round(value: Optional[float]) -> Optional[int]:
    return None if value is None else int(round(value))


def sentence(d: dict, binding: Optional[MemoryLimit]) -> str:
    per = d["bytes_per_connection"]
    if binding is not None and binding.counts == OWN:
        return own_sentence(binding, d)
    if per[APPLICATION] is None or per["kernel"] is None:
        return ("what a connection costs the service is unknown: no slope was measured (it needs "
                f"samples at connection counts at least {MIN_SPAN} apart), so no memory limit is "
                "projected")
    total = per[APPLICATION] + per["kernel"]
    cost = (f"{size(total)} per connection: {per[APPLICATION] / 1024:.1f} application + "
            f"{per['kernel'] / 1024:.1f} kernel")
    if binding is None:
        return f"the service's memory does not grow with its connections here ({cost})"
    limit = binding.name if binding.where == RUNTIME else f"{binding.name} {size(binding.bytes)}"
    if binding.counts == HEAP:
        cost = f"its V8 heap commits {size(per[HEAP])} per connection, the whole service {cost}"
    if binding.note:
        limit = f"{limit}; {binding.note}"
    return (f"the service would hold {number(binding.allows)} on this host: {WHO[binding.where]} "
            f"binds first ({cost}; {limit})")


def own_sentence(binding: MemoryLimit, d: dict) -> str:
    """'the service would hold 2,310 on this host: its own client memory limit binds first
    (maxmemory-clients 4.0 MiB: 1.8 KiB per connection as the application counts it; ...)'."""
    text = (f"the service would hold {number(binding.allows)} on this host: {WHO[OWN_CAP]} binds "
            f"first ({binding.name}, {binding.does}: {size(binding.per_connection)} per connection "
            f"as the application counts it")
    if binding.acted_at is not None:
        text += f"; it began evicting clients by {number(binding.acted_at)} connections"
    soft = [l for l in d["limits"] if l["soft"] and l["counts"] == OWN and l["allows"] is not None]
    text += "".join(f"; past {number(l['allows'])}, {l['name']}: {l['does']}" for l in soft)
    return text + ")"
