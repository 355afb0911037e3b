"""Raw header editing (``smtp.headers``) and the stripping of incoming X-Spam-* headers."""

from __future__ import annotations

import pytest

from spamfilter.smtp.headers import prefix_subject, remove_fields, split_fields
from spamfilter.smtp.policy import strip_spam_headers

MESSAGE = (
    b"X-Spam-Flag: NO\r\n"
    b"Subject: hello\r\n"
    b"X-SPAM-Status: No,\r\n\tscore=0.0\r\n"
    b"From: a@b\r\n"
    b"X-Spammy: kept (not X-Spam-)\r\n"
    b"\r\n"
    b"X-Spam-Flag: in the body stays\r\n"
)


def test_split_fields_joins_back_to_the_original():
    fields, rest = split_fields(MESSAGE)
    assert b"".join(fields) + rest == MESSAGE
    assert fields[2] == b"X-SPAM-Status: No,\r\n\tscore=0.0\r\n"
    assert rest.startswith(b"\r\n")


def test_spam_headers_are_removed_with_their_continuations_and_nothing_else():
    assert strip_spam_headers(MESSAGE) == (
        b"Subject: hello\r\nFrom: a@b\r\nX-Spammy: kept (not X-Spam-)\r\n\r\n"
        b"X-Spam-Flag: in the body stays\r\n"
    )


@pytest.mark.parametrize(
    "raw",
    [b"", b"\r\n\r\nbody", b"no header at all", b"From x Mon\nA: b\n\nbody\n", b"A: b"],
)
def test_messages_without_spam_headers_are_returned_unchanged(raw):
    assert remove_fields(raw, b"x-spam-") is raw


def test_lf_only_messages_are_handled_too():
    assert strip_spam_headers(b"X-Spam-Flag: NO\nA: b\n\nX-Spam-Flag: x\n") == (
        b"A: b\n\nX-Spam-Flag: x\n"
    )


def test_subject_tag_is_added_once():
    tagged = prefix_subject(MESSAGE, b"[SPAM] ")
    assert b"Subject: [SPAM] hello\r\n" in tagged
    assert prefix_subject(tagged, b"[SPAM] ") == tagged
    assert prefix_subject(b"A: b\r\n\r\n", b"[SPAM] ") == b"A: b\r\n\r\n"
