"""The `evaluate` module is a drop-in for `evaluate.load("mean_iou")`: same arguments, same numbers, any class count.

Reference: mean_iou's definition (evaluate's metrics/mean_iou, after mmseg), written here one class at a time.
"""

import warnings

import evaluate
import numpy as np
import pytest

from duda_hf.evaluation import METRIC_PATH


def mean_iou_definition(predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None, reduce_labels=False):
    """evaluate's mean_iou by its definition, class by class.

    Each reference map is first remapped (`label_map`, every entry reading the original values), then reduced
    (`reduce_labels`: 0 -> 255, 255 stays 255, any other value v -> v - 1); pixels whose reference is `ignore_index`
    are left out. For class c over the remaining pixels: intersection = #(pred = c and ref = c), prediction area =
    #(pred = c), reference area = #(ref = c), union = prediction area + reference area - intersection.
    """
    intersection, prediction_area, reference_area = np.zeros(num_labels), np.zeros(num_labels), np.zeros(num_labels)
    for prediction, reference in zip(predictions, references):
        prediction, original = np.asarray(prediction, np.int64), np.asarray(reference, np.int64)
        reference = original.copy()
        for old, new in (label_map or {}).items():
            reference[original == old] = new
        if reduce_labels:
            reference = np.where(reference == 0, 255, np.where(reference == 255, 255, reference - 1))
        kept = reference != ignore_index
        for c in range(num_labels):
            intersection[c] += np.sum(kept & (prediction == c) & (reference == c))
            prediction_area[c] += np.sum(kept & (prediction == c))
            reference_area[c] += np.sum(kept & (reference == c))
    union = prediction_area + reference_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0 / 0 and the mean of no value are NaN
        iou, accuracy = intersection / union, intersection / reference_area
        overall = intersection.sum() / reference_area.sum()
        result = {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(accuracy), "overall_accuracy": overall}
    result.update(per_category_iou=iou, per_category_accuracy=accuracy)
    if nan_to_num is not None:
        result = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in result.items()}
    return result


def assert_same(result, expected):
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert np.array_equal(np.asarray(result[name]), np.asarray(value), equal_nan=True), name


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(METRIC_PATH)


