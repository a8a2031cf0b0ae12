"""Streaming metric (parity, reduction, evaluate module), whole/slide inference and the evaluation script's reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import evaluate
import numpy as np
import pytest
import torch
from PIL import Image

from duda_hf.data.errors import DomainError
from duda_hf.data.images import to_label_array, to_rgb_array
from duda_hf.data.labels import SYNTHIA_13_CLASSES, SYNTHIA_16_CLASSES
from duda_hf.evaluation import METRIC_PATH
from duda_hf.evaluation.confusion import StreamingConfusion, metrics_from_confusion
from duda_hf.evaluation.inference import _sliding_windows, evaluate_networks, predict_slide, predict_whole
from duda_hf.export.network import export_network
from duda_hf.networks.inputs import network_inputs
from duda_hf.networks.loading import build_network

from .conftest import load_strict_json
from .native_folders import save_palette_label

ROOT = Path(__file__).resolve().parents[1]


def reference_metrics(predictions, labels, num_classes=19, ignore_index=255):
    """Plain numpy, per class, by the definition: IoU = |pred=c & label=c| / |pred=c or label=c| over non-ignored pixels."""
    iou, accuracy = [], []
    correct = total = 0
    for c in range(num_classes):
        inter = union = label_area = 0
        for prediction, label in zip(predictions, labels):
            keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
            p, t = prediction[keep], label[keep]
            inter += int(np.sum((p == c) & (t == c)))
            union += int(np.sum((p == c) | (t == c)))
            label_area += int(np.sum(t == c))
        iou.append(inter / union if union else np.nan)
        accuracy.append(inter / label_area if label_area else np.nan)
    for prediction, label in zip(predictions, labels):
        keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
        correct += int(np.sum(prediction[keep] == label[keep]))
        total += int(keep.sum())
    return np.array(iou), np.array(accuracy), correct / total


def random_maps(seed, count=4, shape=(37, 53)):
    rng = np.random.default_rng(seed)
    predictions = [rng.integers(0, 19, shape) for _ in range(count)]
    labels = [rng.integers(0, 19, shape).astype(np.uint8) for _ in range(count)]
    for prediction, label in zip(predictions, labels):
        label[rng.random(shape) < 0.2] = 255  # ignore pixels
        label[label == 16] = 255  # a class absent from every label ...
        prediction[prediction == 16] = 0  # ... and from every prediction: its IoU is nan and leaves the mean
        label[label == 9] = 4  # terrain only ever predicted: IoU 0, counted
    return predictions, labels


def test_streaming_metric_equals_plain_numpy_definition():
    predictions, labels = random_maps(0)
    metric = StreamingConfusion()
    for prediction, label in zip(predictions, labels):
        metric.update(torch.from_numpy(prediction), torch.from_numpy(label))
    result = metric.compute()
    iou, accuracy, overall = reference_metrics(predictions, labels)
    assert np.array_equal(np.array(list(result["per_class_iou"].values())), iou, equal_nan=True)
    assert np.array_equal(np.array(list(result["per_class_accuracy"].values())), accuracy, equal_nan=True)
    assert np.isnan(iou[16]) and iou[9] == 0.0
    assert result["mIoU"] == pytest.approx(np.nanmean(iou), abs=1e-15)
    assert result["overall_accuracy"] == pytest.approx(overall, abs=1e-15)


def test_wide_and_signed_labels_ignore_everything_outside_the_classes():
    prediction = torch.tensor([[0, 1, 2, 3]])
    label = torch.tensor([[0, -1, 19, 3]])  # int64 with -1 and 19: both ignored
    metric = StreamingConfusion(num_classes=4)
    metric.update(prediction, label)
    assert metric.matrix.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match=r"class indices in 0..3, got 7..7"):
        metric.update(torch.tensor([[7]]), torch.tensor([[0]]))


def test_class_subsets_exact():
    matrix = np.diag(np.arange(1, 20)).astype(float)
    matrix[0, 1] = 1  # road: IoU 1/2; sidewalk: IoU 2/3
    result = metrics_from_confusion(matrix, class_subsets={"mIoU16": SYNTHIA_16_CLASSES, "mIoU13": SYNTHIA_13_CLASSES})
    assert result["mIoU"] == pytest.approx((0.5 + 2 / 3 + 17) / 19)
    assert result["mIoU16"] == pytest.approx((0.5 + 2 / 3 + 14) / 16)
    assert result["mIoU13"] == pytest.approx((0.5 + 2 / 3 + 11) / 13)
    assert len(SYNTHIA_16_CLASSES) == 16 and len(SYNTHIA_13_CLASSES) == 13 and 9 not in SYNTHIA_16_CLASSES


def test_evaluate_module_loads_offline_and_matches(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    predictions, labels = random_maps(1)
    module = evaluate.load(METRIC_PATH)
    module.add_batch(predictions=predictions[:2], references=labels[:2])
    for prediction, label in zip(predictions[2:], labels[2:]):
        module.add(prediction=prediction, reference=label)
    result = module.compute()
    iou, accuracy, overall = reference_metrics(predictions, labels)
    assert np.array_equal(result["per_category_iou"], iou, equal_nan=True)
    assert np.array_equal(result["per_category_accuracy"], accuracy, equal_nan=True)
    assert result["mean_iou"] == pytest.approx(np.nanmean(iou), abs=1e-15)
    assert result["overall_accuracy"] == pytest.approx(overall, abs=1e-15)
    # compute() starts afresh; predictions can also be passed straight to compute
    again = module.compute(predictions=predictions, references=labels)
    assert again["mean_iou"] == result["mean_iou"]


def _reduce_worker(rank, world_size, port, predictions, labels, out):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    metric = StreamingConfusion()
    for index in range(rank, len(labels), world_size):
        metric.update(torch.from_numpy(predictions[index]), torch.from_numpy(labels[index]))
    metric.reduce()
    torch.save(metric.matrix, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_reduction_equals_one_process(tmp_path):
    import socket

    predictions, labels = random_maps(2, count=5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_reduce_worker, args=(2, port, predictions, labels, str(tmp_path)), nprocs=2)
    single = StreamingConfusion()
    for prediction, label in zip(predictions, labels):
        single.update(torch.from_numpy(prediction), torch.from_numpy(label))
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), single.matrix)


def test_sliding_window_grid():
    assert _sliding_windows(10, 4, 3) == [0, 3, 6]
    assert _sliding_windows(1024, 512, 341) == [0, 341, 512]
    assert _sliding_windows(300, 512, 341) == [0]


def test_slide_equals_whole_when_one_window_covers_the_image():
    torch.manual_seed(0)
    model = build_network("tiny", "random").eval()
    images = torch.randn(2, 3, 48, 80)
    whole = predict_whole(model, images, (48, 80))
    slide = predict_slide(model, images, (48, 80), window_hw=(64, 96), stride_hw=(32, 32))
    assert torch.equal(whole, slide)
    overlapping = predict_slide(model, images, (96, 160), window_hw=(32, 32), stride_hw=(24, 24), batch_size=3)
    assert overlapping.shape == (2, 96, 160)


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    for name in ("student", "teacher"):
        export_network(build_network("tiny" if name == "student" else "tiny-wide", "random"), root / name, eval_size_hw=(32, 64))
    rng = np.random.default_rng(0)
    rows = {"image": [], "label": []}
    for _ in range(5):
        rows["image"].append(Image.fromarray(rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)))
        rows["label"].append(Image.fromarray(rng.choice(np.r_[0:19, 255], (48, 96)).astype(np.uint8)))
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).cast_column("label", datasets.Image()).save_to_disk(
        str(root / "data")
    )
    return root


@pytest.mark.slow
def test_evaluate_script_compare_writes_reports_with_the_numbers(eval_setup):
    root = eval_setup
    out = root / "report"
    argv = [
        "--model",
        root / "student",
        "--compare",
        root / "teacher",
        "--dataset",
        root / "data",
        "--output_dir",
        out,
        "--synthia_subsets",
        "--batch_size",  # batched, decoded by workers: the numbers of one image at a time (below)
        "2",
        "--num_workers",
        "2",
    ]
    done = subprocess.run(
        [sys.executable, "scripts/evaluate_duda.py", *map(str, argv)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert (results["schema_version"], results["kind"]) == (3, "evaluation")
    settings = results["settings"]
    assert settings["num_images"] == 5 and settings["eval_size"] == [32, 64]
    assert settings["models"] == {"student": str(root / "student"), "teacher": str(root / "teacher")}
    assert (settings["mode"], settings["window"], settings["dtype"]) == ("whole", None, "fp32")
    # the same numbers, computed in this process with the models loaded by plain transformers
    from transformers import SegformerForSemanticSegmentation

    from duda_hf.data.domains import load_domain

    networks = {n: SegformerForSemanticSegmentation.from_pretrained(root / n).eval() for n in ("student", "teacher")}
    matrices = evaluate_networks(networks, load_domain(str(root / "data")), torch.device("cpu"), input_size_hw=(32, 64))
    report = (out / "report.md").read_text()
    for name in ("student", "teacher"):
        expected = matrices[name].compute()
        assert results["metrics"][name]["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-12)
        assert results["metrics"][name]["confusion_matrix"] == matrices[name].matrix.tolist()
        assert "mIoU16" in results["metrics"][name] and "mIoU13" in results["metrics"][name]
        assert f"**{100 * expected['mIoU']:.2f}**" in report
    assert "| class | student | teacher | teacher − student |" in report
    assert f"| road | {100 * results['metrics']['student']['per_class_iou']['road']:.2f}" in report
    for png in ("per_class_iou.png", "confusion_matrix.png", "confusion_matrix_compare.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.size[0] > 300


@pytest.mark.slow
def test_evaluate_script_slide_mode_and_errors(eval_setup, tmp_path):
    root = eval_setup
    base = [sys.executable, "scripts/evaluate_duda.py", "--dataset", str(root / "data")]
    done = subprocess.run(
        base
        + [
            "--model",
            str(root / "student"),
            "--mode",
            "slide",
            "--window",
            "32",
            "32",
            "--stride",
            "16",
            "16",
            "--native_size",
            "--output_dir",
            str(tmp_path / "slide"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    settings = json.loads((tmp_path / "slide/eval_results.json").read_text())["settings"]
    assert (settings["mode"], settings["window"], settings["stride"]) == ("slide", [32, 32], [16, 16])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(base + ["--model", "org/not-downloaded"], cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2 and "Cannot load 'org/not-downloaded'" in done.stderr and "local folder" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        base[:2] + ["--dataset", str(tmp_path / "missing"), "--model", str(root / "student")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "does not exist" in done.stderr


@pytest.mark.slow
def test_evaluate_results_are_strict_json_with_null_for_absent_classes(eval_setup, tmp_path):
    rows = {"image": [Image.new("RGB", (96, 48), (90, 90, 90))] * 2, "label": [Image.new("L", (96, 48), 0)] * 2}
    rows["label"][1] = Image.fromarray(np.where(np.arange(96)[None, :] < 48, 0, 255).repeat(48, 0).astype(np.uint8))
    data = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).cast_column("label", datasets.Image())
    data.save_to_disk(str(tmp_path / "road_only"))
    argv = ["--model", eval_setup / "student", "--dataset", tmp_path / "road_only", "--output_dir", tmp_path / "out"]
    command = [sys.executable, "scripts/evaluate_duda.py", *map(str, argv)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = load_strict_json(tmp_path / "out" / "eval_results.json")["metrics"]["student"]
    accuracy = metrics["per_class_accuracy"]
    assert isinstance(accuracy["road"], float) and [v for k, v in accuracy.items() if k != "road"] == [None] * 18  # not in the labels
    predicted = {c for c, row in enumerate(np.asarray(metrics["confusion_matrix"]).T) if row.sum()}
    for number, iou in enumerate(metrics["per_class_iou"].values()):
        assert (iou is None) == (number != 0 and number not in predicted)  # null: in neither labels nor predictions


def test_one_percent_format_for_reports_and_the_model_card():
    from duda_hf.evaluation.report import markdown_report, percent
    from duda_hf.export import model_card

    assert [percent(v) for v in (0.4567, 1, np.float64(0.5), 0.0)] == ["45.67", "100.00", "50.00", "0.00"]
    assert percent(None) == percent(float("nan")) == "—"
    assert model_card.percent is percent  # the card formats with the same function
    classes = ("road", "sidewalk")
    one = {"mIoU": 0.5, "per_class_iou": dict(zip(classes, (0.5, None))), "per_class_accuracy": dict(zip(classes, (0.25, None)))}
    two = {"mIoU": float("nan"), "per_class_iou": dict(zip(classes, (0.75, 0.1))), "per_class_accuracy": dict(zip(classes, (1.0, 0.2)))}
    lines = markdown_report({"a": one, "b": two}, "t").splitlines()
    assert "| **mIoU** | **50.00** | **—** | — |" in lines
    assert "| road | 50.00 (25.00) | 75.00 (100.00) | +25.00 |" in lines
    assert "| sidewalk | — (—) | 10.00 (20.00) | — |" in lines


class _ChannelNetwork(torch.nn.Module):
    """A fake segmentation network: class `c` wins where the image's red value exceeds c / 19 (logits at 1/1)."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, pixel_values):
        red = pixel_values[:, :1]
        logits = -(red + self.shift - torch.arange(19, dtype=red.dtype).view(1, 19, 1, 1) / 19).abs()
        return type("Output", (), {"logits": logits})()


