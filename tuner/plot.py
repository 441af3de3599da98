"""`tuner plot`: pictures of probe runs, drawn from the `timeline` of `tuner probe --json`.

Four panels over the run's seconds, one line per run in each, several runs overlaid
(before/after an apply, --source-net none vs spread): connections established, the
rate they were established at, kernel slab memory and MemAvailable (both host-wide, as
/proc/meminfo gives them).

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

from . import errors
from .errors import TunerError, UsageError

FORMATS = ("svg", "png")
MAX_BYTES = 16 << 20            # a 1,000,000-connection run's JSON is well under 1 MiB
PROBE_SCHEMAS = ("tuner.probe/1", "tuner.probe.serve/1", "tuner.probe.connect/1")
# Exit code when the tuner[plot] extra is not installed (`tuner plot --help` says so).
EXTRA_MISSING = errors.EXIT_FAILED
# (panel id, y label, timeline key, scale): one line per run in each panel; the id is the
# SVG group id of each run's line ("run1-connections"), which the tests count.
GiB = 1 << 30
PANELS = (
    ("connections", "connections\nestablished", "established", 1),
    ("rate", "established\nper second", "rate", 1),
    ("slab", "kernel slab\n(GiB, host)", "slab_bytes", GiB),
    ("available", "MemAvailable\n(GiB, host)", "mem_available_bytes", GiB),
)


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
                             f"pip install 'tuner[plot]'", EXTRA_MISSING) from None


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
    if not isinstance(doc, dict) or doc.get("schema") not in PROBE_SCHEMAS:
        raise bad(f"not a probe's JSON (its schema is {_schema_of(doc)})")
    if doc.get("refused"):
        raise bad("a probe the pre-flight refused: it never ran, so there is nothing to draw")
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


def draw(runs: Sequence[Run], path: str, fmt: str, title: Optional[str] = None) -> None:
    """Draw the runs and save them to path (fmt: svg or png)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # Text as text (smaller, searchable), a fixed id salt and no date: the same runs give
    # the same file.
    style = {"svg.fonttype": "none", "svg.hashsalt": "tuner-plot", "font.size": 9}
    with matplotlib.rc_context(style):
        fig = Figure(figsize=(8, 8.5), layout="constrained")
        axes = fig.subplots(len(PANELS), 1, sharex=True)
        for i, run in enumerate(runs, 1):
            for ax, (panel, _, key, scale) in zip(axes, PANELS):
                t, y = run.series(key, scale)
                line, = ax.plot(t, y, label=run.label, color=f"C{(i - 1) % 10}", linewidth=1.3,
                                marker="o", markersize=3.5, markevery=run.phase_starts())
                line.set_gid(f"run{i}-{panel}")
        for ax, (panel, ylabel, key, scale) in zip(axes, PANELS):
            ax.set_ylabel(ylabel)
            ax.grid(True, linewidth=0.4, alpha=0.5)
            if scale == 1:
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        axes[0].legend(loc="lower right", fontsize=8)
        axes[-1].set_xlabel("seconds since the first worker started (dots: a phase begins, "
                            "e.g. hold, close, done)")
        fig.suptitle(title or "tuner probe: connections, rate and kernel memory over time")
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
