"""Scale-out set-ups: every shipped launcher config is accepted by accelerate, and DeepSpeed
ZeRO-2/3 on 2 CPU ranks over gloo trains step for step like DDP, writes a model directory
with the full weights, and resumes from a mid-run checkpoint.

The end-to-end runs are real ``accelerate launch`` subprocesses on the tiny BERT; each is
launched once per module and shared by the tests that read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    patch_environment,
)
from accelerate.utils import launch as launch_env
from safetensors.torch import load_file

from spamfilter.evaluation.metrics import summary
from spamfilter.model.classifier import Classifier
from spamfilter.model.modeldir import read_card
from spamrig import ROOT
from spamrig.launch import DEEPSPEED_CPU_ENV, free_port, launch, small_run
from spamtrain import data

ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
DEEPSPEED_CONFIGS = sorted((ROOT / "configs" / "deepspeed").glob("*.json"))
TRAIN_STEPS = ("--max_steps", "6", "--checkpointing_steps", "3")


# --- the shipped config files ----------------------------------------------------------------


def _accepted(path: Path):
    """What ``accelerate launch --config_file path`` makes of the file, up to starting processes.

    Returns the parsed config and the environment the launcher would give each process.
    """
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, defaults, mixed_precision_from_file = _validate_launch_command(args)
    if defaults.distributed_type == DistributedType.DEEPSPEED:
        # As ``launch_command`` does: the training process refuses keys that the
        # DeepSpeed JSON must carry instead.
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] * mixed_precision_from_file)]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return defaults, launch_env.prepare_deepspeed_cmd_env(args)[1]
    if defaults.distributed_type in (DistributedType.MULTI_GPU, DistributedType.FSDP):
        return defaults, launch_env.prepare_multi_gpu_env(args)
    if defaults.distributed_type == DistributedType.XLA:
        return defaults, launch_env.prepare_tpu(args, {})[1]
    return defaults, launch_env.prepare_simple_launcher_cmd_env(args)[1]


def test_every_set_up_has_a_config():
    names = {path.stem for path in ACCELERATE_CONFIGS}
    assert names >= {
        "cpu", "cpu_ddp", "cpu_deepspeed_zero2", "cpu_deepspeed_zero3", "single_gpu",
        "multi_gpu_ddp", "multi_node_ddp", "deepspeed_zero2", "deepspeed_zero3",
        "deepspeed_zero3_offload", "fsdp", "tpu",
    }  # fmt: skip


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda path: path.name)
def test_accelerate_config_is_accepted_by_the_launcher(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # deepspeed_config_file paths are relative to the repository root
    header = path.read_text().split("\ncompute_environment")[0]
    assert header.startswith("# ") and f"--config_file configs/accelerate/{path.name}" in header
    config, env = _accepted(path)
    assert isinstance(config, ClusterConfig)
    assert isinstance(load_config_from_file(str(path)), ClusterConfig)
    if config.distributed_type == DistributedType.DEEPSPEED:
        # The plugin each training process builds: reads the JSON, rejects conflicting keys.
        with patch_environment(**env):
            plugin = DeepSpeedPlugin()
        assert plugin.zero_stage in (2, 3)
        assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"
        if plugin.zero_stage == 3:
            assert plugin.deepspeed_config["zero_optimization"][
                "stage3_gather_16bit_weights_on_model_save"
            ], "accelerator.get_state_dict needs it to gather ZeRO-3 weights"
    elif config.distributed_type == DistributedType.FSDP:
        with patch_environment(**env):
            assert FullyShardedDataParallelPlugin().fsdp_version == 2
    if config.num_machines > 1:
        assert "--machine_rank" in header and "--main_process_ip" in header


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=lambda path: path.name)
def test_deepspeed_json_parses_and_leaves_values_to_accelerate(path):
    config = json.loads(path.read_text())
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto", key
    assert config["gradient_clipping"] == "auto"
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    for block in ("optimizer", "scheduler"):
        if block in config:
            autos = [key for key, value in config[block]["params"].items() if value == "auto"]
            assert autos, f"{block}: train.py's values go in through 'auto'"
    used = {
        yaml.safe_load(config_path.read_text())
        .get("deepspeed_config", {})
        .get("deepspeed_config_file")
        for config_path in ACCELERATE_CONFIGS
    }
    assert f"configs/deepspeed/{path.name}" in used, "no accelerate config points to it"


def test_xla_batches_are_padded_to_max_length(tiny_base_model, synthetic_corpus):
    from transformers import AutoTokenizer

    from spamtrain.config import TrainConfig
    from spamtrain.features import loaders, tokenize

    config = TrainConfig(data=str(synthetic_corpus), max_length=48, per_device_eval_batch_size=5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    splits = data.split_dataset(data.load_source(config.data))
    features = tokenize(splits, tokenizer, config)
    for fixed_shape, widths in ((True, {48}), (False, None)):
        batches = loaders(features, tokenizer, config, fixed_shape=fixed_shape)
        seen = {batch["input_ids"].shape[1] for batch in batches["validation"]}
        if widths:
            assert seen == widths
        else:
            assert all(width % 8 == 0 and width <= 48 for width in seen)


# --- DeepSpeed on 2 CPU ranks against DDP ------------------------------------------------------


def _train(
    config: str,
    output: Path,
    model: Path,
    corpus: Path,
    *extra: str,
    launch_args: tuple[str, ...] = (),
) -> Path:
    """One 2-process run on its own rendezvous port (others may be testing on this machine)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DEEPSPEED_CPU_ENV.items():
            patch.setenv(name, value)
        launch(
            config,
            *small_run(model, corpus, output, *TRAIN_STEPS, *extra),
            extra_launch=("--main_process_port", free_port(), *launch_args),
        )
    return output


