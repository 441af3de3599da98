"""TLS under any protocol (https://, wss://, rediss://, mqtts://, tls://): the transport
that carries a protocol's bytes through `ssl.SSLObject` over two `ssl.MemoryBIO`s, so
the worker's loop stays non-blocking and every exchange stays sans-IO: the worker reads
ciphertext from the socket and feeds it here, and writes whatever `out` holds.

Per connection tuner keeps the library's state only: the SSLObject and its two BIOs
(OpenSSL's SSL, its session, the peer's certificate), nothing of its own.  CPython sets
SSL_MODE_RELEASE_BUFFERS on every context, so OpenSSL frees a connection's 16 KiB read
and write buffers once it is idle; the handshake's temporaries (this module's exchange
wrapper, its start time) are dropped once the exchange is decided, and a worker keeps at
most IN_FLIGHT handshakes in flight, so their temporaries do not fragment the heap under
the held connections' state.

Certificates the way users have them: verified by default against the system store
(`--ca FILE` instead; `--insecure` verifies nothing and the summary says so), the name
checked and sent as SNI is the URL's host (`--sni NAME`), ALPN `http/1.1` for https://
and wss:// (`--alpn`), `--cert`/`--key` for mutual TLS, `--tls-version 1.2|1.3`, and
`--resume` reuses a session (ticket) across connections.  A handshake that fails is the
server's side, in the library's words ('TLS certificate: certificate has expired').

Stdlib only: the probe's workers import it.
"""
from __future__ import annotations

import ctypes
import os
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from . import http, mqtt, redis, tcp, ws
from .base import NEED, REFUSED, VERIFIED, Connection, Exchange, Option, Protocol, Scheme, Target, TargetError, Transport

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
RECORD = 16 * 1024 + 256      # one TLS record's plaintext at most, read at once
SLICE = 512                   # ciphertext written into the incoming BIO at once (its buffer's size)
# The probe's user memory per held TLS connection, by version (OpenSSL 3.0 under CPython
# 3.11: its SSL, session and the peer's certificate (RSA 2048), two BIOs), measured by
# bench/bench_services.py on 2026-12-07 against nginx, the largest of three exclusive
# runs: TLS 1.3 27.63 KiB at 10,000 and 30.38 at 30,000 (two workers) with 32 in flight,
# 27.14 at 10,000 with 16; TLS 1.2 21.02, 20.71 and 20.99 (docs/probe-services.md).
# `tuner report --role client --tls` counts one per connection: --tls-version's, else
# the dearer.
HELD_BYTES = {"1.2": 21_600, "1.3": 31_200}
# Handshakes a worker keeps in flight at once.  Opened all together, each one's
# temporaries (16 KiB record buffers, the key share, the certificate's verification)
# interleave with the held connections' state and leave the heap fragmented under it.
# Against nginx at 10,000 (bench/bench_services.py, 2026-12-07, exclusive runs): 37.4 KB
# per held TLS 1.3 connection opened all at once, 27.6 KB 32 at a time, 27.1 KB 16 at a
# time, against the bare SSLObject floor's 26.9-27.2 (1.39x -> 1.02x -> 1.00x; TLS 1.2:
# 35.6 -> 21.0 -> 21.0 KB, floor 20.4, 1.75x -> 1.03x); a worker's own growth per
# connection measured 25.7-27.1 KB with 8, 26.8-27.2 with 16, 27.0-28.7 with 32 (shared
# runs).  The open rate stayed (774, 767 and 710/s): a server's CPU bounds it long
# before 16 per worker do (~1.3 ms of nginx's CPU per RSA 2048 handshake), and a
# handshake's latency no longer counts a wait in the server's accept queue behind
# thousands of its worker's own.  --tls-in-flight raises it (a distant server).
IN_FLIGHT = 16
WORDS = "TLS "                # every handshake failure's words start so (serverside counts them apart)


@dataclass(frozen=True)
class TlsSettings:
    """The --connect options of a TLS scheme (defaults: what a browser would do)."""
    ca: Optional[str] = None
    insecure: bool = False
    sni: Optional[str] = None
    alpn: Tuple[str, ...] = ()
    cert: Optional[str] = None
    key: Optional[str] = None
    version: Optional[str] = None
    resume: bool = False
    in_flight: int = 0            # handshakes a worker keeps in flight (0: IN_FLIGHT)


