"""Allow and deny lists and per-recipient thresholds: parsing, precedence, real SMTP.

The SMTP tests run the filter between smtplib and a capturing sink; most score with a
``ConstantScorer`` so that the list, not the model, decides; one runs the tiny model.
"""

from __future__ import annotations

import dataclasses
import mailbox
import signal
import smtplib
from ipaddress import ip_address

import pytest

from spamfilter import configload
from spamfilter.config import FilterConfig
from spamfilter.model.classifier import Classifier
from spamfilter.smtp import lists
from spamfilter.smtp.lists import Facts, parse_entry
from spamfilter.smtp.policy import Policy, Verdict
from spamfilter.smtp.routing import plan
from spamfilter.smtp.server import build_rules
from spamrig.clients import client, our_prefix, send, spam_headers
from spamrig.daemon import (
    ConstantScorer,
    daemon_process,
    filter_config,
    running_filter,
    serve_args,
    wait_for,
)
from spamrig.sink import NextHopScript, SinkBehaviour, scripted_next_hop, sink
from spamrig.synthetic import make_message

pytestmark = pytest.mark.timeout(240)  # includes training the tiny model (session fixture)

NEWS = b"From: Bank News <news@bank.example>\r\nSubject: your statement\r\n\r\nhello\r\n"


def facts(sender="", from_header=(), client=None) -> Facts:
    return Facts(sender, tuple(from_header), ip_address(client) if client else None)


