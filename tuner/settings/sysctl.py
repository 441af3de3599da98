"""A kernel sysctl, in the initial namespace (host) or inside a network namespace.

Value: its text with whitespace folded ("32768 60999"), as /proc/sys reads back.
"""
from __future__ import annotations

import os
import re
import shlex
from typing import Any, Dict, List, Optional, Sequence

from tuner.host.netns import in_netns
from tuner.host.procfs import read_sysctl, sysctl_path
from .base import Change, Kind, check, is_words, netns_gone, text_field, words

# A sysctl name is dotted words; anything else (a '/' or '..') would make
# /proc/sys/<name> point somewhere tuner never wrote.
_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def text(values: Sequence[Any]) -> str:
    """A knob's needed values ([1024, 65535]) as the sysctl's text ("1024 65535")."""
    return " ".join(str(v) for v in values)


class Sysctl(Kind):
    name = "sysctl"
    knob_kinds = ("sysctl",)
    value_doc = "text"

    def key(self, netns, detail) -> str:
        return f"sysctl:{netns or ''}:{detail['name']}"

    def command(self, netns, detail, value) -> str:
        prefix = f"ip netns exec {shlex.quote(netns)} " if netns else ""
        return f"{prefix}sysctl -w {detail['name']}={shlex.quote(value) if ' ' in value else value}"

    def valid_value(self, value) -> bool:
        return isinstance(value, str)

    json_doc = "a list of its numbers and words ([32768, 60999])"

    def to_json(self, value):
        return None if value is None else words(value)

    def from_json(self, values):
        if not is_words(values):
            raise ValueError(f"not {self.json_doc}: {values!r}")
        return text(values)

    def check_detail(self, detail) -> None:
        name = text_field(detail, "name")
        check(bool(_NAME.match(name)), "detail.name", name)

    def normalise(self, value):
        return None if value is None else " ".join(str(value).split())

    def _read(self, netns, detail) -> Optional[str]:
        netns_gone(netns)
        with in_netns(netns):
            return read_sysctl(detail["name"])

    def _write(self, netns, detail, value: str) -> None:
        netns_gone(netns)
        with in_netns(netns):
            # os.write, not a buffered file: the kernel's EINVAL must reach us from the
            # write itself, not get lost in a close() during garbage collection.
            fd = os.open(sysctl_path(detail["name"]), os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)

    def plan(self, knob, planning) -> List[Change]:
        req, sim = planning.req, planning.sim
        state = planning.needed(knob)
        if state is None:
            return []
        ctx, needed = state
        if needed is None:
            return []
        if knob.scope == "host" and req.netns is not None:
            # Host-wide sysctls exist only in the initial namespace; changing them from
            # "inside" a namespace would change the whole host behind the user's back.
            planning.skipped.append({
                "knob": knob.name, "current": knob.current(ctx), "needed": needed,
                "reason": "host-wide: exists only in the initial namespace; "
                          "run 'tuner apply' without --netns to change it"})
            return []
        netns = req.netns if knob.scope == "netns" else None
        current, new = sim.sysctls[knob.name], text(needed)
        sim.sysctls[knob.name] = new
        return [self.change(knob, netns, current, new, {"name": knob.name})]


KIND = Sysctl()
