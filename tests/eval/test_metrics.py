import numpy as np
import pytest
import torch

from geofm.eval.metrics import (confusion_matrix, mcnemar_exact_p, paired_top1, per_class_accuracy, summarize,
                                topk_accuracy)


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


def _exact_mcnemar(b, c):
    """The definition in exact rationals: 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    from fractions import Fraction
    from math import comb

    n = b + c
    return min(Fraction(1), 2 * Fraction(sum(comb(n, i) for i in range(min(b, c) + 1)), 2 ** n)) if n else Fraction(1)


def test_mcnemar_exact_p_hand_computed_and_against_the_definition():
    # 0 against 6 discordant images: 2 / 2**6; 3 against 10: 2 (1 + 13 + 78 + 286) / 2**13
    assert mcnemar_exact_p(0, 6) == pytest.approx(1 / 32, rel=1e-12)
    assert mcnemar_exact_p(3, 10) == pytest.approx(378 / 4096, rel=1e-12) == mcnemar_exact_p(10, 3)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(1, 1) == 1.0 and mcnemar_exact_p(7, 7) == 1.0
    for b, c in [(0, 1), (1, 4), (2, 9), (13, 40), (77, 76), (3, 137), (120, 180)]:
        assert mcnemar_exact_p(b, c) == pytest.approx(float(_exact_mcnemar(b, c)), rel=1e-9), (b, c)
    # a test set of ImageNet's size: log space keeps it finite and right
    assert mcnemar_exact_p(4000, 4300) == pytest.approx(float(_exact_mcnemar(4000, 4300)), rel=1e-7)
    assert mcnemar_exact_p(0, 1000) == pytest.approx(2.0 ** -999, rel=1e-9)  # near the smallest normal double
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact_p(-1, 3)


def test_paired_top1_counts_each_image_once_by_its_top1():
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    right = np.eye(3)[labels]            # every image right
    wrong = np.eye(3)[(labels + 1) % 3]  # every image wrong
    a = np.where(np.array([1, 1, 1, 1, 0, 0, 0])[:, None] == 1, right, wrong)
    b = np.where(np.array([1, 0, 0, 0, 1, 0, 0])[:, None] == 1, right, wrong)
    r = paired_top1(a, b, labels)
    assert (r["both_right"], r["a_only"], r["b_only"], r["both_wrong"]) == (1, 3, 1, 2)
    assert r["gain"] == pytest.approx(topk_accuracy(a, labels, (1,))[1] - topk_accuracy(b, labels, (1,))[1])
    assert r["mcnemar_p"] == mcnemar_exact_p(3, 1)
    # a tie in the scores goes to the lower class index, as in topk_accuracy: image 0 (label 0) is right
    tie = np.array([[0.5, 0.5, 0.0]])
    assert paired_top1(tie, np.array([[0.0, 1.0, 0.0]]), np.array([0]))["a_only"] == 1
    assert topk_accuracy(tie, np.array([0]), (1,))[1] == 1.0
    same = paired_top1(torch.as_tensor(a), a, labels)
    assert (same["a_only"], same["b_only"], same["mcnemar_p"], same["gain"]) == (0, 0, 1.0, 0.0)
