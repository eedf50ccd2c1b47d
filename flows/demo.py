"""The demo corpus: built on any machine from text that ships with Python (pydoc_data.topics).

It mixes every supported input format and plants what the stages must catch: exact
duplicates (with case, spacing and punctuation changes), near duplicates (a few words
edited, boilerplate added), text in six other languages, low-quality pages (repeated lines, lorem
ipsum, symbol soup, bullet lists, numbers), personal data and secrets, toxic posts and posts that only
mention identities, malformed JSON, undecodable bytes,
missing and empty text, a legacy cp1252 line, an oversize line and a Project Gutenberg header.
`plant_counts` says how many of each were planted, so the demo and its test can check them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _passages(max_chars: int = 1200) -> list[tuple[str, str]]:
    """(topic, passage) pairs: each topic's paragraphs packed into passages of up to max_chars."""
    from pydoc_data.topics import topics

    out = []
    for topic in sorted(topics):
        paragraphs = [p.strip() for p in topics[topic].split("\n\n") if len(p.strip()) >= 40]
        buf = ""
        for p in paragraphs:
            if buf and len(buf) + len(p) > max_chars:
                out.append((topic, buf))
                buf = ""
            buf = f"{buf}\n\n{p}" if buf else p
        if buf:
            out.append((topic, buf))
    return out


def _variant(text: str, i: int) -> str:
    """An exact duplicate after normalization: case, whitespace or punctuation changed."""
    if i % 3 == 0:
        return text.upper()
    if i % 3 == 1:
        return "  " + text.replace(" ", "   ") + "\n"
    return text.replace(".", " . ").replace(",", "")


