"""Streaming mean IoU as an `evaluate` metric module: a confusion matrix instead of stored maps.

`evaluate`'s own `mean_iou` needs the Hub and stores every prediction and reference map before computing;
this module loads offline from a local path and keeps only a `(C, C)` matrix, whatever the number of maps:

    import evaluate
    from duda_hf.evaluation import METRIC_PATH
    metric = evaluate.load(METRIC_PATH)            # or the folder holding this file
    metric.add_batch(predictions=preds, references=labels)
    metric.compute()  # {'mean_iou', 'mean_accuracy', 'overall_accuracy', 'per_category_iou', 'per_category_accuracy'}

The numbers follow mmseg / `evaluate`'s mean_iou: per-class IoU over pixels whose reference is a class
(`ignore_index` and any value outside 0..num_labels-1 ignored), mean IoU as the nan-mean over classes present in
the prediction or the reference. It needs numpy only. Across processes, sum `metric.confusion_matrix`.
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
    predictions: list of `(H, W)` integer class maps (values 0..num_labels-1).
    references: list of `(H, W)` integer label maps (ignore_index and out-of-range values are ignored).
    num_labels (int): number of classes (default 19, Cityscapes).
    ignore_index (int): label value to ignore (default 255).
    class_subsets (dict): optional extra means, e.g. {"mIoU16": [...], "mIoU13": [...]} for SYNTHIA -> Cityscapes.
Returns:
    mean_iou, mean_accuracy, overall_accuracy, per_category_iou (array), per_category_accuracy (array), and one
    entry per class subset.
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS)
class StreamingMiou(evaluate.Metric):
    def __init__(self, num_labels: int = 19, ignore_index: int = 255, class_subsets=None, **kwargs):
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.class_subsets = dict(class_subsets or {})
        self.confusion_matrix = np.zeros((num_labels, num_labels), dtype=np.int64)

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
        )

    def _accumulate(self, prediction, reference) -> None:
        prediction = np.asarray(prediction)
        reference = np.asarray(reference).astype(np.int64)
        if prediction.shape != reference.shape:
            raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} must have the same shape")
        if prediction.size and (prediction.min() < 0 or prediction.max() >= self.num_labels):
            raise ValueError(f"predictions must be class indices in 0..{self.num_labels - 1}")
        c = self.num_labels
        reference = np.where((reference < 0) | (reference >= c) | (reference == self.ignore_index), c, reference)
        counts = np.bincount((reference * c + prediction).ravel(), minlength=(c + 1) * c)
        self.confusion_matrix += counts[: c * c].reshape(c, c)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of maps to the confusion matrix (nothing else is kept)."""
        for prediction, reference in zip(predictions, references):
            self._accumulate(prediction, reference)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one map to the confusion matrix."""
        self._accumulate(prediction, reference)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Metrics of everything added so far (plus `predictions`/`references` if given); then starts afresh."""
        if predictions is not None:
            self.add_batch(predictions=predictions, references=references)
        result = self._metrics(self.confusion_matrix, kwargs.get("class_subsets", self.class_subsets))
        self.confusion_matrix = np.zeros_like(self.confusion_matrix)
        return result

    def _compute(self, predictions, references, **kwargs):
        return self.compute(predictions=predictions, references=references, **kwargs)

    @staticmethod
    def _metrics(matrix, class_subsets):
        matrix = matrix.astype(np.float64)
        intersection = np.diag(matrix)
        label_area = matrix.sum(axis=1)
        union = label_area + matrix.sum(axis=0) - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersection / union
            accuracy = intersection / label_area
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the nan-mean of an all-nan subset is nan, as intended
            result = {
                "mean_iou": float(np.nanmean(iou)),
                "mean_accuracy": float(np.nanmean(accuracy)),
                "overall_accuracy": float(intersection.sum() / matrix.sum()) if matrix.sum() else float("nan"),
                "per_category_iou": iou,
                "per_category_accuracy": accuracy,
            }
            for name, classes in class_subsets.items():
                result[name] = float(np.nanmean(iou[list(classes)]))
        return result
