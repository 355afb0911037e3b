"""Fine-tune a BERT-family encoder to tell spam from ham; write a model directory.

One script for every set-up; the accelerate config picks the hardware:

    accelerate launch training/train.py                    # built-in corpus + packaged MiniLM
    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml training/train.py \\
        --config configs/train/default.yaml --output_dir runs/x
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml training/train.py \\
        --model_name_or_path bert-base-uncased --data mail/ --max_length 256
    accelerate launch training/train.py --resume_from_checkpoint runs/x/checkpoints/latest
    accelerate launch --config_file configs/accelerate/cpu.yaml training/train.py \\
        --config configs/train/student.yaml             # 3 of runs/default's 6 layers, distilled

The run, top to bottom: read settings; set up accelerate; load the encoder and its
tokenizer (for a smaller student, keep ``student_layers`` of its layers, and load the
``teacher`` model directory it learns from: ``spamtrain.distill``); load, deduplicate and
split the mail and read it with ``email_to_text``; train with AdamW + linear
warm-up/decay, evaluating and checkpointing as configured;
then choose the tag threshold on validation for the target false-positive rate, score
the test split, and write weights + tokenizer + ``spamfilter.json`` to ``output_dir``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    is_torch_xla_available,
    set_seed,
)

from spamfilter.evaluation.metrics import summary
from spamfilter.model.calibration import record_tuned
from spamtrain import checkpoint, data, distill
from spamtrain.config import TrainConfig, parse_args
from spamtrain.export import calibrate, save_model_directory
from spamtrain.features import loaders, tokenize
from spamtrain.loop import (
    predict,
    rounded,
    scalars,
    setup_model,
    setup_optimizer,
    setup_scheduler,
    train,
    training_plan,
)

logger = get_logger("spamtrain")


def main(argv: list[str] | None = None) -> Path:
    config = parse_args(argv)
    accelerator = setup_accelerator(config)
    tokenizer, model = setup_model(config)
    student = setup_student(config, model)
    teacher = setup_teacher(config, tokenizer, accelerator)
    splits, data_fingerprint = setup_data(config, accelerator)
    with accelerator.main_process_first():
        features = tokenize(splits, tokenizer, config)
    batches = loaders(
        features, tokenizer, config, fixed_shape=accelerator.distributed_type == DistributedType.XLA
    )
    plan = training_plan(config, accelerator, len(batches["train"]))
    optimizer = setup_optimizer(model, config, accelerator)
    scheduler = setup_scheduler(optimizer, plan, accelerator, config)
    # One call: DeepSpeed builds its engine from the model, optimizer, scheduler and the
    # batch size of the loaders together.
    model, optimizer, scheduler, train_loader, validation_loader, test_loader = accelerator.prepare(
        model, optimizer, scheduler, batches["train"], batches["validation"], batches["test"]
    )
    progress = resume(config, accelerator)
    throughput = train(
        config, accelerator, model, optimizer, scheduler, train_loader, validation_loader,
        plan, progress, teacher=teacher,
    )  # fmt: skip
    facts = {"data_fingerprint": data_fingerprint, **student, **throughput}
    if teacher is not None:
        facts["teacher"] = teacher.model_id
    directory = finish(config, accelerator, model, tokenizer, validation_loader, test_loader, facts)
    accelerator.end_training()
    return directory


# --- set-up -----------------------------------------------------------------------------


def setup_accelerator(config: TrainConfig) -> Accelerator:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
    )
    deepspeed = using_deepspeed()
    if deepspeed and not torch.cuda.is_available():
        # DeepSpeed on CPU (DS_ACCELERATOR=cpu): create the gloo process group first, or
        # accelerate and DeepSpeed disagree on the world size and the batch-size check fails.
        PartialState(backend="gloo")
    accelerator = Accelerator(
        # accelerate selects DeepSpeed only outside CPU mode; on a CPU the gloo group
        # above already joins the ranks.
        cpu=no_accelerator() and not deepspeed,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=config.output_dir,
    )
    deepspeed_plugin = accelerator.deepspeed_plugin
    if deepspeed_plugin is not None and deepspeed_plugin.is_auto("gradient_clipping"):
        # Else accelerate fills in its own 1.0, whatever --max_grad_norm says.
        deepspeed_plugin.fill_match("gradient_clipping", gradient_clipping=config.max_grad_norm)
    set_seed(config.seed)
    if config.report_to != "none":
        accelerator.init_trackers("spamfilter", config=scalars(config.__dict__))
    logger.info(
        "%d process(es), %s, mixed precision %s",
        accelerator.num_processes,
        accelerator.device,
        accelerator.mixed_precision,
        main_process_only=True,
    )
    return accelerator


def using_deepspeed() -> bool:
    """Launched with a DeepSpeed accelerate config (``accelerate launch`` sets this variable)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def no_accelerator() -> bool:
    """True on a CPU-only machine: then several launched processes must form a gloo group.

    Without this, ``accelerate launch`` of a multi-process config starts processes that
    each train alone (world size 1) when no GPU is present.
    """
    return not (
        torch.cuda.is_available() or is_torch_xla_available() or torch.backends.mps.is_available()
    )


