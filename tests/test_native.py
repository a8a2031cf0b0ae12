"""Native dataset layouts: exact trainIds, prepare_data (parallel, resumable), validation errors, training from folders."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duda_hf.data.domains import load_domain
from duda_hf.data.errors import DomainError
from duda_hf.data.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID, apply_lookup, colors_to_trainids
from duda_hf.data.native import list_native_files, load_native
from duda_hf.data.prepare import prepare_native
from duda_hf.data.rcs import compute_class_pixel_counts

from .conftest import load_strict_json, tiny_argv
from .native_folders import (
    CITYSCAPES_TABLE,
    SYNTHIA_TABLE,
    expected_trainids,
    make_cityscapes,
    make_gta5,
    make_synthia,
    make_trainid_layout,
    save_palette_label,
    write_png16_rgb,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_samples"
ROOT = Path(__file__).resolve().parents[1]
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="shared/data/real_samples is not beside the checkout")


def label_of(dataset, index=0) -> np.ndarray:
    return np.asarray(dataset[index]["label"])


# ---- lookup tables -------------------------------------------------------------------------------------------------


def test_lookup_tables_match_labels_md():
    # docs/datasets.md ("Cityscapes", "SYNTHIA") spells out the tables as lists indexed by raw id
    assert CITYSCAPES_ID_TO_TRAINID.tolist() == [
        255,
        255,
        255,
        255,
        255,
        255,
        255,
        0,
        1,
        255,
        255,
        2,
        3,
        4,
        255,
        255,
        255,
        5,
        255,
        6,
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
        15,
        255,
        255,
        16,
        17,
        18,
    ]
    assert SYNTHIA_ID_TO_TRAINID.tolist() == [255, 10, 2, 0, 1, 4, 8, 5, 13, 7, 11, 18, 17, 255, 255, 6, 9, 12, 14, 15, 16, 3, 255]


def test_apply_lookup_reports_values_outside_the_table():
    mapped, bad = apply_lookup(np.array([[7, 26], [0, 33]], np.uint8), CITYSCAPES_ID_TO_TRAINID)
    assert mapped.tolist() == [[0, 13], [255, 18]] and bad.size == 0
    _, bad = apply_lookup(np.array([[7, 40], [34, 7]], np.uint8), CITYSCAPES_ID_TO_TRAINID)
    assert bad.tolist() == [34, 40]


def test_colors_to_trainids():
    rgb = np.array([[[128, 64, 128], [0, 0, 142]], [[0, 0, 0], [119, 11, 32]]], np.uint8)
    train_ids, bad = colors_to_trainids(rgb)
    assert train_ids.tolist() == [[0, 13], [255, 18]] and len(bad) == 0
    _, bad = colors_to_trainids(np.array([[[1, 2, 3]]], np.uint8))
    assert bad.tolist() == [[1, 2, 3]]


# ---- real sample files ---------------------------------------------------------------------------------------------


@needs_real
def test_cityscapes_real_full_frame_class_counts():
    dataset = load_native(REAL / "cityscapes", "cityscapes", "train")
    assert len(dataset) == 1 and dataset[0]["image"].size == (2048, 1024)
    raw = np.asarray(Image.open(REAL / "cityscapes/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"))
    label = label_of(dataset)
    assert np.array_equal(label, expected_trainids(raw, CITYSCAPES_TABLE))
    counts = dict(zip(*np.unique(label, return_counts=True)))
    assert {int(k): int(v) for k, v in counts.items()} == {
        0: 831082,
        1: 29195,
        2: 611938,
        5: 22846,
        7: 34863,
        8: 221654,
        9: 130185,
        10: 38722,
        11: 1588,
        12: 2270,
        13: 42659,
        18: 2309,
        255: 127841,
    }
    assert compute_class_pixel_counts(dataset)[0, 13] == 42659


@needs_real
def test_cityscapes_real_val_frame_prefers_label_train_ids():
    dataset = load_native(REAL / "cityscapes", "cityscapes", "validation")  # the datasets split name works too
    folder = REAL / "cityscapes/gtFine/val/frankfurt"
    shipped = np.asarray(Image.open(folder / "frankfurt_000000_000294_gtFine_labelTrainIds.png"))
    assert np.array_equal(label_of(dataset), shipped)
    # mapping the labelIds file through the official table differs from the shipped file at 77 boundary pixels
    derived = expected_trainids(np.asarray(Image.open(folder / "frankfurt_000000_000294_gtFine_labelIds.png")), CITYSCAPES_TABLE)
    assert int((derived != shipped).sum()) == 77


@needs_real
def test_acdc_real_images_without_labels():
    dataset = load_native(REAL / "acdc", "acdc", "test", conditions=("fog", "night"), with_labels=False)
    assert dataset.column_names == ["image_path"] and len(dataset) == 2
    assert [dataset[i]["image"].size for i in range(2)] == [(1920, 1080)] * 2
    assert "/fog/test/" in dataset.with_format(None)[0]["image_path"]
    assert len(load_native(REAL / "acdc", "acdc", "test", conditions=("night",), with_labels=False)) == 1


@needs_real
def test_synthia_real_image_with_generated_16bit_label(tmp_path):
    shutil.copytree(REAL / "synthia", tmp_path / "synthia")
    ids = (np.arange(760 * 1280).reshape(760, 1280) % 23).astype(np.uint16)
    (tmp_path / "synthia/GT/LABELS").mkdir(parents=True)
    write_png16_rgb(tmp_path / "synthia/GT/LABELS/0000268.png", np.stack([ids, ids * 7, ids], -1))
    dataset = load_native(tmp_path / "synthia", "synthia")
    assert dataset[0]["image"].size == (1280, 760)
    assert np.array_equal(label_of(dataset), expected_trainids(ids, SYNTHIA_TABLE))


# ---- generated native folders --------------------------------------------------------------------------------------


def test_gta5_palette_indices_not_colours(tmp_path):
    raw = make_gta5(tmp_path / "gta5")
    dataset = load_native(tmp_path / "gta5", "gta5")
    assert len(dataset) == 3
    for index, name in enumerate(sorted(raw)):
        assert np.array_equal(label_of(dataset, index), expected_trainids(raw[name], CITYSCAPES_TABLE))


def test_synthia_16bit_labels_survive_where_pillow_truncates(tmp_path):
    raw = make_synthia(tmp_path / "synthia")
    name = min(raw)
    with Image.open(tmp_path / "synthia/GT/LABELS" / name) as pillow:
        assert int(np.asarray(pillow.convert("RGB"))[..., 0].max()) == 0  # Pillow keeps the high byte: every id reads 0
    dataset = load_native(tmp_path / "synthia", "synthia")
    for index, name in enumerate(sorted(raw)):
        assert np.array_equal(label_of(dataset, index), expected_trainids(raw[name], SYNTHIA_TABLE))


@pytest.mark.parametrize("format", ["acdc", "darkzurich"])
def test_trainid_layouts_by_split_and_condition(tmp_path, format):
    conditions = ("fog", "night") if format == "acdc" else ("night", "day")
    labels = make_trainid_layout(tmp_path / format, format, conditions, "val")
    everything = load_native(tmp_path / format, format, "val", conditions=conditions)
    assert len(everything) == 4
    night = load_native(tmp_path / format, format, "val", conditions=("night",))
    assert len(night) == 2
    night_labels = [v for k, v in sorted(labels.items()) if k.startswith("night/")]
    assert all(np.array_equal(label_of(night, i), expected) for i, expected in enumerate(night_labels))
    if format == "darkzurich":  # Dark Zurich defaults to its night frames
        assert len(load_native(tmp_path / format, format, "val")) == 2


def test_acdc_daformer_flattened_layout(tmp_path):
    make_trainid_layout(tmp_path / "nested", "acdc", ("rain",), "train")
    for kind in ("rgb_anon", "gt"):
        (tmp_path / "flat" / kind).mkdir(parents=True)
        shutil.copytree(tmp_path / "nested" / kind / "rain" / "train", tmp_path / "flat" / kind / "train")
    assert len(load_native(tmp_path / "flat", "acdc", "train")) == 2


def test_label_types_for_stored_datasets(tmp_path):
    import datasets

    ids = np.array([[7, 26], [0, 33]], np.uint8)
    colours = np.array([[[128, 64, 128], [0, 0, 142]], [[0, 0, 0], [119, 11, 32]]], np.uint8)
    image = Image.new("RGB", (2, 2))
    datasets.Dataset.from_dict({"image": [image], "label": [Image.fromarray(ids)]}).save_to_disk(str(tmp_path / "ids"))
    datasets.Dataset.from_dict({"image": [image], "label": [Image.fromarray(colours)]}).save_to_disk(str(tmp_path / "rgb"))
    assert label_of(load_domain(str(tmp_path / "ids"), label_type="labelid")).tolist() == [[0, 13], [255, 18]]
    assert label_of(load_domain(str(tmp_path / "rgb"), label_type="color")).tolist() == [[0, 13], [255, 18]]
    with pytest.raises(DomainError, match="single-channel"):
        label_of(load_domain(str(tmp_path / "rgb"), label_type="labelid"))


# ---- prepare_data --------------------------------------------------------------------------------------------------


def test_prepare_gta5_resized_in_parallel(tmp_path):
    raw = make_gta5(tmp_path / "gta5", count=5)
    result = prepare_native(tmp_path / "gta5", "gta5", tmp_path / "out", resize_hw=(24, 32), num_proc=2, shard_size=2, progress=False)
    train = result.dataset["train"]
    assert len(train) == 5 and result.images_converted == 5
    for index, name in enumerate(sorted(raw)):
        row = train[index]
        assert row["image"].size == (32, 24)
        expected = Image.fromarray(expected_trainids(raw[name], CITYSCAPES_TABLE)).resize((32, 24), Image.NEAREST)
        assert np.array_equal(np.asarray(row["label"]), np.asarray(expected))
    assert not (tmp_path / "out.partial").exists()
    assert label_of(load_domain(str(tmp_path / "out"))).shape == (24, 32)


def test_prepare_refuses_a_resize_that_turns_the_images_portrait(tmp_path, capfd):
    from duda_hf.cli import prepare_data

    make_gta5(tmp_path / "gta5", count=2)  # 64x48 (W x H)
    argv = ["--format", "gta5", "--root", str(tmp_path / "gta5"), "--out", str(tmp_path / "out"), "--num_proc", "1"]
    capfd.readouterr()
    assert prepare_data.main([*argv, "--resize", "64", "48"]) == 2
    assert capfd.readouterr().err == (
        "error: --resize 64 48 would make the 64x48 (W x H) gta5 train images portrait: sizes are H W, height first; "
        "did you mean --resize 48 64?\n"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()  # before any conversion
    assert prepare_data.main([*argv, "--resize", "32", "32"]) == 0  # square: no error
    assert load_domain(str(tmp_path / "out")).num_rows == 2


def test_prepare_native_size_keeps_image_bytes_and_synthia_ids(tmp_path):
    raw = make_synthia(tmp_path / "synthia", count=3)
    result = prepare_native(tmp_path / "synthia", "synthia", tmp_path / "out", num_proc=1, progress=False)
    train = result.dataset["train"]
    for index, name in enumerate(sorted(raw)):
        assert np.array_equal(np.asarray(train[index]["label"]), expected_trainids(raw[name], SYNTHIA_TABLE))
        assert np.array_equal(np.asarray(train[index]["image"]), np.asarray(Image.open(tmp_path / "synthia/RGB" / name)))


def test_prepare_resumes_after_an_interruption(tmp_path):
    make_gta5(tmp_path / "gta5", count=5)
    good = (tmp_path / "gta5/images/00005.png").read_bytes()
    (tmp_path / "gta5/images/00005.png").write_bytes(good[:200])  # truncated: the last shard fails
    with pytest.raises(DomainError, match="00005.png"):
        prepare_native(tmp_path / "gta5", "gta5", tmp_path / "out", num_proc=2, shard_size=2, progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written looks complete
    assert sorted(p.name for p in (tmp_path / "out.partial").glob("*.arrow")) == ["train-00000.arrow", "train-00001.arrow"]
    assert load_strict_json(tmp_path / "out.partial" / "manifest.json")["format"] == "gta5"
    (tmp_path / "gta5/images/00005.png").write_bytes(good)
    result = prepare_native(tmp_path / "gta5", "gta5", tmp_path / "out", num_proc=2, shard_size=2, progress=False)
    assert result.images_converted == 1 and len(result.dataset["train"]) == 5
    with pytest.raises(DomainError, match="--overwrite"):
        prepare_native(tmp_path / "gta5", "gta5", tmp_path / "out", progress=False)


@pytest.mark.slow
def test_prepare_script_splits_and_unlabelled(tmp_path):
    make_cityscapes(tmp_path / "cs", "train")
    make_cityscapes(tmp_path / "cs", "val", cities=("frankfurt",), per_city=1)
    make_trainid_layout(tmp_path / "dz", "darkzurich", ("night",), "train")
    shutil.rmtree(tmp_path / "dz" / "gt")
    for argv in (
        [
            "--format",
            "cityscapes",
            "--root",
            tmp_path / "cs",
            "--splits",
            "train",
            "val",
            "--out",
            tmp_path / "cs_out",
            "--resize",
            "32",
            "64",
        ],
        ["--format", "darkzurich", "--root", tmp_path / "dz", "--without_labels", "--out", tmp_path / "dz_out"],
    ):
        done = subprocess.run(
            [sys.executable, "scripts/prepare_data.py", *map(str, argv)], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "images/s" in done.stdout
    import datasets

    cs = datasets.load_from_disk(str(tmp_path / "cs_out"))
    assert {k: len(v) for k, v in cs.items()} == {"train": 2, "val": 1} and cs["val"][0]["image"].size == (64, 32)
    assert datasets.load_from_disk(str(tmp_path / "dz_out"))["train"].column_names == ["image"]
    done = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "--format", "gta5", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "x")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


# ---- validation errors ---------------------------------------------------------------------------------------------


def test_missing_and_misnamed_folders(tmp_path):
    with pytest.raises(DomainError, match="does not exist"):
        list_native_files(tmp_path / "nowhere", "gta5")
    make_gta5(tmp_path / "gta5", count=1)
    (tmp_path / "gta5/labels").rename(tmp_path / "gta5/label")
    with pytest.raises(DomainError, match=r"no 'labels/' folder \(it has \['images', 'label'\]\)"):
        list_native_files(tmp_path / "gta5", "gta5")
    make_cityscapes(tmp_path / "cs")
    with pytest.raises(DomainError, match="leftImg8bit/val"):
        list_native_files(tmp_path / "cs", "cityscapes", "val")
    with pytest.raises(DomainError, match="unknown dataset format 'kitti'"):
        list_native_files(tmp_path / "cs", "kitti")
    make_trainid_layout(tmp_path / "acdc", "acdc", ("fog",), "train")
    with pytest.raises(DomainError, match="unknown conditions"):
        list_native_files(tmp_path / "acdc", "acdc", "train", conditions=("haze",))


def test_images_without_labels_and_labels_without_images(tmp_path):
    make_gta5(tmp_path / "gta5", count=3)
    (tmp_path / "gta5/labels/00002.png").unlink()
    with pytest.raises(DomainError, match=r"1 of 3 images have no label file; missing: labels/00002.png"):
        list_native_files(tmp_path / "gta5", "gta5")
    make_gta5(tmp_path / "other", count=3)
    (tmp_path / "other/images/00003.png").unlink()
    with pytest.raises(DomainError, match=r"1 label files have no image; e.g. labels/00003.png"):
        list_native_files(tmp_path / "other", "gta5")


def test_bad_label_values_sizes_and_files(tmp_path):
    make_gta5(tmp_path / "gta5", count=3)
    save_palette_label(tmp_path / "gta5/labels/00001.png", np.full((48, 64), 40, np.uint8))
    save_palette_label(tmp_path / "gta5/labels/00002.png", np.full((10, 10), 7, np.uint8))
    Image.new("RGB", (64, 48)).save(tmp_path / "gta5/labels/00003.png")
    dataset = load_native(tmp_path / "gta5", "gta5")
    with pytest.raises(DomainError, match=r"00001.png' holds values \[40\] that a gta5 label cannot have"):
        dataset[0]
    with pytest.raises(DomainError, match=r"00002.png' is 10x10 but its image is 64x48"):
        dataset[1]
    with pytest.raises(DomainError, match="mode-RGB image; GTA5 labels are palette"):
        dataset[2]

    labels = make_trainid_layout(tmp_path / "acdc", "acdc", ("snow",), "val", per_condition=1)
    label_file = next((tmp_path / "acdc/gt").rglob("*.png"))
    Image.fromarray(np.full((27, 48), 30, np.uint8)).save(label_file)
    with pytest.raises(DomainError, match=r"holds values \[30\].*allowed: 0..18 and 255"):
        load_native(tmp_path / "acdc", "acdc", "val")[0]
    assert labels

    make_synthia(tmp_path / "synthia", count=2)
    Image.new("L", (64, 38)).save(tmp_path / "synthia/GT/LABELS/0000268.png")
    (tmp_path / "synthia/GT/LABELS/0000269.png").write_bytes(b"not a png at all")
    synthia = load_native(tmp_path / "synthia", "synthia")
    with pytest.raises(DomainError, match="expected the 16-bit multi-channel PNG"):
        synthia[0]
    with pytest.raises(DomainError, match="corrupt, truncated or not a PNG"):
        synthia[1]


def test_unreadable_and_truncated_images(tmp_path):
    make_cityscapes(tmp_path / "cs")
    images = sorted((tmp_path / "cs/leftImg8bit").rglob("*.png"))
    images[0].write_bytes(b"GIF89a nonsense")
    images[1].write_bytes(images[1].read_bytes()[:300])
    dataset = load_native(tmp_path / "cs", "cityscapes")
    for index in (0, 1):
        with pytest.raises(DomainError, match=f"cannot read image '.*{images[index].name}'.*re-download"):
            dataset[index]


# ---- training from native folders ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_starts_from_native_folders(tmp_path):
    make_gta5(tmp_path / "gta5", count=6, height=64, width=96)
    make_cityscapes(tmp_path / "cs", "train", per_city=3)
    make_cityscapes(tmp_path / "cs", "val", cities=("frankfurt",), per_city=2)
    argv = tiny_argv({"source": "unused", "target": "unused", "target_val": "unused"}, tmp_path / "run")
    argv += [
        "--source_dataset",
        str(tmp_path / "gta5"),
        "--source_format",
        "gta5",
        "--target_dataset",
        str(tmp_path / "cs"),
        "--target_format",
        "cityscapes",
        "--target_eval_dataset",
        str(tmp_path / "cs"),
        "--target_eval_format",
        "cityscapes",
        "--max_steps",
        "2",
    ]
    done = subprocess.run([sys.executable, "scripts/train_duda.py", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run/student/model.safetensors").exists() and (tmp_path / "run/eval_results.json").exists()


@pytest.mark.slow
def test_a_truncated_native_image_mid_run_is_skipped_named_and_counted(tmp_path):
    """A GTA5 image cut short after its header (the start-up checks read headers only): the run goes on with a warning
    naming the dataset, the index and the file, and eval_results.json counts it."""
    make_gta5(tmp_path / "gta5", count=3, height=64, width=96)
    make_cityscapes(tmp_path / "cs", "train", per_city=3)
    make_cityscapes(tmp_path / "cs", "val", cities=("frankfurt",), per_city=2)
    broken = tmp_path / "gta5" / "images" / "00002.png"
    broken.write_bytes(broken.read_bytes()[:400])
    argv = tiny_argv(
        {"source": str(tmp_path / "gta5"), "target": str(tmp_path / "cs"), "target_val": str(tmp_path / "cs")}, tmp_path / "run"
    )
    argv += [
        "--source_format",
        "gta5",
        "--target_format",
        "cityscapes",
        "--target_eval_format",
        "cityscapes",
        "--rare_class_sampling",
        "false",
    ]
    argv += ["--max_bad_sample_share", "0.9"]
    done = subprocess.run([sys.executable, "scripts/train_duda.py", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = re.findall(r"--source_dataset: sample #(\d+) cannot be decoded \(cannot read image '([^']+)'", done.stderr)
    assert warnings and {Path(path).name for _, path in warnings} == {"00002.png"}
    results = load_strict_json(tmp_path / "run" / "eval_results.json")
    assert 1 <= results["bad_samples"]["count"] <= len(warnings) and results["bad_samples"]["draws"] == 4 * 2 * 2
    assert set(results["bad_samples"]["first"]) == {f"--source_dataset #{index}" for index, _ in warnings}
