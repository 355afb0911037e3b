"""``spamfilter learn``: continue training a model directory on a site's own mail.

    spamfilter learn --model runs/default --spam Junk/ --ham Inbox/ --output runs/site

1. Read the site's mail (``sitemail``): Maildirs, mbox files or directories of messages.
2. Draw the replay sample: ``replay_ratio`` messages per site message from the training
   split of the corpus the parent model was trained on (its card says which), so that
   the model keeps what it knew. Its validation split is kept for the forgetting check.
3. Calibrate out of fold. The site's mail is cut into ``folds`` folds, each label spread
   evenly; for each fold the parent is trained on the other folds (plus their share of
   the replay sample) and scores that fold. So does the site evidence
   (``spamfilter.model.sitewords``: a model of the site's words, gated by a model of site
   mail against the replay sample), on finer folds of its own (``WORD_FOLDS``): it takes
   seconds to fit, and a fit on less mail judges more timidly. Every site message thus
   gets the scores of models that never saw it, as a new message would. A held-out share
   would leave a few dozen ham to calibrate on, and the final model's scores of its own
   training mail are too low to calibrate on at all.
4. Train the parent on all the site's mail plus the replay sample (the loop of
   ``training/train.py``, in this process), fit the site evidence on all of it, and score
   the replay corpus's validation split (the forgetting check).
5. Carry the encoder's out-of-fold scores to the final model's scale. Each model
   saturates at its own ceiling (spam scores crowd into the last 0.001 below it, and the
   ceilings of the fold models and the final one differ by more than that), so a raw
   out-of-fold threshold can lie above every score the final model gives. A fold model's
   score is therefore replaced by the final model's score of the same rank among the
   validation messages of the replay corpus, which all of them scored and none trained on
   (quantile mapping). Without a replay corpus the scores are used as they are. With site
   words, fit their blend with the encoder on these scores and on the validation split's
   (each part weighing as much as the other; docs/evaluation.md has what each choice
   measured); a blend that gives the words no positive weight is dropped, and the
   encoder serves alone. Then choose the tag threshold on the served scores: the lowest
   whose FPR upper bound on the site's ham (at the set confidence,
   ``spamfilter.evaluation.operating_point``) meets the target.
6. Write the model directory (weights, tokenizer, card, ONNX export) under a temporary
   name beside ``output``, then rename it into place. The parent is only read.
7. With ``install``, point a symlink (``current``) at the new directory: a new link under
   a temporary name, renamed over the old one, so a reader sees either model, never none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import datasets
import numpy as np
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from transformers import AutoTokenizer

from spamfilter.evaluation.metrics import summary
from spamfilter.evaluation.operating_point import OperatingPoint, operating_point
from spamfilter.model.calibration import confidence as recorded_confidence
from spamfilter.model.calibration import record_tuned
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import ModelCard, Thresholds, model_id, read_card
from spamfilter.model.onnxmodel import FILES as ONNX_FILES
from spamfilter.model.sitewords import Blend, SiteEvidence, SiteWords
from spamtrain import checkpoint, data, sitemail
from spamtrain.config import TrainConfig
from spamtrain.corpora import DataError
from spamtrain.export import calibrate, save_model_directory
from spamtrain.features import loaders, tokenize
from spamtrain.learnconfig import LearnConfig
from spamtrain.loop import (
    predict,
    setup_model,
    setup_optimizer,
    setup_scheduler,
    train,
    training_plan,
)

log = logging.getLogger(__name__)

# The forgetting check scores at most this many validation messages of the replay corpus
# (all 638 of the built-in one): a big custom corpus would otherwise take an hour.
MAX_FORGETTING_CHECK = 2000
# Folds of the site evidence's out-of-fold scores (``out_of_fold_evidence``). With at least
# sitemail.MIN_PER_LABEL (10) messages of each label, every fold holds one of each and
# every fit sees both labels.
WORD_FOLDS = 10


class LearnError(RuntimeError):
    """A learn run that cannot go ahead; the message says why and what to do."""


@dataclass
class Replay:
    """The replay corpus: a seeded sample of its training split, and its validation split."""

    spec: str | None  # a --data spec; None: no replay
    scheme: str
    pool: datasets.Dataset | None
    validation: datasets.Dataset | None


@dataclass
class Learned:
    directory: Path
    card: ModelCard
    parent_card: ModelCard
    installed: Path | None


def learn(
    settings: LearnConfig,
    parent: Path,
    spam: Sequence[Path],
    ham: Sequence[Path],
    output: Path,
    install: Path | None = None,
) -> Learned:
    """Steps 1-7 of the module docstring; LearnError (or ModelDirError) before any training
    for bad input, and nothing written then."""
    started = time.perf_counter()
    parent_card = read_card(parent)
    parent_dir = Path(parent).resolve()  # a `current` link may be swapped while we read
    check_destination(output, install)
    try:
        site = sitemail.read_site_mail(spam, ham)
        replay = replay_corpus(parent_card, settings, site)
    except DataError as error:
        raise LearnError(str(error)) from None
    config = continued_config(parent_card, parent_dir, settings, output, replay.spec)
    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed)
    )
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    parts = {"site": site.dataset, "replay": replay.pool, "validation": replay.validation}
    features = tokenize(
        datasets.DatasetDict({name: part for name, part in parts.items() if part is not None}),
        tokenizer,
        config,
    )
    labels = site.dataset["label"]
    texts = replay_texts = None
    if settings.site_words:
        texts = texts_of(site.dataset)
        replay_texts = texts_of(replay.pool) if replay.pool is not None else []
    held_out = out_of_fold(
        config, accelerator, tokenizer, features, settings, labels, texts, replay_texts
    )
    with partial_directory(output) as partial:
        model, throughput = fit(
            dataclasses.replace(config, output_dir=str(partial)),
            accelerator,
            training_set(features, range(len(labels)), settings.replay_ratio),
        )
        evidence = SiteEvidence.fit(texts, labels, replay_texts) if texts is not None else None
        validation_texts = (
            texts_of(replay.validation)
            if evidence is not None and replay.validation is not None
            else None
        )
        thresholds, calibration, metrics, site_words = choose_thresholds(
            config, settings, accelerator, tokenizer, features, model, held_out, labels,
            evidence, validation_texts,
        )  # fmt: skip
        if site_words is not None:  # before the export: the model id covers the words
            site_words.save(partial)
        fields = {
            "thresholds": thresholds,
            "calibration": calibration,
            "metrics": metrics,
            "training": {
                "data_fingerprint": data.fingerprint(training_data(site, replay)),
                **throughput,
                "learned_from": learned_from(parent_dir, settings, site, replay),
                "learn_seconds": round(time.perf_counter() - started, 1),
            },
        }
        save_model_directory(accelerator, model, tokenizer, config, fields, directory=partial)
    if install is not None:
        point(install, output)
    return Learned(output, read_card(output), parent_card, install)


def choose_thresholds(
    config: TrainConfig,
    settings: LearnConfig,
    accelerator: Accelerator,
    tokenizer,
    features: datasets.DatasetDict,
    model,
    held_out: HeldOut,
    labels: Sequence[int],
    evidence: SiteEvidence | None,
    validation_texts: Sequence[str] | None,
) -> tuple[Thresholds, dict, dict, SiteWords | None]:
    """Step 5: the thresholds, their calibration record, the card's metrics (the site's
    mail out of fold; the replay corpus's validation split, the forgetting check), and the
    site words to serve, if any."""
    metrics = {}
    scores = held_out.scores
    validation = None  # the replay corpus's validation split: its labels and scores
    if "validation" in features:
        loader = eval_loader(accelerator, tokenizer, features["validation"], config)
        validation = predict(accelerator, model, loader)
        scores = held_out.carried(validation[1])
    uncarried = operating_point(
        labels, held_out.scores, config.target_fpr, config.confidence
    ).threshold
    site_words = None
    if evidence is not None:
        site_words = blend_words(evidence, held_out, scores, labels, validation, validation_texts)
    if site_words is not None:
        scores = site_words.blend(scores, held_out.words).tolist()
    thresholds, points = calibrate(labels, scores, config)
    metrics["site_out_of_fold"] = summary(labels, scores, thresholds.tag)
    if validation is not None:
        val_labels, val_scores = validation
        if site_words is not None:
            val_scores = site_words.scores(val_scores, validation_texts).tolist()
        metrics["validation"] = summary(val_labels, val_scores, thresholds.tag)
    record = calibration_record(settings, points, held_out, uncarried, site_words)
    return thresholds, record, metrics, site_words


def blend_words(
    evidence: SiteEvidence,
    held_out: HeldOut,
    site_scores: Sequence[float],
    labels: Sequence[int],
    validation: tuple[list[int], list[float]] | None,
    validation_texts: Sequence[str] | None,
) -> SiteWords | None:
    """Step 5's blend of the encoder and the words, fitted on the site's out-of-fold scores
    and the validation split's (each part weighing as much as the other); None when it
    gives the words no positive weight."""
    encoder, gated, truth = list(site_scores), list(held_out.words), list(labels)
    weights = [1.0] * len(truth)
    if validation is not None and validation_texts:
        val_labels, val_scores = validation
        weights = [len(val_labels) / len(truth)] * len(truth) + [1.0] * len(val_labels)
        encoder += val_scores
        gated += evidence(validation_texts).tolist()
        truth += val_labels
    blend = Blend.fit(encoder, gated, truth, weights)
    if blend.words <= 0:
        log.warning("the site's words add nothing the encoder does not know: served without")
        return None
    return SiteWords(evidence, blend)


def texts_of(messages: datasets.Dataset) -> list[str]:
    """The model text of each message (what both the encoder and the word model read)."""
    return [email_to_text(raw) for raw in messages["raw"]]


# --- checks and settings -----------------------------------------------------------------


def check_destination(output: Path, install: Path | None) -> None:
    """Fail before any work when the output exists or the link is not a link."""
    if output.exists() or output.is_symlink():
        raise LearnError(
            f"{output}: already exists; learn writes a new model directory and never "
            "replaces one: choose another --output"
        )
    if install is not None and install.exists() and not install.is_symlink():
        raise LearnError(f"{install}: exists and is not a symlink; --install replaces a symlink")


def continued_config(
    parent_card: ModelCard,
    parent_dir: Path,
    settings: LearnConfig,
    output: Path,
    replay_spec: str | None,
) -> TrainConfig:
    """The parent's training config, continued: its text settings, our schedule and data."""
    recorded = parent_card.training.get("config", {})
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    base = TrainConfig(**{key: value for key, value in recorded.items() if key in known})
    config = dataclasses.replace(
        base,
        model_name_or_path=str(parent_dir),
        data=replay_spec or "",
        output_dir=str(output),
        max_length=parent_card.max_length,  # the card, not the config: what the filter reads
        tail_tokens=parent_card.tail_tokens,
        num_train_epochs=settings.epochs,
        max_steps=-1,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        target_fpr=settings.target_fpr
        or parent_card.calibration.get("target_fpr")
        or base.target_fpr,
        confidence=first_set(
            settings.confidence, recorded_confidence(parent_card), base.confidence
        ),
        max_train_samples=None,
        max_eval_samples=None,
        eval_steps=0,
        checkpointing_steps=0,
        resume_from_checkpoint=None,
        report_to="none",
        # A distilled student continues alone: its layers are already cut, and the site's
        # labels, not its teacher's scores, are what it learns here.
        teacher=None,
        student_layers=None,
    )
    problems = config.validate()
    if problems:
        raise LearnError(
            "the parent's training settings cannot be continued: " + "; ".join(problems)
        )
    return config


