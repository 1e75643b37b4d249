"""The evaluate stage: ``results/eval/{protocol}/{model}/{dataset}.json``.

:func:`run_evaluate` extracts frozen features of the train and test splits of a tiled classification
dataset with the pretrained encoder and with the same architecture at (seeded) random initialisation,
fits the protocol's classifier on the train features, scores the test features and writes

- ``{dataset}.json`` — ``{"protocol", "model", "dataset", "pretrained": {"top1", "top5", "per_class",
  "n_train", "n_test", ...}, "random_init": {...}, "vs_random_init": {"gain", "only_pretrained_right",
  "only_random_init_right", "both_right", "both_wrong", "mcnemar_p"}, "checkpoint_step", "config": {evaluate
  section}, "settings": {resolved values}}``; ``vs_random_init`` compares the two image by image on the same
  test images (McNemar's exact test: :func:`geofm.eval.metrics.mcnemar_exact_p`), so a gain of a few test
  images reads as what it is,
- ``{dataset}.confusion.csv`` / ``{dataset}.confusion.png`` — the pretrained encoder's test confusion matrix,

all atomically, beside each other.

Config: the ``evaluate`` section (its keys and defaults live in ``geofm/config.schema.yaml`` only; the
default is MAE's linear probe, He et al. 2022 appendix A.2 / facebookresearch/mae ``main_linprobe.py``):
``pool`` (cls | mean), ``linprobe_*`` (solver lars | sgd | logreg, base lr x batch/256, epochs, warm-up, batch,
``linprobe_augment``: a new random-resized crop + flip of every training image per batch through the frozen
encoder, else cached features of the test transform), ``crop_pct`` (test images resized to
``image_size / crop_pct`` then centre-cropped), ``logreg_l2`` (a penalty, or a list to choose from by
``logreg_cv_folds``-fold cross-validation on the training features), ``batch_size`` (images per encoder forward),
``knn_k`` / ``knn_temperature``, ``image_size`` and ``device`` (by default the top-level ones),
``feature_cache`` (features under ``{results}/eval/features/``), ``shard_encoder`` (with >1 rank, shard the
frozen encoder with FSDP2 instead of a copy per rank). :func:`run_evaluate` completes a hand-built section with
the same defaults (:func:`geofm.config.complete_section`).

Inputs are normalised with the pretraining set's statistics (``encoder.pt`` meta ``norm``), through the one
preprocessing path of :mod:`geofm.data.augment`. With ``train_ratio`` (a dataset's ``train_ratios`` in the
config; output ``{dataset}.tr<percent>.json``) the labelled tiles are re-split, stratified and seeded, at that
ratio; otherwise the tiles' own split is used.

``finetune`` (see :mod:`geofm.eval.finetune`): the ``finetune_*`` keys, ``layer_decay``, ``drop_path``,
``label_smoothing`` and ``mixup`` (:data:`geofm.eval.finetune.EVALUATE_KEYS` maps them onto
:class:`~geofm.eval.finetune.FinetuneConfig`). The pretrained encoder and its random-init twin are both
fine-tuned with the same settings and seed.

Several processes (torchrun / srun, detected by :func:`geofm.distributed.launch.detect`): the process
group is initialised here if needed, features are extracted by all ranks (each its slice, all-gathered),
fine-tuning runs under FSDP2, every rank fits the (deterministic) classifier, and rank 0 alone writes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geofm.common.precision import bf16_autocast
from geofm.eval.features import cache_file, cache_key, extract_features
from geofm.eval.knn import knn_scores
from geofm.eval.linprobe import fit_logreg, fit_logreg_cv, predict_scores, train_linear_probe
from geofm.config import digest, rule_params
from geofm.eval.metrics import paired_top1, summarize
from geofm.models.registry import POOLING
from geofm.provenance import provenance

PROTOCOLS = ("linprobe", "knn", "finetune")


class EvalError(Exception):
    """An evaluation input the user must fix (missing/mismatched checkpoint, empty split, ...)."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 N×C×S×S
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    mean: list[float]
    std: list[float]


def load_split(tiles_dir: Path, split: str | None) -> Split:
    """The labelled tiles of one split (``None``: every split) of a tiled dataset through the data stage's
    ``TileDataset`` (unlabelled tiles, label -1, e.g. MillionAID's flat test folder, are left out)."""
    from geofm.data.shards import TileDataset

    ds = TileDataset(tiles_dir, split=split)
    stats = ds.stats
    keep = np.nonzero(np.asarray(ds.labels) >= 0)[0]
    return Split(images=torch.as_tensor(ds.get_batch(keep)), labels=np.array(ds.labels[keep], dtype=np.int64),
                 classes=[str(c) for c in ds.classes], mean=[float(v) for v in stats["mean"]],
                 std=[float(v) for v in stats["std"]])


