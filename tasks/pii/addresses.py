"""Postal addresses in many countries' formats: a street line (an English suffix, a language's own street
word, a street prefix, or the number first as in French), widened to its building number and to the parts
after it (unit, place, state, postcode); two streets' corner; post office boxes; US military addresses. Also
the RE2 gates that tell, for a whole batch at once, which rules could match each text. Words are bounded in
length, so a search stays linear in the text's length."""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

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
# one to four words and a number (whose words street_addresses then checks); a street word or prefix and a number;
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


def street_addresses(text: str, strict: bool = False, rules: frozenset | None = None):
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
