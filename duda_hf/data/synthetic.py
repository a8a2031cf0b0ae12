"""Procedural street scenes in two visual domains, a small stand-in for GTA -> Cityscapes, written as `datasets` folders.

A scene is drawn in two stages. `street_layout` (`duda_hf/data/synthetic_layout.py`) samples the geometry (a
perspective street with buildings, vegetation, poles, vehicles and people) into a trainId label map plus a map of
"material instances"; `colour_scene` (`duda_hf/data/synthetic_appearance.py`) then colours those instances. Only the
second stage looks at the domain, so both domains share one layout distribution and differ in appearance alone:
`source` is flat-shaded and game-like, `target` is a textured, noisy dusk scene whose palette moves some classes
towards other classes' source colours. This module renders scenes (`render_scene`) and writes the benchmark and the
pretraining domain (`build_synthetic_benchmark`, `build_pretraining_domain`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from duda_hf.data.synthetic_appearance import TargetShift, colour_scene
from duda_hf.data.synthetic_layout import street_layout
from duda_hf.jsonio import write_json

# `pretrain`, the pretraining domain (a stand-in for ImageNet pretraining, docs/reproducibility.md): the same layouts
# with every material instance in a random colour, random texture, exposure, colour cast, noise and blur, so that only
# shape and context identify a class. It holds no target image or label.
DOMAINS = ("source", "target", "pretrain")

# Bump whenever the generator's output changes, so cached benchmarks get rebuilt.
_GENERATOR_VERSION = 3

# The synthetic benchmarks, name -> (folder, `scripts/make_synthetic.py` flags): the one the recipes were tuned on
# (dusk), and a second one with another shift (night: darker, noisier, more textured, colours further from the
# source) to confirm a configuration on data it was not tuned on.
SYNTHETIC_BENCHMARKS = {
    "dusk": ("data_synthetic", []),
    "night": (
        "data_synthetic_night",
        ["--seed", "7", "--colour_drift", "0.35", "--exposure", "0.4", "0.7", "--noise", "4", "8", "--texture", "0.8"],
    ),
}


def render_scene(
    rng: np.random.Generator, domain: str, *, height: int = 128, width: int = 256, shift: TargetShift | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene: `(image uint8 (H, W, 3), label uint8 (H, W) trainIds)`.

    The layout consumes `rng` identically in both domains, so generators in the same state
    yield identical labels for `source` and `target`; only the image differs.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    scene = street_layout(rng, height, width)
    look_rng = np.random.default_rng(rng.integers(2**63))  # fixed rng use, whatever the domain
    return colour_scene(scene, domain, look_rng, shift or TargetShift()), scene.label


def _png(array: np.ndarray) -> dict:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)  # noisy images: fast zlib
    return {"bytes": buf.getvalue(), "path": None}


def build_synthetic_benchmark(
    out_dir, *, num_source=600, num_target=600, num_target_val=100, height=128, width=256, seed=0, shift: TargetShift | None = None
) -> dict[str, str]:
    """Write `source`, `target` and `target_val` `datasets` folders under `out_dir`; return their paths.

    Each split has `image` (RGB) and `label` (mode "L" trainIds) Image columns and its own seed
    from `SeedSequence(seed).spawn`, so target and target_val never share scenes. Splits are
    written to temporary folders and renamed into place, and `synthetic_meta.json` is written
    last; if it matches the requested parameters the existing folders are reused untouched.
    """
    splits = {"source": ("source", num_source), "target": ("target", num_target), "target_val": ("target", num_target_val)}
    meta = {
        "version": _GENERATOR_VERSION,
        "num_source": num_source,
        "num_target": num_target,
        "num_target_val": num_target_val,
        "height": height,
        "width": width,
        "seed": seed,
    }
    if shift is not None and shift != TargetShift():  # the default benchmark keeps its meta, and so its bytes
        meta["shift"] = json.loads(json.dumps(asdict(shift)))  # as the meta file reads back (lists), so a rebuild reuses it
    return _write_splits(Path(out_dir), splits, meta, "synthetic_meta.json", height=height, width=width, seed=seed, shift=shift)


def build_pretraining_domain(out_dir, *, num_train=1200, num_val=100, height=128, width=256, seed=1000) -> dict[str, str]:
    """Write the labelled pretraining domain (`pretrain`, `pretrain_val`) under `out_dir`; return their paths.

    Random appearance on the benchmark's layouts (see `DOMAINS`), from a seed of its own: it stands in for
    ImageNet, which both networks of a real run start from, and holds nothing of the target domain.
    """
    splits = {"pretrain": ("pretrain", num_train), "pretrain_val": ("pretrain", num_val)}
    meta = {"version": _GENERATOR_VERSION, "num_train": num_train, "num_val": num_val, "height": height, "width": width, "seed": seed}
    return _write_splits(Path(out_dir), splits, meta, "pretraining_meta.json", height=height, width=width, seed=seed)


def _write_splits(
    out: Path, splits: dict[str, tuple[str, int]], meta: dict, meta_name: str, *, height: int, width: int, seed: int, shift=None
):
    """Render and save each split `name: (domain, count)` atomically; reuse them when `meta_name` matches `meta`."""
    import datasets  # heavy import; rendering alone doesn't need it

    paths = {name: str(out / name) for name in splits}
    meta_path = out / meta_name
    try:
        if json.loads(meta_path.read_text()) == meta and all(os.path.isdir(p) for p in paths.values()):
            return paths
    except (OSError, ValueError):
        pass
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # a half-rebuilt set must not look complete
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    for (name, (domain, count)), split_seed in zip(splits.items(), np.random.SeedSequence(seed).spawn(len(splits))):
        rng = np.random.default_rng(split_seed)
        scenes = [render_scene(rng, domain, height=height, width=width, shift=shift) for _ in range(count)]
        columns = {"image": [_png(img) for img, _ in scenes], "label": [_png(lbl) for _, lbl in scenes]}
        table = datasets.Dataset.from_dict(columns, features=features)
        # from_dict picks a random fingerprint; a derived one keeps the saved bytes reproducible.
        fingerprint = hashlib.sha256(json.dumps([meta, name]).encode()).hexdigest()[:16]
        dataset = datasets.Dataset(table.data, info=table.info, fingerprint=fingerprint)
        tmp = out / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.save_to_disk(str(tmp))
        shutil.rmtree(paths[name], ignore_errors=True)
        os.replace(tmp, paths[name])
    tmp_meta = out / f".{meta_name}.tmp-{os.getpid()}"
    write_json(tmp_meta, meta)
    os.replace(tmp_meta, meta_path)
    return paths
