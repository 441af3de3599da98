"""What another user of the host sees: a process running as `nobody` that reads every
/proc/PID/cmdline and /proc/PID/environ it is let read, over and over, until told to
stop, and reports which held a secret.  The secret reaches it on stdin (in its own argv
it would be found there); closing stdin ends it after one more round.  Used by the tests that hand tuner a credential."""
from __future__ import annotations

import json
import subprocess
import sys

NOBODY = 65534
# The system interpreter: nobody may run it (the venv's may live under /root).
SYSTEM_PYTHON = "/usr/bin/python3"

SCANNER = r"""
import json, os, select, sys
secret = sys.stdin.readline().rstrip("\n").encode()
watch = sys.stdin.readline().rstrip("\n").encode()
found, probes, rounds = set(), set(), 0
while True:
    done = bool(select.select([sys.stdin], [], [], 0)[0])   # EOF: one whole round more, then stop
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        for kind in ("cmdline", "environ"):
            try:
                with open(f"/proc/{name}/{kind}", "rb") as f:
                    data = f.read()
            except OSError:       # not ours to read (another user's environ), or gone
                continue
            if secret in data:
                found.add((int(name), kind, data.replace(b"\0", b" ")[:200].decode(errors="replace")))
            if kind == "cmdline" and b"\0-m\0probes\0" in data and watch in data:
                probes.add(int(name))
    rounds += 1
    if done:
        break
print(json.dumps({"found": sorted(found), "probes": sorted(probes), "rounds": rounds}))
"""


class Scan:
    """`with Scan(secret, url) as scan: ...run tuner...`; then scan.found (every
    (pid, 'cmdline'|'environ', start of it) that held the secret) and scan.probes (the
    PIDs seen running `python -m probes` with `watch` in their command line, the target
    URL: the orchestrator and its workers, so the scan did overlap the run)."""

    def __init__(self, secret: str, watch: str):
        self.secret, self.watch = secret, watch
        self.found, self.probes, self.rounds = [], [], 0

    def __enter__(self) -> "Scan":
        self.proc = subprocess.Popen([SYSTEM_PYTHON, "-c", SCANNER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, user=NOBODY, group=NOBODY,
                                     extra_groups=[], cwd="/")
        self.proc.stdin.write(self.secret + "\n" + self.watch + "\n")
        self.proc.stdin.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        doc = json.loads(out)
        self.found, self.probes, self.rounds = doc["found"], doc["probes"], doc["rounds"]
