"""`DudaTrainer`: the step of docs/method.md (`duda_hf/method/step.py`) as `compute_loss`, the rest deferred to `transformers.Trainer`.

Here: the set-up (callbacks, optimizer, checks of the training data and the extra loss terms), the step and its state
updates, the log, the resume, the checkpoint save and the Hub. The evaluation (`evaluate`, streaming mIoU of every
network) is the `StreamingEvaluation` mixin in `duda_hf/training/trainer_evaluation.py`. The Trainer methods
overridden here and there are listed with the reason and the transformers versions they were written for in
`duda_hf/training/trainer_internals.py`; what a callback can do is in `duda_hf/training/callbacks.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import Future

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from duda_hf.data.labels import NUM_CLASSES
from duda_hf.method.config import DudaConfig
from duda_hf.method.losses import class_iou_counts, update_class_discrepancy
from duda_hf.method.step import TERMS, LossTerm, StepTensors, duda_step
from duda_hf.networks.duda_model import DudaModel, prepare_networks
from duda_hf.training import state_files
from duda_hf.training.bad_samples import BadSamples
from duda_hf.training.callbacks import (
    DebugImageCallback,
    EmaTeacherCallback,
    RemovePartialCheckpoints,
    RunLoss,
    SyncBatchNormBuffers,
)
from duda_hf.training.checkpointing import save_checkpoint
from duda_hf.training.console import Console
from duda_hf.training.hub_policy import CheckpointPushes, create_run_repo, push_student
from duda_hf.training.optimizer import build_optimizer, build_schedule
from duda_hf.training.preemption import Preemption
from duda_hf.training.resume import check_resume
from duda_hf.training.step_log import StepLog
from duda_hf.training.trackers import TrackerNames, check_trackers
from duda_hf.training.trainer_evaluation import StreamingEvaluation
from duda_hf.training.trainer_internals import TRANSFORMERS_VERSIONS, transformers_outside_checked_versions

logger = logging.getLogger(__name__)

__all__ = ["DudaTrainer", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; training stops before the optimizer step."""


