"""The handoff to training: a byte-level BPE tokenizer and token shards of a run's published data.

    <run>/tokens/tokenizer.json        Hugging Face `tokenizers` byte-level BPE
                /train-part-00000.bin ...  flat uint16 (vocab <= 65,536) or uint32 token ids,
                /val-part-00000.bin ...    documents back to back, each followed by <|endoftext|>
                /index.json           dtype, vocab size, special token ids, every shard's
                                      file, split, tokens and documents, and the totals
                /_manifest.json       as every stage

Phases: `train` (once: learn the BPE merges from the published shards, or copy a given
tokenizer.json), `encode` (per published shard, in parallel: batch-encode, split train/val
by document with a seeded hash of the document id, so the split does not depend on shard
or worker counts), `index` (once). Same input and config, same bytes out.

    loom tokenize --run-id r1
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from tasks.manifest import read_manifest, write_json_atomic
from tasks.shards import OutputFile, iter_batches, list_shards, sha256_file
from tasks.stage import Stage, StageContext, UnitResult

EOT = "<|endoftext|>"
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
TOKENIZER_FILE = "tokenizer.json"
INDEX_FILE = "index.json"
TOKENS_DIR = "tokens"


class TokenizeConfig(BaseModel):
    """How text becomes token shards."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(8192, ge=300, le=1 << 20, description="BPE vocabulary size, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="A pair must occur this often to be merged.")
    tokenizer: str | None = Field(None, description="Use this tokenizer.json instead of training one.")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of documents held out for validation.")
    seed: int = Field(0, description="Seed of the train/validation split.")
    train_docs: int = Field(2_000_000, ge=1, description="At most this many documents (a seeded sample) "
                            "train the tokenizer.")
    batch_docs: int = Field(1024, ge=1, description="Documents encoded per batch.")


