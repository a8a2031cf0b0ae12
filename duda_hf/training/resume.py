"""Resuming a run: which checkpoint it continues from and what that restores.

`--resume_from_checkpoint DIR|last` continues a run exactly (docs/reproducibility.md). `resolve_checkpoint` says
which checkpoint and step it continues from and what the checkpoint restores, and that `last` starts from step 0
when the output folder has no checkpoint. (`train_loss` over the whole run after a resume: the `RunLoss` callback,
duda_hf/training/callbacks.py.)
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

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
