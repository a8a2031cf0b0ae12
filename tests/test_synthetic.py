"""Tests for the procedural two-domain street-scene benchmark."""

from __future__ import annotations

import os

import datasets
import numpy as np
import pytest

from duda_hf.data import synthetic_layout
from duda_hf.data.labels import CITYSCAPES_CLASSES
from duda_hf.data.synthetic import DOMAINS, TargetShift, build_synthetic_benchmark, render_scene

from .conftest import load_strict_json

VALID_IDS = set(range(19)) | {255}
TINY = {"num_source": 8, "num_target": 8, "num_target_val": 4, "height": 64, "width": 128}


def scenes(domain, seed, n, **size):
    rng = np.random.default_rng(seed)
    return [render_scene(rng, domain, **size) for _ in range(n)]


def test_class_constants_follow_cityscapes_train_ids():
    for train_id, name in enumerate(CITYSCAPES_CLASSES):
        assert getattr(synthetic_layout, name.upper().replace(" ", "_")) == train_id


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("size", [(128, 256), (64, 128)])
def test_render_scene_shapes_and_dtypes(domain, size):
    image, label = render_scene(np.random.default_rng(0), domain, height=size[0], width=size[1])
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert label.shape == size and label.dtype == np.uint8


@pytest.mark.parametrize("domain", DOMAINS)
def test_labels_contain_only_train_ids(domain):
    for _, label in scenes(domain, 1, 30) + scenes(domain, 2, 30, height=64, width=128):
        assert set(np.unique(label).tolist()) <= VALID_IDS


def test_unknown_domain_is_rejected():
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), "cityscapes")


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_scene_and_different_seed_different_scene(domain):
    (img_a, lbl_a), (img_b, lbl_b) = scenes(domain, 5, 1) + scenes(domain, 5, 1)
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(lbl_a, lbl_b)
    img_c, lbl_c = scenes(domain, 6, 1)[0]
    assert not np.array_equal(lbl_a, lbl_c) and not np.array_equal(img_a, img_c)


def test_domains_share_layout_but_not_appearance():
    for seed in range(10):
        src_img, src_lbl = render_scene(np.random.default_rng(seed), "source")
        tgt_img, tgt_lbl = render_scene(np.random.default_rng(seed), "target")
        np.testing.assert_array_equal(src_lbl, tgt_lbl)
        assert np.abs(src_img.astype(int) - tgt_img.astype(int)).mean() > 20


def test_class_frequencies_are_street_like():
    counts = np.zeros(256)
    for _, label in scenes("source", 3, 60):
        counts += np.bincount(label.ravel(), minlength=256)
    freq = counts / counts.sum()
    assert freq[[0, 2, 10]].sum() > 0.5  # road, building, sky dominate
    for rare in (5, 6, 7, 11):  # pole, traffic light, traffic sign, person: present but rare
        assert 0 < freq[rare] < 0.02
    assert (freq[:19] > 0).sum() >= 16


def test_road_colour_differs_between_domains():
    means = {}
    for domain in DOMAINS:
        pixels = [img[lbl == 0] for img, lbl in scenes(domain, 4, 20)]
        means[domain] = np.concatenate(pixels).astype(float).mean(0)
    # A clear shift (about 35 of 255 in RGB distance at the calibrated 0.25 colour drift, plus dusk lighting).
    assert np.linalg.norm(means["source"] - means["target"]) > 25


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, build_synthetic_benchmark(out, seed=0, **TINY)


def test_build_writes_loadable_splits(tiny_benchmark):
    out, paths = tiny_benchmark
    assert set(paths) == {"source", "target", "target_val"}
    expected = {"source": 8, "target": 8, "target_val": 4}
    for split, path in paths.items():
        assert path == str(out / split)
        ds = datasets.load_from_disk(path)
        assert len(ds) == expected[split]
        assert set(ds.column_names) == {"image", "label"}
        row = ds[0]
        assert row["image"].mode == "RGB" and row["image"].size == (128, 64)
        assert row["label"].mode == "L" and row["label"].size == (128, 64)
        assert set(np.unique(np.asarray(row["label"])).tolist()) <= VALID_IDS
    assert not [name for name in os.listdir(out) if "tmp" in name]  # no leftover temp folders
    assert load_strict_json(out / "synthetic_meta.json")["num_target_val"] == 4