def test_agreement_scores_one_network_against_another_on_labelled_pixels():
    """`agreement=(("student", "teacher"),)`: the student's prediction scored against the teacher's, where the label
    is a class (ignore pixels do not count), exactly as the confusion matrix of the two predictions."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(3):
        image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
        label = rng.integers(0, 19, (8, 12), dtype=np.uint8)
        label[:2] = 255
        rows.append({"image": Image.fromarray(image), "label": Image.fromarray(label)})
    networks = {"student": _ChannelNetwork(0.0), "teacher": _ChannelNetwork(0.1)}
    matrices = evaluate_networks(
        networks, rows, torch.device("cpu"), image_mean=(0, 0, 0), image_std=(1, 1, 1), agreement=(("student", "teacher"),)
    )
    assert set(matrices) == {"student", "teacher", "student_vs_teacher"}
    expected = torch.zeros(19, 19, dtype=torch.long)
    for row in rows:
        red = torch.from_numpy(np.asarray(row["image"])[..., 0].astype(np.float32) / 255)[None, None]
        student, teacher = (net(red.expand(1, 3, -1, -1)).logits.argmax(1)[0] for net in networks.values())
        labelled = torch.from_numpy(np.array(row["label"])) != 255
        for t, s in zip(teacher[labelled].tolist(), student[labelled].tolist()):
            expected[t, s] += 1
    assert torch.equal(matrices["student_vs_teacher"].matrix, expected)
    assert int(expected.sum()) == 3 * 6 * 12 and 0 < int(expected.trace()) < int(expected.sum())
    with pytest.raises(ValueError, match=r"agreement pairs name two of the networks \['student', 'teacher'\]"):
        evaluate_networks(networks, rows, torch.device("cpu"), agreement=(("student", "auxiliary"),))


def test_the_miou_history_plot_draws_each_networks_evaluations(tmp_path):
    from duda_hf.evaluation.report import plot_miou_history

    history = [
        {"step": 500, "eval_student_mIoU": 23.03, "eval_auxiliary_mIoU": 23.6, "eval_teacher_mIoU": 21.77},
        {"step": 1000, "eval_student_mIoU": 28.14, "eval_teacher_mIoU": 29.82},
        {"step": 1000, "loss": 1.0},  # a training log: not an evaluation
    ]
    drawn = plot_miou_history(history, tmp_path / "miou.png", "title")
    assert drawn == {"student": ([500, 1000], [23.03, 28.14]), "auxiliary": ([500], [23.6]), "teacher": ([500, 1000], [21.77, 29.82])}
    assert (tmp_path / "miou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------------
# Batched evaluation: the confusion matrices of one image at a time, exactly

MIXED_SIZES_HW = [(40, 64), (40, 64), (34, 48), (40, 64), (34, 48), (34, 48), (40, 64)]  # runs of equal size split batches
SETTINGS = {  # name: evaluate_networks arguments
    "whole, native size": {"mode": "whole"},
    "whole, resized": {"mode": "whole", "input_size_hw": (32, 56)},
    "slide": {"mode": "slide", "window_hw": (32, 40), "stride_hw": (16, 24)},
}


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """The same 7 pairs in two sizes, interleaved: a native GTA5 folder (labels decoded by its transform) and a `datasets`
    Dataset (trainIds); a random `tiny` student and `tiny-wide` teacher."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(5)
    (root / "gta5" / "images").mkdir(parents=True)
    (root / "gta5" / "labels").mkdir()
    rows = {"image": [], "label": []}
    for number, (height, width) in enumerate(MIXED_SIZES_HW):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        image.save(root / "gta5" / "images" / f"{number:05d}.png")
        save_palette_label(root / "gta5" / "labels" / f"{number:05d}.png", rng.integers(0, 34, (height, width), dtype=np.uint8))
        rows["image"].append(image)
        rows["label"].append(Image.fromarray(rng.choice(np.r_[0:19, 255], (height, width)).astype(np.uint8)))
    table = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).cast_column("label", datasets.Image())
    torch.manual_seed(0)
    networks = {"student": build_network("tiny", "random").eval(), "teacher": build_network("tiny-wide", "random").eval()}
    from duda_hf.data.domains import load_domain

    return {"native": load_domain(str(root / "gta5"), format="gta5"), "datasets": table}, networks, root