@pytest.fixture(scope="module")
def runs(tiny_base_model, synthetic_corpus, tmp_path_factory) -> Iterator[dict]:
    """Output directories of DDP, ZeRO-2 and ZeRO-3 runs, trained lazily on first use."""
    root = tmp_path_factory.mktemp("scale-out")
    configs = {
        "ddp": "cpu_ddp.yaml",
        "zero2": "cpu_deepspeed_zero2.yaml",
        "zero3": "cpu_deepspeed_zero3.yaml",
    }

    class Runs(dict):
        def __missing__(self, name: str) -> Path:
            self[name] = _train(configs[name], root / name, tiny_base_model, synthetic_corpus)
            return self[name]

    yield Runs()


def _log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def _assert_same_weights(first: Path, second: Path, atol: float) -> None:
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape and a[name].numel() > 0, name
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_losses_match_ddp_step_for_step(runs, stage):
    ddp, deepspeed = _log(runs["ddp"]), _log(runs[stage])
    assert read_card(runs[stage]).training["world_size"] == 2
    assert [s["step"] for s in deepspeed] == [s["step"] for s in ddp] == [1, 2, 3, 4, 5, 6]
    for ours, theirs in zip(deepspeed, ddp, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5), ours["step"]
        assert ours["lr"] == pytest.approx(theirs["lr"], abs=1e-12), ours["step"]
    assert ddp[-1]["lr"] == 0.0  # the schedule ran its full course on both


def test_zero3_model_directory_holds_the_full_trained_weights(runs):
    """ZeRO-3 keeps a slice of each weight per rank; the directory must get them whole."""
    _assert_same_weights(runs["zero3"], runs["ddp"], atol=1e-5)


def test_zero3_model_directory_predicts_as_the_engine_did(runs, synthetic_corpus):
    directory = runs["zero3"]
    card = read_card(directory)
    test_split = data.split_dataset(data.load_source(str(synthetic_corpus)))["test"]
    scores = Classifier(directory, precision="fp32").score_raw(test_split["raw"])
    rescored = summary(test_split["label"], scores, card.thresholds.tag)
    engine = card.metrics["test"]
    for key in ("n", "n_spam", "tp", "fp", "tn", "fn"):
        assert rescored[key] == engine[key], key
    assert rescored["roc_auc"] == pytest.approx(engine["roc_auc"], abs=1e-9)
    ddp_scores = Classifier(runs["ddp"], precision="fp32").score_raw(test_split["raw"])
    assert scores == pytest.approx(ddp_scores, abs=1e-5)
    from transformers import pipeline

    label = pipeline("text-classification", model=str(directory))("cheap pills")[0]["label"]
    assert label in ("spam", "ham")


