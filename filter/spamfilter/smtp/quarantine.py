"""Quarantine: keep a message in a Maildir instead of delivering it, and review it later.

The stored message is the one that would have been delivered (our X-Spam-* headers
first), preceded by the envelope, which the message itself does not carry and which an
administrator needs to release it: ``X-Spam-Envelope-From`` and ``X-Spam-Envelope-To``.
Being X-Spam-* headers, they are stripped again if the message is re-injected through
the filter. Writes block, so callers run ``store`` in a worker thread.

Review (``spamfilter quarantine``) works beside a running daemon, by Maildir rules: the
daemon writes into ``tmp/`` and renames into ``new/``, so only whole messages are ever
seen; a message is found by its key in ``new/`` or ``cur/`` (where a mail client may
have moved it), and one that vanishes between listing and acting (released, deleted or
expired by someone else) raises ``NotInQuarantine``. Its date is the Maildir delivery
time: the file's modification time, which a move to ``cur/`` keeps.
"""

from __future__ import annotations

import mailbox
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from spamfilter.smtp.headers import field_name, remove_fields, split_fields
from spamfilter.smtp.policy import HEADER_PREFIX

ENVELOPE_FROM = "X-Spam-Envelope-From"
ENVELOPE_TO = "X-Spam-Envelope-To"
RELEASED = "X-Spam-Released"
MAX_HEAD_BYTES = 256 * 1024  # of a message read to list it: far more than any header block
_FOLDERS = ("new", "cur")
_RECIPIENT = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^,"])+')  # commas inside quotes do not split
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def store(maildir: str, message: bytes, sender: str, recipients: Sequence[str]) -> str:
    """Add ``message`` to the Maildir at ``maildir`` (created if absent); its key."""
    envelope = f"{ENVELOPE_FROM}: {sender}\r\n{ENVELOPE_TO}: {', '.join(recipients)}\r\n"
    box = mailbox.Maildir(maildir, factory=None, create=True)
    return box.add(envelope.encode("utf-8", "surrogateescape") + message)


class NotInQuarantine(LookupError):
    """No message with this id (any longer): released, deleted or expired meanwhile."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: not in the quarantine (released, deleted or expired?)")
        self.key = key


@dataclass(frozen=True)
class Entry:
    """What ``quarantine list`` shows of one message (printable: for a terminal)."""

    id: str
    received: datetime  # Maildir delivery time, UTC
    sender: str  # empty, with no recipients, for a message without our envelope headers
    recipients: tuple[str, ...]
    subject: str
    score: float | None  # X-Spam-Score; None if absent or unreadable
    size: int  # bytes, as stored


@dataclass(frozen=True)
class Envelope:
    sender: str  # "<>" for the null sender
    recipients: tuple[str, ...]


class Quarantine:
    """The quarantine Maildir at ``path`` (which must exist)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not all((self.path / folder).is_dir() for folder in _FOLDERS):
            raise FileNotFoundError(f"{self.path}: not a Maildir (no new/ and cur/)")

    def entries(self) -> list[Entry]:
        """Every message, oldest first; one that vanishes while being read is left out."""
        found = []
        for key, path in self._files():
            try:
                found.append(self._entry(key, path))
            except FileNotFoundError:
                continue
        return sorted(found, key=lambda entry: (entry.received, entry.id))

    def entry(self, key: str) -> Entry:
        try:
            return self._entry(key, self._find(key))
        except FileNotFoundError:
            raise NotInQuarantine(key) from None

    def raw(self, key: str) -> bytes:
        """The message as stored (envelope headers first)."""
        try:
            return self._find(key).read_bytes()
        except FileNotFoundError:
            raise NotInQuarantine(key) from None

    def delete(self, key: str) -> None:
        try:
            self._find(key).unlink()
        except FileNotFoundError:
            raise NotInQuarantine(key) from None

    def lock_path(self) -> Path:
        """The lock file releases take, so that two never deliver the same message."""
        return self.path / ".spamfilter-release.lock"

    def _find(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise NotInQuarantine(key)
        for found, path in self._files():
            if found == key:
                return path
        raise NotInQuarantine(key)

    def _files(self) -> Iterator[tuple[str, Path]]:
        """(key, path) of every message in new/ and cur/ (``KEY`` or ``KEY:2,FLAGS``)."""
        for folder in _FOLDERS:
            with os.scandir(self.path / folder) as names:
                for name in names:
                    if not name.name.startswith("."):
                        yield name.name.split(":", 1)[0], Path(name.path)

    def _entry(self, key: str, path: Path) -> Entry:
        with path.open("rb") as stream:
            status = os.fstat(stream.fileno())
            head = stream.read(MAX_HEAD_BYTES)
        # the first field of each name
        headers = {name.lower(): value for name, value in reversed(header_lines(head))}
        try:
            envelope = envelope_of(head)
        except ValueError:  # put there by something else than the filter: listed all the same
            envelope = Envelope("", ())
        return Entry(
            id=key,
            received=datetime.fromtimestamp(status.st_mtime, UTC),
            sender=printable(envelope.sender),
            recipients=tuple(printable(recipient) for recipient in envelope.recipients),
            subject=headers.get("subject", ""),
            score=_score(headers.get("x-spam-score", "")),
            size=status.st_size,
        )


def envelope_of(stored: bytes) -> Envelope:
    """The envelope a stored message was quarantined with; ValueError if it has none."""
    fields, _ = split_fields(stored[:MAX_HEAD_BYTES])
    values: dict[bytes, str] = {}
    for field in fields:
        name = field_name(field)
        if name in (ENVELOPE_FROM.lower().encode(), ENVELOPE_TO.lower().encode()):
            value = field.partition(b":")[2].strip()
            values.setdefault(name, value.decode("utf-8", "surrogateescape"))
    sender = values.get(ENVELOPE_FROM.lower().encode())
    recipients = tuple(
        match.group().strip()
        for match in _RECIPIENT.finditer(values.get(ENVELOPE_TO.lower().encode(), ""))
        if match.group().strip()
    )
    if sender is None or not recipients:
        raise ValueError(f"no {ENVELOPE_FROM}/{ENVELOPE_TO} headers: not stored by the filter")
    return Envelope(sender or "<>", recipients)


def released_message(stored: bytes, key: str, when: datetime) -> bytes:
    """The message to deliver: without the envelope and our X-Spam-* headers (the verdict
    they carry was overruled), with one ``X-Spam-Released`` header that says so."""
    fields, _ = split_fields(stored[:MAX_HEAD_BYTES])
    status = next(
        (
            field.partition(b":")[2].strip()
            for field in fields
            if field_name(field) == b"x-spam-status"
        ),
        b"unknown",
    )
    stamp = when.astimezone(UTC).isoformat(timespec="seconds")
    header = f"{RELEASED}: {stamp} from quarantine id={key}; was: ".encode() + status
    return header + b"\r\n" + remove_fields(stored, HEADER_PREFIX)


def header_lines(stored: bytes) -> list[tuple[str, str]]:
    """(name, decoded value) of each header field, printable on a terminal."""
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(stored[:MAX_HEAD_BYTES])
    lines = []
    for name, value in headers.raw_items():
        try:
            value = str(policy.default.header_fetch_parse(name, value))
        except Exception:  # a malformed header can break the policy's parser: show it raw
            value = str(value)
        lines.append((name, printable(value)))
    return lines


def printable(value: str) -> str:
    """``value`` on one line, control characters (a terminal's escapes) and undecodable
    bytes replaced."""
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _CONTROL.sub(" ", " ".join(text.split()))


def _score(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
