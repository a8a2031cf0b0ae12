"""Preemption-safe training: SIGTERM and SIGINT save a checkpoint at the end of the step in progress, then stop.

Clusters and spot instances send SIGTERM before they take a machine; Ctrl-C sends SIGINT. While
`DudaTrainer.train` runs (the `Preemption` callback installs the handlers at the start of training and restores
the previous ones at its end, or at the next signal if training ended by an exception), the first of either only
sets a flag. At the end of the optimizer step in progress
every process agrees on it (one all-reduce of one integer per step, over a CPU process group, so no GPU
synchronisation), asks the Trainer for a checkpoint (written through the trainer's atomic staging path) and
stops; at the end of `train` the callback raises `TrainingPreempted`, whose message says where the checkpoint is and how to resume,
and which the programs turn into exit status 128 + signal number (143 for SIGTERM, 130 for SIGINT). A second
signal restores the default action and re-sends itself: the process ends at once, without saving.

A step is not interrupted, so the time from the signal to the checkpoint is bounded by the rest of the step (and
an evaluation, if one is running) plus the save.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingPreempted(Exception):
    """Training stopped on a signal; `exit_code` is 128 + the signal number, `checkpoint` what it saved."""

    def __init__(self, signum: int, step: int, max_steps: int, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        if checkpoint:
            saved = f"checkpoint {checkpoint} holds every network, the optimizer and the random state"
            resume = "Resume it: run the same command with --resume_from_checkpoint last"
        else:
            saved = "no checkpoint was written (the signal came before the first step ended)"
            resume = "Start it again"
        super().__init__(f"training stopped by {name} after step {step} of {max_steps}: {saved}. {resume}.")


class Preemption(TrainerCallback):
    """The signal handlers, installed while `train` runs (`on_train_begin` to `on_train_end`), and what they ask of
    each step."""

    def __init__(self):
        self.received = 0  # the first signal this process got
        self.signum = 0  # the signal every process agreed to stop on
        self.checkpoint: str | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()
        self._distributed = False
        self._group = None  # the process group the flag travels on (None: the default group)

    # ---- the handlers, installed for the duration of `train` ----
    def on_train_begin(self, args, state, control, **kwargs):
        self.received, self.signum, self.checkpoint = 0, 0, None
        self._pid = os.getpid()
        self._restore()  # still installed by a `train` that ended by an error: the handlers before it are the previous ones
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals to the main thread
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        if torch.distributed.is_available() and torch.distributed.is_initialized() and not self._distributed:
            # the flag travels on the CPU: through the default group where it has gloo, else a gloo group beside NCCL
            self._distributed = True
            self._group = None if "gloo" in str(torch.distributed.get_backend()) else torch.distributed.new_group(backend="gloo")

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()
        self.raise_if_stopped(state, args.output_dir)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker forked with the handler (Ctrl-C reaches the whole group)
            return  # the training process decides; its workers end with it
        if not _training_on_stack(frame):
            # `train` ended by an exception, so `on_train_end` never ran: put the handlers back, act as they would
            previous = self._previous.get(signum, signal.SIG_DFL)
            self._restore()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
            return
        if self.received:  # the second signal: end now, as if no handler were installed
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        print(
            f"received {signal.Signals(signum).name}: the step in progress ends, a checkpoint is saved, then training stops "
            "(send the signal again to stop at once, without saving)",
            file=sys.stderr,
            flush=True,
        )

    # ---- the callback ----
    def _agreed_signal(self, args) -> int:
        """The signal any process received (the largest number), the same on every process."""
        if args.world_size <= 1 or not self._distributed:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        self.signum = self.signum or self._agreed_signal(args)
        if self.signum:
            control.should_save, control.should_training_stop, control.should_evaluate = True, True, False
            if state.is_world_process_zero:
                logger.warning("%s: saving checkpoint-%d, then stopping", signal.Signals(self.signum).name, state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if self.signum:
            self.checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    def raise_if_stopped(self, state, output_dir: str) -> None:
        """At the end of `train`: raise `TrainingPreempted` if a signal came (acted on at a step end, or after the last one)."""
        signum = self.signum or self.received
        if signum:
            checkpoint = self.checkpoint or (get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None)
            raise TrainingPreempted(signum, state.global_step, state.max_steps, checkpoint)


def _training_on_stack(frame) -> bool:
    """Whether `Trainer.train` is running in the interrupted thread (the frame a signal handler gets)."""
    from transformers import Trainer

    code = Trainer.train.__code__
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False
