"""SpamAssassin with local rules and a Bayes database learned from the training split.

``sa-learn`` fills a throw-away Bayes database; a private ``spamd`` (local tests only,
``-L``: no DNS or network checks) on a Unix socket scores with ``spamc -c``, two
messages at a time on two children. Both read a private copy of /etc/spamassassin that
points Bayes at the throw-away database and turns auto-learning off, so nothing on
the machine changes. SpamAssassin's score is in points (spam at 5 by default); it is
mapped to (0, 1) by ``0.5 + atan(points - 5) / pi``: monotone, 5 points -> 0.5, and
never exactly 0 or 1, so the ranking (ROC, recall at an FPR) is SpamAssassin's own.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from spamfilter.evaluation.baselines import View, as_text_message, require_program

REQUIRED_POINTS = 5.0  # SpamAssassin's default required_score
SITE_CONFIG = Path("/etc/spamassassin")
CHILDREN = 2  # one spamd child per core here
START_TIMEOUT = 120.0  # seconds for spamd to compile its rules and open its socket


def points_to_probability(points: float) -> float:
    return 0.5 + math.atan(points - REQUIRED_POINTS) / math.pi


class SpamAssassinBaseline:
    native_threshold = 0.5  # REQUIRED_POINTS on the mapped scale

    def __init__(self, view: View = "raw") -> None:
        self.programs = {
            name: require_program(name, package)
            for name, package in (("sa-learn", "spamassassin"), ("spamd", "spamd"))
        } | {"spamc": require_program("spamc", "spamc")}
        self.view = view
        self.name = f"SpamAssassin -L + Bayes ({'raw message' if view == 'raw' else 'model text'})"
        self._workdir = tempfile.TemporaryDirectory(prefix="spamassassin-")
        self.root = Path(self._workdir.name)
        self.root.chmod(0o755)  # spamd's children run as 'nobody' when we are root
        self.config = self._write_config()
        self._spamd: subprocess.Popen | None = None

    def fit(self, raws: Sequence[bytes], labels: Sequence[int]) -> None:
        for label, flag in ((1, "--spam"), (0, "--ham")):
            chosen = [raw for raw, y in zip(raws, labels, strict=True) if y == label]
            folder = self._write(chosen, f"train-{label}")
            self._run([self.programs["sa-learn"], *self._config_flags(), flag, str(folder)])
        for path in (self.root / "bayes").iterdir():
            path.chmod(0o666)

    def score(self, raws: Sequence[bytes]) -> np.ndarray:
        socket = self._start_spamd()
        messages = [self._view(raw) for raw in raws]
        with ThreadPoolExecutor(CHILDREN) as pool:
            points = list(pool.map(lambda message: self._check(socket, message), messages))
        return np.asarray([points_to_probability(p) for p in points], dtype=np.float64)

    def close(self) -> None:
        if self._spamd is not None:
            self._spamd.terminate()
            self._spamd.wait(timeout=30)
            self._spamd = None
        self._workdir.cleanup()

    def _write_config(self) -> Path:
        config = self.root / "siteconfig"
        config.mkdir()
        for path in SITE_CONFIG.glob("*.[cp][fr]*"):  # the .cf and .pre files, plugins included
            shutil.copy(path, config / path.name)
        bayes = self.root / "bayes"
        bayes.mkdir(mode=0o777)
        bayes.chmod(0o777)
        (config / "zz_baseline.cf").write_text(
            f"bayes_path {bayes}/bayes\nbayes_file_mode 0777\nuse_bayes 1\n"
            "bayes_auto_learn 0\nbayes_auto_expire 0\nlock_method flock\n"
        )
        return config

    def _config_flags(self) -> list[str]:
        return [f"--siteconfigpath={self.config}"]

    def _view(self, raw: bytes) -> bytes:
        return raw if self.view == "raw" else as_text_message(raw)

    def _write(self, raws: Sequence[bytes], folder_name: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"{folder_name}-", dir=self.root))
        folder.chmod(0o755)  # readable by a spamd child running as another user
        for index, raw in enumerate(raws):
            (folder / f"{index:07d}").write_bytes(self._view(raw))
        return folder

    def _start_spamd(self) -> Path:
        socket = self.root / "spamd.sock"
        if self._spamd is not None:
            return socket
        user = ["--username=nobody"] if os.geteuid() == 0 else []
        log = (self.root / "spamd.log").open("wb")
        self._spamd = subprocess.Popen(
            [self.programs["spamd"], "-L", "-x", *self._config_flags(), *user,
             f"--socketpath={socket}", f"--max-children={CHILDREN}",
             f"--min-children={CHILDREN}", "--syslog=stderr"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not socket.exists():
            if self._spamd.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "spamd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"spamd did not start: {tail}")
            time.sleep(0.2)
        return socket

    def _check(self, socket: Path, message: bytes) -> float:
        """SpamAssassin's points for one message (``spamc -c`` prints 'points/required')."""
        command = [self.programs["spamc"], "-U", str(socket), "-c", "-x", "-s", "10000000"]
        done = subprocess.run(command, input=message, capture_output=True, check=False)
        if done.returncode not in (0, 1):  # 0 ham, 1 spam; anything else: spamd failed
            raise RuntimeError(f"spamc failed ({done.returncode}): {done.stderr.decode()}")
        return float(done.stdout.split(b"/")[0])

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
