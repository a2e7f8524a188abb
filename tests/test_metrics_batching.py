import random

import pytest

from metabert.data import metrics as metrics
from metabert.data.batching import Encoded, collate, eval_batches, train_batches


def test_metrics_match_hand_computation():
    labels = [1, 1, 0, 0, 1]
    preds = [1, 0, 0, 1, 1]
    assert metrics.compute("accuracy", preds, labels)["score"] == pytest.approx(60.0)
    both = metrics.compute("acc_and_f1", preds, labels)
    assert both["f1"] == pytest.approx(100 * 2 / 3)  # precision 2/3, recall 2/3
    assert both["score"] == pytest.approx((60.0 + 100 * 2 / 3) / 2)
    # MCC = (tp*tn - fp*fn) / sqrt(...) with tp=2, tn=1, fp=1, fn=1
    assert metrics.compute("mcc", preds, labels)["score"] == pytest.approx(100 * (2 - 1) / (3 * 2 * 3 * 2) ** 0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compute("bleu", preds, labels)


def encoded(lengths):
    return Encoded([[1] * n for n in lengths], None, [0] * len(lengths))


def test_train_batches_cover_each_example_once_and_bucket_by_length():
    lengths = [random.Random(i).randint(3, 60) for i in range(1000)]
    data = encoded(lengths)
    batches = train_batches(data, 32, random.Random(0), pool=10)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded < 1.2 * sum(lengths)  # bucketing keeps padding small
    assert batches != train_batches(data, 32, random.Random(1), pool=10)


def test_eval_batches_and_collate_pad_to_batch_max():
    data = Encoded([[5, 6, 7], [8], [9, 10]], [[0, 0, 0], [0], [0, 1]], [1, 0, 1])
    batches = eval_batches(data, 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2]
    batch = collate(data, [0, 1], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert collate(data, [2], pad_id=0)["token_type_ids"].tolist() == [[0, 1]]