def context(settings: TlsSettings, default_alpn: Tuple[str, ...] = ()) -> ssl.SSLContext:
    """The client context every connection of a run shares (made before the workers
    fork, so its trust store is one copy); TargetError for files it cannot use."""
    if settings.version is not None and settings.version not in VERSIONS:
        raise TargetError(f"--tls-version {settings.version!r}: one of {', '.join(VERSIONS)}")
    if settings.key and not settings.cert:
        raise TargetError("--key needs --cert (the client certificate it belongs to)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # CERT_REQUIRED and check_hostname
    try:
        if settings.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif settings.ca:
            ctx.load_verify_locations(cafile=settings.ca)
        else:
            ctx.load_default_certs()
        if settings.cert:
            ctx.load_cert_chain(settings.cert, settings.key)
    except (OSError, ssl.SSLError) as exc:
        which = "--cert/--key" if settings.cert and settings.ca is None else "--ca" if settings.ca else "--cert/--key"
        raise TargetError(f"{which}: {exc.strerror or exc}") from None
    if settings.version is not None:
        ctx.minimum_version = ctx.maximum_version = VERSIONS[settings.version]
    alpn = settings.alpn or default_alpn
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TlsConnection(Connection):
    """One connection's TLS state, kept from connect to close: the library's objects."""

    __slots__ = ("obj", "inc", "out", "tls")

    def __init__(self, obj: ssl.SSLObject, inc: ssl.MemoryBIO, out: ssl.MemoryBIO, tls: "Tls"):
        self.obj, self.inc, self.out, self.tls = obj, inc, out, tls

    def wrap(self, exchange: Exchange) -> "TlsExchange":
        return TlsExchange(self, exchange)

    def closed_in_hold(self, data: bytes) -> Optional[bool]:
        """Records that arrived during a passive hold (a late session ticket, a
        close_notify): True when the server closed TLS, False when still open, None when
        a failure (an alert) ended it."""
        self.inc.write(data)
        try:
            while self.obj.read(RECORD):
                pass
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLZeroReturnError:
            return True
        except ssl.SSLError:
            return None
        return False


class Tls(Transport):
    """The transport of a TLS scheme: a context, the name to verify, and per worker (a
    copy after fork) the handshakes' figures it reports."""

    name = "tls"
    per_connection = True

    def __init__(self, settings: TlsSettings, host: str, default_alpn: Tuple[str, ...] = ()):
        self.settings = settings
        self.ctx = context(settings, default_alpn)
        self.hostname = settings.sni or host
        self.default_alpn = default_alpn
        self.in_flight = settings.in_flight or IN_FLIGHT
        self.session: Optional[ssl.SSLSession] = None
        self.full = self.resumed = 0
        self.kinds: Counter = Counter()          # 'TLSv1.3 TLS_AES_256_GCM_SHA384 X25519' -> count
        self.handshake_us: list = []             # replaced by a histogram by the worker
        self.record = self.handshake_us.append

    def connection(self) -> TlsConnection:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        session = self.session if self.settings.resume else None
        obj = self.ctx.wrap_bio(inc, out, server_hostname=self.hostname, session=session)
        return TlsConnection(obj, inc, out, self)

    def handshaken(self, conn: TlsConnection, us: int) -> None:
        obj = conn.obj
        if obj.session_reused:
            self.resumed += 1
        else:
            self.full += 1
        self.record(us)
        cipher = obj.cipher()
        self.kinds[f"{obj.version()} {cipher[0] if cipher else '?'} {group(obj)}"] += 1

    def settled(self, conn: TlsConnection) -> None:
        """The exchange verified: its session (with the ticket read by now) is the one the
        next connection resumes, under --resume."""
        if self.settings.resume:
            session = conn.obj.session
            if session is not None and (session.has_ticket or conn.obj.version() != "TLSv1.3"):
                self.session = session


class TlsExchange(Exchange):
    """An exchange as the socket sees it: the handshake first (its ClientHello in `out`
    at once), then the inner exchange's bytes encrypted, the server's decrypted and fed
    to it.  The inner verdict is the verdict; a failed handshake refuses in the
    library's words."""

    __slots__ = ("conn", "inner", "t0")

    def __init__(self, conn: TlsConnection, inner: Exchange):
        super().__init__()
        self.conn, self.inner, self.t0 = conn, inner, 0
        if conn.obj.version() is None:
            self.t0 = time.monotonic_ns()
            self.handshake()
        else:
            self.out = self.seal(inner.out)
            inner.out = b""

    @property
    def needs_answer(self) -> bool:
        return self.t0 != 0 or self.inner.needs_answer

    @property
    def handshaking(self) -> bool:
        # t0: when the connection was opened (its connect() issued), so the handshake's
        # latency includes the TCP handshake and any wait in the server's accept queue.
        return self.t0 != 0

    def seal(self, plain: bytes) -> bytes:
        if plain:
            self.conn.obj.write(plain)
        return self.conn.out.read()

    def handshake(self) -> Optional[int]:
        """A step of the handshake: None once done, NEED, or REFUSED with the words."""
        try:
            self.conn.obj.do_handshake()
        except ssl.SSLWantReadError:
            self.out += self.conn.out.read()
            return NEED
        except ssl.SSLCertVerificationError as exc:
            return self.refuse(f"{WORDS}certificate: {exc.verify_message or exc.reason}")
        except ssl.SSLError as exc:
            return self.refuse(f"{WORDS}handshake: {exc.reason or exc}")
        self.out += self.conn.out.read()
        return None

    def refuse(self, words: str) -> int:
        self.words = words
        self.out += self.conn.out.read()     # the alert we send, if any
        return REFUSED

    def feed(self, data: bytes) -> int:
        """Ciphertext in, a slice at a time: OpenSSL takes each slice out of the BIO before
        the next goes in, so the BIO's buffer (kept for the connection's life) stays one
        slice long however much the server sent at once."""
        self.out = b""
        verdict = NEED
        for i in range(0, len(data), SLICE):
            self.conn.inc.write(data[i:i + SLICE])
            # Records after the answer that came in the same read (a close frame, a
            # session ticket) are read now, as a plain connection's parser would see
            # them: nothing stays in the BIO where no socket event would reach it.
            step = self.step()
            if step == REFUSED:
                return REFUSED
            verdict = VERIFIED if VERIFIED in (step, verdict) else NEED
        return self.settle(verdict, self.conn.tls)

    def step(self) -> int:
        transport = self.conn.tls
        if self.t0:
            step = self.handshake()
            if step is not None:
                return step
            transport.handshaken(self.conn, (time.monotonic_ns() - self.t0) // 1000)
            self.t0 = 0
            self.out += self.seal(self.inner.out)
            self.inner.out = b""
            if not self.inner.needs_answer:
                return VERIFIED
        return self.plain()

    def plain(self) -> int:
        """Decrypted bytes fed to the inner exchange: its verdict, NEED for more."""
        verdict = NEED
        while True:
            try:
                data = self.conn.obj.read(RECORD)
            except ssl.SSLWantReadError:
                return verdict
            except ssl.SSLZeroReturnError:
                return verdict            # close_notify: the EOF that follows says closed
            except ssl.SSLError as exc:
                return self.refuse(f"alert after the handshake: {exc.reason or exc}")
            if not data:
                return verdict
            step = self.inner.feed(data)
            if self.inner.out:
                self.out += self.seal(self.inner.out)
                self.inner.out = b""
            if step == REFUSED:
                self.words = self.inner.words
                return REFUSED
            verdict = VERIFIED if VERIFIED in (step, verdict) else NEED

    def settle(self, verdict: int, transport) -> int:
        if verdict == VERIFIED:
            transport.settled(self.conn)
        return verdict


# -- the group negotiated ----------------------------------------------------------------
# Python's ssl (3.11) does not say which key-exchange group a handshake used; OpenSSL
# does (SSL_get_negotiated_group).  Asked through ctypes on the libssl _ssl itself loaded,
# with the SSL pointer read from CPython's PySSLSocket (after PyObject_HEAD and one
# pointer), and only believed when SSL_get_version of that pointer agrees with Python's.
SSL_CTRL_GET_NEGOTIATED_GROUP = 134
_libssl = []


def _lib():
    if not _libssl:
        lib = None
        try:
            with open(f"/proc/{os.getpid()}/maps") as f:
                paths = {line.split()[-1] for line in f if "libssl.so" in line}
            if len(paths) == 1 and sys.implementation.name == "cpython" and ctypes.sizeof(ctypes.c_void_p) == 8:
                lib = ctypes.CDLL(paths.pop())
                lib.SSL_ctrl.restype, lib.SSL_ctrl.argtypes = ctypes.c_long, [ctypes.c_void_p, ctypes.c_int,
                                                                             ctypes.c_long, ctypes.c_void_p]
                lib.SSL_get_version.restype, lib.SSL_get_version.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
                lib.OBJ_nid2sn.restype, lib.OBJ_nid2sn.argtypes = ctypes.c_char_p, [ctypes.c_int]
        except (OSError, AttributeError):
            lib = None
        _libssl.append(lib)
    return _libssl[0]


def group(obj: ssl.SSLObject) -> str:
    """The key-exchange group the handshake used ('X25519'), '?' when it cannot be told."""
    lib = _lib()
    inner = getattr(obj, "_sslobj", None)
    if lib is None or inner is None:
        return "?"
    ptr = ctypes.c_void_p.from_address(id(inner) + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    if not ptr or (lib.SSL_get_version(ptr) or b"").decode() != obj.version():
        return "?"
    nid = lib.SSL_ctrl(ptr, SSL_CTRL_GET_NEGOTIATED_GROUP, 0, None)
    name = lib.OBJ_nid2sn(nid & 0xFFFF) if nid > 0 else None
    return name.decode() if name else "?"


# -- the schemes -------------------------------------------------------------------------
OPTIONS = (
    Option("ca", "--ca", "FILE", "verify the server's certificate against the CA certificates in FILE "
                                 "(PEM) instead of the system store."),
    Option("insecure", "--insecure", "", "verify no certificate (the summary says so).", default=False, kind=bool),
    Option("sni", "--sni", "NAME", "the server name sent (SNI) and its certificate must carry (default: the "
                                   "URL's host)."),
    Option("alpn", "--alpn", "PROTOCOL", "an ALPN protocol to offer (repeatable; https:// and wss:// offer "
                                         "http/1.1).", repeatable=True),
    Option("cert", "--cert", "FILE", "a client certificate (PEM) for mutual TLS."),
    Option("key", "--key", "FILE", "the client certificate's private key (PEM), when not in --cert's file."),
    Option("tls_version", "--tls-version", "1.2|1.3", "speak this TLS version only."),
    Option("resume", "--resume", "", "resume the first full handshake's session on every later connection "
                                     "(what resumption saves the server).", default=False, kind=bool),
    Option("tls_in_flight", "--tls-in-flight", "N",
           f"handshakes each worker keeps in flight (default {IN_FLIGHT}: more fragment the probe's memory under "
           "the held connections; raise it against a distant server, where round trips rather than CPU bound "
           "the open rate).", default=IN_FLIGHT, kind=int, bounds=(1, 4096)),
)


def url_host(hostport: str) -> str:
    """The host as the URL names it (the name its certificate must carry): '[::1]:443' -> '::1'."""
    if hostport.startswith("["):
        return hostport[1:].partition("]")[0]
    return hostport.rpartition(":")[0] if ":" in hostport else hostport


def over(plain: Scheme, name: str, order: int, default_port: Optional[int], alpn: Tuple[str, ...]) -> Scheme:
    """The scheme that carries `plain`'s protocol through TLS: its options and the TLS
    ones, its Protocol with this transport under it."""
    def build(target: Target, options: dict) -> Protocol:
        settings = TlsSettings(ca=options["ca"], insecure=options["insecure"], sni=options["sni"],
                               alpn=tuple(options["alpn"]), cert=options["cert"], key=options["key"],
                               version=options["tls_version"], resume=options["resume"],
                               in_flight=options["tls_in_flight"])
        inner = plain.build(replace(target, scheme=plain.name), {o.name: options[o.name] for o in plain.options})
        inner.transport = Tls(settings, url_host(target.host_header), alpn)
        inner.name = name
        return inner

    usage = plain.usage.replace(f"{plain.name}://", f"{name}://")
    return Scheme(name=name, order=order, usage=usage, default_port=default_port, takes_path=plain.takes_path,
                  does=f"as `{plain.name}://`, through TLS (the certificate verified: `--ca`, `--insecure`, "
                       f"`--sni`, `--alpn`, `--cert`/`--key`, `--tls-version`, `--resume`)",
                  second=f"as `{plain.name}://`'s, through the same TLS session", build=build,
                  options=plain.options + OPTIONS)


SCHEMES = (over(http.SCHEME, "https", 10, 443, ("http/1.1",)), over(ws.SCHEME, "wss", 11, 443, ("http/1.1",)),
           over(redis.SCHEME, "rediss", 12, 6379, ()), over(mqtt.SCHEME, "mqtts", 13, 8883, ()),
           over(tcp.SCHEME, "tls", 14, None, ()))
