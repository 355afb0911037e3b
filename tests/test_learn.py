"""``spamfilter learn`` on the tiny model: site mail in every folder format, the new model
directory read back and served, the parent untouched, and each bad input's error."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import mailbox
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from spamfilter import cli
from spamfilter.model.classifier import Classifier
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import CARD_FILE, WORDS_FILE, model_id, read_card
from spamfilter.model.sitewords import SiteEvidence
from spamfilter.smtp import quarantine
from spamfilter.smtp.policy import Policy
from spamrig.clients import delivered_ids, numbered_message, send, spam_headers
from spamrig.daemon import daemon_process, filter_config, running_filter, serve_args, wait_for
from spamrig.sink import sink
from spamrig.synthetic import make_message, write_maildir
from spamtrain.learn import continued_config, out_of_fold_evidence
from spamtrain.learnconfig import LearnConfig
from spamtrain.sitemail import MIN_PER_LABEL, looks_like_mail, read_site_mail

pytestmark = pytest.mark.timeout(600)  # the first test also runs learn (module fixture)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
NOTES = b"shopping list\n- milk\n- bread\n"
FILES = ("config.json", "model.safetensors", "tokenizer.json", CARD_FILE, "train_log.jsonl")
ONNX = ("model.onnx", "model.int8.onnx")


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")


def write_directory(folder: Path, raws: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, raw in enumerate(raws):
        (folder / f"{index:04d}.eml").write_bytes(raw)
    return folder


def write_mbox(path: Path, raws: list[bytes]) -> Path:
    box = mailbox.mbox(path, create=True)
    for raw in raws:
        box.add(raw)
    box.flush()
    box.close()
    return path


def write_quarantine(folder: Path, raws: list[bytes]) -> Path:
    """What ``serve`` stores: our X-Spam-* headers, the envelope headers, the message."""
    policy = Policy(model_id="tiny@00000000", tag=0.5, quarantine=0.9)
    for raw in raws:
        quarantine.store(str(folder), policy.rewrite(crlf(raw), 0.97), "a@example.org", ["u@x"])
    return folder


def tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def learn(*argv: object) -> tuple[int, str, str]:
    """``spamfilter learn ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["learn", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict[str, Path]:
    """16 spam (a quarantine Maildir and an mbox) and 16 ham (a directory with two non-mail
    files, and a Maildir): every input format."""
    root = tmp_path_factory.mktemp("site")
    spam = [make_message(1, 300 + index) for index in range(16)]
    ham = [make_message(0, 300 + index) for index in range(16)]
    folders = {
        "quarantine": write_quarantine(root / "quarantine", spam[:8]),
        "junk.mbox": write_mbox(root / "junk.mbox", spam[8:]),
        "ham-files": write_directory(root / "ham-files", ham[:10]),
        "inbox": write_maildir(root / "Maildir", ham[10:]),
    }
    (folders["ham-files"] / "logo.png").write_bytes(PNG)
    (folders["ham-files"] / "notes.txt").write_bytes(NOTES)
    return folders


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model_dir, synthetic_corpus, site):
    """One learn run with --install, from a private copy of the tiny model."""
    root = tmp_path_factory.mktemp("learn")
    parent = Path(shutil.copytree(tiny_model_dir, root / "parent"))
    before = tree_digest(parent)
    output = root / "site"
    result = learn(
        "--model", parent, "--output", output, "--install",
        "--spam", site["quarantine"], "--spam", site["junk.mbox"],
        "--ham", site["ham-files"], "--ham", site["inbox"],
        "--replay-data", synthetic_corpus, "--replay-ratio", "0.5",
        "--learning-rate", "1e-3", "--epochs", "2",
    )  # fmt: skip
    return {"parent": parent, "before": before, "output": output, "result": result, "root": root}


