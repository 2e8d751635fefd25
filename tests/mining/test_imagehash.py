"""The perceptual-hash index, on every numpy the device may have (Debian 12: 1.24)."""

from __future__ import annotations

import numpy as np

from feederd.mining.imagehash import HashIndex, dhash, hamming, hash_thumbnail, popcount_table


def test_the_lookup_table_popcount_agrees_with_python_on_random_64_bit_values() -> None:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 2**63, size=500, dtype=np.uint64) * np.uint64(2) + \
        rng.integers(0, 2, size=500, dtype=np.uint64)
    values[:3] = [0, 2**64 - 1, 2**63]
    expected = [int(v).bit_count() for v in values]
    assert popcount_table(values).tolist() == expected


def test_nearest_returns_the_smallest_hamming_distance_to_a_kept_hash() -> None:
    index = HashIndex()
    kept = [0x0F0F_0F0F_0F0F_0F0F, 0xFFFF_0000_FFFF_0000, 0x1234_5678_9ABC_DEF0]
    for key, value in enumerate(kept):
        index.add(key, value)
    probe = 0xFFFF_0000_FFFF_0003
    assert index.nearest(probe) == min(hamming(probe, v) for v in kept) == 2


def test_nearest_ignores_removed_and_lower_ranked_hashes() -> None:
    index = HashIndex()
    index.add(1, 0xFF, rank=0)
    index.add(2, 0xF0, rank=2)
    index.add(3, 0xFE, rank=2)
    index.remove(3)
    assert index.nearest(0xFF, min_rank=1) == 4
    assert index.nearest(0xFF) == 0


def test_the_hash_thumbnail_of_a_crop_hashes_exactly_like_the_crop() -> None:
    rng = np.random.default_rng(7)
    crops = [rng.integers(0, 256, shape, dtype=np.uint8)
             for shape in ((720, 540, 3), (300, 300, 3), (50, 40, 3), (200, 90))]
    for crop in crops:
        thumb = hash_thumbnail(crop)
        assert thumb.shape[0] <= 64 or thumb.shape[1] <= 72
        assert dhash(thumb) == dhash(crop)