def first_set(*values: float | None) -> float | None:
    """The first value that is not None (0 is a value: confidence 0 asks for no bound)."""
    return next((value for value in values if value is not None), None)


def replay_corpus(parent_card: ModelCard, settings: LearnConfig, site: sitemail.SiteMail) -> Replay:
    """A seeded sample (random order) of the original corpus's training split, minus the
    site's own messages, and its validation split (sampled down to MAX_FORGETTING_CHECK)."""
    recorded = parent_card.training.get("config", {})
    scheme = recorded.get("split_scheme", "hash")
    if settings.replay_ratio == 0:
        return Replay(None, scheme, None, None)
    spec = settings.replay_data or recorded.get("data")
    if not spec:
        raise LearnError(
            "the model card does not record the corpus the model was trained on: pass "
            "--replay-data SPEC (a training --data spec, e.g. spamassassin), or "
            "--replay-ratio 0 to learn without replay"
        )
    splits = data.split_dataset(data.load_source(spec), scheme=scheme)
    site_ids = set(site.dataset["id"])
    rows = [i for i, md5 in enumerate(splits["train"]["id"]) if md5 not in site_ids]
    rng = random.Random(settings.seed)
    wanted = min(round(settings.replay_ratio * len(site.dataset)), len(rows))
    pool = splits["train"].select(rng.sample(rows, wanted))
    validation = splits["validation"]
    if len(validation) > MAX_FORGETTING_CHECK:
        validation = validation.shuffle(seed=settings.seed).select(range(MAX_FORGETTING_CHECK))
    # In memory: tokenizing a memory-mapped sample would leave cache files in the corpus cache.
    return Replay(
        spec,
        scheme,
        pool.flatten_indices(keep_in_memory=True) if len(pool) else None,
        validation.flatten_indices(keep_in_memory=True) if len(validation) else None,
    )


