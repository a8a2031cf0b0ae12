"""Atomic checkpoints: written in a staging folder, then renamed into place.

A checkpoint written file by file in place could be left half-written by a run killed mid-save (or a full disk),
looking like a checkpoint, and `--resume_from_checkpoint last` would pick it. `save_checkpoint` writes what
`Trainer` writes into `.partial-checkpoints/checkpoint-N` instead (`staged_checkpoint`); when every file is written (and `networks.json`
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
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_file
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_NAME

from duda_hf.jsonio import write_json
from duda_hf.networks.loading import NETWORKS_FILE
from duda_hf.training import state_files

STAGING_DIR = ".partial-checkpoints"
TRAINING_ARGS_FILE = "training_args.json"


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space; the message says where, how much and how to go on."""


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC or EDQUOT, as an OSError or as safetensors' own error (which is not an OSError)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a cluster's quota
    return isinstance(error, SafetensorError) and ("No space left on device" in str(error) or "quota exceeded" in str(error).lower())


def disk_full_error(name: str, run_dir: str, needed: int) -> DiskFullError:
    """The error of a save that ran out of space: the folder, the space a checkpoint takes, the last whole checkpoint."""
    last = get_last_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    error = DiskFullError(
        f"disk full while writing {name} in {run_dir}: a checkpoint needs about {needed / 2**20:.1f} MB ({needed:,} bytes). "
        f"Last complete checkpoint: {last or 'none'}; the partial copy in {STAGING_DIR}/ is never read and is removed "
        "at the next start. Free that much space (or lower --save_total_limit) and resume with "
        "--resume_from_checkpoint last."
    )
    error.errno = errno.ENOSPC
    return error


def checkpoint_bytes(trainer) -> int:
    """About what one checkpoint takes: every network's tensors and the optimizer's (its state, once it has one; else
    Adam's two moments per trained parameter)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    total = sum(t.numel() * t.element_size() for t in model.checkpoint_state_dict().values())
    state = trainer.optimizer.state_dict()["state"] if trainer.optimizer is not None else {}
    if state:
        total += sum(v.numel() * v.element_size() for entry in state.values() for v in entry.values() if hasattr(v, "numel"))
    else:
        total += 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return total


def remove_partial_checkpoints(run_dir: str) -> bool:
    """Remove what interrupted saves left in `run_dir/.partial-checkpoints/` (never read); True if there was some."""
    staging = os.path.join(run_dir, STAGING_DIR)
    if not os.path.isdir(staging):
        return False
    shutil.rmtree(staging, ignore_errors=True)
    return True


@contextmanager
def staged_checkpoint(trainer, run_dir: str, networks: dict) -> Iterator[str]:
    """Around one `Trainer` save of `checkpoint-<global_step>`: yields the folder the save must write into.

    Every process enters it (the saves and renames of the main process are fenced by `wait_for_everyone`).
    The folder yielded is the staging folder; the save writes `checkpoint-<global_step>` inside it.
    On exit without an error, the main process writes `networks` (each network's config by role) into the
    staged checkpoint, renames it to `run_dir/checkpoint-N` (replacing one of the same step), and rotates the
    checkpoints. A full disk becomes one error that says where, how much space and what to do.

    Args:
        trainer: the `Trainer` that saves (its `args`, `state` and `accelerator` are read).
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
        if args.should_save:
            write_json(os.path.join(staging, name, NETWORKS_FILE), networks)
    except (OSError, SafetensorError) as error:
        if is_disk_full(error):
            raise disk_full_error(name, run_dir, checkpoint_bytes(trainer)) from error
        raise
    accelerator.wait_for_everyone()
    if args.should_save:
        final = os.path.join(run_dir, name)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(os.path.join(staging, name), final)
        if not os.listdir(staging):
            os.rmdir(staging)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=args.save_total_limit,
            best_model_checkpoint=state.best_model_checkpoint,
            use_mtime=False,
        )
    accelerator.wait_for_everyone()


def save_checkpoint(trainer, networks: dict) -> str:
    """`output_dir/checkpoint-<global_step>` of `trainer`, whole or not at all; returns its path.

    What `Trainer` saves, as safetensors and JSON only: the model (every network in one model.safetensors, as
    Trainer writes it, but the frozen networks that are a function of their source: `DudaModel.checkpoint_state_dict`), the training arguments (`training_args.json`, where Trainer pickles `training_args.bin`), the
    optimizer, the learning-rate schedule, the gradient scaler if any and the random state of each process
    (`duda_hf/training/state_files.py`, where Trainer pickles them), and the trainer state with the state of every
    callback that keeps one; plus `networks.json` (`staged_checkpoint`). Every process calls it.
    """
    args, state = trainer.args, trainer.state
    trainer.store_flos()
    name = f"checkpoint-{state.global_step}"
    if state.best_global_step:  # `load_best_model_at_end`: the best step's checkpoint, once it exists
        best = os.path.join(args.output_dir, f"checkpoint-{state.best_global_step}")
        if os.path.isdir(best) or state.best_global_step == state.global_step:
            state.best_model_checkpoint = best
    with staged_checkpoint(trainer, args.output_dir, networks) as staging:
        folder = os.path.join(staging, name)
        if args.should_save:  # what Trainer's save_model writes for a model that is not a PreTrainedModel, without a pickle
            os.makedirs(folder, exist_ok=True)
            # every network but the frozen ones rebuilt from their sources at resume (duda_hf/networks/frozen.py)
            weights = {
                key: value.contiguous() for key, value in trainer.accelerator.unwrap_model(trainer.model).checkpoint_state_dict().items()
            }
            save_file(weights, os.path.join(folder, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})  # (channels_last: a copy)
            Path(folder, TRAINING_ARGS_FILE).write_text(args.to_json_string())
        if not args.save_only_model:
            _save_training_state(trainer, folder)
        if args.should_save:
            for callback in [*trainer.callback_handler.callbacks, trainer.control]:
                if isinstance(callback, ExportableState):
                    key = type(callback).__name__
                    if isinstance(state.stateful_callbacks.get(key), list):
                        state.stateful_callbacks[key].append(callback.state())
                    else:
                        state.stateful_callbacks[key] = callback.state()
            state.save_to_json(os.path.join(folder, TRAINER_STATE_NAME))
    return os.path.join(args.output_dir, name)


def _save_training_state(trainer, folder: str) -> None:
    """The optimizer, schedule and scaler (main process) and this process's random state, as safetensors and JSON
    (`duda_hf/training/state_files.py`)."""
    args = trainer.args
    os.makedirs(folder, exist_ok=True)
    if args.should_save:
        state_files.save_optimizer(trainer.optimizer, folder)
        state_files.save_json_state(trainer.lr_scheduler, os.path.join(folder, state_files.SCHEDULER_JSON))
        scaler = getattr(trainer.accelerator, "scaler", None)
        if scaler is not None:
            state_files.save_json_state(scaler, os.path.join(folder, state_files.SCALER_JSON))
    state_files.save_random_state(folder, args.process_index, args.world_size)
