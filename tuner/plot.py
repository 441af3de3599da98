"""`tuner plot`: pictures of probe runs, drawn from the `timeline` of `tuner probe --json`.

Four panels over the run's seconds, several runs overlaid (before/after an apply,
--source-net none vs spread): connections (two lines per run: the TCP sockets open now,
which fall as the run closes, and those established so far), the rate they were
established at, kernel slab memory and MemAvailable (both host-wide, as /proc/meminfo
gives them).  Each run's phases (open, hold, close, ...) are named where they begin; the
default title says N, the mode and the host of the runs.

matplotlib and jsonschema are the optional extra `tuner[plot]`: they are imported here,
when a picture is drawn, never by the other commands (bench/bench_startup.py).  The
drawing uses the Agg backend (no display), and an SVG keeps its text as text, so the
file stays small and diffs between runs of the same data are empty.
"""
from __future__ import annotations

import errno
import io
import json
import os
import stat
from typing import Dict, List, Optional, Sequence, Tuple

from tuner.host import errors
from tuner.host.errors import TunerError, UsageError
from tuner.host.numfmt import number

FORMATS = ("svg", "png")
MAX_BYTES = 16 << 20            # a 1,000,000-connection run's JSON is well under 1 MiB
# Exit code when the tuner[plot] extra is not installed (`tuner plot --help` says so).
EXTRA_MISSING = errors.EXIT_FAILED
# (panel id, y label, timeline key, scale): one line per run in each panel; the id is the
# SVG group id of each run's line ("run1-connections"), which the tests count.  The first
# panel has a second line per run, OPEN_NOW ("run1-open").
GiB = 1 << 30
PANELS = (
    ("connections", "connections", "established", 1),
    ("rate", "established\nper second", "rate", 1),
    ("slab", "kernel slab\n(GiB, host)", "slab_bytes", GiB),
    ("available", "MemAvailable\n(GiB, host)", "mem_available_bytes", GiB),
)
OPEN_NOW = ("open", "sockets")
OPEN_LABEL = "TCP sockets open now (sockstat; both ends when on one host)"
ESTABLISHED_LABEL = "established so far"
# The timeline's phases as the picture names them where each begins.
PHASE_NAMES = {"establish": "open", "serve": "serve", "exchange": "verify", "stopping": "stopping",
               "hold": "hold", "check": "check", "close": "close", "done": "exited"}


class Run:
    """One probe document: its name in the legend and its timeline."""

    def __init__(self, label: str, doc: dict):
        self.label, self.doc, self.timeline = label, doc, doc["timeline"]

    def series(self, key: str, scale: float = 1) -> Tuple[List[float], List[float]]:
        return [s["t"] for s in self.timeline], [s[key] / scale for s in self.timeline]

    def phase_starts(self) -> List[int]:
        """Indices of the samples where a phase begins (hold, close, ...), marked on the
        line itself so each run stays one line."""
        return [i for i, s in enumerate(self.timeline)
                if i and s["phase"] != self.timeline[i - 1]["phase"]]

    def phases(self) -> List[Tuple[float, str]]:
        """(second, name) where each phase begins, the first one included."""
        return [(self.timeline[i]["t"], PHASE_NAMES.get(self.timeline[i]["phase"], self.timeline[i]["phase"]))
                for i in [0, *self.phase_starts()]]

    def mode(self) -> str:
        return self.doc.get("mode") or "loopback"

    def connections(self) -> Optional[int]:
        """N: what the run set out to hold (--connections, or --serve's --expect)."""
        doc = self.doc
        return doc.get("expect") if self.mode() == "serve" else doc.get("requested")


def output_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise UsageError(f"-o {path}: name a .svg or .png file (the format follows the name)")
    return ext


def require_extra() -> None:
    """The tuner[plot] extra, or one line naming it (exit EXTRA_MISSING)."""
    for module in ("matplotlib", "jsonschema"):
        try:
            __import__(module)
        except ImportError:
            raise TunerError(f"tuner plot needs {module}, which is not installed: "
                             f"pip install '.[plot]' in tuner's clone (or pip install matplotlib "
                             f"jsonschema)", EXTRA_MISSING) from None


