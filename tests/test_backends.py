"""Scoring backends (PyTorch fp32/bf16/int8, ONNX Runtime fp32/int8) and the baselines."""

from __future__ import annotations

import json
import shutil
from email import policy
from email.parser import BytesParser
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from spamfilter import cli
from spamfilter.evaluation.baselines import as_text_message, make_baselines
from spamfilter.evaluation.baselines.compare import run_baselines
from spamfilter.model import onnxmodel
from spamfilter.model.classifier import Classifier
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.precision import (
    QUANTIZED_PER_RUN,
    BackendError,
    cpu_flags,
    has_int8_dot_products,
    resolve,
    runs_at_once,
    usable_cores,
)
from spamrig.synthetic import make_message

# Largest |P(spam) - fp32's| per precision on the tiny model: ONNX fp32 runs the same
# arithmetic; bf16 keeps 8 mantissa bits; int8 rounds every weight matrix.
TOLERANCE = {"onnx-fp32": 1e-4, "bf16": 0.05, "int8": 0.05, "onnx-int8": 0.05}
NEEDS_INT8_DOT_PRODUCTS = pytest.mark.skipif(
    not has_int8_dot_products(),
    reason="onnx-int8 is refused on a CPU without int8 dot products (VNNI, AMX)",
)
MESSAGES = [make_message(label, 700 + index) for index in range(12) for label in (0, 1)]
LABELS = [label for _ in range(12) for label in (0, 1)]


def on_this_cpu(precisions) -> list:
    """``precisions`` as test parameters, onnx-int8 skipped where this CPU refuses it."""
    return [
        pytest.param(p, marks=NEEDS_INT8_DOT_PRODUCTS) if p == "onnx-int8" else p
        for p in sorted(precisions)
    ]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A private copy of the tiny model: ONNX files get written into it."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("backends") / "model"))


@pytest.fixture(scope="module")
def fp32_scores(model_dir) -> np.ndarray:
    return np.asarray(Classifier(model_dir, precision="fp32").score_raw(MESSAGES))


@pytest.mark.parametrize("precision", on_this_cpu(TOLERANCE))
def test_each_precision_scores_like_fp32(model_dir, fp32_scores, precision):
    scores = np.asarray(Classifier(model_dir, precision=precision).score_raw(MESSAGES))
    assert np.max(np.abs(scores - fp32_scores)) <= TOLERANCE[precision]
    assert roc_auc_score(LABELS, scores) == roc_auc_score(LABELS, fp32_scores)


def test_onnx_scores_do_not_depend_on_the_batch(model_dir):
    classifier = Classifier(model_dir, precision="onnx-fp32")
    texts = [email_to_text(raw) for raw in MESSAGES]
    one_by_one = [classifier.score_texts([text])[0] for text in texts]
    assert np.allclose(classifier.score_texts(texts, batch_size=5), one_by_one, atol=1e-5)


@pytest.mark.parametrize("precision", on_this_cpu(QUANTIZED_PER_RUN))
def test_a_quantized_score_does_not_depend_on_the_other_texts(model_dir, precision):
    """Dynamic int8 quantizes activations on one scale per model run: batched with other
    texts, a message would be scored on a scale its neighbours set."""
    classifier = Classifier(model_dir, precision=precision)
    texts = [email_to_text(raw) for raw in MESSAGES]
    one_by_one = [classifier.score_texts([text])[0] for text in texts]
    loud = "FREE " * 400  # a neighbour with other activations than any of them
    assert classifier.score_texts([loud, *texts], batch_size=8)[1:] == one_by_one


def test_export_onnx_command_writes_both_files_tagged_with_weights_and_recipe(capsys, model_dir):
    import onnx

    assert cli.main(["export-onnx", "--model", str(model_dir)]) == 0
    printed = capsys.readouterr().out
    for precision, name in onnxmodel.FILES.items():
        assert f"{precision}: {model_dir / name}" in printed
        properties = onnxmodel.OnnxRunner.for_model(model_dir, precision).session.get_modelmeta()
        assert properties.custom_metadata_map == {
            onnxmodel.MODEL_ID_KEY: Classifier(model_dir, precision="fp32").model_id,
            onnxmodel.RECIPE_KEY: onnxmodel.RECIPE,
        }
    operators = {node.op_type for node in onnx.load(model_dir / "model.onnx").graph.node}
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"} <= operators


