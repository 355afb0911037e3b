"""One message, several recipients with different rules: which copy each one gets.

Each recipient's effective rules are the filter's policy with the recipient's own
thresholds (``recipient_thresholds``) and the allow or deny entry its copy matches
(``lists.py``). Recipients with the same effective rules form a group, and each group
gets its own verdict and its own X-Spam-* headers, as amavis splits a message per
group of recipients with the same policy. Almost always there is one group, and the
message goes on in the transaction that MAIL FROM and RCPT TO opened at the next hop.

With several groups the handler ends that transaction and sends each relayed group as
a transaction of its own (MAIL FROM, its RCPTs, DATA) on the same connection, stores
the quarantined ones, and answers 250 only once every group is held. SMTP has one
reply to DATA for all recipients, so:

- a scoring failure with ``on_score_error: tempfail`` is a 451 for everyone (part of the
  message cannot wait while the rest goes on: a retry would duplicate it);
- ``reject`` (550) applies only when every group is rejected; otherwise the groups that
  would be rejected are quarantined instead (tagged, without a quarantine_dir), since
  a 550 would tell the sender that nobody got the message while some recipients did;
- a group the next hop refuses after others were delivered ends the relay with that
  reply: on a 4xx the MTA retries and the groups already delivered get a duplicate, on
  a 5xx it bounces although they have the message. A duplicate or a false bounce, never
  a loss (the same trade as a recipient refused after DATA, see ``relay.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spamfilter.smtp.lists import Facts, Listing, Lists
from spamfilter.smtp.policy import STRENGTH, Policy, Verdict


@dataclass(frozen=True)
class Group:
    """Recipients whose copy gets the same verdict and the same headers."""

    recipients: tuple[str, ...]
    policy: Policy
    listing: Listing | None
    verdict: Verdict

    def describe(self) -> str:
        """For the log line: ``tag:a@x,b@x`` (with the list entry when one matched)."""
        reason = f"[{self.listing}]" if self.listing else ""
        return f"{self.verdict.value}{reason}:{','.join(self.recipients)}"


def plan(
    policy: Policy,
    lists: Lists,
    facts: Facts,
    recipients: Sequence[str],
    score: float | None,
    can_quarantine: bool,
) -> list[Group]:
    """The groups of ``recipients`` in order of first appearance, verdicts resolved."""
    members: dict[tuple[Policy, Listing | None], list[str]] = {}
    for recipient in recipients:
        own = policy.with_thresholds(lists.thresholds_for(recipient))
        members.setdefault((own, lists.listing(facts, recipient)), []).append(recipient)
    groups = [
        Group(tuple(names), own, listing, own.decide(score, listing))
        for (own, listing), names in members.items()
    ]
    return _one_reply(groups, can_quarantine)


def strongest(groups: Sequence[Group]) -> Verdict:
    """The verdict the message is counted under (metrics, the log line)."""
    return max((group.verdict for group in groups), key=STRENGTH.__getitem__)


def _one_reply(groups: list[Group], can_quarantine: bool) -> list[Group]:
    """Verdicts that one DATA reply can answer for (see the module docstring)."""
    verdicts = {group.verdict for group in groups}
    if Verdict.TEMPFAIL in verdicts:
        return [_with(group, Verdict.TEMPFAIL) for group in groups]
    if Verdict.REJECT in verdicts and verdicts != {Verdict.REJECT}:
        instead = Verdict.QUARANTINE if can_quarantine else Verdict.TAG
        return [_with(g, instead) if g.verdict is Verdict.REJECT else g for g in groups]
    return groups


def _with(group: Group, verdict: Verdict) -> Group:
    return Group(group.recipients, group.policy, group.listing, verdict)
