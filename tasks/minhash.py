"""MinHash signatures computed a batch of documents at a time, bit-identical to datasketch.

Text is folded as exact dedup folds it (case, punctuation, whitespace; NFKC for non-ASCII),
then cut into shingles: word n-grams (default) or byte n-grams of the folded text. Each
shingle gets a 32-bit hash, `shingle_hash`, a polynomial over its bytes that numpy can
compute for every shingle of a batch at once from prefix sums. The permutations are
datasketch's default scheme ("affine32": MurmurHash3 fmix32, then a*h + b mod 2^32 with
a, b drawn from `numpy.random.RandomState(seed)`), so

    datasketch.MinHash(num_perm, seed=seed, hashfunc=shingle_hash).update_batch(shingles(text, cfg))

has exactly the hash values `signatures([text], cfg)[0]` has (tested), and our signatures
can go into datasketch's MinHashLSH, LeanMinHash or its Redis storage.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.exact_dedup import ExactDedupConfig, fold_column, normalize_bytes
from tasks.langid import UNSPACED_SCRIPTS

_FOLD = ExactDedupConfig()  # lower case, no punctuation, single spaces, NFKC
_P = 0x100000001B3  # byte polynomial base (odd, so invertible mod 2^64)
_Q = 0x9E3779B97F4A7C15  # word polynomial base (odd)
_M64 = (1 << 64) - 1
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
MAX_HASH = np.uint32(0xFFFFFFFF)  # the value of every slot of an empty signature
SIGNATURE_BYTES = 1 << 20  # text signed at once (its hashes' arrays then fit the CPU's caches)
SHINGLE_CHUNK = 1 << 14  # shingles permuted at once (bounds memory: chunk x num_perm x 4 bytes)


# ---- the reference definitions (plain Python; what datasketch is given) ----------------------

def _poly(data: bytes) -> int:
    h, power = 0, 1
    for byte in data:
        h = (h + byte * power) & _M64
        power = (power * _P) & _M64
    return h


def shingle_hash(shingle: bytes) -> int:
    """32-bit hash of one shingle: words are hashed as byte polynomials and combined as a
    polynomial in _Q; a byte n-gram (its spaces made NUL) is one "word"."""
    h, power = 0, 1
    for word in shingle.split(b" "):
        h = (h + _poly(word) * power) & _M64
        power = (power * _Q) & _M64
    return (h ^ (h >> 32)) & 0xFFFFFFFF


def fold(text: str) -> bytes:
    return normalize_bytes(text, _FOLD)


def shingles(text: str, n: int = 5, kind: str = "word") -> list[bytes]:
    """The shingles of one text, in order (a text shorter than n is one shingle; none if empty)."""
    folded = fold(text)
    if kind == "char":  # spaces become NUL so a byte n-gram hashes as one "word"
        folded = folded.replace(b" ", b"\0")
        if not folded:
            return []
        return [folded[i: i + n] for i in range(max(1, len(folded) - n + 1))]
    words = folded.split()
    if not words:
        return []
    return [b" ".join(words[i: i + n]) for i in range(max(1, len(words) - n + 1))]


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters for (num_perm, seed)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


# ---- the vectorized path ----------------------------------------------------------------------

_powers: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _power_table(base: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """base^i and base^-i mod 2^64 for i < length (cached, grown by doubling)."""
    have = _powers.get(base)
    if have is None or len(have[0]) < length:
        size = max(length, 1 << 16, 2 * len(have[0]) if have else 0)
        inverse = pow(base, -1, 1 << 64)
        up = np.full(size, base, dtype=np.uint64)
        down = np.full(size, inverse, dtype=np.uint64)
        up[0] = down[0] = 1
        with np.errstate(over="ignore"):
            have = (np.cumprod(up, dtype=np.uint64), np.cumprod(down, dtype=np.uint64))
        _powers[base] = have
    return have


def _range_hashes(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, base: int) -> np.ndarray:
    """sum(values[j] * base^(j - s) for j in [s, e)) mod 2^64 for every range, via prefix sums."""
    up, down = _power_table(base, len(values) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(values) + 1, dtype=np.uint64)
        np.cumsum(values.astype(np.uint64) * up[: len(values)], out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * down[starts]


def _windows(first_unit: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's windows of n units (bytes or words), given each row's first unit index: a row
    shorter than n is one window, an empty row has none. Returns window starts, window ends,
    and each row's first window index."""
    units = np.diff(first_unit)
    counts = np.where(units > 0, np.maximum(1, units - n + 1), 0)
    row = np.repeat(np.arange(len(units)), counts)
    first = np.zeros(len(units) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    starts = first_unit[row] + (np.arange(len(row)) - first[row])
    return starts, np.minimum(starts + n, first_unit[row + 1]), first


def shingle_hashes(texts: pa.StringArray, n: int = 5, kind: str = "word") -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every shingle of every text, and each text's first shingle index."""
    folded, offsets = fold_column(texts, _FOLD)
    data = np.frombuffer(folded, dtype=np.uint8)
    if kind == "char":
        starts, ends, first = _windows(offsets, n)
        h = _range_hashes(np.where(data == 32, np.uint8(0), data), starts, ends, _P)
    else:
        space = data == 32
        rows = offsets[:-1] < offsets[1:]
        # word boundaries: a word starts after a space or at a row start, ends at a space or row end
        is_start = ~space
        is_start[1:] &= space[:-1]
        is_start[offsets[:-1][rows]] = ~space[offsets[:-1][rows]]
        is_end = ~space
        is_end[:-1] &= space[1:]
        is_end[offsets[1:][rows] - 1] = ~space[offsets[1:][rows] - 1]
        word_starts = np.flatnonzero(is_start)
        words = _range_hashes(data, word_starts, np.flatnonzero(is_end) + 1, _P)
        starts, ends, first = _windows(np.searchsorted(word_starts, offsets), n)
        h = _range_hashes(words, starts, ends, _Q)
    with np.errstate(over="ignore"):
        return ((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32), first


def _fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    with np.errstate(over="ignore"):
        h = h ^ (h >> s1)
        h = h * m1
        h = h ^ (h >> s2)
        h = h * m2
        return h ^ (h >> s3)


def signatures(texts, num_perm: int = 128, seed: int = 1, n: int = 5, kind: str = "word") -> np.ndarray:
    """MinHash signatures (uint32, one row per text; an empty text's row is all MAX_HASH)."""
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(texts, pa.string())
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    ends = np.cumsum(pc.binary_length(texts).to_numpy(zero_copy_only=False))
    if len(texts) < 2 or ends[-1] <= 2 * SIGNATURE_BYTES:
        return _signatures(texts, num_perm, seed, n, kind)
    # a part at a time: the passes over its shingles' uint64 hashes (8x the text) stay in the CPU's caches
    # instead of streaming through memory, which two workers on one memory bus then share
    cuts = np.unique(np.searchsorted(ends, np.arange(SIGNATURE_BYTES, ends[-1], SIGNATURE_BYTES), side="right"))
    bounds = [0, *cuts[(cuts > 0) & (cuts < len(texts))].tolist(), len(texts)]
    return np.concatenate([_signatures(texts[lo:hi], num_perm, seed, n, kind) for lo, hi in itertools.pairwise(bounds)])


def _signatures(texts: pa.StringArray, num_perm: int, seed: int, n: int, kind: str) -> np.ndarray:
    hashes, first = shingle_hashes(texts, n, kind)
    a, b = permutations(num_perm, seed)
    a, b = a[:, None], b[:, None]
    mixed = _fmix32(hashes)
    out = np.full((num_perm, len(texts)), MAX_HASH, dtype=np.uint32)  # slot-major: contiguous reductions
    counts = np.diff(first)
    docs = np.flatnonzero(counts)
    buffer = np.empty((num_perm, SHINGLE_CHUNK), dtype=np.uint32)
    lo = 0
    while lo < len(docs):  # chunks of whole documents, about SHINGLE_CHUNK shingles each
        hi = int(np.searchsorted(first[docs + 1], first[docs[lo]] + SHINGLE_CHUNK, side="right"))
        hi = max(hi, lo + 1)
        chunk = docs[lo:hi]
        s, e = int(first[chunk[0]]), int(first[chunk[-1] + 1])
        if e - s > buffer.shape[1]:  # one document with more shingles than a chunk
            buffer = np.empty((num_perm, e - s), dtype=np.uint32)
        permuted = buffer[:, : e - s]
        np.multiply(a, mixed[None, s:e], out=permuted)
        np.add(permuted, b, out=permuted)
        out[:, chunk] = np.minimum.reduceat(permuted, first[chunk] - s, axis=1)
        lo = hi
    return np.ascontiguousarray(out.T)


# In scripts written without spaces between words a "word" split at spaces is a whole clause: shingles there
# are made of characters.
_UNSPACED_RE2 = "[" + UNSPACED_SCRIPTS + "]"
UNSPACED_SHARE = 0.3  # a document whose characters are at least this share unspaced script gets character shingles


def unspaced_rows(texts: pa.StringArray) -> np.ndarray:
    """Which documents are written mostly in scripts without spaces between words."""
    count = pc.count_substring_regex(texts, _UNSPACED_RE2).to_numpy(zero_copy_only=False)
    length = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
    return (count > 0) & (count >= UNSPACED_SHARE * np.maximum(length, 1))


def space_characters(texts: pa.StringArray) -> pa.StringArray:
    """Every character of an unspaced script made a word of its own ("深度学习" -> " 深  度  学  习 "), so
    word n-grams over the result are character n-grams (Latin words inside stay words)."""
    return pc.replace_substring_regex(texts, "(" + _UNSPACED_RE2 + ")", " \\1 ")


def signatures_by_script(texts, num_perm: int = 128, seed: int = 1, n: int = 5, char_n: int = 3) -> np.ndarray:
    """Signatures with the shingles that suit each document: word n-grams, or character n-grams (`char_n`)
    for a document in an unspaced script (Chinese, Japanese, Thai...). Each row equals `signatures` of the
    same text (spaced by `space_characters` where unspaced), so datasketch still agrees bit for bit."""
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(texts, pa.string())
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    rows = unspaced_rows(texts)
    if not rows.any():
        return signatures(texts, num_perm, seed, n, "word")
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    if (~rows).any():
        out[~rows] = signatures(texts.filter(pa.array(~rows)), num_perm, seed, n, "word")
    out[rows] = signatures(space_characters(texts.filter(pa.array(rows))), num_perm, seed, char_n, "word")
    return out


def shingle_sets(texts, n: int = 5, kind: str = "auto", char_n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Each text's set of shingle hashes, the very shingles its signature is made of (`kind` auto: character
    n-grams where the text is in an unspaced script, as `signatures_by_script`), for exact Jaccard
    similarities: (values, offsets), text i's set sorted and unique in values[offsets[i]:offsets[i + 1]]."""
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(texts, pa.string())
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if kind != "auto":
        groups = [(np.arange(len(texts)), texts, n, kind)]
    else:
        rows = unspaced_rows(texts)
        groups = [(np.flatnonzero(~rows), texts.filter(pa.array(~rows)), n, "word"),
                  (np.flatnonzero(rows), space_characters(texts.filter(pa.array(rows))), char_n, "word")]
    keys = []
    for where, group, size, how in groups:
        if len(where):
            hashes, first = shingle_hashes(group, size, how)
            owner = np.repeat(where.astype(np.uint64), np.diff(first))
            keys.append((owner << np.uint64(32)) | hashes.astype(np.uint64))
    key = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)  # sorted by (text, hash), unique
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=len(texts)), out=offsets[1:])
    return (key & np.uint64(0xFFFFFFFF)).astype(np.uint32), offsets


