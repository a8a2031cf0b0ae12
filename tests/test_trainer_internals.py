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


def overriding_classes(trainer_class: type = DudaTrainer) -> tuple[type, ...]:
    """`trainer_class` and every class in its MRO before `transformers.Trainer` (its mixins): where overrides live."""
    mro = trainer_class.__mro__
    return mro[: mro.index(Trainer)]


def overridden_trainer_methods(trainer_class: type = DudaTrainer) -> set[str]:
    """The Trainer methods (and properties) that `trainer_class` or one of its mixins defines again."""
    found = set()
    for cls in overriding_classes(trainer_class):
        for name, value in vars(cls).items():
            method = inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod))
            if method and hasattr(Trainer, name):
                found.add(name)
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_dudatrainer_overrides_only_the_listed_trainer_methods():
    overridden = overridden_trainer_methods()
    assert overridden == {entry.name for entry in OVERRIDES}
    # what the redesign removed: Trainer's own sampler option and a length checked at construction replace them
    assert not {"_get_train_sampler", "get_train_dataloader"} & overridden


def trainer_source_names(pattern: str) -> set[str]:
    return set(re.findall(pattern, inspect.getsource(transformers.trainer)))


def test_each_private_trainer_attribute_read_is_still_set_by_trainer():
    set_by_trainer = trainer_source_names(r"self\.(_\w+)\s*(?:=|\+=)[^=]")
    missing = [entry.name for entry in PRIVATE_ATTRIBUTES if entry.name not in set_by_trainer]
    assert not missing, f"Trainer no longer sets {missing}"


def training_sources() -> list[str]:
    return [(PACKAGE / module).read_text() for module in TRAINER_MODULES]


def private_names_used(sources: list[str]) -> set[str]:
    """The private names the sources read or call on the trainer (`self._x`, `trainer._x`, `super()._x`)."""
    return {name for source in sources for name in re.findall(r"\b(?:self|trainer|super\(\))\.(_[a-z]\w*)", source)}


def private_trainer_attributes_read(sources: list[str]) -> set[str]:
    """The private attributes of Trainer (set as `self._x = ...` in its source; not its methods) that the sources read."""
    attributes = trainer_source_names(r"self\.(_\w+)\s*(?:=|\+=)[^=]") - {name for name in dir(Trainer) if is_private(name)}
    return private_names_used(sources) & attributes


def test_every_private_trainer_name_the_trainer_code_uses_is_listed():
    trainer_names = trainer_source_names(r"self\.(_\w+)") | trainer_source_names(r"def (_\w+)\(")
    used = private_names_used(training_sources())
    # DudaTrainer's and its mixins' own private names must not shadow one of Trainer's by accident
    ours = {name for cls in overriding_classes() for name in vars(cls) if is_private(name)}
    for cls in overriding_classes():
        source = Path(inspect.getsourcefile(cls)).read_text()
        ours |= set(re.findall(r"self\.(_[a-z]\w*)\s*(?::[^=]+)?=[^=]", source))
    clashes = (ours & trainer_names) - registered_names()
    assert not clashes, f"DudaTrainer's private names {sorted(clashes)} are also Trainer's"
    unlisted = (used & trainer_names) - registered_names()
    assert not unlisted, f"private Trainer names used but not listed in duda_hf/training/trainer_internals.py: {sorted(unlisted)}"
    assert "training/trainer.py" in TRAINER_MODULES and "training/callbacks.py" in TRAINER_MODULES


def test_the_override_surface_stays_within_its_budget():
    """At most 8 overridden Trainer methods, at most 2 private, and no private Trainer attribute read: counted on what
    the classes and the source hold (`DudaTrainer`, its mixins, the training modules), and the registry says the same."""
    overridden = overridden_trainer_methods()
    private = {name for name in overridden if is_private(name)}
    attributes_read = private_trainer_attributes_read(training_sources())
    assert len(overridden) <= 8, sorted(overridden)
    assert len(private) <= 2, sorted(private)
    assert not attributes_read, f"private Trainer attributes read: {sorted(attributes_read)}"
    # what callbacks do now: signal handling and the BatchNorm broadcast (`train`), the staging and push of a checkpoint
    assert not {"train", "_get_output_dir", "_push_from_checkpoint"} & overridden
    # the hand-kept registry (duda_hf/training/trainer_internals.py) lists exactly what was found
    assert {entry.name for entry in OVERRIDES} == overridden
    assert {entry.name for entry in OVERRIDES if entry.private} == private
    assert {entry.name for entry in PRIVATE_ATTRIBUTES} == attributes_read


def test_the_override_count_sees_mixins_and_private_attributes_read():
    """The introspection finds an override that a mixin before Trainer holds, and a private Trainer attribute read."""

    class Saving:
        def _save_checkpoint(self, model, trial): ...

        def own_helper(self): ...

    class Logging(Saving):
        @property
        def is_world_process_zero(self): ...

    class Custom(Logging, Trainer):
        def log(self, logs, start_time=None): ...

    assert overriding_classes(Custom) == (Custom, Logging, Saving)
    assert overridden_trainer_methods(Custom) == {"log", "_save_checkpoint", "is_world_process_zero"}
    assert "evaluate" in overridden_trainer_methods() and "evaluate" not in vars(DudaTrainer)  # DudaTrainer's own mixin
    # what the registry's note says was removed: Trainer's own sum of the run's loss (an attribute), not its methods
    source = "loss = trainer._total_loss_scalar + self._own_sum\nsuper()._save_checkpoint(model, trial)\n"
    assert private_trainer_attributes_read([*training_sources(), source]) == {"_total_loss_scalar"}


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