def test_splits_do_not_share_scenes(tiny_benchmark):
    _, paths = tiny_benchmark
    target = datasets.load_from_disk(paths["target"])
    target_val = datasets.load_from_disk(paths["target_val"])
    labels = {np.asarray(row["label"]).tobytes() for row in target}
    assert not labels & {np.asarray(row["label"]).tobytes() for row in target_val}


def test_second_build_is_a_silent_no_op(tiny_benchmark, capsys):
    out, paths = tiny_benchmark
    before = {p: os.stat(p).st_mtime_ns for p in [*paths.values(), out / "synthetic_meta.json"]}
    assert build_synthetic_benchmark(out, seed=0, **TINY) == paths
    assert {p: os.stat(p).st_mtime_ns for p in before} == before
    assert capsys.readouterr() == ("", "")


def test_build_is_byte_deterministic_and_rebuilds_on_new_parameters(tmp_path):
    def snapshot(root):
        return {
            os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read() for d, _, files in os.walk(root) for f in files
        }

    build_synthetic_benchmark(tmp_path / "a", seed=1, **TINY)
    build_synthetic_benchmark(tmp_path / "b", seed=1, **TINY)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")

    build_synthetic_benchmark(tmp_path / "b", seed=2, **TINY)  # parameters changed -> rebuilt
    first = lambda root: np.asarray(datasets.load_from_disk(str(root / "source"))[0]["label"])
    assert not np.array_equal(first(tmp_path / "a"), first(tmp_path / "b"))


def test_another_shift_changes_the_target_images_only_and_is_recorded(tmp_path):
    """A second benchmark (`TargetShift`, `duda-make-synthetic --colour_drift ...`): same layouts and source images,
    other target images; the default shift leaves the benchmark's meta, and so its bytes, as they were."""
    import hashlib

    night = TargetShift(colour_drift=0.35, exposure=(0.4, 0.7), noise=(4.0, 8.0), texture=0.8)
    default = render_scene(np.random.default_rng(3), "target")
    # the default shift is the benchmark's as it was before the shift became a parameter (hash of that code's image)
    assert hashlib.sha256(default[0].tobytes()).hexdigest()[:16] == "410c5f50bad6bc76"
    image, label = render_scene(np.random.default_rng(3), "target", shift=night)
    assert np.array_equal(label, default[1]) and not np.array_equal(image, default[0])
    assert image.mean() < default[0].mean()  # a darker exposure
    source = render_scene(np.random.default_rng(3), "source")
    assert np.array_equal(source[0], render_scene(np.random.default_rng(3), "source", shift=night)[0])

    build_synthetic_benchmark(tmp_path / "default", seed=1, shift=TargetShift(), **TINY)
    assert "shift" not in load_strict_json(tmp_path / "default" / "synthetic_meta.json")
    build_synthetic_benchmark(tmp_path / "night", seed=1, shift=night, **TINY)
    meta = load_strict_json(tmp_path / "night" / "synthetic_meta.json")
    written = (tmp_path / "night" / "source").stat().st_mtime_ns
    build_synthetic_benchmark(tmp_path / "night", seed=1, shift=night, **TINY)  # the same shift: reused, not rebuilt
    assert (tmp_path / "night" / "source").stat().st_mtime_ns == written
    assert meta["shift"] == {"colour_drift": 0.35, "exposure": [0.4, 0.7], "noise": [4.0, 8.0], "texture": 0.8}
    first = lambda root, split: np.asarray(datasets.load_from_disk(str(root / split))[0]["image"])
    assert np.array_equal(first(tmp_path / "default", "source"), first(tmp_path / "night", "source"))
    assert not np.array_equal(first(tmp_path / "default", "target"), first(tmp_path / "night", "target"))
