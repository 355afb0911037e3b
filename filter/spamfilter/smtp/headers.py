"""Edit a raw message's header block as bytes, so everything else stays byte for byte.

The email package re-serializes what it parses (line endings, folding, encodings), so the
filter never uses it on the bytes it relays. These helpers cut the raw message at its
first empty line and work on whole header fields: a field line plus its folded
continuation lines (lines that start with a space or a tab).
"""

from __future__ import annotations

import re

_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
_BLANK = (b"\r\n", b"\n")


def split_fields(raw: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, each with its continuation lines and line endings; the rest of raw).

    The rest starts with the empty line that ends the header block, if there is one.
    Text before the first field that is not a field (an mbox ``From `` line, a stray
    continuation) is kept as a field of its own so that joining gives back ``raw``.
    """
    fields: list[bytes] = []
    for match in _LINE.finditer(raw):
        line = match.group()
        if line in _BLANK:
            return fields, raw[match.start() :]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, b""


def field_name(field: bytes) -> bytes:
    """The lower-cased name of a header field, or b"" if the line is not a field."""
    name, colon, _ = field.partition(b":")
    if not colon or not name or re.search(rb"[\s\x00-\x1f]", name.rstrip()):
        return b""
    return name.rstrip().lower()


def remove_fields(raw: bytes, prefix: bytes) -> bytes:
    """``raw`` without the header fields whose name starts with ``prefix`` (lower case)."""
    fields, rest = split_fields(raw)
    kept = [field for field in fields if not field_name(field).startswith(prefix)]
    if len(kept) == len(fields):
        return raw
    return b"".join(kept) + rest


def prefix_subject(raw: bytes, tag: bytes) -> bytes:
    """``raw`` with ``tag`` put before the first Subject's text (once: not if already there)."""
    fields, rest = split_fields(raw)
    for index, field in enumerate(fields):
        if field_name(field) == b"subject":
            name, _, value = field.partition(b":")
            text = value.lstrip(b" \t")
            if text.startswith(tag):
                return raw
            space = value[: len(value) - len(text)] or b" "
            fields[index] = name + b":" + space + tag + text
            return b"".join(fields) + rest
    return raw