def read_run(path: str) -> dict:
    """A `tuner probe --json` document with a timeline, or UsageError saying why not.
    Opened without blocking (a FIFO does not hang it), a regular file only, capped."""
    def bad(why: str) -> UsageError:
        return UsageError(f"{path}: {why}; give the output of `tuner probe --json`")

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise bad(f"cannot read it ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise bad("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise bad(f"cannot read it ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        raise bad(f"larger than {MAX_BYTES:,} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise bad("not JSON" if not isinstance(exc, RecursionError) else "JSON nested too deeply") from None
    from tuner.probing.run import SCHEMAS  # the probe's documents, named in one place

    if not isinstance(doc, dict) or doc.get("schema") not in SCHEMAS:
        raise bad(f"not a probe's JSON (its schema is {_schema_of(doc)})")
    if doc.get("refused"):
        raise bad("a probe the pre-flight refused: it never ran, so there is nothing to draw")
    # Here: the schemas' validator loads only when a file is refused (start-up time).
    import jsonschema
    from . import schemas
    try:
        schemas.validate(doc)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the document"
        raise bad(f"does not match {doc['schema']} at {where} ({exc.message[:120]})") from None
    if not doc["timeline"]:
        raise bad("its timeline is empty")
    return doc


def _schema_of(doc) -> str:
    schema = doc.get("schema") if isinstance(doc, dict) else None
    return repr(schema) if isinstance(schema, str) else "missing"


def labels_for(paths: Sequence[str], labels: Sequence[str]) -> List[str]:
    if labels and len(labels) != len(paths):
        raise UsageError(f"--label given {len(labels)} time(s) for {len(paths)} run(s): give one per "
                         f"RUN, in the same order, or none (the file names are used)")
    return list(labels) if labels else [os.path.basename(p) for p in paths]


def default_title(runs: Sequence[Run]) -> str:
    """'tuner probe, loopback: 100,000 connections on HOST', each part once when the runs
    share it, else each run's joined by ' / ' (a host only when the documents name one)."""
    def once(values) -> str:
        return " / ".join(dict.fromkeys(values))

    n = once("?" if r.connections() is None else number(r.connections()) for r in runs)
    hosts = [r.doc["host"] for r in runs if r.doc.get("host")]
    return (f"tuner probe, {once(r.mode() for r in runs)}: {n} connections"
            + (f" on {once(hosts)}" if hosts else "") + (f" ({len(runs)} runs)" if len(runs) > 1 else ""))


def draw_runs(axes, runs: Sequence[Run]) -> None:
    """Each run's lines: one per panel, and the open-now line in the first."""
    for i, run in enumerate(runs, 1):
        color = f"C{(i - 1) % 10}"
        for ax, (panel, _, key, scale) in zip(axes, PANELS):
            t, y = run.series(key, scale)
            established = panel == PANELS[0][0]
            line, = ax.plot(t, y, label=run.label, color=color, linewidth=1 if established else 1.3,
                            linestyle="--" if established else "-",
                            marker="o", markersize=3.5, markevery=run.phase_starts())
            line.set_gid(f"run{i}-{panel}")
        gid, key = OPEN_NOW
        t, y = run.series(key)
        line, = axes[0].plot(t, y, color=color, linewidth=1.6, marker="o", markersize=3.5,
                             markevery=run.phase_starts())
        line.set_gid(f"run{i}-{gid}")


def name_phases(axes, runs: Sequence[Run]) -> None:
    """A dotted line across every panel where each run's phase begins, its name at the top
    of the first panel in the run's colour; a name that would overlap one before it goes a
    row lower (phases of several runs, or close and exited a moment apart)."""
    # Here: matplotlib loads only when a plot is drawn (start-up time).
    from matplotlib.transforms import blended_transform_factory

    top = blended_transform_factory(axes[0].transData, axes[0].transAxes)
    x0, x1 = axes[0].get_xlim()
    char = (x1 - x0) * 0.0095          # about one 7-point character on an 8-inch figure
    ends: List[float] = []             # where each row's last name ends
    for t, name, i in sorted((t, name, i) for i, run in enumerate(runs) for t, name in run.phases()):
        for ax in axes:
            ax.axvline(t, color=f"C{i % 10}", linestyle=":", linewidth=0.8, alpha=0.6)
        width = (len(name) + 2) * char
        right = t + width > x1         # the last names end at their line, inside the panel
        start = t - width if right else t
        row = next((r for r, end in enumerate(ends) if end <= start), len(ends))
        ends[row:row + 1] = [start + width]
        axes[0].text(t, 0.97 - 0.085 * row, f" {name} " if right else f" {name}", transform=top,
                     color=f"C{i % 10}", fontsize=7, va="top", ha="right" if right else "left", gid="phase")


def legend(ax, runs: Sequence[Run]) -> None:
    """One run: what its two lines are.  Several: which colour is which run, and the two
    line styles once, in grey."""
    # Here: matplotlib loads only when a plot is drawn (start-up time).
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="C0" if len(runs) == 1 else "0.4", linewidth=1.6, label=OPEN_LABEL),
              Line2D([], [], color="C0" if len(runs) == 1 else "0.4", linewidth=1, linestyle="--",
                     label=ESTABLISHED_LABEL)]
    colours = [] if len(runs) == 1 else [Line2D([], [], color=f"C{i % 10}", linewidth=1.6, label=r.label)
                                         for i, r in enumerate(runs)]
    ax.figure.legend(handles=colours + styles, loc="outside lower center", ncols=2, fontsize=7)


