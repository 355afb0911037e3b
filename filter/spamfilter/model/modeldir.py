"""The model directory: the contract between training and the filter (DESIGN §5).

A model directory is ``save_pretrained`` output (config, safetensors weights, tokenizer
files) plus ``spamfilter.json``, described by ``ModelCard``. Label 0 is ham and label 1
is spam, and the config's ``id2label`` says so, so a plain
``transformers.pipeline("text-classification", model=dir)`` prints "spam"/"ham".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spamfilter.model.mailtext import TEXT_VERSION
from spamfilter.model.precision import SHARES_FP32_THRESHOLDS

log = logging.getLogger(__name__)

CARD_FILE = "spamfilter.json"
WORDS_FILE = "site_words.json"  # spamfilter.model.sitewords: what learn adds, if anything
LABELS = ("ham", "spam")
SPAM_LABEL = 1


def probability_problem(name: str, value: float | None) -> str | None:
    """Why ``value`` cannot be a threshold or a target rate, or None if it can (or is unset).

    Scores and rates are probabilities; a threshold of 0 or 1 would act on all mail or none.
    """
    if value is None or 0.0 < value < 1.0:
        return None
    return f"{name} must lie strictly between 0 and 1, not {value}"


class ModelDirError(RuntimeError):
    """A model directory that cannot be served: missing, corrupt, or built for other text."""


@dataclass
class Thresholds:
    """Scores are P(spam) in [0, 1]; a message at or above a threshold gets that action."""

    tag: float = 0.5
    reject: float | None = None
    quarantine: float | None = None

    def problems(self) -> list[str]:
        found = [
            probability_problem(f"threshold '{name}'", getattr(self, name))
            for name in ("tag", "reject", "quarantine")
        ]
        return [problem for problem in found if problem]


@dataclass
class ModelCard:
    """What ``spamfilter.json`` holds besides the weights."""

    max_length: int
    text_version: int = TEXT_VERSION
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    tail_tokens: int = 0
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Thresholds re-tuned for a scoring precision whose scores differ from fp32's
    # (``spamfilter threshold tune --precision int8``); the others use ``thresholds``.
    precision_thresholds: dict[str, Thresholds] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    base_model: str = ""

    def thresholds_for(self, precision: str) -> Thresholds:
        """The thresholds to apply to scores computed in ``precision``."""
        if precision in self.precision_thresholds:
            return self.precision_thresholds[precision]
        if precision not in SHARES_FP32_THRESHOLDS:
            log.warning(
                "the thresholds were calibrated on fp32 scores, not %s ones: run "
                "'spamfilter threshold tune --precision %s' for thresholds that hold",
                precision,
                precision,
            )
        return self.thresholds

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> ModelCard:
        try:
            data = json.loads(text)
            data["thresholds"] = Thresholds(**data.get("thresholds", {}))
            data["precision_thresholds"] = {
                precision: Thresholds(**values)
                for precision, values in data.get("precision_thresholds", {}).items()
            }
            card = cls(**data)
        except (json.JSONDecodeError, TypeError, AttributeError) as error:
            raise ModelDirError(f"{origin}: not a valid {CARD_FILE}: {error}") from None
        problems = card.thresholds.problems() + [
            f"{precision}: {problem}"
            for precision, thresholds in card.precision_thresholds.items()
            for problem in thresholds.problems()
        ]
        if problems:
            raise ModelDirError(f"{origin}: " + "; ".join(problems))
        return card


def read_card(model_dir: str | Path) -> ModelCard:
    """The card of ``model_dir``; raises ModelDirError if it is absent, corrupt or incompatible."""
    path = Path(model_dir) / CARD_FILE
    if not Path(model_dir).is_dir():
        raise ModelDirError(f"{model_dir}: model directory not found")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ModelDirError(f"{path}: cannot read: {error.strerror or error}") from None
    card = ModelCard.from_json(text, str(path))
    if card.text_version != TEXT_VERSION:
        raise ModelDirError(
            f"{path}: model was trained on mail text version {card.text_version}, this filter "
            f"reads mail as version {TEXT_VERSION}; retrain the model with this version"
        )
    return card


def write_card(model_dir: str | Path, card: ModelCard) -> None:
    """Write ``spamfilter.json`` atomically, so a daemon reloading on SIGHUP never reads half."""
    write_atomic(Path(model_dir) / CARD_FILE, card.to_json())


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_model(model_dir: str | Path, **options):
    """The directory's transformers classifier; ModelDirError if its files cannot be loaded."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(model_dir, **options)
    except (OSError, ValueError, SafetensorError) as error:  # missing, corrupt, truncated
        raise ModelDirError(f"{model_dir}: cannot load model: {error}") from None


def model_id(model_dir: str | Path) -> str:
    """``<name>@<first 8 hex of the sha256 of the weights and site words>``: which model
    scored a message."""
    directory = Path(model_dir)
    digest = hashlib.sha256()
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    words = [directory / WORDS_FILE] if (directory / WORDS_FILE).is_file() else []
    for path in [*weights, *words]:
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return f"{directory.resolve().name}@{digest.hexdigest()[:8]}"
