"""A smaller student: fewer encoder layers, and a teacher's scores to learn from.

    accelerate launch --config_file configs/accelerate/cpu.yaml training/train.py \\
        --config configs/train/student.yaml

``--student_layers K`` keeps K of the starting encoder's N layers before training
(``kept_layers``: spread evenly, the top one always kept, since the classifier head was
trained on its output), and the config saved with the weights says K, so the model
directory reloads, exports and serves as a K-layer model. ``--teacher DIR`` adds
knowledge distillation (Hinton et al., 2015): the student also matches the teacher's
softened P(spam) (``distillation_loss``).

The teacher is a model directory this project wrote, loaded as the filter loads one. It
stays out of ``accelerator.prepare``: no optimizer state, no checkpoint, no gradient
sync; under DDP every process runs its own copy on its own batch. It must read the
tokens the student reads (same vocabulary, casing and truncation), or the two models
would be scored on different inputs: ``load_teacher`` refuses one that does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from spamfilter.model.modeldir import ModelDirError, load_model, model_id, read_card
from spamtrain.config import TrainConfig

# Mixed case, an accent, digits, punctuation and a web address: tokenizers that share a
# vocabulary but normalize differently (cased or not, accents stripped or not) differ here.
_PROBE = "Subject: WINNER! Café prize 1,000,000 € at http://Example.COM/claim?id=42 -- reply"


class DistillError(ValueError):
    """A student or teacher setting that cannot be used; the message names the key."""


def kept_layers(total: int, keep: int) -> list[int]:
    """Indices (from 0) of the ``keep`` layers of ``total`` to keep: evenly spread, ending
    with the top one. 3 of 6: [1, 3, 5]; 1 of 6: [5]; 6 of 6: all."""
    if not 1 <= keep <= total:
        raise DistillError(
            f"student_layers must lie in [1, {total}] (the encoder has {total} layers), not {keep}"
        )
    # Layer (i + 1) * total / keep, rounded down: steps of total / keep >= 1, so no repeats.
    return [(index + 1) * total // keep - 1 for index in range(keep)]


def keep_layers(model, keep: int) -> list[int]:
    """Cut a BERT-style classifier (``model.<base>.encoder.layer``) down to ``keep`` layers
    in place, and set its config's ``num_hidden_layers`` so that ``save_pretrained``
    output reloads with that shape. Returns the kept indices of the original layers."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise DistillError(
            f"student_layers: {type(model).__name__} has no BERT-style encoder.layer list "
            "to take layers from"
        )
    kept = kept_layers(len(layers), keep)
    encoder.layer = torch.nn.ModuleList(layers[index] for index in kept)
    for position, layer in enumerate(encoder.layer):
        # The attention caches of decoder use are indexed by layer_idx; keep it a position.
        for module in layer.modules():
            if getattr(module, "layer_idx", None) is not None:
                module.layer_idx = position
    model.config.num_hidden_layers = keep
    return kept


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - weight) x cross-entropy(labels) + weight x T^2 x KL(p_teacher || p_student),
    p = softmax(logits / T), averaged over the batch.

    T^2 keeps the distillation term's gradients on the scale of the cross-entropy's as T
    grows (the softened gradients shrink as 1/T^2). In float32 whatever the autocast.
    """
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if weight == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - weight) * hard + weight * temperature**2 * soft


@dataclass
class Teacher:
    """A frozen model directory's classifier and the distillation settings."""

    model: torch.nn.Module
    model_id: str  # spamfilter.model.modeldir.model_id: name@weights-hash
    weight: float
    temperature: float
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def loss(
        self,
        student_logits: torch.Tensor,
        inputs: dict[str, torch.Tensor],
        labels: torch.Tensor,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """The student's training loss on this batch (``distillation_loss``)."""
        with torch.no_grad(), self.autocast():
            teacher_logits = self.model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).logits
        return distillation_loss(
            student_logits, teacher_logits, labels, self.weight, self.temperature, label_smoothing
        )


def load_teacher(
    config: TrainConfig,
    student_tokenizer,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Teacher:
    """``config.teacher``'s classifier in eval mode, without gradients, on ``device``;
    DistillError unless it reads the student's tokens (tokenizer, max_length, tail_tokens).

    ``autocast``: the context its forward passes run in (the run's mixed precision).
    """
    directory = config.teacher
    try:
        card = read_card(directory)  # also refuses another email_to_text version
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (ModelDirError, OSError, ValueError) as error:
        raise DistillError(f"teacher: {error}") from None
    problems = []
    if (card.max_length, card.tail_tokens) != (config.max_length, config.tail_tokens):
        problems.append(
            f"it reads max_length {card.max_length}, tail_tokens {card.tail_tokens} (its "
            f"card), the student {config.max_length}, {config.tail_tokens}"
        )
    if not same_tokens(tokenizer, student_tokenizer):
        problems.append("its tokenizer splits text differently from the student's")
    if problems:
        raise DistillError(
            f"teacher: {directory} does not read the student's tokens: {'; '.join(problems)}. "
            "Set --max_length and --tail_tokens to the teacher's, or start the student from "
            "the teacher's encoder (or the teacher itself)"
        )
    try:
        model = load_model(directory)
    except ModelDirError as error:
        raise DistillError(f"teacher: {error}") from None
    model.eval().requires_grad_(False).to(device)
    return Teacher(
        model, model_id(directory), config.distill_weight, config.distill_temperature, autocast
    )


def same_tokens(first, second) -> bool:
    """Whether two tokenizers give the same ids: the same vocabulary and the same ids for a
    probe text (which normalization, casing and special tokens would change)."""
    return first.get_vocab() == second.get_vocab() and (
        first(_PROBE)["input_ids"] == second(_PROBE)["input_ids"]
    )
