"""Every `transformers.Trainer` method `DudaTrainer` overrides and every private Trainer attribute it reads, in one place.

Public methods are overridden as Trainer documents ("subclass and override"); private ones (`_name`) and private
attributes are internals that may change in any release. Each entry says why it is needed, the Trainer
signature it was written for and the transformers versions it was checked on. `tests/test_trainer_internals.py`
fails when the installed Trainer's signature differs, when `DudaTrainer` (or a mixin among its bases before
`transformers.Trainer`, such as `trainer_evaluation.StreamingEvaluation`) overrides a Trainer method that is not
listed here, or when the training modules read a private Trainer name that is not listed. `DudaTrainer` logs a
warning when transformers is outside `TRANSFORMERS_VERSIONS`.

The budget (`tests/test_trainer_internals.py` holds it, on the overrides it finds in the classes and the private
attributes it finds in the source, not on this list): at most 8 overridden Trainer methods, at most 2 of them
private, and no private Trainer attribute read. What a callback can do is done in a callback
(duda_hf/training/callbacks.py, duda_hf/training/preemption.py), not in an override.

On a new transformers release: run those tests and the trainer tests; where a signature changed, read the new
Trainer code, adapt the override, update its entry; then widen `TRANSFORMERS_VERSIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Checked on: 5.25 (this project's tests; the checkpoint save read against 5.25's Trainer._save_checkpoint), 5.24,
# 5.17 (the GPU machine's runs).
TRANSFORMERS_VERSIONS = ">=5.17,<5.26"


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
        "adds the callbacks (EMA teacher, preemption, run loss, BatchNorm sync; duda_hf/training/callbacks.py), checks the "
        "training data's order and length before Trainer's set-up (which may create a Hub repo), and hands Trainer the "
        "optimizer through its public `optimizers` argument (`build_optimizer`: each network's head at "
        "head_lr_multiplier x lr, no weight decay on norms and biases; Trainer's own groups know neither)",
    ),
    TrainerOverride(
        "compute_loss",
        ("self", "model", "inputs", "return_outputs", "num_items_in_batch"),
        "the DUDA step (duda_hf/method/step.py) and its state updates",
    ),
    TrainerOverride(
        "log",
        ("self", "logs", "start_time"),
        "adds the step's loss terms and diagnostics (averaged over processes) to each training log; train_loss over the "
        "whole run (RunLoss); a callback's on_log cannot change what Trainer logs",
    ),
    TrainerOverride(
        "evaluate",
        ("self", "eval_dataset", "ignore_keys", "metric_key_prefix"),
        "streaming mIoU of student, auxiliary student and teacher instead of Trainer's prediction loop",
    ),
    TrainerOverride(
        "init_hf_repo",
        ("self", "token", "private"),
        "the Hub repo created through duda_hf.export.hub, with errors that say the cause and the fix",
        older_parameters=(("self", "token"),),
    ),
    TrainerOverride(
        "push_to_hub",
        ("self", "commit_message", "blocking", "token", "revision", "private", "kwargs"),
        "pushes the exported student to the repo root, not the output folder (duda_hf/training/hub_policy.py)",
        older_parameters=(("self", "commit_message", "blocking", "token", "revision", "kwargs"),),
    ),
    TrainerOverride(
        "_load_optimizer_and_scheduler",
        ("self", "checkpoint"),
        "the second private override: a resume reads the optimizer, schedule and scaler from safetensors and JSON, "
        "not Trainer's pickles, and notes the checkpoint whose random state compute_loss restores at the first "
        "micro-step (where Trainer's private `_load_rng_state` would, which is not overridden); an older, pickled "
        "checkpoint goes to Trainer's own loading (torch.load(weights_only=True)). First, before any step, it checks "
        "the frozen networks rebuilt for the run against the checkpoint's networks.json (duda_hf/networks/frozen.py)",
    ),
    TrainerOverride(
        "_save_checkpoint",
        ("self", "model", "trial"),
        "a private override, worth its upgrade risk: a checkpoint is written whole in a staging folder and "
        "renamed into place (a run killed or out of disk mid-save never leaves a folder that looks complete), with "
        "networks.json, and only then pushed (duda_hf/training/checkpointing.py). It writes Trainer's files itself "
        "from public objects (the model, the optimizer, the scheduler, the trainer state) as safetensors and JSON, so it "
        "calls no private "
        "Trainer method, and it replaces the two other private overrides this needed before (`_get_output_dir`, "
        "`_push_from_checkpoint`)",
    ),
)

# None: `train_loss` over the whole run after a resume comes from the `RunLoss` callback's own sum, not from
# Trainer's `_total_loss_scalar`, `_tr_loss` and `_initial_global_step`.
PRIVATE_ATTRIBUTES: tuple[TrainerAttribute, ...] = ()


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
