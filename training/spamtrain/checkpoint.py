"""Resumable checkpoints: ``accelerator.save_state`` plus where in the data we were.

A checkpoint is ``<output_dir>/checkpoints/step-<N>/``: accelerate's state (model,
optimizer, scheduler, RNG of every rank) and ``progress.json`` with the optimizer steps
done. Resuming loads both, then skips the batches of the current epoch that were
already consumed, so the run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

PROGRESS_FILE = "progress.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Progress:
    completed_steps: int  # optimizer steps done
    epoch: int  # epoch in progress
    batches_in_epoch: int  # batches of that epoch already consumed (on each rank)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save(accelerator: Accelerator, output_dir: str | Path, progress: Progress) -> Path:
    """Save on every rank (ZeRO shards and RNG states are per rank); progress on the main one."""
    directory = checkpoints_dir(output_dir) / f"step-{progress.completed_steps}"
    accelerator.save_state(str(directory))
    if accelerator.is_main_process:
        (directory / PROGRESS_FILE).write_text(json.dumps(progress.__dict__) + "\n")
    accelerator.wait_for_everyone()
    return directory


def resolve(path: str, output_dir: str | Path) -> Path:
    """The checkpoint to resume from.

    ``latest`` means the newest complete ``step-N`` under ``output_dir/checkpoints``, and
    ``<dir>/latest`` the newest under ``<dir>``; anything else is a checkpoint directory.
    """
    if path == "latest" or (Path(path).name == "latest" and not Path(path).exists()):
        root = checkpoints_dir(output_dir) if path == "latest" else Path(path).parent
        steps = [
            (int(match.group(1)), entry)
            for entry in (root.iterdir() if root.is_dir() else [])
            if (match := _STEP_DIR.match(entry.name)) and (entry / PROGRESS_FILE).is_file()
        ]
        if not steps:
            raise FileNotFoundError(f"{root}: no complete checkpoint to resume from")
        return max(steps)[1]
    directory = Path(path)
    if not (directory / PROGRESS_FILE).is_file():
        raise FileNotFoundError(f"{directory}: not a checkpoint (no {PROGRESS_FILE})")
    return directory


def load(accelerator: Accelerator, directory: Path) -> Progress:
    accelerator.load_state(str(directory))
    return Progress(**json.loads((directory / PROGRESS_FILE).read_text()))
