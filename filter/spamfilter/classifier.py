"""Score mail with a model directory: raw bytes -> model text -> tokens -> P(spam).

``encode`` is the one tokenization both training and serving use, so truncation
(the head of the text, optionally plus its tail) is the same on both sides.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BatchEncoding

from spamfilter.mailtext import email_to_text
from spamfilter.modeldir import SPAM_LABEL, ModelCard, ModelDirError, model_id, read_card

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "int8"]


class Scorer(Protocol):
    """What the SMTP handler needs from a model: P(spam) for each raw message."""

    def score_raw(self, messages: Sequence[bytes]) -> list[float]: ...


def encode(
    tokenizer, texts: Sequence[str], max_length: int, tail_tokens: int = 0
) -> dict[str, list[list[int]]]:
    """Token ids for ``texts``, unpadded, at most ``max_length`` each.

    With ``tail_tokens`` > 0 a long text keeps its first ``max_length - 2 - tail_tokens``
    tokens and its last ``tail_tokens`` (spam often hides its pitch below a decoy head).
    """
    if tail_tokens <= 0:
        return tokenizer(list(texts), truncation=True, max_length=max_length)
    if tail_tokens >= max_length - 2:
        raise ValueError(f"tail_tokens ({tail_tokens}) must be below max_length - 2")
    body = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    head = max_length - 2 - tail_tokens
    ids = []
    for tokens in body:
        if len(tokens) > max_length - 2:
            tokens = tokens[:head] + tokens[-tail_tokens:]
        ids.append(tokenizer.build_inputs_with_special_tokens(tokens))
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


class Classifier:
    """A loaded model directory that scores batches of messages on the CPU (or a GPU).

    Thread-safe: the filter's micro-batcher calls it from a worker thread while the
    CLI calls it directly. Batches are sorted by length so padding stays small.
    """

    def __init__(
        self,
        model_dir: str | Path,
        precision: Precision = "fp32",
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.card: ModelCard = read_card(self.model_dir)
        self.precision = precision
        self.device = torch.device(device)
        if threads:
            torch.set_num_threads(threads)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            model = AutoModelForSequenceClassification.from_pretrained(self.model_dir)
        except (OSError, ValueError) as error:
            raise ModelDirError(f"{self.model_dir}: cannot load model: {error}") from None
        model.eval()
        if precision == "int8":
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
        self.model = model.to(self.device)
        self.model_id = model_id(self.model_dir)
        self._lock = threading.Lock()

    def score_texts(self, texts: Sequence[str], batch_size: int = 32) -> list[float]:
        """P(spam) for each model text, in input order."""
        if not texts:
            return []
        encoded = encode(self.tokenizer, texts, self.card.max_length, self.card.tail_tokens)
        ids = encoded["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
            for index, score in zip(chunk, self._forward(batch), strict=True):
                scores[index] = score
        return scores

    def score_raw(self, messages: Sequence[bytes]) -> list[float]:
        return self.score_texts([email_to_text(raw) for raw in messages])

    def _forward(self, batch: BatchEncoding) -> list[float]:
        batch = batch.to(self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with self._lock, torch.inference_mode(), autocast:
            logits = self.model(**batch).logits.float()
        return torch.softmax(logits, dim=-1)[:, SPAM_LABEL].tolist()
