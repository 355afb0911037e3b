"""SpamAssassin's spamd against the model, messages/s on the same messages in one run.

    python benchmarks/spamd_vs_model.py --model runs/default [--model runs/student] \
        --messages 120 --rounds 3 --out docs/bench/spamd_vs_model.json

SpamAssassin as people run it: local rules and a Bayes database (``sa-learn`` on a
seeded sample of ``--train`` messages of the training split, half spam), a private
``spamd -L`` with two children (one per core here) and ``spamc -c`` per message, two at
a time (``spamfilter.evaluation.baselines.spamassassin``). The model scores the same raw test
messages (``email_to_text``, then ``Classifier.score_texts``) in batches of the daemon's
default size, in the default precision (``--precision``). Both count from raw bytes to a
score; each is warmed up first (spamd compiles its rules at start, the model loads).
Then the filter daemon itself (``spamfilter serve`` with its defaults, in front of a sink)
takes the same messages through SMTP at each of ``--clients`` concurrent connections
(``spamrig.throughput``, as filter_throughput.py does): the figure a site compares with
spamd. With several ``--model`` each is measured in turn, bare then through SMTP.

spamd, the models and their daemons start once and are measured in ``--rounds``
interleaved rounds (spamd, then each model), so that a ratio compares two rates taken
seconds apart: this 2-core host's speed drifts by 10-15 % within minutes, and one spamd
figure taken minutes before the daemon's moved the ratio by as much. Each round's ratios
are kept, with their least and median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from spamfilter.config import FilterConfig
from spamfilter.evaluation.baselines.spamassassin import CHILDREN, SpamAssassinBaseline
from spamfilter.model.classifier import Classifier
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.precision import DEFAULT_PRECISION, PRECISIONS
from spamrig import ROOT
from spamrig.throughput import ServedDaemon, crlf, served
from spamtrain.data import load_splits

WARM_UP = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, action="append", help="model directory (repeatable; runs/default)"
    )
    parser.add_argument("--data", default="spamassassin", help="labelled source (default built-in)")
    parser.add_argument("--messages", type=int, default=120, help="test messages timed")
    parser.add_argument("--train", type=int, default=400, help="messages sa-learn learns from")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION)
    parser.add_argument(
        "--clients", default="4,64", help="concurrent SMTP clients of the daemon (default 4,64)"
    )
    parser.add_argument(
        "--smtp-rounds", type=int, default=3, help="messages sent this many times per run"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of spamd and the models"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/spamd_vs_model.json")
    return parser.parse_args()


def balanced_sample(dataset, count: int) -> tuple[list[bytes], list[int]]:
    """``count`` rows, half spam and half ham, seeded."""
    rng = np.random.default_rng(0)
    labels = np.asarray(dataset["label"])
    chosen = [
        index
        for label in (1, 0)
        for index in rng.permutation(np.flatnonzero(labels == label))[: count // 2]
    ]
    rows = dataset.select(chosen)
    return rows["raw"], rows["label"]


def rate(score, raws: list[bytes]) -> float:
    score(raws[:WARM_UP])
    started = time.perf_counter()
    score(raws)
    return len(raws) / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    splits = load_splits(args.data, ("train", "test"))
    train_raws, train_labels = balanced_sample(splits["train"], args.train)
    test = splits["test"]
    sample = np.random.default_rng(0).permutation(len(test))[: args.messages].tolist()
    raws = test.select(sample)["raw"]
    concurrency = [int(clients) for clients in args.clients.split(",")]
    sent = [crlf(raw) for raw in raws] * args.smtp_rounds  # enough to fill 64 connections

    spamassassin = SpamAssassinBaseline("raw")
    with ExitStack() as running:
        running.callback(spamassassin.close)
        started = time.perf_counter()
        spamassassin.fit(train_raws, train_labels)
        learn_seconds = time.perf_counter() - started
        models = [
            ModelUnderTest(model, args.precision, sent, running)
            for model in args.model or [ROOT / "runs/default"]
        ]
        rounds = []
        for number in range(1, args.rounds + 1):
            spamd = rate(spamassassin.score, raws)
            print(f"round {number}: spamd {spamd:.1f} msgs/s", flush=True)
            rounds.append(
                {
                    "round": number,
                    "spamd_msgs_per_s": round(spamd, 2),
                    "models": [model.measure(raws, sent, concurrency, spamd) for model in models],
                }
            )
        delivered = {str(model.path): model.daemon.delivered for model in models}

    result = {
        "benchmark": "spamd_vs_model",
        "messages": len(raws),
        "source": f"{args.data} test split, seeded sample (seed 0)",
        "spamassassin": {
            "setup": f"spamd -L, {CHILDREN} children, spamc -c, {CHILDREN} at a time; Bayes "
            f"from sa-learn on {len(train_raws)} training messages (half spam)",
            "sa_learn_seconds": round(learn_seconds, 1),
        },
        "models": [
            {
                "model": str(model.path),
                "precision": args.precision,
                "resolved_precision": model.classifier.precision,
                "batch_size": model.batch,
                "messages_sent_per_run": len(sent),
                "delivered_to_sink": delivered[str(model.path)],
            }
            for model in models
        ],
        "rounds": rounds,
        "vs_spamd": summary(rounds),
        "load_average_1_5_15min": [round(load, 2) for load in os.getloadavg()],
    }
    print(json.dumps(result["vs_spamd"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


class ModelUnderTest:
    """A model loaded for bare scoring, and its daemon serving (kept up in ``running``)."""

    def __init__(self, path: Path, precision: str, sent: list[bytes], running: ExitStack) -> None:
        self.path = path
        self.batch = FilterConfig(model=str(path)).batch_size
        self.classifier = Classifier(path, precision=precision)
        self.daemon: ServedDaemon = running.enter_context(
            served(path, ["--precision", precision], sent)
        )

    def measure(
        self, raws: list[bytes], sent: list[bytes], concurrency: list[int], spamd: float
    ) -> dict:
        """msgs/s bare and through the daemon at each client count, and vs ``spamd``."""
        bare = rate(
            lambda messages: self.classifier.score_texts(
                [email_to_text(raw) for raw in messages], self.batch
            ),
            raws,
        )
        print(f"  {self.path}: bare {bare:.1f} msgs/s ({bare / spamd:.2f}x spamd)", flush=True)
        runs = [self.daemon.run(sent, clients) for clients in concurrency]
        for run in runs:
            run["vs_spamd"] = round(run["msgs_per_s"] / spamd, 2)
            figure = f"{run['msgs_per_s']:.1f} msgs/s ({run['vs_spamd']}x spamd)"
            print(f"  {self.path}, daemon, {run['clients']} clients: {figure}", flush=True)
        return {
            "model": str(self.path),
            "msgs_per_s": round(bare, 2),
            "model_vs_spamd": round(bare / spamd, 2),
            "daemon_through_smtp": runs,
        }


def summary(rounds: list[dict]) -> dict:
    """Per model: the bare and each client count's ratios to spamd over the rounds, with
    their least and median."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for measured in rounds:
        for model in measured["models"]:
            of_model = ratios.setdefault(model["model"], {})
            of_model.setdefault("bare", []).append(model["model_vs_spamd"])
            for run in model["daemon_through_smtp"]:
                of_model.setdefault(f"{run['clients']} clients", []).append(run["vs_spamd"])
    return {
        model: {
            name: {"rounds": values, "least": min(values), "median": statistics.median(values)}
            for name, values in of_model.items()
        }
        for model, of_model in ratios.items()
    }


if __name__ == "__main__":
    main()