def one_image_at_a_time(networks, dataset, mode="whole", input_size_hw=None, window_hw=None, stride_hw=None):
    """The evaluation as it ran before batching: each image alone through each network, scored at its label size."""
    matrices = {name: StreamingConfusion() for name in (*networks, "student_vs_teacher")}
    with torch.no_grad():
        for row in dataset:
            label = torch.from_numpy(to_label_array(row["label"]).copy())
            rgb = torch.from_numpy(to_rgb_array(row["image"]).copy()).permute(2, 0, 1)[None].float() / 255
            predictions = {}
            for name, network in networks.items():
                image = network_inputs(rgb, network)
                if mode == "whole":
                    predictions[name] = predict_whole(network, image, tuple(label.shape), input_size_hw)[0]
                else:
                    predictions[name] = predict_slide(network, image, tuple(label.shape), window_hw=window_hw, stride_hw=stride_hw)[0]
                matrices[name].update(predictions[name], label)
            matrices["student_vs_teacher"].update(predictions["student"], torch.where(label < 19, predictions["teacher"], 255))
    return matrices


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("kind", ["native", "datasets"])
def test_batched_evaluation_gives_the_confusion_matrices_of_one_image_at_a_time(mixed_sizes, kind, setting):
    """Batches of 3 (runs of equal size within them) and of the whole set, decoded in the main process or by 2 workers:
    the same confusion and agreement matrices, to the pixel, as each image alone (what evaluation gave before)."""
    data, networks, _ = mixed_sizes
    dataset = data[kind]
    expected = one_image_at_a_time(networks, dataset, **SETTINGS[setting])
    assert int(expected["student"].matrix.sum()) > 0 and int(expected["student_vs_teacher"].matrix.sum()) > 0
    for batch_size, num_workers in ((1, 0), (3, 0), (3, 2), (8, 2)):
        matrices = evaluate_networks(
            networks,
            dataset,
            torch.device("cpu"),
            agreement=(("student", "teacher"),),
            batch_size=batch_size,
            num_workers=num_workers,
            **SETTINGS[setting],
        )
        for name, matrix in expected.items():
            assert torch.equal(matrices[name].matrix, matrix.matrix), (name, batch_size, num_workers)
            assert int(matrices[name].ignored_pixels) == int(matrix.ignored_pixels)


