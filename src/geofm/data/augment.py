"""The one preprocessing path: MAE augmentations shared by the one loader (:mod:`geofm.data.loader`, pretraining's
step-indexed batches), fine-tuning (crops from :mod:`geofm.data.sampler`) and the linear probe (:func:`train_batch`):
RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3, bicubic as MAE) + horizontal flip (+ optional quarter turns, pretraining's
``augment_rot90``) + normalisation; and MAE's test
transform for feature extraction and every test split (:func:`eval_batch`: resize to size/0.875, centre crop).
Normalisation uses the statistics of the pretraining set (``stats.json`` of its tiles, carried in ``encoder.pt``).

Fast path (the default, on CPU): the crop is cut from the uint8 tile at integer pixel offsets (as torchvision's
``RandomResizedCrop`` does) and resized with ``F.interpolate(..., mode="bicubic", antialias=True)`` **on uint8**,
(bicubic by default) which torch runs with its vectorised uint8 kernel -- one call per sample, since every crop has
its own size; the flip is applied to the small resized uint8 output.  Only then is the batch converted to float
and normalised (``(x - 255 mean) / (255 std)``), in one pass.  The parameters (boxes, flips) are drawn for the
whole batch up front, so a sample's result does not depend on the other samples of its batch.

Where the work happens is chosen with ``augment_on_device`` (see :func:`parse_device_stage`):

``"none"``      everything on the CPU; the batch is float32, normalised.
``"normalize"`` crop/resize/flip on the CPU in uint8; the batch travels as uint8 (4x fewer bytes through the
                DataLoader's shared memory and PCIe) and is converted/normalised on the device.
``"all"``       the CPU only gathers the uint8 tiles; crop/resize/flip/normalise run on the device (float,
                same integer boxes and the same antialiased bicubic resize).

In the last two cases the loader yields a :class:`DeviceBatch`, whose ``.to(device, non_blocking=True)`` (what
training loops call anyway) finishes the work there and returns the normalised float32 tensor; ``pin_memory()``
is supported for ``DataLoader(pin_memory=True)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEVICE_STAGES = ("none", "normalize", "all")


def parse_device_stage(value) -> str:
    """``augment_on_device`` option: False/None/"none", "normalize", True/"all"."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "all"
    v = str(value).lower()
    if v not in DEVICE_STAGES:
        raise ValueError(f"augment_on_device must be one of {DEVICE_STAGES} (or a boolean), got {value!r}")
    return v


