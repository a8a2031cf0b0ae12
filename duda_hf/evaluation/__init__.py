"""Evaluation: streaming confusion matrices and mIoU (`confusion`), inference (`inference`), reports and plots
(`report`), and the same metric as an `evaluate` module loaded by path (`METRIC_PATH`)."""

from pathlib import Path

METRIC_PATH = str(Path(__file__).resolve().parent / "streaming_miou")
