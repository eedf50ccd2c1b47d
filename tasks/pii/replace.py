"""Replacing PII spans: typed placeholders (`<EMAIL>`), salted hashes (`<EMAIL:3f9a0c1d2b4e>`), or
consistent surrogates (the same value gets the same fake value everywhere in a run)."""

from __future__ import annotations

import hashlib

from tasks.pii.config import PLACEHOLDERS
from tasks.pii.patterns import luhn_ok

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
