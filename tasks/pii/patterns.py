"""Pattern recognizers of Loom's own, for every language: street addresses (many countries' street words),
phone numbers, payment cards (Luhn), IBANs written in lower case (checked by Presidio's recognizer), e-mail
addresses spelt out ("jane (at) example (dot) com") or glued to other scripts, and secrets (provider API keys
and tokens, private key blocks, JSON web tokens, bearer tokens, `password=` values, and credentials in code
and config files: DB_PASSWORD=..., "client_secret": "...", githubToken: '...', told from code that only
names one: variables, token ids, calls, types). Each finder yields
(start, end, score); `PLAUSIBLE` holds the cheap tests that decide which recognizers can match a text."""

from __future__ import annotations

import itertools
import re
from functools import lru_cache, partial

# Cheap tests that decide which recognizers can possibly match a text. The secret test is what each of
# SECRET_PATTERNS needs (a provider's prefix, a private key block, a password word before ':' or '='), so
# prose that merely says "key" or "pass" is not searched by all of them.
_SECRET_WORDS = r"(?i:password|passwd|pwd|pass|secret|api[_-]?key|access[_-]?token|auth[_-]?token)"
# a credential's name as code and config files write it, the word inside an identifier (DB_PASSWORD,
# AWS_SECRET_ACCESS_KEY, githubToken): what the gate lets through before the ':' or '='
_CREDENTIAL_WORDS = r"(?i:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)"
_SECRET_NEEDS = (r"AKIA|ASIA|gh[pousr]_|xox[abposr]-|[sr]k_(?:live|test)_|sk-|AIza|PRIVATE KEY|eyJ|(?i:bearer)\s|"
                 r"(?:" + _CREDENTIAL_WORDS + r"[A-Za-z0-9_.-]{0,64}[\"']?|" + _SECRET_WORDS + ")")  # the last: then ':' or '='

PLAUSIBLE = {
    "EMAIL_ADDRESS": re.compile(r"@|(?i:[\[(]\s*(?:at|@)\s*[\])])").search,
    "PHONE_NUMBER": re.compile(r"(?:\d\D{0,3}){7}").search,
    "CREDIT_CARD": re.compile(r"(?:\d[ -]?){12}").search,
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}[ -]?\d{2}").search,
    "IP_ADDRESS": re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d|:[0-9A-Fa-f]{0,4}:").search,
    "US_SSN": re.compile(r"\d{3}\D{0,2}\d{2}\D{0,2}\d{4}").search,
    "STREET_ADDRESS": re.compile(r"\d").search,
    "SECRET": re.compile(_SECRET_NEEDS + r"\s*[:=]").search,
    "CN_RESIDENT_ID": re.compile(r"\d{17}[\dXx]").search,
}

# The same tests in RE2 syntax, run over a whole batch at once by Arrow (C++, linear time): a text's pieces
# reach the per-text recognizers only where one of these matches. \p{Nd} is what `re` means by \d in str
# patterns (any decimal digit); (?i) folds case as IGNORECASE does (the long s, the Kelvin sign). Arrow
# compiles a test anew for each batch, and a large Unicode class (\P{Nd}, \p{Lu}) repeated costs up to 2 ms
# to compile; any character ((?s:.)) or a range of code points is looser and compiles in a tenth of that.
PLAUSIBLE_RE2 = {
    # an address has no space beside its @ (WikiText's " @-@ " has), or it is spelt out: "jane (at) example"
    "EMAIL_ADDRESS": r"\S@\S|(?i:[\[(][\s\p{Z}]*(?:at|@)[\s\p{Z}]*[\])])",
    # seven digits, each within four characters of the one before: the same texts as seven digits at most
    # three other characters apart (a digit between two of the seven is one more in such a chain)
    "PHONE_NUMBER": r"\p{Nd}(?:(?s:.){0,3}\p{Nd}){6}",
    "CREDIT_CARD": r"(?:\p{Nd}[ -]?){12}",
    "IBAN_CODE": None,  # iban_gate(), below: it is built from Presidio's IBAN countries
    "IP_ADDRESS": r"\p{Nd}\.\p{Nd}{1,3}\.\p{Nd}{1,3}\.\p{Nd}|:[0-9A-Fa-f]{0,4}:",
    "US_SSN": r"\p{Nd}{3}(?s:.){0,2}\p{Nd}{2}(?s:.){0,2}\p{Nd}{4}",  # 3-2-4 digits, any two characters apart
    "STREET_ADDRESS": None,  # street_address_gates(), below: one per rule, built from the street words
    # \s of `re` in RE2: ASCII whitespace, \v, the separators \x1c-\x1f, NEL and every Unicode space (\p{Z})
    "SECRET": _SECRET_NEEDS + r"[\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]*[:=]",
    "CN_RESIDENT_ID": r"\p{Nd}{17}[\p{Nd}Xx]",
}


