"""A hash index from keys to slot numbers, for tables whose records live in
one flat slab (``registry``).

Why not a dict: a dict from a 16-byte key to a slot costs about 124 bytes per
entry in CPython (the key's bytes object, the int, the dict entry and its share
of the sparse table; measured with tracemalloc); at a million servers, two such
dicts (by key id and by address) hold about 248 MB where this index holds 17 MB.  :class:`SlotIndex` stores
only ``slot + 1`` in an ``array('i')`` (0 means empty) of power-of-two size,
kept at most half full: 8 to 16 bytes per entry.  The keys themselves are not
stored here: the caller's *key_of(slot)* reads them back from its records.

Linear probing; deletion by backward shift (no tombstones), so probe chains
stay as short as if the removed key had never been inserted.  The table
doubles when it would become more than half full.

*hash_of* should be keyed (Python's ``hash`` of ``bytes`` is SipHash with a
per-process random key), so that nobody can choose keys that collide.  Tests
pass a weak hash to force collisions and wrap-around.
"""

from array import array
from typing import Callable, Hashable, Optional

MIN_CAPACITY = 8


class SlotIndex:
    """Keys to slot numbers (ints >= 0) in an open-addressing table.

    *key_of(slot)* returns the key stored for *slot*; *hash_of(key)* an int;
    *matches(slot, key)* (optional) tells whether *slot* holds *key* without
    building the key (default: ``key_of(slot) == key``).
    """

    def __init__(self, key_of: Callable[[int], Hashable], hash_of: Callable[[Hashable], int],
                 capacity: int = 1024,
                 matches: Optional[Callable[[int, Hashable], bool]] = None):
        if capacity < MIN_CAPACITY or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two >= {MIN_CAPACITY}")
        self._key_of = key_of
        self._hash_of = hash_of
        self._matches = matches or (lambda slot, key: key_of(slot) == key)
        self._table = array("i", bytes(4 * capacity))
        self._mask = capacity - 1
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def capacity(self) -> int:
        return len(self._table)

    @property
    def nbytes(self) -> int:
        """Memory held by the table itself."""
        return len(self._table) * self._table.itemsize

    def find(self, key: Hashable) -> int:
        """The slot stored for *key*, or -1."""
        table, mask, matches = self._table, self._mask, self._matches
        i = self._hash_of(key) & mask
        while True:
            v = table[i]
            if v == 0:
                return -1
            if matches(v - 1, key):
                return v - 1
            i = (i + 1) & mask

    def insert(self, key: Hashable, slot: int) -> None:
        """Store *slot* for *key*.  The caller guarantees that *key* is not in
        the index yet (``find(key) == -1``) and that ``key_of(slot) == key``."""
        if (self.count + 1) * 2 > len(self._table):
            self._grow()
        table, mask = self._table, self._mask
        i = self._hash_of(key) & mask
        while table[i]:
            i = (i + 1) & mask
        table[i] = slot + 1
        self.count += 1

    def remove(self, key: Hashable) -> bool:
        """Forget *key*; False if it was not in the index."""
        table, mask, matches = self._table, self._mask, self._matches
        i = self._hash_of(key) & mask
        while True:
            v = table[i]
            if v == 0:
                return False
            if matches(v - 1, key):
                break
            i = (i + 1) & mask   # another key in the way: probe past it
        # Backward shift: empty i, then walk the rest of the chain and move
        # back every entry whose home is not cyclically in (i, j], so that
        # each entry stays reachable from its home without a gap.
        j = i
        while True:
            table[i] = 0
            while True:
                j = (j + 1) & mask
                v = table[j]
                if v == 0:
                    self.count -= 1
                    return True
                home = self._hash_of(self._key_of(v - 1)) & mask
                if i <= j:
                    if home <= i or home > j:
                        break
                elif home <= i and home > j:
                    break
            table[i] = v
            i = j

    def _grow(self) -> None:
        old = self._table
        self._table = array("i", bytes(8 * len(old)))
        self._mask = len(self._table) - 1
        table, mask = self._table, self._mask
        for v in old:
            if v:
                i = self._hash_of(self._key_of(v - 1)) & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = v