def test_int8_export_keeps_the_embeddings_and_the_lower_feed_forward_outputs_in_fp32(model_dir):
    """Recipe 4: of the tiny model's two layers, layer 0's feed-forward output MatMul stays
    fp32, layer 1's is int8; the embedding lookup is not quantized."""
    import onnx

    int8 = onnx.load(onnxmodel.export_onnx(model_dir)["onnx-int8"]).graph.node
    operators = {node.name: node.op_type for node in int8}
    assert operators["/bert/encoder/layer.0/output/dense/MatMul"] == "MatMul"
    assert "/bert/encoder/layer.1/output/dense/MatMul" not in operators  # quantized
    assert sum(op == "MatMulInteger" for op in operators.values()) >= 5  # the other MatMuls
    assert "EmbedLayerNormalization" in operators.values()
    assert "QEmbedLayerNormalization" not in operators.values()


@pytest.mark.parametrize(
    "stale", [{onnxmodel.MODEL_ID_KEY: "other@00000000"}, {onnxmodel.RECIPE_KEY: "1"}]
)
def test_onnx_file_from_other_weights_or_recipe_is_exported_again(model_dir, fp32_scores, stale):
    import onnx

    path = model_dir / onnxmodel.FILES["onnx-fp32"]
    onnxmodel.export_onnx(model_dir)
    old = onnx.load(path)
    onnx.helper.set_model_props(old, {p.key: p.value for p in old.metadata_props} | stale)
    onnx.save(old, path)
    scores = Classifier(model_dir, precision="onnx-fp32").score_raw(MESSAGES)
    assert np.allclose(scores, fp32_scores, atol=TOLERANCE["onnx-fp32"])
    reread = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert reread == {
        onnxmodel.MODEL_ID_KEY: Classifier(model_dir, precision="fp32").model_id,
        onnxmodel.RECIPE_KEY: onnxmodel.RECIPE,
    }


# --- baselines ----------------------------------------------------------------------------

TRAIN = [make_message(label, index) for index in range(40) for label in (0, 1)]
TRAIN_LABELS = [label for _ in range(40) for label in (0, 1)]


def fit_and_score(baseline) -> np.ndarray:
    try:
        baseline.fit(TRAIN, TRAIN_LABELS)
        return baseline.score(MESSAGES)
    finally:
        baseline.close()


def test_tfidf_baseline_separates_the_synthetic_corpus():
    (baseline,) = make_baselines("tfidf")
    scores = fit_and_score(baseline)
    assert np.all((scores >= 0) & (scores <= 1)) and roc_auc_score(LABELS, scores) == 1.0


@pytest.mark.skipif(not shutil.which("bogofilter"), reason="bogofilter not installed")
def test_bogofilter_baseline_on_both_views():
    runs = make_baselines("bogofilter")
    assert [run.view for run in runs] == ["raw", "text"]
    for baseline in runs:
        scores = fit_and_score(baseline)
        assert np.all((scores >= 0) & (scores <= 1)) and roc_auc_score(LABELS, scores) == 1.0
        assert not baseline.root.exists()  # close() removed its word list


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("spamd"), reason="SpamAssassin (spamd) not installed")
def test_spamassassin_baseline_scores_in_the_unit_interval():
    (baseline, _) = make_baselines("spamassassin")
    scores = fit_and_score(baseline)
    assert len(scores) == len(MESSAGES) and np.all((scores > 0) & (scores < 1))


def test_text_view_is_the_model_text_as_a_message_body():
    raw = make_message(1, 3)
    wrapped = BytesParser(policy=policy.default).parsebytes(as_text_message(raw))
    assert wrapped.get_content().rstrip("\n") == email_to_text(raw).rstrip("\n")


