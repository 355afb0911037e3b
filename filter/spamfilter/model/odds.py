"""The log-odds of spam, log(p / (1 - p)): the scale on which evidence adds up (the site
words' blend with the encoder, an explanation's phrase weights)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# P(spam) is kept this far from 0 and 1, so that the log-odds stay finite (at most
# ±16.1): fp32 probabilities resolve about 6e-8 next to 1, and nearer is noise.
CERTAIN = 1e-7


def log_odds(probabilities: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """The log-odds of each probability (of one: a numpy float)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), CERTAIN, 1 - CERTAIN)
    return np.log(p / (1 - p))
