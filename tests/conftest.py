"""Shared fixtures. Tests never touch the Hugging Face Hub (it is unreachable here)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One BLAS/OpenMP thread per process: the suite runs a daemon, a sink and clients at once
# on 2 cores, and OpenMP threads spinning against each other there made steps 10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest

from spamrig.synthetic import make_trained_model_dir, make_untrained_model_dir, write_maildirs


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A trained tiny BERT in the served model-directory format (spam scores high)."""
    return make_trained_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """An untrained tiny BERT with its tokenizer: a stand-in for a pretrained encoder."""
    return make_untrained_model_dir(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """A directory corpus: ``spam/`` and ``ham/`` subfolders of raw .eml files."""
    return write_maildirs(tmp_path_factory.mktemp("corpus"), per_label=40)
