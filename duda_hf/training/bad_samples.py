"""Training images that could not be decoded, counted over the run (`DudaTrainDataset` names and replaces them; a
draw counts once even when its replacement fails too, and warns again).

Each training item says which source and target index failed (`bad_samples`, -1 for none). The trainer keeps
those tensors where they are and reads them once per logging step, gathered over the processes: the log gets the
run's count so far (`bad_samples`, when there are any), `eval_results.json` the count and the first names, and
the run stops with one error line once more than `--max_bad_sample_share` of the draws have failed (counted from
`MIN_FAILURES` failures on, so that one early failure does not stop it). The count is kept in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from duda_hf.data.errors import DomainError
from duda_hf.training.callbacks import saved_record

FLAGS = ("--source_dataset", "--target_dataset")
MIN_FAILURES = 5
NAMED = 10  # the first failures named in the results and the error


class TooManyBadSamples(DomainError):
    """More than the allowed share of the training draws could not be decoded."""


class BadSamples(TrainerCallback, ExportableState):
    """The run's failed draws: counted at each logging step, kept in every checkpoint (trainer_state.json) so that a
    resumed run goes on counting."""

    def __init__(self, max_share: float = 0.01, count: int = 0, draws: int = 0, first: list[str] | None = None):
        self.max_share = max_share
        self.pending: list[torch.Tensor] = []
        self.count, self.draws = count, draws  # failed draws and source + target draws so far, over every process
        self.first: list[str] = list(first or [])  # the first failures, "--source_dataset #12"

    def state(self) -> dict:
        return {"args": {"max_share": self.max_share, "count": self.count, "draws": self.draws, "first": self.first}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = saved_record(state, self)
        self.count, self.draws, self.first = saved.get("count", 0), saved.get("draws", 0), list(saved.get("first", []))
        self.pending = []

    def add(self, bad: torch.Tensor | None) -> None:
        """One micro-step's `(B, 2)` failed indices (on any device; not read here)."""
        if bad is not None:
            self.pending.append(bad.detach())

    def read_back(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> int:
        """Count what the micro-steps since the last call drew (every process calls it with `gather` over processes);
        returns the run's count so far. Raises `TooManyBadSamples` past the allowed share."""
        if self.pending:
            found = gather(torch.cat(self.pending)).cpu()
            self.pending = []
            self.draws += found.numel()
            for column, flag in enumerate(FLAGS):
                failed = [f"{flag} #{index}" for index in found[:, column].tolist() if index >= 0]
                self.count += len(failed)
                self.first += failed[: NAMED - len(self.first)]
        if self.count >= MIN_FAILURES and self.count > self.max_share * self.draws:
            raise TooManyBadSamples(
                f"{self.count} of the {self.draws} training images drawn so far could not be decoded (more than "
                f"--max_bad_sample_share {self.max_share:g}): {', '.join(self.first)}{' ...' if self.count > len(self.first) else ''}. "
                "Re-download or remove those files (the warnings above name each one), then resume with "
                "--resume_from_checkpoint last."
            )
        return self.count

    def summary(self) -> dict:
        return {"count": self.count, "draws": self.draws, "first": self.first}
