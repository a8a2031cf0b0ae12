"""Streaming mean IoU as an `evaluate` module: a drop-in for `evaluate.load("mean_iou")` that keeps no maps.

`evaluate`'s own mean_iou needs the Hub and keeps every prediction and reference map until `compute()`. This
module loads offline from a local path and keeps one small matrix: how many pixels had each (reference value,
predicted value) pair, over every map added so far. Every argument of mean_iou (`num_labels`, `ignore_index`,
`nan_to_num`, `label_map`, `reduce_labels`) acts on pixel values only, so it is applied to that matrix at
`compute()` and gives mean_iou's numbers for the same call, with any number of classes:

    import evaluate
    from duda_hf.evaluation import METRIC_PATH
    metric = evaluate.load(METRIC_PATH)                      # or evaluate.load(METRIC_PATH, num_labels=150, ...)
    metric.add_batch(predictions=preds, references=labels)   # as often as needed; memory does not grow
    metric.compute(num_labels=150, ignore_index=255, reduce_labels=True)   # same arguments as mean_iou

Arguments given at load time are the defaults of `compute()`; without any, it scores the 19 Cityscapes trainIds
with 255 ignored. The numbers are mean_iou's (mmseg's): a reference pixel equal to `ignore_index` is left out;
per class, IoU = intersection / union and accuracy = intersection / reference area, NaN where the denominator is
0 (a class in neither, or not in the references); means are NaN-means. A reference value outside
0..num_labels-1 that is not `ignore_index` still counts its pixel's prediction, and a prediction outside that
range still counts its pixel's reference, exactly as mean_iou's histograms do.

Across processes, gather each process's `metric.joint_counts` and add them to one metric with
`add_joint_counts`. The module needs numpy only.
"""

import warnings

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{duda2025,
  title={Distilled Unsupervised Domain Adaptation for Lightweight Semantic Segmentation},
  journal={arXiv preprint arXiv:2504.09814},
  year={2025}
}
"""

_KWARGS = """
Args:
    predictions: list of `(H, W)` integer class maps (any size; each the size of its reference).
    references: list of `(H, W)` integer label maps.
    num_labels (int): number of classes (default 19, the Cityscapes trainIds).
    ignore_index (int): reference value left out of the metric (default 255); None leaves nothing out.
    nan_to_num (float, optional): replaces every NaN in the results (e.g. 0), as mean_iou does.
    label_map (dict, optional): old reference value -> new value, applied to the original values first.
    reduce_labels (bool): reference 0 becomes 255, 255 stays, every other value drops by 1 (ADE20k; after label_map).
    class_subsets (dict, optional): extra means over class subsets, e.g. {"mIoU16": [...], "mIoU13": [...]}.
Each of these can be given to `evaluate.load(...)` (the defaults) or to `compute(...)`.
Returns:
    mean_iou, mean_accuracy, overall_accuracy, per_category_iou (array), per_category_accuracy (array), and one
    entry per class subset.
