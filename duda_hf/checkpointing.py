"""Atomic checkpoints: written in a staging folder, then renamed into place.

`Trainer` writes `checkpoint-N` file by file; a run killed mid-save (or a full disk) would leave a folder that
looks like a checkpoint but is not whole, and `--resume_from_checkpoint last` would pick it. `staged_checkpoint`
points the save at `.partial-checkpoints/checkpoint-N` instead; when every file is written (and `networks.json`
beside the weights, so that `--student CHECKPOINT@role` can rebuild a network) the folder is renamed to
`checkpoint-N`, which readers see appear whole, and older checkpoints are rotated as `save_total_limit` says.
A staging folder left by an interrupted save is never read, and is removed by the next save of the same step.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from .jsonio import write_json
from .models import NETWORKS_FILE

STAGING_DIR = ".partial-checkpoints"


def disk_full_error(name: str, staging: str, run_dir: str, error: OSError) -> OSError:
    """The ENOSPC error of a save, with where the partial copy is, the last whole checkpoint and the way forward."""
    last = get_last_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    return OSError(
        errno.ENOSPC,
        f"disk full while writing {name}; the partial copy stays in {staging} and is not used. "
        f"Last complete checkpoint: {last or 'none'}. Free space (or raise --save_total_limit pruning) "
        "and resume with --resume_from_checkpoint.",
    )


@contextmanager
def staged_checkpoint(trainer, run_dir: str, networks: dict) -> Iterator[str]:
    """Around one `Trainer` save of `checkpoint-<global_step>`: yields the folder the save must write into.

    Every process enters it (the saves and renames of the main process are fenced by `wait_for_everyone`).
    On exit without an error, the main process writes `networks` (each network's config by role) into the
    staged checkpoint, renames it to `run_dir/checkpoint-N` (replacing one of the same step), and rotates the
    checkpoints. A full disk becomes an error that says what to do.

    Args:
        trainer: the `Trainer` that saves (its `args`, `state` and `accelerator` are read; `state.best_model_checkpoint`
            is moved along with the rename).
        run_dir: the folder the checkpoints live in (the output folder).
        networks: `DudaModel.network_configs()`, written as `networks.json`.
    """
    args, state, accelerator = trainer.args, trainer.state, trainer.accelerator
    name = f"checkpoint-{state.global_step}"
    staging = os.path.join(run_dir, STAGING_DIR)
    if args.should_save and os.path.isdir(os.path.join(staging, name)):
        shutil.rmtree(os.path.join(staging, name))  # debris of an interrupted save
    accelerator.wait_for_everyone()
    try:
        yield staging
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise disk_full_error(name, staging, run_dir, error) from error
        raise
    if args.should_save:
        write_json(os.path.join(staging, name, NETWORKS_FILE), networks)
    accelerator.wait_for_everyone()
    if args.should_save:
        final = os.path.join(run_dir, name)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(os.path.join(staging, name), final)
        if state.best_model_checkpoint and state.best_model_checkpoint.startswith(staging):
            state.best_model_checkpoint = final
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=args.save_total_limit,
            best_model_checkpoint=state.best_model_checkpoint,
            use_mtime=False,
        )
    accelerator.wait_for_everyone()
