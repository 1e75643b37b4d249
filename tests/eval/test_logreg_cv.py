"""The cross-validated logistic-regression probe (``linprobe_solver: logreg`` with a list of ``logreg_l2``):
the transfer literature's linear evaluation on small datasets (Kornblith et al. 2019, sec. 3; CLIP,
Radford et al. 2021, appendix A.3), where the L2 strength is chosen on held-out training data."""
import pytest
import torch

from geofm.eval.linprobe import fit_logreg, fit_logreg_cv, predict_scores, stratified_folds


def test_folds_are_stratified_and_seeded():
    y = torch.tensor([0] * 6 + [1] * 7 + [2] * 2 + [3] * 11)
    f = stratified_folds(y, 5, seed=3)
    assert torch.equal(f, stratified_folds(y, 5, seed=3))
    assert not torch.equal(f, stratified_folds(y, 5, seed=4))
    for c in range(4):
        per_fold = torch.bincount(f[y == c], minlength=5)
        n = int((y == c).sum())
        assert int(per_fold.min()) == n // 5 and int(per_fold.max()) == -(-n // 5), (c, per_fold)
    # the two samples of class 2 do not both land in fold 0 with class 0's first sample: folds are shifted
    assert int(torch.bincount(f, minlength=5).max()) - int(torch.bincount(f, minlength=5).min()) <= 2


def test_held_out_folds_are_really_held_out():
    # Labels independent of the features, one distinct random feature vector per sample (D > N): a fit on
    # all the samples is right on all of them, so a "held-out" score computed on training data would be 1.0;
    # truly held-out predictions are at chance.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 300, generator=g)
    y = torch.randint(0, 4, (120,), generator=g)
    _, info = fit_logreg_cv(x, y, 4, [0.0, 1.0e-4], folds=5, seed=0)
    assert max(info["logreg_cv_top1"].values()) < 0.45, info


def test_penalty_chosen_on_held_out_data():
    # 80 noisy dimensions, one informative, 60 samples: the held-out top-1 differs across the grid. Each
    # penalty's held-out score is recomputed here fold by fold (train on the other folds, count the right
    # predictions on this one); the choice must be the best of them and the returned head fit_logreg
    # refitted on all the training data at that penalty.
    g = torch.Generator().manual_seed(1)
    n, d = 60, 80
    y = torch.arange(2).repeat(n // 2)
    x = torch.randn(n, d, generator=g)
    x[:, 0] += 1.5 * (2 * y - 1)
    grid = [1.0, 0.0, 0.1, 1.0e4]
    head, info = fit_logreg_cv(x, y, 2, grid, folds=5, seed=7)
    folds = stratified_folds(y, 5, seed=7)
    ref = {}
    for l2 in grid:
        right = 0
        for f in range(5):
            m = fit_logreg(x[folds != f], y[folds != f], 2, l2=l2)
            right += int((predict_scores(m, x[folds == f]).argmax(1) == y[folds == f]).sum())
        ref[repr(l2)] = right / n
    assert info["logreg_cv_top1"] == ref
    assert len(set(ref.values())) >= 2  # the grid matters here
    best = max(grid, key=lambda v: (ref[repr(v)], v))
    assert info["logreg_l2"] == best, ref
    xt = torch.randn(50, d, generator=g)
    torch.testing.assert_close(predict_scores(head, xt), predict_scores(fit_logreg(x, y, 2, l2=best), xt))


def test_ties_go_to_the_larger_penalty():
    # perfectly separable, tight clusters: every moderate penalty is right on every held-out sample
    g = torch.Generator().manual_seed(2)
    y = torch.arange(3).repeat_interleave(10)
    x = torch.eye(3)[y] * 10 + 0.01 * torch.randn(30, 3, generator=g)
    _, info = fit_logreg_cv(x, y, 3, [1.0e-4, 1.0e-2, 1.0e-1], folds=5)
    assert set(info["logreg_cv_top1"].values()) == {1.0}
    assert info["logreg_l2"] == 1.0e-1


def test_bad_grid_or_folds():
    x, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    with pytest.raises(ValueError, match="folds"):
        fit_logreg_cv(x, y, 2, [1.0], folds=5)  # 4 samples per class
    with pytest.raises(ValueError, match="non-negative"):
        fit_logreg_cv(x, y, 2, [-1.0], folds=2)
