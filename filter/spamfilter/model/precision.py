"""The scoring precisions: their names, the default, and whose scores match fp32's.

A module of its own (no torch import) so the CLI can build its parser cheaply.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal, get_args

Precision = Literal["auto", "fp32", "bf16", "int8", "onnx-fp32", "onnx-int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
BACKENDS: tuple[str, ...] = PRECISIONS[1:]  # what auto chooses among

# "auto" picks, on the machine that scores, the fastest backend that holds accuracy there
# (docs/benchmarks.md): ONNX Runtime int8 (per-channel weights) where the CPU has int8
# dot-product instructions, ONNX Runtime fp32 elsewhere, PyTorch on a GPU.
DEFAULT_PRECISION: Precision = "auto"

# Backends whose verdicts at fp32's calibrated thresholds stay within the parity rule
# (ROC-AUC within 0.002, recall at the threshold within 0.01, FPR within 0.001, on the
# SpamAssassin test split and on other people's mail; docs/benchmarks.md): ONNX fp32 is
# fp32's arithmetic to ~1e-6, ONNX int8 quantizes each weight column on its own scale
# and (export recipe 4) keeps the embeddings and three of its 18 MatMuls in fp32: run
# text by text, its recall at the tag threshold moved +0.002 (SpamAssassin test) and
# +0.010 (other people's mail) against fp32's on an AVX-512 VNNI CPU, where every MatMul
# in int8 lost 0.013-0.015. They share one set of thresholds. PyTorch's bf16 and int8
# (one scale per weight matrix) move scores near the thresholds and need thresholds
# tuned for themselves.
SHARES_FP32_THRESHOLDS: frozenset[str] = frozenset({"fp32", "onnx-fp32", "onnx-int8"})

# Backends that quantize activations at run time with one scale for the whole input
# tensor (dynamic quantization: ONNX Runtime's DynamicQuantizeLinear, PyTorch's dynamic
# int8 Linear): a text's score then depends on the texts it is batched with, by up to
# 0.19 on the default model (docs/benchmarks.md), so one message could move another's
# verdict. The classifier runs each text on its own with these.
QUANTIZED_PER_RUN: frozenset[str] = frozenset({"int8", "onnx-int8"})


def runs_at_once(requested: int, backend: str, device: str) -> int:
    """How many model runs go at once: ``requested``, or for 0 one per core where each
    message runs alone in ONNX Runtime on the CPU (``onnx-int8``: ``QUANTIZED_PER_RUN``),
    else 1.

    One run on two threads waits for its slower half whenever SMTP holds a core; two runs
    on one thread each do not: on a 2-core AVX-512 VNNI CPU the daemon served 17-28 % more
    mail at 64 SMTP clients and 5-18 % more at 4, with the same scores
    (docs/benchmarks.md). In onnx-fp32 (batched runs) it gained nothing, so other
    backends keep one run.
    """
    if requested:
        return requested
    if device == "cpu" and backend == "onnx-int8":
        return usable_cores()
    return 1


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or ``taskset``'s)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Without these, x86 int8 kernels add u8 x s8 products in 16-bit sums that saturate
# (ONNX Runtime's quantization notes): on an AVX2-only CPU the default model's onnx-int8
# recall at the tag threshold fell from 0.575 to 0.251 on the SpamAssassin test split,
# at the speed of onnx-fp32 (docs/benchmarks.md). So auto avoids onnx-int8 there, and
# the classifier refuses it.
INT8_DOT_PRODUCT_FLAGS: frozenset[str] = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


class BackendError(ValueError):
    """A precision or device that this machine cannot score with."""


# Where to score: auto (a CUDA device if torch sees one, else the CPU), cpu, cuda, cuda:N.
DEFAULT_DEVICE = "auto"
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_problem(name: str, value: str) -> str | None:
    """Why ``value`` is not a scoring device, or None."""
    if DEVICE.fullmatch(value):
        return None
    return f"{name} must be auto, cpu, cuda or cuda:N, not {value!r}"


def resolve_device(device: str) -> str:
    """``auto``: the first CUDA device if torch sees one, else the CPU; others as given."""
    if device == "cpu":
        return device
    import torch  # here, not at the top: the CLI builds its parsers without torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise BackendError(f"device {device}: torch sees no CUDA device on this machine")
    return device


def resolve(precision: str, device: str = "cpu") -> str:
    """The backend that ``precision`` means on this machine for ``device`` (resolved)."""
    if precision != "auto":
        return precision
    if device != "cpu":
        return "fp32"  # PyTorch on the accelerator; ONNX Runtime here is a CPU build
    return "onnx-int8" if has_int8_dot_products() else "onnx-fp32"


def require_scoring_cpu(backend: str) -> None:
    """Refuse ``onnx-int8`` on a CPU whose int8 kernels saturate (``INT8_DOT_PRODUCT_FLAGS``)."""
    if backend == "onnx-int8" and not has_int8_dot_products():
        raise BackendError(
            "onnx-int8 needs a CPU with int8 dot products ("
            + ", ".join(sorted(INT8_DOT_PRODUCT_FLAGS))
            + "): this one has none, and its int8 kernels' saturating sums move scores "
            "(recall at the tag threshold 0.575 -> 0.251 on the default model) at no gain "
            "in speed: use precision auto or onnx-fp32"
        )


def has_int8_dot_products() -> bool:
    """Whether this machine's CPU lists one of ``INT8_DOT_PRODUCT_FLAGS``."""
    return bool(cpu_flags() & INT8_DOT_PRODUCT_FLAGS)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first CPU (Linux); empty where they are unknown."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()