def cost_panels(fig, runs: Sequence[Run]) -> None:
    """A step run's cost (issue 26): the service's memory (its own and its sockets' kernel
    memory) and the p99 of its exchange against connections held, one line per run, the
    projection where its memory limit binds marked ("projection" gid) with that limit
    named, and --max-p99 as a line across the latency panel."""
    # Here: matplotlib loads only when a plot is drawn (start-up time).
    from matplotlib.ticker import FuncFormatter

    memory_ax, p99_ax = fig.subplots(1, 2)
    for i, run in enumerate(runs, 1):
        steps = [r for r in run.doc.get("steps") or [] if r.get("service_memory_bytes") is not None]
        color = f"C{(i - 1) % 10}"
        if steps:
            x = [r["connections"] for r in steps]
            y = [(r["service_memory_bytes"] + (r.get("service_kernel_bytes") or 0)) / (1 << 20) for r in steps]
            memory_ax.plot(x, y, color=color, marker="o", markersize=3.5, label=run.label, gid=f"run{i}-memory")
            _heap_line(memory_ax, run.doc.get("service") or {}, steps, color, i)
            _own_line(memory_ax, run.doc.get("service") or {}, steps, color, i)
        timed = [r for r in run.doc.get("steps") or [] if r.get("latency_ms")]
        if timed:
            p99_ax.plot([r["connections"] for r in timed], [r["latency_ms"]["p99"] for r in timed], color=color,
                        marker="o", markersize=3.5, gid=f"run{i}-p99")
        _mark_projection(memory_ax, run.doc.get("service") or {}, color)
        bound = (run.doc.get("ramp") or {}).get("max_p99_ms")
        if bound:
            p99_ax.axhline(bound, color=color, linestyle="--", linewidth=0.8, gid=f"run{i}-max-p99")
    memory_ax.set(xlabel="connections held", ylabel="service memory (MiB)\napplication + kernel")
    p99_ax.set(xlabel="connections held", ylabel="p99 of its exchange (ms)")
    for ax in (memory_ax, p99_ax):
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _heap_line(ax, service: dict, steps: Sequence[dict], color: str, i: int) -> None:
    """When the limit that binds is set against the V8 heap (Node's heap limit), that
    heap's committed pages, dashed: the line the projection follows, not the PSS one."""
    binding = [l for l in service.get("limits") or () if l.get("name") == service.get("binding")]
    rows = [r for r in steps if r.get("service_heap_bytes") is not None]
    if binding and binding[0].get("counts") == "heap" and rows:
        ax.plot([r["connections"] for r in rows], [r["service_heap_bytes"] / (1 << 20) for r in rows],
                color=color, linestyle="--", linewidth=1, gid=f"run{i}-heap")
        ax.text(0.02, 0.88, "dashed: its V8 heap, which the heap limit counts",
                transform=ax.transAxes, fontsize=7, va="top", color=color, gid="heap-words")


