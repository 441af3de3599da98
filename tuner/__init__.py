"""tuner: take a Linux host to a verified million concurrent TCP connections."""

__version__ = "0.1.0"
# Release date printed in the man pages (fixed, so regenerated pages stay identical).
__date__ = "2026-11-26"
