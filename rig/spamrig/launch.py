"""Real ``accelerate launch`` runs of training/train.py on test material (tiny BERT, small mail)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from spamrig import LOCALHOST, ROOT

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# DeepSpeed on this CPU: its CPU accelerator, no prebuilt ops (DESIGN §7).
DEEPSPEED_CPU_ENV = {"DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0"}


def launch(
    accelerate_config: str, *args: str, extra_launch: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file configs/accelerate/<config> training/train.py args``."""
    command = [
        ACCELERATE,
        "launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / accelerate_config),
        *extra_launch,
        str(ROOT / "training" / "train.py"),
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=500, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def small_run(model: Path, corpus: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--data", str(corpus), "--output_dir", str(output),
        "--max_length", "64", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3", *extra,
    ]  # fmt: skip


def free_port() -> str:
    """A free loopback port for a multi-process run's rendezvous (``--main_process_port``),
    so that it does not meet another run on this machine at the default port."""
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return str(probe.getsockname()[1])
