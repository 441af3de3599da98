# -*- coding: utf-8 -*-
"""What the tuner modules share: importing the library on the managed host, and turning
its errors into failed results with tuner's own one-line reason and exit code.

The modules are thin: the tuner package does the work (plan, journal, writes,
rollback, the probe), exactly as the `tuner` command does; nothing here parses the
command's text.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import sys
import traceback

try:
    from tuner.host import errors as tuner_errors
    TUNER_IMPORT_ERROR = None
except ImportError:  # reported by require_tuner() as a failed task, not a traceback
    tuner_errors = None
    TUNER_IMPORT_ERROR = traceback.format_exc()


def require_tuner(module):
    if TUNER_IMPORT_ERROR is not None:
        module.fail_json(
            msg="the tuner library is not importable by %s: install tuner on the managed host "
                "from a clone (python3 -m venv /opt/tuner && /opt/tuner/bin/pip install ./tuner) and set "
                "ansible_python_interpreter to that venv's python" % sys.executable,
            exception=TUNER_IMPORT_ERROR)


def exit_class(code):
    """'usage' for 2, 'busy' for 5, ...: the name of tuner's exit-code constant
    (tuner.host.errors.EXIT_*), so a play can branch on the class, not the number."""
    names = dict((value, name[len("EXIT_"):].lower()) for name, value in vars(tuner_errors).items()
                 if name.startswith("EXIT_") and isinstance(value, int))
    return names.get(code, "failed")


def fail(module, exc, **extra):
    """fail_json with tuner's reason (the line the CLI prints after 'tuner: error:'), its
    exit code (rc), the code's class and meaning.  Anything else is a bug in tuner:
    still one line, the traceback in `exception` (shown with -vvv)."""
    if isinstance(exc, tuner_errors.TunerError):
        code = exc.exit_code
        module.fail_json(msg=str(exc), rc=code, exit_class=exit_class(code),
                         exit_meaning=tuner_errors.EXIT_CODES.get(code), **extra)
    code = tuner_errors.EXIT_FAILED
    module.fail_json(msg="internal error: %s: %s" % (type(exc).__name__, exc), rc=code,
                     exit_class=exit_class(code), exit_meaning=tuner_errors.EXIT_CODES.get(code),
                     exception=traceback.format_exc(), **extra)


def short_of(module, message, code, **extra):
    """A run that worked but fell short of its target (tuner's exit 3 and friends);
    `extra` is the result so far, whose own rc gives way to `code`."""
    extra.pop("rc", None)
    module.fail_json(msg=message, rc=code, exit_class=exit_class(code),
                     exit_meaning=tuner_errors.EXIT_CODES.get(code), **extra)
