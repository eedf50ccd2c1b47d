"""Stage 05_pii: every document's text scrubbed, a `pii_counts` column per document, counts by entity
type in the manifest (never values)."""

from __future__ import annotations

import pyarrow as pa

from tasks.pii.config import PII_COUNTS, PiiConfig
from tasks.pii.engine import analyzer
from tasks.pii.find import find_pii
from tasks.pii.replace import replace_spans
from tasks.shards import ShardWriter, iter_batches, list_shards
from tasks.stage import Stage, StageContext, UnitResult

# ---- the stage --------------------------------------------------------------------------------

class Pii(Stage):
    """Replace PII in every document; count what was found, never log it."""

    name = "05_pii"
    Config = PiiConfig
    phases = ("scrub",)

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        analyzer(self.config.model, self.config.fast_ner)  # a missing model fails here, once, with its remedy
        return [s.stem for s in list_shards(ctx.input_dir)]

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        cfg = self.config
        salt = cfg.salt or ctx.run_id
        source = ctx.input_dir / f"{key}.parquet"
        writer = None
        rows = touched = chars = replaced = 0
        entities: dict[str, int] = {}
        for batch in iter_batches(source, cfg.batch_size * 4):
            table = pa.Table.from_batches([batch])
            if "pii_counts" in table.column_names:  # a rerun on scrubbed data recounts
                table = table.drop_columns(["pii_counts"])
            texts = table.column("text").to_pylist()
            spans = find_pii(texts, cfg)
            new_texts, counts = [], []
            for text, found in zip(texts, spans):
                chars += len(text)
                per: dict[str, int] = {}
                for start, end, entity, _ in found:
                    per[entity] = per.get(entity, 0) + 1
                    replaced += end - start
                if found:
                    touched += 1
                    text = replace_spans(text, found, cfg.strategy, salt)
                for entity, n in per.items():
                    entities[entity] = entities.get(entity, 0) + n
                new_texts.append(text)
                counts.append(sorted(per.items()))
            table = table.set_column(table.column_names.index("text"), "text", pa.array(new_texts, pa.string()))
            table = table.append_column(PII_COUNTS, pa.array(counts, PII_COUNTS.type))
            if writer is None:
                writer = ShardWriter(ctx.stage_dir, key, table.schema, roll=False)
            writer.write(table)
            rows += table.num_rows
        outputs = writer.close() if writer else []
        return {
            "rows_in": rows, "rows_out": rows, "outputs": [o.to_dict() for o in outputs],
            "stats": {"documents_touched": touched, "chars": chars, "chars_replaced": replaced,
                      "entities": entities},
        }

    def finish(self, ctx: StageContext, results: dict[str, list[UnitResult]]) -> dict:
        chars = sum(r.get("stats", {}).get("chars", 0) for rs in results.values() for r in rs)
        replaced = sum(r.get("stats", {}).get("chars_replaced", 0) for rs in results.values() for r in rs)
        return {"share_of_chars_replaced": round(replaced / chars, 6) if chars else 0.0}