# --- training runs -----------------------------------------------------------------------


def assign_folds(labels: Sequence[int], folds: int, seed: int) -> list[int]:
    """The fold of each message: each label shuffled (seeded) and dealt out in turn."""
    rng = random.Random(seed)
    fold_of = [0] * len(labels)
    for label in sorted(set(labels)):
        rows = [row for row, value in enumerate(labels) if value == label]
        rng.shuffle(rows)
        for position, row in enumerate(rows):
            fold_of[row] = position % folds
    return fold_of


def fold_splits(fold_of: Sequence[int], folds: int) -> Iterator[tuple[int, list[int], list[int]]]:
    """For each fold: its number, the rows kept for fitting and the rows it holds out."""
    for fold in range(folds):
        kept = [row for row, value in enumerate(fold_of) if value != fold]
        held = [row for row, value in enumerate(fold_of) if value == fold]
        yield fold, kept, held


@dataclass
class HeldOut:
    """Out-of-fold scores of the site's mail, and what each fold model gave the reference."""

    scores: list[float]  # P(spam) of each site message, from the model without its fold
    fold_of: list[int]
    references: list[list[float]] | None  # per fold: its scores of the replay validation split
    words: list[float] | None  # the site evidence (gated words) without its fold; None: off

    def carried(self, final_reference: Sequence[float]) -> list[float]:
        """The scores on the final model's scale (module docstring, step 5)."""
        if self.references is None:
            return self.scores
        final = np.sort(np.asarray(final_reference, dtype=np.float64))
        return [
            on_scale_of(score, self.references[fold], final)
            for score, fold in zip(self.scores, self.fold_of, strict=True)
        ]

    def scale_note(self) -> str:
        if self.references is None:
            return "out of fold, as the fold models gave them (no replay corpus to carry them by)"
        return (
            "out of fold, carried to this model's scale by rank among the "
            f"{len(self.references[0])} validation messages of the replay corpus"
        )


