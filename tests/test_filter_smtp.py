"""The filter between a real client (smtplib) and a capturing next hop, over loopback."""

from __future__ import annotations

import functools
import mailbox
import re
import smtplib
import socket
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from spamfilter.model.classifier import Classifier
from spamfilter.smtp.handler import HOOKS, FilterHandler
from spamrig import LOCALHOST
from spamrig.clients import client, our_prefix, send, spam_headers
from spamrig.daemon import filter_config, running_filter, wait_for
from spamrig.sink import SinkBehaviour, sink
from spamrig.synthetic import make_message

pytestmark = pytest.mark.timeout(240)  # includes training the tiny model (session fixture)

SPAM = make_message(1, 7).replace(b"\n", b"\r\n")  # as on the wire
HAM = make_message(0, 7).replace(b"\n", b"\r\n")


@pytest.fixture(scope="module")
def classifier(tiny_model_dir):
    return Classifier(tiny_model_dir, precision="fp32")


@pytest.fixture
def rig(tiny_model_dir, classifier):
    """A sink and a filter relaying to it: yields (sink handler, filter daemon, port)."""
    with sink() as (captured, sink_port):
        config = filter_config(tiny_model_dir, sink_port)
        with running_filter(config, classifier) as daemon:
            yield captured, daemon, daemon.smtp_address[1]


class Raising:
    def score_raw(self, messages):
        raise RuntimeError("model crashed")


def test_spam_is_tagged_and_ham_passed_with_envelope_unchanged(rig):
    captured, daemon, port = rig
    send(port, SPAM, ["a@example.net", "b@example.net"])
    send(port, HAM)
    spam, ham = captured.deliveries
    assert spam.mail_from == "sender@example.org"
    assert spam.rcpt_tos == ["a@example.net", "b@example.net"]
    assert f"SIZE={len(SPAM)}" in spam.mail_options
    headers = spam_headers(our_prefix(spam.content, SPAM))
    assert headers["X-Spam-Flag"] == "YES"
    assert float(headers["X-Spam-Score"]) > 0.5
    assert headers["X-Spam-Status"].startswith(f"Yes, score={headers['X-Spam-Score']} tag=0.5 ")
    assert headers["X-Spam-Status"].endswith(f"model={daemon.model_id}")
    assert spam_headers(our_prefix(ham.content, HAM))["X-Spam-Flag"] == "NO"


BYTE_EXACT = {
    "dot lines": b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n...three\r\n . space\r\nend\r\n",
    "8-bit binary": b"Subject: bin\r\n\r\n" + bytes(range(0x80, 0x100)) + b"\x00\x01\t\r\n",
    "long lines": b"Subject: long\r\n\r\n" + b"x" * 998 + b"\r\n." + b"y" * 997 + b"\r\n",
    "no body": b"Subject: empty\r\n\r\n",
    "no blank line": b"Subject: only a header\r\n",
    "folded headers": b"Subject: a\r\n folded\r\n\tsubject\r\nFrom: x@y\r\n\r\nbody\r\n",
}


@pytest.mark.parametrize("name", list(BYTE_EXACT))
def test_messages_arrive_byte_for_byte(rig, name):
    captured, _, port = rig
    raw = BYTE_EXACT[name]
    with client(port) as smtp:
        smtp.sendmail("sender@example.org", ["user@example.net"], raw, ["BODY=8BITMIME"])
    (delivery,) = captured.deliveries
    assert set(spam_headers(our_prefix(delivery.content, raw))) == {
        "X-Spam-Flag",
        "X-Spam-Score",
        "X-Spam-Status",
    }
    assert "BODY=8BITMIME" in delivery.mail_options


def test_aiosmtpd_unstuffs_dot_lines_exactly_once(rig):
    """Raw socket, no smtplib: a stuffed '..x' line must arrive as '.x' (aiosmtpd 1.4.6)."""
    captured, _, port = rig
    with socket.create_connection((LOCALHOST, port), timeout=10) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        commands = b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<r@y>\r\nDATA\r\n"
        stream.write(commands)  # pipelined
        stream.flush()
        replies = [stream.readline()]
        while not replies[-1].startswith((b"354", b"4", b"5")) and len(replies) < 20:
            replies.append(stream.readline())
        assert b"250-PIPELINING\r\n" in replies
        assert replies[-1].startswith(b"354")
        stream.write(b"Subject: d\r\n\r\n..x\r\n...\r\n.\r\n")
        stream.flush()
        assert stream.readline().startswith(b"250")
    (delivery,) = captured.deliveries
    assert our_prefix(delivery.content, b"Subject: d\r\n\r\n.x\r\n..\r\n")


