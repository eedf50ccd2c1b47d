import pytest

from tasks.text_cleaning import DecodeError, clean_text, decode_bytes, strip_gutenberg


def test_decode_prefers_utf8_then_cp1252():
    assert decode_bytes("café".encode()) == ("café", "utf-8")
    assert decode_bytes("café “quoted”".encode("cp1252")) == ("café “quoted”", "cp1252")


def test_undecodable_bytes_raise_with_position():
    with pytest.raises(DecodeError, match="byte 4"):
        decode_bytes(b"bad \x81\x8d", "cp1252")
    with pytest.raises(DecodeError):
        decode_bytes("café".encode("cp1252"), None)


def test_clean_text_controls_newlines_surrogates_and_nfc():
    raw = "line one\r\nline two\rthree\x00\x07\ufeff tab\tkept \ud800 e\u0301"
    assert clean_text(raw) == "line one\nline two\nthree tab\tkept \ufffd é"
    assert clean_text("ﬁ", "NFKC") == "fi"
    clean = "Already clean text.\n"
    assert clean_text(clean) is clean  # no copy on the common path


def test_gutenberg_header_and_footer_stripped(shared):
    raw = (shared / "pretrain/gutenberg_raw/972_devils_dictionary.txt").read_bytes()
    text = clean_text(decode_bytes(raw)[0])
    body, stripped = strip_gutenberg(text)
    assert stripped
    assert "Project Gutenberg License" in text
    assert "Project Gutenberg License" not in body and "*** START OF" not in body and "*** END OF" not in body
    assert body.lstrip().startswith("Produced by")
    assert "ZOOLOGY" in body  # the last entry of the dictionary survives
    assert strip_gutenberg("no markers here") == ("no markers here", False)
