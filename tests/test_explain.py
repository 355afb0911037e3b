"""Explanations on a tiny model with a known answer: the phrases named move the score when
removed, X-Spam-Report through real SMTP, its failure and time bound, ``classify --explain``.

The trigger model learnt that one word (``support.TRIGGER``) makes mail spam, so a right
explanation of its spam must name the phrase holding that word, and removing that phrase
must undo the verdict, while removing the phrase it ranks last must not.
"""

from __future__ import annotations

import email
import email.policy
import json
import random
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from spamfilter import cli
from spamfilter.config import FilterConfig
from spamfilter.model.classifier import Classifier
from spamfilter.model.explain import Explainer, Explanation, Phrase
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import read_card, write_card
from spamfilter.model.odds import log_odds
from spamfilter.smtp.spamreport import PHRASE_CHARS, REPORT_PHRASES, header, summary
from spamrig.clients import our_prefix, send, spam_headers
from spamrig.daemon import filter_config, running_filter
from spamrig.sink import sink
from spamrig.synthetic import TRIGGER, make_trigger_model_dir, trigger_message

pytestmark = pytest.mark.timeout(240)


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")  # as on the wire


SPAM = [crlf(trigger_message(1, index, random.Random(100 + index))) for index in range(6)]
HAM = [crlf(trigger_message(0, index, random.Random(200 + index))) for index in range(2)]


@pytest.fixture(scope="module")
def trigger_model(tmp_path_factory) -> Path:
    return make_trigger_model_dir(tmp_path_factory.mktemp("trigger-model"))


@pytest.fixture(scope="module")
def classifier(trigger_model) -> Classifier:
    return Classifier(trigger_model, precision="onnx-fp32")


def without(text: str, words: Sequence[tuple[int, int]]) -> str:
    """``text`` with the characters of the (ordered) word spans cut out."""
    kept, position = [], 0
    for start, end in words:
        kept.append(text[position:start])
        position = end
    return "".join([*kept, text[position:]])


# --- the method --------------------------------------------------------------------------


def test_the_phrase_named_first_moves_the_score_when_removed_and_the_last_do_not(classifier):
    explainer = Explainer(classifier, 6, 8)
    texts = [email_to_text(raw) for raw in SPAM]
    for text, weighed, explanation in zip(
        texts, explainer.weigh(texts), explainer.explain_texts(texts), strict=True
    ):
        ranked = sorted(weighed, key=lambda item: -abs(item[1].weight))
        assert [phrase for _, phrase in ranked] == list(explanation.phrases)
        first_words, first = ranked[0]
        assert first.weight > 0, "the first phrase must be stated as spam-ward"
        assert TRIGGER in first.text.split()
        # as many words, from the phrases ranked last
        last_words = [w for words, _ in ranked[::-1] for w in words][: len(first_words)]
        full, no_first, no_last = classifier.score_texts(
            [text, without(text, first_words), without(text, sorted(last_words))]
        )
        assert full > 0.5
        moved_by_first = log_odds(full) - log_odds(no_first)  # in the stated direction
        moved_by_last = log_odds(full) - log_odds(no_last)
        assert moved_by_first > abs(moved_by_last) + 1.0
        assert no_first < 0.5 < no_last


def test_phrases_hold_exactly_the_words_the_model_reads(trigger_model, tmp_path):
    """Words past max_length are not named; with tail_tokens the tail's words are."""
    text = " ".join(f"w{index}" for index in range(100))  # one [UNK] token per word
    head_only = Explainer(Classifier(trigger_model, precision="fp32"), 6, 8)
    words = [w for phrase in head_only.weigh([text])[0] for w in phrase[1].text.split()]
    room = read_card(trigger_model).max_length - 2  # [CLS] and [SEP]
    assert words == [f"w{index}" for index in range(room)]

    tailed = Path(shutil.copytree(trigger_model, tmp_path / "tailed"))
    card = read_card(tailed)
    card.tail_tokens = 10
    write_card(tailed, card)
    tail = Explainer(Classifier(tailed, precision="fp32"), 6, 8)
    words = [w for phrase in tail.weigh([text])[0] for w in phrase[1].text.split()]
    assert words == [f"w{index}" for index in [*range(room - 10), *range(90, 100)]]


