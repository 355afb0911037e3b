"""The aiosmtpd handler: what the filter does at each SMTP command.

MAIL FROM and RCPT TO are forwarded to the next hop and answered with its reply (see
``relay.py`` for why). At DATA: strip incoming X-Spam-* headers, score (through the
micro-batcher), decide, then relay, quarantine or refuse, and answer with an explicit
status line. 250 is only ever the next hop's 250 (or a quarantine write that
succeeded; for recipients split into groups by the lists, ``routing.py``, once every
group is held); everything that fails on our side is a 4xx, so the MTA keeps the message.

aiosmtpd finds hooks by name (``handle_<COMMAND>``); a misspelt hook is silently
never called, which is why ``HOOKS`` lists them and a test proves each one runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

from aiosmtpd.smtp import SMTP, Envelope

from spamfilter.config import FilterConfig
from spamfilter.model.explain import Explanation
from spamfilter.smtp import quarantine, routing, spamreport, xforward
from spamfilter.smtp.batcher import Overloaded
from spamfilter.smtp.lists import Facts, Lists, client_address, from_addresses
from spamfilter.smtp.policy import Policy, Verdict, strip_spam_headers
from spamfilter.smtp.prometheus import FilterMetrics
from spamfilter.smtp.protocol import FilterSession
from spamfilter.smtp.relay import Connector, RelayError, Reply
from spamfilter.smtp.routing import Group

log = logging.getLogger(__name__)

HOOKS = ("EHLO", "MAIL", "RCPT", "RSET", "DATA", "QUIT")

OVERLOADED = Reply(451, ("4.3.2 the filter is overloaded, try again later",))
SHUTTING_DOWN = Reply(451, ("4.3.2 the filter is shutting down, try again later",))
SCORING_FAILED = Reply(451, ("4.3.0 the message could not be scored, try again later",))
QUARANTINE_FAILED = Reply(451, ("4.3.0 the quarantine cannot store the message now",))
INTERNAL_ERROR = Reply(451, ("4.3.0 internal error in the filter, try again later",))
NO_NEXT_HOP = Reply(451, ("4.4.2 next hop: connection lost during this transaction",))
TOO_MANY_RECIPIENTS = Reply(452, ("4.5.3 too many recipients",))
DENIED = Reply(550, ("5.7.1 refused by local policy",))
# A NUL or CR inside an address would reach the next hop inside our command line, where
# a C string ends at the NUL (another address than the one logged) or a lenient parser
# takes the CR for a line end (a smuggled command). aiosmtpd lets both through.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
BAD_SENDER = Reply(501, ("5.1.7 control characters in the sender address or parameters",))
BAD_RECIPIENT = Reply(501, ("5.1.3 control characters in the recipient address or parameters",))


class AsyncScorer(Protocol):
    """P(spam) of one raw message, awaited (the micro-batcher)."""

    async def score(self, raw: bytes) -> float: ...


@dataclass(frozen=True)
class Rules:
    """Everything SIGHUP may change; the handler reads it once per message."""

    policy: Policy
    quarantine_dir: str = FilterConfig.quarantine_dir
    score_timeout: float = FilterConfig.score_timeout
    max_recipients: int = FilterConfig.max_recipients
    lists: Lists = field(default_factory=Lists)
    explain: str = FilterConfig.explain  # which verdicts get X-Spam-Report (spamreport)
    explain_timeout: float = FilterConfig.explain_timeout


class FilterHandler:
    def __init__(
        self,
        rules: Rules,
        scorer: AsyncScorer,
        next_hop: Connector,
        metrics: FilterMetrics,
        reporter: spamreport.Reporter | None = None,
    ) -> None:
        self.rules = rules
        self.scorer = scorer
        self.reporter = reporter  # None: no explanations, whatever rules.explain says
        self.connector = next_hop
        self.metrics = metrics
        self.accepting = True  # False once SIGTERM arrived: no new transactions

    async def handle_EHLO(
        self,
        server: SMTP,
        session: FilterSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd handles pipelined commands in order but does not advertise it."""
        await self._end_transaction(session)  # EHLO resets the transaction (RFC 5321 4.1.4)
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: FilterSession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not self.accepting:
            return str(SHUTTING_DOWN)
        if _CONTROL.search(" ".join([address, *mail_options])):
            return str(BAD_SENDER)
        await self._end_transaction(session)  # e.g. after a DATA that aiosmtpd refused (552)
        try:
            if session.next_hop is None:
                session.next_hop = await self.connector.connect()
            reply = await session.next_hop.mail(address, mail_options)
        except RelayError as error:
            return str(self._relay_failed(session, "mail", error))
        if reply.ok:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            session.in_transaction = True
        return str(reply)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: FilterSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.rules.max_recipients:
            return str(TOO_MANY_RECIPIENTS)
        if _CONTROL.search(" ".join([address, *rcpt_options])):
            return str(BAD_RECIPIENT)
        if session.next_hop is None:
            return str(NO_NEXT_HOP)
        if self._denied_at_rcpt(session, envelope, address):
            return str(DENIED)
        try:
            reply = await session.next_hop.rcpt(address)
        except RelayError as error:
            return str(self._relay_failed(session, "rcpt", error))
        if reply.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return str(reply)

    async def handle_RSET(self, server: SMTP, session: FilterSession, envelope: Envelope) -> str:
        await self._end_transaction(session)
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: FilterSession, envelope: Envelope) -> str:
        if session.next_hop is not None:
            await session.next_hop.quit()
            session.next_hop = None
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: FilterSession, envelope: Envelope) -> str:
        started = time.perf_counter()
        queue_id = secrets.token_hex(5).upper()
        # All at once: SIGHUP may swap the model (with the rules, which name it, and the
        # reporter, which explains with it).
        rules, scorer, reporter = self.rules, self.scorer, self.reporter
        raw = strip_spam_headers(envelope.original_content or b"")
        score: float | None = None
        verdict = Verdict.TEMPFAIL
        groups: list[Group] = []
        explanation = None
        try:
            score = await self._score(scorer, raw, rules.score_timeout)
            facts = _facts(session, envelope, raw) if rules.lists else Facts()
            groups = routing.plan(
                rules.policy,
                rules.lists,
                facts,
                envelope.rcpt_tos,
                score,
                bool(rules.quarantine_dir),
            )
            verdict = routing.strongest(groups)
            if reporter is not None:
                explanation = await reporter.explain(
                    raw, verdict, rules.explain, rules.explain_timeout, queue_id
                )
            raw = spamreport.header(explanation) + raw  # joins our headers in rewrite
            if len(groups) == 1 or verdict in (Verdict.REJECT, Verdict.TEMPFAIL):
                reply = await self._act(groups[0], rules, raw, score, session, envelope, queue_id)
            else:
                reply = await self._act_per_group(
                    groups, rules, raw, score, session, envelope, queue_id
                )
        except Overloaded:
            reply = await self._refuse(session, OVERLOADED)
        except Exception:
            log.exception("%s: unexpected error; answering 451 so the MTA keeps it", queue_id)
            self._drop_next_hop(session)
            reply = INTERNAL_ERROR
        elapsed = time.perf_counter() - started
        note = _note(groups) + _report(explanation)
        self._record(queue_id, envelope, score, verdict, reply, elapsed, note)
        session.in_transaction = False  # nothing awaits from here until aiosmtpd sends reply
        return str(reply)

    async def handle_exception(self, error: Exception) -> str:
        """Errors outside DATA (which handles its own): logged, answered 451, never hidden."""
        log.exception("unexpected error in an SMTP session", exc_info=error)
        return str(INTERNAL_ERROR)

    async def _score(self, scorer: AsyncScorer, raw: bytes, timeout: float) -> float | None:
        """P(spam), or None when scoring failed (Overloaded propagates: that is a 451)."""
        try:
            score = await asyncio.wait_for(scorer.score(raw), timeout)
            if not 0.0 <= score <= 1.0:  # NaN too: a broken model must not wave mail through
                raise ValueError(f"the model returned {score!r}, not a probability")
            return score
        except Overloaded:
            raise
        except TimeoutError:
            self.metrics.score_errors.labels("timeout").inc()
            log.error("scoring timed out after %.1f s", timeout)
        except Exception:
            self.metrics.score_errors.labels("error").inc()
            log.exception("scoring failed")
        return None

    def _denied_at_rcpt(self, session: FilterSession, envelope: Envelope, recipient: str) -> bool:
        """With ``deny_action: reject``, a recipient whose copy the envelope already denies
        is refused at RCPT: the one moment SMTP answers for each recipient alone."""
        if self.rules.policy.deny is not Verdict.REJECT or not self.rules.lists.deny:
            return False
        facts = _facts(session, envelope)
        listing = self.rules.lists.listing(facts, recipient)
        if listing is None or not listing.denied:
            return False
        log.info("refused RCPT <%s> from <%s>: %s", recipient, facts.sender, listing)
        return True

    async def _act(
        self,
        group: Group,
        rules: Rules,
        raw: bytes,
        score: float | None,
        session: FilterSession,
        envelope: Envelope,
        queue_id: str,
    ) -> Reply:
        """One outcome for every recipient, in the transaction MAIL and RCPT opened."""
        if group.verdict is Verdict.TEMPFAIL:
            return await self._refuse(session, SCORING_FAILED)
        if group.verdict is Verdict.REJECT:
            return await self._refuse(session, Reply(550, ("5.7.1 message refused as spam",)))
        message = group.policy.rewrite(raw, score, group.listing)
        if group.verdict is Verdict.QUARANTINE:
            return await self._quarantine(rules, message, session, envelope, queue_id)
        if session.next_hop is None:
            return NO_NEXT_HOP
        try:
            return await session.next_hop.data(message)
        except RelayError as error:
            return self._relay_failed(session, "data", error)

    async def _act_per_group(
        self,
        groups: list[Group],
        rules: Rules,
        raw: bytes,
        score: float | None,
        session: FilterSession,
        envelope: Envelope,
        queue_id: str,
    ) -> Reply:
        """Recipients with different outcomes (routing.py): quarantined groups first (a
        local write, so a failure there delivers nothing), then each relayed group in a
        transaction of its own; 250 once every group is held."""
        await self._end_transaction(session)  # the next hop's transaction for everyone
        held: list[Group] = []
        for group in sorted(groups, key=lambda group: group.verdict is not Verdict.QUARANTINE):
            message = group.policy.rewrite(raw, score, group.listing)
            if group.verdict is Verdict.QUARANTINE:
                reply = await self._quarantine(
                    rules, message, session, envelope, queue_id, group.recipients
                )
            else:
                reply = await self._relay_copy(session, envelope, group.recipients, message)
            if not reply.ok:
                if held:
                    log.warning(
                        "%s: %s answered %r after %s were held (a retry duplicates them)",
                        queue_id,
                        ",".join(group.recipients),
                        str(reply),
                        ",".join(name for done in held for name in done.recipients),
                    )
                return reply
            held.append(group)
        return Reply(250, (f"2.0.0 Ok: {len(held)} copies, by recipient rules",))

    async def _relay_copy(
        self,
        session: FilterSession,
        envelope: Envelope,
        recipients: tuple[str, ...],
        message: bytes,
    ) -> Reply:
        """MAIL FROM, RCPT TO ``recipients`` and DATA ``message``: one group's own transaction."""
        try:
            if session.next_hop is None:
                session.next_hop = await self.connector.connect()
            hop = session.next_hop
            await xforward.forward(hop, session.xforward)  # Postfix resets it after a transaction
            reply = await hop.mail(envelope.mail_from, envelope.mail_options)
            if not reply.ok:
                return reply
            session.in_transaction = True
            for recipient in recipients:
                reply = await hop.rcpt(recipient)
                if not reply.ok:
                    return await self._refuse(session, reply)
            reply = await hop.data(message)
            session.in_transaction = False
            return reply
        except RelayError as error:
            return self._relay_failed(session, "data", error)

    async def _quarantine(
        self,
        rules: Rules,
        message: bytes,
        session: FilterSession,
        envelope: Envelope,
        queue_id: str,
        recipients: tuple[str, ...] | None = None,
    ) -> Reply:
        sender = envelope.mail_from or "<>"
        recipients = recipients or tuple(envelope.rcpt_tos)
        try:
            key = await asyncio.to_thread(
                quarantine.store, rules.quarantine_dir, message, sender, recipients
            )
        except OSError as error:
            log.error("%s: quarantine %s: %s", queue_id, rules.quarantine_dir, error)
            return await self._refuse(session, QUARANTINE_FAILED)
        log.info("%s: quarantined as %s", queue_id, key)
        return await self._refuse(session, Reply(250, (f"2.0.0 Ok: quarantined as {queue_id}",)))

    async def _refuse(self, session: FilterSession, reply: Reply) -> Reply:
        """End the next hop's transaction (nothing is delivered), then answer ``reply``."""
        await self._end_transaction(session)
        return reply

    async def _end_transaction(self, session: FilterSession) -> None:
        if session.in_transaction and session.next_hop is not None:
            try:
                await session.next_hop.rset()
            except RelayError:
                session.next_hop = None  # aborted; the next MAIL connects again
        session.in_transaction = False

    def _relay_failed(self, session: FilterSession, step: str, error: RelayError) -> Reply:
        self.metrics.relay_errors.labels(step).inc()
        log.warning("next hop failed at %s: %s", step.upper(), error)
        session.next_hop = None  # the relay aborted the connection
        session.in_transaction = False
        return error.reply

    def _drop_next_hop(self, session: FilterSession) -> None:
        if session.next_hop is not None:
            session.next_hop.abort()
            session.next_hop = None
        session.in_transaction = False

    def _record(
        self,
        queue_id: str,
        envelope: Envelope,
        score: float | None,
        verdict: Verdict,
        reply: Reply,
        seconds: float,
        note: str = "",
    ) -> None:
        """The one log line per message, and its metrics."""
        self.metrics.messages.labels(verdict.value).inc()
        self.metrics.latency.observe(seconds)
        if score is not None:
            self.metrics.scores.observe(score)
        log.info(
            "%s from=<%s> rcpts=%d size=%d score=%s verdict=%s%s ms=%.0f reply=%r",
            queue_id,
            envelope.mail_from,
            len(envelope.rcpt_tos),
            len(envelope.original_content or b""),
            "none" if score is None else f"{score:.3f}",
            verdict.value,
            note,
            seconds * 1000,
            str(reply)[:200],
        )


def _report(explanation: Explanation | None) -> str:
    """The log line's ``report=`` field: the X-Spam-Report value, when there is one."""
    return "" if explanation is None else f" report={spamreport.summary(explanation)!r}"


def _facts(session: FilterSession, envelope: Envelope, raw: bytes = b"") -> Facts:
    """What the lists match: the envelope sender, the From header (at DATA), the client."""
    return Facts(
        sender=envelope.mail_from or "",
        from_addresses=from_addresses(raw),
        client=client_address(session.xforward.get("ADDR", ""), session.peer),
    )


def _note(groups: list[Group]) -> str:
    """For the log line: the list entry that matched, or how the recipients were split."""
    if len(groups) > 1:
        return " groups=" + " ".join(group.describe() for group in groups)
    if groups and groups[0].listing is not None:
        return f" {groups[0].listing}"
    return ""
