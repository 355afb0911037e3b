"""``spamfilter quarantine`` on the Maildir a running daemon fills through real SMTP.

The daemon (tiny model, quarantine threshold 0.9) quarantines spam sent to it; the
commands then list, show, release (to a second real sink, with the stored envelope),
delete and expire it while the daemon keeps running; a next hop that is down or refuses
a recipient leaves the message where it was.
"""

from __future__ import annotations

import json
import mailbox
import os
import socket
import time
from pathlib import Path

import pytest
import yaml

from spamfilter import cli
from spamfilter.smtp.quarantine import Quarantine, envelope_of
from spamrig import LOCALHOST
from spamrig.clients import send, spam_headers
from spamrig.daemon import filter_config, running_filter
from spamrig.sink import SinkBehaviour, sink
from spamrig.synthetic import make_message

pytestmark = pytest.mark.timeout(240)  # includes training the tiny model (session fixture)

SPAM = [make_message(1, 40 + index).replace(b"\n", b"\r\n") for index in range(3)]
HAM = make_message(0, 40).replace(b"\n", b"\r\n")
SENDER = "sender@example.org"  # what filtersupport.send puts in MAIL FROM
RECIPIENTS = ["a@example.net", "b@example.net"]
DAY = 24 * 3600  # seconds


@pytest.fixture
def quarantined(tiny_model_dir, tmp_path):
    """A running daemon that has quarantined SPAM (to RECIPIENTS) and passed HAM.

    Yields (quarantine Maildir, ids in the order sent, the daemon's sink).
    """
    maildir = tmp_path / "quarantine"
    with sink() as (captured, sink_port):
        config = filter_config(
            tiny_model_dir, sink_port, quarantine_threshold=0.9, quarantine_dir=str(maildir)
        )
        with running_filter(config) as daemon:
            ids: list[str] = []
            for raw in SPAM:
                send(daemon.smtp_address[1], raw, RECIPIENTS)
                (new,) = {entry.id for entry in Quarantine(maildir).entries()} - set(ids)
                ids.append(new)
            send(daemon.smtp_address[1], HAM)
            yield maildir, ids, captured


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_each_quarantined_message_as_a_table_and_as_json(capsys, quarantined):
    maildir, ids, captured = quarantined
    assert [spam_headers(d.content)["X-Spam-Flag"] for d in captured.deliveries] == ["NO"]
    code, out, _ = run(capsys, "quarantine", "list", "--dir", maildir)
    assert code == 0
    heading, *rows, total = out.splitlines()
    assert heading.split()[:4] == ["ID", "RECEIVED", "(UTC)", "SCORE"]
    assert [row.split()[0] for row in rows] == ids and total == "3 messages"
    assert f"{SENDER}  a@example.net (+1)" in rows[0]

    code, out, _ = run(capsys, "quarantine", "list", "--json", "--dir", maildir)
    listed = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [entry["id"] for entry in listed] == ids
    first = listed[0]
    assert (first["sender"], first["recipients"]) == (SENDER, RECIPIENTS)
    assert first["subject"] in SPAM[0].decode() and first["score"] >= 0.9
    assert first["size"] == len(Quarantine(maildir).raw(ids[0]))


def test_show_prints_the_headers_and_the_text_or_the_stored_bytes(capsys, quarantined):
    maildir, ids, _ = quarantined
    code, out, _ = run(capsys, "quarantine", "show", ids[0], "--dir", maildir)
    assert code == 0
    assert f"X-Spam-Envelope-From: {SENDER}\n" in out
    assert "X-Spam-Flag: YES\n" in out and "X-Spam-Report: +" in out
    assert "\n--- the text the model read ---\nSubject: " in out
    code, out, _ = run(capsys, "quarantine", "show", ids[0], "--raw", "--dir", maildir)
    stored = mailbox.Maildir(maildir, factory=None).get_bytes(ids[0])
    assert code == 0 and out.encode() == stored and stored.endswith(SPAM[0])


def test_release_delivers_with_the_stored_envelope_then_deletes(capsys, quarantined, tmp_path):
    maildir, ids, _ = quarantined
    with sink() as (next_hop, port):
        settings = tmp_path / "filter.yaml"
        relay = f"{LOCALHOST}:{port}"
        settings.write_text(yaml.safe_dump({"model": "m", "quarantine_dir": str(maildir)}))
        code, out, err = run(
            capsys,
            "quarantine",
            "release",
            ids[0],
            "--config",
            settings,
            "--relay",
            relay,
            "--learn-dir",
            tmp_path / "learn",
        )
    assert (code, err) == (0, "")
    assert out.startswith(f"{ids[0]}: released to {relay} (250 2.0.0 Ok: queued as SINK)")
    (delivery,) = next_hop.deliveries
    assert (delivery.mail_from, delivery.rcpt_tos) == (SENDER, RECIPIENTS)
    released, rest = delivery.content.split(b"\r\n", 1)
    assert rest == SPAM[0]  # the message as the sender sent it, without our headers
    assert released.startswith(b"X-Spam-Released: ") and f"id={ids[0]}".encode() in released
    assert b"; was: Yes, score=" in released
    assert [entry.id for entry in Quarantine(maildir).entries()] == ids[1:]
    learn = mailbox.Maildir(tmp_path / "learn", factory=None)
    assert [learn.get_bytes(key) for key in learn.iterkeys()] == [delivery.content]


