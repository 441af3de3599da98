"""Kernel memory one TCP connection costs, from slab object geometry.

Idle estimate: the slab objects each socket pins (the socket itself, its inode, the
file and dentry behind its descriptor, the LSM blobs, epoll's watch item) plus the
port bind buckets an outbound connection adds.  The size charged per object is the
*effective* size, pages_per_slab * page_size / objects_per_slab, because that is
what slab growth shows (TCP objects are 2368 bytes but 13 share 8 pages: 2521).

Worst case adds each socket's default receive and send buffers (tcp_rmem[1] +
tcp_wmem[1]), the seed post's "80000 * 131072 * 2 * 2 bytes" arithmetic: what the
host would need if every connection filled its initial buffers at once.  It is one
figure everywhere (tuner.capacity.worst_case_bytes), shown with one label (WORST_CASE).
"""
from __future__ import annotations

from typing import Dict, List, Optional

# Used when /proc/slabinfo is unreadable (not root) or a cache is merged into a
# kmalloc cache and so has no line of its own.  Effective sizes in bytes, read on
# kernel 6.18 x86_64 (this project's CI machine); they vary little across 6.x.
FALLBACK_OBJECT_BYTES: Dict[str, int] = {
    "TCP": 2521,
    "TCPv6": 2521,
    "sock_inode_cache": 862,
    "filp": 195,
    "dentry": 195,
    "lsm_inode_cache": 32,
    "lsm_file_cache": 24,
    "eventpoll_epi": 128,
    "eventpoll_pwq": 72,
    "tcp_bind_bucket": 64,
    "tcp_bind2_bucket": 64,
}

# What each socket (one end of a connection) pins while idle.
PER_SOCKET = ("TCP", "sock_inode_cache", "filp", "dentry", "lsm_inode_cache", "lsm_file_cache")
# What epoll adds for a watched socket (a server or load generator watches all of them).
PER_EPOLL_WATCH = ("eventpoll_epi", "eventpoll_pwq")
# What an outbound (connect()ed) socket adds: bind buckets for its local port.
PER_OUTBOUND = ("tcp_bind_bucket", "tcp_bind2_bucket")

# A message in flight is charged to the socket in whole pages (SK_MEM_QUANTUM).
PAGES_IN_FLIGHT_PER_CONN = 1

# The one worst-case figure's label, wherever it is shown (report, apply's plan, diagnose,
# metrics): what it includes. tuner.capacity.worst_case_bytes computes it.
WORST_CASE = "worst case (slab objects + full default buffers)"


def object_bytes(slab: Optional[Dict[str, List[int]]], cache: str, page_size: int = 4096) -> int:
    """Effective bytes of one object of `cache`, measured if possible, else the fallback."""
    if slab and cache in slab:
        objsize, per_slab, pages = slab[cache]
        if per_slab > 0:
            return max(objsize, pages * page_size // per_slab)
    return FALLBACK_OBJECT_BYTES[cache]


def breakdown(slab, page_size: int, sockets_per_conn: int, outbound_per_conn: int,
              epoll: bool = True) -> Dict[str, int]:
    """Bytes per connection by slab cache, for the idle estimate."""
    parts: Dict[str, int] = {}
    per_socket = PER_SOCKET + (PER_EPOLL_WATCH if epoll else ())
    for cache in per_socket:
        parts[cache] = sockets_per_conn * object_bytes(slab, cache, page_size)
    for cache in PER_OUTBOUND:
        parts[cache] = outbound_per_conn * object_bytes(slab, cache, page_size)
    return parts


def source(slab) -> str:
    return "slabinfo" if slab else "fallback figures (slabinfo needs root)"
