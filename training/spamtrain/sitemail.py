"""A site's own mail for ``spamfilter learn``: folders of spam and of ham, read and checked.

Each folder is one of:

- a Maildir (``cur/`` and ``new/``), as IMAP servers store Junk and Inbox, and as
  ``spamfilter serve`` writes its quarantine (the ``X-Spam-*`` headers it prepends are
  never model input: ``email_to_text`` reads only Subject, From and the body);
- an mbox file;
- a directory of message files (any names, hidden files skipped, subfolders read).

A file that does not start with a mail header block is counted and skipped; a folder in
which no file is mail, an empty or unreadable folder, the same message given as spam and
as ham, and fewer than ``MIN_PER_LABEL`` messages of a label are errors (``DataError``)
that say which folder or files. Messages repeated under one label are kept once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import LABELS
from spamtrain import corpora, data
from spamtrain.corpora import DataError, Message

# Fewer than this many of a label and there is nothing to learn from nor to calibrate on:
# out-of-fold calibration needs ham (and spam) in every fold.
MIN_PER_LABEL = 10
MAX_CONFLICTS_SHOWN = 5
# A header field ("Name:"), per RFC 5322: printable ASCII but the colon, then a colon.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
# Fields every mail client or server writes; a "Key: value" text file has none of them.
_MAIL_FIELDS = {b"from", b"to", b"subject", b"date", b"message-id", b"received", b"return-path"}
_HEAD_BYTES = 64 * 1024  # the header block is looked for in the first 64 KiB


@dataclass
class Folder:
    """One --spam or --ham argument and what was found in it."""

    path: str
    kind: str  # "maildir", "mbox" or "directory"
    label: str  # "spam" or "ham"
    messages: int  # read as mail
    not_mail: int  # files (or mbox entries) skipped: no mail header block


@dataclass
class SiteMail:
    dataset: datasets.Dataset  # id, raw, label, source, group (data.FEATURES)
    folders: list[Folder]
    duplicates: int  # extra copies of a message under the same label, dropped

    def count(self, label: str) -> int:
        return self.dataset["label"].count(LABELS.index(label))


def read_site_mail(spam: Sequence[Path], ham: Sequence[Path]) -> SiteMail:
    """The messages of every folder, deduplicated, checked as the module docstring says."""
    messages: list[Message] = []
    folders: list[Folder] = []
    for label, paths in (("spam", spam), ("ham", ham)):
        for path in paths:
            folder, found = read_folder(Path(path), label)
            folders.append(folder)
            messages.extend(found)
    check_conflicts(messages)
    dataset = data.to_dataset(messages, "site mail")
    site = SiteMail(dataset, folders, duplicates=len(messages) - len(dataset))
    counts = {label: site.count(label) for label in LABELS}
    if min(counts.values()) < MIN_PER_LABEL:
        raise DataError(
            f"too few messages to learn from: {counts['spam']} spam and {counts['ham']} ham "
            f"(after skipping non-mail files and repeated copies); at least {MIN_PER_LABEL} "
            "of each are needed"
        )
    return site


def read_folder(path: Path, label: str) -> tuple[Folder, list[Message]]:
    """The mail in one folder; DataError if there is none or the folder cannot be read."""
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise DataError(f"{path}: cannot read the folder (permission denied)")
        kind = "maildir" if any((path / sub).is_dir() for sub in ("cur", "new")) else "directory"
        paths = corpora.message_files(path)
        candidates, total = _files(paths, label), len(paths)
    elif path.is_file():
        kind, candidates = "mbox", _mbox_messages(path, label)
        total = len(candidates)
    elif path.exists():
        raise DataError(f"{path}: neither a folder nor an mbox file")
    else:
        raise DataError(f"{path}: no such file or directory")
    found, skipped = [], []
    progress = tqdm(
        candidates, total=total, desc=f"reading {label} {path}", unit="msg", disable=None
    )
    for candidate in progress:
        (found if looks_like_mail(candidate.raw) else skipped).append(candidate)
    what = {"maildir": "Maildir (cur/ and new/)", "directory": "folder", "mbox": "mbox"}[kind]
    if not found and not skipped:
        raise DataError(f"{path}: empty {what}: no messages")
    if not found:
        raise DataError(
            f"{path}: none of its {len(skipped)} files is a mail message (e.g. "
            f"{skipped[0].source}): expected RFC 822 messages, which start with header "
            "fields such as From: and Subject:"
        )
    return Folder(str(path), kind, label, len(found), len(skipped)), found


def _files(paths: Sequence[Path], label: str) -> Iterator[Message]:
    for path in paths:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # moved from new/ to cur/ by the IMAP server meanwhile
            continue
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or error})") from error
        yield corpora.message(raw, LABELS.index(label), str(path), label)


def _mbox_messages(path: Path, label: str) -> list[Message]:
    """The mbox's messages, each named ``PATH#N`` (N from 1) so an error can point at it."""
    return [
        dataclasses.replace(message, source=f"{path}#{number}", group=label)
        for number, message in enumerate(corpora.read_mbox(path, LABELS.index(label)), 1)
    ]


def looks_like_mail(raw: bytes) -> bool:
    """Whether ``raw`` opens with a header block (after an mbox ``From `` line, if any) that
    has at least one field all mail has: From, To, Subject, Date, Message-ID, Received or
    Return-Path. Binary files and plain text fail; a mangled header line later does not."""
    lines = raw[:_HEAD_BYTES].splitlines()
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    names = set()
    for line in lines:
        if not line.strip():
            break  # the end of the header block
        if line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the previous field
        field = _FIELD.match(line)
        if field is None:
            break
        names.add(field.group(1).lower())
    return bool(names & _MAIL_FIELDS)


def check_conflicts(messages: Sequence[Message]) -> None:
    """DataError if one message is given as spam and as ham, naming the files.

    "One message" means the same model text (subject, sender and body, as
    ``email_to_text`` reads them), so a quarantined copy, whose stored bytes carry the
    filter's X-Spam-* headers, still matches the copy a user kept in the Inbox.
    """
    first: dict[tuple[str, int], str] = {}  # (text digest, label) -> first source
    conflicts: list[tuple[str, str]] = []
    for message in messages:
        digest = hashlib.sha256(email_to_text(message.raw).encode("utf-8", "replace")).hexdigest()
        first.setdefault((digest, message.label), message.source)
        other = first.get((digest, 1 - message.label))
        if other is not None:
            pair = (message.source, other) if message.label == 1 else (other, message.source)
            conflicts.append(pair)
    if conflicts:
        shown = "\n".join(
            f"  spam: {spam}\n  ham:  {ham}" for spam, ham in conflicts[:MAX_CONFLICTS_SHOWN]
        )
        more = len(conflicts) - MAX_CONFLICTS_SHOWN
        raise DataError(
            f"{len(conflicts)} message(s) given both as spam and as ham; remove each from "
            f"one side:\n{shown}" + (f"\n  ... and {more} more" if more > 0 else "")
        )
