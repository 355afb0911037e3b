"""The site's words: a linear model of the words of a site's own mail, beside the encoder.

``spamfilter learn`` fits it on the site's spam and ham and writes it into the model
directory it makes (``site_words.json``); the classifier then scores a text as

    P(spam) = sigmoid(a * logit(P_encoder) + b * words(text) + c)

``words`` is a logistic regression on the TF-IDF of the words of the whole model text
(``email_to_text``'s output, not the encoder's window of it), scaled by how much the
text reads like the site's mail rather than the encoder's own corpus (``SiteEvidence``),
and ``a``, ``b``, ``c`` (the ``Blend``) are fitted by ``spamtrain.learn`` on scores of
mail that no part trained on. This is what SpamAssassin's Bayes or bogofilter is to a
site: the words of its own ham (its people, projects and newsletters) and of the spam it
gets are strong evidence about its next message, and a hundred of each teach them.
Measured on crosscorpus-dev's TREC 2007 mail (docs/evaluation.md): such a word model
fitted on 200 of its messages alone ranks the other 2,800 at ROC-AUC 0.998, where the
encoder continued on the same 200 reaches 0.995-0.996.

Fitting and scoring both live here, so that the features are defined once; both need
only scikit-learn (and the scipy it brings), which the filter installs anyway.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.special import expit  # the logistic function, without exp's overflow
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from spamfilter.model.modeldir import WORDS_FILE, ModelDirError
from spamfilter.model.odds import log_odds

FORMAT = 1
# The most frequent words kept: 200 messages hold ~9,000 distinct ones, and the file
# grows by ~40 bytes a word.
MAX_WORDS = 50_000
# scikit-learn's C (inverse regularisation) of the word model: 1 / 10 / 100 gave ROC-AUC
# 0.9975 / 0.9981 / 0.9981 on the rest of TREC after 200 messages.
WORDS_C = 10.0


def vectorizer(vocabulary: Sequence[str] | None = None) -> TfidfVectorizer:
    """The word features: lowercased words of two or more letters or digits, log-scaled
    counts times inverse document frequency, each text scaled to unit length."""
    return TfidfVectorizer(sublinear_tf=True, max_features=MAX_WORDS, vocabulary=vocabulary)


@dataclass(frozen=True, eq=False)  # numpy fields: equal means the same object
class WordModel:
    """Logistic regression on the word features: its evidence is the log-odds of spam."""

    vocabulary: tuple[str, ...]
    idf: np.ndarray
    weights: np.ndarray
    bias: float

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int]) -> WordModel:
        features = vectorizer()
        matrix = features.fit_transform(texts)
        regression = LogisticRegression(C=WORDS_C, max_iter=2000).fit(matrix, labels)
        return cls(
            tuple(features.get_feature_names_out().tolist()),
            features.idf_,
            regression.coef_[0],
            float(regression.intercept_[0]),
        )

    @cached_property
    def _features(self) -> TfidfVectorizer:
        features = vectorizer(self.vocabulary)
        features.idf_ = self.idf
        return features

    def evidence(self, texts: Sequence[str]) -> np.ndarray:
        """The log-odds of spam that the words of each text give (no known word: the bias)."""
        return self._features.transform(texts) @ self.weights + self.bias

    def contributions(self, text: str) -> list[tuple[str, float]]:
        """Each known word of ``text`` and its part of the evidence (the parts and the
        bias add up to ``evidence([text])``)."""
        row = self._features.transform([text])
        parts = row.data * self.weights[row.indices]
        return [(self.vocabulary[i], float(p)) for i, p in zip(row.indices, parts, strict=True)]


@dataclass(frozen=True)
class Blend:
    """How the encoder's and the words' log-odds add up to the served score."""

    encoder: float
    words: float
    offset: float

    @classmethod
    def fit(
        cls,
        encoder_scores: Sequence[float],
        word_evidence: Sequence[float],
        labels: Sequence[int],
        sample_weight: Sequence[float] | None = None,
    ) -> Blend:
        """Stacking: a logistic regression of the labels on the two log-odds, which must
        be of messages neither part trained on."""
        regression = LogisticRegression().fit(
            np.column_stack([log_odds(encoder_scores), word_evidence]),
            labels,
            sample_weight=sample_weight,
        )
        (encoder, words), offset = regression.coef_[0], regression.intercept_[0]
        return cls(float(encoder), float(words), float(offset))

    def __call__(
        self, encoder_scores: Sequence[float], word_evidence: Sequence[float]
    ) -> np.ndarray:
        z = self.encoder * log_odds(encoder_scores) + self.words * np.asarray(word_evidence)
        return expit(z + self.offset)


@dataclass(frozen=True, eq=False)
class SiteEvidence:
    """The words' log-odds of spam, counted as far as a text reads like the site's mail.

    ``gate`` is a word model of whether a text is the site's mail (1) or the corpus the
    encoder was trained on (0). Its probability scales the words' evidence: on mail like
    the site's they speak fully, on mail like the encoder's corpus hardly at all, and the
    encoder keeps what it knew there (the forgetting check). Without a corpus to tell
    apart (learn without replay) there is no gate.
    """

    words: WordModel
    gate: WordModel | None

    @classmethod
    def fit(
        cls, texts: Sequence[str], labels: Sequence[int], corpus_texts: Sequence[str]
    ) -> SiteEvidence:
        gate = None
        if corpus_texts:
            is_site = [1] * len(texts) + [0] * len(corpus_texts)
            gate = WordModel.fit([*texts, *corpus_texts], is_site)
        return cls(WordModel.fit(texts, labels), gate)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.words.evidence(texts) * self.share(texts)

    def share(self, texts: Sequence[str]) -> np.ndarray:
        """How far each text reads like the site's mail: P(site mail), 1 without a gate."""
        if self.gate is None:
            return np.ones(len(texts))
        return expit(self.gate.evidence(texts))


