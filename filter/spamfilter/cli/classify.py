"""``spamfilter classify``: P(spam) and a verdict for each message file (and with
``--explain`` the phrases that read most as spam or ham)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from spamfilter.cli.common import EXIT_ERROR, HelpFormatter, add_model_arguments

if TYPE_CHECKING:
    from spamfilter.model.classifier import Classifier
    from spamfilter.model.explain import Explanation


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
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also list the phrases of each message's text that read most as spam or ham "
        "(each scored alone; what X-Spam-Report shows)",
    )
    parser.set_defaults(command=classify)


def classify(args: argparse.Namespace) -> int:
    from spamfilter.model.classifier import Classifier

    classifier = Classifier(args.model, args.precision, device=args.device)
    names, raws = read_messages(args.messages)
    scores = classifier.score_raw(raws) if raws else []
    explanations = explain(classifier, raws) if args.explain else [None] * len(raws)
    tag = classifier.thresholds.tag
    for name, score, explanation in zip(names, scores, explanations, strict=True):
        verdict = "spam" if score >= tag else "ham"
        if args.json:
            shown = {"file": name, "score": score, "verdict": verdict}
            if explanation is not None:
                shown["phrases"] = [dataclasses.asdict(p) for p in explanation.phrases]
                if explanation.words:
                    shown["site_words"] = [dataclasses.asdict(w) for w in explanation.words]
            print(json.dumps(shown, ensure_ascii=False))
        else:
            print(f"{name}\t{score:.4f}\t{verdict}")
            if explanation is not None:
                print(explanation_table(explanation))
    return EXIT_ERROR if len(names) < len(args.messages) else 0


def explain(classifier: Classifier, raws: list[bytes]) -> list[Explanation]:
    from spamfilter.config import FilterConfig
    from spamfilter.model.explain import Explainer

    explainer = Explainer(classifier, FilterConfig.explain_phrases, FilterConfig.batch_size)
    return explainer.explain_raw(raws)


def explanation_table(explanation: Explanation) -> str:
    """The phrases, strongest first: weight (log-odds of spam alone) and the phrase."""
    lines = ["  weight  phrase (scored alone: log-odds of spam against an empty text)"]
    lines += [f"  {phrase.weight:+6.2f}  {phrase.text}" for phrase in explanation.phrases]
    if explanation.words:
        lines.append("  moved   site word (its share of the message's log-odds of spam)")
        lines += [f"  {word.weight:+6.2f}  {word.text}" for word in explanation.words]
    return "\n".join(lines)


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