def on_scale_of(score: float, reference: Sequence[float], target_sorted: np.ndarray) -> float:
    """The score of the same rank among the reference messages under the target model:
    quantile mapping, linear between reference scores, held at the ends."""
    ranks = np.linspace(0.0, 1.0, len(target_sorted))
    rank = np.interp(score, np.sort(np.asarray(reference, dtype=np.float64)), ranks)
    return float(np.interp(rank, ranks, target_sorted))


def out_of_fold(
    config: TrainConfig,
    accelerator: Accelerator,
    tokenizer,
    features: datasets.DatasetDict,
    settings: LearnConfig,
    labels: Sequence[int],
    texts: Sequence[str] | None,
    replay_texts: Sequence[str] | None,
) -> HeldOut:
    """P(spam) of each site message from a model trained without its fold, each fold
    model's scores of the replay corpus's validation split (if there is one), and, given
    the site's ``texts``, the site evidence of each from ``out_of_fold_evidence``."""
    fold_of = assign_folds(labels, settings.folds, settings.seed)
    scores = [0.0] * len(labels)
    references: list[list[float]] | None = [] if "validation" in features else None
    with tempfile.TemporaryDirectory(prefix="spamfilter-learn-") as scratch:
        for fold, kept, held in fold_splits(fold_of, settings.folds):
            run = dataclasses.replace(config, output_dir=str(Path(scratch) / f"fold-{fold}"))
            model, _ = fit(run, accelerator, training_set(features, kept, settings.replay_ratio))
            loader = eval_loader(accelerator, tokenizer, features["site"].select(held), config)
            _, held_scores = predict(accelerator, model, loader)
            for row, score in zip(held, held_scores, strict=True):
                scores[row] = score
            if references is not None:
                loader = eval_loader(accelerator, tokenizer, features["validation"], config)
                references.append(predict(accelerator, model, loader)[1])
            del model, loader
            accelerator.free_memory()  # the prepared model, optimizer and loaders of this fold
    words = None
    if texts is not None:
        words = out_of_fold_evidence(texts, labels, replay_texts, settings.seed)
    return HeldOut(scores, fold_of, references, words)


