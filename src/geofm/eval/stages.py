"""The evaluate stage: ``results/eval/{protocol}/{model}/{dataset}.json``.

:func:`run_evaluate` extracts frozen features of the train and test splits of a tiled classification
dataset with the pretrained encoder and with the same architecture at (seeded) random initialisation,
fits the protocol's classifier on the train features, scores the test features and writes

- ``{dataset}.json`` — ``{"protocol", "model", "dataset", "pretrained": {"top1", "top5", "per_class",
  "n_train", "n_test", ...}, "random_init": {...}, "checkpoint_step", "config": {evaluate section},
  "settings": {resolved values}}``,
- ``{dataset}.confusion.csv`` / ``{dataset}.confusion.png`` — the pretrained encoder's test confusion matrix,

all atomically, beside each other.

Config (``cfg["evaluate"]``; defaults in brackets): ``linprobe_epochs`` [90], ``linprobe_lr`` (base lr,
scaled by batch/256 as in MAE) [0.1], ``linprobe_solver`` (sgd | lars | logreg) [sgd],
``linprobe_weight_decay`` [0], ``linprobe_warmup_epochs`` [10 % of epochs], ``logreg_l2`` [1e-4],
``batch_size`` [256], ``knn_k`` [20], ``knn_temperature`` [0.07], ``image_size`` [top-level
``image_size``, else the encoder's], ``device`` [top-level ``device``; ``auto`` = cuda if available],
``feature_cache`` [true: features under ``{results}/eval/features/``].
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from geofm.eval.features import cache_file, cache_key, extract_features
from geofm.eval.knn import knn_scores
from geofm.eval.linprobe import fit_logreg, predict_scores, train_linear_probe
from geofm.eval.metrics import summarize

PROTOCOLS = ("linprobe", "knn", "finetune")
IMPLEMENTED = ("linprobe", "knn")


class EvalError(Exception):
    """An evaluation input the user must fix (missing/mismatched checkpoint, empty split, ...)."""


@dataclass
class Split:
    images: torch.Tensor  # uint8 N×C×S×S
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    mean: list[float]
    std: list[float]


def load_split(tiles_dir: Path, split: str) -> Split:
    """One split of a tiled dataset through the data stage's ``TileDataset``."""
    from geofm.data.shards import TileDataset

    ds = TileDataset(tiles_dir, split=split)
    stats = ds.stats
    return Split(images=torch.as_tensor(ds.as_tensor()), labels=np.array(ds.labels, dtype=np.int64),
                 classes=[str(c) for c in ds.classes], mean=[float(v) for v in stats["mean"]],
                 std=[float(v) for v in stats["std"]])


def load_encoder(path):
    from geofm.models import load_encoder as _load

    return _load(path)


def build_encoder(name: str, image_size: int, in_chans: int, seed: int = 0):
    from geofm.models import build_encoder as _build

    return _build(name, image_size, in_chans, seed=seed)


def _resolve_image_size(cfg: dict, ev: dict, meta: dict, path: Path) -> int:
    size = ev.get("image_size") or cfg.get("image_size") or meta.get("image_size")
    if size is None:
        raise EvalError(f"no image_size in config evaluate/top level nor in the meta of {path}")
    size = int(size)
    trained = meta.get("image_size")
    if trained is not None and int(trained) != size:
        raise EvalError(f"encoder {path} was pretrained at image_size {trained} but evaluation asks for "
                        f"{size}; set evaluate.image_size to {trained} (position embeddings are fixed)")
    return size


def _classifier_scores(protocol: str, ev: dict, tr_f, tr_y, te_f, n_classes: int, seed: int) -> tuple[np.ndarray, dict]:
    if protocol == "knn":
        k, t = int(ev.get("knn_k", 20)), float(ev.get("knn_temperature", 0.07))
        scores = knn_scores(tr_f, tr_y, te_f, n_classes, k=k, temperature=t)
        return scores.numpy(), {"knn_k": k, "knn_temperature": t}
    solver = str(ev.get("linprobe_solver", "sgd")).lower()
    if solver == "logreg":
        l2 = float(ev.get("logreg_l2", 1e-4))
        head = fit_logreg(tr_f, tr_y, n_classes, l2=l2)
        return predict_scores(head, te_f).numpy(), {"linprobe_solver": solver, "logreg_l2": l2}
    epochs = int(ev.get("linprobe_epochs", 90))
    bs = int(ev.get("batch_size", 256))
    base_lr = float(ev.get("linprobe_lr", 0.1))
    wd = float(ev.get("linprobe_weight_decay", 0.0))
    warm = ev.get("linprobe_warmup_epochs")
    head = train_linear_probe(tr_f, tr_y, n_classes, epochs=epochs, batch_size=bs, base_lr=base_lr,
                              weight_decay=wd, warmup_epochs=None if warm is None else float(warm),
                              optimizer=solver, seed=seed)
    return predict_scores(head, te_f).numpy(), {
        "linprobe_solver": solver, "linprobe_epochs": epochs, "batch_size": bs, "linprobe_lr": base_lr,
        "linprobe_weight_decay": wd}


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