# Parsing ------------------------------------------------------------------------------------
def test_entries_are_normalized_and_bad_ones_say_why():
    assert str(parse_entry("Sender-Domain:Bank.EXAMPLE")) == "sender-domain:bank.example"
    assert str(parse_entry("network:192.0.2.7/24")) == "network:192.0.2.0/24"
    for bad, why in [
        ("bank.example", "expected KIND:VALUE"),
        ("colour:blue", "expected KIND:VALUE"),
        ("sender:", "nothing after"),
        ("sender:no-at-sign", "not an address"),
        ("recipient-domain:a@b.example", "not a domain"),
        ("network:10.0.0.300/8", "not a network"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_entry(bad)


def test_a_bad_entry_in_the_config_file_names_the_setting(tmp_path):
    path = tmp_path / "filter.yaml"
    path.write_text("model: m\nallow: [sender:ok@example.org, 'sender:broken']\nalow: []\n")
    with pytest.raises(configload.ConfigError) as error:
        configload.load(FilterConfig, path)
    assert f"{path}: unknown key 'alow'" in str(error.value)  # unknown keys: key and file
    path.write_text("model: m\nallow: [sender:ok@example.org, 'sender:broken']\n")
    with pytest.raises(configload.ConfigError, match=r"'allow': 'sender:broken'.*not an address"):
        configload.load(FilterConfig, path)


def test_the_lists_file_adds_entries_and_names_the_file_and_line_of_an_error(tmp_path):
    path = tmp_path / "lists"
    path.write_text(
        "# our bank, and a network we trust\n"
        "allow sender-domain:bank.example\n"
        "allow network:192.0.2.0/24   # the office\n"
        "\n"
        "deny  sender:promo@spam.example\n"
        "thresholds recipient:ceo@example.net tag=0.3 quarantine=0.9\n"
    )
    found = lists.from_config(["sender:a@b.example"], [], [], str(path))
    assert [str(e) for e in found.allow] == [
        "sender:a@b.example",
        "sender-domain:bank.example",
        "network:192.0.2.0/24",
    ]
    assert [str(e) for e in found.deny] == ["sender:promo@spam.example"]
    assert found.thresholds_for("CEO@example.net").changes() == {"tag": 0.3, "quarantine": 0.9}
    for line, why in [
        ("allow sender-domain:bank", None),
        ("thresholds sender:x@y.example tag=0.3", "per recipient"),
        ("thresholds recipient:x@y.example tag=1.5", "strictly between"),
        ("thresholds recipient:x@y.example", "no threshold"),
        ("permit sender:x@y.example", "expected 'allow ENTRY'"),
    ]:
        path.write_text(f"allow sender:a@b.example\n{line}\n")
        if why is None:
            lists.read_lists_file(str(path))
            continue
        with pytest.raises(ValueError, match=rf"^{path}:2: .*{why}"):
            lists.read_lists_file(str(path))


# Precedence ---------------------------------------------------------------------------------
def test_deny_wins_over_allow_whatever_each_matches():
    found = lists.from_config(
        allow=["recipient:optout@example.net", "network:192.0.2.0/24"],
        deny=["sender-domain:spam.example"],
        thresholds=[],
    )
    spammer = facts("promo@spam.example", client="192.0.2.9")
    assert (
        str(found.listing(spammer, "optout@example.net")) == "denylisted=sender-domain:spam.example"
    )
    other = facts("friend@example.org", client="192.0.2.9")
    assert (
        str(found.listing(other, "optout@example.net"))
        == "allowlisted=recipient:optout@example.net"
    )
    assert str(found.listing(other, "x@example.net")) == "allowlisted=network:192.0.2.0/24"
    assert (
        found.listing(facts("friend@example.org", client="198.51.100.1"), "x@example.net") is None
    )


def test_sender_entries_match_the_envelope_or_the_from_header_and_subdomains_on_request():
    found = lists.from_config(
        allow=["sender-domain:bank.example", "sender-domain:.esp.example"], deny=[], thresholds=[]
    )
    assert found.listing(facts("bounce@bank.example"), "r@x") is not None  # envelope
    assert found.listing(facts("b@mailer.test", ["news@bank.example"]), "r@x") is not None
    assert found.listing(facts("b@mailer.test", ["news@sub.bank.example"]), "r@x") is None
    assert found.listing(facts("b@out.esp.example"), "r@x") is not None
    assert found.listing(facts("b@esp.example"), "r@x") is None  # ".esp.example": below it only
    # An allow entry trusts a From header of one address only; a deny entry any of them.
    two = ["news@bank.example", "other@mailer.test"]
    assert found.listing(facts("b@mailer.test", two), "r@x") is None
    deny = lists.from_config(allow=[], deny=["sender:other@mailer.test"], thresholds=[])
    assert deny.listing(facts("b@mailer.test", two), "r@x") is not None


def test_a_recipient_address_rule_wins_over_its_domain_rule():
    found = lists.from_config(
        [], [], ["recipient-domain:example.net tag=0.9", "recipient:ceo@example.net tag=0.2"]
    )
    assert found.thresholds_for("ceo@example.net").tag == 0.2
    assert found.thresholds_for("staff@example.net").tag == 0.9
    assert found.thresholds_for("staff@example.org") is None


def test_deny_gives_at_least_the_deny_action_and_allow_never_more_than_pass():
    policy = Policy("m@1", tag=0.5, quarantine=0.8, reject=0.95, deny=Verdict.QUARANTINE)
    allow = lists.Listing("allow", parse_entry("sender:a@b.example"))
    deny = lists.Listing("deny", parse_entry("sender:a@b.example"))
    assert [policy.decide(s, deny) for s in (0.1, 0.9, 0.99, None)] == [
        Verdict.QUARANTINE,
        Verdict.QUARANTINE,
        Verdict.REJECT,  # the score's verdict when it is stronger
        Verdict.QUARANTINE,  # no score needed
    ]
    assert [policy.decide(s, allow) for s in (0.1, 0.99, None)] == [
        Verdict.PASS,
        Verdict.PASS,
        Verdict.UNKNOWN,
    ]
    assert policy.headers(0.99, allow).decode().splitlines() == [
        "X-Spam-Flag: NO",
        "X-Spam-Score: 0.990",
        "X-Spam-Status: No, score=0.990 tag=0.5 quarantine=0.8 reject=0.95 "
        "allowlisted=sender:a@b.example model=m@1",
    ]


def test_one_data_reply_rejects_only_when_every_group_is_rejected():
    policy = Policy("m@1", tag=0.5, reject=0.8)
    found = lists.from_config(["recipient:optout@example.net"], [], [])
    recipients = ["a@example.net", "optout@example.net", "b@example.net"]
    mixed = plan(policy, found, Facts(), recipients, 0.9, can_quarantine=True)
    assert [(g.recipients, g.verdict) for g in mixed] == [
        (("a@example.net", "b@example.net"), Verdict.QUARANTINE),  # not 550: optout gets it
        (("optout@example.net",), Verdict.PASS),
    ]
    assert plan(policy, found, Facts(), recipients, 0.9, can_quarantine=False)[0].verdict is (
        Verdict.TAG
    )
    everyone = plan(policy, found, Facts(), ["a@example.net"], 0.9, can_quarantine=True)
    assert [g.verdict for g in everyone] == [Verdict.REJECT]
    failing = dataclasses.replace(policy, tempfail_on_error=True)
    assert {g.verdict for g in plan(failing, found, Facts(), recipients, None, True)} == {
        Verdict.TEMPFAIL
    }


# Through real SMTP --------------------------------------------------------------------------
def test_an_allowlisted_sender_domain_is_never_tagged_or_refused_but_still_scored(
    tiny_model_dir,
):
    with sink() as (captured, port):
        config = filter_config(
            tiny_model_dir,
            port,
            allow=["sender-domain:bank.example"],
            subject_tag="[SPAM] ",
            reject=True,
            reject_threshold=0.8,
        )
        with running_filter(config, ConstantScorer(0.9)) as daemon:
            with client(daemon.smtp_address[1]) as smtp:  # allowlisted by the From header
                smtp.sendmail("bounce-42@mailer.test", ["user@example.net"], NEWS)
            with pytest.raises(smtplib.SMTPDataError) as refused:  # the same, not listed
                send(daemon.smtp_address[1], NEWS.replace(b"bank.example", b"bank.test"))
    assert refused.value.smtp_code == 550
    (delivery,) = captured.deliveries
    headers = spam_headers(our_prefix(delivery.content, NEWS))  # no subject tag either
    assert headers["X-Spam-Flag"] == "NO"
    assert headers["X-Spam-Score"] == "0.900"
    assert headers["X-Spam-Status"].startswith("No, score=0.900 tag=0.5 reject=0.8 ")
    assert "allowlisted=sender-domain:bank.example model=" in headers["X-Spam-Status"]


def test_a_denylisted_sender_is_tagged_by_the_tiny_model_filter_and_refused_at_rcpt_with_reject(
    tiny_model_dir,
):
    ham = make_message(0, 3).replace(b"\n", b"\r\n")
    with sink() as (captured, port):
        config = filter_config(tiny_model_dir, port, deny=["sender:promo@spam.example"])
        with (
            running_filter(config, Classifier(tiny_model_dir, precision="fp32")) as daemon,
            client(daemon.smtp_address[1]) as smtp,
        ):
            smtp.sendmail("promo@spam.example", ["user@example.net"], ham)
            smtp.sendmail("friend@example.org", ["user@example.net"], ham)
        listed, unlisted = (spam_headers(d.content) for d in captured.deliveries)
        assert float(listed["X-Spam-Score"]) < 0.5  # the model says ham...
        assert listed["X-Spam-Flag"] == "YES"  # ...the deny list says tag
        assert "denylisted=sender:promo@spam.example" in listed["X-Spam-Status"]
        assert unlisted["X-Spam-Flag"] == "NO"

        captured.commands.clear()
        config = dataclasses.replace(config, deny_action="reject")
        with running_filter(config, ConstantScorer(0.1)) as daemon:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                send(daemon.smtp_address[1], ham, sender="promo@spam.example")
            with pytest.raises(smtplib.SMTPDataError) as at_data:  # From: only known at DATA
                send(daemon.smtp_address[1], b"From: promo@spam.example\r\n\r\nhi\r\n")
    assert refused.value.recipients["user@example.net"] == (550, b"5.7.1 refused by local policy")
    assert at_data.value.smtp_code == 550
    assert captured.commands.count("RCPT") == 1  # the refused RCPT never reached the next hop
    assert len(captured.deliveries) == 2


def test_network_entries_match_the_client_that_xforward_names(tiny_model_dir):
    with sink() as (captured, port):
        config = filter_config(tiny_model_dir, port, allow=["network:192.0.2.0/24"])
        with running_filter(config, ConstantScorer(0.9)) as daemon:
            with client(daemon.smtp_address[1]) as smtp:
                smtp.ehlo()
                assert smtp.docmd("XFORWARD", "NAME=mx.example ADDR=192.0.2.7")[0] == 250
                smtp.sendmail("a@example.org", ["user@example.net"], NEWS)
            send(daemon.smtp_address[1], NEWS)  # from 127.0.0.1 itself: not listed
    first, second = (spam_headers(d.content) for d in captured.deliveries)
    assert "allowlisted=network:192.0.2.0/24" in first["X-Spam-Status"]
    assert second["X-Spam-Flag"] == "YES"


def test_recipients_with_different_rules_get_their_own_copies_and_one_250(tiny_model_dir):
    config_lists = dict(
        allow=["recipient:optout@example.net"],
        recipient_thresholds=["recipient:lenient@example.net tag=0.9"],
    )
    recipients = ["a@example.net", "optout@example.net", "lenient@example.net", "b@example.net"]
    with sink() as (captured, port):
        config = filter_config(tiny_model_dir, port, **config_lists)
        with (
            running_filter(config, ConstantScorer(0.6)) as daemon,
            client(daemon.smtp_address[1]) as smtp,
        ):
            smtp.ehlo()
            smtp.mail("sender@example.org")
            for recipient in recipients:
                assert smtp.rcpt(recipient)[0] == 250
            code, text = smtp.data(NEWS)
    assert code == 250 and b"3 copies" in text
    copies = {
        tuple(d.rcpt_tos): spam_headers(our_prefix(d.content, NEWS)) for d in captured.deliveries
    }
    assert list(copies) == [
        ("a@example.net", "b@example.net"),
        ("optout@example.net",),
        ("lenient@example.net",),
    ]
    assert copies[("a@example.net", "b@example.net")]["X-Spam-Flag"] == "YES"
    optout = copies[("optout@example.net",)]
    assert (
        optout["X-Spam-Flag"] == "NO" and "allowlisted=recipient:optout" in optout["X-Spam-Status"]
    )
    lenient = copies[("lenient@example.net",)]
    assert lenient["X-Spam-Flag"] == "NO" and "tag=0.9" in lenient["X-Spam-Status"]
    assert all(d.mail_from == "sender@example.org" for d in captured.deliveries)


def test_a_mixed_reject_quarantines_those_copies_and_delivers_the_rest(tiny_model_dir, tmp_path):
    quarantine = tmp_path / "quarantine"
    with sink() as (captured, port):
        config = filter_config(
            tiny_model_dir,
            port,
            allow=["recipient:optout@example.net"],
            reject=True,
            reject_threshold=0.8,
            quarantine_dir=str(quarantine),
        )
        with running_filter(config, ConstantScorer(0.9)) as daemon:
            assert send(daemon.smtp_address[1], NEWS, ["a@example.net", "optout@example.net"]) == {}
    (delivery,) = captured.deliveries
    assert delivery.rcpt_tos == ["optout@example.net"]
    (stored,) = mailbox.Maildir(quarantine, create=False)
    assert stored["X-Spam-Envelope-To"] == "a@example.net"


def test_the_250_waits_for_every_group_a_refused_copy_is_answered_as_the_next_hop_said(
    tiny_model_dir,
):
    config_lists = dict(allow=["recipient:optout@example.net"])
    with scripted_next_hop(NextHopScript(data_reply=b"451 4.3.0 try later")) as (hop, port):
        config = filter_config(tiny_model_dir, port, **config_lists)
        with (
            running_filter(config, ConstantScorer(0.9)) as daemon,
            pytest.raises(smtplib.SMTPDataError) as failed,
        ):
            send(daemon.smtp_address[1], NEWS, ["a@example.net", "optout@example.net"])
    assert failed.value.smtp_code == 451
    assert len(hop.received) == 1  # the first copy failed: the second was not sent


def test_sighup_rereads_the_lists_file_and_keeps_the_old_lists_when_it_is_broken(
    tiny_model_dir, tmp_path
):
    listed = tmp_path / "lists"
    listed.write_text("allow sender-domain:bank.example\n")
    with sink(SinkBehaviour()) as (captured, sink_port):
        args = serve_args(tiny_model_dir, sink_port, "--lists-file", str(listed))
        with daemon_process(args) as (process, port, log):
            statuses = []

            def deliver() -> None:
                send(port, NEWS, sender="news@bank.example")
                statuses.append(spam_headers(captured.deliveries[-1].content)["X-Spam-Status"])

            deliver()
            listed.write_text("allow sender-domain:bank.example\ndeny sender:bank.example\n")
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: any("reload failed" in line for line in log))
            deliver()
            listed.write_text("deny sender-domain:bank.example\n")
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: any("1 deny" in line for line in log))
            deliver()
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
    assert "allowlisted=sender-domain:bank.example" in statuses[0]
    assert any(f"{listed}:2: 'sender:bank.example'" in line for line in log)
    assert "allowlisted=sender-domain:bank.example" in statuses[1]  # the old lists kept
    assert statuses[2].startswith("Yes,") and "denylisted=sender-domain:bank.example" in statuses[2]


def test_recipient_thresholds_that_need_a_setting_are_refused_at_start(tiny_model_dir):
    config = filter_config(
        tiny_model_dir, 9, recipient_thresholds=["recipient:a@b.example reject=0.9"]
    )
    with pytest.raises(ValueError, match="reject= needs 'reject: true'"):
        build_rules(config, tiny_model_dir, "m@1")