def ratio_tag(train_ratio: float) -> str:
    """``0.2`` -> ``"tr20"``: the suffix of an evaluation at that train ratio (``{dataset}.tr20.json``)."""
    pct = round(float(train_ratio) * 100, 6)
    return f"tr{int(pct)}" if pct == int(pct) else f"tr{pct:g}".replace(".", "p")


def resplit(tiles_dir: Path, train_ratio: float, seed: int, dataset: str) -> tuple[Split, Split]:
    """Train and test splits of the labelled tiles at ``train_ratio`` (stratified, seeded by dataset and ratio;
    the literature's protocol: a random ``train_ratio`` of each class trains, the rest tests)."""
    from geofm.data.tiling import split_rng, stratified_split

    if not 0 < float(train_ratio) < 1:
        raise EvalError(f"train ratio must lie in (0, 1), got {train_ratio}")
    every = load_split(tiles_dir, None)
    sp = stratified_split(every.labels, float(train_ratio), 0.0, split_rng(seed, dataset, "ratio", float(train_ratio)))
    out = []
    for name in ("train", "test"):
        idx = np.nonzero(sp == name)[0]
        out.append(Split(every.images[torch.as_tensor(idx)], every.labels[idx], every.classes, every.mean, every.std))
    return out[0], out[1]


def normalisation(cfg: dict, meta: dict, train: Split) -> tuple[list[float], list[float], str]:
    """The statistics an encoder's inputs are normalised with: the pretraining set's (carried in ``encoder.pt``,
    else the pretraining dataset's ``stats.json``), as in pretraining; the evaluated dataset's own only when
    neither exists (a synthetic-data encoder)."""
    norm = meta.get("norm") or {}
    if norm.get("mean") and norm.get("std"):
        return list(norm["mean"]), list(norm["std"]), f"pretraining set ({norm.get('tiles', 'encoder.pt')})"
    pre = cfg.get("pretrain_dataset")  # a hand-built config (tests) may name none
    stats = Path(cfg["results"]) / "tiles" / str(pre) / "stats.json"
    if pre and stats.is_file():
        from geofm.data.shards import read_stats

        st = read_stats(stats.parent)
        if len(st["mean"]) == len(train.mean):
            return [float(v) for v in st["mean"]], [float(v) for v in st["std"]], f"pretraining set ({stats.parent})"
    return train.mean, train.std, "evaluated dataset"


def load_encoder(path):
    from geofm.models import load_encoder as _load

    return _load(path)


def build_encoder(name: str, image_size: int, in_chans: int, seed: int = 0):
    from geofm.models import build_encoder as _build

    return _build(name, image_size, in_chans, seed=seed)


def _resolve_image_size(ev: dict, meta: dict, path: Path) -> int:
    size = int(ev["image_size"])  # evaluate.image_size, by default the top-level image_size
    trained = meta.get("image_size")
    if trained is not None and int(trained) != size:
        raise EvalError(f"encoder {path} was pretrained at image_size {trained} but evaluation asks for "
                        f"{size}; set evaluate.image_size to {trained} (position embeddings are fixed)")
    return size


