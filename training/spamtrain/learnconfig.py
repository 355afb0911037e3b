"""Settings of ``spamfilter learn``: one dataclass, one default per field.

Apart from ``spamtrain.learn`` so that the ``spamfilter`` command line lists the flags
and their defaults without importing the training stack (accelerate, datasets), which
the serving image does not have. What is not here comes from the parent model's card:
``max_length``, ``tail_tokens``, the batch size, and the corpus it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from spamfilter.evaluation.operating_point import confidence_problem
from spamfilter.model.modeldir import probability_problem
from spamtrain.config import _help


@dataclass
class LearnConfig:
    # Measured on crosscorpus-dev, 200 TREC messages (docs/evaluation.md): 3 epochs at 5e-5
    # reached ROC-AUC 0.9934 on the rest, 3 at 1e-4 0.9957, 5 at 1e-4 0.9960 with the
    # SpamAssassin test split still at 0.9981.
    epochs: int = _help("Passes over the site's mail and the replay sample.", 5)
    learning_rate: float = _help(
        "Peak AdamW learning rate (linear warm-up over 6% of the steps, then decay).", 1e-4
    )
    replay_ratio: float = _help(
        "Messages of the model's original training corpus mixed in per site message, so "
        "it does not forget that mail (0: none).",
        1.0,
    )
    replay_data: str | None = _help(
        "The corpus to replay, as training's --data takes it; default: the one the model "
        "card records (for the default model, the built-in SpamAssassin corpus).",
        None,
    )
    folds: int = _help(
        "Out-of-fold calibration: the site's mail is cut into this many folds, and a model "
        "continued without each fold scores it (folds + 1 training runs in all).",
        3,
    )
    target_fpr: float | None = _help(
        "Highest share of the site's ham at or above the tag threshold; default: the "
        "parent model's target.",
        None,
    )
    confidence: float | None = _help(
        "The tag threshold is the lowest whose FPR upper bound at this confidence "
        "(Clopper-Pearson, on the site's ham out of fold) is within the target; 0: the "
        "observed FPR; default: the parent model's (0.95 if its card records none).",
        None,
    )
    site_words: bool = _help(
        "Also fit a model of the words of the site's mail and blend its evidence with the "
        "encoder's (as sa-learn's Bayes does); false: the encoder alone.",
        True,
    )
    seed: int = _help("Seed for the folds, the replay sample, shuffling and dropout.", 42)

    def validate(self) -> list[str]:
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be at least 1")
        if self.learning_rate <= 0:
            problems.append("learning_rate must be positive")
        if self.replay_ratio < 0:
            problems.append("replay_ratio must be 0 or more")
        if self.folds < 2:
            problems.append("folds must be at least 2")
        if problem := probability_problem("target_fpr", self.target_fpr):
            problems.append(problem)
        if problem := confidence_problem("confidence", self.confidence):
            problems.append(problem)
        return problems
