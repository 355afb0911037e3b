"""``listen`` and ``relay`` on Unix sockets (``unix:/path``): real SMTP both ways, in a temp dir."""

from __future__ import annotations

import smtplib
import socket

import pytest

from spamfilter.config import FilterConfig
from spamrig.clients import UnixSMTP, our_prefix, spam_headers
from spamrig.daemon import ConstantScorer, filter_config, running_filter
from spamrig.sink import sink

pytestmark = pytest.mark.timeout(240)  # includes training the tiny model (session fixture)

MESSAGE = b"From: a <a@example.org>\r\nSubject: over a socket file\r\n\r\nhello\r\n"


def test_the_filter_listens_and_relays_on_unix_sockets(tiny_model_dir, tmp_path):
    listen, hop = tmp_path / "filter.sock", tmp_path / "next-hop.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(listen))  # a socket file left by a killed daemon must not stop a new one
    stale.close()
    # TCP clients from loopback would be refused: a Unix client is admitted by the file's mode.
    config = filter_config(
        tiny_model_dir,
        0,
        listen=f"unix:{listen}",
        relay=f"unix:{hop}",
        allowed_networks=["192.0.2.0/24"],
    )
    with sink(unix_path=str(hop)) as (captured, _):
        with running_filter(config, ConstantScorer(0.9)) as daemon:
            assert daemon.smtp_address == str(listen)
            with UnixSMTP(str(listen)) as smtp:
                refused = smtp.sendmail(
                    "s@example.org", ["r1@example.net", "r2@example.net"], MESSAGE
                )
        assert not listen.exists(), "the daemon leaves its socket file behind"
    assert refused == {}
    (delivery,) = captured.deliveries
    assert (delivery.mail_from, delivery.rcpt_tos) == (
        "s@example.org",
        ["r1@example.net", "r2@example.net"],
    )
    assert spam_headers(our_prefix(delivery.content, MESSAGE))["X-Spam-Flag"] == "YES"


def test_a_unix_next_hop_that_is_not_there_is_a_temporary_failure(tiny_model_dir, tmp_path):
    config = filter_config(tiny_model_dir, 0, relay=f"unix:{tmp_path / 'nobody-here.sock'}")
    with (
        running_filter(config, ConstantScorer()) as daemon,
        smtplib.SMTP(*daemon.smtp_address, timeout=20) as smtp,
        pytest.raises(smtplib.SMTPSenderRefused) as refused,
    ):
        smtp.sendmail("s@example.org", ["r@example.net"], MESSAGE)
    assert refused.value.smtp_code == 451
    assert f"unix:{tmp_path}".encode() in refused.value.smtp_error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("unix:", "unix:/absolute/path"),
        ("unix:relative.sock", "unix:/absolute/path"),
        ("nowhere", "host:port or unix:/path"),
    ],
)
def test_bad_socket_addresses_are_config_errors(value, expected):
    problems = FilterConfig(model="m", relay=value).validate()
    assert problems == [f"'relay': expected {expected}, not {value!r}"]