def test_learn_writes_a_complete_model_directory_and_leaves_the_parent_alone(learned):
    code, out, err = learned["result"]
    assert code == 0, err
    output, parent = learned["output"], learned["parent"]
    for name in (*FILES, *ONNX):
        assert (output / name).is_file(), name
    assert tree_digest(parent) == learned["before"]  # not a byte of the parent changed
    assert sorted(p.name for p in learned["root"].iterdir()) == ["current", "parent", "site"]
    card = read_card(output)
    lineage = card.training["learned_from"]
    assert lineage["parent_model"] == model_id(parent)
    assert (lineage["site"]["spam"], lineage["site"]["ham"]) == (16, 16)
    assert lineage["site"]["not_mail_skipped"] == 2
    assert [(f["kind"], f["label"], f["messages"]) for f in lineage["site"]["folders"]] == [
        ("maildir", "spam", 8),
        ("mbox", "spam", 8),
        ("directory", "ham", 10),
        ("maildir", "ham", 6),
    ]
    assert len(lineage["site"]["fingerprint"]) == 16
    assert lineage["replay"]["messages"] == 16  # 0.5 per site message
    assert card.training["config"]["data"] == lineage["replay"]["data"]
    assert card.max_length == read_card(parent).max_length
    assert card.calibration["split"] == "site mail, out of fold"
    assert "carried to this model's scale" in card.calibration["scores"]
    assert (card.calibration["n_ham"], card.calibration["n_spam"]) == (16, 16)
    assert 0 < card.thresholds.tag < 1
    assert card.metrics["site_out_of_fold"]["n"] == 32
    assert card.metrics["validation"]["n"] > 0  # the replay corpus's validation split
    record = card.calibration["tag"]
    assert (record["method"], record["confidence"], record["n_ham"], record["bound_met"]) == (
        "clopper-pearson", 0.95, 16, False
    )  # fmt: skip
    too_few = "on 16 ham (0 above); too little ham: the target 0.1% needs >= 2,995 ham"
    assert too_few in card.calibration["warning"] and too_few in out
    assert "; feed more ham" in err
    first, second = load_file(parent / "model.safetensors"), load_file(output / "model.safetensors")
    assert any(not first[name].equal(second[name]) for name in first)  # it did learn
    assert model_id(output) != model_id(parent)
    assert "learned from 16 spam and 16 ham" in out and "non-mail files skipped: 2" in out
    words = card.calibration["site_words"]
    assert words["served"] and words["words"] > 0 and words["blend"]["words"] > 0
    assert (output / WORDS_FILE).is_file() and "site words: " in out


def test_the_learned_model_scores_and_serves(learned):
    output = learned["output"]
    exported = (output / "model.onnx").stat().st_mtime_ns
    classifier = Classifier(output, precision="onnx-fp32")
    assert (output / "model.onnx").stat().st_mtime_ns == exported  # current: not re-exported
    spam, ham = classifier.score_raw([make_message(1, 700), make_message(0, 700)])
    assert spam > ham
    with sink() as (captured, sink_port), running_filter(filter_config(output, sink_port)) as d:
        send(d.smtp_address[1], crlf(make_message(1, 701)))
    status = spam_headers(captured.deliveries[0].content)["X-Spam-Status"]
    assert f"model={model_id(output)}" in status and model_id(output).startswith("site@")


def test_the_sites_words_teach_what_the_encoder_does_not_know(
    tiny_model_dir, synthetic_corpus, tmp_path
):
    """The site calls a newsletter of ham words spam: learned with its words, fresh issues
    score higher than learned without them, and the card says which model serves."""
    newsletter = [with_words(make_message(0, 400 + i), b"zorblax weekly digest") for i in range(16)]
    inbox = [make_message(0, 500 + i) for i in range(16)]
    spam = write_directory(tmp_path / "junk", newsletter)
    ham = write_directory(tmp_path / "inbox", inbox)
    scores = {}
    for words in ("true", "false"):
        output = tmp_path / f"words-{words}"
        code, out, err = learn(
            "--model", tiny_model_dir, "--output", output, "--spam", spam, "--ham", ham,
            "--replay-data", synthetic_corpus, "--replay-ratio", "0.5",
            "--epochs", "1", "--site-words", words,
        )  # fmt: skip
        assert code == 0, err
        fresh = [with_words(make_message(0, 600 + i), b"zorblax weekly digest") for i in range(8)]
        scores[words] = Classifier(output, precision="fp32").score_raw(fresh)
        assert (output / WORDS_FILE).is_file() == (words == "true")
        served = read_card(output).calibration["site_words"]
        assert served["served"] == (words == "true")
    assert "site words: not served (site_words off)" in out
    assert min(scores["true"]) > max(scores["false"])


