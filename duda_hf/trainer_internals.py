"""Every `transformers.Trainer` method `DudaTrainer` overrides and every private Trainer attribute it reads, in one place.

Public methods are overridden as Trainer documents ("subclass and override"); private ones (`_name`) and private
attributes are internals that may change in any release. Each entry says why it is needed, the Trainer
signature it was written for and the transformers versions it was checked on. `tests/test_trainer_internals.py`
fails when the installed Trainer's signature differs, when `DudaTrainer` overrides a Trainer method that is not
listed here, or when the trainer reads a private Trainer name that is not listed. `DudaTrainer` logs a warning
when transformers is outside `TRANSFORMERS_VERSIONS`.

On a new transformers release: run those tests and the trainer tests; where a signature changed, read the new
Trainer code, adapt the override, update its entry; then widen `TRANSFORMERS_VERSIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Checked on: 5.24 (this project's tests), 5.17 (the GPU machine's runs).
TRANSFORMERS_VERSIONS = ">=5.17,<5.25"


@dataclass(frozen=True)
class TrainerOverride:
    """A Trainer method `DudaTrainer` overrides.

    Attributes:
        name: the method.
        parameters: the names of the Trainer method's parameters (with `self`, and `kwargs` for `**kwargs`) in
            the newest version checked.
        why: what the override does that Trainer does not.
        older_parameters: other parameter lists the method had in older checked versions.
    """

    name: str
    parameters: tuple[str, ...]
    why: str
    older_parameters: tuple[tuple[str, ...], ...] = ()

    @property
    def private(self) -> bool:
        return self.name.startswith("_") and not self.name.startswith("__")


@dataclass(frozen=True)
class TrainerAttribute:
    """A private attribute of Trainer that `DudaTrainer` reads."""

    name: str
    why: str


OVERRIDES: tuple[TrainerOverride, ...] = (
    TrainerOverride(
        "__init__",
        (
            "self",
            "model",
            "args",
            "data_collator",
            "train_dataset",
            "eval_dataset",
            "processing_class",
            "model_init",
            "compute_loss_func",
            "compute_metrics",
            "callbacks",
            "optimizers",
            "optimizer_cls_and_kwargs",
            "preprocess_logits_for_metrics",
        ),
        "adds the EMA-teacher, preemption and run-loss callbacks; checks the training data's order and length",
    ),
    TrainerOverride(
        "train",
        ("self", "resume_from_checkpoint", "trial", "ignore_keys_for_eval"),
        "signal handlers around training (preemption), BatchNorm statistics made equal across processes, "
        "`training_loss` over the whole run after a resume",
    ),
    TrainerOverride(
        "create_optimizer",
        ("self", "model"),
        "AdamW groups: decode heads at head_lr_multiplier x lr, no weight decay on norms and biases",
    ),
    TrainerOverride(
        "compute_loss",
        ("self", "model", "inputs", "return_outputs", "num_items_in_batch"),
        "the DUDA step (duda_hf/step.py) and its state updates",
    ),
    TrainerOverride(
        "log",
        ("self", "logs", "start_time"),
        "adds the step's loss terms and diagnostics to each training log; train_loss over the whole run",
    ),
    TrainerOverride(
        "evaluate",
        ("self", "eval_dataset", "ignore_keys", "metric_key_prefix"),
        "streaming mIoU of student, auxiliary student and teacher instead of Trainer's prediction loop",
    ),
    TrainerOverride(
        "init_hf_repo",
        ("self", "token", "private"),
        "the Hub repo created through duda_hf.hub, with errors that say the cause and the fix",
        older_parameters=(("self", "token"),),
    ),
    TrainerOverride(
        "push_to_hub",
        ("self", "commit_message", "blocking", "token", "revision", "private", "kwargs"),
        "pushes the exported student to the repo root, not the output folder (duda_hf/hub_policy.py)",
        older_parameters=(("self", "commit_message", "blocking", "token", "revision", "kwargs"),),
    ),
    TrainerOverride(
        "_save_checkpoint",
        ("self", "model", "trial"),
        "atomic checkpoints: Trainer's save in a staging folder, then renamed (duda_hf/checkpointing.py); "
        "records the run's loss sum for train_loss after a resume",
    ),
    TrainerOverride(
        "_get_output_dir",
        ("self", "trial"),
        "while `_save_checkpoint` runs, the staging folder, so that Trainer's save writes there",
    ),
    TrainerOverride(
        "_push_from_checkpoint",
        ("self", "checkpoint_folder"),
        "checkpoints go to last-checkpoint/ or checkpoint-N/, never to the repo root (duda_hf/hub_policy.py)",
    ),
)

PRIVATE_ATTRIBUTES: tuple[TrainerAttribute, ...] = (
    TrainerAttribute("_total_loss_scalar", "the loss summed over the logged steps of this session (train_loss, RunLoss)"),
    TrainerAttribute("_tr_loss", "the loss summed since the last logging step (RunLoss record at a save)"),
    TrainerAttribute("_initial_global_step", "the step this session started from (train_loss after a resume)"),
)


def registered_names() -> set[str]:
    """Every Trainer name, public or private, method or attribute, listed here."""
    return {entry.name for entry in OVERRIDES} | {entry.name for entry in PRIVATE_ATTRIBUTES}


def transformers_outside_checked_versions() -> str | None:
    """The installed transformers version when it is outside `TRANSFORMERS_VERSIONS`, else None."""
    import transformers
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    version = Version(transformers.__version__)
    return None if version in SpecifierSet(TRANSFORMERS_VERSIONS) else str(version)
