"""The filter behind a real Postfix: after the queue (content_filter) and before it (proxy),
and after the queue with two filter daemons behind one name (``FilterPool``).

Each test starts a private Postfix (``spamrig.postfix``) and ``spamfilter serve`` as a
process, sends mail with smtplib from 127.0.0.2 (so the original client differs from
the filter's 127.0.0.1), and reads what Postfix delivered into the Maildir.
``make test`` installs Postfix first (scripts/ensure-postfix.sh); in CI a missing Postfix
fails these tests instead of skipping them.
"""

from __future__ import annotations

import collections
import email
import os
import re
import signal
import smtplib
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spamrig import LOCALHOST
from spamrig.daemon import daemon_process, serve_args, wait_for
from spamrig.postfix import DOMAIN, USER, Postfix, free_port, postfix_binary, postfix_instance
from spamrig.synthetic import long_line_message, make_message

# The test bodies only (about 30-50 s here): building the session's tiny model, which
# can take minutes on a busy CPU, is not counted.
pytestmark = pytest.mark.timeout(120, func_only=True)

CLIENT_ADDRESS = "127.0.0.2"  # any loopback address; not the filter's 127.0.0.1
CLIENT_HELO = "client.example"
RECIPIENT = f"{USER}@{DOMAIN}"


@pytest.fixture(scope="module", autouse=True)
def postfix_available() -> None:
    reason = None
    if postfix_binary() is None:
        reason = "postfix is not installed (scripts/ensure-postfix.sh installs it)"
    elif os.geteuid() != 0:
        reason = "a private Postfix instance needs root"
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the Postfix tests")
    if reason:
        pytest.skip(reason)


@contextmanager
def spamfilter(postfix: Postfix, model: Path, *flags: str) -> Iterator[list[str]]:
    """``spamfilter serve`` between the instance's hops; yields its log lines."""
    listen = ("--listen", f"{LOCALHOST}:{postfix.filter_port}")  # where Postfix hands mail
    args = serve_args(model, postfix.reinject_port, *listen, *flags)
    with daemon_process(args) as (process, _, log):
        yield log
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def send(postfix: Postfix, raw: bytes) -> None:
    with smtplib.SMTP(
        LOCALHOST,
        postfix.smtp_port,
        local_hostname=CLIENT_HELO,
        source_address=(CLIENT_ADDRESS, 0),
        timeout=30,
    ) as client:
        client.sendmail("sender@example.org", [RECIPIENT], raw.replace(b"\n", b"\r\n"))


def assert_delivered(delivered: bytes, original: bytes, flag: str) -> None:
    """Our verdict headers are there and the message after them is byte for byte."""
    message = email.message_from_bytes(delivered)
    assert message["X-Spam-Flag"] == flag
    assert message["X-Spam-Status"].startswith(flag.capitalize())
    assert delivered.endswith(original), "Postfix delivered a changed message"


def assert_xforwarded(postfix: Postfix, count: int) -> None:
    """The re-injection smtpd (fed by the filter from 127.0.0.1) names the real client.

    (Before the queue there is no first queue id, so no ``orig_queue_id``.)
    """
    forwarded = re.findall(
        rf"client=localhost\[127\.0\.0\.1\], (?:orig_queue_id=\w+, )?"
        rf"orig_client=unknown\[{re.escape(CLIENT_ADDRESS)}\]",
        postfix.log(),
    )
    assert len(forwarded) == count, postfix.log()[-3000:]


def test_after_queue_filter_tags_delivers_and_defers_while_down(tiny_model_dir):
    spam, ham, late = make_message(1, 1), make_message(0, 2), make_message(1, 3)
    with postfix_instance("after-queue") as postfix:
        with spamfilter(postfix, tiny_model_dir):
            send(postfix, spam)
            send(postfix, ham)
            first, second = sorted(postfix.wait_delivered(2), key=lambda m: b"<1.1@" not in m)
        assert_delivered(first, spam, "YES")
        assert_delivered(second, ham, "NO")
        assert_xforwarded(postfix, 2)

        send(postfix, late)  # the filter is down: Postfix must keep the message
        wait_for(lambda: "Connection refused" in postfix.run("postqueue", "-p"), 30)
        assert RECIPIENT in postfix.run("postqueue", "-p")
        assert len(postfix.delivered()) == 2

        with spamfilter(postfix, tiny_model_dir):
            postfix.run("postqueue", "-f")
            assert_delivered(postfix.wait_delivered(3)[-1], late, "YES")
        assert "Mail queue is empty" in postfix.run("postqueue", "-p")


