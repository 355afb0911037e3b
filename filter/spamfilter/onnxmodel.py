"""ONNX Runtime scoring: a model directory exported with ``torch.onnx.export``.

``spamfilter export-onnx --model DIR`` writes ``model.onnx`` (fp32) and
``model.int8.onnx`` (int8 weights, dynamic quantization by
``onnxruntime.quantization.quantize_dynamic``) into the model directory. A classifier
asked for an ONNX precision exports them itself when they are missing or were exported
from other weights (each file records the model id of the weights it came from), so a
retrained directory never serves stale weights. Tokenization stays in
``classifier.encode``: ONNX Runtime only replaces the forward pass.

Needs the ``onnx`` extra: ``pip install 'spamfilter[onnx]'``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from spamfilter.modeldir import SPAM_LABEL, ModelDirError, model_id

log = logging.getLogger(__name__)

OnnxPrecision = Literal["onnx-fp32", "onnx-int8"]
FILES: dict[str, str] = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
MODEL_ID_KEY = "spamfilter_model_id"
OPSET = 17
INPUTS = ("input_ids", "attention_mask")


def export_onnx(model_dir: str | Path) -> dict[str, Path]:
    """Export ``model_dir``'s weights to both ONNX files; return their paths by precision.

    Each file is written under a temporary name and renamed into place, so a filter
    starting beside an export never opens half a file.
    """
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification

    directory = Path(model_dir)
    paths = {precision: directory / name for precision, name in FILES.items()}
    partial = {
        precision: path.with_name(f".{path.name}.partial") for precision, path in paths.items()
    }
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    example = torch.ones(2, 8, dtype=torch.long)  # shapes are dynamic: any example will do
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        # The tracer warns about Python branches in the model code that depend on shapes;
        # the dynamic batch and sequence axes keep them correct (the tests compare scores).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example, example),
            partial["onnx-fp32"],
            input_names=list(INPUTS),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
        quantize_dynamic(partial["onnx-fp32"], partial["onnx-int8"], weight_type=QuantType.QInt8)
    source = model_id(directory)
    for precision, path in paths.items():
        proto = onnx.load(partial[precision])
        onnx.helper.set_model_props(proto, {MODEL_ID_KEY: source})
        onnx.save(proto, partial[precision])
        os.replace(partial[precision], path)
    log.info("exported %s to %s", source, ", ".join(str(path) for path in paths.values()))
    return paths


class OnnxRunner:
    """P(spam) from padded token ids with an ONNX Runtime CPU session."""

    def __init__(self, model_dir: str | Path, precision: OnnxPrecision, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ModelDirError(
                f"precision {precision} needs ONNX Runtime: pip install 'spamfilter[onnx]'"
            ) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        path = Path(model_dir) / FILES[precision]

        def session():
            return onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )

        self.session = session() if path.is_file() else None
        if self.session is None or self._source() != model_id(model_dir):
            log.info("%s missing or exported from other weights: exporting", path)
            export_onnx(model_dir)
            self.session = session()

    def spam_probabilities(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        (logits,) = self.session.run(["logits"], {k: v.astype(np.int64) for k, v in feed.items()})
        logits = logits.astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # a stable softmax
        return shifted[:, SPAM_LABEL] / shifted.sum(axis=1)

    def _source(self) -> str | None:
        """The model id of the weights the open file was exported from."""
        return self.session.get_modelmeta().custom_metadata_map.get(MODEL_ID_KEY)
