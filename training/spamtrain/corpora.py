"""Readers for the user's own mail: a spam/ham directory, mbox files, tables, Hub datasets.

Each reader yields ``Message`` records in a fixed order (sorted file names, file row
order), so deduplication ("keep the first") and therefore the split never depend on the
file system. The public entry point is ``spamtrain.data.load_source``; the spec syntax
is documented there.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import mailbox
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from spamfilter.model.mailtext import plain_text_message
from spamfilter.model.modeldir import LABELS

LABEL_COLUMNS = ("label", "labels", "class", "spam", "is_spam")
RAW_COLUMNS = ("raw", "message", "email")  # a whole RFC 822 message, headers included
TEXT_COLUMNS = ("text", "body")  # the body alone
# How a raw message stored as a string was decoded (with surrogateescape), per row
RAW_ENCODING_COLUMN = "raw_encoding"

_SPAM_VALUES = {"1", "spam", "true", "yes", "junk"}
_HAM_VALUES = {"0", "ham", "false", "no", "not spam", "not_spam", "not-spam", "non-spam"}
_HAM_VALUES |= {"legit", "legitimate"}


class DataError(ValueError):
    """A corpus that cannot be read: the message names the file (or spec) and the problem."""


@dataclass(frozen=True)
class Message:
    """One corpus message before deduplication; ``md5`` is the hex MD5 of ``raw``."""

    raw: bytes
    label: int
    source: str
    group: str
    md5: str


def message(raw: bytes, label: int, source: str, group: str) -> Message:
    return Message(raw, label, source, group, hashlib.md5(raw).hexdigest())


# -- a directory with spam/ and ham/ --------------------------------------------------


def read_directory(root: Path) -> Iterator[Message]:
    """``root/spam`` and ``root/ham``: raw message files (any names) or Maildirs."""
    folders = {name: root / name for name in ("spam", "ham")}
    missing = [f"{name}/" for name, folder in folders.items() if not folder.is_dir()]
    if missing:
        raise DataError(f"{root}: directory has no {' or '.join(missing)} subfolder")
    for name, folder in folders.items():
        label = LABELS.index(name)
        for path in message_files(folder):
            yield message(read_bytes(path), label, str(path), name)


def message_files(folder: Path) -> list[Path]:
    """Sorted non-hidden files; in a Maildir only ``cur/`` and ``new/`` (not ``tmp/``)."""
    maildir = [folder / sub for sub in ("cur", "new") if (folder / sub).is_dir()]
    files = []
    for top in maildir or [folder]:
        for path in top.rglob("*"):
            hidden = any(part.startswith(".") for part in path.relative_to(top).parts)
            if path.is_file() and not hidden:
                files.append(path)
    return sorted(files)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error


# -- mbox:spam=PATH[,PATH],ham=PATH[,PATH] ---------------------------------------------


def parse_mbox_spec(spec: str) -> dict[str, list[Path]]:
    """``spam=a,b,ham=c`` -> ``{"spam": [a, b], "ham": [c]}`` (a bare item continues a label)."""
    paths: dict[str, list[Path]] = {}
    current = None
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if sep:
            if key.strip() not in LABELS:
                raise DataError(f"mbox:{spec}: unknown label {key!r} (use spam= and ham=)")
            current, item = key.strip(), value
        if current is None:
            raise DataError(f"mbox:{spec}: {item!r} has no label (write spam=PATH or ham=PATH)")
        paths.setdefault(current, []).append(Path(item.strip()))
    if not paths:
        raise DataError(f"mbox:{spec}: no mbox files given (mbox:spam=PATH,ham=PATH)")
    return paths


def read_mboxes(paths: Mapping[str, list[Path]]) -> Iterator[Message]:
    for name in LABELS:
        for path in paths.get(name, []):
            yield from read_mbox(path, LABELS.index(name))


def read_mbox(path: Path, label: int) -> Iterator[Message]:
    if not path.is_file():
        raise DataError(f"{path}: no such mbox file")
    try:
        box = mailbox.mbox(path, create=False)
        keys = box.keys()
        if not keys:
            raise DataError(f"{path}: no messages (is it an mbox file?)")
        for key in keys:
            yield message(box.get_bytes(key), label, str(path), path.name)
    except OSError as error:
        raise DataError(f"{path}: cannot read mbox ({error})") from error


# -- tables: .jsonl, .json, .csv, .parquet, and Hub datasets ---------------------------


def table_suffix(path: Path) -> str | None:
    """The table format of ``path`` (``.jsonl`` for ``mail.jsonl`` and ``mail.jsonl.gz``)."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes[-1:] == [".gz"] and len(suffixes) > 1 and suffixes[-2] in _GZIP_TABLES:
        return suffixes[-2]
    return suffixes[-1] if suffixes[-1:] and suffixes[-1] in _TABLE_READERS else None