def run_evaluate(cfg: dict, protocol: str, model: str, dataset: str, encoder_path, out_json) -> dict:
    """Evaluate ``model``'s pretrained encoder and its random-init twin on ``dataset``; returns the record
    written to ``out_json`` (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if protocol not in IMPLEMENTED:
        raise NotImplementedError(
            f"evaluation protocol {protocol!r} is not implemented yet; use one of {', '.join(IMPLEMENTED)} "
            "(remove it from evaluate.protocols in the config)")
    encoder_path, out_json = Path(encoder_path), Path(out_json)
    if not encoder_path.is_file():
        raise FileNotFoundError(f"encoder checkpoint {encoder_path} does not exist (run pretraining for "
                                f"model {model!r} first)")
    ev = dict(cfg.get("evaluate") or {})
    seed = int(cfg.get("seed", 0))
    results = Path(cfg.get("results", "results"))
    tiles_dir = results / "tiles" / dataset

    encoder, meta = load_encoder(encoder_path)
    if meta.get("model") != model:
        raise EvalError(f"encoder checkpoint {encoder_path} holds model {meta.get('model')!r}, "
                        f"not the requested {model!r}")
    image_size = _resolve_image_size(cfg, ev, meta, encoder_path)
    in_chans = int(meta.get("in_chans", 3))
    step = meta.get("step")

    train, test = load_split(tiles_dir, "train"), load_split(tiles_dir, "test")
    _check_splits(train, test, tiles_dir, in_chans, encoder_path)
    classes = train.classes
    n_classes = len(classes)
    bs = int(ev.get("batch_size", 256))
    device = ev.get("device") or cfg.get("device") or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    use_cache = bool(ev.get("feature_cache", True))
    cache_dir = results / "eval" / "features"
    st = encoder_path.stat()
    stats_file = tiles_dir / "stats.json"
    tiles_id = {"image_size": image_size,
                "tiles_mtime_ns": stats_file.stat().st_mtime_ns if stats_file.exists() else None}
    fingerprints = {  # cached features are reused only for the same encoder file and the same tiles
        "pretrained": (step, {**tiles_id, "encoder_bytes": st.st_size, "encoder_mtime_ns": st.st_mtime_ns}),
        "random_init": (f"init-seed{seed}", tiles_id),
    }

    record: dict = {"protocol": protocol, "model": model, "dataset": dataset}
    confusion = None
    for which in ("pretrained", "random_init"):
        t0 = time.perf_counter()
        enc = encoder if which == "pretrained" else build_encoder(model, image_size, in_chans, seed=seed)
        fstep, extra = fingerprints[which]
        feats = {}
        for name, sp in (("train", train), ("test", test)):
            key = cache_key(model, fstep, dataset, name, **extra)
            feats[name] = extract_features(
                enc, sp.images, train.mean, train.std, image_size, bs, device=device,
                cache_path=cache_file(cache_dir, key) if use_cache else None, cache_key=key)
        del enc
        scores, used = _classifier_scores(protocol, ev, feats["train"], torch.as_tensor(train.labels),
                                          feats["test"], n_classes, seed)
        summary = summarize(scores, test.labels, classes)
        cm = summary.pop("confusion")
        if which == "pretrained":
            confusion = cm
        record[which] = {**summary, "n_train": int(len(train.labels)), "n_test": int(len(test.labels)),
                         "feature_dim": int(feats["train"].shape[1]),
                         "seconds": round(time.perf_counter() - t0, 3)}
    record["checkpoint_step"] = step
    record["config"] = ev
    record["settings"] = {"image_size": image_size, "in_chans": in_chans, "seed": seed, "device": str(device),
                          "classes": classes, **used}

    from geofm.plots.confusion import write_confusion
    from geofm.plots.io import write_json

    stem = out_json.name[:-len(".json")] if out_json.name.endswith(".json") else out_json.stem
    write_confusion(np.asarray(confusion), classes, out_json.with_name(f"{stem}.confusion.csv"),
                    out_json.with_name(f"{stem}.confusion.png"),
                    title=f"{model} · {protocol} · {dataset} (top-1 {record['pretrained']['top1']:.3f})")
    write_json(out_json, record)  # last: the rule's main output appears only when all else is there
    return record


def confusion_paths(out_json) -> Sequence[Path]:
    """The side outputs of :func:`run_evaluate` for a given JSON path."""
    out_json = Path(out_json)
    stem = out_json.name[:-len(".json")] if out_json.name.endswith(".json") else out_json.stem
    return out_json.with_name(f"{stem}.confusion.csv"), out_json.with_name(f"{stem}.confusion.png")
