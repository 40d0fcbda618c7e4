"""Memory per registered server at 100,000 servers (tracemalloc and RSS).

Target: at most 300 bytes per server (tracemalloc), session keys and the
challenge pool included.  Reference: the Node.js original holds 394 B of heap
(675 B RSS) per server at 100,000 servers on this machine kind.  For an
in-run reference, the same records held the obvious way (a dict of small
slotted objects keyed by key id, plus an address dict) are measured too.

Run: python -m bench.registry_memory [N]
"""

import gc
import os
import sys
import tracemalloc

from homechannel.coordinator.registry import Registry


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Naive:
    __slots__ = ("kid", "addr", "seen", "rx", "tx", "txctr", "rxtop", "rxmap", "pool")


def fill(n, registry=None):
    key = os.urandom
    if registry is not None:
        for i in range(n):
            slot = registry.register(key(16), ("10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255),
                                                1024 + i % 60000), key(32), key(32), 1.0)
            registry.set_pool(slot, [(key(16), key(32)), (key(16), key(32))])
        return registry
    by_key, by_addr = {}, {}
    for i in range(n):
        r = _Naive()
        r.kid, r.addr = key(16), ("10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255),
                                  1024 + i % 60000)
        r.seen, r.rx, r.tx, r.txctr, r.rxtop, r.rxmap = 1.0, key(32), key(32), 0, 0, 0
        r.pool = [(key(16), key(32)), (key(16), key(32))]
        by_key[r.kid] = r
        by_addr[r.addr] = r
    return by_key, by_addr


def measure(n, compact):
    gc.collect()
    r0 = rss()
    tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    obj = fill(n, Registry(epoch=0.0) if compact else None)
    gc.collect()
    t1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    r1 = rss()
    # tracemalloc's own bookkeeping inflates RSS; report it as measured.
    del obj
    return (t1 - t0) / n, (r1 - r0) / n


def main(argv=()):
    n = int(argv[0]) if argv else 100_000
    traced, resident = measure(n, compact=True)
    ntraced, nresident = measure(n, compact=False)
    print(f"registry memory at {n} servers")
    print(f"  compact registry : {traced:7.1f} B/server traced, {resident:7.1f} B/server RSS "
          f"(target <= 300 traced)")
    print(f"  dict of objects  : {ntraced:7.1f} B/server traced, {nresident:7.1f} B/server RSS "
          f"(in-run reference)")
    print(f"  ratio            : {traced / ntraced:.2f} of the dict-of-objects design; "
          f"Node.js original: 394 B heap / 675 B RSS")
    return {"traced": traced, "rss": resident, "naive_traced": ntraced}


if __name__ == "__main__":
    main(sys.argv[1:])