@lru_cache(maxsize=1)
def street_address_gates() -> dict[str, str]:
    """Rule -> what any match of that street-address rule (`STREET_RULES`, and "corner" for _CORNER) needs,
    in RE2: a number and a street suffix within five words; a number, one to four words capitalized (or
    particles, or with a street word) and a number; a street word or prefix and a number; a post office
    box; a military address; "corner of". Prose whose numbers are years and counts ("between 1914 and
    1918") is then not searched by the rules. Each is looser than its rule everywhere (no lookbehinds, no
    month test), never stricter."""
    ws = r"[\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]"  # what `re` means by \s in a str pattern
    word = r"\S+"  # RE2's \S is ASCII: it takes every character a word of `re` takes, and more
    after = r"(?:[^A-Za-z0-9_]|$)"  # \b after a letter, or a letter of another script
    # a capitalized word (str.isupper/isdigit: \p{Lu}, \p{Lt}, \p{N}, \p{So}) or a particle; those classes lie in
    # A-Z, 0-9 and the code points above ASCII but for General Punctuation (U+2000-206F: "1914 – 1918")
    cap = r"(?:[A-Z0-9\x{80}-\x{1FFF}\x{2070}-\x{10FFFF}]\S*|" + "|".join(sorted(_STREET_LOWER)) + ")"
    street = "(?i:" + "|".join(re.escape(w) for w in sorted(_STREET_WORDS)) + ")"
    return {
        "named": rf"\p{{Nd}}[A-Za-z]?{ws}+(?:{word}{ws}+){{0,4}}{_STREET_SUFFIX}{after}",
        "words": rf"\p{{Nd}}{ws}+(?:{word}[ \t]+){{0,3}}{street}\S*(?:[ \t]+{word}){{0,3}}[ \t]+\p{{Nd}}|"
                 rf"\p{{Nd}}{ws}+{cap}(?:[ \t]+{cap}){{0,3}}[ \t]+\p{{Nd}}",
        "street_word": _STREET_WORD_END.replace("(?<!bri)", "") + r"[ \t]+\p{Nd}|"
                       rf"{_STREET_PREFIX}(?:[ \t]+{word}){{1,4}}[ \t]+\p{{Nd}}",
        "number_first": rf"\p{{Nd}}[^\n]{{0,6}}{_NUMBER_FIRST_WORD}[ \t]",
        "box": r"P\.?[ \t]?O\.?[ \t]+Box[ \t]+\p{Nd}",
        "military": r"(?i:[FAD]PO)[ \t]+(?i:A[AEP])[ \t]+\p{Nd}{5}",
        "corner": r"corner of[ \t]",
    }


def street_address_gate() -> str:
    """What any street-address rule needs (`street_address_gates`, any of them), in RE2."""
    return "|".join(street_address_gates().values())


