import numpy as np
import pytest
import torch

from geofm.eval.metrics import confusion_matrix, per_class_accuracy, summarize, topk_accuracy


def test_topk_hand_computed():
    # 4 samples, 6 classes. Rankings (best first):
    # s0: 2,0,...   label 2 -> top1 hit
    # s1: 1,3,5,0,4,2 label 2 -> rank 6: miss top1, miss top5
    # s2: 0,4,3,... label 4 -> rank 2: miss top1, hit top5
    # s3: 5,4,3,2,1,0 label 0 -> rank 6: miss both
    scores = np.array([
        [0.5, 0.1, 0.9, 0.0, 0.0, 0.0],
        [0.3, 0.9, 0.0, 0.8, 0.2, 0.7],
        [0.9, 0.0, 0.5, 0.6, 0.8, 0.1],
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    ])
    labels = np.array([2, 2, 4, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert acc[1] == pytest.approx(1 / 4)
    assert acc[2] == pytest.approx(2 / 4)
    assert acc[5] == pytest.approx(2 / 4)
    # torch input is accepted
    assert topk_accuracy(torch.tensor(scores), torch.tensor(labels), ks=(1,))[1] == pytest.approx(0.25)


def test_topk_k_larger_than_classes():
    scores = np.array([[0.1, 0.9, 0.0], [0.2, 0.3, 0.5]])
    labels = np.array([0, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    assert acc[1] == 0.0
    assert acc[5] == 1.0  # clipped to 3 classes: every label is in the top 3


def test_topk_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        topk_accuracy(np.zeros((2, 3)), np.array([0, 3]))


def test_confusion_and_per_class():
    preds = np.array([0, 1, 1, 2, 2, 2])
    labels = np.array([0, 1, 2, 2, 2, 0])
    cm = confusion_matrix(preds, labels, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(labels, preds):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    pc = per_class_accuracy(preds, labels, 4)
    np.testing.assert_allclose(pc[:3], [0.5, 1.0, 2 / 3])
    assert np.isnan(pc[3])  # class 3 never occurs


def test_summarize_record():
    scores = np.eye(3)[[0, 1, 1]]
    rec = summarize(scores, np.array([0, 1, 2]), ["a", "b", "c"])
    assert rec["top1"] == pytest.approx(2 / 3)
    assert rec["top5"] == 1.0
    assert rec["per_class"] == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert rec["confusion"][2] == [0, 1, 0]
