"""Domains, class statistics, rare class sampling and paired samples, with their error messages."""

import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from duda_hf.data import rcs
from duda_hf.data.domains import load_domain
from duda_hf.data.errors import DomainError
from duda_hf.data.pairing import DudaTrainDataset
from duda_hf.data.rcs import RareClassSampler, class_pixel_counts, compute_class_pixel_counts, rcs_class_probabilities

from .conftest import load_strict_json, tiny_argv


def make_domain(path, labels, size=(8, 6)):
    """A save_to_disk folder of solid-colour images with the given label arrays."""
    images = [Image.new("RGB", size, (i * 20 % 255, 10, 200)) for i in range(len(labels))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    rows = {"image": images, "label": [Image.fromarray(np.asarray(label, dtype=np.uint8), mode="L") for label in labels]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return str(path)


def test_load_domain_columns_and_target_without_labels(tiny_benchmark):
    source = load_domain(tiny_benchmark["source"])
    assert source.column_names == ["image", "label"] and len(source) == 16
    target = load_domain(tiny_benchmark["target"], with_labels=False)
    assert target.column_names == ["image"]


def test_load_domain_errors(tmp_path, tiny_benchmark):
    with pytest.raises(DomainError, match=r"--source_dataset '/nope/data' does not exist"):
        load_domain("/nope/data", role="--source_dataset")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DomainError, match="is a file"):
        load_domain(str(tmp_path / "file.txt"))
    (tmp_path / "pngs").mkdir()
    with pytest.raises(DomainError, match="not a `datasets` save_to_disk folder"):
        load_domain(str(tmp_path / "pngs"))
    with pytest.raises(DomainError, match=r"lacks \['mask'\].*--label_column"):
        load_domain(tiny_benchmark["source"], label_column="mask")
    datasets.DatasetDict({"train": load_domain(tiny_benchmark["target_val"])}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_domain(str(tmp_path / "dict"), split="train")) == 6
    with pytest.raises(DomainError, match=r"has splits \['train'\], not 'validation'"):
        load_domain(str(tmp_path / "dict"), split="validation")


def test_load_domain_offline_hub_id():
    with pytest.raises(DomainError, match="neither a local folder nor a loadable Hub dataset"):
        load_domain("someone/not-cached-dataset")


def test_a_missing_benchmark_folder_without_network_fails_in_seconds_with_the_command_that_builds_it(tmp_path, monkeypatch):
    """The first command's recipe on a clone without `data_synthetic/` and without network: `data_synthetic/source`
    is read as a Hub id; the run must not spend half a minute in retries, and it says how to build the folder."""
    import socket
    import time

    from huggingface_hub import constants

    with socket.socket() as probe:  # a port nothing listens on: the Hub is unreachable
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # (the suite runs with HF_HUB_OFFLINE=1)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with pytest.raises(DomainError) as error:
        load_domain("data_synthetic/source", role="--source_dataset")
    assert time.monotonic() - started < 5
    assert str(error.value) == (
        f"--source_dataset 'data_synthetic/source' is not a local folder, and as a Hub dataset id it cannot be downloaded: "
        f"the Hub (http://127.0.0.1:{port}) is unreachable and the dataset is not in the cache. If it is the synthetic "
        "benchmark, build it first: python scripts/make_synthetic.py --out data_synthetic"
    )
    # a dataset downloaded earlier still loads without network: datasets is asked in offline mode, from its cache
    hf_datasets = datasets
    seen = []

    def from_cache(spec, split):
        seen.append((spec, split, hf_datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE))
        return hf_datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))], "label": [Image.new("L", (4, 4))]})

    monkeypatch.setattr(hf_datasets, "load_dataset", from_cache)
    assert len(load_domain("me/cached-set", "validation")) == 1
    assert seen == [("me/cached-set", "validation", True, True)]
    assert (hf_datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == (False, False)  # restored after
    # behind a proxy a direct connection proves nothing: datasets goes through the proxy as usual
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    seen.clear()
    load_domain("me/cached-set", "validation")
    assert seen == [("me/cached-set", "validation", False, False)]
    with pytest.raises(DomainError) as error:
        load_domain("./data_synthetic_night/target")
    assert str(error.value) == (  # the second benchmark's own shift, the flags that built the published rows
        "dataset './data_synthetic_night/target' does not exist. If it is the synthetic benchmark, build it first: python "
        "scripts/make_synthetic.py --out data_synthetic_night --seed 7 --colour_drift 0.35 --exposure 0.4 0.7 --noise 4 8 "
        "--texture 0.8"
    )


def test_class_counts_reject_label_ids_that_are_not_train_ids(tmp_path):
    good = np.zeros((6, 8), dtype=np.uint8)
    bad = np.full((6, 8), 26, dtype=np.uint8)  # a Cityscapes label id (car), not a trainId
    path = make_domain(tmp_path / "d", [good, bad])
    expected = r"--source_dataset: labels must be Cityscapes trainIds.*#1: 48 of 48 pixels hold \[26\].*--source_label_type labelid"
    with pytest.raises(DomainError, match=expected):
        compute_class_pixel_counts(load_domain(path))


def test_class_counts_exact_and_cached(tmp_path, monkeypatch):
    first = np.array([[0, 0, 255], [13, 13, 13]], dtype=np.uint8)
    second = np.array([[18, 1, 1], [1, 1, 255]], dtype=np.uint8)
    dataset = load_domain(make_domain(tmp_path / "d", [first, second], size=(3, 2)))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    counts = class_pixel_counts(dataset)
    expected = np.zeros((2, 19), dtype=np.int64)
    expected[0, 0], expected[0, 13], expected[1, 1], expected[1, 18] = 2, 3, 4, 1
    np.testing.assert_array_equal(counts, expected)
    cache_files = list((tmp_path / "cache").rglob("*.json"))
    assert len(cache_files) == 1 and load_strict_json(cache_files[0])["num_rows"] == 2

    def fail(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(rcs, "compute_class_pixel_counts", fail)
    np.testing.assert_array_equal(class_pixel_counts(dataset), expected)


def test_rcs_class_probabilities_exact():
    counts = np.zeros((3, 19), dtype=np.int64)
    counts[0, 0] = 100
    counts[1, 5] = 10
    counts[2, 7] = 2  # below min_pixels: never sampled
    classes, probabilities = rcs_class_probabilities(counts, temperature=1.0, min_pixels=5)
    assert classes.tolist() == [0, 5]
    f0, f5 = 100 / 112, 10 / 112
    p5 = math.exp(1 - f5) / (math.exp(1 - f0) + math.exp(1 - f5))
    assert probabilities.tolist() == pytest.approx([1 - p5, p5])
    sampler = RareClassSampler(counts, temperature=1.0, min_pixels=5)
    draws = [sampler.sample(np.random.default_rng(seed)) for seed in range(50)]
    assert {draw for draw in draws} == {(0, 0), (5, 1)}
    with pytest.raises(DomainError, match="lower --rcs_min_pixels"):
        RareClassSampler(counts, min_pixels=1000)


def test_paired_samples_are_a_function_of_seed_and_index(tiny_benchmark):
    source, target = load_domain(tiny_benchmark["source"]), load_domain(tiny_benchmark["target"], with_labels=False)
    sampler = RareClassSampler(class_pixel_counts(source), min_pixels=50)
    dataset = DudaTrainDataset(source, target, (48, 40), seed=5, rare_class_sampler=sampler, num_samples=10)
    item = dataset[3]
    assert item["source_image"].shape == (3, 48, 40) and item["source_image"].dtype == torch.uint8
    assert item["source_label"].shape == (48, 40) and item["source_label"].dtype == torch.int64
    assert item["target_image"].shape == (3, 48, 40)
    again = dataset[3]
    assert all(torch.equal(item[key], again[key]) for key in item)
    other_index, other_seed = dataset[4], DudaTrainDataset(source, target, (48, 40), seed=6, num_samples=10)[3]
    assert not torch.equal(item["source_image"], other_index["source_image"])
    assert not torch.equal(item["source_image"], other_seed["source_image"])


def test_small_images_are_padded_with_ignore(tmp_path):
    label = np.ones((6, 8), dtype=np.uint8)
    domain = load_domain(make_domain(tmp_path / "d", [label]))
    item = DudaTrainDataset(domain, domain.select_columns(["image"]), (10, 8), num_samples=1)[0]
    assert item["source_label"].shape == (10, 8)
    assert set(item["source_label"].unique().tolist()) == {1, 255}
    assert (item["source_label"] == 255).sum() == 4 * 8  # 6 rows padded to 10


def test_image_label_size_mismatch(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    rows = {"image": [Image.new("RGB", (8, 6))], "label": [Image.new("L", (4, 3))]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "d"))
    domain = load_domain(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"source image #0 is 8x6 but its label is 4x3"):
        DudaTrainDataset(domain, domain, (4, 4), num_samples=1)[0]


def test_the_training_set_gets_its_length_from_the_recipe(tiny_benchmark, tmp_path):
    """Steps x batch per process x gradient accumulation x processes: one epoch is the whole run."""
    from duda_hf.cli.arguments import parse_args
    from duda_hf.cli.training_run import build_trainer

    argv = tiny_argv(
        tiny_benchmark, tmp_path, "--max_steps", "5", "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "2"
    )
    trainer = build_trainer(*parse_args(argv))
    assert trainer.train_dataset.num_samples == len(trainer.train_dataset) == 5 * 3 * 2
    assert len(trainer.get_train_dataloader()) == 5 * 2  # batches: every optimizer step's micro-steps, once