def _classifier_scores(protocol: str, ev: dict, tr_f, tr_y, te_f, n_classes: int, seed: int,
                       features_of=None) -> tuple[np.ndarray, dict]:
    """Fit the protocol's classifier on the training features (or, for MAE's augmented linear probe, on
    ``features_of(idx, epoch, batch)``: a new augmented view of each batch) and score the test features.
    Returns the scores and the settings used; settings chosen for this encoder alone (the cross-validated
    logreg penalty) under ``"per_encoder"``, which the caller moves into the encoder's own record."""
    if protocol == "knn":
        k, t = int(ev["knn_k"]), float(ev["knn_temperature"])
        scores = knn_scores(tr_f, tr_y, te_f, n_classes, k=k, temperature=t)
        return scores.numpy(), {"knn_k": k, "knn_temperature": t}
    solver = str(ev["linprobe_solver"]).lower()
    if solver == "logreg":
        if isinstance(ev["logreg_l2"], (list, tuple)):
            head, chosen = fit_logreg_cv(tr_f, tr_y, n_classes, ev["logreg_l2"],
                                         folds=int(ev["logreg_cv_folds"]), seed=seed)
            # the penalty is chosen per encoder: it goes in the encoder's own record ("per_encoder")
            return predict_scores(head, te_f).numpy(), {
                "linprobe_solver": solver, "logreg_l2_grid": sorted({float(v) for v in ev["logreg_l2"]}),
                "logreg_cv_folds": chosen["logreg_cv_folds"],
                "per_encoder": {"logreg_l2": chosen["logreg_l2"], "logreg_cv_top1": chosen["logreg_cv_top1"]}}
        l2 = float(ev["logreg_l2"])
        head = fit_logreg(tr_f, tr_y, n_classes, l2=l2)
        return predict_scores(head, te_f).numpy(), {"linprobe_solver": solver, "logreg_l2": l2}
    epochs = int(ev["linprobe_epochs"])
    bs = min(int(ev["linprobe_batch_size"]), len(tr_y))
    base_lr = float(ev["linprobe_lr"])
    wd = float(ev["linprobe_weight_decay"])
    warm = ev["linprobe_warmup_epochs"]
    kw = {"features_of": features_of, "dim": te_f.shape[1]} if features_of is not None else {}
    head = train_linear_probe(None if features_of is not None else tr_f, tr_y, n_classes, epochs=epochs,
                              batch_size=bs, base_lr=base_lr, weight_decay=wd,
                              warmup_epochs=None if warm is None else float(warm), optimizer=solver, seed=seed, **kw)
    return predict_scores(head, te_f).numpy(), {
        "linprobe_solver": solver, "linprobe_epochs": epochs, "linprobe_batch_size": bs, "linprobe_lr": base_lr,
        "linprobe_abs_lr": base_lr * bs / 256, "linprobe_weight_decay": wd,
        "linprobe_warmup_epochs": None if warm is None else float(warm),
        "linprobe_augment": features_of is not None,
        **({"linprobe_crop_scale": list(ev["linprobe_crop_scale"]), "linprobe_views": ev["linprobe_views"]}
           if features_of is not None else {})}


def _augmented_features(encoder, images, mean, std, image_size: int, chunk: int, device, pool: str, scale,
                        seed: int, precision: str = "fp32", views: int | None = None):
    """``features_of(idx, epoch, batch)`` for MAE's linear probe: each call draws a new random-resized crop
    (bicubic, ``scale``) + flip of the images ``idx`` (:func:`geofm.data.augment.train_batch`, the training view
    of the one preprocessing path) and runs the frozen encoder on them in chunks of ``chunk`` images, so a probe
    batch of any size fits. Every rank computes the same (seeded) features.

    With ``views`` = V the encoder sees every training image V times in all instead of once per epoch: view v
    (one seeded crop + flip of each image) is computed, whole, the first time an epoch ``e`` with ``e mod V = v``
    needs it and kept in memory (V x images x width floats); the probe's batches index into it. V >= epochs
    gives every epoch a view of its own, as MAE does (facebookresearch/mae ``main_linprobe.py``: the training
    dataset's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` transform runs per image each time the loader
    reads it, i.e. once per epoch)."""
    from geofm.data.augment import train_batch
    from geofm.common.seeding import torch_generator

    def forward(x):
        return encoder.forward_features(x) if pool == "mean" else encoder.forward_features(x, pool=pool)

    @torch.no_grad()
    def encode(idx, gen) -> torch.Tensor:
        was = encoder.training
        encoder.eval()
        out = []
        try:
            for i in range(0, len(idx), chunk):
                x = train_batch(images[idx[i:i + chunk]], image_size, mean, std, gen, scale)
                x = x.to(device)
                with bf16_autocast(torch.device(device).type, precision == "bf16"):
                    out.append(forward(x).float().cpu())
        finally:
            encoder.train(was)
        return torch.cat(out)

    cached: dict[int, torch.Tensor] = {}

    def features_of(idx, epoch: int, batch: int) -> torch.Tensor:
        if views is None:
            return encode(idx, torch_generator(int(seed), 5, int(epoch), int(batch)))
        v = int(epoch) % int(views)
        if v not in cached:
            cached[v] = encode(torch.arange(len(images)), torch_generator(int(seed), 5, "view", v))
        return cached[v][torch.as_tensor(idx)]

    return features_of


def finetune_config(ev: dict, seed: int):
    """The :class:`~geofm.eval.finetune.FinetuneConfig` of a (filled) ``evaluate`` config section."""
    from geofm.eval.finetune import FinetuneConfig

    return FinetuneConfig.from_evaluate(ev, seed)


