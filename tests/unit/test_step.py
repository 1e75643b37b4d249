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


class _Ops(__import__("torch.utils._python_dispatch", fromlist=["TorchDispatchMode"]).TorchDispatchMode):
    """Records (op name, dtypes of its tensor arguments) of every aten op run under it, backward included."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, set]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dts = {a.dtype for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        self.ops.append((str(func.overloadpacket.__name__), dts))
        return func(*args, **kwargs)

    def called(self, fragment: str) -> list[set]:
        return [d for name, d in self.ops if fragment in name]


def test_bf16_on_cpu_runs_attention_as_matrix_products():
    """bf16 autocast on a CPU (geofm.common.precision): attention runs as bf16 matrix products and a softmax,
    forward and backward, never PyTorch's fused CPU kernel (its bf16 backward was 6x its fp32 one:
    scripts/bench_cpu_bf16.py) nor the math backend (fp32 products and its _safe_softmax checks); fp32 steps keep
    the fused kernel; the bf16 step trains the weights an fp32 step does, to bf16's precision."""
    m32, o32, x, noise = _setup()
    m16, o16, _, _ = _setup()
    with _Ops() as fp32:
        r32 = train_step(m32, o32, x, noise, StepOptions(autocast=False))
    with _Ops() as bf16:
        r16 = train_step(m16, o16, x, noise, StepOptions(autocast=True))
    assert fp32.called("_scaled_dot_product_flash_attention_for_cpu")  # forward
    assert fp32.called("_scaled_dot_product_flash_attention_for_cpu_backward")
    assert not bf16.called("flash_attention")
    # attention as batched matrix products (query x key, weights x value), forward and backward, in all
    # 3 blocks (2 encoder, 1 decoder), in bf16, and a plain softmax (not the math backend's _safe_softmax)
    assert len([d for d in bf16.called("bmm") if d == {torch.bfloat16}]) >= 3 * 2 * 3
    assert not [d for d in bf16.called("bmm") if torch.float32 in d]
    assert len(bf16.called("_softmax")) == 3 * 2  # forward (softmax) and backward (_softmax_backward_data)
    assert not bf16.called("safe_softmax")
    # and the linear layers (qkv, projection, MLP, embeddings, heads) in bf16, forward and backward
    linear16 = [d for d in bf16.called("mm") + bf16.called("addmm") if d == {torch.bfloat16}]
    assert len(linear16) >= 3 * 4 * 3
    assert not [d for d in fp32.called("mm") + fp32.called("addmm") if torch.bfloat16 in d]
    assert r16.loss == pytest.approx(r32.loss, rel=2e-2)
    moved = [(p16 - p32).abs().max() / (p32 - q).abs().max().clamp_min(1e-12)
             for p16, p32, q in zip(m16.parameters(), m32.parameters(), _setup()[0].parameters())]
    assert max(moved) < 0.1  # each parameter's update agrees with fp32's to 10 % of its largest entry


def test_bf16_features_on_cpu_skip_the_fused_attention_kernel():
    from geofm.eval.features import extract_features

    enc = _setup()[0].encoder
    imgs = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with _Ops() as fp32:
        f32 = extract_features(enc, imgs, [0.5] * 3, [0.25] * 3, 16, distributed=False, precision="fp32")
    with _Ops() as bf16:
        f16 = extract_features(enc, imgs, [0.5] * 3, [0.25] * 3, 16, distributed=False, precision="bf16")
    assert fp32.called("flash_attention") and not bf16.called("flash_attention")
    assert f16.dtype == torch.float32
    torch.testing.assert_close(f16, f32, rtol=0.05, atol=0.05)


def test_pretraining_optimizer_on_cpu_is_one_fused_kernel_with_adamws_update():
    """geofm.train.pretrain.make_adamw: on a CPU one fused AdamW kernel per step and parameter group (PyTorch's
    default there is a loop of small ops per tensor, about 7 % of a demo_base step), and the update of that loop."""
    from geofm.train.pretrain import make_adamw, param_groups

    runs = {}
    for name in ("fused", "loop"):
        m, _, x, noise = _setup()
        groups = param_groups(m, 0.05)
        opt = (make_adamw(groups, torch.device("cpu"), 1e-3, (0.9, 0.95)) if name == "fused" else
               torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95)))
        with _Ops() as ops:
            train_step(m, opt, x, noise, StepOptions())
        runs[name] = (m, ops)
    assert len(runs["fused"][1].called("_fused_adamw")) == 2  # decayed and not decayed
    assert not runs["fused"][1].called("lerp_") and runs["loop"][1].called("lerp_")
    assert not runs["loop"][1].called("_fused_adamw")
    # the same first update, to 1e-4 of each tensor's largest change (measured: 1.5e-5; later steps drift apart
    # through the loss, as any change of rounding does)
    for pf, pl, p0 in zip(runs["fused"][0].parameters(), runs["loop"][0].parameters(), _setup()[0].parameters()):
        assert (pf - pl).abs().max() <= 1e-4 * (pl - p0).abs().max()


def test_bf16_attention_on_cpu_with_a_mask_or_dropout_keeps_pytorchs_semantics():
    """Only plain attention (no mask, dropout or causal flag) becomes explicit products; the rest goes to
    PyTorch's math backend inside the region, with the mask applied as PyTorch defines it."""
    from geofm.common.precision import bf16_autocast

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(5, 5, generator=g) > 0.3
    mask.fill_diagonal_(True)
    F = torch.nn.functional
    for kw in ({"attn_mask": mask}, {"is_causal": True}):
        want = F.scaled_dot_product_attention(q, k, v, **kw)
        with _Ops() as ops, bf16_autocast("cpu"):
            got = F.scaled_dot_product_attention(q, k, v, **kw)
        assert not ops.called("flash_attention")
        torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    with bf16_autocast("cpu"):  # and a plain call is the same attention, to bf16's precision
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v).float(),
                                   F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float(),
                                   rtol=0.05, atol=0.05)
