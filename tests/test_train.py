"""training/train.py end to end: real accelerate launches, real model directories read back."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from spamfilter.model.classifier import Classifier
from spamfilter.model.modeldir import read_card
from spamrig import ROOT
from spamrig.launch import launch, small_run
from spamrig.synthetic import make_message
from spamtrain.loop import training_loss


def test_single_process_writes_a_servable_model_directory(
    tiny_base_model, synthetic_corpus, tmp_path
):
    output = tmp_path / "model"
    args = ("--num_train_epochs", "3", "--reject_fpr", "0.0005")
    result = launch("cpu.yaml", *small_run(tiny_base_model, synthetic_corpus, output, *args))
    assert "1 process(es)" in result.stderr
    files = ("config.json", "model.safetensors", "tokenizer.json", "spamfilter.json")
    for name in (*files, "model.onnx", "model.int8.onnx"):
        assert (output / name).is_file(), name
    card = read_card(output)
    assert card.max_length == 64
    assert 0 < card.thresholds.tag < 1
    assert card.calibration["split"] == "validation" and card.calibration["target_fpr"] == 0.001
    # A few validation ham cannot bound an FPR of 0.1 %: recorded, and said in words.
    n_ham = card.metrics["validation"]["n"] - card.metrics["validation"]["n_spam"]
    for which, needed in (("tag", 2995), ("reject", 5990)):
        record = card.calibration[which]
        assert (record["method"], record["confidence"], record["n_ham"]) == (
            "clopper-pearson", 0.95, n_ham
        )  # fmt: skip
        assert (record["false_positives"], record["bound_met"], record["ham_needed"]) == (
            0, False, needed
        )  # fmt: skip
        assert record["fpr_upper_bound"] == pytest.approx(1 - 0.05 ** (1 / n_ham))
    assert card.thresholds.reject >= card.thresholds.tag
    assert f"at 95% confidence on {n_ham} ham (0 above); too little ham" in result.stdout
    assert set(card.metrics) == {"validation", "test"}
    assert card.metrics["test"]["roc_auc"] > 0.9
    assert card.training["config"]["data"] == str(synthetic_corpus)
    assert len(card.training["data_fingerprint"]) >= 8
    assert card.training["train_samples_per_second"] > 0
    # The filter's classifier (ONNX as exported by training, and PyTorch) and a plain
    # transformers pipeline all serve it.
    exported = (output / "model.onnx").stat().st_mtime_ns
    messages = [make_message(1, 500), make_message(0, 500)]
    scores = Classifier(output, precision="fp32").score_raw(messages)
    assert scores[0] > scores[1]
    onnx_scores = Classifier(output, precision="onnx-fp32").score_raw(messages)
    assert onnx_scores == pytest.approx(scores, abs=1e-4)
    assert (output / "model.onnx").stat().st_mtime_ns == exported  # current: not exported again
    from transformers import pipeline

    assert pipeline("text-classification", model=str(output))("cheap pills")[0]["label"] in (
        "spam",
        "ham",
    )
    steps = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))


def test_two_process_ddp_over_gloo(tiny_base_model, synthetic_corpus, tmp_path):
    output = tmp_path / "ddp"
    result = launch(
        "cpu_ddp.yaml", *small_run(tiny_base_model, synthetic_corpus, output, "--max_steps", "6")
    )
    checksums = dict(re.findall(r"rank (\d)/2 parameter checksum (\S+)", result.stderr))
    assert set(checksums) == {"0", "1"}, result.stderr[-3000:]
    assert checksums["0"] == checksums["1"]
    card = read_card(output)
    assert card.training["world_size"] == 2
    # Evaluation gathered both ranks' shares without duplicates: every message counted once.
    test_size = card.metrics["test"]["n"]
    assert test_size == json.loads((output / "spamfilter.json").read_text())["metrics"]["test"]["n"]
    assert test_size > 0


def test_resume_mid_epoch_reaches_the_same_weights(tiny_base_model, synthetic_corpus, tmp_path):
    common = ("--max_steps", "6", "--checkpointing_steps", "3")
    common += ("--per_device_train_batch_size", "4")
    straight = tmp_path / "straight"
    launch(
        "cpu.yaml",
        *small_run(tiny_base_model, synthetic_corpus, straight, *common),
        extra_launch=("--mixed_precision", "no"),
    )
    progress = json.loads((straight / "checkpoints" / "step-3" / "progress.json").read_text())
    assert progress == {"completed_steps": 3, "epoch": 0, "batches_in_epoch": 3}  # mid-epoch
    resumed = tmp_path / "resumed"
    launch(
        "cpu.yaml",
        *small_run(tiny_base_model, synthetic_corpus, resumed, *common),
        "--resume_from_checkpoint", str(straight / "checkpoints" / "step-3"),
        extra_launch=("--mixed_precision", "no"),
    )  # fmt: skip
    first = load_file(straight / "model.safetensors")
    second = load_file(resumed / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    log = (resumed / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [4, 5, 6]


def test_latest_checkpoint_and_tensorboard(tiny_base_model, synthetic_corpus, tmp_path):
    output = tmp_path / "tb"
    args = small_run(tiny_base_model, synthetic_corpus, output, "--max_steps", "2")
    launch("cpu.yaml", *args, "--report_to", "tensorboard", "--logging_steps", "1")
    assert list(output.rglob("events.out.tfevents.*"))
    assert (output / "checkpoints" / "step-2" / "progress.json").is_file()
    result = launch(
        "cpu.yaml", *args, "--resume_from_checkpoint", str(output / "checkpoints" / "latest")
    )
    assert "resumed from" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no_such_flag", "1"], "unknown key 'no_such_flag'"),
        (["--max_length", "lots"], "bad value for 'max_length'"),
        (["--target_fpr", "2"], "target_fpr must lie strictly between 0 and 1"),
        (["--label_smoothing", "0.5"], "label_smoothing must lie in [0, 0.5)"),
        (["--confidence", "1"], "confidence must lie in [0, 1)"),
    ],
)
def test_bad_settings_stop_with_a_message_naming_the_key(args, message):
    result = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_label_smoothing_moves_the_loss_target_off_certainty(tiny_base_model):
    """Smoothed loss is the cross-entropy against (1 - e/2, e/2) targets; without it, the
    model's own loss."""
    model = BertForSequenceClassification.from_pretrained(tiny_base_model).eval()
    model.classifier.bias.data = torch.tensor([-2.0, 2.0])  # confident: the targets matter
    batch = {
        "input_ids": torch.tensor([[2, 5, 6, 3], [2, 7, 8, 3]]),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
        "labels": torch.tensor([1, 1]),
    }
    with torch.no_grad():
        log_p = torch.log_softmax(model(input_ids=batch["input_ids"]).logits, dim=-1)
        targets = torch.tensor([[0.05, 0.95], [0.05, 0.95]])
        expected = -(targets * log_p).sum(dim=-1).mean()
        assert torch.isclose(training_loss(model, batch, 0.1), expected)
        assert torch.isclose(training_loss(model, batch, 0.0), model(**batch).loss)
        assert not torch.isclose(training_loss(model, batch, 0.1), model(**batch).loss)


def test_unknown_key_in_a_recipe_names_key_and_file(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 1e-4\nlearnig_rate: 2e-4\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "--config", str(recipe)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"{recipe}: unknown key 'learnig_rate'" in result.stderr


def test_every_shipped_train_recipe_loads():
    from spamfilter.configload import load
    from spamtrain.config import TrainConfig

    recipes = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        assert isinstance(load(TrainConfig, recipe), TrainConfig)