def test_utf8_envelope_is_relayed_with_smtputf8(rig):
    captured, _, port = rig
    raw = "Subject: grüße\r\n\r\nbody ü\r\n".encode()
    with client(port) as smtp:
        smtp.sendmail("jörg@exämple.org", ["müller@exämple.net"], raw, ["SMTPUTF8"])
    (delivery,) = captured.deliveries
    assert (delivery.mail_from, delivery.rcpt_tos) == ("jörg@exämple.org", ["müller@exämple.net"])
    assert "SMTPUTF8" in delivery.mail_options
    our_prefix(delivery.content, raw)


def test_many_recipients_in_one_transaction(rig):
    captured, _, port = rig
    recipients = [f"user{i}@example.net" for i in range(60)]
    assert send(port, HAM, recipients) == {}
    (delivery,) = captured.deliveries
    assert delivery.rcpt_tos == recipients


def test_incoming_spam_headers_are_stripped(rig):
    captured, _, port = rig
    forged = (
        b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=0.000\r\n\tfolded=yes\r\n"
        b"x-spam-score: 0.0\r\n" + SPAM
    )
    send(port, forged)
    (delivery,) = captured.deliveries
    prefix = our_prefix(delivery.content, SPAM)
    assert spam_headers(prefix)["X-Spam-Flag"] == "YES"
    assert prefix.count(b"X-Spam-") == 3 and b"folded" not in delivery.content


def test_a_recipient_refused_downstream_is_refused_to_the_client(tiny_model_dir, classifier):
    refuse = {"gone@example.net": "550 5.1.1 <gone@example.net>: no such user"}
    with (
        sink(SinkBehaviour(refuse=refuse)) as (captured, sink_port),
        running_filter(filter_config(tiny_model_dir, sink_port), classifier) as daemon,
    ):
        port = daemon.smtp_address[1]
        refused = send(port, HAM, ["ok@example.net", "gone@example.net"])
        assert refused == {"gone@example.net": (550, b"5.1.1 <gone@example.net>: no such user")}
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(port, HAM, ["gone@example.net"])
    (delivery,) = captured.deliveries
    assert delivery.rcpt_tos == ["ok@example.net"]


def test_next_hop_down_is_a_temporary_failure(tiny_model_dir, classifier):
    with socket.socket() as unused:
        unused.bind((LOCALHOST, 0))  # bound, never listening: connections are refused
        closed_port = unused.getsockname()[1]
        config = filter_config(tiny_model_dir, closed_port)
        with (
            running_filter(config, classifier) as daemon,
            pytest.raises(smtplib.SMTPSenderRefused) as refused,
        ):
            send(daemon.smtp_address[1], HAM)
    assert refused.value.smtp_code == 451
    assert refused.value.smtp_error.startswith(b"4.4.1 next hop")


@pytest.mark.parametrize("stage", ["mail", "data"])
def test_slow_next_hop_times_out_with_451(tiny_model_dir, classifier, stage):
    behaviour = SinkBehaviour(**{f"{stage}_delay": 3.0})
    with (
        sink(behaviour) as (captured, sink_port),
        running_filter(
            filter_config(tiny_model_dir, sink_port, relay_timeout=0.5), classifier
        ) as daemon,
    ):
        with pytest.raises(smtplib.SMTPResponseException) as failed:
            send(daemon.smtp_address[1], HAM)
        assert failed.value.smtp_code == 451
        assert b"timed out" in failed.value.smtp_error
    assert captured.deliveries == []


@pytest.mark.parametrize("on_error", ["pass", "tempfail"])
def test_scoring_errors_follow_the_policy(tiny_model_dir, on_error):
    with (
        sink() as (captured, sink_port),
        running_filter(
            filter_config(tiny_model_dir, sink_port, on_score_error=on_error), Raising()
        ) as daemon,
    ):
        port = daemon.smtp_address[1]
        if on_error == "pass":
            send(port, SPAM)
            (delivery,) = captured.deliveries
            headers = spam_headers(our_prefix(delivery.content, SPAM))
            assert headers == {"X-Spam-Status": f"unknown, model={daemon.model_id}"}
        else:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                send(port, SPAM)
            assert refused.value.smtp_code == 451
            assert captured.deliveries == []
            wait_for(lambda: "RSET" in captured.commands)  # the next hop's transaction ended


