"""Hostile clients against the daemon process: each gets its reply or is cut, resources stay
bounded, and a normal client keeps flowing alongside (``traffic``).

Resources are the daemon process's own (psutil): RSS, open file descriptors and its
connections to the next hop, which must come back to where they were.
"""

from __future__ import annotations

import re
import smtplib
import socket
import struct
import threading
import time
from contextlib import contextmanager

import psutil
import pytest

from spamrig.clients import (
    client,
    connect,
    data_block,
    delivered_ids,
    numbered_message,
    our_prefix,
    relayed_as,
)
from spamrig.daemon import daemon_process, serve_args, wait_for
from spamrig.sink import sink
from spamrig.soak import soak

pytestmark = pytest.mark.timeout(240)

TIMEOUTS = ("--relay-timeout", "10", "--score-timeout", "10", "--session-timeout", "30")


@pytest.fixture(scope="module")
def daemon(tiny_model_dir):
    """(sink handler, sink port, daemon process, port): one daemon for the module."""
    with (
        sink() as (captured, sink_port),
        daemon_process(serve_args(tiny_model_dir, sink_port, *TIMEOUTS)) as (process, port, _),
    ):
        yield captured, sink_port, psutil.Process(process.pid), port


def usage(daemon) -> tuple[int, int, int]:
    """The daemon's (RSS bytes, open fds, open connections to the next hop)."""
    _, sink_port, process, _ = daemon
    hop = [c for c in process.net_connections() if c.raddr and c.raddr.port == sink_port]
    return process.memory_info().rss, process.num_fds(), len(hop)


@contextmanager
def traffic(daemon, at_least: int = 3, slowest: float = 10.0):
    """A normal client sending message after message meanwhile; asserts they all got through."""
    captured, _, _, port = daemon
    stop, latencies, failures = threading.Event(), [], []
    first = 10_000 + len(captured.deliveries) * 1000  # numbers no other test sends

    def run() -> None:
        number = first
        while not stop.is_set():
            started = time.perf_counter()
            try:
                with client(port) as smtp:
                    smtp.sendmail("s@example.org", ["u@example.net"], numbered_message(number))
            except (smtplib.SMTPException, OSError) as error:
                failures.append(error)
            latencies.append(time.perf_counter() - started)
            number += 1

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
        wait_for(lambda: len(latencies) >= at_least or bool(failures), timeout=60)
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures
    assert len(latencies) >= at_least and max(latencies) < slowest, latencies
    sent = set(range(first, first + len(latencies)))
    wait_for(lambda: sent <= set(delivered_ids(captured.deliveries)))


def settled(daemon, before: tuple[int, int, int], rss_growth: int = 50_000_000) -> None:
    """Every session closed: fds and next-hop connections back, RSS within ``rss_growth``."""
    wait_for(lambda: usage(daemon)[1:] <= before[1:], timeout=30)
    rss = usage(daemon)[0]
    assert rss - before[0] < rss_growth, f"RSS grew {(rss - before[0]) / 1e6:.0f} MB"


def test_a_one_byte_a_second_sender_does_not_hold_up_others(daemon):
    captured, _, _, port = daemon
    raw = numbered_message(1)
    with connect(port) as slow, traffic(daemon):
        slow.command(b"EHLO slow.test")
        slow.command(b"MAIL FROM:<slow@example.org>")
        slow.command(b"RCPT TO:<u@example.net>")
        assert slow.command(b"DATA")[0] == 354
        block = data_block(raw)
        for byte in block[:5]:  # five seconds of one byte a second
            slow.send(bytes([byte]))
            time.sleep(1)
        slow.send(block[5:])
        assert slow.reply()[0] == 250
    (delivery,) = [d for d in captured.deliveries if b"<1@load>" in d.content]
    our_prefix(delivery.content, relayed_as(raw))