def _check_splits(train: Split, test: Split, tiles_dir: Path, in_chans: int, enc_path: Path) -> None:
    if len(train.labels) == 0:
        raise EvalError(f"dataset {tiles_dir} has no tiles in split 'train'")
    if len(test.labels) == 0:
        raise EvalError(f"dataset {tiles_dir} has no tiles in split 'test'")
    if train.classes != test.classes:
        raise EvalError(f"train and test splits of {tiles_dir} list different classes")
    c = train.images.shape[1]
    if c != in_chans:
        raise EvalError(f"dataset {tiles_dir} has {c} bands but encoder {enc_path} expects {in_chans}")


def run_evaluate(cfg: dict, protocol: str, model: str, dataset: str, encoder_path, out_json,
                 train_ratio: float | None = None) -> dict:
    """Evaluate ``model``'s pretrained encoder and its random-init twin on ``dataset``; returns the record
    written to ``out_json`` (see the module docstring). ``train_ratio``: re-split the labelled tiles at that
    ratio (stratified, seeded) instead of using the tiles' own train/test split."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    encoder_path, out_json = Path(encoder_path), Path(out_json)
    if not encoder_path.is_file():
        raise FileNotFoundError(f"encoder checkpoint {encoder_path} does not exist (run pretraining for "
                                f"model {model!r} first)")
    from geofm.config import complete_section

    ev = complete_section(cfg, "evaluate")  # as loaded: the schema's defaults (a hand-built cfg gets them here)
    pool = str(ev["pool"])
    if pool not in ("mean", "cls"):
        raise EvalError(f"evaluate.pool must be 'mean' or 'cls', got {pool!r}")
    device = ev["device"]  # evaluate.device, by default the top-level device
    import torch.distributed as dist

    from geofm.distributed import launch

    started_pg = False
    if launch.detect().world_size > 1 and not dist.is_initialized():
        _, dev = launch.init(device)
        device, started_pg = dev, True
    try:
        return _run_evaluate(cfg, ev, protocol, model, dataset, encoder_path, out_json, pool, device, train_ratio)
    finally:
        if started_pg:
            launch.shutdown()


def _run_evaluate(cfg, ev, protocol, model, dataset, encoder_path, out_json, pool, device, train_ratio=None) -> dict:
    seed = int(cfg["seed"])
    results = Path(cfg["results"])
    tiles_dir = results / "tiles" / dataset

    encoder, meta = load_encoder(encoder_path)
    if meta.get("model") != model:
        raise EvalError(f"encoder checkpoint {encoder_path} holds model {meta.get('model')!r}, "
                        f"not the requested {model!r}")
    image_size = _resolve_image_size(ev, meta, encoder_path)
    in_chans = int(meta.get("in_chans", 3))
    step = meta.get("step")

    if train_ratio is None:
        train, test = load_split(tiles_dir, "train"), load_split(tiles_dir, "test")
        feat_ds = dataset
    else:
        train, test = resplit(tiles_dir, train_ratio, seed, dataset)
        feat_ds = f"{dataset}.{ratio_tag(train_ratio)}"
    _check_splits(train, test, tiles_dir, in_chans, encoder_path)
    mean, std, norm_src = normalisation(cfg, meta, train)
    crop_pct = float(ev["crop_pct"])
    classes = train.classes
    n_classes = len(classes)
    bs = int(ev["batch_size"])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    use_cache = bool(ev["feature_cache"])
    cache_dir = results / "eval" / "features"
    st = encoder_path.stat()
    stats_file = tiles_dir / "stats.json"
    fprec = str(ev["feature_precision"])
    tiles_id = {"image_size": image_size, "pool": pool, "pooling": POOLING[pool], "crop_pct": crop_pct,
                "norm": [mean, std], "train_ratio": train_ratio, "precision": fprec,
                "tiles_mtime_ns": stats_file.stat().st_mtime_ns if stats_file.exists() else None}
    fingerprints = {  # cached features are reused only for the same encoder file and the same tiles
        "pretrained": (step, {**tiles_id, "encoder_bytes": st.st_size, "encoder_mtime_ns": st.st_mtime_ns}),
        "random_init": (f"init-seed{seed}", tiles_id),
    }

    from geofm.common.ranks import rank_world
    from geofm.eval.features import shard_encoder

    rank, world = rank_world()
    shard = bool(ev["shard_encoder"]) and world > 1
    record: dict = {"protocol": protocol, "model": model, "dataset": dataset}
    confusion = None
    for which in ("pretrained", "random_init"):
        t0 = time.perf_counter()
        enc = encoder if which == "pretrained" else build_encoder(model, image_size, in_chans, seed=seed)
        extra_rec: dict = {}
        if protocol == "finetune":
            from geofm.eval.finetune import finetune

            fcfg = finetune_config(ev, seed)
            clf, history = finetune(enc, train.images, train.labels, n_classes, mean, std, image_size,
                                    fcfg, device=device)
            # logits of the test split, through the same (rank-split) path as the features
            scores = extract_features(clf, test.images, mean, std, image_size, bs, device=device,
                                      crop_pct=crop_pct, precision=fcfg.precision).numpy()
            used = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(fcfg).items()}
            extra_rec = {"train_history": history[-1:] if history else [],
                         "feature_dim": int(getattr(enc, "width", 0))}
            del clf
        else:
            fstep, extra = fingerprints[which]
            runner = shard_encoder(enc, device, pool, precision=fprec) if shard else enc
            run_pool = "mean" if shard else pool
            run_prec = "fp32" if shard else fprec
            augmented = (protocol == "linprobe" and bool(ev["linprobe_augment"])
                         and str(ev["linprobe_solver"]).lower() != "logreg")
            feats = {}
            for name, sp in ((("test", test),) if augmented else (("train", train), ("test", test))):
                key = cache_key(model, fstep, feat_ds, name, **extra)
                feats[name] = extract_features(
                    runner, sp.images, mean, std, image_size, bs, device=device,
                    cache_path=cache_file(cache_dir, key) if use_cache else None, cache_key=key,
                    pool=run_pool, crop_pct=crop_pct, precision=run_prec)
            features_of = _augmented_features(runner, train.images, mean, std, image_size, bs, device, run_pool,
                                              ev["linprobe_crop_scale"], seed, precision=run_prec,
                                              views=ev["linprobe_views"]) if augmented else None
            scores, used = _classifier_scores(protocol, ev, feats.get("train"), torch.as_tensor(train.labels),
                                              feats["test"], n_classes, seed, features_of)
            del runner, features_of
            extra_rec = {"feature_dim": int(feats["test"].shape[1]), **used.pop("per_encoder", {})}
        del enc
        summary = summarize(scores, test.labels, classes)
        cm = summary.pop("confusion")
        if which == "pretrained":
            confusion, pretrained_scores = cm, scores
        else:  # image by image against the pretrained encoder: is the gain more than the test set's noise?
            pair = paired_top1(pretrained_scores, scores, test.labels)
            vs_random = {
                "gain": pair["gain"], "only_pretrained_right": pair["a_only"],
                "only_random_init_right": pair["b_only"], "both_right": pair["both_right"],
                "both_wrong": pair["both_wrong"], "mcnemar_p": pair["mcnemar_p"]}
        record[which] = {**summary, "n_train": int(len(train.labels)), "n_test": int(len(test.labels)),
                         **extra_rec, "seconds": round(time.perf_counter() - t0, 3)}
    record["vs_random_init"] = vs_random
    record["checkpoint_step"] = step
    record["train_ratio"] = train_ratio
    record["config"] = ev
    record["encoder_fingerprint"] = meta.get("fingerprint")  # the pretraining run's (geofm.train.fingerprint)
    record["provenance"] = provenance(digest(rule_params(cfg, "evaluate", protocol=protocol, model=model,
                                                         dataset=dataset, train_ratio=train_ratio)))
    record["settings"] = {"image_size": image_size, "in_chans": in_chans, "seed": seed, "device": str(device),
                          "pool": pool, "world_size": world, "feature_precision": fprec, "classes": classes,
                          "crop_pct": crop_pct,
                          "normalisation": {"mean": mean, "std": std, "from": norm_src},
                          "split": ("the tiles' own split" if train_ratio is None else
                                    f"stratified, seeded: {train_ratio:.0%} of each class trains, the rest tests"),
                          **used}
    if rank != 0:  # rank 0 writes; the others return the same record
        return record

    from geofm.plots.confusion import write_confusion
    from geofm.common.io import write_json

    stem = out_json.name[:-len(".json")] if out_json.name.endswith(".json") else out_json.stem
    write_confusion(np.asarray(confusion), classes, out_json.with_name(f"{stem}.confusion.csv"),
                    out_json.with_name(f"{stem}.confusion.png"),
                    title=f"{model} · {protocol} · {dataset} (top-1 {record['pretrained']['top1']:.3f})")
    write_json(out_json, record)  # last: the rule's main output appears only when all else is there
    return record