def _own_line(ax, service: dict, steps: Sequence[dict], color: str, i: int) -> None:
    """When the limit that binds is the application's own, set against what it counts
    itself (Redis maxmemory-clients against mem_clients_normal), that count, dashed: the
    line the projection follows, not the PSS one."""
    binding = [l for l in service.get("limits") or () if l.get("name") == service.get("binding")]
    if not binding or binding[0].get("counts") != "own count":
        return
    kind = binding[0].get("kind")
    rows = [(o["connections"], o["used"]) for r in steps for o in r.get("service_own") or ()
            if o.get("kind") == kind and o.get("used") is not None and o.get("connections") is not None]
    if rows:
        ax.plot([x for x, _ in rows], [y / (1 << 20) for _, y in rows], color=color, linestyle="--",
                linewidth=1, gid=f"run{i}-own")
        ax.text(0.02, 0.88, f"dashed: what it counts itself against {binding[0]['name']}",
                transform=ax.transAxes, fontsize=7, va="top", color=color, gid="own-words")


def _mark_projection(ax, service: dict, color: str) -> None:
    """Where memory stops the service: a dotted line at the projected count when it is
    within three times what the run held, and its words (count, limit) in the panel."""
    if service.get("projected_max") is None:
        return
    held = ax.get_xlim()[1]      # the right edge of what the run's points span
    n = service["projected_max"]
    limit = service.get("memory_limit") or {}
    if n <= 3 * held:
        ax.axvline(n, color=color, linestyle=":", linewidth=1.2, gid="projection")
    ax.text(0.02, 0.95, f"memory binds at {number(n)}: {service.get('binding')} "
            f"({number(round((limit.get('bytes') or 0) / (1 << 20)))} MiB)", transform=ax.transAxes,
            fontsize=7, va="top", color=color, gid="projection-words")


def draw(runs: Sequence[Run], path: str, fmt: str, title: Optional[str] = None) -> None:
    """Draw the runs and save them to path (fmt: svg or png)."""
    # Here: matplotlib loads only when a plot is drawn (start-up time).
    import matplotlib
    matplotlib.use("Agg")
    # Here: matplotlib loads only when a plot is drawn (start-up time).
    from matplotlib.figure import Figure

    # Text as text (smaller, searchable), a fixed id salt and no date: the same runs give
    # the same file.
    style = {"svg.fonttype": "none", "svg.hashsalt": "tuner-plot", "font.size": 9}
    with matplotlib.rc_context(style):
        costed = any(r.doc.get("steps") for r in runs)
        fig = Figure(figsize=(8, 12 if costed else 9), layout="constrained")
        if costed:   # a step run: its cost against connections held, under the timeline
            top, bottom = fig.subfigures(2, 1, height_ratios=(3, 1))
            cost_panels(bottom, runs)
        else:
            top = fig
        axes = top.subplots(len(PANELS), 1, sharex=True)
        draw_runs(axes, runs)
        for ax, (panel, ylabel, key, scale) in zip(axes, PANELS):
            ax.set_ylabel(ylabel)
            ax.grid(True, linewidth=0.4, alpha=0.5)
            if scale == 1:
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        low, high = axes[0].get_ylim()
        axes[0].set_ylim(low, high + (high - low) * 0.3)   # room above the lines for the phase names
        name_phases(axes, runs)
        axes[-1].set_xlabel("seconds since the first worker started (dotted: a phase begins)")
        fig.suptitle(title or default_title(runs))
        legend(axes[0], runs)   # under the panels
        metadata = {"Date": None} if fmt == "svg" else {}
        image = io.BytesIO()
        fig.savefig(image, format=fmt, metadata=metadata)
        _write_output(path, image.getvalue())


def _write_output(path: str, data: bytes) -> None:
    """Write the picture as root without following a link at `path` (one planted in a
    shared directory would have root overwrite its target) and only into a regular file
    (a FIFO would block)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        # ENXIO: a FIFO nobody reads (O_NONBLOCK keeps it from blocking).
        reason = {errno.ELOOP: "it is a symbolic link", errno.ENXIO: "not a regular file"}.get(
            exc.errno, exc.strerror or str(exc))
        raise TunerError(f"cannot write {path}: {reason}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TunerError(f"cannot write {path}: not a regular file")
        os.ftruncate(fd, 0)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    except OSError as exc:
        raise TunerError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def plot(paths: Sequence[str], output: str, labels: Sequence[str] = (), title: Optional[str] = None) -> Dict:
    """`tuner plot`: read each RUN (validated), draw, write output; what was drawn."""
    fmt = output_format(output)
    names = labels_for(paths, labels)
    require_extra()
    runs = [Run(name, read_run(p)) for name, p in zip(names, paths)]
    draw(runs, output, fmt, title)
    return {"output": output, "format": fmt, "runs": [r.label for r in runs]}