def _gather(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sets of `rows` back to back, and for each element the position of its row in `rows`."""
    lengths = offsets[rows + 1] - offsets[rows]
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    starts = np.repeat(offsets[rows] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return values[np.arange(len(owner)) + starts], owner


def exact_jaccard(sets: tuple[np.ndarray, np.ndarray], ia: np.ndarray, ib: np.ndarray,
                  chunk: int = 1 << 21) -> np.ndarray:
    """Jaccard similarity of the shingle sets (`shingle_sets`) of each pair (ia[k], ib[k]): the pairs'
    elements tagged by pair, each of b's looked up among a's; vectorized, in chunks of about `chunk` elements."""
    values, offsets = sets
    sizes = np.diff(offsets)
    out = np.zeros(len(ia), dtype=np.float64)
    per_pair = sizes[ia] + sizes[ib]
    lo = 0
    while lo < len(ia):
        hi = max(lo + 1, int(np.searchsorted(np.cumsum(per_pair[lo:]), chunk, side="right")) + lo)
        a, b = ia[lo:hi], ib[lo:hi]
        va, oa = _gather(values, offsets, a)
        vb, ob = _gather(values, offsets, b)
        # (pair, element) keys: each side is sorted already (pairs in order, a set's elements sorted and
        # unique), so an element of b is in a where the search through a's keys lands on it
        key_a = (oa.astype(np.uint64) << np.uint64(32)) | va
        key_b = (ob.astype(np.uint64) << np.uint64(32)) | vb
        if len(key_a):
            at = np.minimum(np.searchsorted(key_a, key_b), len(key_a) - 1)
            inter = np.bincount(ob[key_a[at] == key_b], minlength=hi - lo)
        else:
            inter = np.zeros(hi - lo, dtype=np.int64)
        union = sizes[a] + sizes[b] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:hi] = np.where((sizes[a] > 0) & (sizes[b] > 0), inter / np.maximum(union, 1), 0.0)
        lo = hi
    return out


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of row pairs: the share of equal slots."""
    return (sig_a == sig_b).mean(axis=-1)