"""

_OPTIONS = ("num_labels", "ignore_index", "nan_to_num", "label_map", "reduce_labels", "class_subsets")
# Above this many (reference value, prediction value) bins a map is counted through np.unique instead of a window.
_MAX_DENSE_BINS = 1 << 22


def _class_map(values, name: str) -> np.ndarray:
    """An integer numpy array of `values` (a map); ValueError for values that are not whole numbers."""
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return array.astype(np.int64, copy=False)
    if array.dtype.kind == "f" and np.array_equal(array, np.round(array)):
        return array.astype(np.int64)
    raise ValueError(f"{name} must hold integer class values, got dtype {array.dtype}; pass class-index maps (e.g. logits.argmax(1))")


def _pair_counts(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(reference_values, prediction_values, counts)`: pixels per (reference, prediction) value pair of one map."""
    low_ref, high_ref, low_pred, high_pred = reference.min(), reference.max(), prediction.min(), prediction.max()
    rows, cols = int(high_ref - low_ref) + 1, int(high_pred - low_pred) + 1
    if rows * cols <= _MAX_DENSE_BINS:  # one bincount over the value window (labels are small integers)
        reference_values, prediction_values = np.arange(low_ref, high_ref + 1), np.arange(low_pred, high_pred + 1)
        index = (reference - low_ref) * cols + (prediction - low_pred)
    else:
        reference_values, reference_index = np.unique(reference, return_inverse=True)
        prediction_values, prediction_index = np.unique(prediction, return_inverse=True)
        rows, cols = len(reference_values), len(prediction_values)
        index = reference_index * cols + prediction_index
    counts = np.bincount(index.ravel(), minlength=rows * cols).reshape(rows, cols)
    used_rows, used_cols = counts.any(axis=1), counts.any(axis=0)
    return reference_values[used_rows], prediction_values[used_cols], counts[np.ix_(used_rows, used_cols)]


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS)
class StreamingMiou(evaluate.Metric):
    def __init__(self, num_labels=19, ignore_index=255, nan_to_num=None, label_map=None, reduce_labels=False, class_subsets=None, **kwargs):
        super().__init__(**kwargs)
        self.defaults = self._checked(
            {
                "num_labels": num_labels,
                "ignore_index": ignore_index,
                "nan_to_num": nan_to_num,
                "label_map": label_map,
                "reduce_labels": reduce_labels,
                "class_subsets": class_subsets,
            }
        )
        self._reset()

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    @staticmethod
    def _checked(options: dict) -> dict:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(
                f"unexpected arguments {unknown}; this metric takes {list(_OPTIONS)} (as evaluate's mean_iou, plus class_subsets)"
            )
        num_labels = options.get("num_labels")
        if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1):
            raise ValueError(f"num_labels must be a positive integer (the number of classes), got {num_labels!r}")
        if options.get("label_map") is not None and not isinstance(options["label_map"], dict):
            raise ValueError(f"label_map must be a dict of old value -> new value, got {type(options['label_map']).__name__}")
        return options

    def _reset(self) -> None:
        self._reference_values = np.zeros(0, dtype=np.int64)
        self._prediction_values = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros((0, 0), dtype=np.int64)

    @property
    def joint_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(reference_values, prediction_values, counts)`: everything this metric holds (sorted values, pixel counts)."""
        return self._reference_values.copy(), self._prediction_values.copy(), self._counts.copy()

    def add_joint_counts(self, reference_values, prediction_values, counts) -> None:
        """Add pixel counts per (reference value, prediction value) pair, e.g. another process's `joint_counts`."""
        reference_values, prediction_values = np.asarray(reference_values, np.int64), np.asarray(prediction_values, np.int64)
        counts = np.asarray(counts, np.int64).reshape(len(reference_values), len(prediction_values))
        all_references = np.union1d(self._reference_values, reference_values)
        all_predictions = np.union1d(self._prediction_values, prediction_values)
        if self._counts.shape != (len(all_references), len(all_predictions)):
            grown = np.zeros((len(all_references), len(all_predictions)), dtype=np.int64)
            grown[
                np.ix_(np.searchsorted(all_references, self._reference_values), np.searchsorted(all_predictions, self._prediction_values))
            ] = self._counts
            self._reference_values, self._prediction_values, self._counts = all_references, all_predictions, grown
        # values are unique along each axis, so the fancy-indexed += adds every count once
        self._counts[np.ix_(np.searchsorted(all_references, reference_values), np.searchsorted(all_predictions, prediction_values))] += (
            counts
        )

    def _accumulate(self, prediction, reference) -> None:
        prediction, reference = _class_map(prediction, "predictions"), _class_map(reference, "references")
        if prediction.shape != reference.shape:
            raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} must have the same shape")
        if reference.size:
            self.add_joint_counts(*_pair_counts(prediction, reference))

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of maps (only their pair counts are kept)."""
        for prediction, reference in zip(predictions, references, strict=True):
            self._accumulate(prediction, reference)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one map."""
        self._accumulate(prediction, reference)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Metrics of everything added so far (plus `predictions`/`references` if given); then starts afresh.

        Keyword arguments are mean_iou's (`num_labels`, `ignore_index`, `nan_to_num`, `label_map`,
        `reduce_labels`) and `class_subsets`; each defaults to its value at load time.
        """
        options = {**self.defaults, **self._checked(kwargs)}
        if predictions is not None:
            self.add_batch(predictions=predictions, references=references)
        matrix = self._confusion(options["num_labels"], options["ignore_index"], options["label_map"], options["reduce_labels"])
        self._reset()
        return self._metrics(matrix, options["class_subsets"] or {}, options["nan_to_num"])

    def _compute(self, predictions, references, **kwargs):
        return self.compute(predictions=predictions, references=references, **kwargs)

    def _confusion(self, num_labels, ignore_index, label_map, reduce_labels) -> np.ndarray:
        """`(C + 1, C + 1)` pixel counts, rows = reference class, columns = predicted class; index C = any other value."""
        references = self._reference_values.copy()
        if label_map:  # every mapping reads the original values, as mean_iou's
            original = references.copy()
            for old, new in label_map.items():
                references[original == old] = new
        if reduce_labels:  # mean_iou's arithmetic, step by step: 0 -> 255, others -1, and 255 stays 255
            references[references == 0] = 255
            references = references - 1
            references[references == 254] = 255
        kept = references != ignore_index if ignore_index is not None else np.ones(len(references), dtype=bool)
        c = num_labels
        rows = np.where((references >= 0) & (references < c), references, c)[kept]
        columns = np.where((self._prediction_values >= 0) & (self._prediction_values < c), self._prediction_values, c)
        matrix = np.zeros((c + 1, c + 1), dtype=np.int64)
        np.add.at(matrix, (rows[:, None], columns[None, :]), self._counts[kept])
        return matrix

    @staticmethod
    def _metrics(matrix: np.ndarray, class_subsets: dict, nan_to_num) -> dict:
        c = matrix.shape[0] - 1
        matrix = matrix.astype(np.float64)
        intersection = np.diag(matrix)[:c]
        reference_area = matrix[:c].sum(axis=1)
        union = reference_area + matrix[:, :c].sum(axis=0) - intersection
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the NaN-mean of no class is NaN, as in mean_iou
            iou = intersection / union
            accuracy = intersection / reference_area
            result = {
                "mean_iou": np.nanmean(iou),
                "mean_accuracy": np.nanmean(accuracy),
                "overall_accuracy": intersection.sum() / reference_area.sum(),
                "per_category_iou": iou,
                "per_category_accuracy": accuracy,
            }
            for name, classes in class_subsets.items():
                result[name] = np.nanmean(iou[list(classes)])
        if nan_to_num is not None:
            result = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in result.items()}
        return result
