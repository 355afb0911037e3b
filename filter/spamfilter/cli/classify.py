"""``spamfilter classify``: P(spam) and a verdict for each message file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spamfilter.cli.common import EXIT_ERROR, HelpFormatter, add_model_arguments


def add_classify_parser(commands) -> None:
    parser = commands.add_parser(
        "classify",
        help="score messages",
        formatter_class=HelpFormatter,
        description="Print 'file<TAB>P(spam)<TAB>spam|ham' per message (spam: at or above tag).",
    )
    add_model_arguments(parser, scoring=True)
    parser.add_argument("messages", nargs="+", help="raw RFC 822 files; '-' reads one from stdin")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(command=classify)


def classify(args: argparse.Namespace) -> int:
    from spamfilter.model.classifier import Classifier

    classifier = Classifier(args.model, args.precision, device=args.device)
    names, raws = read_messages(args.messages)
    scores = classifier.score_raw(raws) if raws else []
    tag = classifier.thresholds.tag
    for name, score in zip(names, scores, strict=True):
        verdict = "spam" if score >= tag else "ham"
        if args.json:
            print(json.dumps({"file": name, "score": score, "verdict": verdict}))
        else:
            print(f"{name}\t{score:.4f}\t{verdict}")
    return EXIT_ERROR if len(names) < len(args.messages) else 0


def read_messages(paths: list[str]) -> tuple[list[str], list[bytes]]:
    """The readable messages' names and bytes; each unreadable one is reported on stderr."""
    names, raws = [], []
    for path in paths:
        try:
            raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as error:
            print(f"spamfilter: error: cannot read {path}: {error.strerror}", file=sys.stderr)
            continue
        names.append(path)
        raws.append(raw)
    return names, raws
