"""Evaluation arithmetic: CrowS-Pairs scoring, GSM8K final answers, BLEU/ROUGE."""

import pytest

from training.evaluate import bleu_rouge, crows_pairs_score, exact_match, final_answer, read_crows_pairs


def test_crows_pairs_counts_the_stereotypical_sentence_by_direction():
    pairs = [
        {"sent_more": "A1", "sent_less": "B1", "stereo_antistereo": "stereo", "bias_type": "gender"},  # prefers
        {"sent_more": "A2", "sent_less": "B2", "stereo_antistereo": "stereo", "bias_type": "gender"},  # does not
        {"sent_more": "A3", "sent_less": "B3", "stereo_antistereo": "antistereo", "bias_type": "age"},  # prefers
        {"sent_more": "A4", "sent_less": "B4", "stereo_antistereo": "antistereo", "bias_type": "age"},  # tie: no
    ]
    loglik = {"A1": -1.0, "B1": -2.0, "A2": -3.0, "B2": -1.0, "A3": -5.0, "B3": -4.0, "A4": -2.0, "B4": -2.0}
    result = crows_pairs_score(pairs, loglik.__getitem__)
    assert result["score"] == pytest.approx(50.0)
    assert result["by_type"] == {"age": {"score": 50.0, "pairs": 2}, "gender": {"score": 50.0, "pairs": 2}}
    assert crows_pairs_score(pairs, lambda s: -len(s) - (s[0] == "B"))["score"] == 50.0


def test_crows_pairs_file_reads_every_pair(shared):
    pairs = read_crows_pairs(shared / "bias/crows_pairs")
    assert len(pairs) == 1508
    assert {p["stereo_antistereo"] for p in pairs} == {"stereo", "antistereo"}
    assert len({p["bias_type"] for p in pairs}) == 9


def test_final_answers_and_exact_match():
    assert final_answer("Natalia sold 48+24 = 72 clips.\n#### 72") == "72"
    assert final_answer("so the total is 1,250 dollars") == "1250"
    assert final_answer("#### 18.0") == "18"
    assert final_answer("no number here") is None
    assert exact_match(["The answer is 72.", "#### 5", "nothing"], ["#### 72", "#### 6", "#### 1"]) == pytest.approx(1 / 3)


def test_bleu_and_rouge_of_identical_and_different_text():
    same = bleu_rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(100.0) and same["rougeL"] == pytest.approx(100.0)
    other = bleu_rouge(["a dog ran"], ["the cat sat on the mat"])
    assert other["rouge1"] == 0.0 and other["bleu"] < 10
