"""Release: deliver a quarantined message to the next hop with the envelope it came with.

One connection per message, through the relay client the daemon uses: MAIL FROM the
stored sender, RCPT TO each stored recipient, DATA the message without our headers
(``quarantine.released_message``). Released means the next hop answered 250 to DATA;
only then is the quarantined copy deleted. Anything else (the next hop down or slow, a
refused sender, recipient or message) ends the transaction undelivered, leaves the copy
where it was and raises ``ReleaseError``: no recipient gets it unless all do, so a
release tried again can never deliver twice.

Two releases of one message at once (two administrators) would deliver it twice, so a
release holds a lock file in the Maildir from reading the message to deleting it; the
daemon never takes it (it only adds messages).
"""

from __future__ import annotations

import asyncio
import mailbox
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from spamfilter.smtp.quarantine import Envelope, Quarantine, envelope_of, released_message
from spamfilter.smtp.relay import Connector, RelayError, Reply

LOCK_WAIT = 300.0  # seconds to wait for another release to finish (a few relay timeouts)


class ReleaseError(RuntimeError):
    """The message was not delivered; its quarantined copy is still there."""


def release(
    quarantine: Quarantine, key: str, connector: Connector, learn_dir: Path | None = None
) -> Reply:
    """Deliver message ``key``, then delete it; the next hop's reply to DATA.

    ``learn_dir``: a Maildir (created if absent) that also gets the message as delivered,
    to feed to training as ham. Raises NotInQuarantine or ReleaseError.
    """
    try:
        with FileLock(quarantine.lock_path(), timeout=LOCK_WAIT):
            stored = quarantine.raw(key)
            try:
                envelope = envelope_of(stored)
            except ValueError as error:
                raise ReleaseError(f"{key}: {error}") from None
            message = released_message(stored, key, datetime.now(UTC))
            reply = asyncio.run(deliver(message, envelope, connector))
            if learn_dir is not None:
                mailbox.Maildir(learn_dir, factory=None, create=True).add(message)
            quarantine.delete(key)
    except Timeout:
        raise ReleaseError(f"{key}: another release held {quarantine.lock_path()}") from None
    return reply


async def deliver(message: bytes, envelope: Envelope, connector: Connector) -> Reply:
    """Send ``message`` to every recipient of ``envelope`` or to none; the DATA reply."""
    try:
        hop = await connector.connect()
    except RelayError as error:
        raise ReleaseError(str(error)) from None
    try:
        reply = await hop.mail(envelope.sender, _mail_options(message, envelope))
        if not reply.ok:
            raise ReleaseError(f"the next hop refused the sender {envelope.sender}: {reply}")
        refused = []
        for recipient in envelope.recipients:
            reply = await hop.rcpt(recipient)
            if not reply.ok:
                refused.append(f"<{recipient}>: {reply}")
        if refused:
            raise ReleaseError(f"the next hop refused {'; '.join(refused)}; nothing delivered")
        reply = await hop.data(message)
        if not reply.ok:
            raise ReleaseError(f"the next hop refused the message: {reply}")
        return reply
    except RelayError as error:
        raise ReleaseError(str(error)) from None
    finally:
        await hop.quit()  # before DATA's 250, QUIT ends the transaction undelivered


def _mail_options(message: bytes, envelope: Envelope) -> list[str]:
    """MAIL FROM parameters the message needs (the client's own were not stored)."""
    options = []
    if not message.isascii():
        options.append("BODY=8BITMIME")
    if not all(address.isascii() for address in (envelope.sender, *envelope.recipients)):
        options.append("SMTPUTF8")
    return options
