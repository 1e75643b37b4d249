"""The shared helpers (geofm.common) that replaced the per-module copies keep the old values exactly."""
import json
import os

import pytest
import torch

from geofm.common.io import atomic_path, write_json
from geofm.common.lr import warmup_cosine
from geofm.common.seeding import derive_seed, torch_generator


def test_warmup_then_cosine_to_min_lr():
    assert warmup_cosine(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(55, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)
    assert warmup_cosine(150, 100, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)  # held after the end
    assert warmup_cosine(0, 100, 0, 1.0) == pytest.approx(1.0)  # no warm-up: the peak at step 0


def test_seeded_streams_are_the_ones_fine_tuning_and_the_probe_drew_before():
    # values of the former geofm.eval.finetune._gen (sha256 of the int key tuple), measured before the move:
    # the epoch permutation (seed, 1, epoch) and the augmented probe's crops (seed, 5, epoch, batch)
    assert derive_seed(0, 1, 0) == 7165353359696448611
    assert derive_seed(0, 5, 2, 3) == 2567319012656232278
    assert torch.randperm(8, generator=torch_generator(0, 1, 0)).tolist() == [1, 4, 0, 5, 3, 6, 2, 7]
    assert derive_seed(0, 1, 0) != derive_seed("0", 1, 0)  # key types matter: callers pass ints


def test_atomic_writer_leaves_the_old_file_on_error(tmp_path):
    out = tmp_path / "sub" / "r.json"
    write_json(out, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(out.read_text()) == {"a": 1}
    assert os.listdir(out.parent) == ["r.json"]  # no temporary left behind


def test_every_seeded_stream_is_made_in_common_seeding():
    """One seeding scheme: no other module of the package seeds a generator itself (torch's or numpy's, global or
    not), so every stream and its formula is in geofm.common.seeding."""
    import re
    from pathlib import Path

    import geofm

    seeding = re.compile(r"manual_seed\(|default_rng\(|RandomState\(|np\.random\.seed\(|\brandom\.seed\(|"
                         r"torch\.Generator\(")
    pkg = Path(geofm.__file__).parent
    found = [f"{p.relative_to(pkg)}:{i}: {line.strip()}"
             for p in sorted(pkg.rglob("*.py")) if p != pkg / "common" / "seeding.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if seeding.search(line)]
    assert found == [], "seed through geofm.common.seeding instead:\n" + "\n".join(found)
