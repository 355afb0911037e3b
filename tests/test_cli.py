"""``spamfilter`` on the tiny model: in-process through ``main`` and once as a real process."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spamfilter import cli
from spamfilter.evaluation.metrics import at_threshold
from spamfilter.model.modeldir import CARD_FILE, read_card
from spamfilter.model.precision import DEFAULT_PRECISION, resolve
from spamrig.synthetic import make_message, write_maildir, write_maildirs

SPAMFILTER = Path(sys.executable).with_name("spamfilter")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model, so tests may change its card."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def messages(tmp_path) -> dict[str, Path]:
    files = {"spam": make_message(1, 500), "ham": make_message(0, 500)}
    for name, raw in files.items():
        (tmp_path / f"{name}.eml").write_bytes(raw)
    return {name: tmp_path / f"{name}.eml" for name in files}


SPAMLIKE_HAM = [make_message(1, 900 + index) for index in range(4)]


@pytest.fixture
def labelled_corpus(tmp_path) -> Path:
    """40 spam and 44 ham, 4 of the ham spam-like, so a low target FPR costs recall."""
    root = write_maildirs(tmp_path / "corpus", per_label=40)
    for index, raw in enumerate(SPAMLIKE_HAM):
        (root / "ham" / f"spamlike-{index}.eml").write_bytes(raw)
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- classify -----------------------------------------------------------------------------


def test_classify_prints_file_score_and_verdict(capsys, tiny_model_dir, messages):
    code, out, _ = run(
        capsys, "classify", "--model", tiny_model_dir, messages["spam"], messages["ham"]
    )
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert [(name, verdict) for name, _, verdict in lines] == [
        (str(messages["spam"]), "spam"),
        (str(messages["ham"]), "ham"),
    ]
    assert float(lines[0][1]) > 0.5 > float(lines[1][1])


def test_classify_json_gives_one_object_per_message(capsys, tiny_model_dir, messages):
    code, out, _ = run(capsys, "classify", "--json", "--model", tiny_model_dir, *messages.values())
    assert code == 0
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["verdict"] for o in objects] == ["spam", "ham"]
    assert set(objects[0]) == {"file", "score", "verdict"}
    assert 0.0 <= objects[1]["score"] < 0.5 < objects[0]["score"] <= 1.0


def test_classify_verdict_follows_the_card_threshold(capsys, model_dir, messages):
    run(capsys, "threshold", "set", "0.999999", "--model", model_dir)
    _, out, _ = run(capsys, "classify", "--model", model_dir, messages["spam"])
    assert out.split("\t")[2].strip() == "ham"


def test_console_script_reads_stdin_and_reports_unreadable_files(
    tiny_model_dir, messages, tmp_path
):
    missing = tmp_path / "missing.eml"
    result = subprocess.run(
        [SPAMFILTER, "classify", "--model", tiny_model_dir, "-", missing, messages["ham"]],
        input=messages["spam"].read_bytes(),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"cannot read {missing}" in result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [line.split("\t")[::2] for line in lines] == [
        ["-", "spam"],
        [str(messages["ham"]), "ham"],
    ]


# --- threshold show | set -----------------------------------------------------------------


def test_threshold_show_prints_thresholds_calibration_and_metrics(capsys, model_dir):
    card = read_card(model_dir)
    card.calibration = {"split": "validation", "target_fpr": 0.001}
    card.metrics = {"test": {"recall": 0.97}}
    card_path = model_dir / CARD_FILE
    card_path.write_text(card.to_json())
    code, out, _ = run(capsys, "threshold", "show", "--model", model_dir)
    assert code == 0
    for expected in ("tag: 0.5", "reject: null", "target_fpr: 0.001", "recall: 0.97"):
        assert expected in out


def test_threshold_set_replaces_the_card_atomically(capsys, model_dir):
    card_path = model_dir / CARD_FILE
    inode = card_path.stat().st_ino
    code, out, _ = run(
        capsys, "threshold", "set", "0.85", "--which", "reject", "--model", model_dir
    )
    assert code == 0
    assert "kill -HUP" in out
    card = read_card(model_dir)
    assert (card.thresholds.tag, card.thresholds.reject) == (0.5, 0.85)
    assert "reject_set_by_hand_at" in card.calibration
    assert card_path.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(p.name for p in model_dir.glob(f"*{CARD_FILE}*")) == [CARD_FILE]


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan", "high"])
def test_threshold_set_rejects_values_outside_0_1(capsys, model_dir, value):
    before = (model_dir / CARD_FILE).read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["threshold", "set", value, "--model", str(model_dir)])
    assert exit_info.value.code == 2
    assert "argument value:" in capsys.readouterr().err
    assert (model_dir / CARD_FILE).read_bytes() == before


def test_missing_model_directory_is_one_line_error(capsys, tmp_path):
    code, _, err = run(capsys, "threshold", "show", "--model", tmp_path / "nowhere")
    assert code == 2
    assert err == f"spamfilter: error: {tmp_path / 'nowhere'}: model directory not found\n"


# --- threshold tune -----------------------------------------------------------------------


def test_tune_at_confidence_0_meets_the_observed_target_and_records_it(
    capsys, model_dir, labelled_corpus
):
    labels, scores = _score_corpus(model_dir, labelled_corpus)
    assert at_threshold(labels, scores, 0.5)["fpr"] > 0.05  # the spam-like ham at the old tag
    argv = ["threshold", "tune", "--model", model_dir, "--data", labelled_corpus]
    code, out, _ = run(capsys, *argv, "--split", "all", "--target-fpr", "0.05", "--confidence", "0")
    assert code == 0
    card = read_card(model_dir)
    fp = at_threshold(labels, scores, card.thresholds.tag)["fp"]
    assert fp / 44 <= 0.05
    assert card.calibration | {"chosen_at": None} == {
        "target_fpr": 0.05, "split": "all", "scheme": "hash", "source": str(labelled_corpus),
        "precision": resolve(DEFAULT_PRECISION), "chosen_at": None, "n_ham": 44, "n_spam": 40,
        "tag": {"method": "observed", "confidence": 0.0, "n_ham": 44, "n_spam": 40,
                "false_positives": fp, "fpr_upper_bound": fp / 44, "bound_met": True,
                "ham_needed": 20},
    }  # fmt: skip
    assert "| <- |" in out and "kill -HUP" in out
    assert f"FPR {fp / 44:.2%} observed on 44 ham ({fp} above), within the target 5%" in out


def test_tune_on_a_maildir_pair_bounds_the_fpr_and_says_when_ham_are_too_few(
    capsys, model_dir, tmp_path
):
    site = tmp_path / "site"
    write_maildir(site / "spam", [make_message(1, 700 + index) for index in range(30)])
    write_maildir(site / "ham", [make_message(0, 700 + index) for index in range(30)])
    assert len(list((site / "ham" / "cur").iterdir())) == 15
    argv = ["threshold", "tune", "--model", model_dir, "--data", site, "--split", "all"]
    code, out, _ = run(capsys, *argv, "--target-fpr", "0.01")
    assert code == 0
    card = read_card(model_dir)
    labels, scores = _score_corpus(model_dir, site)
    assert card.thresholds.tag > max(s for s, y in zip(scores, labels, strict=True) if y == 0)
    record = card.calibration["tag"]
    assert record | {"fpr_upper_bound": None} == {
        "method": "clopper-pearson", "confidence": 0.95, "n_ham": 30, "n_spam": 30,
        "false_positives": 0, "fpr_upper_bound": None, "bound_met": False, "ham_needed": 299,
    }  # fmt: skip
    assert record["fpr_upper_bound"] == pytest.approx(1 - 0.05 ** (1 / 30))
    said = "FPR <= 9.50% at 95% confidence on 30 ham (0 above); too little ham: the target 1% "
    assert said + "needs >= 299 ham" in out
    _, shown, _ = run(capsys, "threshold", "show", "--model", model_dir)
    assert said in shown and "method: clopper-pearson" in shown
    # Set by hand, the threshold no longer claims a bound.
    run(capsys, "threshold", "set", "0.9", "--model", model_dir)
    assert "tag" not in read_card(model_dir).calibration


def test_tune_dry_run_leaves_the_card(capsys, model_dir, labelled_corpus):
    before = (model_dir / CARD_FILE).read_bytes()
    argv = ["threshold", "tune", "--model", model_dir, "--data", labelled_corpus, "--dry-run"]
    code, out, _ = run(capsys, *argv, "--split", "test")
    assert code == 0
    assert "dry run" in out
    assert (model_dir / CARD_FILE).read_bytes() == before


def test_tune_without_the_training_layer_says_what_to_install(capsys, model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "spamtrain.data", None)  # import now raises ImportError
    code, _, err = run(capsys, "threshold", "tune", "--model", model_dir, "--data", "x")
    assert code == 2
    assert "pip install 'spamfilter[train]'" in err


def test_tune_for_a_lossy_precision_keeps_fp32_thresholds(
    capsys, model_dir, labelled_corpus, messages
):
    labels, scores = _score_corpus(model_dir, labelled_corpus, precision="int8")
    argv = ["threshold", "tune", "--model", model_dir, "--data", labelled_corpus]
    code, _, _ = run(capsys, *argv, "--split", "all", "--target-fpr", "0.05", "--precision", "int8")
    assert code == 0
    card = read_card(model_dir)
    assert card.thresholds.tag == 0.5  # fp32's (and onnx-fp32's) are untouched
    int8 = card.thresholds_for("int8").tag
    assert int8 != 0.5 and at_threshold(labels, scores, int8)["fpr"] <= 0.05
    assert card.calibration["precisions"]["int8"]["target_fpr"] == 0.05
    _, out, _ = run(capsys, "threshold", "show", "--model", model_dir)
    assert f"int8:\n    tag: {int8}" in out
    argv = ["classify", "--model", model_dir, "--precision", "int8", "--json", messages["spam"]]
    verdict = json.loads(run(capsys, *argv)[1])
    assert verdict["verdict"] == ("spam" if verdict["score"] >= int8 else "ham")


def test_threshold_set_for_a_precision_leaves_the_others(capsys, model_dir):
    code, out, _ = run(capsys, "threshold", "set", "0.7", "--precision", "bf16",
                       "--model", model_dir)  # fmt: skip
    assert code == 0 and "for bf16 scores set to 0.7" in out
    card = read_card(model_dir)
    assert (card.thresholds_for("bf16").tag, card.thresholds_for("onnx-fp32").tag) == (0.7, 0.5)


@pytest.mark.parametrize("precision", ["onnx-int8", "auto"])
def test_threshold_set_for_onnx_int8_or_auto_sets_the_shared_thresholds(
    capsys, model_dir, precision
):
    code, out, _ = run(capsys, "threshold", "set", "0.7", "--precision", precision,
                       "--model", model_dir)  # fmt: skip
    assert code == 0 and "for fp32 and onnx-fp32 and onnx-int8 scores set to 0.7" in out
    card = read_card(model_dir)
    assert card.precision_thresholds == {}
    assert {card.thresholds_for(p).tag for p in ("fp32", "onnx-fp32", "onnx-int8")} == {0.7}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_classify_on_a_missing_gpu_is_a_one_line_error(capsys, tiny_model_dir, messages):
    code, _, err = run(capsys, "classify", "--model", tiny_model_dir, "--device", "cuda",
                       messages["spam"])  # fmt: skip
    assert code == 2
    assert err == "spamfilter: error: device cuda: torch sees no CUDA device on this machine\n"


def test_classify_rejects_a_misspelled_device(capsys, tiny_model_dir, messages):
    with pytest.raises(SystemExit):
        run(capsys, "classify", "--model", tiny_model_dir, "--device", "gpu", messages["spam"])
    assert "must be auto, cpu, cuda or cuda:N, not 'gpu'" in capsys.readouterr().err


def _score_corpus(
    model_dir: Path, root: Path, precision: str = DEFAULT_PRECISION
) -> tuple[list[int], list[float]]:
    """Scores as tune computes them (same rows, batches, precision), so ties stay ties."""
    from spamfilter.cli.common import score_dataset
    from spamfilter.model.classifier import Classifier
    from spamtrain.data import load_splits

    dataset = load_splits(str(root), ("all",))["all"]
    classifier = Classifier(model_dir, precision=precision)
    return dataset["label"], score_dataset(classifier, dataset).tolist()


# --- eval ---------------------------------------------------------------------------------


def test_eval_writes_metrics_plots_and_report(capsys, tiny_model_dir, labelled_corpus, tmp_path):
    out_dir = tmp_path / "report"
    argv = ["eval", "--model", tiny_model_dir, "--data", labelled_corpus, "--out", out_dir]
    code, out, _ = run(capsys, *argv, "--split", "all")
    assert code == 0 and "report.md" in out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert (metrics["n"], metrics["n_spam"], metrics["split"]) == (84, 40, "all")
    for key in ("recall_at_fpr_0.001", "recall_at_fpr_0.005", "recall_at_fpr_0.01", "pr_auc"):
        assert key in metrics["summary"]
    assert metrics["sweep"] and metrics["filters"][0]["filter"] == metrics["model"]
    # the four spam-like ham are the false positives at the tag threshold, most confident first
    positives = metrics["false_positives"]
    assert sorted(row["id"] for row in positives) == sorted(
        hashlib.md5(raw).hexdigest() for raw in SPAMLIKE_HAM
    )
    assert positives == sorted(positives, key=lambda row: -row["score"])
    report = (out_dir / "report.md").read_text()
    for png in ("roc.png", "precision_recall.png", "score_histogram.png", "threshold.png"):
        assert (out_dir / png).read_bytes().startswith(PNG_MAGIC)
        assert f"]({png})" in report
    assert "](metrics.json)" in report and positives[0]["subject"] in report


# --- wiring -------------------------------------------------------------------------------


def test_serve_help_comes_from_the_daemon(capsys):
    pytest.importorskip("spamfilter.smtp.server")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spamfilter serve") and "--listen" in out
