"""Perceptual hashes, so the spool keeps different pictures rather than many of the same.

A 64-bit difference hash (dHash): the crop is shrunk to 9x8 grey pixels and each bit says
whether a pixel is brighter than its right-hand neighbour. It survives re-encoding, small
resizes and exposure changes, costs a few microseconds on a small crop, and two hashes compare
with one XOR and a popcount. :class:`HashIndex` answers "is anything already kept within N
bits of this?" over a few thousand hashes with one vectorised numpy pass.
"""

from __future__ import annotations

import numpy as np

HASH_BITS = 64
_NO_MATCH = HASH_BITS + 1
# Set bits of every byte value: numpy < 2 has no popcount ufunc (Debian 12 ships numpy 1.24).
_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount_table(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64, by a byte lookup table: works on every numpy >= 1.24."""
    as_bytes = np.ascontiguousarray(values, dtype=np.uint64).view(np.uint8)
    return _BYTE_BITS[as_bytes].reshape(-1, 8).sum(axis=1, dtype=np.int64)


# numpy >= 2.0's ufunc is ~5x faster; the table gives the same answer where it is missing.
popcount = getattr(np, "bitwise_count", popcount_table)


def hash_thumbnail(image: np.ndarray) -> np.ndarray:
    """The small grey image :func:`dhash` hashes (at most 72x64): ``dhash`` of it equals
    ``dhash`` of ``image``, so a visit can keep this instead of a megabyte-sized crop."""
    import cv2  # here, not at import: the spool CLI needs this module but never hashes

    if image.size == 0:
        return image
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else
                             cv2.COLOR_BGRA2GRAY)
    # INTER_AREA averages every source pixel, which is what makes the hash resize-stable; the
    # 72x64 step (an exact 8x shrink of the target) halves its cost on typical crops.
    if image.shape[0] > 64 and image.shape[1] > 72:
        image = cv2.resize(image, (72, 64), interpolation=cv2.INTER_AREA)
    return image


def dhash(image: np.ndarray) -> int:
    """The 64-bit difference hash of a BGR or grey image (any size, any dtype cv2 resizes)."""
    import cv2

    if image.size == 0:
        raise ValueError("cannot hash an empty image")
    small = cv2.resize(hash_thumbnail(image), (9, 8),
                       interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Bits that differ between two hashes."""
    return (a ^ b).bit_count()


def to_signed(value: int) -> int:
    """A 64-bit hash as SQLite's signed INTEGER (the bits unchanged)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def from_signed(value: int) -> int:
    """Inverse of :func:`to_signed`."""
    return value + (1 << 64) if value < 0 else value


class HashIndex:
    """Hashes of kept samples, each with a rank (how well labelled it is), keyed by sample id.

    Not thread-safe; the owner holds its own lock. Removal leaves a tombstone that the next
    growth compacts away, so add, remove and query stay cheap at spool sizes (~10^4).
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._hashes = np.zeros(capacity, dtype=np.uint64)
        self._ranks = np.full(capacity, -1, dtype=np.int8)
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._pos: dict[int, int] = {}
        self._used = 0

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, key: int) -> bool:
        return key in self._pos

    def add(self, key: int, value: int, rank: int = 0) -> None:
        """Remember ``value`` for ``key`` (replacing an earlier one)."""
        self.remove(key)
        if self._used == len(self._hashes):
            self._grow()
        i = self._used
        self._hashes[i], self._ranks[i], self._keys[i] = np.uint64(value), rank, key
        self._pos[key] = i
        self._used += 1

    def remove(self, key: int) -> None:
        if (i := self._pos.pop(key, None)) is not None:
            self._ranks[i] = -1

    def set_rank(self, key: int, rank: int) -> None:
        if (i := self._pos.get(key)) is not None:
            self._ranks[i] = rank

    def nearest(self, value: int, min_rank: int = 0) -> int:
        """Smallest Hamming distance to a hash of rank >= ``min_rank`` (65 when there is none)."""
        live = self._ranks[: self._used] >= min_rank
        if not live.any():
            return _NO_MATCH
        diff = np.bitwise_xor(self._hashes[: self._used][live], np.uint64(value))
        return int(popcount(diff).min())

    def _grow(self) -> None:
        live = self._ranks[: self._used] >= 0
        hashes, ranks, keys = self._hashes[: self._used][live], self._ranks[: self._used][live], \
            self._keys[: self._used][live]
        capacity = max(1024, 2 * len(hashes))
        self._hashes = np.zeros(capacity, dtype=np.uint64)
        self._ranks = np.full(capacity, -1, dtype=np.int8)
        self._keys = np.zeros(capacity, dtype=np.int64)
        n = len(hashes)
        self._hashes[:n], self._ranks[:n], self._keys[:n] = hashes, ranks, keys
        self._pos = {int(k): i for i, k in enumerate(keys)}
        self._used = n
