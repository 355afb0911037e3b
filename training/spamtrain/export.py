"""Write the model directory the filter serves (DESIGN §5)."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from spamfilter.evaluation.operating_point import OperatingPoint, measured_at, operating_point
from spamfilter.model.modeldir import ModelCard, Thresholds, write_card
from spamtrain.config import TrainConfig

log = logging.getLogger(__name__)


def calibrate(
    labels: list[int], scores: list[float], config: TrainConfig
) -> tuple[Thresholds, dict[str, OperatingPoint | None]]:
    """Tag (and optionally reject) thresholds for the target FPRs at ``config.confidence``,
    and how each was chosen (``spamfilter.model.calibration.record_tuned`` records it)."""
    confidence = config.confidence
    tag = operating_point(labels, scores, config.target_fpr, confidence)
    reject = None
    if config.reject_fpr is not None:
        reject = operating_point(labels, scores, config.reject_fpr, confidence)
        if reject.threshold < tag.threshold:  # reject never acts below tag
            reject = measured_at(labels, scores, tag.threshold, config.reject_fpr, confidence)
    thresholds = Thresholds(tag=tag.threshold, reject=reject.threshold if reject else None)
    return thresholds, {"tag": tag, "reject": reject}


def save_model_directory(
    accelerator: Accelerator,
    model,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    card_fields: dict,
    directory: Path | None = None,
) -> Path:
    """Weights (gathered from every rank, ZeRO-3 included), tokenizer and spamfilter.json,
    and the ONNX files the filter serves by default, into ``directory`` (by default
    ``config.output_dir``; ``spamfilter learn`` writes a temporary one, renamed later).

    ``get_state_dict`` must run on every rank: under ZeRO-3 it is a collective gather.
    Weights keep the model's own parameter names (``save_original_format=False``): a model
    loaded under ZeRO-3 would otherwise be saved with BERT's legacy ``LayerNorm.gamma/beta``
    names, since transformers (5.23) records every legacy renaming it knows as applied there.
    """
    directory = Path(directory or config.output_dir)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(
            directory,
            state_dict=state_dict,
            save_function=accelerator.save,
            save_original_format=False,
        )
        tokenizer.save_pretrained(directory)
        card = ModelCard(
            max_length=config.max_length,
            tail_tokens=config.tail_tokens,
            base_model=config.model_name_or_path,
            training={"config": dataclasses.asdict(config), **card_fields.pop("training", {})},
            **card_fields,
        )
        write_card(directory, card)
        export_for_serving(directory)
    accelerator.wait_for_everyone()
    return directory


def export_for_serving(directory: Path) -> None:
    """Write the ONNX files the filter serves by default, in a fresh process.

    Not in this one: under DeepSpeed ZeRO-3, transformers loads any model inside
    ``zero.Init``, a collective that the other ranks, waiting at the barrier, never join.
    A failed export is a warning: the weights are saved, and the filter can export later.
    """
    command = [sys.executable, "-m", "spamfilter.cli", "export-onnx", "--model", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        log.info("ONNX export: %s", done.stdout.strip().replace("\n", "; "))
    else:
        log.warning(
            "ONNX export failed: %s\nserve with --precision fp32, or retry with "
            "'spamfilter export-onnx --model %s'",
            done.stderr.strip()[-2000:],
            directory,
        )