def with_words(raw: bytes, words: bytes) -> bytes:
    """``raw`` with ``words`` added at the end of its (plain text) body."""
    return raw.rstrip(b"\n") + b" " + words + b"\n"


def test_install_points_current_at_the_new_directory_and_swaps_it_atomically(learned):
    from spamtrain.learn import point

    current = learned["root"] / "current"
    assert current.is_symlink() and os.readlink(current) == "site"  # relative: the tree can move
    assert model_id(current) == model_id(learned["output"])
    point(current, learned["parent"])  # over the existing link
    assert os.readlink(current) == "parent"
    assert not [p for p in learned["root"].iterdir() if p.name.startswith(".")]
    point(current, learned["output"])


def test_the_quarantine_maildir_is_read_as_it_is_and_its_headers_are_not_features(site):
    stored = sorted((site["quarantine"] / "new").iterdir())
    assert stored and stored[0].read_bytes().startswith(b"X-Spam-Envelope-From: ")
    originals = {email_to_text(crlf(make_message(1, 300 + index))) for index in range(8)}
    assert {email_to_text(path.read_bytes()) for path in stored} == originals
    folder = read_site_mail([site["quarantine"], site["junk.mbox"]], [site["ham-files"]])
    assert [f.kind for f in folder.folders] == ["maildir", "mbox", "directory"]


def test_maildir_reads_cur_and_new_but_not_tmp(tmp_path):
    box = write_maildir(tmp_path / "box", [make_message(0, n) for n in range(12)])
    (box / "tmp" / "partial").write_bytes(make_message(0, 99))  # still being delivered
    spam = write_directory(tmp_path / "spam", [make_message(1, n) for n in range(12)])
    ham = read_site_mail([spam], [box])
    sources = ham.dataset.filter(lambda row: row["label"] == 0)["source"]
    assert len(sources) == 12 and {Path(s).parent.name for s in sources} == {"cur", "new"}


def test_repeated_copies_under_one_label_are_kept_once(tmp_path):
    spam = [make_message(1, n) for n in range(12)]
    ham = write_directory(tmp_path / "ham", [make_message(0, n) for n in range(12)])
    files, mbox = write_directory(tmp_path / "a", spam), write_mbox(tmp_path / "b", spam[:3])
    mail = read_site_mail([files, mbox], [ham])
    assert (mail.count("spam"), mail.duplicates) == (12, 3)


def test_each_site_messages_word_evidence_comes_from_a_fit_without_it():
    """The fewest messages learn takes (MIN_PER_LABEL of each, as many as WORD_FOLDS): every
    fold still fits on both labels, and a spam message told apart only by words of its own
    looks, out of fold, like the ham it otherwise is."""
    ham = [email_to_text(make_message(0, 200 + i)) for i in range(MIN_PER_LABEL)]
    odd_one = email_to_text(make_message(0, 100)) + " quuxfoo blargzot fnordwib zimzam plonkit"
    spam = [email_to_text(make_message(1, i)) for i in range(MIN_PER_LABEL - 1)] + [odd_one]
    texts, labels = spam + ham, [1] * MIN_PER_LABEL + [0] * MIN_PER_LABEL
    held_out = out_of_fold_evidence(texts, labels, [], seed=0)  # no replay: no gate
    assert len(held_out) == len(texts) and np.isfinite(held_out).all()
    (in_sample,) = SiteEvidence.fit(texts, labels, [])([odd_one])
    assert held_out[MIN_PER_LABEL - 1] < 0 < in_sample


