"""The one training step: accumulation is the same maths as one batch, a NaN loss updates nothing, the phase
marks come in order (what the profiler times), clipping reports the norm it clipped."""
import pytest
import torch

from geofm.models.mae import build_mae, materialize
from geofm.train.step import NonFiniteLoss, PhaseTimer, StepOptions, train_step


def _setup(seed=0):
    m = materialize(build_mae("test_micro", 16, 3, device="meta", decoder_dim=32, decoder_depth=1, decoder_heads=2),
                    "cpu", seed)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    return m, opt, torch.randn(8, 3, 16, 16, generator=g), torch.rand(8, 16, generator=g)


def test_accumulation_matches_one_batch():
    a, oa, x, noise = _setup()
    b, ob, _, _ = _setup()
    ra = train_step(a, oa, x, noise, StepOptions(grad_accum=1))
    rb = train_step(b, ob, x, noise, StepOptions(grad_accum=4))
    assert rb.loss == pytest.approx(ra.loss, rel=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in a.parameters())


def test_nan_loss_updates_nothing():
    m, opt, x, noise = _setup()
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(NonFiniteLoss) as err:
        train_step(m, opt, x, noise, StepOptions(grad_clip=1.0), poison=True)
    assert err.value.loss != err.value.loss  # NaN
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
    assert all(p.grad is None for p in m.parameters())


def test_marks_and_clipping():
    m, opt, x, noise = _setup()
    seen = []
    before = [p.detach().clone() for p in m.parameters()]
    res = train_step(m, opt, x, noise, StepOptions(grad_accum=2, grad_clip=1e-3), mark=seen.append)
    assert seen == ["forward", "backward", "forward", "backward", "optimizer", "end"]
    assert res.grad_norm > 1e-2  # the norm before clipping
    # SGD moved the parameters by lr x the clipped gradient: total norm 0.1 x 1e-3
    moved = torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(m.parameters(), before)))
    assert float(moved) == pytest.approx(1e-4, rel=1e-3)
    timer = PhaseTimer()
    timer("data")
    train_step(m, opt, x, noise, StepOptions(), mark=timer)
    assert set(timer.totals) == {"data", "forward", "backward", "optimizer"}
    assert all(v > 0 for v in timer.totals.values())
    with pytest.raises(ValueError, match="grad_accum=3"):
        train_step(m, opt, x, noise, StepOptions(grad_accum=3))


def _inductor_unavailable() -> str | None:
    """Why torch.compile's inductor cannot build CPU kernels here, or None."""
    import shutil

    from torch._inductor import config as inductor_config

    cxx = inductor_config.cpp.cxx[-1] if isinstance(inductor_config.cpp.cxx, tuple) else inductor_config.cpp.cxx
    if not any(shutil.which(c) for c in (cxx, "g++", "c++", "clang++") if c):
        return "torch.compile's inductor backend needs a C++ compiler on the CPU; none is on PATH"
    return None


def test_compiled_step_matches_eager():
    """pretrain.compile: geofm.distributed.parallelize.apply_compile (inductor, each block) gives the eager step's
    losses and parameters within float32 reordering, over three optimizer steps."""
    why = _inductor_unavailable()
    if why:
        pytest.skip(why)
    from geofm.distributed.parallelize import apply_compile

    eager, oe, x, noise = _setup()
    comp, oc, _, _ = _setup()
    oe, oc = torch.optim.AdamW(eager.parameters(), lr=1e-3), torch.optim.AdamW(comp.parameters(), lr=1e-3)
    apply_compile(comp)
    assert sum(type(b).__name__ == "OptimizedModule" for b in comp.encoder.blocks) == len(comp.encoder.blocks)
    torch._dynamo.reset()
    seen = []
    try:
        for _ in range(3):
            le = train_step(eager, oe, x, noise, StepOptions()).loss
            lc = train_step(comp, oc, x, noise, StepOptions()).loss
            assert lc == pytest.approx(le, rel=1e-5), (lc, le)
            seen.append(le)
    finally:
        torch._dynamo.reset()
    assert len(set(seen)) == 3  # the steps updated the model: three points of a trajectory, not one repeated


def test_fsdp2_wrapped_mae_returns_no_view_to_its_caller():
    """FSDP2 hooks the tensors a wrapped module returns for its pre-backward all-gather, and warns that an
    in-place op on a returned *view* drops that hook (torch/distributed/fsdp/_fully_shard/_fsdp_state.py,
    ``_register_pre_backward_hook``): the MAE's prediction is returned as its own tensor, so a pretraining log
    on any number of ranks carries no such warning and a caller's in-place op cannot skip the all-gather."""
    import warnings

    import torch.distributed as dist

    from geofm.distributed.parallelize import parallelize, parse_strategy

    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        m = build_mae("test_micro", 16, 3, device="meta", decoder_dim=32, decoder_depth=1, decoder_heads=2)
        parallelize(m, parse_strategy("FULL_SHARD"), 1, torch.device("cpu"), "fp32")
        materialize(m, "cpu", 0)
        x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss, pred, _ = m(x)
        assert not [w for w in caught if "view tensor" in str(w.message)], [str(w.message) for w in caught]
        assert pred._base is None and pred.requires_grad
        pred.mul_(1.0)  # an in-place op on the returned prediction: the loss's backward still all-gathers
        loss.backward()
        assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()
