"""05_pii's pattern recognizers on formats a template set does not hold: e-mail addresses, phones, cards,
IBANs, IPs, ids, secrets (provider keys, credentials in code and config, tokens) and postal addresses of
many countries, each found whole; numbers, dates and code that only look like them left alone."""

import pytest

from tasks.pii import PiiConfig, find_pii, luhn_ok
from tasks.pii.names import cued_places


def _found(text: str, cfg: PiiConfig | None = None) -> list[tuple[str, str]]:
    return [(text[s:e], t) for s, e, t, _ in find_pii([text], cfg or PiiConfig())[0]]


@pytest.mark.parametrize("text,value,entity", [
    ("write to john.doe+newsletter@mail.example.co.uk today", "john.doe+newsletter@mail.example.co.uk",
     "EMAIL_ADDRESS"),
    ("ops: first.last@sub.domain.example.org.", "first.last@sub.domain.example.org", "EMAIL_ADDRESS"),
    ("call +44 20 7946 0958 now", "+44 20 7946 0958", "PHONE_NUMBER"),
    ("Berlin office: +49 30 901820", "+49 30 901820", "PHONE_NUMBER"),
    ("US line (415) 555-2671 ext. 12", "(415) 555-2671 ext. 12", "PHONE_NUMBER"),
    ("registered 0961-7596216. Could you", "0961-7596216", "PHONE_NUMBER"),
    ("Desk: +1-604-696-5200 Fax: 9498777106", "9498777106", "PHONE_NUMBER"),
    ("card 4111 1111 1111 1111 on file", "4111 1111 1111 1111", "CREDIT_CARD"),
    ("card 5500-0000-0000-0004 on file", "5500-0000-0000-0004", "CREDIT_CARD"),
    ("IBAN GB82 WEST 1234 5698 7654 32 please", "GB82 WEST 1234 5698 7654 32", "IBAN_CODE"),
    ("my iban is gb42nawi04454264788619", "gb42nawi04454264788619", "IBAN_CODE"),  # Presidio: upper case only
    ("iban: de89 3704 0044 0532 0130 00.", "de89 3704 0044 0532 0130 00", "IBAN_CODE"),
    ("from 192.168.10.42 and 2001:db8::ff00:42:8329", "192.168.10.42", "IP_ADDRESS"),
    ("ssn 536-80-4398 in the form", "536-80-4398", "US_SSN"),
    ("key AKIAIOSFODNN7EXAMPLE in config", "AKIAIOSFODNN7EXAMPLE", "SECRET"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 leaked", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
     "SECRET"),
    ("db password = 'hunter2!x' in prod", "hunter2!x", "SECRET"),
    ("mail me at john(dot)smith(at)gmail(dot)com please", "john(dot)smith(at)gmail(dot)com", "EMAIL_ADDRESS"),
    ("Kontakt: jane.doe [at] uni-bonn [dot] de", "jane.doe [at] uni-bonn [dot] de", "EMAIL_ADDRESS"),
    ("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "SECRET"),
    ("DB_PASSWORD=changeme\nDB_HOST=db", "changeme", "SECRET"),
    ('{"client_secret": "kJ3h4kj5h34Lm", "scope": "read"}', "kJ3h4kj5h34Lm", "SECRET"),
    ("const githubToken = 'a1b2c3d4e5f6g7';", "a1b2c3d4e5f6g7", "SECRET"),
    ("curl -H 'Authorization: Bearer 4f9c1b2e8d7a6f5e4d3c2b1a0f9e8d7c' https://api", "4f9c1b2e8d7a6f5e4d3c2b1a0f9e8d7c",
     "SECRET"),
    ("cookie eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U set",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "SECRET"),
    ("ship to 1600 Pennsylvania Avenue NW, Washington", "1600 Pennsylvania Avenue", "STREET_ADDRESS"),
])
def test_adversarial_formats(text, value, entity):
    found = _found(text)
    assert any(value in v and t == entity for v, t in found), found


def test_lower_case_ibans_need_a_valid_checksum():
    assert _found("my iban is gb00nawi04454264788619") == []


def test_context_words_raise_weak_matches():
    """Nine digits are an SSN only beside a word that says so (Presidio's context enhancer, which
    needs lemmas the NER-only pipeline does not make)."""
    assert _found("my ssn is 536804398 thanks") == [("536804398", "US_SSN")]
    assert _found("order 536804398 shipped") == []


@pytest.mark.parametrize("text,address", [
    ("Stephan M Urner\n\n4844 Søndergade 52\n Apt. 656\n Brønderslev\n\n Denmark 35018\nThanks!",
     "4844 Søndergade 52\n Apt. 656\n Brønderslev\n\n Denmark 35018"),
    ("Billing address:\n    28245 Puruntie 82 Apt. 595\n   LAPPEENRANTA\n    SK\n    53650",
     "28245 Puruntie 82 Apt. 595\n   LAPPEENRANTA\n    SK\n    53650"),
    ("send it to 3911 Fourth Avenue Suite 697, Mora de Rubielos, Spain 16200, and call me",
     "3911 Fourth Avenue Suite 697, Mora de Rubielos, Spain 16200"),
    ("the synagogue at 1175 East 29th Avenue in Eugene", "1175 East 29th Avenue"),
    ("I live at 221 Baker Street, London, and it is great", "221 Baker Street"),  # prose place: not taken
    ("Tosh Olsen lives at 172 Maneeži 75, Saareküla. He", "172 Maneeži 75, Saareküla"),  # the place ends it
    (">Lina Artemova\n>2224 Trenerys gate 232\n>Apt. 342\n>TRONDHEIM\n>Norway 64389",  # bullets; "gate"
     "2224 Trenerys gate 232\n>Apt. 342\n>TRONDHEIM\n>Norway 64389"),
    ("??? 6614 Luite tee 87\n??? Apt. 931\n??? Salumäe", "6614 Luite tee 87\n??? Apt. 931"),
    ("Our offices are located at USNS Møller\nFPO AA 85844", "USNS Møller\nFPO AA 85844"),
    ("mail it to psc 5420, box 2708\napo aa 33879 please", "psc 5420, box 2708\napo aa 33879"),
    ("The bus station is on P.O. Box 104", "P.O. Box 104"),
    ("it is the corner of Bygget 64 and Komel Club", "Bygget 64 and Komel Club"),
    ("Notre bureau : 12 rue de la Paix, 75002 Paris.", "12 rue de la Paix, 75002"),  # the number first
    ("écrivez au 3 bis avenue Victor-Hugo", "3 bis avenue Victor-Hugo"),
    ("14 rue de l'Église, 67000 Strasbourg", "14 rue de l'Église, 67000"),
])
def test_a_postal_address_is_masked_whole(text, address):
    """Street line, unit, place, state and postcode go together, up to the last part only an address has."""
    assert (address, "STREET_ADDRESS") in _found(text)


def test_places_by_the_words_before_them():

    def places(text):
        return [text[s:e] for s, e, _ in cued_places(text)]

    assert places("Mr. Auðbjörnsson flew to Reguengos de Monsaraz on Tuesday morning.") == ["Reguengos de Monsaraz"]
    assert places("a man who grew up in KNIVSTA. Where: Erwetegem Country Club.") == ["KNIVSTA", "Erwetegem"]
    assert places("They arrived in Melbourne in May, then returned to Egypt and the AIF") == ["Melbourne", "Egypt"]
    assert places("She was born in the spring and lived in YOUR remembrance; moved to a farm") == []
    assert ("NAANTALI", "LOCATION") in _found("Coden is a design agency based in NAANTALI.")
    assert ("NAANTALI", "LOCATION") not in _found("Coden is a design agency based in NAANTALI.",
                                                  PiiConfig(place_cues=False))


def test_dates_and_counts_are_not_addresses():
    for text in ("il a suivi 3 cours de maths", "Il reste 2 places libres.", "Take route 66 west.","It peaked on 13 December 2012 at number 4.", "In 2019 Apple sold 3 million phones.",
                 "at the corner of the street and the park", "that corner of Fleet Street and saw St. Paul",
                 "In 2001 at the Royal Court Theatre 12 actors", "delivering 13 tonnes; the brigade 3 miles away"):
        assert not any(t == "STREET_ADDRESS" for _, t in _found(text)), text


def test_numbers_that_are_not_cards_are_left_alone():
    text = "order 4111 1111 1111 1112 shipped (fails Luhn); total 1234.56 in 2024-05-01"
    assert not any(t == "CREDIT_CARD" for _, t in _found(text))
    assert _found("order 9498777106 shipped") == []  # a run of digits is a phone only after a phone word
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_private_key_blocks_are_secrets():
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7x\nabc\n-----END RSA PRIVATE KEY-----"
    assert (block, "SECRET") in _found(f"the key:\n{block}\nend")


def test_code_that_names_a_credential_without_holding_one_is_left_alone():
    """Variables, token counts, calls, templates and special tokens of a tokenizer hold no secret: code and
    its configs stay as they were (a secret-shaped literal beside them is still found)."""
    for text in ("max_tokens = 1000", "pad_token_id = 50256", "tokenizer.pad_token = tokenizer.eos_token",
                 "token = tokenize(text)", 'pad_token = "<pad>"', "db_password = user_password",
                 "GITHUB_TOKEN=${{ secrets.GITHUB_TOKEN }}", "self.token = token_value", "num_tokens: 123456789",
                 "The secret to a good token budget is practice."):
        assert not any(t == "SECRET" for _, t in _found(text)), text


def test_the_new_searches_stay_linear_on_adversarial_text():
    """Many "(dot)" parts and no address, an identifier of thousands of parts naming a token: each search ends
    at once (unbounded parts made them quadratic: 39 s and 97 s on 160 KB), nor
    a run of short words glued by apostrophes before a street."""
    import time

    from tasks.pii.addresses import street_addresses
    from tasks.pii.credentials import find_secrets
    from tasks.pii.patterns import _emails_beside_other_scripts

    start = time.process_time()
    assert list(_emails_beside_other_scripts("(" + "a (dot) " * 20000 + "(at) " + "b (dot) " * 20000)) == []
    assert list(find_secrets("x " + "a_token_" * 20000 + "= q")) == [] and list(find_secrets("x " + "token." * 30000)) == []
    assert list(street_addresses("x'" * 20000 + " Hauptstraße 5")) == [(40001, 40014, 0.6)]  # was 18 s of street words
    assert time.process_time() - start < 5
