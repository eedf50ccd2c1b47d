"""Instruction data for fine-tuning: records of the common shapes become conversations, rendered
with the tokenizer's chat tokens, loss-masked to the responses and packed into fixed rows.

Shapes (one record each; anything else is a reject with its reason):

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}   chat
    {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}    ShareGPT
    {"instruction": ..., "input": ..., "output": ...}                             Alpaca
    {"question": ..., "answer": ...}   (GSM8K)   {"prompt": ..., "response"|"completion": ...}

The ingest stage reads them through the adapter `instruction_record` (`Ingest(adapter=instruction_record)`),
with its rejects, and stores each conversation as `{"messages": [...]}` JSON in the document's `text`.

Chat template (special tokens from `tasks.tokenize.CHAT_TOKENS`):

    <|system|>\\n{system}<|end|>\\n<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>\\n<|endoftext|>

The loss mask is 1 on the response tokens and the `<|end|>` that closes them (so the model
learns to stop) and 0 elsewhere. Rows: examples packed back to back into rows of
`block_size + 1` tokens (padded with <|endoftext|>, mask 0); an example longer than a row is
cut, and one with no response token left in the row goes to `_removed/`.

    <dir>/train-part-00000.bin        uint16/uint32 rows, (rows, block_size + 1)
         /train-part-00000.mask.bin   uint8, same shape: 1 where the token is a target
         /val-...                     the held-out split (seeded hash of the example id)
         /val_examples.jsonl          held-out conversations, for generation-based evaluation
         /index.json, /_manifest.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from tasks.manifest import write_json_atomic
from tasks.shards import REMOVED_DIR, OutputFile, ShardWriter, iter_batches, list_shards, sha256_file
from tasks.sink import InvalidRecord
from tasks.stage import Stage, StageContext, UnitResult
from tasks.tokenize import EOT, INDEX_FILE, is_validation, load_tokenizer, token_dtype

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "model": "assistant"}
VAL_EXAMPLES = "val_examples.jsonl"


class InvalidExample(InvalidRecord):
    """A record that is not an instruction example; `reason` is its rejects reason."""


def instruction_record(record: dict, text_field: str, id_field: str | None) -> dict:
    """The ingest adapter for instruction data: a fine-tuning example as a document, its conversation
    as `{"messages": [...]}` JSON text, its id kept; raises InvalidExample.

        Ingest(adapter=instruction_record)
    """
    out = {text_field: orjson.dumps({"messages": to_messages(record)}).decode()}
    if id_field and id_field in record:
        out[id_field] = record[id_field]
    return out


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidExample("bad_field", f"{field!r} is {type(value).__name__}, not text")
    return value


def to_messages(record: dict) -> list[dict]:
    """The conversation of one record, as [{"role", "content"}]; raises InvalidExample."""
    if "messages" in record or "conversations" in record:
        key = "messages" if "messages" in record else "conversations"
        turns = record[key]
        if not isinstance(turns, list) or not turns:
            raise InvalidExample("bad_messages", f"{key!r} is not a non-empty list")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise InvalidExample("bad_messages", f"{key}[{i}] is not an object")
            role = turn.get("role", turn.get("from"))
            role = SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role
            if role not in ROLES:
                raise InvalidExample("bad_messages", f"{key}[{i}] has role {role!r}; roles: {', '.join(ROLES)}")
            messages.append({"role": role, "content": _text(turn.get("content", turn.get("value")), f"{key}[{i}]")})
    elif "instruction" in record and "output" in record:
        if record.get("status", "ok") != "ok":  # alpaca-libre marks generation failures this way
            raise InvalidExample("flagged_status", f"status is {record['status']!r}")
        prompt = _text(record["instruction"], "instruction").strip()
        extra = record.get("input") or ""
        if _text(extra, "input").strip():
            prompt = f"{prompt}\n\n{extra.strip()}"
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": _text(record["output"], "output")}]
    elif "question" in record and "answer" in record:
        messages = [{"role": "user", "content": _text(record["question"], "question")},
                    {"role": "assistant", "content": _text(record["answer"], "answer")}]
    elif "prompt" in record and ("response" in record or "completion" in record):
        key = "response" if "response" in record else "completion"
        messages = [{"role": "user", "content": _text(record["prompt"], "prompt")},
                    {"role": "assistant", "content": _text(record[key], key)}]
    else:
        raise InvalidExample("not_instruction", "no messages, instruction/output, question/answer or "
                             f"prompt/response fields (has: {', '.join(sorted(map(str, record))[:8])})")
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise InvalidExample("no_response", "no assistant turn")
    if not all(m["content"].strip() for m in answers) or not any(m["content"].strip() for m in messages
                                                                    if m["role"] != "assistant"):
        raise InvalidExample("empty_text", "an empty prompt or response")
    return messages


def render(messages: list[dict], tokenizer, system_prompt: str | None = None,
           add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of a conversation. Each piece is encoded on its own, so the mask
    falls exactly on the response tokens, and a generation prompt tokenizes as training did."""
    special = {name: tokenizer.token_to_id(f"<|{name}|>") for name in (*ROLES, "end")}
    newline = tokenizer.encode("\n", add_special_tokens=False).ids
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        content = tokenizer.encode(m["content"], add_special_tokens=False).ids
        learn = int(m["role"] == "assistant")
        ids += [special[m["role"]], *newline, *content, special["end"], *newline]
        mask += [0] * (1 + len(newline)) + [learn] * (len(content) + 1) + [0] * len(newline)
    if add_generation_prompt:
        ids += [special["assistant"], *newline]
        mask += [0] * (1 + len(newline))
    else:
        ids.append(tokenizer.token_to_id(EOT))
        mask.append(0)
    return ids, mask


