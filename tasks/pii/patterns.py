"""Pattern recognizers of Loom's own, for every language: phone numbers, payment cards (Luhn), IBANs written in
lower case (checked by Presidio's recognizer), Chinese resident ids, e-mail addresses spelt out ("jane (at)
example (dot) com") or glued to other scripts; with street addresses (tasks.pii.addresses) and secrets
(tasks.pii.secrets) they make OWN_FINDERS. Each finder yields (start, end, score); `PLAUSIBLE` and
`plausible_rows` hold the cheap tests that decide which recognizers can match a text."""

from __future__ import annotations

import re
from functools import lru_cache, partial

from tasks.pii.addresses import STREET_RULES, street_address_gates, street_addresses
from tasks.pii.credentials import SECRET_NEEDS, find_secrets

# Cheap tests that decide which recognizers can possibly match a text (the secret test: SECRET_NEEDS, then : or =)
PLAUSIBLE = {
    "EMAIL_ADDRESS": re.compile(r"@|(?i:[\[(]\s*(?:at|@)\s*[\])])").search,
    "PHONE_NUMBER": re.compile(r"(?:\d\D{0,3}){7}").search,
    "CREDIT_CARD": re.compile(r"(?:\d[ -]?){12}").search,
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}[ -]?\d{2}").search,
    "IP_ADDRESS": re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d|:[0-9A-Fa-f]{0,4}:").search,
    "US_SSN": re.compile(r"\d{3}\D{0,2}\d{2}\D{0,2}\d{4}").search,
    "STREET_ADDRESS": re.compile(r"\d").search,
    "SECRET": re.compile(SECRET_NEEDS + r"\s*[:=]").search,
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
    "SECRET": SECRET_NEEDS + r"[\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]*[:=]",
    "CN_RESIDENT_ID": r"\p{Nd}{17}[\p{Nd}Xx]",
}


def plausible_rows(texts: list[str], entities) -> dict:
    """Entity -> for each text, whether its recognizers could match it (PLAUSIBLE, for a whole batch at once:
    Arrow's RE2, many times faster than one `re` search per text and entity). For STREET_ADDRESS, each
    text's set of the rules that could match it (empty: none), which `street_addresses` is given as `rules`."""
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


# A test whose every match holds a match of a wider one: seven digits, at most three other characters
# apart, are in twelve at most one apart (cards), in 3-2-4 digits at most two apart (SSNs), in 17 in a row;
# every street rule but "corner of" and an IBAN's check digits need a digit, which half of prose's pieces
# lack (one pass for a digit is cheaper than the tests it spares).
_WITHIN = {"CREDIT_CARD": "PHONE_NUMBER", "US_SSN": "PHONE_NUMBER", "CN_RESIDENT_ID": "PHONE_NUMBER",
           "PHONE_NUMBER": "DIGIT", "IBAN_CODE": "DIGIT", **{f"street:{rule}": "DIGIT" for rule in STREET_RULES}}

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


OWN_FINDERS = {"STREET_ADDRESS": street_addresses, "SECRET": find_secrets, "PHONE_NUMBER": _phones, "CREDIT_CARD": _cards,
               "IBAN_CODE": _ibans_in_lower_case, "CN_RESIDENT_ID": _cn_resident_ids,
               "EMAIL_ADDRESS": _emails_beside_other_scripts}
# For text in a language the English-tuned rules were not made for: the same, with stricter phones and addresses.
STRICT_FINDERS = {**OWN_FINDERS, "STREET_ADDRESS": partial(street_addresses, strict=True),
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
