"""tuner: take a Linux host to a verified million concurrent TCP connections."""

__version__ = "0.1.0"
