"""From a score to a verdict and the X-Spam-* headers the filter prepends.

Verdicts, strongest first: ``reject`` (550, only where configured: before-queue
set-ups), ``quarantine`` (kept in a Maildir, not relayed), ``tag`` (relayed with
``X-Spam-Flag: YES`` and the optional subject tag) and ``pass``. A score of ``None``
means scoring failed: the message is relayed with ``X-Spam-Status: unknown`` or
refused with 451, as ``on_score_error`` says.

A ``Listing`` (``lists.py``) overrides the score: allowlisted mail always passes (still
scored, the reason in ``X-Spam-Status``), denylisted mail gets at least ``deny_action``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from spamfilter.config import FilterConfig
from spamfilter.model.modeldir import ModelCard
from spamfilter.model.precision import resolve, resolve_device
from spamfilter.smtp.headers import prefix_subject, remove_fields
from spamfilter.smtp.lists import Listing, ThresholdRule

HEADER_PREFIX = b"x-spam-"


class Verdict(enum.Enum):
    PASS = "pass"
    TAG = "tag"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    UNKNOWN = "unknown"  # scoring failed and on_score_error is "pass"
    TEMPFAIL = "tempfail"  # scoring failed and on_score_error is "tempfail"


# How strong each verdict is, for "at least" (deny) and for the message of several groups.
STRENGTH = {
    Verdict.PASS: 0,
    Verdict.UNKNOWN: 1,
    Verdict.TAG: 2,
    Verdict.QUARANTINE: 3,
    Verdict.REJECT: 4,
    Verdict.TEMPFAIL: 5,
}


@dataclass(frozen=True)
class Policy:
    """Thresholds and actions in force; replaced as a whole on SIGHUP."""

    model_id: str
    tag: float
    quarantine: float | None = None
    reject: float | None = None  # None also when rejecting is not enabled
    subject_tag: bytes = b""
    tempfail_on_error: bool = False
    deny: Verdict = Verdict.TAG  # what denylisted mail gets at least

    @classmethod
    def build(cls, config: FilterConfig, card: ModelCard, model_id: str) -> Policy:
        """The policy from the config, thresholds it leaves empty taken from the model card."""
        thresholds = card.thresholds_for(resolve(config.precision, resolve_device(config.device)))
        quarantine = _first(config.quarantine_threshold, thresholds.quarantine)
        if quarantine is not None and not config.quarantine_dir:
            raise ValueError(
                f"a quarantine threshold ({quarantine}) is set but no quarantine_dir is"
            )
        reject = _first(config.reject_threshold, thresholds.reject)
        return cls(
            model_id=model_id,
            tag=_first(config.tag_threshold, thresholds.tag),
            quarantine=quarantine,
            reject=reject if config.reject else None,
            subject_tag=config.subject_tag.encode("ascii"),
            tempfail_on_error=config.on_score_error == "tempfail",
            deny=Verdict(config.deny_action),
        )

    def with_thresholds(self, rule: ThresholdRule | None) -> Policy:
        """This policy with a recipient's own thresholds, if it has a rule."""
        return dataclasses.replace(self, **rule.changes()) if rule else self

    def decide(self, score: float | None, listing: Listing | None = None) -> Verdict:
        verdict = self._by_score(score)
        if listing is None:
            return verdict
        if listing.denied:
            return verdict if STRENGTH[verdict] > STRENGTH[self.deny] else self.deny
        return verdict if score is None else Verdict.PASS

    def _by_score(self, score: float | None) -> Verdict:
        if score is None:
            return Verdict.TEMPFAIL if self.tempfail_on_error else Verdict.UNKNOWN
        for verdict, threshold in (
            (Verdict.REJECT, self.reject),
            (Verdict.QUARANTINE, self.quarantine),
            (Verdict.TAG, self.tag),
        ):
            if threshold is not None and score >= threshold:
                return verdict
        return Verdict.PASS

    def flagged(self, score: float | None, listing: Listing | None = None) -> bool:
        """Whether the message is marked as spam (X-Spam-Flag: YES, the subject tag)."""
        if listing is not None:
            return listing.denied
        return score is not None and score >= self.tag

    def headers(self, score: float | None, listing: Listing | None = None) -> bytes:
        """The X-Spam-* header lines (CRLF-terminated) for a message with ``score``."""
        reason = f" {listing}" if listing else ""
        spam = self.flagged(score, listing)
        if score is None:
            flag = "X-Spam-Flag: YES\r\n" if spam else ""
            return f"{flag}X-Spam-Status: unknown,{reason} model={self.model_id}\r\n".encode()
        status = f"{'Yes' if spam else 'No'}, score={score:.3f} tag={self.tag:g}"
        for name, threshold in (("quarantine", self.quarantine), ("reject", self.reject)):
            if threshold is not None:
                status += f" {name}={threshold:g}"
        return (
            f"X-Spam-Flag: {'YES' if spam else 'NO'}\r\n"
            f"X-Spam-Score: {score:.3f}\r\n"
            f"X-Spam-Status: {status}{reason} model={self.model_id}\r\n"
        ).encode()

    def rewrite(self, raw: bytes, score: float | None, listing: Listing | None = None) -> bytes:
        """The message to deliver: our headers, then ``raw`` (already stripped of X-Spam-*)."""
        if self.flagged(score, listing) and self.subject_tag:
            raw = prefix_subject(raw, self.subject_tag)
        return self.headers(score, listing) + raw


def strip_spam_headers(raw: bytes) -> bytes:
    """``raw`` without incoming X-Spam-* fields: a sender must not vouch for itself."""
    return remove_fields(raw, HEADER_PREFIX)


def _first(*values: float | None) -> float | None:
    return next((value for value in values if value is not None), None)
