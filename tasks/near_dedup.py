"""Stage 04_near_dedup: MinHash LSH clusters of near-duplicate documents; one of each is kept.

Five phases, each resumable, with memory bounded by a shard or a partition:

    signature  per shard: MinHash signatures (tasks.minhash, bit-identical to datasketch)
               saved for later phases; each band of each signature becomes a 64-bit band
               key, spilled to P partition files by key
    pairs      per partition: sort band keys; documents sharing a key are candidate pairs
               (all pairs of a small bucket; a star and near neighbours in a large one)
    sets       per shard: the shingle sets of its documents in candidate pairs (verify = exact)
    cluster    once: verify candidates by exact (or estimated) Jaccard, union-find by
               connected components, pick the kept document of each cluster, write the
               report; memory grows with the candidate pairs, not the corpus
    filter     per shard: write kept documents; the others go to _removed/ with the
               cluster id, the kept id and their similarity to it

Bands and rows come from the threshold the way datasketch picks them (minimizing the
weighted false positive and false negative probability), unless set explicitly. The result
depends only on the input: not on the number of workers, shards or partitions.

    loom step near_dedup --input corpus.jsonl --output /tmp/near
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import feather
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks import charts
from tasks.charts import SIMILARITY_PNG
from tasks.lsh import band_keys, components, doc_key, estimated_similarity, optimal_param, split_doc_key
from tasks.manifest import write_json_atomic
from tasks.minhash import MAX_HASH, exact_jaccard, shingle_sets, signatures, signatures_by_script
from tasks.near_dedup_report import locators, render_report
from tasks.shards import filter_shard, iter_batches
from tasks.stage import Stage, StageContext, UnitResult

REPORT_MD = "near_dedup_report.md"
REPORT_JSON = "near_dedup_report.json"
BATCH_ROWS = 4096
BATCH_BYTES = 4 << 20  # of text per signature or shingle-set call: their arrays take ~40 bytes per text byte
MIN_PARTITIONS, MIN_PARTITION_ROWS = 8, 100_000  # band keys: see NearDedup._partitions
PAIR_WINDOW = 7  # in a bucket, documents this close in order are candidate pairs (all of a bucket of 8)
_KEY_SCHEMA = pa.schema([("band", pa.uint16()), ("key", pa.uint64()), ("doc", pa.uint64())])
_EDGE_SCHEMA = pa.schema([("a", pa.uint64()), ("b", pa.uint64())])


class NearDedupConfig(BaseModel):
    """What counts as a near duplicate, and which copy stays."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity above which documents are near duplicates.")
    num_perm: int = Field(128, ge=2, le=1024, description="MinHash permutations (signature length).")
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations (datasketch's `seed`).")
    shingle: Literal["auto", "word", "char"] = Field(
        "auto", description="auto: word n-grams, and character n-grams for a document written mostly in a script "
        "without spaces between words (Chinese, Japanese, Thai...); word; or char (byte n-grams, for short texts).")
    ngram: int = Field(5, ge=1, le=64, description="Shingle length in words (or bytes, with shingle = char).")
    char_ngram: int = Field(3, ge=1, le=64, description="With shingle = auto: shingle length in characters for "
                            "unspaced scripts (3: a paragraph of 100 characters with three changed stays above 0.8).")
    bands: int | None = Field(None, ge=1, description="LSH bands; default: chosen from the threshold.")
    rows: int | None = Field(None, ge=1, description="Rows per band; default: chosen from the threshold.")
    false_positive_weight: float | None = Field(
        None, ge=0, le=1,
        description="Weight of false positives when choosing bands (false negatives get 1 minus it). Default: "
                    "0.05 with verification (it drops false candidates, so misses cost more), else 0.5 as datasketch.",
    )
    verify: Literal["exact", "estimated", "none"] = Field(
        "exact", description="Drop candidate pairs whose Jaccard is below the threshold: exact (over the two "
        "documents' shingle sets: no pair lost to the estimate's noise, about 0.035 at 0.8 with 128 "
        "permutations), estimated (from the signatures; no second read of the text) or none.")
    keep: Literal["first", "longest"] = Field(
        "first", description="Which document of a cluster stays: first in input order, or the longest."
    )
    rows_per_partition: int = Field(
        4_000_000, gt=0, description="Band keys per spill partition (bounds the memory of the pairs phase)."
    )
    report_clusters: int = Field(10, ge=0, description="Largest clusters and example pairs shown in the report.")

    @model_validator(mode="after")
    def _bands_fit(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def lsh_params(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        fp = self.false_positive_weight
        if fp is None:
            fp = 0.05 if self.verify != "none" else 0.5
        return optimal_param(self.threshold, self.num_perm, fp, 1 - fp)


def _in_order(n: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of n sets from parts of (their positions, their values, their offsets)."""
    sizes = np.zeros(n, dtype=np.int64)
    for pos, _, offs in parts:
        sizes[pos] = np.diff(offs)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=np.uint32)
    for pos, vals, offs in parts:  # each part's sets to their documents' places
        values[np.repeat(offsets[pos] - offs[:-1], np.diff(offs)) + np.arange(len(vals))] = vals
    return values, offsets


def _save_atomic(path, save) -> None:
    """`save(file)` into a temporary name beside `path`, then renamed: a killed unit leaves no half file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        save(f)
    tmp.replace(path)


class NearDedup(Stage):
    """Cluster near-duplicate documents with MinHash LSH; keep one per cluster."""

    name = "04_near_dedup"
    Config = NearDedupConfig
    phases = ("signature", "pairs", "sets", "cluster", "filter")
    owned_outputs = (*Stage.owned_outputs, REPORT_MD, REPORT_JSON, SIMILARITY_PNG)

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        if phase == "pairs":
            return [f"p{p:04d}" for p in range(self._partitions(ctx))]
        if phase == "cluster":
            return ["all"]
        return ctx.input_shard_names()

    def _partitions(self, ctx: StageContext) -> int:
        """How many partitions the band keys are spilled to, one pairs unit each: `rows_per_partition` bounds a
        unit's memory, and keys that fit one are still cut into up to MIN_PARTITIONS of MIN_PARTITION_ROWS or
        more, so that the pairs phase of a 100 MB corpus runs on every worker. A number from the data alone,
        not the workers: a run resumed with other workers finds the same partitions."""
        bands = self.config.lsh_params()[0]
        return max(ctx.partitions(self.config.rows_per_partition, bands),
                   min(MIN_PARTITIONS, ctx.partitions(MIN_PARTITION_ROWS, bands)))

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        return {"signature": self._signature, "pairs": self._pairs, "sets": self._sets, "cluster": self._cluster,
                "filter": self._filter}[phase](ctx, key)

    # ---- signature: per shard -------------------------------------------------------------

    def _signature(self, ctx: StageContext, key: str) -> UnitResult:
        cfg = self.config
        bands, rows = cfg.lsh_params()
        shard = ctx.input_shard_names().index(key)
        parts = self._partitions(ctx)
        sig_path = ctx.work_dir / "sig" / f"{key}.u32"
        sig_path.parent.mkdir(parents=True, exist_ok=True)
        spills: dict[int, list[pa.Table]] = {p: [] for p in range(parts)}
        lengths, offset, empty = [], 0, 0
        with open(sig_path, "wb") as sig_file:
            for batch in iter_batches(ctx.input_dir / f"{key}.parquet", BATCH_ROWS, columns=["text"],
                                      max_bytes=BATCH_BYTES):
                text = batch.column("text")
                sig = (signatures_by_script(text, cfg.num_perm, cfg.seed, cfg.ngram, cfg.char_ngram)
                       if cfg.shingle == "auto" else signatures(text, cfg.num_perm, cfg.seed, cfg.ngram, cfg.shingle))
                sig_file.write(sig.tobytes())
                lengths.append(pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64))
                has = ~(sig == MAX_HASH).all(axis=1)  # no shingles: never a near duplicate
                empty += int((~has).sum())
                local = np.flatnonzero(has)
                keys = band_keys(sig[local], bands, rows)
                docs = np.repeat(doc_key(shard, local + offset), bands)
                band = np.tile(np.arange(bands, dtype=np.uint16), len(local))
                flat = keys.reshape(-1)
                which = flat % np.uint64(parts)
                for p in range(parts):
                    mask = which == p
                    spills[p].append(pa.table({"band": band[mask], "key": flat[mask], "doc": docs[mask]},
                                              schema=_KEY_SCHEMA))
                offset += len(sig)
        np.save(ctx.work_dir / "sig" / f"{key}.len.npy", np.concatenate(lengths) if lengths else np.zeros(0, np.int64))
        for p, tables in spills.items():
            out = ctx.work_dir / "keys" / f"p{p:04d}" / f"{key}.arrow"
            out.parent.mkdir(parents=True, exist_ok=True)
            feather.write_feather(pa.concat_tables(tables) if tables else _KEY_SCHEMA.empty_table(), out,
                                  compression="lz4")
        return {"stats": {"documents_without_shingles": empty}}

    # ---- pairs: per partition ----------------------------------------------------------------

    def _pairs(self, ctx: StageContext, key: str) -> UnitResult:
        files = sorted((ctx.work_dir / "keys" / key).glob("*.arrow"))
        table = pa.concat_tables([feather.read_table(f) for f in files]) if files else _KEY_SCHEMA.empty_table()
        table = table.sort_by([("band", "ascending"), ("key", "ascending"), ("doc", "ascending")])
        band = table.column("band").to_numpy()
        keys = table.column("key").to_numpy()
        docs = table.column("doc").to_numpy()
        # Verification can cut an edge between two copies edited apart, so a bucket is not just chained: every
        # pair of documents at most PAIR_WINDOW apart in it (all pairs of a small bucket) and a star from its
        # first document (a large bucket: linear in its size).
        starts = np.ones(len(docs), dtype=bool)
        starts[1:] = (band[1:] != band[:-1]) | (keys[1:] != keys[:-1])
        bucket = np.cumsum(starts)
        head = np.maximum.accumulate(np.where(starts, np.arange(len(docs)), 0))
        a, b = [docs[head[~starts]]], [docs[~starts]]
        for d in range(1, PAIR_WINDOW + 1):
            same = bucket[d:] == bucket[:-d]
            a.append(docs[:-d][same])
            b.append(docs[d:][same])
        edges = pa.table({"a": np.concatenate(a), "b": np.concatenate(b)}, schema=_EDGE_SCHEMA)
        out = ctx.work_dir / "edges" / f"{key}.arrow"
        out.parent.mkdir(parents=True, exist_ok=True)
        feather.write_feather(edges, out, compression="lz4")
        if self.config.verify == "exact":  # each shard's documents in these pairs, for its shingle sets
            shard_of, row_of = split_doc_key(np.unique(np.concatenate([edges.column("a").to_numpy(),
                                                                       edges.column("b").to_numpy()])))
            names = ctx.input_shard_names()
            for shard in np.unique(shard_of):
                rows = ctx.work_dir / "nodes" / names[shard] / f"{key}.npy"
                rows.parent.mkdir(parents=True, exist_ok=True)
                _save_atomic(rows, lambda f, s=shard: np.save(f, row_of[shard_of == s]))
        return {"stats": {"bucket_pairs": edges.num_rows}}

    # ---- sets: per shard --------------------------------------------------------------------

    def _sets(self, ctx: StageContext, key: str) -> UnitResult:
        """The shingle sets of this shard's documents in candidate pairs, computed where the shards are read
        in parallel rather than in the one cluster unit: (rows, values, offsets) as `shingle_sets` gives them."""
        files = sorted((ctx.work_dir / "nodes" / key).glob("*.npy"))
        if not files:
            return {}
        cfg = self.config
        rows = np.unique(np.concatenate([np.load(f) for f in files]))
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (positions in rows, values, offsets)
        offset = 0
        for batch in iter_batches(ctx.input_dir / f"{key}.parquet", BATCH_ROWS, columns=["text"],
                                  max_bytes=BATCH_BYTES):
            lo, hi = np.searchsorted(rows, [offset, offset + batch.num_rows])
            if hi > lo:
                texts = batch.column("text").take(pa.array(rows[lo:hi] - offset))
                parts.append((np.arange(lo, hi), *shingle_sets(texts, cfg.ngram, cfg.shingle, cfg.char_ngram)))
            offset += batch.num_rows
        values, offsets = _in_order(len(rows), parts)
        out = ctx.work_dir / "sets" / f"{key}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(out, lambda f: np.savez(f, rows=rows, values=values, offsets=offsets))
        return {}

    # ---- cluster: once ----------------------------------------------------------------------

    def _signatures_of(self, ctx: StageContext, docs: np.ndarray) -> np.ndarray:
        """Signatures of the given documents, read from the saved per-shard files."""
        out = np.empty((len(docs), self.config.num_perm), dtype=np.uint32)
        shard_of, row_of = split_doc_key(docs)
        names = ctx.input_shard_names()
        block = 65536
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            rows = row_of[where]
            with open(ctx.work_dir / "sig" / f"{names[shard]}.u32", "rb") as f:  # streamed, not mapped
                start = 0
                while len(sig := np.fromfile(f, dtype=np.uint32, count=block * self.config.num_perm)):
                    sig = sig.reshape(-1, self.config.num_perm)
                    lo, hi = np.searchsorted(rows, [start, start + len(sig)])
                    out[where[lo:hi]] = sig[rows[lo:hi] - start]
                    start += len(sig)
        return out

    def _shingle_sets(self, ctx: StageContext, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shingle sets of the given documents (those in candidate pairs), as the sets phase saved them shard by
        shard: memory holds their hashes, never their text. (values, offsets) as `shingle_sets` gives them, in
        `docs` order."""
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (positions in docs, values, offsets)
        shard_of, row_of = split_doc_key(docs)
        names = ctx.input_shard_names()
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            with np.load(ctx.work_dir / "sets" / f"{names[shard]}.npz") as saved:  # the shard's nodes, in order
                if not np.array_equal(saved["rows"], row_of[where]):
                    raise RuntimeError(f"{names[shard]}: its saved shingle sets are not of this phase's pairs")
                parts.append((where, saved["values"], saved["offsets"]))
        return _in_order(len(docs), parts)

    def _cluster(self, ctx: StageContext, key: str) -> UnitResult:
        cfg = self.config
        files = sorted((ctx.work_dir / "edges").glob("*.arrow"))
        edges = pa.concat_tables([feather.read_table(f) for f in files]) if files else _EDGE_SCHEMA.empty_table()
        a, b = edges.column("a").to_numpy(), edges.column("b").to_numpy()
        del edges
        nodes = np.unique(np.concatenate([a, b]))  # every document in some candidate pair, in input order
        n = len(nodes)
        # each pair once (a < b within a bucket), as compact node indices
        pair = np.unique(np.searchsorted(nodes, a).astype(np.int64) * n + np.searchsorted(nodes, b))
        del a, b
        ia, ib = (pair // max(n, 1)).astype(np.int32), (pair % max(n, 1)).astype(np.int32)
        candidates = len(pair)
        del pair
        sig = self._signatures_of(ctx, nodes)
        sets = self._shingle_sets(ctx, nodes) if cfg.verify == "exact" else None
        if cfg.verify != "none" and len(ia):
            similar = exact_jaccard(sets, ia, ib) if sets is not None else estimated_similarity(sig, ia, ib)
            ok = similar >= cfg.threshold
            ia, ib = ia[ok], ib[ok]
        label = components(n, ia, ib)
        # clusters of 2+ documents; nodes are sorted, so the first member of a label is its first doc
        sizes = np.bincount(label, minlength=label.max() + 1 if len(label) else 0)
        in_cluster = sizes[label] > 1 if len(label) else np.zeros(0, dtype=bool)
        members = np.flatnonzero(in_cluster)
        kept_node = self._kept_nodes(ctx, nodes, label, members)
        # number the clusters by their kept document's position in the input
        cluster_labels = np.unique(label[members])
        order = np.argsort(nodes[kept_node[cluster_labels]], kind="stable")
        cluster_id = np.empty(label.max() + 1 if len(label) else 0, dtype=np.int64)
        cluster_id[cluster_labels[order]] = np.arange(len(cluster_labels))
        gone = members[kept_node[label[members]] != members]
        keeper = kept_node[label[gone]]
        similarity = exact_jaccard(sets, gone, keeper) if sets is not None else estimated_similarity(sig, gone, keeper)
        del sig, sets

        names = ctx.input_shard_names()
        kept_ids = self._ids_of(ctx, nodes[keeper], names)
        shard_of, row_of = split_doc_key(nodes[gone])
        for shard in np.unique(shard_of):
            where = shard_of == shard
            drops = pa.table({
                "row": row_of[where].astype(np.int64),
                "kept_id": kept_ids.filter(pa.array(where)),
                "cluster_id": cluster_id[label[gone[where]]],
                "similarity": similarity[where].astype(np.float32),
            })
            out = ctx.work_dir / "drops" / f"{names[shard]}.arrow"
            out.parent.mkdir(parents=True, exist_ok=True)
            feather.write_feather(drops, out, compression="lz4")

        stats = {
            "bands": cfg.lsh_params()[0], "rows": cfg.lsh_params()[1], "candidate_pairs": int(candidates),
            "verified_pairs": len(ia), "clusters": len(cluster_labels), "documents_in_clusters": len(members),
        }
        self._report(ctx, names, nodes, label, members, kept_node, cluster_id, gone, keeper, similarity, stats)
        return {"stats": stats}

    def _kept_nodes(self, ctx, nodes, label, members) -> np.ndarray:
        """For each label, the node index of the document kept (first, or longest then first)."""
        n_labels = label.max() + 1 if len(label) else 0
        kept = np.full(n_labels, -1, dtype=np.int64)
        if self.config.keep == "first":  # members are in input order: a label's first member
            labels, first = np.unique(label[members], return_index=True)
            kept[labels] = members[first]
            return kept
        shard_of, row_of = split_doc_key(nodes[members])
        names = ctx.input_shard_names()
        lengths = np.empty(len(members), dtype=np.int64)
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            lengths[where] = np.load(ctx.work_dir / "sig" / f"{names[shard]}.len.npy")[row_of[where]]
        order = np.lexsort((members, -lengths, label[members]))  # by label, longest first, then first
        first_of_label = np.ones(len(order), dtype=bool)
        first_of_label[1:] = label[members[order]][1:] != label[members[order]][:-1]
        best = members[order][first_of_label]
        kept[label[best]] = best
        return kept

    def _ids_of(self, ctx, docs: np.ndarray, names: list[str]) -> pa.Array:
        """The id strings of documents (reading only the id column of the shards involved)."""
        shard_of, row_of = split_doc_key(docs)
        out = [None] * len(docs)
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            ids = pa.concat_arrays([b.column("id") for b in iter_batches(
                ctx.input_dir / f"{names[shard]}.parquet", 65536, columns=["id"])])
            for i, value in zip(where.tolist(), ids.take(pa.array(row_of[where])).to_pylist()):
                out[i] = value
        return pa.array(out, pa.string())

    def _report(self, ctx, names, nodes, label, members, kept_node, cluster_id, gone, keeper, similarity, stats):
        cfg = self.config
        counts = np.bincount(label[members]) if len(members) else np.zeros(0, np.int64)  # members per label
        sizes = counts[counts > 1]
        histogram = {str(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True))} if len(sizes) else {}
        # the largest clusters, and example pairs across the similarity range
        top_labels = np.unique(label[members])
        top_labels = top_labels[np.argsort(-counts[top_labels], kind="stable")][: cfg.report_clusters]
        picks = (np.unique(np.linspace(0, len(gone) - 1, min(cfg.report_clusters, len(gone))).astype(int))
                 if len(gone) else np.zeros(0, dtype=np.int64))
        picks = picks[np.argsort(similarity[picks])]
        # every text the report quotes, read in one pass over the shards
        top_kept, kept_of, gone_of = kept_node[top_labels], keeper[picks], gone[picks]
        texts = iter(self._texts(ctx, names, nodes[np.concatenate([top_kept, kept_of, gone_of]).astype(np.int64)]))
        top_texts, kept_texts, gone_texts = ([next(texts) for _ in part] for part in (top_kept, kept_of, gone_of))
        largest = []
        for lab, node, text in zip(top_labels.tolist(), top_kept.tolist(), top_texts):
            largest.append({"cluster_id": int(cluster_id[lab]), "size": int(counts[lab]),
                            "kept_at": locators(names, nodes[[node]])[0], "kept": text[:300]})
        examples = []
        kept_at, gone_at = locators(names, nodes[kept_of]), locators(names, nodes[gone_of])
        for j, (p, kt, gt) in enumerate(zip(picks.tolist(), kept_texts, gone_texts)):
            examples.append({"cluster_id": int(cluster_id[label[gone[p]]]), "similarity": round(float(similarity[p]), 3),
                             "kept_at": kept_at[j], "removed_at": gone_at[j], "kept": kt[:500], "removed": gt[:500]})
        report = {"config": cfg.model_dump(mode="json"), **stats, "cluster_sizes": histogram,
                  "largest_clusters": largest, "example_pairs": examples}
        if len(similarity):
            charts.similarity_histogram(similarity, cfg.threshold, ctx.stage_dir / SIMILARITY_PNG)
            report["similarity_chart"] = SIMILARITY_PNG
        write_json_atomic(ctx.stage_dir / REPORT_JSON, report)
        (ctx.stage_dir / REPORT_MD).write_text(render_report(report))

    def _texts(self, ctx, names, docs: np.ndarray) -> list[str]:
        """The texts of a few documents: of each shard, only the row groups that hold them."""
        shard_of, row_of = split_doc_key(docs)
        out = [""] * len(docs)
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            parquet = pq.ParquetFile(ctx.input_dir / f"{names[shard]}.parquet")
            starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows
                                      for g in range(parquet.metadata.num_row_groups)])
            group_of = np.searchsorted(starts, row_of[where], side="right") - 1
            for group in np.unique(group_of).tolist():
                chosen = where[group_of == group]
                column = parquet.read_row_group(group, columns=["text"]).column("text")
                for i, value in zip(chosen.tolist(), column.take(pa.array(row_of[chosen] - starts[group])).to_pylist()):
                    out[i] = value
        return out

    # ---- filter: per shard --------------------------------------------------------------------

    def _filter(self, ctx: StageContext, key: str) -> UnitResult:
        path = ctx.work_dir / "drops" / f"{key}.arrow"
        drops = feather.read_table(path) if path.exists() else None
        return filter_shard(ctx.input_dir / f"{key}.parquet", ctx.stage_dir, key, drops, "near_duplicate",
                            codec=ctx.codec)
