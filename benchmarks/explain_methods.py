"""Which attribution method the filter's explanations use: cost against faithfulness.

    python benchmarks/explain_methods.py --model runs/default --messages 30 \
        --out docs/bench/explain_methods.json

Messages: a seeded sample of the built-in corpus's test split, split into those the
model tags and the rest. Each message's window (the words the model reads) is cut into
the same phrases, and each method ranks them:
- ``alone``: each phrase scored on its own (``spamfilter.explain``, what the filter
  runs), at 6, 12 and 20 phrases per message;
- ``removal``: the log-odds the message loses when the phrase is removed (occlusion;
  one scoring per phrase, so this is also the best any ranking can do on the measure);
- ``gradient``: gradient × (input - [MASK]) on the word embeddings, summed per phrase
  (one forward and one backward pass in PyTorch fp32).
Faithfulness: remove the phrase a method ranks most verdict-ward (towards spam for a
message scored spam) and the one it ranks least important (smallest |weight|), score the
text again, and report how far the log-odds moved against the verdict; and how often the
first moves it more than the second. Cost: seconds per message, against scoring it
(batches of 8, with ``--precision``; onnx-fp32 as the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from spamfilter.model.classifier import Classifier
from spamfilter.model.explain import Explainer, Spans
from spamfilter.model.mailtext import email_to_text
from spamfilter.model.modeldir import SPAM_LABEL, load_model
from spamfilter.model.odds import log_odds
from spamfilter.model.precision import BACKENDS
from spamtrain.data import load_splits

BATCH = 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--data", default="spamassassin", help="labelled source (test split)")
    parser.add_argument("--messages", type=int, default=30, help="messages per group")
    parser.add_argument("--sample", type=int, default=400, help="test messages to draw from")
    parser.add_argument(
        "--precision", choices=BACKENDS, default="onnx-fp32", help="scoring backend"
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    return parser.parse_args()


def without(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with the characters of ``spans`` (in order, not overlapping) cut out."""
    pieces, position = [], 0
    for start, end in spans:
        pieces.append(text[position:start])
        position = end
    return "".join([*pieces, text[position:]])


class Gradient:
    """gradient × (input - [MASK]) of the spam log-odds, summed over each phrase's tokens."""

    def __init__(self, model_dir: str, classifier: Classifier) -> None:
        self.model = load_model(model_dir).eval().requires_grad_(False)
        self.tokenizer = classifier.tokenizer
        self.card = classifier.card

    def weights(self, text: str, phrases: Spans) -> list[float]:
        encoded = self.tokenizer(
            text, truncation=True, max_length=self.card.max_length, return_offsets_mapping=True
        )
        ids = torch.tensor([encoded["input_ids"]])
        embed = self.model.get_input_embeddings()
        inputs = embed(ids).detach()
        difference = inputs - embed(torch.tensor(self.tokenizer.mask_token_id)).detach()
        with torch.enable_grad():
            point = inputs.clone().requires_grad_(True)
            logits = self.model(inputs_embeds=point).logits
            (gradient,) = torch.autograd.grad(
                (logits[:, SPAM_LABEL] - logits[:, 1 - SPAM_LABEL]).sum(), point
            )
        token_weights = (gradient * difference).sum(-1)[0].tolist()
        weights = []
        for spans in phrases:
            weights.append(
                sum(
                    weight
                    for (start, end), weight in zip(
                        encoded["offset_mapping"], token_weights, strict=True
                    )
                    if end > start and any(a <= start < b for a, b in spans)
                )
            )
        return weights


def timed(function: Callable[..., list], *args) -> tuple[list, float]:
    """``function(*args)`` and the seconds it took."""
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def evaluate(
    classifier: Classifier, texts: Sequence[str], explainers: dict[int, Explainer], gradient
) -> dict[str, dict[str, float]]:
    """Per method: mean log-odds moved against the verdict by removing its top and its
    least important phrase, how often top beats least, and seconds per message."""
    _, scoring = timed(classifier.score_texts, list(texts), BATCH)
    figures: dict[str, dict[str, list[float]]] = {}
    for text in texts:
        full = float(log_odds(classifier.score_texts([text])[0]))
        sign = 1.0 if full > 0 else -1.0
        for count, explainer in explainers.items():
            (weighed,), seconds = timed(explainer.weigh, [text])
            phrases = [words for words, _ in weighed]
            ranked = {f"alone, {count} phrases": ([p.weight for _, p in weighed], seconds)}
            if count == 12:
                variants = [without(text, spans) for spans in phrases]
                scores, seconds = timed(classifier.score_texts, variants, BATCH)
                ranked["removal, 12 phrases"] = ((full - log_odds(scores)).tolist(), seconds)
                ranked["gradient, 12 phrases"] = timed(gradient.weights, text, phrases)
            for name, (weights, seconds) in ranked.items():
                top = max(range(len(weights)), key=lambda i: sign * weights[i])
                least = min(range(len(weights)), key=lambda i: abs(weights[i]))
                moved = classifier.score_texts(
                    [without(text, phrases[top]), without(text, phrases[least])], BATCH
                )
                row = figures.setdefault(name, {"top": [], "least": [], "seconds": []})
                top_moved, least_moved = (sign * (full - log_odds(moved))).tolist()
                row["top"].append(top_moved)
                row["least"].append(least_moved)
                row["seconds"].append(seconds)
    result = {}
    for name, row in figures.items():
        seconds = statistics.mean(row["seconds"])
        result[name] = {
            "moved_by_top": statistics.mean(row["top"]),
            "moved_by_least": statistics.mean(row["least"]),
            "top_beats_least": statistics.mean(
                t > s for t, s in zip(row["top"], row["least"], strict=True)
            ),
            "seconds_per_message": seconds,
            "cost_in_scorings": seconds / (scoring / len(texts)),
        }
    return result


def main() -> None:
    args = parse_args()
    classifier = Classifier(args.model, precision=args.precision)
    tag = classifier.thresholds.tag
    test = load_splits(args.data, ("test",))["test"]
    dataset = test.shuffle(seed=0).select(range(args.sample))
    texts = [email_to_text(raw) for raw in dataset["raw"]]
    scores = classifier.score_texts(texts, BATCH)
    groups = {
        "tagged": [t for t, s in zip(texts, scores, strict=True) if s >= tag][: args.messages],
        "all": texts[: args.messages],
    }
    explainers = {count: Explainer(classifier, count, BATCH) for count in (6, 12, 20)}
    gradient = Gradient(args.model, classifier)
    result = {
        "model": str(args.model),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "groups": {},
    }
    for group, members in groups.items():
        figures = evaluate(classifier, members, explainers, gradient)
        result["groups"][group] = {"messages": len(members), "methods": figures}
        print(f"{group} ({len(members)} messages): log-odds moved by removing the phrase ranked")
        for name, row in figures.items():
            print(
                f"  {name:>22}: first {row['moved_by_top']:6.2f}, least "
                f"{row['moved_by_least']:6.2f} (first more in {100 * row['top_beats_least']:3.0f}%)"
                f"  {1000 * row['seconds_per_message']:6.0f} ms/msg = "
                f"{row['cost_in_scorings']:4.1f} scorings"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
