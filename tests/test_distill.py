"""A distilled smaller student: layer selection, the distillation loss, and real
``accelerate launch`` runs whose student directory is read back, served and continued."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from spamfilter import cli
from spamfilter.model.classifier import Classifier
from spamfilter.model.modeldir import load_model, model_id, read_card
from spamrig import ROOT
from spamrig.launch import DEEPSPEED_CPU_ENV, free_port, launch, small_run
from spamrig.synthetic import make_message, make_tokenizer, tiny_config, write_maildirs
from spamtrain.config import TrainConfig
from spamtrain.distill import (
    DistillError,
    distillation_loss,
    keep_layers,
    kept_layers,
    load_teacher,
)
from spamtrain.loop import training_loss

pytestmark = pytest.mark.timeout(600)


def tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def num_layers(directory: Path) -> int:
    return json.loads((directory / "config.json").read_text())["num_hidden_layers"]


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


def test_the_training_loss_with_a_teacher_is_the_distillation_loss(tiny_model_dir, tiny_base_model):
    student = BertForSequenceClassification.from_pretrained(tiny_base_model).eval()
    config = TrainConfig(teacher=str(tiny_model_dir), max_length=64, distill_weight=0.7)
    teacher = load_teacher(config, make_tokenizer(tiny_base_model))
    batch = {
        "input_ids": torch.tensor([[2, 11, 12, 3], [2, 30, 31, 3]]),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
        "labels": torch.tensor([1, 0]),
    }
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected = distillation_loss(
            student(**inputs).logits, teacher.model(**inputs).logits, batch["labels"], 0.7, 2.0
        )
        assert torch.isclose(training_loss(student, batch, 0.0, teacher), expected)
        assert not torch.isclose(training_loss(student, batch, 0.0), expected)


# --- real runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_model_dir):
    """One launch: a 1-layer student of the 2-layer tiny model, started from it and
    distilled from it, as configs/train/student.yaml does with runs/default."""
    root = tmp_path_factory.mktemp("distill")
    teacher = Path(shutil.copytree(tiny_model_dir, root / "teacher"))
    corpus = write_maildirs(root / "corpus", per_label=40)
    before = tree_digest(teacher)
    output = root / "student"
    result = launch(
        "cpu.yaml",
        *small_run(teacher, corpus, output, "--num_train_epochs", "3"),
        "--teacher", str(teacher), "--student_layers", "1",
        "--distill_weight", "0.5", "--distill_temperature", "2",
    )  # fmt: skip
    return {"teacher": teacher, "before": before, "output": output, "result": result}


def test_the_student_directory_has_fewer_layers_and_serves(distilled):
    output, teacher = distilled["output"], distilled["teacher"]
    assert "teacher teacher@" in distilled["result"].stderr
    assert "student: layers [1] of 2 kept" in distilled["result"].stderr
    assert (num_layers(teacher), num_layers(output)) == (2, 1)
    assert len(load_model(output).bert.encoder.layer) == 1
    for name in ("model.onnx", "model.int8.onnx", "spamfilter.json", "tokenizer.json"):
        assert (output / name).is_file(), name
    messages = [make_message(1, 500), make_message(0, 500)]
    scores = Classifier(output, precision="fp32").score_raw(messages)
    assert scores[0] > scores[1]
    onnx_scores = Classifier(output, precision="onnx-fp32").score_raw(messages)
    assert onnx_scores == pytest.approx(scores, abs=1e-4)
    card = read_card(output)
    assert card.training["teacher"] == model_id(teacher)
    assert card.training["student_layers"] == 1
    assert card.training["student_kept_layers"] == {"of": 2, "kept": [1]}
    assert card.training["config"]["teacher"] == str(teacher)
    assert card.metrics["test"]["roc_auc"] > 0.9
    assert tree_digest(teacher) == distilled["before"]  # the teacher is only read
    # Each checkpoint holds the student alone: its weights, no teacher beside them.
    checkpoints = sorted((output / "checkpoints").rglob("model*.safetensors"))
    assert checkpoints
    for path in checkpoints:
        assert load_file(path).keys() == load_file(output / "model.safetensors").keys(), path


def test_learn_continues_a_student_without_its_teacher(distilled, tmp_path):
    student = Path(shutil.copytree(distilled["output"], tmp_path / "student"))
    away = distilled["teacher"].with_name("away")
    shutil.move(distilled["teacher"], away)  # the card names it; learn must not need it
    try:
        spam = write_maildirs(tmp_path / "site", per_label=12)
        output = tmp_path / "site-model"
        code = cli.main(
            [
                "learn", "--model", str(student), "--output", str(output),
                "--spam", str(spam / "spam"), "--ham", str(spam / "ham"),
                "--replay-ratio", "0", "--folds", "2", "--epochs", "1",
            ]
        )  # fmt: skip
    finally:
        shutil.move(away, distilled["teacher"])
    assert code == 0
    assert num_layers(output) == 1
    card = read_card(output)
    assert card.training["learned_from"]["parent_model"] == model_id(student)
    assert card.training["config"]["teacher"] is None
    assert card.training["config"]["student_layers"] is None
    spam_score, ham_score = Classifier(output, precision="onnx-fp32").score_raw(
        [make_message(1, 900), make_message(0, 900)]
    )
    assert spam_score > ham_score


def distil_on_two_ranks(accelerate_config: str, teacher: Path, corpus: Path, output: Path):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DEEPSPEED_CPU_ENV.items():
            patch.setenv(name, value)
        return launch(
            accelerate_config,
            *small_run(teacher, corpus, output, "--max_steps", "4"),
            "--teacher", str(teacher), "--student_layers", "1",
            extra_launch=("--main_process_port", free_port()),
        )  # fmt: skip


def train_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def test_ddp_ranks_distil_in_step_and_zero3_takes_the_same_steps(
    tiny_model_dir, synthetic_corpus, tmp_path
):
    """Each rank runs its own whole teacher: under ZeRO-3 too, where transformers would
    otherwise partition it as it loads, and the teacher could not run outside the engine."""
    ddp, zero3 = tmp_path / "ddp", tmp_path / "zero3"
    result = distil_on_two_ranks("cpu_ddp.yaml", tiny_model_dir, synthetic_corpus, ddp)
    checksums = dict(re.findall(r"rank (\d)/2 parameter checksum (\S+)", result.stderr))
    assert set(checksums) == {"0", "1"}, result.stderr[-3000:]
    assert checksums["0"] == checksums["1"]
    card = read_card(ddp)
    assert card.training["world_size"] == 2
    assert card.training["teacher"] == model_id(tiny_model_dir)
    assert num_layers(ddp) == 1
    distil_on_two_ranks("cpu_deepspeed_zero3.yaml", tiny_model_dir, synthetic_corpus, zero3)
    assert read_card(zero3).training["teacher"] == model_id(tiny_model_dir)
    assert num_layers(zero3) == 1
    steps = train_log(ddp)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    for ours, theirs in zip(train_log(zero3), steps, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5), ours["step"]


# --- bad settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--student_layers", "0"], 2, "student_layers must be at least 1"),
        (["--student_layers", "3"], 1, "student_layers must lie in [1, 2]"),
        (["--distill_weight", "2"], 2, "distill_weight must lie in [0, 1], not 2.0"),
        (["--distill_temperature", "0"], 2, "distill_temperature must be positive"),
        (["--teacher", "{missing}"], 1, "teacher: {missing}: model directory not found"),
        (["--teacher", "{output}"], 2, "teacher must not be output_dir"),
    ],
)
def test_bad_student_settings_stop_with_a_message_naming_the_key(
    args, code, message, tiny_base_model, tmp_path
):
    places = {"missing": tmp_path / "no-teacher", "output": tmp_path / "out"}
    args = [arg.format(**places) for arg in args]
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "training" / "train.py"),
            "--model_name_or_path", str(tiny_base_model), "--output_dir", str(places["output"]),
            "--data", str(tmp_path / "no-corpus"), "--max_length", "64", *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == code, result.stderr[-3000:]
    assert message.format(**places) in result.stderr
    assert "Traceback" not in result.stderr
