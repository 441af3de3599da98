"""The knob table's signs as the probe reads them: probes/signs.json, generated here.

The probe (probes/) imports nothing above tuner's bottom layer, yet names the limit
that stopped it as the knob table (tuner/knobs.py) names it, with the table's words:
which errno of which call, which rising counter or full table means which knob, a
probe stopped by it in words, and the fixes its own messages quote.  So the table's
answers are written out as data, in the order the table asks them, and probes/signs.py
reads them; nothing is restated by hand.  `python -m tuner.probing.signs` regenerates the
file after a change to the table (tests/test_layers.py fails while it is stale).
"""
from __future__ import annotations

import errno as E
import json
import os
import sys

from tuner import knobs

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "probes", "signs.json")


def _errors() -> list:
    """Every (errno, op) a knob names, in table order (op null: any call)."""
    return [{"errno": E.errorcode[code], "op": op, "only_with_counters": k.signs.only_with_counters,
             "counters": _counter_keys(k), "limit": k.probe_name}
            for k in knobs.ALL for code, op in k.signs.errors]


def _counter_keys(knob) -> list:
    return [knobs.counter_key(src, name) for src, name in knob.signs.counters]


def _timeout_causes() -> list:
    """What explains connections that never completed, in the order asked: counters that
    rise, or [in use, limit] keys of the probe's kernel snapshot ([]: none)."""
    return [{"limit": k.probe_name, "counters": _counter_keys(k), "full": list(k.signs.full)}
            for caps in knobs.TIMEOUT_CAUSES for k in knobs.ALL if k.caps == caps
            and (k.signs.counters or k.signs.full)]


def _hints() -> dict:
    """{probe name: [[role (null: any), words]]}, the first knob of a probe name only
    (as the table is asked); a knob without words has an empty list. The commands the
    words name are spelled here, from the table's values (knobs.HINT_COMMANDS)."""
    commands = {key: s.render() for key, s in knobs.HINT_COMMANDS.items()}
    out: dict = {}
    for k in knobs.ALL:
        out.setdefault(k.probe_name, [[role, text.format(name=k.name, probe_name=k.probe_name, **commands)]
                                      for role, text in k.signs.hints])
    return out


def table() -> dict:
    return {"generated_by": "python -m tuner.probing.signs (from tuner/knobs.py)",
            "errors": _errors(), "timeout_causes": _timeout_causes(), "full_share": knobs.FULL_SHARE,
            "hints": _hints(), "fixes": {k.name: k.fix.render() for k in knobs.ALL if k.fix}}


def text() -> str:
    return json.dumps(table(), indent=1) + "\n"


def main() -> int:
    with open(PATH, "w") as f:
        f.write(text())
    print(f"wrote {os.path.relpath(PATH)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