def plausible_rows(texts: list[str], entities) -> dict:
    """Entity -> for each text, whether its recognizers could match it (PLAUSIBLE, for a whole batch at once:
    Arrow's RE2, many times faster than one `re` search per text and entity). For STREET_ADDRESS, each
    text's set of the rules that could match it (empty: none), which `_addresses` is given as `rules`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(texts, pa.string())
    gated: dict[str, np.ndarray] = {}
    passed: dict[str, tuple] = {}  # wider test -> the rows it let through, and their texts

    def gate(name: str) -> np.ndarray:
        if name not in gated:
            pattern = _gate_pattern(name)
            if name in _WITHIN:  # only texts that pass the wider test can pass this one
                wide = _WITHIN[name]
                if wide not in passed:
                    rows = np.flatnonzero(gate(wide))
                    passed[wide] = rows, array if len(rows) == len(texts) else array.take(pa.array(rows))
                rows, subset = passed[wide]
                gated[name] = np.zeros(len(texts), dtype=bool)
                if len(rows):
                    gated[name][rows] = pc.match_substring_regex(subset, pattern).to_numpy(zero_copy_only=False)
            else:
                gated[name] = pc.match_substring_regex(array, pattern).to_numpy(zero_copy_only=False)
        return gated[name]

    out = {}
    for entity in entities:
        if entity == "STREET_ADDRESS":
            could = {rule: gate(f"street:{rule}") for rule in street_address_gates()}
            rules = out[entity] = np.full(len(texts), frozenset(), dtype=object)
            for row in np.flatnonzero(np.logical_or.reduce(list(could.values()))).tolist():
                rules[row] = frozenset(rule for rule, on in could.items() if on[row])
        elif entity in PLAUSIBLE_RE2:
            out[entity] = gate(entity)
        elif entity in PLAUSIBLE:
            out[entity] = np.array([bool(PLAUSIBLE[entity](t)) for t in texts], dtype=bool)
    return out


def _gate_pattern(name: str) -> str:
    """The RE2 test a gate name stands for: an entity's (PLAUSIBLE_RE2, IBAN), a street rule's, or DIGIT."""
    if name == "DIGIT":
        return r"\p{Nd}"
    if name.startswith("street:"):
        return street_address_gates()[name.removeprefix("street:")]
    return PLAUSIBLE_RE2[name] or _gates()[name]


_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|"
    r"Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail|Trl|Alley|Crescent|Close|Row|Walk|Plaza|Loop|Path)"
)
LETTER = r"[^\W\d_]"  # any letter, in any script
# a word, or an ordinal (East 29th Avenue); words are bounded in length (here and before a street word's ending),
# so that a search backs off at most that far: a 40 KB run of "x'x'x'..." took 18 s, one search per letter
_WORD = r"(?:" + LETTER + r"[\w'’-]{0,40}\.?|\d{1,3}(?:st|nd|rd|th))"
# Street names by their language's own street word: Søndergade 52, Hansinegata 120, Loorenstrasse 149,
# Gesterbyntie 68, Populierenstraat 374, Rue Gafsa 62, Via Franscini 71, ul. Cicha 86.
_STREET_WORD_END = (r"(?:stra(?:ss|ß)e|str\.|gasse|weg|gata|gatan|vej|veien|vegen|väg|vägen|katu|tie|laan|"
                    r"straat|steeg|dreef|utca|ulica|allee|platz|damm|ufer|(?<!bri)gade)")
_STREET_PREFIX = r"(?:Rue|Via|Viale|Rua|Calle|Avenida|Avda\.|Piazza|Strada|Carrer|Boulevard|Chemin|Allée|ul\.|ulica)"
_PARTICLE = r"(?:de|du|des|la|le|les|aux|au|l['’]|d['’])"
_NUMBER_FIRST_WORD = r"(?i:rue|avenue|av\.|boulevard|bd|place|chemin|allée|impasse|quai|cours|route|square|ruelle)"
# The street-address rules, in order: a number, up to four words and a street suffix (with a unit); a number,
# one to four words and a number (whose words _addresses then checks); a street word or prefix and a number;
# a post office box; the US military's addresses (ship or unit, then FPO/APO/DPO and state code).
STREET_RULES = {
    "named": r"\b\d{1,6}[A-Za-z]?\s+(?P<named>(?:" + _WORD + r"\s+){0,4})" + _STREET_SUFFIX + r"\b\.?"
             r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl|#)\.?\s*[\w-]+)?",
    # the number first, then the street word and the name, as French (and Belgian, Swiss, Canadian) addresses
    # are written: 12 rue de la Paix, 3 bis avenue Victor-Hugo, 45 bd Saint-Michel
    "number_first": r"\b(?P<number_first>\d{1,5}(?:[ \t]?(?:bis|ter|[A-Za-z]))?,?[ \t]+" + _NUMBER_FIRST_WORD
                    + r"(?:[ \t]+" + _PARTICLE + r")*[ \t]*(?:l['’]|d['’])?[A-ZÀ-Þ][\w'’-]*"
                    r"(?:[ \t]+(?:[A-ZÀ-Þ][\w'’-]*|" + _PARTICLE + r")){0,3})",
    "words": r"\b\d{1,6}\s+(?P<words>" + _WORD + r"(?:[ \t]+" + _WORD + r"){0,3})[ \t]+\d{1,5}\b\.?",
    "street_word": r"(?<![\w-])(?:" + LETTER + r"[\w'’-]{0,40}" + _STREET_WORD_END + r"|" + _STREET_PREFIX
                   + r"(?:[ \t]+" + _WORD + r"){1,4})[ \t]+\d{1,5}[A-Za-z]?\b\.?",
    "box": r"\b(?P<box>P\.?[ \t]?O\.?[ \t]+Box[ \t]+\d{1,6})\b",
    "military": r"\b(?i:(?:USNS|USNV|USS|USCGC)[ \t]+" + LETTER + r"[\w'’-]*|PSC[ \t]+\d{3,5},?[ \t]+Box[ \t]+"
                r"\d{3,5}|Unit[ \t]+\d{3,5}[ \t]+Box[ \t]+\d{3,5})\s+(?i:[FAD]PO)[ \t]+(?i:A[AEP])[ \t]+\d{5}\b",
}
STREET_ADDRESS = re.compile("|".join(STREET_RULES.values()))

# A test whose every match holds a match of a wider one: seven digits, at most three other characters
# apart, are in twelve at most one apart (cards), in 3-2-4 digits at most two apart (SSNs), in 17 in a row;
# every street rule but "corner of" and an IBAN's check digits need a digit, which half of prose's pieces
# lack (one pass for a digit is cheaper than the tests it spares).
_WITHIN = {"CREDIT_CARD": "PHONE_NUMBER", "US_SSN": "PHONE_NUMBER", "CN_RESIDENT_ID": "PHONE_NUMBER",
           "PHONE_NUMBER": "DIGIT", "IBAN_CODE": "DIGIT", **{f"street:{rule}": "DIGIT" for rule in STREET_RULES}}

_STREET_RULE_PATTERNS = [(rule, re.compile(pattern)) for rule, pattern in STREET_RULES.items()]
# Two streets that meet: "the corner of Nieuwe Baan 473 St. and Inna Loop St."
_CORNER = re.compile(r"\bcorner of[ \t]+(?P<first>" + LETTER + r"[\w'’.-]*(?:[ \t]+[\w'’.-]+){0,4}?)[ \t]+and[ \t]+"
                     r"(?P<second>" + LETTER + r"[\w'’.-]*(?:[ \t]+" + LETTER + r"[\w'’.-]*){0,3})")
# The rest of a postal address after its street line, part by part: a unit (Suite 12), a postcode, a
# state code, a place (LAPPEENRANTA, Mora de Rubielos, Cyprus (Greek)), or a place and its postcode.
_POSTCODE = r"(?:\d{4,6}(?:-\d{4})?|\d{2}-\d{3}|\d{3} \d{2}|[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2})(?![\w-])"
# between parts: a line break (the next line may open with a bullet: > • · * -, or ??? where a bullet
# did not survive decoding), a comma, a field separator of a flattened record (| > • ·), or a run of spaces
BULLET = r"(?:[>•·*-]|\?{3})"  # what opens a quoted or bulleted line
_ADDRESS_SEP = rf"(?:[ \t]*(?:\r?\n|[,;|>•·]|\?{{3}})[ \t\r\n,]*(?:{BULLET}[ \t]*)?|[ \t]{{2,}})"
_ADDRESS_PART = re.compile(
    r"(?P<sep>" + _ADDRESS_SEP + r"|[ \t]+(?=(?i:apt|apartment|suite|ste|unit|flat|floor|box)\b))"
    r"(?:(?P<unit>(?i:apt|apartment|suite|ste|unit|flat|floor|fl|room|box)\.?[ \t]*#?\d[\w-]*)"
    r"|(?P<postcode>" + _POSTCODE + r")"
    r"|(?P<place>" + LETTER + r"[\w'’.-]*(?:[ -](?:" + LETTER + r"[\w'’.-]*|\(" + LETTER + r"+\))){0,3})"
    r"(?:[ \t,]+(?P<place_postcode>" + _POSTCODE + r"))?)"
)
_ADDRESS_END = re.compile(r"[ \t]*(?:$|\r?\n|[.?!](?:\s|$))")  # the last part of an address ends its line or sentence
SENTENCE_END = re.compile(r"[.?!](?:\s|$)")
_BUILDING_NUMBER = re.compile(r"\d{1,6}[A-Za-z]?[ \t]+$")
# Lower-case particles a street name after its number may hold; any other word there must be
# capitalized (or the name must hold a street word, below), so "in 2019 Apple sold 3 million" and
# "in 2001 at the Royal Court" are not addresses, nor are dates ("13 December 2012").
MONTH_NAMES = "January February March April May June July August September October November December"
DAY_NAMES = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday"
_MONTHS = frozenset(f"{MONTH_NAMES} Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec.".split())
_STREET_LOWER = frozenset(("de", "du", "des", "del", "della", "delle", "dei", "di", "da", "do", "dos", "das", "van",
                           "von", "der", "den", "het", "la", "le", "les", "el", "y", "i", "z", "u"))
# Street words written in lower case: with one of them the other words may be in any case
# ("Árpád fejedelem útja 62.", "6614 Luite tee 87", "2224 Trenerys gate 232").
_STREET_WORDS = frozenset(("tér", "út", "útja", "utca", "u.", "ulica", "ul.", "rkp.", "trg", "rue", "via", "rua",
                           "calle", "vei", "veien", "vej", "gade", "gata", "gate", "gatan", "tee", "tie", "katu",
                           "weg", "str.", "strasse", "straße", "laan", "straat", "plein", "náměstí", "nám."))


class _Leftmost:
    """`re.compile("|".join(patterns)).search(text, at)` for an `at` that never decreases, by each pattern's
    own search (a pattern's leading digit or literal lets `re` skip ahead; an alternation tries every
    position): the leftmost match, the first pattern's at a tie. A pattern is searched again only once
    `at` has passed its last match (a match at a position does not depend on where the search began)."""

    def __init__(self, text: str, patterns: list[re.Pattern]):
        self.text, self.patterns = text, patterns
        self.found: list = [False] * len(patterns)  # False: not searched yet; None: no match from there on

    def search(self, at: int):
        best = None
        for i, pattern in enumerate(self.patterns):
            m = self.found[i]
            if m is False or (m is not None and m.start() < at):
                m = self.found[i] = pattern.search(self.text, at)
            if m is not None and (best is None or m.start() < best.start()):
                best = m
        return best


def _addresses(text: str, strict: bool = False, rules: frozenset | None = None):
    """Postal addresses: two streets' corner, or a street line widened to the building number before
    it and to the parts of the address after it (unit, place, state, postcode) up to the last part
    that only an address has (a unit or a postcode) or to a place that ends the line or sentence, so
    that a place name in prose after a street is not taken along. `strict` (text in a language the
    English-tuned rules were not made for): only an address with a unit or postcode after its street,
    or a street named with a street word ("Main Street"), so "33 von 36" and "Qing-Dynastie 1911" stay.
    `rules`: the rules that could match the text (`plausible_rows`); None: every rule."""
    corners = _CORNER.finditer(text) if rules is None or "corner" in rules else ()
    for m in corners:  # "corner of Bygget 64 and Komel Club"
        first = m.group("first")
        kept = list(itertools.takewhile(lambda w: w.group()[0].isupper() or w.group()[0].isdigit(),
                                        re.finditer(r"\S+", m.group("second"))))
        if kept and first[0].isupper() and (first.rstrip(".")[-1].isdigit() or re.search(_STREET_SUFFIX + r"\b", first)):
            yield m.start("first"), m.start("second") + kept[-1].end(), 0.6
    at = 0
    street = _Leftmost(text, [p for rule, p in _STREET_RULE_PATTERNS if rules is None or rule in rules])
    while m := street.search(at):
        groups = m.groupdict()
        words = (groups.get("words") or groups.get("named") or "").split()
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
                cut = SENTENCE_END.search(place)
                place_end = part.start("place") + (cut.start() if cut else len(place))
                if _ADDRESS_END.match(text, place_end):
                    fallback = place_end
            pos = part.end()
        if score < 0.9 and fallback is not None:  # no unit or postcode: the place that ends the line
            end = fallback
        if strict and score < 0.9 and not groups.get("named") and not groups.get("box") and not groups.get("number_first"):
            at = m.start() + 1
            continue
        yield start, end, score
        at = end


_CREDENTIAL_NAME = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key|credentials?)"
_KEY_SHAPE = re.compile(r"(?=[^\d]*\d)(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9_\-./+=]{8,}")
_NAMES_A_CREDENTIAL = re.compile(r"(?i)pass|pwd|secret|credential|token|key")
_SNAKE_CASE = re.compile(r"[a-z]+(?:_[a-z0-9]+)+")  # token_ids_0: a variable
_TYPE_NAME = re.compile(r"[A-Z][a-z]+[A-Z][A-Za-z]*|(?i:str|string|bytes|int|integer|bool|boolean|float|dict|list|"
                        r"none|any|optional|object)")  # `secret: SecretStr`, `:type password: string`
_CODE_GOES_ON = re.compile(r"\s*[,)|=\]]")  # after `name: value`: an annotation, a dict item, an argument
_IDENTIFIER_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")  # user_password, cfg.token

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
        r"(?i)\b(?P<name>password|passwd|pwd|pass|secret|api[_-]?key|access[_-]?token|auth[_-]?token)\b\s*"
        r"(?P<sep>[:=])\s*(?P<q>[\"']?)(?P<secret>[^\s\"',;()\[\]{}<>]{4,})(?P=q)(?![(\[\w.])")),
    # a credential in code or config: the word inside an identifier (DB_PASSWORD=, "aws_secret_access_key":,
    # githubToken:, x-api-key:) and a literal value of six or more characters, not a template or a call
    ("credential_assignment", re.compile(
        # (the identifier's parts bounded in number and length, so a search stays linear in the text's length)
        r"(?i)(?<![A-Za-z0-9_.-])(?P<name>(?:[A-Za-z0-9]{1,32}[_.-]){1,6}" + _CREDENTIAL_NAME
        + r"(?:[_.-][A-Za-z0-9]{1,32}){0,6}|" + _CREDENTIAL_NAME + r"(?:[_.-][A-Za-z0-9]{1,32}){1,6}"
        r"|(?:client|auth|access|refresh|api|app|bot|db|github|gitlab|slack|aws)" + _CREDENTIAL_NAME + r")"
        r"[\"']?\s*(?P<sep>[:=])\s*(?P<q>[\"']?)(?P<secret>(?![$%<{])[^\s\"',;()\[\]{}<>]{6,})(?P=q)(?![(\[\w.])")),
    ("json_web_token", re.compile(r"\b(?P<secret>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})")),
    ("bearer_token", re.compile(r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/-]{20,}=*)")),
]


# Phone numbers in national and international formats (7 to 15 digits in groups, optional country
# code, area code in parentheses, extension), and an unbroken run of 7 to 15 digits after a word
# that names a phone ("Fax: 9498777106"), which alone would more often be an id.
_PHONE_GROUPED = (  # the digits may touch letters of other scripts ("手机号13812345678"), not Latin ones
    r"(?<![A-Za-z0-9_.+/-])(?P<secret>(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,8}){1,4}"
    r"(?:\s*(?:x|ext\.?)\s*\d{1,5})?)(?![\w.-]*\d)")
_PHONE_RUNS = (  # each needs seven digits in a row
    r"|(?i:phone|mobile|cell|tel|fax|desk|office|call|whatsapp|sms|telefon|téléphone|teléfono|telefone|telefono)"
    r"\b\W{0,3}(?P<run>\+?\d{7,15})(?![\w.-]*\d)"
    # a number after a word for "phone" in a language written without spaces (电话, 手机号, 電話, 携帯, 전화)
    r"|(?:电话|電話|手机|手機|手机号|手機號|联系电话|聯繫電話|携帯|携帯電話|전화|휴대폰)\W{0,3}(?P<cjk>\+?\d{7,15})(?!\d)")
# Chinese mobile numbers: 1[3-9] and 9 digits, with or without +86 / 0086, spaces or dashes
_PHONE_CN = r"|(?<![0-9A-Za-z])(?P<cn>(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2})(?![0-9A-Za-z])"
PHONE = re.compile(_PHONE_GROUPED + _PHONE_RUNS + _PHONE_CN)
# PHONE in a text without seven digits in a row, where its number-after-a-word alternatives cannot match
# (they are most of its time: a case-folded word list has no prefix for `re` to skip ahead by)
_PHONE_NO_RUNS = re.compile(_PHONE_GROUPED + _PHONE_CN)
_SEVEN_DIGITS = re.compile(r"\d{7}")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$")
# Card numbers of 12 to 19 digits, alone or in groups; kept only when they pass Luhn.
CARD = re.compile(r"(?<![\w-])(?P<secret>\d(?:[ -]?\d){11,18})(?![\w-])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _secrets(text: str):
    for kind, pattern in SECRET_PATTERNS:
        for m in pattern.finditer(text):
            if kind.endswith("_assignment") and not _credential_value(m):
                continue
            yield m.start("secret"), m.end("secret"), 1.0


def _credential_value(m: re.Match) -> bool:
    """Whether the value a password or credential assignment names is a literal secret, not code or prose.
    Under a password or secret name: a value with a letter that is, unquoted, no variable, attribute or type
    of code: after an '=' no identifier (`password = user_password`, `secret=self.secret`) unless the name
    is an environment variable's (DB_PASSWORD=changeme); after a ':' (prose, YAML, headers: "password:
    hunter2") nothing that goes on as code does (`password: bytes | None = None`, `"client_secret":
    client_secret,`), and after a bare "pass" a value with more than letters ("First pass: canonical").
    Not a name inside an ARN (`...:secret:rds-*`) or a docstring's `:param password:`, nor a value that is
    words naming a credential ("PASSWORD", 'aws_secret_access_key'). Under a token or key name, which code uses for much else
    (image_token_id: "image_token_index", Token.Prompt: '#ansigreen'): a key's shape, eight or more letters
    and digits (and _-./+=) with both."""
    value, name, text = m.group("secret"), m.group("name"), m.string
    before = text[max(0, m.start("name") - 8): m.start("name")]
    if before.endswith((":", ":param ", ":type ")) or (  # an ARN's part, a docstring's field
            _NAMES_A_CREDENTIAL.search(value) and not any(c.isdigit() for c in value)):  # "PASSWORD": words
        return False
    if not any(word in name.lower() for word in ("pass", "pwd", "secret", "credential")):
        return bool(_KEY_SHAPE.fullmatch(value)) and not _SNAKE_CASE.fullmatch(value)
    if not any(c.isalpha() for c in value):
        return False
    if m.group("q"):
        return True
    if m.group("sep") == "=":
        return name.isupper() or not _IDENTIFIER_PATH.fullmatch(value)
    if _CODE_GOES_ON.match(text, m.end()) or _TYPE_NAME.fullmatch(value):
        return False
    return name.lower() != "pass" or not value.isalpha()


_YEAR_RANGE = re.compile(r"(?:1\d|20)\d\d\s*[-–]\s*(?:1\d|20)\d\d$")  # 2013-2014: years, not a phone
_GROUPED_NUMBER = re.compile(r"\d{1,3}(?:([.,\u00a0\u202f ])\d{3})(?:\1\d{3})*$")  # 17.786.419: a number, not a phone


def _phones(text: str, strict: bool = False):
    """Phone numbers. `strict` (text in a language the English-tuned rules were not made for): only
    numbers that say they are phones: a country code, an area code in parentheses, three or more groups,
    a word for "phone" before them, or a Chinese mobile number; not "973-1050" or "1.234.567"."""
    pattern = PHONE if _SEVEN_DIGITS.search(text) else _PHONE_NO_RUNS
    for m in pattern.finditer(text):
        group = next(g for g in ("secret", "run", "cjk", "cn") if g in pattern.groupindex and m.group(g))
        value = m.group(group)
        digits = sum(c.isdigit() for c in value)
        if not 7 <= digits <= 15 or _ISO_DATE.match(value) or _YEAR_RANGE.match(value):
            continue
        if strict and group == "secret" and (_GROUPED_NUMBER.match(value) or not (
                value.startswith(("+", "(")) or len(re.findall(r"\d+", value)) >= 3)):
            continue
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
    for r in iban_recognizer().analyze(text.translate(_ASCII_UPPER), ["IBAN_CODE"]):
        if not text[r.start:r.end].isupper():
            yield r.start, r.end, r.score


@lru_cache(maxsize=1)
def iban_recognizer():
    from presidio_analyzer.predefined_recognizers import IbanRecognizer

    return IbanRecognizer()


# Our own recognizers, called directly: (start, end, score) per finding.
# Chinese resident identity numbers: region (6 digits), birth date, sequence, ISO 7064 MOD 11-2 check.
CN_RESIDENT_ID = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
                            r"(?![0-9A-Za-z])")
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_resident_id_ok(value: str) -> bool:
    total = sum(int(d) * w for d, w in zip(value[:17], _CN_ID_WEIGHTS))
    return "10X98765432"[total % 11] == value[17].upper()


def _cn_resident_ids(text: str):
    for m in CN_RESIDENT_ID.finditer(text):
        if cn_resident_id_ok(m.group()):
            yield m.start(), m.end(), 1.0


# An e-mail address written in ASCII inside text of another script ("联系jane@example.org谢谢"), which
# Presidio's pattern (\w takes CJK letters into the domain, whose suffix then fails) misses.
_ASCII_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}"
                          r"(?![A-Za-z0-9-])")


# An address spelt out so that scrapers miss it: "jane.doe (at) example (dot) com", "jane [at] example.com"
_AT, _DOT = r"\s?[\[(]\s*(?:at|@)\s*[\])]\s?", r"(?:\s?[\[(]\s*(?:dot|\.)\s*[\])]\s?|\.)"
_SPELT_EMAIL = re.compile(  # parts bounded in number and length: a search stays linear in the text's length
    rf"(?i)(?<![\w.%+-])[\w%+-]{{1,64}}(?:{_DOT}[\w%+-]{{1,64}}){{0,8}}{_AT}[A-Za-z0-9-]{{1,63}}"
    rf"(?:{_DOT}[A-Za-z0-9-]{{1,63}}){{0,8}}{_DOT}[A-Za-z]{{2,24}}(?![\w-])")


def _emails_beside_other_scripts(text: str):
    """Addresses Presidio's recognizer misses: spelt out with (at) and (dot), or glued to letters of
    other scripts ("联系jane@ex.org谢谢")."""
    if "(" in text or "[" in text:
        for m in _SPELT_EMAIL.finditer(text):
            if "@" not in m.group() or "[" in m.group() or "(" in m.group():
                yield m.start(), m.end(), 1.0
    if text.isascii():
        return  # Presidio's recognizer reads the rest
    for m in _ASCII_EMAIL.finditer(text):
        if not (text[m.start() - 1: m.start()].isascii() and text[m.end(): m.end() + 1].isascii()):
            yield m.start(), m.end(), 1.0


def trim_email(text: str, span: tuple) -> tuple:
    """An e-mail span without the non-ASCII letters glued to it ("联系jane@ex.org谢谢" -> "jane@ex.org")."""
    start, end, entity, score = span
    at = text.find("@", start, end)
    if at < 0:
        return span
    while start < at and not text[start].isascii():
        start += 1
    while end > at + 1 and not text[end - 1].isascii():
        end -= 1
    return start, end, entity, score


OWN_FINDERS = {"STREET_ADDRESS": _addresses, "SECRET": _secrets, "PHONE_NUMBER": _phones, "CREDIT_CARD": _cards,
               "IBAN_CODE": _ibans_in_lower_case, "CN_RESIDENT_ID": _cn_resident_ids,
               "EMAIL_ADDRESS": _emails_beside_other_scripts}
# For text in a language the English-tuned rules were not made for: the same, with stricter phones and addresses.
STRICT_FINDERS = {**OWN_FINDERS, "STREET_ADDRESS": partial(_addresses, strict=True),
                  "PHONE_NUMBER": partial(_phones, strict=True)}
LANGUAGE_READERS = frozenset(e for e in OWN_FINDERS if STRICT_FINDERS[e] is not OWN_FINDERS[e])  # read the language


def iban_gate() -> str:
    """What an IBAN needs, in RE2, in any case (this stage's own finder upper-cases lower-case ones): a
    country Presidio knows IBANs of (it validates no other), two check digits right after it, as
    Presidio's pattern has them, and eight more letters or digits. Prose's "at 1990 the" is not searched
    by the IBAN patterns."""
    from presidio_analyzer.predefined_recognizers.generic.iban_patterns import regex_per_country

    return "(?i:" + "|".join(sorted(regex_per_country)) + r")[0-9]{2}(?:[ -]?[A-Za-z0-9]){8}"


@lru_cache(maxsize=1)
def _gates() -> dict:
    return {"IBAN_CODE": iban_gate()}
