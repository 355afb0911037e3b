"""From labelled raw mail to padded token batches, read exactly as the filter reads it."""

from __future__ import annotations

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from spamfilter.model.encode import encode
from spamfilter.model.mailtext import email_to_text
from spamtrain.config import TrainConfig

MODEL_COLUMNS = ["input_ids", "attention_mask", "labels"]


def tokenize(
    splits: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, config: TrainConfig
) -> datasets.DatasetDict:
    """Token ids for every split via ``email_to_text`` + ``encode``; unpadded, with labels."""

    def featurize(batch: dict) -> dict:
        texts = [email_to_text(raw) for raw in batch["raw"]]
        encoded = encode(tokenizer, texts, config.max_length, config.tail_tokens)
        return {**encoded, "labels": batch["label"]}

    limits = {
        "train": config.max_train_samples,
        "validation": config.max_eval_samples,
        "test": config.max_eval_samples,
    }
    tokenized = {}
    for name, split in splits.items():
        limit = limits.get(name)
        if limit is not None:  # a seeded sample: the splits are ordered by source
            split = split.shuffle(seed=config.seed).select(range(min(limit, len(split))))
        tokenized[name] = split.map(
            featurize,
            batched=True,
            remove_columns=split.column_names,
            desc=f"Reading {name} mail",
        )
    return datasets.DatasetDict(tokenized)


def loaders(
    features: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    fixed_shape: bool = False,
) -> dict[str, DataLoader]:
    """Shuffled training batches and ordered evaluation batches, padded per batch.

    ``fixed_shape`` pads every batch to ``max_length`` instead: XLA (TPU) compiles a graph
    per input shape, and per-batch lengths would make it recompile over and over.
    """
    collate = (
        DataCollatorWithPadding(tokenizer, padding="max_length", max_length=config.max_length)
        if fixed_shape
        else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    )
    result = {}
    for name, split in features.items():
        training = name == "train"
        result[name] = DataLoader(
            split.with_format("torch", columns=MODEL_COLUMNS),
            batch_size=(
                config.per_device_train_batch_size
                if training
                else config.per_device_eval_batch_size
            ),
            shuffle=training,
            collate_fn=collate,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed) if training else None,
        )
    return result