def test_an_empty_text_has_no_phrases(classifier):
    (explanation,) = Explainer(classifier, 6, 8).explain_texts([""])
    assert explanation.phrases == () and header(explanation) == b""


# --- the header ----------------------------------------------------------------------------


def test_the_report_header_is_bounded_folded_ascii_and_reads_back():
    explanation = Explanation(
        (
            Phrase("win a café naïve prize 日本", 4.25),
            Phrase('say "hi" \\ there', -1.5),
            Phrase("x" * 5000, 0.9),
            Phrase("never shown", 0.1),
        )
    )
    field = header(explanation)
    assert field.isascii() and field.startswith(b"X-Spam-Report: ")
    lines = field.split(b"\r\n")
    assert lines[-1] == b"" and all(len(line) <= 78 for line in lines)
    assert b"\n" not in field.replace(b"\r\n", b"") and b"\r" not in field.replace(b"\r\n", b"")
    assert all(line.startswith(b" ") for line in lines[1:-1])  # folded, not new fields
    parsed = email.message_from_bytes(field + b"\r\n", policy=email.policy.default)
    value = str(parsed["X-Spam-Report"])
    assert value == summary(explanation)
    assert value.startswith('+4.25 "win a café naïve prize 日本"; -1.50 "say \\"hi\\" \\\\ there"')
    assert value.count("; ") == REPORT_PHRASES - 1 and "never shown" not in value
    assert f'+0.90 "{"x" * (PHRASE_CHARS - 3)}..."' in value
    assert header(None) == b""


def test_the_report_header_defuses_control_characters_and_encoded_words():
    explanation = Explanation((Phrase("=?utf-8?q?forged?= \x1b[31mred\x85", 1.0),))
    value = str(
        email.message_from_bytes(header(explanation) + b"\r\n", policy=email.policy.default)[
            "X-Spam-Report"
        ]
    )
    assert value == summary(explanation) == '+1.00 "= ?utf-8?q?forged?= [31mred"'


def test_explain_phrases_must_be_positive_and_its_timeout_counts_in_the_session():
    problems = FilterConfig(model="m", explain_phrases=0).validate()
    assert "'explain_phrases' must be at least 1" in problems
    problems = FilterConfig(model="m", session_timeout=151, explain_timeout=2).validate()
    assert any("explain_timeout" in problem for problem in problems)


# --- through SMTP ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "spam_reported", "ham_reported"),
    [("tagged", True, False), ("all", True, True), ("off", False, False)],
)
def test_the_daemon_adds_x_spam_report_as_the_setting_says(
    trigger_model, caplog, mode, spam_reported, ham_reported
):
    caplog.set_level("INFO", logger="spamfilter")
    with sink() as (captured, sink_port):
        config = filter_config(trigger_model, sink_port, explain=mode)
        with running_filter(config) as daemon:
            send(daemon.smtp_address[1], SPAM[0])
            send(daemon.smtp_address[1], HAM[0])
    spam, ham = (
        spam_headers(our_prefix(d.content, raw))
        for d, raw in zip(captured.deliveries, (SPAM[0], HAM[0]), strict=True)
    )
    assert spam["X-Spam-Flag"] == "YES" and ham["X-Spam-Flag"] == "NO"
    assert ("X-Spam-Report" in spam) == spam_reported
    assert ("X-Spam-Report" in ham) == ham_reported
    logged = [r.getMessage() for r in caplog.records if "verdict=" in r.getMessage()]
    assert [" report='" in line for line in logged] == [spam_reported, ham_reported]
    if spam_reported:
        first = spam["X-Spam-Report"].split("; ")[0]
        assert first.startswith("+") and TRIGGER in first
        assert f"report='{first}" in logged[0]


class Raising:
    def explain_raw(self, messages):
        raise RuntimeError("explainer crashed")


