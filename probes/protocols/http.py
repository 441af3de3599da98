"""http://: HTTP/1.1 keep-alive.  The request (method, headers, Host settable) goes out
once connected and again for the second check; the answer is read to the end of its
body (Content-Length or chunked).  2xx and 3xx serve; any other status is the server
refusing, in its words ('503 Service Unavailable').  A 2xx that says Connection: close
will not be held, and counts as refused with that said.

Hand-written (a few states, nothing kept of the body); tests/test_protocols.py checks it
against h11 as the oracle.  The response head is also what ws.py reads."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from .base import NEED, REFUSED, VERIFIED, Exchange, Option, Protocol, Scheme, Target, TargetError

MAX_HEAD = 65536
# Owned by this scheme and the WebSocket one both (ws.py declares it too).
HEADER = Option("headers", "--header", "'NAME: VALUE'", "a request header (repeatable; Host: replaces the URL's).",
                repeatable=True)
HEAD, LENGTH, CHUNK_SIZE, CHUNK_DATA, TRAILER = range(5)


def request_head(method: str, target: Target, headers) -> bytes:
    """The request's bytes: `Host` from the URL unless a --header gives one."""
    method = method.upper()
    if not method.isalpha():
        raise TargetError(f"--method {method!r} is not an HTTP method")
    lines, host = [], target.host_header
    for h in headers:
        name, colon, value = h.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name or any(c in h for c in "\r\n") or " " in name:
            raise TargetError(f"--header {h!r} is not 'Name: value'")
        if name.lower() == "host":
            host = value
        else:
            lines.append(f"{name}: {value}")
    return "\r\n".join([f"{method} {target.path} HTTP/1.1", f"Host: {host}", *lines, "", ""]).encode("latin-1")


def parse_head(raw: bytes) -> Optional[Tuple[int, str, Dict[str, str]]]:
    """(status, reason, headers with lower-case names) of a response head (without its
    blank line); None when it is not one."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        return None
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            key = name.strip().lower()
            # Repeated fields join with a comma (RFC 9110 5.3).
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def _closes(raw: bytes, connection: str) -> str:
    """Why the server will close this connection after its answer, in words ("" when it
    keeps it): Connection: close, or HTTP/1.0 without keep-alive, whose default is to
    close (a server answering so holds nothing, issue 28: python's http.server)."""
    if "close" in connection:
        return "with Connection: close"
    if raw.startswith(b"HTTP/1.0") and "keep-alive" not in connection:
        return "over HTTP/1.0 without keep-alive: it closes after each answer"
    return ""


def split_head(buf: bytes) -> Optional[Tuple[bytes, bytes]]:
    end = buf.find(b"\r\n\r\n")
    return None if end < 0 else (buf[:end], buf[end + 4:])


class Response(Exchange):
    """Reads one response (1xx interim ones skipped) to the end of its body."""

    __slots__ = ("buf", "state", "left", "status", "reason", "close", "head_only")

    def __init__(self, request: bytes, head_only: bool = False):
        super().__init__(request)
        self.buf, self.state, self.left, self.head_only = b"", HEAD, 0, head_only

    def feed(self, data: bytes) -> int:
        self.out = b""
        self.buf += data
        while True:
            step = self.step()
            if step is not None:
                return step

    def step(self) -> Optional[int]:
        """One state's worth: a verdict, NEED, or None to go on with the next state."""
        if self.state == HEAD:
            return self.read_head()
        if self.state == LENGTH:
            taken = min(self.left, len(self.buf))
            self.left, self.buf = self.left - taken, self.buf[taken:]
            return self.verdict() if self.left == 0 else NEED
        if self.state == CHUNK_SIZE:
            end = self.buf.find(b"\r\n")
            if end < 0:
                return NEED if len(self.buf) < 1024 else self.bad("a chunk size line too long")
            size = self.buf[:end].split(b";")[0].strip()
            try:
                self.left = int(size, 16)
            except ValueError:
                return self.bad(f"a bad chunk size {size[:20]!r}")
            self.buf = self.buf[end + 2:]
            self.state = TRAILER if self.left == 0 else CHUNK_DATA
            self.left += 0 if self.left == 0 else 2   # the data's own CRLF
            return None
        if self.state == CHUNK_DATA:
            taken = min(self.left, len(self.buf))
            self.left, self.buf = self.left - taken, self.buf[taken:]
            if self.left:
                return NEED
            self.state = CHUNK_SIZE
            return None
        # TRAILER: fields until an empty line
        end = self.buf.find(b"\r\n")
        if end < 0:
            return NEED
        line, self.buf = self.buf[:end], self.buf[end + 2:]
        return self.verdict() if not line else None

    def read_head(self) -> Optional[int]:
        parts = split_head(self.buf)
        if parts is None:
            return NEED if len(self.buf) <= MAX_HEAD else self.bad("a response head over 64 KiB")
        raw, self.buf = parts
        head = parse_head(raw)
        if head is None:
            return self.bad(f"answered {raw[:40]!r}, not HTTP/1.x")
        self.status, self.reason, fields = head
        if 100 <= self.status < 200 and self.status != 101:
            return None                     # interim (100 Continue): the answer follows
        self.close = _closes(raw, fields.get("connection", "").lower())
        if self.head_only or self.status in (204, 304) or self.status == 101:
            return self.verdict()
        if "chunked" in fields.get("transfer-encoding", "").lower():
            self.state = CHUNK_SIZE
            return None
        length = fields.get("content-length", "")
        if not length.isdigit():
            # The body ends when the server closes: nothing to hold.
            self.close = "without a length: its answer ends when it closes"
            return self.verdict()
        self.state, self.left = LENGTH, int(length)
        return None

    def verdict(self) -> int:
        said = f"{self.status} {self.reason}".strip()
        if not 200 <= self.status < 400:
            self.words = said
            return REFUSED
        if self.close:
            self.words = f"{said} {self.close} (not held)"
            return REFUSED
        return VERIFIED

    def bad(self, why: str) -> int:
        self.words = why
        return REFUSED


class Http(Protocol):
    name = "http"

    def __init__(self, request: bytes, head_only: bool = False):
        self.request, self.head_only = request, head_only

    def opening(self) -> Exchange:
        return Response(self.request, self.head_only)

    def checking(self) -> Exchange:
        return Response(self.request, self.head_only)


def _build(target, options) -> Http:
    method = options["method"]
    return Http(request_head(method, target, options["headers"]), method.upper() == "HEAD")


SCHEME = Scheme(
    name="http", order=2, usage="http://HOST[:PORT]/PATH", default_port=80, takes_path=True,
    does="an HTTP/1.1 keep-alive request (`--method`, `--header 'Name: value'`, repeatable; `Host:` replaces "
         "the URL's), the answer read to the end of its body; 2xx and 3xx serve, any other status is the "
         "server refusing",
    second="the same request again on the same connection",
    build=_build,
    options=(Option("method", "--method", "METHOD", "the request's method.", default="GET"), HEADER))
