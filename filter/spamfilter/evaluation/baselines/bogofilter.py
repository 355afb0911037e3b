"""bogofilter (Bayesian, Robinson-Fisher) trained in a throw-away word-list directory.

Messages go to bogofilter as files in bulk mode (``-B``/``-b``): one process registers
all spam, one all ham, one scores everything, instead of one process per message.
``-C`` ignores /etc/bogofilter.cf, so the figures are bogofilter's built-in defaults.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spamfilter.evaluation.baselines import View, as_text_message, require_program

SPAM_CUTOFF = 0.99  # bogofilter's default spam_cutoff


class BogofilterBaseline:
    native_threshold = SPAM_CUTOFF

    def __init__(self, view: View = "raw") -> None:
        self.program = require_program("bogofilter", "bogofilter")
        self.view = view
        self.name = f"bogofilter ({'raw message' if view == 'raw' else 'model text'})"
        self._workdir = tempfile.TemporaryDirectory(prefix="bogofilter-")
        self.root = Path(self._workdir.name)

    def fit(self, raws: Sequence[bytes], labels: Sequence[int]) -> None:
        for label, flag in ((1, "-s"), (0, "-n")):
            chosen = [raw for raw, y in zip(raws, labels, strict=True) if y == label]
            folder = self._write(chosen, f"train-{label}")
            self._run([flag, "-B", str(folder)])

    def score(self, raws: Sequence[bytes]) -> np.ndarray:
        folder = self._write(raws, "score")
        names = [str(folder / f"{index:07d}") for index in range(len(raws))]
        # Exit status 0/1/2 says spam/ham/unsure for the last message: not an error.
        output = self._run(["-T", "-b"], stdin="\n".join(names) + "\n", ok=(0, 1, 2))
        scores = {}
        for line in output.splitlines():
            name, _verdict, spamicity = line.rsplit(" ", 2)
            scores[name] = float(spamicity)
        return np.asarray([scores[name] for name in names], dtype=np.float64)

    def close(self) -> None:
        self._workdir.cleanup()

    def _write(self, raws: Sequence[bytes], folder_name: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"{folder_name}-", dir=self.root))
        for index, raw in enumerate(raws):
            message = raw if self.view == "raw" else as_text_message(raw)
            (folder / f"{index:07d}").write_bytes(message)
        return folder

    def _run(self, arguments: list[str], stdin: str = "", ok: tuple[int, ...] = (0,)) -> str:
        command = [self.program, "-C", "-d", str(self.root / "db"), *arguments]
        (self.root / "db").mkdir(exist_ok=True)
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
        if done.returncode not in ok:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
        return done.stdout
