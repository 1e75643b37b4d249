"""Entry point for the multi-process tests: ``worker.py '<json>'``, one process per rank (started with torchrun's
environment by ``enginelib.run_ranks``, or under torchrun).

``{"mode": "train", "cfg": {...TrainConfig...}, "out": dir}`` runs pretraining (``"kill_at_step": k``: each
rank SIGKILLs itself as it starts step k; ``"record_dtypes": path``: see :func:`_record_dtypes`;
``"record_layout"``, ``"record_compute"``: see :func:`_record_layout`, :func:`_record_compute`); ``{"mode": "train", "runs": [{"cfg", "out",
"record_layout", "record_compute", "master_port"}, ...]}`` runs several one after another in the same ranks, each in its own
process group on its own port;
``{"mode": "meta", "model": name, "image_size": n, "strategy": s}`` reports per-rank parameter memory;
``{"mode": "prefetch", "depths": [[b, f], ...], "out": prefix}`` records the order of FSDP2 all-gathers
against block compute in one training step, for each (backward, forward) prefetch depth in turn, in one
process group (see :func:`prefetch_order`).
"""
import json
import resource
import sys


def main():
    args = json.loads(sys.argv[1])
    if args["mode"] == "prefetch":
        prefetch_order(args)
        return
    if args["mode"] == "train":
        from geofm.train.pretrain import TrainConfig, WalltimeStop, train

        if args.get("kill_at_step"):
            _sigkill_at_step(int(args["kill_at_step"]))
        # the dtypes record is written once training has returned, then lets go of the model and optimizer.
        # It was an atexit writer holding both until interpreter exit, and rank 0 of this test (only this one)
        # sometimes aborted after its 40 steps ("terminate called without an active exception", exit -6; once in
        # a CI suite, once in 10 runs beside two busy loops): most likely the FSDP2 mesh of the held model kept
        # the destroyed gloo process group alive into interpreter finalisation (gloo's worker threads torn down
        # there abort the process: pytorch/pytorch PR 179291's description, and issue 190489's repro)
        dtypes_done = _record_dtypes(args["record_dtypes"]) if args.get("record_dtypes") else None

        # "runs": several pretraining runs one after another in the same ranks (each its own process group, as
        # train() makes and ends one): the rank processes start once for all of them
        for run in args.get("runs") or [args]:
            if run.get("master_port"):  # a new process group on a new store: rank 0 serves it, as at the start
                import os

                os.environ["MASTER_PORT"] = str(run["master_port"])
            finish = [rec(run[key]) for key, rec in (("record_layout", _record_layout),
                                                     ("record_compute", _record_compute)) if run.get(key)]
            try:
                train(TrainConfig.from_dict(run["cfg"]), run["out"])
            except WalltimeStop as exc:  # what `geofm pretrain` does: say so, exit 75 for a resubmission
                print(f"walltime stop: {exc}", flush=True)
                sys.exit(WalltimeStop.EXIT_CODE)
            finally:
                for f in reversed(finish):  # the last recorder installed is removed first
                    f()
        if dtypes_done is not None:
            dtypes_done()
        return
    from torch.distributed.tensor import DTensor

    from geofm.distributed import launch
    from geofm.distributed.parallelize import parallelize, parse_strategy
    from geofm.models.mae import build_mae, materialize

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    de, dev = launch.init("cpu")
    model = build_mae(args["model"], args["image_size"], 3, device="meta")
    parallelize(model, parse_strategy(args["strategy"]), de.world_size, dev, precision="fp32")
    materialize(model, dev, seed=0)
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rank": de.rank, "local": local, "total": total, "rss_growth_mb": (rss1 - rss0) / 1024}
    with open(f"{args['out']}.{de.rank}.json", "w") as fh:
        json.dump(out, fh)
    launch.shutdown()


def _sigkill_at_step(step: int) -> None:
    """Make this rank SIGKILL itself when pretraining is about to run training step ``step`` (1-based, of a run
    from step 0): a hard crash between two checkpoints at a known step, without racing a timer."""
    import os
    import signal

    import geofm.train.pretrain as pretrain

    real, calls = pretrain.train_step, [0]

    def step_or_die(*a, **k):
        calls[0] += 1
        if calls[0] == step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)

    pretrain.train_step = step_or_die


