"""STARTTLS, SMTP AUTH and the allowed networks: the filter is not an open relay.

A self-signed certificate is made with the openssl command line in a temporary directory.
"""

from __future__ import annotations

import base64
import logging
import smtplib
import ssl
import subprocess
import sys

import pytest

from spamfilter.smtp import access
from spamfilter.smtp.server import FilterDaemon
from spamrig import LOCALHOST
from spamrig.clients import RawSession, client, connect, data_block, numbered_message
from spamrig.daemon import ConstantScorer, filter_config, running_filter
from spamrig.sink import sink

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "postfix", "correct horse battery staple"
MESSAGE = numbered_message(1)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=filter.test"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:filter.test"),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture(scope="module")
def auth_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("auth") / "users"
    path.write_text(f"# filter users\n{USER}:{access.hash_password(PASSWORD)}\n")
    return str(path)


@pytest.fixture
def tls_rig(tiny_model_dir, certificate, auth_file, request):
    """A sink and a filter with STARTTLS, and the settings the test passes as its param."""
    cert, key = certificate
    changes = {"tls_cert": cert, "tls_key": key, **getattr(request, "param", {})}
    if changes.get("auth_required"):
        changes["auth_file"] = auth_file
    with sink() as (captured, sink_port):
        config = filter_config(tiny_model_dir, sink_port, **changes)
        with running_filter(config, ConstantScorer()) as daemon:
            yield captured, daemon.smtp_address[1]


def trusting(cert: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert)


def test_starttls_is_offered_and_mail_flows_over_it(tls_rig, certificate):
    captured, port = tls_rig
    with client(port) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert smtp.starttls(context=trusting(certificate[0]))[0] == 220
        assert smtp.sendmail("s@example.org", ["u@example.net"], MESSAGE) == {}
    assert len(captured.deliveries) == 1


@pytest.mark.parametrize("tls_rig", [{"require_starttls": True}], indirect=True)
def test_a_downgraded_client_gets_530_and_nothing_reaches_the_next_hop(tls_rig):
    """A man in the middle strips STARTTLS from the EHLO reply: the client goes on in clear."""
    captured, port = tls_rig
    with connect(port) as session:
        assert session.command(b"EHLO client.test")[0] == 250
        pipelined = b"MAIL FROM:<s@x.org>\r\nRCPT TO:<u@y.net>\r\nDATA\r\n"
        lines = pipelined + data_block(MESSAGE)
        session.send(lines)
        replies = [session.reply()[0] for _ in range(lines.count(b"\r\n"))]
        assert replies[:3] == [530, 530, 530]
        assert set(replies[3:]) <= {530, 500}  # each message line: a refused "command"
        assert session.command(b"NOOP")[0] == 250
    assert captured.commands == [] and captured.deliveries == []


@pytest.mark.parametrize("tls_rig", [{"require_starttls": True}], indirect=True)
def test_commands_injected_after_starttls_in_clear_are_never_run(tls_rig, certificate):
    """CVE-2011-0411's pattern: plaintext pipelined behind STARTTLS must not survive it."""
    captured, port = tls_rig
    with connect(port) as session:
        session.command(b"EHLO client.test")
        session.send(b"STARTTLS\r\nMAIL FROM:<injected@x.org>\r\nRCPT TO:<u@y.net>\r\n")
        assert session.reply()[0] == 220
        try:
            wrapped = trusting(certificate[0]).wrap_socket(session.sock, server_hostname=LOCALHOST)
            wrapped.sendall(b"NOOP\r\n")
            wrapped.recv(1024)
        except (ssl.SSLError, OSError):
            pass  # the injected bytes broke the handshake: fine, nothing ran
    assert "MAIL" not in captured.commands


