"""Each change tuner makes on the host, also in the system log (as bpftune does): admins
look there first when something changed.

One line per write: what (apply, rollback, revert), the knob, where, old -> new, and
why.  Sent through Python's logging to the syslog socket (/dev/log, or $TUNER_SYSLOG,
which tests aim at a socket of their own).  Logging never stops tuner: with no socket,
or one that refuses, the change is made and only the log line is lost.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
from typing import Any, Dict

DEFAULT_SOCKET = "/dev/log"
ENV_VAR = "TUNER_SYSLOG"

_loggers: Dict[str, logging.Logger] = {}


class _QuietSysLog(logging.handlers.SysLogHandler):
    def handleError(self, record) -> None:  # a lost log line is not tuner's failure
        pass


def _logger() -> logging.Logger:
    path = os.environ.get(ENV_VAR) or DEFAULT_SOCKET
    if path not in _loggers:
        log = logging.getLogger(f"tuner.hostlog.{len(_loggers)}")
        log.propagate = False
        log.setLevel(logging.INFO)
        if os.path.exists(path):
            try:
                handler = _QuietSysLog(address=path,
                                       facility=logging.handlers.SysLogHandler.LOG_DAEMON)
                handler.ident = "tuner: "
                log.addHandler(handler)
            except OSError:
                pass
        _loggers[path] = log
    return _loggers[path]


def change(action: str, knob: str, where: str, old: Any, new: Any, why: str) -> None:
    """'apply KNOB (netns x): 4,096 -> 65,535; why'"""
    try:
        _logger().info("%s %s (%s): %s -> %s; %s", action, knob, where, old, new, why)
    except Exception:  # noqa: BLE001 - see the module docstring
        pass
