from spamfilter.classifier import Classifier
from support import make_message


def test_tiny_model_separates_spam_from_ham(tiny_model_dir):
    classifier = Classifier(tiny_model_dir)
    spam = [make_message(1, 1000 + i) for i in range(5)]
    ham = [make_message(0, 1000 + i) for i in range(5)]
    scores = classifier.score_raw(spam + ham)
    assert min(scores[:5]) > 0.5 > max(scores[5:])


def test_scores_keep_input_order_whatever_the_length(tiny_model_dir):
    classifier = Classifier(tiny_model_dir)
    texts = ["viagra " * n for n in (30, 1, 10)] + ["meeting agenda"]
    together = classifier.score_texts(texts, batch_size=2)
    alone = [classifier.score_texts([text])[0] for text in texts]
    assert together == __import__("pytest").approx(alone, abs=1e-5)


def test_pipeline_loads_the_model_directory(tiny_model_dir):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(tiny_model_dir))
    assert classify("viagra cheap pills winner lottery")[0]["label"] in ("spam", "ham")