def setup_student(config: TrainConfig, model) -> dict:
    """Keep ``student_layers`` of the encoder's layers (``distill.keep_layers``); returns
    what the card records of it, so that a student can be told from its card."""
    facts: dict = {}
    if config.student_layers is not None:
        total = model.config.num_hidden_layers
        try:
            kept = distill.keep_layers(model, config.student_layers)
        except distill.DistillError as error:
            raise SystemExit(f"{config.model_name_or_path}: {error}") from None
        facts["student_layers"] = config.student_layers
        facts["student_kept_layers"] = {"of": total, "kept": kept}
        logger.info("student: layers %s of %d kept", kept, total, main_process_only=True)
    return facts


def setup_teacher(
    config: TrainConfig, tokenizer, accelerator: Accelerator
) -> distill.Teacher | None:
    """The frozen teacher on this process's device, or None. Not passed to ``prepare``:
    it holds no optimizer state and is in no checkpoint; each process runs its own."""
    if config.teacher is None:
        return None
    try:
        with whole_models(accelerator):
            teacher = distill.load_teacher(
                config, tokenizer, accelerator.device, autocast=accelerator.autocast
            )
    except distill.DistillError as error:
        raise SystemExit(str(error)) from None
    logger.info(
        "teacher %s: distill weight %s at temperature %s",
        teacher.model_id,
        teacher.weight,
        teacher.temperature,
        main_process_only=True,
    )
    return teacher


@contextlib.contextmanager
def whole_models(accelerator: Accelerator) -> Iterator[None]:
    """Models loaded here are not partitioned by ZeRO-3.

    Under a ZeRO-3 config transformers loads every model inside ``zero.Init``, partitioned
    across the ranks, which only a DeepSpeed engine can run. (accelerate 1.16's
    ``zero3_init_context_manager(enable=False)`` does not stop it: it re-registers the
    same config.) So the config is unregistered meanwhile, and registered again after.
    """
    plugin = accelerator.deepspeed_plugin
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def setup_data(config: TrainConfig, accelerator: Accelerator):
    with accelerator.main_process_first():  # the first process fetches and caches the corpus
        corpus = data.load_source(config.data)
    splits = data.split_dataset(corpus, scheme=config.split_scheme)
    if accelerator.is_main_process:
        print(data.describe(splits), flush=True)
    return splits, data.fingerprint(splits)


def resume(config: TrainConfig, accelerator: Accelerator) -> checkpoint.Progress:
    if not config.resume_from_checkpoint:
        return checkpoint.Progress(completed_steps=0, epoch=0, batches_in_epoch=0)
    directory = checkpoint.resolve(config.resume_from_checkpoint, config.output_dir)
    progress = checkpoint.load(accelerator, directory)
    logger.info("resumed from %s: %s", directory, progress, main_process_only=True)
    return progress


# --- the model directory -------------------------------------------------------------------


def finish(
    config: TrainConfig,
    accelerator: Accelerator,
    model,
    tokenizer,
    validation_loader,
    test_loader,
    training_facts: dict,
) -> Path:
    """Calibrate on validation, measure on test, and write the model directory."""
    log_parameter_checksum(accelerator, model)
    val_labels, val_scores = predict(accelerator, model, validation_loader)
    thresholds, points = calibrate(val_labels, val_scores, config)
    test_labels, test_scores = predict(accelerator, model, test_loader)
    metrics = {
        "validation": summary(val_labels, val_scores, thresholds.tag),
        "test": summary(test_labels, test_scores, thresholds.tag),
    }
    calibration: dict = {}
    for which, point in points.items():
        record_tuned(calibration, which, point, split="validation")
    directory = save_model_directory(
        accelerator,
        model,
        tokenizer,
        config,
        {
            "thresholds": thresholds,
            "calibration": calibration,
            "metrics": metrics,
            "training": training_facts,
        },
    )
    if accelerator.is_main_process:
        print(f"model directory: {directory}")
        print("validation split:", points["tag"].statement("tag"))
        print("test split:", json.dumps(rounded(metrics["test"])))
    return directory


def log_parameter_checksum(accelerator: Accelerator, model) -> None:
    """Each rank logs a checksum of its weights: under DDP they must all agree.

    Under ZeRO-3 a rank holds whole only the small parameters DeepSpeed keeps unpartitioned,
    so there the figure is partial; the model directory has the gathered weights.
    """
    with torch.no_grad():
        total = sum(p.double().sum().item() for p in accelerator.unwrap_model(model).parameters())
    logger.info(
        "rank %d/%d parameter checksum %.10e",
        accelerator.process_index,
        accelerator.num_processes,
        total,
        main_process_only=False,
    )


if __name__ == "__main__":
    main()
