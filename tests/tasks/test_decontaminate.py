"""07_decontaminate: documents holding GSM8K test problems or CrowS-Pairs sentences (with small edits) are
removed and reported by item; other documents and the training split stay."""

import json
import random

from tasks.decontaminate import Decontaminate, EvalIndex, read_items
from tasks.ingest import Ingest
from tasks.shards import read_dir
from tasks.stage import run_stage


def _edit(text: str, rng: random.Random) -> str:
    """A small edit: case, punctuation and one word changed."""
    words = text.replace(",", "").split()
    words[rng.randrange(len(words))] = "indeed"
    return " ".join(words).upper() if rng.random() < 0.3 else " ".join(words)


def test_planted_evaluation_items_are_removed_and_reported(shared, tmp_path):
    rng = random.Random(5)
    gsm_test = [json.loads(line) for line in (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()]
    gsm_train = [json.loads(line) for line in (shared / "sft/gsm8k/train.jsonl").read_text().splitlines()[:300]]
    crows = read_items(shared / "bias/crows_pairs", ["sent_more"])
    planted = [(f"gsm-{i}", "Homework help.\n" + _edit(q["question"], rng) + "\nThanks!")
               for i, q in enumerate(rng.sample(gsm_test, 40))]
    planted += [(f"crows-{i}", "A quote: " + text + " End of quote, and some words after it.")
                for i, (_, text) in enumerate(rng.sample([c for c in crows if len(c[1].split()) >= 13], 20))]
    clean = [(f"train-{i}", q["question"] + "\n" + q["answer"]) for i, q in enumerate(gsm_train)]
    with open(tmp_path / "docs.jsonl", "w") as f:
        for doc_id, text in [*clean, *planted]:
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp_path / "01", inputs=[str(tmp_path / "docs.jsonl")])
    sets = [str(shared / "sft/gsm8k/test.jsonl"), str(shared / "bias/crows_pairs")]
    m = run_stage(Decontaminate(eval_sets=sets, fields=["question", "sent_more", "sent_less"]), run_id="t",
                  stage_dir=tmp_path / "07", inputs=[str(tmp_path / "01")]).manifest
    removed = read_dir(tmp_path / "07/_removed")
    ids = set(removed.column("id").to_pylist())
    caught = sum(doc_id in ids for doc_id, _ in planted)
    assert caught >= 0.95 * len(planted), caught
    # GSM8K's own train split shares a few templated sentences with its test split (real overlap: "Max bought
    # stamps at the post office. Some of the stamps had a snowflake ..."); nothing else is removed
    assert len({i for i in ids if i.startswith("train-")}) <= 0.02 * len(clean)
    report = json.loads((tmp_path / "07/decontamination_report.json").read_text())
    assert report["items_leaked"] >= caught and m.removed == {"contaminated": len(ids)}
    assert all(item.startswith(("test.jsonl:", "crows_pairs_anonymized.csv:")) for item in report["leaks"])
    assert set(removed.column("eval_item").to_pylist()) <= set(report["leaks"])


def test_span_mode_cuts_only_the_overlap():
    index = EvalIndex([("q1", "Natalia sold clips to 48 of her friends in April and then she sold half as many")],
                      13, 8)
    text = "Before. Natalia sold clips to 48 of her friends in April, and then she sold half as many! After."
    found = index.matches(text)
    assert found and found[0][2] == "q1"
    from tasks.decontaminate import _cut

    assert _cut(text, found).strip().startswith("Before.") and _cut(text, found).strip().endswith("After.")
