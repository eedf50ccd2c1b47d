"""MinHash LSH, the parts near dedup is made of: bands and rows chosen as datasketch chooses them, band keys,
signature similarity, and documents named by one uint64 (shard, row)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)


@lru_cache(maxsize=64)
def optimal_param(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimizing fp_weight * P(false positive) + fn_weight * P(false negative),
    integrated over similarity as datasketch.MinHashLSH does."""
    from scipy.integrate import quad

    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp, _ = quad(lambda s, b=b, r=r: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)
            fn, _ = quad(lambda s, b=b, r=r: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)
            error = fp * fp_weight + fn * fn_weight
            if error < best:
                best, opt = error, (b, r)
    return opt


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit key of each band of each signature: shape (docs, bands)."""
    view = sig[:, : bands * rows].reshape(len(sig), bands, rows).astype(np.uint64)
    keys = np.zeros((len(sig), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            keys = (keys ^ view[:, :, j]) * _MIX
            keys ^= keys >> np.uint64(29)
    return keys


def estimated_similarity(sig: np.ndarray, ia: np.ndarray, ib: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Estimated Jaccard of the signature pairs (ia[k], ib[k]), a chunk at a time (bounded memory)."""
    out = np.empty(len(ia), dtype=np.float64)
    for s in range(0, len(ia), chunk):
        out[s: s + chunk] = (sig[ia[s: s + chunk]] == sig[ib[s: s + chunk]]).mean(axis=1)
    return out


def doc_key(shard: int, row: np.ndarray) -> np.ndarray:
    """One uint64 per document: its shard in the high 32 bits, its row in the low."""
    return (np.uint64(shard) << np.uint64(32)) | row.astype(np.uint64)


def split_doc_key(doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (doc >> np.uint64(32)).astype(np.int64), (doc & np.uint64(0xFFFFFFFF)).astype(np.int64)