def test_out_of_fold_scores_are_carried_to_the_final_models_scale_by_rank():
    from spamtrain.learn import on_scale_of

    fold_model = [0.1, 0.5, 0.9, 0.99]  # the reference messages' scores, per model
    final = np.array([0.2, 0.6, 0.95, 0.997])
    assert on_scale_of(0.9, fold_model, final) == pytest.approx(0.95)  # the same rank
    assert on_scale_of(0.7, fold_model, final) == pytest.approx(0.775)  # between ranks
    assert on_scale_of(0.999, fold_model, final) == pytest.approx(0.997)  # held at the ends
    assert on_scale_of(0.0, fold_model, final) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (make_message(1, 1), True),
        (b"From alice@example.org Mon Jan  1 00:00:00 2024\n" + make_message(0, 1), True),
        (b"Received: from x\n\tby y\nSubject: hi\n\nbody\n", True),
        (PNG, False),
        (NOTES, False),
        (b"Note: a text file\nwith: colons\n\nbody\n", False),
        (b"", False),
    ],
)
def test_looks_like_mail(raw, expected):
    assert looks_like_mail(raw) is expected


# --- bad input: one clear error, exit status 2, nothing written ----------------------------


@pytest.fixture
def ok(tmp_path) -> dict[str, Path]:
    """Enough good spam and ham, and a model, for the one bad argument of each test."""
    return {
        "spam": write_directory(tmp_path / "spam", [make_message(1, n) for n in range(12)]),
        "ham": write_directory(tmp_path / "ham", [make_message(0, n) for n in range(12)]),
    }


def refused(tiny_model_dir, tmp_path, *argv: object, spam=None, ham=None, ok=None) -> str:
    output = tmp_path / "out"
    code, out, err = learn(
        "--model", tiny_model_dir, "--output", output, "--replay-ratio", "0",
        "--spam", spam or ok["spam"], "--ham", ham or ok["ham"], *argv,
    )  # fmt: skip
    assert code == 2, out + err
    assert not output.exists()
    assert err.startswith("spamfilter: error: ") and "Traceback" not in err
    return err


def test_a_missing_folder(tiny_model_dir, tmp_path, ok):
    err = refused(tiny_model_dir, tmp_path, spam=tmp_path / "Junk", ok=ok)
    assert f"{tmp_path / 'Junk'}: no such file or directory" in err


def test_an_empty_folder_and_an_empty_maildir(tiny_model_dir, tmp_path, ok):
    (tmp_path / "empty").mkdir()
    assert "empty folder: no messages" in refused(
        tiny_model_dir, tmp_path, spam=tmp_path / "empty", ok=ok
    )
    mailbox.Maildir(tmp_path / "Junk", create=True)
    err = refused(tiny_model_dir, tmp_path, spam=tmp_path / "Junk", ok=ok)
    assert "empty Maildir (cur/ and new/): no messages" in err


def test_an_empty_mbox_and_a_lone_message_file(tiny_model_dir, tmp_path, ok):
    (tmp_path / "empty.mbox").write_bytes(b"")
    err = refused(tiny_model_dir, tmp_path, ham=tmp_path / "empty.mbox", ok=ok)
    assert "empty.mbox: no messages (is it an mbox file?)" in err
    (tmp_path / "one.eml").write_bytes(make_message(0, 1))  # a message, not an mbox
    err = refused(tiny_model_dir, tmp_path, ham=tmp_path / "one.eml", ok=ok)
    assert "one.eml: no messages (is it an mbox file?)" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder(tiny_model_dir, tmp_path, ok):
    ok["spam"].chmod(0)
    try:
        assert "cannot read the folder" in refused(tiny_model_dir, tmp_path, ok=ok)
    finally:
        ok["spam"].chmod(0o755)


