"""What the local probe probes (ProbeConfig) and how it is split over workers (WorkerPlan).

The plan is computed where the probe runs (the orchestrator, possibly inside a
network namespace), because it depends on that process's RLIMIT_NOFILE and that
namespace's ip_local_port_range.  The constants and formulas the probe shares with
tuner's model live here too, once: the descriptor reserve of a process (FD_HEADROOM,
connections_within), the share of a port range planned (FAST_PORT_SHARE) and how
many source addresses a --source-net gives (source_count), and the one parser of
--source-net (source_network) every command and both probes use.
"""
from __future__ import annotations

import ipaddress
import math
import resource
from dataclasses import asdict, dataclass, fields
from typing import List, Optional, Tuple, Union

from tuner.host import procfs
from tuner.host.conns import (FAST_PORT_SHARE, FD_HEADROOM, RANGED_PORT_SHARE,  # noqa: F401 (shared)
                               connections_within, port_share)

from . import kernel, signs

LISTEN_ADDR = "127.0.0.1"
class ProbeConfigError(ValueError):
    """The configuration cannot be run as given; nothing was opened."""


@dataclass
class ProbeConfig:
    connections: int = 10000
    hold: float = 0.0                       # seconds to hold every verified connection
    rate: Optional[float] = None            # new connections per second, all workers together
    workers: Union[str, int] = "auto"       # 'auto': as few as RLIMIT_NOFILE allows
    per_worker: Optional[int] = None        # None: (RLIMIT_NOFILE - headroom) // 2
    source_net: str = "127.0.0.0/8"         # client source addresses, or 'none' (no bind)
    port: Optional[int] = None              # first listener port; None: outside the port range
    timeout: Optional[float] = None         # seconds to establish and verify; None: 30 + N/10000
    worker_nofile: Optional[int] = None     # lower RLIMIT_NOFILE in workers (diagnosis, tests)
    accept_pause: float = 0.0               # sleep after each accept round (diagnosis, tests)
    netns: Optional[str] = None             # run inside `ip netns exec NETNS` (run_probe only)
    progress_interval: float = 0.25         # seconds between progress events

    # What every mode's configuration has (ServeConfig, ConnectConfig too): its name
    # (probes/modes.py: its orchestrator and result) and the `python -m probes`
    # arguments that pick it.
    MODE = "local"

    def mode_argv(self) -> list:
        return []

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ProbeConfigError(f"unknown probe settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def validate(self) -> None:
        """Checks that need nothing from the host; raises ProbeConfigError."""
        if not isinstance(self.connections, int) or self.connections < 1:
            raise ProbeConfigError("connections must be a positive integer")
        if self.hold < 0 or self.accept_pause < 0:
            raise ProbeConfigError("hold and accept_pause must not be negative")
        if self.rate is not None and self.rate <= 0:
            raise ProbeConfigError("rate must be positive (or None for as fast as possible)")
        if self.timeout is not None and self.timeout <= 0:
            raise ProbeConfigError("timeout must be positive")
        if self.workers != "auto" and (not isinstance(self.workers, int) or self.workers < 1):
            raise ProbeConfigError("workers must be 'auto' or a positive integer")
        if self.per_worker is not None and self.per_worker < 1:
            raise ProbeConfigError("per_worker must be positive")
        if self.worker_nofile is not None and self.worker_nofile < 16:
            raise ProbeConfigError("worker_nofile must be at least 16")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ProbeConfigError("port must be within 1..65535")
        sources(self.source_net)

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout is not None else 30.0 + self.connections / 10000


@dataclass
class WorkerPlan:
    workers: int
    per_worker: int              # the largest share
    shares: List[int]
    nofile: int                  # RLIMIT_NOFILE each worker runs with
    port: int                    # listener of worker k is LISTEN_ADDR:(port + k)
    port_range: Tuple[int, int]  # ip_local_port_range where the probe runs
    source_net: str
    addresses_per_worker: int    # 0: no bind, the kernel picks 127.0.0.1
    fits: bool                   # every share fits the descriptor limit (only false with worker_nofile)

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["shares"]
        data["port_range"] = list(self.port_range)
        return data

    def describe(self) -> str:
        return (f"{self.workers} worker(s) x up to {self.per_worker:,} connections, listeners "
                f"{LISTEN_ADDR}:{self.port}-{self.port + self.workers - 1}, sources "
                f"{self.source_net if self.addresses_per_worker else 'kernel-chosen'}")


class Sources:
    """Usable source addresses of a network, minus the listener's, indexed 0..count-1."""

    def __init__(self, net: ipaddress.IPv4Network):
        self.net = net
        first, last = int(net.network_address), int(net.broadcast_address)
        if net.prefixlen <= 30:  # network and broadcast addresses are not hosts
            first, last = first + 1, last - 1
        self.first = first
        self.skip = int(ipaddress.IPv4Address(LISTEN_ADDR))
        self.skipping = first <= self.skip <= last
        self.count = last - first + 1 - (1 if self.skipping else 0)
        if self.count < 1:
            raise ProbeConfigError(f"--source-net {net} has no address besides the listener's")

    def __getitem__(self, index: int) -> str:
        value = self.first + index % self.count
        if self.skipping and value >= self.skip:
            value += 1
        return str(ipaddress.IPv4Address(value))


def source_network(text: Optional[str]):
    """--source-net CIDR (IPv4 or IPv6) or 'none' -> an ip_network, or None for 'none' and
    for no value.  The one parser of --source-net: tuner's options, the local probe and
    --connect all come here, and all get ProbeConfigError naming the option."""
    if text is None or text.strip().lower() == "none":
        return None
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ProbeConfigError(f"--source-net: {exc or 'an empty value'} (a network such as "
                               f"10.77.1.0/24 or fd00:77:1::/64, or 'none')") from None


def sources(source_net: str) -> Optional[Sources]:
    """The local probe's sources: its listener is 127.0.0.1, so IPv4 only."""
    net = source_network(source_net)
    if net is None:
        return None
    if net.version != 4:
        raise ProbeConfigError("--source-net must be an IPv4 network here (the local probe's "
                               "listener is 127.0.0.1; IPv6 sources are for --connect)")
    return Sources(net)


def source_count(source_net: str) -> int:
    """Source addresses a probe with this --source-net spreads over ('none': the one the
    kernel picks; an IPv6 prefix: its addresses but the subnet-router anycast one).
    tuner apply --source-net plans with the same count."""
    net = source_network(source_net)
    if net is None:
        return 1
    if net.version == 6:
        return max(net.num_addresses - 1, 1)
    return Sources(net).count


def worker_capacity(nofile: int, descriptors_per_connection: int) -> int:
    """Connections one worker holds under RLIMIT_NOFILE `nofile` (FD_HEADROOM kept for
    itself).  ProbeConfigError naming RLIMIT_NOFILE when that leaves none: a hard limit
    of 64 cannot be sharded around."""
    per = connections_within(nofile, descriptors_per_connection)
    if per < 1:
        raise ProbeConfigError(
            f"RLIMIT_NOFILE {nofile:,} leaves no descriptors for connections in a worker (each "
            f"keeps {FD_HEADROOM} for itself and needs {descriptors_per_connection} per connection): "
            f"raise the hard nofile limit (ulimit -Hn, LimitNOFILE=, limits.d) to at least "
            f"{FD_HEADROOM + descriptors_per_connection * 64}")
    return per


def nofile_for(connections: int) -> int:
    """The lowest RLIMIT_NOFILE under which a probe of `connections` runs: its workers
    (2 descriptors per connection each) and their listeners in the orchestrator fit."""
    nofile = FD_HEADROOM + 2
    while math.ceil(connections / connections_within(nofile, 2)) + FD_HEADROOM > nofile:
        nofile += 1
    return nofile


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (inherited by workers); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = procfs.nr_open() or 1048576
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def make_plan(cfg: ProbeConfig, nofile: Optional[int] = None) -> WorkerPlan:
    """Split cfg.connections over workers; pick listener ports. Raises ProbeConfigError."""
    cfg.validate()
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    own_nofile = nofile
    if cfg.worker_nofile is not None:
        nofile = min(nofile, cfg.worker_nofile)
    capacity = worker_capacity(nofile, 2)  # both ends of each connection
    per = cfg.per_worker or capacity
    n = cfg.connections
    count = math.ceil(n / per) if cfg.workers == "auto" else cfg.workers
    count = min(count, n)
    shares = split_shares(n, count)
    fits = max(shares) * 2 + FD_HEADROOM <= nofile
    # A share beyond the descriptor limit can only end in EMFILE half-way: refuse before
    # opening anything.  worker_nofile lowers the limit on purpose to provoke just that.
    if not fits and cfg.worker_nofile is None:
        asked = f"--workers {cfg.workers}" if cfg.workers != "auto" else f"--per-worker {cfg.per_worker}"
        raise ProbeConfigError(
            f"{asked}: {max(shares):,} connections per worker need {max(shares) * 2 + FD_HEADROOM:,} "
            f"descriptors (2 per connection + {FD_HEADROOM}), RLIMIT_NOFILE is {nofile:,}: use "
            f"--workers {math.ceil(n / capacity)} or more, or --workers auto")
    # The orchestrator opens every worker's listener before forking any (a busy port is
    # found before a connection is opened) and keeps them: under a hard limit too low
    # for that many it would stop at EMFILE itself, before the first worker runs.
    if count + FD_HEADROOM > own_nofile:
        raise ProbeConfigError(
            f"{count:,} workers of {worker_capacity(nofile, 2):,} connections each: the probe "
            f"holds every worker's listener, {count + FD_HEADROOM:,} descriptors with its own "
            f"{FD_HEADROOM}, RLIMIT_NOFILE is {own_nofile:,}: raise the hard nofile limit "
            f"({signs.fix('RLIMIT_NOFILE.hard')}) to at least {nofile_for(n):,}, or probe fewer connections")
    low, high = kernel.port_range()
    port = cfg.port if cfg.port is not None else default_port(count, (low, high))
    if port + count - 1 > 65535:
        raise ProbeConfigError(f"{count} listeners from port {port} run past 65535")
    if port <= high and port + count - 1 >= low:
        raise ProbeConfigError(
            f"listener ports {port}-{port + count - 1} overlap ip_local_port_range {low}-{high}; "
            f"connect() would compete with them for ephemeral ports: pick --port outside it")
    src = sources(cfg.source_net)
    per_address = max(1, fast_ports(low, high))
    return WorkerPlan(workers=count, per_worker=max(shares), shares=shares, nofile=nofile, port=port,
                port_range=(low, high), source_net=cfg.source_net,
                addresses_per_worker=0 if src is None else math.ceil(max(shares) / per_address),
                fits=fits)


def split_shares(n: int, workers: int) -> List[int]:
    """n connections over `workers` workers, the first ones one more when uneven."""
    base, extra = divmod(n, workers)
    return [base + (1 if k < extra else 0) for k in range(workers)]


def fast_ports(low: int, high: int) -> int:
    """Connections one source address gets quickly to one destination, given the port
    range low..high (minus ip_local_reserved_ports): port_share of it, as the probes'
    sockets search ports on this kernel."""
    usable = max(0, high - low + 1 - kernel.reserved_ports(low, high))
    return int(usable * port_share(kernel.own_port_range()))


def default_port(count: int, port_range: Tuple[int, int]) -> int:
    """First listener port: 20000 like the C reference when it fits below the range,
    otherwise just below or above the range."""
    low, high = port_range
    if 20000 + count <= low or 20000 > high:
        return 20000
    if low - count >= 1024:
        return low - count
    if high + count <= 65535:
        return high + 1
    raise ProbeConfigError(f"no room for {count} listener ports outside ip_local_port_range {low}-{high}")


def worker_sources(plan: WorkerPlan, k: int) -> List[str]:
    """Source addresses worker k spreads its connections over (empty: no bind)."""
    src = sources(plan.source_net)
    if src is None:
        return []
    m = plan.addresses_per_worker
    return [src[k * m + j] for j in range(m)]
