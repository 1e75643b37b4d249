"""Weighted k-nearest-neighbour classifier on frozen features (the DINO / InstDisc protocol).

Features are L2-normalised; each test sample takes its ``k`` most cosine-similar training samples and
every neighbour votes for its class with weight ``exp(sim / T)``. The result is an ``(N_test, C)`` array
of class scores (sums of weights) that the metrics rank for top-1/top-5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(train_feats, train_labels, test_feats, n_classes: int, *, k: int = 20,
               temperature: float = 0.07, batch_size: int = 1024) -> torch.Tensor:
    """Temperature-weighted cosine kNN votes, ``(N_test, n_classes)`` float32.

    ``k`` is clipped to the number of training samples.
    """
    train = torch.as_tensor(train_feats).float()
    test = torch.as_tensor(test_feats).float()
    labels = torch.as_tensor(train_labels).long()
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(train.shape)} and {tuple(test.shape)}")
    if labels.shape != (train.shape[0],):
        raise ValueError(f"train_labels must have shape ({train.shape[0]},), got {tuple(labels.shape)}")
    if train.shape[0] == 0:
        raise ValueError("kNN needs at least one training sample")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"train_labels must lie in [0, {n_classes})")
    kk = min(int(k), train.shape[0])
    train = F.normalize(train, dim=1)
    test = F.normalize(test, dim=1)
    out = torch.zeros(test.shape[0], n_classes)
    for i in range(0, test.shape[0], batch_size):
        sim = test[i:i + batch_size] @ train.T
        top_sim, top_idx = sim.topk(kk, dim=1)
        w = (top_sim / temperature).exp()
        out[i:i + batch_size].scatter_add_(1, labels[top_idx], w)
    return out
