"""Finding PII spans in texts and merging them: NER, Presidio's pattern recognizers where their
patterns match, Loom's own pattern recognizers, names and places; overlaps merged so no fragment
survives between two placeholders."""

from __future__ import annotations

import itertools
import re

from tasks.langid import UNDETERMINED, identify, latin_share, probability_of
from tasks.pii.config import MAX_NLP_CHARS, NER_ENTITIES, PRESIDIO_PATTERN_ENTITIES, PiiConfig
from tasks.pii.engine import NER_LABELS, analyzer, freeze_loaded, language_model, pattern_gates
from tasks.pii.fast_ner import ner_docs
from tasks.pii.names import (
    cue_rows,
    cued_names,
    cued_places,
    listed_names,
    name_lines,
    name_lists,
    ner_view,
    other_mentions,
)
from tasks.pii.patterns import LANGUAGE_READERS, OWN_FINDERS, STRICT_FINDERS, plausible_rows, trim_email

# ---- finding and replacing ----------------------------------------------------------------------

def _chunks(text: str) -> list[tuple[int, str]]:
    """(offset, piece) with pieces of at most MAX_NLP_CHARS, cut at line breaks where possible."""
    if len(text) <= MAX_NLP_CHARS:
        return [(0, text)]
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + MAX_NLP_CHARS)
        if end < len(text):
            cut = text.rfind("\n", start + MAX_NLP_CHARS // 2, end)
            end = cut + 1 if cut > 0 else end
        out.append((start, text[start:end]))
        start = end
    return out


def find_pii(texts: list[str], cfg: PiiConfig, langs: list[str] | None = None
             ) -> list[list[tuple[int, int, str, float]]]:
    """For each text, its PII spans (start, end, entity, score), overlaps merged, sorted. Pattern
    recognizers run on every text; NER and the rules tuned on English (name lists, name and place cues)
    only on texts in `cfg.ner_languages`, by `langs` (a language per text; identified here when None).
    A model never reads a language it was not trained on: that rewrote clean Chinese text as <LOCATION>."""
    from presidio_analyzer.nlp_engine import NlpArtifacts

    engine = analyzer(cfg.model, cfg.fast_ner)
    patterns_only = cfg.profile == "patterns"  # no NER, no name or place rules: the pattern recognizers alone
    use_names, use_places = cfg.name_lists and not patterns_only, cfg.place_cues and not patterns_only
    if use_names:
        name_lists()
    freeze_loaded()
    nlp_engine = engine.nlp_engine
    nlp = nlp_engine.nlp["en"]
    ner_labels = nlp_engine.ner_model_configuration.model_to_presidio_entity_mapping
    ner_score = nlp_engine.ner_model_configuration.default_score
    gates = pattern_gates(engine)
    pieces = [(i, offset, piece) for i, text in enumerate(texts) for offset, piece in _chunks(text)]
    found: list[list] = [[] for _ in texts]
    wanted = set(cfg.entities) - (NER_ENTITIES if patterns_only else set())
    ner_wanted = wanted & NER_ENTITIES
    pattern_entities = sorted(wanted - NER_ENTITIES)
    could = plausible_rows([p for _, _, p in pieces], pattern_entities)
    # the English-tuned finders read text in ner_languages (language ID only where it is not plainly English);
    # the strict ones the rest
    english_found: dict = {}  # (piece, entity) -> what an English-tuned finder found before the language was known
    modeled_text, languages = (_modeled(texts, langs, cfg) if ner_wanted or use_names or use_places
                               else _modeled_where_read(texts, langs, cfg, pieces, could, pattern_entities,
                                                        english_found) if patterns_only
                               else (None, None))
    modeled = [modeled_text is None or modeled_text[i] for i, _, _ in pieces]
    # the text as NER reads it (where NER reads it); in the patterns profile only Presidio's context words need it
    views = ([ner_view(p, use_names) if on else p for (_, _, p), on in zip(pieces, modeled)] if ner_wanted
             else [None] * len(pieces))
    ner_iter = ner_docs(nlp, (v for v, on in zip(views, modeled) if on), cfg.batch_size, cfg.fast_ner) \
        if ner_wanted else None
    # a piece's tokens only when NER reads it, or a pattern recognizer needs them for its context words
    docs = (next(ner_iter) if on and ner_iter is not None else None for on in modeled)
    named, placed = (cue_rows([p for _, _, p in pieces]) if use_names or use_places
                     else ([False] * len(pieces), [False] * len(pieces)))  # where a name or a place cue can be
    for k, ((i, offset, piece), view, doc, on) in enumerate(zip(pieces, views, docs, modeled)):  # on: NER reads it
        spans = []
        # Presidio's pattern recognizers run only where their pattern could match. NER results
        # are read off the doc as Presidio's SpacyRecognizer would (mapped label, default score),
        # without building its per-token artifacts for every document.
        plausible = [e for e in pattern_entities if e not in could or could[e][k]]
        entities = [e for e in plausible if e in PRESIDIO_PATTERN_ENTITIES
                    and (e not in gates or gates[e](piece))]
        if entities:
            if doc is None:
                doc = nlp.make_doc(view if view is not None else ner_view(piece, use_names) if on else piece)
            # Presidio raises a weak match's score when a context word ("ssn", "iban", "card") is
            # near, comparing its lemmas. The NER-only pipeline has no lemmatizer, so the words in
            # lower case stand in (Presidio matches context words as substrings: "cards" has "card").
            artifacts = NlpArtifacts(entities=[], tokens=doc, tokens_indices=[t.idx for t in doc],
                                     lemmas=[t.lower_ for t in doc], nlp_engine=nlp_engine, language="en", scores=[])
            spans = [(r.start, r.end, r.entity_type, r.score)
                     for r in engine.analyze(piece, language="en", entities=entities, nlp_artifacts=artifacts)]
        finders = OWN_FINDERS if on else STRICT_FINDERS
        for entity in (e for e in plausible if e in finders):
            hits = english_found.pop((k, entity), None) if on else None
            spans += [(start, end, entity, score) for start, end, score in
                      (_finds(finders, entity, piece, could, k) if hits is None else hits)]
        for ent in doc.ents if doc is not None else ():
            entity = ner_labels.get(ent.label_)
            if entity in ner_wanted:
                end = ent.start_char + _name_length(piece[ent.start_char:ent.end_char])
                if end > ent.start_char:  # not numbers tagged PERSON (Presidio issue #1173), code identifiers
                    spans.append((ent.start_char, end, entity, ner_score))
        found[i] += [(start + offset, end + offset, entity, score) for start, end, entity, score in spans
                     if score >= cfg.threshold(entity)]
        if not on:  # patterns only in a language the model and the rules were not made for
            continue
        if "PERSON" in wanted and use_names:
            found[i] += [(s + offset, e + offset, "PERSON", score)
                         for s, e, score in itertools.chain(listed_names(piece), name_lines(piece),
                                                            cued_names(piece) if named[k] else ())
                         if score >= cfg.threshold("PERSON")]
        if "LOCATION" in wanted and use_places:
            found[i] += [(s + offset, e + offset, "LOCATION", score) for s, e, score in
                         (cued_places(piece) if placed[k] else ()) if score >= cfg.threshold("LOCATION")]
    if ner_wanted and cfg.models and languages is not None:
        _language_ner(texts, languages, modeled_text, cfg, ner_wanted, ner_score, found)
    if "PERSON" in wanted:
        for text, spans in zip(texts, found):
            spans += other_mentions(text, spans, use_names)
    for text, spans in zip(texts, found):  # an e-mail address is ASCII: never the CJK text around it
        spans[:] = [trim_email(text, s) if s[2] == "EMAIL_ADDRESS" else s for s in spans]
    return [merge_spans(spans) for spans in found]


_ENGLISH_WORDS = re.compile(r"\b(?:the|and|of|to|is|was|with|for|that|this|you|are|my|your|have)\b", re.IGNORECASE)


def plainly_english(text: str) -> bool:
    """ASCII text with several of English's commonest words: English, without asking the model."""
    head = text[:600]
    return head.isascii() and len(_ENGLISH_WORDS.findall(head, 0, 600)) >= 3


def _language_ner(texts: list[str], languages: list[str], modeled: list[bool], cfg: PiiConfig, wanted: set[str],
                  score: float, found: list[list]) -> None:
    """`[pii.models]`: a text in one of its languages (and not read by the main model) gets that model's
    PERSON/LOCATION spans."""
    for lang, model in cfg.models.items():
        chosen = [i for i, (language, on) in enumerate(zip(languages, modeled)) if language == lang and not on]
        if not chosen:
            continue
        nlp = language_model(model)
        pieces = [(i, offset, piece) for i in chosen for offset, piece in _chunks(texts[i])]
        docs = ner_docs(nlp, (piece for _, _, piece in pieces), cfg.batch_size, fast=False)
        for (i, offset, piece), doc in zip(pieces, docs):
            for ent in doc.ents:
                entity = NER_LABELS.get(ent.label_)
                end = ent.start_char + _name_length(piece[ent.start_char:ent.end_char])
                if entity in wanted and end > ent.start_char and score >= cfg.threshold(entity):
                    found[i].append((ent.start_char + offset, end + offset, entity, score))


def _modeled(texts: list[str], langs: list[str] | None, cfg: PiiConfig) -> tuple[list[bool], list[str]]:
    """Whether NER and the English-tuned rules read each text, and each text's language: its language is one of `ner_languages`,
    or it may well be (at least `min_lang_probability`: short English texts are often taken for a
    neighbour); a text too short to judge when it is mostly in the Latin script the model reads. A text
    in another language or script gets the pattern recognizers only."""
    if langs is None:  # plain English text needs no model to say so (most of an English corpus: a fifth of the time)
        english = "en" in cfg.ner_languages
        plain = [english and plainly_english(t) for t in texts]
        asked = [t for t, p in zip(texts, plain) if not p]
        answers = iter(identify(asked))
        found = [("en", 1.0) if p else next(answers) for p in plain]
    else:
        found = [(lang, 1.0) for lang in langs]
    unsure = [i for i, (lang, _) in enumerate(found) if lang not in cfg.ner_languages and lang != UNDETERMINED]
    likely = dict(zip(unsure, probability_of([texts[i] for i in unsure], cfg.ner_languages)))
    out = []
    for i, (text, (lang, _)) in enumerate(zip(texts, found)):
        if lang == UNDETERMINED:
            out.append(cfg.undetermined_ner and latin_share(text) >= 0.5)
        else:
            out.append(lang in cfg.ner_languages or likely[i] >= cfg.min_lang_probability)
    return out, [lang for lang, _ in found]


def _finds(finders: dict, entity: str, piece: str, could: dict, k: int) -> list:
    """What `finders[entity]` finds in piece k (the street-address rules told which could match it)."""
    if entity == "STREET_ADDRESS" and entity in could:
        return list(finders[entity](piece, rules=could[entity][k]))
    return list(finders[entity](piece))


def _modeled_where_read(texts: list[str], langs: list[str] | None, cfg: PiiConfig, pieces: list, could: dict,
                        entities: list[str], english_found: dict) -> tuple[list[bool], None]:
    """`_modeled` for the patterns profile, where only the phone and street-address finders read a text's
    language (their strict forms outside ner_languages, which find nothing where the English-tuned ones
    find nothing): language ID only for texts where an English-tuned one found something (kept in
    `english_found` by piece and entity, for the caller), the others taken as modeled (nothing reads that)."""
    asked = set()
    for k, (i, _, piece) in enumerate(pieces):
        for entity in LANGUAGE_READERS.intersection(entities):
            if entity not in could or could[entity][k]:
                english_found[k, entity] = hits = _finds(OWN_FINDERS, entity, piece, could, k)
                if hits:
                    asked.add(i)
    modeled = [True] * len(texts)
    if asked:
        asked_texts = sorted(asked)
        answers, _ = _modeled([texts[i] for i in asked_texts], [langs[i] for i in asked_texts] if langs else None,
                              cfg)
        for i, on in zip(asked_texts, answers):
            modeled[i] = on
    return modeled, None


_NAME_LIKE = re.compile(r"[^\W\d_]+(?:[ '’.-]+[^\W\d_]+)*")


def _name_length(span: str) -> int:
    """How much of an NER span looks like a person or place name (0: none of it). The span
    is cut at its first line break; what is left must be words of letters (with spaces,
    hyphens, apostrophes, initials' dots between them), up to a space or punctuation; words
    glued to digits or symbols are code (`arg1`, `m_expr`, `x==y`), and numbers tagged PERSON
    (Presidio issue #1173) have no letters."""
    head = span.split("\n", 1)[0]
    m = _NAME_LIKE.match(head)
    if not m:
        return 0
    after = head[m.end(): m.end() + 1]
    if after and not (after.isspace() or after in ",;:!?\"'’)"):  # glued to a digit or symbol: code, not a name
        return 0
    return m.end()


def merge_spans(spans: list[tuple[int, int, str, float]]) -> list[tuple[int, int, str, float]]:
    """Overlapping or touching spans become one. A span inside another takes the outer one's type (a
    street named after a person is an address, a name in an e-mail address is an e-mail); otherwise
    the highest-scoring (then longest) part gives the type."""
    merged: list[list] = []
    for start, end, entity, score in sorted(spans):
        if merged and start <= merged[-1][1]:
            last = merged[-1]
            inner, outer = end <= last[1], start == last[0] and end >= last[1]
            if (start, end) == (last[0], last[1]) or not (inner or outer):
                if (score, end - start) > (last[3], last[1] - last[0]):
                    last[2], last[3] = entity, score
            elif outer:
                last[2], last[3] = entity, score
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, entity, score])
    return [tuple(m) for m in merged]
