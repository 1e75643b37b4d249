import numpy as np
import pytest
import torch

from geofm.eval.knn import knn_scores
from geofm.eval.linprobe import fit_logreg, predict_scores, train_linear_probe
from geofm.eval.metrics import topk_accuracy


def clusters(n_per=30, n_classes=4, dim=16, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g) * 3
    y = torch.arange(n_classes).repeat_interleave(n_per)
    x = centers[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def test_knn_separable_clusters():
    xtr, ytr = clusters(seed=0)
    xte, yte = clusters(n_per=10, seed=0)  # same centers, fresh noise would need another generator
    xte = xte + 0.05 * torch.randn_like(xte)
    scores = knn_scores(xtr, ytr, xte, 4, k=5, temperature=0.1)
    assert scores.shape == (40, 4)
    assert topk_accuracy(scores, yte, (1,))[1] == 1.0


def test_knn_votes_are_temperature_weighted():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    s = knn_scores(train, labels, torch.tensor([[1.0, 0.0]]), 2, k=3, temperature=0.5)
    # sims: 1, 0, 0 -> weights e^2, 1, 1
    torch.testing.assert_close(s, torch.tensor([[np.exp(2.0), 2.0]], dtype=torch.float32))
    # k larger than the training set is clipped
    assert knn_scores(train, labels, train, 2, k=100).shape == (3, 2)


def test_knn_rejects_bad_args():
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(torch.ones(2, 2), torch.tensor([0, 1]), torch.ones(1, 2), 2, temperature=0)


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_linear_probe_beats_chance(optimizer):
    xtr, ytr = clusters(spread=1.0, seed=1)
    g = torch.Generator().manual_seed(7)
    xte = xtr + 0.1 * torch.randn(xtr.shape, generator=g)
    probe = train_linear_probe(xtr, ytr, 4, epochs=30, batch_size=32, base_lr=0.1 if optimizer == "sgd" else 50.0,
                               optimizer=optimizer, seed=0)
    acc = topk_accuracy(predict_scores(probe, xte), ytr, (1,))[1]
    # chance is 0.25. LARS's trust ratio (0.001·‖w‖/‖g‖) moves weights slowly: with ~100 iterations
    # (instead of MAE's thousands) it needs a much larger base lr
    assert acc > 0.8
    assert not probe.training


def test_linear_probe_is_seeded():
    x, y = clusters(spread=1.0, seed=2)
    a = train_linear_probe(x, y, 4, epochs=2, batch_size=16, seed=3)
    b = train_linear_probe(x, y, 4, epochs=2, batch_size=16, seed=3)
    torch.testing.assert_close(a.head.weight, b.head.weight)


def test_fit_logreg_separable():
    x, y = clusters(spread=1.0, seed=3)
    model = fit_logreg(x, y, 4, l2=1e-3)
    assert topk_accuracy(predict_scores(model, x), y, (1,))[1] > 0.95


def test_unknown_optimizer():
    x, y = clusters(n_per=2)
    with pytest.raises(ValueError, match="adamw"):
        train_linear_probe(x, y, 4, epochs=1, optimizer="adamw")