class DudaTrainer(StreamingEvaluation, Trainer):
    """Trains a `DudaModel` with `DudaConfig` on a `DudaTrainDataset`; evaluates on a labelled target dataset.

    Args:
        model: the networks (`build_duda_model`).
        args: `DudaConfig`.
        train_dataset: `DudaTrainDataset` (paired source/target samples), at least as long as the run draws
            (`max_steps` x batch per device x gradient accumulation x processes), read in order.
        eval_dataset: labelled target `datasets.Dataset` (`image`, `label`), scored by streaming mIoU.
        eval_size_hw: `(height, width)` input size for evaluation; logits are upsampled to label size. None: native size.
        eval_class_subsets: extra class-subset means, e.g. `evaluation.SYNTHIA_SUBSETS` (mIoU16, mIoU13).
        loss_terms: `step.LossTerm`s added to the method's terms (`step.TERMS`), after them, each logged under
            its name (docs/design.md, "Adding a loss term").
    """

    def __init__(
        self,
        model: DudaModel,
        args: DudaConfig,
        train_dataset=None,
        eval_dataset=None,
        eval_size_hw=None,
        callbacks=None,
        eval_class_subsets: dict | None = None,
        loss_terms: Iterable[LossTerm] = (),
        **kwargs,
    ):
        if train_dataset is not None:  # before Trainer's set-up, which may create a Hub repo
            _check_train_dataset(train_dataset, args)

        self.loss_terms = _check_loss_terms(loss_terms, args.method)
        check_trackers(args)
        if args.deepspeed or args.fsdp:
            raise ValueError(
                "DudaTrainer trains on one device or with DDP (accelerate launch --multi_gpu): DeepSpeed and FSDP are "
                "not supported; drop --deepspeed / --fsdp"
            )
        own = [EmaTeacherCallback(), RunLoss(), BadSamples(args.max_bad_sample_share), RemovePartialCheckpoints(), SyncBatchNormBuffers()]
        optimizers = kwargs.pop("optimizers", (None, None))
        if optimizers[0] is None:  # Trainer's public way in: the optimizer, and (`--lr_schedule daformer`) its schedule
            optimizers = (build_optimizer(model, args, kwargs.pop("optimizer_cls_and_kwargs", None)), optimizers[1])
        if optimizers[1] is None and args.max_steps > 0:  # else Trainer makes it (`--lr_schedule trainer`)
            optimizers = (optimizers[0], build_schedule(optimizers[0], args))
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=[*own, *(callbacks or [])],
            optimizers=optimizers,
            **kwargs,
        )
        # the console: a progress bar and short lines instead of Trainer's dict of every logged value
        self.remove_callback(PrinterCallback)
        self.remove_callback(ProgressCallback)
        self.add_callback(Console())
        # first, before the trackers (`--report_to`): the per-class series reach them grouped (duda_hf/training/trackers.py)
        self.callback_handler.callbacks.insert(0, TrackerNames())
        if args.debug_image_steps:
            self.add_callback(DebugImageCallback(self))
        # last, so that every other callback's `on_train_end` runs before it raises `TrainingPreempted` there
        self.add_callback(Preemption())
        prepare_networks(self.accelerator.unwrap_model(self.model), channels_last=args.channels_last, compile_options=args.compile_networks)
        self.eval_size_hw = tuple(eval_size_hw) if eval_size_hw else None
        self.eval_class_subsets = eval_class_subsets
        self.debug_tensors = None
        self.last_eval_results: dict | None = None
        self.per_class_history: list[dict] = []  # per evaluation: each network's per-class IoU, the student-teacher agreement
        self.last_eval_step = -1
        self.step_log = StepLog()
        self.micro_step = (-1, 0)  # (optimizer step, micro-step within it) of the last `compute_loss`
        self.random_state_to_restore: str | None = None  # the checkpoint a resume reads the random state from
        self._kept_evaluation_loader = None  # (dataset, loader) while the evaluation's workers persist
        outside = transformers_outside_checked_versions()
        if outside:
            logger.warning(
                "DudaTrainer overrides Trainer internals written for transformers %s, found %s; if training fails, "
                "see duda_hf/training/trainer_internals.py",
                TRANSFORMERS_VERSIONS,
                outside,
            )

    # ---- one step (docs/method.md; the terms in duda_hf/method/step.py) ----
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One micro-step: the loss is the sum of the step's named, weighted terms; every state update is here.

        `duda_step` computes the terms and diagnostics without side effects; then, in this order: the
        inconsistency state, the debug picture's tensors, the sum, the finiteness check, the log (the terms, the
        failed draws, the run's loss). After a resume, the first micro-step restores the checkpoint's random state.

        Precision: the networks' forward passes run under the run's autocast (`--bf16`/`--fp16`); everything after
        them (teacher softmax, pseudo-labels, confidence, KD targets, losses) is computed in fp32.
        Host synchronisation: one per micro-step, the finiteness check of the loss terms, which stops the run
        before a non-finite loss reaches the optimizer. Logged values stay on the device and are read once per
        logging step.
        """
        if self.random_state_to_restore:  # the first micro-step after a resume: where Trainer restores its own
            self._restore_random_state()
        generator = self._step_generator(inputs["source_image"].device)
        result = duda_step(
            model,
            inputs,
            self.args,
            step=self.state.global_step,
            generator=generator,
            autocast=self.accelerator.autocast,
            extra_terms=self.loss_terms,
        )
        self._update_inconsistency(result.tensors)
        self._keep_debug_tensors(result.tensors)
        loss = sum(result.terms.values())  # in the order of the terms (the floating-point order of the sum)
        self._check_finite({**result.terms, "loss": loss})
        self.step_log.add({**result.terms, **result.diagnostics})
        self.bad_samples.add(inputs.get("bad_samples"))
        self.run_loss.add(loss / self.args.gradient_accumulation_steps)  # as Trainer counts it for train_loss
        return (loss, result.tensors.outputs) if return_outputs else loss

    def _restore_random_state(self) -> None:
        """This process's random state from the checkpoint resumed from (`_load_optimizer_and_scheduler` noted it)."""
        checkpoint, self.random_state_to_restore = self.random_state_to_restore, None
        if not state_files.load_random_state(checkpoint, self.args.process_index, self.args.world_size):
            logger.warning(
                "%s has no random state for process %d of %d (it was written by another number of processes): the "
                "random draws after the resume differ from those of an uninterrupted run",
                checkpoint,
                self.args.process_index,
                self.args.world_size,
            )

    def _step_generator(self, device: torch.device) -> torch.Generator:
        """Random source for this micro-step: a function of (seed, step, micro-step, process), so resumes are exact."""
        step = self.state.global_step
        last_step, micro = self.micro_step
        self.micro_step = (step, micro + 1 if last_step == step else 0)
        seed = np.random.SeedSequence([self.args.seed, step, self.micro_step[1], self.args.process_index]).generate_state(1)[0]
        return torch.Generator(device=device).manual_seed(int(seed))

    @torch.no_grad()
    def _update_inconsistency(self, t: StepTensors) -> None:
        """Running per-class discrepancy between the student and the pseudo-labels (summed over processes).

        On every pseudo-labelled target pixel outside the margins, even while the quality weight is ~0.
        """
        if t.class_weights is None or self.args.inconsistency_beta == 0:
            return
        duda = t.model
        valid = (t.mask == 0) & (t.outside_margins > 0)
        prediction = F.interpolate(t.student_mix.float(), size=t.mixed_label.shape[-2:], mode="bilinear").argmax(1)
        counts = torch.stack(class_iou_counts(prediction, t.mixed_label, valid, NUM_CLASSES))
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        discrepancy, seen = update_class_discrepancy(
            duda.class_discrepancy, duda.class_seen, counts[0], counts[1], self.args.inconsistency_momentum
        )
        duda.class_discrepancy.copy_(discrepancy)
        duda.class_seen.copy_(seen)

    def _keep_debug_tensors(self, t: StepTensors) -> None:
        """The tensors of the debug picture (`DebugImageCallback`), on the steps it is drawn."""
        every = self.args.debug_image_steps
        if not every or t.mixed_image is None or (t.step + 1) % every:
            return
        self.debug_tensors = {
            "source_image": t.source_image.detach(),
            "target_image": t.target_image.detach(),
            "mixed_image": t.mixed_image.detach(),
            "mixed_label": t.mixed_label.detach(),
            "prediction": F.interpolate(t.student_mix.detach().float(), size=t.source_label.shape[-2:], mode="bilinear").argmax(1),
        }

    def _check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Stop before the optimizer step if a loss term is NaN or infinite (the step's one host synchronisation)."""
        values = torch.stack([value.detach().float().reshape(()) for value in losses.values()])
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        name, value = next((name, v) for (name, v), ok in zip(losses.items(), finite.tolist()) if not ok)
        last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        raise NonFiniteLossError(
            f"non-finite loss at step {self.state.global_step + 1}: term '{name}' is {value.detach().float().item()}. "
            f"Last good checkpoint: {last or 'none (no checkpoint was saved yet)'}. Lower --learning_rate, enable "
            "--max_grad_norm, or check the inputs, then resume with --resume_from_checkpoint."
        )

    # ---- logging ----
    # the stateful callbacks, looked up each time: Trainer replaces them when it restores callback states
    @property
    def run_loss(self) -> RunLoss:
        """The run's loss sum (the `RunLoss` callback)."""
        return self._own_callback(RunLoss)

    @property
    def bad_samples(self) -> BadSamples:
        """The run's undecodable training images (the `BadSamples` callback)."""
        return self._own_callback(BadSamples)

    def _own_callback(self, kind: type):
        return next(callback for callback in self.callback_handler.callbacks if isinstance(callback, kind))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log with the step's terms and diagnostics; `train_loss` over the whole run. Every process calls it
        at a logging step and at the end of training, where both read-backs below meet across processes."""
        if "loss" in logs or "train_loss" in logs:
            bad = self.bad_samples.read_back(self.accelerator.gather if self.args.world_size > 1 else lambda found: found)
            self.run_loss.read_back(self.args.world_size, self.state.global_step)
        if "loss" in logs:
            logs.update(self.step_log.pop_means(world_size=self.args.world_size))
            if bad:
                logs["bad_samples"] = bad
        if "train_loss" in logs:  # the end of `train`: the mean over the whole run, also after a resume
            logs["train_loss"] = self.run_loss.train_loss()
        super().log(logs, start_time)

    # ---- resume: the training state read from safetensors and JSON (duda_hf/training/state_files.py) ----
    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The optimizer, schedule and scaler of `checkpoint`, without a pickle; this process's random state is
        restored at the first micro-step (`compute_loss`), where Trainer would restore its own. A checkpoint of the
        earlier, pickled format goes to Trainer's loading (`torch.load(weights_only=True)`).

        First, before any step: the frozen networks rebuilt for this run (left out of the checkpoint's weights) must
        be those it was trained with, and a checkpoint of an earlier duda-hf resumes with the recipe it was trained
        with (`resume.check_resume`)."""
        if checkpoint is not None:
            check_resume(checkpoint, self.accelerator.unwrap_model(self.model), self.args)
        if checkpoint is None or not state_files.has_training_state(checkpoint):
            return super()._load_optimizer_and_scheduler(checkpoint)
        state_files.load_optimizer(self.optimizer, checkpoint)
        state_files.load_json_state(self.lr_scheduler, os.path.join(checkpoint, state_files.SCHEDULER_JSON))
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and os.path.isfile(os.path.join(checkpoint, state_files.SCALER_JSON)):
            state_files.load_json_state(scaler, os.path.join(checkpoint, state_files.SCALER_JSON))
        self.random_state_to_restore = checkpoint

    # ---- checkpoints: written whole or not at all, then pushed (duda_hf/training/checkpointing.py, hub_policy.py) ----
    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint, staged and renamed into place with `networks.json`; then, with `--push_to_hub`, that
        complete folder goes to `last-checkpoint/` or `checkpoint-N/` of the repo (`--hub_strategy`), never the root, in
        the background: training goes on while it uploads (`hub_policy.CheckpointPushes`)."""
        self.run_loss.read_back(self.args.world_size, self.state.global_step)  # its sum goes into the checkpoint
        folder = save_checkpoint(self, self.accelerator.unwrap_model(model).network_configs())
        if self.args.push_to_hub and self.is_world_process_zero():
            self.checkpoint_pushes.push(folder, self.state.global_step)

    # ---- the Hub: the repo root holds the deployable student; checkpoints live in subfolders (duda_hf/training/hub_policy.py) ----
    checkpoint_pushes: CheckpointPushes | None = None  # the main process's checkpoint uploads, once the repo exists

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create `hub_model_id` (default: the output folder's name) with a clear error offline / without a token."""
        if not self.is_world_process_zero():
            return
        self.hub_model_id = create_run_repo(self.args, token, private)
        if self.checkpoint_pushes is None:
            self.checkpoint_pushes = CheckpointPushes(self.args, self.hub_model_id)
        # Trainer's own record of a push in progress stays empty, so that its `train` does not wait for an upload at
        # its end: on the main process alone, before the evaluation the other processes then wait in. The uploads
        # are waited for in `push_to_hub`, after the run's last collective operation.
        self.push_in_progress = None

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ) -> str | Future[str] | None:
        """Push `output_dir/student/` (the exported student with its model card) to the repo root.

        First waits for the checkpoint uploads still running or waiting (one log line says how long). Returns the
        commit URL; with `blocking=False` at once, without waiting (the student's upload runs after the checkpoints'
        in the same background thread), the upload's `concurrent.futures.Future` (its result the commit URL, its
        exception a `HubError`), as `Trainer.push_to_hub` returns one; None on the other processes."""
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        if not self.is_world_process_zero():
            return None
        if blocking:
            self.checkpoint_pushes.wait()  # (without blocking the student's upload queues behind them, in order)
        return push_student(self.args, self.hub_model_id, commit_message, revision, token, blocking=blocking)