def test_a_folder_of_non_mail_files(tiny_model_dir, tmp_path, ok):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(PNG)
    (folder / "b.txt").write_bytes(NOTES)
    err = refused(tiny_model_dir, tmp_path, ham=folder, ok=ok)
    assert "none of its 2 files is a mail message" in err and "a.png" in err


def test_too_few_messages_of_a_label(tiny_model_dir, tmp_path, ok):
    few = write_directory(tmp_path / "few", [make_message(0, n) for n in range(MIN_PER_LABEL - 1)])
    err = refused(tiny_model_dir, tmp_path, ham=few, ok=ok)
    assert f"12 spam and {MIN_PER_LABEL - 1} ham" in err
    assert f"at least {MIN_PER_LABEL} of each are needed" in err


def test_the_same_message_as_spam_and_as_ham_names_both_files(tiny_model_dir, tmp_path, ok):
    (ok["ham"] / "moved.eml").write_bytes((ok["spam"] / "0003.eml").read_bytes())
    err = refused(tiny_model_dir, tmp_path, ok=ok)
    assert "1 message(s) given both as spam and as ham" in err
    assert f"spam: {ok['spam'] / '0003.eml'}" in err and f"ham:  {ok['ham'] / 'moved.eml'}" in err


def test_an_existing_output_is_never_replaced(tiny_model_dir, tmp_path, ok):
    (tmp_path / "out").mkdir()
    code, _, err = learn(
        "--model", tiny_model_dir, "--output", tmp_path / "out",
        "--spam", ok["spam"], "--ham", ok["ham"], "--replay-ratio", "0",
    )  # fmt: skip
    assert code == 2 and "already exists" in err and not any((tmp_path / "out").iterdir())


def test_install_refuses_to_replace_a_real_directory(tiny_model_dir, tmp_path, ok):
    (tmp_path / "current").mkdir()
    err = refused(tiny_model_dir, tmp_path, "--install", ok=ok)
    assert "current: exists and is not a symlink" in err


def test_a_card_without_its_corpus_needs_replay_data(tiny_model_dir, tmp_path, ok):
    code, _, err = learn(
        "--model", tiny_model_dir, "--output", tmp_path / "out",
        "--spam", ok["spam"], "--ham", ok["ham"],
    )  # fmt: skip
    assert code == 2 and "pass --replay-data SPEC" in err and "--replay-ratio 0" in err


@pytest.mark.parametrize(
    ("asked", "recorded", "used"), [(None, 0.9, 0.9), (0.0, 0.9, 0.0), (None, None, 0.95)]
)
def test_learn_keeps_the_parents_confidence_unless_asked(tiny_model_dir, asked, recorded, used):
    card = read_card(tiny_model_dir)
    if recorded is not None:
        card.calibration["tag"] = {"confidence": recorded}
    settings = LearnConfig(confidence=asked)
    config = continued_config(card, tiny_model_dir, settings, Path("out"), None)
    assert config.confidence == used


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--folds", "1", "folds must be at least 2"),
        ("--epochs", "x", "bad value for 'epochs'"),
        ("--confidence", "1", "confidence must lie in [0, 1)"),
    ],
)
def test_bad_settings(tiny_model_dir, tmp_path, ok, flag, value, message):
    assert message in refused(tiny_model_dir, tmp_path, flag, value, ok=ok)


def test_a_model_built_for_other_mail_text_is_refused(tiny_model_dir, tmp_path, ok):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "old"))
    card = json.loads((model / CARD_FILE).read_text())
    (model / CARD_FILE).write_text(json.dumps({**card, "text_version": 0}))
    assert "mail text version 0" in refused(model, tmp_path, ok=ok)