@pytest.mark.parametrize("tls_rig", [{"auth_required": True}], indirect=True)
def test_auth_is_required_and_only_over_tls(tls_rig, certificate, caplog):
    captured, port = tls_rig
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    with caplog.at_level(logging.DEBUG), connect(port) as session:
        session.command(b"EHLO client.test")
        assert session.command(b"MAIL FROM:<s@x.org>")[0] == 530
        assert session.command(b"AUTH PLAIN " + plain)[0] == 538  # never in clear
    with caplog.at_level(logging.DEBUG), client(port) as smtp:
        smtp.starttls(context=trusting(certificate[0]))
        smtp.ehlo()
        assert smtp.mail("s@example.org")[0] == 530
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login(USER, "wrong")
        assert refused.value.smtp_code == 535
        smtp.login(USER, PASSWORD)
        assert smtp.sendmail("s@example.org", ["u@example.net"], MESSAGE) == {}
    assert len(captured.deliveries) == 1
    assert PASSWORD not in caplog.text and plain.decode() not in caplog.text
    assert "AUTH LOGIN failed for a client at" in caplog.text or "AUTH PLAIN failed" in caplog.text


@pytest.mark.parametrize("tls_rig", [{"allowed_networks": ["127.0.0.1/32"]}], indirect=True)
def test_not_an_open_relay_a_client_outside_the_networks_gets_554_before_any_command(tls_rig):
    """From 127.0.0.2: 554 at once; commands sent before it, even AUTH, are never run."""
    captured, port = tls_rig
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    with RawSession(port, source="127.0.0.2") as outsider:
        assert outsider.reply()[0] == 554
        with pytest.raises(OSError):  # disconnected (reset, since the client's data is unread)
            for _ in range(50):
                outsider.send(b"EHLO x\r\nAUTH PLAIN " + plain + b"\r\n")
                assert outsider.reply() == (0, b"")
    with RawSession(port, source="127.0.0.2") as hasty:  # all at once, before the greeting
        hasty.send(
            b"EHLO x\r\nAUTH PLAIN " + plain + b"\r\nMAIL FROM:<s@x.org>\r\n"
            b"RCPT TO:<victim@y.net>\r\nDATA\r\n" + data_block(MESSAGE)
        )
        assert hasty.reply()[0] in (554, 0)  # the 554 may be lost to the reset
    with connect(port) as insider:  # 127.0.0.1 is still served
        assert insider.command(b"EHLO client.test")[0] == 250
    assert captured.commands == []


def test_access_settings_that_need_each_other(tiny_model_dir):
    config = filter_config(
        tiny_model_dir, 9, require_starttls=True, auth_file="users", auth_required=True
    )
    assert {p for p in config.validate() if "needs" in p} == {
        "'require_starttls' needs tls_cert",
        "'auth_file' needs tls_cert (no AUTH in clear)",
    }
    assert filter_config(tiny_model_dir, 9, tls_cert="c").validate() == [
        "'tls_key' needs tls_cert and tls_key"
    ]


@pytest.mark.parametrize("broken", ["certificate", "auth_file"])
def test_unusable_tls_or_auth_files_stop_start_up(tiny_model_dir, certificate, tmp_path, broken):
    cert, key = certificate
    bad = tmp_path / "bad"
    bad.write_text("garbage\n")
    changes = {"tls_cert": str(bad) if broken == "certificate" else cert, "tls_key": key}
    if broken == "auth_file":
        changes["auth_file"] = str(bad)
    daemon = FilterDaemon(filter_config(tiny_model_dir, 9, **changes), lambda: None)
    with pytest.raises((OSError, ValueError)):  # what ``spamfilter serve`` reports, exit 2
        daemon.setup(ConstantScorer())


def test_the_password_tool_writes_a_line_the_filter_accepts(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "spamfilter.smtp.access", USER],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / "users").write_text(done.stdout)
    users = access.PasswordFile(str(tmp_path / "users"))
    assert PASSWORD not in done.stdout
    assert users.check(USER.encode(), PASSWORD.encode())
    assert users.check(USER.encode(), PASSWORD.encode())  # remembered: no second scrypt
    assert not users.check(USER.encode(), b"wrong") and not users.check(b"nobody", b"x")