def read_table(path: Path) -> Iterator[Message]:
    """Rows of a tabular file, mapped by ``rows_to_messages``."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    reader = _TABLE_READERS[table_suffix(path)]
    try:
        yield from rows_to_messages(reader(path), origin=str(path))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read ({error})") from error


def _open_text(path: Path, **options: Any) -> IO[str]:
    """``path`` as text, gunzipped on the fly when it ends in ``.gz``."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", **options)
    return path.open(**options)


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    with _open_text(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if line.strip():
                yield _json_object(line, path, f"line {number}")


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    """A JSON array of row objects (or JSON Lines saved under a ``.json`` name)."""
    with _open_text(path, encoding="utf-8") as stream:
        text = stream.read()
    if not text.lstrip().startswith("["):
        yield from _jsonl_rows(path)
        return
    rows = _json_object(text, path, "file")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {number} is not a JSON object")
        yield row


def _json_object(text: str, path: Path, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: {where}: invalid JSON ({error.msg})") from error


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    # A whole message is one field, often far beyond csv's default 128 KiB limit.
    csv.field_size_limit(sys.maxsize)
    with _open_text(path, encoding="utf-8-sig", newline="") as stream:  # -sig: Excel's BOM
        yield from csv.DictReader(stream)


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.lib
    import pyarrow.parquet

    try:
        parquet = pyarrow.parquet.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except pyarrow.lib.ArrowException as error:
        raise DataError(f"{path}: cannot read as Parquet ({error})") from error


_TABLE_READERS = {
    ".jsonl": _jsonl_rows,
    ".json": _json_rows,
    ".csv": _csv_rows,
    ".parquet": _parquet_rows,
}
_GZIP_TABLES = (".jsonl", ".json", ".csv")  # Parquet compresses itself
TABLE_SUFFIXES = tuple(_TABLE_READERS)


def rows_to_messages(
    rows: Iterable[Mapping[str, Any]], origin: str, label_names: list[str] | None = None
) -> Iterator[Message]:
    """Rows with a label column and a raw (or text) column -> messages.

    ``label_names`` decodes integer labels first (a Hub ``ClassLabel``, whose order is
    the dataset's own, not necessarily ham=0).
    """
    columns: tuple[str, str, bool] | None = None
    for number, row in enumerate(rows, 1):
        if columns is None:
            columns = _pick_columns(list(row), origin)
        label_column, body_column, is_raw = columns
        value = row.get(label_column)
        if label_names is not None and isinstance(value, int):
            value = label_names[value]
        label = label_value(value, origin, number)
        name = LABELS[label]
        body = _row_bytes(row.get(body_column), is_raw, row.get(RAW_ENCODING_COLUMN) or "utf-8")
        yield message(body, label, origin, name)


def _pick_columns(names: list[str], origin: str) -> tuple[str, str, bool]:
    """(label column, raw-or-text column, whether it holds whole raw messages)."""
    lowered = {name.lower(): name for name in names}
    label = next((lowered[c] for c in LABEL_COLUMNS if c in lowered), None)
    if label is None:
        raise DataError(
            f"{origin}: no label column (looked for {', '.join(LABEL_COLUMNS)}; found "
            f"{', '.join(names) or 'none'})"
        )
    for candidates, is_raw in ((RAW_COLUMNS, True), (TEXT_COLUMNS, False)):
        body = next((lowered[c] for c in candidates if c in lowered), None)
        if body is not None:
            return label, body, is_raw
    raise DataError(
        f"{origin}: no message column (looked for {', '.join(RAW_COLUMNS + TEXT_COLUMNS)}; "
        f"found {', '.join(names)})"
    )


def label_value(value: Any, origin: str, row: int) -> int:
    """1 (spam) or 0 (ham) from 1/0, true/false, "spam"/"ham", "1"/"0", "not spam", ..."""
    if isinstance(value, bool | int) or (isinstance(value, float) and value.is_integer()):
        if value in (0, 1):
            return int(value)
    elif isinstance(value, str):
        word = value.strip().lower()
        if word in _SPAM_VALUES:
            return 1
        if word in _HAM_VALUES:
            return 0
    raise DataError(f"{origin}: row {row}: unknown label value {value!r} (use spam/ham or 1/0)")


def _row_bytes(value: Any, is_raw: bool, encoding: str) -> bytes:
    """Raw messages as they are; a bare text as the body of a minimal UTF-8 message.

    A raw message stored as a string is encoded back with the row's ``raw_encoding``
    (``utf-8`` if absent) and ``surrogateescape``, which returns the original bytes of a
    message that was decoded with it (latin-1 or broken UTF-8 mail, say).
    """
    if value is None:
        value = ""
    if isinstance(value, bytes):
        data = value
    elif is_raw:
        try:
            data = str(value).encode(encoding, "surrogateescape")
        except (LookupError, UnicodeEncodeError):  # an unknown codec, or stray surrogates
            data = str(value).encode("utf-8", "replace")
    else:
        data = str(value).encode("utf-8", "replace")
    return data if is_raw else plain_text_message(data)


def read_hub(name: str, split: str, cache_dir: Path | None) -> Iterator[Message]:
    """A Hugging Face Hub dataset (needs a network): same columns as the tabular files."""
    import datasets

    origin = f"hf:{name}:{split}"
    try:
        dataset = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as error:  # the Hub's failures are many and untyped; name them all here
        raise DataError(f"{origin}: cannot load ({type(error).__name__}: {error})") from error
    label_column = _pick_columns(dataset.column_names, origin)[0]
    names = getattr(dataset.features[label_column], "names", None)  # a ClassLabel's
    yield from rows_to_messages(dataset, origin=origin, label_names=names)
