"""Training images that could not be decoded, counted over the run (`DudaTrainDataset` names and replaces them; a
draw counts once even when its replacement fails too, and warns again).

Each training item says which source and target index failed (`bad_samples`, -1 for none). The trainer keeps
those tensors where they are and reads them once per logging step, gathered over the processes: the log gets the
run's count so far (`bad_samples`, when there are any), `eval_results.json` the count and the first names, and
the run stops with one error line once more than `--max_bad_sample_share` of the draws have failed (counted from
`MIN_FAILURES` failures on, so that one early failure does not stop it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from duda_hf.data.errors import DomainError

FLAGS = ("--source_dataset", "--target_dataset")
MIN_FAILURES = 5
NAMED = 10  # the first failures named in the results and the error


class TooManyBadSamples(DomainError):
    """More than the allowed share of the training draws could not be decoded."""


class BadSamples:
    def __init__(self, max_share: float):
        self.max_share = max_share
        self.pending: list[torch.Tensor] = []
        self.draws = 0  # source and target draws so far, over every process
        self.failed: list[str] = []  # "--source_dataset #12", in the order they were counted

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
                self.failed += [f"{flag} #{index}" for index in found[:, column].tolist() if index >= 0]
        if len(self.failed) >= MIN_FAILURES and len(self.failed) > self.max_share * self.draws:
            raise TooManyBadSamples(
                f"{len(self.failed)} of the {self.draws} training images drawn so far could not be decoded (more than "
                f"--max_bad_sample_share {self.max_share:g}): {', '.join(self.failed[:NAMED])}"
                f"{' ...' if len(self.failed) > NAMED else ''}. Re-download or remove those files (the warnings above name "
                "each one), then resume with --resume_from_checkpoint last."
            )
        return len(self.failed)

    def summary(self) -> dict:
        return {"count": len(self.failed), "draws": self.draws, "first": self.failed[:NAMED]}
