"""The filter's pieces alone: raw header editing, policy, settings, micro-batcher."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest
import yaml

from spamfilter import settings
from spamfilter.batcher import MicroBatcher, Overloaded
from spamfilter.config import FilterConfig
from spamfilter.headerblock import prefix_subject, remove_fields, split_fields
from spamfilter.modeldir import ModelCard, Thresholds
from spamfilter.policy import Policy, Verdict, strip_spam_headers
from spamfilter.relay import Reply
from spamfilter.server import add_serve_arguments

SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "filter" / "filter.yaml"

MESSAGE = (
    b"X-Spam-Flag: NO\r\n"
    b"Subject: hello\r\n"
    b"X-SPAM-Status: No,\r\n\tscore=0.0\r\n"
    b"From: a@b\r\n"
    b"X-Spammy: kept (not X-Spam-)\r\n"
    b"\r\n"
    b"X-Spam-Flag: in the body stays\r\n"
)


def test_split_fields_joins_back_to_the_original():
    fields, rest = split_fields(MESSAGE)
    assert b"".join(fields) + rest == MESSAGE
    assert fields[2] == b"X-SPAM-Status: No,\r\n\tscore=0.0\r\n"
    assert rest.startswith(b"\r\n")


def test_spam_headers_are_removed_with_their_continuations_and_nothing_else():
    assert strip_spam_headers(MESSAGE) == (
        b"Subject: hello\r\nFrom: a@b\r\nX-Spammy: kept (not X-Spam-)\r\n\r\n"
        b"X-Spam-Flag: in the body stays\r\n"
    )


@pytest.mark.parametrize(
    "raw",
    [b"", b"\r\n\r\nbody", b"no header at all", b"From x Mon\nA: b\n\nbody\n", b"A: b"],
)
def test_messages_without_spam_headers_are_returned_unchanged(raw):
    assert remove_fields(raw, b"x-spam-") is raw


def test_lf_only_messages_are_handled_too():
    assert strip_spam_headers(b"X-Spam-Flag: NO\nA: b\n\nX-Spam-Flag: x\n") == (
        b"A: b\n\nX-Spam-Flag: x\n"
    )


def test_subject_tag_is_added_once():
    tagged = prefix_subject(MESSAGE, b"[SPAM] ")
    assert b"Subject: [SPAM] hello\r\n" in tagged
    assert prefix_subject(tagged, b"[SPAM] ") == tagged
    assert prefix_subject(b"A: b\r\n\r\n", b"[SPAM] ") == b"A: b\r\n\r\n"


def policy(**changes) -> Policy:
    card = ModelCard(max_length=64, thresholds=Thresholds(tag=0.5, reject=0.99, quarantine=0.9))
    config = FilterConfig(model="m", quarantine_dir="/q", **changes)
    return Policy.build(config, card, "m@12345678")


def test_thresholds_come_from_the_card_unless_configured():
    assert (policy().tag, policy().quarantine, policy().reject) == (0.5, 0.9, None)
    assert policy(reject=True, tag_threshold=0.7).reject == 0.99
    assert policy(tag_threshold=0.7).tag == 0.7


def test_thresholds_tuned_for_the_serving_precision_are_used():
    card = ModelCard(
        max_length=64,
        thresholds=Thresholds(tag=0.5),
        precision_thresholds={"onnx-int8": Thresholds(tag=0.8)},
    )
    tags = {
        precision: Policy.build(FilterConfig(model="m", precision=precision), card, "m@1").tag
        for precision in ("onnx-fp32", "fp32", "onnx-int8")
    }
    assert tags == {"onnx-fp32": 0.5, "fp32": 0.5, "onnx-int8": 0.8}


@pytest.mark.parametrize(
    ("score", "verdict"),
    [
        (0.1, Verdict.PASS),
        (0.5, Verdict.TAG),
        (0.95, Verdict.QUARANTINE),
        (0.995, Verdict.REJECT),
        (None, Verdict.UNKNOWN),
    ],
)
def test_verdicts(score, verdict):
    assert policy(reject=True).decide(score) is verdict


def test_tempfail_on_scoring_errors_when_configured():
    assert policy(on_score_error="tempfail").decide(None) is Verdict.TEMPFAIL


def test_header_format():
    assert policy(reject=True).headers(0.97312) == (
        b"X-Spam-Flag: YES\r\nX-Spam-Score: 0.973\r\n"
        b"X-Spam-Status: Yes, score=0.973 tag=0.5 quarantine=0.9 reject=0.99 model=m@12345678\r\n"
    )
    assert policy().headers(None) == b"X-Spam-Status: unknown, model=m@12345678\r\n"


def test_quarantine_threshold_without_a_maildir_is_an_error():
    card = ModelCard(max_length=64, thresholds=Thresholds(quarantine=0.9))
    with pytest.raises(ValueError, match="quarantine_dir"):
        Policy.build(FilterConfig(model="m"), card, "m@1")


def test_shipped_config_lists_every_key_with_its_default():
    assert set(yaml.safe_load(SHIPPED.read_text())) == {
        field.name for field in dataclasses.fields(FilterConfig)
    }
    loaded = settings.load(FilterConfig, SHIPPED, {"model": "runs/x"})
    assert loaded == FilterConfig(model="runs/x")


def test_bad_settings_name_every_problem():
    with pytest.raises(settings.ConfigError) as error:
        settings.build(FilterConfig, [("f.yaml", {"model": "m", "relay": "nohost", "tag": 2})])
    assert "f.yaml: unknown key 'tag'" in str(error.value)
    with pytest.raises(settings.ConfigError) as error:
        settings.build(FilterConfig, [("f.yaml", {"relay": "x", "tag_threshold": 1.5})])
    for problem in ("'model' is required", "'relay'", "'tag_threshold'"):
        assert problem in str(error.value)


def test_every_setting_has_a_flag_with_help_default_and_environment_variable():
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    flags = {action.dest: action for action in parser._actions}
    for field in dataclasses.fields(FilterConfig):
        text = flags[field.name].help
        assert field.metadata["help"] in text and "default:" in text
        assert f"SPAMFILTER_{field.name.upper()}" in text
    args = parser.parse_args(["--model", "m", "--no-reject", "--allowed-networks", "10.0.0.0/8"])
    assert (args.model, args.reject, args.allowed_networks) == ("m", False, "10.0.0.0/8")


def test_multi_line_replies_are_formatted_for_aiosmtpd():
    assert str(Reply(250, ("first", "last"))) == "250-first\r\n250 last"


def test_batcher_batches_waiting_messages_and_reports_overload():
    release = threading.Event()
    batches = []

    def score(messages):
        release.wait(5)
        batches.append(len(messages))
        return [len(raw) / 10 for raw in messages]

    async def scenario():
        batcher = MicroBatcher(score, max_batch=4, max_wait=0.05, queue_size=5)
        batcher.start()
        first = asyncio.ensure_future(batcher.score(b"x"))
        await asyncio.sleep(0.1)  # the first batch (of one) is in the model
        waiting = [asyncio.ensure_future(batcher.score(b"y" * n)) for n in range(1, 6)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.score(b"one too many")
        release.set()
        results = await asyncio.gather(first, *waiting)
        await batcher.aclose()
        return results

    assert asyncio.run(scenario()) == [0.1, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert batches == [1, 4, 1]


def test_batcher_passes_scorer_errors_to_every_waiting_message():
    def broken(messages):
        raise RuntimeError("model crashed")

    async def scenario():
        batcher = MicroBatcher(broken, max_batch=2, max_wait=0.01)
        batcher.start()
        results = await asyncio.gather(
            batcher.score(b"a"), batcher.score(b"b"), return_exceptions=True
        )
        assert batcher.running  # the worker survives a failing batch
        await batcher.aclose()
        return results

    assert [str(result) for result in asyncio.run(scenario())] == ["model crashed"] * 2
