"""The serve worker under a fleet's load: a listener that load hosts keep full must not
starve the worker's own loop (echoes, reports, a stop).

bench/bench_fleet.py found it: with 3 load hosts x 100,000 against one server on 2
vCPUs, the clients refilled the accept queues faster than the workers emptied them, and
accept() drained until EAGAIN, which never came.  Each client got its index, no echo
was read for ten seconds, and the echo deadline reset them (99% established, 0.1%
verified).  Here a real listener holds one and a half batches of completed connections, and the
worker's one accept() call returns with the rest still queued, then verifies an echo.
"""
from __future__ import annotations

import mmap
import os
import select
import socket

from probes import serve_worker, wire


def test_one_accept_call_takes_a_batch_and_leaves_the_rest_queued():
    queued = serve_worker.ACCEPT_BATCH * 3 // 2   # and both ends under a soft limit of 1,024
    listener = wire.listener("127.0.0.1", 0)
    port = listener.getsockname()[1]
    report_r, report_w = os.pipe()
    stop_r, stop_w = os.pipe()
    release_r, release_w = os.pipe()
    os.set_blocking(report_w, False)
    held_map = mmap.mmap(-1, serve_worker.SLOT.size)
    clients = []
    try:
        for _ in range(queued):   # the kernel completes each handshake into the accept queue
            clients.append(socket.create_connection(("127.0.0.1", port)))
        worker = serve_worker.ServeWorker(0, 1, listener.fileno(), report_w, stop_r, release_r, held_map)
        worker.poll = select.epoll()
        worker.poll.register(listener.fileno(), select.EPOLLIN)

        worker.accept()
        assert 0 < worker.accepted < queued   # back to the loop, not drained to EAGAIN
        assert worker.accepted == len(worker.pending)
        # What the loop does next: the first client's echo is read and verified...
        first = clients[0]
        index = first.recv(4)
        first.sendall(index)
        ready = dict(worker.poll.poll(5))
        fds = [fd for fd in ready if fd != listener.fileno()]
        assert fds and listener.fileno() in ready   # ...while the listener still has more
        for fd in fds:
            worker.on_echo(fd)
        assert worker.verified == 1 and first.recv(1) == wire.ACK

        while worker.accepted < queued:   # and the queue empties over the next wake-ups
            worker.accept()
        assert worker.accepted == queued and worker.over == 0
    finally:
        for c in clients:
            c.close()
        for fd in (report_r, report_w, stop_r, stop_w, release_r, release_w):
            os.close(fd)
        held_map.close()
        listener.close()
