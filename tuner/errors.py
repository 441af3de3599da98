"""Errors that end a command, each carrying its documented exit code.

The CLI turns any TunerError into one line on stderr and this exit code; nothing
else in tuner prints errors, so the codes below are the whole contract
(README "Exit codes" and the man pages list the same table).
"""

EXIT_OK = 0
EXIT_FAILED = 1        # the work ran and did not succeed (rolled back where it changed things)
EXIT_USAGE = 2         # bad input: nothing was read or changed
EXIT_SHORT = 3         # the target is not reachable now (report) / the probe fell short
EXIT_PERMISSION = 4    # needs root (or a capability) for what was asked
EXIT_BUSY = 5          # another tuner apply/revert holds the lock
EXIT_DECLINED = 6      # the user answered no at apply's or revert's prompt: not a failure

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the operation failed (changes already made were rolled back)",
    EXIT_USAGE: "bad input (target, role, namespace, device, ...): nothing was changed",
    EXIT_SHORT: "the target is not reachable with current settings, or the probe fell short of it",
    EXIT_PERMISSION: "needs root for what was asked: nothing was changed",
    EXIT_BUSY: "another tuner apply or revert is running (host lock /run/tuner.lock held; TUNER_LOCK overrides the path)",
    EXIT_DECLINED: "you answered no at the prompt of apply or revert: nothing was changed",
}


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
