"""The daemon's explanations: which messages get one, how it is bounded, and how it reads.

``explain: tagged`` explains messages at or above the tag threshold (tag, quarantine,
reject), ``all`` every scored message, ``off`` none. An explanation runs on its own
micro-batcher, so off the event loop and in its own worker thread, and is awaited for at
most ``explain_timeout`` seconds. It can only add to a message: when it fails, times out
or finds its queue full, the message goes on without ``X-Spam-Report``, the error is
logged and counted (``spamfilter_explanations_total{result}``), and the SMTP answer is
what it would have been.

The header names the ``REPORT_PHRASES`` phrases with the largest weights, strongest
first, each with its weight (log-odds of spam on its own, against an empty text; see
``model/explain.py``), then, for a model with site words, ``site words:`` and the
``REPORT_WORDS`` words that moved the score most (their share of its log-odds), all in
double quotes (``\\`` and ``"`` escaped), at most
``PHRASE_CHARS`` characters each. It is folded between words at ``LINE_CHARS``
characters, with CRLF; runs of non-ASCII words become RFC 2047 encoded words. The
phrases come from the model text, which holds no line breaks or control characters
within a word; anything that could still confuse a reader of the header (control
characters, an encoded-word opener ``=?``) is defused first.
"""

from __future__ import annotations

import asyncio
import logging
import re
from email.header import Header

from spamfilter.model.explain import Explanation, Phrase
from spamfilter.smtp.batcher import MicroBatcher, Overloaded
from spamfilter.smtp.policy import Verdict
from spamfilter.smtp.prometheus import FilterMetrics

log = logging.getLogger(__name__)

HEADER = "X-Spam-Report"
REPORT_PHRASES = 3
REPORT_WORDS = 3
PHRASE_CHARS = 60
LINE_CHARS = 78  # RFC 5322's folding width
EXPLAINED = {
    "off": frozenset(),
    "tagged": frozenset({Verdict.TAG, Verdict.QUARANTINE, Verdict.REJECT}),
    "all": frozenset({Verdict.PASS, Verdict.TAG, Verdict.QUARANTINE, Verdict.REJECT}),
}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Reporter:
    """Explanations for the SMTP handler, through their own micro-batcher."""

    def __init__(self, batcher: MicroBatcher[Explanation], metrics: FilterMetrics) -> None:
        self.batcher = batcher
        self.metrics = metrics

    async def explain(
        self, raw: bytes, verdict: Verdict, mode: str, timeout: float, queue_id: str
    ) -> Explanation | None:
        """The explanation of ``raw`` if ``mode`` wants one for ``verdict`` and it comes
        within ``timeout`` seconds; None otherwise. Never raises."""
        if verdict not in EXPLAINED[mode]:
            return None
        try:
            explanation = await asyncio.wait_for(self.batcher.score(raw), timeout)
        except TimeoutError:
            self._failed(queue_id, "timeout", f"no explanation within {timeout:g} s")
        except Overloaded:
            self._failed(queue_id, "busy", "the explanation queue is full")
        except Exception:
            log.exception("%s: explaining failed; relayed without %s", queue_id, HEADER)
            self.metrics.explanations.labels("error").inc()
        else:
            self.metrics.explanations.labels("ok").inc()
            return explanation
        return None

    def _failed(self, queue_id: str, result: str, why: str) -> None:
        log.warning("%s: %s; relayed without %s", queue_id, why, HEADER)
        self.metrics.explanations.labels(result).inc()


def summary(explanation: Explanation) -> str:
    """The header's value: ``+4.12 "cash prize now"; -0.80 "meeting agenda"`` (one line),
    and with site words ``; site words: +1.21 "zorblax" +0.80 "digest"``."""
    shown = "; ".join(_shown(phrase) for phrase in explanation.top(REPORT_PHRASES))
    if explanation.words:
        words = " ".join(_shown(word) for word in explanation.words[:REPORT_WORDS])
        shown += f"; site words: {words}"
    return shown


def header(explanation: Explanation | None) -> bytes:
    """The ``X-Spam-Report`` field (folded, CRLF, ASCII), or b"" without an explanation."""
    if explanation is None or not explanation.phrases:
        return b""
    lines = [f"{HEADER}:"]
    for token in _ascii_tokens(summary(explanation)):
        if len(lines[-1]) + 1 + len(token) > LINE_CHARS and lines[-1] != f"{HEADER}:":
            lines.append("")  # a folded line: it starts with the space added below
        lines[-1] += " " + token
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _ascii_tokens(value: str) -> list[str]:
    """``value``'s words, each run of non-ASCII words (with its inner spaces) as RFC 2047
    encoded words, which a reader decodes back to the run."""
    tokens: list[str] = []
    run: list[str] = []
    for word in [*value.split(" "), ""]:  # "" ends the last run
        if word and not word.isascii():
            run.append(word)
            continue
        if run:
            tokens += Header(" ".join(run), "utf-8").encode(maxlinelen=LINE_CHARS - 2).split()
            run = []
        if word:
            tokens.append(word)
    return tokens


def _shown(phrase: Phrase) -> str:
    text = " ".join(_UNSAFE.sub(" ", phrase.text).split()).replace("=?", "= ?")
    if len(text) > PHRASE_CHARS:
        text = text[: PHRASE_CHARS - 3] + "..."
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'{phrase.weight:+.2f} "{quoted}"'