def test_batched_evaluation_splits_the_images_over_processes_without_duplicates(mixed_sizes, capfd):
    """Each process a disjoint stride (batched, with workers): the two halves add up to the whole, and the progress bar
    counts this process's images."""
    data, networks, _ = mixed_sizes
    dataset = data["datasets"]
    whole = evaluate_networks(networks, dataset, torch.device("cpu"), batch_size=3)
    halves = [
        evaluate_networks(
            networks, dataset, torch.device("cpu"), process_index=rank, world_size=2, batch_size=2, num_workers=2, progress=True
        )
        for rank in (0, 1)
    ]
    progress = capfd.readouterr().err
    assert "evaluating" in progress and "4/4" in progress and "3/3" in progress  # ranks 0 and 1: images 0, 2, 4, 6 and 1, 3, 5
    for name in networks:
        assert torch.equal(halves[0][name].matrix + halves[1][name].matrix, whole[name].matrix)


def test_evaluation_leaves_the_global_random_state_as_it_was(mixed_sizes):
    """An evaluation in the middle of training must not move the run's random draws (DataLoader would draw its
    workers' base seed from torch's global generator): the same state after it, with or without (persistent) workers."""
    from duda_hf.evaluation.inference import evaluation_loader

    data, networks, _ = mixed_sizes
    dataset = data["datasets"]
    torch.manual_seed(7)
    state = torch.get_rng_state()
    evaluate_networks(networks, dataset, torch.device("cpu"), batch_size=3)
    evaluate_networks(networks, dataset, torch.device("cpu"), batch_size=3, num_workers=2)
    loader = evaluation_loader(dataset, batch_size=4, num_workers=1, persistent_workers=True)
    for _ in range(2):
        evaluate_networks(networks, dataset, torch.device("cpu"), loader=loader)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_decoding_error_in_a_worker_is_raised_as_it_is(mixed_sizes, tmp_path):
    """A label of the wrong size, found by a DataLoader worker: the library's DomainError with its message, no worker traceback."""
    import shutil

    _, networks, root = mixed_sizes
    shutil.copytree(root / "gta5", tmp_path / "gta5")
    save_palette_label(tmp_path / "gta5" / "labels" / "00003.png", np.zeros((8, 8), dtype=np.uint8))
    from duda_hf.data.domains import load_domain

    dataset = load_domain(str(tmp_path / "gta5"), format="gta5")
    with pytest.raises(DomainError, match=r"is 8x8 but its image is 64x40") as caught:
        evaluate_networks(networks, dataset, torch.device("cpu"), batch_size=2, num_workers=2)
    assert "Traceback" not in str(caught.value)