def test_a_release_the_next_hop_does_not_take_keeps_the_message(capsys, quarantined):
    maildir, ids, _ = quarantined
    with socket.socket() as unused:
        unused.bind((LOCALHOST, 0))  # bound, never listening: connections are refused
        down = f"{LOCALHOST}:{unused.getsockname()[1]}"
        code, out, err = run(
            capsys, "quarantine", "release", ids[0], "--dir", maildir, "--relay", down
        )
    assert (code, out) == (2, "")
    assert f"{ids[0]}: not released: " in err and f"cannot connect to {down}" in err

    refusing = SinkBehaviour(refuse={"b@example.net": "550 5.1.1 no such user"})
    with sink(refusing) as (next_hop, port):
        relay = f"{LOCALHOST}:{port}"
        code, _, err = run(
            capsys, "quarantine", "release", *ids[:2], "--dir", maildir, "--relay", relay
        )
    assert code == 2 and next_hop.deliveries == []  # not to a, since not to b
    assert err.count("<b@example.net>: 550 5.1.1 no such user; nothing delivered") == 2
    assert [entry.id for entry in Quarantine(maildir).entries()] == ids


def test_delete_and_expire_remove_messages_and_report_the_missing(capsys, quarantined):
    maildir, ids, _ = quarantined
    forty_days_ago = time.time() - 40 * DAY
    os.utime(maildir / "new" / ids[1], (forty_days_ago, forty_days_ago))
    code, out, _ = run(
        capsys, "quarantine", "expire", "--older-than", "30d", "--dry-run", "--dir", maildir
    )
    assert code == 0 and out.startswith(f"{ids[1]}: would be deleted (received ")
    assert len(Quarantine(maildir).entries()) == 3
    code, out, _ = run(capsys, "quarantine", "expire", "--older-than", "30d", "--dir", maildir)
    assert code == 0 and out.startswith("deleted 1 message received before ")
    assert [entry.id for entry in Quarantine(maildir).entries()] == [ids[0], ids[2]]

    code, out, err = run(capsys, "quarantine", "delete", ids[0], ids[1], "--dir", maildir)
    assert (code, out) == (2, f"{ids[0]}: deleted\n")
    assert (
        err
        == f"spamfilter: error: {ids[1]}: not in the quarantine (released, deleted or expired?)\n"
    )
    assert [entry.id for entry in Quarantine(maildir).entries()] == [ids[2]]


def test_a_message_moved_to_cur_or_gone_since_listing_is_found_or_reported(capsys, quarantined):
    """Maildir semantics: a mail client may move it to cur/ with flags; another admin may
    delete it between our list and our act."""
    maildir, ids, _ = quarantined
    new = maildir / "new" / ids[0]
    new.rename(maildir / "cur" / f"{ids[0]}:2,S")
    code, out, _ = run(capsys, "quarantine", "show", ids[0], "--raw", "--dir", maildir)
    assert code == 0 and out.encode().endswith(SPAM[0])
    Quarantine(maildir).delete(ids[0])
    with sink() as (next_hop, port):
        code, _, err = run(
            capsys,
            "quarantine",
            "release",
            ids[0],
            ids[1],
            "--dir",
            maildir,
            "--relay",
            f"{LOCALHOST}:{port}",
        )
    assert code == 2 and f"{ids[0]}: not released: {ids[0]}: not in the quarantine" in err
    assert len(next_hop.deliveries) == 1  # the other one still went


def test_without_a_quarantine_the_commands_say_what_to_give(capsys, tmp_path):
    code, _, err = run(capsys, "quarantine", "list")
    assert code == 2 and "give --dir MAILDIR, or --config with a quarantine_dir" in err
    code, _, err = run(capsys, "quarantine", "list", "--dir", tmp_path / "nowhere")
    assert code == 2 and "not a Maildir" in err
    with pytest.raises(SystemExit):
        run(capsys, "quarantine", "expire", "--older-than", "a month", "--dir", tmp_path)
    assert "expected a number and s, m, h, d or w, not 'a month'" in capsys.readouterr().err


def test_envelope_recipients_with_quoted_commas_stay_whole():
    stored = (
        b'X-Spam-Envelope-From: <>\r\nX-Spam-Envelope-To: "a, b"@example.net, c@example.net\r\n'
        b"Subject: x\r\n\r\nbody\r\n"
    )
    envelope = envelope_of(stored)
    assert envelope.sender == "<>"
    assert envelope.recipients == ('"a, b"@example.net', "c@example.net")
    with pytest.raises(ValueError, match="not stored by the filter"):
        envelope_of(b"Subject: x\r\n\r\nbody\r\n")


def test_a_maildir_path_is_never_left(tmp_path):
    (tmp_path / "q" / "new").mkdir(parents=True)
    (tmp_path / "q" / "cur").mkdir()
    (tmp_path / "secret").write_text("x")
    with pytest.raises(LookupError):
        Quarantine(tmp_path / "q").raw("../../secret")
    assert Path(tmp_path / "secret").exists()


def test_a_message_without_our_envelope_is_listed_but_not_released(capsys, tmp_path):
    key = mailbox.Maildir(tmp_path / "q", factory=None).add(b"Subject: dropped in\r\n\r\nx\r\n")
    code, out, _ = run(capsys, "quarantine", "list", "--dir", tmp_path / "q")
    row = out.splitlines()[1].split()  # id, date, time, score, from, to, subject
    assert code == 0 and row[0] == key and row[3:] == ["-", "-", "-", "dropped", "in"]
    with sink() as (next_hop, port):
        code, _, err = run(
            capsys, "quarantine", "release", key, "--dir", tmp_path / "q",
            "--relay", f"{LOCALHOST}:{port}",
        )  # fmt: skip
    assert code == 2 and "no X-Spam-Envelope-From/X-Spam-Envelope-To headers" in err
    assert next_hop.deliveries == [] and Quarantine(tmp_path / "q").raw(key)
