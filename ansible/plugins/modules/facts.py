#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: facts
short_description: tuner's capacity report as facts
description:
  - "Reads the host (or a namespace) and evaluates every knob for a role and target, as
    C(tuner report --json) does, and sets the report as facts, so a play can assert
    capacity before it changes anything. Reads only: nothing is created or changed."
version_added: "0.1.0"
author: tuner developers
extends_documentation_fragment:
  - tuner.tuner.common
  - tuner.tuner.common.capacity
requirements:
  - root for the slab-based memory figures (/proc/slabinfo); without it they are estimates
options:
  source_dev:
    description: Interface whose addresses outbound sockets use.
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- tuner.tuner.facts:
    target: 300k
    role: server
- ansible.builtin.assert:
    that: tuner_memory.idle_fits_memory
    fail_msg: "{{ tuner_memory.idle_total_bytes }} bytes of idle connections do not fit"
"""

RETURN = r"""
ansible_facts:
  description: Facts set.
  returned: always
  type: complex
  contains:
    tuner_report:
      description: The whole report (schema tuner.report/3, as C(tuner report --json)).
      type: dict
    tuner_max_connections:
      description: Most concurrent connections with current settings.
      type: int
    tuner_binding_limit:
      description: The knob that binds first.
      type: str
    tuner_reachable:
      description: Whether the target is reachable now (null without a target).
      type: bool
    tuner_knobs:
      description: Rows of the report by knob name (current, needed, allows, status, why, fix).
      type: dict
    tuner_memory:
      description: Memory estimates (per connection idle and worst case, totals, fits-in flags).
      type: dict
    tuner_processes:
      description: Processes needed where the descriptor limit is capped.
      type: dict
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.tuner.tuner.plugins.module_utils.tuner_common import fail, require_tuner


def main():
    module = AnsibleModule(
        argument_spec=dict(
            target=dict(type="str"),
            role=dict(type="str", default="loopback"),
            netns=dict(type="str"),
            destinations=dict(type="int", default=1),
            source_dev=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    require_tuner(module)
    from tuner import render
    from tuner import assess
    from tuner.inputs import check_positive, check_role, parse_target

    p = module.params
    try:
        target = parse_target(p["target"])
        check_role(p["role"])
        check_positive("destinations", p["destinations"])
        rep = assess.build(target, p["role"], p["netns"], p["destinations"], p["source_dev"])
        # Exactly the JSON `tuner report --json` prints.
        data = json.loads(render.to_json(rep.to_dict()))
    except Exception as exc:
        fail(module, exc)
    facts = {
        "tuner_report": data,
        "tuner_max_connections": data["max_connections"],
        "tuner_binding_limit": data["binding"],
        "tuner_reachable": data["reachable"],
        "tuner_knobs": dict((row["name"], row) for row in data["rows"]),
        "tuner_memory": data["memory"],
        "tuner_processes": data["processes"],
    }
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