class Stalling:
    """Explains nothing until ``release`` is set (then as a failure)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def explain_raw(self, messages):
        self.release.wait(60)
        raise RuntimeError("released")


def explanations(daemon, result: str) -> float:
    return daemon.metrics.registry.get_sample_value(
        "spamfilter_explanations_total", {"result": result}
    )


def test_a_failing_explainer_loses_nothing_and_is_logged(trigger_model, classifier, caplog):
    with sink() as (captured, sink_port):
        config = filter_config(trigger_model, sink_port, explain="all")
        with running_filter(config, classifier, Raising()) as daemon:
            assert send(daemon.smtp_address[1], SPAM[1]) == {}
            assert explanations(daemon, "error") == 1
    (delivery,) = captured.deliveries
    headers = spam_headers(our_prefix(delivery.content, SPAM[1]))
    assert headers["X-Spam-Flag"] == "YES" and "X-Spam-Report" not in headers
    assert any("explaining failed" in record.getMessage() for record in caplog.records)


def test_a_stalled_explainer_delays_mail_no_longer_than_explain_timeout(trigger_model, classifier):
    stalling = Stalling()
    with sink() as (captured, sink_port):
        config = filter_config(trigger_model, sink_port, explain="all", explain_timeout=0.5)
        with running_filter(config, classifier, stalling) as daemon:
            started = time.monotonic()
            assert send(daemon.smtp_address[1], SPAM[2]) == {}
            answered = time.monotonic() - started
            stalling.release.set()  # the worker thread can stop with the daemon
            assert explanations(daemon, "timeout") == 1
    assert answered < 10  # the explainer would have stalled for 60 s
    (delivery,) = captured.deliveries
    assert "X-Spam-Report" not in spam_headers(our_prefix(delivery.content, SPAM[2]))


# --- classify --explain ----------------------------------------------------------------------


def test_classify_explain_prints_the_phrases_as_a_table_and_in_json(
    capsys, trigger_model, tmp_path
):
    message = tmp_path / "spam.eml"
    message.write_bytes(SPAM[3])
    code = cli.main(["classify", "--explain", "--model", str(trigger_model), str(message)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith(f"{message}\t") and out[0].endswith("\tspam")
    assert out[1].split()[:2] == ["weight", "phrase"]
    weight, first = out[2].split(maxsplit=1)
    assert float(weight) > 0 and TRIGGER in first.split()
    assert len(out) == 2 + FilterConfig.explain_phrases  # one line per phrase

    code = cli.main(
        ["classify", "--explain", "--json", "--model", str(trigger_model), str(message)]
    )
    (line,) = capsys.readouterr().out.splitlines()
    shown = json.loads(line)
    assert code == 0 and shown["verdict"] == "spam"
    assert TRIGGER in shown["phrases"][0]["text"].split() and shown["phrases"][0]["weight"] > 0
    assert [p["text"] for p in shown["phrases"]] == [line.split(maxsplit=1)[1] for line in out[2:]]


def test_runs_bounded_in_tokens_score_as_one_run(classifier):
    """The explainer's phrases go through score_texts with max_tokens: same scores."""
    texts = [email_to_text(raw) for raw in SPAM + HAM] + ["casino", "a b c"]
    bounded = classifier.score_texts(texts, batch_size=100, max_tokens=40)
    assert bounded == pytest.approx(classifier.score_texts(texts), abs=1e-5)


def test_scoring_beside_the_explainer_scores_every_message_as_alone(classifier):
    """The daemon scores in one thread and explains in another, with one tokenizer: an
    explainer's untruncated call must never let the scorer's texts through at full length
    (other scores, or past the model's positions a failed run and an unscored message)."""
    long_texts = [email_to_text(raw) * 20 for raw in SPAM + HAM]  # far past max_length
    alone = classifier.score_texts(long_texts)
    explainer = Explainer(classifier, phrases=4, batch_size=4)
    scored, failures, done = [], [], threading.Event()

    def explain_until_done() -> None:
        while not done.is_set():
            explainer.weigh(long_texts[:2])

    beside = threading.Thread(target=explain_until_done)
    beside.start()
    try:
        deadline = time.monotonic() + 10
        while len(scored) < 200 and time.monotonic() < deadline:
            try:
                scored.append(classifier.score_texts(long_texts))
            except Exception as error:  # the failure the test is for
                failures.append(error)
    finally:
        done.set()
        beside.join()
    assert not failures
    assert all(scores == pytest.approx(alone, abs=1e-6) for scores in scored)
