import torch
import torch.nn as nn

from geofm.eval.features import cache_file, cache_key, extract_features


class ChannelMean(nn.Module):
    """Stand-in encoder: features = per-band spatial mean; counts calls and records the input size."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.sizes = set()
        self.lin = nn.Linear(1, 1)  # so .to()/.eval() have something to act on

    def forward_features(self, x):
        self.calls += 1
        self.sizes.add(tuple(x.shape[-2:]))
        assert not self.training
        assert not torch.is_grad_enabled()
        return x.mean(dim=(2, 3))


def test_extract_features_normalises_and_resizes():
    imgs = torch.full((5, 2, 8, 8), 255, dtype=torch.uint8)
    imgs[:, 1] = 0
    enc = ChannelMean().train()
    f = extract_features(enc, imgs, mean=[0.5, 0.5], std=[0.25, 0.5], image_size=16, batch_size=2)
    assert f.shape == (5, 2) and f.dtype == torch.float32
    torch.testing.assert_close(f, torch.tensor([[2.0, -1.0]]).expand(5, 2))
    assert enc.sizes == {(16, 16)}
    assert enc.calls == 3  # batches of 2, 2, 1
    assert enc.training  # mode restored


def test_feature_cache_roundtrip(tmp_path):
    imgs = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    key = cache_key("demo_tiny", 100, "ds", "train", image_size=8)
    path = cache_file(tmp_path, key)
    assert path == tmp_path / "demo_tiny" / "step-100" / "ds.train.pt"
    enc = ChannelMean()
    a = extract_features(enc, imgs, [0.5] * 3, [0.2] * 3, 8, cache_path=path, cache_key=key)
    assert path.exists() and enc.calls == 1
    b = extract_features(enc, imgs, [0.5] * 3, [0.2] * 3, 8, cache_path=path, cache_key=key)
    assert enc.calls == 1  # served from the cache
    torch.testing.assert_close(a, b)
    other = cache_key("demo_tiny", 200, "ds", "train", image_size=8)  # new step: recompute
    extract_features(enc, imgs, [0.5] * 3, [0.2] * 3, 8, cache_path=path, cache_key=other)
    assert enc.calls == 2
