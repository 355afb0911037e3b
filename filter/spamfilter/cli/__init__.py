"""The ``spamfilter`` command: one module per subcommand, each function a few calls deep.

Torch, the training data layer and the daemon are imported by the commands that need
them, so ``threshold show`` and ``threshold set`` answer at once and the filter image
runs without the ``train`` extra. Errors print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import sys

from spamfilter.cli.classify import add_classify_parser
from spamfilter.cli.common import EXIT_ERROR, CLIError, HelpFormatter
from spamfilter.cli.evaluate import add_eval_parser
from spamfilter.cli.export_onnx import add_export_onnx_parser
from spamfilter.cli.learn import add_learn_parser
from spamfilter.cli.quarantine import add_quarantine_parser
from spamfilter.cli.serve import serve
from spamfilter.cli.threshold import add_threshold_parser
from spamfilter.model.modeldir import ModelDirError
from spamfilter.model.precision import BackendError

__all__ = ["EXIT_ERROR", "build_parser", "main"]

DESCRIPTION = """Score mail with a BERT model directory, manage its thresholds, evaluate it.

examples:
  spamfilter classify --model runs/x message.eml [more.eml | -] [--json] [--explain]
  spamfilter threshold show --model runs/x
  spamfilter threshold set 0.85 --model runs/x [--which tag|reject|quarantine]
  spamfilter threshold tune --model runs/x --data SOURCE --target-fpr 0.001 [--dry-run]
  spamfilter eval --model runs/x --data SOURCE --split test --out reports/x
  spamfilter eval --model runs/x --data spamassassin --baseline tfidf --baseline bogofilter ...
  spamfilter export-onnx --model runs/x
  spamfilter quarantine list | show ID | release ID... | delete ID... | expire --older-than 30d
  spamfilter learn --model runs/x --spam Junk/ --ham Inbox/ --output runs/site [--install]
  spamfilter serve --model runs/x ...   (spamfilter serve --help)"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.command(args)
    except (CLIError, ModelDirError, BackendError) as error:
        print(f"spamfilter: error: {error}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spamfilter", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    add_classify_parser(commands)
    add_threshold_parser(commands)
    add_eval_parser(commands)
    add_export_onnx_parser(commands)
    add_quarantine_parser(commands)
    add_learn_parser(commands)
    # Listed for --help only: main() hands "serve" to serve(), which builds its own parser.
    commands.add_parser("serve", help="run the SMTP content filter (spamfilter serve --help)")
    return parser
