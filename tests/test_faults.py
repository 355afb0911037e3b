"""Faults around the filter: the next hop, the model, the disk, signals. Nothing is lost.

The accounting, every time: a message answered 250 is held by the next hop (or the
quarantine) exactly once; a message not answered 250 is still the sender's, who retries.
Next-hop refusals, timeouts and a dropped connection, a failing scorer (pass/tempfail),
a missing model directory, a bad config on SIGHUP and SIGTERM with messages in flight
are in test_filter_smtp.py and test_filter_daemon.py; these cases extend them.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import math
import shutil
import signal
import smtplib
import subprocess
import threading
from pathlib import Path

import pytest

from spamrig import LOCALHOST, ROOT, WAIT
from spamrig.clients import (
    delivered_ids,
    lost,
    numbered_message,
    our_prefix,
    send,
    send_load,
    spam_headers,
)
from spamrig.daemon import (
    SPAMFILTER,
    ConstantScorer,
    daemon_process,
    filter_config,
    running_filter,
    serve_args,
    wait_for,
)
from spamrig.sink import Delivery, NextHopScript, scripted_next_hop, sink

pytestmark = pytest.mark.timeout(240)

MESSAGE = numbered_message(0, size=20_000)


# The next hop -------------------------------------------------------------------------------
NEXT_HOP_FAULTS = {
    # name: (script, the reply code the client gets, its enhanced status)
    "greets with 554": (NextHopScript(greeting=b"554 go away"), 451, b"4.4.2"),
    "greets with 421": (NextHopScript(greeting=b"421 busy"), 451, b"4.4.2"),
    "refuses the message": (NextHopScript(data_reply=b"554 5.7.1 no"), 554, b"5.7.1"),
    "defers the message": (NextHopScript(data_reply=b"452 4.3.1 full"), 452, b"4.3.1"),
    "says 421 after DATA": (NextHopScript(data_reply=b"421 4.3.2 bye"), 451, b"4.4.2"),
    "drops the connection mid-DATA": (NextHopScript(cut_after=5_000), 451, b"4.4.2"),
    "stops answering mid-DATA": (NextHopScript(stall_after=5_000), 451, b"4.4.2"),
}


@pytest.mark.parametrize("name", list(NEXT_HOP_FAULTS))
def test_next_hop_faults_are_passed_on_or_tempfailed_and_leave_nothing_open(tiny_model_dir, name):
    script, code, status = NEXT_HOP_FAULTS[name]
    with (
        scripted_next_hop(script) as (hop, hop_port),
        running_filter(
            filter_config(tiny_model_dir, hop_port, relay_timeout=1.0), ConstantScorer()
        ) as daemon,
    ):
        port = daemon.smtp_address[1]
        for _ in range(2):  # the same again: the filter is not left in a bad state
            with pytest.raises(smtplib.SMTPResponseException) as failed:
                send(port, MESSAGE)
            assert (failed.value.smtp_code, failed.value.smtp_error[:5]) == (code, status)
        wait_for(lambda: not daemon.gate.live and hop.open_connections == 0)
    if script.cut_after or script.stall_after:
        assert all(not data.endswith(b"\r\n.\r\n") for data in hop.received)


# The scorer ---------------------------------------------------------------------------------
class Misbehaving:
    """Scores wrongly for the first message, then well: faults that are not exceptions."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.calls = 0
        self.first_done = threading.Event()

    def score_raw(self, messages):
        self.calls += 1
        if self.calls > 1:
            return [0.99] * len(messages)
        try:
            return self._wrong(len(messages))
        finally:
            self.first_done.set()

    def _wrong(self, count: int) -> list[float]:
        if self.fault == "hangs":
            threading.Event().wait(2)  # longer than score_timeout
        if self.fault == "returns too few scores":
            return []
        return [{"NaN": math.nan, "returns 7.0": 7.0, "hangs": 0.99}[self.fault]] * count


@pytest.mark.parametrize("fault", ["NaN", "returns 7.0", "returns too few scores", "hangs"])
def test_a_scorer_that_misbehaves_follows_on_score_error_then_recovers(tiny_model_dir, fault):
    scorer = Misbehaving(fault)
    with (
        sink() as (captured, sink_port),
        running_filter(filter_config(tiny_model_dir, sink_port, score_timeout=1.0), scorer) as d,
    ):
        send(d.smtp_address[1], MESSAGE)
        assert scorer.first_done.wait(WAIT)  # the scoring thread is free again
        send(d.smtp_address[1], MESSAGE)
    first, second = (spam_headers(our_prefix(d.content, MESSAGE)) for d in captured.deliveries)
    assert first == {"X-Spam-Status": f"unknown, model={d.model_id}"}
    assert second["X-Spam-Flag"] == "YES"