def test_learn_needs_no_training_stack_to_list_its_flags_and_says_what_to_install(tmp_path):
    """The serving image has no accelerate/datasets: learn --help still works, learn says."""
    blocked = "import sys; sys.modules['accelerate'] = sys.modules['datasets'] = None; "
    code = blocked + "from spamfilter.cli import main; sys.exit(main(sys.argv[1:]))"
    run = [sys.executable, "-c", code, "learn"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--replay-ratio" in helped.stdout
    args = ["--model", "m", "--spam", "s", "--ham", "h", "--output", str(tmp_path / "o")]
    done = subprocess.run([*run, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "pip install 'spamfilter[train]'" in done.stderr


# --- serve picks the learned model up on SIGHUP ----------------------------------------------

CLIENTS = 4
MOST_MESSAGES = 400  # the load stops by itself at this many, whatever happens


def test_sighup_swaps_to_the_learned_model_under_load_and_loses_nothing(
    learned, tiny_model_dir, tmp_path
):
    """serve --model current; while 4 clients send, `current` is pointed at the learned model
    and SIGHUP sent. Every message reaches the sink once; the new model's id is in the
    headers after the swap; a corrupt or mismatched model is then refused and the new one kept.
    """
    from spamtrain.learn import point

    old = Path(shutil.copytree(tiny_model_dir, tmp_path / "old"))
    current = tmp_path / "current"
    point(current, old)
    old_id, new_id = model_id(old), model_id(learned["output"])
    numbers, lock, stop = itertools.count(), threading.Lock(), threading.Event()

    def take() -> int | None:
        with lock:
            number = next(numbers)
        return None if stop.is_set() or number >= MOST_MESSAGES else number

    def client(port: int) -> dict[int, dict]:
        answers = {}
        while (number := take()) is not None:
            answers[number] = send(port, numbered_message(number))
        return answers

    with (
        sink() as (captured, sink_port),
        daemon_process(serve_args(current, sink_port)) as (process, port, log),
    ):
        with ThreadPoolExecutor(CLIENTS) as pool:
            clients = [pool.submit(client, port) for _ in range(CLIENTS)]
            wait_for(lambda: len(captured.deliveries) >= 20, timeout=60)
            point(current, learned["output"])
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: reloaded(log, new_id), timeout=60)
            swapped_at = len(captured.deliveries)
            wait_for(lambda: len(captured.deliveries) >= swapped_at + 20, timeout=60)
            stop.set()
            answers = {n: a for future in clients for n, a in future.result(60).items()}
        after_swap = numbered_message(MOST_MESSAGES)
        send(port, after_swap)
        damages = (("corrupt", corrupt_card), ("mismatched", other_text_version))
        for number, (name, damage) in enumerate(damages, MOST_MESSAGES + 1):
            broken = Path(shutil.copytree(learned["output"], tmp_path / name))
            damage(broken)
            point(current, broken)
            failures = sum("reload failed" in line for line in log)
            process.send_signal(signal.SIGHUP)
            wait_for(lambda seen=failures: sum("reload failed" in line for line in log) > seen)
            send(port, numbered_message(number))
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert all(answer == {} for answer in answers.values())  # all answered 250
    assert len(answers) < MOST_MESSAGES  # the swap happened under load, before the cap
    numbers_held = delivered_ids(captured.deliveries)
    assert sorted(numbers_held) == sorted([*answers, *range(MOST_MESSAGES, MOST_MESSAGES + 3)])
    models = [model_named(delivery.content) for delivery in captured.deliveries]
    assert models[0] == old_id and models[-3:] == [new_id] * 3  # refused models never served
    assert set(models) == {old_id, new_id}
    assert any("reload failed" in line and "not a valid spamfilter.json" in line for line in log)
    assert any("mail text version 0" in line for line in log)


def reloaded(log: list[str], identity: str) -> bool:
    return any("reloaded:" in line and f"model={identity}" in line for line in log)


def model_named(content: bytes) -> str:
    return re.search(r"model=(\S+)", spam_headers(content)["X-Spam-Status"]).group(1)


def corrupt_card(model: Path) -> None:
    (model / CARD_FILE).write_text('{"thresholds": ')


def other_text_version(model: Path) -> None:
    card = json.loads((model / CARD_FILE).read_text())
    (model / CARD_FILE).write_text(json.dumps({**card, "text_version": 0}))
