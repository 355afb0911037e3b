"""The site's words (``spamfilter.model.sitewords``): fitted, written, read back, served
beside the tiny encoder, and a broken file refused with its name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spamfilter.model.classifier import Classifier
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import WORDS_FILE, ModelDirError, model_id
from spamfilter.model.odds import log_odds
from spamfilter.model.sitewords import Blend, SiteEvidence, SiteWords, WordModel
from spamrig.synthetic import make_message

# A site whose users call one newsletter spam: its words are ham words to any encoder
# trained elsewhere, and only the site's own mail says otherwise.
NEWSLETTER = "zorblax weekly digest"


def newsletter(index: int) -> str:
    return email_to_text(make_message(0, index)) + f" {NEWSLETTER} {index}"


def plain_ham(index: int) -> str:
    return email_to_text(make_message(0, index))


def site_texts(count: int, start: int = 0) -> tuple[list[str], list[int]]:
    texts = [newsletter(start + i) for i in range(count)] + [
        plain_ham(start + count + i) for i in range(count)
    ]
    return texts, [1] * count + [0] * count


def test_the_word_model_learns_the_sites_own_words():
    texts, labels = site_texts(20)
    words = WordModel.fit(texts, labels)
    assert "zorblax" in words.vocabulary
    weight = dict(zip(words.vocabulary, words.weights, strict=True))
    assert weight["zorblax"] > 0 and weight["zorblax"] == pytest.approx(max(words.weights))
    fresh_spam, fresh_ham = words.evidence([newsletter(900), plain_ham(901)])
    assert fresh_spam > 0 > fresh_ham
    (nothing,) = words.evidence([""])  # no word known: the bias alone
    assert nothing == pytest.approx(words.bias)


def spam_corpus(index: int) -> str:
    """Mail of the corpus the encoder was trained on: other words than the site's."""
    return email_to_text(make_message(1, 1000 + index))


def test_the_words_speak_as_far_as_a_text_reads_like_the_sites_mail():
    texts, labels = site_texts(20)
    corpus = [spam_corpus(i) for i in range(20)]
    gated = SiteEvidence.fit(texts, labels, corpus)
    ungated = SiteEvidence.fit(texts, labels, [])
    assert ungated.gate is None and np.array_equal(gated.words.weights, ungated.words.weights)
    site_like, corpus_like = newsletter(900), spam_corpus(901) + f" {NEWSLETTER}"
    share = 1 / (1 + np.exp(-gated.gate.evidence([site_like, corpus_like])))
    assert share[0] > 0.5 > share[1]
    assert gated([site_like, corpus_like]).tolist() == pytest.approx(
        (ungated([site_like, corpus_like]) * share).tolist()
    )


def test_the_blend_weighs_each_part_by_what_it_tells():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 200)
    telling = np.where(labels == 1, 3.0, -3.0) + rng.normal(0, 1, len(labels))
    noise = rng.normal(0, 1, len(labels))
    encoder = 1 / (1 + np.exp(-noise))  # an encoder that knows nothing of this mail
    blend = Blend.fit(encoder, telling, labels)
    assert blend.words > 1 and abs(blend.encoder) < 0.5
    assert ((blend(encoder, telling) > 0.5) == labels).mean() > 0.95
    assert log_odds([0.0, 1.0]).tolist() == pytest.approx([-16.118, 16.118], abs=1e-3)


@pytest.fixture
def with_words(tiny_model_dir, tmp_path) -> tuple[Path, SiteWords]:
    """A copy of the tiny model with site words that know the newsletter."""
    directory = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    texts, labels = site_texts(20)
    evidence = SiteEvidence.fit(texts, labels, corpus_texts=[spam_corpus(i) for i in range(20)])
    site_words = SiteWords(evidence, Blend(encoder=1.0, words=1.0, offset=0))
    site_words.save(directory)
    return directory, site_words


