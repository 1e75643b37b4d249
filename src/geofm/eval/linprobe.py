"""Linear probing of frozen features.

Two solvers, both returning an ``nn.Module`` that maps features ``(N, D)`` to logits ``(N, C)``:

- :func:`train_linear_probe` — the MAE protocol (He et al. 2022, appendix A.2): a parameter-free
  ``BatchNorm1d(affine=False)`` followed by a ``Linear`` head (weights ``trunc_normal(std=0.01)``), trained
  with SGD+momentum or LARS, linear warm-up then a half-cosine decay per iteration, absolute learning rate
  ``lr = base_lr * batch_size / 256``.
- :func:`fit_logreg` — a fast deterministic alternative: multinomial logistic regression on standardised
  features, full-batch L-BFGS with an L2 penalty; :func:`fit_logreg_cv` chooses that penalty from a grid by
  stratified k-fold cross-validation on the training features alone, the linear evaluation of the transfer
  literature for small datasets (Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?", sec. 3;
  CLIP, Radford et al. 2021, appendix A.3: L-BFGS logistic regression, the L2 strength swept on held-out data).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from geofm.common.lr import warmup_cosine
from geofm.common.seeding import seed_global_torch, seeded_generator


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017), as used by MAE for linear probing.

    Parameters with ``ndim <= 1`` (biases, norms) skip weight decay and the trust ratio.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0,
                                                (g["trust_coefficient"] * param_norm / update_norm), 1.0),
                                    1.0)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss


class LinearProbe(nn.Module):
    """``BatchNorm1d(dim, affine=False, eps=1e-6)`` + ``Linear(dim, n_classes)``."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, n_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


def _check_inputs(feats: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.as_tensor(feats).float()
    labels = torch.as_tensor(labels).long()
    if feats.ndim != 2 or labels.ndim != 1 or feats.shape[0] != labels.shape[0]:
        raise ValueError(f"need features (N, D) and labels (N,), got {tuple(feats.shape)} and {tuple(labels.shape)}")
    if feats.shape[0] == 0:
        raise ValueError("cannot train a linear probe on zero samples")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes})")
    return feats, labels


