"""Cheaper forward passes of one model on this CPU, each against onnx-fp32 (issue 15).

    python benchmarks/cpu_levers.py ../shared/data/crosscorpus-dev.jsonl.gz \
        --model runs/default --out docs/bench/cpu_levers_avx2.json

The variants, each an ONNX Runtime session on the model's own exports:
- ``onnx-fp32``: ``model.onnx``, the reference;
- ``onnx-int8``: ``model.int8.onnx`` (dynamic int8, per-channel weights), one text per
  run as the classifier scores it (``QUANTIZED_PER_RUN``);
- ``int8-static``: the fused fp32 graph's MatMuls quantized statically (QDQ, per-channel
  int8 weights, uint8 activations on scales from MinMax calibration over
  ``--calibration`` SpamAssassin training messages), so no run sets a scale and texts
  may share a run again;
- ``window-N``: fp32 reading only the first N tokens of each text (``--windows``).

Each is timed on the same ``--speed-messages`` test messages (token ids, length-sorted
runs of 8 unless said, after a warm-up run; ``--rounds`` alternating rounds, the best
counts). A variant faster than fp32 then scores the SpamAssassin test split and all of
crosscorpus-dev and is judged by issue 15's parity rule against fp32 at the tag
threshold the model ships with. From each window's scores, a cascade is judged too: the
window settles a message it scores below ``--settle`` (ham) and the full model scores
the rest; its cost is the window's run for every message plus a full run for the rest.
The data set lives outside the project: no test depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from spamfilter.model.classifier import Classifier
from spamfilter.model.encode import encode
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.onnxmodel import FILES
from spamrig.crosscorpus import headline, read_crosscorpus, read_spamassassin

ROOT = Path(__file__).resolve().parent.parent
# issue 15's parity rule: ROC-AUC, recall and FPR at the tag threshold against fp32's
TOLERANCE = {"roc_auc": 0.002, "recall": 0.01, "fpr": 0.001}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="crosscorpus-dev.jsonl.gz")
    parser.add_argument("--model", type=Path, default=ROOT / "runs/default")
    parser.add_argument("--windows", default="96,64", help="token windows (default 96,64)")
    parser.add_argument("--settle", default="0.01,0.05", help="cascade ham bounds")
    parser.add_argument("--calibration", type=int, default=128, help="static int8 messages")
    parser.add_argument("--speed-messages", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "results/cpu_levers")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/cpu_levers.json")
    return parser.parse_args()


class Variant:
    """One forward pass: an ONNX file, the tokens it reads, texts per run."""

    def __init__(self, name: str, path: Path, window: int, batch: int = 8) -> None:
        import onnxruntime

        self.name, self.window, self.batch = name, window, batch
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def scores(self, tokenizer, rows: list[list[int]]) -> np.ndarray:
        """P(spam) of each row of token ids, in length-sorted runs of ``batch``."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        result = np.zeros(len(rows))
        for start in range(0, len(order), self.batch):
            chunk = order[start : start + self.batch]
            (logits,) = self.session.run(["logits"], feed(tokenizer, [rows[i] for i in chunk]))
            logits = logits.astype(np.float64)
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            result[chunk] = shifted[:, 1] / shifted.sum(axis=1)
        return result


