"""The callbacks `DudaTrainer` adds to `transformers.Trainer`: what happens around the optimizer step and the run.

- `EmaTeacherCallback`: the EMA teacher follows its network after each optimizer step (not in the distillation stage).
- `RunLoss`: the loss summed over the whole run, kept in every checkpoint, so that `train_loss` covers the whole run
  also after a resume (Trainer's own covers one `train` call).
- `RemovePartialCheckpoints`: the partial copy an interrupted save left is removed when training starts again.
- `SyncBatchNormBuffers`: at the end of a DDP run, every process gets rank 0's BatchNorm statistics.
- `DebugImageCallback`: a picture of the step (source, target, mix, pseudo-label, prediction) every N steps.

Preemption (`duda_hf/training/preemption.py`) is a callback too.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import extract_model_from_parallel, reduce
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from duda_hf.training.checkpointing import STAGING_DIR, remove_partial_checkpoints

logger = logging.getLogger(__name__)


def saved_record(state, callback: ExportableState) -> dict:
    """What a stateful callback kept in the checkpoint resumed from (its `state()["args"]`; {} when none).

    Read at `on_train_begin`, once Trainer has loaded the checkpoint's state: Trainer restores callback states only on
    request (`restore_callback_states_from_checkpoint`).
    """
    saved = state.stateful_callbacks.get(type(callback).__name__) or {}
    saved = (saved[-1] if isinstance(saved, list) and saved else saved) or {}
    return saved.get("args", {})


class EmaTeacherCallback(TrainerCallback):
    """Updates the EMA teacher once per optimizer step (after it, before any checkpoint of that step), but in the
    distillation stage (`distill_stage_steps`), where the teacher is frozen."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        duda = extract_model_from_parallel(model)
        if duda.teacher is not None and not args.in_distill_stage(state.global_step - 1):  # frozen in the stage
            duda.update_teacher(args.ema_iteration(state.global_step), args.ema_alpha)


class RunLoss(TrainerCallback, ExportableState):
    """The training loss summed over every step of the run so far, kept in every checkpoint (trainer_state.json).

    `DudaTrainer.compute_loss` adds each micro-step's loss as Trainer counts it (divided by the gradient
    accumulation steps). The sum stays where the loss lives; `read_back` averages it over the processes, as
    Trainer's logged loss is, and reads it to the host: `DudaTrainer` calls it where every process meets anyway,
    before each log and each checkpoint. On resume the sum of the steps before comes from the checkpoint, so
    `train_loss` is the mean over the whole run.

    Args:
        loss_sum, steps: a checkpoint's record, as Trainer passes it when it rebuilds the callback from a checkpoint
            (`restore_callback_states_from_checkpoint`); the record is read again at `on_train_begin` either way.
    """

    def __init__(self, loss_sum: float = 0.0, steps: int = 0):
        self.earlier: float | None = loss_sum  # the sum before this `train` call; None when the checkpoint did not keep it
        self.first_step = self.global_step = steps  # the step this `train` call started from; the last read back
        self.total = 0.0  # this call's sum, read back
        self.pending: torch.Tensor | None = None  # this process's sum since the last read-back

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.pending = loss if self.pending is None else self.pending + loss

    def read_back(self, world_size: int, global_step: int) -> None:
        """Add the sum since the last read-back, averaged over the processes (every process must call it)."""
        if world_size > 1:  # every process takes part, also one with nothing pending
            pending = self.pending if self.pending is not None else torch.zeros((), device=PartialState().device)
            self.total += reduce(pending, reduction="mean").item()
        elif self.pending is not None:
            self.total += self.pending.item()
        self.pending, self.global_step = None, global_step

    def state(self) -> dict:
        steps = self.global_step if self.earlier is not None else -1  # -1: no sum to keep (unknown before a resume)
        return {"args": {"loss_sum": (self.earlier or 0.0) + self.total, "steps": steps}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        # the record of the checkpoint resumed from (read here: the Trainer restores callback states only on request)
        saved = saved_record(state, self)
        loss_sum, steps = saved.get("loss_sum", 0.0), saved.get("steps", 0)
        self.earlier = loss_sum if steps == state.global_step else None
        self.first_step = self.global_step = state.global_step
        self.total, self.pending = 0.0, None

    def train_loss(self) -> float:
        """The mean loss over the whole run (up to the last read-back); over this call's steps (said in the log) when
        the earlier sum is unknown."""
        if self.earlier is not None:
            return (self.earlier + self.total) / max(self.global_step, 1)
        logger.warning(
            "train_loss covers steps %d to %d only: the checkpoint resumed from does not keep the loss of the steps before it",
            self.first_step + 1,
            self.global_step,
        )
        return self.total / max(self.global_step - self.first_step, 1)


class RemovePartialCheckpoints(TrainerCallback):
    """At the start of training, removes what interrupted saves (a kill, a full disk) left in `.partial-checkpoints/`."""

    def on_train_begin(self, args, state, control, **kwargs):
        if args.should_save and remove_partial_checkpoints(args.output_dir):
            logger.warning("removed %s, the partial copy of an interrupted save (never read)", os.path.join(args.output_dir, STAGING_DIR))


class SyncBatchNormBuffers(TrainerCallback):
    """At the end of a run with several processes, every process gets rank 0's buffers (BatchNorm statistics).

    DDP copies rank 0's buffers to the others at the start of each forward pass; after the last one, each process
    has updated its own. This makes them identical, as the next forward pass would.
    """

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if args.world_size > 1:
            for buffer in extract_model_from_parallel(model).buffers():
                torch.distributed.broadcast(buffer, src=0)


class DebugImageCallback(TrainerCallback):
    """Every `debug_image_steps` steps, saves a picture of the step: source, target, mix, pseudo-label, prediction.

    Rows are images of the batch; the picture goes to `output_dir/debug/step_N.png` and to TensorBoard when
    it is a logger. The trainer only keeps the tensors of the steps this callback asks for.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        tensors = self.trainer.debug_tensors
        self.trainer.debug_tensors = None
        if tensors is None or not args.should_save:
            return
        from PIL import Image

        from duda_hf.data.labels import colorize

        def rgb(images):
            return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)

        columns = [rgb(tensors["source_image"]), rgb(tensors["target_image"]), rgb(tensors["mixed_image"])]
        columns += [colorize(tensors[key].cpu().numpy()) for key in ("mixed_label", "prediction")]
        grid = np.concatenate([np.concatenate(list(column), axis=0) for column in columns], axis=1)
        path = os.path.join(args.output_dir, "debug", f"step_{state.global_step}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(grid).save(path)
        for callback in self.trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.add_image("debug/source_target_mix_pseudolabel_prediction", grid, state.global_step, dataformats="HWC")
