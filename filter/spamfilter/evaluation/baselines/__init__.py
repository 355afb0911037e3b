"""Peer spam filters, trained and scored on the same split as the model (``spamfilter eval``).

Each baseline has one small module and the same interface (``Baseline``): ``fit`` on the
training split's raw messages, ``score`` the evaluated ones as P(spam)-like numbers in
[0, 1] (monotone in the peer's own score, so ROC and recall-at-FPR are the peer's own).

Filters that read whole messages (bogofilter, SpamAssassin) are run on two views of
each message (DESIGN §3-4): ``raw``, as people run them, which lets them read the
corpus's trace and list headers (near-perfect on this corpus, and useless elsewhere);
and ``text``, the model's own input (``email_to_text``) as the body of a minimal
message, which is the like-for-like comparison with the model.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from spamfilter.model.mailtext import email_to_text, plain_text_message

View = Literal["raw", "text"]
NAMES = ("tfidf", "bogofilter", "spamassassin")


class BaselineUnavailable(RuntimeError):
    """The peer's program is not installed; the message says which package provides it."""


class Baseline(Protocol):
    """A filter trained on labelled raw mail that scores raw mail."""

    name: str
    # The peer's own spam cut-off on the scale of ``score`` (bogofilter 0.99, SA 5 points).
    native_threshold: float

    def fit(self, raws: Sequence[bytes], labels: Sequence[int]) -> None: ...

    def score(self, raws: Sequence[bytes]) -> np.ndarray: ...

    def close(self) -> None: ...


def as_text_message(raw: bytes) -> bytes:
    """``raw`` as the model reads it, wrapped as the body of a minimal text/plain message."""
    return plain_text_message(email_to_text(raw).encode("utf-8"))


def require_program(program: str, package: str) -> str:
    """The path of ``program``, or BaselineUnavailable naming the Debian package to install."""
    path = shutil.which(program)
    if path is None:
        raise BaselineUnavailable(
            f"{program} not found: install the Debian package with "
            f"'apt-get install {package}' (scripts/ensure-peers.sh does)"
        )
    return path


def make_baselines(name: str) -> list[Baseline]:
    """The runs that ``--baseline NAME`` stands for: one per view for message-reading peers."""
    if name == "tfidf":
        from spamfilter.evaluation.baselines.tfidf import TfidfBaseline

        return [TfidfBaseline()]
    if name == "bogofilter":
        from spamfilter.evaluation.baselines.bogofilter import BogofilterBaseline

        return [BogofilterBaseline("raw"), BogofilterBaseline("text")]
    if name == "spamassassin":
        from spamfilter.evaluation.baselines.spamassassin import SpamAssassinBaseline

        return [SpamAssassinBaseline("raw"), SpamAssassinBaseline("text")]
    raise ValueError(f"unknown baseline {name!r} (choose from {', '.join(NAMES)})")
