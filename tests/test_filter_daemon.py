"""The daemon as a real process: start-up failures, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import shutil
import signal
import smtplib
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from spamfilter.model.classifier import Classifier
from spamfilter.model.modeldir import ModelDirError, read_card, write_card
from spamfilter.smtp.server import FilterDaemon
from spamrig import LOCALHOST, ROOT
from spamrig.clients import client, send, send_load, spam_headers
from spamrig.daemon import SPAMFILTER, daemon_process, filter_config, serve_args, wait_for
from spamrig.sink import SinkBehaviour, sink
from spamrig.synthetic import make_message

pytestmark = pytest.mark.timeout(240)  # includes training the tiny model (session fixture)

SPAM = make_message(1, 3).replace(b"\n", b"\r\n")


def test_a_missing_model_stops_start_up_before_any_port_opens(tmp_path):
    """Settings from the environment too: SPAMFILTER_<NAME>."""
    environment = {"SPAMFILTER_MODEL": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [*SPAMFILTER, "serve", "--listen", f"{LOCALHOST}:0"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=environment,
    )
    assert done.returncode == 2
    assert "cannot start" in done.stderr and "model directory not found" in done.stderr
    assert "serving" not in done.stderr


def test_a_corrupt_model_card_fails_set_up(tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / "spamfilter.json").write_text("{not json")
    daemon = FilterDaemon(filter_config(model, 9), lambda: None)
    with pytest.raises(ModelDirError, match=r"not a valid spamfilter\.json"):
        daemon.setup()


def test_sighup_reloads_thresholds_and_keeps_them_when_the_new_config_is_bad(
    tiny_model_dir, tmp_path
):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = tmp_path / "filter.yaml"
    config.write_text("subject_tag: ''\n")
    with sink() as (captured, sink_port):
        args = serve_args(model, sink_port, "--config", str(config))
        with daemon_process(args) as (process, port, log):
            send(port, SPAM)
            card = read_card(model)
            write_card(
                model,
                dataclasses.replace(
                    card, thresholds=dataclasses.replace(card.thresholds, tag=0.999)
                ),
            )
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: any("reloaded: tag=0.999" in line for line in log))
            send(port, SPAM)
            config.write_text("subject_tag: ''\nno_such_key: 1\n")
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: any("reload failed" in line for line in log))
            send(port, SPAM)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
    flags = [spam_headers(d.content)["X-Spam-Flag"] for d in captured.deliveries]
    assert flags == ["YES", "NO", "NO"]
    assert "tag=0.999" in spam_headers(captured.deliveries[-1].content)["X-Spam-Status"]
    assert any("unknown key 'no_such_key'" in line for line in log)


def test_sigterm_drains_messages_in_flight_and_loses_none(tiny_model_dir):
    in_flight = 5
    with sink(SinkBehaviour(data_delay=1.5)) as (captured, sink_port):
        args = [
            "--model",
            str(tiny_model_dir),
            "--listen",
            f"{LOCALHOST}:0",
            "--metrics-listen",
            "",
            "--drain-timeout",
            "20",
        ]
        environment = {"SPAMFILTER_RELAY": f"{LOCALHOST}:{sink_port}"}
        with (
            daemon_process(args, environment) as (process, port, log),
            ThreadPoolExecutor(in_flight) as pool,
        ):
            idle = client(port)
            idle.ehlo()
            messages = [make_message(1, 100 + n).replace(b"\n", b"\r\n") for n in range(in_flight)]
            sent = [pool.submit(send, port, raw) for raw in messages]
            wait_for(lambda: captured.commands.count("DATA") == in_flight)
            process.send_signal(signal.SIGTERM)
            wait_for(lambda: told_to_go(idle))  # an idle session is closed at once
            answers = [future.result(30) for future in sent]
            assert process.wait(30) == 0
    assert answers == [{}] * in_flight  # every message in flight was answered 250
    delivered = sorted(d.content.split(b"Message-ID: ")[1][:20] for d in captured.deliveries)
    assert delivered == sorted(raw.split(b"Message-ID: ")[1][:20] for raw in messages)
    assert not any("drain timeout" in line for line in log)


def told_to_go(session: smtplib.SMTP) -> bool:
    """Whether the server sent 421 and closed (a NOOP reads the 421 or finds it closed)."""
    try:
        return session.noop()[0] == 421
    except smtplib.SMTPServerDisconnected:
        return True


def test_the_daemon_logs_one_line_per_message(tiny_model_dir):
    with sink() as (_, sink_port):
        args = serve_args(tiny_model_dir, sink_port)
        with daemon_process(args) as (process, port, log):
            send(port, SPAM, ["a@example.net", "b@example.net"])
            wait_for(lambda: any("verdict=" in line for line in log))
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    (line,) = [line for line in log if "verdict=" in line]
    for part in ("from=<sender@example.org>", "rcpts=2", "score=0.9", "verdict=tag", "ms="):
        assert part in line


def test_two_model_runs_at_once_score_every_message_as_it_scores_alone(tiny_model_dir):
    """``--model-runs 2 --threads 1`` (what the default picks for onnx-int8 on a 2-core
    CPU), under 8 clients: every message arrives once, with the score the classifier gives
    it on its own (to the header's 3 decimals; fp32 runs batch, which moves ~1e-6)."""
    messages = [make_message(n % 2, n).replace(b"\n", b"\r\n") for n in range(40)]
    alone = Classifier(tiny_model_dir, "onnx-fp32").score_raw(messages, batch_size=1)
    expected = {f"<{n % 2}.{n}@example.org>": score for n, score in enumerate(alone)}
    with sink() as (captured, sink_port):
        flags = ("--precision", "onnx-fp32", "--model-runs", "2", "--threads", "1")
        with daemon_process(serve_args(tiny_model_dir, sink_port, *flags)) as (_, port, log):
            outcomes = asyncio.run(send_load(port, messages, 8))
    assert [outcome.code for outcome in outcomes] == [250] * len(messages)
    assert any("onnx-fp32 on cpu, 2 model run(s) at once" in line for line in log)
    delivered = {}
    for delivery in captured.deliveries:
        message_id = email.message_from_bytes(delivery.content)["Message-ID"]
        delivered[message_id] = float(spam_headers(delivery.content)["X-Spam-Score"])
    assert len(captured.deliveries) == len(delivered) == len(expected)  # each one once
    for message_id, score in expected.items():
        assert delivered[message_id] == pytest.approx(score, abs=0.0005 + 1e-6), message_id
