"""Quarantine: keep a message in a Maildir instead of delivering it.

The stored message is the one that would have been delivered (our X-Spam-* headers
first), preceded by the envelope, which the message itself does not carry and which an
administrator needs to release it: ``X-Spam-Envelope-From`` and ``X-Spam-Envelope-To``.
Being X-Spam-* headers, they are stripped again if the message is re-injected through
the filter. Writes block, so callers run ``store`` in a worker thread.
"""

from __future__ import annotations

import mailbox
from collections.abc import Sequence


def store(maildir: str, message: bytes, sender: str, recipients: Sequence[str]) -> str:
    """Add ``message`` to the Maildir at ``maildir`` (created if absent); its key."""
    envelope = f"X-Spam-Envelope-From: {sender}\r\nX-Spam-Envelope-To: {', '.join(recipients)}\r\n"
    box = mailbox.Maildir(maildir, factory=None, create=True)
    return box.add(envelope.encode("utf-8", "surrogateescape") + message)
