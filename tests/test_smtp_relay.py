"""The next-hop client's pieces alone (``smtp.relay``)."""

from __future__ import annotations

from spamfilter.smtp.relay import Reply


def test_multi_line_replies_are_formatted_for_aiosmtpd():
    assert str(Reply(250, ("first", "last"))) == "250-first\r\n250 last"