def test_before_queue_filter_refuses_spam_at_the_client_and_delivers_ham(tiny_model_dir):
    ham = make_message(0, 4)
    with postfix_instance("before-queue") as postfix:
        with spamfilter(postfix, tiny_model_dir, "--reject", "--reject-threshold", "0.5") as log:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                send(postfix, make_message(1, 5))
            send(postfix, ham)
            [delivered] = postfix.wait_delivered(1)
        assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
        assert any("verdict=reject" in line for line in log)
        assert_delivered(delivered, ham, "NO")
        assert_xforwarded(postfix, 2)  # the refused spam reached the filter's next hop too


# Two filter "hosts": loopback addresses other than the client's and Postfix's.
FILTER_ADDRESSES = ("127.0.0.3", "127.0.0.4")


@contextmanager
def pool_member(postfix: Postfix, model: Path, address: str, *flags: str):
    """A pool daemon at ``address``; yields (process, its /metrics URL)."""
    metrics = f"{address}:{free_port(address)}"
    listen = ("--listen", f"{address}:{postfix.filter_port}", "--metrics-listen", metrics)
    with daemon_process(serve_args(model, postfix.reinject_port, *listen, *flags)) as started:
        yield started[0], f"http://{metrics}/metrics"


def scrape(url: str) -> tuple[str, float]:
    """(spamfilter_instance_info's name, messages answered) from a daemon's /metrics."""
    with urllib.request.urlopen(url, timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    [info] = families["spamfilter_instance_info"].samples
    answered = sum(sample.value for sample in families["spamfilter_messages"].samples)
    return info.labels["name"], answered


def sent_through(postfix: Postfix) -> collections.Counter[str]:
    """Deliveries to the filter pool, by the address Postfix handed each message to."""
    pattern = rf"relay=spamfilters\.test\[([\d.]+)\]:{postfix.filter_port}, .* status=sent"
    return collections.Counter(re.findall(pattern, postfix.log()))


def message_ids(messages: list[bytes]) -> list[str]:
    return sorted(email.message_from_bytes(raw)["Message-ID"] for raw in messages)


@pytest.mark.timeout(240, func_only=True)
def test_two_filter_daemons_share_the_mail_and_one_delivers_all_when_the_other_stops(
    tiny_model_dir,
):
    """40 messages over two daemons behind one name, then 20 with one of them stopped."""
    first = [make_message(n % 2, 300 + n) for n in range(40)]
    later = [make_message(n % 2, 400 + n) for n in range(20)]
    a, b = FILTER_ADDRESSES
    with postfix_instance("after-queue", FILTER_ADDRESSES) as postfix, ExitStack() as stack:
        _, a_metrics = stack.enter_context(
            pool_member(postfix, tiny_model_dir, a, "--instance-name", "filter-a")
        )
        b_process, b_metrics = stack.enter_context(pool_member(postfix, tiny_model_dir, b))
        for raw in first:
            send(postfix, raw)
        postfix.wait_delivered(len(first), timeout=120)
        (a_name, a_count), (b_name, b_count) = scrape(a_metrics), scrape(b_metrics)
        spread = sent_through(postfix)

        b_process.send_signal(signal.SIGTERM)  # drains, then exits: 127.0.0.4 refuses
        assert b_process.wait(30) == 0
        for raw in later:
            send(postfix, raw)
        delivered = postfix.wait_delivered(len(first) + len(later), timeout=120)
        _, a_total = scrape(a_metrics)
        after = sent_through(postfix) - spread
        assert "Mail queue is empty" in postfix.run("postqueue", "-p")
        log = postfix.log()

    # Postfix shuffled the name's two addresses: both daemons scored a share.
    assert (a_name, b_name) == ("filter-a", f"{socket.gethostname()}/{b}:{postfix.filter_port}")
    assert a_count > 0 and b_count > 0 and a_count + b_count == len(first), (a_count, b_count)
    assert spread == {a: a_count, b: b_count}
    # With b stopped, every later message went to a in the same delivery attempt.
    assert after == {a: len(later)} and a_total == a_count + len(later)
    assert "status=deferred" not in log
    assert message_ids(delivered) == message_ids(first + later)  # each exactly once


def test_before_queue_long_lines_reach_the_mailbox_byte_for_byte(tiny_model_dir):
    """1,500- and 10,000-byte body lines: client -> Postfix smtpd -> filter -> Postfix."""
    wide = {length: long_line_message(length).replace(b"\r\n", b"\n") for length in (1_500, 10_000)}
    with postfix_instance("before-queue") as postfix:
        with spamfilter(postfix, tiny_model_dir) as log:
            for raw in wide.values():
                send(postfix, raw)
            delivered = sorted(postfix.wait_delivered(2), key=len)
        assert not any("Line too long" in line for line in log)
    for message, raw in zip(delivered, wide.values(), strict=True):
        assert email.message_from_bytes(message)["X-Spam-Status"]
        assert message.endswith(raw), "Postfix delivered a changed message"
