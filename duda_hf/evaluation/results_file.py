"""`eval_results.json`: its one schema, and the one reader that every program, benchmark and test goes through.

Two programs write a file of this name, both with the same split: `settings` (what ran, or what was evaluated and
how) apart from `metrics` (the numbers), under a `schema_version` and a `kind`.

- `duda-train` (`kind: "training_run"`): `settings` is the run's recipe (`duda_hf.export.model_card.recipe_summary`:
  method, student, aux_student (`duda` only), init, the datasets and their origins, max_steps, ..., seed,
  duda_hf_version); `metrics` is the final evaluation as `DudaTrainer.evaluate` gives it, by network (`student`,
  `auxiliary` for `duda`, `teacher` but for `source_only`, `student_vs_teacher` where there is a teacher); beside
  them the series (`history`: every evaluation's mIoU entries of the log history; `per_class_history`;
  `train_history`: every logging step's entries), `bad_samples` and `seconds`.
- `duda-evaluate` (`kind: "evaluation"`): `settings` is the models (report name -> folder or Hub id), the dataset
  and how it was scored; `metrics` the metrics of each model by its report name (with `num_images` and the
  `confusion_matrix`); beside them `seconds`.

Schema 3 writes an evaluation's `settings.eval_size` height first, `[H, W]`, as `--eval_size` now takes it
(and `window` and `stride` always did); before schema 3 it was width first, `[W, H]`, and `read_results` turns it
around, so every file it gives holds `[H, W]`. A training run's file is the same in schemas 2 and 3.

Files written before schema 2 have no `schema_version`. A training run's kept its settings and metrics side by side
at the top (`method`, `aux_student`, `max_steps`, `seed`, the raw `target_eval_dataset`, the networks' metrics; its
`student` was the student's metrics, which had overwritten the preset name) with the recipe under `recipe`, where
files older still had none; an evaluation's kept its settings at the top and each model's metrics, with the model,
under `models`. `read_results` gives either in the current shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SCHEMA_VERSION = 3
EVAL_SIZE_HEIGHT_FIRST = 3  # the first schema whose evaluation `settings.eval_size` is [H, W]
TRAINING_RUN = "training_run"
EVALUATION = "evaluation"
KINDS = {TRAINING_RUN: "a training run's results (duda-train)", EVALUATION: "an evaluation report (duda-evaluate)"}
# what to pass instead, by the kind the caller needs
_WANTED = {
    TRAINING_RUN: "the eval_results.json in a duda-train run's output folder",
    EVALUATION: "the eval_results.json duda-evaluate wrote",
}

# the final evaluation's entries (`DudaTrainer.evaluate`): the metrics among the settings of a file before schema 2
NETWORKS = ("student", "auxiliary", "teacher", "student_vs_teacher")
SERIES = ("history", "per_class_history", "train_history")
# the settings a training run's file kept at the top before schema 2 (`student` held metrics by then)
_OLD_RUN_SETTINGS = ("method", "aux_student", "max_steps", "seed", "target_eval_dataset")
_OLD_EVALUATION_SETTINGS = ("dataset", "format", "split", "mode", "eval_size", "num_images")


class ResultsFileError(ValueError):
    """An `eval_results.json` that cannot be read as asked: not JSON, of the other kind, or of a newer schema."""


def training_run_results(
    settings: dict,
    metrics: dict,
    *,
    history: list,
    per_class_history: list,
    train_history: list,
    bad_samples: dict,
    seconds: float,
) -> dict:
    """A training run's `eval_results.json` content in the current schema (see the module's docstring)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": TRAINING_RUN,
        "settings": settings,
        "metrics": dict(metrics),
        "history": history,
        "per_class_history": per_class_history,
        "train_history": train_history,
        "bad_samples": bad_samples,
        "seconds": seconds,
    }


def evaluation_results(settings: dict, metrics: dict, *, seconds: float) -> dict:
    """`duda-evaluate`'s `eval_results.json` content in the current schema (see the module's docstring)."""
    return {"schema_version": SCHEMA_VERSION, "kind": EVALUATION, "settings": settings, "metrics": metrics, "seconds": seconds}


def read_results(source: str | os.PathLike | dict, kind: str | None = TRAINING_RUN) -> dict:
    """An `eval_results.json` (a path, or its content as a dict) in the current schema, whichever schema it was
    written in. `kind`: the kind the caller needs (`TRAINING_RUN`, `EVALUATION`); None takes either.

    A dict is not changed: the result is a new dict (its values may be the same objects).
    """
    where = f"'{source}'" if isinstance(source, (str, os.PathLike)) else "the results"
    if isinstance(source, (str, os.PathLike)):
        try:
            content = json.loads(Path(source).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ResultsFileError(
                f"{where} cannot be read as eval_results.json ({error}); pass {_WANTED.get(kind, 'a file duda-hf wrote')}"
            ) from error
    else:
        content = source
    if not isinstance(content, dict):
        raise ResultsFileError(f"{where} is not eval_results.json (a JSON object); pass {_WANTED.get(kind, 'a file duda-hf wrote')}")
    version = content.get("schema_version")
    if version is None:
        results = _from_evaluation_v1(content) if "models" in content else _from_training_run_v1(content)
    elif not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ResultsFileError(
            f"{where} has schema_version {version!r}, newer than this duda-hf reads ({SCHEMA_VERSION}); upgrade duda-hf to read it"
        )
    else:
        results = dict(content)
        if results.get("kind") == EVALUATION and version < EVAL_SIZE_HEIGHT_FIRST:
            results["settings"] = _eval_size_height_first(results.get("settings") or {})
        results["schema_version"] = SCHEMA_VERSION  # what it now is: reading it again changes nothing
    if kind is not None and results.get("kind") != kind:
        raise ResultsFileError(
            f"{where} is {KINDS.get(results.get('kind'), repr(results.get('kind')))}, not {KINDS[kind]}; pass {_WANTED[kind]}"
        )
    return results


def _from_training_run_v1(old: dict) -> dict:
    settings = dict(old.get("recipe") or {})
    for key in _OLD_RUN_SETTINGS:
        if key not in settings and old.get(key) is not None:
            settings[key] = old[key]
    if "student" not in settings and isinstance(old.get("student"), str):
        settings["student"] = old["student"]
    return training_run_results(
        settings,
        {name: old[name] for name in NETWORKS if isinstance(old.get(name), dict)},
        **{name: old.get(name) or [] for name in SERIES},
        bad_samples=old.get("bad_samples") or {},
        seconds=old.get("seconds"),
    )


def _from_evaluation_v1(old: dict) -> dict:
    models = old.get("models") or {}
    settings = {"models": {name: metrics.get("model") for name, metrics in models.items()}}
    settings.update((key, old[key]) for key in _OLD_EVALUATION_SETTINGS if key in old)
    metrics = {name: {key: value for key, value in values.items() if key != "model"} for name, values in models.items()}
    return evaluation_results(_eval_size_height_first(settings), metrics, seconds=old.get("seconds"))


def _eval_size_height_first(settings: dict) -> dict:
    """The settings of an evaluation written before schema 3, whose `eval_size` was `[W, H]`, with `eval_size` as
    `[H, W]` (a new dict)."""
    eval_size = settings.get("eval_size")
    return {**settings, "eval_size": [eval_size[1], eval_size[0]]} if eval_size else dict(settings)
