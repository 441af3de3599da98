# -*- coding: utf-8 -*-
"""Documentation the tuner modules share, written once (extends_documentation_fragment).

`tuner.tuner.common`: what every module needs on the managed host.
`tuner.tuner.common.capacity`: the options that say what to plan for, the same in
`apply` and `facts` (tuner apply and tuner report take them alike).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options: {}
requirements:
  - the tuner Python package, importable by ansible_python_interpreter
"""

    CAPACITY = r"""
options:
  target:
    description: Concurrent connections to plan for (1000000, 1_000_000, 1M, 500k); apply needs it with state=present.
    type: str
  role:
    description: loopback (both ends on this host), server (accepted sockets) or client (outbound sockets).
    type: str
    default: loopback
  destinations:
    description: Distinct server ip:port the clients connect to.
    type: int
    default: 1
  netns:
    description: The network namespace (as C(ip netns list) names it) whose per-namespace knobs are read, or changed by apply; host-wide knobs are read on the host and never changed for a namespace.
    type: str
"""
