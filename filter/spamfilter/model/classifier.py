"""Score mail with a model directory: raw bytes -> model text -> tokens -> P(spam).

Text and tokens come from ``mailtext`` and ``encode``, the model-input contract training
shares. The forward pass runs in PyTorch (fp32, bf16 autocast, int8 dynamic quantization) or in ONNX
Runtime (``onnx-fp32``, ``onnx-int8``: see ``onnxmodel``); the precision picks which. A
directory that ``spamfilter learn`` wrote may add the site's words (``sitewords``): the
served score is then the encoder's blended with theirs, for every precision.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import AutoTokenizer

from spamfilter.model.encode import encode
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import (
    SPAM_LABEL,
    ModelCard,
    ModelDirError,
    Thresholds,
    load_model,
    model_id,
    read_card,
)
from spamfilter.model.precision import (
    QUANTIZED_PER_RUN,
    BackendError,
    Precision,
    require_scoring_cpu,
    resolve,
    resolve_device,
    runs_at_once,
    usable_cores,
)
from spamfilter.model.sitewords import SiteWords

log = logging.getLogger(__name__)

# Padding a text may add to a model run it joins (the run's texts times how much longer
# it is than the longest so far), in tokens: past it the text starts a run of its own. A
# run's fixed cost is a few tokens' worth (ONNX Runtime on 2 AVX2 cores: ~1.7 ms a run,
# ~0.38 ms a token); without the bound an explanation's phrases, padded to their longest,
# cost 1.8x their tokens (docs/benchmarks.md).
PAD_TOKENS_PER_RUN = 8


class Scorer(Protocol):
    """What the SMTP handler needs from a model: P(spam) for each raw message."""

    def score_raw(self, messages: Sequence[bytes]) -> list[float]: ...


class Runner(Protocol):
    """A forward pass: P(spam) for a padded batch of token ids."""

    def spam_probabilities(
        self, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> np.ndarray: ...


class Classifier:
    """A loaded model directory that scores batches of messages on the CPU (or a GPU).

    Thread-safe: the filter's micro-batcher calls it from a worker thread while the
    CLI calls it directly. Batches are sorted by length so padding stays small.
    """

    def __init__(
        self,
        model_dir: str | Path,
        precision: Precision,
        threads: int | None = None,
        device: str = "cpu",
        model_runs: int = 1,
    ) -> None:
        """``threads``: of each model run (None: the cores, shared by the runs at once);
        ``model_runs``: calls that may run the model at once (0: ``runs_at_once``'s
        choice); the daemon's settings of the same names."""
        self.model_dir = Path(model_dir)
        self.card: ModelCard = read_card(self.model_dir)
        if precision.startswith("onnx-"):  # ONNX Runtime's CPU build: the CPU or nothing
            if device not in ("auto", "cpu"):
                raise BackendError(f"{precision} scores on the CPU only, not on {device}")
            device = "cpu"
        self.device = resolve_device(device)
        self.precision = resolve(precision, self.device)
        require_scoring_cpu(self.precision)
        self.runs_at_once = runs_at_once(model_runs, self.precision, self.device)
        if threads is None and self.runs_at_once > 1:
            threads = max(1, usable_cores() // self.runs_at_once)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        except (OSError, ValueError) as error:
            raise ModelDirError(f"{self.model_dir}: cannot load tokenizer: {error}") from None
        self.model_id = model_id(self.model_dir)
        self.site_words = SiteWords.load(self.model_dir)
        self.runner: Runner
        if self.precision.startswith("onnx-"):
            from spamfilter.model.onnxmodel import OnnxRunner

            self.runner = OnnxRunner.for_model(
                self.model_dir, self.precision, threads or 0, self.model_id
            )
        else:
            self.runner = TorchRunner(self.model_dir, self.precision, threads, self.device)
        self._runs = threading.BoundedSemaphore(self.runs_at_once)
        # Held by every call of the tokenizer (``tokenize`` and ``score_texts``): a fast
        # tokenizer's call sets its backend's truncation for all threads, so the explaining
        # thread's untruncated call could let the scoring thread's texts through at full
        # length (other scores; past 512 tokens, a failed run and an unscored message).
        self._tokenizer_lock = threading.Lock()

    @property
    def thresholds(self) -> Thresholds:
        """The card's thresholds for this classifier's precision."""
        return self.card.thresholds_for(self.precision)

    def tokenize(self, text: str, **options):
        """The tokenizer's encoding of ``text`` (``options`` as the tokenizer takes them),
        safe beside scoring in another thread."""
        with self._tokenizer_lock:
            return self.tokenizer(text, **options)

    def score_texts(
        self, texts: Sequence[str], batch_size: int = 32, max_tokens: int | None = None
    ) -> list[float]:
        """P(spam) for each model text, in input order.

        ``max_tokens`` also bounds each model run by its padded size (texts × the longest
        text's tokens): many short texts with a few long ones (explain.py's phrases) then
        do not all pay for the longest. With a precision that quantizes activations per
        run (``QUANTIZED_PER_RUN``) each text runs alone, so that its score never depends
        on the texts it came with.
        """
        if not texts:
            return []
        if self.precision in QUANTIZED_PER_RUN:
            batch_size = 1
        with self._tokenizer_lock:
            encoded = encode(self.tokenizer, texts, self.card.max_length, self.card.tail_tokens)
        ids = encoded["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        # One call's runs hold their place together: where one run goes at a time, another
        # thread's texts (the daemon's scoring beside its explaining) wait for the call,
        # not for each of its runs; with more, that many calls run side by side.
        with self._runs:
            for chunk in _runs(order, [len(row) for row in ids], batch_size, max_tokens):
                with self._tokenizer_lock:
                    batch = self.tokenizer.pad(
                        {"input_ids": [ids[i] for i in chunk]}, return_tensors="np"
                    )
                probabilities = self.runner.spam_probabilities(
                    batch["input_ids"], batch["attention_mask"]
                )
                for index, score in zip(chunk, probabilities.tolist(), strict=True):
                    scores[index] = score
        if self.site_words is not None:
            return self.site_words.scores(scores, texts).tolist()
        return scores

    def score_raw(self, messages: Sequence[bytes], batch_size: int = 32) -> list[float]:
        """P(spam) for each raw message, in input order."""
        return self.score_texts([email_to_text(raw) for raw in messages], batch_size)


def _runs(
    order: list[int], lengths: list[int], batch_size: int, max_tokens: int | None
) -> list[list[int]]:
    """``order`` (indices by ascending length) cut into model runs of at most ``batch_size``
    texts, at most ``PAD_TOKENS_PER_RUN`` padding added by each text that joins a run,
    and, if given, ``max_tokens`` padded tokens (a longer text runs alone)."""
    runs: list[list[int]] = []
    for index in order:
        if runs and len(runs[-1]) < batch_size:
            run, length = runs[-1], lengths[index]  # this one is the longest so far
            padding = len(run) * (length - lengths[run[-1]])
            padded = (len(run) + 1) * length
            if padding <= PAD_TOKENS_PER_RUN and (max_tokens is None or padded <= max_tokens):
                run.append(index)
                continue
        runs.append([index])
    return runs


class TorchRunner:
    """The PyTorch forward pass: fp32, bf16 autocast or int8 dynamic quantization."""

    def __init__(
        self, model_dir: Path, precision: Precision, threads: int | None, device: str
    ) -> None:
        self.precision = precision
        self.device = torch.device(device)
        if threads:
            torch.set_num_threads(threads)
        model = load_model(model_dir).eval()
        if precision == "int8":
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
        self.model = model.to(self.device)

    def spam_probabilities(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.device),
            ).logits.float()
        return torch.softmax(logits, dim=-1)[:, SPAM_LABEL].cpu().numpy()