def test_site_words_are_written_and_read_back_exactly(with_words):
    directory, written = with_words
    read = SiteWords.load(directory)
    texts = [newsletter(800), plain_ham(801), ""]
    assert (
        read.scores([0.3, 0.3, 0.5], texts).tolist()
        == written.scores([0.3, 0.3, 0.5], texts).tolist()
    )
    assert SiteWords.load(directory.parent) is None  # a directory without: None


def test_the_classifier_serves_the_encoder_blended_with_the_words(tiny_model_dir, with_words):
    directory, site_words = with_words
    encoder_alone = Classifier(tiny_model_dir, precision="fp32")
    served = Classifier(directory, precision="fp32")
    texts = [newsletter(700), plain_ham(701)]
    encoder_scores = encoder_alone.score_texts(texts)
    assert served.score_texts(texts) == pytest.approx(
        site_words.scores(encoder_scores, texts).tolist(), abs=1e-9
    )
    newsletter_score, ham_score = served.score_texts(texts)
    assert newsletter_score > ham_score and encoder_scores[0] < 0.5  # the words told it
    assert served.model_id != model_id(tiny_model_dir)  # the id covers the words


def test_the_model_id_changes_with_the_words(with_words):
    directory, site_words = with_words
    before = model_id(directory)
    SiteWords(site_words.evidence, Blend(encoder=1.0, words=2.0, offset=0)).save(directory)
    assert model_id(directory) != before


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda record: "{not json", "not a valid site-words file"),
        (lambda record: {**record, "format": 99}, "format 99"),
        (lambda r: {**r, "words": {**r["words"], "idf": r["words"]["idf"][:-1]}}, "differ in"),
        (lambda r: {**r, "gate": {**r["gate"], "bias": float("nan")}}, "not a finite number"),
        (lambda r: {**r, "words": None}, "not a valid site-words file"),
        (lambda record: {**record, "blend": {"encoder": 1.0}}, "not a valid site-words file"),
    ],
)
def test_a_broken_words_file_is_refused_with_its_name(with_words, spoil, said):
    directory, _ = with_words
    path = directory / WORDS_FILE
    spoiled = spoil(json.loads(path.read_text()))
    path.write_text(spoiled if isinstance(spoiled, str) else json.dumps(spoiled))
    with pytest.raises(ModelDirError, match=said) as raised:
        Classifier(directory, precision="fp32")
    assert str(path) in str(raised.value)


def test_the_telling_words_are_the_words_evidence_gated_and_blended(with_words):
    _, site_words = with_words
    text = newsletter(950)
    words = site_words.evidence.words
    parts = words.contributions(text)
    assert sum(part for _, part in parts) + words.bias == pytest.approx(words.evidence([text])[0])
    everything = site_words.telling(text, count=len(parts))
    share = site_words.evidence.share([text])[0]
    assert sum(moved for _, moved in everything) == pytest.approx(
        site_words.blend.words * share * (words.evidence([text])[0] - words.bias)
    )
    (first, moved), *_ = site_words.telling(text, count=3)
    assert first in NEWSLETTER.split() and moved > 0


def test_explanations_name_the_site_words_in_the_report_and_classify(with_words, tiny_model_dir):
    from spamfilter.cli.classify import explanation_table
    from spamfilter.model.explain import Explainer
    from spamfilter.smtp.spamreport import summary

    directory, _ = with_words
    explained = Explainer(Classifier(directory, precision="fp32"), phrases=4, batch_size=8)
    (explanation,) = explained.explain_texts([newsletter(960)])
    assert explanation.words and explanation.words[0].text in NEWSLETTER.split()
    assert "; site words: +" in summary(explanation)
    assert "site word (its share" in explanation_table(explanation)
    plain = Explainer(Classifier(tiny_model_dir, precision="fp32"), phrases=4, batch_size=8)
    (without,) = plain.explain_texts([newsletter(960)])
    assert without.words == () and "site words" not in summary(without)
