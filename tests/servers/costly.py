"""A test server whose memory per connection is known by construction (issue 26).

Each accepted connection gets a buffer of --bytes, every page of it written, before the
server answers "ok\n" on it: a client that read "ok" knows the server holds the memory.
A line "ping\n" is answered "pong\n" (a round of the exchange, for latency);
--slow-after N makes every answer wait N-dependent time once more than N are held
(--slow-ms each), so a latency bound is crossed at a known count.
Stdlib only, one thread, selectors; prints "ready PORT" once listening.

    python tests/servers/costly.py --port 0 --bytes 65536
"""
import argparse
import selectors
import socket
import sys
import time

PAGE = 4096


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bytes", type=int, default=65536)
    ap.add_argument("--slow-after", type=int, default=0)
    ap.add_argument("--slow-ms", type=float, default=0.0)
    args = ap.parse_args()
    lsock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(4096)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    held = {}
    print(f"ready {lsock.getsockname()[1]}", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is lsock:
                accept(lsock, sel, held, args.bytes)
            else:
                serve(key.fileobj, sel, held, args)


def accept(lsock, sel, held, size):
    for _ in range(64):
        try:
            conn, _ = lsock.accept()
        except BlockingIOError:
            return
        buf = bytearray(size)            # zero-filled: every page written once
        for i in range(0, size, PAGE):
            buf[i] = 1
        held[conn] = buf
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ)
        conn.send(b"ok\n")


def serve(conn, sel, held, args):
    try:
        data = conn.recv(4096)
    except OSError:
        data = b""
    if not data:
        sel.unregister(conn)
        held.pop(conn, None)
        conn.close()
        return
    if args.slow_after and len(held) > args.slow_after:
        time.sleep(args.slow_ms / 1000)
    conn.send(b"pong\n" * data.count(b"\n"))


if __name__ == "__main__":
    sys.exit(main())
