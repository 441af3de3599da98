#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: apply
short_description: Tune a host for a target number of TCP connections, or put it back
description:
  - "C(state=present) plans exactly what O(target) connections need (only raising; buffer
    defaults shrink only with O(shrink_buffers)) and writes it through tuner's write-ahead
    journal, as C(tuner apply --yes) does. A write the kernel refuses rolls back every
    change of the run, and the task fails with tuner's reason."
  - "C(state=reverted) puts back what the journal says tuner changed, newest first, as
    C(tuner revert) does; a value someone changed since is left alone unless O(force)."
  - "Check mode plans (or lists what a revert would restore) and writes nothing. Diff
    mode returns before/after per knob and, per persisted file, its old and new text
    (shown by Ansible as a unified diff)."
  - "C(changed) is true only when something was written."
  - "Failures return tuner's one-line reason in C(msg), its exit code in C(rc) and the
    code's class in C(exit_class) (usage, failed, short, permission, busy)."
version_added: "0.1.0"
author: tuner developers
requirements:
  - root on the managed host (become)
extends_documentation_fragment:
  - tuner.tuner.common
  - tuner.tuner.common.capacity
options:
  state:
    description: present (apply) or reverted (undo what tuner changed).
    type: str
    choices: [present, reverted]
    default: present
  pid:
    description: Raise RLIMIT_NOFILE of these running processes.
    type: list
    elements: int
    default: []
  alias_dev:
    description: Device to add /32 source-address aliases on (with alias_net).
    type: str
  alias_net:
    description: Network the aliases are taken from (with alias_dev); a private one unless allow_public_aliases.
    type: str
  anyip_net:
    description: Make every address of this prefix a source address with one local route (AnyIP, as C(tuner apply --anyip-net); IPv6 also turns ip_nonlocal_bind on in that namespace); the server must route the prefix back to this host. A private prefix (fd00::/8, RFC 1918) unless allow_public_aliases.
    type: str
  anyip_dev:
    description: Device the anyip_net route goes on (default lo).
    type: str
  allow_public_aliases:
    description: Allow an alias_net or anyip_net outside the private ranges, a public network this host owns (as C(tuner apply --allow-public-aliases)); networks no host may own are refused still.
    type: bool
    default: false
  shrink_buffers:
    description: Lower tcp_rmem/tcp_wmem defaults (not max).
    type: bool
    default: false
  persist:
    description: Also write sysctl.d / limits.d files that apply at boot.
    type: bool
    default: false
  unit:
    description: With persist, the systemd unit to give LimitNOFILE (a drop-in); the recommended path for a service.
    type: str
  user:
    description: "With persist, write limits.d's nofile lines for this user only (it must exist on the
      managed host), not for every user and root. limits.d reaches login sessions; a service
      started by systemd needs O(unit)."
    type: str
  raise_soft:
    description: "With persist, persist the soft RLIMIT_NOFILE at the hard one too. By default only the
      hard limit is raised and the soft one stays 1024 (select() handles no descriptor above
      1023): programs raise their own."
    type: bool
    default: false
  root_dir:
    description: Root of the tree persist writes into.
    type: path
    default: /
  journal:
    description: The journal (default /var/lib/tuner/journal.json, or TUNER_JOURNAL in the task's environment).
    type: path
  force:
    description: With state=reverted, restore originals even where a value changed since tuner wrote it.
    type: bool
    default: false
  require_reachable:
    description: Fail (rc 3, changes kept, as the CLI) when the target is still not reachable after applying.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Tune a load host for 100,000 outbound connections, with source aliases
  tuner.tuner.apply:
    target: 100k
    role: client
    alias_dev: eth0
    alias_net: 10.77.1.0/24
  become: true

- name: A load host for a million to one server ADDR:PORT, over one IPv6 AnyIP prefix
  tuner.tuner.apply:
    target: 1M
    role: client
    anyip_net: fd00:77:1::/64
  become: true

- name: Server, and the same settings at boot
  tuner.tuner.apply:
    target: 1M
    role: server
    persist: true
    unit: myserver

- name: The same limits at login for the service's user only (not every user)
  tuner.tuner.apply:
    target: 1M
    role: server
    persist: true
    user: myserver

- name: Put everything back
  tuner.tuner.apply:
    state: reverted
"""

RETURN = r"""
changes:
  description: "Per change (planned, or applied): knob, kind, where, before, after; values as
    tuner's JSON gives them, a list (a sysctl's numbers, [65535]; an rlimit [1048576]; an
    alias [\"present\"]; a file's lines) or null (a file absent). The diff shows them as the
    plan table does."
  type: list
  returned: state=present
applied:
  description: What was written (knob, where, before, new).
  type: list
  returned: state=present and not check mode
plan:
  description: The plan (schema tuner.plan/2).
  type: dict
  returned: state=present
after:
  description: The capacity model after applying (reachable, max_connections, binding, still_binding, ...).
  type: dict
  returned: state=present and not check mode
revert:
  description: The revert outcome (schema tuner.revert/2), one row per journal entry.
  type: dict
  returned: state=reverted
journal:
  description: Path of the journal used.
  type: str
  returned: always
rc:
  description: tuner's exit code (0 on success).
  type: int
  returned: always
exit_class:
  description: The class of rc (usage, failed, short, permission, busy).
  type: str
  returned: failure
"""

import difflib

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.tuner.tuner.plugins.module_utils.tuner_common import (
    fail, require_tuner, short_of, tuner_errors)

KNOBS_HEADER = "tuner settings"


def _diff(rows):
    """Ansible's diff: one before/after text of every non-file setting (a line each), then
    one entry per file with its old and new text, which Ansible shows as a unified diff."""
    out = []
    knobs = [r for r in rows if r["kind"] != "file"]
    if knobs:
        label = lambda r: "%s [%s]" % (r["knob"], r["where"])
        out.append({"before_header": KNOBS_HEADER, "after_header": KNOBS_HEADER,
                    "before": "".join("%s: %s\n" % (label(r), r["before"]) for r in knobs),
                    "after": "".join("%s: %s\n" % (label(r), r["after"]) for r in knobs)})
    for r in rows:
        if r["kind"] == "file":
            out.append({"before_header": r["where"], "after_header": r["where"],
                        "before": r["before"] or "", "after": r["after"] or ""})
    return out


def _file_diffs(rows):
    """The unified diff of each file change, in the result itself (diff mode or not)."""
    out = []
    for r in rows:
        if r["kind"] == "file":
            text = "".join(difflib.unified_diff(
                (r["before"] or "").splitlines(True), (r["after"] or "").splitlines(True),
                "a" + r["where"] if r["before"] is not None else "/dev/null",
                "b" + r["where"] if r["after"] is not None else "/dev/null"))
            out.append({"path": r["where"], "diff": text})
    return out


def _argv(params):
    """What the journal records as the command that made the change."""
    shown = ["%s=%s" % (k, v) for k, v in sorted(params.items())
             if v not in (None, False, [], "") and k not in ("state",)]
    return ["ansible", "tuner.tuner.apply"] + shown


def present(module):
    from tuner import apply as apply_mod
    from tuner.inputs import parse_target
    from tuner.plan import Request, before_after

    p = module.params
    try:
        req = Request(target=parse_target(p["target"]), role=p["role"], netns=p["netns"],
                      destinations=p["destinations"], pids=tuple(p["pid"]),
                      alias_dev=p["alias_dev"], alias_net=p["alias_net"],
                      allow_public_aliases=p["allow_public_aliases"],
                      anyip_net=p["anyip_net"], anyip_dev=p["anyip_dev"],
                      shrink_buffers=p["shrink_buffers"], persist=p["persist"],
                      root_dir=p["root_dir"], unit=p["unit"], user=p["user"],
                      raise_soft=p["raise_soft"])
        outcome = apply_mod.run(req, p["journal"], dry_run=module.check_mode, argv=_argv(p))
    except Exception as exc:  # tuner rolled back whatever this run wrote
        fail(module, exc, changed=False)
    # Values in the result as tuner's JSON gives them (lists); as people read them
    # (the plan table's, files whole) in the diffs.
    shown = before_after(outcome.plan, shown=True)
    changed = bool(outcome.plan.changes) if module.check_mode else bool(outcome.applied)
    result = dict(changed=changed, rc=0, changes=before_after(outcome.plan),
                  files=_file_diffs(shown), plan=outcome.plan.to_dict(), applied=outcome.applied,
                  after=outcome.after, journal=outcome.journal, notes=outcome.plan.notes,
                  skipped=outcome.plan.skipped)
    if module._diff:
        result["diff"] = _diff(shown)
    after = outcome.after
    if after and after["reachable"] is False and p["require_reachable"]:
        short_of(module, "target %s still not reachable after applying: %s binds first at %s "
                         "connections (see after.still_binding)"
                 % ("{:,}".format(req.target), after["binding"],
                    "{:,}".format(after["max_connections"] or 0)),
                 tuner_errors.EXIT_SHORT, **result)
    module.exit_json(**result)


def reverted(module):
    from tuner import revert as revert_mod
    from tuner import settings

    p = module.params
    try:
        outcome = revert_mod.run(p["journal"], force=p["force"], dry_run=module.check_mode)
    except Exception as exc:
        fail(module, exc, changed=False)
    acted = [r for r in outcome.rows if r.action in (revert_mod.RESTORED, revert_mod.WOULD_RESTORE)]
    # In the result, values as tuner's JSON gives them (lists); in the diffs, as the
    # revert table shows them (the setting kind describes), files whole.
    as_json = lambda r, v: settings.kind(r.kind).to_json(v)
    as_shown = lambda r, v: v if r.kind == "file" else settings.kind(r.kind).describe(v)
    rows, shown = ([{"knob": r.knob, "kind": r.kind, "where": r.where, "before": f(r, r.current),
                     "after": f(r, r.original)} for r in acted] for f in (as_json, as_shown))
    result = dict(changed=bool(rows), rc=0, changes=rows, files=_file_diffs(shown),
                  revert=outcome.to_dict(), journal=outcome.journal)
    if module._diff:
        result["diff"] = _diff(shown)
    if not outcome.complete:
        left = ["%s (%s): %s%s" % (r.knob, r.where, r.action, ": " + r.reason if r.reason else "")
                for r in outcome.rows if r.action not in revert_mod.OK_ACTIONS]
        short_of(module, "revert incomplete, left in the journal: " + "; ".join(left),
                 tuner_errors.EXIT_FAILED, **result)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "reverted"], default="present"),
            target=dict(type="str"),
            # Roles, networks, names: validated by tuner itself (one home, its messages).
            role=dict(type="str", default="loopback"),
            destinations=dict(type="int", default=1),
            netns=dict(type="str"),
            pid=dict(type="list", elements="int", default=[]),
            alias_dev=dict(type="str"),
            alias_net=dict(type="str"),
            anyip_net=dict(type="str"),
            anyip_dev=dict(type="str"),
            allow_public_aliases=dict(type="bool", default=False),
            shrink_buffers=dict(type="bool", default=False),
            persist=dict(type="bool", default=False),
            unit=dict(type="str"),
            user=dict(type="str"),
            raise_soft=dict(type="bool", default=False),
            root_dir=dict(type="path", default="/"),
            journal=dict(type="path"),
            force=dict(type="bool", default=False),
            require_reachable=dict(type="bool", default=True),
        ),
        required_if=[("state", "present", ("target",))],
        supports_check_mode=True,
    )
    require_tuner(module)
    if module.params["state"] == "present":
        present(module)
    else:
        reverted(module)


if __name__ == "__main__":
    main()