def sample_crop_boxes(n: int, height: int, width: int, gen: torch.Generator, scale=(0.2, 1.0),
                      ratio=(3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes (n x 4: x0, y0, x1, y1, pixel units) sampled for a whole batch at once.

    torchvision's rejection sampling, vectorised: ``tries`` candidates per sample, the first that fits wins,
    else a centre crop with the aspect ratio clamped into range.
    """
    s = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=gen)
    logr = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    return _crop_boxes(s, logr, torch.rand(n, 2, generator=gen), height, width, ratio)


CROP_UNIFORMS = 22  # uniforms per sample that crop_boxes_from_uniform takes (tries=10)


def crop_boxes_from_uniform(u: torch.Tensor, height: int, width: int, scale=(0.2, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """:func:`sample_crop_boxes` from given uniforms ``u`` (n x (2 tries + 2), in [0, 1)): the scale and
    log-ratio candidates, then the position; for random numbers drawn per sample rather than per batch."""
    tries = (u.shape[1] - 2) // 2
    s = scale[0] + (scale[1] - scale[0]) * u[:, :tries]
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, tries:2 * tries]
    return _crop_boxes(s, logr, u[:, 2 * tries:2 * tries + 2], height, width, ratio)


def _crop_boxes(s: torch.Tensor, logr: torch.Tensor, u: torch.Tensor, height: int, width: int,
                ratio) -> torch.Tensor:
    n = s.shape[0]
    area = float(height * width)
    s = s * area
    r = torch.exp(logr)
    w = torch.sqrt(s * r)
    h = torch.sqrt(s / r)
    ok = (w <= width) & (h <= height)
    first = torch.argmax(ok.int(), dim=1)
    rows = torch.arange(n)
    w, h = w[rows, first], h[rows, first]
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    x0 = torch.where(any_ok, u[:, 0] * (width - w), (width - w) / 2)
    y0 = torch.where(any_ok, u[:, 1] * (height - h), (height - h) / 2)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def sample_augment(n: int, height: int, width: int, gen: torch.Generator, scale=(0.2, 1.0),
                   hflip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes n x 4, flips bool n) for a batch: the only random draws of the MAE augmentation."""
    boxes = sample_crop_boxes(n, height, width, gen, scale=scale)
    flips = torch.rand(n, generator=gen) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return boxes, flips


def integer_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Float boxes (x0, y0, x1, y1) -> int64 (x0, y0, w, h) inside the image, w, h >= 1."""
    w = torch.round(boxes[:, 2] - boxes[:, 0]).clamp(1, width)
    h = torch.round(boxes[:, 3] - boxes[:, 1]).clamp(1, height)
    x0 = torch.minimum(torch.round(boxes[:, 0]).clamp_min(0), width - w)
    y0 = torch.minimum(torch.round(boxes[:, 1]).clamp_min(0), height - h)
    return torch.stack([x0, y0, w, h], dim=1).to(torch.int64)


# MAE's RandomResizedCrop(input_size, interpolation=3) and its eval Resize: bicubic (main_pretrain.py,
# main_linprobe.py, util/datasets.py of facebookresearch/mae); "bilinear" stays selectable
INTERPOLATION = "bicubic"
INTERPOLATIONS = ("bicubic", "bilinear")
# MAE's eval transform: Resize(int(size / crop_pct)) + CenterCrop(size), crop_pct = 224 / 256
CROP_PCT = 0.875


def _resize(x: torch.Tensor, out: int, mode: str = INTERPOLATION, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Antialiased resize (bicubic or bilinear) of B x C x h x w to out x out (uint8 on CPU: torch's uint8 path,
    which clamps and rounds like PIL; a float resize of uint8 data is clamped to 0..255 the same way)."""
    size = size or (out, out)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    clamp = x.dtype == torch.uint8 and x.device.type != "cpu"
    if clamp:
        x = x.float()  # CUDA has no uint8 antialias kernel
    y = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return y.clamp_(0, 255) if clamp and mode == "bicubic" else y


def resized_crop(images: torch.Tensor, boxes: torch.Tensor | None, out: int,
                 flips: torch.Tensor | None = None, mode: str = INTERPOLATION,
                 turns: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample crop (``boxes`` x0, y0, x1, y1 rounded to integers; None = whole image) + antialiased resize
    (``mode``: bicubic, MAE's, or bilinear) to ``out`` x ``out`` + optional horizontal flip + optional quarter
    turns (``turns``: 0-3 per sample, counter-clockwise, after the flip), of ``B x C x H x W`` images.

    uint8 in -> uint8 out on CPU (rounded); float in -> float out; uint8 on another device -> float out.
    """
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")
    b, c, h, w = images.shape
    if boxes is None and (flips is None or not bool(flips.any())) and (turns is None or not bool(turns.any())):
        if h == out and w == out:
            return images
        return _resize(images, out, mode)
    dtype = images.dtype if (images.device.type == "cpu" or images.dtype != torch.uint8) else torch.float32
    res = torch.empty((b, c, out, out), dtype=dtype, device=images.device)
    ib = [(0, 0, w, h)] * b if boxes is None else integer_boxes(boxes, h, w).tolist()
    fl = [False] * b if flips is None else flips.tolist()
    tu = [0] * b if turns is None else [int(t) % 4 for t in turns.tolist()]
    for i, (x0, y0, bw, bh) in enumerate(ib):
        y = _resize(images[i:i + 1, :, y0:y0 + bh, x0:x0 + bw], out, mode)
        if fl[i]:
            y = y.flip(-1)
        if tu[i]:
            y = torch.rot90(y, tu[i], dims=(-2, -1))
        res[i:i + 1].copy_(y)
    return res


def normalize(x: torch.Tensor, mean255: torch.Tensor, inv_std255: torch.Tensor) -> torch.Tensor:
    """``(x - mean255) * inv_std255`` as float32 (``mean255``/``inv_std255``: 1 x C x 1 x 1, 0..255 units)."""
    y = x.to(torch.float32, copy=True) if x.dtype != torch.float32 else x.clone()
    return y.sub_(mean255.to(y.device)).mul_(inv_std255.to(y.device))


def norm_params(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean255, inv_std255) 1 x C x 1 x 1 from stats.json's mean/std (0..1 units)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).clamp_min(1e-6).view(1, -1, 1, 1) * 255.0
    return m, 1.0 / s


def center_resize(images: torch.Tensor, out: int, crop_pct: float = CROP_PCT, mode: str = INTERPOLATION) -> torch.Tensor:
    """MAE's test transform: antialiased resize of the (square) images to ``int(out / crop_pct)``, then the
    central ``out`` x ``out`` crop (``crop_pct`` 1: a plain resize to ``out``). uint8 stays uint8 on the CPU."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
    h, w = images.shape[-2:]
    short = int(out / crop_pct)
    size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    y = _resize(images, out, mode, size=size)
    top, left = (y.shape[-2] - out) // 2, (y.shape[-1] - out) // 2
    return y[..., top:top + out, left:left + out]


def eval_batch(images_uint8: torch.Tensor, out: int, mean, std, crop_pct: float = CROP_PCT,
               mode: str = INTERPOLATION) -> torch.Tensor:
    """uint8 ``B x C x H x W`` -> the normalised float batch an encoder sees at test time (feature extraction,
    the probes' and fine-tuning's test split): :func:`center_resize` then :func:`normalize` with ``mean``/``std``
    (0..1 units, the pretraining set's)."""
    if images_uint8.ndim != 4:
        raise ValueError(f"expected images B×C×H×W, got shape {tuple(images_uint8.shape)}")
    c = images_uint8.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"images have {c} bands but mean/std have {len(mean)}/{len(std)} entries")
    m, s = norm_params(mean, std)
    return normalize(center_resize(images_uint8, out, crop_pct, mode), m, s)


def train_batch(images_uint8: torch.Tensor, out: int, mean, std, gen: torch.Generator, scale=(0.2, 1.0),
                mode: str = INTERPOLATION) -> torch.Tensor:
    """The training view with its crop boxes and flips drawn from ``gen`` for the batch (the linear probe's
    augmented features)."""
    boxes, flips = sample_augment(images_uint8.shape[0], images_uint8.shape[-2], images_uint8.shape[-1], gen,
                                  scale=tuple(scale))
    return train_view(images_uint8, out, mean, std, boxes, flips, mode)


def train_view(images_uint8: torch.Tensor, out: int, mean, std, boxes: torch.Tensor, flips: torch.Tensor,
               mode: str = INTERPOLATION) -> torch.Tensor:
    """The training view: random-resized crop ``boxes`` + horizontal ``flips`` + normalisation (the boxes and
    flips drawn by :func:`train_batch`, or per sample by :class:`geofm.data.sampler.StepSampler`)."""
    m, s = norm_params(mean, std)
    return normalize(resized_crop(images_uint8, boxes, out, flips, mode), m, s)


class DeviceBatch:
    """A uint8 batch whose remaining augmentation/normalisation runs where ``.to(device)`` sends it."""

    def __init__(self, images: torch.Tensor, out: int, mean255: torch.Tensor, inv_std255: torch.Tensor,
                 boxes: torch.Tensor | None = None, flips: torch.Tensor | None = None,
                 turns: torch.Tensor | None = None):
        self.images, self.out, self.boxes, self.flips, self.turns = images, int(out), boxes, flips, turns
        self.mean255, self.inv_std255 = mean255, inv_std255

    @property
    def shape(self):
        return (self.images.shape[0], self.images.shape[1], self.out, self.out)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pin_memory(self, device=None):
        self.images = self.images.pin_memory() if device is None else self.images.pin_memory(device)
        return self

    def to(self, device, non_blocking: bool = False) -> torch.Tensor:
        x = self.images.to(device, non_blocking=non_blocking)
        if (self.boxes is not None or self.turns is not None or x.shape[-1] != self.out
                or x.shape[-2] != self.out):
            x = resized_crop(x, self.boxes, self.out, self.flips, turns=self.turns)
        return normalize(x, self.mean255, self.inv_std255)

    def finish(self) -> torch.Tensor:
        """The float batch, computed on the CPU (tests, CPU-only runs)."""
        return self.to("cpu")