def test_missing_peer_is_reported_not_fatal(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bogofilter on this PATH
    runs, skipped = run_baselines(["bogofilter"], None, None, None, 0.01)
    assert runs == [] and "apt-get install bogofilter" in skipped["bogofilter"]


def test_eval_with_tfidf_baseline_writes_the_compared_table(capsys, model_dir, tmp_path):
    from spamrig.synthetic import write_maildirs

    corpus = write_maildirs(tmp_path / "mail", per_label=60)
    out = tmp_path / "report"
    argv = ["eval", "--model", str(model_dir), "--data", str(corpus), "--out", str(out)]
    assert cli.main([*argv, "--baseline", "tfidf"]) == 0
    assert "tfidf+logreg (model text): ROC-AUC" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    names = [row["filter"] for row in metrics["filters"]]
    assert names == [metrics["model"], "tfidf+logreg (model text)"]
    assert [row["filter"] for row in metrics["filters_native"]] == names
    assert metrics["filters"][1]["msgs_per_s"] > 0
    report = (out / "report.md").read_text()
    assert "| tfidf+logreg (model text) |" in report and "own default cut-off" in report


def test_eval_baseline_needs_a_split(capsys, model_dir, tmp_path):
    argv = ["eval", "--model", str(model_dir), "--data", str(tmp_path), "--out", str(tmp_path)]
    assert cli.main([*argv, "--split", "all", "--baseline", "tfidf"]) == cli.EXIT_ERROR
    assert "--baseline needs a split" in capsys.readouterr().err


# --- choosing the backend ----------------------------------------------------------------


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx2 avx512f avx512_vnni avx512_bf16", "onnx-int8"),
        ("fpu sse2 avx2 avx_vnni", "onnx-int8"),
        ("fpu sse2 avx2 fma", "onnx-fp32"),  # u8 x s8 sums saturate without VNNI
    ],
)
def test_auto_picks_int8_only_where_the_cpu_has_int8_dot_products(
    tmp_path, monkeypatch, flags, expected
):
    found = cpu_flags(cpuinfo(tmp_path, flags))
    assert found == frozenset(flags.split())
    monkeypatch.setattr("spamfilter.model.precision.cpu_flags", lambda: found)
    assert resolve("auto") == expected
    assert resolve("auto", "cuda:0") == "fp32"  # ONNX Runtime here is a CPU build
    assert resolve("bf16") == "bf16"  # a named precision is never replaced


def test_onnx_int8_is_refused_where_int8_sums_saturate(tmp_path, monkeypatch, model_dir, capsys):
    """Without VNNI or AMX the int8 kernels' 16-bit sums saturate: such scores would be
    judged by fp32's thresholds (the default model's recall at tag halved)."""
    avx2 = cpu_flags(cpuinfo(tmp_path, "fpu sse2 avx2 fma"))
    monkeypatch.setattr("spamfilter.model.precision.cpu_flags", lambda: avx2)
    with pytest.raises(BackendError, match=r"onnx-int8 needs .*amx_int8, avx512_vnni, avx_vnni"):
        Classifier(model_dir, precision="onnx-int8")
    assert Classifier(model_dir, precision="auto").precision == "onnx-fp32"
    message = tmp_path / "spam.eml"
    message.write_bytes(MESSAGES[1])
    code = cli.main(
        ["classify", "--model", str(model_dir), "--precision", "onnx-int8", str(message)]
    )
    assert code == 2 and "use precision auto or onnx-fp32" in capsys.readouterr().err


def test_cpu_flags_are_empty_where_the_cpu_is_not_described(tmp_path):
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_classifier_scores_with_the_backend_auto_resolves_to(model_dir, fp32_scores):
    classifier = Classifier(model_dir, precision="auto", device="auto")
    assert classifier.precision == resolve("auto", classifier.device)
    assert classifier.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    if classifier.device == "cpu":
        scores = np.asarray(classifier.score_raw(MESSAGES))
        assert np.max(np.abs(scores - fp32_scores)) <= TOLERANCE[classifier.precision]


def test_model_runs_default_to_one_per_core_only_where_each_message_runs_alone_in_onnx(
    model_dir,
):
    cores = usable_cores()
    assert runs_at_once(0, "onnx-int8", "cpu") == cores
    for backend, device in [("onnx-fp32", "cpu"), ("int8", "cpu"), ("fp32", "cuda:0")]:
        assert runs_at_once(0, backend, device) == 1
    assert runs_at_once(3, "onnx-fp32", "cpu") == 3  # a number is taken as it is
    classifier = Classifier(model_dir, precision="onnx-fp32", model_runs=2)
    assert classifier.runs_at_once == 2
    assert classifier.runner.session.get_session_options().intra_op_num_threads == max(
        1, cores // 2
    )  # the cores shared by the runs


def test_onnx_backends_refuse_a_gpu(model_dir):
    with pytest.raises(BackendError, match="scores on the CPU only"):
        Classifier(model_dir, precision="onnx-fp32", device="cuda:0")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_gpu_scores_like_the_cpu(model_dir, fp32_scores, name):
    classifier = Classifier(model_dir, precision=name, device="cuda")
    scores = np.asarray(classifier.score_raw(MESSAGES))
    assert np.max(np.abs(scores - fp32_scores)) <= {"fp32": 1e-4, "bf16": 0.05}[name]
