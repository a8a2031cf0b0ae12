"""Resuming a run: which checkpoint it continues from and what that restores, and a `train_loss` over the whole run.

`--resume_from_checkpoint DIR|last` continues a run exactly (docs/reproducibility.md). `resolve_checkpoint` says
which checkpoint and step it continues from and what the checkpoint restores, and that `last` starts from step 0
when the output folder has no checkpoint. The Trainer's `train_loss` is the mean over the steps of one `train`
call; `RunLoss` keeps the sum of the loss over every step so far in each checkpoint, so that the `train_loss` of
a resumed run is the mean over the whole run.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)

LAST = ("last", "true", "True")
# what a checkpoint file restores (DudaTrainer checkpoints: docs/design.md, "Training contract")
RESTORES = (
    ("model.safetensors", "every network (students, EMA teacher, extra teachers) and the class inconsistency state"),
    ("optimizer.pt", "the optimizer"),
    ("scheduler.pt", "the learning-rate schedule"),
    ("rng_state*.pth", "the random state"),
)


class ResumeError(ValueError):
    """A `--resume_from_checkpoint` that names no checkpoint."""


def resolve_checkpoint(value: str | None, output_dir: str, announce: bool = True) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` means (None: start from step 0), said in the log.

    Args:
        value: a checkpoint folder, `last` (the newest complete `checkpoint-N` of `output_dir`), or empty.
        announce: log what the run continues from (the main process).

    Raises:
        ResumeError: `value` is a folder that is not a checkpoint, naming the checkpoints there are.
    """
    if not value or value in ("false", "False"):
        return None
    if value in LAST:
        checkpoint = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if checkpoint is None:
            if announce:
                logger.warning("--resume_from_checkpoint %s: no checkpoint in %s, so training starts from step 0", value, output_dir)
            return None
    else:
        checkpoint = value
    state_file = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(state_file):
        parent = os.path.dirname(os.path.abspath(checkpoint))
        found = sorted(glob.glob(os.path.join(parent, "checkpoint-*"))) if os.path.isdir(parent) else []
        raise ResumeError(
            f"--resume_from_checkpoint '{checkpoint}' is not a checkpoint (no trainer_state.json). Checkpoints in "
            f"{parent}: {[os.path.basename(path) for path in found] or 'none'}; or pass --resume_from_checkpoint last."
        )
    if announce:
        state = json.loads(Path(state_file).read_text())
        restored = [what for pattern, what in RESTORES if glob.glob(os.path.join(checkpoint, pattern))]
        missing = [what for pattern, what in RESTORES if not glob.glob(os.path.join(checkpoint, pattern))]
        logger.warning(
            "resuming from %s: step %d of %d; restored %s, and the log history%s",
            checkpoint,
            state.get("global_step", 0),
            state.get("max_steps", 0),
            ", ".join(restored),
            f"; not in it, so started afresh: {', '.join(missing)}" if missing else "",
        )
    return checkpoint


class RunLoss(TrainerCallback, ExportableState):
    """The training loss summed over the steps of the run so far, kept in every checkpoint (trainer_state.json).

    On resume it reads the sum back from the checkpoint's state, so the final `train_loss` is the mean over the
    whole run, not only over the steps after the resume.
    """

    def __init__(self, loss_sum: float = 0.0, steps: int = 0):
        self.loss_sum, self.steps = loss_sum, steps
        self.earlier: float | None = 0.0  # the loss sum before this `train` call; None when the checkpoint did not keep it

    def state(self) -> dict:
        return {"args": {"loss_sum": self.loss_sum, "steps": self.steps}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        # the record of the checkpoint resumed from (read here: the Trainer restores callback states only on request)
        saved = state.stateful_callbacks.get(type(self).__name__) or {}
        saved = (saved[-1] if isinstance(saved, list) and saved else saved) or {}
        loss_sum, steps = saved.get("args", {}).get("loss_sum", 0.0), saved.get("args", {}).get("steps", 0)
        self.earlier = loss_sum if steps == state.global_step else None

    def record(self, loss_this_call: float, global_step: int) -> None:
        """Before a checkpoint is written: the sum up to `global_step`, from this call's running loss sum."""
        if self.earlier is not None:
            self.loss_sum, self.steps = self.earlier + loss_this_call, global_step
        else:  # unknown before the resume: no sum to keep
            self.loss_sum, self.steps = 0.0, -1

    def train_loss(self, loss_this_call: float, global_step: int, first_step: int) -> float:
        """The mean loss over the whole run; over this call's steps (said in the log) when the earlier sum is unknown."""
        if self.earlier is not None:
            return (self.earlier + loss_this_call) / max(global_step, 1)
        logger.warning(
            "train_loss covers steps %d to %d only: the checkpoint resumed from does not keep the loss of the steps before it",
            first_step + 1,
            global_step,
        )
        return loss_this_call / max(global_step - first_step, 1)