def test_oversized_mail_is_refused_at_mail_and_at_data(tiny_model_dir, classifier):
    with (
        sink() as (captured, sink_port),
        running_filter(
            filter_config(tiny_model_dir, sink_port, max_message_size=2000), classifier
        ) as daemon,
    ):
        big = b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 50
        with pytest.raises(smtplib.SMTPSenderRefused) as at_mail:  # smtplib sends SIZE=
            send(daemon.smtp_address[1], big)
        assert at_mail.value.smtp_code == 552
        with client(daemon.smtp_address[1]) as smtp:
            smtp.ehlo()
            assert smtp.mail("sender@example.org")[0] == 250  # no SIZE= announced
            assert smtp.rcpt("user@example.net")[0] == 250
            assert smtp.data(big)[0] == 552
            assert smtp.noop()[0] == 250  # the session goes on
            send(daemon.smtp_address[1], HAM)
    assert len(captured.deliveries) == 1


def test_clients_outside_allowed_networks_are_refused_before_any_command(
    tiny_model_dir, classifier
):
    config = filter_config(tiny_model_dir, 9, allowed_networks=["10.0.0.0/8"])
    with running_filter(config, classifier) as daemon:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            client(daemon.smtp_address[1])
        assert refused.value.smtp_code == 554


def test_connection_and_recipient_limits(tiny_model_dir, classifier):
    with (
        sink() as (_captured, sink_port),
        running_filter(
            filter_config(tiny_model_dir, sink_port, max_connections=1, max_recipients=2),
            classifier,
        ) as daemon,
    ):
        port = daemon.smtp_address[1]
        with client(port) as first:
            with pytest.raises(smtplib.SMTPConnectError) as second:
                client(port)
            assert second.value.smtp_code == 421
            refused = first.sendmail("s@example.org", ["a@x.net", "b@x.net", "c@x.net"], HAM)
            assert refused == {"c@x.net": (452, b"4.5.3 too many recipients")}


def test_quarantine_keeps_spam_in_a_maildir_and_relays_nothing(
    tiny_model_dir, classifier, tmp_path
):
    config_changes = {"quarantine_threshold": 0.9, "quarantine_dir": str(tmp_path / "q")}
    with (
        sink() as (captured, sink_port),
        running_filter(
            filter_config(tiny_model_dir, sink_port, **config_changes), classifier
        ) as daemon,
    ):
        send(daemon.smtp_address[1], SPAM, ["a@example.net", "b@example.net"])
        send(daemon.smtp_address[1], HAM)
    assert [spam_headers(d.content)["X-Spam-Flag"] for d in captured.deliveries] == ["NO"]
    box = mailbox.Maildir(tmp_path / "q")
    (stored,) = [box.get_bytes(key) for key in box.iterkeys()]  # iter(box) yields messages
    assert stored.startswith(
        b"X-Spam-Envelope-From: sender@example.org\r\n"
        b"X-Spam-Envelope-To: a@example.net, b@example.net\r\nX-Spam-Flag: YES\r\n"
    )
    assert stored.endswith(SPAM)


def test_reject_when_configured(tiny_model_dir, classifier):
    config = {"reject": True, "reject_threshold": 0.9, "subject_tag": "[SPAM] "}
    with (
        sink() as (captured, sink_port),
        running_filter(filter_config(tiny_model_dir, sink_port, **config), classifier) as daemon,
    ):
        with pytest.raises(smtplib.SMTPDataError) as rejected:
            send(daemon.smtp_address[1], SPAM)
        assert (rejected.value.smtp_code, rejected.value.smtp_error[:5]) == (550, b"5.7.1")
    assert captured.deliveries == []


def test_subject_tag_on_tagged_mail_only(tiny_model_dir, classifier):
    with (
        sink() as (captured, sink_port),
        running_filter(
            filter_config(tiny_model_dir, sink_port, subject_tag="[SPAM] "), classifier
        ) as daemon,
    ):
        send(daemon.smtp_address[1], SPAM)
        send(daemon.smtp_address[1], HAM)
    spam, ham = captured.deliveries
    subject = SPAM.split(b"Subject: ")[1].split(b"\n")[0]
    assert b"Subject: [SPAM] " + subject in spam.content
    our_prefix(ham.content, HAM)