def out_of_fold_evidence(
    texts: Sequence[str], labels: Sequence[int], replay_texts: Sequence[str], seed: int
) -> list[float]:
    """The site evidence of each site message from a ``SiteEvidence`` fitted without it.

    Its own ``WORD_FOLDS`` folds, finer than the encoder's: a word model takes a second to
    fit where an encoder takes minutes, and one fitted on nine tenths of the site's mail
    speaks nearly as firmly as the final one, fitted on all of it. On a third less mail
    its evidence is weaker, so the threshold chosen on it lands higher than the final
    model needs (docs/evaluation.md).
    """
    words = [0.0] * len(labels)
    for _, kept, held in fold_splits(assign_folds(labels, WORD_FOLDS, seed), WORD_FOLDS):
        evidence = SiteEvidence.fit(
            [texts[row] for row in kept], [labels[row] for row in kept], replay_texts
        )([texts[row] for row in held])
        for row, value in zip(held, evidence.tolist(), strict=True):
            words[row] = value
    return words


def training_set(
    features: datasets.DatasetDict, site_rows: Sequence[int], replay_ratio: float
) -> datasets.Dataset:
    """These site messages plus ``replay_ratio`` replayed messages for each of them."""
    site = features["site"].select(site_rows)
    if "replay" not in features:
        return site
    replayed = min(round(replay_ratio * len(site_rows)), len(features["replay"]))
    return datasets.concatenate_datasets([site, features["replay"].select(range(replayed))])


def fit(config: TrainConfig, accelerator: Accelerator, examples: datasets.Dataset):
    """The parent model (``config.model_name_or_path``) trained on ``examples``: the model,
    prepared by ``accelerator``, and the loop's throughput figures."""
    set_seed(config.seed)
    tokenizer, model = setup_model(config)
    loader = loaders(datasets.DatasetDict({"train": examples}), tokenizer, config)["train"]
    plan = training_plan(config, accelerator, len(loader))
    optimizer = setup_optimizer(model, config, accelerator)
    scheduler = setup_scheduler(optimizer, plan, accelerator, config)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    start = checkpoint.Progress(completed_steps=0, epoch=0, batches_in_epoch=0)
    throughput = train(
        config, accelerator, model, optimizer, scheduler, loader, None, plan, start,
        save_checkpoints=False,
    )  # fmt: skip
    return model, throughput


def eval_loader(
    accelerator: Accelerator, tokenizer, examples: datasets.Dataset, config: TrainConfig
):
    """Ordered batches of ``examples``, prepared for ``predict``."""
    loader = loaders(datasets.DatasetDict({"eval": examples}), tokenizer, config)["eval"]
    return accelerator.prepare(loader)


