"""Model text -> token ids: the one tokenization both training and serving use.

Truncation (the head of the text, optionally plus its tail) is therefore the same on both
sides; ``max_length`` and ``tail_tokens`` come from the model directory's card.
"""

from __future__ import annotations

from collections.abc import Sequence


def encode(
    tokenizer, texts: Sequence[str], max_length: int, tail_tokens: int = 0
) -> dict[str, list[list[int]]]:
    """Token ids for ``texts``, unpadded, at most ``max_length`` each.

    With ``tail_tokens`` > 0 a long text keeps the head of its tokens and its last
    ``tail_tokens`` (spam often hides its pitch below a decoy head), between the special
    tokens the tokenizer puts around every text.
    """
    if tail_tokens <= 0:
        return tokenizer(list(texts), truncation=True, max_length=max_length)
    prefix, suffix = special_affixes(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    if tail_tokens >= room:
        raise ValueError(f"tail_tokens ({tail_tokens}) must be below {room} for this tokenizer")
    # untruncated on purpose (the tail is wanted): no warning about the model's length
    body = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    ids = [[*prefix, *head_and_tail(tokens, room, tail_tokens), *suffix] for tokens in body]
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


def head_and_tail(tokens: list, room: int, tail_tokens: int) -> list:
    """The items of ``tokens`` a text keeps in ``room`` places: the head, plus its last
    ``tail_tokens`` when it is too long (what ``encode`` does to the token ids)."""
    if len(tokens) <= room:
        return tokens
    if tail_tokens <= 0:
        return tokens[:room]
    return tokens[: room - tail_tokens] + tokens[-tail_tokens:]


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text: ([CLS], [SEP]) for BERT.

    Read from the tokenizer's own output, since not every tokenizer class has
    ``build_inputs_with_special_tokens`` (transformers 5's tokenizers-backed ones do not).
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError(f"{type(tokenizer).__name__}: cannot find the text among its special tokens")