def is_validation(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Which documents are held out: a seeded hash of the id, so the split is the same on
    every machine, for any sharding."""
    cut = int(fraction * (1 << 32))
    return np.fromiter((xxhash.xxh32_intdigest(i.encode(), seed) < cut for i in ids), dtype=bool, count=len(ids))


def special_tokens() -> list[str]:
    return [EOT, *CHAT_TOKENS]


def train_bpe(texts, vocab_size: int, min_frequency: int = 2, length: int | None = None):
    """A byte-level BPE tokenizer learned from an iterable of texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return text_only(tokenizer)


def text_only(tokenizer):
    """Text never turns into control tokens: a document holding the string "<|endoftext|>" or "<|user|>"
    encodes it as ordinary text (as tiktoken's `disallowed_special` guards against). Control tokens enter
    a sequence only by id (end of document; the chat template in tasks/sft.py)."""
    tokenizer.encode_special_tokens = True  # a runtime setting: tokenizer.json does not keep it
    return tokenizer


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    return text_only(Tokenizer.from_file(str(path)))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def read_tokens(tokens_dir: Path, split: str = "train") -> list[np.memmap]:
    """The token shards of one split, memory-mapped (what the training loader reads)."""
    index = json.loads((Path(tokens_dir) / INDEX_FILE).read_text())
    dtype = np.dtype(index["dtype"])
    return [np.memmap(Path(tokens_dir) / s["file"], dtype=dtype, mode="r")
            for s in index["shards"] if s["split"] == split and s["tokens"]]


class Tokenize(Stage):
    """Train (or reuse) a BPE tokenizer and encode the published documents into token shards."""

    name = TOKENS_DIR
    Config = TokenizeConfig
    phases = ("train", "encode", "index")
    owned_outputs = (*Stage.owned_outputs, "*.bin", TOKENIZER_FILE, INDEX_FILE)

    def input_fingerprint(self, inputs: list[str]) -> str:
        base = super().input_fingerprint(inputs)
        if self.config.tokenizer:  # a given tokenizer is an input too
            return xxhash.xxh64_hexdigest((base + sha256_file(Path(self.config.tokenizer))).encode())
        return base

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        if phase == "encode":
            return [s.stem for s in list_shards(ctx.input_dir)]
        return ["all"]

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        return {"train": self._train, "encode": self._encode, "index": self._index}[phase](ctx, key)

    def _train(self, ctx: StageContext, key: str) -> UnitResult:
        cfg = self.config
        out = ctx.stage_dir / TOKENIZER_FILE
        if cfg.tokenizer:
            source = Path(cfg.tokenizer)
            if not source.exists():
                raise FileNotFoundError(f"tokenizer {source} does not exist")
            shutil.copyfile(source, out)
            tokenizer = load_tokenizer(out)
            missing = [t for t in special_tokens() if tokenizer.token_to_id(t) is None]
            if missing:
                raise ValueError(f"tokenizer {source} lacks the special tokens {missing}")
            return {"stats": {"vocab_size": tokenizer.get_vocab_size(), "tokenizer": "given"}}
        shards = list_shards(ctx.input_dir)
        upstream = read_manifest(ctx.input_dir)
        total = upstream.rows_out if upstream else 0
        keep = min(1.0, cfg.train_docs / max(1, total))
        cut = int(keep * (1 << 32))

        def texts():
            for shard in shards:
                for batch in iter_batches(shard, 4096, columns=["id", "text"]):
                    for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
                        if keep >= 1 or xxhash.xxh32_intdigest(doc_id.encode(), cfg.seed + 1) < cut:
                            yield text

        tokenizer = train_bpe(texts(), cfg.vocab_size, cfg.min_frequency)
        tokenizer.save(str(out))
        return {"stats": {"vocab_size": tokenizer.get_vocab_size(), "tokenizer": "trained"}}

    def _encode(self, ctx: StageContext, key: str) -> UnitResult:
        cfg = self.config
        tokenizer = load_tokenizer(ctx.stage_dir / TOKENIZER_FILE)
        dtype = token_dtype(tokenizer.get_vocab_size())
        eot = tokenizer.token_to_id(EOT)
        counts = {"train": [0, 0], "val": [0, 0]}  # tokens, documents
        tmp = {split: ctx.stage_dir / f".{split}-{key}.bin.tmp" for split in counts}
        files = {split: open(path, "wb") for split, path in tmp.items()}  # noqa: SIM115 (closed below)
        try:
            for batch in iter_batches(ctx.input_dir / f"{key}.parquet", cfg.batch_docs, columns=["id", "text"]):
                ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
                held = is_validation(ids, cfg.val_fraction, cfg.seed)
                for enc, is_val in zip(tokenizer.encode_batch(texts, add_special_tokens=False), held.tolist()):
                    split = "val" if is_val else "train"
                    tokens = np.array([*enc.ids, eot], dtype=dtype)
                    files[split].write(tokens.tobytes())
                    counts[split][0] += len(tokens)
                    counts[split][1] += 1
        finally:
            for f in files.values():
                f.close()
        outputs = []
        for split, path in tmp.items():
            final = ctx.stage_dir / f"{split}-{key}.bin"
            path.replace(final)
            outputs.append(OutputFile(final.name, "tokens", counts[split][0], final.stat().st_size, sha256_file(final)))
        return {
            "rows_in": counts["train"][1] + counts["val"][1], "rows_out": counts["train"][1] + counts["val"][1],
            "outputs": [o.to_dict() for o in outputs],
            "stats": {"train_tokens": counts["train"][0], "val_tokens": counts["val"][0],
                      "train_documents": counts["train"][1], "val_documents": counts["val"][1]},
        }

    def _index(self, ctx: StageContext, key: str) -> UnitResult:
        tokenizer = load_tokenizer(ctx.stage_dir / TOKENIZER_FILE)
        dtype = token_dtype(tokenizer.get_vocab_size())
        shards = []
        for path in sorted(ctx.stage_dir.glob("*.bin")):
            split = path.name.split("-", 1)[0]
            tokens = path.stat().st_size // dtype.itemsize
            documents = int((np.memmap(path, dtype=dtype, mode="r") == tokenizer.token_to_id(EOT)).sum()) if tokens else 0
            shards.append({"file": path.name, "split": split, "tokens": tokens, "documents": documents})
        index = {
            "dtype": dtype.name, "vocab_size": tokenizer.get_vocab_size(), "tokenizer": TOKENIZER_FILE,
            "special_tokens": {t: tokenizer.token_to_id(t) for t in special_tokens()},
            "eot_id": tokenizer.token_to_id(EOT), "val_fraction": self.config.val_fraction, "seed": self.config.seed,
            "shards": shards,
            "totals": {split: {"tokens": sum(s["tokens"] for s in shards if s["split"] == split),
                               "documents": sum(s["documents"] for s in shards if s["split"] == split)}
                       for split in ("train", "val")},
        }
        write_json_atomic(ctx.stage_dir / INDEX_FILE, index)
        files = [ctx.stage_dir / INDEX_FILE, ctx.stage_dir / TOKENIZER_FILE]
        return {"outputs": [OutputFile(p.name, "index", 0, p.stat().st_size, sha256_file(p)).to_dict() for p in files]}