def test_a_full_queue_answers_451(tiny_model_dir):
    entered, release = threading.Event(), threading.Event()

    class Blocking:
        def score_raw(self, messages):
            entered.set()
            release.wait(10)
            return [0.1] * len(messages)

    config = {"queue_size": 1, "batch_size": 1}
    with (
        sink() as (captured, sink_port),
        running_filter(filter_config(tiny_model_dir, sink_port, **config), Blocking()) as daemon,
        ThreadPoolExecutor(2) as pool,
    ):
        port = daemon.smtp_address[1]
        first = pool.submit(send, port, HAM)
        assert entered.wait(10)
        second = pool.submit(send, port, SPAM)
        wait_for(lambda: daemon.batcher.depth == 1)
        with pytest.raises(smtplib.SMTPDataError) as overloaded:
            send(port, HAM)
        assert overloaded.value.smtp_code == 451
        release.set()
        first.result(10), second.result(10)
    assert len(captured.deliveries) == 2


def test_200_messages_over_20_connections_arrive_exactly_once(rig):
    captured, _, port = rig

    def session(worker: int) -> None:
        with client(port) as smtp:
            for index in range(10):
                number = worker * 10 + index
                smtp.sendmail("s@example.org", ["u@example.net"], make_message(number % 2, number))

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(session, range(20)))
    ids = sorted(d.content.split(b"Message-ID: <")[1].split(b">")[0] for d in captured.deliveries)
    assert ids == sorted(f"{n % 2}.{n}@example.org".encode() for n in range(200))


def test_metrics_and_health_endpoints(rig):
    _captured, daemon, port = rig
    send(port, SPAM)
    send(port, HAM)
    base = "http://{}:{}".format(*daemon.metrics_address)
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    assert 'spamfilter_messages_total{verdict="tag"} 1.0' in text
    assert 'spamfilter_messages_total{verdict="pass"} 1.0' in text
    assert "spamfilter_score_count 2.0" in text
    assert "spamfilter_message_seconds_count 2.0" in text
    assert "spamfilter_batch_size_count" in text and "spamfilter_queue_depth 0.0" in text
    relay_errors = re.findall(r"^spamfilter_relay_errors_total\{.*\} (\S+)$", text, re.MULTILINE)
    assert all(float(count) == 0 for count in relay_errors)
    name = f"filter.test/127.0.0.1:{port}"  # instance_name unset: greeting name/listen address
    assert f'spamfilter_instance_info{{model="{daemon.model_id}",name="{name}"}} 1.0' in text
    assert urllib.request.urlopen(base + "/healthz", timeout=10).read() == b"ok\n"


def test_every_hook_is_called_by_aiosmtpd(tiny_model_dir, classifier):
    """aiosmtpd finds hooks by name: prove each one the handler defines actually runs."""
    defined = {name for name in dir(FilterHandler) if name.startswith("handle_")}
    assert defined == {f"handle_{hook}" for hook in HOOKS} | {"handle_exception"}
    with (
        sink() as (captured, sink_port),
        running_filter(filter_config(tiny_model_dir, sink_port), classifier) as daemon,
    ):
        called = []
        for name in defined:
            original = getattr(daemon.handler, name)

            @functools.wraps(original)  # aiosmtpd inspects handle_EHLO's signature
            async def spy(*args, _original=original, _name=name):
                called.append(_name)
                return await _original(*args)

            setattr(daemon.handler, name, spy)  # aiosmtpd reads hooks per connection
        with client(daemon.smtp_address[1]) as smtp:
            smtp.ehlo()
            smtp.mail("s@example.org")
            smtp.rcpt("u@example.net")
            smtp.rset()
            smtp.sendmail("s@example.org", ["u@example.net"], HAM)
            assert smtp.mail("s@example.org")[0] == 250
            daemon.handler.rules = None  # a bug: the next RCPT raises AttributeError
            assert smtp.rcpt("u@example.net")[0] == 451  # from handle_exception
    assert set(called) == defined
    wait_for(lambda: captured.commands[-1] == "QUIT")
    assert captured.commands == [
        *("MAIL", "RCPT", "RSET"),
        *("MAIL", "RCPT", "DATA"),
        *("MAIL", "QUIT"),
    ]
