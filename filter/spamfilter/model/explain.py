"""Why a message scored as it did: the phrases of its model text that read most as spam
(or ham).

The words the model read (the window of ``email_to_text``'s output that
``classifier.encode`` keeps) are cut into ``phrases`` runs of consecutive words with
about equal token counts, and each phrase is scored on its own by the classifier that
scored the message, all in one batch. A phrase's weight is its log-odds of spam,
log(p / (1 - p)), minus that of an empty text: positive reads as spam, negative as ham.
It is a measured output of the real model, not an estimate: occlusion of everything but
the phrase (the "sufficiency" of ERASER, DeYoung et al. 2020). Together the phrases
hold a window's worth of tokens, so an explanation costs about 1.35 scorings of the
message (66 vs 49 ms on 2 AVX2 cores), as long as the classifier does not pad short
phrases to a long one (``PAD_TOKENS_PER_RUN``).

A model directory with site words (``sitewords``; what ``spamfilter learn`` adds) reads
the whole text, not just the window: its phrases' scores include the words' evidence,
and the explanation also names the words that moved the message's score most
(``SiteWords.telling``), each with its share of the served log-odds.

Measured on the default model (``benchmarks/explain_methods.py``, docs/benchmarks.md):
removing the phrase ranked first moves the score against the verdict more than removing
the one ranked last in 83-92 % of messages; ranking by what removing each phrase does
(one scoring per phrase) gets 96-100 %, and gradient × input on the word embeddings (a
forward and a backward pass in PyTorch) 46-54 %, no better than chance.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from spamfilter.model.classifier import Classifier
from spamfilter.model.encode import head_and_tail, special_affixes
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.odds import log_odds

_WORD = re.compile(r"\S+")
Spans = list[list[tuple[int, int]]]  # per phrase, the (start, end) of each of its words
SITE_WORDS = 5  # the site's words named per explanation, when the model has them


@dataclass(frozen=True)
class Phrase:
    text: str  # its words, single-spaced, as the model text has them
    weight: float  # its log-odds of spam on its own, minus an empty text's; > 0: spam


@dataclass(frozen=True)
class Explanation:
    phrases: tuple[Phrase, ...]  # largest |weight| first
    # the site's words that moved the score most (their share of its log-odds), largest
    # first; none without site words
    words: tuple[Phrase, ...] = ()

    def top(self, count: int) -> tuple[Phrase, ...]:
        return self.phrases[:count]


class Explainer:
    """Explains messages with ``classifier``, cutting each into ``phrases`` phrases.

    ``batch_size``: messages whose phrases share one model run (a run then holds about as
    many tokens as a scoring batch of that size; the filter's scoring of other mail
    takes turns with it between runs).
    """

    def __init__(self, classifier: Classifier, phrases: int, batch_size: int) -> None:
        if phrases < 1:
            raise ValueError(f"phrases must be at least 1, not {phrases}")
        self.classifier = classifier
        self.phrases = phrases
        self.texts_per_run = batch_size * phrases
        self.tokens_per_run = batch_size * classifier.card.max_length
        prefix, suffix = special_affixes(classifier.tokenize)
        self._room = classifier.card.max_length - len(prefix) - len(suffix)
        self.empty_log_odds = float(log_odds(classifier.score_texts([""])[0]))  # weights' zero

    def explain_raw(self, messages: Sequence[bytes]) -> list[Explanation]:
        return self.explain_texts([email_to_text(raw) for raw in messages])

    def explain_texts(self, texts: Sequence[str]) -> list[Explanation]:
        """One explanation per text, in input order."""
        return [
            Explanation(
                tuple(sorted((phrase for _, phrase in row), key=_strength)),
                self.site_words(text),
            )
            for text, row in zip(texts, self.weigh(texts), strict=True)
        ]

    def site_words(self, text: str) -> tuple[Phrase, ...]:
        site_words = self.classifier.site_words
        if site_words is None:
            return ()
        return tuple(Phrase(word, moved) for word, moved in site_words.telling(text, SITE_WORDS))

    def weigh(self, texts: Sequence[str]) -> list[list[tuple[Spans, Phrase]]]:
        """Each text's phrases in text order, with their words' spans; one batch for all."""
        spans = [self.phrase_spans(text) for text in texts]
        phrases = [
            [" ".join(text[start:end] for start, end in words) for words in text_spans]
            for text, text_spans in zip(texts, spans, strict=True)
        ]
        flat = [phrase for text_phrases in phrases for phrase in text_phrases]
        scores = self.classifier.score_texts(flat, self.texts_per_run, self.tokens_per_run)
        weights = iter((log_odds(scores) - self.empty_log_odds).tolist())
        return [
            [
                (words, Phrase(phrase, next(weights)))
                for words, phrase in zip(text_spans, text_phrases, strict=True)
            ]
            for text_spans, text_phrases in zip(spans, phrases, strict=True)
        ]

    def phrase_spans(self, text: str) -> Spans:
        """The character spans of the words of each phrase of the window of ``text``."""
        card = self.classifier.card
        encoded = self.classifier.tokenize(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        offsets = head_and_tail(encoded["offset_mapping"], self._room, card.tail_tokens)
        words = [(match.start(), match.end()) for match in _WORD.finditer(text)]
        starts = [start for start, _ in words]
        seen: dict[int, int] = {}  # the window's words, in order: their token counts
        for start, end in offsets:
            index = bisect.bisect_right(starts, start) - 1
            if end > start and index >= 0 and words[index][1] > start:
                seen[index] = seen.get(index, 0) + 1
        window = [words[index] for index in seen]
        return _balanced(window, list(seen.values()), self.phrases)


def _strength(phrase: Phrase) -> float:
    return -abs(phrase.weight)


def _balanced(words: list[tuple[int, int]], tokens: list[int], count: int) -> Spans:
    """``words`` cut into at most ``count`` runs of about equal token counts (``tokens``
    per word), so that scoring them together pads little."""
    total = sum(tokens)
    phrases: Spans = []
    done = 0
    for word, size in zip(words, tokens, strict=True):
        if not phrases or done >= total * len(phrases) / count:
            phrases.append([])
        phrases[-1].append(word)
        done += size
    return phrases
