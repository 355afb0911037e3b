"""The SMTP protocol of one client connection and its per-session state.

``FilterSMTP`` is aiosmtpd's ``SMTP`` with a gate (``access.Gate``) in front: a client
outside the allowed networks, or beyond the connection limit, gets ``554``/``421`` before
any command and is disconnected. The SMTP dialogue itself is aiosmtpd's; what the filter
does with it lives in ``handler.py``.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import MISSING, SMTP, Session, syntax

from spamfilter.smtp.access import Gate
from spamfilter.smtp.dataread import TooBig, read_message
from spamfilter.smtp.relay import NextHop

log = logging.getLogger(__name__)


class FilterSession(Session):
    """aiosmtpd's session plus the connection to the next hop this client's mail goes to."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.next_hop: NextHop | None = None
        # True from an accepted MAIL FROM until the answer to DATA (or RSET): the next
        # hop has an open transaction, and SIGTERM must let this session finish.
        self.in_transaction = False
        self.xforward: dict[str, str] = {}  # the MTA's last XFORWARD attributes (xtext)


class FilterSMTP(SMTP):
    """aiosmtpd's SMTP protocol behind the gate, with ``FilterSession`` sessions."""

    def __init__(self, handler: object, gate: Gate, **settings: object) -> None:
        super().__init__(handler, **settings)  # type: ignore[arg-type]
        self.gate = gate
        self._admitted = False

    def _create_session(self) -> FilterSession:
        return FilterSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._admitted:  # STARTTLS calls this again on the same protocol
            peer = transport.get_extra_info("peername")
            refusal = self.gate.refusal(peer)
            if refusal is not None:
                log.warning("refused %s: %s", peer, refusal)
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self._admitted = True
            self.gate.live.add(self)
            self.gate.metrics.sessions.inc()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._admitted:
            return
        self.gate.live.discard(self)
        self.gate.metrics.sessions.dec()
        session = self.session
        if isinstance(session, FilterSession) and session.next_hop is not None:
            session.next_hop.abort()  # the next hop drops an unfinished transaction
            session.next_hop = None
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA, reading the message with ``read_message``: long lines are taken."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_message(self._reader, self.data_size_limit)
        except TooBig:
            self._set_post_data_state()
            await self.push("552 Error: Too much mail data")
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    @property
    def in_transaction(self) -> bool:
        return isinstance(self.session, FilterSession) and self.session.in_transaction

    def close_with(self, reply: str) -> None:
        """Send ``reply`` (e.g. 421 on shutdown) and disconnect."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
            self.transport.close()
