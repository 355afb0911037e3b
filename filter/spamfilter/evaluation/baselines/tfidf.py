"""TF-IDF + logistic regression on the model's own text: the classic baseline, pure Python."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from spamfilter.model.mailtext import email_to_text


class TfidfBaseline:
    """Word uni- and bigrams (sublinear TF, IDF) into an L2-regularised logistic regression.

    It reads ``email_to_text`` output, the model's input, so it is like-for-like with the
    model by construction. Seeded, so a report reproduces.
    """

    name = "tfidf+logreg (model text)"
    native_threshold = 0.5

    def __init__(self, seed: int = 0) -> None:
        self.pipeline: Pipeline = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
            LogisticRegression(C=10.0, max_iter=2000, random_state=seed),
        )

    def fit(self, raws: Sequence[bytes], labels: Sequence[int]) -> None:
        self.pipeline.fit([email_to_text(raw) for raw in raws], np.asarray(labels))

    def score(self, raws: Sequence[bytes]) -> np.ndarray:
        texts = [email_to_text(raw) for raw in raws]
        return self.pipeline.predict_proba(texts)[:, 1]

    def close(self) -> None:
        """Nothing to release: the model lives in memory."""
