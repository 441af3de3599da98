"""Every read of the kernel's own files (/proc, /sys) in one module, with one error policy.

Stdlib only: the probe's forked workers import it, and they must stay lean. psutil and
pyroute2 are used by callers in the parent process, never here.
"""
from __future__ import annotations
