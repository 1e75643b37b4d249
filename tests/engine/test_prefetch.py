"""FSDP2 all-gather prefetch depth on 2 gloo ranks: the order of all-gathers against block computation.

The worker (``worker.py``, mode ``prefetch``) records, for one FULL_SHARD step of a 4-block MAE (root + b0…b3),
when each module's all-gather is issued and when each module's forward / backward computation starts. The
*lead* of an all-gather is how many other modules start computing between it and its own module's computation:
0 = issued when needed, d = d modules ahead. Depth d must give lead min(d, modules before it in the pass).
"""
import json

import pytest

from enginelib import run_ranks

BLOCKS = ["b0", "b1", "b2", "b3"]


def leads(events: list[list[str]]) -> dict[str, int]:
    """module -> lead of its (single) all-gather in this pass."""
    out = {}
    for i, ev in enumerate(events):
        if ev[0] != "AG":
            continue
        assert ev[1] not in out, f"{ev[1]} all-gathered twice in one pass: {events}"
        later = [e for e in events[i + 1:] if e[0] != "AG"]
        first = [e[1] for e in later].index(ev[1])
        out[ev[1]] = first
    return out


def expected(order: list[str], depth: int) -> dict[str, int]:
    """Compute order of a pass (root first) -> lead each block's all-gather must have at this depth."""
    return {m: min(depth, pos) for pos, m in enumerate(order) if m != "root"}


@pytest.fixture(scope="module")
def orders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefetch")
    out = {}
    run_ranks(2, {"mode": "prefetch", "depths": [[d, d] for d in (0, 1, 2)], "out": str(tmp / "order")})
    for depth in (0, 1, 2):
        ev = json.loads((tmp / f"order.{depth}-{depth}.json").read_text())
        cut = ev.index(["BACKWARD"])
        out[depth] = ev[:cut], ev[cut + 1:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_prefetch_depth_sets_all_gather_lead(orders, depth):
    fwd, bwd = orders[depth]
    f_order = ["root"] + BLOCKS
    b_order = ["root"] + BLOCKS[::-1]
    # every block is all-gathered exactly once per pass, before it computes
    assert sorted(m for k, m in fwd if k == "AG") == sorted(f_order)
    assert sorted(m for k, m in bwd if k == "AG") == sorted(b_order)
    assert [m for k, m in fwd if k == "F"] == f_order and [m for k, m in bwd if k == "B"] == b_order
    fl, bl = leads(fwd), leads(bwd)
    assert fl.pop("root") == 0 and bl.pop("root") == 0  # nothing computes before the root
    assert fl == expected(f_order, depth), fwd
    assert bl == expected(b_order, depth), bwd
    if depth == 2:  # two blocks ahead once two have passed (b0 can only lead the root's computation)
        assert fl == {"b0": 1, "b1": 2, "b2": 2, "b3": 2} and bl == {"b3": 1, "b2": 2, "b1": 2, "b0": 2}
        assert fl != leads(orders[1][0])  # and not what depth 1 gives
    if depth == 0:  # issued exactly when needed: each all-gather directly precedes its module's computation
        assert all(fwd[i + 1] == ["F", m] for i, (k, m) in enumerate(fwd) if k == "AG")
        assert all(bwd[i + 1] == ["B", m] for i, (k, m) in enumerate(bwd) if k == "AG")