# The model directory ------------------------------------------------------------------------
def corrupt_weights(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def corrupt_config(model: Path) -> None:
    (model / "config.json").write_text("{not json")


@pytest.mark.parametrize("corrupt", [corrupt_weights, corrupt_config])
def test_a_corrupt_model_stops_start_up_with_a_clear_error(tiny_model_dir, tmp_path, corrupt):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    corrupt(model)
    done = subprocess.run(
        [*SPAMFILTER, "serve", "--model", str(model), "--listen", f"{LOCALHOST}:0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot start: {model}: cannot load" in done.stderr
    assert "Traceback" not in done.stderr and "serving" not in done.stderr


@pytest.mark.parametrize("corrupt", ["card", "weights"])
def test_a_model_corrupted_under_a_running_daemon_is_refused_at_sighup(
    tiny_model_dir, tmp_path, caplog, corrupt
):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    with (
        sink() as (captured, sink_port),
        running_filter(filter_config(model, sink_port), ConstantScorer(0.7)) as daemon,
    ):
        rules = daemon.rules
        if corrupt == "card":
            (model / "spamfilter.json").write_text('{"thresholds": ')
        else:
            corrupt_weights(model)
        with caplog.at_level(logging.ERROR, logger="spamfilter"):
            daemon.loop.call_soon_threadsafe(daemon.reload)
            wait_for(lambda: "reload failed" in caplog.text)
        assert daemon.rules is rules
        send(daemon.smtp_address[1], MESSAGE)
    assert spam_headers(captured.deliveries[0].content)["X-Spam-Flag"] == "YES"  # tag=0.5 kept


# The disk -----------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root; skipped elsewhere): a quarantine that fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_quarantine_disk_answers_451_and_loses_nothing(tiny_model_dir, tiny_disk):
    quarantine = tiny_disk / "q"
    config = filter_config(
        tiny_model_dir, 9, quarantine_threshold=0.9, quarantine_dir=str(quarantine)
    )
    messages = [numbered_message(n, size=12_000) for n in range(12)]
    replies = {}
    with sink() as (captured, sink_port):
        config.relay = f"{LOCALHOST}:{sink_port}"
        with running_filter(config, ConstantScorer(0.95)) as daemon:
            for index, raw in enumerate(messages):
                try:
                    send(daemon.smtp_address[1], raw)
                    replies[index] = 250
                except smtplib.SMTPDataError as error:
                    replies[index] = error.smtp_code
            box = mailbox.Maildir(quarantine, factory=None)
            stored = delivered_ids_in(box)
            for key in list(box.iterkeys()):  # free the disk: the next message is kept again
                box.remove(key)
            send(daemon.smtp_address[1], messages[0])
            assert len(list(box.iterkeys())) == 1
    assert set(replies.values()) == {250, 451}, replies  # the disk did fill up
    assert sorted(stored) == [i for i, code in replies.items() if code == 250]
    assert not list((quarantine / "tmp").iterdir())  # no half-written files left
    assert captured.deliveries == []  # quarantined or refused, never relayed


def delivered_ids_in(box: mailbox.Maildir) -> list[int]:
    return delivered_ids([Delivery("", [], [], box.get_bytes(key)) for key in box.iterkeys()])


# Signals under load -------------------------------------------------------------------------
def load_then_signal(tiny_model_dir, signum: int, messages: int = 300, clients: int = 16):
    """Send ``messages`` over ``clients`` connections; ``signum`` the daemon after 60 arrived.

    Returns (outcomes, deliveries, daemon exit code).
    """
    with sink() as (captured, sink_port):
        args = serve_args(tiny_model_dir, sink_port, "--drain-timeout", "10")
        with daemon_process(args) as (process, port, _log):
            result = {}
            load = threading.Thread(
                target=lambda: result.update(
                    outcomes=asyncio.run(
                        send_load(port, [numbered_message(n) for n in range(messages)], clients)
                    )
                )
            )
            load.start()
            wait_for(lambda: len(captured.deliveries) >= 60, timeout=120)
            process.send_signal(signum)
            load.join(WAIT * 3)
            assert not load.is_alive()
            code = process.wait(WAIT)
        return result["outcomes"], list(captured.deliveries), code


def account(outcomes, deliveries) -> dict[str, int]:
    """Counts for docs/hardening.md; asserts that no message answered 250 is missing."""
    assert lost(outcomes, deliveries) == []
    acknowledged = {o.index for o in outcomes if o.code == 250}
    held = delivered_ids(deliveries)
    figures = {
        "sent": len(outcomes),
        "answered 250": len(acknowledged),
        "refused 4xx (sender keeps them)": sum(400 <= o.code < 500 for o in outcomes),
        "cut before a reply (sender keeps them)": sum(o.code == 0 for o in outcomes),
        "delivered, not answered 250 (a duplicate on retry)": len(set(held) - acknowledged),
        "lost": 0,
    }
    print(figures)
    assert len(held) == len(set(held))  # nothing delivered twice
    return figures


def test_sigterm_under_load_drains_and_loses_nothing(tiny_model_dir):
    outcomes, deliveries, code = load_then_signal(tiny_model_dir, signal.SIGTERM)
    assert code == 0
    figures = account(outcomes, deliveries)
    assert figures["delivered, not answered 250 (a duplicate on retry)"] == 0  # drained


def test_sigkill_under_load_loses_nothing_answered_250(tiny_model_dir):
    outcomes, deliveries, code = load_then_signal(tiny_model_dir, signal.SIGKILL)
    assert code == -signal.SIGKILL
    figures = account(outcomes, deliveries)
    # at most one message per connection was between the next hop's 250 and ours ...
    assert figures["delivered, not answered 250 (a duplicate on retry)"] <= 16
    # ... so of the 60 the sink held before the kill, at least 60 - 16 were answered (not
    # all 60: messages reach the sink one by one, not in batch-sized bursts)
    assert figures["answered 250"] >= 60 - 16
