"""XFORWARD: Postfix tells the filter who the original client was; the filter passes it on.

Without it, the smtpd behind the filter logs every message as coming from the filter
(127.0.0.1) and writes that into its Received header. With it (Postfix's
``smtp_send_xforward_command = yes`` towards the filter, and the next hop's
``smtpd_authorized_xforward_hosts`` naming the filter), logs downstream name the real
client. See https://www.postfix.org/XFORWARD_README.html.

Trust: only clients that pass the gate (``allowed_networks``) can send any command, and
the gate admits the MTAs that hand mail to the filter, so every admitted client may send
XFORWARD. Anyone else is refused with 554 before a command is read.

aiosmtpd knows no XFORWARD, so ``XForwardSMTP`` adds the command (aiosmtpd dispatches
``smtp_<COMMAND>`` methods by name) and advertises it in the EHLO reply. The attributes
are forwarded as received (xtext-encoded) when the next hop advertises XFORWARD; the
next hop's connection is opened here, before MAIL FROM, because XFORWARD must precede it.
A next hop that refuses them only loses the information, never the mail.
"""

from __future__ import annotations

import logging
from typing import Any

from aiosmtpd.smtp import syntax

from spamfilter.smtp.access import Gate
from spamfilter.smtp.protocol import FilterSession, FilterSMTP
from spamfilter.smtp.relay import RelayError, SmtpNextHop

log = logging.getLogger(__name__)

ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
EHLO_LINE = "250-XFORWARD " + " ".join(ATTRIBUTES)
OK = "250 2.0.0 Ok"


def parse(argument: str) -> dict[str, str] | str:
    """``NAME=x ADDR=y`` -> {"NAME": "x", "ADDR": "y"}, or the error reply for bad syntax."""
    attributes: dict[str, str] = {}
    for item in argument.split():
        name, equals, value = item.partition("=")
        if not equals or not value:
            return "501 5.5.4 Syntax: XFORWARD attribute=value..."
        if name.upper() not in ATTRIBUTES:
            return f"501 5.5.4 Bad XFORWARD attribute name: {name[:40]}"
        attributes[name.upper()] = value
    return attributes or "501 5.5.4 Syntax: XFORWARD attribute=value..."


class XForwardSMTP(FilterSMTP):
    """``FilterSMTP`` that accepts XFORWARD and hands it to the next hop."""

    def __init__(self, handler: object, gate: Gate, **settings: Any) -> None:
        limits = settings.get("command_call_limit")
        if isinstance(limits, dict) and "MAIL" in limits:
            # Postfix sends XFORWARD once or twice per message (long values are split);
            # counted under "*" with RSET and EHLO, it would end busy sessions early.
            settings["command_call_limit"] = {"XFORWARD": 2 * limits["MAIL"], **limits}
        super().__init__(handler, gate, **settings)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        """Advertise XFORWARD after the handler has built the EHLO reply lines."""
        status = await super()._call_handler_hook(command, *args)
        if command == "EHLO" and isinstance(status, list):
            status = [*status[:-1], EHLO_LINE, status[-1]]
        return status

    @syntax("XFORWARD attribute=value...")
    async def smtp_XFORWARD(self, argument: str | None) -> None:
        await self.push(await self._xforward(argument or ""))

    async def _xforward(self, argument: str) -> str:
        session = self.session
        if not isinstance(session, FilterSession) or not session.extended_smtp:
            return "503 5.5.1 Error: send EHLO first"
        if session.in_transaction:
            return "503 5.5.1 Error: MAIL transaction in progress"
        attributes = parse(argument)
        if isinstance(attributes, str):
            return attributes
        log.debug("xforward %s", argument)
        session.xforward.update(attributes)
        try:
            if session.next_hop is None:
                session.next_hop = await self.event_handler.connector.connect()
            await forward(session.next_hop, attributes)
        except RelayError as error:
            session.next_hop = None  # the relay aborted it; MAIL FROM connects again
            return str(error.reply)
        return OK


async def forward(hop: object, attributes: dict[str, str]) -> None:
    """Send ``attributes`` to ``hop`` if it speaks XFORWARD; a refusal is only logged."""
    if not attributes or not isinstance(hop, SmtpNextHop) or "XFORWARD" not in hop.extensions:
        return
    line = " ".join(f"{name}={value}" for name, value in attributes.items())
    reply = await hop.command(f"XFORWARD {line}")
    if not reply.ok:
        log.warning("next hop refused XFORWARD %s: %s", line, reply)