def abandon(port: int, reset: bool) -> None:
    """MAIL, RCPT, DATA, half a message, then gone (RST when ``reset``, else FIN)."""
    session = connect(port)
    session.send(b"EHLO gone.test\r\nMAIL FROM:<gone@example.org>\r\nRCPT TO:<u@example.net>\r\n")
    session.send(b"DATA\r\n" + numbered_message(2, size=50_000)[:25_000])
    assert [session.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    if reset:
        session.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    session.close()


def test_clients_that_vanish_mid_data_relay_nothing_and_leave_nothing_open(daemon):
    captured, _, _, port = daemon
    before = usage(daemon)
    with traffic(daemon):
        for index in range(20):
            abandon(port, reset=index % 2 == 0)
    settled(daemon, before)  # each next-hop transaction was aborted with its connection
    assert not [d for d in captured.deliveries if b"<2@load>" in d.content]


def test_a_pipelined_command_flood_is_cut_at_the_call_limit(daemon):
    _, _, _, port = daemon
    before = usage(daemon)
    with connect(port) as flood, traffic(daemon):
        flood.send(b"EHLO flood.test\r\n" + b"NOOP\r\n" * 5_000)
        replies = [flood.reply()[0] for _ in range(5_001)]
    assert replies[:2_000] == [250] * 2_000
    assert 421 in replies and replies[replies.index(421) + 1 :] == [0] * (
        5_000 - replies.index(421)
    )  # 421 4.7.0, then disconnected
    with connect(port) as bogus:
        replies = [bogus.command(b"XYZZY")[0] for _ in range(6)]
    assert replies == [500] * 4 + [502, 0]  # aiosmtpd: five unknown commands, then cut
    settled(daemon, before)


def test_ten_thousand_recipients_get_452_past_the_limit_with_bounded_memory(daemon):
    captured, _, _, port = daemon
    before = usage(daemon)
    recipients = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % n for n in range(10_000))
    with connect(port) as greedy, traffic(daemon):
        greedy.send(b"EHLO greedy.test\r\nMAIL FROM:<g@example.org>\r\n" + recipients)
        replies = [greedy.reply()[0] for _ in range(10_002)]
        assert greedy.command(b"DATA")[0] == 354
        greedy.send(data_block(numbered_message(3)))
        assert greedy.reply()[0] == 250
    assert replies[2:] == [250] * 1_000 + [452] * 9_000
    (delivery,) = [d for d in captured.deliveries if b"<3@load>" in d.content]
    assert len(delivery.rcpt_tos) == 1_000
    settled(daemon, before)


def test_oversized_command_lines_get_500_and_the_session_goes_on(daemon):
    _, _, _, port = daemon
    before = usage(daemon)
    with connect(port) as long_lines, traffic(daemon):
        long_lines.command(b"EHLO long.test")
        assert long_lines.command(b"MAIL FROM:<" + b"a" * 100_000 + b"@x>")[0] == 500
        assert long_lines.command(b"NOOP " + b"n" * 10_000_000)[0] == 500  # 10 MB, no CRLF yet
        assert long_lines.command(b"NOOP")[0] == 250
    settled(daemon, before)


def test_commands_out_of_order_get_503_and_reach_no_next_hop(daemon):
    captured, _, _, port = daemon
    commands = len(captured.commands)
    with connect(port) as rude:
        assert rude.command(b"MAIL FROM:<r@example.org>")[0] == 503  # before EHLO
        assert rude.command(b"RCPT TO:<u@example.net>")[0] == 503
        assert rude.command(b"DATA")[0] == 503
        rude.command(b"EHLO rude.test")
        assert rude.command(b"RCPT TO:<u@example.net>")[0] == 503  # before MAIL
        assert rude.command(b"DATA")[0] == 503
    assert captured.commands[commands:] == []


@pytest.mark.parametrize("address", [b"a@b.c\rRCPT TO:<evil@x.y>", b"a@b.c\x00x", b"a\x0bb@c"])
def test_envelope_injection_never_reaches_the_next_hop(daemon, address):
    """A bare CR, a NUL or other control bytes in an address: refused, or never passed on."""
    captured, _, _, port = daemon
    raw = numbered_message(4)
    with connect(port) as session:
        session.command(b"EHLO inject.test")
        if session.command(b"MAIL FROM:<" + address + b">")[0] == 250:
            session.command(b"RCPT TO:<u@example.net>")
            if session.command(b"DATA")[0] == 354:
                session.send(data_block(raw))
                session.reply()
    for delivery in (d for d in captured.deliveries if b"<4@load>" in d.content):
        assert delivery.rcpt_tos == ["u@example.net"]
        assert not re.search(r"[\x00-\x1f]", delivery.mail_from), delivery.mail_from


def test_500_messages_at_16_clients_arrive_exactly_once_byte_exact(tiny_model_dir):
    """benchmarks/soak.py's loop, small: the full soak is a benchmark, not a test."""
    figures = soak(tiny_model_dir, messages=500, clients=16, rounds=2)
    assert figures["lost"] == 0 and figures["answered_250"] == 500
    assert figures["open_fds_after"] <= figures["open_fds_before"]
    assert figures["rss_mb_per_round"][-1] - figures["rss_mb_per_round"][0] < 50
