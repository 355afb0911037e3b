"""``spamfilter learn``: adapt a model to the site's own mail, as ``sa-learn`` does.

    spamfilter learn --model runs/current --spam Maildir/.Junk --spam quarantine/ \\
        --ham Maildir --output runs/site-2026-12-02 --install

This module is the command line only. The work is ``spamtrain.learn``, imported when the
command runs: it needs the training stack (accelerate, datasets: the ``train`` extra),
which the serving image does not have.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from spamfilter import configload
from spamfilter.cli.common import RELOAD_HINT, CLIError, HelpFormatter
from spamfilter.model.calibration import statements
from spamfilter.model.modeldir import model_id
from spamtrain.learnconfig import LearnConfig

CURRENT_LINK = "current"  # --install without a path: this name beside --output

if TYPE_CHECKING:
    from spamtrain.learn import Learned


def add_learn_parser(commands) -> None:
    parser = commands.add_parser(
        "learn",
        help="continue training a model on the site's own spam and ham",
        formatter_class=HelpFormatter,
        description="Continue training --model on the site's spam and ham mixed with a replay "
        "sample of its original corpus, recalibrate the tag threshold on the site's ham (out "
        "of fold), and write a new model directory (--model is only read).",
    )
    parser.add_argument("--model", required=True, type=Path, help="model directory to start from")
    source = "a Maildir (cur/ and new/), an mbox file or a directory of message files"
    parser.add_argument(
        "--spam",
        action="append",
        required=True,
        type=Path,
        metavar="PATH",
        help=f"spam: {source}; repeatable (the quarantine Maildir of serve is one as it is)",
    )
    parser.add_argument(
        "--ham", action="append", required=True, type=Path, metavar="PATH", help=f"ham: {source}"
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="the new model directory (must not exist)"
    )
    parser.add_argument(
        "--install",
        nargs="?",
        const=True,
        type=Path,
        metavar="LINK",
        help=f"then point the symlink LINK (without LINK: '{CURRENT_LINK}' beside --output) "
        "at the new directory, atomically; serve --model LINK loads it on SIGHUP",
    )
    docs = configload.field_docs(LearnConfig)
    for field in dataclasses.fields(LearnConfig):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            metavar=field.name.upper(),
            default=None,  # the dataclass holds the default
            help=f"{docs[field.name]} (default: {field.default})".replace("%", "%%"),
        )
    parser.set_defaults(command=run_learn)


def run_learn(args: argparse.Namespace) -> int:
    flags = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(LearnConfig)
        if getattr(args, field.name) is not None
    }
    try:
        config = configload.build(LearnConfig, [("command line", flags)])
    except configload.ConfigError as error:
        raise CLIError(str(error)) from None
    try:
        from spamtrain.learn import LearnError, learn
    except ImportError as error:
        raise CLIError(
            f"learn needs the training stack ({error}); install it with: "
            "pip install 'spamfilter[train]'"
        ) from None
    install = args.output.parent / CURRENT_LINK if args.install is True else args.install
    logging.basicConfig(level=logging.INFO, format="spamfilter: %(message)s")
    try:
        learned = learn(config, args.model, args.spam, args.ham, args.output, install)
    except LearnError as error:
        raise CLIError(str(error)) from None
    print_learned(learned)
    return 0


def print_learned(learned: Learned) -> None:
    card, parent = learned.card, learned.parent_card
    lineage = card.training["learned_from"]
    site, replay = lineage["site"], lineage["replay"]
    print(
        f"learned from {site['spam']} spam and {site['ham']} ham (fingerprint "
        f"{site['fingerprint']}); non-mail files skipped: {site['not_mail_skipped']}, "
        f"repeated copies dropped: {site['duplicates_dropped']}"
    )
    if replay["messages"]:
        print(f"replayed {replay['messages']} messages of {replay['data']} (its train split)")
    calibration, oof = card.calibration, card.metrics["site_out_of_fold"]
    words = calibration.get("site_words", {})
    if words.get("served"):
        blend = words["blend"]
        print(
            f"site words: {words['words']:,} words of the site's mail, blended with the encoder "
            f"(log-odds x {blend['encoder']:.3g} + words x {blend['words']:.3g})"
        )
    elif words:
        print(f"site words: not served ({words['why']})")
    print(
        f"tag threshold {card.thresholds.tag:.6g} (was {parent.thresholds.tag:.6g}), for FPR <= "
        f"{calibration['target_fpr']:g} on the site's mail out of fold "
        f"({calibration['folds']} folds): FPR {oof['fpr']:.2%} ({oof['fp']} of "
        f"{calibration['n_ham']} ham), recall {oof['recall']:.2%} ({oof['tp']} of "
        f"{calibration['n_spam']} spam)"
    )
    for said in statements(card):
        print(said)
    if "warning" in calibration:
        print(f"warning: {calibration['warning']}", file=sys.stderr)
    if "validation" in card.metrics:
        now = card.metrics["validation"]
        before = parent.metrics.get("validation", {}).get("roc_auc")
        print(
            f"forgetting check, {replay['data']} validation split ({now['n']} messages): "
            f"ROC-AUC {now['roc_auc']:.4f}" + (f" (before: {before:.4f})" if before else "")
        )
    print(
        f"model directory: {learned.directory} ({model_id(learned.directory)}, from "
        f"{lineage['parent_model']}), in {card.training['learn_seconds']:.0f} s"
    )
    if learned.installed is not None:
        print(f"installed: {learned.installed} -> {os.readlink(learned.installed)}")
        print(RELOAD_HINT)
