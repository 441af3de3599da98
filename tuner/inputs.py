"""Validation of what users type, shared by every command.

Each check raises UsageError with one line that says what to do, before anything
is read or changed.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Optional

from tuner.host.errors import UsageError
from tuner.host.numfmt import COUNT_SUFFIXES

# The seed's theoretical bound for one listening address: 2^32 source addresses x
# 2^16 source ports.  Beyond it no host setting can help.
MAX_TARGET = 2 ** 48

# Longest numeric text read at all: 2^48 written out with separators fits; a 5000-digit
# value is refused before any conversion (int() of it raises past 4300 digits).
MAX_NUMBER_CHARS = 40


def _shown(text: str) -> str:
    """A value as an error message quotes it: long ones cut, with their length."""
    return repr(text) if len(text) <= MAX_NUMBER_CHARS else f"{text[:12]!r}... ({len(text):,} characters)"


def parse_target(text, what: str = "target") -> Optional[int]:
    """'1000000', '1_000_000', '1M', '2.5m', '500k' -> int; None stays None. ASCII digits
    only: '٣' and '１' are digits to Python, not to an operator reading the command."""
    if text is None or (isinstance(text, int) and not isinstance(text, bool)):
        return text
    text = str(text)
    if len(text) > MAX_NUMBER_CHARS:
        raise UsageError(f"{what} {_shown(text)} is not a whole number of connections "
                         f"(examples: 1000000, 1_000_000, 1M)")
    m = re.fullmatch(r"\s*(-?\d[\d_]*(?:\.\d+)?)\s*([kKmMgG]?)\s*", text, re.ASCII)
    if not m:
        raise UsageError(f"{what} {text!r} is not a whole number of connections "
                         f"(examples: 1000000, 1_000_000, 1M)")
    # Decimal, not float: '1.0000000000000001M' is not 1,000,000, and a 400-digit
    # number is too large rather than an OverflowError.
    exact = Decimal(m.group(1).replace("_", "")) * COUNT_SUFFIXES[m.group(2).lower()]
    if exact != exact.to_integral_value():
        raise UsageError(f"{what} {text!r} is not a whole number of connections")
    value = int(exact)
    if value < 1:
        raise UsageError(f"{what} must be at least 1 connection, not {text}")
    if value > MAX_TARGET:
        raise UsageError(f"{what} {value:,} is above 2^48 ({MAX_TARGET:,}), the most one "
                         f"listening address can ever accept; use a smaller target")
    return value


def check_role(role: str) -> str:
    from .knobs import ROLES  # here, not at the top: `tuner --help` never needs the table

    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


def parse_workers(text):
    """'auto' or a positive whole number of worker processes."""
    return WORKERS(text)


def check_positive(name: str, value: Optional[int]) -> Optional[int]:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be at least 1, not {value}")
    return value


# A systemd unit name (systemd.unit(5): ASCII letters, digits and ":-_.\\@", at most 255
# characters), as diagnose/metrics --unit and apply --persist's drop-in take it.
UNIT_CHARS = r"[A-Za-z0-9:_.@\\-]"
UNIT_NAME = re.compile(rf"^{UNIT_CHARS}{{1,255}}$")


def parse_source_net(text: Optional[str]) -> Optional[str]:
    """--source-net CIDR or 'none' (probe, apply): one line and exit 2 when it is not a
    network (an empty value included), None when not given.  Parsed by the probes' one
    parser; whether the family fits is the command's to say (the local probe listens
    on 127.0.0.1, --connect takes either)."""
    if text is None:
        return None
    # Here: the probe's address rules load only for --source-net (start-up time).
    from probes.config import ProbeConfigError, source_network

    try:
        source_network(text)
    except ProbeConfigError as e:
        raise UsageError(str(e)) from None
    return text


# Networks an operator plausibly owns, so tuner may add source addresses from them
# without being told twice.  127.0.0.0/8 is here too, but only on lo (below).
_PRIVATE_NETS = {
    4: ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",   # RFC 1918
        "100.64.0.0/10"),                                  # RFC 6598 shared address space
    6: ("fc00::/7",),                                      # RFC 4193 unique local
}
# Never a host's own unicast address, whoever owns what: no flag makes these right.
_NEVER = {
    4: (("0.0.0.0/8", "'this network' (0.0.0.0/8)"), ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)")),
    6: (("::/128", "the unspecified address"), ("ff00::/8", "multicast")),
}
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}


def check_alias_net(text: str, dev: Optional[str], allow_public: bool = False,
                    option: str = "--alias-net"):
    """The network `tuner apply --alias-net` takes /32 aliases from, for device `dev`
    (and the prefix `--anyip-net` makes local, as `option`: the same trust).

    A root tool adds addresses only where an operator plausibly owns the network: the
    private ranges (RFC 1918, 100.64.0.0/10 shared space, IPv6 unique local) anywhere,
    loopback only on lo.  Anything else (public, link-local, documentation) needs
    --allow-public-aliases; multicast, 0.0.0.0/8, 240.0.0.0/4 and loopback on a real
    device are refused even then, since no host can use them as its own address."""
    # Here: ipaddress loads only for --alias-net (start-up time).
    import ipaddress

    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a network (e.g. 10.9.0.0/24)") from None

    def inside(cidr: str) -> bool:
        other = ipaddress.ip_network(cidr)
        return other.version == net.version and net.subnet_of(other)

    def overlaps(cidr: str) -> bool:
        other = ipaddress.ip_network(cidr)
        return other.version == net.version and net.overlaps(other)

    for cidr, what in _NEVER[net.version]:
        if overlaps(cidr):
            raise UsageError(f"{option} {net} is {what}: no host can use such addresses as "
                             f"its own; take aliases from a private network such as 10.0.0.0/8")
    if overlaps(_LOOPBACK[net.version]):
        if inside(_LOOPBACK[net.version]) and dev == "lo":
            return net
        raise UsageError(f"{option} {net} is loopback, which belongs on lo only, not on "
                         f"{dev or 'another device'}; take aliases for {dev or 'it'} from a "
                         f"private network such as 10.0.0.0/8")
    if any(inside(cidr) for cidr in _PRIVATE_NETS[net.version]) or allow_public:
        return net
    private = ", ".join(_PRIVATE_NETS[4])
    raise UsageError(f"{option} {net} is not inside a private network ({private}, or fc00::/7): "
                     f"tuner adds addresses only from networks an operator owns; if this one "
                     f"is yours, pass --allow-public-aliases")



# ---------------------------------------------------------------- numeric options

MAX_SECONDS = 30 * 86400        # a month: longer waits are typos (and overflow poll())
MAX_RATE = 10_000_000           # connections/s, far above any kernel's accept rate
PID_MAX_LIMIT = 1 << 22         # the kernel's ceiling for pid_max (64-bit)
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


class Number:
    """How one numeric option is read: ASCII digits only (Python's int() and float() take
    '٣', '１', 'nan' and 'inf'), finite, within [low, high] (above low when low_open).

    The CLI gives an instance as the option's parser, so every command reads a number the
    same way as it parses its arguments; tests/test_fuzz_options.py finds the options by
    it and reads the bounds.  kind: 'int', 'float', or 'target' (1M, 500k: parse_target)."""

    def __init__(self, option: str, kind: str, low: float, high: float, *,
                 low_open: bool = False, words: tuple = (), unit: str = ""):
        self.option, self.kind, self.low, self.high = option, kind, low, high
        self.low_open, self.words, self.unit = low_open, words, unit
        self.__name__ = f"parse{option.replace('-', '_')}"

    def __call__(self, value):
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            return value                      # a default of the declaration
        text = str(value)
        if text in self.words:
            return text
        if self.kind == "target":
            return parse_target(text, self.option)
        pattern = _INT if self.kind == "int" else _FLOAT
        if len(text) > MAX_NUMBER_CHARS or not pattern.fullmatch(text.strip()):
            raise UsageError(f"{self.option} {_shown(text)} is not {self.expects()}")
        number = int(text) if self.kind == "int" else float(text)
        too_low = number <= self.low if self.low_open else number < self.low
        if too_low or number > self.high or number != number:
            raise UsageError(f"{self.option} {_shown(text)} is out of range: give {self.expects()}")
        return number

    def expects(self) -> str:
        what = "a whole number" if self.kind == "int" else "a number"
        low = f"above {_num(self.low)}" if self.low_open else f"from {_num(self.low)}"
        words = "".join(f"'{w}' or " for w in self.words)
        unit = f" {self.unit}" if self.unit else ""
        return f"{words}{what}{unit} {low} to {_num(self.high)}"


def _num(x) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def target_option(option: str) -> Number:
    return Number(option, "target", 1, MAX_TARGET)


TARGET = target_option("--target")
CONNECTIONS = target_option("--connections")
EXPECT = target_option("--expect")
APP_LIMIT = Number("--app-limit", "int", 1, MAX_TARGET)
DESTINATIONS = Number("--destinations", "int", 1, MAX_TARGET)
PID = Number("--pid", "int", 1, PID_MAX_LIMIT)
PORT = Number("--port", "int", 1, 65535)
WORKERS = Number("--workers", "int", 1, 65535, words=("auto",))
HOLD = Number("--hold", "float", 0, MAX_SECONDS, unit="of seconds")
TIMEOUT = Number("--timeout", "float", 0, MAX_SECONDS, low_open=True, unit="of seconds")
ECHO_TIMEOUT = Number("--echo-timeout", "float", 0, MAX_SECONDS, low_open=True, unit="of seconds")
RATE = Number("--rate", "float", 0, MAX_RATE, low_open=True, unit="of connections per second")
WATCH = Number("--watch", "float", 0, MAX_SECONDS, unit="of seconds (0: until Ctrl-C)")
INTERVAL = Number("--interval", "float", 0, MAX_SECONDS, low_open=True, unit="of seconds")
STEP = target_option("--step")
SETTLE = Number("--settle", "float", 0, MAX_SECONDS, unit="of seconds")
PING_EVERY = Number("--ping-every", "float", 0, MAX_SECONDS, low_open=True, unit="of seconds")
MAX_P99 = Number("--max-p99", "float", 0, MAX_SECONDS * 1000, low_open=True, unit="of milliseconds")
