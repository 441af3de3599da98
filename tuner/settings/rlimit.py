"""A resource limit (soft or hard) of a running process, named by --pid.

Value: the limit as an int.  The process is identified by pid and start time, so a
reused pid is another process whose limits are not ours to restore.
"""
from __future__ import annotations

import math
import resource
from typing import Any, Dict, List, Tuple

from ..knobs import BY_NAME, NR_OPEN_MAX, ceiling
from tuner.host.procfs import read_sysctl
from .base import Change, Gone, Kind, WriteError, check, is_int

RLIMITS = {"RLIMIT_NOFILE": resource.RLIMIT_NOFILE}
# prlimit(1)'s option for each resource.
PRLIMIT_OPTION = {"RLIMIT_NOFILE": "--nofile"}
# Snapshot fields that hold a process's RLIMIT_NOFILE, by the knob name's suffix.
FIELDS = {"soft": "nofile_soft", "hard": "nofile_hard"}


def parts(knob) -> Tuple[str, str]:
    """'RLIMIT_NOFILE.hard' -> ('RLIMIT_NOFILE', 'hard'): the table's naming convention."""
    res, _, which = knob.name.partition(".")
    if which not in FIELDS:
        raise ValueError(f"rlimit knob {knob.name!r} must end in .soft or .hard")
    return res, which


def _process(detail):
    # Here: psutil loads only when a process's limit is read or set (start-up time).
    import psutil

    try:
        proc = psutil.Process(detail["pid"])
        # A reused pid is another process: its limits are not ours to restore.
        if abs(proc.create_time() - detail["create_time"]) > 0.01:
            raise Gone(f"process {detail['pid']} has exited")
    except psutil.NoSuchProcess:
        raise Gone(f"process {detail['pid']} has exited") from None
    return proc


class Rlimit(Kind):
    name = "rlimit"
    knob_kinds = ("rlimit",)
    value_doc = "an integer"

    def key(self, netns, detail) -> str:
        return (f"rlimit:{detail['pid']}:{detail['create_time']}:"
                f"{detail['resource']}.{detail['which']}")

    def where(self, netns, detail) -> str:
        return f"pid {detail['pid']}"

    def command(self, netns, detail, value, soft=None, hard=None) -> str:
        """prlimit with both limits when the plan knows them (soft:hard), else the one
        this setting is (prlimit's 'soft:' and ':hard' forms)."""
        option = PRLIMIT_OPTION[detail["resource"]]
        if soft is None or hard is None:
            soft, hard = (value, "") if detail["which"] == "soft" else ("", value)
        return f"prlimit --pid {detail['pid']} {option}={soft}:{hard}"

    def valid_value(self, value) -> bool:
        return is_int(value)

    json_doc = "a list of one integer ([1024])"

    def to_json(self, value):
        return None if value is None else [value]

    def from_json(self, values):
        if not (isinstance(values, list) and len(values) == 1 and is_int(values[0])):
            raise ValueError(f"not {self.json_doc}: {values!r}")
        return values[0]

    def check_detail(self, d) -> None:
        check(is_int(d.get("pid")) and d["pid"] > 0, "detail.pid", d.get("pid"))
        ct = d.get("create_time")
        check(is_int(ct) or isinstance(ct, float), "detail.create_time", ct)
        check(d.get("resource") in RLIMITS, "detail.resource", d.get("resource"))
        check(d.get("which") in FIELDS, "detail.which", d.get("which"))

    def _read(self, netns, detail) -> int:
        # Here: psutil loads only when a process's limit is read (start-up time).
        import psutil

        try:
            soft, hard = _process(detail).rlimit(RLIMITS[detail["resource"]])
        except psutil.NoSuchProcess:
            raise Gone(f"process {detail['pid']} has exited") from None
        return soft if detail["which"] == "soft" else hard

    def _write(self, netns, detail, value: int) -> None:
        # Here: psutil loads only when a process's limit is set (start-up time).
        import psutil


        proc = _process(detail)
        res = RLIMITS[detail["resource"]]
        try:
            soft, hard = proc.rlimit(res)
            # Lowering the hard limit below the soft one drags the soft one down with it.
            new = (value, hard) if detail["which"] == "soft" else (min(soft, value), value)
            proc.rlimit(res, new)
        except psutil.NoSuchProcess:
            raise Gone(f"process {detail['pid']} has exited") from None
        except psutil.AccessDenied:
            # The knob table says which sysctl caps a hard limit (and what else to do).
            hard = BY_NAME[f"{detail['resource']}.hard"]
            cap = ceiling(hard.name)
            raise WriteError(f"EPERM: a hard limit can go no higher than {cap.name} "
                             f"({read_sysctl(cap.name)}) and goes up only with "
                             f"CAP_SYS_RESOURCE (otherwise: {hard.fix}, or shard across "
                             f"processes)") from None

    def plan(self, knob, planning) -> List[Change]:

        res, which = parts(knob)
        req = planning.req
        out = []
        for pid, info in planning.procs.items():
            psnap = planning.pid_snaps[pid]
            # Host-wide ceilings (the sysctl that caps a hard limit) as raised so far, the
            # process's own limits.
            psnap.sysctls = dict(planning.sim.sysctls)
            needed = knob.needs(planning.ctx(psnap))
            field_name = FIELDS[which]
            if needed is not None:
                current = getattr(psnap, field_name)
                setattr(psnap, field_name, needed[0])
                if which == "hard":
                    psnap.nofile_soft = min(psnap.nofile_soft, needed[0])
                detail = {"pid": pid, "create_time": info["create_time"], "resource": res,
                          "which": which}
                out.append(self.change(
                    knob, None, current, needed[0], detail, scope="process",
                    command=self.command(None, detail, needed[0], psnap.nofile_soft,
                                         psnap.nofile_hard)))
            # Still short of N per process after this plan: say why, and what to do.
            allows = knob.allows(planning.ctx(psnap))
            if allows is not None and allows < req.target and knob.fix:
                if not psnap.cap_sys_resource:
                    why = "this host cannot raise it (no CAP_SYS_RESOURCE)"
                elif req.netns is not None:
                    cap = ceiling(f"{res}.hard")
                    why = (f"{cap.name} ({psnap.sysctls.get(cap.name)}) caps it; that is "
                           f"host-wide, so 'tuner apply' without --netns raises it")
                else:
                    why = f"the kernel caps every process at {NR_OPEN_MAX:,} descriptors"
                planning.notes.append(
                    f"pid {pid}: {knob.name} {getattr(psnap, field_name):,} holds {allows:,} "
                    f"connections per process and {why}: {knob.fix.render()}; or shard the load over "
                    f"{math.ceil(req.target / max(allows, 1)):,} processes.")
        return out

    def plan_after(self, planning) -> List[Change]:
        if not planning.procs:
            planning.notes.append(
                "RLIMIT_NOFILE is per process: name running processes with --pid, or set it "
                "for future ones with --persist --unit NAME (a systemd drop-in: the path for a "
                "service) or --persist [--user NAME] (limits.d: login sessions).")
        return []


KIND = Rlimit()