def test_zero2_resumes_mid_run_to_the_same_weights(runs, tiny_base_model, synthetic_corpus):
    straight = runs["zero2"]
    checkpoint = straight / "checkpoints" / "step-3"
    assert json.loads((checkpoint / "progress.json").read_text())["completed_steps"] == 3
    assert (checkpoint / "pytorch_model").is_dir()  # DeepSpeed's own per-rank shards
    resumed = _train(
        "cpu_deepspeed_zero2.yaml",
        straight.parent / "zero2-resumed",
        tiny_base_model,
        synthetic_corpus,
        "--resume_from_checkpoint",
        str(checkpoint),
    )
    log, reference = _log(resumed), _log(straight)[3:]
    assert [s["step"] for s in log] == [4, 5, 6]
    for ours, theirs in zip(log, reference, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
        assert ours["lr"] == theirs["lr"]
    _assert_same_weights(resumed, straight, atol=1e-6)


def test_deepspeed_defined_optimizer_and_scheduler(runs, tiny_base_model, synthetic_corpus):
    """A JSON with "optimizer"/"scheduler" blocks: DeepSpeed builds both from our values.

    torch's AdamW inside DeepSpeed (``torch_adam``), so the test need not compile
    DeepSpeed's CPU Adam; the schedule is the JSON's WarmupDecayLR, fed our step counts.
    """
    shipped = json.loads((ROOT / "configs" / "deepspeed" / "zero3_offload.json").read_text())
    config = json.loads((ROOT / "configs" / "deepspeed" / "zero2.json").read_text())
    config["optimizer"] = shipped["optimizer"]
    config["optimizer"]["params"]["torch_adam"] = True
    config["scheduler"] = shipped["scheduler"]
    json_path = runs["ddp"].parent / "zero2_blocks.json"
    json_path.write_text(json.dumps(config))
    output = _train(
        "cpu_deepspeed_zero2.yaml",
        runs["ddp"].parent / "zero2-blocks",
        tiny_base_model,
        synthetic_corpus,
        launch_args=("--deepspeed_config_file", str(json_path)),
    )
    log, ddp = _log(output), _log(runs["ddp"])
    assert read_card(output).training["world_size"] == 2
    assert log[0]["loss"] == pytest.approx(ddp[0]["loss"], abs=1e-6)  # same start, same batch
    rates = [step["lr"] for step in log]
    # DeepSpeed's WarmupDecayLR, not ours: it warms up from warmup_min_lr ("auto": 0) to our
    # --learning_rate, then decays linearly.
    assert rates[0] == 0.0 != ddp[0]["lr"]
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(3e-3)
    assert rates[peak:] == sorted(rates[peak:], reverse=True) and rates[-1] < max(rates)


# --- on GPUs (opt-in: -m gpu; not run where this was written, no GPU was lent) -----------------


@pytest.mark.gpu
def test_gpu_zero3_bf16_tracks_ddp_and_its_directory_serves(
    tiny_base_model, synthetic_corpus, tmp_path
):
    gpus = torch.cuda.device_count()
    if gpus == 0:
        pytest.skip("needs a CUDA device")
    on_gpus = ("--num_processes", str(gpus), "--mixed_precision", "bf16")
    outputs = {}
    for name, config in (
        ("ddp", "multi_gpu_ddp.yaml" if gpus > 1 else "single_gpu.yaml"),
        ("zero3", "deepspeed_zero3.yaml"),
    ):
        outputs[name] = tmp_path / name
        launch(
            config,
            *small_run(tiny_base_model, synthetic_corpus, outputs[name], *TRAIN_STEPS),
            extra_launch=(*on_gpus, "--main_process_port", free_port()),
        )
    for ours, theirs in zip(_log(outputs["zero3"]), _log(outputs["ddp"]), strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=2e-2), ours["step"]  # bf16
    card = read_card(outputs["zero3"])
    test_split = data.split_dataset(data.load_source(str(synthetic_corpus)))["test"]
    scores = Classifier(outputs["zero3"], precision="fp32").score_raw(test_split["raw"])
    rescored = summary(test_split["label"], scores, card.thresholds.tag)
    assert rescored["n"] == card.metrics["test"]["n"]
    assert rescored["roc_auc"] == pytest.approx(card.metrics["test"]["roc_auc"], abs=0.02)
