"""PERSON and LOCATION beyond what the small NER model finds: names from Faker's given names and
surnames of every locale and from where a name stands (cues, name lines, family ties, verbs only a
person does), other mentions of a found name, and places after words that announce one. Also the
view of a text that NER reads (reply marks blanked, listed names capitalized in lower-case text)."""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

from tasks.pii.addresses import BULLET, DAY_NAMES, LETTER, MONTH_NAMES

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
    f"Manufacturing Prince Queen King Lord Saint St Knight {MONTH_NAMES} {DAY_NAMES} North South East West")
_NOT_NAMES = frozenset(_NOT_NAMES_TEXT.split())


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


@lru_cache(maxsize=1)
def name_lists() -> tuple[frozenset[str], frozenset[str]]:
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


def listed_names(text: str):
    """(start, end, score) of person names found with the name lists: runs of up to four capitalized
    words on one line whose first word is a listed given name and last word a listed surname, or, after
    a cue ('my name is', 'Mr.', ...) or before a dialogue colon, whose first word is a given name or
    last word a surname."""
    given, surnames = name_lists()

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
        if not (any(map(is_listed, words)) or _PERSON_VERB_AFTER.match(text, m.end())):
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
    r"(?P<place>" + LETTER + r"[\w'’-]*(?:[ \t-]" + LETTER + r"[\w'’-]*){0,4})"
)
_PLACE_PARTICLES = frozenset(("de", "del", "da", "do", "dos", "das", "di", "la", "le", "les", "am", "an", "im", "u",
                              "upon", "sur", "en", "y", "i"))
# Words that follow those cues but name no place.
_NOT_PLACES = frozenset(("The A An My Our Your His Her Their This That Town Home Work School Office Bed Hospital "
                         f"Church Court College Campus Heaven Hell Time Love Business City Country Club Hotel {DAY_NAMES}"
                         ).split())
_PLACE_TAIL = frozenset(("Country", "Club", "This", "On", "In", "For", "By", "At", "And", "The", "Is", "Was"))


# A line that holds only a name: two or three capitalized words (or initials), after any quote
# mark or bullet, as in signature and address blocks ("> Marta Palermo", "Dreux Joly").
_NAME_LINE = re.compile(rf"(?m)^[ \t]*(?:{BULLET}[ \t]*)*([^\W\d_]{{2,}}(?:[ \t]+(?:[^\W\d_]\.?|"
                        r"[^\W\d_]+(?:[-'’][^\W\d_]+)?)){1,2})[ \t]*$")
_ORG_WORDS = frozenset(("Corporation", "Corp", "Inc", "Ltd", "LLC", "Group", "Company", "Bank", "Partners",
                        "Stanley", "Associates", "Holdings"))


def name_lines(text: str):
    """(start, end, score) of lines that are only capitalized words whose first or last word is a
    listed name (not headings in capitals, titles with "The" or "Of", titles of rank, firms)."""
    for m in _NAME_LINE.finditer(text):
        words = m.group(1).split()
        if (all(w[0].isupper() for w in words) and (is_listed(words[0]) or is_listed(words[-1]))
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


def cued_names(text: str):
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
            if not lower_text or (m.group("call") and not is_listed(first.title())):
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


# What any match of _NAME_IS and of _PLACE_CUE holds, in RE2 ((?i) folds as IGNORECASE does), so that a batch
# is tested at once and the rules read only the texts that pass.
_NAME_CUE_RE2 = (r"(?i:name|calls? me|named (?:him|her)|my (?:kid|son|daughter|wife|husband|brother|sister))|"
                 r"Mr|Ms|Dr|(?:mr|mrs|ms|dr)\.")
_PLACE_CUE_RE2 = (r"flew|moved|returned|travell?ed|drove|relocated|emigrated|went back|came back|arrived|landed|"
                  r"stayed|grew up in|born in|based in|located in|headquartered in|settled in|lives in|lived in|"
                  r"living in|resides in|resided in|I'?m in|I am in|originally from|home (?:town|city)|"
                  r"University of|trip to|flight to|move to|Where:")


def cue_rows(texts: list[str]) -> tuple[list[bool], list[bool]]:
    """For each text, whether `cued_names` and whether `cued_places` could find anything in it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(texts, pa.string())
    return tuple(pc.match_substring_regex(array, cue).to_pylist() for cue in (_NAME_CUE_RE2, _PLACE_CUE_RE2))


def is_listed(word: str) -> bool:
    given, surnames = name_lists()
    return word in given or word in surnames


# Words of a name that do not name the person alone ("Mr Elliot", "Duke of Norfolk", "Captain Wentworth").
_TITLES_TEXT = ("Mr Mrs Ms Miss Mx Dr Dame Madame Duke Duchess King Queen Prince Princess Colonel General Major "
                "Sergeant Lieutenant Admiral Professor Prof Saint St Sister Brother Count Countess Earl Baron "
                "Baroness Bishop Judge President Senator Governor Mayor Chief Little Old Young Good Great Second First")
_TITLES = _KIN | frozenset(_TITLES_TEXT.split())
# Capitalized words that never stand for a person on their own.
_NOT_NAME_WORDS = _TITLES | _NOT_NAMES | _ORG_WORDS


def other_mentions(text: str, spans, listed: bool) -> list[tuple[int, int, str, float]]:
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
                                     else not (listed and is_listed(word.title()))):
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


def cued_places(text: str):
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


# Quote marks of replies and bullets that open a line ("> Ella H. Snider", "• Lina Artemova").
_LINE_MARKS = re.compile(r"(?m)^[ \t]*(?:(?:>|•|\?\?\?)[ \t]*)+")
_LOWER_WORD = re.compile(r"[^\W\d_]+")


def ner_view(text: str, listed: bool = True) -> str:
    """The text as NER reads it, offsets unchanged. The small model misses names after reply
    quote marks and bullets, and in text written all in lower case, so marks at the start of a
    line become spaces, and in a text with no capital letter at all, words of the name lists
    are capitalized ("follow up with Patricia Desrosiers"; not with `listed` off, as under
    `[pii] name_lists = false`): the model still decides from the context whether they are
    names. Everything else reads the original text."""
    view = _LINE_MARKS.sub(lambda m: " " * len(m.group()), text) if ">" in text or "•" in text or "???" in text else text
    if listed and view.islower():
        given, surnames = name_lists()

        def capitalize(m: re.Match) -> str:
            word = m.group()
            title = word[0].upper() + word[1:]
            return title if len(title) == len(word) and (title in given or title in surnames) else word

        view = _LOWER_WORD.sub(capitalize, view)
    return view