def _record_compute(path: str):
    """Record what a pretraining run computes; returns ``finish``, which writes the rank's ``<path>.<rank>.json``
    and removes the recording (call it after the run): ``attn``:
    for each transformer block (``"<stack>.<block>"``, encoder stack 0), the batch size of every forward of
    its attention (a checkpointed block runs it again in backward); ``lr``: the learning rate of each
    param group at every ``AdamW.step`` (what the optimizer really used)."""
    import os

    import torch

    import geofm.train.pretrain as pretrain
    from geofm.distributed.parallelize import transformer_blocks

    seen = {"attn": {}, "lr": []}
    real_build, real_step = pretrain.build_model, torch.optim.AdamW.step

    def build_model(*a, **k):
        model, autocast = real_build(*a, **k)
        for si, blocks in enumerate(transformer_blocks(model)):
            for bi, blk in enumerate(blocks):
                attn = next(m for n, m in blk.named_modules() if n.split(".")[-1] == "attn")
                key = f"{si}.{bi}"
                seen["attn"][key] = []
                attn.register_forward_pre_hook(lambda mod, inp, key=key: seen["attn"][key].append(inp[0].shape[0]))
        return model, autocast

    def adamw_step(self, *a, **k):
        seen["lr"].append([g["lr"] for g in self.param_groups])
        return real_step(self, *a, **k)

    def finish():
        pretrain.build_model, torch.optim.AdamW.step = real_build, real_step
        with open(f"{path}.{os.environ.get('RANK', '0')}.json", "w") as fh:
            json.dump(seen, fh)

    pretrain.build_model, torch.optim.AdamW.step = build_model, adamw_step
    return finish


def _record_layout(path: str):
    """Record how the model the pretraining code built (``geofm.train.pretrain.build_model``) is laid out and
    what it communicates; returns ``finish``, which writes each rank's ``<path>.<rank>.json`` and removes the
    recording (call it after the run): ``wrapper`` (the outer module's
    class), ``local_fraction`` (parameter elements this rank holds / the model's), ``mesh`` (the shape of the
    parameters' device mesh, null without DTensors), ``all_gathers`` (FSDP2's ``foreach_all_gather`` calls over
    the whole run), ``prefetch`` (the depths ``parallelize`` was given)."""
    import os

    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as fpg
    from torch.distributed.tensor import DTensor

    import geofm.train.pretrain as pretrain

    seen = {"all_gathers": 0}
    real_build, real_gather, real_par = pretrain.build_model, fpg.foreach_all_gather, pretrain.parallelize

    def parallelize(*a, **k):
        seen["prefetch"] = list(a[6:8]) + [k[n] for n in ("backward_prefetch", "forward_prefetch") if n in k]
        return real_par(*a, **k)

    def build_model(*a, **k):
        model, autocast = real_build(*a, **k)
        params = list(model.parameters())
        local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
        total = sum(p.numel() for p in params)
        meshes = {tuple(p.device_mesh.shape) for p in params if isinstance(p, DTensor)}
        seen.update(wrapper=type(model).__name__, local_fraction=local / total,
                    mesh=[list(m) for m in sorted(meshes)] or None)
        return model, autocast

    def all_gather(*a, **k):
        seen["all_gathers"] += 1
        return real_gather(*a, **k)

    def finish():
        pretrain.build_model, pretrain.parallelize, fpg.foreach_all_gather = real_build, real_par, real_gather
        with open(f"{path}.{os.environ.get('RANK', '0')}.json", "w") as fh:
            json.dump(seen, fh)

    pretrain.build_model, pretrain.parallelize, fpg.foreach_all_gather = build_model, parallelize, all_gather
    return finish


