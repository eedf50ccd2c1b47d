"""MinHash LSH, the parts near dedup is made of: bands and rows chosen as datasketch chooses them, band keys,
signature similarity, and documents named by one uint64 (shard, row)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)


@lru_cache(maxsize=64)
def optimal_param(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimizing fp_weight * P(false positive) + fn_weight * P(false negative),
    integrated over similarity as datasketch.MinHashLSH does (with scipy's `quad`; the first best in its
    order of b, then r). Each integrand is a polynomial of degree b * r <= num_perm, which Gauss-Legendre
    quadrature with num_perm // 2 + 1 nodes integrates exactly (up to rounding): every pair at once, and no
    scipy.integrate to import (0.3 s in each process that plans or runs near dedup)."""
    x, w = np.polynomial.legendre.leggauss(num_perm // 2 + 1)  # on [-1, 1]
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    b, r = (np.array(column, dtype=np.float64)[:, None] for column in zip(*pairs))
    below = threshold / 2 * (x + 1)  # the nodes on [0, threshold], then on [threshold, 1]
    above = threshold + (1 - threshold) / 2 * (x + 1)
    fp = (1 - (1 - below ** r) ** b) @ (w * threshold / 2)  # a pair's band matches although below the threshold
    fn = (1 - above ** r) ** b @ (w * (1 - threshold) / 2)  # no band matches although above it
    return pairs[int(np.argmin(fp * fp_weight + fn * fn_weight))]


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The connected component of each of `n` nodes over the undirected edges (a[k], b[k]), numbered in order
    of each component's first node, as scipy's `connected_components` numbers them (without importing
    scipy.sparse.csgraph: 0.15 s in the one process that clusters). Union by hooking each root under the
    smaller root across an edge, then pointer jumping until every node points at its root (its component's
    smallest node); a few rounds, each linear in the edges."""
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        across = ra != rb
        if not across.any():
            break
        a, b, ra, rb = a[across], b[across], ra[across], rb[across]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return np.unique(parent, return_inverse=True)[1]


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
