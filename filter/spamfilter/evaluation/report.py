"""The evaluation report that ``spamfilter eval`` writes into a directory.

``metrics.json`` holds every figure; ``report.md`` shows them with the plots and the
model's most confident mistakes. Filters are compared in one table built from a list
of ``Scored`` runs on the same messages, so a baseline (bogofilter, TF-IDF) is one
more entry in that list. Each filter is judged twice: at a threshold chosen the same way
for all (on the validation split, at the model's target false-positive rate: the
like-for-like comparison) and at its own default cut-off (as people run it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work without a display

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from spamfilter.evaluation.metrics import REPORTED_FPRS, at_threshold, summary, sweep
from spamfilter.model.modeldir import Thresholds

if TYPE_CHECKING:
    from datasets import Dataset

ERRORS_LISTED = 20
PLOTS = {
    "roc.png": "ROC (log-scaled false-positive rate)",
    "precision_recall.png": "Precision-recall",
    "score_histogram.png": "Scores by class",
    "threshold.png": "Threshold vs FPR and recall",
}
TITLES = {
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "fpr": "FPR",
    "f1": "F1",
    "msgs_per_s": "msgs/s",
    **{f"recall_at_fpr_{fpr:g}": f"recall at {fpr:.1%} FPR" for fpr in REPORTED_FPRS},
}
_HEADERS = BytesHeaderParser(policy=policy.default)


@dataclass
class Scored:
    """One filter's P(spam) for each message of the evaluated data (labels 1 = spam).

    ``threshold`` was chosen on the validation split at the comparison's target FPR (the
    model's tag threshold for the model); ``native_threshold`` is the filter's own default
    cut-off; ``seconds`` is the wall time spent scoring these messages.
    """

    name: str
    labels: np.ndarray
    scores: np.ndarray
    threshold: float = 0.5
    native_threshold: float = 0.5
    seconds: float | None = None


def write_report(
    out: Path,
    model: Scored,
    dataset: Dataset,
    thresholds: Thresholds,
    context: Mapping[str, Any],
    baselines: Sequence[Scored] = (),
) -> dict[str, Any]:
    """Write metrics.json, the plots and report.md for ``model`` on ``dataset``; return metrics.

    ``context`` (model id, source, split, ...) is recorded as it is in both files;
    ``baselines`` are other filters scored on the same messages, compared in one table.
    """
    out.mkdir(parents=True, exist_ok=True)
    metrics = build_metrics(model, dataset, thresholds, context, baselines)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plot_roc(out / "roc.png", [model, *baselines])
    plot_precision_recall(out / "precision_recall.png", [model, *baselines])
    plot_histograms(out / "score_histogram.png", model, thresholds)
    plot_thresholds(out / "threshold.png", model, thresholds)
    (out / "report.md").write_text(render_markdown(metrics), encoding="utf-8")
    return metrics


def active_thresholds(thresholds: Thresholds) -> dict[str, float]:
    """The thresholds that are set, by name (tag always; reject and quarantine if set)."""
    names = ("tag", "quarantine", "reject")
    return {name: getattr(thresholds, name) for name in names if getattr(thresholds, name)}


def build_metrics(
    model: Scored,
    dataset: Dataset,
    thresholds: Thresholds,
    context: Mapping[str, Any],
    baselines: Sequence[Scored] = (),
) -> dict[str, Any]:
    labels, scores = model.labels, model.scores
    return {
        **context,
        "n": len(labels),
        "n_spam": int(np.sum(labels == 1)),
        "n_ham": int(np.sum(labels == 0)),
        "thresholds": active_thresholds(thresholds),
        "summary": summary(labels, scores, thresholds.tag),
        "at_thresholds": {
            name: at_threshold(labels, scores, value)
            for name, value in active_thresholds(thresholds).items()
        },
        "filters": [headline(run) for run in (model, *baselines)],
        "filters_native": [at_native(run) for run in (model, *baselines)],
        "sweep": sweep(labels, scores),
        "false_positives": confident_errors(model, dataset, thresholds.tag, false_positives=True),
        "false_negatives": confident_errors(model, dataset, thresholds.tag, false_positives=False),
    }


def headline(run: Scored) -> dict[str, Any]:
    """One row of the filters table: threshold-free figures, then those at ``run.threshold``."""
    figures = summary(run.labels, run.scores, run.threshold)
    keys = ["roc_auc", "pr_auc"] + [f"recall_at_fpr_{fpr:g}" for fpr in REPORTED_FPRS]
    keys += ["threshold", *THRESHOLD_COLUMNS]
    speed = round(len(run.labels) / run.seconds, 2) if run.seconds else None
    return {"filter": run.name, **{key: figures[key] for key in keys}, "msgs_per_s": speed}


def at_native(run: Scored) -> dict[str, Any]:
    """The filter at its own default cut-off (bogofilter 0.99, SpamAssassin 5 points, 0.5)."""
    figures = at_threshold(run.labels, run.scores, run.native_threshold)
    return {"filter": run.name, **{key: figures[key] for key in ("threshold", *THRESHOLD_COLUMNS)}}


def confident_errors(
    run: Scored, dataset: Dataset, threshold: float, false_positives: bool
) -> list[dict[str, Any]]:
    """The filter's mistakes at ``threshold`` that it was surest about, worst first.

    False positives are ham at or above the threshold, highest score first; false
    negatives are spam below it, lowest score first.
    """
    if false_positives:
        rows = np.flatnonzero((run.labels == 0) & (run.scores >= threshold))
        confidence = run.scores[rows]
    else:
        rows = np.flatnonzero((run.labels == 1) & (run.scores < threshold))
        confidence = 1.0 - run.scores[rows]
    worst = rows[np.argsort(-confidence, kind="stable")][:ERRORS_LISTED]
    rows_read = (dataset[int(i)] for i in worst)
    return [
        {"score": float(run.scores[i]), "id": row["id"], "subject": subject(row["raw"])}
        for i, row in zip(worst, rows_read, strict=True)
    ]


def subject(raw: bytes) -> str:
    """The decoded Subject header, or an empty string for a message without a readable one."""
    try:
        return str(_HEADERS.parsebytes(raw).get("Subject", "")).strip()
    except Exception:  # a broken header must not stop the report
        return ""


def plot_roc(path: Path, runs: Sequence[Scored]) -> None:
    figure, axes = plt.subplots(figsize=(6, 5))
    floor = 1.0
    for run in runs:
        fpr, tpr, _ = roc_curve(run.labels, run.scores)
        floor = min(floor, 0.5 / max(int(np.sum(run.labels == 0)), 1))
        # FPR 0 has no place on a log axis: draw it at half of one false positive.
        axes.plot(np.maximum(fpr, floor), tpr, label=run.name)
    axes.set_xscale("log")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(0.0, 1.01)
    for fpr in REPORTED_FPRS:
        axes.axvline(fpr, color="grey", linestyle=":", linewidth=0.8)
    _finish(figure, axes, path, "False-positive rate (ham marked spam)", "Recall (spam caught)")


def plot_precision_recall(path: Path, runs: Sequence[Scored]) -> None:
    figure, axes = plt.subplots(figsize=(6, 5))
    for run in runs:
        precision, recall, _ = precision_recall_curve(run.labels, run.scores)
        axes.step(recall, precision, where="post", label=run.name)
    axes.set_xlim(0.0, 1.01)
    axes.set_ylim(0.0, 1.01)
    _finish(figure, axes, path, "Recall", "Precision")


def plot_histograms(path: Path, run: Scored, thresholds: Thresholds) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0.0, 1.0, 51)
    for label, name, colour in ((0, "ham", "tab:blue"), (1, "spam", "tab:red")):
        axes.hist(run.scores[run.labels == label], bins=bins, alpha=0.6, label=name, color=colour)
    axes.set_yscale("log")
    axes.set_ylim(bottom=0.5)  # so that a bin of one message still shows
    _mark_thresholds(axes, thresholds)
    _finish(figure, axes, path, "P(spam)", "Messages (log scale)")


def plot_thresholds(path: Path, run: Scored, thresholds: Thresholds) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    grid = np.linspace(0.0, 1.0, 501)
    ham, spam = run.scores[run.labels == 0], run.scores[run.labels == 1]
    floor = 0.5 / max(len(ham), 1)
    fpr = np.array([np.mean(ham >= cut) if len(ham) else 0.0 for cut in grid])
    recall = np.array([np.mean(spam >= cut) if len(spam) else 0.0 for cut in grid])
    axes.plot(grid, np.maximum(fpr, floor), label="false-positive rate")
    axes.plot(grid, np.maximum(recall, floor), label="recall")
    axes.set_yscale("log")
    axes.set_ylim(floor, 1.5)
    _mark_thresholds(axes, thresholds)
    _finish(figure, axes, path, "Threshold on P(spam)", "Rate (log scale)")


def _mark_thresholds(axes, thresholds: Thresholds) -> None:
    for name, value in active_thresholds(thresholds).items():
        axes.axvline(value, color="black", linestyle="--", linewidth=0.8)
        axes.annotate(
            name,
            (value, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
        )


def _finish(figure, axes, path: Path, xlabel: str, ylabel: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(PLOTS[path.name])
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``columns`` from ``rows``; floats to 6 significant digits.

    Column titles come from ``TITLES`` where the key alone would be cryptic.
    """
    header = [TITLES.get(column, column) for column in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


SWEEP_COLUMNS = ("threshold", "precision", "recall", "fpr", "tp", "fp", "tn", "fn")
THRESHOLD_COLUMNS = ("precision", "recall", "f1", "fpr", "fp", "fn")


COMPARED_NOTE = (
    "Threshold-free figures first; then each filter at a threshold chosen the same way for "
    "all: on the validation split, at the model's target false-positive rate ({target}, "
    "confidence {confidence}: 0 is the observed rate) "
    "(the model: its tag threshold, chosen so by training). msgs/s: scoring only, this "
    "machine. Rows marked *model text* read exactly what the model reads "
    "(`email_to_text`): the like-for-like comparison. Rows marked *raw message* also read "
    "the trace and list headers, which give this corpus away (DESIGN §3-4)."
)


def compared_notes(metrics: Mapping[str, Any]) -> list[str]:
    """Lines on how the comparison was bounded and which peers could not run."""
    notes = []
    if metrics.get("sample"):
        notes.append(f"Evaluated on a sample: {metrics['sample']}.")
    notes += [f"Not run: {name}: {why}" for name, why in metrics.get("skipped", {}).items()]
    return ["\n\n".join(notes)] if notes else []


def render_markdown(metrics: Mapping[str, Any]) -> str:
    summary = metrics["summary"]
    at_thresholds = [{"name": name, **row} for name, row in metrics["at_thresholds"].items()]
    sections = [
        f"# Evaluation of {metrics.get('model', 'the model')}",
        f"{metrics['n']} messages ({metrics['n_spam']} spam, {metrics['n_ham']} ham) from "
        f"`{metrics.get('source', '?')}`, split `{metrics.get('split', '?')}` "
        f"(scheme `{metrics.get('scheme', '?')}`). All figures: [metrics.json](metrics.json).",
        "## Filters compared",
        COMPARED_NOTE.format(
            target=metrics.get("comparison_target_fpr", "?"),
            confidence=metrics.get("comparison_confidence", 0),
        ),
        markdown_table(metrics["filters"], list(metrics["filters"][0])),
        *compared_notes(metrics),
        "### At each filter's own default cut-off",
        markdown_table(metrics["filters_native"], list(metrics["filters_native"][0])),
        "## At the model's thresholds",
        markdown_table(at_thresholds, ("name", *SWEEP_COLUMNS, "accuracy", "f1")),
        f"ROC-AUC {summary['roc_auc']:.4f}, PR-AUC {summary['pr_auc']:.4f}.",
        "## Plots",
        "\n\n".join(f"![{title}]({name})" for name, title in PLOTS.items()),
        "## Threshold sweep",
        markdown_table(metrics["sweep"], SWEEP_COLUMNS),
        f"## Most confident false positives at the tag threshold (top {ERRORS_LISTED})",
        markdown_table(metrics["false_positives"], ("score", "id", "subject")),
        f"## Most confident false negatives at the tag threshold (top {ERRORS_LISTED})",
        markdown_table(metrics["false_negatives"], ("score", "id", "subject")),
    ]
    return "\n\n".join(sections) + "\n"
