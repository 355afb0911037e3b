"""The scoring precisions: their names, the default, and whose scores match fp32's.

A module of its own (no torch import) so the CLI can build its parser cheaply.
"""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "bf16", "int8", "onnx-fp32", "onnx-int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# The fastest that holds accuracy on this project's CPUs (docs/benchmarks.md): ONNX Runtime
# with fused attention kernels computes fp32's scores, to a few 1e-6, faster.
DEFAULT_PRECISION: Precision = "onnx-fp32"

# Same arithmetic as fp32, so fp32's calibrated thresholds hold for them. The others
# (bf16, int8) move scores near the thresholds and need thresholds tuned for themselves.
FP32_EQUIVALENT: frozenset[str] = frozenset({"fp32", "onnx-fp32"})
