"""The Trainer internals DudaTrainer relies on are all listed (duda_hf/training/trainer_internals.py) and still what they were."""

import inspect
import re
from pathlib import Path

import pytest
import transformers
import transformers.trainer
from transformers import Trainer

from duda_hf.training import trainer_internals
from duda_hf.training.trainer import DudaTrainer
from duda_hf.training.trainer_internals import OVERRIDES, PRIVATE_ATTRIBUTES, registered_names

PACKAGE = Path(__file__).resolve().parents[1] / "duda_hf"
# The modules that act on the trainer: every module of the training layer.
TRAINER_MODULES = tuple(sorted(path.relative_to(PACKAGE).as_posix() for path in (PACKAGE / "training").glob("*.py")))


def parameter_names(function) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


@pytest.mark.parametrize("entry", OVERRIDES, ids=[entry.name for entry in OVERRIDES])
def test_each_overridden_trainer_method_keeps_the_signature_it_was_written_for(entry):
    assert hasattr(Trainer, entry.name), f"transformers {transformers.__version__} has no Trainer.{entry.name}"
    found = parameter_names(getattr(Trainer, entry.name))
    assert found in (entry.parameters, *entry.older_parameters), (
        f"Trainer.{entry.name} is now {found} in transformers {transformers.__version__}; DudaTrainer's override was "
        f"written for {entry.parameters} (duda_hf/training/trainer_internals.py)"
    )


@pytest.mark.parametrize("entry", OVERRIDES, ids=[entry.name for entry in OVERRIDES])
def test_each_override_accepts_every_argument_trainer_passes(entry):
    ours = inspect.signature(getattr(DudaTrainer, entry.name)).parameters
    catch_all = {p.kind for p in ours.values()} & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
    theirs = inspect.signature(getattr(Trainer, entry.name)).parameters.values()
    missing = [p.name for p in theirs if p.name not in ours and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not missing or inspect.Parameter.VAR_KEYWORD in catch_all, missing


def test_dudatrainer_overrides_only_the_listed_trainer_methods():
    own = {name for name, value in vars(DudaTrainer).items() if inspect.isfunction(value) or isinstance(value, (property, staticmethod))}
    overridden = {name for name in own if hasattr(Trainer, name)}
    assert overridden == {entry.name for entry in OVERRIDES}
    # what the redesign removed: Trainer's own sampler option and a length checked at construction replace them
    assert not {"_get_train_sampler", "get_train_dataloader"} & overridden


def trainer_source_names(pattern: str) -> set[str]:
    return set(re.findall(pattern, inspect.getsource(transformers.trainer)))


def test_each_private_trainer_attribute_read_is_still_set_by_trainer():
    set_by_trainer = trainer_source_names(r"self\.(_\w+)\s*(?:=|\+=)[^=]")
    missing = [entry.name for entry in PRIVATE_ATTRIBUTES if entry.name not in set_by_trainer]
    assert not missing, f"Trainer no longer sets {missing}"


def test_every_private_trainer_name_the_trainer_code_uses_is_listed():
    trainer_names = trainer_source_names(r"self\.(_\w+)") | trainer_source_names(r"def (_\w+)\(")
    used = set()
    for module in TRAINER_MODULES:
        used |= set(re.findall(r"\b(?:self|trainer|super\(\))\.(_[a-z]\w*)", (PACKAGE / module).read_text()))
    # DudaTrainer's own private names must not shadow one of Trainer's by accident
    ours = {name for name in vars(DudaTrainer) if name.startswith("_") and not name.startswith("__")}
    ours |= set(re.findall(r"self\.(_[a-z]\w*)\s*(?::[^=]+)?=[^=]", (PACKAGE / "training" / "trainer.py").read_text()))
    clashes = (ours & trainer_names) - registered_names()
    assert not clashes, f"DudaTrainer's private names {sorted(clashes)} are also Trainer's"
    unlisted = (used & trainer_names) - registered_names()
    assert not unlisted, f"private Trainer names used but not listed in duda_hf/training/trainer_internals.py: {sorted(unlisted)}"
    assert "training/trainer.py" in TRAINER_MODULES and "training/callbacks.py" in TRAINER_MODULES


def test_the_override_surface_stays_within_its_budget():
    """At most 8 overridden Trainer methods, at most 2 private, and no private Trainer attribute read."""
    private = [entry.name for entry in OVERRIDES if entry.private]
    assert len(OVERRIDES) <= 8, [entry.name for entry in OVERRIDES]
    assert len(private) <= 2, private
    assert PRIVATE_ATTRIBUTES == ()
    # what callbacks do now: signal handling and the BatchNorm broadcast (`train`), the staging and push of a checkpoint
    assert not {"train", "_get_output_dir", "_push_from_checkpoint"} & {entry.name for entry in OVERRIDES}


@pytest.mark.parametrize(
    "version, outside",
    [("5.17.0", None), ("5.24.0", None), ("5.25.0", None), ("5.16.2", "5.16.2"), ("5.26.0", "5.26.0"), ("6.0.0", "6.0.0")],
)
def test_versions_outside_the_checked_range_are_named(monkeypatch, version, outside):
    monkeypatch.setattr(transformers, "__version__", version)
    assert trainer_internals.transformers_outside_checked_versions() == outside


def test_the_dependency_admits_exactly_the_checked_transformers_versions():
    specs = re.findall(r'^\s*"(transformers[^"]*)",', (PACKAGE.parent / "pyproject.toml").read_text(), re.MULTILINE)
    assert specs == [f"transformers{trainer_internals.TRANSFORMERS_VERSIONS}"]