def _edit(text: str, i: int) -> str:
    """A near duplicate (true Jaccard of 5-word shingles about 0.9): one word replaced, and a
    short line of boilerplate appended."""
    words = text.split(" ")
    words[len(words) // 2] = "edited"
    return " ".join(words) + f"\n\n(mirror {i})"


def make_demo_corpus(directory: Path, duplicates: int = 40, near_duplicates: int = 20) -> dict:
    """Write the demo corpus under `directory`; returns what was planted."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    passages = _passages()
    records = [{"id": f"doc-{i:05d}", "text": text, "topic": topic} for i, (topic, text) in enumerate(passages)]
    n = len(records)
    a, b, c = records[: n // 2], records[n // 2: 3 * n // 4], records[3 * n // 4:]

    with gzip.open(directory / "python-docs-a.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in a:
            f.write(json.dumps(r) + "\n")
    import zstandard

    with open(directory / "python-docs-b.jsonl.zst", "wb") as raw:
        with zstandard.ZstdCompressor().stream_writer(raw) as f:
            for r in b:
                f.write((json.dumps(r) + "\n").encode())
    pq.write_table(pa.Table.from_pylist(c), directory / "python-docs-c.parquet")

    # Exact duplicates of earlier documents, under new ids, in a later file.
    step = max(1, n // duplicates)
    dup_sources = records[::step][:duplicates]
    with open(directory / "reposts.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(dup_sources):
            f.write(json.dumps({"id": f"repost-{i:03d}", "text": _variant(r["text"], i)}) + "\n")

    # Near duplicates: long passages with a word changed and a line of boilerplate added.
    long_ones = [r for r in records if len(r["text"].split()) >= 150][1::4][:near_duplicates]
    with open(directory / "reposts-edited.jsonl", "w", encoding="utf-8") as f:  # after the originals
        for i, r in enumerate(long_ones):
            f.write(json.dumps({"id": f"edited-{i:03d}", "text": _edit(r["text"], i)}) + "\n")

    # Personal data and secrets for 05_pii to replace.
    tickets = [
        "Ticket 1: Maria Jensen (maria.jensen+support@mail.example.org) cannot log in; call her on +44 20 7946 0958.",
        "Ticket 2: refund card 4111 1111 1111 1111 to IBAN GB82 WEST 1234 5698 7654 32, requested from 203.0.113.7.",
        "Ticket 3: the deploy script has password = 'hunter2hunter2' and key AKIAIOSFODNN7EXAMPLE in plain text.",
    ]
    with open(directory / "support-tickets.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(tickets):
            f.write(json.dumps({"id": f"ticket-{i}", "text": text}) + "\n")

    # Toxic posts for 06_bias to remove (two or more listed words each), and posts that only
    # mention identities, which it must keep.
    toxic = [
        "Shut up, you stupid bitch, nobody asked for your shit opinion.",
        "What the f*ck is wrong with you, dumbass? Go to hell.",
        "This motherfucker keeps spamming the forum, what an asshole.",
    ]
    benign = ["I am a gay man and I love this community.", "My neighbor is a Muslim woman who teaches math.",
              "As a Black disabled veteran, I found the docs on asyncio clear."]
    with open(directory / "forum-posts.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(toxic + benign):
            f.write(json.dumps({"id": f"post-{i}", "text": text}) + "\n")

    # Bad input, one of each kind, among good lines.
    bad = directory / "messy.jsonl"
    with open(bad, "wb") as f:
        f.write(b'{"id": "messy-ok-1", "text": "A clean record before the mess."}\n')
        f.write(b'{"id": "messy-truncated", "text": "this line was cut off\n')  # malformed_json
        f.write(b'{"id": "messy-no-text", "body": "text is under the wrong key"}\n')  # missing_text
        f.write(b'{"id": "messy-empty", "text": "   "}\n')  # empty_text
        f.write(b'["an", "array", "not", "an", "object"]\n')  # not_an_object
        f.write(b'{"id": "messy-number", "text": 42}\n')  # text_not_string
        f.write(b'{"id": "messy-bytes", "text": "bad \x81\x8d bytes"}\n')  # undecodable (not UTF-8 nor cp1252)
        f.write('{"id": "messy-legacy", "text": "Caf\u00e9 cr\u00e8me in Windows-1252."}\n'.encode("cp1252"))
        f.write(b'{"id": "messy-ok-1", "text": "The same id twice in one file."}\n')  # duplicate_id
        f.write(b'{"id": "messy-huge", "text": "' + b"x" * (2 << 20) + b'"}\n')  # oversize (demo cap: 1 MiB)
        f.write(b"\n")  # a blank line is not a record
        f.write(b'{"id": "messy-ok-2", "text": "A clean record after the mess.\\u0000 (NUL removed)"}\n')

    # Other languages (the Universal Declaration of Human Rights, article 1), for 03_quality's language ID
    with open(directory / "udhr-article-1.jsonl", "w", encoding="utf-8") as f:
        for lang, text in UDHR_ARTICLE_1.items():
            f.write(json.dumps({"id": f"udhr-{lang}", "text": text}, ensure_ascii=False) + "\n")

    # Low-quality pages for 03_quality, each with the defect its rule removes
    page = max((r["text"] for r in records[:50]), key=len)
    sentences = [s.strip() + "." for s in page.replace("\n", " ").split(". ") if len(s.split()) >= 4]
    low_quality = {
        "gopher:dup_lines": "\n".join([sentences[0]] * 10 + sentences[1:4]),
        "c4:lorem_ipsum": page + "\n\nLorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
        "gopher:symbol_word_ratio": " ".join(f"#{w} ..." for w in page.split()[:80]),
        "gopher:bullet_lines": "\n".join(f"- {w}" for w in page.split()[:60]),
        "gopher:alpha_words_ratio": " ".join(f"{i * 7919 % 100003} {i * 31 % 997} {w}" for i, w in enumerate(page.split()[:80])),
    }
    with open(directory / "scraped-pages.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(low_quality.values()):
            f.write(json.dumps({"id": f"page-{i}", "text": text}) + "\n")

    notes = directory / "notes"
    notes.mkdir(exist_ok=True)
    for i, (topic, text) in enumerate(passages[:3]):
        (notes / f"{i:02d}-{topic}.md").write_text(f"# {topic}\n\n{text}\n")
    (notes / "gutenberg-style.txt").write_text(
        "The Project Gutenberg EBook of a Demo\n\nLicense text that must not be trained on.\n\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK A DEMO ***\n\n"
        "Only this sentence is the book.\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK A DEMO ***\n\nMore license text.\n"
    )
    (notes / "empty.txt").write_text("\n\n")  # empty_text
    (notes / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # unsupported_format

    planted = {
        # passages, notes, gutenberg, messy ok, legacy, reposts, edited copies, tickets, posts
        "good_records": n + 3 + 1 + 2 + 1 + len(dup_sources) + len(long_ones) + len(tickets) + len(toxic) + len(benign)
        + len(UDHR_ARTICLE_1) + len(low_quality),
        "languages": sorted(UDHR_ARTICLE_1),
        "low_quality": {f"page-{i}": reason for i, reason in enumerate(low_quality)},
        "toxic": [f"post-{i}" for i in range(len(toxic))],
        "identity_mentions": [f"post-{len(toxic) + i}" for i in range(len(benign))],
        "exact_duplicates": len(dup_sources),
        "near_duplicates": len(long_ones),
        "pii_values": ["maria.jensen+support@mail.example.org", "7946 0958", "4111 1111 1111 1111",
                       "GB82 WEST", "203.0.113.7", "hunter2hunter2", "AKIAIOSFODNN7EXAMPLE"],
        "rejects": {
            "malformed_json": 1, "missing_text": 1, "empty_text": 2, "not_an_object": 1, "text_not_string": 1,
            "undecodable": 1, "duplicate_id": 1, "oversize": 1, "unsupported_format": 1,
        },
    }
    return planted


# The Universal Declaration of Human Rights, article 1 (United Nations; free to reproduce)
UDHR_ARTICLE_1 = {
    "de": "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft und Gewissen "
          "begabt und sollen einander im Geist der Brüderlichkeit begegnen.",
    "fr": "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués de raison et de "
          "conscience et doivent agir les uns envers les autres dans un esprit de fraternité.",
    "es": "Todos los seres humanos nacen libres e iguales en dignidad y derechos y, dotados como están de razón y "
          "conciencia, deben comportarse fraternalmente los unos con los otros.",
    "ru": "Все люди рождаются свободными и равными в своем достоинстве и правах. Они наделены разумом и совестью "
          "и должны поступать в отношении друг друга в духе братства.",
    "zh": "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心，并应以兄弟关系的精神相对待。",
    "ja": "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。人間は、理性と良心とを"
          "授けられており、互いに同胞の精神をもって行動しなければならない。",
}

DEMO_QUESTION = "What is 12 plus 7?"


def make_demo_instructions(directory: Path, arithmetic: int = 400, seed: int = 0) -> dict:
    """Instruction data for the demo's fine-tune, in all three supported shapes: question/answer
    arithmetic with GSM8K-style `#### answer` lines (so exact match is measured), chat questions
    about Python statements (answers from pydoc_data.topics, so the held-out ones are in the corpus
    too, for decontamination to remove), Alpaca-style copy tasks; plus two malformed records the ingest
    reader must reject."""
    import random
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for _ in range(arithmetic):
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        records.append({"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    for topic in sorted(topics):  # answered by the topic's first paragraph: also in the corpus (07_decontaminate)
        first = next((p.replace("\n", " ").strip() for p in topics[topic].strip().split("\n\n")
                      if len(p.split()) >= 15 and len(p) <= 400), None)
        if first:
            records.append({"messages": [{"role": "user", "content": f"What is the Python topic '{topic}' about?"},
                                         {"role": "assistant", "content": first}]})
    words = sorted({w for text in list(topics.values())[:20] for w in text.split() if w.isalpha() and len(w) > 3})
    for word in rng.sample(words, min(150, len(words))):
        records.append({"instruction": "Repeat the word three times.", "input": word, "output": f"{word} {word} {word}"})
    rng.shuffle(records)
    path = directory / "instructions.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            f.write(json.dumps({"id": f"sft-{i:04d}", **r}) + "\n")
        f.write(json.dumps({"id": "sft-bad-0", "note": "no instruction fields at all"}) + "\n")  # not_instruction
        f.write(json.dumps({"id": "sft-bad-1", "messages": [{"role": "robot", "content": "beep"}]}) + "\n")  # bad_messages
    return {"path": path, "examples": len(records), "bad": 2}


def demo_config(cfg, pretrain_steps: int, finetune_steps: int):
    """The demo's settings on top of the defaults: small and quick, and showing every check."""
    cfg.ingest.max_doc_bytes = 1 << 20  # so the planted 2 MiB line shows the oversize check
    # 03_quality on: the published web-text thresholds would take a fifth of Python's reference docs (hard-wrapped
    # lines, code, braces, terms repeated) and the short posts and tickets the later stages must see; the planted
    # low-quality pages are still removed, each by its rule
    q = cfg.quality
    q.min_words, q.min_stop_words, q.min_alpha_words_ratio, q.c4_curly_braces = 3, 0, 0.4, False
    q.c4_line_languages, q.dup_ngram_max_ratio, q.top_ngram_max_ratio, q.fineweb = [], {}, {}, False
    cfg.tokenize.vocab_size = 2048  # a small corpus: a small vocabulary
    cfg.pretrain.steps, cfg.pretrain.eval_every, cfg.pretrain.ckpt_every = pretrain_steps, 50, 50
    cfg.pretrain.warmup_steps = min(cfg.pretrain.warmup_steps, pretrain_steps)
    cfg.finetune.steps, cfg.finetune.eval_every, cfg.finetune.ckpt_every = finetune_steps, 50, 50
    cfg.finetune.warmup_steps = min(cfg.finetune.warmup_steps, finetune_steps)
    cfg.evaluate.examples, cfg.evaluate.max_new_tokens = 20, 32
    return cfg
