"""``spamfilter export-onnx``: the ONNX files for the onnx-* scoring precisions."""

from __future__ import annotations

import argparse

from spamfilter.cli.common import HelpFormatter, add_model_arguments
from spamfilter.model.modeldir import read_card


def add_export_onnx_parser(commands) -> None:
    parser = commands.add_parser(
        "export-onnx",
        help="write model.onnx and model.int8.onnx into a model directory",
        formatter_class=HelpFormatter,
        description="Export for --precision onnx-fp32 / onnx-int8 (done on first use anyway; "
        "run it ahead where the model directory is read-only at serving time).",
    )
    add_model_arguments(parser, scoring=False)
    parser.set_defaults(command=export_onnx)


def export_onnx(args: argparse.Namespace) -> int:
    from spamfilter.model import onnxmodel

    read_card(args.model)  # a model directory this filter can serve, or a one-line error
    for precision, path in onnxmodel.export_onnx(args.model).items():
        print(f"{precision}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
