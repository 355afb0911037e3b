"""Serve a model directory and show its verdict on a spam and a ham, through real SMTP.

    python scripts/demo.py --model runs/default

Starts ``spamfilter serve`` on loopback in front of a small capturing SMTP server (the
"next hop"), sends two messages written for the demo (not from any training corpus)
with smtplib, and prints the X-Spam-* headers each one arrived with.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

from aiosmtpd.controller import Controller

SPAM = (
    "Congratulations, you have been selected!",
    "Rewards Center <claims@prize-center-online.biz>",
    "Dear winner,\n\nYour email address was chosen in our annual draw. You have won a "
    "$1,000,000 cash prize and a brand new car. To claim your reward, reply with your full "
    "name, bank account number and a processing fee of $99 within 24 hours, or visit our "
    "secure claims page. This offer expires today! Act now, limited time only.\n",
)
HAM = (
    "Notes from Tuesday's design review",
    "Maria Jensen <maria.jensen@example.org>",
    "Hi all,\n\nThanks for joining the review. We agreed to move the parser changes into "
    "the next release and to keep the old configuration format for one more version. "
    "Tom will update the migration guide, and I will send the revised schedule by "
    "Friday. Let me know if I missed anything.\n\nBest,\nMaria\n",
)


class Capture:
    """The next hop: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope.original_content or envelope.content)
        return "250 2.0.0 Delivered"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def message(subject: str, sender: str, body: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, "you@example.net", subject
    mail.set_content(body)
    return mail


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"spamfilter serve exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("spamfilter serve did not start listening in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/default"))
    args = parser.parse_args()
    capture = Capture()
    sink = Controller(capture, hostname="127.0.0.1", port=free_port())
    sink.start()
    listen = free_port()
    serve = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("spamfilter")), "serve",
            "--model", str(args.model),
            "--listen", f"127.0.0.1:{listen}", "--relay", f"127.0.0.1:{sink.port}",
            "--metrics-listen", "",
        ]
    )  # fmt: skip
    try:
        wait_for_port(listen, serve)
        import smtplib

        with smtplib.SMTP("127.0.0.1", listen, timeout=60) as client:
            for subject, sender, body in (SPAM, HAM):
                client.send_message(message(subject, sender, body))
        print()
        for raw in capture.messages:
            headers = BytesHeaderParser().parsebytes(raw)
            print(f"Subject: {headers['Subject']}")
            for name in ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status"):
                print(f"  {name}: {headers[name]}")
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        sink.stop()
    return 0 if len(capture.messages) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
