"""A distilled smaller student: layer selection, the distillation loss, the teacher."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from spamfilter.model.modeldir import model_id
from spamrig.synthetic import make_tokenizer, tiny_config
from spamtrain.config import TrainConfig
from spamtrain.distill import (
    DistillError,
    distillation_loss,
    keep_layers,
    kept_layers,
    load_teacher,
)

pytestmark = pytest.mark.timeout(600)


# --- layer selection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "keep", "expected"),
    [
        (6, 3, [1, 3, 5]),
        (6, 6, [0, 1, 2, 3, 4, 5]),  # keep all
        (6, 1, [5]),  # the top layer, which the head was trained on
        (6, 2, [2, 5]),
        (6, 4, [0, 2, 3, 5]),
        (12, 4, [2, 5, 8, 11]),
        (2, 1, [1]),
    ],
)
def test_kept_layers_are_spread_evenly_and_end_with_the_top_one(total, keep, expected):
    assert kept_layers(total, keep) == expected


@pytest.mark.parametrize("keep", [0, 7])
def test_keeping_no_layer_or_more_than_there_are_names_the_key(keep):
    with pytest.raises(DistillError, match=rf"student_layers must lie in \[1, 6\].*not {keep}"):
        kept_layers(6, keep)


def test_a_cut_model_keeps_those_layers_and_reloads_with_their_shape(tmp_path):
    config = tiny_config(len(make_tokenizer(tmp_path)))
    config.num_hidden_layers = 6
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    originals = [layer.state_dict() for layer in model.bert.encoder.layer]
    assert keep_layers(model, 3) == [1, 3, 5]
    assert len(model.bert.encoder.layer) == 3 and model.config.num_hidden_layers == 3
    for position, index in enumerate([1, 3, 5]):
        for name, tensor in model.bert.encoder.layer[position].state_dict().items():
            assert torch.equal(tensor, originals[index][name]), (position, name)
    model.save_pretrained(tmp_path / "cut")
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "cut").eval()
    assert len(reloaded.bert.encoder.layer) == 3
    ids = torch.tensor([[2, 11, 12, 13, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


# --- the loss ----------------------------------------------------------------------------

STUDENT = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]])
TEACHER = torch.tensor([[1.0, 0.0], [-2.0, 2.0], [0.0, 4.0]])
LABELS = torch.tensor([0, 1, 1])


def by_hand(weight: float, temperature: float) -> float:
    """The loss written out: softmax, log and sums over plain floats."""

    def softmax(row, t):
        exps = [math.exp(value / t) for value in row]
        return [e / sum(exps) for e in exps]

    ce = kl = 0.0
    rows = zip(STUDENT.tolist(), TEACHER.tolist(), LABELS.tolist(), strict=True)
    for student, teacher, label in rows:
        ce -= math.log(softmax(student, 1)[label])
        p, q = softmax(teacher, temperature), softmax(student, temperature)
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    n = len(LABELS)
    return (1 - weight) * ce / n + weight * temperature**2 * kl / n


@pytest.mark.parametrize(("weight", "temperature"), [(0.5, 2.0), (1.0, 1.0), (0.3, 4.0)])
def test_the_loss_is_the_blend_of_cross_entropy_and_softened_kl(weight, temperature):
    loss = distillation_loss(STUDENT, TEACHER, LABELS, weight, temperature)
    assert loss.item() == pytest.approx(by_hand(weight, temperature), rel=1e-6)


def test_at_weight_0_the_loss_is_the_cross_entropy_and_at_1_without_a_gap_it_is_0():
    ce = torch.nn.functional.cross_entropy(STUDENT, LABELS)
    assert torch.equal(distillation_loss(STUDENT, TEACHER, LABELS, 0.0, 2.0), ce)
    assert distillation_loss(STUDENT, STUDENT, LABELS, 1.0, 2.0).item() == pytest.approx(0.0)
    smoothed = torch.nn.functional.cross_entropy(STUDENT, LABELS, label_smoothing=0.1)
    assert torch.equal(distillation_loss(STUDENT, TEACHER, LABELS, 0.0, 2.0, 0.1), smoothed)


def test_the_loss_trains_the_student_towards_the_teacher():
    student = STUDENT.clone().requires_grad_(True)
    distillation_loss(student, TEACHER, LABELS, 1.0, 2.0).backward()
    # Row 1: the teacher is sure of spam, the student undecided: spam's logit must rise.
    assert student.grad[1, 1] < 0 < student.grad[1, 0]


# --- the teacher -------------------------------------------------------------------------


def test_the_teacher_is_frozen_on_the_device_and_identified(tiny_model_dir):
    config = TrainConfig(teacher=str(tiny_model_dir), max_length=64)
    teacher = load_teacher(config, make_tokenizer(tiny_model_dir), "cpu")
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.model_id == model_id(tiny_model_dir)
    assert (teacher.weight, teacher.temperature) == (0.5, 2.0)


def test_a_teacher_that_reads_other_tokens_is_refused(tiny_model_dir, tmp_path):
    student_tokenizer = make_tokenizer(tmp_path)
    longer = TrainConfig(teacher=str(tiny_model_dir), max_length=128)
    with pytest.raises(DistillError, match=r"max_length 64, tail_tokens 0.*the student 128, 0"):
        load_teacher(longer, student_tokenizer)
    cased = Path(shutil.copytree(tiny_model_dir, tmp_path / "cased"))
    tokenizer = make_tokenizer(cased)
    type(tokenizer)(vocab=dict(tokenizer.get_vocab()), do_lower_case=False).save_pretrained(cased)
    with pytest.raises(DistillError, match="tokenizer splits text differently"):
        load_teacher(TrainConfig(teacher=str(cased), max_length=64), student_tokenizer)
    with pytest.raises(DistillError, match=f"teacher: {tmp_path / 'none'}: model directory not"):
        load_teacher(TrainConfig(teacher=str(tmp_path / "none"), max_length=64), student_tokenizer)