@dataclass(frozen=True, eq=False)
class SiteWords:
    """A model directory's site evidence and its blend with the encoder."""

    evidence: SiteEvidence
    blend: Blend

    def scores(self, encoder_scores: Sequence[float], texts: Sequence[str]) -> np.ndarray:
        """P(spam) of each text, from the encoder's P(spam) of it and its words."""
        return self.blend(encoder_scores, self.evidence(texts))

    def telling(self, text: str, count: int) -> list[tuple[str, float]]:
        """The ``count`` words of ``text`` that moved its served log-odds of spam most,
        each with how much (its part of the words' evidence, gated and blended), the
        largest move first: why the site's words scored a message as they did."""
        scale = self.blend.words * float(self.evidence.share([text])[0])
        moved = [(word, part * scale) for word, part in self.evidence.words.contributions(text)]
        return sorted(moved, key=lambda item: -abs(item[1]))[:count]

    def save(self, directory: Path) -> None:
        gate = self.evidence.gate
        record = {
            "format": FORMAT,
            "blend": dataclasses.asdict(self.blend),
            "words": _word_record(self.evidence.words),
            "gate": _word_record(gate) if gate is not None else None,
        }
        (Path(directory) / WORDS_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> SiteWords | None:
        """The directory's site words, or None if it has none; ModelDirError if the file is
        unreadable or inconsistent."""
        path = Path(directory) / WORDS_FILE
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format')!r}, this filter reads {FORMAT}")
            blend = Blend(**{key: float(value) for key, value in record["blend"].items()})
            if not all(math.isfinite(value) for value in dataclasses.astuple(blend)):
                raise ValueError("a blend weight is not a finite number")
            gate = _word_model(record["gate"]) if record["gate"] is not None else None
            return cls(SiteEvidence(_word_model(record["words"]), gate), blend)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelDirError(f"{path}: not a valid site-words file: {error}") from None


def _word_record(model: WordModel) -> dict:
    return {
        "bias": model.bias,
        "vocabulary": list(model.vocabulary),
        "idf": model.idf.tolist(),
        "weights": model.weights.tolist(),
    }


def _word_model(record: dict) -> WordModel:
    vocabulary = tuple(record["vocabulary"])
    idf = np.asarray(record["idf"], dtype=np.float64)
    weights = np.asarray(record["weights"], dtype=np.float64)
    bias = float(record["bias"])
    if not len(vocabulary) == len(idf) == len(weights):
        raise ValueError("vocabulary, idf and weights differ in length")
    if not (np.isfinite(idf).all() and np.isfinite(weights).all() and math.isfinite(bias)):
        raise ValueError("a weight is not a finite number")
    return WordModel(vocabulary, idf, weights, bias)
