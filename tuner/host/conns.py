"""The connection arithmetic the probe and the model share: descriptors a process keeps
for itself, connections a descriptor limit holds, the share of a port range planned.
The probe's workers (probes.config) and tuner's model (tuner.knobs, tuner.capacity) ask
these one formulas, so both name the same counts.  Stdlib only."""
from __future__ import annotations

# Descriptors a worker needs besides its connections: stdio, the listener, report and
# control pipes, two epoll instances, and whatever the interpreter keeps open.  tuner's
# model reserves the same for any process (report's processes needed, apply's limits).
FD_HEADROOM = 64
# Share of a port range one (source address, destination) pair is planned to fill.
# connect() takes the even ports of ip_local_port_range first and scans all of them
# before it tries an odd one, so past half the range every connect() walks the whole
# range: measured on namespace hosts, ~11,700 connects/s fell to ~300/s at ~34,800
# connections per source address.  The probes spread over more source addresses
# instead, and tuner.knobs plans port ranges and aliases with this same share.
FAST_PORT_SHARE = 0.5
# The share where the probes give each socket its own port range (IP_LOCAL_PORT_RANGE,
# Linux 6.3+, probes.sockets): connect() then searches one port after another from
# where the last search ended, and a 16,000-port range with one source address filled
# to 90% at the first tenth's rate (docs/anyip.md).  Not all of it: the last ports of a
# range are found by a longer walk, and other sockets of the host take some.
RANGED_PORT_SHARE = 0.9


def port_share(own_range: bool) -> float:
    """The share of each range planned, with or without a per-socket range."""
    return RANGED_PORT_SHARE if own_range else FAST_PORT_SHARE


def connections_within(nofile: int, descriptors_per_connection: int) -> int:
    """Connections one process holds under RLIMIT_NOFILE `nofile` once FD_HEADROOM
    descriptors are kept for everything else; 0 when the limit is at or below that.  The
    one formula for the probe's workers and for `tuner report`'s processes needed
    (tuner.capacity), so both name the same count."""
    return max(nofile - FD_HEADROOM, 0) // descriptors_per_connection
