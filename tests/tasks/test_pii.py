"""05_pii: Presidio offline on real labeled spans, adversarial formats, text without PII left
byte for byte, merged overlaps, replacement strategies, and no PII outside the documents."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import spacy

from tasks.ingest import Ingest
from tasks.pii import (
    Pii,
    PiiConfig,
    PiiModelError,
    analyzer,
    find_pii,
    luhn_ok,
    merge_spans,
    plainly_english,
    replace_spans,
    surrogate,
)
from tasks.pii.fast_ner import ChunkTokenizer, GreedyNer, _SlotRows, decoder, ner_docs
from tasks.pii.names import cued_names, listed_names, name_lines, ner_view, other_mentions
from tasks.pii.tok2vec import TokenEmbeddings, WindowEncoder
from tasks.shards import read_dir
from tasks.stage import local_mapper, run_stage


def _found(text: str, cfg: PiiConfig | None = None) -> list[tuple[str, str]]:
    return [(text[s:e], t) for s, e, t, _ in find_pii([text], cfg or PiiConfig())[0]]


def test_labeled_spans_of_the_presidio_research_set_are_found(shared):
    records = json.loads((shared / "pii/presidio_research/synth_dataset_v2.json").read_text())[:400]
    spans = find_pii([r["full_text"] for r in records], PiiConfig())
    found, total = {}, {}
    for record, doc in zip(records, spans):
        for gold in record["spans"]:
            t = gold["entity_type"]
            total[t] = total.get(t, 0) + 1
            hit = any(s < gold["end_position"] and gold["start_position"] < e for s, e, _, _ in doc)
            found[t] = found.get(t, 0) + hit
    for entity in ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "US_SSN"):
        if total.get(entity):
            assert found[entity] / total[entity] >= 0.95, entity
    assert found["PERSON"] / total["PERSON"] >= 0.7  # the small spaCy model + name lists (see benchmarks/pii.py)


def test_batched_ner_decoding_gives_spacys_entities(shared):
    """Our numpy decoder against spaCy's own loop, token for token, on real text: labeled
    PII texts, Wikipedia paragraphs (short and long in one batch), and one 50,000-character text."""
    records = json.loads((shared / "pii/presidio_research/synth_dataset_v2.json").read_text())[:300]
    wiki = [line for line in (shared / "pretrain/wikitext2_tok/valid.txt").read_text().split("\n") if line.strip()]
    texts = [r["full_text"] for r in records] + wiki[:300] + [" ".join(wiki)[:50_000], "", "Paris"]
    nlp = analyzer(PiiConfig().model).nlp_engine.nlp["en"]
    assert GreedyNer.for_pipeline(nlp) is not None and decoder(nlp).embeddings is not None
    theirs = list(nlp.pipe(texts, batch_size=64))
    assert sum(len(d.ents) for d in theirs) > 500
    # spaCy as it loads, computing every lexeme attribute (ours computes only those read)
    untrimmed = spacy.load(PiiConfig().model, exclude=[n for n in nlp.component_names if n != "ner"])
    assert len(untrimmed.vocab.lex_attr_getters) > len(nlp.vocab.lex_attr_getters)
    assert [[(e.start, e.end, e.label_) for e in d.ents] for d in untrimmed.pipe(texts, batch_size=64)] == [
        [(e.start, e.end, e.label_) for e in d.ents] for d in theirs]
    for _ in range(2):  # the second time, every token's embedding comes from the first
        ours = list(ner_docs(nlp, texts, 64))
        for a, b in zip(ours, theirs):
            assert [(e.start, e.end, e.label_) for e in a.ents] == [(e.start, e.end, e.label_) for e in b.ents], \
                a.text[:80]
            assert [t.ent_iob_ for t in a] == [t.ent_iob_ for t in b]


def test_the_fast_ner_path_and_spacys_own_give_the_same_spans(shared):
    """`[pii] fast_ner = false` (spaCy's nlp.pipe on an untouched pipeline) finds what the fast path
    finds, span for span, on labeled PII texts and real prose."""
    records = json.loads((shared / "pii/presidio_research/synth_dataset_v2.json").read_text())[:200]
    wiki = [line for line in (shared / "pretrain/wikitext2_tok/valid.txt").read_text().split("\n") if line.strip()]
    texts = [r["full_text"] for r in records] + wiki[:150]
    fast, plain = find_pii(texts, PiiConfig()), find_pii(texts, PiiConfig(fast_ner=False))
    assert analyzer(PiiConfig().model, False) is not analyzer(PiiConfig().model, True)
    assert sum(1 for spans in fast for s in spans if s[2] in ("PERSON", "LOCATION")) > 100
    assert [[s[:3] for s in spans] for spans in plain] == [[s[:3] for s in spans] for spans in fast]


def test_the_window_encoder_is_spacys(shared):
    """The numpy window encoder gives what the tok2vec's own encoder layers give on real prose and the
    labeled texts batched together (docs of 1 to 2,000 tokens, padding between them)."""
    nlp = analyzer(PiiConfig().model).nlp_engine.nlp["en"]
    tok2vec = nlp.get_pipe("ner").model.layers[0]
    encoder = WindowEncoder.for_tok2vec(tok2vec)
    assert encoder is not None and len(encoder.layers) == 4
    records = json.loads((shared / "pii/presidio_research/synth_dataset_v2.json").read_text())[:100]
    wiki = [line for line in (shared / "pretrain/wikitext2_tok/valid.txt").read_text().split("\n") if line.strip()]
    docs = [nlp.make_doc(t) for t in [r["full_text"] for r in records] + wiki[:100] + [" ".join(wiki)[:10_000], "a"]]
    embedded = tok2vec.layers[0].layers[0].predict(docs)
    expected = np.concatenate(tok2vec.layers[0].layers[1].predict(embedded))
    embeddings = TokenEmbeddings.for_tok2vec(tok2vec)
    table, index = embeddings.lookup(np.concatenate([d.to_array(embeddings.columns) for d in docs]))
    assert np.array_equal(table[index], np.concatenate(embedded))
    got = encoder(table, index, [len(d) for d in docs])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()  # the first layer's sums: last bits


def test_the_chunk_tokenizer_gives_spacys_tokens(shared):
    """Chunks tokenized on their own first, then the documents: the same tokens and spaces as spaCy's
    tokenizer gives, on real prose full of special cases ("n't", "'s", "Mr."), also once its cache has
    filled up and started over."""
    nlp = analyzer(PiiConfig().model).nlp_engine.nlp["en"]
    wiki = [line for line in (shared / "pretrain/wikitext2_tok/valid.txt").read_text().split("\n") if line.strip()]
    gutenberg = (shared / "pretrain/gutenberg_nltk/austen-emma.txt").read_text()
    texts = wiki[:200] + [gutenberg[i:i + 3000] for i in range(0, 60_000, 3000)] + [
        "Don't, Mr. O'Neill's (a.m.) e-mail: x@y.org :) \n\n  tabs\there", "", " ", "\u00a0x\u2003y"]
    expected = [[(t.text, t.whitespace_) for t in nlp.make_doc(text)] for text in texts]
    for limit in (200_000, 500):
        tokenize = ChunkTokenizer(nlp, limit=limit)
        for _ in range(2):  # the second time every chunk is cached
            got = [doc for lo in range(0, len(texts), 50) for doc in tokenize(texts[lo:lo + 50])]
            assert [[(t.text, t.whitespace_) for t in doc] for doc in got] == expected
        assert len(tokenize.seen) <= limit


def test_the_lower_layer_rows_are_spacys(shared):
    """The parser's lower layer, one slot at a time and only the rows read, gives the floats of spaCy's
    layer for every slot and row, bit for bit, whether one row is read or thousands."""
    nlp = analyzer(PiiConfig().model).nlp_engine.nlp["en"]
    ner = decoder(nlp)
    wiki = [line for line in (shared / "pretrain/wikitext2_tok/valid.txt").read_text().split("\n") if line.strip()]
    docs = [nlp.make_doc(t) for t in wiki[:300]]
    columns = ner.embeddings.columns
    tokvecs = ner._tok2vec(docs, np.concatenate([d.to_array(columns) for d in docs]))
    expected = ner.lower.predict(tokvecs)
    rng = np.random.default_rng(0)
    for slot, (weights, pad) in enumerate(zip(ner.slot_weights, ner.slot_pads)):
        rows = _SlotRows(tokvecs, weights, pad, every=True)
        assert np.array_equal(rows.all, expected[:, slot])
        for n in (1, 3, 9, 64, 2000):
            which = rng.choice(len(expected), n, replace=False)
            which[0] = 0  # the padding row
            assert np.array_equal(rows[which], expected[which, slot])


def test_token_embeddings_are_the_embedding_layers_output():
    """The kept embeddings equal what the tok2vec's embedding layer computes for the same docs,
    also once the cache has filled up and started afresh."""
    nlp = analyzer(PiiConfig().model).nlp_engine.nlp["en"]
    tok2vec = nlp.get_pipe("ner").model.layers[0]
    docs = [nlp.make_doc(t) for t in ("Call Ana Lima on Monday.", "Ana Lima lives in Porto.", "ana")]
    expected = np.concatenate(tok2vec.layers[0].layers[0].predict(docs))
    embeddings = TokenEmbeddings.for_tok2vec(tok2vec)
    embeddings.MAX_ROWS = 12
    sizes = []
    for batch in (docs, docs, docs[1:], docs):
        got = embeddings(np.concatenate([d.to_array(embeddings.columns) for d in batch]))
        assert np.allclose(got, expected[-len(got):], atol=1e-5)
        sizes.append(len(embeddings.rows))
    assert sizes == [10, 10, 7, 10]  # 10 distinct tokens; the third batch did not fit beside them
    assert embeddings(np.zeros((0, len(embeddings.columns)), dtype=np.uint64)).shape == (0, expected.shape[1])


def test_names_the_small_model_misses_come_from_the_name_lists():
    """Names from other languages that en_core_web_sm leaves alone are found from Faker's given names and
    surnames; place names, months and streets that are also names in those lists are left alone."""
    text = "What's the name on the account? User: Marcus Paulsen"
    assert ("Marcus Paulsen", "PERSON") in _found(text)
    assert ("Marcus Paulsen", "PERSON") not in _found(text, PiiConfig(name_lists=False))
    assert ("Antti Poutiainen", "PERSON") in _found("My name is Antti Poutiainen but everyone calls me Antti")
    assert _found("We met on State Street in January near City Hall, then took the May train.") == []


def test_names_from_their_place_in_the_text():
    """Lists of names, a middle initial, a family tie, a sentence whose subject a listed name is; lists
    of lower-case words are left alone even where they are also surnames."""

    def names(text):
        return [text[s:e] for s, e, _ in listed_names(text)]

    assert names("They had 6: Efimiya, Mary, Ariana, Isabel, Teresa and Jodi.") == [
        "Efimiya", "Mary", "Ariana", "Isabel", "Teresa", "Jodi"]
    assert names("It is under my partner's name Shane M Culp") == ["Shane M Culp"]
    assert names('Ashley:"I\'m Melvin\'s daughter".') == ["Ashley", "Melvin"]
    assert names("Darren is a very sympathetic man.") == ["Darren"]
    assert names("The gallant, young and noble gentleman; sol, fa, and sing it") == []
    assert names("Vsevolod shouted at them. Trivo lives on the hill.") == ["Vsevolod", "Trivo"]
    assert names("Tomomi Nishiyama lives at the corner. A film directed by Kenneth Branagh.") == [
        "Tomomi Nishiyama", "Kenneth Branagh"]
    assert names("CHAPTER V Small heart. When I Read the Book. Papa laughed. Tea was served.") == []
    assert names("The Vide A. Persson version recorded for Capital Cube") == ["Vide A. Persson"]


def test_names_after_a_cue_and_theirother_mentions():
    """A name after "my name is", "Name:", "call me", "Mrs." is PERSON listed or not; in lower-case text
    only after the name cues (not "call me tomorrow"). Once a name of two words is found, its other
    mentions are too, and its first or last word alone, unless the text uses that word in lower case."""

    def cued(text):
        return [text[s:e] for s, e, _ in cued_names(text)]

    assert cued("Hello. My name is Rubija") == ["Rubija"]
    assert cued("she was born on 8/5/1989. her maiden name is nyberg") == ["nyberg"]
    assert cued("name:    hyuuma t. maida\naddress: unit 4526") == ["hyuuma t. maida"]
    assert cued("please call me tomorrow") == []
    assert cued("Call me Ishmael. Some years ago") == ["Ishmael"]
    assert cued("Mrs. Weston's note, and my name is not important") == ["Weston"]
    assert cued("File name: report.pdf") == []
    assert cued("Open it in MS Word, wait 5 ms Before retrying, call me Monday") == []
    assert cued("I'd like to join accounts with ms. Quinzia") == ["Quinzia"]

    def others(text, names):  # what is found outside the names given
        spans = [(text.index(n), text.index(n) + len(n), "PERSON", 0.85) for n in names]
        return sorted({text[s:e] for s, e, _, _ in other_mentions(text, spans, listed=True)
                       if not any(a <= s and e <= b for a, b, _, _ in spans)})

    text = "A film directed by Maciej Borkowski and starring Borkowski; Maciej Borkowski won."
    assert {text[s:e] for s, e, _, _ in other_mentions(text, [(19, 35, "PERSON", 0.85)], listed=True)} == {
        "Maciej Borkowski", "Maciej", "Borkowski"}
    assert others("Till Lindemann sang. Till noon we waited, till the end.", ["Till Lindemann"]) == []
    assert others("KING RICHARD: Yes. Then the KING spoke, and Richard left.", ["KING RICHARD"]) == []
    assert others("Emma came in. Emma Woodhouse sat. Emma smiled.", ["Emma"]) == []  # one word: not spread
    assert ("Borkowski", "PERSON") in _found("Directed by Maciej Borkowski and starring Borkowski.")


def test_names_in_signature_blocks_and_lower_case_text():
    """A line that is only a name (after reply quote marks or bullets), and a listed name in a text
    with no capitals, are PERSON; a firm's line and the same words with capitals in prose are not."""
    block = "> \n> Marta Palermo\n> Cityscan\n> 1072 Pohlstrasse 9\n> Suite 85"
    assert ("Marta Palermo", "PERSON") in _found(block)

    text = "Broker:\nMorgan Stanley\nThe Winter Tale\nCHAPTER ONE\nDreux Joly"
    assert [text[s:e] for s, e, _ in name_lines(text)] == ["Dreux Joly"]
    lower = "follow up with patricia desrosiers in a couple of months."
    assert any(t == "PERSON" and "patricia" in v for v, t in _found(lower))

    assert ner_view(lower) == "follow up with Patricia Desrosiers in a couple of months."
    assert ner_view("> Hi\n>> quoted") == "  Hi\n   quoted"
    assert ner_view("Rose and Will met.") == "Rose and Will met."
    assert ner_view(lower, listed=False) == lower  # `[pii] name_lists = false`: no lists at all


def test_overlapping_spans_merge_so_nothing_survives_between_them():
    spans = merge_spans([(0, 10, "PERSON", 0.85), (5, 20, "EMAIL_ADDRESS", 1.0), (20, 25, "PHONE_NUMBER", 0.4),
                         (30, 35, "LOCATION", 0.85)])
    assert spans == [(0, 25, "EMAIL_ADDRESS", 1.0), (30, 35, "LOCATION", 0.85)]
    assert replace_spans("x" * 40, spans) == "<EMAIL>" + "x" * 5 + "<LOCATION>" + "x" * 5
    # a span inside another takes the outer one's type: "Baker" (PERSON) in "221 Baker Street"
    assert merge_spans([(14, 19, "PERSON", 0.85), (10, 26, "STREET_ADDRESS", 0.6)]) == [(10, 26, "STREET_ADDRESS", 0.6)]
    assert merge_spans([(10, 26, "STREET_ADDRESS", 0.6), (14, 19, "PERSON", 0.85)]) == [(10, 26, "STREET_ADDRESS", 0.6)]


def test_strategies_are_consistent_within_a_run():
    text = "Mail jane@example.com, then jane@example.com again."
    spans = find_pii([text], PiiConfig())[0]
    hashed = replace_spans(text, spans, "hash", salt="run1")
    assert "jane@example.com" not in hashed and hashed.count(hashed.split()[1].rstrip(",")) == 2
    assert replace_spans(text, spans, "hash", salt="run2") != hashed
    fake = surrogate("EMAIL_ADDRESS", "jane@example.com", "run1")
    assert fake == surrogate("EMAIL_ADDRESS", "jane@example.com", "run1") != surrogate(
        "EMAIL_ADDRESS", "jane@example.com", "run2")
    assert luhn_ok(surrogate("CREDIT_CARD", "4111 1111 1111 1111", "run1"))


def _scrub(tmp_path, texts, **config):
    with open(tmp_path / "in.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"d{i}", "text": t}) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp_path / "01", inputs=[str(tmp_path / "in.jsonl")],
              mapper=local_mapper(1))
    outcome = run_stage(Pii(**config), run_id="t", stage_dir=tmp_path / "04", inputs=[str(tmp_path / "01")],
                        mapper=local_mapper(1))
    return outcome.manifest, read_dir(tmp_path / "04")


def test_stage_changes_only_pii_and_reports_only_counts(tmp_path):
    clean = ["The kettle boiled at noon.\nTea was served in the garden; everyone agreed it was too hot.",
             "Water freezes at zero degrees Celsius and boils at one hundred at sea level."]
    secret_text = "Contact Maria Garcia at maria.garcia@example.com or +1 415 555 2671."
    manifest, docs = _scrub(tmp_path, [*clean, secret_text])
    rows = {r["id"]: r for r in docs.to_pylist()}
    for i, text in enumerate(clean):  # no PII: byte for byte the same, and no counts
        assert rows[f"d{i}"]["text"].encode() == text.encode() and rows[f"d{i}"]["pii_counts"] == "{}"
    scrubbed = rows["d2"]["text"]
    assert "maria.garcia@example.com" not in scrubbed and "555 2671" not in scrubbed and "<EMAIL>" in scrubbed
    assert json.loads(rows["d2"]["pii_counts"])["EMAIL_ADDRESS"] == 1
    assert manifest.stats["documents_touched"] == 1 and manifest.stats["entities"]["EMAIL_ADDRESS"] == 1
    assert 0 < manifest.stats["share_of_chars_replaced"] < 0.5
    # the raw values appear nowhere but the input: not in the manifest or any other file written
    for path in (tmp_path / "04").rglob("*"):
        if path.is_file() and path.suffix != ".parquet":
            body = path.read_text(errors="replace")
            assert "maria.garcia" not in body and "2671" not in body, path
    table = pq.read_table(next((tmp_path / "04").glob("part-*.parquet")))
    assert "maria.garcia" not in str(table.column("text").to_pylist())


def test_missing_model_is_a_clear_error():
    with pytest.raises(PiiModelError, match="pip install"):
        analyzer("en_core_web_not_installed")


_PATTERNED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")


def _with_patterns(shared, n: int) -> list[dict]:
    """Labeled texts holding e-mails, phones, cards, IBANs, SSNs or IPs (found by patterns, whatever NER does)."""
    records = json.loads((shared / "pii/presidio_research/synth_dataset_v2.json").read_text())
    return [r for r in records if any(s["entity_type"] in _PATTERNED for s in r["spans"])][:n]


def test_ids_and_record_fields_with_personal_data_are_scrubbed_too(shared, tmp_path):
    """PII planted in ids and in extra record fields (kept in `meta`) reaches no 05_pii output: an id
    holding PII becomes a stable keyed hash (the mapping stays in the stage directory), every string
    field is scrubbed like the text, and config names fields to keep verbatim or drop."""
    records = _with_patterns(shared, 40)
    emails = [s["entity_value"] for r in records for s in r["spans"] if s["entity_type"] == "EMAIL_ADDRESS"][:3]
    assert len(emails) == 3
    planted = ["jane.roe@example.org", "+1 415 555 2671", *emails]
    with open(tmp_path / "in.jsonl", "w") as f:
        f.write(json.dumps({"id": "jane.roe@example.org", "text": "A note about tea.", "email": "jane.roe@example.org",
                            "license": "cc-by-4.0", "internal": "+1 415 555 2671"}) + "\n")
        f.write(json.dumps({"id": "doc-2", "text": "Kettles.", "author": {"phone": "+1 415 555 2671",
                                                                        "contacts": emails}}) + "\n")
        for i, r in enumerate(records):
            f.write(json.dumps({"id": f"r{i}", "text": "Plain words.", "note": r["full_text"]}) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp_path / "01", inputs=[str(tmp_path / "in.jsonl")],
              mapper=local_mapper(1))
    scrub = Pii(meta_keep=["license"], meta_drop=["internal"])
    first = run_stage(scrub, run_id="t", stage_dir=tmp_path / "05", inputs=[str(tmp_path / "01")],
                      mapper=local_mapper(1))
    rows = read_dir(tmp_path / "05").to_pylist()
    published = json.dumps(rows)
    assert not [v for v in planted if v in published]
    assert first.manifest.stats["ids_replaced"] == 1 and first.manifest.stats["meta_fields_dropped"] == 1
    hashed = rows[0]["id"]
    assert hashed.startswith("pii-") and [r["id"] for r in rows[1:3]] == ["doc-2", "r0"]
    meta = json.loads(rows[0]["meta"])["fields"]
    assert meta["license"] == "cc-by-4.0" and "internal" not in meta and meta["email"] == "<EMAIL>"
    assert read_dir(tmp_path / "05" / "_id_map").to_pylist() == [{"id": hashed, "original_id": "jane.roe@example.org"}]
    notes = [json.loads(r["meta"])["fields"]["note"] for r in rows[2:]]
    texts = [r["full_text"] for r in records]
    assert notes == [replace_spans(t, s, "placeholder") for t, s in zip(texts, find_pii(texts, PiiConfig()))]
    again = run_stage(Pii(meta_keep=["license"], meta_drop=["internal"]), run_id="t", stage_dir=tmp_path / "05",
                      inputs=[str(tmp_path / "01")], mapper=local_mapper(1), force=True)
    assert again.manifest.stats["ids_replaced"] == 1 and read_dir(tmp_path / "05").to_pylist()[0]["id"] == hashed


def test_instruction_data_is_scrubbed_message_by_message(shared, tmp_path):
    """Fine-tuning data goes through the same stage: every message's content is scrubbed, the
    conversations stay valid JSON, and the counts are per conversation."""
    from tasks.sft import instruction_record, to_messages

    records = _with_patterns(shared, 30)
    with open(tmp_path / "sft.jsonl", "w") as f:
        for i, r in enumerate(records):
            f.write(json.dumps({"id": f"s{i}", "instruction": "Rewrite this politely.", "input": r["full_text"],
                                "output": f"Certainly. {r['full_text']}"}) + "\n")
    run_stage(Ingest(adapter=instruction_record), run_id="t", stage_dir=tmp_path / "01",
              inputs=[str(tmp_path / "sft.jsonl")], mapper=local_mapper(1))
    outcome = run_stage(Pii(messages=True), run_id="t", stage_dir=tmp_path / "05", inputs=[str(tmp_path / "01")],
                        mapper=local_mapper(1))
    rows = read_dir(tmp_path / "05").to_pylist()
    conversations = [json.loads(r["text"])["messages"] for r in rows]
    assert [m["role"] for m in conversations[0]] == ["user", "assistant"]
    values = [s["entity_value"] for r in records for s in r["spans"] if s["entity_type"] in _PATTERNED]
    assert len(values) >= 30 and not [v for v in values if v in json.dumps(rows, ensure_ascii=False)]
    expected = [to_messages({"instruction": "Rewrite this politely.", "input": r["full_text"], "output": "x"})[0]
                for r in records]
    first = find_pii([m["content"] for m in expected], PiiConfig())
    assert [c[0]["content"] for c in conversations] == [
        replace_spans(m["content"], s, "placeholder") for m, s in zip(expected, first)]
    assert outcome.manifest.stats["documents_touched"] == sum(1 for r in rows if r["pii_counts"] != "{}")


def _multilingual_documents(shared, every: int = 1) -> list[tuple[str, str]]:
    docs = []
    for folder in sorted((shared / "multilingual/texts").iterdir()):
        if folder.name != "en":
            for path in sorted(folder.glob("*.txt")):
                docs += [(folder.name, d) for d in path.read_text().split("\n\n") if d.strip()]
    return docs[::every]


def test_text_in_other_languages_is_left_alone_and_their_pii_is_found(shared):
    """The English model and rules never read another language: on real news, Wikipedia, UDHR and chat
    text in 16 languages, at most 1% of documents change; the pattern recognizers still find planted phone
    numbers in national formats, Chinese resident ids (checksum) and e-mails beside CJK text."""
    docs = _multilingual_documents(shared, every=2)
    spans = find_pii([d for _, d in docs], PiiConfig())
    touched = sum(1 for s in spans if s)
    assert len(docs) > 2500 and touched / len(docs) <= 0.01, touched
    zh = [d for lang, d in docs if lang == "zh-Hans"][:20]
    planted = [("手机号", "13812345678"), ("电话：", "+86 139-1234-5678"), ("联系", "jane.doe@example.org谢谢"),
               ("身份证", "11010519491231002X"), ("携帯", "090-1234-5678"), ("전화 ", "010-9876-5432"),
               ("Telefon: ", "+49 30 1234567")]
    texts = [f"{z}{cue}{value}。{z}" for z, (cue, value) in zip(zh, planted)]
    found = find_pii(texts, PiiConfig())
    for text, spans_, (_, plant) in zip(texts, found, planted):
        value = plant.removesuffix("谢谢")
        assert any(text[s:e] == value for s, e, _, _ in spans_), (plant, [text[s:e] for s, e, _, _ in spans_])
        assert all(not any("\u4e00" <= c <= "\u9fff" for c in text[s:e]) for s, e, _, _ in spans_)
    bad_checksum = find_pii(["身份证110105194912310021。"], PiiConfig())[0]
    assert not [s for s in bad_checksum if s[2] == "CN_RESIDENT_ID"]


def test_the_patterns_profile_finds_what_the_pattern_recognizers_find_and_no_names(shared):
    """`[pii] profile = "patterns"`: no NER and no name or place rules, and on plainly English text the same
    pattern spans (e-mails, phones, cards, IBANs, IPs, ids, secrets, addresses) as the thorough profile."""
    from tasks.pii.config import NER_ENTITIES

    records = json.loads((shared / "pii/presidio_research/synth_dataset_v2.json").read_text())[:600]
    texts = [r["full_text"] for r in records]
    thorough, patterns = find_pii(texts, PiiConfig()), find_pii(texts, PiiConfig(profile="patterns"))
    assert not any(s[2] in NER_ENTITIES for spans in patterns for s in spans)
    english = [i for i, t in enumerate(texts) if plainly_english(t)]
    assert len(english) > 150
    # what NER found can overlap a pattern span and be merged with it; compare the spans NER played no part in
    for i in english:
        alone = [s[:3] for s in thorough[i] if s[2] not in NER_ENTITIES
                 and not any(n[0] < s[1] and s[0] < n[1] for n in thorough[i] if n[2] in NER_ENTITIES)]
        assert set(alone) <= {s[:3] for s in patterns[i]}, texts[i][:100]
    assert sum(len(spans) for spans in patterns) > 200


def test_a_model_per_language_reads_only_its_language(shared, tmp_path):
    """`[pii.models] de = ...`: German text gets that spaCy pipeline's PERSON/LOCATION (here a real pipeline
    saved to disk, its entities from a rule-based component), other languages never do, and a model that is
    not installed fails with its remedy."""
    import spacy

    from tasks.pii.config import NER_ENTITIES

    nlp = spacy.blank("de")
    nlp.add_pipe("entity_ruler", name="ner").add_patterns(
        [{"label": "PER", "pattern": "Angela Merkel"}, {"label": "LOC", "pattern": "Bremen"}])
    nlp.to_disk(tmp_path / "de_model")
    docs = dict(_multilingual_documents(shared, every=1)[::-1])  # a paragraph per language
    plant = " Angela Merkel besuchte gestern Bremen."
    texts = [docs["de"] + plant, docs["es"] + plant, docs["de"]]
    cfg = PiiConfig(models={"de": str(tmp_path / "de_model")})
    german, spanish, plain = find_pii(texts, cfg, ["de", "es", "de"])
    assert {(texts[0][s:e], entity) for s, e, entity, _ in german if entity in NER_ENTITIES} == {
        ("Angela Merkel", "PERSON"), ("Bremen", "LOCATION")}
    assert not [s for s in spanish if s[2] in NER_ENTITIES] and not [s for s in plain if s[2] in NER_ENTITIES]
    assert not [s for s in find_pii(texts[:1], PiiConfig(), ["de"])[0] if s[2] in NER_ENTITIES]
    assert not [s for s in find_pii(texts[:1], cfg.model_copy(update={"profile": "patterns"}), ["de"])[0]
                if s[2] in NER_ENTITIES]
    with pytest.raises(PiiModelError, match=r"\[pii.models\]"):
        find_pii(texts[:1], PiiConfig(models={"de": "de_core_news_not_installed"}), ["de"])
    with pytest.raises(ValueError, match="already reads"):
        PiiConfig(models={"en": "en_core_web_sm"})


def test_the_street_address_gate_never_hides_an_address(shared):
    """The RE2 tests that decide which texts the street-address rules read (one per rule) let through every
    text in which a rule finds an address (Faker's addresses of many countries, in sentences): the rules
    told which could match find what all of them find. Most prose whose numbers are years and counts is
    kept out."""
    import random

    import pyarrow as pa
    import pyarrow.compute as pc
    from faker import Faker

    from tasks.pii.addresses import street_address_gate, street_addresses
    from tasks.pii.patterns import plausible_rows

    rng, texts = random.Random(0), []
    for locale in ("en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "nl_NL", "da_DK", "sv_SE", "pl_PL",
                   "hu_HU", "pt_BR", "fi_FI", "cs_CZ"):
        fake = Faker(locale)
        fake.seed_instance(7)
        for _ in range(60):
            template = rng.choice(["{}", "Send it to {} please.", "I live at {}\nThanks", "Address: {} | phone"])
            texts += [template.format(fake.address()), f"{fake.street_address()} {fake.postcode()} {fake.city()}"]
    wiki = (shared / "pretrain/wikitext2_tok").glob("*.txt")
    prose = [t[i: i + 3000] for t in (p.read_text() for p in sorted(wiki)) for i in range(0, len(t), 3000)]
    gate = pc.match_substring_regex(pa.array(texts + prose), street_address_gate()).to_pylist()
    rules = plausible_rows(texts + prose, ["STREET_ADDRESS"])["STREET_ADDRESS"]
    assert [bool(r) for r in rules] == gate
    for strict in (False, True):
        hidden = [t for t, r in zip(texts + prose, rules) if list(street_addresses(t, strict, r)) != list(street_addresses(t, strict))]
        assert hidden == []
    assert sum(1 for t in texts if street_addresses(t)) > len(texts) * 0.9
    assert sum(gate[len(texts):]) < len(prose) / 2  # what the gate is for
    # the gate's capitalized word opens with A-Z, 0-9 or a code point above ASCII outside U+2000-206F: every
    # character the rules take as capitalized (str.isupper, str.isdigit) is among them
    outside = [c for c in map(chr, (*range(0x80), *range(0x2000, 0x2070))) if not ("A" <= c <= "Z" or "0" <= c <= "9")]
    assert not [c for c in outside if c.isupper() or c.isdigit()]


def test_a_narrower_pattern_test_runs_only_where_its_wider_one_passes(shared):
    """Card, SSN and Chinese id tests run only on texts the phone test lets through, and the phone, IBAN and
    street tests only on texts with a digit: every text any of them lets through on its own, the wider test
    lets through too (Faker's numbers of many countries, prose). The phone test, written for a cheap compile,
    lets through what seven digits at most three non-digits apart do."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from faker import Faker

    from tasks.pii.addresses import STREET_RULES
    from tasks.pii.patterns import _WITHIN, _gate_pattern, plausible_rows

    texts = []
    for locale in ("en_US", "en_GB", "de_DE", "fr_FR", "zh_CN", "ja_JP", "pt_BR", "hi_IN", "ar_EG"):
        fake = Faker(locale)
        fake.seed_instance(5)
        texts += [f"card {fake.credit_card_number()}, ssn {fake.ssn()}, phone {fake.phone_number()}" for _ in range(40)]
    texts += ["id 11010519491231002X", "4111-1111-1111-1111", "078-05-1120", "٤١١١ ١١١١ ١١١١ ١١١١",
              "P.O. Box 1234", "USS Nimitz FPO AP 96601", "Hauptstraße 5", "Via Roma 12"]
    for locale in ("en_US", "de_DE", "fr_FR", "nl_NL", "en_GB"):
        fake = Faker(locale)
        fake.seed_instance(6)
        texts += [f"pay to {fake.iban()} at {fake.address()}" for _ in range(30)]
    wiki = (shared / "pretrain/wikitext2_tok/valid.txt").read_text()
    texts += [wiki[i: i + 3000] for i in range(0, 300_000, 3000)]
    could = plausible_rows(texts, [*_WITHIN, "STREET_ADDRESS"])
    could.update({f"street:{rule}": np.array([rule in r for r in could["STREET_ADDRESS"]]) for rule in STREET_RULES})
    for narrow, wide in _WITHIN.items():
        alone = pc.match_substring_regex(pa.array(texts), _gate_pattern(narrow)).to_numpy(zero_copy_only=False)
        wider = pc.match_substring_regex(pa.array(texts), _gate_pattern(wide)).to_numpy(zero_copy_only=False)
        assert alone.sum() > 0 and not (alone & ~wider).any(), narrow
        assert (could[narrow] == alone).all(), narrow
    seven = pc.match_substring_regex(pa.array(texts), r"(?:\p{Nd}\P{Nd}{0,3}){7}").to_numpy(zero_copy_only=False)
    assert seven.sum() > 100 and (seven == could["PHONE_NUMBER"]).all()


def test_the_iban_gate_never_hides_an_iban():
    """The RE2 test before the IBAN recognizers lets through every text in which they find an IBAN, in
    upper or lower case, compact or in groups of four."""
    import random

    import pyarrow as pa
    import pyarrow.compute as pc
    from faker import Faker

    from tasks.pii.patterns import _ibans_in_lower_case, iban_gate, iban_recognizer

    rng, texts = random.Random(0), []
    for locale in ("en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "nl_NL", "pl_PL", "fi_FI", "lv_LV", "bg_BG"):
        fake = Faker(locale)
        fake.seed_instance(3)
        for _ in range(20):
            iban = fake.iban()
            grouped = " ".join(iban[i: i + 4] for i in range(0, len(iban), 4))
            texts.append(rng.choice(["my iban is {}", "IBAN: {}", "pay {} today"]).format(
                rng.choice([iban, iban.lower(), grouped, grouped.lower()])))
    texts += ["in 1990 the company grew", "at 12 the meeting ended", "at12 3456 7890 1", "at1234567"]
    gate = pc.match_substring_regex(pa.array(texts), iban_gate()).to_pylist()
    found = [bool(iban_recognizer().analyze(t, ["IBAN_CODE"]) or list(_ibans_in_lower_case(t))) for t in texts]
    assert sum(found) >= 150 and not any(f and not g for f, g in zip(found, gate))
    # "in" is no IBAN country; "at" is (Austria), but its check digits must follow it, then eight more
    assert gate[-4:] == [False, False, True, False]


def test_the_cue_tests_hide_no_cued_name_or_place(shared):
    """The batch tests before the name and place cues let through every text in which a cue finds a name or
    a place (the labeled texts, the shared prose, cues in other cases and with the long s)."""
    from tasks.pii.names import cue_rows, cued_names, cued_places

    records = json.loads((shared / "pii/presidio_research/synth_dataset_v2.json").read_text())
    wiki = (shared / "pretrain/wikitext2_tok/valid.txt").read_text()
    texts = [r["full_text"] for r in records] + [wiki[i: i + 3000] for i in range(0, 600_000, 3000)]
    texts += ["MY NAME IS Ada", "everyone callſ me Aantje", "Mrs Dalloway said", "she grew up in Ohio", "Where: Oslo"]
    named, placed = cue_rows(texts)
    assert sum(1 for t in texts if list(cued_names(t))) > 100 and sum(1 for t in texts if list(cued_places(t))) > 20
    assert [t for t, ok in zip(texts, named) if not ok and list(cued_names(t))] == []
    assert [t for t, ok in zip(texts, placed) if not ok and list(cued_places(t))] == []
    assert sum(named) < len(texts)  # what the tests are for

