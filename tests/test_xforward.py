"""XFORWARD: accepted from admitted clients, passed to a next hop that speaks it.

tests/test_postfix.py proves the same with Postfix on both sides; this runs without it.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiosmtpd.smtp import SMTP

from spamfilter.smtp import xforward
from spamrig import LOCALHOST, WAIT
from spamrig.daemon import filter_config
from spamrig.daemon import running_filter as running
from spamrig.sink import LoopThread, SinkBehaviour, SinkHandler
from spamrig.synthetic import make_message

pytestmark = pytest.mark.timeout(240)  # includes training the tiny model (session fixture)

ATTRIBUTES = "NAME=mail.example.org ADDR=192.0.2.7 PORT=4242 HELO=mail.example.org PROTO=ESMTP"


class Ham:
    def score_raw(self, messages):
        return [0.01] * len(messages)


class XForwardSink(SMTP):
    """A next hop that advertises XFORWARD and records what it receives."""

    received: list[str]

    async def smtp_XFORWARD(self, argument: str) -> None:
        self.received.append(argument)
        await self.push("250 2.0.0 Ok")


class AdvertisingHandler(SinkHandler):
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [*responses[:-1], "250-XFORWARD NAME ADDR PORT PROTO HELO", responses[-1]]


@contextmanager
def xforward_sink() -> Iterator[tuple[list[str], SinkHandler, int]]:
    received: list[str] = []
    handler = AdvertisingHandler(SinkBehaviour())
    runner = LoopThread()

    def protocol() -> SMTP:
        server = XForwardSink(handler, hostname="sink", loop=runner.loop)
        server.received = received
        return server

    server = runner.run(runner.loop.create_server(protocol, LOCALHOST, 0))
    try:
        yield received, handler, server.sockets[0].getsockname()[1]
    finally:
        runner.close(server)


@pytest.fixture
def rig(tiny_model_dir):
    with (
        xforward_sink() as (received, captured, sink_port),
        running(filter_config(tiny_model_dir, sink_port), Ham()) as daemon,
    ):
        yield received, captured, daemon.smtp_address[1]


def test_parse_keeps_known_attributes_and_refuses_the_rest():
    assert xforward.parse("name=a.example ADDR=192.0.2.1") == {
        "NAME": "a.example",
        "ADDR": "192.0.2.1",
    }
    assert xforward.parse("COLOR=blue").startswith("501 5.5.4 Bad XFORWARD attribute")
    assert xforward.parse("NAME").startswith("501")
    assert xforward.parse("").startswith("501")


def test_xforward_has_its_own_call_limit_of_two_per_message():
    """Under "*" (RSET, EHLO...) Postfix's one or two per message would use it up."""
    limits = {"MAIL": 10, "*": 30}
    protocol = xforward.XForwardSMTP(Ham(), None, command_call_limit=limits)
    assert protocol._call_limit_base == {"XFORWARD": 20, **limits}


def test_xforward_is_advertised_accepted_and_passed_to_the_next_hop(rig):
    received, captured, port = rig
    with smtplib.SMTP(LOCALHOST, port, timeout=WAIT) as client:
        client.ehlo("mx.test")
        assert client.has_extn("xforward")
        assert client.docmd("XFORWARD", ATTRIBUTES)[0] == 250
        client.sendmail("a@example.org", ["b@example.net"], make_message(0, 1))
    assert received == [ATTRIBUTES]
    assert len(captured.deliveries) == 1


def test_xforward_is_refused_in_a_transaction_and_with_bad_attributes(rig):
    received, _, port = rig
    with smtplib.SMTP(LOCALHOST, port, timeout=WAIT) as client:
        client.ehlo("mx.test")
        assert client.docmd("XFORWARD", "COLOR=blue")[0] == 501
        client.mail("a@example.org")
        assert client.docmd("XFORWARD", ATTRIBUTES)[0] == 503
    assert received == []