def _record_dtypes(path: str):
    """Record the dtypes a pretraining run actually uses; the returned function, called once training has
    returned, writes ``<path>.<rank>.json`` and restores what it patched:
    ``compute``: input and weight of the first encoder block's first Linear when it runs; ``grad`` and
    ``reduce``: the unsharded gradients FSDP2 hands to its reduce-scatter and the dtype of the reduce-scatter
    buffer (torch 2.14 ``_fsdp_collectives.foreach_reduce``: ``reduce_dtype or grad_dtype``); ``params`` and
    ``optimizer``: the sharded parameters and AdamW's state after training."""
    import inspect

    import torch
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as fpg

    import geofm.train.pretrain as pretrain
    from geofm.distributed.parallelize import transformer_blocks

    seen = {k: set() for k in ("compute_input", "compute_weight", "grad", "reduce", "params", "optimizer")}
    held = {}
    real_build, real_reduce = pretrain.build_model, fpg.foreach_reduce
    reduce_sig = inspect.signature(real_reduce)

    def build_model(*a, **k):
        model, autocast = real_build(*a, **k)
        first = next(m for m in transformer_blocks(model)[0][0].modules() if isinstance(m, torch.nn.Linear))

        def pre(mod, inputs):
            seen["compute_input"].add(str(inputs[0].dtype))
            seen["compute_weight"].add(str(mod.weight.dtype))

        first.register_forward_pre_hook(pre)
        held["model"] = model
        return model, autocast

    def foreach_reduce(*a, **k):
        bound = reduce_sig.bind(*a, **k).arguments
        grads = bound["unsharded_grads"]
        seen["grad"].update(str(g.dtype) for g in grads)
        seen["reduce"].add(str(bound["reduce_dtype"] or grads[0].dtype))
        return real_reduce(*a, **k)

    real_adamw_step = torch.optim.AdamW.step

    def adamw_step(self, *a, **k):
        held["opt"] = self
        return real_adamw_step(self, *a, **k)

    def write():
        model, opt = held.get("model"), held.get("opt")
        if model is not None:
            seen["params"].update(str(p.dtype) for p in model.parameters())
        if opt is not None:
            seen["optimizer"].update(str(v.dtype) for st in opt.state.values() for v in st.values()
                                     if torch.is_tensor(v) and v.is_floating_point())
        import os

        with open(f"{path}.{os.environ.get('RANK', '0')}.json", "w") as fh:
            json.dump({k: sorted(v) for k, v in seen.items()}, fh)
        held.clear()
        pretrain.build_model, fpg.foreach_reduce, torch.optim.AdamW.step = real_build, real_reduce, real_adamw_step

    pretrain.build_model = build_model
    fpg.foreach_reduce = foreach_reduce
    torch.optim.AdamW.step = adamw_step
    return write


def prefetch_order(args):
    """For each (backward, forward) depth of ``args["depths"]``: a new FULL_SHARD test_micro MAE (4 blocks) on
    this world; rank 0 writes the event list of its second step to ``<out>.<backward>-<forward>.json``.

    Events: ``["AG", m]`` when FSDP2 issues module m's all-gather (``foreach_all_gather`` wrapped in the
    module FSDP2 calls it from, ``_fsdp_param_group``), ``["F", m]`` when m's forward computation starts (a
    pre-hook on the block's attention; the root's on the patch embedding), ``["B", m]`` when m's backward
    computation starts (a full backward pre-hook on the block's MLP; the root's on the decoder head), and
    ``["BACKWARD"]`` between the passes. m is ``root`` or ``b0`` … ``b3`` (encoder then decoder blocks).
    """
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as fpg

    from geofm.distributed import launch

    de, dev = launch.init("cpu")
    real = fpg.foreach_all_gather
    for backward, forward in args["depths"]:
        fpg.foreach_all_gather = real
        events = _prefetch_events(de, dev, backward, forward)
        if de.rank == 0:
            with open(f"{args['out']}.{backward}-{forward}.json", "w") as fh:
                json.dump(events, fh)
    launch.shutdown()


def _prefetch_events(de, dev, backward: int, forward: int) -> list:
    import torch
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as fpg

    from geofm.distributed.parallelize import parallelize, parse_strategy, transformer_blocks
    from geofm.models.mae import build_mae, materialize

    torch.manual_seed(0)
    model = build_mae("test_micro", 16, 3, device="meta", decoder_dim=32, decoder_depth=2, decoder_heads=2)
    parallelize(model, parse_strategy("FULL_SHARD"), de.world_size, dev, precision="fp32",
                backward_prefetch=backward, forward_prefetch=forward)
    materialize(model, dev, seed=0)
    blocks = [b for bl in transformer_blocks(model) for b in bl]
    names = {id(model._get_fsdp_state()._fsdp_param_group.fsdp_params[0]): "root"}
    names.update({id(b._get_fsdp_state()._fsdp_param_group.fsdp_params[0]): f"b{i}" for i, b in enumerate(blocks)})
    events, on = [], [False]

    def note(*ev):
        if on[0]:
            events.append(list(ev))

    real = fpg.foreach_all_gather

    def all_gather(fsdp_params, *a, **kw):
        note("AG", names[id(fsdp_params[0])])
        return real(fsdp_params, *a, **kw)

    fpg.foreach_all_gather = all_gather
    model.encoder.patch_embed.register_forward_pre_hook(lambda *_: note("F", "root"))
    model.decoder_pred.register_full_backward_pre_hook(lambda *_: note("B", "root"))
    for i, b in enumerate(blocks):
        b.attn.register_forward_pre_hook(lambda *_, i=i: note("F", f"b{i}"))
        b.mlp.register_full_backward_pre_hook(lambda *_, i=i: note("B", f"b{i}"))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    for step in range(2):
        on[0] = step == 1  # the first step also runs FSDP2's lazy initialisation
        loss = model(x, 0.75, noise)[0]
        note("BACKWARD")
        loss.backward()
    return events


if __name__ == "__main__":
    main()