def train_linear_probe(feats, labels, n_classes: int, *, epochs: int = 90, batch_size: int = 256,
                       base_lr: float = 0.1, lr: float | None = None, momentum: float = 0.9,
                       weight_decay: float = 0.0, warmup_epochs: float | None = None,
                       optimizer: str = "sgd", seed: int = 0, features_of=None, dim: int | None = None) -> LinearProbe:
    """Train a :class:`LinearProbe` on frozen features with the MAE recipe.

    ``lr`` (absolute) overrides ``base_lr * batch_size / 256`` (``batch_size`` capped at the number of
    samples). ``warmup_epochs`` defaults to 10 % of ``epochs`` (MAE: 10 of 90). ``optimizer`` is ``"sgd"``
    (momentum) or ``"lars"`` (MAE's). With ``features_of(idx, epoch, batch) -> (len(idx), dim)`` the features of
    every batch are computed anew (an augmented view through the frozen encoder: MAE's protocol) and
    ``feats`` is ignored (pass ``None`` and ``dim``). Returned in eval mode.
    """
    labels = torch.as_tensor(labels).long()
    if features_of is None:
        feats, labels = _check_inputs(feats, labels, n_classes)
        n, dim = feats.shape
    else:
        if dim is None:
            raise ValueError("features_of needs the feature width dim")
        n = labels.shape[0]
        if n == 0 or labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"need >= 1 sample with labels in [0, {n_classes})")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    g = seeded_generator(seed)
    with torch.random.fork_rng(devices=[]):
        seed_global_torch(seed)
        probe = LinearProbe(dim, n_classes)
    bs = min(batch_size, n)
    peak = float(lr) if lr is not None else base_lr * bs / 256.0
    params = [{"params": [probe.head.weight], "weight_decay": weight_decay},
              {"params": [probe.head.bias], "weight_decay": 0.0}]
    opt_name = optimizer.lower()
    if opt_name == "sgd":
        opt = torch.optim.SGD(params, lr=peak, momentum=momentum)
    elif opt_name == "lars":
        opt = LARS(params, lr=peak, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown linear-probe optimizer {optimizer!r}; use 'sgd' or 'lars'")
    # drop a last batch of one sample: BatchNorm in train mode cannot normalise a single row
    steps_per_epoch = n // bs if (n % bs == 1 and n > 1) else math.ceil(n / bs)
    total = epochs * steps_per_epoch
    warm = round((0.1 * epochs if warmup_epochs is None else warmup_epochs) * steps_per_epoch)
    probe.train()
    it = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            if idx.numel() < 2 and n > 1:
                continue
            cur = warmup_cosine(it, total, warm, peak)
            for group in opt.param_groups:
                group["lr"] = cur
            x = feats[idx] if features_of is None else features_of(idx, epoch, b).float()
            loss = F.cross_entropy(probe(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
    return probe.eval()


class LogReg(nn.Module):
    """Standardise (train mean/std) then a linear layer; produced by :func:`fit_logreg`."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, n_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.head = nn.Linear(mean.numel(), n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x - self.mean) / self.std)


def fit_logreg(feats, labels, n_classes: int, *, l2: float = 1e-4, max_iter: int = 200) -> LogReg:
    """Multinomial logistic regression, full-batch L-BFGS, loss ``CE + l2/2·‖W‖²`` on standardised
    features. Deterministic (zero init)."""
    feats, labels = _check_inputs(feats, labels, n_classes)
    mean = feats.mean(0)
    std = feats.std(0, unbiased=False).clamp_min(1e-6)
    model = LogReg(mean, std, n_classes)
    x = (feats - mean) / std
    opt = torch.optim.LBFGS(model.head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model.head(x), labels) + 0.5 * l2 * model.head.weight.pow(2).sum()
        loss.backward()
        return loss

    model.train()
    opt.step(closure)
    return model.eval()


def stratified_folds(labels, k: int, seed: int) -> torch.Tensor:
    """Fold index (0..k-1) of each sample: every class's samples shuffled (seeded) and dealt round-robin,
    the first fold of each class shifted by the class's index so that small classes do not all land in
    the first folds. Each fold gets ``floor`` or ``ceil`` of ``count / k`` of every class."""
    labels = torch.as_tensor(labels).long()
    gen = seeded_generator(seed)
    folds = torch.empty(len(labels), dtype=torch.long)
    for i, c in enumerate(torch.unique(labels).tolist()):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        folds[idx] = (torch.arange(len(idx)) + i) % k
    return folds


def fit_logreg_cv(feats, labels, n_classes: int, grid, *, folds: int = 5, seed: int = 0,
                  max_iter: int = 200) -> tuple[LogReg, dict]:
    """:func:`fit_logreg` with its L2 penalty chosen from ``grid`` by stratified ``folds``-fold
    cross-validation on ``feats`` alone (each fold standardised with its own training part's statistics):
    the penalty with the most correct held-out predictions wins, a tie going to the larger penalty (the
    simpler model); the head is then refitted on all of ``feats``. Returns the head and what was chosen:
    ``{"logreg_l2": l2, "logreg_cv_folds": k, "logreg_cv_top1": {l2: held-out top-1}}``."""
    feats, labels = _check_inputs(feats, labels, n_classes)
    grid = sorted({float(v) for v in grid})
    if not grid or any(v < 0 for v in grid):
        raise ValueError(f"logreg L2 grid must be non-negative numbers, got {grid}")
    k = int(folds)
    counts = torch.bincount(labels, minlength=n_classes)
    if k < 2 or k > int(counts.max()):
        raise ValueError(f"{k}-fold cross-validation needs 2 <= folds <= the largest class's training "
                         f"samples ({int(counts.max())})")
    fold_of = stratified_folds(labels, k, seed)
    correct = {v: 0 for v in grid}
    for f in range(k):
        tr, va = fold_of != f, fold_of == f
        if not bool(va.any()):
            continue
        for v in grid:
            head = fit_logreg(feats[tr], labels[tr], n_classes, l2=v, max_iter=max_iter)
            correct[v] += int((predict_scores(head, feats[va]).argmax(1) == labels[va]).sum())
    best = max(grid, key=lambda v: (correct[v], v))  # ties: the larger penalty
    head = fit_logreg(feats, labels, n_classes, l2=best, max_iter=max_iter)
    n = len(labels)
    return head, {"logreg_l2": best, "logreg_cv_folds": k,
                  "logreg_cv_top1": {repr(v): correct[v] / n for v in grid}}


@torch.no_grad()
def predict_scores(model: nn.Module, feats, batch_size: int = 4096) -> torch.Tensor:
    """Logits ``(N, C)`` of a trained probe (eval mode)."""
    model.eval()
    feats = torch.as_tensor(feats).float()
    if feats.shape[0] == 0:
        out_features = model.head.out_features  # both probe classes have .head
        return torch.zeros(0, out_features)
    return torch.cat([model(feats[i:i + batch_size]) for i in range(0, feats.shape[0], batch_size)])
