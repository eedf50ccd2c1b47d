"""06_bias: obfuscated terms, innocent words that contain listed ones, the identity guard,
the audit arithmetic, a classifier trained on real labels, and the stage's outputs."""

import csv
import json

import numpy as np
import pytest

from tasks.bias import Bias, BiasConfig, Scorer, audit_report, identity_mentions, mask_identity
from tasks.ingest import Ingest
from tasks.shards import read_dir
from tasks.stage import local_mapper, run_stage
from tasks.toxicity import Classifier, load_lexicon, train_and_save


@pytest.fixture(scope="module")
def ldnoobw(shared):
    return str(shared / "bias/ldnoobw/en")


@pytest.mark.parametrize("text,term", [
    ("what the f*ck", "fuck"), ("F.U.C.K this", "fuck"), ("f-u-c-k", "fuck"), ("fuuuuuck off", "fuck"),
    ("sh1t happens", "shit"), ("$hit", "shit"), ("you b!tch", "bitch"), ("a total @sshole", "asshole"),
    ("son   of a bitch", "son of a bitch"), ("SHIT!", "shit"),
])
def test_obfuscated_terms_are_matched(text, term):
    assert term in load_lexicon(()).matches(text)


@pytest.mark.parametrize("text", [
    "Scunthorpe United won at home", "a classic assassin story", "shitake mushrooms and cocktails",
    "Essex and Middlesex", "the cockpit of the plane", "pass the bass, Dickens", "analysis of the therapist",
])
def test_innocent_words_that_contain_listed_terms_are_not_matched(text, ldnoobw):
    assert load_lexicon(()).matches(text) == set()
    assert load_lexicon((ldnoobw,)).matches(text) == set()


def test_identity_guard_keeps_documents_flagged_only_through_identity_terms(ldnoobw):
    cfg = BiasConfig(lexicons=[ldnoobw], lexicon_weight=0.6)
    scorer = Scorer(cfg)
    benign = "I'm a big black guy and I coach the school team."
    hateful = "Big black bastards like you should fuck off and die."
    scores, reasons = scorer.score([benign, hateful])
    assert scores[0] >= 0.5 and reasons[0]["lexicon"] == ["big black"]  # LDNOOBW lists "big black"
    masked, _ = scorer.score([mask_identity(benign), mask_identity(hateful)])
    assert masked[0] < 0.5 <= masked[1]  # the guard keeps the first, not the second
    assert identity_mentions(benign) == {"black"}


def test_audit_arithmetic():
    # 100 documents, 10 removed without the guard, 8 with it; 20 mention "gay", of which 6
    # would have been removed without the guard and 4 with it
    audit = {"_all": {"_all": [100, 10, 8]}, "gender_sexuality": {"gay": [20, 6, 4], "women": [10, 1, 1]}}
    report = audit_report(audit)
    assert report["removal_rate_without_guard"] == 0.10 and report["removal_rate"] == 0.08
    gay = report["axes"]["gender_sexuality"]["terms"][0]
    assert gay["term"] == "gay" and gay["share"] == 0.20
    assert gay["removal_rate_without_guard"] == pytest.approx(0.30) and gay["removal_rate"] == pytest.approx(0.20)
    assert gay["disparity_without_guard"] == pytest.approx(3.0) and gay["disparity"] == pytest.approx(2.5)
    axis = report["axes"]["gender_sexuality"]
    assert axis["disparity_without_guard"] == pytest.approx((7 / 30) / 0.10)
    assert axis["disparity"] == pytest.approx((5 / 30) / 0.08)


@pytest.fixture(scope="module")
def davidson_model(shared, tmp_path_factory):
    """A classifier trained on 6,000 Davidson tweets (hate + offensive vs neither)."""
    with open(shared / "bias/davidson/labeled_data.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(1)
    order = rng.permutation(len(rows))
    train, held = order[:6000], order[6000:8000]
    path = tmp_path_factory.mktemp("model") / "davidson.npz"
    meta = train_and_save([rows[i]["tweet"] for i in train], [int(rows[i]["class"] != "2") for i in train], path)
    held_rows = [(rows[i]["tweet"], rows[i]["class"] != "2") for i in held]
    return path, meta, held_rows


def test_trained_classifier_separates_held_out_tweets(davidson_model):
    path, meta, held = davidson_model
    model = Classifier.load(str(path))
    scores = model.score([t for t, _ in held])
    toxic = np.array([y for _, y in held])
    removed = scores >= meta["threshold"]
    assert removed[toxic].mean() >= 0.85 and removed[~toxic].mean() <= 0.2
    assert 0.05 <= BiasConfig(classifier=str(path)).effective_threshold() <= 0.95


def test_stage_removes_toxic_keeps_identity_mentions_and_writes_the_audit(tmp_path, ldnoobw):
    texts = ["Shut up, you stupid bitch, nobody wants your shit.", "What the f*ck, dumbass, go to hell.",
             "I'm a big black guy and I coach the school team.", "My neighbor is a Muslim woman.",
             "The kettle boiled at noon."]
    with open(tmp_path / "in.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"d{i}", "text": t}) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp_path / "01", inputs=[str(tmp_path / "in.jsonl")],
              mapper=local_mapper(1))
    lexicons = [ldnoobw, str(tmp_path / "builtin.txt")]
    (tmp_path / "builtin.txt").write_text("bitch\nshit\nfuck\ndumbass\ngo to hell\n")
    out = tmp_path / "05"
    manifest = run_stage(Bias(lexicons=lexicons, lexicon_weight=0.6), run_id="t", stage_dir=out,
                         inputs=[str(tmp_path / "01")], mapper=local_mapper(1)).manifest
    kept, removed = read_dir(out), read_dir(out / "_removed")
    assert sorted(removed.column("id").to_pylist()) == ["d0", "d1"]
    assert json.loads(removed.column("bias_reasons")[0].as_py())["lexicon"]
    assert all(r == "toxic" for r in removed.column("reason").to_pylist())
    flags = dict(zip(kept.column("id").to_pylist(), kept.column("bias_flags").to_pylist()))
    assert "identity_guard" in flags["d2"] and "mentions:race_ethnicity" in flags["d2"]
    assert flags["d4"] == [] and kept.schema.field("toxicity").type.bit_width == 32
    assert manifest.removed == {"toxic": 2} and manifest.stats["kept_by_identity_guard"] == 1
    report = json.loads((out / "bias_report.json").read_text())
    race = report["axes"]["race_ethnicity"]["terms"][0]
    assert race["term"] == "black" and race["removal_rate_without_guard"] == 1.0 and race["removal_rate"] == 0.0
    assert (out / "bias_disparity.png").stat().st_size > 1000 and "disparity" in (out / "bias_report.md").read_text()


def test_missing_lexicon_or_classifier_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="lexicon"):
        Scorer(BiasConfig(lexicons=[str(tmp_path / "nope.txt")]))
    with pytest.raises(FileNotFoundError, match="loom bias train"):
        Scorer(BiasConfig(classifier=str(tmp_path / "nope.npz")))
