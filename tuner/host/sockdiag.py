"""The kernel's socket table through sock_diag (netlink), read raw.

`ss` reads the same table.  tuner asks for exactly what it needs and lets the kernel
filter (by state, by local port), then looks at a few bytes of each answer: decoding
200,000 messages field by field (pyroute2's parser) takes seconds, and importing
pyroute2's package costs a third of a second of every `tuner diagnose`.  Listening
sockets are a handful; held connections can be millions and are only counted.
Everything here reads the caller's current network namespace (tuner.host.netns).
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from collections import Counter
from operator import itemgetter
from typing import List, NamedTuple, Optional, Sequence, Set, Tuple

# sock_diag (linux/sock_diag.h, linux/inet_diag.h)
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP, INET_DIAG_BC_S_EQ = 1, 11
TCP_ESTABLISHED, TCP_SYN_RECV, TCP_LISTEN, TCP_CLOSE_WAIT = 1, 3, 10, 8
# Sockets that hold a server's descriptor: established, and closed by the peer but not
# yet by the server.
HELD_STATES = (1 << TCP_ESTABLISHED) | (1 << TCP_CLOSE_WAIT)
_NLMSG = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBBI")          # family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16sIQ")       # sport, dport, src, dst, if, cookie (cookie raw)
_SPORT = struct.Struct(">H")
# Offsets inside an nlmsg carrying inet_diag_msg (16-byte nlmsghdr first).
_MSG_STATE, _MSG_SPORT, _MSG_SRC, _MSG_DST = 16 + 1, 16 + 4, 16 + 8, 16 + 24
_MSG_QUEUES = struct.Struct("=III")            # rqueue, wqueue, uid: at 16 + 56
_MSG_INODE = 16 + 68
_MSG_MIN = 16 + 72


class Listening(NamedTuple):
    version: int        # 4 or 6
    address: str
    port: int
    backlog: int        # idiag_wqueue of a listener: its effective backlog
    queued: int         # idiag_rqueue of a listener: its accept queue now
    inode: int


def _messages(buf: bytes) -> Tuple[List[int], bool]:
    """The offsets of the inet_diag messages in one recv(), and whether the dump ended
    (NLMSG_DONE) in it; a netlink error raises OSError with the kernel's errno."""
    offsets: List[int] = []
    off, end = 0, len(buf)
    while off + 16 <= end:
        length, kind = _NLMSG.unpack_from(buf, off)[:2]
        if kind == NLMSG_DONE:
            return offsets, True
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", buf, off + 16)[0]
            raise OSError(code, f"sock_diag dump: {os.strerror(code)}")
        if length < _MSG_MIN:
            raise OSError(0, "sock_diag dump: a message shorter than inet_diag_msg")
        offsets.append(off)
        off += (length + 3) & ~3
    return offsets, False


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    return sock


def listening() -> List[Listening]:
    """Every TCP listening socket of the current network namespace, IPv4 and IPv6
    (the kernel filters to LISTEN)."""
    out: List[Listening] = []
    for family, version, size in ((socket.AF_INET, 4, 4), (socket.AF_INET6, 6, 16)):
        with _socket() as sock:
            sock.send(_dump_request(family, 1 << TCP_LISTEN, b""))
            done = False
            while not done:
                buf = sock.recv(1 << 17)
                offsets, done = _messages(buf)
                for off in offsets:
                    if buf[off + _MSG_STATE] != TCP_LISTEN:
                        continue
                    port = _SPORT.unpack_from(buf, off + _MSG_SPORT)[0]
                    address = socket.inet_ntop(family, buf[off + _MSG_SRC:off + _MSG_SRC + size])
                    rqueue, wqueue, _uid = _MSG_QUEUES.unpack_from(buf, off + 16 + 56)
                    inode = struct.unpack_from("=I", buf, off + _MSG_INODE)[0]
                    out.append(Listening(version, address, port, wqueue, rqueue, inode))
    return out


def port_filter(ports: Sequence[int]) -> bytes:
    """inet_diag bytecode accepting sockets whose local port is one of `ports`, built as
    `ss` builds `sport = :a or sport = :b`: each S_EQ (two 4-byte ops: code, yes, no;
    then the port in `no`) falls through to a JMP on a match and skips it otherwise; the
    JMP always takes its `no` jump, to the end (accept); the last S_EQ's `no` goes past
    the end (reject).  The kernel's audit (inet_diag_bc_audit) walks the `yes` chain and
    wants every `no` target on it: an S_EQ whose `yes` jumps straight to the end is
    refused with EINVAL as soon as there are two ports."""
    code = b""
    for port in reversed(ports):
        test = struct.pack("=BBH", INET_DIAG_BC_S_EQ, 8, 12) + struct.pack("=BBH", 0, 0, port)
        if code:
            test += struct.pack("=BBH", INET_DIAG_BC_JMP, 4, len(code) + 4)
        code = test + code
    return code


