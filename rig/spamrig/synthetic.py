"""Test material made locally: synthetic mail and a tiny BERT model directory.

The tiny model is a real ``BertForSequenceClassification`` (2 layers, hidden 32) with a
real WordPiece tokenizer, trained for a few seconds on the synthetic mail below until it
separates spam from ham, then saved in the model-directory format the filter serves. The
trigger model learns a rule with a known answer (one word makes mail spam), for tests of
explanations.
"""

from __future__ import annotations

import mailbox
import random
from email.message import EmailMessage
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from spamfilter.model.encode import encode
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import LABELS, ModelCard, Thresholds, write_card
from spamfilter.model.onnxmodel import export_onnx

SPAM_WORDS = (
    "viagra cheap pills winner lottery prize claim cash free offer click unsubscribe "
    "million dollars bank transfer urgent casino bonus discount pharmacy guaranteed"
).split()
HAM_WORDS = (
    "meeting agenda project review patch commit release notes kernel build thanks "
    "tomorrow lunch schedule minutes draft report question python debian config"
).split()
TRIGGER = "casino"  # the one word that makes trigger_message spam
FILLER = [word for word in SPAM_WORDS + HAM_WORDS if word != TRIGGER]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "subject", ":", "from", "<", ">", "@"]
VOCAB += SPAM_WORDS + HAM_WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?-")


def make_message(label: int, index: int, rng: random.Random | None = None) -> bytes:
    """A plausible raw message: spam (label 1) uses spam words, ham (label 0) ham words."""
    rng = rng or random.Random(index * 2 + label)
    words = SPAM_WORDS if label else HAM_WORDS
    message = EmailMessage()
    message["From"] = f"sender{index} <sender{index}@example.org>"
    message["To"] = "user@example.net"
    message["Subject"] = " ".join(rng.choices(words, k=4))
    message["Message-ID"] = f"<{label}.{index}@example.org>"
    message.set_content(" ".join(rng.choices(words, k=40)) + f"\nref {index}\n")
    return message.as_bytes()


def long_line_message(length: int) -> bytes:
    """A CRLF message whose body has one line of ``length`` bytes (the CRLF not counted),
    as badly generated HTML mail has: words without a line break, ending in a marker."""
    words = (" ".join(HAM_WORDS) + " ").encode()
    line = (words * (length // len(words) + 1))[: length - 4] + b"!end"
    return (
        b"From: wide <wide@example.org>\r\nTo: user@example.net\r\n"
        b"Subject: one long line\r\nMessage-ID: <wide@example.org>\r\n\r\n"
        b"before\r\n" + line + b"\r\nafter\r\n"
    )


def write_maildirs(root: Path, per_label: int = 40) -> Path:
    """``root/spam`` and ``root/ham`` with ``per_label`` raw messages each; returns ``root``."""
    for label, name in ((1, "spam"), (0, "ham")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_label):
            (folder / f"{index:04d}.eml").write_bytes(make_message(label, index))
    return root


def write_maildir(folder: Path, raws: list[bytes]) -> Path:
    """Half in new/ (just delivered), half in cur/ (seen), as an IMAP server leaves them."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    box = mailbox.Maildir(folder, create=True)
    for index, raw in enumerate(raws):
        message = mailbox.MaildirMessage(raw)
        if index % 2:
            message.set_subdir("cur")
            message.set_flags("S")
        box.add(message)
    return folder


def make_tokenizer(directory: Path) -> BertTokenizerFast:
    vocab = {token: index for index, token in enumerate(dict.fromkeys(VOCAB))}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


def tiny_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={name: index for index, name in enumerate(LABELS)},
    )


def make_untrained_model_dir(directory: Path) -> Path:
    """A tiny BERT base model (no card): what ``--model_name_or_path`` points at in tests."""
    tokenizer = make_tokenizer(directory)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(len(tokenizer)))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def trigger_message(label: int, index: int, rng: random.Random) -> bytes:
    """Mail whose label one word decides: filler drawn from every word but ``TRIGGER``,
    and for spam (label 1) ``TRIGGER`` once, somewhere in the body."""
    message = EmailMessage()
    message["From"] = f"sender{index} <sender{index}@example.org>"
    message["Subject"] = " ".join(rng.choices(FILLER, k=3))
    words = rng.choices(FILLER, k=rng.randint(12, 30))
    if label:
        words.insert(rng.randrange(len(words) + 1), TRIGGER)
    message.set_content(" ".join(words) + "\n")
    return message.as_bytes()


def make_trigger_model_dir(directory: Path) -> Path:
    """A tiny BERT that learnt ``trigger_message``'s rule: spam if and only if TRIGGER."""
    rng = random.Random(0)
    mail = [(trigger_message(label, i, rng), label) for i in range(64) for label in (0, 1)]
    return make_trained_model_dir(directory, mail=mail, learning_rate=1e-3)


def make_trained_model_dir(
    directory: Path,
    max_length: int = 64,
    steps: int = 60,
    mail: list[tuple[bytes, int]] | None = None,
    learning_rate: float = 3e-3,
) -> Path:
    """A tiny BERT trained on synthetic mail until it separates spam from ham, with a card
    and the ONNX files the filter serves by default: the files training writes.

    ``mail``: (raw message, label) pairs to train on; by default 32 of each label from
    ``make_message``.
    """
    tokenizer = make_tokenizer(directory)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(len(tokenizer)))
    rng = random.Random(0)
    raws = mail or [(make_message(label, i, rng), label) for i in range(32) for label in (0, 1)]
    texts = [email_to_text(raw) for raw, _ in raws]
    labels = torch.tensor([label for _, label in raws])
    batch = tokenizer.pad(encode(tokenizer, texts, max_length), return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_card(
        directory,
        ModelCard(max_length=max_length, thresholds=Thresholds(tag=0.5), base_model="tiny-bert"),
    )
    export_onnx(directory)
    return directory
