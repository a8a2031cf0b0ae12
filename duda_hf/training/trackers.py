"""What the trackers (`--report_to tensorboard,trackio`, wandb, ...) get: the per-class series grouped by what they are.

Trainer hands each log to its reporting callbacks, which name a value `train/<key>` or `eval/<key>` (transformers'
`rewrite_logs`). The per-class series reach them under one prefix per series, a chart per class (trackio shows each
prefix as a sub-group of `train` or `eval`; TensorBoard's tag filter takes the prefix):

- `train/class_weight/<class>`: the 19 inconsistency class weights of each logging step (`TrackerNames` renames
  them; the log history and `train_history` keep `class_weight_<class>`), and any other 19-class diagnostic a
  step logs, the same way;
- at each evaluation, `eval/<network>_iou/<class>` (network: student, auxiliary, teacher) and
  `eval/student_vs_teacher_iou/<class>` (the student's prediction scored against the teacher's), in percent like
  `eval/<network>_mIoU` (`per_class_logs`, sent by `DudaTrainer.evaluate` to the trackers only: the run folder has
  them as fractions, `per_class_history` of `eval_results.json`). A class in neither the labels nor the predictions
  has no IoU and no point.

`<class>` is the Cityscapes class name with `_` for a space (`traffic_light`). The console shows none of these
(`duda_hf/training/console.py`); the log history (`trainer_state.json`, `eval_results.json`) keeps its names.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

from duda_hf.training.step_log import CLASS_KEYS

__all__ = ["TrackerNames", "check_trackers", "name_the_run", "per_class_logs", "send_to_trackers", "tracker_callbacks"]


def tracker_names(logs: dict) -> dict:
    """`logs` with each full 19-class series `<name>_<class>` renamed `<name>/<class>`, in place; returns `logs`."""
    names = {}
    for key in logs:
        for class_key in CLASS_KEYS:
            if key.endswith(f"_{class_key}"):
                names.setdefault(key[: -len(class_key) - 1], []).append(class_key)
    for name, classes in names.items():
        if set(classes) == set(CLASS_KEYS):  # all 19: a per-class series, not a name that ends like a class
            for class_key in CLASS_KEYS:
                logs[f"{name}/{class_key}"] = logs.pop(f"{name}_{class_key}")
    return logs


class TrackerNames(TrainerCallback):
    """Renames the per-class series of each log for the trackers (`class_weight_road` -> `class_weight/road`).

    `DudaTrainer` puts it first among the callbacks, so that the reporting callbacks after it see the grouped names;
    the log history was written before any callback runs and keeps the flat ones. The callbacks after it, the
    console and any of the user's, get the grouped names in `on_log` too.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            tracker_names(logs)


def per_class_logs(record: dict, prefix: str = "eval") -> dict[str, float]:
    """An evaluation's per-class IoU (a `per_class_history` entry: `{network: {class: IoU}}`) as tracker values:
    `<prefix>_<network>_iou/<class>` in percent, rounded like the logged mIoU; undefined IoUs (NaN) left out."""
    logs = {}
    for network, per_class in record.items():
        if not isinstance(per_class, dict):  # "step"
            continue
        for name, iou in per_class.items():
            if iou is not None and math.isfinite(iou):
                logs[f"{prefix}_{network}_iou/{name.replace(' ', '_')}"] = round(100 * iou, 2)
    return logs


def tracker_callbacks(callbacks) -> list[TrainerCallback]:
    """The reporting callbacks (`--report_to`: TensorBoard, trackio, wandb, ...) among `callbacks`."""
    kinds = tuple(INTEGRATION_TO_CALLBACK.values())
    return [callback for callback in callbacks if isinstance(callback, kinds)]


def send_to_trackers(trainer, logs: dict[str, float]) -> None:
    """`logs` to the trackers only (each callback's `on_log`, as Trainer calls it), not to the log history or the
    console. Each tracker logs on the main process only, as it does for Trainer's logs."""
    if not logs:
        return
    for callback in tracker_callbacks(trainer.callback_handler.callbacks):
        callback.on_log(trainer.args, trainer.state, trainer.control, logs=dict(logs), model=trainer.model)


def check_trackers(args) -> None:
    """Before the run: trackio is installed when asked for, and an offline run does not log to a Space."""
    if "trackio" not in (args.report_to or []):
        return
    from huggingface_hub import is_offline_mode

    if importlib.util.find_spec("trackio") is None:
        raise ImportError("--report_to trackio needs trackio: pip install 'duda-hf[trackio]' (or pip install trackio)")
    space = args.trackio_space_id or os.environ.get("TRACKIO_SPACE_ID")
    if space and is_offline_mode():
        raise ValueError(
            f"--report_to trackio with the Space '{space}' (--trackio_space_id or TRACKIO_SPACE_ID) needs the network, but "
            "huggingface_hub is offline (HF_HUB_OFFLINE=1): drop the Space to log locally (trackio show opens the dashboard), "
            "or unset HF_HUB_OFFLINE"
        )


def name_the_run(args, checkpoint: str | None) -> None:
    """Give a run that logs to trackers, and was given no `--run_name`, a name of its own, before it starts.

    A resumed run takes the name its checkpoint recorded (`training_args.json`), so it continues its tracker run; a
    new one is named `<output folder>-<UTC time>`, so that runs into folders of the same name, or a run started again
    from scratch, never write into one tracker run (trackio resumes a run of the same name).
    """
    if args.run_name or not args.report_to:
        return
    saved = Path(checkpoint) / "training_args.json" if checkpoint else None
    if saved is not None and saved.is_file():
        name = json.loads(saved.read_text()).get("run_name")
        if name:
            args.run_name = name
            return
    args.run_name = f"{Path(args.output_dir).resolve().name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