def _check_loss_terms(loss_terms: Iterable[LossTerm], method: str) -> tuple[LossTerm, ...]:
    """Extra terms as a tuple; each named `loss_*`, none named like another or like one of the method's terms."""
    loss_terms = tuple(LossTerm(*term) for term in loss_terms)
    names = [term.name for term in TERMS[method]]
    for term in loss_terms:
        if not term.name.startswith("loss_") or term.name in names:
            raise ValueError(
                f"loss term '{term.name}': name it 'loss_<what>', unlike the other terms ({', '.join(names)}); it is logged under that name"
            )
        names.append(term.name)
    return loss_terms


def _check_train_dataset(dataset, args: DudaConfig) -> None:
    """Sample i is a pure function of (seed, i): the run reads indices 0, 1, 2, ... once each, one epoch in all."""
    if args.train_sampling_strategy != "sequential":
        raise ValueError(
            f"DudaTrainer reads its training samples in order, so that the data is a function of the step; got "
            f"train_sampling_strategy={args.train_sampling_strategy!r}: set it to 'sequential'"
        )
    needed = args.train_samples
    if args.max_steps > 0 and len(dataset) < needed:
        raise ValueError(
            f"the training dataset has {len(dataset)} samples but the run draws {needed} (max_steps {args.max_steps} x "
            f"batch {args.train_batch_size} x gradient accumulation {args.gradient_accumulation_steps} x processes "
            f"{args.world_size}); build it with DudaTrainDataset(..., num_samples={needed}) (cli.training_run.build_trainer does)"
        )