def test_mean_iou_docstring_example_gives_its_documented_numbers(metric):
    # the example of evaluate's mean_iou card, called exactly as there
    predicted = [np.array([[1, 2], [3, 4], [5, 255]]), np.array([[2, 7], [9, 2], [3, 6]]), np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])]
    actual = [np.array([[0, 3], [5, 4], [6, 255]]), np.array([[1, 7], [9, 2], [3, 6]]), np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])]
    result = metric.compute(predictions=predicted, references=actual, num_labels=10, ignore_index=255, reduce_labels=False)
    assert result["mean_iou"] == 0.47750000000000004
    assert result["mean_accuracy"] == 0.5916666666666666
    assert result["overall_accuracy"] == 0.5263157894736842
    assert np.allclose(result["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1], rtol=0, atol=1e-15)
    assert np.allclose(result["per_category_accuracy"], [0, 0, 0.75, 2 / 3, 1, 0, 0.5, 1, 1, 1], rtol=0, atol=1e-15)
    assert_same(result, mean_iou_definition(predicted, actual, 10, 255))


def test_ade20k_150_classes_with_reduce_labels(metric):
    rng = np.random.default_rng(0)
    references = [rng.integers(0, 151, (23, 31)).astype(np.uint8) for _ in range(3)]  # 0 = ADE20k's "other"
    predictions = [rng.integers(0, 150, (23, 31)) for _ in range(3)]
    for prediction in predictions:
        prediction[prediction == 149] = 3  # class 149: only in the references
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add(prediction=predictions[2], reference=references[2])
    result = metric.compute(num_labels=150, ignore_index=255, reduce_labels=True)
    expected = mean_iou_definition(predictions, references, 150, 255, reduce_labels=True)
    assert_same(result, expected)
    assert result["per_category_iou"].shape == (150,) and result["per_category_iou"][149] == 0.0


def test_nan_to_num_replaces_absent_classes(metric):
    predictions = [np.array([[0, 1], [1, 1]])]
    references = [np.array([[0, 1], [255, 0]])]
    plain = metric.compute(predictions=predictions, references=references, num_labels=4, ignore_index=255)
    assert np.isnan(plain["per_category_iou"][2:]).all()  # classes 2 and 3: in neither
    zeroed = metric.compute(predictions=predictions, references=references, num_labels=4, ignore_index=255, nan_to_num=0)
    # as in mean_iou, the means are taken first (over the defined classes) and NaNs replaced afterwards
    assert zeroed["per_category_iou"].tolist() == [0.5, 0.5, 0.0, 0.0] and zeroed["mean_iou"] == 0.5
    assert_same(zeroed, mean_iou_definition(predictions, references, 4, 255, nan_to_num=0))


def test_label_map_reads_the_original_values(metric):
    rng = np.random.default_rng(1)
    references = [rng.integers(0, 6, (17, 19)) for _ in range(2)]
    predictions = [rng.integers(0, 5, (17, 19)) for _ in range(2)]
    swap = {1: 2, 2: 1, 5: 255}  # 1 and 2 trade places (not both 2), 5 becomes ignore
    result = metric.compute(predictions=predictions, references=references, num_labels=5, ignore_index=255, label_map=swap)
    assert_same(result, mean_iou_definition(predictions, references, 5, 255, label_map=swap))
    assert not np.array_equal(
        result["per_category_iou"],
        metric.compute(predictions=predictions, references=references, num_labels=5, ignore_index=255)["per_category_iou"],
    )


def test_values_outside_the_classes_count_as_mean_iou_counts_them(metric):
    # reference 7 (not a class, not ignored) still counts its pixel's prediction; prediction 9 its reference
    predictions = [np.array([[0, 0, 9, 1]])]
    references = [np.array([[0, 7, 1, 1]])]
    result = metric.compute(predictions=predictions, references=references, num_labels=2, ignore_index=255)
    assert result["per_category_iou"].tolist() == [1 / 2, 1 / 2] and result["overall_accuracy"] == 2 / 3
    assert_same(result, mean_iou_definition(predictions, references, 2, 255))


def test_load_time_arguments_are_the_defaults_and_compute_overrides_them():
    rng = np.random.default_rng(2)
    references = [rng.integers(0, 8, (9, 11)) for _ in range(2)]
    predictions = [rng.integers(0, 7, (9, 11)) for _ in range(2)]
    metric = evaluate.load(METRIC_PATH, num_labels=7, ignore_index=0, reduce_labels=True)
    assert_same(
        metric.compute(predictions=predictions, references=references),
        mean_iou_definition(predictions, references, 7, 0, reduce_labels=True),
    )
    overridden = metric.compute(predictions=predictions, references=references, ignore_index=255, reduce_labels=False)
    assert_same(overridden, mean_iou_definition(predictions, references, 7, 255))


def test_default_is_cityscapes_and_many_maps_keep_one_small_matrix(metric):
    rng = np.random.default_rng(3)
    predictions = [rng.integers(0, 19, (40, 60)) for _ in range(12)]
    references = [np.where(rng.random((40, 60)) < 0.2, 255, rng.integers(0, 19, (40, 60))).astype(np.uint8) for _ in range(12)]
    for prediction, reference in zip(predictions, references):
        metric.add(prediction=prediction, reference=reference)
        reference_values, prediction_values, counts = metric.joint_counts
        assert counts.shape == (len(reference_values), len(prediction_values)) and counts.shape[0] <= 20 and counts.shape[1] <= 19
    assert_same(metric.compute(), mean_iou_definition(predictions, references, 19, 255))


def test_processes_merge_their_counts(metric):
    rng = np.random.default_rng(4)
    predictions = [rng.integers(-1, 12, (13, 7)) for _ in range(4)]
    references = [rng.integers(0, 12, (13, 7)) for _ in range(4)]
    other = evaluate.load(METRIC_PATH)
    metric.add_batch(predictions=predictions[::2], references=references[::2])
    other.add_batch(predictions=predictions[1::2], references=references[1::2])
    metric.add_joint_counts(*other.joint_counts)
    assert_same(metric.compute(num_labels=10, ignore_index=11), mean_iou_definition(predictions, references, 10, 11))


def test_wrong_calls_say_what_is_accepted(metric):
    with pytest.raises(TypeError, match=r"unexpected arguments \['num_classes'\]; this metric takes \['num_labels', 'ignore_index'"):
        metric.compute(predictions=[np.zeros((2, 2), int)], references=[np.zeros((2, 2), int)], num_classes=3)
    with pytest.raises(ValueError, match=r"num_labels must be a positive integer \(the number of classes\), got 0"):
        metric.compute(num_labels=0)
    with pytest.raises(ValueError, match=r"predictions must hold integer class values, got dtype float64; pass class-index maps"):
        metric.add(prediction=np.full((2, 2), 0.5), reference=np.zeros((2, 2), int))
    with pytest.raises(ValueError, match=r"prediction \(2, 2\) and reference \(2, 3\) must have the same shape"):
        metric.add(prediction=np.zeros((2, 2), int), reference=np.zeros((2, 3), int))