def feed(tokenizer, rows: list[list[int]]) -> dict[str, np.ndarray]:
    """The model's inputs for ``rows`` of token ids, padded to the longest."""
    padded = tokenizer.pad({"input_ids": rows}, return_tensors="np")
    return {name: padded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


def quantize_static(fp32: Path, out: Path, feeds: list[dict]) -> Path:
    """``fp32``'s MatMuls in int8 on activation scales calibrated on ``feeds``."""
    import onnx
    from onnxruntime import quantization as q

    class Feeds(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.rest, None)

    q.quantize_static(
        fp32,
        out,
        Feeds(),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        op_types_to_quantize=["MatMul"],  # the pooler's Gemm bias has no valid int32 scale
        calibrate_method=q.CalibrationMethod.MinMax,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out


def judged(labels: np.ndarray, scores: np.ndarray, reference: np.ndarray, tag: float) -> dict:
    """``scores``' headline figures at ``tag``, their change from ``reference``'s, and
    whether the change is within the parity rule."""
    ours, theirs = headline(labels, scores, tag), headline(labels, reference, tag)
    change = {key: ours[key] - theirs[key] for key in TOLERANCE}
    holds = all(abs(change[key]) <= limit for key, limit in TOLERANCE.items())
    return {"figures": ours, "change": change, "holds": holds}


def main() -> None:
    args = parse_args()
    classifier = Classifier(args.model, precision="onnx-fp32")  # exports model.onnx if stale
    tokenizer, card = classifier.tokenizer, classifier.card
    tag = card.thresholds.tag
    spamassassin = read_spamassassin("train", "test")
    trec, phishing = read_crosscorpus(args.data)
    sets = {"spamassassin_test": spamassassin["test"], "crosscorpus_dev": trec | phishing}
    texts = {name: [email_to_text(raw) for _, raw in rows.values()] for name, rows in sets.items()}
    labels = {name: np.array([label for label, _ in rows.values()]) for name, rows in sets.items()}
    training = list(spamassassin["train"].values())
    picked = np.random.default_rng(0).permutation(len(training))[: args.calibration]
    calibration_texts = [email_to_text(training[i][1]) for i in picked]
    speed_texts = texts["spamassassin_test"][: args.speed_messages]

    def tokens(batch: list[str], window: int) -> list[list[int]]:
        return encode(tokenizer, batch, window, card.tail_tokens)["input_ids"]

    full = card.max_length
    args.work.mkdir(parents=True, exist_ok=True)
    static = quantize_static(
        args.model / FILES["onnx-fp32"],
        args.work / "model.int8-static.onnx",
        [feed(tokenizer, [row]) for row in tokens(calibration_texts, full)],
    )
    variants = [
        Variant("onnx-fp32", args.model / FILES["onnx-fp32"], full),
        Variant("onnx-int8", args.model / FILES["onnx-int8"], full, batch=1),
        Variant("int8-static", static, full),
    ] + [
        Variant(f"window-{n}", args.model / FILES["onnx-fp32"], int(n))
        for n in args.windows.split(",")
    ]
    speed_rows = {v.name: tokens(speed_texts, v.window) for v in variants}
    rate: dict[str, float] = {}
    for _ in range(args.rounds):
        for variant in variants:
            rows = speed_rows[variant.name]
            variant.scores(tokenizer, rows[:8])
            started = time.perf_counter()
            variant.scores(tokenizer, rows)
            rate[variant.name] = max(
                rate.get(variant.name, 0.0), len(rows) / (time.perf_counter() - started)
            )
    fp32 = variants[0]
    results: dict = {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for variant in variants:
        row = {
            "msgs_per_s": round(rate[variant.name], 2),
            "vs_fp32": round(rate[variant.name] / rate[fp32.name], 2),
        }
        if variant.name == "int8-static":
            sample = speed_rows[variant.name][:48]
            alone = Variant("alone", static, full, batch=1).scores(tokenizer, sample)
            row["max_change_batched_vs_alone"] = float(
                np.max(np.abs(alone - variant.scores(tokenizer, sample)))
            )
        if variant is fp32 or row["vs_fp32"] > 1.0:
            scores[variant.name] = {
                name: variant.scores(tokenizer, tokens(texts[name], variant.window))
                for name in sets
            }
        if variant is not fp32 and variant.name in scores:
            row["parity"] = {
                name: judged(labels[name], scores[variant.name][name], scores[fp32.name][name], tag)
                for name in sets
            }
        results[variant.name] = row
        print(variant.name, json.dumps(row), flush=True)

    cascades = {}
    for variant in variants:
        if not variant.name.startswith("window-") or variant.name not in scores:
            continue
        for bound in (float(b) for b in args.settle.split(",")):
            row = {}
            for name in sets:
                cheap, reference = scores[variant.name][name], scores[fp32.name][name]
                settled = cheap < bound
                cost = rate[fp32.name] / rate[variant.name] + (1 - settled.mean())
                row[name] = {
                    "settled": float(settled.mean()),
                    "vs_fp32": round(1 / cost, 2),
                    **judged(labels[name], np.where(settled, cheap, reference), reference, tag),
                }
            cascades[f"{variant.name} below {bound}"] = row
            print(f"cascade {variant.name} below {bound}", json.dumps(row), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "cpu_levers",
                "model": str(args.model),
                "tag": tag,
                "tolerance": TOLERANCE,
                "variants": results,
                "cascades": cascades,
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
                "command": " ".join(sys.argv),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
