"""Test-only Ansible callback: every task result of a play as one JSON line in $TUNER_RECORD.

The fleet tests read what each module returned from here instead of parsing
ansible-playbook's screen output.
"""
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "tuner_record"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, status, result):
        line = {"task": result._task.get_name(), "action": result._task.action,
                "host": result._host.get_name(), "status": status, "result": result._result}
        with open(os.environ["TUNER_RECORD"], "a") as f:
            f.write(json.dumps(line, default=str) + "\n")

    def v2_runner_on_ok(self, result):
        self._record("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record("failed", result)

    def v2_runner_on_skipped(self, result):
        self._record("skipped", result)

    def v2_runner_on_unreachable(self, result):
        self._record("unreachable", result)