def _dump_request(family: int, states: int, bytecode: bytes) -> bytes:
    body = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states) + bytes(48)
    if bytecode:
        body += struct.pack("=HH", 4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    return _NLMSG.pack(16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body


def dump_count(family: int, states: int, bytecode: bytes, by_port: Counter, peers: Set[bytes],
               by_state: Optional[Counter] = None) -> None:
    """Count the sockets of one family in `states` accepted by `bytecode`, by local
    port, their distinct peer addresses and (when `by_state` is given) their TCP
    states, from the same dump."""
    with _socket() as sock:
        sock.send(_dump_request(family, states, bytecode))
        while True:
            if _count_buffer(sock.recv(1 << 17), by_port, peers, by_state):
                return


_DIAG_TYPE_BE = struct.unpack(">H", struct.pack("=H", SOCK_DIAG_BY_FAMILY))[0]


def _count_buffer(buf: bytes, by_port: Counter, peers: Set[bytes],
                  by_state: Optional[Counter] = None) -> bool:
    """Count one recv()'s messages; True once the dump is done.

    The messages of a dump have one length, so a whole buffer unpacks in C with one
    struct (struct.iter_unpack) and counts with Counter/set over map(); only a buffer
    holding the final NLMSG_DONE (or an error) takes the message-by-message path."""
    if len(buf) >= 16:
        length = _NLMSG.unpack_from(buf)[0]
        if length >= 56 and length % 4 == 0 and len(buf) % length == 0:
            # Big-endian throughout: the port is; the type is compared byte-swapped.
            # type at 4, state at 17 (inet_diag_msg's second byte), sport at 20, dst at 40.
            rec = struct.Struct(f">4xH11xB2xH18x16s{length - 56}x")
            rows = list(rec.iter_unpack(buf))
            if set(map(itemgetter(0), rows)) == {_DIAG_TYPE_BE}:
                by_port.update(map(itemgetter(2), rows))
                peers.update(map(itemgetter(3), rows))
                if by_state is not None:
                    by_state.update(map(itemgetter(1), rows))
                return False
    offsets, done = _messages(buf)
    for off in offsets:
        by_port[_SPORT.unpack_from(buf, off + _MSG_SPORT)[0]] += 1
        peers.add(buf[off + _MSG_DST:off + _MSG_DST + 16])
        if by_state is not None:
            by_state[buf[off + _MSG_STATE]] += 1
    return done




# INET_DIAG_SKMEMINFO (linux/sock_diag.h): nine u32, SK_MEMINFO_RMEM_ALLOC .. DROPS, the
# figures `ss -m` prints as skmem:(r, rb, t, tb, f, w, o, bl, d).
INET_DIAG_SKMEMINFO = 7
SKMEM_FIELDS = ("rmem_alloc", "rcvbuf", "wmem_alloc", "sndbuf", "fwd_alloc", "wmem_queued",
                "optmem", "backlog", "drops")
_SKMEM = struct.Struct("=9I")
_RTA = struct.Struct("=HH")

# The v1 request (struct inet_diag_req, nlmsg_type TCPDIAG_GETSOCK): the kernel answers it
# for both address families in one walk of the established table (inet_diag_dump_compat
# asks with AF_UNSPEC), where SOCK_DIAG_BY_FAMILY takes one walk per family.  A walk costs
# ~0.2 us per socket of the host's table whether it matches or not (40 ms over 200,000
# measured here), so an IPv6 walk that finds nothing costs as much as the IPv4 one.
TCPDIAG_GETSOCK = 18
_DIAG_REQ_V1 = struct.Struct("=BBBB48sII")   # family, src_len, dst_len, ext, id, states, dbs
_U32 = struct.Struct("=I")
# One reused receive buffer: a dump's skb is at most 32 KiB here (netlink caps it), and a
# bigger one is refused (MSG_TRUNC) rather than read cut.
RECV_BYTES = 1 << 20


def _skmem_offset(buf: bytes, off: int, length: int) -> Optional[int]:
    """Offset (from the message's start) of the SKMEMINFO values inside one message,
    found by walking its attributes (the kernel adds others: shutdown, mark, sockopt)."""
    pos = _MSG_MIN
    while pos + 4 <= length:
        alen, atype = _RTA.unpack_from(buf, off + pos)
        if alen < 4:
            return None
        if atype & 0x3fff == INET_DIAG_SKMEMINFO and alen >= 4 + _SKMEM.size:
            return pos + 4
        pos += (alen + 3) & ~3
    return None


def _uniform(view: memoryview, size: int, length: int, at: int, kind: int) -> int:
    """How many messages of `length` bytes open the `size` bytes of `view`, each of type
    `kind` with SKMEMINFO at `at`: checked with strided slices (one C copy per field
    checked, no per-message Python), 0 when any differs (then the caller walks them)."""
    count = size // length
    if count == 0 or length % 4 or at % 4:
        return 0
    head = view[:count * length]
    words = head.cast("I")
    stride = length // 4
    if (words[0::stride].tobytes() != _U32.pack(length) * count
            or head[4::length].tobytes() != bytes([kind & 0xff]) * count
            or head[5::length].tobytes() != bytes([kind >> 8]) * count
            or words[at // 4 - 1::stride].tobytes() != _RTA.pack(4 + _SKMEM.size, INET_DIAG_SKMEMINFO) * count):
        return 0
    return count


def _skmem_buffer(view: memoryview, size: int, kind: int, fields: Sequence[int],
                  sums: List[int]) -> Tuple[int, bool]:
    """Add one recv()'s SKMEMINFO values (the `fields` indexes of SKMEM_FIELDS) into
    `sums`; (sockets seen, dump done).

    A dump's messages usually share one length and layout: then each wanted field is
    summed over a strided slice of the buffer cast to u32 (sum() over a memoryview, in
    C), nothing else decoded; the rest (the last buffer, holding NLMSG_DONE, or a
    message laid out apart) is walked message by message."""
    count, start = 0, 0
    if size >= 16:
        length = _NLMSG.unpack_from(view)[0]
        at = _skmem_offset(view, 0, length) if _MSG_MIN <= length <= size else None
        count = _uniform(view, size, length, at, kind) if at is not None else 0
        if count:
            words = view[:count * length].cast("I")
            for j, i in enumerate(fields):
                sums[j] += sum(words[at // 4 + i::length // 4])
            start = count * length
            if start == size:
                return count, False
    rest = bytes(view[start:size])
    offsets, done = _messages(rest)
    for off in offsets:
        pos = _skmem_offset(rest, off, _NLMSG.unpack_from(rest, off)[0])
        if pos is not None:
            values = _SKMEM.unpack_from(rest, off + pos)
            for j, i in enumerate(fields):
                sums[j] += values[i]
    return count + len(offsets), done


def _skmem_request(family: int, states: int, bytecode: bytes) -> Tuple[bytes, int]:
    """(request, the type its answers carry): v1 for AF_UNSPEC, v2 for one family."""
    ext = 1 << (INET_DIAG_SKMEMINFO - 1)
    if family != socket.AF_UNSPEC:
        request = bytearray(_dump_request(family, states, bytecode))
        request[16 + 2] = ext          # inet_diag_req_v2.idiag_ext
        return bytes(request), SOCK_DIAG_BY_FAMILY
    body = _DIAG_REQ_V1.pack(0, 0, 0, ext, bytes(48), states, 0)
    if bytecode:
        body += struct.pack("=HH", 4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    head = _NLMSG.pack(16 + len(body), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    return head + body, TCPDIAG_GETSOCK


def dump_skmem(family: int, states: int, bytecode: bytes,
               fields: Sequence[str] = SKMEM_FIELDS) -> Tuple[int, List[int]]:
    """The sockets of `family` (AF_UNSPEC: IPv4 and IPv6 in one walk) in `states`
    accepted by `bytecode` (the kernel filters), counted, with the sums of their
    SKMEMINFO `fields` (bytes except drops).  One dump into one reused buffer; nothing
    decoded but those numbers.  A kernel refusing the v1 request (EINVAL, ENOENT)
    raises OSError: the caller asks per family."""
    index = [SKMEM_FIELDS.index(f) for f in fields]
    sums = [0] * len(index)
    count = 0
    request, kind = _skmem_request(family, states, bytecode)
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    with _socket() as sock:
        sock.send(request)
        while True:
            size = sock.recv_into(buf, 0, socket.MSG_TRUNC)
            if size > len(buf):
                raise OSError(errno.EMSGSIZE, f"sock_diag dump: a {size:,}-byte answer")
            seen, done = _skmem_buffer(view, size, kind, index, sums)
            count += seen
            if done:
                return count, sums