def pack(examples: list[tuple[list[int], list[int]]], row_len: int, pad_id: int
         ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Pack (ids, mask) examples in order into rows of `row_len`: (tokens, mask, indices of examples
    dropped because no target token fitted). Examples longer than a row are cut to it."""
    rows, masks, dropped = [], [], []
    row: list[int] = []
    row_mask: list[int] = []
    for i, (ids, mask) in enumerate(examples):
        ids, mask = ids[:row_len], mask[:row_len]
        if not any(mask[1:]):  # a target is a token after the first: nothing to learn from
            dropped.append(i)
            continue
        if len(row) + len(ids) > row_len:
            rows.append(row + [pad_id] * (row_len - len(row)))
            masks.append(row_mask + [0] * (row_len - len(row_mask)))
            row, row_mask = [], []
        row += ids
        row_mask += mask
    if row:
        rows.append(row + [pad_id] * (row_len - len(row)))
        masks.append(row_mask + [0] * (row_len - len(row_mask)))
    return (np.array(rows, dtype=np.int64).reshape(-1, row_len), np.array(masks, dtype=np.uint8).reshape(-1, row_len),
            dropped)


def read_rows(directory: Path, split: str) -> tuple[list[np.memmap], list[np.memmap], int]:
    """The packed rows of one split, memory-mapped: (token arrays, mask arrays, row length)."""
    index = json.loads((Path(directory) / INDEX_FILE).read_text())
    dtype, row_len = np.dtype(index["dtype"]), index["row_len"]
    tokens, masks = [], []
    for s in index["shards"]:
        if s["split"] == split and s["rows"]:
            tokens.append(np.memmap(Path(directory) / s["file"], dtype=dtype, mode="r").reshape(-1, row_len))
            masks.append(np.memmap(Path(directory) / s["mask"], dtype=np.uint8, mode="r").reshape(-1, row_len))
    return tokens, masks, row_len


class SftConfig(BaseModel):
    """How instruction examples become packed, loss-masked rows."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: str = Field(description="tokenizer.json with the chat tokens (the checkpoint's own).")
    block_size: int = Field(gt=1, description="The model's context length; rows hold block_size + 1 tokens.")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of examples held out.")
    seed: int = Field(0, description="Seed of the train/validation split.")
    system_prompt: str | None = Field(None, description="System message for examples without one.")


class SftTokenize(Stage):
    """Render, mask and pack instruction examples (from `01_ingest` with the instruction_record adapter)."""

    name = "sft_tokens"
    Config = SftConfig
    phases = ("encode", "index")
    owned_outputs = (*Stage.owned_outputs, "*.bin", INDEX_FILE, VAL_EXAMPLES, "val_examples-*.jsonl")

    def input_fingerprint(self, inputs: list[str]) -> str:
        import xxhash

        return xxhash.xxh64_hexdigest((super().input_fingerprint(inputs)
                                       + sha256_file(Path(self.config.tokenizer))).encode())

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        return [s.stem for s in list_shards(ctx.input_dir)] if phase == "encode" else ["all"]

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        return self._encode(ctx, key) if phase == "encode" else self._index(ctx)

    def _encode(self, ctx: StageContext, key: str) -> UnitResult:
        cfg = self.config
        tokenizer = load_tokenizer(Path(cfg.tokenizer))
        dtype = token_dtype(tokenizer.get_vocab_size())
        source = ctx.input_dir / f"{key}.parquet"
        table = pa.Table.from_batches(list(iter_batches(source, 4096)))
        ids = table.column("id").to_pylist()
        conversations = [json.loads(t)["messages"] for t in table.column("text").to_pylist()]
        held = is_validation(ids, cfg.val_fraction, cfg.seed)
        outputs, stats, dropped_rows = [], {}, []
        for split in ("train", "val"):
            chosen = [i for i in range(len(ids)) if bool(held[i]) == (split == "val")]
            examples = [render(conversations[i], tokenizer, cfg.system_prompt) for i in chosen]
            cut = sum(len(e[0]) > cfg.block_size + 1 for e in examples)
            rows, masks, dropped = pack(examples, cfg.block_size + 1, tokenizer.token_to_id(EOT))
            dropped_rows += [chosen[i] for i in dropped]
            for suffix, array in ((".bin", rows.astype(dtype)), (".mask.bin", masks)):
                path = ctx.stage_dir / f"{split}-{key}{suffix}"
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(array.tobytes())
                tmp.replace(path)
                outputs.append(OutputFile(path.name, "rows" if suffix == ".bin" else "mask", len(rows),
                                          path.stat().st_size, sha256_file(path)).to_dict())
            stats |= {f"{split}_examples": len(chosen) - len(dropped), f"{split}_rows": len(rows),
                      f"{split}_target_tokens": int(masks[:, 1:].sum()), f"{split}_cut_examples": cut}
            if split == "val":  # kept whole for generation-based evaluation (BLEU/ROUGE, exact match)
                keep = sorted(set(chosen) - {chosen[i] for i in dropped})
                path = ctx.stage_dir / f"val_examples-{key}.jsonl"
                path.write_text("".join(json.dumps({"id": ids[i], "messages": conversations[i]}) + "\n"
                                        for i in keep))
        if dropped_rows:
            gone = table.take(pa.array(sorted(dropped_rows)))
            gone = gone.append_column("reason", pa.array(["response_beyond_block_size"] * gone.num_rows))
            writer = ShardWriter(ctx.stage_dir / REMOVED_DIR, key, gone.schema, kind="removed", roll=False,
                                 base_dir=ctx.stage_dir)
            writer.write(gone)
            outputs += [o.to_dict() for o in writer.close()]
        return {"rows_in": len(ids), "rows_out": len(ids) - len(dropped_rows), "outputs": outputs, "stats": stats,
                "removed": {"response_beyond_block_size": len(dropped_rows)} if dropped_rows else {}}

    def _index(self, ctx: StageContext) -> UnitResult:
        tokenizer = load_tokenizer(Path(self.config.tokenizer))
        dtype = token_dtype(tokenizer.get_vocab_size())
        row_len = self.config.block_size + 1
        shards = []
        for path in sorted(ctx.stage_dir.glob("*.bin")):
            if path.name.endswith(".mask.bin"):
                continue
            rows = path.stat().st_size // (dtype.itemsize * row_len)
            shards.append({"file": path.name, "mask": path.name[:-4] + ".mask.bin", "split": path.name.split("-")[0],
                           "rows": rows})
        with open(ctx.stage_dir / VAL_EXAMPLES, "w") as out:
            for part in sorted(ctx.stage_dir.glob("val_examples-*.jsonl")):
                out.write(part.read_text())
                part.unlink()
        index = {"dtype": dtype.name, "row_len": row_len, "vocab_size": tokenizer.get_vocab_size(),
                 "shards": shards, "totals": {split: sum(s["rows"] for s in shards if s["split"] == split)
                                              for split in ("train", "val")}}
        write_json_atomic(ctx.stage_dir / INDEX_FILE, index)
        files = [ctx.stage_dir / INDEX_FILE, ctx.stage_dir / VAL_EXAMPLES]
        return {"outputs": [OutputFile(p.name, "index", 0, p.stat().st_size, sha256_file(p)).to_dict() for p in files]}


HELDOUT_EVAL_SET = "sft_heldout.jsonl"


def write_heldout_eval_set(examples_dir: Path, val_fraction: float, seed: int, out: Path) -> int:
    """The examples fine-tuning will hold out (the seeded hash of their ids that `SftTokenize` uses), as an
    evaluation set for decontamination: a JSON line per example, a field per message. Returns how many."""
    lines = []
    for shard in list_shards(Path(examples_dir)):
        for batch in iter_batches(shard, 4096):
            ids = batch.column("id").to_pylist()
            for i in np.flatnonzero(is_validation(ids, val_fraction, seed)).tolist():
                messages = json.loads(batch.column("text")[i].as_py())["messages"]
                lines.append(json.dumps({f"{m['role']}_{k}": m["content"] for k, m in enumerate(messages)},
                                        ensure_ascii=False) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(out)
    return len(lines)
