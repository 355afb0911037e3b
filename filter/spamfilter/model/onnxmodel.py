"""ONNX Runtime scoring: a model directory exported with ``torch.onnx.export``.

``spamfilter export-onnx --model DIR`` (and training, at its end) writes ``model.onnx``
(fp32) and ``model.int8.onnx`` (int8 weights per output channel, dynamic quantization by
``onnxruntime.quantization.quantize_dynamic``; a few MatMuls kept in fp32,
``_kept_in_fp32``) into the model directory. The encoder is exported with eager
attention, which ONNX Runtime's transformer optimizer fuses into its ``Attention``,
``EmbedLayerNormalization``, ``SkipLayerNormalization`` and ``BiasGelu`` kernels; the
fused graph is kept only if its logits match PyTorch's on a probe batch.

A classifier asked for an ONNX precision exports the files itself when they are missing,
were exported from other weights or by an older recipe (each file records both), so a
retrained directory never serves stale weights. Tokenization stays in
``classifier.encode``: ONNX Runtime only replaces the forward pass.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from spamfilter.model.modeldir import SPAM_LABEL, ModelDirError, load_model, model_id

log = logging.getLogger(__name__)

OnnxPrecision = Literal["onnx-fp32", "onnx-int8"]
FILES: dict[str, str] = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
MODEL_ID_KEY = "spamfilter_model_id"
RECIPE_KEY = "spamfilter_export_recipe"
# 1: as traced; 2: eager attention, fused by ORT's transformer optimizer; 3: as 2, with
# int8 weights quantized per output channel (per tensor, one outlier column of a weight
# matrix coarsened all the others: scores moved by up to 0.55, docs/benchmarks.md); 4: as
# 3, with the embeddings and the first half of the layers' feed-forward outputs in fp32
# (``_kept_in_fp32``)
RECIPE = "4"
# The feed-forward output MatMul of an encoder layer, as torch.onnx names BERT's nodes
_FEED_FORWARD_OUT = re.compile(r"/layer\.(\d+)/output/dense/MatMul$")
OPSET = 17
INPUTS = ("input_ids", "attention_mask")
FUSED_LOGIT_TOLERANCE = 1e-3


def export_onnx(model_dir: str | Path) -> dict[str, Path]:
    """Export ``model_dir``'s weights to both ONNX files; return their paths by precision.

    Each file is written under a temporary name and renamed into place, so a filter
    starting beside an export never opens half a file; a lock file keeps two exporters
    (two daemons starting at once) from writing the same temporary files.
    """
    from filelock import FileLock

    directory = Path(model_dir)
    if not os.access(directory, os.W_OK):
        raise ModelDirError(
            f"{directory}: no current ONNX export and the directory is read-only: run "
            f"'spamfilter export-onnx --model {directory}' where it is writable, or serve "
            "with --precision fp32"
        )
    with FileLock(directory / ".onnx-export.lock"):
        return _export(directory)


def _export(directory: Path) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    paths = {precision: directory / name for precision, name in FILES.items()}
    partial = {
        precision: path.with_name(f".{path.name}.partial") for precision, path in paths.items()
    }
    traced = directory / ".model.traced.onnx.partial"
    with warnings.catch_warnings():
        # The tracer warns about Python branches in the model code that depend on shapes;
        # the dynamic batch and sequence axes keep them correct (the tests compare scores).
        warnings.simplefilter("ignore")
        config, probe, expected = _trace(directory, traced)
        fused = _fuse(config, traced, partial["onnx-fp32"], probe, expected)
        if not fused:
            os.replace(traced, partial["onnx-fp32"])
        traced.unlink(missing_ok=True)
        quantize_dynamic(
            partial["onnx-fp32"],
            partial["onnx-int8"],
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention", "Gemm"],  # embeddings: a lookup, no gain
            nodes_to_exclude=_kept_in_fp32(onnx.load(partial["onnx-fp32"]).graph),
            # shape inference cannot type the outputs of fused (com.microsoft) operators
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    properties = {MODEL_ID_KEY: model_id(directory), RECIPE_KEY: RECIPE}
    for precision, path in paths.items():
        proto = onnx.load(partial[precision])
        onnx.helper.set_model_props(proto, properties)
        onnx.save(proto, partial[precision])
        os.replace(partial[precision], path)
    log.info(
        "exported %s (%s attention) to %s",
        properties[MODEL_ID_KEY],
        "fused" if fused else "unfused",
        ", ".join(str(path) for path in paths.values()),
    )
    return paths


def _kept_in_fp32(graph) -> list[str]:
    """The MatMuls left in fp32 in ``model.int8.onnx``: the feed-forward output of each
    layer in the first half of the encoder.

    With every MatMul in int8 (recipe 3), recall at the shipped tag threshold fell
    0.013-0.015 below fp32's on an AVX-512 VNNI CPU, outside issue 15's parity rule,
    though the ranking held: the top spam scores sank a little. Of the sets kept in fp32
    in a scratch run (one whole layer; the feed-forward outputs of the last one, two or
    three layers, of the first three, or of all six), these three of the default model's
    18 MatMuls held the rule on both test sets at the least cost: 1.74x fp32's rate
    against 1.88x for all in int8 (docs/benchmarks.md). A graph without BERT's node names
    keeps none.
    """
    layers = {
        node.name: int(m[1]) for node in graph.node if (m := _FEED_FORWARD_OUT.search(node.name))
    }
    if not layers:
        return []
    half = (max(layers.values()) + 1) / 2
    return [name for name, index in layers.items() if index < half]


def _trace(directory: Path, out: Path):
    """Export the fp32 graph with eager attention; return its config, a probe batch, its logits."""
    import torch

    # eager attention: the graph pattern ONNX Runtime's attention fusion knows
    model = load_model(directory, attn_implementation="eager").eval()
    example = torch.ones(2, 8, dtype=torch.long)  # shapes are dynamic: any example will do
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"logits": {0: "batch"}}
    torch.onnx.export(
        model,
        (example, example),
        out,
        input_names=list(INPUTS),
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, model.config.vocab_size, (3, 24), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0  # a padded row: the mask must reach the fused attention
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits.numpy()
    probe = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    return model.config, probe, expected


def _fuse(config, traced: Path, out: Path, probe: dict, expected: np.ndarray) -> bool:
    """Write the fused graph of ``traced`` to ``out`` if its logits match ``expected``."""
    import onnxruntime
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimized = optimize_model(
            str(traced),
            model_type="bert",
            num_heads=getattr(config, "num_attention_heads", 0),
            hidden_size=getattr(config, "hidden_size", 0),
            use_gpu=False,
        )
        optimized.save_model_to_file(str(out))
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], probe)
    except Exception as error:  # an architecture the optimizer does not know
        log.warning("ONNX Runtime could not fuse %s (%s): kept the traced graph", traced, error)
        out.unlink(missing_ok=True)
        return False
    difference = float(np.max(np.abs(logits - expected)))
    if difference > FUSED_LOGIT_TOLERANCE:
        log.warning("fused graph's logits differ by %.3g: kept the traced graph", difference)
        out.unlink()
        return False
    return True


class OnnxRunner:
    """P(spam) from padded token ids with an ONNX Runtime CPU session on one ONNX file."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        """The file as it is (a benchmark's own graph); ``for_model`` keeps a model
        directory's export current with its weights."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    @classmethod
    def for_model(
        cls,
        model_dir: str | Path,
        precision: OnnxPrecision,
        threads: int = 0,
        weights_id: str | None = None,
    ) -> OnnxRunner:
        """The runner of ``model_dir``'s file for ``precision``, exported first if it is
        missing or was exported from other weights or by another recipe.

        ``weights_id``: the directory's ``model_id``, if the caller has it already.
        """
        path = Path(model_dir) / FILES[precision]
        current = (weights_id or model_id(model_dir), RECIPE)
        if path.is_file():
            runner = cls(path, threads)
            if runner._origin() == current:
                return runner
        log.info("%s missing, or exported from other weights or recipe: exporting", path)
        export_onnx(model_dir)
        return cls(path, threads)

    def spam_probabilities(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        (logits,) = self.session.run(["logits"], {k: v.astype(np.int64) for k, v in feed.items()})
        logits = logits.astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # a stable softmax
        return shifted[:, SPAM_LABEL] / shifted.sum(axis=1)

    def _origin(self) -> tuple[str | None, str | None]:
        """The model id of the weights the open file was exported from, and the recipe."""
        properties = self.session.get_modelmeta().custom_metadata_map
        return properties.get(MODEL_ID_KEY), properties.get(RECIPE_KEY)
