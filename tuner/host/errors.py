"""Errors that end a command, each carrying its documented exit code.

The CLI turns any TunerError into one line on stderr and this exit code; nothing
else in tuner prints errors, so the codes below are the whole contract
(docs/commands.md "Exit codes" and the man pages list the same table).
"""

EXIT_OK = 0
EXIT_FAILED = 1        # the work ran and did not succeed (rolled back where it changed things)
EXIT_USAGE = 2         # bad input: nothing was read or changed
EXIT_SHORT = 3         # the target is not reachable now (report) / the probe fell short
EXIT_PERMISSION = 4    # needs root (or a capability) for what was asked
EXIT_BUSY = 5          # another tuner apply/revert holds the lock
EXIT_DECLINED = 6      # the user answered no at apply's or revert's prompt: not a failure
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C (any command; the probe first closes what it opened)
EXIT_TERMINATED = 143   # 128 + SIGTERM: the probe ends its run cleanly and reports it

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the operation failed (changes already made were rolled back)",
    EXIT_USAGE: "bad input (target, role, namespace, device, ...): nothing was changed",
    EXIT_SHORT: "the target is not reachable with current settings, or the probe fell short of it",
    EXIT_PERMISSION: "needs root for what was asked: nothing was changed",
    EXIT_BUSY: "another tuner apply or revert is running (host lock /run/tuner.lock held; TUNER_LOCK overrides the path)",
    EXIT_DECLINED: "you answered no at the prompt of apply or revert: nothing was changed",
    EXIT_INTERRUPTED: "interrupted by Ctrl-C (SIGINT)",
    EXIT_TERMINATED: "the probe was stopped by SIGTERM (it closed what it had opened and reported)",
}

# Which codes each command can return: its man page's EXIT STATUS lists these and no
# other. Every command can end 0, 1 (also a bug: one line, TUNER_DEBUG=1 for the
# traceback), 2 (a usage error) and 130 (Ctrl-C); "tuner" is the program as a whole.
_EVERY = (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED)
COMMAND_EXITS = {
    "tuner": tuple(EXIT_CODES),
    "report": _EVERY + (EXIT_SHORT, EXIT_PERMISSION),              # 4: entering --netns
    "metrics": _EVERY + (EXIT_PERMISSION,),                        # 4: --netns, another user's --pid
    "apply": _EVERY + (EXIT_SHORT, EXIT_PERMISSION, EXIT_BUSY, EXIT_DECLINED),
    "revert": _EVERY + (EXIT_PERMISSION, EXIT_BUSY, EXIT_DECLINED),
    "status": _EVERY + (EXIT_PERMISSION,),                         # 4: reading inside a namespace
    "probe": _EVERY + (EXIT_SHORT, EXIT_PERMISSION, EXIT_TERMINATED),
    "diagnose": _EVERY + (EXIT_SHORT, EXIT_PERMISSION),
    "plot": _EVERY,
}

# What a code means for one command where that is narrower than EXIT_CODES' words.
EXIT_MEANING = {
    ("report", EXIT_SHORT): "--target is not reachable with current settings",
    ("apply", EXIT_SHORT): "--target is still not reachable after the changes (the binding limit "
                           "is not one tuner changes)",
    ("revert", EXIT_FAILED): "not everything was restored: a value changed since tuner wrote it "
                             "(--force restores it anyway) or a write failed",
    ("status", EXIT_OK): "everything the journal lists is in effect, or there is no journal (tuner "
                         "changed nothing here)",
    ("status", EXIT_FAILED): "something is not in effect (drift, gone, pending, a persisted file "
                             "edited, missing or overridden by a file applied later at boot), or "
                             "the journal cannot be trusted or read",
    ("probe", EXIT_SHORT): "the probe fell short of N (a limit, a timeout or a mismatch: the "
                           "result says which), or the pre-flight refused the run",
    ("diagnose", EXIT_SHORT): "the service cannot hold --target",
    ("plot", EXIT_FAILED): "the plot extra is missing or FILE cannot be written",
    ("plot", EXIT_USAGE): "a RUN is not a tuner probe --json document with a timeline, or FILE "
                          "does not end in .svg or .png: nothing was written",
}


def command_exits(command: str) -> list:
    """[(code, meaning)] for `command` ("report", "tuner"): the codes it can return.
    A command missing from COMMAND_EXITS gets the codes every command has
    (tests/test_man.py asks for its row)."""
    return [(code, EXIT_MEANING.get((command, code), EXIT_CODES[code]))
            for code in sorted(COMMAND_EXITS.get(command, _EVERY))]


class TunerError(Exception):
    """A failure the user can act on: one line of text and an exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: "int | None" = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(TunerError):
    exit_code = EXIT_USAGE


class PermissionNeeded(TunerError):
    exit_code = EXIT_PERMISSION