# --- the record --------------------------------------------------------------------------


def calibration_record(
    settings: LearnConfig,
    points: dict[str, OperatingPoint | None],
    held_out: HeldOut,
    uncarried_tag: float,
    site_words: SiteWords | None,
) -> dict:
    """How the thresholds were chosen, as ``spamfilter.model.calibration`` records it."""
    facts = {
        "split": "site mail, out of fold",
        "folds": settings.folds,
        "scores": held_out.scale_note(),
        # the encoder's tag threshold on the fold models' own scales, before any blend
        "uncarried_tag": uncarried_tag,
        "site_words": words_record(site_words, settings),
        "chosen_at": now(),
    }
    if points["tag"].too_little_ham:
        facts["warning"] = points["tag"].statement("tag") + "; feed more ham"
    calibration: dict = {}
    for which, point in points.items():
        record_tuned(calibration, which, point, **facts)
    return calibration


def words_record(site_words: SiteWords | None, settings: LearnConfig) -> dict:
    """What the card says of the site words: their blend with the encoder, or why none."""
    if site_words is None:
        why = "blend gave them no weight" if settings.site_words else "site_words off"
        return {"served": False, "why": why}
    gate = site_words.evidence.gate
    return {
        "served": True,
        "words": len(site_words.evidence.words.vocabulary),
        "gate_words": len(gate.vocabulary) if gate is not None else None,
        "blend": dataclasses.asdict(site_words.blend),
    }


def training_data(site: sitemail.SiteMail, replay: Replay) -> dict[str, datasets.Dataset]:
    parts = {"site": site.dataset}
    if replay.pool is not None:
        parts["replay"] = replay.pool
    return parts


def learned_from(
    parent_dir: Path, settings: LearnConfig, site: sitemail.SiteMail, replay: Replay
) -> dict:
    """What the card records of the run: the parent, the site's mail, the replay sample."""
    return {
        "parent_model": model_id(parent_dir),
        "parent_dir": str(parent_dir),
        "site": {
            "spam": site.count("spam"),
            "ham": site.count("ham"),
            "fingerprint": data.fingerprint({"site": site.dataset}),
            "folders": [dataclasses.asdict(folder) for folder in site.folders],
            "not_mail_skipped": sum(folder.not_mail for folder in site.folders),
            "duplicates_dropped": site.duplicates,
        },
        "replay": {
            "data": replay.spec,
            "scheme": replay.scheme,
            "split": "train",
            "messages": len(replay.pool) if replay.pool is not None else 0,
            "fingerprint": (
                data.fingerprint({"replay": replay.pool}) if replay.pool is not None else None
            ),
        },
        "settings": dataclasses.asdict(settings),
        "learned_at": now(),
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- writing and installing ----------------------------------------------------------------


@contextlib.contextmanager
def partial_directory(output: Path) -> Iterator[Path]:
    """A directory to write the model into, renamed to ``output`` once complete.

    It is ``<parent>/.NAME.partial-XXXX/NAME``, named as ``output`` all along, since the
    model id that the ONNX export records includes the name. On any error it is removed
    and ``output`` never appears.
    """
    scratch = output.with_name(f".{output.name}.partial-{secrets.token_hex(4)}")
    partial = scratch / output.name
    try:
        partial.mkdir(parents=True)
        yield partial
        missing = [name for name in ONNX_FILES.values() if not (partial / name).is_file()]
        if missing:
            raise LearnError(
                f"the ONNX export failed ({', '.join(missing)} missing; see the warning above); "
                f"nothing was written to {output}"
            )
        sync_tree(partial)
        os.rename(partial, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sync_tree(directory: Path) -> None:
    """fsync every file and the directory, so a crash after the rename leaves no empty files."""
    for path in [*directory.rglob("*"), directory]:
        if path.is_file() or path.is_dir():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def point(link: Path, directory: Path) -> None:
    """Make ``link`` a symlink to ``directory`` (relative, so the tree can move) atomically."""
    target = os.path.relpath(directory.absolute(), link.parent.absolute())
    temporary = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
